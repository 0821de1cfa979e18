"""Whole-pipeline runs on LocalDagRunner with real images and a backbone pre-trained here.

One module-scoped sequence: a first run (every component executes, the model is
blessed, validated in a model server and pushed, its report is written and
checked against the eval split), an identical re-run (served from cache, the
identical model not pushed again; its report is made to fail and the run still
succeeds), then a worse model that the gate must stop (nothing pushed, serving
dir unchanged), new eval data on which TFMA measures the blessed model beside
the candidate and the min_accuracy floor stops it, and a run with score_data
whose BulkInferrer scores unlabelled Examples. Then a second, small pipeline on
a skewed 2-class task whose eval split has a class train lacks: the data gate
stops it before training, and with allow_anomalies a deliberately bad model runs
through and is not blessed, with the reasons. Then the faults of RELIABILITY.md, with real `imgpipe` processes on
the first pipeline's home: a run killed with SIGKILL mid-Trainer, runs started
while another holds the home, stdout parsed as JSON, and a prune after which the
next run is still cached and gated against the same baseline, and a served version
deleted by hand, which the next run pushes again. Last, a model with
a broken serving signature that pre-push validation must stop.
"""

import collections
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from imgpipe import ingest
from imgpipe.cli import main as cli
from imgpipe.demo import data as datasets
from imgpipe.orchestration import lock, recovery, runs, scratch
from imgpipe.orchestration import metadata as mlmd
from imgpipe.orchestration.local import PipelineRunError, run_local
from imgpipe.report import build as report_build
from imgpipe.report import data as report_data
from pipeline.config import PipelineConfig
from pipeline.pipeline import COMPONENT_IDS
from tests import browser
from tests.e2e.conftest import CLASSES, SIZE, above_chance

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
LONG = 1800  # seconds: a generous bound for one CLI process on a loaded 2-core machine


def _versions(model_dir):
    if not os.path.isdir(model_dir):
        return {}
    return {
        v: sorted(os.listdir(os.path.join(model_dir, v)))
        for v in os.listdir(model_dir)
        if os.path.isdir(os.path.join(model_dir, v))
    }


def _training_summary(config: PipelineConfig) -> dict:
    """The training summary the Trainer of the home's latest run wrote (its ModelRun artifact)."""
    cfg = config.resolved()
    with mlmd.open_store(cfg) as store:
        run = mlmd.run_executions(store, cfg.pipeline_name, mlmd.latest_run(store, cfg.pipeline_name))
        model_run = mlmd.output_uri(store, run["Trainer"], "model_run")
    with open(os.path.join(model_run, "training_summary.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def base_config(tmp_path_factory, source_backbone, digits_records):
    work = tmp_path_factory.mktemp("e2e")
    return PipelineConfig(
        data_dir=digits_records,
        home=str(work / "home"),
        serving_dir=str(work / "serving"),
        model_name="digits",
        backbone="MobileNetV2",
        weights=source_backbone,
        image_size=SIZE,
        # The head trains with the Trainer's defaults (to convergence, early stopping): over
        # eight pre-training variants of the tests' backbone they scored 0.67-0.87 on this
        # task, a fixed 15 epochs at learning rate 1e-2 0.62-0.82 (BENCHMARKS.md, "Another CPU").
        min_accuracy=0.5,
        export_tflite="float16",
    )


@pytest.fixture(scope="module")
def first_run(base_config):
    return run_local(base_config)


def test_first_run_executes_every_component_and_pushes(base_config, first_run):
    s = first_run
    assert set(s.executions) == set(COMPONENT_IDS)
    assert all(state == "COMPLETE" for state in s.executions.values()), s.executions
    with mlmd.open_store(base_config.resolved()) as store:
        assert len(store.get_executions()) == len(COMPONENT_IDS)
    # Far above chance (1/3) on the held-out split: guessing reaches it with probability < 0.001.
    assert s.accuracy is not None and s.accuracy >= above_chance(s.gate["eval_examples"], len(CLASSES)), s
    assert s.blessed is True
    # The Trainer's checks as the run's JSON carries them: the label check made, no flip check
    # (augment is off).
    assert s.label_check is not None and s.label_check["examined"] > 0 and s.flip_check is None
    # Pre-push validation served it (`imgpipe serve`: no tensorflow_model_server here) and passed.
    assert s.prepush["blessed"] is True and s.prepush["validated"] is True, s.prepush
    assert s.prepush["server"] == "imgpipe serve" and s.prepush["failures"] == []
    # This run trained, so its server was started while the Evaluator ran (a standby).
    assert s.prepush["server_started_early"] is True
    # Its reference answers came from the model object the Evaluator (TFMA) loaded and ran.
    assert s.prepush["reference_from_evaluator"] is True
    assert set(s.prepush["p99_ms"]) == {"serving_default", "classification", "predict_images"}
    gate = s.gate
    assert gate["blessed"] is True and gate["reasons"] == [] and gate["anomalies_allowed"] == []
    # Three balanced classes: 1/3 + 0.05 is below min_accuracy 0.5, which applies.
    assert gate["floor"] == pytest.approx(0.5) and gate["floor_source"] == "min_accuracy"
    assert gate["accuracy"] == pytest.approx(s.accuracy)
    assert sorted(gate["class_names"]) == [str(c) for c in CLASSES]
    assert gate["eval_examples"] == 45
    # 45 eval images of 32x32 px: `eval_graph_optimization: auto` runs TFMA's model without
    # Grappler's rewrites (the report's test below checks its confusion matrix, made from that
    # model, against the pushed model's own answers with the rewrites, record by record).
    assert gate["tfma_run"]["graph_optimization"] is False
    assert (
        gate["baseline"]["compared"] is False and gate["baseline"]["skipped_reason"] == "no blessed model yet"
    )
    assert s.replicas == 1
    assert set(s.per_class_accuracy) == {str(c) for c in CLASSES}
    model_dir = base_config.resolved().model_serving_dir
    versions = _versions(model_dir)
    assert len(versions) == 1
    [(version, files)] = versions.items()
    assert version.isdigit() and "saved_model.pb" in files
    assert s.pushed and os.path.samefile(s.pushed, os.path.join(model_dir, version))
    # The TFLite model and its contract travel inside the pushed SavedModel; it still serves (above).
    assert sorted(os.listdir(os.path.join(s.pushed, "assets.extra"))) == [
        "model.tflite",
        "model.tflite.json",
        "tf_serving_warmup_requests",
    ]
    lite = _training_summary(base_config)["tflite"]
    assert lite["quantization"] == "float16" and lite["passed"] and lite["agreement_beyond_ties"] >= 0.98
    assert os.path.exists(os.path.join(s.run_dir, "config.yaml"))
    assert (
        PipelineConfig.from_yaml(os.path.join(s.run_dir, "config.yaml")).training.weights
        == base_config.resolved().training.weights
    )


def _eval_records(path: str) -> list[tuple[str, bytes]]:
    """(label, encoded image) of each record of a TFRecord folder, in file order."""
    import tensorflow as tf

    from trainer.data import raw_examples

    out = []
    for serialized in raw_examples(path).as_numpy_iterator():
        feats = tf.train.Example.FromString(serialized).features.feature
        out.append((feats["label"].bytes_list.value[0].decode(), feats["image"].bytes_list.value[0]))
    return out


def test_first_runs_report_matches_the_eval_split_and_the_model(base_config, first_run):
    """The report's numbers, recomputed here from the eval split and the pushed model's other signature."""
    import numpy as np
    import tensorflow as tf

    s = first_run
    assert s.report_error is None and s.report == os.path.join(s.run_dir, "report", "index.html")
    assert os.path.isfile(s.report)
    with open(os.path.join(s.run_dir, "summary.json"), encoding="utf-8") as f:
        assert json.load(f)["report"] == s.report
    d = report_build.load_report(s.run_dir)
    assert d is not None and d.run_id == s.run_id
    # Its predictions came from the model object the Evaluator (TFMA) loaded and ran.
    assert d.predictions_from == report_data.PREDICTIONS_EVALUATOR

    # Support = the eval split's label counts (the ingest output, read independently of ML Metadata).
    ingested = _eval_records(os.path.join(base_config.data_dir, "eval"))
    assert {r.name: r.support for r in d.per_class} == dict(collections.Counter(lbl for lbl, _ in ingested))
    assert sorted(d.class_names) == [str(c) for c in CLASSES] and d.rows == d.class_names
    assert d.examples == len(ingested) and d.unlabelled == 0

    # The confusion matrix = the pushed model's own top-1 predictions (predict_images, raw image bytes),
    # record by record over the ExampleGen eval split the report read.
    records = _eval_records(d.artifacts["eval_examples"])
    model = tf.saved_model.load(s.pushed).signatures["predict_images"]
    top = model(images=tf.constant([img for _, img in records]))
    predicted = [c.decode() for c in top["classes"].numpy()[:, 0]]
    scores = top["scores"].numpy()[:, 0]
    pairs = collections.Counter(zip([lbl for lbl, _ in records], predicted, strict=True))
    for i, true in enumerate(d.rows):
        for j, pred in enumerate(d.class_names):
            assert d.confusion[i][j] == pairs[(true, pred)], (true, pred)

    # The gate's per-class precision (TFMA's confusion matrix) = the same model's answers here.
    given = collections.Counter(predicted)
    assert s.gate["per_class_answered"] == dict(sorted(given.items()))
    assert s.gate["per_class_precision"] == pytest.approx(
        {c: pairs[(c, c)] / n for c, n in given.items()}, abs=1e-9
    )
    assert s.gate["min_class_precision"] is None  # off by default
    # The pairs of classes told apart no better than chance: from TFMA's matrix, as from these answers.
    from components.gate_decision import classes_at_chance

    def pairs_of(found):
        return sorted((tuple(sorted(p["classes"])), p["right"], p["between"]) for p in found)

    assert pairs_of(s.gate["classes_at_chance"]) == pairs_of(classes_at_chance(pairs, d.class_names))

    # Overall accuracy and per-class recall agree with the Evaluator's TFMA numbers.
    assert d.accuracy == pytest.approx(s.accuracy, abs=1e-6)
    assert {r.name: r.recall for r in d.per_class} == pytest.approx(s.per_class_accuracy, abs=1e-6)

    # The gallery: every mistake counted, the worst first, each one the model's own answer.
    wrong = [i for i, (lbl, _) in enumerate(records) if predicted[i] != lbl]
    assert d.misclassified_total == len(wrong)
    assert len(d.misclassified) == min(len(wrong), d.max_misclassified)
    assert [m.score for m in d.misclassified] == sorted((m.score for m in d.misclassified), reverse=True)
    for m in d.misclassified:
        assert (m.true, m.predicted) == (records[m.record][0], predicted[m.record])
        # To float32 rounding: TFMA ran the model without Grappler's fused kernels on this small
        # split (eval_graph_optimization: auto), the pushed model here runs with them; their
        # answers differ by ~1e-5 of a score on some CPUs and thread counts.
        assert m.score == pytest.approx(float(scores[m.record]), rel=1e-4)
        assert os.path.isfile(os.path.join(os.path.dirname(s.report), m.thumbnail))
    if wrong:
        assert np.max(scores[wrong]) == pytest.approx(d.misclassified[0].score, rel=1e-4)

    # Training curves from the Trainer's own history; the gate's decision as the summary has it.
    with mlmd.open_store(base_config.resolved()) as store:
        trainer = mlmd.run_executions(
            store, base_config.pipeline_name, mlmd.latest_run(store, base_config.pipeline_name)
        )
        model_run = mlmd.output_uri(store, trainer["Trainer"], "model_run")
    summary = mlmd.training_summary(model_run)
    assert d.history == summary["history"]
    # Every epoch the Trainer ran: all of them, or fewer when early stopping ended the selection fit.
    assert len(d.history["loss"]) == summary["epochs_run"] <= base_config.training.epochs
    assert os.path.isfile(os.path.join(os.path.dirname(s.report), "training_curves.png"))
    assert d.gate.blessed is True and d.gate.candidate == pytest.approx(s.accuracy)
    assert d.gate.floor >= base_config.gate.min_accuracy


def test_first_runs_report_page_loads_every_image_in_chromium(first_run, tmp_path):
    states = browser.image_states(first_run.report, str(tmp_path))
    d = report_build.load_report(first_run.run_dir)
    assert len(states) == 3 + len(d.misclassified)  # two confusion matrices, the curves, the gallery
    assert [st["src"] for st in states if not (st["complete"] and st["naturalWidth"] > 0)] == []


def test_report_command_shows_latest_and_rewrites_a_missing_report(base_config, first_run, capsys):
    home = base_config.resolved().home
    assert cli.main(["report", "latest", "--home", home]) == 0
    out, err = capsys.readouterr()
    shown = json.loads(out)
    assert shown["run_id"] == first_run.run_id and shown["report"] == first_run.report
    assert shown["regenerated"] is False
    assert "gate: BLESSED" in err and "precision  recall  support" in err

    # A run whose report is gone gets it written again, and its record links it again.
    report_dir = os.path.dirname(first_run.report)
    before = report_build.load_report(first_run.run_dir)
    shutil.rmtree(report_dir)
    runs.update_summary(first_run.run_dir, {"report": None, "report_error": "removed by the test"})
    assert cli.main(["report", first_run.run_id, "--home", home, "--max-misclassified", "2"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["regenerated"] is True and os.path.isfile(first_run.report)
    again = report_build.load_report(first_run.run_dir)
    # Outside a run the report loads the model itself, and finds the same numbers.
    assert again.predictions_from == report_data.PREDICTIONS_LOADED
    assert again.confusion == before.confusion and again.per_class == before.per_class
    # The same mistakes; their scores to float32 rounding: in the run the report ran the model as
    # the Evaluator did, without Grappler's fused kernels on this small split
    # (eval_graph_optimization: auto), here a fresh load runs it with them.
    assert len(again.misclassified) == min(2, len(before.misclassified))
    for a, b in zip(again.misclassified, before.misclassified, strict=False):
        assert dataclasses.replace(a, score=b.score, true_score=b.true_score) == b
        assert a.score == pytest.approx(b.score, rel=1e-4) and a.true_score == pytest.approx(
            b.true_score, rel=1e-4, abs=1e-7
        )
    assert runs.read_summary(first_run.run_dir)["report"] == first_run.report
    assert runs.read_summary(first_run.run_dir)["report_error"] is None


def test_identical_rerun_is_served_from_cache(base_config, first_run, monkeypatch, tmp_path):
    # The report of this run is made to fail (its model artifact is unreadable): the run must not.
    garbage = tmp_path / "unreadable_model"
    garbage.mkdir()
    (garbage / "saved_model.pb").write_bytes(b"not a SavedModel")
    found = mlmd.run_artifacts

    def unreadable_model(*args, **kwargs):
        return dataclasses.replace(found(*args, **kwargs), serving_model=str(garbage))

    monkeypatch.setattr(report_build.metadata, "run_artifacts", unreadable_model)
    model_dir = base_config.resolved().model_serving_dir
    before = _versions(model_dir)
    s = run_local(base_config)
    assert s.report is None and "cannot load the trained model" in s.report_error
    assert runs.read_summary(s.run_dir)["report"] is None
    assert runs.read_summary(s.run_dir)["report_error"] == s.report_error
    assert s.run_id != first_run.run_id
    for node in (
        "ImportExampleGen",
        "StatisticsGen",
        "SchemaGen",
        "ExampleValidator",
        "Transform",
        "Trainer",
    ):
        assert s.executions[node] == "CACHED", (node, s.executions)
    assert s.accuracy == pytest.approx(first_run.accuracy)
    # Blessed again (against itself), but byte-identical to the served version: no new version,
    # so TF Serving does not reload the same model.
    assert s.blessed is True and s.pushed is None
    # Compared with the latest blessed model, which is this very model: TFMA ran it once, in the
    # first run, on the same model, examples and thresholds; its results are reused.
    assert s.gate["baseline"]["compared"] is True and s.gate["baseline"]["identical"] is True, s.gate
    assert s.gate["tfma_reused_from"] and s.gate["tfma_run"] == first_run.gate["tfma_run"], s.gate
    assert os.path.basename(os.path.dirname(s.gate["tfma_reused_from"])) == "evaluation"
    assert s.gate["baseline"]["accuracy"] == pytest.approx(s.gate["accuracy"])
    assert s.baseline_accuracy == pytest.approx(s.accuracy)
    assert s.push_skipped == f"identical to version {os.path.basename(first_run.pushed)}"
    # Nothing new would be served, so pre-push validation did not start a server for it.
    assert s.prepush["blessed"] is True and s.prepush["validated"] is False, s.prepush
    assert s.prepush["reason"].startswith(
        f"skipped: identical to the served version {os.path.basename(first_run.pushed)}"
    )
    assert _versions(model_dir) == before
    assert s.run_dir != first_run.run_dir
    assert not os.path.exists(scratch.scratch_root(base_config.resolved().home))  # nothing left in HOME/tmp


def test_gate_stops_a_worse_model(base_config, first_run, monkeypatch):
    from components import model_server

    model_dir = base_config.resolved().model_serving_dir
    before = _versions(model_dir)
    standbys = []  # the run's pre-push standby servers, recorded on their way through
    start_standby = model_server.standby_server

    @contextlib.contextmanager
    def recorded(*args, **kwargs):
        with start_standby(*args, **kwargs) as server:
            standbys.append(server)
            yield server

    monkeypatch.setattr(model_server, "standby_server", recorded)
    # A randomly initialised backbone on the same data: far worse than the blessed baseline,
    # though above this run's own floor, so only the no-regression threshold can stop it.
    worse = base_config.replace(weights="none", epochs=2, min_accuracy=0.0, export_tflite="none")
    s = run_local(worse)
    # The standby started as the Trainer started and got the model; nobody took it, and it
    # was stopped when the run ended.
    [standby] = standbys
    assert standby.staged_from is not None and standby.process.poll() is not None
    assert s.executions["Trainer"] == "COMPLETE" and s.executions["Evaluator"] == "COMPLETE"
    assert s.baseline_accuracy == pytest.approx(first_run.accuracy, abs=1e-6)
    assert s.baseline_compared_on is None  # the whole split: accuracy and baseline_accuracy compare
    # The served model's number when it was blessed, read from the first run's gate.json.
    when = s.gate["baseline"]["when_blessed"]
    assert when["value"] == first_run.gate["value"] and when["eval_examples"] == 45
    assert when["gate"].endswith(
        os.path.join("Evaluator", "evaluation", when["gate"].split(os.sep)[-2], "gate.json")
    )
    # Which model that was: the first run's, served as the version it pushed.
    assert s.baseline_model == {"run_id": first_run.run_id, "pushed": first_run.pushed}
    assert s.accuracy < first_run.accuracy
    assert s.blessed is False
    assert s.pushed is None
    assert s.nothing_served is None  # the first run's version still serves
    assert s.prepush["validated"] is False and s.prepush["blessed"] is False  # nothing to serve
    assert "did not bless" in s.prepush["reason"]
    assert s.gate["baseline"]["compared"] is True
    assert s.gate["tfma_reused_from"] is None  # a new model: TFMA ran
    # Same eval examples (ExampleGen cached): the baseline's accuracy is the one the first run's
    # Evaluator measured; TFMA ran this candidate only, and the regression unblessed it.
    assert s.gate["baseline"]["reused_from"].endswith("gate.json"), s.gate
    assert s.gate["baseline"]["accuracy"] == pytest.approx(first_run.accuracy, abs=1e-6)
    assert any("regressed from the latest blessed model's" in r for r in s.gate["reasons"]), s.gate
    assert _versions(model_dir) == before
    # The report shows the rejected decision with the baseline it was compared with.
    d = report_build.load_report(s.run_dir)
    assert d.gate.blessed is False
    assert d.gate.baseline == pytest.approx(first_run.accuracy, abs=1e-6)
    assert d.gate.candidate == pytest.approx(s.accuracy, abs=1e-6)


def test_new_eval_data_measures_the_baseline_and_the_floor_stops_the_model(base_config, first_run, tmp_path):
    """New data (the common scheduled run): TFMA evaluates the blessed model beside the candidate.

    The eval split gains images, so nothing earlier measured the baseline on these examples:
    its balanced accuracy in gate.json (gate.metric balanced_accuracy: the mean of the
    per-class recalls TFMA measured for each model) is the first model's own on the new eval
    split, and the summary's baseline accuracy its plain accuracy (both recomputed here from
    the pushed model). The floor, min_accuracy 1.0, stops the candidate (no regression check
    in the way: max_regression 1.0), so the first model stays the baseline of the runs after
    this one.
    """
    import numpy as np
    import tensorflow as tf

    from tests import helpers

    data = tmp_path / "records"
    shutil.copytree(base_config.data_dir, data)
    extra = helpers.digit_images(CLASSES, per_class=4, size=SIZE, seed=21)
    helpers.write_tfrecords(str(data / "eval" / "extra-00000-of-00001.tfrecord"), extra)
    before = _versions(base_config.resolved().model_serving_dir)
    # No TFLite export and no pre-push server: the subject is the gate (the first run checks the
    # export; test_gate_stops_a_worse_model the pre-push server of a model the gate stops).
    s = run_local(
        base_config.replace(
            data_dir=str(data),
            min_accuracy=1.0,
            max_regression=1.0,
            min_class_precision=1.0,
            export_tflite="none",
            prepush_validation=False,
            metric="balanced_accuracy",  # the eval split is balanced: "auto" would gate accuracy
        )
    )
    assert s.executions["ImportExampleGen"] == "COMPLETE" and s.executions["Trainer"] == "COMPLETE"
    gate = s.gate
    assert gate["metric"] == "balanced_accuracy" and gate["metric_reason"] == "gate.metric balanced_accuracy"
    assert gate["accuracy"] == pytest.approx(s.accuracy) and gate["eval_classes"] == 3
    assert gate["value"] == gate["balanced_accuracy"]
    assert gate["value"] == pytest.approx(np.mean(list(gate["per_class_recall"].values())), abs=1e-9)
    assert s.accuracy < 1.0 and gate["value"] < 1.0
    assert s.blessed is False and s.pushed is None
    assert gate["floor"] == 1.0 and gate["floor_source"] == "min_accuracy"
    assert any(
        r.startswith(f"balanced accuracy {gate['value']:.3f} is below the floor 1.000")
        for r in gate["reasons"]
    )
    assert _versions(base_config.resolved().model_serving_dir) == before
    # Each class answered less than perfectly fails min_class_precision 1.0, with its counts;
    # the answers add up to the split and their right ones to TFMA's accuracy.
    answered, precision = gate["per_class_answered"], gate["per_class_precision"]
    assert sum(answered.values()) == gate["eval_examples"]
    right = {c: round(precision[c] * n) for c, n in answered.items()}
    assert sum(right.values()) / gate["eval_examples"] == pytest.approx(gate["accuracy"], abs=1e-6)
    short = [c for c, p in precision.items() if p < 1.0]
    assert short  # accuracy < 1: some answers are wrong
    for c in short:
        assert any(
            r == f"class '{c}' precision {precision[c]:.3f} is below min_class_precision 1.000: "
            f"{right[c]} of the {answered[c]} eval images it called '{c}' are '{c}'"
            for r in gate["reasons"]
        ), gate["reasons"]
    baseline = s.gate["baseline"]
    assert baseline["compared"] is True and baseline["identical"] is False, s.gate
    assert baseline["reused_from"] is None  # nothing had measured it on these examples
    assert baseline["seen_eval_examples"] == 0  # new images: the first model trained on none of them
    # Both models ran in TFMA without Grappler's rewrites (auto, a small split); the accuracy
    # recomputed below runs the first model with them.
    assert s.gate["tfma_run"]["graph_optimization"] is False
    assert s.gate["eval_examples"] == 45 + len(extra)
    # The Trainer ran the backbone over the new eval images (and a check sample) only: the rest
    # came from the feature store the first run left beside its outputs.
    cfg = base_config.resolved()
    stored = _training_summary(base_config)["feature_store"]
    assert stored["splits"]["eval"]["extracted"] >= len(extra) and stored["reused"] > 0, stored
    assert stored["saved"] == os.path.join(
        cfg.pipeline_root, "Trainer", "feature_store", stored["key"] + ".npz"
    )

    records = _eval_records(str(data / "eval"))
    first = tf.saved_model.load(first_run.pushed).signatures["predict_images"]
    top1 = first(images=tf.constant([img for _, img in records]))["classes"].numpy()[:, 0]
    right = [c.decode() == lbl for c, (lbl, _) in zip(top1, records, strict=True)]
    recall = {
        c: np.mean([r for r, (lbl, _) in zip(right, records, strict=True) if lbl == c])
        for c in map(str, CLASSES)
    }
    assert baseline["accuracy"] == pytest.approx(float(np.mean(list(recall.values()))), abs=1e-6)
    assert s.baseline_accuracy == pytest.approx(float(np.mean(right)), abs=1e-6)
    view = report_build.load_report(s.run_dir).gate
    assert view.metric == "balanced accuracy" and view.candidate == pytest.approx(gate["value"])
    assert view.baseline == pytest.approx(baseline["accuracy"])


def _top1_accuracy(saved_model: str, records) -> float:
    """Accuracy of a SavedModel's raw-image signature (predict_images) on (label, image) records."""
    import numpy as np
    import tensorflow as tf

    model = tf.saved_model.load(saved_model).signatures["predict_images"]
    top1 = model(images=tf.constant([img for _, img in records]))["classes"].numpy()[:, 0]
    return float(np.mean([c.decode() == lbl for c, (lbl, _) in zip(top1, records, strict=True)]))


def test_data_split_anew_compares_the_baseline_only_on_images_it_did_not_train_on(
    base_config, first_run, tmp_path
):
    """The same images ingested with another seed and eval fraction: most of the new eval split is
    images the blessed model trained on. It is compared with the candidate only on the rest.

    A file added to the eval split copies 5 of its images (records made elsewhere): the candidate
    is judged on each image once (gate.json `judged_on`), and the copies are not compared on."""
    from tests import helpers

    images = os.path.join(os.path.dirname(base_config.data_dir), "images")  # what digits_records ingested
    data = str(tmp_path / "records")
    ingest.ingest(images, data, eval_fraction=0.6, seed=11)
    trained_on = {img for _, img in _eval_records(os.path.join(base_config.data_dir, "train"))}
    evals = _eval_records(os.path.join(data, "eval"))
    unseen = [r for r in evals if r[1] not in trained_on]
    seen = len(evals) - len(unseen)
    assert seen > len(unseen) >= 20, (seen, len(unseen))  # the case: mostly seen, enough left to compare
    helpers.write_tfrecords(
        os.path.join(data, "eval", "zz-copies.tfrecord"), [(img, lbl) for lbl, img in unseen[:5]]
    )

    # Not blessed (min_accuracy 1.0), so the first model stays the baseline of the runs after this one.
    s = run_local(
        base_config.replace(
            data_dir=data,
            min_accuracy=1.0,
            max_regression=1.0,
            export_tflite="none",
            prepush_validation=False,
        )
    )
    assert s.executions["Trainer"] == "COMPLETE" and s.blessed is False
    baseline = s.gate["baseline"]
    assert baseline["compared"] is True and baseline["reused_from"] is None, s.gate
    assert (baseline["seen_eval_examples"], baseline["compared_examples"]) == (seen, len(unseen))
    judged = {
        "records": len(evals) + 5,
        "repeats": 5,
        "in_train": 0,
        "examples": len(evals),
        "conflicting_labels": 0,
        "near_copies_in_train": 0,
    }
    assert s.gate["judged_on"] == judged and s.gate["eval_examples"] == len(evals)
    assert s.gate["whole_split"]["examples"] == len(evals) + 5 and s.gate["measured"] is None
    # Each number, recomputed here through another signature of each model on those images.
    assert baseline["accuracy"] == pytest.approx(_top1_accuracy(first_run.pushed, unseen), abs=1e-6)
    candidate = os.path.join(s.gate["tfma_run"]["model"], "Format-Serving")
    assert baseline["candidate_accuracy"] == pytest.approx(_top1_accuracy(candidate, unseen), abs=1e-6)
    assert s.accuracy == s.gate["accuracy"] == pytest.approx(_top1_accuracy(candidate, evals), abs=1e-6)
    assert s.baseline_accuracy == baseline["accuracy"]
    # Both models' numbers on the images compared, beside the candidate's on the whole split.
    assert s.baseline_compared_on == {
        "examples": len(unseen),
        "metric": s.gate["metric"],
        "baseline": baseline["accuracy"],
        "candidate": baseline["candidate_accuracy"],
    }
    assert "neither model trained on" in report_build.load_report(s.run_dir).gate.baseline_note


def test_pushed_model_is_served_over_grpc(base_config, first_run, tmp_path):
    """The Pusher's output, served by `imgpipe serve`, answers the stock client like in-process."""
    import numpy as np
    import tensorflow as tf

    from serving import client
    from serving.devserver import lifecycle
    from tests import helpers

    cfg = base_config.resolved()
    images = [img for img, _ in helpers.digit_images(CLASSES, per_class=3, size=SIZE, seed=11)]
    newest = max(int(v) for v in _versions(cfg.model_serving_dir))
    pushed = os.path.join(cfg.model_serving_dir, str(newest))
    local = tf.saved_model.load(pushed).signatures["predict_images"](images=tf.constant(images))
    with lifecycle.start_in_thread(cfg.model_serving_dir, cfg.model_name) as running:
        got = client.predict_images(running.target, cfg.model_name, images, timeout=30.0)
    assert [p.version for p in got] == [newest] * len(images)
    assert [p.classes[0] for p in got] == [c.decode() for c in local["classes"].numpy()[:, 0]]
    np.testing.assert_allclose([p.scores[0] for p in got], local["scores"].numpy()[:, 0], rtol=1e-5)


def test_score_data_is_scored_by_bulk_inferrer_after_blessing(base_config, first_run, tmp_path):
    """With score_data (`--score-data`), TFX's BulkInferrer scores the unlabelled split."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from tests import helpers

    images = [img for img, _ in helpers.digit_images(CLASSES, per_class=2, size=SIZE, seed=5)]
    score_dir = tmp_path / "unlabelled"
    helpers.write_tfrecords(str(score_dir / "data.tfrecord"), [(img, None) for img in images])
    config = base_config.replace(score_data=str(score_dir))
    s = run_local(config)
    assert s.executions["Trainer"] == "CACHED" and s.blessed is True
    assert s.executions["ScoreExampleGen"] == "COMPLETE" and s.executions["BulkInferrer"] == "COMPLETE"
    cfg = config.resolved()
    with mlmd.open_store(cfg) as store:
        run = mlmd.run_by_id(store, cfg.pipeline_name, s.run_id)
        inferrer = mlmd.run_executions(store, cfg.pipeline_name, run)["BulkInferrer"]
        uri = mlmd.output_uri(store, inferrer, "inference_result")
    files = tf.io.gfile.glob(os.path.join(uri, "*"))
    logs = [
        prediction_log_pb2.PredictionLog.FromString(r.numpy())
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP")
    ]
    assert len(logs) == len(images)
    for log in logs:
        scores = tf.make_ndarray(log.predict_log.response.outputs["scores"])
        assert scores.shape == (1, len(CLASSES)) and abs(float(scores.sum()) - 1.0) < 1e-4

    # One record the model cannot decode: scoring fails naming it, after the Pusher has run.
    bad_dir = tmp_path / "with_a_bad_image"
    helpers.write_tfrecords(
        str(bad_dir / "a.tfrecord"), [(img, None) for img in images[:2]] + [(b"not an image", None)]
    )
    with pytest.raises(PipelineRunError) as e:
        run_local(base_config.replace(score_data=str(bad_dir)))
    failed = e.value.summary
    assert failed.failed == "BulkInferrer", failed.error
    assert failed.executions["Pusher"] in ("COMPLETE", "CACHED"), failed.executions
    assert f"{bad_dir / 'a.tfrecord'} record 2: 'image' is not a decodable image" in failed.error, (
        failed.error
    )


# ----------------------------------------------------------------- the data gate
@pytest.fixture(scope="module")
def anomaly_config(base_config, tmp_path_factory):
    """A skewed 2-class task (digits 5 and 6, 3:1) whose eval split also holds a class train lacks (8).

    Same home (ML Metadata) as the main sequence, its own pipeline name and serving dir.
    """
    from tests import helpers

    work = tmp_path_factory.mktemp("anomaly")
    images = str(work / "images")
    datasets.write_digits_tree(images, digits=[5], size=SIZE, limit_per_class=48)
    datasets.write_digits_tree(images, digits=[6], size=SIZE, limit_per_class=16)
    records = str(work / "records")
    ingest.ingest(images, records, eval_fraction=0.25, seed=7)
    unseen = helpers.digit_images((8,), per_class=4, size=SIZE, seed=3)
    helpers.write_tfrecords(os.path.join(records, "eval", "unseen-00000-of-00001.tfrecord"), unseen)
    return base_config.replace(
        data_dir=records,
        pipeline_name="digits-anomaly",
        serving_dir=str(work / "serving"),
        min_accuracy=0.5,
        export_tflite="none",  # the data gate is the subject; an untrained model fails the TFLite check
    )


def test_unseen_eval_class_stops_the_run_before_training(anomaly_config, first_run, tmp_path, capsys):
    """`imgpipe run` fails naming the DataGate; the failed run's summary is its stdout and its record."""
    config_file = str(tmp_path / "anomaly.yaml")
    anomaly_config.save(config_file)
    assert cli.main(["run", "--config", config_file]) == 1
    captured = capsys.readouterr()
    [line] = captured.out.splitlines()  # stdout: the failed run's summary, one JSON line
    failed = json.loads(line)
    message = failed["error"]
    assert f"pipeline run failed: {message}" in captured.err
    assert message.startswith("DataGate failed: DataGateError: ")
    assert "--allow-anomalies" in message
    assert "eval has class '8' (4 examples) that train does not" in message
    # ExampleValidator saw it too: the contract schema's label domain is the train classes.
    assert "eval: feature 'label': Unexpected string values" in message
    cfg = anomaly_config.resolved()
    with mlmd.open_store(cfg) as store:
        run = mlmd.latest_run(store, cfg.pipeline_name)
        states = {
            node: mlmd.state_name(x) for node, x in mlmd.run_executions(store, cfg.pipeline_name, run).items()
        }
    assert states["DataGate"] == "FAILED"
    assert not {"Transform", "Trainer", "Evaluator", "Pusher"} & set(states), states
    assert _versions(cfg.model_serving_dir) == {}
    # The failed run has its record, as a finished run has: where and why it failed, and states.
    assert failed["failed"] == "DataGate" and failed["executions"] == states and failed["run_id"] == run.name
    assert runs.read_summary(failed["run_dir"]) == failed
    # `latest` is the newest run that finished (the main sequence's, same home); the failed
    # run, asked for by its id, has no report.
    assert runs.failure(runs.read_summary(runs.find_record(cfg.home, runs.LATEST))) is None
    assert runs.find_record(cfg.home, failed["run_id"]) == failed["run_dir"]
    assert cli.main(["report", failed["run_id"], "--home", cfg.home]) == 2
    assert "failed, so it has no report: DataGate failed: DataGateError: " in capsys.readouterr().err


def test_allowed_anomalies_run_on_and_a_bad_model_is_not_blessed(anomaly_config):
    """allow_anomalies records the override; an untrained 2-class model fails the floor. The eval
    split is skewed, so the gate is on balanced accuracy, and on 20 eval images its floor is the
    significance bound, above chance (1/3 on 3 eval classes) + margin and min_accuracy."""
    # No pre-push server: the data gate is the subject (test_gate_stops_a_worse_model has the
    # pre-push server of a model the gate stops).
    bad = anomaly_config.replace(
        allow_anomalies=True, weights="none", epochs=1, learning_rate=1e-6, prepush_validation=False
    )
    s = run_local(bad)
    assert s.executions["DataGate"] == "COMPLETE" and s.executions["Evaluator"] == "COMPLETE"
    gate = s.gate
    assert any("eval has class '8'" in a for a in gate["anomalies_allowed"]), gate
    assert sorted(gate["class_names"]) == ["5", "6"]
    # eval: 12 x '5', 4 x '6', 4 x '8': the largest class has 3x the smallest, so "auto" gates
    # the mean recall over the 3 eval classes, which answers that ignore the image score 1/3 on
    # average however skewed the split; on these 20 images they reach 5/9 one time in 20.
    assert gate["metric"] == "balanced_accuracy" and gate["metric_reason"].startswith("auto: "), gate
    assert gate["majority_class"] == "5" and gate["majority_share"] == pytest.approx(0.6)
    assert gate["eval_classes"] == 3 and gate["eval_examples"] == 20 and gate["significance"] == 0.05
    assert gate["floor"] == pytest.approx(5 / 9) and gate["floor_source"] == "significance"
    assert gate["significant_right"] is None
    assert gate["value"] == pytest.approx(sum(gate["per_class_recall"].values()) / 3, abs=1e-9)
    assert gate["value"] < gate["floor"], gate
    assert s.blessed is False and s.pushed is None
    assert any(
        r.startswith("balanced accuracy ") and "is below the floor 0.556 (0.556 is the least balanced" in r
        for r in gate["reasons"]
    ), gate
    assert any(r.startswith("class '8' recall 0.000") for r in gate["reasons"]), gate
    assert _versions(bad.resolved().model_serving_dir) == {}


# --------------------------------------------------------------------------- faults (RELIABILITY.md)
def _imgpipe(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imgpipe", *args], cwd=ROOT, env=ENV, text=True, **kwargs)


def _executions(cfg) -> list:
    with mlmd.open_store(cfg) as store:
        return list(store.get_executions())


def _unfinished(cfg) -> list:
    return [e for e in _executions(cfg) if e.last_known_state in recovery.UNFINISHED]


@pytest.fixture(scope="module")
def cli_config(base_config, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("cli") / "config.yaml")
    base_config.resolved().save(path)
    return path


@pytest.fixture(scope="module")
def killed_run(base_config, first_run, cli_config, tmp_path_factory):
    """A run that must train (one more epoch), killed with SIGKILL once its Trainer is RUNNING."""
    cfg = base_config.resolved()
    log = tmp_path_factory.mktemp("killed") / "stderr.txt"
    with open(log, "w") as err:
        proc = _imgpipe(
            "run",
            "--config",
            cli_config,
            "--epochs",
            str(cfg.training.epochs + 1),
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    execution = _running_trainer(proc, cfg, log)
    time.sleep(3)  # mid-Trainer
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    return execution.id


def _run_of(cfg, execution_id: int) -> str:
    """The run id (pipeline_run context) of execution `execution_id`."""
    with mlmd.open_store(cfg) as store:
        return mlmd.run_name_of_execution(store, execution_id)


def _running_trainer(proc: subprocess.Popen, cfg, log):
    """Wait until the run `proc` has a RUNNING Trainer in ML Metadata; return that execution."""
    deadline = time.monotonic() + LONG
    running = []
    while not running and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
        try:
            running = [e for e in _unfinished(cfg) if e.type.endswith("Trainer")]
        except Exception:  # noqa: BLE001 - the run may be writing the database this instant
            running = []
    assert running, f"the Trainer never ran: {log.read_text()[-2000:]}"
    [execution] = running
    return execution


def test_a_run_killed_mid_trainer_leaves_it_running(base_config, killed_run):
    """The fault as it was: the dead run's Trainer stays RUNNING and its scratch folder stays."""
    cfg = base_config.resolved()
    assert [e.id for e in _unfinished(cfg)] == [killed_run]
    assert os.listdir(scratch.scratch_root(cfg.home))  # kill -9 skips every cleanup
    # It wrote no summary; its record folder says it started (the next run records it).
    [(folder, started)] = runs.unfinished(cfg.home)
    assert started["run_id"] == _run_of(cfg, killed_run) and not os.path.exists(f"{folder}/summary.json")
    with lock.run_lock(lock.home_lock_path(cfg.home)):  # but the kernel released the lock
        pass


def test_concurrent_runs_on_one_home(base_config, first_run, cli_config, killed_run):
    """A holds the home; B (no wait) exits 75 naming A; C waits, then runs. A recovers the killed run.

    A is stopped (SIGSTOP) while it holds the lock, so B and C meet it there whatever the timing.
    """
    cfg = base_config.resolved()
    model_dir = cfg.model_serving_dir
    before = _versions(model_dir)
    lock_path = lock.home_lock_path(cfg.home)
    a = _imgpipe("run", "--config", cli_config, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + LONG
    holder = ""
    while f"pid {a.pid} " not in holder and a.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        with open(lock_path, encoding="utf-8") as f:
            holder = f.read()
    assert f"pid {a.pid} " in holder, a.communicate()
    os.kill(a.pid, signal.SIGSTOP)
    try:
        b = _imgpipe("run", "--config", cli_config, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        b_out, b_err = b.communicate(timeout=LONG)
        c = _imgpipe(
            "run",
            "--config",
            cli_config,
            "--lock-wait",
            str(LONG),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        c_early = []
        while not any("waiting up to" in x for x in c_early) and c.poll() is None:
            c_early.append(c.stderr.readline())
    finally:
        os.kill(a.pid, signal.SIGCONT)
    a_out, a_err = a.communicate(timeout=LONG)
    c_out, c_err = c.communicate(timeout=LONG)
    c_err = "".join(c_early) + c_err

    assert b.returncode == lock.EXIT_LOCKED and b_out == ""
    a_run = holder.strip().rsplit("run ", 1)[-1]
    assert f"(pid {a.pid} since " in b_err and f"run {a_run})" in b_err
    assert a.returncode == 0, a_err[-3000:]
    assert c.returncode == 0, c_err[-3000:]
    # stdout is exactly one JSON line: the run's own summary, also saved in its own record.
    summaries = []
    for out in (a_out, c_out):
        lines = out.splitlines()
        assert len(lines) == 1, out[:2000]
        summaries.append(json.loads(lines[0]))
    sa, sc = summaries
    assert sa["run_id"] == a_run and sc["run_id"] != a_run and sa["run_dir"] != sc["run_dir"]
    for s in (sa, sc):
        with open(os.path.join(s["run_dir"], "summary.json"), encoding="utf-8") as f:
            assert json.load(f)["run_id"] == s["run_id"]
        assert s["blessed"] is True and s["pushed"] is None and "identical to version" in s["push_skipped"]
    assert _versions(model_dir) == before  # no push claimed, none made
    assert f"waiting up to {LONG}s for the lock {lock_path}" in c_err and f"run {a_run})" in c_err
    # What stderr no longer carries (A trained: its exit released the functions it traced).
    for err in (a_err, c_err):
        assert "property_predicate is not supported" not in err and "Unable to register cu" not in err
        assert "Exception ignored in" not in err, err[-3000:]

    # Run A found the killed Trainer RUNNING and marked it FAILED; nothing is left RUNNING.
    assert _unfinished(cfg) == []
    [dead] = [e for e in _executions(cfg) if e.id == killed_run]
    reason = dead.custom_properties[recovery.ABANDONED_KEY].string_value
    assert f"found by run {a_run}" in reason
    assert recovery.execution_folders(cfg.pipeline_root, "Trainer", killed_run) == []
    assert not os.path.exists(scratch.scratch_root(cfg.home))
    # ... and wrote the killed run's record: where it died, and what ML Metadata knows it did.
    assert runs.unfinished(cfg.home) == []
    dead = runs.read_summary(runs.find_record(cfg.home, _run_of(cfg, killed_run)))
    assert dead["failed"] == "Trainer" and dead["executions"]["Trainer"] == "FAILED"
    assert dead["error"].startswith("Trainer: the run ended without writing its record (started ")
    assert dead["error"].endswith(f"recorded by run {a_run}") and dead["pushed"] is None


def test_sigterm_stops_a_run_cleanly(base_config, first_run, cli_config, tmp_path):
    """SIGTERM (systemctl stop, docker stop, timeout) takes Ctrl-C's path: exit 143, the Trainer
    marked FAILED at once, the scratch folder and the lock released, the record and its JSON."""
    cfg = base_config.resolved()
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = _imgpipe(
            "run", "--config", cli_config, "--epochs", str(cfg.training.epochs + 2),
            stdout=subprocess.PIPE, stderr=err, start_new_session=True,
        )  # fmt: skip
    execution = _running_trainer(proc, cfg, log)
    time.sleep(2)
    proc.terminate()  # SIGTERM to the run's process only, as `kill PID` sends it
    out, _ = proc.communicate(timeout=120)
    stderr = log.read_text()
    assert proc.returncode == 143, stderr[-3000:]
    assert "imgpipe: error: terminated (SIGTERM)" in stderr
    [line] = out.splitlines()
    summary = json.loads(line)
    assert summary["failed"] == "Trainer" and summary["error"] == "Trainer: the run was terminated (SIGTERM)"
    assert summary["executions"]["Trainer"] == "FAILED"
    [after] = [e for e in _executions(cfg) if e.id == execution.id]
    assert after.last_known_state == after.FAILED
    assert not _unfinished(cfg)
    assert runs.read_summary(summary["run_dir"])["failed"] == "Trainer"
    assert not os.path.exists(scratch.scratch_root(cfg.home))
    with lock.run_lock(lock.home_lock_path(cfg.home)):
        pass


def test_json_commands_print_only_json(base_config, first_run, tmp_path):
    """`ingest` and `predict` as real processes: stdout parses as JSON lines, nothing else."""
    from serving.devserver import lifecycle

    cfg = base_config.resolved()
    images = os.path.join(os.path.dirname(cfg.data_dir), "images")
    ingest_proc = _imgpipe(
        "ingest",
        "--images",
        images,
        "--out",
        str(tmp_path / "records"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = ingest_proc.communicate(timeout=LONG)
    assert ingest_proc.returncode == 0, err[-2000:]
    [line] = out.splitlines()
    assert sorted(json.loads(line)["classes"]) == sorted(str(c) for c in CLASSES)

    files = sorted(
        os.path.join(images, str(CLASSES[0]), f) for f in os.listdir(os.path.join(images, str(CLASSES[0])))
    )[:3]
    with lifecycle.start_in_thread(cfg.model_serving_dir, cfg.model_name) as running:
        predict = _imgpipe(
            "predict",
            "--target",
            running.target,
            "--model",
            cfg.model_name,
            *files,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = predict.communicate(timeout=LONG)
    assert predict.returncode == 0, err[-2000:]
    lines = [json.loads(x) for x in out.splitlines()]
    assert len(lines) == len(files) and all(set(x) >= {"image", "classes", "scores"} for x in lines)
    assert "Unable to register cu" not in err


def test_prune_keeps_what_the_next_run_needs(base_config, first_run):
    """After `imgpipe prune --keep 1` the next identical run is still cached and gated on the same baseline."""
    cfg = base_config.resolved()

    def prune(*extra: str) -> dict:
        proc = _imgpipe(
            "prune", "--home", cfg.home, "--keep", "1", *extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = proc.communicate(timeout=LONG)
        assert proc.returncode == 0, err[-2000:]
        [line] = out.splitlines()
        return json.loads(line)

    root_bytes = scratch.tree_bytes(cfg.pipeline_root)
    dry = prune("--dry-run")
    assert scratch.tree_bytes(cfg.pipeline_root) == root_bytes
    real = prune()
    report = real["pipelines"][cfg.pipeline_name]
    assert report["removed"] == dry["pipelines"][cfg.pipeline_name]["removed"]
    assert real["bytes_freed"] == dry["bytes_freed"] > 0
    assert root_bytes - scratch.tree_bytes(cfg.pipeline_root) == real["bytes_freed"]
    # The worse model (gate test) is gone; the first, blessed and served, model stays.
    removed_types = [r["type"] for r in report["removed"]]
    assert "Model" in removed_types
    [baseline] = [p for p in report["protected"] if p["type"] == "Model"]
    assert os.path.isdir(baseline["uri"])
    with mlmd.open_store(cfg) as store:
        for r in report["removed"]:
            [artifact] = store.get_artifacts_by_id([r["id"]])
            assert artifact.state == artifact.DELETED and not os.path.exists(r["uri"])

    s = run_local(base_config)
    assert all(s.executions[n] == "CACHED" for n in COMPONENT_IDS if n != "latest_blessed_model_resolver"), s
    assert s.baseline_accuracy == pytest.approx(first_run.accuracy, abs=1e-6)
    assert s.blessed is True and s.pushed is None


def test_a_served_version_deleted_by_hand_is_pushed_again(base_config, first_run):
    """A re-run with nothing changed takes the Pusher from cache; with the version it reports
    deleted from the serving dir that report would be false and nothing served. The run's
    start finds the version gone: the Pusher runs again and serves the same model anew."""
    model_dir = base_config.resolved().model_serving_dir
    cached = run_local(base_config)
    if cached.executions["Pusher"] != "CACHED":  # run alone: the first re-run judges the model anew
        cached = run_local(base_config)
    assert cached.executions["Pusher"] == "CACHED" and cached.pushed is None, cached
    version = max(_versions(model_dir), key=int)
    assert cached.push_skipped.endswith(f"version {version}"), cached.push_skipped
    shutil.rmtree(os.path.join(model_dir, version))

    s = run_local(base_config)
    assert s.executions["Trainer"] == "CACHED" and s.executions["Pusher"] == "COMPLETE", s.executions
    assert s.blessed is True and s.push_skipped is None and s.pushed, s
    new = os.path.basename(s.pushed.rstrip("/"))
    assert version not in _versions(model_dir) and int(new) > int(version)
    assert "saved_model.pb" in _versions(model_dir)[new]
    again = run_local(base_config)  # the new push is the record the cache hands back now
    assert again.executions["Pusher"] == "CACHED" and again.pushed is None, again
    assert again.push_skipped == f"cached: version {new} was pushed by an earlier run", again.push_skipped


def test_prepush_validation_stops_a_model_whose_signature_is_broken(base_config, first_run, monkeypatch):
    """The Evaluator blesses it (serving_default works), predict_images fails in the server: no push.

    The model's own warmup requests cover every client signature, so the server refuses to load
    it (as TF Serving does when a warmup request fails) before any check request is sent.

    Its blessing is withdrawn after the run, so the next runs' baseline stays the served model.
    """
    import tensorflow as tf

    from trainer import export
    from trainer.features import IMAGE_KEY

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def broken_predict_images(self, images):
        tf.debugging.assert_equal(tf.size(images), -1, message="predict_images broken on purpose")
        scores = self._scores({IMAGE_KEY: export._raw_image_input(images, self.raw_spec)})  # noqa: SLF001
        return {"scores": scores, "classes": self._all_classes(scores)}

    monkeypatch.setattr(export._ServingModule, "predict_images", broken_predict_images)  # noqa: SLF001
    model_dir = base_config.resolved().model_serving_dir
    before = _versions(model_dir)
    # Fewer epochs: the Trainer runs again (its export is the broken one); the gate lets it through.
    s = run_local(
        base_config.replace(
            epochs=2, min_accuracy=0.0, significance=0.0, max_regression=1.0, export_tflite="none"
        )
    )
    assert s.executions["Trainer"] == "COMPLETE" and s.executions["InfraValidator"] == "COMPLETE"
    assert s.blessed is True
    p = s.prepush
    assert p["validated"] is True and p["blessed"] is False
    assert p["reason"].startswith("server: imgpipe serve failed to load model 'digits' version 1: "), p
    assert "signature 'predict_images' failed" in p["reason"]
    assert "predict_images broken on purpose" in p["reason"]
    assert len(p["failures"]) == 1
    assert p["server_started_early"] is True  # the standby's load error is reported the same way
    assert s.pushed is None
    assert s.push_skipped == f"pre-push validation failed: {p['reason']}"
    assert _versions(model_dir) == before
    # Its blessing is withdrawn: the next runs are gated against the model being served, the
    # latest model whose blessing says blessed (TFX's LatestBlessedModelStrategy, ML Metadata).
    cfg = base_config.resolved()
    with mlmd.open_store(cfg) as store:
        run = mlmd.run_by_id(store, cfg.pipeline_name, s.run_id)
        executions = mlmd.run_executions(store, cfg.pipeline_name, run)
        [model] = mlmd.output_artifacts(store, executions["Trainer"], "model")
        [mine] = mlmd.output_artifacts(store, executions["Evaluator"], "blessing")
        blessed_ids = [
            b.custom_properties["current_model_id"].int_value
            for b in store.get_artifacts_by_type("ModelBlessing")
            if b.custom_properties["blessed"].int_value == 1
        ]
    assert mine.custom_properties["blessed"].int_value == 0
    assert mine.custom_properties[mlmd.EVALUATOR_BLESSED_KEY].int_value == 1
    assert "pre-push validation failed in run" in mine.custom_properties[mlmd.WITHDRAWN_KEY].string_value
    assert blessed_ids and model.id not in blessed_ids and max(blessed_ids) < model.id


def test_a_blessed_model_whose_push_failed_is_not_the_next_baseline(
    base_config, first_run, monkeypatch, tmp_path
):
    """A full disk at the Pusher: the run fails naming it, its record says so, and the model's
    blessing is withdrawn (it is not served) while the served model's stays. With space again,
    the same run is retried: the withdrawn blessing is not taken from the cache, the Evaluator
    judges the model again and the Pusher pushes it."""
    import errno

    from components import pusher

    def full_disk(model_path, base_directory, now=None):
        raise OSError(errno.ENOSPC, "No space left on device", base_directory)

    monkeypatch.setattr(pusher, "push_new_version", full_disk)
    # Another serving dir: the model is not byte-identical to a version there, so it is pushed.
    # The Trainer is cached; a floor no other test uses makes a new blessing (an earlier run's
    # blessing of this model, from cache, was pushed), and the gate compares the model with
    # itself (TFMA reused): a quick run.
    config = base_config.replace(
        serving_dir=str(tmp_path / "full"), prepush_validation=False, min_accuracy=0.41
    )
    with pytest.raises(PipelineRunError) as e:
        run_local(config)
    s = e.value.summary
    assert s.failed == "Pusher" and "No space left on device" in s.error, s.error
    assert s.executions["Pusher"] == "FAILED" and s.executions["Trainer"] == "CACHED"
    assert s.blessed is True and s.pushed is None
    assert s.push_skipped == f"blessing withdrawn: not pushed in run {s.run_id}: its push failed"
    assert runs.read_summary(s.run_dir)["failed"] == "Pusher"
    cfg = base_config.resolved()
    with mlmd.open_store(cfg) as store:
        run = mlmd.run_by_id(store, cfg.pipeline_name, s.run_id)
        [mine] = mlmd.output_artifacts(
            store, mlmd.run_executions(store, cfg.pipeline_name, run)["Evaluator"], "blessing"
        )
        first = mlmd.run_by_id(store, cfg.pipeline_name, first_run.run_id)
        [served] = mlmd.output_artifacts(
            store, mlmd.run_executions(store, cfg.pipeline_name, first)["Evaluator"], "blessing"
        )
    assert mine.custom_properties["blessed"].int_value == 0
    assert mine.state == mine.ABANDONED  # out of TFX's cache
    assert served.custom_properties["blessed"].int_value == 1

    monkeypatch.undo()  # space again
    retry = run_local(config)
    assert retry.executions["Trainer"] == "CACHED" and retry.executions["Evaluator"] == "COMPLETE"
    assert retry.blessed is True and retry.push_skipped is None
    assert retry.pushed and retry.pushed.startswith(config.resolved().model_serving_dir), retry.pushed
    assert list(_versions(config.resolved().model_serving_dir)) == [
        os.path.basename(retry.pushed.rstrip("/"))
    ]


def test_a_rolled_back_model_is_not_pushed_again(base_config, first_run, tmp_path):
    """`imgpipe rollback` after a push: the earlier version is served again (as the newest), and
    the next run on the same data, whose Trainer TFX serves from its cache, judges the model
    again and refuses it: the rollback holds. Rolled forward on purpose, the model is blessed
    again and, being the served version already, not pushed a second time."""
    from imgpipe.orchestration.rollback import rollback_home

    config = base_config.replace(serving_dir=str(tmp_path / "serving"), prepush_validation=False)
    serving = config.resolved().model_serving_dir
    first = run_local(config)  # another serving dir: the home's model is pushed there
    assert first.pushed and first.executions["Trainer"] == "CACHED", first
    pushed = os.path.basename(first.pushed.rstrip("/"))
    # An earlier version, copied in by hand: another model (its label vocabulary in another order).
    shutil.copytree(first.pushed, os.path.join(serving, "1"))
    for name in os.listdir(os.path.join(serving, "1", "assets")):
        path = os.path.join(serving, "1", "assets", name)
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(reversed(lines)) + "\n")

    back = rollback_home(config.home, reason="misreads the new scanner's images")
    assert (back.from_version, back.to_version) == (pushed, "1")
    assert sorted(_versions(serving), key=int) == ["1", pushed, back.new_version]
    assert _versions(serving)[back.new_version] == _versions(serving)["1"]

    again = run_local(config)
    assert again.executions["Trainer"] == "CACHED" and again.executions["Evaluator"] == "COMPLETE"
    assert again.blessed is False and again.pushed is None, again
    assert again.gate["reasons"][0].startswith("this model was rolled back on "), again.gate["reasons"]
    assert "misreads the new scanner's images" in again.gate["rolled_back"]
    assert max(_versions(serving), key=int) == back.new_version  # still the earlier model

    forward = rollback_home(config.home, to=pushed)
    assert forward.to_version == pushed and forward.rolled_back_model is None  # "1" is not in ML Metadata
    assert forward.baseline == forward.restored_model
    last = run_local(config)
    assert last.executions["Evaluator"] == "COMPLETE" and last.blessed is True, last
    assert last.gate["rolled_back"] is None
    assert last.pushed is None and last.push_skipped == f"identical to version {forward.new_version}"
