"""The run report's numbers: gathered from ML Metadata, the run's artifacts and the model's predictions.

`gather()` runs the Trainer's exported model (its `serving_default` signature,
serialized tf.Examples in) once over the eval split that ExampleGen produced
(`EvalPredictions`),
and derives from those predictions the confusion matrix, per-class precision,
recall and support, and the worst misclassified images. The training curves
come from the Trainer's training_summary.json, the gate's decision from the
Evaluator's gate.json (or, for runs older than that record, from the run
summary and the run's config).

`ReportData` is what the figures, the HTML page and the text view are drawn
from; `to_dict()`/`from_dict()` save it as report.json beside the page, so
`imgpipe report` can show a report again without loading TensorFlow.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from components.gate import METRIC_ACCURACY, METRIC_BALANCED, relabel_allowed
from trainer.features import IMAGE_KEY, LABEL_KEY, SCORING_CALL_PIXELS, images_per_call, label_text

if TYPE_CHECKING:  # annotations only: ML Metadata's bindings take a second to import
    from imgpipe.orchestration.metadata import RunArtifacts

log = logging.getLogger(__name__)

DEFAULT_MAX_MISCLASSIFIED = 48
PREDICT_BATCH = 128


class ReportDataError(RuntimeError):
    """A number the report needs cannot be had; the message names the artifact or record."""


@dataclasses.dataclass
class ClassRow:
    """One true class: its support and the model's precision and recall on it (None: undefined)."""

    name: str
    support: int  # eval examples of this true class
    predicted: int  # eval examples the model put in this class
    correct: int
    precision: float | None
    recall: float | None
    in_vocabulary: bool = True  # False: a label the model has no class for


@dataclasses.dataclass
class Misclassified:
    """An eval image the model got wrong; `record` is its position in the eval split."""

    record: int
    true: str
    predicted: str
    score: float  # the model's score for the (wrong) predicted class
    true_score: float | None  # its score for the true class (None: not in the vocabulary)
    thumbnail: str | None = None  # the thumbnail's path inside the report folder, once written
    file: str | None = None  # the image's file, from ingest's image_files.jsonl (None: not known)
    image: bytes | None = dataclasses.field(default=None, repr=False)  # encoded; not saved


@dataclasses.dataclass
class GateView:
    """The gate's decision and the numbers it compared, as the report shows them."""

    source: str  # where the numbers came from (gate.json, or the run summary for older runs)
    blessed: bool | None
    candidate: float | None
    baseline: float | None
    floor: float | None
    floor_note: str
    baseline_note: str
    reasons: list[str]
    details: list[tuple[str, str]]  # further (name, value) rows
    metric: str = "accuracy"  # what candidate, baseline and floor measure: "accuracy" or "balanced accuracy"
    judged_on: str = "the eval split"  # the records the candidate's number is on
    # The candidate's number on the eval examples the baseline was compared on, when those are not
    # all the candidate is judged on (images a model trained on left out, a class added): the
    # baseline's number sits beside this one, not beside `candidate`. None: the same examples.
    compared_candidate: float | None = None
    compared_on: str = ""


@dataclasses.dataclass
class ReportData:
    run_id: str
    class_names: list[str]  # the model's classes, sorted by name (the confusion matrix's columns)
    rows: list[str]  # true classes (confusion matrix rows): class_names, then unknown labels
    confusion: list[list[int]]  # [true row][predicted column] counts
    per_class: list[ClassRow]
    examples: int  # eval examples with a label (the ones counted)
    unlabelled: int  # eval examples without a label: predicted, not counted
    accuracy: float | None  # over `examples`, from the predictions
    evaluator_accuracy: float | None  # what the Evaluator (TFMA) measured
    gate: GateView
    history: dict[str, list[float]]  # training_summary.json `history` (empty: none found)
    early_stopping: dict[str, Any]  # best/stopped epoch entries of the training summary
    misclassified: list[Misclassified]  # worst first, at most `max_misclassified`
    misclassified_total: int
    max_misclassified: int
    artifacts: dict[str, str | None]
    states: dict[str, str]
    notes: list[str]  # things a reader should know (records skipped, older run, ...)
    # Where the predictions came from: PREDICTIONS_LOADED, PREDICTIONS_EVALUATOR or
    # "report of run <id>" ("" in reports written before this field).
    predictions_from: str = ""
    # How the Trainer trained the head, in its own words (training_summary.json `notes`: the
    # validation slice or cross-validation that chose the epochs, the refit, class weights);
    # and the folds that chose them (None: the validation slice did). Empty / None in reports
    # written before these fields.
    training_notes: list[str] = dataclasses.field(default_factory=list)
    selection_folds: int | None = None
    # What became of the model after the gate (`deployment`): pushed as which version, or why not;
    # `withdrawn`: the gate blessed it and pre-push validation (or a later check) withdrew that.
    # "" / False in reports written before these fields.
    deployment: str = ""
    withdrawn: bool = False
    # The Trainer's label check (trainer/label_check.py) as the run's JSON holds it (the doubted
    # train images with their files); None when not made, or in reports written before it.
    label_check: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for m in out["misclassified"]:
            m.pop("image", None)
        out["gate"]["details"] = [list(row) for row in self.gate.details]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReportData:
        fields = dict(d)
        fields["per_class"] = [ClassRow(**r) for r in d["per_class"]]
        fields["misclassified"] = [Misclassified(**m) for m in d["misclassified"]]
        gate = dict(d["gate"])
        gate["details"] = [tuple(row) for row in gate["details"]]
        fields["gate"] = GateView(**gate)
        return cls(**fields)


# ------------------------------------------------------------------------------ predictions
PREDICTIONS_LOADED = "the SavedModel, loaded for the report"
PREDICTIONS_EVALUATOR = "the SavedModel as the Evaluator loaded it in this run"


@dataclasses.dataclass
class Prediction:
    """The model's scores for one eval record, with its label and encoded image."""

    record: int
    label: str | None
    scores: list[float]
    image: bytes


def _label_and_image(serialized: bytes, record: int) -> tuple[str | None, bytes]:
    import tensorflow as tf

    try:
        example = tf.train.Example.FromString(serialized)
    except Exception as e:  # noqa: BLE001 - a protobuf DecodeError; re-raised naming the record
        raise ReportDataError(f"eval record {record} is not a tf.Example: {e}") from e
    feats = example.features.feature
    image = (
        feats[IMAGE_KEY].bytes_list.value[0]
        if IMAGE_KEY in feats and feats[IMAGE_KEY].bytes_list.value
        else b""
    )
    labels = feats[LABEL_KEY].bytes_list.value if LABEL_KEY in feats else []
    label = labels[0].decode("utf-8", errors="replace") if labels else None
    return label, image


def _outputs_as_numpy(outputs: dict[str, Any]) -> dict[str, Any]:
    """A signature's `scores` and `classes` tensors as numpy arrays (what a session run returns)."""
    return {"scores": outputs["scores"].numpy(), "classes": outputs["classes"].numpy()}


class EvalPredictions:
    """The trained model's scores for each eval record, computed batch by batch as they are read.

    The model is loaded once, the way TF Serving loads it: the `serving_default`
    signature from the SavedModel's MetaGraph, run in a graph session. Rebuilding
    the Python object graph instead (tf.saved_model.load) restores every Keras
    layer's saved functions and took 3x as long for the demo's DenseNet121.
    Use as a context manager (it closes the session).

    `loaded`: the same SavedModel already loaded in this process (`tf.saved_model.load`; in
    a local run, the object the Evaluator's TFMA loaded and ran: components/loaded_models.py).
    Its `serving_default` is then called instead: the same graph, without a second load
    and a second first call (~2 s for the demo's model), with the Evaluator's graph
    optimisation choice (components/graph_optimization.py).
    """

    def __init__(
        self, serving_model: str, eval_examples: str, batch_size: int = PREDICT_BATCH, loaded: Any = None
    ):
        from trainer.data import raw_examples

        try:
            self._batches = raw_examples(eval_examples).batch(batch_size).as_numpy_iterator()
        except FileNotFoundError as e:
            raise ReportDataError(f"eval examples: {e}") from e
        self._session = None
        signature = getattr(loaded, "signatures", {}).get("serving_default") if loaded is not None else None
        self.from_loaded = signature is not None
        if signature is not None:
            self._run = lambda batch: _outputs_as_numpy(signature(examples=batch))
        else:
            self._load_session(serving_model)
        self._first = next(self._batches, None)
        if self._first is None:
            self.close()
            raise ReportDataError(f"the eval split {eval_examples} has no records")
        first = self._run(self._first)
        # The classes output repeats the vocabulary on every row.
        self.class_names = [c.decode("utf-8") for c in first["classes"][0]]
        self._first_scores = first["scores"]

    def _load_session(self, serving_model: str) -> None:
        import tensorflow as tf

        graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=graph)
        tf_logger = tf.get_logger()
        level = tf_logger.level
        tf_logger.setLevel(logging.ERROR)  # the TF1 loader announces its deprecation on every first use
        try:
            with graph.as_default():
                meta = tf.compat.v1.saved_model.loader.load(
                    self._session, [tf.saved_model.SERVING], serving_model
                )
        except Exception as e:  # noqa: BLE001 - a missing or unreadable SavedModel, named
            self.close()
            raise ReportDataError(
                f"cannot load the trained model {serving_model}: {type(e).__name__}: {e}"
            ) from e
        finally:
            tf_logger.setLevel(level)
        if "serving_default" not in meta.signature_def:
            self.close()
            raise ReportDataError(f"{serving_model} has no serving_default signature")
        signature = meta.signature_def["serving_default"]
        session, name = self._session, signature.inputs["examples"].name
        outputs = {"scores": signature.outputs["scores"].name, "classes": signature.outputs["classes"].name}
        # Not a method or a lambda over self: that would be a reference cycle, and the eval
        # split's iterator in it would wait for the garbage collector (see close).
        self._run = lambda batch: session.run(outputs, {name: batch})

    def __iter__(self) -> Iterator[Prediction]:
        record = 0
        batch, scores = self._first, self._first_scores
        while batch is not None:
            for serialized, row in zip(batch, scores, strict=True):
                label, image = _label_and_image(serialized, record)
                yield Prediction(record, label, [float(s) for s in row], image)
                record += 1
            batch = next(self._batches, None)
            scores = self._run(batch)["scores"] if batch is not None else None

    def close(self) -> None:
        """Close the session and end the eval split's iterator now.

        An autotuned tf.data iterator left to the garbage collector is destroyed at some
        later collection, in the middle of other work, and such a destructor has been seen
        to wait there for the iterator's autotuning thread with the GIL held (34-49 s
        stalls in the test suite; BENCHMARKS.md, "Another CPU"): so drop it here.
        """
        self._batches = iter(())
        self._first = self._first_scores = None
        if self._session is not None:
            self._session.close()

    def __enter__(self) -> EvalPredictions:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def reusable(previous: ReportData, artifacts: RunArtifacts, max_misclassified: int) -> bool:
    """Whether `previous` holds this run's predictions: the same model and eval split artifacts."""
    seen = previous.artifacts
    return (
        bool(artifacts.serving_model and artifacts.eval_examples)
        and seen.get("serving_model") == artifacts.serving_model
        and seen.get("eval_examples") == artifacts.eval_examples
        and previous.max_misclassified == max_misclassified
    )


# ------------------------------------------------------------------------------ metrics
@dataclasses.dataclass
class Tally:
    """Confusion counts and the worst mistakes, accumulated one prediction at a time."""

    class_names: list[str]  # the model's classes in its index order (the order of `scores`)
    max_misclassified: int
    confusion: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # label -> counts by index
    unlabelled: int = 0
    misclassified_total: int = 0
    _worst: list[tuple[float, int, Misclassified]] = dataclasses.field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._index = {name: i for i, name in enumerate(self.class_names)}

    def add(self, record: int, label: str | None, scores: list[float], image: bytes = b"") -> None:
        if len(scores) != len(self.class_names):
            raise ReportDataError(
                f"eval record {record}: the model gave {len(scores)} scores for {len(self.class_names)} classes"
            )
        if label is None:
            self.unlabelled += 1
            return
        best = max(range(len(scores)), key=scores.__getitem__)
        row = self.confusion.setdefault(label, [0] * len(self.class_names))
        row[best] += 1
        predicted = self.class_names[best]
        if predicted == label:
            return
        self.misclassified_total += 1
        if self.max_misclassified <= 0:
            return
        true_score = scores[self._index[label]] if label in self._index else None
        item = Misclassified(record, label, predicted, scores[best], true_score, image=image)
        # A min-heap of the worst `max_misclassified` so far: memory stays bounded by the cap.
        # Ties go to the earlier record (-record: a later record is "smaller").
        entry = (scores[best], -record, item)
        if len(self._worst) < self.max_misclassified:
            heapq.heappush(self._worst, entry)
        elif entry[:2] > self._worst[0][:2]:
            heapq.heapreplace(self._worst, entry)

    def worst(self) -> list[Misclassified]:
        """The kept misclassified images, highest wrong score first."""
        return [item for _, _, item in sorted(self._worst, key=lambda e: e[:2], reverse=True)]

    def columns(self) -> list[str]:
        """The model's classes in reading order: by name, numbers by value ('2' before '10')."""
        return sorted(self.class_names, key=natural_key)

    def rows(self) -> list[str]:
        """True classes: the model's (as columns()), then eval labels it has no class for."""
        unknown = sorted((label for label in self.confusion if label not in self._index), key=natural_key)
        return self.columns() + unknown

    def matrix(self) -> list[list[int]]:
        """Counts [rows()][columns()]."""
        zeros = [0] * len(self.class_names)
        index = [self._index[c] for c in self.columns()]
        return [[self.confusion.get(r, zeros)[j] for j in index] for r in self.rows()]


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders digit runs by value: 'img2' < 'img10'. isdecimal, as the pattern's \\d:
    isdigit is also true of '²', which int() refuses."""
    return [int(part) if part.isdecimal() else part.lower() for part in re.split(r"(\d+)", name)]


def per_class_rows(rows: list[str], class_names: list[str], matrix: list[list[int]]) -> list[ClassRow]:
    """Precision, recall and support per true class, from the confusion matrix."""
    column_sums = [sum(row[j] for row in matrix) for j in range(len(class_names))]
    out = []
    for i, name in enumerate(rows):
        support = sum(matrix[i])
        known = i < len(class_names)
        correct = matrix[i][i] if known else 0
        predicted = column_sums[i] if known else 0
        out.append(
            ClassRow(
                name=name,
                support=support,
                predicted=predicted,
                correct=correct,
                precision=correct / predicted if predicted else None,
                recall=correct / support if support else None,
                in_vocabulary=known,
            )
        )
    return out


@dataclasses.dataclass(frozen=True)
class ConfusedPair:
    """Two model classes and how often each was taken for the other on the eval split."""

    a: str
    b: str
    a_as_b: int  # eval images of a the model called b
    b_as_a: int
    right: int  # of the images of a and b it called a or b, those it called right
    between: int  # images of a and b it called a or b
    at_chance: bool  # between the two, not told apart better than a coin (one-sided, p 0.05)
    tested: bool = True  # False: under the gate's PAIR_MIN_ANSWERS answers between them: not tested
    # Each mostly answered with the other, far below a coin (gate_decision.answered_as_each_other):
    # eval labels swapped against train's, or pictures turned.
    each_other: bool = False


CONFUSED_PAIRS = 5  # the report lists this many pairs besides those at chance, most mistakes first


def confused_pairs(
    class_names: list[str], matrix: list[list[int]], top: int = CONFUSED_PAIRS
) -> list[ConfusedPair]:
    """Every pair of model classes the model tells apart no better than chance, then the `top`
    others most often taken for each other (a as b plus b as a), most mistakes first: two
    classes that are one concept (one folder split in two) score about 1/2 between them, which
    the per-class recall floor does not catch. The test is the gate's (`pair_at_chance`, once
    the two have PAIR_MIN_ANSWERS answers between them), so these are the pairs gate.json's
    `classes_at_chance` names."""
    from components.gate_decision import PAIR_MIN_ANSWERS, answered_as_each_other, pair_at_chance

    pairs = []
    for i in range(len(class_names)):
        for j in range(i + 1, len(class_names)):
            a_as_b, b_as_a = matrix[i][j], matrix[j][i]
            if not a_as_b + b_as_a:
                continue
            right = matrix[i][i] + matrix[j][j]
            between = right + a_as_b + b_as_a
            tested = between >= PAIR_MIN_ANSWERS
            at_chance = tested and pair_at_chance(right, between)
            each_other = at_chance and answered_as_each_other(
                matrix[i][i], a_as_b, matrix[j][j], b_as_a, sum(matrix[i]), sum(matrix[j])
            )
            pairs.append(
                ConfusedPair(
                    class_names[i],
                    class_names[j],
                    a_as_b,
                    b_as_a,
                    right,
                    between,
                    at_chance,
                    tested,
                    each_other,
                )
            )
    pairs.sort(key=lambda p: (-(p.a_as_b + p.b_as_a), p.a, p.b))
    return [p for p in pairs if p.at_chance] + [p for p in pairs if not p.at_chance][:top]


# ------------------------------------------------------------------------------ training, gate
def early_stopping_entries(training_summary: dict[str, Any]) -> dict[str, Any]:
    """How the head's epochs were chosen: the best/stopped-epoch entries of the training summary
    (dotted keys), the folds that chose them and the epochs the final model was refit for, when
    the Trainer wrote any."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
            return
        parts = prefix.lower().split(".")
        scalar = value is None or isinstance(value, (int, float, str, bool))
        if scalar and any(word in p for p in parts for word in ("best", "stop", "refit", "folds")):
            out[prefix] = value

    for key, value in training_summary.items():
        if key != "history":
            walk(key, value)
    return out


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _compared_on_a_subset(record: Mapping[str, Any]) -> bool:
    """Whether gate.json's baseline comparison left out eval images a model trained on, or copies."""
    baseline = record.get("baseline") or {}
    if _repeats(record) and baseline.get("compared_examples") is not None:
        return True
    seen = baseline.get("seen_eval_examples") or record.get("eval_examples_in_train")
    return bool(seen) and baseline.get("compared_examples") not in (None, record.get("eval_examples"))


def _repeats(record: Mapping[str, Any]) -> int:
    """How many eval records the gate left out as copies of an earlier one (gate.json `judged_on`)."""
    judged = record.get("judged_on")
    repeats = judged.get("repeats") if isinstance(judged, dict) else None
    return repeats if isinstance(repeats, int) else 0


def floor_text(floor: float | None) -> str:
    """A floor as the report prints it: above 1.0 no result can reach it (the gate's way of saying
    the eval split is too small to tell a model from chance)."""
    if floor is None:
        return "-"
    return "unreachable (eval split too small)" if floor > 1.0 else f"{floor:.4f}"


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


MAX_DETAIL_CLASSES = 20  # more classes: the gate's details point to the per-class table


def gate_from_record(record: dict[str, Any]) -> GateView:
    """The gate view of the Evaluator's gate.json (keys per README.md's gates section; missing keys tolerated)."""
    view = _gate_view(record)
    if relabel_allowed(record.get("anomalies_allowed") or []) and (record.get("baseline") or {}).get(
        "compared"
    ):
        # Right under the new labels, which are the truth now; a reader should know why it fell.
        view.baseline_note += (
            "; images it trained on were relabelled since (accepted, a class renamed or two swapped): the "
            "comparison leaves those images out, but it still answers with the names it learned, and the "
            "eval images are scored by the names they have now"
        )
    if isinstance(record.get("floor_note"), str):
        # The gate's own words (Floor.describe), as its log and reasons give them; the notes
        # rebuilt above are for records written before gate.json kept them.
        view.floor_note = record["floor_note"]
    return view


def _gate_view(record: dict[str, Any]) -> GateView:
    if record.get("metric") == METRIC_BALANCED:
        return _balanced_gate(record)
    baseline = record.get("baseline") or {}
    majority = (
        f"majority class {record.get('majority_class')!r} has {_fmt(record.get('majority_share'))} "
        f"of eval + margin {_fmt(record.get('majority_margin'))}"
    )
    min_accuracy = f"min_accuracy {_fmt(record.get('min_accuracy'))}"
    if record.get("floor_source") == "significance":
        n, right, p = _sample(record), record.get("significant_right"), record.get("significance")
        test = f"one-sided binomial test against the majority share {_fmt(record.get('majority_share'))}, p <= {p}"
        if right is None:
            floor_note = f"no result on {n} passes a {test}: too few to tell a model from chance"
        else:
            floor_note = f"{right} right of {n} is the fewest that passes a {test} (above {min_accuracy})"
    elif record.get("floor_source") == "majority":
        floor_note = f"{majority} (above {min_accuracy})"
    elif record.get("majority_class") is not None:  # both bounds, as the summary's reason gives them
        floor_note = f"{min_accuracy} ({majority}: not higher)"
    else:
        floor_note = min_accuracy
    if baseline.get("compared") and baseline.get("identical"):
        baseline_note = (
            "latest blessed model, which is this model (the same weights and graph): no regression"
        )
    elif baseline.get("compared") and baseline.get("shared_classes"):
        shared = ", ".join(repr(c) for c in baseline["shared_classes"])
        seen = baseline.get("seen_eval_examples")
        neither = f" that neither model trained on (it trained on {seen} of the eval split's)" if seen else ""
        baseline_note = (
            f"latest blessed model, on the {baseline.get('compared_examples')} eval examples of the classes "
            f"both models have{neither} ({shared}; {baseline.get('label_change')}), where this model has "
            f"{_fmt(baseline.get('candidate_accuracy'))}; allowed regression {_fmt(baseline.get('max_regression'))}"
        )
    elif baseline.get("compared") and _compared_on_a_subset(record):
        trained = [
            f"{who} trained on {n}"
            for who, n in (
                ("it", baseline.get("seen_eval_examples")),
                ("this model", record.get("eval_examples_in_train")),
            )
            if n
        ]
        repeats, records, compared = (
            _repeats(record),
            _eval_records(record),
            baseline.get("compared_examples"),
        )
        if repeats and isinstance(records, int) and isinstance(compared, int):
            # Counted so the parts add up: a copy of an image a model trained on is a copy here.
            saw = records - compared - repeats
            why = f"of the {records} records, {repeats} {'copies' if repeats == 1 else 'copy'} an earlier eval image"
            why += (
                f" and {saw} {'is an image' if saw == 1 else 'are images'} a model trained on" if saw else ""
            )
            what = "distinct eval images"
        else:
            why = f"{' and '.join(trained)} of the {records}: the same image bytes were in the train split"
            what = "eval examples"
        baseline_note = (
            f"latest blessed model, on the {compared} {what} neither model trained on ({why}), "
            f"where this model has {_fmt(baseline.get('candidate_accuracy'))}; "
            f"allowed regression {_fmt(baseline.get('max_regression'))}"
        )
    elif baseline.get("compared"):
        baseline_note = f"latest blessed model; allowed regression {_fmt(baseline.get('max_regression'))}"
    else:
        baseline_note = f"not compared: {baseline.get('skipped_reason') or 'no baseline'}"
        if baseline.get("comparison_waived"):
            baseline_note += f"; judged on the floors alone: {baseline['comparison_waived']}"
    details: list[tuple[str, str]] = []
    for key in ("eval_examples", "min_class_recall", "min_class_precision"):
        if record.get(key) is not None:
            details.append((key, _fmt(record[key])))
    recall = record.get("per_class_recall") or {}
    precision, answered = record.get("per_class_precision") or {}, record.get("per_class_answered") or {}
    if len(recall) > MAX_DETAIL_CLASSES:
        # One line of 300 classes (7,700 characters) repeats the per-class table below it.
        details.append(("per_class_recall", f"{len(recall)} classes: in the per-class table and gate.json"))
    elif recall:
        details.append(
            ("per_class_recall", ", ".join(f"{label_text(k)}: {_fmt(v)}" for k, v in recall.items()))
        )
    if len(precision) > MAX_DETAIL_CLASSES:
        details.append(
            ("per_class_precision", f"{len(precision)} classes: in the per-class table and gate.json")
        )
    elif precision:
        details.append(
            (
                "per_class_precision",
                ", ".join(
                    f"{label_text(k)}: {_fmt(v)} of {answered.get(k, '?')} {'answer' if answered.get(k) == 1 else 'answers'}"
                    for k, v in precision.items()
                ),
            )
        )
    judged = record.get("judged_on")
    if isinstance(judged, dict):
        whole = record.get("whole_split") or {}
        near = judged.get("near_copies_in_train")
        details.append(
            (
                "judged_on",
                f"{judged.get('examples')} distinct eval images the model did not train on, of "
                f"{judged.get('records')} records ({judged.get('repeats')} repeat an earlier image, "
                f"{judged.get('in_train')} are images it trained on"
                + (f", {near} are near-copies of images it trained on" if near else "")
                + f"): the numbers above are on them; on every record TFMA measured accuracy "
                f"{_fmt(whole.get('accuracy'))}",
            )
        )
    if record.get("eval_examples_in_train"):
        effect = "they flatter its accuracy"
        if isinstance(judged, dict):
            effect = "left out of the numbers above" + (", copies included" if _repeats(record) else "")
        details.append(
            (
                "eval_examples_in_train",
                f"{record['eval_examples_in_train']} (images the model trained on: {effect})",
            )
        )
    if record.get("anomalies_allowed"):
        details.append(("anomalies_allowed", ", ".join(str(a) for a in record["anomalies_allowed"])))
    return GateView(
        judged_on=(
            f"the {judged.get('examples')} distinct eval images it did not train on"
            if isinstance(judged, dict)
            else "the eval split"
        ),
        source="gate.json (the Evaluator's decision record)",
        blessed=record.get("blessed"),
        candidate=record.get("accuracy"),
        baseline=baseline.get("accuracy"),
        floor=record.get("floor"),
        floor_note=floor_note,
        baseline_note=baseline_note,
        reasons=[str(r) for r in record.get("reasons") or []],
        details=details,
        **_compared_candidate(record),
    )


def _compared_candidate(record: Mapping[str, Any]) -> dict[str, Any]:
    """GateView's compared_candidate and compared_on, when the baseline was compared on other
    eval examples than those the candidate's own number is on."""
    baseline = record.get("baseline") or {}
    mine = baseline.get("candidate_accuracy")
    if not baseline.get("compared") or baseline.get("identical") or not isinstance(mine, float):
        return {}
    if not (baseline.get("shared_classes") or _compared_on_a_subset(record)):
        return {}
    return {
        "compared_candidate": mine,
        "compared_on": f"the {baseline.get('compared_examples')} eval examples the baseline was compared on",
    }


def _eval_records(record: dict[str, Any]) -> Any:
    """The eval split's records: `eval_examples`, unless the gate judged on part of them."""
    judged = record.get("judged_on")
    return judged.get("records") if isinstance(judged, dict) else record.get("eval_examples")


def _sample(record: Mapping[str, Any]) -> str:
    """What the significance bound counted (gate_decision.sample_text of the record)."""
    from components.gate_decision import sample_text

    return sample_text(record.get("eval_examples"), record.get("eval_pictures"))


def _balanced_gate(record: dict[str, Any]) -> GateView:
    """The gate view of a gate.json whose gated metric is balanced accuracy."""
    view = _gate_view({**record, "metric": METRIC_ACCURACY, "accuracy": record.get("value")})
    k = record.get("eval_classes")
    chance = (
        f"chance 1/{k} = {_fmt(1 / k)} + margin {_fmt(record.get('majority_margin'))}"
        if isinstance(k, int) and k > 0
        else "chance"
    )
    min_accuracy = f"min_accuracy {_fmt(record.get('min_accuracy'))}"
    source = record.get("floor_source")
    if source == "significance":
        n, p = _sample(record), record.get("significance")
        if isinstance(record.get("floor"), float) and record["floor"] > 1.0:
            view.floor_note = (
                f"on {n} even 1.0 is reached too often by answers that ignore the image "
                f"(p <= {p}): too few to tell a model from chance"
            )
        else:
            view.floor_note = (
                f"the least not reached by answers that ignore the image, p <= {p} (above {chance})"
            )
    elif source == "chance":
        view.floor_note = f"{chance} (above {min_accuracy})"
    else:
        view.floor_note = f"{min_accuracy} ({chance}: not higher)"
    view.metric = "balanced accuracy"
    view.details = [
        (
            "metric",
            f"balanced accuracy: the mean per-class recall ({record.get('metric_reason') or 'gate.metric'})",
        ),
        ("accuracy", _fmt(record.get("accuracy"))),
        *view.details,
    ]
    return view


def gate_from_summary(
    summary: dict[str, Any], min_accuracy: float | None, max_regression: float | None
) -> GateView:
    """For runs without gate.json: the summary's accuracy, baseline and blessing, the config's floor."""
    candidate, baseline, blessed = (
        summary.get("accuracy"),
        summary.get("baseline_accuracy"),
        summary.get("blessed"),
    )
    reasons = []
    if blessed is False and candidate is not None:
        if min_accuracy is not None and candidate < min_accuracy:
            reasons.append(f"accuracy {candidate:.4f} is below min_accuracy {min_accuracy}")
        if baseline is not None and max_regression is not None and candidate < baseline - max_regression:
            reasons.append(
                f"accuracy {candidate:.4f} is below the baseline {baseline:.4f} by more than {max_regression}"
            )
    return GateView(
        source="run summary and config (this run has no gate.json)",
        blessed=blessed,
        candidate=candidate,
        baseline=baseline,
        floor=min_accuracy,
        floor_note="min_accuracy from the run's config",
        baseline_note=(
            f"latest blessed model; allowed regression {max_regression}"
            if baseline is not None
            else "none in the evaluation (no blessed model before this run)"
        ),
        reasons=reasons,
        details=[],
    )


# ------------------------------------------------------------------------------ all together
def tally_predictions(
    class_names: list[str], predictions: Iterable[Prediction], max_misclassified: int
) -> Tally:
    tally = Tally(class_names, max_misclassified)
    for p in predictions:
        tally.add(p.record, p.label, p.scores, p.image)
    return tally


def gather(
    artifacts: RunArtifacts,
    summary: dict[str, Any],
    training_summary: dict[str, Any] | None,
    gate_record: dict[str, Any] | None,
    min_accuracy: float | None = None,
    max_regression: float | None = None,
    max_misclassified: int = DEFAULT_MAX_MISCLASSIFIED,
    previous: ReportData | None = None,
    loaded: Any = None,
    data_gate: Mapping[str, Any] | None = None,
    image_size: int | None = None,
) -> ReportData:
    """Everything the report shows for one run; ReportDataError when the model or eval split is missing.

    `previous`: an earlier run's report; when it scored the same model on the
    same eval split (`reusable`), its predictions are taken instead of running
    the model again (a re-run whose Trainer came from the cache).
    `loaded`: the run's model already loaded in this process (see `EvalPredictions`).
    `data_gate`: the DataGate's report (data_gate.json); its warnings become notes.
    `image_size`: the model's input size: the model is run on fewer records a call above 224 px.
    """
    if not artifacts.serving_model:
        raise ReportDataError(f"run {artifacts.run_id} has no trained model in ML Metadata")
    if not artifacts.eval_examples:
        raise ReportDataError(f"run {artifacts.run_id} has no eval examples in ML Metadata")
    notes: list[str] = []
    if previous is not None and reusable(previous, artifacts, max_misclassified):
        columns, rows, matrix = previous.class_names, previous.rows, previous.confusion
        unlabelled, misclassified = (
            previous.unlabelled,
            [dataclasses.replace(m) for m in previous.misclassified],
        )
        misclassified_total = previous.misclassified_total
        notes.append(f"predictions reused from run {previous.run_id}'s report: the same model and eval split")
        predictions_from = f"report of run {previous.run_id}"
    else:
        batch = images_per_call(PREDICT_BATCH, image_size, SCORING_CALL_PIXELS)
        with EvalPredictions(
            artifacts.serving_model, artifacts.eval_examples, batch_size=batch, loaded=loaded
        ) as predictions:
            tally = tally_predictions(predictions.class_names, predictions, max_misclassified)
        predictions_from = PREDICTIONS_EVALUATOR if predictions.from_loaded else PREDICTIONS_LOADED
        columns, rows, matrix = tally.columns(), tally.rows(), tally.matrix()
        unlabelled, misclassified, misclassified_total = (
            tally.unlabelled,
            tally.worst(),
            tally.misclassified_total,
        )
    examples = sum(map(sum, matrix))
    correct = sum(matrix[i][i] for i in range(len(columns)))
    unknown = rows[len(columns) :]
    if unlabelled:
        notes.append(f"{unlabelled} eval records have no label: predicted, not counted")
    if unknown:
        notes.append(f"eval labels the model has no class for (counted as errors): {', '.join(unknown)}")
    if training_summary is None:
        notes.append("no training_summary.json in the Trainer's model_run: no training curves")
    # The data gate's warnings (labels corrected since the served model trained, names that print
    # alike): what a drop in the numbers may come from.
    warned = (data_gate or {}).get("warnings")
    notes += [f"data gate: {w}" for w in warned if isinstance(w, str)] if isinstance(warned, list) else []
    if gate_record is not None:
        gate = gate_from_record(gate_record)
    elif isinstance(summary.get("gate"), dict):
        gate = gate_from_record(summary["gate"])
        gate.source = "the run summary's gate record"
    else:
        gate = gate_from_summary(summary, min_accuracy, max_regression)
        notes.append("no gate.json (a run from before the gate record): gate numbers from the summary")
    gate.baseline_note = name_baseline(gate.baseline_note, summary.get("baseline_model"))
    label_check = summary.get("label_check") or (training_summary or {}).get("label_check")
    label_check = label_check if isinstance(label_check, dict) else None
    if label_check and label_check.get("warning"):
        notes.append(str(label_check["warning"]))
    flipped = (training_summary or {}).get("flip_check")
    if isinstance(flipped, dict) and flipped.get("warning"):
        notes.append(str(flipped["warning"]))  # augment's flip turns a class into another
    return ReportData(
        run_id=artifacts.run_id,
        class_names=columns,
        rows=rows,
        confusion=matrix,
        per_class=per_class_rows(rows, columns, matrix),
        examples=examples,
        unlabelled=unlabelled,
        accuracy=correct / examples if examples else None,
        evaluator_accuracy=summary.get("accuracy"),
        gate=gate,
        history=dict((training_summary or {}).get("history") or {}),
        early_stopping=early_stopping_entries(training_summary or {}),
        training_notes=[str(n) for n in (training_summary or {}).get("notes") or []],
        selection_folds=_whole((training_summary or {}).get("selection_folds")),
        misclassified=misclassified,
        misclassified_total=misclassified_total,
        max_misclassified=max_misclassified,
        artifacts={
            "eval_examples": artifacts.eval_examples,
            "serving_model": artifacts.serving_model,
            "model_run": artifacts.model_run,
            "evaluation": artifacts.evaluation,
        },
        states=dict(artifacts.states),
        notes=notes,
        predictions_from=predictions_from,
        label_check=label_check,
        **_deployment(summary, gate.blessed),
    )


def _version_of(pushed: Any) -> str:
    """The version number a pushed path (<serving dir>/<model>/<version>) ends with."""
    return os.path.basename(str(pushed).rstrip("/"))


def name_baseline(note: str, baseline_model: Any) -> str:
    """The baseline row's note with which model the baseline was (the summary's `baseline_model`:
    the run that trained it, the version its newest push made), so "0.91" is a model one can find."""
    if not isinstance(baseline_model, Mapping):
        return note
    run, pushed = baseline_model.get("run_id"), baseline_model.get("pushed")
    version = f"version {_version_of(pushed)}" if pushed else "no push of it recorded"
    if pushed and baseline_model.get("identical_to"):
        version = f"not pushed: the same model as version {_version_of(pushed)}"
    if pushed and baseline_model.get("copy_of"):
        version += f" (a rollback's copy of version {baseline_model['copy_of']}, pruned since)"
    elif pushed and baseline_model.get("served_as"):
        version += f" (served again as version {_version_of(baseline_model['served_as'])}, a rollback's copy)"
    known_run = isinstance(run, str) and run and not run.startswith(("?", "execution "))
    if not known_run and not pushed:
        return note
    who = f"trained by run {run}, {version}" if known_run else version
    prefix = "latest blessed model"
    if note.startswith(prefix):
        return f"{prefix} ({who}){note[len(prefix) :]}"
    return f"{note}; the latest blessed model: {who}"


def deployment_since(home: str, summary: Mapping[str, Any]) -> str | None:
    """What became of the run's pushed version after the report was written, read now: gone
    from the serving dir (`imgpipe prune`, or removed by hand) or taken out of serving by
    `imgpipe rollback`; None when it is still there and not taken out, or nothing was pushed.
    A stored report keeps saying "pushed as version N": this says whether N still serves."""
    from serving.model_fingerprint import rollback_copy_of, versions_taken_out

    pushed = summary.get("pushed")
    if not pushed or not isinstance(pushed, str):
        return None
    version = _version_of(pushed)
    if not os.path.isdir(pushed):
        copy = rollback_copy_of(home, pushed)
        if copy is not None:
            return (
                f"version {version} is no longer in the serving dir (pruned since); its model is there as "
                f"version {_version_of(copy)}, a copy `imgpipe rollback` served"
            )
        return (
            f"version {version} is no longer in the serving dir (pruned or removed since): it does not serve"
        )
    if version in versions_taken_out(home):
        return f"version {version} was taken out of serving by `imgpipe rollback` after this run"
    return None


def _deployment(summary: Mapping[str, Any], blessed: bool | None) -> dict[str, Any]:
    """What the run summary says became of the model after the gate: `deployment` and
    `withdrawn` (a blessed model that pre-push validation, or a later check, kept back)."""
    pushed, skipped = summary.get("pushed"), summary.get("push_skipped")
    if pushed:
        return {"deployment": f"pushed as version {_version_of(pushed)} ({pushed})"}
    if skipped:
        withdrawn = bool(blessed) and str(skipped).startswith(
            ("pre-push validation failed", "blessing withdrawn")
        )
        return {"deployment": f"not pushed: {skipped}", "withdrawn": withdrawn}
    if blessed is False:
        return {"deployment": "not pushed: not blessed"}
    return {}
