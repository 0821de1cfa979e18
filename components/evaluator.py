"""The Evaluator node: TFX's TFMA Evaluator, with the gate decided at run time and recorded.

Before TFMA runs, the executor reads the eval split's label counts (from the
data gate's report, components/artifacts.py: counted by StatisticsGen; or, when the
candidate is judged on part of the split, below, that part's) and the
candidate's and baseline's label vocabularies, and lets components/gate_decision.py
decide: the gated metric (accuracy, or balanced accuracy on a skewed eval split), its
floor (max of min_accuracy, chance + margin and the significance bound), the
per-class floor, and whether the baseline can be compared (not when there is
none or its label set differs). Those thresholds are written into the
EvalConfig so TFMA does the gating; balanced accuracy, the mean of the per-class
recalls TFMA measures, has its floor and comparison applied by the executor
after TFMA (`decide_outside_tfma`), which unblesses a model that fails them. A gate that cannot be computed (no eval
example, or a class without one) raises GateNotComputable naming the class:
the run fails and nothing is pushed. After TFMA, the executor writes gate.json
(the decision record) beside TFMA's output.

A baseline is not evaluated again when an earlier execution of this Evaluator
measured it, as its candidate, on the same eval examples artifact with the same
model specs (gate.json's `measured`; a run whose ExampleGen came from the cache):
its accuracy is read from that gate.json, and the no-regression threshold is
applied here exactly as TFMA applies it (`change_failure`), unblessing the model
when it fails.

The candidate is judged on each eval image once, and only on the ones it did not train on:
when the eval split repeats an image, or holds images of the candidate's train split
(TFRecords made elsewhere), the gate is planned on the rest's label counts and every
bound is applied here to the candidate's answers on them (gate_decision.JudgedOn and
judged_results, measured by components/unseen_comparison.py); TFMA then gates nothing.

The baseline is compared only on eval images neither model trained on. Each Trainer
recorded fingerprints of its train images (trainer/image_ids.py); when some of them are in
this eval split (the data was split anew, or TFRecords made elsewhere repeat an image
across splits), TFMA judges the candidate alone and both models are measured here on the
rest (components/unseen_comparison.py), or, when fewer than MIN_UNSEEN_TO_COMPARE are
left, the comparison is skipped with the reason.

TFMA itself does not run again when an earlier execution ran it on exactly the
same inputs: the same candidate (and baseline) Model artifacts, eval examples
artifact and splits, the same execution properties with the gate's thresholds
written in, and the same TFMA and TensorFlow versions (gate.json's `tfma_run`). This is the
identical re-run, where TFX cannot use its cache because the baseline input
changed (none, then the blessed candidate itself). TFMA's output files are
copied from that execution and the blessing is written from its validations
file as TFX's Evaluator writes it; gate.json names the source (`tfma_reused_from`).

The min_accuracy knob (components/runtime_params.py) is its own execution
property, so it is a KFP runtime parameter; the gate's other settings travel
as one JSON property, `gate_config`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_model_analysis as tfma
from pydantic import ValidationError
from tfx import types
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import json_utils, proto_utils

from components import graph_optimization, patching, pusher, split_shift, tfma_warm, unseen_comparison
from components.artifacts import DataGateReport, model_class_names, read_report, saved_model_dir
from components.gate import (
    ACCURACY_CLASS,
    ACCURACY_KEY,
    CONFUSION_CLASS,
    CONFUSION_KEY,
    EXAMPLE_COUNT_KEY,
    METRIC_BALANCED,
    GateConfig,
    relabel_allowed,
)
from components.gate_decision import (
    GATE_FILE,
    METRIC_TOLERANCE,
    ROLLED_BACK_KEY,
    EvalResults,
    Failure,
    GateNotComputable,
    GatePlan,
    JudgedOn,
    Measured,
    balanced_accuracy,
    change_failure,
    class_order_change,
    classes_at_chance,
    compared_classes,
    exchanged,
    floor_failure,
    gate_record,
    gated_value,
    judged_results,
    labels_moved,
    moved_alone,
    moved_warning,
    on_shared_classes,
    pair_hint,
    plan_gate,
    precision_failures,
    precision_of,
    reasons,
    uncompared_failure,
    with_enough_compared,
    with_seen_examples,
)
from components.runtime_params import EVALUATOR_KNOBS, Knob, check_knob
from trainer import image_ids, tracing
from trainer.config import ConfigError
from trainer.features import LABEL_KEY, LABEL_XF, SCORING_CALL_PIXELS, images_per_call, label_text

log = logging.getLogger(__name__)

DATA_REPORT_KEY = "data_report"
GATE_CONFIG_KEY = "gate_config"
# The pipeline home's rollback log (serving/model_fingerprint.py): a candidate with the weights of
# a model `imgpipe rollback` took out is refused, though it was trained again (a new artifact).
ROLLBACK_LOG_KEY = "rollback_log"
IMAGE_SIZE_KEY = "image_size"  # the model's input size: bounds the examples per model call
# The data's ingest_report.json (image_ids.INGEST_REPORT_KEY): its near-copy sets make the gate
# count pictures.
INGEST_REPORT_KEY = image_ids.INGEST_REPORT_KEY


def models_batch(
    eval_batch_size: int, model_pixels: Sequence[int | None], image_size: int | None
) -> tuple[int, int]:
    """(examples per model call, the side it is bounded by) for models of `model_pixels` (each
    model's input height x width, None where unread: `graph_optimization.image_pixels`): the
    largest of them, a baseline of another size too; the run's `image_size` where none is read."""
    side = max([math.isqrt(p) for p in model_pixels if p] + [image_size or 0])
    return eval_batch(eval_batch_size, side or None), side


def eval_batch(eval_batch_size: int, image_size: int | None) -> int:
    """Examples per model call: eval_batch_size, or fewer where its images at `image_size` pass
    SCORING_CALL_PIXELS (6 at 1024 px; at least one)."""
    return images_per_call(eval_batch_size, image_size, SCORING_CALL_PIXELS)


# Gate settings the Evaluator does not read (the data gate's).
_NOT_EVALUATOR = frozenset({"allow_anomalies", "accept_label_change"})


# ------------------------------------------------------------------ the EvalConfig
def accuracy_thresholds(
    floor: float, min_class_recall: float | None, max_regression: float | None
) -> list[tfma.PerSliceMetricThreshold]:
    """The accuracy gate as TFMA thresholds.

    Overall slice: accuracy >= floor, and no drop of more than max_regression
    against the baseline (TFMA drops that change threshold when no baseline is
    given; None: no change threshold). Each label slice (when min_class_recall
    is set): accuracy within the true class, i.e. its recall, >= min_class_recall.
    Each bound has METRIC_TOLERANCE of slack for TFMA's float32 metrics, so a
    model exactly at a bound (19/20 against 0.95) passes.
    """
    change = None
    if max_regression is not None:
        change = tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -max_regression - METRIC_TOLERANCE},
        )
    out = [
        tfma.PerSliceMetricThreshold(
            slicing_specs=[tfma.SlicingSpec()],
            threshold=tfma.MetricThreshold(
                value_threshold=tfma.GenericValueThreshold(lower_bound={"value": floor - METRIC_TOLERANCE}),
                change_threshold=change,
            ),
        )
    ]
    if min_class_recall:
        out.append(
            tfma.PerSliceMetricThreshold(
                slicing_specs=[tfma.SlicingSpec(feature_keys=[LABEL_KEY])],
                threshold=tfma.MetricThreshold(
                    value_threshold=tfma.GenericValueThreshold(
                        lower_bound={"value": min_class_recall - METRIC_TOLERANCE}
                    )
                ),
            )
        )
    return out


def eval_config(gate: GateConfig) -> tfma.EvalConfig:
    """Accuracy on the raw eval split, overall and per true class, gated as `gate` says.

    The overall floor here is min_accuracy; the executor raises it to the
    majority-class floor when that is higher (it needs the eval split's counts).
    """
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name="serving_default",
                prediction_key="scores",
                label_key=LABEL_XF,
                preprocessing_function_names=["transform_features"],
            )
        ],
        slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[LABEL_KEY])],
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(class_name="ExampleCount"),
                    # (true class, top-1 class) counts: each class's precision (min_class_precision)
                    tfma.MetricConfig(class_name=CONFUSION_CLASS),
                    tfma.MetricConfig(
                        class_name=ACCURACY_CLASS,
                        per_slice_thresholds=accuracy_thresholds(
                            gate.min_accuracy, gate.min_class_recall or None, gate.max_regression
                        ),
                    ),
                ]
            )
        ],
    )


def with_plan(eval_config_json: str, plan: GatePlan) -> str:
    """eval_config (JSON) with the accuracy thresholds replaced by the plan's.

    When the plan gates balanced accuracy, TFMA keeps only the per-class recall bounds (and
    an overall accuracy bound of 0, so that it validates at all): the executor applies the
    floor and the comparison to the mean of the per-class recalls it measured. When the plan
    judges the candidate on part of the split (`judged_on`), TFMA keeps only that bound of 0:
    the executor applies them all there (gate_decision.judged_results).
    """
    balanced = plan.metric == METRIC_BALANCED
    here = plan.judged_on is not None  # every bound is applied by the executor, on part of the split
    cfg = proto_utils.json_to_proto(eval_config_json, tfma.EvalConfig())
    gated = [m for spec in cfg.metrics_specs for m in spec.metrics if m.class_name == ACCURACY_CLASS]
    if not gated:
        raise ValueError(f"eval_config has no {ACCURACY_CLASS} metric to gate on")
    for metric in gated:
        metric.ClearField("threshold")
        del metric.per_slice_thresholds[:]
        metric.per_slice_thresholds.extend(
            accuracy_thresholds(
                0.0 if balanced or here else plan.floor.value,
                None if here else plan.min_class_recall,
                None if balanced or here else plan.max_regression,
            )
        )
    return proto_utils.proto_to_json(cfg)


# ------------------------------------------------------------------ TFMA's output
def _slice_class(slice_key) -> tuple[bool, str | None]:
    """(is a label slice or the overall slice, the class name or None for overall)."""
    keys = list(slice_key.single_slice_keys)
    if not keys:
        return True, None
    if len(keys) != 1 or keys[0].column != LABEL_KEY:
        return False, None
    k = keys[0]
    if k.HasField("bytes_value"):
        return True, k.bytes_value.decode("utf-8", "replace")  # a label that is not UTF-8: a reason, no crash
    if k.HasField("int64_value"):
        return True, str(k.int64_value)
    return True, str(k.float_value)


def read_results(output_uri: str, class_names: Sequence[str] = ()) -> EvalResults:
    """Accuracy (overall and per class, the candidate's and the baseline's), example count, the
    candidate's precision of each class it answered, and failed thresholds from TFMA's output.

    class_names: the candidate's, in index order (TFMA's confusion matrix counts class indices).
    """
    accuracy = baseline = None
    examples: int | None = None
    per_class: dict[str, float] = {}
    baseline_per_class: dict[str, float] = {}
    for mfs in tfma.load_metrics(output_uri):
        ok, cls = _slice_class(mfs.slice_key)
        if not ok:
            continue
        for kv in mfs.metric_keys_and_values:
            if kv.key.is_diff:
                continue
            value = kv.value.double_value.value
            is_baseline = kv.key.model_name == tfma.BASELINE_KEY
            if kv.key.name == ACCURACY_KEY:
                if cls is not None:
                    (baseline_per_class if is_baseline else per_class)[cls] = value
                elif is_baseline:
                    baseline = value
                else:
                    accuracy = value
            elif kv.key.name == EXAMPLE_COUNT_KEY and cls is None and not is_baseline:
                examples = int(value)
    precision, answered, at_chance = _confusion(output_uri, class_names)
    failures, problems = [], []
    validation = tfma.load_validation_result(output_uri)
    for per_slice in validation.metric_validations_per_slice:
        ok, cls = _slice_class(per_slice.slice_key)
        for f in per_slice.failures:
            if ok and f.metric_key.name == ACCURACY_KEY:
                failures.append(Failure(cls, f.metric_key.is_diff, f.metric_value.double_value.value))
            else:
                problems.append(f.message or str(f.metric_key).replace("\n", " "))
    for missing in validation.missing_slices:
        problems.append(f"no examples in slice {str(missing).strip()}")
    return EvalResults(
        accuracy,
        examples,
        per_class,
        baseline,
        failures,
        problems,
        baseline_per_class=baseline_per_class,
        per_class_precision=precision,
        per_class_answered=answered,
        classes_at_chance=at_chance,
    )


def _confusion_matrices(output_uri: str, baseline: bool = False):
    """The candidate's (or the baseline's) TFMA confusion matrices (at thresholds) on the whole
    split, or None."""
    try:
        plots = list(tfma.load_plots(output_uri))
    except (OSError, ValueError, tf.errors.OpError) as e:
        log.warning("TFMA's plots in %s cannot be read: %s", output_uri, e)
        return None
    for pfs in plots:
        ok, cls = _slice_class(pfs.slice_key)
        if not ok or cls is not None:
            continue
        for kv in pfs.plot_keys_and_values:
            if kv.key.name == CONFUSION_KEY and (kv.key.model_name == tfma.BASELINE_KEY) == baseline:
                return kv.value.multi_class_confusion_matrix_at_thresholds
    return None


def _top1_counts(matrices_proto, class_names: Sequence[str]) -> dict[tuple[str | None, str | None], int]:
    """{(true class, answered class): eval examples} from TFMA's confusion matrix at its lowest
    threshold (0: every example's top-1 class counts); None for an index outside the vocabulary."""
    matrices = matrices_proto.matrices
    lowest = min(matrices, key=lambda m: m.threshold) if matrices else None

    def name(index: int) -> str | None:
        return class_names[index] if 0 <= index < len(class_names) else None

    counts: dict[tuple[str | None, str | None], int] = {}
    for entry in lowest.entries if lowest is not None else ():
        key = (name(entry.actual_class_id), name(entry.predicted_class_id))
        counts[key] = counts.get(key, 0) + int(round(entry.num_weighted_examples))
    return counts


def _answered_of(
    counts: Mapping[tuple[str | None, str | None], int], class_names: Sequence[str]
) -> dict[str, tuple[int, int]]:
    """{class: (eval examples the model answered with it, right ones)} from `_top1_counts`."""
    answered = {c: [0, 0] for c in class_names}
    for (true, given), n in counts.items():
        if given is not None:
            answered[given][0] += n
            answered[given][1] += n if true == given else 0
    return {c: (n, right) for c, (n, right) in answered.items()}


def _confusion(
    output_uri: str, class_names: Sequence[str]
) -> tuple[dict[str, float] | None, dict[str, int] | None, list[dict[str, Any]] | None]:
    """From one read of TFMA's confusion matrix plot on the whole split: the candidate's precision
    and answers per class, and the pairs of classes it tells apart no better than chance
    (gate_decision.classes_at_chance); Nones when TFMA wrote none (an eval_config from an
    earlier imgpipe)."""
    matrices = _confusion_matrices(output_uri)
    if matrices is None:
        return None, None, None
    counts = _top1_counts(matrices, class_names)
    precision, answers = precision_of(_answered_of(counts, class_names))
    known = {pair: n for pair, n in counts.items() if None not in pair}
    return precision, answers, (classes_at_chance(known, class_names) if matrices.matrices else None)


# ------------------------------------------------------------------ the executor
def gate_config_from(props: dict[str, Any]) -> GateConfig:
    """The GateConfig from the `gate_config` JSON property and the knob properties (popped from `props`)."""
    values = json_utils.loads(props.pop(GATE_CONFIG_KEY, None) or "null") or {}
    for name in EVALUATOR_KNOBS:
        value = props.pop(name, None)
        if value is not None:
            values[name] = check_knob(name, value)
    try:
        return GateConfig.model_validate(values)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"Evaluator gate_config is invalid: {problems}") from None


class GateEvaluatorExecutor(evaluator_executor.Executor):
    """Plans the gate, lets TFMA apply it, and writes gate.json."""

    def Do(self, input_dict, output_dict, exec_properties):  # noqa: N802 - TFX's name
        props = dict(exec_properties)
        gate = gate_config_from(props)
        report = read_report(input_dict[DATA_REPORT_KEY])
        model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
        baselines = list(input_dict.get(standard_component_specs.BASELINE_MODEL_KEY) or [])
        baseline = baselines[0] if baselines else None
        model_pixels = [graph_optimization.image_pixels(saved_model_dir(m)) for m in [model, *baselines]]
        batch, side = models_batch(gate.eval_batch_size, model_pixels, props.get(IMAGE_SIZE_KEY))
        if batch < gate.eval_batch_size:
            log.info(
                "eval examples per model call: %d at %dpx, not eval_batch_size %d (a call's memory grows "
                "with its pixels)",
                batch,
                side,
                gate.eval_batch_size,
            )
        splits = json_utils.loads(props.get(standard_component_specs.EXAMPLE_SPLITS_KEY) or "null")
        examples = artifact_utils.get_single_instance(input_dict[standard_component_specs.EXAMPLES_KEY])
        label_counts = eval_label_counts(report, splits or ["eval"])  # first: it names a split not counted
        # The data's ingest report, read once: its pictures (below) and its sets of near-copies.
        report_path = props.get(INGEST_REPORT_KEY)
        ingested = image_ids.read_ingest_report(report_path)
        pictures = eval_pictures(ingested, label_counts, report_path) if splits in (None, ["eval"]) else None
        if baseline is not None:
            check_baseline_readable(baseline)
        folders = split_dirs(examples, splits)
        near_copies = image_ids.near_copy_sets_in(ingested or {}, report_path or "")
        records = eval_records(model, folders, near_copies)
        judged_on = records.judged_on()
        if judged_on is not None:
            label_counts = dict(collections.Counter(records.labels[~records.left_out]))
            log.warning("the gate judges on the %s", judged_on.describe())
            if pictures is not None:
                # Which pictures the judged records hold is not known (the sets are files, those
                # left out images): a count from the whole split would be a guess, not a bound.
                log.info(
                    "gate: part of the eval split is judged: its near-copy sets are not counted as pictures"
                )
                pictures = None
        plan = plan_gate(
            gate,
            label_counts,
            model_class_names(model.uri),
            model_class_names(baseline.uri) if baseline is not None else None,
            baseline_identical=baseline is not None and same_model_artifact(model, baseline),
            judged_on=judged_on,
            relabel_accepted=relabel_allowed(report.anomalies_allowed),
            eval_pictures=pictures,
        )
        if plan.floor.eval_pictures is not None:
            log.info(
                "gate: the eval split's %d images are %d pictures (ingest's sets of near-copies, each counted "
                "once): the significance bound counts pictures",
                plan.floor.eval_examples,
                plan.floor.eval_pictures,
            )
        key = standard_component_specs.EVAL_CONFIG_KEY
        if not props.get(key):
            raise ValueError("the Evaluator has no eval_config")
        evaluation = artifact_utils.get_single_instance(output_dict[standard_component_specs.EVALUATION_KEY])
        # Not recorded for a part of the split: a later Evaluator reuses it as the whole split's.
        measured = None if judged_on else measurement(model.uri, examples.uri, splits, props[key])
        plan, either = compared_on_unseen(plan, baseline, records, near_copies)
        plan = dataclasses.replace(plan, baseline=with_enough_compared(plan.baseline, len(records.ids)))
        plan, reused = reused_baseline(plan, evaluation.uri, baseline, examples.uri, splits, props[key])
        props[key] = with_plan(props[key], plan)
        inputs = dict(input_dict)
        unseen_only = plan.baseline.compared_examples is not None
        if not plan.baseline.compared or plan.baseline.identical or reused is not None or unseen_only:
            # TFMA then drops the change threshold: skipped, or decided here (an identical
            # model has the candidate's accuracy, a change of exactly 0, within max_regression;
            # a reused baseline accuracy, or both models' on the eval examples the baseline
            # did not train on, is compared below).
            inputs[standard_component_specs.BASELINE_MODEL_KEY] = []
        log.info(
            "gate: %s (%s), floor %.3f (%s), min_class_recall %s, baseline %s",
            plan.floor.metric_text,
            plan.metric_reason,
            plan.floor.value,
            plan.floor.source,
            plan.min_class_recall,
            _baseline_text(plan),
        )
        # TFMA computes accuracy with tf_keras's metric classes inside tf.functions; without
        # the rule AutoGraph re-converts tf_keras's metric code for every trace (~30% of a
        # fresh process's Evaluator under cProfile here, BENCHMARKS.md "Fixed costs"). In a LocalDagRunner
        # process the Trainer has usually installed it already; a component per process
        # (Kubeflow) has not. Beam workers in other processes still convert.
        tracing.install()
        tfma_baselines = inputs.get(standard_component_specs.BASELINE_MODEL_KEY) or []
        optimization = graph_optimization.decide(
            gate.eval_graph_optimization,
            eval_examples(report, splits or ["eval"]),
            [saved_model_dir(m) for m in [model, *tfma_baselines]],
            in_process=tfma_in_this_process(self._beam_pipeline_args),
            pixels=model_pixels[: 1 + len(tfma_baselines)],
        )
        judged, on_unseen = answers_outside_tfma(
            plan, records, either, folders, [model, baseline], batch, optimization.enabled
        )
        run = tfma_run(model, tfma_baselines, examples, splits, props, batch, optimization.enabled)
        earlier = earlier_tfma_run(evaluation.uri, run)
        if earlier is not None:
            copy_tfma_output(earlier, evaluation.uri)
            write_blessing(output_dict, inputs, props, evaluation.uri)
            log.info("TFMA ran on these inputs before: its results are reused from %s", earlier)
        else:
            self._run_tfma(inputs, output_dict, props, examples, splits, batch, optimization)
        blessing = artifact_utils.get_single_instance(output_dict[standard_component_specs.BLESSING_KEY])
        tfma_results = read_results(evaluation.uri, plan.class_names)
        if judged is not None:
            results, failed_here = judged_results(plan, tfma_results, *judged)
        else:
            results, failed_here = decide_outside_tfma(plan, tfma_results, reused, on_unseen)
        served_answers = baseline_answers(evaluation.uri, baseline, bool(tfma_baselines), judged, on_unseen)
        eval_shifted = any(w.startswith(split_shift.SHIFT_WARNING) for w in report.warnings)
        order_changed = class_order_change(
            plan.class_names, model_class_names(baseline.uri) if baseline is not None else None
        )
        if order_changed:
            log.warning("gate: %s", order_changed)
        results, moved_here = with_labels_moved(
            results, served_answers, report.label_change_accepted, eval_shifted
        )
        rolled_back = rolled_back_note(model, props.get(ROLLBACK_LOG_KEY))
        blessed = settle_blessing(blessing, failed_here or moved_here, rolled_back)
        why = reasons(plan, results)
        if blessed and why:
            log.warning("TFMA blessed the model although: %s", "; ".join(why))
        warn_classes_at_chance(
            tfma_results.classes_at_chance,
            eval_shifted,
            shrink_note(
                report.image_sizes.get("train"),
                math.isqrt(model_pixels[0]) if model_pixels[0] else props.get(IMAGE_SIZE_KEY),
            ),
        )
        record = gate_record(
            plan,
            results,
            blessed,
            report.anomalies_allowed,
            measured,
            run,
            earlier,
            eval_examples_in_train=records.candidate_seen,
            rolled_back=rolled_back,
            classes_told_apart_at_chance=tfma_results.classes_at_chance,
            class_order_changed=order_changed,
        )
        # The data gate's warnings (names that print alike, labels corrected, eval images unlike
        # the train images): beside the numbers they may explain, in the run's JSON too.
        record["data_warnings"] = list(report.warnings)
        if record["baseline"].get("compared"):
            record["baseline"]["when_blessed"] = baseline_when_blessed(evaluation.uri, baseline, record)
            warn_baseline_fallen(record)
        write_gate_record(evaluation.uri, record)

    def _run_tfma(self, inputs, output_dict, props, examples, splits, batch, optimization) -> None:
        """TFX's Evaluator (TFMA) on `inputs`, with the models' calls as this executor sets them up."""
        tfma_baselines = inputs.get(standard_component_specs.BASELINE_MODEL_KEY)
        # Two models: each one's load and first call start while TFMA builds its job
        # (components/tfma_warm.py; ~0.9x of the Evaluator's time, BENCHMARKS.md). With one
        # model it measured no gain: the load competes with the job's construction.
        warm = (
            tfma_warm.warm_models(tfma_warm.first_example(examples, splits or ["eval"]))
            if tfma_baselines
            else contextlib.nullcontext()
        )
        # The candidate TFMA loads is kept for pre-push validation and the report in a local run.
        log.info(
            "graph optimisation of the models: %s (%s)",
            "on" if optimization.enabled else "off",
            optimization.reason,
        )
        with (
            graph_optimization.grappler(optimization.enabled),
            tfma_warm.offer_candidates(),
            warm,
            fixed_record_batches(batch),
        ):
            super().Do(inputs, output_dict, props)


@dataclasses.dataclass(frozen=True)
class EvalRecords:
    """The eval split's records as the gate sees them: each one's image fingerprint and label
    (trainer/image_ids.py), in file order, and which of them the candidate is not judged on."""

    ids: np.ndarray
    labels: np.ndarray
    in_train: np.ndarray | None  # images the candidate trained on; None: it keeps no record of them
    repeated: np.ndarray  # copies of an earlier eval record's image
    # Near-copies (ingest's sets) of images the candidate trained on, of the rest; None: not known.
    near_train: np.ndarray | None = None

    @property
    def candidate_seen(self) -> int | None:
        """How many eval records the candidate trained on (None: not known)."""
        return None if self.in_train is None else int(self.in_train.sum())

    @property
    def left_out(self) -> np.ndarray:
        """The records the candidate is not judged on: repeats, images it trained on and
        near-copies of them."""
        out = self.repeated if self.in_train is None else self.repeated | self.in_train
        return out if self.near_train is None else out | self.near_train

    def judged_on(self) -> JudgedOn | None:
        """What the candidate is judged on when it is not the whole split (None: the whole split)."""
        left_out = self.left_out
        if not left_out.any():
            return None
        near = 0 if self.near_train is None else int((self.near_train & ~self.repeated).sum())
        return JudgedOn(
            len(self.ids),
            int(self.repeated.sum()),
            int((left_out & ~self.repeated).sum()) - near,
            self.in_train is not None,
            image_ids.conflicting_labels(self.ids, self.labels) if self.repeated.any() else 0,
            near_copies_in_train=near,
        )

    def outside(self, classes: Collection[str] | None) -> np.ndarray:
        """The records whose label is not one of `classes` (None: no record)."""
        if classes is None:
            return np.zeros(len(self.ids), bool)
        return np.array([label not in classes for label in self.labels], bool)


def eval_records(
    model: types.Artifact, folders: Sequence[str], near_copies: Sequence[np.ndarray] = ()
) -> EvalRecords:
    """The records of the eval split's `folders`. Eval images the candidate trained on, and copies
    of an earlier eval image: none from `imgpipe ingest` (it drops duplicates before splitting);
    TFRecords made elsewhere can hold both. Near-copies of a train image (`near_copies`: ingest's
    sets): from ingest only where a class is one set, split by image, or `--sets-by-folder` left
    a set across folders unjoined. The candidate is then judged on the rest
    (gate_decision.JudgedOn)."""
    ids, labels = image_ids.split_index(folders)
    repeated = image_ids.repeats(ids)
    trained_on = unseen_comparison.trained_images(model.uri, "the candidate")
    if trained_on is None:
        return EvalRecords(ids, labels, None, repeated)
    in_train = image_ids.seen(ids, trained_on)
    near = image_ids.near_copies_seen(ids, trained_on, near_copies) & ~in_train
    return EvalRecords(ids, labels, in_train, repeated, near)


def compared_on_unseen(
    plan: GatePlan,
    baseline: types.Artifact | None,
    records: EvalRecords,
    near_copies: Sequence[np.ndarray] = (),
) -> tuple[GatePlan, np.ndarray | None]:
    """The plan with the baseline comparison kept to the eval records neither model trained on
    (and, when a class was added or removed, to the classes both have), and the mask of the
    records left out of it (None: the comparison is on the whole split, or not made)."""
    if not plan.baseline.compared or plan.baseline.identical:
        return plan, None
    seen = unseen_comparison.seen_by(
        baseline.uri, lambda: records.ids, "the latest blessed model", near_copies
    )
    either = records.left_out if seen is None else seen | records.left_out
    seen_count = None if seen is None else int(seen.sum())
    shared = plan.baseline.shared_classes
    if shared is not None:
        # A class added or removed (accepted): both models are compared on the eval
        # examples of the classes both have, a candidate's answer of a new class there
        # counting as wrong, like the baseline's of a class the candidate dropped.
        either = either | records.outside(shared)
        compared = dataclasses.replace(plan.baseline, seen_eval_examples=seen_count)
        return dataclasses.replace(plan, baseline=on_shared_classes(compared, int((~either).sum()))), either
    if seen is None and plan.judged_on is None:
        return plan, None
    baseline_plan = with_seen_examples(
        plan.baseline,
        len(either),
        seen_count,
        records.candidate_seen or 0,
        int(either.sum()),
        repeats=int(records.repeated.sum()),
    )
    return dataclasses.replace(plan, baseline=baseline_plan), either


def reused_baseline(
    plan: GatePlan,
    evaluation_uri: str,
    baseline: types.Artifact | None,
    examples_uri: str,
    splits: Sequence[str] | None,
    eval_config_json: str,
) -> tuple[GatePlan, tuple[float, str] | None]:
    """The plan, and the baseline's value and its source when an earlier execution measured the
    baseline, as its candidate, on the same whole eval split (None: it is measured in this run)."""
    if (
        not plan.baseline.compared
        or plan.baseline.identical
        or plan.baseline.compared_examples is not None
        or plan.judged_on is not None
    ):
        return plan, None
    reused = earlier_measurement(
        evaluation_uri, measurement(baseline.uri, examples_uri, splits, eval_config_json), plan.metric
    )
    if reused is None:
        return plan, None
    return dataclasses.replace(
        plan, baseline=dataclasses.replace(plan.baseline, reused_from=reused[1])
    ), reused


def answers_outside_tfma(
    plan: GatePlan,
    records: EvalRecords,
    either: np.ndarray | None,
    folders: Sequence[str],
    models: Sequence[types.Artifact | None],
    batch: int,
    graph_optimized: bool,
) -> tuple[tuple | None, Sequence[Measured] | None]:
    """The models' answers the executor judges on itself: (the candidate's on the records it is
    judged on with the compared pair, or None; (candidate, baseline) on the eval records the
    baseline did not train on, or None). `models`: the candidate and the baseline (or None)."""
    model, baseline = models
    if plan.judged_on is not None:
        compare = plan.baseline.compared and not plan.baseline.identical and plan.baseline.compared_examples
        left_out = records.left_out
        with graph_optimization.grappler(graph_optimized):
            answers = unseen_comparison.answers_on(
                ~left_out,
                folders,
                [saved_model_dir(model), *([saved_model_dir(baseline)] if compare else [])],
                batch,
            )
        pair = None
        if compare:
            fresh = ~either[~left_out]  # of the judged records, the ones the baseline did not train on
            pair = (answers[0].on(fresh), answers[1].on(fresh))
        return (answers[0], pair), None
    if plan.baseline.compared_examples is None:
        return None, None
    outside = records.outside(plan.baseline.shared_classes)
    log.info(
        "%d of the %d eval examples are left out of the comparison: %d images a model trained on "
        "(the latest blessed model: %s, the candidate: %s)%s; both models are compared on the %d left",
        int(either.sum()),
        len(either),
        int((either & ~outside).sum()),
        plan.baseline.seen_eval_examples,
        records.candidate_seen,
        f", {int(outside.sum())} of classes only one of the models has" if outside.any() else "",
        plan.baseline.compared_examples,
    )
    with graph_optimization.grappler(graph_optimized):
        on_unseen = unseen_comparison.answers_on_unseen(
            either, folders, [saved_model_dir(model), saved_model_dir(baseline)], batch
        )
    return None, on_unseen


def rolled_back_note(model: types.Artifact, log_path: str | None) -> str:
    """Why the candidate may not be blessed as a model rolled back out of serving ('' when not):
    its artifact's mark, or a rolled-back model's weights (`same_weights_rolled_back`)."""
    marked = (
        model.get_string_custom_property(ROLLED_BACK_KEY)
        if model.has_custom_property(ROLLED_BACK_KEY)
        else ""
    )
    return marked or same_weights_rolled_back(saved_model_dir(model), log_path)


def baseline_answers(
    evaluation_uri: str,
    baseline: types.Artifact | None,
    tfma_ran_it: bool,
    judged: tuple | None,
    on_unseen: Sequence[Measured] | None,
) -> dict[tuple[str, str], int] | None:
    """The served model's {(true class, answered class): eval images} where it answered this run's
    eval images: on the images neither model trained on, on those the candidate is judged on, or
    (TFMA ran it) the whole split, its class indices read with its own vocabulary. None where it
    was not run (no baseline, an identical one, a reused number)."""
    answers = on_unseen[1] if on_unseen is not None else None
    if answers is None and judged is not None and judged[1] is not None:
        answers = judged[1][1]
    if answers is not None:
        if getattr(answers, "top1", None) is None:
            return None
        return dict(collections.Counter(zip(answers.labels.tolist(), answers.top1.tolist(), strict=True)))
    if not tfma_ran_it or baseline is None:
        return None
    matrices = _confusion_matrices(evaluation_uri, baseline=True)
    if matrices is None:
        return None
    counts = _top1_counts(matrices, model_class_names(baseline.uri))
    return {pair: n for pair, n in counts.items() if None not in pair}


def with_labels_moved(
    results: EvalResults,
    counts: Mapping[tuple[str, str], int] | None,
    accepted: bool,
    eval_shifted: bool = False,
) -> tuple[EvalResults, bool]:
    """The results with the classes the served model answers with another class (labels_moved),
    and whether that refuses the candidate: labels exchanged (a swap, a cycle) and no label change
    accepted in this run. A class moved alone is warned about (with the data gate's finding that
    the eval images changed, `eval_shifted`, when it made one)."""
    if counts is None:
        return results, False
    moves = labels_moved(counts)
    results = dataclasses.replace(results, labels_moved=moves)
    swapped = exchanged(moves)
    for move in moved_alone(moves):
        log.warning("gate: %s", moved_warning(move, eval_shifted, counts))
    if not swapped:
        return results, False
    if accepted:
        log.warning(
            "gate: label change accepted (--accept-label-change): the served model answers %s",
            "; ".join(m.text() for m in swapped),
        )
        return results, False
    return dataclasses.replace(
        results, failures=[*results.failures, Failure(None, False, None, moved=True)]
    ), True


def settle_blessing(blessing: types.Artifact, failed_here: bool, rolled_back: str) -> bool:
    """Whether the candidate is blessed: TFMA's blessing, withdrawn when a threshold applied by the
    executor failed or the candidate was rolled back out of serving (`rolled_back`: the note)."""
    blessed = blessing.get_int_custom_property("blessed") == 1
    if (failed_here or rolled_back) and blessed:
        if rolled_back:
            # Short: the reason in full is gate.json's first, which `imgpipe run`'s summary says
            # (a task log under Airflow, Kubeflow or Vertex AI has this line).
            log.warning(
                "not blessed: the candidate was rolled back out of serving (when and why: gate.json's reasons)"
            )
        unbless(blessing)
        blessed = False
    return blessed


# Pictures shrunk to the model's input by this factor or more (their shorter side's median over
# the input side) lose detail a class may be told by: said first when classes look alike.
SHRINK_NOTED = 3.0


def shrink_note(train_size: Sequence[float] | None, input_side: int | None) -> str:
    """Words saying the train pictures are shrunk SHRINK_NOTED times or more to the model's
    input (`train_size`: their median [width, height]), to go before a pair's hint; "" else."""
    if not train_size or not input_side:
        return ""
    factor = min(train_size) / input_side
    if factor < SHRINK_NOTED:
        return ""
    width, height = (round(v) for v in train_size)
    return (
        f"the pictures (a median {width} x {height} px) are shrunk {factor:.0f}x to the model's "
        f"{input_side} x {input_side} px input, which loses detail finer than {factor:.0f} of their "
        "pixels (a larger --image-size keeps more of it); else "
    )


def warn_classes_at_chance(
    at_chance: Sequence[Mapping[str, Any]] | None, eval_shifted: bool = False, shrunk: str = ""
) -> None:
    """A warning for each pair of classes the candidate tells apart no better than chance;
    `eval_shifted`: the data gate found the eval images unlike the train images (said first);
    `shrunk`: `shrink_note`'s words, said next."""
    shifted = (
        "the eval images differ from the train images (the data gate's warning), which alone can do "
        "this; else "
        if eval_shifted
        else ""
    ) + shrunk
    for pair in at_chance or ():
        a, b = pair["classes"]
        log.warning(
            "classes %s and %s are %s (%d of the %d eval images of the two answered with one of "
            "them were right): %s%s (the run's report lists the pairs)",
            label_text(a),
            label_text(b),
            "answered as each other" if pair.get("below_chance") else "not told apart better than chance",
            pair["right"],
            pair["between"],
            shifted,
            pair_hint(pair, at_chance),
        )


def same_weights_rolled_back(model_dir: str, log_path: str | None) -> str:
    """The rollback note of a model taken out of serving whose weights the candidate has ('' when
    none): a deterministic retrain on the same data and settings (after `--no-cache`, or a prune
    that deleted the cached lineage) exports those weights again as another artifact. Reads the
    candidate only when the home has rolled a model back."""
    from serving.model_fingerprint import rolled_back_models, weights_fingerprint

    refused = rolled_back_models(log_path) if log_path else {}
    if not refused:
        return ""
    note = refused.get(weights_fingerprint(model_dir))
    return f"{note}, and this candidate has its weights" if note else ""


class BaselineDamaged(RuntimeError):
    """The latest blessed model, which the gate compares with, cannot be read."""


def check_baseline_readable(baseline: types.Artifact) -> None:
    """BaselineDamaged naming the model when its saved_model.pb does not parse (a truncated copy,
    a disk error): TFMA's own error ("Cannot parse file") does not say which model it is, and
    every later run fails on it until the model is restored or removed."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(saved_model_dir(baseline), "saved_model.pb")
    if not tf.io.gfile.exists(path):
        return  # a model folder deleted by hand: the run's start marked it DELETED (recovery)
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            model = saved_model_pb2.SavedModel.FromString(f.read())
        if not model.meta_graphs:
            raise ValueError("no MetaGraph in it (an empty or cut file)")
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem to a user
        raise BaselineDamaged(
            f"the latest blessed model, the gate's baseline, cannot be read: {path}: {type(e).__name__}: {e}. "
            f"Restore it (the serving dir holds a copy of every pushed model), or delete {baseline.uri}: "
            "the next run then compares with the blessed model before it"
        ) from None


def decide_outside_tfma(
    plan: GatePlan,
    results: EvalResults,
    reused: tuple[float, str] | None,
    on_unseen: Sequence[Measured] | None,
) -> tuple[EvalResults, bool]:
    """TFMA's results with what the executor decides itself: (results, whether a threshold failed here).

    Balanced accuracy is the mean of the per-class recalls TFMA measured (the candidate's, and
    the baseline's when TFMA ran it): its floor and its comparison are applied here, as is
    min_class_precision on the precisions from TFMA's confusion matrix. The
    comparison is also made here, in either metric, when the baseline's value was reused
    from an earlier execution (`reused`) or both models were measured on the eval examples
    neither trained on (`on_unseen`: the candidate's answers there, the baseline's). Each threshold
    is applied as TFMA applies its own (floor_failure, change_failure). Each class's recall of
    both models where they were compared is kept (`compared_per_class`): what a regression is made of.
    """
    balanced = plan.metric == METRIC_BALANCED
    if on_unseen is not None:
        mine, theirs = on_unseen
        per_class = compared_classes(mine.counts(), mine.per_class(), theirs.per_class())
        results = dataclasses.replace(results, compared_per_class=per_class)
    elif plan.baseline.compared and not plan.baseline.identical and reused is None:
        # TFMA ran both models on the whole split (per class: its slices).
        per_class = compared_classes(plan.eval_class_counts, results.per_class, results.baseline_per_class)
        results = dataclasses.replace(results, compared_per_class=per_class)
    results = dataclasses.replace(
        results, balanced_accuracy=balanced_accuracy(results.per_class, plan.eval_classes)
    )
    failures = []
    pair = None  # (candidate, baseline) in the gated metric, when the comparison is made here
    if balanced:
        failures.append(floor_failure(plan.floor, results.balanced_accuracy))
        if plan.baseline.compared and not plan.baseline.identical and reused is None and on_unseen is None:
            pair = (
                results.balanced_accuracy,
                balanced_accuracy(results.baseline_per_class, plan.eval_classes),
            )
            results = dataclasses.replace(results, baseline_accuracy=pair[1])
    if on_unseen is not None:
        pair = (on_unseen[0].value(balanced), on_unseen[1].value(balanced))
        results = dataclasses.replace(results, baseline_accuracy=pair[1], compared_accuracy=pair[0])
    elif reused is not None:
        pair = (gated_value(plan, results), reused[0])
        results = dataclasses.replace(results, baseline_accuracy=pair[1])
    failures.extend(precision_failures(plan, results))
    failures.append(uncompared_failure(plan))
    if pair is not None:
        # A baseline whose value is missing (None) is compared as NaN: the threshold fails.
        base = float("nan") if pair[1] is None else pair[1]
        failures.append(
            change_failure(float("nan") if pair[0] is None else pair[0], base, plan.max_regression)
        )
    failures = [f for f in failures if f is not None]
    if failures:
        results = dataclasses.replace(results, failures=[*results.failures, *failures])
    return results, bool(failures)


def split_dirs(examples: types.Artifact, splits: Sequence[str] | None) -> list[str]:
    """The folders of the eval splits in the examples artifact (TFX's Split-<name> layout)."""
    return [artifact_utils.get_split_uri([examples], split) for split in (splits or ["eval"])]


def eval_pictures(
    ingested: Mapping[str, Any] | None, label_counts: Mapping[str, int], path: str | None = None
) -> dict[str, int] | None:
    """Each class's eval pictures from the data's ingest report (`ingested`, read from `path` by
    image_ids.read_ingest_report: its eval images less the extra members of each set of
    near-copies ingest kept in eval), when some class has fewer pictures than images; None when
    there is no such report (records made another way), it could not be read, or its eval counts
    are not the eval split's `label_counts` (a report of other data)."""
    near = ingested.get("near_copies") if ingested else None
    if not isinstance(near, list):
        return None
    if not image_ids.ingest_counts_match(ingested, "eval", label_counts):
        log.info(
            "gate: %s does not describe this eval split (its eval counts differ): the significance bound "
            "counts each eval image as a picture, not ingest's sets of near-copies once",
            path,
        )
        return None
    images = {str(c): int(v.get("eval", 0)) for c, v in ingested["counts"].items()}
    pictures = dict(images)
    for entry in near:
        if not isinstance(entry, dict) or not isinstance(entry.get("files"), list):
            continue
        name = str(entry.get("class"))
        if name not in pictures:
            continue
        if entry.get("split") == "both":  # the class is one set, split by image: its eval images one picture
            pictures[name] = min(pictures[name], 1)
        elif entry.get("split") == "eval":
            pictures[name] -= max(0, len(entry["files"]) - 1)
    if all(pictures[c] >= n for c, n in images.items()):
        return None
    return {c: max(1, n) if images[c] else 0 for c, n in pictures.items()}


def eval_label_counts(report: Any, splits: Sequence[str]) -> dict[str, int]:
    """The examples per label of the splits the Evaluator reads, summed, as the data gate counted
    them; GateNotComputable naming a split the data gate's report does not have."""
    missing = [split for split in splits if report.examples(split) is None]
    if missing:
        raise GateNotComputable(
            f"the Evaluator reads split(s) {', '.join(map(repr, missing))}, which the data gate's report "
            f"does not have (it has {', '.join(map(repr, sorted(report.splits))) or 'none'}): the gate "
            "cannot count their labels"
        )
    counts: dict[str, int] = {}
    for split in splits:
        labelled = report.label_counts(split)
        if not sum(labelled.values()):
            raise GateNotComputable(
                f"the data gate's report counts no labels in split {split!r} ({report.examples(split)} "
                "examples): the gate cannot judge any model on it; check that its records have a "
                "non-empty 'label' feature"
            )
        for label, n in labelled.items():
            counts[label] = counts.get(label, 0) + n
    return counts


def eval_examples(report: Any, splits: Sequence[str]) -> int | None:
    """The records of `splits` as the data gate counted them; None when a split is not in its report."""
    counts = [report.examples(split) for split in splits]
    return None if any(c is None for c in counts) else sum(counts)


def tfma_in_this_process(beam_args: Sequence[str] | None) -> bool:
    """Whether TFMA's Beam job runs its DoFns in this process: Beam's direct runner (imgpipe's
    or Beam's own) in its in-memory mode, which is also its mode when none is given. Read
    with Beam's own option parser (pipeline.beam's helpers are above this package)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(list(beam_args or [])).get_all_options()
    runner = (options.get("runner") or "DirectRunner").rsplit(".", 1)[-1]
    return runner in ("DirectRunner", "BundleBasedDirectRunner") and options.get("direct_running_mode") in (
        None,
        "in_memory",
    )


@contextlib.contextmanager
def fixed_record_batches(size: int) -> Iterator[None]:
    """Within the block, TFX's Evaluator reads the eval split in batches of `size` records.

    TFX's Evaluator reads the examples with `tfxio.BeamSource()`, whose batches Beam sizes
    adaptively, from 1 record up; TFMA calls each model once per batch. On a small eval split
    that is ~18 calls per model (179 records: 1, 2, 4, ...) where two would do, each with its
    fixed cost in the model and in TFMA's per-batch work (BENCHMARKS.md "The Evaluator's
    batches"). A fixed size bounds the memory of one call as the Trainer's batch size does.
    """
    from tfx.components.util import tfxio_utils

    def of_fixed_batches(make_factory):
        def factory_of_fixed_batches(*args, **kwargs):
            make = make_factory(*args, **kwargs)

            def tfxio_of_fixed_batches(*a, **kw):
                tfxio = make(*a, **kw)
                source = tfxio.BeamSource
                tfxio.BeamSource = lambda batch_size=None: source(batch_size or size)
                return tfxio

            return tfxio_of_fixed_batches

        return factory_of_fixed_batches

    with patching.replaced(tfxio_utils, "get_tfxio_factory_from_artifact", of_fixed_batches):
        yield


def measurement(
    model_uri: str, examples_uri: str, splits: Sequence[str] | None, eval_config_json: str
) -> dict:
    """What an accuracy depends on: the model, the eval examples artifact and split, TFMA's model specs.

    (Thresholds are left out: they decide the blessing, not the number.)
    """
    cfg = proto_utils.json_to_proto(eval_config_json, tfma.EvalConfig())
    specs = json.dumps([proto_utils.proto_to_json(spec) for spec in cfg.model_specs], sort_keys=True)
    return {
        "model": _norm(model_uri),
        "examples": _norm(examples_uri),
        "splits": list(splits) if splits else None,
        "model_specs": hashlib.sha256(specs.encode()).hexdigest(),
    }


def _norm(uri: str) -> str:
    """A path in one spelling: os.path.normpath for local paths; a remote URI (gs://...) only
    loses trailing slashes (normpath would fold its '//' into a local path)."""
    return uri.rstrip("/") if "://" in uri else os.path.normpath(uri)


def earlier_records(evaluation_uri: str) -> Iterator[tuple[str, dict]]:
    """(gate.json path, record) of this Evaluator's other executions, newest first.

    Their output folders are the siblings of this one (`.../Evaluator/evaluation/<id>/`).
    Unreadable records are skipped.
    """
    parent = os.path.dirname(_norm(evaluation_uri))
    own = os.path.basename(_norm(evaluation_uri))
    try:
        names = [n.rstrip("/") for n in tf.io.gfile.listdir(parent)]
    except tf.errors.OpError:
        return
    for name in sorted((n for n in names if n != own), key=lambda n: (len(n), n), reverse=True):
        path = os.path.join(parent, name, GATE_FILE)
        try:
            with tf.io.gfile.GFile(path) as f:
                record = json.loads(f.read())
        except (tf.errors.OpError, ValueError):
            continue
        if isinstance(record, dict):
            yield path, record


# The served model this far (or more) below its own blessing's number on a run's eval images: the
# run says the eval pictures are unlike those it was judged on.
FALLEN = 0.2


def baseline_when_blessed(
    evaluation_uri: str, baseline: types.Artifact | None, record: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The served model's gated number when it was blessed: {"value", "eval_examples", "gate"}
    from its own Evaluator's gate.json (this Evaluator's newest other record that judged it as the
    candidate, in the same metric, and blessed it); None when there is none to read."""
    if baseline is None or record["baseline"].get("identical"):
        return None
    target = _norm(baseline.uri)
    metric = record.get("metric", "accuracy")
    for path, earlier in earlier_records(evaluation_uri):
        model = (earlier.get("tfma_run") or {}).get("model")
        value = earlier.get("value")
        if (
            earlier.get("blessed") is True
            and model is not None
            and _norm(model) == target
            and earlier.get("metric", "accuracy") == metric
            and isinstance(value, (int, float))
        ):
            return {"value": float(value), "eval_examples": earlier.get("eval_examples"), "gate": path}
    return None


def warn_baseline_fallen(record: Mapping[str, Any]) -> None:
    """A warning when the served model scores FALLEN or more below its blessing's number on the
    images it was compared on here: those eval pictures are unlike the ones it was judged on."""
    compared = record["baseline"]
    then, now = compared.get("when_blessed"), compared.get("accuracy")
    if not then or now is None or then["value"] - now < FALLEN - METRIC_TOLERANCE:  # float32 metrics
        return
    metric = str(record.get("metric", "accuracy")).replace("_", " ")
    log.warning(
        "the served model scores %.3f (%s) on the %s eval images it was compared on here, against %.3f "
        "on its own eval split when it was blessed: these eval pictures are unlike those it was judged "
        "on (another source, turned, relabelled?), so the comparison says little of the candidate; "
        "the data gate's warnings, if any, say how they differ",
        now,
        metric,
        compared.get("compared_examples"),
        then["value"],
    )


def earlier_measurement(
    evaluation_uri: str, wanted: Mapping[str, Any], metric: str = "accuracy"
) -> tuple[float, str] | None:
    """(value of `metric`, gate.json path) of the newest other execution of this Evaluator that
    measured `wanted` and recorded that metric (records older than balanced accuracy lack it)."""
    for path, record in earlier_records(evaluation_uri):
        value = record.get(metric)
        if record.get("measured") == dict(wanted) and isinstance(value, (int, float)) and value == value:
            return float(value), path
    return None


def tfma_run(
    model: types.Artifact,
    baselines: Sequence[types.Artifact] | None,
    examples: types.Artifact,
    splits: Sequence[str] | None,
    props: Mapping[str, Any],
    eval_batch_size: int,
    graph_optimized: bool = True,
) -> dict:
    """Everything TFMA's output depends on, for the run about to happen (gate.json's `tfma_run`).

    props: the execution properties as TFMA gets them (the plan's thresholds written in).
    eval_batch_size: the records per model call (`fixed_record_batches`; it can change the
    scores' last bits). graph_optimized: whether the models run with Grappler's rewrites
    (components/graph_optimization.py; fused kernels can change the last bits too).
    """
    properties = json.dumps({k: props[k] for k in sorted(props)}, sort_keys=True, default=str)
    return {
        "model": _norm(model.uri),
        "baseline": _norm(baselines[0].uri) if baselines else None,
        "examples": _norm(examples.uri),
        "splits": list(splits) if splits else None,
        "properties": hashlib.sha256(properties.encode()).hexdigest(),
        "eval_batch_size": eval_batch_size,
        "graph_optimization": graph_optimized,
        "tfma": tfma.__version__,
        "tensorflow": tf.__version__,
    }


def earlier_tfma_run(evaluation_uri: str, run: Mapping[str, Any]) -> str | None:
    """The output folder of the newest other execution whose TFMA run had exactly these inputs."""
    for path, record in earlier_records(evaluation_uri):
        if record.get("tfma_run") == dict(run):
            return os.path.dirname(path)
    return None


def copy_tfma_output(source: str, destination: str) -> None:
    """TFMA's files of an earlier execution (all but its gate.json) into this execution's folder."""
    for directory, _, files in tf.io.gfile.walk(source):
        target = os.path.join(destination, os.path.relpath(directory, source))
        tf.io.gfile.makedirs(target)
        for name in files:
            if directory.rstrip("/") == source.rstrip("/") and name == GATE_FILE:
                continue
            tf.io.gfile.copy(os.path.join(directory, name), os.path.join(target, name), overwrite=True)


def write_blessing(output_dict, input_dict, exec_properties, evaluation_uri: str) -> None:
    """The blessing from TFMA's validations file, with the properties TFX's Evaluator gives it."""
    from tfx.components.evaluator import constants

    blessing = artifact_utils.get_single_instance(output_dict[standard_component_specs.BLESSING_KEY])
    model = input_dict[standard_component_specs.MODEL_KEY][0]
    blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, model.uri)
    blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, model.id)
    if input_dict.get(standard_component_specs.BASELINE_MODEL_KEY):
        baseline = input_dict[standard_component_specs.BASELINE_MODEL_KEY][0]
        blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY, baseline.uri)
        blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY, baseline.id)
    if "current_component_id" in exec_properties:
        blessing.set_string_custom_property("component_id", exec_properties["current_component_id"])
    _mark(blessing, tfma.load_validation_result(evaluation_uri).validation_ok)


def unbless(blessing: types.Artifact) -> None:
    """Turn TFMA's blessing into a refusal (marker file and property, as TFX's Evaluator writes them)."""
    from tfx.components.evaluator import constants

    blessed = os.path.join(blessing.uri, constants.BLESSED_FILE_NAME)
    if tf.io.gfile.exists(blessed):
        tf.io.gfile.remove(blessed)
    _mark(blessing, False)


def _mark(blessing: types.Artifact, blessed: bool) -> None:
    """The blessing's marker file (BLESSED / NOT_BLESSED) and `blessed` property, as TFX writes them."""
    from tfx.components.evaluator import constants

    name = constants.BLESSED_FILE_NAME if blessed else constants.NOT_BLESSED_FILE_NAME
    with tf.io.gfile.GFile(os.path.join(blessing.uri, name), "w") as f:
        f.write("")
    value = constants.BLESSED_VALUE if blessed else constants.NOT_BLESSED_VALUE
    blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY, value)


def same_model_artifact(model: types.Artifact, baseline: types.Artifact) -> bool:
    """Whether the baseline Model artifact is the candidate: the same URI or byte-identical serving files."""
    a, b = (saved_model_dir(m) for m in (model, baseline))
    return _norm(model.uri) == _norm(baseline.uri) or pusher.same_model(a, b)


def _baseline_text(plan: GatePlan) -> str:
    if not plan.baseline.compared:
        return f"skipped ({plan.baseline.skipped_reason})"
    if plan.baseline.identical:
        return "identical to the candidate (not evaluated twice)"
    if plan.baseline.reused_from:
        return f"compared with its accuracy measured earlier on these eval examples ({plan.baseline.reused_from})"
    if plan.baseline.shared_classes is not None and plan.baseline.compared_examples is not None:
        return (
            f"compared on the {plan.baseline.compared_examples} eval examples of the classes both models "
            f"have ({plan.baseline.label_change})"
        )
    if plan.baseline.compared_examples is not None:
        return f"compared on the {plan.baseline.compared_examples} eval examples neither model trained on"
    return "compared"


def write_gate_record(evaluation_uri: str, record: Mapping[str, Any]) -> str:
    path = os.path.join(evaluation_uri, GATE_FILE)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(record, indent=2, sort_keys=True))
    return path


# ------------------------------------------------------------------ the component
class GateEvaluatorSpec(standard_component_specs.EvaluatorSpec):
    PARAMETERS = {
        **standard_component_specs.EvaluatorSpec.PARAMETERS,
        GATE_CONFIG_KEY: ExecutionParameter(type=str),
        ROLLBACK_LOG_KEY: ExecutionParameter(type=str, optional=True),
        IMAGE_SIZE_KEY: ExecutionParameter(type=int, optional=True),
        INGEST_REPORT_KEY: ExecutionParameter(type=str, optional=True),
        **{
            name: ExecutionParameter(type=spec.ptype, optional=True) for name, spec in EVALUATOR_KNOBS.items()
        },
    }
    INPUTS = {
        **standard_component_specs.EvaluatorSpec.INPUTS,
        DATA_REPORT_KEY: ChannelParameter(type=DataGateReport),
    }


class GateEvaluator(base_component.BaseComponent):
    """The TFX Evaluator (TFMA) with the gate planned at run time and its decision in gate.json."""

    SPEC_CLASS = GateEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(GateEvaluatorExecutor)

    def __init__(
        self,
        examples: types.BaseChannel,
        model: types.BaseChannel,
        baseline_model: types.BaseChannel,
        data_report: types.BaseChannel,
        gate: GateConfig,
        example_splits: Sequence[str],
        knobs: Mapping[str, Knob],
        rollback_log: str | None = None,
        image_size: int | None = None,
        ingest_report: str | None = None,
    ):
        rest = {
            k: v for k, v in gate.to_dict().items() if k not in EVALUATOR_KNOBS and k not in _NOT_EVALUATOR
        }
        spec = GateEvaluatorSpec(
            examples=examples,
            model=model,
            baseline_model=baseline_model,
            data_report=data_report,
            eval_config=eval_config(gate),
            example_splits=json_utils.dumps(list(example_splits)),
            fairness_indicator_thresholds=json_utils.dumps(None),
            gate_config=json_utils.dumps(rest),
            rollback_log=rollback_log,
            image_size=image_size,
            ingest_report=ingest_report,
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
            **{name: knobs[name] for name in EVALUATOR_KNOBS},
        )
        super().__init__(spec=spec)
