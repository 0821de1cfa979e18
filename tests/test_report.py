"""The run report without a pipeline run: numbers from predictions, the page, the text, the command.

The report of a real run (predictions of a trained model over its eval split,
checked against the split's labels) is tested in tests/e2e/test_pipeline_e2e.py.
"""

from __future__ import annotations

import dataclasses
import html.parser
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from imgpipe.cli import main as cli
from imgpipe.orchestration import runs
from imgpipe.orchestration.summary import RunSummary
from imgpipe.report import build, data, text
from pipeline.config import PipelineConfig
from tests import browser

# Class names are user folder names: anything but '/' may appear in them.
HOSTILE = [
    "cat",
    '<script>alert("x")</script>',
    "a&b <img src=x onerror=alert(1)>",
    "ünï 'q'",
    r"cost $5-$10 a$\frac$",  # mathtext to matplotlib unless told otherwise
    "x1²",  # a superscript digit: isdigit, but not a number int() reads
]


def _png(seed: int, size: int = 24) -> bytes:
    pixels = (np.random.RandomState(seed).rand(size, size, 3) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _gate_record(names: list[str]) -> dict:
    return {
        "blessed": False,
        "accuracy": 0.41,
        "eval_examples": 48,
        "floor": 0.55,
        "floor_source": "majority",
        "min_accuracy": 0.5,
        "majority_class": names[0],
        "majority_share": 0.5,
        "majority_margin": 0.05,
        "class_names": names,
        "per_class_recall": {n: 0.4 for n in names},
        "min_class_recall": None,
        "baseline": {"accuracy": 0.9, "max_regression": 0.0, "compared": True, "skipped_reason": None},
        "reasons": ["accuracy 0.41 is below the floor 0.55"],
        "anomalies_allowed": [],
    }


def _report_data(names=HOSTILE, n: int = 48, cap: int = 6, run_id: str = "2026-01-01T00:00:00.000001"):
    rng = np.random.RandomState(0)
    tally = data.Tally(list(names), cap)
    for i in range(n):
        tally.add(i, names[i % len(names)], rng.dirichlet([1.0] * len(names)).tolist(), _png(i))
    columns, rows, matrix = tally.columns(), tally.rows(), tally.matrix()
    history = {
        "loss": [1.0, 0.7, 0.5],
        "accuracy": [0.5, 0.7, 0.8],
        "val_loss": [1.1, 0.8, 0.6],
        "val_accuracy": [0.4, 0.6, 0.7],
        "fine_tune_loss": [0.45],
        "fine_tune_accuracy": [0.82],
        "fine_tune_val_loss": [0.55],
        "fine_tune_val_accuracy": [0.72],
    }
    return data.ReportData(
        run_id=run_id,
        class_names=columns,
        rows=rows,
        confusion=matrix,
        per_class=data.per_class_rows(rows, columns, matrix),
        examples=n,
        unlabelled=0,
        accuracy=sum(matrix[i][i] for i in range(len(names))) / n if n else None,
        evaluator_accuracy=0.41,
        gate=data.gate_from_record(_gate_record(list(names))),
        history=history,
        early_stopping={"early_stopping.head.best_epoch": 2},
        misclassified=tally.worst(),
        misclassified_total=tally.misclassified_total,
        max_misclassified=cap,
        artifacts={"serving_model": "/runs/<model> & co"},
        states={"Trainer": "COMPLETE"},
        notes=[],
    )


def test_the_label_check_and_its_doubted_images_are_in_the_report():
    """The Trainer's label check (the run's JSON `label_check`, with files): its numbers, its
    warning among the notes, and the first doubted train images with their labels; kept through
    report.json; absent (older runs, a check not made) leaves the page as it was."""
    from imgpipe.report import html

    check = {
        "held_out": "cross-validation (5 folds)",
        "examined": 300,
        "agreement": 0.6,
        "eval_accuracy": 0.873,
        "eval_examples": 150,
        "doubted": 84,
        "pairs": [{"given": "five", "answered": "eight", "images": 9}],
        "images": [
            {"position": 172, "given": "five", "answered": "<seven>", "given_probability": 0.0003,
             "answered_probability": 0.9441, "file": "five/img 898.png"},
            {"position": 171, "given": "six", "answered": "seven", "given_probability": 0.0008,
             "answered_probability": 0.577, "file": None},
        ],
        "warning": "label check: ... train labels may be wrong.",
    }  # fmt: skip
    d = dataclasses.replace(_report_data(["a", "b"], n=10), label_check=check)
    page = html.render(d, {"training_curves": "training_curves.png"})
    assert "agree with their labels at 0.600 (the eval split's accuracy: 0.873); 84 are answered" in page
    # (a line may break after the path's / and .: <wbr>)
    assert "<td>five/<wbr>img 898.<wbr>png</td><td>five</td><td>&lt;seven&gt;</td>" in page
    assert "<td>train record 171</td>" in page and "the first 2, least likely label first" in page
    loaded = data.ReportData.from_dict(json.loads(json.dumps(d.to_dict())))
    assert loaded.label_check == check
    plain = html.render(_report_data(["a", "b"], n=10), {"training_curves": "training_curves.png"})
    assert "The label check" not in plain


# ------------------------------------------------------------------------------ numbers
def test_tally_counts_confusion_per_class_and_keeps_the_worst_mistakes():
    tally = data.Tally(["a", "b", "c"], max_misclassified=3)
    tally.add(0, "a", [0.9, 0.05, 0.05])
    tally.add(1, "a", [0.2, 0.7, 0.1])  # wrong, 0.7
    tally.add(2, "b", [0.1, 0.8, 0.1])
    tally.add(3, "b", [0.6, 0.3, 0.1])  # wrong, 0.6
    tally.add(4, "c", [0.1, 0.1, 0.8])
    tally.add(5, "c", [0.05, 0.9, 0.05])  # wrong, 0.9
    tally.add(6, None, [0.3, 0.3, 0.4])  # no label: not counted
    tally.add(7, "z", [0.3, 0.3, 0.4])  # a label the model has no class for: wrong, 0.4
    assert tally.rows() == ["a", "b", "c", "z"]
    matrix = tally.matrix()
    assert matrix == [[1, 1, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert tally.unlabelled == 1 and tally.misclassified_total == 4
    worst = tally.worst()
    assert [(m.record, m.true, m.predicted) for m in worst] == [(5, "c", "b"), (1, "a", "b"), (3, "b", "a")]
    assert [m.score for m in worst] == [0.9, 0.7, 0.6]
    assert worst[0].true_score == 0.05

    rows = data.per_class_rows(tally.rows(), ["a", "b", "c"], matrix)
    assert [(r.name, r.support, r.predicted, r.correct) for r in rows] == [
        ("a", 2, 2, 1),
        ("b", 2, 3, 1),
        ("c", 2, 2, 1),
        ("z", 1, 0, 0),
    ]
    assert [r.precision for r in rows] == [0.5, pytest.approx(1 / 3), 0.5, None]
    assert [r.recall for r in rows] == [0.5, 0.5, 0.5, 0.0]
    assert [r.in_vocabulary for r in rows] == [True, True, True, False]


def test_classes_are_shown_by_name_whatever_the_models_index_order():
    tally = data.Tally(["10", "2", "b", "A"], max_misclassified=0)  # a vocabulary ordered by frequency
    tally.add(0, "2", [0.0, 1.0, 0.0, 0.0])
    tally.add(1, "2", [1.0, 0.0, 0.0, 0.0])  # predicted "10"
    tally.add(2, "b", [0.0, 0.0, 0.0, 1.0])  # predicted "A"
    tally.add(3, "Zed", [0.0, 0.0, 1.0, 0.0])  # not a model class; predicted "b"
    tally.add(4, "1", [0.0, 1.0, 0.0, 0.0])  # not a model class; predicted "2"
    assert tally.columns() == ["2", "10", "A", "b"]
    assert tally.rows() == ["2", "10", "A", "b", "1", "Zed"]
    assert tally.matrix() == [
        [1, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 1, 0],
        [1, 0, 0, 0],
        [0, 0, 0, 1],
    ]


def test_tally_cap_zero_keeps_no_images_but_counts_every_mistake():
    tally = data.Tally(["a", "b"], max_misclassified=0)
    for i in range(5):
        tally.add(i, "a", [0.1, 0.9], b"img")
    assert tally.misclassified_total == 5 and tally.worst() == []


def test_tally_rejects_scores_that_do_not_match_the_classes():
    with pytest.raises(data.ReportDataError, match="record 3"):
        data.Tally(["a", "b"], 1).add(3, "a", [1.0])


def test_a_class_nothing_was_predicted_as_has_no_precision():
    [a, b] = data.per_class_rows(["a", "b"], ["a", "b"], [[3, 0], [1, 0]])
    assert (a.precision, a.recall) == (0.75, 1.0)
    assert (b.precision, b.recall, b.support) == (None, 0.0, 1)


def test_gate_from_the_record_and_from_an_older_runs_summary():
    g = data.gate_from_record(_gate_record(["7", "5"]))
    assert (g.blessed, g.candidate, g.baseline, g.floor) == (False, 0.41, 0.9, 0.55)
    assert "majority class '7'" in g.floor_note and g.reasons == ["accuracy 0.41 is below the floor 0.55"]
    # Images relabelled since the served model trained (accepted): it is scored by labels it did
    # not learn, which the baseline row says (it read as a plain drop).
    from components.gate import RELABELLED

    swapped = dict(
        _gate_record(["7", "5"]), anomalies_allowed=[f"{RELABELLED}: 146 of the 146 trained as '5'"]
    )
    assert data.gate_from_record(swapped).baseline_note.endswith(
        "images it trained on were relabelled since (accepted, a class renamed or two swapped): the "
        "comparison leaves those images out, but it still answers with the names it learned, and the eval "
        "images are scored by the names they have now"
    )
    # A record that keeps the gate's own words for its floor (Floor.describe) is shown with them.
    own = dict(_gate_record(["7", "5"]), floor_note="majority class '7' has 0.550 of eval + margin 0.000")
    assert data.gate_from_record(own).floor_note == own["floor_note"]
    assert (
        data.gate_from_record(dict(own, metric="balanced_accuracy", eval_classes=2)).floor_note
        == own["floor_note"]
    )
    skipped = dict(
        _gate_record(["7"]),
        baseline={"accuracy": None, "compared": False, "skipped_reason": "no blessed model yet"},
    )
    assert data.gate_from_record(skipped).baseline_note == "not compared: no blessed model yet"
    waived = dict(
        _gate_record(["7"]),
        baseline={
            "accuracy": None,
            "compared": False,
            "skipped_reason": "too few to compare on",
            "comparison_waived": "gate.bless_without_comparison",
        },
    )
    assert data.gate_from_record(waived).baseline_note == (
        "not compared: too few to compare on; judged on the floors alone: gate.bless_without_comparison"
    )
    added = dict(
        _gate_record(["7"]),
        baseline={
            "accuracy": 0.9,
            "compared": True,
            "max_regression": 0.0,
            "compared_examples": 30,
            "candidate_accuracy": 0.85,
            "shared_classes": ["5", "7"],
            "label_change": "new class '6'",
        },
    )
    assert data.gate_from_record(added).baseline_note == (
        "latest blessed model, on the 30 eval examples of the classes both models have ('5', '7'; new class "
        "'6'), where this model has 0.8500; allowed regression 0.0000"
    )
    # The candidate's number on those 30, beside the baseline's: not its whole-split number alone.
    g = data.gate_from_record(added)
    assert (g.compared_candidate, g.compared_on) == (
        0.85,
        "the 30 eval examples the baseline was compared on",
    )
    shown = text.render(dataclasses.replace(_report_data(["7", "5"]), gate=g))
    assert (
        "\n  candidate accuracy, where compared 0.8500  on the 30 eval examples the baseline was compared on\n"
        "  baseline accuracy                  0.9000  latest blessed model, on the 30" in shown
    ), shown
    from imgpipe.report import html

    page = html.render(dataclasses.replace(_report_data(["7", "5"]), gate=g), {})
    assert "candidate accuracy, where compared</td>" in page
    assert data.gate_from_record(_gate_record(["7"])).compared_candidate is None  # compared on the same
    # Images of those classes the latest blessed model trained on are left out too: said, not
    # left for the reader to find in gate.json.
    added["baseline"]["seen_eval_examples"] = 1
    assert data.gate_from_record(added).baseline_note == (
        "latest blessed model, on the 30 eval examples of the classes both models have that neither model "
        "trained on (it trained on 1 of the eval split's) ('5', '7'; new class '6'), where this model has "
        "0.8500; allowed regression 0.0000"
    )
    resplit = dict(
        _gate_record(["7"]),
        eval_examples=60,
        baseline={
            "accuracy": 0.88,
            "compared": True,
            "max_regression": 0.0,
            "seen_eval_examples": 35,
            "compared_examples": 25,
            "candidate_accuracy": 0.8,
        },
    )
    assert data.gate_from_record(resplit).baseline_note == (
        "latest blessed model, on the 25 eval examples neither model trained on (it trained on 35 of the 60: "
        "the same image bytes were in the train split), where this model has 0.8000; allowed regression 0.0000"
    )
    both = dict(resplit, eval_examples_in_train=4, baseline=dict(resplit["baseline"], compared_examples=21))
    assert data.gate_from_record(both).baseline_note.startswith(
        "latest blessed model, on the 21 eval examples neither model trained on (it trained on 35 and this "
        "model trained on 4 of the 60: "
    )
    # Judged on part of the split (copies of eval images, images it trained on): said, with TFMA's
    # number on every record, and the baseline's note counts the split's records.
    judged = dict(
        both,
        eval_examples=50,
        judged_on={"records": 60, "repeats": 6, "in_train": 4, "examples": 50},
        whole_split={"accuracy": 0.95, "examples": 60},
    )
    g = data.gate_from_record(judged)
    # The parts add up to what was left out: 6 copies and 60 - 21 - 6 = 33 images a model saw.
    assert g.baseline_note.startswith(
        "latest blessed model, on the 21 distinct eval images neither model trained on (of the 60 records, "
        "6 copy an earlier eval image and 33 are images a model trained on), where this model has 0.8000"
    )
    assert g.judged_on == "the 50 distinct eval images it did not train on"
    assert dict(g.details)["eval_examples_in_train"].endswith(
        "left out of the numbers above, copies included)"
    )
    assert dict(g.details)["judged_on"] == (
        "50 distinct eval images the model did not train on, of 60 records (6 repeat an earlier image, 4 are "
        "images it trained on): the numbers above are on them; on every record TFMA measured accuracy 0.9500"
    )
    assert "judged_on" not in dict(data.gate_from_record(both).details)
    copies = dict(
        _gate_record(["7"]),
        eval_examples=19,
        judged_on={"records": 20, "repeats": 1, "in_train": 0, "examples": 19},
        baseline=dict(resplit["baseline"], seen_eval_examples=None, compared_examples=19),
    )
    assert data.gate_from_record(copies).baseline_note.startswith(
        "latest blessed model, on the 19 distinct eval images neither model trained on (of the 20 records, 1 "
        "copies an earlier eval image), where this model has 0.8000"
    )
    assert data.gate_from_record(both).judged_on == "the eval split"
    # Compared on the whole split (no model saw an eval image): no note about left-out images.
    whole = dict(resplit, baseline=dict(resplit["baseline"], seen_eval_examples=0, compared_examples=60))
    assert data.gate_from_record(whole).baseline_note == "latest blessed model; allowed regression 0.0000"
    by_min = dict(_gate_record(["7"]), floor_source="min_accuracy", min_accuracy=0.8, floor=0.8)
    note = data.gate_from_record(by_min).floor_note
    assert (
        note.startswith("min_accuracy 0.8") and "majority class '7'" in note and note.endswith("not higher)")
    )

    balanced = dict(
        _gate_record(["7", "5"]),
        metric="balanced_accuracy",
        metric_reason="auto: the eval split's largest/smallest class = 9.00 > 1.5",
        value=0.62,
        accuracy=0.91,
        eval_classes=2,
        floor=0.58,
        floor_source="significance",
        significance=0.05,
    )
    g = data.gate_from_record(balanced)
    assert (g.metric, g.candidate, g.floor) == ("balanced accuracy", 0.62, 0.58)
    assert g.floor_note.startswith("the least not reached by answers that ignore the image, p <= 0.05")
    assert ("accuracy", "0.9100") in g.details and g.details[0][1].endswith(
        "(auto: the eval split's largest/smallest class = 9.00 > 1.5)"
    )
    assert data.gate_from_record(dict(balanced, floor_source="chance", floor=0.55)).floor_note == (
        "chance 1/2 = 0.5000 + margin 0.0500 (above min_accuracy 0.5000)"
    )
    shown = text.render(dataclasses.replace(_report_data(["7", "5"]), gate=g))
    assert (
        "  candidate balanced accuracy 0.6200\n" in shown and "  baseline balanced accuracy  0.9000" in shown
    )

    old = data.gate_from_summary({"accuracy": 0.4, "baseline_accuracy": 0.8, "blessed": False}, 0.5, 0.0)
    assert (old.candidate, old.baseline, old.floor, old.blessed) == (0.4, 0.8, 0.5, False)
    assert len(old.reasons) == 2 and "below min_accuracy 0.5" in old.reasons[0]
    assert "summary" in old.source
    blessed = data.gate_from_summary({"accuracy": 0.9, "baseline_accuracy": None, "blessed": True}, 0.5, 0.0)
    assert blessed.reasons == [] and "no blessed model" in blessed.baseline_note


def test_the_baseline_row_names_the_model_it_was():
    """The run summary's `baseline_model` in the baseline row's note, whether compared or not; a
    summary without one (runs from before it, no baseline) leaves the note as it was."""
    model = {"run_id": "r1", "pushed": "/srv/digits/17/"}
    assert data.name_baseline("latest blessed model; allowed regression 0.0100", model) == (
        "latest blessed model (trained by run r1, version 17); allowed regression 0.0100"
    )
    assert data.name_baseline("not compared: its classes differ", dict(model, pushed=None)) == (
        "not compared: its classes differ; the latest blessed model: trained by run r1, no push of it recorded"
    )
    # The run that trained it unknown (ML Metadata names no execution): the version alone.
    assert data.name_baseline("latest blessed model", dict(model, run_id="?")) == (
        "latest blessed model (version 17)"
    )
    for missing in (None, {}, {"run_id": None}, {"run_id": "?", "pushed": None}, "r1"):
        assert data.name_baseline("not compared: no blessed model yet", missing) == (
            "not compared: no blessed model yet"
        )


def test_early_stopping_entries_are_found_wherever_the_trainer_puts_them():
    summary = {
        "replicas": 1,
        "history": {"loss": [1.0]},
        "best_epoch": 4,
        "early_stopping": {"head": {"stopped_epoch": 7, "patience": 3}},
        "seconds": {"train": 2.0},
    }
    assert data.early_stopping_entries(summary) == {
        "best_epoch": 4,
        "early_stopping.head.stopped_epoch": 7,
        "early_stopping.head.patience": 3,
    }
    assert data.early_stopping_entries({"history": {}, "replicas": 1}) == {}


# ------------------------------------------------------------------------------ the page
class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, d):
        self.text.append(d)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A report with hostile class names, written to disk."""
    folder = tmp_path_factory.mktemp("run") / "report"
    d = _report_data()
    return build.write_report(str(folder), d, "../summary.json"), d


def test_the_page_escapes_class_names_and_paths(written):
    page, d = written
    parser = _Page()
    with open(page, encoding="utf-8") as f:
        parser.feed(f.read())
    tags = [t for t, _ in parser.tags]
    assert "script" not in tags  # '<script>' in a class name stayed text
    assert not [a for _, attrs in parser.tags for a in attrs if a.startswith("on")]  # no onerror=
    text = "".join(parser.text)
    for name in HOSTILE:
        assert name in text
    assert "/runs/<model> & co" in text
    folder = os.path.dirname(page)
    sources = [attrs["src"] for t, attrs in parser.tags if t == "img"]
    assert len(sources) == 3 + len(d.misclassified)  # two confusion matrices, curves, thumbnails
    assert all(os.path.isfile(os.path.join(folder, s)) for s in sources)


def test_a_right_to_left_override_in_a_class_name_does_not_reorder_the_page():
    """A class folder 'a<U+202E>gnp.exe' (accepted: ingest refuses such characters only at a
    name's ends) reversed every class after it in the gate's per-class rows, so the numbers read
    as other classes' (an audit). The page shows the control as its code point."""
    from imgpipe.report import html

    hostile = "a\u202egnp.exe"
    record = dict(_gate_record(["7", "5"]), per_class_recall={hostile: 0.8, "cat": 1.0})
    d = dataclasses.replace(_report_data(["7", "5"]), gate=data.gate_from_record(record))
    page = html.render(d, {})
    assert "\u202e" not in page and "a[U+202E]gnp.exe (" in page and "): 0.8000, cat: 1.0000" in page
    assert html.esc("\u2067x\u2069 <b>") == "[U+2067]x[U+2069] &lt;b&gt;"
    assert html.esc("👩\u200d👩") == "👩\u200d👩"  # a joiner inside an emoji is not a control


def test_a_class_name_the_font_lacks_draws_without_a_warning_per_glyph(tmp_path):
    """An emoji class name (U+1F464, not in DejaVu Sans): matplotlib warned once per missing glyph per figure, on the run's
    stderr (the page's tables have the name)."""
    import warnings

    from imgpipe.report import figures

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures.confusion_matrix(
            ["\U0001f464", "dog"], ["\U0001f464", "dog"], [[3, 1], [0, 4]], str(tmp_path / "c.png"), False
        )
    assert os.path.getsize(tmp_path / "c.png") > 0
    assert not [w for w in caught if "Glyph" in str(w.message)], [str(w.message) for w in caught]


def test_the_gate_details_point_to_the_per_class_table_past_20_classes():
    """300 classes gave a 7,700-character per_class_recall line in the text report, repeating the
    per-class table under it (an audit)."""
    names = [f"c{i:02d}" for i in range(data.MAX_DETAIL_CLASSES + 1)]
    record = dict(
        _gate_record(["7", "5"]),
        per_class_recall=dict.fromkeys(names, 0.5),
        per_class_precision=dict.fromkeys(names, 0.5),
        per_class_answered=dict.fromkeys(names, 1),
    )
    details = dict(data.gate_from_record(record).details)
    assert details["per_class_recall"] == "21 classes: in the per-class table and gate.json"
    assert details["per_class_precision"] == "21 classes: in the per-class table and gate.json"
    few = dict(record, per_class_precision={"c00": 1.0}, per_class_answered={"c00": 1})
    assert dict(data.gate_from_record(few).details)["per_class_precision"] == "c00: 1.0000 of 1 answer"


def test_a_matrix_too_large_for_names_is_numbered_as_the_per_class_table():
    """300 classes: the matrix's axes carry numbers only, and nothing said which class a number
    was (an audit). The caption says, and the per-class table numbers its rows."""
    from imgpipe.report import figures, html

    names = [f"c{i:03d}" for i in range(figures.TICKS_MAX + 1)]
    matrix = [[5 if i == j else 0 for j in range(len(names))] for i in range(len(names))]
    d = dataclasses.replace(
        _report_data(["7", "5"]),
        class_names=names,
        rows=names,
        confusion=matrix,
        per_class=data.per_class_rows(names, names, matrix),
    )
    page = html.render(d, {})
    assert "the axes are numbered: number i is the class in row # i of the per-class table" in page
    assert "<th>#</th>" in page
    assert '<td class="num">60</td><td>c060</td>' in page
    small = dataclasses.replace(_report_data(["7", "5"]))
    assert "axes are numbered" not in html.render(small, {}) and "<th>#</th>" not in html.render(small, {})


def test_report_json_round_trips_without_the_image_bytes(written):
    page, d = written
    loaded = build.load_report(os.path.dirname(os.path.dirname(page)))
    assert loaded is not None
    assert loaded.to_dict() == d.to_dict()
    assert all(m.image is None and m.thumbnail for m in loaded.misclassified)
    assert loaded.confusion == d.confusion and loaded.gate == d.gate


def test_every_image_of_the_page_loads_in_chromium(written, tmp_path):
    page, d = written
    states = browser.image_states(page, str(tmp_path))
    assert len(states) == 3 + len(d.misclassified)
    assert [s["src"] for s in states if not (s["complete"] and s["naturalWidth"] > 0)] == []


def test_text_view_has_the_decision_the_table_and_the_worst_mistakes(written):
    page, d = written
    out = text.render(d, page)
    assert "gate: NOT BLESSED" in out and "floor              0.5500" in out
    for row in d.per_class:
        assert any(line.startswith(row.name) and f"{row.support:>7}" in line for line in out.splitlines())
    worst = d.misclassified[0]
    assert f"record {worst.record:>5}  true {worst.true}  predicted {worst.predicted}" in out


def test_a_damaged_report_json_reads_as_no_report(tmp_path):
    build.write_report(str(tmp_path / "report"), _report_data(cap=1))
    assert build.load_report(str(tmp_path)) is not None
    (tmp_path / "report" / build.DATA_FILE).write_text('{"run_id": "x", "unknown": 1}')
    assert build.load_report(str(tmp_path)) is None


def test_page_of_a_run_with_nothing_misclassified_and_no_history(tmp_path):
    d = _report_data(names=["a", "b"], n=0, cap=4)
    d.history = {}
    page = build.write_report(str(tmp_path / "report"), d)
    with open(page, encoding="utf-8") as f:
        content = f.read()
    assert "No eval image was misclassified" in content and "No training history" in content
    assert not os.path.exists(tmp_path / "report" / "training_curves.png")


def test_rewriting_a_report_replaces_it_whole(tmp_path):
    first = _report_data(cap=6)
    build.write_report(str(tmp_path / "report"), first)
    second = _report_data(cap=2)
    build.write_report(str(tmp_path / "report"), second)
    thumbs = os.listdir(tmp_path / "report" / "thumbs")
    assert sorted(thumbs) == sorted(os.path.basename(m.thumbnail) for m in second.misclassified)
    assert sorted(os.listdir(tmp_path)) == ["report"]  # no staging or old folders left


# ------------------------------------------------------------------------------ a run's hook
def test_a_report_that_cannot_be_written_is_recorded_not_raised(tmp_path):
    config = PipelineConfig(home=str(tmp_path / "home")).resolved()
    summary = RunSummary(run_id="r1", blessed=True, pushed=None, accuracy=0.9, replicas=1, executions={})
    build.attach_report(config, summary)  # no ML Metadata database there
    assert summary.report is None
    assert "no ML Metadata database" in summary.report_error and "metadata.sqlite" in summary.report_error
    assert summary.to_dict()["report"] is None


# ------------------------------------------------------------------------------ the command
def _record(home, run_id: str, with_report: bool, mtime: float, numbered: bool = True) -> str:
    """A run record; `numbered` False: one an imgpipe wrote before runs were numbered."""
    config = PipelineConfig(home=str(home)).resolved()
    summary = RunSummary(run_id=run_id, blessed=False, pushed=None, accuracy=0.41, replicas=1, executions={})
    folder = runs.write_record(config, summary)
    if not numbered:
        runs.update_summary(folder, {"sequence": None})
    if with_report:
        d = _report_data(run_id=run_id)
        build.write_report(build.report_dir(folder), d, "../summary.json")
    os.utime(os.path.join(folder, runs.CONFIG_FILE), (mtime, mtime))
    return folder


def test_report_latest_prints_json_on_stdout_and_the_text_on_stderr(tmp_path, capsys):
    _record(tmp_path, "older", with_report=True, mtime=1_000_000)
    newest = _record(tmp_path, "2026-02-02T10:00:00.5", with_report=True, mtime=2_000_000)
    assert cli.main(["report", "latest", "--home", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    [line] = captured.out.strip().splitlines()
    result = json.loads(line)
    assert result["report"] == os.path.join(newest, "report", "index.html")
    assert result["run_id"] == "2026-02-02T10:00:00.5" and result["regenerated"] is False
    assert [r["name"] for r in result["per_class"]] == sorted(HOSTILE, key=data.natural_key)
    assert result["gate"]["blessed"] is False and result["gate"]["floor"] == 0.55
    assert result["report"] in captured.err and "gate: NOT BLESSED" in captured.err
    assert "precision  recall  support" in captured.err


def test_latest_is_the_run_that_started_last_whatever_the_files_times(tmp_path):
    """A home copied without its file times, or an old record's config saved again to re-run it,
    made an old run `latest` (records were ordered by the config file's time)."""
    newer = _record(tmp_path, "2026-02-02T11:00:00-bbbb", with_report=False, mtime=1_000_000, numbered=False)
    older = _record(
        tmp_path, "2026-02-02T10:00:00.500000-aaaa", with_report=False, mtime=3_000_000, numbered=False
    )
    named_otherwise = _record(tmp_path, "imported", with_report=False, mtime=2_000_000, numbered=False)
    assert runs.records(str(tmp_path)) == [newer, older, named_otherwise]
    assert runs.find_record(str(tmp_path), runs.LATEST) == newer


def test_latest_is_the_run_numbered_last_whatever_the_clock_said(tmp_path):
    """Run ids are the local time: a run under another time zone (cron's UTC, a shell's +9 h) or
    after the clock was set back sorted before the runs it followed, and `report latest` and
    `drift --run latest` kept returning it. Each run is numbered as it starts, under the home's
    lock; records from before numbers were given are older than any numbered one."""
    old = _record(tmp_path, "2026-02-02T23:00:00-old", with_report=False, mtime=1_000_000, numbered=False)
    tokyo = _record(tmp_path, "2026-02-02T19:00:00-tokyo", with_report=False, mtime=1_000_000)
    utc = _record(tmp_path, "2026-02-02T10:00:01-utc", with_report=False, mtime=1_000_000)
    assert [runs.read_summary(f)["sequence"] for f in (tokyo, utc)] == [1, 2]
    assert runs.records(str(tmp_path)) == [utc, tokyo, old]
    assert runs.find_record(str(tmp_path), runs.LATEST) == utc
    # The number a run was given as it started is the one its record keeps.
    config = PipelineConfig(home=str(tmp_path)).resolved()
    runs.mark_started(config, "2026-02-02T09:00:00-next")
    assert runs.next_sequence(str(tmp_path)) == 4
    folder = runs.write_record(config, RunSummary("2026-02-02T09:00:00-next", True, None, 0.9, 1, {}))
    assert runs.read_summary(folder)["sequence"] == 3 and runs.records(str(tmp_path))[0] == folder


def test_another_misclassified_cap_than_the_written_reports_writes_it_again(tmp_path, capsys, monkeypatch):
    """--max-misclassified was ignored when the run had a report (its cap, 6 here, was kept)."""
    from imgpipe.cli import report as report_cli

    _record(tmp_path, "2026-02-02T10:00:00.5", with_report=True, mtime=2_000_000)
    written = []
    monkeypatch.setattr(report_cli, "_regenerate", lambda home, folder, summary, cap: written.append(cap))
    assert cli.main(["report", "latest", "--home", str(tmp_path), "--max-misclassified", "6"]) == 0
    assert json.loads(capsys.readouterr().out)["regenerated"] is False and written == []  # the same cap
    assert cli.main(["report", "latest", "--home", str(tmp_path), "--max-misclassified", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["regenerated"] is True and written == [2]


def test_report_of_an_unknown_run_or_home_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["report", "latest", "--home", str(tmp_path)]) == cli.EXIT_USAGE
    assert "no run records" in capsys.readouterr().err
    _record(tmp_path, "r1", with_report=True, mtime=1_000_000)
    assert cli.main(["report", "nope", "--home", str(tmp_path)]) == cli.EXIT_USAGE
    assert "no run 'nope'" in capsys.readouterr().err
    # A folder under runs/ that is not a record says what it lacks (was "no run records").
    (tmp_path / "runs" / "half").mkdir()
    (tmp_path / "runs" / "half" / "summary.json").write_text("garbage")
    assert cli.main(["report", "half", "--home", str(tmp_path)]) == cli.EXIT_USAGE
    assert (
        f"{tmp_path / 'runs' / 'half'} is not a run record: it has no config.yaml" in capsys.readouterr().err
    )


def test_latest_is_the_newest_run_that_finished_and_a_failed_run_has_no_report(tmp_path, capsys):
    finished = _record(tmp_path, "finished", with_report=True, mtime=1_000_000)
    failed = _record(tmp_path, "failed-run", with_report=False, mtime=2_000_000)
    runs.update_summary(failed, {"failed": "Trainer", "error": "Trainer failed: ValueError: no images"})

    assert runs.find_record(str(tmp_path), runs.LATEST) == finished
    assert cli.main(["report", "latest", "--home", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["run_id"] == "finished"
    assert (
        "run failed-run failed (Trainer failed: ValueError: no images): `latest` is the newest"
        in captured.err
    )

    assert cli.main(["report", "failed-run", "--home", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "run failed-run failed, so it has no report: Trainer failed: ValueError: no images" in captured.err
    assert not os.path.exists(build.report_dir(failed))

    runs.update_summary(finished, {"failed": "Pusher", "error": "Pusher failed: OSError: disk full"})
    with pytest.raises(LookupError, match=r"no run in .* finished: the newest, failed-run, failed \(Trainer"):
        runs.find_record(str(tmp_path), runs.LATEST)
    # No finished run and a failed run named: the same exit code, each naming why.
    assert cli.main(["report", "latest", "--home", str(tmp_path)]) == 2
    assert "no run in " in capsys.readouterr().err


@pytest.mark.parametrize("damage", [b'{"run_id": "dam', b"", b"[1, 2]", b"\xff\xfe"])
def test_a_damaged_run_record_is_named_and_latest_passes_it_by(tmp_path, capsys, damage):
    good = _record(tmp_path, "good", with_report=True, mtime=1_000_000)
    damaged = _record(tmp_path, "damaged", with_report=True, mtime=2_000_000)
    path = os.path.join(damaged, runs.SUMMARY_FILE)
    with open(path, "wb") as f:
        f.write(damage)

    assert cli.main(["report", "latest", "--home", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["run_id"] == "good"
    assert f"run record {path} cannot be read" in captured.err and "skipped" in captured.err

    assert cli.main(["report", "damaged", "--home", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and f"imgpipe: error: run record {path} cannot be read: " in captured.err
    assert "Traceback" not in captured.err
    with open(path, "rb") as f:
        assert f.read() == damage  # nothing rewritten
    assert runs.find_record(str(tmp_path), "good") == good


def test_a_missing_report_that_cannot_be_written_fails_and_says_why(tmp_path, capsys):
    folder = _record(tmp_path, "r1", with_report=False, mtime=1_000_000)
    assert cli.main(["report", "r1", "--home", str(tmp_path)]) == cli.EXIT_FAILED
    assert "could not write the report of run r1" in capsys.readouterr().err
    summary = runs.read_summary(folder)
    assert summary["report"] is None and "metadata.sqlite" in summary["report_error"]


def test_a_regenerated_report_that_fails_keeps_the_earlier_one_and_its_link(tmp_path, capsys):
    """`report --regenerate` that cannot write (no ML Metadata here; a model pruned away in
    practice) used to record `"report": null` although the earlier report was still whole."""
    folder = _record(tmp_path, "r1", with_report=True, mtime=1_000_000)
    page = os.path.join(build.report_dir(folder), build.INDEX_FILE)
    runs.update_summary(folder, {"report": page, "report_error": None})
    before = runs.read_summary(folder)
    with open(page, "rb") as f:
        html = f.read()
    assert cli.main(["report", "r1", "--home", str(tmp_path), "--regenerate"]) == cli.EXIT_FAILED
    captured = capsys.readouterr()
    assert captured.out == "" and "could not write the report of run r1 again" in captured.err
    assert "the earlier report is kept" in captured.err and "metadata.sqlite" in captured.err
    assert runs.read_summary(folder) == before
    with open(page, "rb") as f:
        assert f.read() == html
    assert cli.main(["report", "r1", "--home", str(tmp_path)]) == 0  # still shown
    assert json.loads(capsys.readouterr().out)["report"] == page


def test_a_pruned_runs_report_is_not_written_again_without_its_artifacts(tmp_path, capsys, monkeypatch):
    """`report --regenerate` on a run whose artifacts `imgpipe prune` deleted wrote a report without
    its training curves over the whole one (the note blamed a missing training_summary.json),
    or failed minutes in with "no input files match .../Split-eval", naming no cause."""
    from imgpipe.orchestration import metadata as mlmd
    from imgpipe.orchestration.metadata import RunArtifacts

    folder = _record(tmp_path, "r1", with_report=True, mtime=1_000_000)
    page = os.path.join(build.report_dir(folder), build.INDEX_FILE)
    runs.update_summary(folder, {"report": page, "report_error": None})
    with open(page, "rb") as f:
        html = f.read()
    kept = tmp_path / "pipelines" / "imgpipe" / "Evaluator" / "evaluation" / "9"
    os.makedirs(kept)
    gone = str(tmp_path / "pipelines" / "imgpipe" / "ImportExampleGen" / "examples" / "3" / "Split-eval")
    model = str(tmp_path / "pipelines" / "imgpipe" / "Trainer" / "model" / "7" / "Format-Serving")
    pruned = RunArtifacts(
        "r1", {"Trainer": "COMPLETE"}, gone, model, str(tmp_path / "model_run" / "7"), str(kept)
    )
    monkeypatch.setattr(mlmd, "run_artifacts", lambda config, run_id: pruned)
    assert cli.main(["report", "r1", "--home", str(tmp_path), "--regenerate"]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "run r1's artifacts were deleted (by `imgpipe prune`, or by hand): no eval split " in err
    assert f"no eval split {gone}; no model {model}; no training record " in err
    assert "evaluation" not in err.split("by hand)")[1].split("Its report")[0]  # that one is there
    assert "the earlier report is kept" in err
    with open(page, "rb") as f:
        assert f.read() == html


# ------------------------------------------------------------------------------ reuse
def _artifacts(model: str, eval_examples: str = "/x/Split-eval") -> data.RunArtifacts:
    from imgpipe.orchestration.metadata import RunArtifacts

    return RunArtifacts("run-2", {"Trainer": "CACHED"}, eval_examples, model, None, None)


def test_a_report_of_the_same_model_and_eval_split_is_reused_without_running_the_model(tmp_path):
    """A re-run with a cached Trainer: the earlier report's predictions, thumbnails copied over."""
    home = tmp_path / "home"
    earlier = _report_data()
    earlier.artifacts = {"serving_model": str(tmp_path / "no-such-model"), "eval_examples": "/x/Split-eval"}
    build.write_report(str(home / "runs" / "run-1" / "report"), earlier)
    for name in (runs.CONFIG_FILE, runs.SUMMARY_FILE):
        (home / "runs" / "run-1" / name).write_text("{}")
    artifacts = _artifacts(str(tmp_path / "no-such-model"))  # loading it would raise ReportDataError
    now = str(home / "runs" / "run-2" / "report")
    previous, folder = build.earlier_report(str(home), now, artifacts, earlier.max_misclassified)
    assert previous is not None and folder == str(home / "runs" / "run-1" / "report")
    baseline = {"run_id": "run-1", "pushed": "/srv/models/digits/1700000001"}
    summary = {"run_id": "run-2", "baseline_model": baseline}
    d = data.gather(artifacts, summary, None, _gate_record(HOSTILE), max_misclassified=6, previous=previous)
    assert d.confusion == earlier.confusion and d.per_class == earlier.per_class
    # The baseline row names the model it was: the run that trained it and the version it serves as.
    assert d.gate.baseline_note == (
        "latest blessed model (trained by run run-1, version 1700000001); allowed regression 0.0000"
    )
    assert d.accuracy == earlier.accuracy and d.misclassified_total == earlier.misclassified_total
    assert any("reused from run" in n for n in d.notes)
    page = build.write_report(now, d, thumbnails_from=folder)
    thumbs = [m.thumbnail for m in d.misclassified]
    assert thumbs and all(
        open(os.path.join(now, t), "rb").read() == open(os.path.join(folder, t), "rb").read() for t in thumbs
    )
    assert os.path.isfile(page)


def test_a_report_of_another_model_or_split_is_not_reused(tmp_path):
    home = tmp_path / "home"
    earlier = _report_data()
    earlier.artifacts = {"serving_model": "/m/1", "eval_examples": "/x/Split-eval"}
    build.write_report(str(home / "runs" / "run-1" / "report"), earlier)
    for name in (runs.CONFIG_FILE, runs.SUMMARY_FILE):
        (home / "runs" / "run-1" / name).write_text("{}")
    now = str(home / "runs" / "run-2" / "report")
    cap = earlier.max_misclassified
    assert build.earlier_report(str(home), now, _artifacts("/m/2"), cap) == (None, None)
    assert build.earlier_report(str(home), now, _artifacts("/m/1", "/y/Split-eval"), cap) == (None, None)
    assert build.earlier_report(str(home), now, _artifacts("/m/1"), cap + 1) == (None, None)
    assert build.earlier_report(str(home), now, _artifacts("/m/1"), cap)[0] is not None
    trained = dataclasses.replace(_artifacts("/m/1"), states={"Trainer": "COMPLETE"})
    assert build.earlier_report(str(home), now, trained, cap) == (None, None)  # a new model: not searched
    # A thumbnail gone from the earlier report: it is not reused (the model runs again).
    os.remove(os.path.join(str(home / "runs" / "run-1" / "report"), earlier.misclassified[0].thumbnail))
    assert build.earlier_report(str(home), now, _artifacts("/m/1"), cap) == (None, None)


def test_predictions_from_an_already_loaded_model_equal_a_load_of_the_saved_model(serving_model, tmp_path):
    """The report's predictions, from its own load (TF1 session) and from the object a local run's
    Evaluator loaded (tf.saved_model.load): the same scores, in batches, and the object is used."""
    import tensorflow as tf

    from tests import helpers

    items = serving_model.items[:7]
    records = helpers.write_tfrecords(str(tmp_path / "eval" / "eval.tfrecord"), items)
    loaded = tf.saved_model.load(serving_model.export_dir)
    calls = []

    class Counted:  # the loaded object, with its serving_default's calls counted
        signatures = {
            "serving_default": lambda examples: (
                calls.append(len(examples)) or loaded.signatures["serving_default"](examples=examples)
            )
        }

    with data.EvalPredictions(serving_model.export_dir, records, batch_size=3) as own:
        own_rows = [(p.record, p.label, p.scores) for p in own]
        assert own.from_loaded is False
    with data.EvalPredictions(serving_model.export_dir, records, batch_size=3, loaded=Counted()) as given:
        given_rows = [(p.record, p.label, p.scores) for p in given]
        assert given.from_loaded is True and given.class_names == own.class_names
    assert calls == [3, 3, 1]  # every batch went through the given object
    assert (
        [r[:2] for r in given_rows]
        == [r[:2] for r in own_rows]
        == [(i, lbl) for i, (_, lbl) in enumerate(items)]
    )
    np.testing.assert_allclose([r[2] for r in given_rows], [r[2] for r in own_rows], rtol=1e-6, atol=1e-7)

    # An object without the signature is not used: the report loads the model itself.
    with data.EvalPredictions(serving_model.export_dir, records, loaded=object()) as fallback:
        assert fallback.from_loaded is False
        fallback_scores = [p.scores for p in fallback]
    # Its default batch size differs from 3: the same model in other batches may differ in the
    # last bits on some CPUs (how oneDNN blocks a batch), so the scores are compared to float32 precision.
    np.testing.assert_allclose(fallback_scores, [r[2] for r in own_rows], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("given_model", [False, True], ids=["own load", "loaded object"])
@pytest.mark.parametrize("read", ["all", "one"])
def test_closing_the_predictions_ends_the_eval_iterator_without_the_collector(
    serving_model, tmp_path, given_model, read
):
    """Closing (leaving the `with`) frees the eval split's tf.data iterator by reference count,
    also when the predictions were read only in part: none is left to a later collection."""
    import gc
    import weakref

    import tensorflow as tf

    from tests import helpers

    records = helpers.write_tfrecords(str(tmp_path / "eval.tfrecord"), serving_model.items[:7])
    loaded = tf.saved_model.load(serving_model.export_dir) if given_model else None
    gc.collect()
    gc.disable()
    try:
        with data.EvalPredictions(
            serving_model.export_dir, records, batch_size=3, loaded=loaded
        ) as predictions:
            assert predictions.from_loaded is given_model
            iterator = weakref.ref(predictions._batches._iterator)  # the OwnedIterator under the numpy one
            rows = iter(predictions)
            first = next(rows)
            rest = list(rows) if read == "all" else []
        assert first.record == 0 and len(rest) == (6 if read == "all" else 0)
        assert iterator() is None, "close() left the eval iterator alive"
        # Nor is the object itself in a reference cycle (it holds the session until freed).
        held = weakref.ref(predictions)
        del rows, predictions
        assert held() is None, "EvalPredictions is in a reference cycle: it waits for the garbage collector"
    finally:
        gc.enable()


def test_the_curves_name_the_validation_slice_not_the_eval_split():
    """`val_*` is early stopping's slice held out of train; the eval split that gates is elsewhere."""
    from imgpipe.report import figures

    history = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "fine_tune_loss": [0.4]}
    assert figures._phase_series(history, "loss") == {
        "train": [1.0, 0.5, 0.4],
        "validation (held out of train)": [1.1, 0.7],
        "refit on all of train (the model kept)": [],
    }


def test_a_head_chosen_by_cross_validation_is_described_as_such(tmp_path):
    """On small tasks the folds choose the epochs and the model kept is a refit on all of train: the
    report called the pooled held-out curve "validation (held out of train)", showed the folds'
    stopped epoch as if it were the model's, and never said the model was refit."""
    from imgpipe.report import figures, html

    history = {"loss": [1.0, 0.5, 0.4], "val_loss": [1.1, 0.7, 0.8], "refit_loss": [0.9, 0.5]}
    series = figures._phase_series(history, "loss", folds=5)
    assert series["cross-validation (5 folds, held-out parts pooled)"] == [1.1, 0.7, 0.8]
    assert series["refit on all of train (the model kept)"] == [0.9, 0.5]
    summary = {
        "history": history,
        "best_epoch": 2,
        "stopped_epoch": 3,
        "refit_epochs": 2,
        "selection_folds": 5,
        "notes": ["head: epoch 2 chosen by 5-fold cross-validation on the train split; refit on the whole "
                  "train split for 2 epochs"],
    }  # fmt: skip
    assert data.early_stopping_entries(summary) == {
        "best_epoch": 2,
        "stopped_epoch": 3,
        "refit_epochs": 2,
        "selection_folds": 5,
    }
    d = dataclasses.replace(
        _report_data(["a", "b"], n=10),
        history=history,
        early_stopping=data.early_stopping_entries(summary),
        training_notes=summary["notes"],
        selection_folds=5,
    )
    page = html.render(d, {"training_curves": "training_curves.png"})
    assert "How the head was trained" in page and "refit on the whole train split for 2 epochs" in page
    assert "<td>refit_epochs</td>" in page
    assert "training:\n  head: epoch 2 chosen by 5-fold cross-validation" in text.render(d)
    loaded = data.ReportData.from_dict(json.loads(json.dumps(d.to_dict())))
    assert (loaded.training_notes, loaded.selection_folds) == (summary["notes"], 5)
    figures.training_curves(history, str(tmp_path / "curves.png"), folds=5)  # draws
    assert (tmp_path / "curves.png").stat().st_size > 0
    # Fine-tuning continues the refit (the model kept), not the early-stopping run: drawn after it.
    tuned = {**history, "fine_tune_loss": [0.45, 0.42], "fine_tune_val_loss": [0.6, 0.55]}
    series = figures._phase_series(tuned, "loss", folds=5)
    assert series["train"] == [1.0, 0.5, 0.4]
    assert series["refit on all of train (the model kept)"] == [0.9, 0.5, 0.45, 0.42]
    fine_val = series["cross-validation (5 folds, held-out parts pooled), fine-tune"]
    assert [v for v in fine_val if v == v] == [0.6, 0.55] and len(fine_val) == 4  # NaN: no point
    assert figures._fine_tune_start(tuned) == 2
    figures.training_curves(tuned, str(tmp_path / "tuned.png"), folds=5)


def test_labels_that_print_alike_are_told_apart_in_the_report(tmp_path):
    """Two classes, one text in two Unicode forms (records made elsewhere, anomalies allowed): the
    text and the page give the one not in NFC with its code points, the axes mark it."""
    from imgpipe.report import figures, html

    composed, decomposed = "caf\u00e9", "cafe\u0301"
    d = _report_data([composed, decomposed, "tea"], n=30)
    marked = f"{decomposed} (U+0063 U+0061 U+0066 U+0065 U+0301)"
    shown = text.render(d, limit=30)
    assert marked in shown and f"{composed} (" not in shown
    assert any(f"true {marked}" in line or f"predicted {marked}" in line for line in shown.splitlines())
    page = html.render(d, {})
    assert marked in page and f"<b>{composed} (" not in page
    assert figures._short(decomposed) == f"{decomposed} (not NFC)" and figures._short(composed) == composed
    assert len(figures._short("x" * 40 + "\u0301")) <= figures._LABEL_CHARS + 1
    # Long names alike at the start keep their ends on the axes; names alike even so are numbered.
    long = ["photos_of_the_north_site_2021", "photos_of_the_north_site_2022", "cat"]
    assert figures._axis_labels(long) == ["photos_o\u2026site_2021", "photos_o\u2026site_2022", "cat"]
    same_ends = ["a" * 30 + "b" * 30, "a" * 30 + "c" + "b" * 30]
    assert figures._axis_labels(same_ends) == [
        "aaaaaaaa\u2026bbbbbbbbb #1",
        "aaaaaaaa\u2026bbbbbbbbb #2",
    ]


def test_misclassified_images_are_named_by_their_files_from_ingests_index(tmp_path):
    """The report's record numbers are ExampleGen's order; ingest's image_files.jsonl, matched by
    the image bytes' SHA-256, names each misclassified image's file in the text, the page and
    report.json (train entries never name an eval image; no index: record numbers only)."""
    import hashlib

    from imgpipe.ingest.contract import FILES_FILE

    d = _report_data(cap=3)
    records = tmp_path / "records"
    records.mkdir()
    first, second = d.misclassified[:2]
    lines = [
        {"split": "eval", "sha256": hashlib.sha256(first.image).hexdigest(), "path": "cats/IMG 1.jpg"},
        {"split": "train", "sha256": hashlib.sha256(second.image).hexdigest(), "path": "dogs/wrong.jpg"},
    ]
    (records / FILES_FILE).write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    build.name_files(d, str(tmp_path / "elsewhere"))
    assert all(m.file is None for m in d.misclassified)
    build.name_files(d, str(records))
    assert [m.file for m in d.misclassified] == ["cats/IMG 1.jpg", None, None]
    page = build.write_report(str(tmp_path / "report"), d)
    assert (
        f"eval record {first.record}<br>cats/<wbr>IMG 1.<wbr>jpg</small>"
        in open(page, encoding="utf-8").read()
    )
    assert f"record {first.record:>5}" in text.render(d) and "cats/IMG 1.jpg" in text.render(d)
    saved = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    assert saved["misclassified"][0]["file"] == "cats/IMG 1.jpg"
    # Lines that are no entry (not JSON, a list, a number, a field missing or not text) are
    # skipped with a note; the entries among them still name their files.
    entry = {"split": "eval", "sha256": hashlib.sha256(second.image).hexdigest(), "path": "dogs/b.jpg"}
    bad = ["not json", "[1, 2]", "3", "null", json.dumps({**entry, "path": 7}), json.dumps({"split": "eval"})]
    (records / FILES_FILE).write_text("\n".join([*bad, json.dumps(entry), ""]), encoding="utf-8")
    build.name_files(d, str(records))
    assert d.misclassified[1].file == "dogs/b.jpg"
    assert d.notes[-1].startswith(f"6 line(s) of {records / FILES_FILE} are not a file's entry")
    (records / FILES_FILE).write_bytes(b"\xff\xfe not text\n")
    build.name_files(d, str(records))
    assert d.notes[-1].startswith("the image files could not be named")


def test_the_gate_panel_shows_each_classs_precision_and_answers():
    record = dict(
        _gate_record(["ok", "defect"]),
        per_class_precision={"defect": 20 / 74, "ok": 1.0},
        per_class_answered={"defect": 74, "ok": 126},
        min_class_precision=0.5,
    )
    details = dict(data.gate_from_record(record).details)
    assert details["min_class_precision"] == "0.5000"
    assert details["per_class_precision"] == "defect: 0.2703 of 74 answers, ok: 1.0000 of 126 answers"
    assert "per_class_precision" not in dict(data.gate_from_record(_gate_record(["ok"])).details)


def test_the_pairs_most_taken_for_each_other_say_when_they_are_not_told_apart():
    """Two folders of one concept ("six_a", "six_b") score about 1/2 between them: every recall
    passes the 0.05 floor, and only the confusion matrix showed it. The report names the pair."""
    from imgpipe.report import html

    names = ["five", "six_a", "six_b", "seven"]
    matrix = [
        [18, 1, 0, 1],
        [0, 9, 11, 0],  # six_a: 9 right, 11 called six_b
        [1, 10, 9, 0],  # six_b: 9 right, 10 called six_a
        [2, 0, 0, 18],
    ]
    pairs = data.confused_pairs(names, matrix)
    assert [(p.a, p.b, p.a_as_b, p.b_as_a) for p in pairs] == [
        ("six_a", "six_b", 11, 10),
        ("five", "seven", 1, 2),
        ("five", "six_a", 1, 0),
        ("five", "six_b", 0, 1),
    ]
    assert (pairs[0].right, pairs[0].between, pairs[0].at_chance) == (18, 39, True)
    assert pairs[1].at_chance is False  # 36 of 39 right between five and seven
    d = dataclasses.replace(_report_data(names, n=8), class_names=names, rows=names, confusion=matrix)
    assert (
        "six_a / six_b: 11 + 10 mistakes, 18 of 39 right between the two (no better than chance)"
        in text.render(d)
    )
    page = html.render(d, {})
    assert "18 of 39 <b>(no better than chance)</b>" in page and "36 of 39</td>" in page
    assert "\ntold apart no better than chance, then most often taken for each other:\n" in text.render(d)
    assert "<p>Pairs of classes told apart no better than chance, then those most" in page
    # No pair at chance: the heading does not say there is one.
    told_apart = [[18, 1, 0, 1], [0, 18, 2, 0], [1, 1, 18, 0], [2, 0, 0, 18]]
    d = dataclasses.replace(d, confusion=told_apart)
    assert "\nmost often taken for each other:\n" in text.render(d) and "chance, then" not in text.render(d)
    assert "<p>Pairs of classes most often taken for each other:</p>" in html.render(d, {})
    assert data.confused_pairs(["a", "b"], [[5, 0], [0, 5]]) == []
    # The pair at chance is listed whatever the mistakes of the others (the gate's log promises
    # the report names it); pairs with under 10 answers between them are not tested, as the gate.
    k = ["c0", "c1", "c2", "c3", "c4", "c5", "t1", "t2"]
    many = [[0] * 8 for _ in k]
    for i in range(6):
        many[i][i] = 40
    for i, j in ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5)):
        many[i][j] = many[j][i] = 4  # 8 mistakes each, 80 of 88 right: told apart
    many[6][6], many[6][7], many[7][7], many[7][6] = 3, 3, 3, 3  # 6 of 12: at chance, 6 mistakes
    listed = data.confused_pairs(k, many)
    assert [(p.a, p.b) for p in listed][:1] == [("t1", "t2")] and len(listed) == 6 and listed[0].at_chance
    few = data.confused_pairs(["a", "b"], [[1, 1], [1, 0]])
    assert [(p.at_chance, p.tested) for p in few] == [(False, False)]
    # The gate's rule for "answered as each other" (gate_decision.classes_at_chance): each class's
    # eval images mostly answered with the other. 'b' went mostly to 'c' (24 of 25): no swap.
    third = data.confused_pairs(["b", "c", "d"], [[0, 24, 1], [0, 25, 0], [25, 0, 0]])
    [bd] = [p for p in third if (p.a, p.b) == ("b", "d")]
    assert bd.at_chance and not bd.each_other
    swapped = data.confused_pairs(["six", "nine"], [[0, 7], [7, 0]])
    assert swapped[0].each_other
    assert "(too few answers to test)" in html.render(
        dataclasses.replace(
            _report_data(["a", "b"], n=4), class_names=["a", "b"], rows=["a", "b"], confusion=[[1, 1], [1, 0]]
        ),
        {},
    )


def test_the_page_says_what_became_of_a_blessed_model_and_an_unreachable_floor():
    """A model blessed by the gate, then kept back by pre-push validation, showed only a green
    BLESSED; a floor of 1.25 (no result can reach it) was printed as a number."""
    from imgpipe.report import html

    summary = {
        "blessed": True,
        "pushed": None,
        "push_skipped": "pre-push validation failed: p99 latency 12 ms > 0.01 ms",
    }
    d = dataclasses.replace(_report_data(["a", "b"], n=8), **data._deployment(summary, True))
    assert (
        d.withdrawn and d.deployment == "not pushed: pre-push validation failed: p99 latency 12 ms > 0.01 ms"
    )
    d = dataclasses.replace(d, gate=dataclasses.replace(d.gate, blessed=True, reasons=[], floor=1.25))
    page = html.render(d, {})
    assert "BLESSED, NOT PUSHED" in page and "not pushed: pre-push validation failed" in page
    assert "unreachable (eval split too small)" in page
    out = text.render(d)
    assert "gate: BLESSED, NOT PUSHED" in out and "unreachable (eval split too small)" in out
    pushed = data._deployment({"pushed": "/serving/m/1796000000"}, True)
    assert pushed == {"deployment": "pushed as version 1796000000 (/serving/m/1796000000)"}
    assert data._deployment({"push_skipped": "identical to the served version 17"}, True) == {
        "deployment": "not pushed: identical to the served version 17",
        "withdrawn": False,
    }
    assert data.ReportData.from_dict({**d.to_dict()}).deployment == d.deployment


def test_the_data_gates_warnings_are_the_reports_notes(tmp_path):
    """Labels corrected since the served model trained explain a drop in the numbers; the log
    warned of them and the page said nothing."""
    from components.artifacts import REPORT_FILE
    from imgpipe.orchestration import metadata
    from pipeline.pipeline import DATA_GATE_ID

    assert (metadata.DATA_GATE_NODE, metadata.DATA_GATE_FILE) == (DATA_GATE_ID, REPORT_FILE)
    warning = "9 of the 146 images trained as 'five' are now labelled 'six': label corrections?"
    with open(os.path.join(tmp_path, REPORT_FILE), "w", encoding="utf-8") as f:
        json.dump({"warnings": [warning]}, f)
    report = metadata.data_gate_report(str(tmp_path))
    assert report["warnings"] == [warning] and metadata.data_gate_report(str(tmp_path / "none")) is None
    # The predictions reused from an earlier report of the same model: no model is run here.
    previous = dataclasses.replace(_report_data(), artifacts={"serving_model": "m", "eval_examples": "e"})
    artifacts = metadata.RunArtifacts("run-2", {}, "e", "m", None, None)
    gathered = data.gather(
        artifacts,
        {},
        None,
        None,
        max_misclassified=previous.max_misclassified,
        previous=previous,
        data_gate=report,
    )
    assert f"data gate: {warning}" in gathered.notes


@pytest.mark.parametrize("umask,mode", [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)])
def test_the_report_folder_is_made_as_the_umask_says(tmp_path, umask, mode):
    """It was 0755 whatever the umask: readable by everyone inside a home made private (077)."""
    old = os.umask(umask)
    try:
        build.write_report(str(tmp_path / "report"), _report_data(cap=1))
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "report").st_mode & 0o777 == mode


@pytest.mark.parametrize("size,batch", [(None, 128), (224, 128), (1024, 6)])
def test_the_report_runs_the_model_on_fewer_records_a_call_for_large_images(monkeypatch, size, batch):
    """At 1024 px the report ran the model 128 records a call: a 7.0 GB peak after the Pusher, the
    run's largest (the Evaluator's calls were bounded already)."""
    from imgpipe.orchestration import metadata

    asked = []

    class Stop(Exception):
        pass

    def predictions(serving_model, eval_examples, batch_size=data.PREDICT_BATCH, loaded=None):
        asked.append(batch_size)
        raise Stop

    monkeypatch.setattr(data, "EvalPredictions", predictions)
    artifacts = metadata.RunArtifacts("run-1", {}, "e", "m", None, None)
    with pytest.raises(Stop):
        data.gather(artifacts, {}, None, None, image_size=size)
    assert asked == [batch]


def test_the_text_tables_columns_line_up_after_wide_class_names():
    """'日本' takes four terminal columns, not two: the numbers after it shifted left."""
    import unicodedata

    d = _report_data(["日本", "cafe\u0301", "cat"])
    lines = text.render(d).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("class ") and "precision" in line)
    rows = lines[start : start + 4]  # the heading and one row a class

    def columns(s):
        return sum(
            0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s
        )

    assert any(row.startswith("日本") for row in rows), rows
    assert len({columns(row) for row in rows}) == 1, rows  # the numbers end in the same column


def test_a_shown_report_says_when_its_pushed_version_was_pruned_or_rolled_back(tmp_path, capsys):
    """A stored report said "pushed as version N" after `imgpipe prune` had deleted N, or
    `imgpipe rollback` had taken it out of serving: shown now, it says so."""
    from serving.model_fingerprint import ROLLBACK_LOG

    folder = _record(tmp_path, "r1", with_report=True, mtime=1_000_000)
    page = os.path.join(build.report_dir(folder), build.INDEX_FILE)
    version = tmp_path / "serving" / "m" / "1796000000"
    os.makedirs(version)
    runs.update_summary(folder, {"report": page, "report_error": None, "pushed": str(version)})

    def shown() -> tuple[dict, str]:
        assert cli.main(["report", "r1", "--home", str(tmp_path)]) == 0
        captured = capsys.readouterr()
        return json.loads(captured.out), captured.err

    out, err = shown()
    assert out["deployment_since"] is None and "does not serve" not in err and "rollback" not in err
    with open(tmp_path / ROLLBACK_LOG, "w", encoding="utf-8") as f:
        f.write(json.dumps({"marked": [{"version": 1796000000}]}) + "\n")
    out, err = shown()
    assert out["deployment_since"] == (
        "version 1796000000 was taken out of serving by `imgpipe rollback` after this run"
    )
    # The JSON's deployment is the report's own (said once); the text line says both.
    assert out["deployment_since"] in err and out["deployment_since"] not in out["deployment"]
    os.rmdir(version)
    out, err = shown()
    assert "version 1796000000 is no longer in the serving dir (pruned or removed since)" in err
    assert out["deployment"] == ""  # this report's record wrote no deployment line
    # Pruned after a rollback served it again as a copy: the copy is named, the model still there.
    copy = tmp_path / "serving" / "m" / "1796000500"
    os.makedirs(copy)
    with open(tmp_path / ROLLBACK_LOG, "a", encoding="utf-8") as f:
        served = {
            "serving_dir": str(tmp_path / "serving" / "m"),
            "version": 1796000500,
            "copy_of": "1796000000",
        }
        f.write(json.dumps({"served": served}) + "\n")
    out, err = shown()
    assert out["deployment_since"] == (
        "version 1796000000 is no longer in the serving dir (pruned since); its model is there as version "
        "1796000500, a copy `imgpipe rollback` served"
    )
    # A later run's baseline, that model, is named by its copy, not by the folder gone; while
    # the old version is still there too, by both (the copy is what a server answers with).
    from imgpipe.orchestration.summary import _as_served_now

    os.makedirs(version)
    both = _as_served_now(str(tmp_path), {"run_id": "r1", "pushed": str(version)})
    assert both == {"run_id": "r1", "pushed": str(version), "served_as": str(copy)}
    assert data.name_baseline("latest blessed model; allowed regression 0", both) == (
        "latest blessed model (trained by run r1, version 1796000000 (served again as version 1796000500, "
        "a rollback's copy)); allowed regression 0"
    )
    os.rmdir(version)

    baseline = _as_served_now(str(tmp_path), {"run_id": "r1", "pushed": str(version)})
    assert baseline == {"run_id": "r1", "pushed": str(copy), "copy_of": "1796000000"}
    assert data.name_baseline("latest blessed model; allowed regression 0", baseline) == (
        "latest blessed model (trained by run r1, version 1796000500 (a rollback's copy of version "
        "1796000000, pruned since)); allowed regression 0"
    )
    assert _as_served_now(str(tmp_path), {"run_id": "r1", "pushed": str(copy)}) == {
        "run_id": "r1",
        "pushed": str(copy),
    }


def test_long_names_and_paths_break_no_word_or_number_on_the_page(tmp_path):
    """Pet breeds as class names and ingest's paths in the gallery and the label check: captions
    ran over their neighbours (the page 2,915 px wide in a 1,265 px window), and cells that could
    break anywhere squeezed the gate's labels and numbers to "cand / idate" and "0.75" above "9".
    Laid out by Chromium now: no word wider than its cell, nothing wider than the window."""
    from imgpipe.report import html

    names = [
        "staffordshire_bull_terrier", "american_pit_bull_terrier", "Egyptian_Mau", "english_cocker_spaniel",
        "german_shorthaired", "great_pyrenees", "yorkshire_terrier", "scottish_terrier", "Abyssinian",
        "Bengal", "Birman", "Bombay", "British_Shorthair", "Maine_Coon", "Persian", "Ragdoll",
    ]  # fmt: skip
    d = _report_data(names, n=64, cap=24)
    d = dataclasses.replace(
        d,
        misclassified=[
            dataclasses.replace(m, file=f"{m.true}/{m.true}_{100 + i}.jpg") for i, m in enumerate(d.misclassified)
        ],
        early_stopping={"early_stopping.head.best_epoch": 2, "early_stopping.head.stopped_epoch": None},
        label_check={
            "held_out": "the validation slice",
            "examined": 120,
            "agreement": 0.764,
            "eval_accuracy": 0.743,
            "eval_accuracy_of": "the head that answered the held-out images (before the refit)",
            "eval_examples": 64,
            "doubted": 2,
            "pairs": [],
            "images": [
                {"position": i, "given": names[i], "answered": names[i + 1], "given_probability": 0.0009,
                 "answered_probability": 0.759, "file": f"{names[i]}/{names[i]}_{i}.jpg"}
                for i in range(2)
            ],
            "warning": None,
        },
    )  # fmt: skip
    page = build.write_report(str(tmp_path / "run" / "report"), d)
    shown = browser.layout(page, str(tmp_path))
    assert shown["broken"] == [], shown["broken"][:10]
    assert shown["scroll_width"] <= shown["window_width"], shown
    text = html.render(d, {})
    # The label check names whose eval accuracy it compares with; an entry with no value is left out.
    assert (
        "(the eval split's accuracy: 0.743, the head that answered the held-out images (before the refit), "
        in text
    )
    assert "stopped_epoch" not in text
    none_shown = html.render(dataclasses.replace(d, max_misclassified=0, misclassified=[]), {})
    assert "none shown (cap 0: --max-misclassified)" in none_shown and "the 0 with" not in none_shown


def test_a_baseline_found_identical_to_a_served_version_is_named_by_that_version(tmp_path):
    """A retrain to the served weights (new eval data) is not pushed again ("identical to version
    N") and becomes the latest blessed model: the next run named it "no push of it recorded", and
    a rollback's copy of version N was not followed to it (an audit). It is named by N now."""
    from components.pusher import IDENTICAL_VERSION_KEY
    from imgpipe.orchestration import metadata
    from imgpipe.orchestration.summary import _as_pushed, _as_served_now
    from tests.mlmd_fixtures import FakeHome

    home = FakeHome(str(tmp_path / "home"))
    config = PipelineConfig(home=home.home, serving_dir=str(tmp_path / "serving"), model_name="m")
    version = os.path.join(config.resolved().model_serving_dir, "1001")
    _, first = home.execute("r1", "Trainer", outputs={"model": ("Model", {})})
    home.execute(
        "r1",
        "Pusher",
        {"model": [first["model"]]},
        {"pushed_model": ("PushedModel", {"pushed": 1, "pushed_destination": version})},
    )
    _, again = home.execute("r2", "Trainer", outputs={"model": ("Model", {})})
    home.execute(
        "r2",
        "Pusher",
        {"model": [again["model"]]},
        {"pushed_model": ("PushedModel", {"pushed": 0, IDENTICAL_VERSION_KEY: "1001"})},
    )
    evaluator, _ = home.execute("r3", "Evaluator", {"baseline_model": [again["model"]]})
    baseline = metadata.baseline_model(home.store, evaluator)
    assert baseline == {"run_id": "r2", "pushed": None, "identical_to": "1001"}
    named = _as_pushed(config, baseline)
    assert named == {"run_id": "r2", "pushed": version, "identical_to": "1001"}
    assert data.name_baseline("latest blessed model; allowed regression 0", named) == (
        "latest blessed model (trained by run r2, not pushed: the same model as version 1001); allowed regression 0"
    )
    # A rollback served version 1001 again as a copy: followed, as for a pushed baseline.
    os.makedirs(version)
    copy = os.path.join(config.resolved().model_serving_dir, "1002")
    os.makedirs(copy)
    from serving.model_fingerprint import ROLLBACK_LOG

    served = {"serving_dir": config.resolved().model_serving_dir, "version": 1002, "copy_of": "1001"}
    with open(os.path.join(home.home, ROLLBACK_LOG), "w", encoding="utf-8") as f:
        f.write(json.dumps({"served": served}) + "\n")
    assert _as_served_now(home.home, named)["served_as"] == copy
