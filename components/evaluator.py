"""The Evaluator node: TFX's TFMA Evaluator with the gate's knobs as execution properties.

The knob (components/runtime_params.py: the runtime fields of GateConfig, today
min_accuracy) is written into the eval_config's accuracy threshold before the
stock executor runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow_model_analysis as tfma
from tfx import types
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import json_utils, proto_utils

from components.gate import ACCURACY_CLASS, GateConfig
from components.runtime_params import EVALUATOR_KNOBS, Knob, check_knob
from trainer.features import LABEL_KEY, LABEL_XF


def eval_config(gate: GateConfig) -> tfma.EvalConfig:
    """Accuracy on the raw eval split, gated by the floor and by no regression (overall slice only)."""
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
                    tfma.MetricConfig(
                        class_name=ACCURACY_CLASS,
                        # Gate on the overall slice only; per-class slices are reported.
                        per_slice_thresholds=[
                            tfma.PerSliceMetricThreshold(
                                slicing_specs=[tfma.SlicingSpec()],
                                threshold=tfma.MetricThreshold(
                                    value_threshold=tfma.GenericValueThreshold(
                                        lower_bound={"value": gate.min_accuracy}
                                    ),
                                    change_threshold=tfma.GenericChangeThreshold(
                                        direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                                        # A tiny epsilon so an equal score is not a regression.
                                        absolute={"value": -gate.max_regression - 1e-10},
                                    ),
                                ),
                            )
                        ],
                    ),
                ]
            )
        ],
    )


def with_accuracy_floor(eval_config_json: str, floor: float) -> str:
    """eval_config (JSON) with every lower bound on the gated accuracy metric set to `floor`.

    Covers both the metric's own threshold and its per-slice thresholds.
    """
    cfg = proto_utils.json_to_proto(eval_config_json, tfma.EvalConfig())
    updated = 0
    for spec in cfg.metrics_specs:
        for metric in spec.metrics:
            if metric.class_name != ACCURACY_CLASS:
                continue
            thresholds = [metric.threshold] + [p.threshold for p in metric.per_slice_thresholds]
            for threshold in thresholds:
                if threshold.HasField("value_threshold"):
                    threshold.value_threshold.lower_bound.value = floor
                    updated += 1
    if not updated:
        raise ValueError(f"eval_config has no {ACCURACY_CLASS} value threshold to apply min_accuracy to")
    return proto_utils.proto_to_json(cfg)


# How each gate knob is written into the eval_config (JSON) before TFMA runs.
_APPLY = {"min_accuracy": with_accuracy_floor}
if set(EVALUATOR_KNOBS) - set(_APPLY):
    raise TypeError(
        f"gate runtime parameters without an eval_config rule: {set(EVALUATOR_KNOBS) - set(_APPLY)}"
    )


class RuntimeParamEvaluatorExecutor(evaluator_executor.Executor):
    """The TFMA Evaluator executor that first applies the knob properties to eval_config."""

    def Do(self, input_dict, output_dict, exec_properties):  # noqa: N802 - TFX's name
        props = dict(exec_properties)
        key = standard_component_specs.EVAL_CONFIG_KEY
        for name in EVALUATOR_KNOBS:
            value = props.pop(name, None)
            if value is None:
                continue
            if not props.get(key):
                raise ValueError(f"{name} is set but the Evaluator has no eval_config")
            props[key] = _APPLY[name](props[key], check_knob(name, value))
        return super().Do(input_dict, output_dict, props)


class RuntimeParamEvaluatorSpec(standard_component_specs.EvaluatorSpec):
    PARAMETERS = {
        **standard_component_specs.EvaluatorSpec.PARAMETERS,
        **{
            name: ExecutionParameter(type=spec.ptype, optional=True) for name, spec in EVALUATOR_KNOBS.items()
        },
    }


class RuntimeParamEvaluator(base_component.BaseComponent):
    """The TFX Evaluator (TFMA) with the gate's knobs as execution properties."""

    SPEC_CLASS = RuntimeParamEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(RuntimeParamEvaluatorExecutor)

    def __init__(
        self,
        examples: types.BaseChannel,
        model: types.BaseChannel,
        baseline_model: types.BaseChannel,
        eval_config: tfma.EvalConfig,
        example_splits: Sequence[str],
        knobs: Mapping[str, Knob],
    ):
        spec = RuntimeParamEvaluatorSpec(
            examples=examples,
            model=model,
            baseline_model=baseline_model,
            eval_config=eval_config,
            example_splits=json_utils.dumps(list(example_splits)),
            fairness_indicator_thresholds=json_utils.dumps(None),
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
            **{name: knobs[name] for name in EVALUATOR_KNOBS},
        )
        super().__init__(spec=spec)
