"""The Evaluator's executor around TFMA: the thresholds it writes, the baseline it drops, gate.json.

TFMA itself is replaced by a stand-in that records what it was given; the
whole-pipeline runs in tests/e2e exercise the real one.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from components.gate_decision import METRIC_TOLERANCE


def _model(tmp_path, name: str, vocab: list[str]):
    from tfx.types import standard_artifacts

    m = standard_artifacts.Model()
    m.uri = str(tmp_path / name)
    assets = tmp_path / name / "Format-Serving" / "assets"
    os.makedirs(assets)
    (assets / "label_vocab").write_text("\n".join(vocab) + "\n")
    return m


def _other_weights() -> bytes:
    """A saved_model.pb that parses, with other bytes than another model's."""
    from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

    meta = meta_graph_pb2.MetaGraphDef(meta_info_def=meta_graph_pb2.MetaGraphDef.MetaInfoDef(tags=["other"]))
    return saved_model_pb2.SavedModel(meta_graphs=[meta]).SerializeToString()


def _report(tmp_path, eval_counts: dict[str, int], allowed=(), warnings=(), label_change_accepted=False):
    from components.artifacts import DataGateReport, Report, write_report

    r = DataGateReport()
    r.uri = str(tmp_path / "report")
    write_report(
        r,
        Report(
            splits={"eval": {"examples": sum(eval_counts.values()), "labels": eval_counts}},
            anomalies=list(allowed),
            anomalies_allowed=list(allowed),
            baseline_classes=None,
            warnings=list(warnings),
            label_change_accepted=label_change_accepted,
        ),
    )
    return r


def _examples(tmp_path, name: str = "examples", records: bool = True):
    """An examples artifact; with `records`, its eval, test and holdout splits hold 20 distinct
    records each (the executor reads their image fingerprints: no image repeats, so the gate
    judges the whole split on the data gate's counts)."""
    from tfx.types import standard_artifacts

    from tests import helpers

    e = standard_artifacts.Examples()
    e.uri = str(tmp_path / name)
    e.split_names = '["train", "eval", "test", "holdout"]'
    if records and not (tmp_path / name).exists():
        for split in ("eval", "test", "holdout"):
            items = [(f"{name} {split} image {i}".encode(), "a") for i in range(20)]
            helpers.write_tfrecords(str(tmp_path / name / f"Split-{split}" / "data.tfrecord"), items)
    return e


def _outputs(tmp_path, execution: str | None = None):
    """The Evaluator's outputs; with `execution`, in TFX's layout (Evaluator/<output>/<execution id>)."""
    from tfx.types import standard_artifacts

    evaluation = standard_artifacts.ModelEvaluation()
    blessing = standard_artifacts.ModelBlessing()
    if execution is None:
        evaluation.uri, blessing.uri = str(tmp_path / "evaluation"), str(tmp_path / "blessing")
    else:
        evaluation.uri = str(tmp_path / "Evaluator" / "evaluation" / execution)
        blessing.uri = str(tmp_path / "Evaluator" / "blessing" / execution)
    os.makedirs(evaluation.uri)
    os.makedirs(blessing.uri)
    return {"evaluation": [evaluation], "blessing": [blessing]}


def _thresholds(eval_config_json: str) -> dict[str, tuple]:
    """Slice kind -> (lower bound, has change threshold) of the gated metric."""
    import tensorflow_model_analysis as tfma
    from tfx.utils import proto_utils

    from components.gate import ACCURACY_CLASS

    cfg = proto_utils.json_to_proto(eval_config_json, tfma.EvalConfig())
    out = {}
    for spec in cfg.metrics_specs:
        for m in spec.metrics:
            if m.class_name != ACCURACY_CLASS:
                continue
            assert not m.HasField("threshold")
            for p in m.per_slice_thresholds:
                [s] = p.slicing_specs
                kind = ",".join(s.feature_keys) or "overall"
                out[kind] = (
                    p.threshold.value_threshold.lower_bound.value,
                    p.threshold.HasField("change_threshold"),
                )
    return out


@pytest.fixture
def fake_tfma(monkeypatch):
    """Replace TFMA's run: record inputs and properties, bless as told, return the given results."""
    from tfx.components.evaluator import executor as evaluator_executor

    from components import evaluator

    seen: dict = {"blessed": 1, "results": None}

    def do(self, input_dict, output_dict, props):
        seen["inputs"], seen["props"] = input_dict, props
        output_dict["blessing"][0].set_int_custom_property("blessed", seen["blessed"])

    monkeypatch.setattr(evaluator_executor.Executor, "Do", do)
    monkeypatch.setattr(evaluator, "read_results", lambda uri, class_names=(): seen["results"])
    return seen


def _props(gate_config: dict, min_accuracy: float = 0.5):
    from tfx.utils import json_utils, proto_utils

    from components.evaluator import eval_config
    from components.gate import GateConfig

    return {
        "eval_config": proto_utils.proto_to_json(eval_config(GateConfig())),
        "gate_config": json_utils.dumps(gate_config),
        "min_accuracy": min_accuracy,
    }


def test_compiled_eval_config_gates_overall_and_per_class():
    from tfx.utils import proto_utils

    from components.evaluator import eval_config
    from components.gate import GateConfig

    cfg = proto_utils.proto_to_json(eval_config(GateConfig(min_accuracy=0.65, min_class_recall=0.1)))
    assert _thresholds(cfg) == {
        "overall": (0.65 - METRIC_TOLERANCE, True),
        "label": (0.1 - METRIC_TOLERANCE, False),
    }
    off = proto_utils.proto_to_json(eval_config(GateConfig(min_class_recall=0.0)))
    assert set(_thresholds(off)) == {"overall"}


@pytest.mark.parametrize(
    "correct,total,floor,recall,change,passes",
    [
        (19, 20, 0.95, None, None, True),  # float32(19/20) is 0.94999998807907: exactly at the floor
        (18, 20, 0.95, None, None, False),
        (9, 10, 0.5, 0.9, None, True),  # a class exactly at min_class_recall
        (8, 10, 0.5, 0.9, None, False),
        (14, 20, 0.5, None, 16 / 20, True),  # a drop of exactly max_regression 0.1
        (13, 20, 0.5, None, 16 / 20, False),
    ],
)
def test_tfma_judges_a_float32_metric_exactly_at_a_bound_as_passing(
    correct, total, floor, recall, change, passes
):
    """TFMA's own validator on our thresholds, with accuracy as TFMA computes it (float32)."""
    import numpy as np
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.evaluators import metrics_validator
    from tensorflow_model_analysis.utils import config_util

    from components.evaluator import accuracy_thresholds
    from components.gate import ACCURACY_CLASS, ACCURACY_KEY

    value = np.float32(correct / total)
    specs = [tfma.ModelSpec(name="candidate")]
    if change is not None:
        specs.append(tfma.ModelSpec(name="baseline", is_baseline=True))
    cfg = config_util.update_eval_config_with_defaults(
        tfma.EvalConfig(
            model_specs=specs,
            slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=["label"])],
            metrics_specs=[
                tfma.MetricsSpec(
                    metrics=[
                        tfma.MetricConfig(
                            class_name=ACCURACY_CLASS,
                            per_slice_thresholds=accuracy_thresholds(floor, recall, 0.1),
                        )
                    ]
                )
            ],
        ),
        has_baseline=change is not None,
        rubber_stamp=change is None,  # as the Evaluator runs TFMA: no baseline, no change threshold
    )
    slice_key = (("label", "a"),) if recall is not None else ()
    candidate = cfg.model_specs[0].name
    metrics = {tfma.metrics.MetricKey(name=ACCURACY_KEY, model_name=candidate): value}
    if change is not None:
        base = np.float32(change)
        metrics[tfma.metrics.MetricKey(name=ACCURACY_KEY, model_name="baseline")] = base
        metrics[tfma.metrics.MetricKey(name=ACCURACY_KEY, model_name=candidate, is_diff=True)] = value - base
    result = metrics_validator.validate_metrics((slice_key, metrics), cfg)
    assert result.validation_ok is passes, result


def test_majority_floor_reaches_tfma_and_gate_json_records_it(tmp_path, fake_tfma):
    from components.evaluator import GateEvaluatorExecutor
    from components.gate_decision import EvalResults, Failure

    fake_tfma["blessed"] = 0
    fake_tfma["results"] = EvalResults(
        accuracy=0.7,
        examples=20,
        per_class={"5": 1.0, "6": 0.0},
        baseline_accuracy=None,
        failures=[Failure(None, False, 0.7), Failure("6", False, 0.0)],
    )
    inputs = {
        "examples": [_examples(tmp_path)],
        "model": [_model(tmp_path, "candidate", ["5", "6"])],
        "baseline_model": [],
        "data_report": [_report(tmp_path, {"5": 14, "6": 6}, allowed=["eval: x"])],
    }
    outputs = _outputs(tmp_path)
    # The significance bound off: the majority bound is the subject (with it, 18 of 20 would be the floor).
    GateEvaluatorExecutor().Do(
        inputs,
        outputs,
        _props(
            {"metric": "accuracy", "majority_margin": 0.05, "min_class_recall": 0.05, "significance": 0.0}
        ),
    )

    assert "gate_config" not in fake_tfma["props"] and "min_accuracy" not in fake_tfma["props"]
    bounds = _thresholds(fake_tfma["props"]["eval_config"])
    assert bounds["overall"][0] == pytest.approx(0.75 - METRIC_TOLERANCE, abs=1e-9)  # 14/20 + 0.05
    assert bounds["label"][0] == pytest.approx(0.05 - METRIC_TOLERANCE, abs=1e-9)
    with open(tmp_path / "evaluation" / "gate.json", encoding="utf-8") as f:
        gate = json.load(f)
    assert gate["blessed"] is False
    assert gate["floor"] == pytest.approx(0.75) and gate["floor_source"] == "majority"
    assert gate["majority_class"] == "5" and gate["majority_share"] == pytest.approx(0.7)
    assert gate["reasons"] == [
        "accuracy 0.700 is below the floor 0.750 (majority class '5' has 0.700 of eval + margin 0.050)",
        "class '6' recall 0.000 is below min_class_recall 0.050",
    ]
    assert gate["baseline"]["skipped_reason"] == "no blessed model yet"
    assert gate["anomalies_allowed"] == ["eval: x"]
    assert gate["eval_examples_in_train"] is None  # the candidate has no record of its training images


class _Answers:
    """A model's answers as unseen_comparison.answers_on_unseen gives them, reduced to a value."""

    def __init__(self, value, balanced_ok=True, per_class=None, counts=None):
        self._value, self._balanced_ok = value, balanced_ok
        self._per_class, self._counts = per_class or {}, counts or {}

    def value(self, balanced):
        assert self._balanced_ok or not balanced, "balanced accuracy asked where accuracy is gated"
        return self._value

    def per_class(self):
        return dict(self._per_class)

    def counts(self):
        return dict(self._counts)


@pytest.mark.parametrize("compared, blessed", [((0.9, 0.85), True), ((0.7, 0.9), False)])
def test_a_class_added_compares_the_models_on_the_classes_both_have(
    tmp_path, fake_tfma, monkeypatch, compared, blessed
):
    """A class added (accepted at the data gate): the served model was replaced with no
    comparison at all; now both are measured on the eval examples of the classes both have,
    the candidate's answers of the new class there counting as wrong."""
    from components import unseen_comparison
    from components.evaluator import GateEvaluatorExecutor
    from components.gate_decision import EvalResults

    calls = []

    def measured(left_out, files, model_dirs, batch_size):
        calls.append((list(left_out), model_dirs))
        return [_Answers(v) for v in compared]

    monkeypatch.setattr(unseen_comparison, "answers_on_unseen", measured)
    fake_tfma["results"] = EvalResults(0.9, 30, {"a": 0.9, "b": 0.9, "c": 0.9}, None)
    baseline = _model(tmp_path, "baseline", ["a", "b"])
    inputs = {
        "examples": [_examples(tmp_path)],  # 20 eval records, all of class 'a'
        "model": [_model(tmp_path, "candidate", ["a", "b", "c"])],
        "baseline_model": [baseline],
        "data_report": [_report(tmp_path, {"a": 10, "b": 10, "c": 10})],
    }
    outputs = _outputs(tmp_path)
    GateEvaluatorExecutor().Do(inputs, outputs, _props({}, min_accuracy=0.6))
    assert fake_tfma["inputs"]["baseline_model"] == []  # TFMA cannot compare other label sets
    [(left_out, model_dirs)] = calls
    assert left_out == [False] * 20  # every record is of a class both models have
    assert model_dirs == [
        str(tmp_path / "candidate" / "Format-Serving"),
        str(tmp_path / "baseline" / "Format-Serving"),
    ]
    with open(tmp_path / "evaluation" / "gate.json", encoding="utf-8") as f:
        gate = json.load(f)
    assert gate["blessed"] is blessed
    assert outputs["blessing"][0].get_int_custom_property("blessed") == int(blessed)
    assert gate["baseline"] == {
        "accuracy": compared[1],
        "max_regression": 0.0,
        "compared": True,
        "skipped_reason": None,
        "identical": False,
        "reused_from": None,
        "seen_eval_examples": None,
        "compared_examples": 20,
        "candidate_accuracy": compared[0],
        "shared_classes": ["a", "b"],
        "label_change": "new class 'c'",
        "comparison_waived": None,
        "when_blessed": None,
        "per_class": None,
    }
    if not blessed:
        assert gate["reasons"] == [
            "accuracy 0.700 on the 20 eval examples of the classes both models have ('a', 'b'; new class "
            "'c') regressed from the latest blessed model's 0.900 by more than max_regression 0.000 (there, "
            "the candidate's answers of 'c' count as wrong; to accept a drop on the classes both have for the "
            "class added, raise --max-regression)"
        ]


def test_a_label_set_sharing_one_class_skips_the_baseline_with_the_reason(tmp_path, fake_tfma):
    from components.evaluator import GateEvaluatorExecutor
    from components.gate_decision import EvalResults

    fake_tfma["results"] = EvalResults(0.9, 30, {"a": 0.9, "c": 0.9}, None)
    inputs = {
        "examples": [_examples(tmp_path)],
        "model": [_model(tmp_path, "candidate", ["a", "c"])],
        "baseline_model": [_model(tmp_path, "baseline", ["a", "b"])],
        "data_report": [_report(tmp_path, {"a": 10, "c": 10})],
    }
    skipped = (
        "label set changed: new class 'c'; vanished class 'b' (against the latest blessed model); "
        "1 class in common, too few to compare on"
    )
    # The label change was let through (the data gate), and with one class in common there is
    # nothing to compare on: the floors decide, and the record says why.
    for told, waived in (
        (
            False,
            "the label set changed (new class 'c'; vanished class 'b'), leaving fewer than two classes in common",
        ),
        (True, "gate.bless_without_comparison"),
    ):
        shutil.rmtree(tmp_path / "evaluation", ignore_errors=True)
        shutil.rmtree(tmp_path / "blessing", ignore_errors=True)
        GateEvaluatorExecutor().Do(
            inputs, _outputs(tmp_path), _props({"bless_without_comparison": told}, min_accuracy=0.6)
        )
        assert fake_tfma["inputs"]["baseline_model"] == []
        with open(tmp_path / "evaluation" / "gate.json", encoding="utf-8") as f:
            gate = json.load(f)
        assert gate["blessed"] is True and gate["baseline"]["compared"] is False and gate["reasons"] == []
        assert gate["baseline"]["skipped_reason"] == skipped
        assert gate["baseline"]["comparison_waived"] == waived


def test_same_label_set_compares_with_the_baseline(tmp_path, fake_tfma):
    from components.evaluator import GateEvaluatorExecutor
    from components.gate_decision import EvalResults

    fake_tfma["results"] = EvalResults(0.9, 20, {}, 0.88)
    baseline = _model(tmp_path, "baseline", ["b", "a"])
    inputs = {
        "examples": [_examples(tmp_path)],
        "model": [_model(tmp_path, "candidate", ["a", "b"])],
        "baseline_model": [baseline],
        "data_report": [_report(tmp_path, {"a": 10, "b": 10})],
    }
    GateEvaluatorExecutor().Do(inputs, _outputs(tmp_path), _props({}))
    assert fake_tfma["inputs"]["baseline_model"] == [baseline]
    with open(tmp_path / "evaluation" / "gate.json", encoding="utf-8") as f:
        assert json.load(f)["baseline"]["accuracy"] == 0.88


@pytest.mark.parametrize("same_artifact", [True, False], ids=["same artifact", "byte-identical copy"])
def test_a_baseline_identical_to_the_candidate_is_not_evaluated_twice(tmp_path, fake_tfma, same_artifact):
    """A re-run with a cached Trainer: the latest blessed model is the candidate itself."""
    from components.evaluator import GateEvaluatorExecutor
    from components.gate_decision import EvalResults

    fake_tfma["results"] = EvalResults(0.9, 20, {}, None)
    candidate = _model(tmp_path, "candidate", ["a", "b"])
    baseline = candidate if same_artifact else _model(tmp_path, "copy", ["a", "b"])
    inputs = {
        "examples": [_examples(tmp_path)],
        "model": [candidate],
        "baseline_model": [baseline],
        "data_report": [_report(tmp_path, {"a": 10, "b": 10})],
    }
    GateEvaluatorExecutor().Do(inputs, _outputs(tmp_path), _props({}, min_accuracy=0.6))
    assert fake_tfma["inputs"]["baseline_model"] == []  # TFMA runs the model once
    with open(tmp_path / "evaluation" / "gate.json", encoding="utf-8") as f:
        gate = json.load(f)
    assert gate["blessed"] is True
    assert gate["baseline"] == {
        "accuracy": 0.9,
        "max_regression": 0.0,
        "compared": True,
        "skipped_reason": None,
        "identical": True,
        "reused_from": None,
        "seen_eval_examples": None,  # the candidate itself: nothing to look up
        "compared_examples": 20,
        "candidate_accuracy": 0.9,
        "shared_classes": None,
        "label_change": None,
        "comparison_waived": None,
        "when_blessed": None,
        "per_class": None,
    }


def test_a_baseline_differing_in_one_file_is_evaluated(tmp_path, fake_tfma):
    from components.evaluator import GateEvaluatorExecutor
    from components.gate_decision import EvalResults

    fake_tfma["results"] = EvalResults(0.9, 20, {}, 0.91)
    candidate = _model(tmp_path, "candidate", ["a", "b"])
    baseline = _model(tmp_path, "baseline", ["a", "b"])
    (tmp_path / "baseline" / "Format-Serving" / "saved_model.pb").write_bytes(_other_weights())
    inputs = {
        "examples": [_examples(tmp_path)],
        "model": [candidate],
        "baseline_model": [baseline],
        "data_report": [_report(tmp_path, {"a": 10, "b": 10})],
    }
    GateEvaluatorExecutor().Do(inputs, _outputs(tmp_path), _props({}))
    assert fake_tfma["inputs"]["baseline_model"] == [baseline]
    with open(tmp_path / "evaluation" / "gate.json", encoding="utf-8") as f:
        baseline_record = json.load(f)["baseline"]
    assert baseline_record["identical"] is False and baseline_record["accuracy"] == 0.91


def test_the_gate_record_carries_the_data_gates_warnings(tmp_path, fake_tfma):
    """gate.json (and so `imgpipe run`'s JSON, its `gate`) holds the data gate's warnings beside
    the numbers they may explain."""
    from components.evaluator import GateEvaluatorExecutor
    from components.gate_decision import EvalResults

    warning = "the eval images differ from the train images: brightness (median 78 in train, 27 in eval)"
    inputs = {
        "examples": [_examples(tmp_path)],
        "model": [_model(tmp_path, "candidate", ["a", "b"])],
        "baseline_model": [],
        "data_report": [_report(tmp_path, {"a": 10, "b": 10}, warnings=[warning])],
    }
    fake_tfma["results"] = EvalResults(0.9, 20, {"a": 0.9, "b": 0.9}, None)
    GateEvaluatorExecutor().Do(inputs, _outputs(tmp_path), _props({}))
    with open(tmp_path / "evaluation" / "gate.json", encoding="utf-8") as f:
        assert json.load(f)["data_warnings"] == [warning]


def test_a_class_without_eval_examples_fails_before_tfma(tmp_path, fake_tfma):
    from components.evaluator import GateEvaluatorExecutor
    from components.gate_decision import GateNotComputable

    inputs = {
        "examples": [_examples(tmp_path)],
        "model": [_model(tmp_path, "candidate", ["a", "b"])],
        "baseline_model": [],
        "data_report": [_report(tmp_path, {"a": 10})],
    }
    with pytest.raises(GateNotComputable, match="class 'b' of the model has no example in the eval split"):
        GateEvaluatorExecutor().Do(inputs, _outputs(tmp_path), _props({}))
    assert "props" not in fake_tfma


def test_the_gate_counts_the_labels_of_the_splits_the_evaluator_reads(tmp_path, fake_tfma):
    """example_splits other than 'eval': the floor is planned on those splits' labels, summed."""
    from components.artifacts import DataGateReport, Report, write_report
    from components.evaluator import GateEvaluatorExecutor
    from components.gate import GateConfig
    from components.gate_decision import EvalResults, GateNotComputable, plan_gate

    report = DataGateReport()
    report.uri = str(tmp_path / "report")
    splits = {
        "eval": {"examples": 10, "labels": {"a": 10}},  # no 'b': would not be computable
        "test": {"examples": 12, "labels": {"a": 6, "b": 6}},
        "holdout": {"examples": 8, "labels": {"a": 2, "b": 6}},
    }
    write_report(report, Report(splits=splits, anomalies=[], anomalies_allowed=[], baseline_classes=None))
    inputs = {
        "examples": [_examples(tmp_path)],
        "model": [_model(tmp_path, "candidate", ["a", "b"])],
        "baseline_model": [],
        "data_report": [report],
    }
    fake_tfma["results"] = EvalResults(0.9, 20, {"a": 0.9, "b": 0.9}, None, balanced_accuracy=0.9)
    props = dict(_props({"metric": "accuracy"}), example_splits=json.dumps(["test", "holdout"]))
    GateEvaluatorExecutor().Do(inputs, _outputs(tmp_path), props)
    with open(tmp_path / "evaluation" / "gate.json", encoding="utf-8") as f:
        record = json.load(f)
    # 8 'a' and 12 'b' over the two splits: the floor is planned on those counts (eval alone,
    # with no 'b', could not judge the model at all).
    expected = plan_gate(GateConfig(metric="accuracy"), {"a": 8, "b": 12}, ["a", "b"], None).floor
    assert (record["eval_classes"], record["majority_class"], record["majority_share"]) == (2, "b", 0.6)
    assert record["floor"] == pytest.approx(expected.value)

    props = dict(_props({}), example_splits=json.dumps(["test", "calibration"]))
    with pytest.raises(GateNotComputable, match=r"split\(s\) 'calibration', which the data gate's report"):
        GateEvaluatorExecutor().Do(inputs, _outputs(tmp_path / "again"), props)


def test_knob_is_checked_like_the_config_field(tmp_path, fake_tfma):
    from components.evaluator import GateEvaluatorExecutor

    inputs = {
        "examples": [_examples(tmp_path)],
        "model": [_model(tmp_path, "candidate", ["a", "b"])],
        "baseline_model": [],
        "data_report": [_report(tmp_path, {"a": 10, "b": 10})],
    }
    with pytest.raises(ValueError, match=r"min_accuracy: 1.5: Input should be less than or equal to 1"):
        GateEvaluatorExecutor().Do(inputs, _outputs(tmp_path), _props({}, min_accuracy=1.5))


def _evaluate(tmp_path, fake_tfma, execution, candidate, baseline, accuracy, baseline_accuracy=None, **kw):
    """One Evaluator execution in TFX's output layout; returns (gate.json, blessing artifact)."""
    from components.evaluator import GateEvaluatorExecutor
    from components.gate_decision import EvalResults

    fake_tfma["results"] = EvalResults(accuracy, 20, {}, baseline_accuracy)
    inputs = {
        "examples": [kw.pop("examples", None) or _examples(tmp_path)],
        "model": [candidate],
        "baseline_model": [baseline] if baseline else [],
        "data_report": [_report(tmp_path, {"a": 10, "b": 10})],
    }
    outputs = _outputs(tmp_path, execution)
    props = _props(kw.pop("gate", {}))
    props["example_splits"] = '["eval"]'
    GateEvaluatorExecutor().Do(inputs, outputs, props)
    with open(os.path.join(outputs["evaluation"][0].uri, "gate.json"), encoding="utf-8") as f:
        return json.load(f), outputs["blessing"][0]


@pytest.mark.parametrize("accuracy, blessed", [(0.95, True), (0.85, False)], ids=["better", "regressed"])
def test_a_baseline_measured_earlier_on_the_same_examples_is_not_evaluated_again(
    tmp_path, fake_tfma, accuracy, blessed
):
    """Its accuracy comes from its own gate.json; the no-regression threshold is applied here."""
    old = _model(tmp_path, "old", ["a", "b"])
    first, _ = _evaluate(tmp_path, fake_tfma, "7", old, None, 0.9)
    assert first["measured"]["model"] == old.uri and first["measured"]["splits"] == ["eval"]

    new = _model(tmp_path, "new", ["a", "b"])
    (tmp_path / "new" / "Format-Serving" / "saved_model.pb").write_bytes(_other_weights())
    gate, blessing = _evaluate(tmp_path, fake_tfma, "12", new, old, accuracy)
    assert fake_tfma["inputs"]["baseline_model"] == []  # TFMA ran the candidate only
    assert gate["baseline"]["accuracy"] == 0.9 and gate["baseline"]["compared"] is True
    assert gate["baseline"]["reused_from"] == str(tmp_path / "Evaluator" / "evaluation" / "7" / "gate.json")
    assert gate["blessed"] is blessed
    assert blessing.get_int_custom_property("blessed") == int(blessed)
    markers = sorted(os.listdir(blessing.uri))
    if blessed:
        assert gate["reasons"] == []
    else:
        assert markers == ["NOT_BLESSED"]
        assert gate["reasons"] == [
            "accuracy 0.850 regressed from the latest blessed model's 0.900 by more than max_regression 0.000"
        ]


def test_a_baseline_measured_on_other_examples_is_evaluated_by_tfma(tmp_path, fake_tfma):
    old = _model(tmp_path, "old", ["a", "b"])
    _evaluate(tmp_path, fake_tfma, "7", old, None, 0.9)
    new = _model(tmp_path, "new", ["a", "b"])
    (tmp_path / "new" / "Format-Serving" / "saved_model.pb").write_bytes(_other_weights())
    other = _examples(tmp_path, "new_examples")  # a new ExampleGen output: the eval split changed
    gate, _ = _evaluate(tmp_path, fake_tfma, "12", new, old, 0.95, baseline_accuracy=0.88, examples=other)
    assert fake_tfma["inputs"]["baseline_model"] == [old]
    assert gate["baseline"]["accuracy"] == 0.88 and gate["baseline"]["reused_from"] is None


def _tfma_files(folder, validation_ok: bool) -> None:
    """What TFMA leaves in an execution's folder (the stand-in writes none): metrics and validations."""
    import tensorflow as tf
    import tensorflow_model_analysis as tfma

    (folder / "metrics-00000-of-00001.tfrecord").write_bytes(b"the metrics of this run")
    with tf.io.TFRecordWriter(str(folder / "validations.tfrecord")) as w:
        w.write(tfma.ValidationResult(validation_ok=validation_ok).SerializeToString())


@pytest.mark.parametrize("validation_ok", [True, False], ids=["blessed", "not blessed"])
def test_an_identical_tfma_run_is_reused_with_its_blessing(tmp_path, fake_tfma, validation_ok):
    """The identical re-run: same model, examples and thresholds; its baseline is the candidate itself."""
    model = _model(tmp_path, "model", ["a", "b"])
    first, _ = _evaluate(tmp_path, fake_tfma, "7", model, None, 0.9)
    assert first["tfma_run"]["model"] == model.uri and first["tfma_run"]["baseline"] is None
    assert first["tfma_reused_from"] is None
    earlier = tmp_path / "Evaluator" / "evaluation" / "7"
    _tfma_files(earlier, validation_ok)

    fake_tfma["inputs"] = None
    gate, blessing = _evaluate(tmp_path, fake_tfma, "12", model, model, 0.9)
    assert fake_tfma["inputs"] is None  # TFMA did not run
    assert gate["tfma_reused_from"] == str(earlier)
    assert gate["tfma_run"] == first["tfma_run"]
    own = tmp_path / "Evaluator" / "evaluation" / "12"
    assert (own / "metrics-00000-of-00001.tfrecord").read_bytes() == b"the metrics of this run"
    assert json.loads((own / "gate.json").read_text())["tfma_reused_from"] == str(earlier)  # its own record
    assert os.listdir(blessing.uri) == ["BLESSED" if validation_ok else "NOT_BLESSED"]
    assert blessing.get_int_custom_property("blessed") == int(validation_ok)
    assert blessing.get_string_custom_property("current_model") == model.uri


@pytest.mark.parametrize(
    "change",
    ["new model", "new examples", "new threshold", "new batch size", "graph optimisation off"],
)
def test_a_tfma_run_on_other_inputs_runs_tfma(tmp_path, fake_tfma, change):
    model = _model(tmp_path, "model", ["a", "b"])
    _evaluate(tmp_path, fake_tfma, "7", model, None, 0.9)
    _tfma_files(tmp_path / "Evaluator" / "evaluation" / "7", True)
    kw = {}
    if change == "new model":
        model = _model(tmp_path, "retrained", ["a", "b"])
    elif change == "new examples":
        kw["examples"] = _examples(tmp_path, "new_examples")
    elif change == "new threshold":
        kw["gate"] = {"min_class_recall": 0.2}
    elif change == "new batch size":
        kw["gate"] = {"eval_batch_size": 16}
    else:  # the test's models have no transform_features signature: auto leaves the rewrites on
        kw["gate"] = {"eval_graph_optimization": "off"}
    fake_tfma["inputs"] = None
    gate, _ = _evaluate(tmp_path, fake_tfma, "12", model, None, 0.9, **kw)
    assert fake_tfma["inputs"] is not None  # TFMA ran
    assert gate["tfma_reused_from"] is None
    assert not (tmp_path / "Evaluator" / "evaluation" / "12" / "metrics-00000-of-00001.tfrecord").exists()


def test_the_evaluator_reads_the_eval_split_in_batches_of_the_configured_size(tmp_path):
    """TFX's Evaluator builds its TFXIO through tfxio_utils; within fixed_record_batches its
    BeamSource yields batches of that size (Beam's adaptive batches start at 1 record)."""
    import apache_beam as beam
    from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
    from tfx.components.util import tfxio_utils
    from tfx.types import standard_artifacts

    from components.evaluator import fixed_record_batches
    from pipeline.beam import LOCAL_RUNNER
    from tests import helpers

    split = tmp_path / "examples" / "Split-eval"
    helpers.write_tfrecords(str(split / "data.tfrecord"), [(b"img%d" % i, "a") for i in range(23)])
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    examples.split_names = '["eval"]'
    examples.set_string_custom_property("payload_format", "FORMAT_TF_EXAMPLE")

    def read_in_batches(check) -> None:
        """Read the split as TFX's Evaluator does (tfx/components/evaluator/executor.py); check(sizes)."""
        factory = tfxio_utils.get_tfxio_factory_from_artifact(
            examples=[examples], telemetry_descriptors=["test"], raw_record_column_name="__raw_record__"
        )
        tfxio = factory(str(split / "*"))
        with beam.Pipeline(argv=[f"--runner={LOCAL_RUNNER}"]) as p:
            assert_that(p | tfxio.BeamSource() | beam.Map(lambda batch: batch.num_rows), check)

    def adaptive(sizes) -> None:
        if sum(sizes) != 23 or min(sizes) != 1 or len(sizes) <= 3:
            raise BeamAssertException(f"not Beam's adaptive batches: {sizes}")

    with fixed_record_batches(10):
        read_in_batches(equal_to([10, 10, 3]))
    assert tfxio_utils.get_tfxio_factory_from_artifact.__name__ == "get_tfxio_factory_from_artifact"
    read_in_batches(adaptive)  # Beam's own batching again, from one record up


def test_eval_batch_size_is_a_gate_setting_with_bounds():
    from components.gate import GateConfig
    from pipeline.config import PipelineConfig

    assert GateConfig().eval_batch_size == 128
    assert PipelineConfig(data_dir="d", eval_batch_size=16).gate.eval_batch_size == 16
    with pytest.raises(ValueError, match="eval_batch_size"):
        PipelineConfig(data_dir="d", eval_batch_size=0)


# ------------------------------------------- a baseline that trained on some eval images
def _resplit(tmp_path, seen: int, unseen: int):
    """A baseline that trained on `seen` of the eval split's images, and that eval split (gzip, as ExampleGen)."""
    import numpy as np
    import tensorflow as tf

    from tests import helpers
    from trainer import image_ids

    rng = np.random.default_rng(0)
    images = [
        helpers.encode_image(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8))
        for _ in range(seen + unseen + 5)
    ]
    from tfx.types import artifact_utils

    examples = _examples(tmp_path, records=False)
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    split = tmp_path / "examples" / "Split-eval"
    split.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(split / "data.gz"), options="GZIP") as w:
        for i, image in enumerate(images[: seen + unseen]):
            w.write(helpers.make_example(image, "ab"[i % 2]))
    train = tmp_path / "old_train"
    helpers.write_tfrecords(str(train / "data.tfrecord"), [(x, "a") for x in images[:seen] + images[-5:]])
    old = _model(tmp_path, "old", ["a", "b"])
    image_ids.write(old.uri, str(train))
    new = _model(tmp_path, "new", ["a", "b"])
    (tmp_path / "new" / "Format-Serving" / "saved_model.pb").write_bytes(_other_weights())
    counts = {"a": (seen + unseen + 1) // 2, "b": (seen + unseen) // 2}
    return examples, old, new, counts


def _evaluate_resplit(
    tmp_path, fake_tfma, resplit, results, with_baseline: bool = True, gate_config=None, props=None
):
    """The executor on `_resplit`'s data, TFMA's stand-in answering `results`: gate.json and the outputs."""
    from components.evaluator import GateEvaluatorExecutor

    examples, old, new, counts = resplit
    inputs = {
        "examples": [examples],
        "model": [new],
        "baseline_model": [old] if with_baseline else [],
        "data_report": [_report(tmp_path, counts)],
    }
    outputs = _outputs(tmp_path)
    fake_tfma["results"] = results
    GateEvaluatorExecutor().Do(inputs, outputs, {**_props(gate_config or {}), **(props or {})})
    with open(tmp_path / "evaluation" / "gate.json", encoding="utf-8") as f:
        return json.load(f), outputs


@pytest.mark.parametrize("on_unseen, blessed", [((0.9, 0.85), True), ((0.8, 0.85), False)])
def test_a_baseline_that_trained_on_eval_images_is_compared_on_the_rest(
    tmp_path, fake_tfma, monkeypatch, on_unseen, blessed
):
    """The data was split anew: 30 of the 55 eval images are in the baseline's train split."""
    from components import unseen_comparison
    from components.gate_decision import EvalResults

    calls = []

    def measured(seen, files, model_dirs, batch_size):
        calls.append((list(seen), files, model_dirs, batch_size))
        return [_Answers(v, balanced_ok=False) for v in on_unseen]  # 28 and 27 eval examples: accuracy

    monkeypatch.setattr(unseen_comparison, "answers_on_unseen", measured)
    # Overall the candidate has 0.95; TFMA gets no baseline (its number would count the seen images).
    resplit = _resplit(tmp_path, seen=30, unseen=25)
    gate, outputs = _evaluate_resplit(tmp_path, fake_tfma, resplit, EvalResults(0.95, 55, {}, None))
    assert fake_tfma["inputs"]["baseline_model"] == []
    [(seen, files, model_dirs, batch_size)] = calls
    assert seen == [True] * 30 + [False] * 25  # in the split's record order
    assert files == [str(tmp_path / "examples" / "Split-eval")] and batch_size == 128
    assert model_dirs == [str(tmp_path / "new" / "Format-Serving"), str(tmp_path / "old" / "Format-Serving")]
    assert gate["accuracy"] == 0.95 and gate["blessed"] is blessed
    assert gate["baseline"] == {
        "accuracy": on_unseen[1],
        "max_regression": 0.0,
        "compared": True,
        "skipped_reason": None,
        "identical": False,
        "reused_from": None,
        "seen_eval_examples": 30,
        "compared_examples": 25,
        "candidate_accuracy": on_unseen[0],
        "shared_classes": None,
        "label_change": None,
        "comparison_waived": None,
        "when_blessed": None,
        "per_class": None,
    }
    assert outputs["blessing"][0].get_int_custom_property("blessed") == int(blessed)
    if not blessed:
        assert gate["reasons"] == [
            "accuracy 0.800 on the 25 eval examples neither model trained on regressed from "
            "the latest blessed model's 0.850 by more than max_regression 0.000"
        ]


def test_too_few_unseen_eval_images_skip_the_comparison_and_say_why(tmp_path, fake_tfma, monkeypatch):
    from components import unseen_comparison
    from components.gate_decision import EvalResults

    monkeypatch.setattr(
        unseen_comparison, "answers_on_unseen", lambda *a, **k: pytest.fail("nothing to compare on")
    )
    resplit = _resplit(tmp_path, seen=46, unseen=14)
    gate, _ = _evaluate_resplit(tmp_path, fake_tfma, resplit, EvalResults(0.9, 60, {}, None))
    assert fake_tfma["inputs"]["baseline_model"] == []
    assert gate["baseline"]["compared"] is False and gate["baseline"]["seen_eval_examples"] == 46
    assert gate["baseline"]["skipped_reason"].startswith(
        "the latest blessed model trained on 46 of the 60 eval"
    )
    # A served model that cannot be compared is not replaced on the floors alone (a smaller
    # eval split let a 0.52 model replace a 0.68 one): not blessed, saying why and the way out.
    [why] = gate["reasons"]
    assert gate["blessed"] is False and why.startswith(
        "the latest blessed model could not be compared with: the latest blessed model trained on 46 "
    )
    assert "The served model stays" in why and "--bless-without-comparison" in why
    # ... unless the user says so.
    shutil.rmtree(tmp_path / "evaluation"), shutil.rmtree(tmp_path / "blessing")
    gate, _ = _evaluate_resplit(
        tmp_path,
        fake_tfma,
        resplit,
        EvalResults(0.9, 60, {}, None),
        gate_config={"bless_without_comparison": True},
    )
    assert gate["blessed"] is True and gate["reasons"] == [] and gate["baseline"]["compared"] is False


def test_a_baseline_that_saw_no_eval_image_goes_to_tfma_as_before(tmp_path, fake_tfma):
    from components.gate_decision import EvalResults

    resplit = _resplit(tmp_path, seen=0, unseen=20)
    gate, _ = _evaluate_resplit(tmp_path, fake_tfma, resplit, EvalResults(0.9, 20, {}, 0.85))
    assert fake_tfma["inputs"]["baseline_model"] == [resplit[1]]
    baseline = gate["baseline"]
    assert baseline["seen_eval_examples"] == 0 and baseline["compared_examples"] == 20
    assert (baseline["accuracy"], baseline["candidate_accuracy"]) == (0.85, 0.9)


def _answers(monkeypatch, right_of):
    """answers_on replaced: each model (by index) answers right where right_of(model index, record
    index in the split) is True; the calls (mask, model dirs) are returned in a list."""
    import numpy as np

    from components import unseen_comparison
    from trainer import image_ids

    calls = []

    def answers_on(measure, files, model_dirs, batch_size):
        calls.append((list(measure), list(model_dirs)))
        _, labels = image_ids.split_index(files)
        where = np.flatnonzero(measure)
        out = []
        for m in range(len(model_dirs)):
            right = np.array([right_of(m, int(i)) for i in where], bool)
            given = np.array(
                [label if r else "?" for label, r in zip(labels[where], right, strict=True)], object
            )
            out.append(unseen_comparison.Answers(labels[where], right, given))
        return out

    monkeypatch.setattr(unseen_comparison, "answers_on", answers_on)
    return calls


def test_eval_images_the_candidate_trained_on_are_left_out_of_its_judgement(tmp_path, fake_tfma, monkeypatch):
    """TFRecords made elsewhere can repeat an image in train and eval: the candidate is judged,
    floor and per-class recall, on the eval images it did not train on, not on TFMA's whole split."""
    from components.gate_decision import EvalResults
    from trainer import image_ids

    # Right on every image it trained on (the first 3), on 12 of the other 20.
    calls = _answers(monkeypatch, lambda model, i: i < 3 or i < 15)
    resplit = _resplit(tmp_path, seen=3, unseen=20)
    image_ids.write(resplit[2].uri, str(tmp_path / "old_train"))  # the candidate trained on 3 eval images too
    gate, outputs = _evaluate_resplit(
        tmp_path, fake_tfma, resplit, EvalResults(0.9, 23, {"a": 0.9, "b": 0.9}, None), with_baseline=False
    )
    assert calls == [([False] * 3 + [True] * 20, [str(tmp_path / "new" / "Format-Serving")])]
    assert gate["eval_examples_in_train"] == 3
    assert gate["judged_on"] == {
        "records": 23,
        "repeats": 0,
        "in_train": 3,
        "examples": 20,
        "conflicting_labels": 0,
        "near_copies_in_train": 0,
    }
    assert gate["whole_split"] == {"accuracy": 0.9, "examples": 23}
    assert (gate["accuracy"], gate["eval_examples"]) == (0.6, 20)
    assert gate["per_class_recall"] == {"a": 0.6, "b": 0.6}
    # TFMA gates nothing itself: every bound is applied here, on the 20.
    assert _thresholds(fake_tfma["props"]["eval_config"]) == {"overall": (-METRIC_TOLERANCE, False)}
    # 0.6 of 20 on two balanced classes is what guessing reaches too often (p > 0.05).
    assert gate["blessed"] is False and gate["floor_source"] == "significance"
    assert gate["measured"] is None  # a part's accuracy is never reused as the whole split's
    [reason] = gate["reasons"]
    assert reason.startswith("accuracy 0.600 is below the floor 0.750 (15 right of 20 is the fewest")
    assert reason.endswith(
        "; judged on the 20 distinct eval images the candidate did not train on (of 23 records: "
        "3 are images the candidate trained on)"
    )
    assert outputs["blessing"][0].get_int_custom_property("blessed") == 0


def test_eval_images_that_are_near_copies_of_train_images_are_left_out(tmp_path, fake_tfma, monkeypatch):
    """A class that is one clip is split by ingest image by image (no other way gives it eval
    pictures): its eval frames are other frames of the clip the candidate trained on, and scored
    1.0 on memory. Ingest's near-copy sets tell the gate so: those frames are left out of the
    judgement like images the candidate trained on, and a class with no other eval image cannot be
    judged. The baseline comparison leaves them out too."""
    import numpy as np

    from components.evaluator import INGEST_REPORT_KEY
    from components.gate_decision import EvalResults, GateNotComputable
    from tests import helpers
    from trainer import image_ids

    _answers(monkeypatch, lambda model, i: True)
    resplit = _resplit(tmp_path, seen=0, unseen=40)
    ids, labels = image_ids.split_index(str(tmp_path / "examples" / "Split-eval"))
    rng = np.random.default_rng(5)
    frames = [helpers.encode_image(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)) for _ in range(4)]
    helpers.write_tfrecords(str(tmp_path / "clip" / "data.tfrecord"), [(f, "b") for f in frames])
    image_ids.write(resplit[2].uri, str(tmp_path / "clip"))
    clip = image_ids.split_ids(str(tmp_path / "clip"))
    b = ids[labels == "b"]
    report = tmp_path / "ingest_report.json"

    def evaluate(eval_frames):
        for output in ("evaluation", "blessing"):
            shutil.rmtree(tmp_path / output, ignore_errors=True)
        members = [format(int(x), "x") for x in [*clip, *eval_frames]]
        report.write_text(json.dumps({"near_copies": [{"fingerprints": members}]}))
        return _evaluate_resplit(
            tmp_path,
            fake_tfma,
            resplit,
            EvalResults(1.0, 40, {"a": 1.0, "b": 1.0}, None),
            with_baseline=False,
            props={INGEST_REPORT_KEY: str(report)},
        )

    gate, _ = evaluate(b[:6])  # six of b's 20 eval images are frames of the clip
    assert gate["judged_on"] == {
        "records": 40,
        "repeats": 0,
        "in_train": 0,
        "near_copies_in_train": 6,
        "examples": 34,
        "conflicting_labels": 0,
    }
    assert gate["eval_examples"] == 34 and gate["per_class_answered"] == {"a": 20, "b": 14}
    assert gate["eval_examples_in_train"] == 0  # the images themselves: none
    with pytest.raises(
        GateNotComputable,
        match=r"class 'b' of the model has no example in the eval split's 20 distinct eval images the "
        r"candidate did not train on \(of 40 records: 20 are near-copies \(ingest's sets",
    ) as refused:
        evaluate(b)
    assert "ingest found the class to be one set" in str(refused.value)


def _repeated_eval(tmp_path, copies: dict[int, int], labels: str = "ab"):
    """An eval split of len(copies) distinct images, image i written copies[i] times (in turn),
    labelled labels[i % len(labels)]; a candidate without a record of its train images."""
    import numpy as np

    from tests import helpers

    rng = np.random.default_rng(1)
    images = [helpers.encode_image(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)) for _ in copies]
    items = []
    for round_ in range(max(copies.values())):
        items += [(images[i], labels[i % len(labels)]) for i, n in copies.items() if round_ < n]
    helpers.write_tfrecords(str(tmp_path / "examples" / "Split-eval" / "data.tfrecord"), items)
    counts: dict[str, int] = {}
    for _, label in items:
        counts[label] = counts.get(label, 0) + 1
    return items, counts


def test_copies_of_eval_images_count_once(tmp_path, fake_tfma, monkeypatch):
    """Ten copies each of 2 images per class: TFMA counts 40 examples, 0.9 right; the gate counts
    4 images, which no accuracy can tell from guessing, so nothing is blessed."""
    from components.evaluator import GateEvaluatorExecutor
    from components.gate_decision import EvalResults

    items, counts = _repeated_eval(tmp_path, {0: 10, 1: 10, 2: 10, 3: 10})
    calls = _answers(monkeypatch, lambda model, i: True)
    inputs = {
        "examples": [_examples(tmp_path)],
        "model": [_model(tmp_path, "candidate", ["a", "b"])],
        "baseline_model": [],
        "data_report": [_report(tmp_path, counts)],
    }
    fake_tfma["results"] = EvalResults(0.9, 40, {"a": 0.9, "b": 0.9}, None)
    GateEvaluatorExecutor().Do(inputs, _outputs(tmp_path), _props({}))
    with open(tmp_path / "evaluation" / "gate.json", encoding="utf-8") as f:
        gate = json.load(f)
    assert calls[0][0] == [True] * 4 + [False] * 36  # the first copy of each image, in file order
    assert gate["judged_on"] == {
        "records": 40,
        "repeats": 36,
        "in_train": 0,
        "examples": 4,
        "conflicting_labels": 0,
        "near_copies_in_train": 0,
    }
    assert (gate["accuracy"], gate["eval_examples"], gate["floor"]) == (1.0, 4, 1.25)
    assert gate["eval_examples_in_train"] is None  # the candidate keeps no record
    assert gate["blessed"] is False
    assert gate["reasons"] == [
        "no model can be blessed on this eval split: not even 4 right of 4 eval examples would pass a one-sided "
        "binomial test against the majority class's 0.500, p <= 0.05: the eval split is too small to tell a "
        "model from chance; add eval images; judged on the 4 distinct eval images (of 40 "
        "records: 36 repeat an image earlier in the split; the candidate keeps no record of its train images)"
    ]


def test_copies_of_the_images_a_model_gets_right_do_not_raise_its_accuracy(tmp_path, fake_tfma, monkeypatch):
    """60 distinct images; the 30 the model gets right are written 5 times each. TFMA's 0.91 of 180
    records would pass; on the 60 images it has 0.5, and is not blessed. Each class's recall is
    counted on its images too."""
    from components.evaluator import GateEvaluatorExecutor
    from components.gate_decision import EvalResults

    items, counts = _repeated_eval(tmp_path, {i: 5 if i < 30 else 1 for i in range(60)})
    _answers(monkeypatch, lambda model, i: i < 30)  # the first 60 records are the 60 images
    inputs = {
        "examples": [_examples(tmp_path)],
        "model": [_model(tmp_path, "candidate", ["a", "b"])],
        "baseline_model": [],
        "data_report": [_report(tmp_path, counts)],
    }
    fake_tfma["results"] = EvalResults(150 / 180, 180, {"a": 0.83, "b": 0.83}, None)
    GateEvaluatorExecutor().Do(inputs, _outputs(tmp_path), _props({}))
    with open(tmp_path / "evaluation" / "gate.json", encoding="utf-8") as f:
        gate = json.load(f)
    assert gate["judged_on"]["examples"] == 60 and gate["whole_split"]["examples"] == 180
    assert gate["accuracy"] == 0.5 and gate["per_class_recall"] == {"a": 0.5, "b": 0.5}
    assert gate["blessed"] is False and gate["reasons"][0].startswith("accuracy 0.500 is below the floor")


def test_a_class_whose_eval_images_are_all_copies_of_train_images_cannot_be_judged(tmp_path, fake_tfma):
    from components.gate_decision import EvalResults, GateNotComputable
    from trainer import image_ids

    resplit = _resplit(tmp_path, seen=30, unseen=25)
    examples, old, new, counts = resplit
    # The candidate trained on every eval image of class 'b' (the odd records).
    split = tmp_path / "examples" / "Split-eval"
    _, labels = image_ids.split_index(str(split))
    import tensorflow as tf

    records = list(
        tf.data.TFRecordDataset(str(split / "data.gz"), compression_type="GZIP").as_numpy_iterator()
    )
    with tf.io.TFRecordWriter(str(tmp_path / "b_train.tfrecord")) as w:
        for r, label in zip(records, labels, strict=True):
            if label == "b":
                w.write(r)
    image_ids.write(new.uri, str(tmp_path / "b_train.tfrecord"))
    with pytest.raises(
        GateNotComputable,
        match=r"class 'b' of the model has no example in the eval split's 28 "
        r"distinct eval images the candidate did not train on \(of 55 records: 27 are images",
    ):
        _evaluate_resplit(tmp_path, fake_tfma, resplit, EvalResults(0.9, 55, {}, None), with_baseline=False)


def _candidate_trained_on_records_28_to_34(tmp_path):
    """`_resplit` with seen=30, unseen=25, and a candidate that trained on eval records 28-34 (2 of
    the baseline's 30 and 5 of the other 25)."""
    import tensorflow as tf

    from trainer import image_ids

    resplit = _resplit(tmp_path, seen=30, unseen=25)
    split = tmp_path / "examples" / "Split-eval" / "data.gz"
    records = list(tf.data.TFRecordDataset(str(split), compression_type="GZIP").as_numpy_iterator())
    with tf.io.TFRecordWriter(str(tmp_path / "new_train.tfrecord")) as w:
        for r in records[28:35]:
            w.write(r)
    image_ids.write(resplit[2].uri, str(tmp_path / "new_train.tfrecord"))
    return resplit


def test_eval_images_either_model_trained_on_are_left_out_of_the_comparison(tmp_path, fake_tfma, monkeypatch):
    """The baseline saw 30 of the 55 eval images, the candidate 5 of the other 25 (and 2 of the 30):
    the candidate is judged on the 48 it did not see, and both are compared on the 20 neither saw,
    so neither model is flattered."""
    from components.gate_decision import EvalResults

    # The candidate is right on every record; the baseline on the first 40 only.
    calls = _answers(monkeypatch, lambda model, i: model == 0 or i < 40)
    resplit = _candidate_trained_on_records_28_to_34(tmp_path)
    gate, _ = _evaluate_resplit(tmp_path, fake_tfma, resplit, EvalResults(0.95, 55, {}, None))
    assert fake_tfma["inputs"]["baseline_model"] == []
    [(measured, model_dirs)] = calls
    assert measured == [True] * 28 + [False] * 7 + [True] * 20 and len(model_dirs) == 2
    assert gate["eval_examples_in_train"] == 7
    assert gate["judged_on"] == {
        "records": 55,
        "repeats": 0,
        "in_train": 7,
        "examples": 48,
        "conflicting_labels": 0,
        "near_copies_in_train": 0,
    }
    assert (gate["accuracy"], gate["eval_examples"]) == (1.0, 48)
    assert (gate["baseline"]["seen_eval_examples"], gate["baseline"]["compared_examples"]) == (30, 20)
    # On the 20 neither saw (records 35-54) the baseline is right on 5 (35-39), the candidate on all.
    assert gate["baseline"]["accuracy"] == 0.25 and gate["baseline"]["candidate_accuracy"] == 1.0
    assert gate["blessed"] is True


def test_a_regression_on_the_images_neither_model_trained_on_unblesses_in_the_judged_split(
    tmp_path, fake_tfma, monkeypatch
):
    """As above, with the candidate right on the first 40 records only and the baseline on all:
    above its floor on the 48 it did not see (33 right), it regresses on the 20 neither saw."""
    from components.gate_decision import EvalResults

    _answers(monkeypatch, lambda model, i: model == 1 or i < 40)
    resplit = _candidate_trained_on_records_28_to_34(tmp_path)
    gate, outputs = _evaluate_resplit(tmp_path, fake_tfma, resplit, EvalResults(0.95, 55, {}, None))
    assert gate["accuracy"] == pytest.approx(33 / 48) and gate["floor"] < 33 / 48
    assert (gate["baseline"]["accuracy"], gate["baseline"]["candidate_accuracy"]) == (1.0, 0.25)
    assert gate["blessed"] is False and gate["reasons"] == [
        "accuracy 0.250 on the 20 eval examples neither model trained on regressed from the latest blessed "
        "model's 1.000 by more than max_regression 0.000; where it fell: 'a' 10 of 10 right, now 2, 'b' 10 "
        "of 10 right, now 3"
    ]
    assert outputs["blessing"][0].get_int_custom_property("blessed") == 0


def test_a_comparison_on_fewer_than_twenty_distinct_images_is_not_made(tmp_path, fake_tfma, monkeypatch):
    """19 distinct images and one copy, no image any model trained on: the copy is left out, and
    the 19 left are too few to tell two models apart, as a whole split of 19 would be: no
    comparison, so the served model stays unless the gate blesses without one."""
    from components.evaluator import GateEvaluatorExecutor
    from components.gate_decision import EvalResults

    items, counts = _repeated_eval(tmp_path, {i: 2 if i == 0 else 1 for i in range(19)})
    _answers(monkeypatch, lambda model, i: model == 1 or i < 16)  # candidate 16/19, baseline 19/19
    baseline = _model(tmp_path, "old", ["a", "b"])
    candidate = _model(tmp_path, "new", ["a", "b"])
    (tmp_path / "new" / "Format-Serving" / "saved_model.pb").write_bytes(_other_weights())
    inputs = {
        "examples": [_examples(tmp_path)],
        "model": [candidate],
        "baseline_model": [baseline],
        "data_report": [_report(tmp_path, counts)],
    }
    fake_tfma["results"] = EvalResults(0.85, 20, {"a": 0.85, "b": 0.85}, None)
    outputs = _outputs(tmp_path)
    GateEvaluatorExecutor().Do(inputs, outputs, _props({"significance": 0}))
    with open(tmp_path / "evaluation" / "gate.json", encoding="utf-8") as f:
        gate = json.load(f)
    assert gate["judged_on"] == {
        "records": 20,
        "repeats": 1,
        "in_train": 0,
        "examples": 19,
        "conflicting_labels": 0,
        "near_copies_in_train": 0,
    }
    assert gate["baseline"]["compared"] is False
    assert gate["baseline"]["skipped_reason"] == (
        "the 19 eval examples it would be made on are fewer than 20 to tell two models apart (one answer "
        "moves accuracy by 0.05)"
    )
    assert gate["blessed"] is False
    assert gate["reasons"][0].startswith("the latest blessed model could not be compared with: the 19 eval")


def test_copies_of_eval_images_are_left_out_of_the_comparison_too(tmp_path, fake_tfma, monkeypatch):
    """The baseline saw 30 of the 55 eval images; 5 records at the end copy images 40-44. The
    candidate (no record of its train images) is judged on the 55 images, and both models are
    compared on the 25 the baseline did not see, each once."""
    import tensorflow as tf

    from components.gate_decision import EvalResults

    calls = _answers(monkeypatch, lambda model, i: model == 0 or i < 45)
    resplit = _resplit(tmp_path, seen=30, unseen=25)
    split = tmp_path / "examples" / "Split-eval"
    records = list(
        tf.data.TFRecordDataset(str(split / "data.gz"), compression_type="GZIP").as_numpy_iterator()
    )
    with tf.io.TFRecordWriter(str(split / "more.gz"), options="GZIP") as w:
        for r in records[40:45]:
            w.write(r)
    counts = dict(resplit[3], a=resplit[3]["a"] + 3, b=resplit[3]["b"] + 2)
    gate, _ = _evaluate_resplit(tmp_path, fake_tfma, (*resplit[:3], counts), EvalResults(0.9, 60, {}, None))
    [(measured, _)] = calls
    assert measured == [True] * 55 + [False] * 5
    assert gate["judged_on"] == {
        "records": 60,
        "repeats": 5,
        "in_train": 0,
        "examples": 55,
        "conflicting_labels": 0,
        "near_copies_in_train": 0,
    }
    assert (gate["baseline"]["seen_eval_examples"], gate["baseline"]["compared_examples"]) == (30, 25)
    # Right on 30-44 of the 25 it did not see (the copies, which it gets wrong, not counted).
    assert gate["baseline"]["accuracy"] == 0.6 and gate["baseline"]["candidate_accuracy"] == 1.0


def test_a_damaged_record_of_training_images_falls_back_to_the_whole_split(tmp_path, fake_tfma):
    from components.gate_decision import EvalResults
    from trainer import image_ids

    resplit = _resplit(tmp_path, seen=30, unseen=25)
    for model in resplit[1:3]:
        with open(image_ids.ids_path(model.uri), "wb") as f:  # the candidate's has none: written here
            f.write(b"\x93NUMPY damaged")
    gate, _ = _evaluate_resplit(tmp_path, fake_tfma, resplit, EvalResults(0.9, 55, {}, 0.85))
    assert fake_tfma["inputs"]["baseline_model"] == [resplit[1]]  # TFMA compares, as before the record
    assert gate["baseline"]["seen_eval_examples"] is None and gate["baseline"]["accuracy"] == 0.85
    assert gate["eval_examples_in_train"] is None


def test_a_label_slice_that_is_not_utf8_is_named_not_a_crash():
    """With allow_anomalies, an eval label of arbitrary bytes reaches TFMA's slices; the gate
    must still give its reasons (the class named with a replacement character)."""
    from tensorflow_model_analysis.proto import metrics_for_slice_pb2

    from components.evaluator import _slice_class
    from trainer.features import LABEL_KEY

    key = metrics_for_slice_pb2.SliceKey()
    key.single_slice_keys.add(column=LABEL_KEY, bytes_value=b"caf\xe9")  # Latin-1, not UTF-8
    assert _slice_class(key) == (True, "caf\ufffd")
    key = metrics_for_slice_pb2.SliceKey()
    key.single_slice_keys.add(column=LABEL_KEY, bytes_value="café".encode())
    assert _slice_class(key) == (True, "café")
    assert _slice_class(metrics_for_slice_pb2.SliceKey()) == (True, None)  # the overall slice


# ------------------------------------------------------------- balanced accuracy (gate.metric)
def _balanced_case(tmp_path, fake_tfma, results, blessed_by_tfma=1, baseline_vocab=None, gate=None):
    """The executor on a 90:10 eval split (auto gates balanced accuracy), TFMA's stand-in answering
    `results`; gate.json and the blessing."""
    from components.evaluator import GateEvaluatorExecutor

    fake_tfma["blessed"] = blessed_by_tfma
    fake_tfma["results"] = results
    model = _model(tmp_path, "candidate", ["ok", "defect"])
    baselines = []
    if baseline_vocab is not None:
        baselines = [_model(tmp_path, "baseline", baseline_vocab)]
        (tmp_path / "baseline" / "Format-Serving" / "saved_model.pb").write_bytes(_other_weights())
    inputs = {
        "examples": [_examples(tmp_path)],
        "model": [model],
        "baseline_model": baselines,
        "data_report": [_report(tmp_path, {"ok": 180, "defect": 20})],
    }
    outputs = _outputs(tmp_path)
    GateEvaluatorExecutor().Do(inputs, outputs, _props(gate or {}))
    with open(tmp_path / "evaluation" / "gate.json", encoding="utf-8") as f:
        return json.load(f), outputs["blessing"][0]


def test_a_skewed_split_gates_the_mean_recall_and_tfma_keeps_the_per_class_bounds(tmp_path, fake_tfma):
    """180 'ok' to 20 'defect': always answering 'ok' has accuracy 0.9, so the accuracy floor would be
    0.95 and a model that finds 85% of the defects at 0.9 recall on 'ok' (accuracy 0.895) could never
    pass it. Balanced accuracy: 0.875 against a floor near 1/2 + margin."""
    from components.gate_decision import EvalResults

    gate, blessing = _balanced_case(
        tmp_path, fake_tfma, EvalResults(0.895, 200, {"ok": 0.9, "defect": 0.85}, None)
    )
    bounds = _thresholds(fake_tfma["props"]["eval_config"])
    # TFMA: an overall bound of 0 (the floor is applied to the mean recall by the executor), no
    # change threshold, the per-class recall bound as ever.
    assert bounds["overall"] == (pytest.approx(-METRIC_TOLERANCE, abs=1e-12), False)
    assert bounds["label"][0] == pytest.approx(0.05 - METRIC_TOLERANCE, abs=1e-9)
    assert gate["metric"] == "balanced_accuracy" and gate["metric_reason"].startswith("auto: ")
    assert gate["value"] == gate["balanced_accuracy"] == pytest.approx(0.875)
    assert gate["accuracy"] == pytest.approx(0.895) and gate["eval_classes"] == 2
    assert 0.55 < gate["floor"] < 0.7 and gate["floor_source"] == "significance"
    assert gate["blessed"] is True and blessing.get_int_custom_property("blessed") == 1


def test_a_mean_recall_below_the_floor_unblesses_what_tfma_blessed(tmp_path, fake_tfma):
    """A model that answers 'ok' to nearly everything: 0.99 and 0.1 recall, accuracy 0.901 (above the
    majority's 0.9), balanced accuracy 0.545, which answers ignoring the image reach often enough."""
    from components.gate_decision import EvalResults

    gate, blessing = _balanced_case(
        tmp_path, fake_tfma, EvalResults(0.901, 200, {"ok": 0.99, "defect": 0.1}, None)
    )
    assert gate["blessed"] is False and blessing.get_int_custom_property("blessed") == 0
    assert os.path.exists(os.path.join(blessing.uri, "NOT_BLESSED"))
    assert not os.path.exists(os.path.join(blessing.uri, "BLESSED"))
    [reason] = gate["reasons"]
    assert reason.startswith(f"balanced accuracy 0.545 is below the floor {gate['floor']:.3f} (")
    assert "answers that ignore the image" in reason


def test_balanced_accuracy_is_compared_with_the_baselines_mean_recall(tmp_path, fake_tfma):
    """TFMA measured both models' per-class recalls; the executor compares their means."""
    from components.gate_decision import EvalResults

    results = EvalResults(
        0.93, 200, {"ok": 0.98, "defect": 0.5}, 0.9, baseline_per_class={"ok": 0.9, "defect": 0.8}
    )
    gate, blessing = _balanced_case(tmp_path, fake_tfma, results, baseline_vocab=["ok", "defect"])
    assert fake_tfma["inputs"]["baseline_model"]  # TFMA measured the baseline
    assert gate["baseline"]["accuracy"] == pytest.approx(0.85)
    assert gate["baseline"]["candidate_accuracy"] == pytest.approx(0.74)
    assert gate["blessed"] is False and blessing.get_int_custom_property("blessed") == 0
    assert gate["reasons"] == [
        "balanced accuracy 0.740 regressed from the latest blessed model's 0.850 by more than max_regression "
        "0.000; where it fell: 'defect' 16 of 20 right, now 10"
    ]
    # Its plain accuracy (0.93) is higher than the baseline's (0.9): on accuracy it would pass.
    gate, blessing = _balanced_case(
        tmp_path / "acc", fake_tfma, results, baseline_vocab=["ok", "defect"], gate={"metric": "accuracy"}
    )
    assert gate["metric"] == "accuracy" and gate["metric_reason"] == "gate.metric accuracy"
    assert gate["floor"] == pytest.approx(0.95)  # 0.9 + margin, so TFMA's bound stops it instead
    assert _thresholds(fake_tfma["props"]["eval_config"])["overall"][1] is True  # TFMA's change threshold


def test_a_baseline_without_a_recall_for_every_eval_class_fails_the_comparison(tmp_path, fake_tfma):
    from components.gate_decision import EvalResults

    results = EvalResults(0.93, 200, {"ok": 0.98, "defect": 0.8}, 0.9, baseline_per_class={"ok": 0.9})
    gate, _ = _balanced_case(tmp_path, fake_tfma, results, baseline_vocab=["ok", "defect"])
    assert gate["blessed"] is False and gate["baseline"]["accuracy"] is None
    assert any("regressed from the latest blessed model's unknown" in r for r in gate["reasons"]), gate


def test_the_earlier_measurement_is_reused_only_for_the_metric_it_recorded(tmp_path):
    from components.evaluator import earlier_measurement

    wanted = {"model": "m", "examples": "e", "splits": None, "model_specs": "s"}
    old = tmp_path / "Evaluator" / "evaluation" / "3"
    old.mkdir(parents=True)
    (old / "gate.json").write_text(
        json.dumps({"measured": wanted, "accuracy": 0.9})
    )  # before balanced accuracy
    here = str(tmp_path / "Evaluator" / "evaluation" / "7")
    assert earlier_measurement(here, wanted) == (0.9, str(old / "gate.json"))
    assert earlier_measurement(here, wanted, "balanced_accuracy") is None
    (old / "gate.json").write_text(
        json.dumps({"measured": wanted, "accuracy": 0.9, "balanced_accuracy": 0.8})
    )
    assert earlier_measurement(here, wanted, "balanced_accuracy") == (0.8, str(old / "gate.json"))


def test_a_served_model_far_below_its_blessings_number_here_is_said(tmp_path):
    """An audit's retrains on eval pictures turned upside down measured the served model at 0.267,
    blessed at 0.95 on its own eval split, without a word: the comparison said nothing of why."""
    import logging
    import types

    from components import evaluator
    from tests import helpers

    root = tmp_path / "Evaluator" / "evaluation"
    served = str(tmp_path / "Trainer" / "model" / "4")
    for name, record in {
        "5": {
            "blessed": True,
            "metric": "accuracy",
            "value": 0.95,
            "eval_examples": 40,
            "tfma_run": {"model": served},
        },
        "6": {"blessed": False, "metric": "accuracy", "value": 0.3, "tfma_run": {"model": served + "x"}},
    }.items():
        (root / name).mkdir(parents=True)
        (root / name / "gate.json").write_text(json.dumps(record))
    here = str(root / "9")
    baseline = types.SimpleNamespace(uri=served + "/")
    record = {
        "metric": "accuracy",
        "baseline": {"compared": True, "accuracy": 0.267, "compared_examples": 30},
    }
    then = evaluator.baseline_when_blessed(here, baseline, record)
    assert then == {"value": 0.95, "eval_examples": 40, "gate": str(root / "5" / "gate.json")}
    record["baseline"]["when_blessed"] = then
    with helpers.logged(evaluator.log, logging.WARNING) as said:
        evaluator.warn_baseline_fallen(record)
        record["baseline"]["accuracy"] = 0.80  # within FALLEN of it: nothing to say
        evaluator.warn_baseline_fallen(record)
        # 0.2 exactly, in float32 as TFMA gives it (0.9499999881 - 0.75 = 0.19999999): said.
        record["baseline"].update(accuracy=0.75, when_blessed={**then, "value": 0.949999988079071})
        evaluator.warn_baseline_fallen(record)
    assert len(said) == 2 and "scores 0.750 (accuracy)" in said[1]
    message = said[0]
    assert message.startswith(
        "the served model scores 0.267 (accuracy) on the 30 eval images it was compared on here, "
        "against 0.950 on its own eval split when it was blessed"
    )
    # Another metric gated, or no record of its blessing: not known.
    assert evaluator.baseline_when_blessed(here, baseline, {**record, "metric": "balanced_accuracy"}) is None
    assert (
        evaluator.baseline_when_blessed(here, types.SimpleNamespace(uri=str(tmp_path / "m")), record) is None
    )


def test_false_alarms_fail_min_class_precision_though_every_recall_passes(tmp_path, fake_tfma):
    """180 'ok' and 20 'defect': a model that finds every defect but calls 54 'ok' images defects
    (recalls 0.7 and 1.0, balanced accuracy 0.85) is blessed by recall; 20 of its 74 'defect'
    answers are right (0.27), below min_class_precision 0.5: unblessed, naming the counts. Off
    (the default), the same answers are blessed and their precision recorded."""
    from components.gate_decision import EvalResults

    results = EvalResults(
        0.73,
        200,
        {"ok": 0.7, "defect": 1.0},
        None,
        per_class_precision={"ok": 1.0, "defect": 20 / 74},
        per_class_answered={"ok": 126, "defect": 74},
    )
    gate, blessing = _balanced_case(tmp_path, fake_tfma, results, gate={"min_class_precision": 0.5})
    assert gate["blessed"] is False and blessing.get_int_custom_property("blessed") == 0
    assert gate["reasons"] == [
        "class 'defect' precision 0.270 is below min_class_precision 0.500: "
        "20 of the 74 eval images it called 'defect' are 'defect'"
    ]
    assert gate["min_class_precision"] == 0.5 and gate["per_class_answered"] == {"defect": 74, "ok": 126}
    gate, blessing = _balanced_case(tmp_path / "off", fake_tfma, results)
    assert gate["blessed"] is True and gate["min_class_precision"] is None
    assert gate["per_class_precision"] == {"defect": pytest.approx(20 / 74), "ok": 1.0}


def test_precision_not_measured_fails_a_set_floor_with_the_reason(tmp_path, fake_tfma):
    """An eval_config compiled by an earlier imgpipe has no confusion matrix: a set floor cannot be
    checked, so it fails (never blessed unchecked) and says what to do."""
    from components.gate_decision import EvalResults

    results = EvalResults(0.9, 200, {"ok": 0.9, "defect": 0.9}, None)
    gate, _ = _balanced_case(tmp_path, fake_tfma, results, gate={"min_class_precision": 0.5})
    assert gate["blessed"] is False and gate["per_class_precision"] is None
    assert gate["reasons"] == [
        "min_class_precision 0.500 is set but precision was not measured (TFMA's eval_config has no "
        "confusion matrix: render or compile the pipeline again with this imgpipe)"
    ]


def test_tfmas_confusion_matrix_gives_each_answered_classs_precision():
    """TFMA's matrix counts (true, top-1) class indices: a true label outside the vocabulary (-1)
    is a false alarm of the class answered; a class never answered has no precision."""
    from tensorflow_model_analysis.proto import metrics_for_slice_pb2

    from components import evaluator
    from components.gate_decision import precision_of

    value = metrics_for_slice_pb2.MultiClassConfusionMatrixAtThresholds()
    matrix = value.matrices.add(threshold=0.0)
    for actual, predicted, n in ((0, 0, 8), (1, 0, 2), (-1, 0, 1), (1, 1, 5), (0, 1, 1)):
        matrix.entries.add(actual_class_id=actual, predicted_class_id=predicted, num_weighted_examples=n)

    def answered_of(proto, names):
        return evaluator._answered_of(evaluator._top1_counts(proto, names), names)

    answered = answered_of(value, ["cat", "dog", "fox"])
    assert answered == {"cat": (11, 8), "dog": (6, 5), "fox": (0, 0)}
    assert precision_of(answered) == ({"cat": 8 / 11, "dog": 5 / 6}, {"cat": 11, "dog": 6})
    assert answered_of(metrics_for_slice_pb2.MultiClassConfusionMatrixAtThresholds(), ["cat"]) == {
        "cat": (0, 0)
    }


def test_the_eval_config_counts_the_confusion_matrix():
    from tfx.utils import proto_utils

    from components.evaluator import eval_config
    from components.gate import CONFUSION_CLASS, GateConfig

    [spec] = eval_config(GateConfig()).metrics_specs
    assert CONFUSION_CLASS in [m.class_name for m in spec.metrics]
    # No escaped text in it: ML Metadata's PostgreSQL backend wrote a backslash-escaped quote of an
    # execution property as broken SQL (the Evaluator failed, tests/e2e/test_metadata_postgres_e2e.py).
    assert "\\" not in proto_utils.proto_to_json(eval_config(GateConfig()))


@pytest.mark.parametrize("damage", [b"", b"cut in the middle of a fi"])
def test_a_damaged_baseline_is_named_as_the_gates_baseline(tmp_path, fake_tfma, damage):
    """A truncated saved_model.pb of the latest blessed model failed every later run with TFMA's
    "Cannot parse file", naming neither the model's role nor what to do."""
    from components.evaluator import BaselineDamaged, GateEvaluatorExecutor

    model = _model(tmp_path, "candidate", ["a", "b"])
    baseline = _model(tmp_path, "baseline", ["a", "b"])
    (tmp_path / "baseline" / "Format-Serving" / "saved_model.pb").write_bytes(damage)
    inputs = {
        "examples": [_examples(tmp_path)],
        "model": [model],
        "baseline_model": [baseline],
        "data_report": [_report(tmp_path, {"a": 10, "b": 10})],
    }
    with pytest.raises(BaselineDamaged) as e:
        GateEvaluatorExecutor().Do(inputs, _outputs(tmp_path), _props({}))
    assert str(e.value).startswith("the latest blessed model, the gate's baseline, cannot be read: ")
    assert f"or delete {baseline.uri}: the next run then compares with the blessed model before it" in str(
        e.value
    )
    assert "inputs" not in fake_tfma  # TFMA never started


@pytest.mark.parametrize(
    "size,batch,expected",
    [(None, 128, 128), (32, 128, 128), (224, 128, 128), (512, 128, 24), (1024, 128, 6), (1024, 4, 4)],
)
def test_the_evaluators_model_calls_are_bounded_by_their_pixels(size, batch, expected):
    from components.evaluator import eval_batch

    assert eval_batch(batch, size) == expected


def test_the_pipeline_gives_the_evaluator_its_image_size():
    from pipeline.config import PipelineConfig
    from pipeline.pipeline import create_pipeline

    config = PipelineConfig.from_dict({"data_dir": "/data", "home": "/home", "image_size": 512}).resolved()
    [evaluator] = [c for c in create_pipeline(config).components if c.id == "Evaluator"]
    assert evaluator.exec_properties["image_size"] == 512


# ------------------------------------------------- labels exchanged since the served model trained
def _served_confusion(monkeypatch, entries):
    """TFMA's confusion matrix of the baseline replaced: (true index, answered index, images) in
    the baseline's vocabulary; the candidate's: none."""
    from tensorflow_model_analysis.proto import metrics_for_slice_pb2

    from components import evaluator

    proto = metrics_for_slice_pb2.MultiClassConfusionMatrixAtThresholds()
    matrix = proto.matrices.add(threshold=0.0)
    for true, given, n in entries:
        matrix.entries.add(actual_class_id=true, predicted_class_id=given, num_weighted_examples=n)
    monkeypatch.setattr(
        evaluator, "_confusion_matrices", lambda uri, baseline=False: proto if baseline else None
    )


@pytest.mark.parametrize("accepted", [False, True], ids=["refused", "accepted"])
def test_labels_the_served_model_answers_exchanged_refuse_the_model(
    tmp_path, fake_tfma, monkeypatch, accepted
):
    """New eval images under swapped folder names: the served model answers 'c' for the images
    labelled 'a' and 'a' for those labelled 'c' (its vocabulary in another order than the
    candidate's). TFMA blessed the candidate, which beat the served model's 0.33; the gate refuses
    it, unless the data gate let a label change through in this run."""
    from components.evaluator import GateEvaluatorExecutor
    from components.gate_decision import EvalResults

    baseline = _model(tmp_path, "old", ["c", "b", "a"])
    candidate = _model(tmp_path, "new", ["a", "b", "c"])
    (tmp_path / "new" / "Format-Serving" / "saved_model.pb").write_bytes(_other_weights())
    _served_confusion(monkeypatch, [(2, 0, 10), (0, 2, 11), (0, 0, 1), (1, 1, 10)])  # a->c, c->a, b->b
    counts = {"a": 10, "b": 10, "c": 12}
    fake_tfma["results"] = EvalResults(0.95, 32, {"a": 0.9, "b": 1.0, "c": 0.95}, 0.34)
    inputs = {
        "examples": [_examples(tmp_path)],
        "model": [candidate],
        "baseline_model": [baseline],
        "data_report": [_report(tmp_path, counts, label_change_accepted=accepted)],
    }
    outputs = _outputs(tmp_path)
    GateEvaluatorExecutor().Do(inputs, outputs, _props({}))
    with open(tmp_path / "evaluation" / "gate.json", encoding="utf-8") as f:
        gate = json.load(f)
    assert [(m["label"], m["answered"], m["moved"]) for m in gate["labels_moved"]] == [
        ("a", "c", 10),
        ("c", "a", 11),
    ]
    assert gate["blessed"] is accepted
    assert outputs["blessing"][0].get_int_custom_property("blessed") == int(accepted)
    if not accepted:
        assert gate["reasons"] == [
            "labels moved since the served model trained: on this run's eval images the served model answers "
            "'c' for 10 of the 10 labelled 'a'; 'a' for 11 of the 12 labelled 'c'. Folders renamed or swapped? "
            "The candidate learned the new names and the comparison read the served model's answers as wrong. "
            "The served model stays; fix the labels, or pass --accept-label-change if they changed on purpose "
            "(or the served model had them wrong)"
        ]


def test_the_eval_pictures_come_from_ingests_near_copy_sets(tmp_path):
    """Ingest keeps each set of near-copies (a clip's frames, one picture saved several ways) in
    one split and lists the sets in ingest_report.json: the gate reads each class's eval pictures
    from it, and nothing from a report of other data, a damaged one, or none."""
    from components.evaluator import eval_pictures
    from imgpipe.ingest.contract import REPORT_FILE
    from trainer.image_ids import INGEST_REPORT_FILE, read_ingest_report

    assert INGEST_REPORT_FILE == REPORT_FILE
    path = tmp_path / INGEST_REPORT_FILE
    report = {
        "counts": {"a": {"train": 80, "eval": 20}, "b": {"train": 80, "eval": 20}},
        "near_copies": [
            {"class": "a", "split": "eval", "files": [f"a/clip{i}.png" for i in range(12)]},
            {"class": "a", "split": "eval", "files": ["a/x.png", "a/x2.png"]},
            {"class": "b", "split": "train", "files": [f"b/clip{i}.png" for i in range(30)]},
        ],
    }
    path.write_text(json.dumps(report))
    assert eval_pictures(read_ingest_report(str(path)), {"a": 20, "b": 20}) == {
        "a": 8,
        "b": 20,
    }  # 20 - 11 - 1
    assert (
        eval_pictures(read_ingest_report(str(path)), {"a": 19, "b": 20}) is None
    )  # a report of other records
    assert eval_pictures(read_ingest_report(str(tmp_path / "none.json")), {"a": 20, "b": 20}) is None
    assert eval_pictures(read_ingest_report(None), {"a": 20, "b": 20}) is None
    # A class that is one set, split by image ("both"): its eval images are one picture.
    report["near_copies"].append({"class": "b", "split": "both", "files": [f"b/{i}.png" for i in range(100)]})
    path.write_text(json.dumps(report))
    assert eval_pictures(read_ingest_report(str(path)), {"a": 20, "b": 20}) == {"a": 8, "b": 1}
    report["near_copies"] = report["near_copies"][2:3]  # no set in eval: every image its own picture
    path.write_text(json.dumps(report))
    assert eval_pictures(read_ingest_report(str(path)), {"a": 20, "b": 20}) is None
    path.write_text("{not json")
    assert eval_pictures(read_ingest_report(str(path)), {"a": 20, "b": 20}) is None
