"""Trainer and Evaluator whose per-run knobs are top-level execution properties.

TFX 1.16's KubeflowV2DagRunner turns a RuntimeParameter into a pipeline
parameter only when it is a component's *whole* execution property. One nested
inside Trainer.custom_config or the Evaluator's eval_config is serialised as
its description and never substituted. These components are the stock Trainer
and Evaluator with epochs, learning_rate and min_accuracy added as their own
execution properties; their executors are the stock ones after one step that
merges the knobs into custom_config / eval_config. Same node ids, inputs and
outputs; on LocalDagRunner they run with plain values. See pipeline/kubeflow.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow_model_analysis as tfma
from tfx import types
from tfx.components.evaluator import executor as evaluator_executor
from tfx.components.trainer import executor as trainer_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.orchestration import data_types
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import json_utils, proto_utils

from pipeline.config import PipelineConfig

RuntimeParameter = data_types.RuntimeParameter

# The knobs users retune per run: name -> (type, description).
KNOBS: dict[str, tuple[type, str]] = {
    "epochs": (int, "Trainer: epochs of head training"),
    "learning_rate": (float, "Trainer: learning rate of head training"),
    "min_accuracy": (float, "Evaluator: accuracy floor a model must reach to be blessed"),
}
TRAINER_KNOBS = ("epochs", "learning_rate")
EVALUATOR_KNOBS = ("min_accuracy",)
ACCURACY_CLASS = "SparseCategoricalAccuracy"  # the gated metric in pipeline.eval_config

Knob = int | float | RuntimeParameter


# ------------------------------------------------------------------------ knob values
def check_knob(name: str, value: Any) -> int | float:
    """`value` converted to the knob's type; ValueError naming the knob when out of range."""
    if name not in KNOBS:
        raise ValueError(f"unknown runtime parameter {name!r}; known: {', '.join(KNOBS)}")
    ptype = KNOBS[name][0]
    try:
        if ptype is int:
            as_float = float(value)
            if as_float != int(as_float):
                raise ValueError
            out: int | float = int(as_float)
        else:
            out = float(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"runtime parameter {name}: {value!r} is not a valid {ptype.__name__}") from e
    ok = {"epochs": out >= 1, "learning_rate": out > 0, "min_accuracy": 0.0 <= out <= 1.0}[name]
    if not ok:
        rule = {"epochs": ">= 1", "learning_rate": "> 0", "min_accuracy": "in [0, 1]"}[name]
        raise ValueError(f"runtime parameter {name}: {out} must be {rule}")
    return out


def runtime_parameters(config: PipelineConfig) -> dict[str, RuntimeParameter]:
    """One RuntimeParameter per knob, defaulting to the config's value."""
    return {
        name: RuntimeParameter(
            name=name, ptype=ptype, default=ptype(getattr(config, name)), description=description
        )
        for name, (ptype, description) in KNOBS.items()
    }


def knob_values(
    config: PipelineConfig, runtime_params: Mapping[str, RuntimeParameter] | None = None
) -> dict[str, Knob]:
    """Each knob's value for create_pipeline: the RuntimeParameter if given, else the config's value."""
    runtime_params = dict(runtime_params or {})
    unknown = sorted(set(runtime_params) - set(KNOBS))
    if unknown:
        raise ValueError(
            f"no runtime parameter support for {', '.join(unknown)}; supported: {', '.join(KNOBS)}"
        )
    out: dict[str, Knob] = {}
    for name, (ptype, _) in KNOBS.items():
        param = runtime_params.get(name)
        if param is None:
            out[name] = ptype(getattr(config, name))
        elif not isinstance(param, RuntimeParameter) or param.ptype is not ptype:
            raise TypeError(
                f"runtime parameter {name} must be a RuntimeParameter with ptype={ptype.__name__}"
            )
        else:
            out[name] = param
    return out


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


# ------------------------------------------------------------ components and executors
class RuntimeParamTrainerExecutor(trainer_executor.GenericExecutor):
    """GenericExecutor that first merges the epochs/learning_rate properties into custom_config."""

    def Do(self, input_dict, output_dict, exec_properties):  # noqa: N802 - TFX's name
        props = dict(exec_properties)
        custom = json_utils.loads(props.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "null") or {}
        for name in TRAINER_KNOBS:
            value = props.pop(name, None)
            if value is not None:
                custom[name] = check_knob(name, value)
        props[standard_component_specs.CUSTOM_CONFIG_KEY] = json_utils.dumps(custom)
        return super().Do(input_dict, output_dict, props)


class RuntimeParamEvaluatorExecutor(evaluator_executor.Executor):
    """The TFMA Evaluator executor that first applies the min_accuracy property to eval_config."""

    def Do(self, input_dict, output_dict, exec_properties):  # noqa: N802 - TFX's name
        props = dict(exec_properties)
        floor = props.pop("min_accuracy", None)
        if floor is not None:
            key = standard_component_specs.EVAL_CONFIG_KEY
            if not props.get(key):
                raise ValueError("min_accuracy is set but the Evaluator has no eval_config")
            props[key] = with_accuracy_floor(props[key], check_knob("min_accuracy", floor))
        return super().Do(input_dict, output_dict, props)


class RuntimeParamTrainerSpec(standard_component_specs.TrainerSpec):
    PARAMETERS = {
        **standard_component_specs.TrainerSpec.PARAMETERS,
        "epochs": ExecutionParameter(type=int, optional=True),
        "learning_rate": ExecutionParameter(type=float, optional=True),
    }


class RuntimeParamEvaluatorSpec(standard_component_specs.EvaluatorSpec):
    PARAMETERS = {
        **standard_component_specs.EvaluatorSpec.PARAMETERS,
        "min_accuracy": ExecutionParameter(type=float, optional=True),
    }


class RuntimeParamTrainer(base_component.BaseComponent):
    """The TFX Trainer (run_fn, GenericExecutor) with epochs and learning_rate as exec properties."""

    SPEC_CLASS = RuntimeParamTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(RuntimeParamTrainerExecutor)

    def __init__(
        self,
        examples: types.BaseChannel,
        transform_graph: types.BaseChannel,
        schema: types.BaseChannel,
        run_fn: str,
        train_args: Any,
        eval_args: Any,
        custom_config: Mapping[str, Any],
        epochs: Knob,
        learning_rate: Knob,
    ):
        # The knobs live in their own properties only: one source of truth per value.
        rest = {k: v for k, v in custom_config.items() if k not in TRAINER_KNOBS}
        spec = RuntimeParamTrainerSpec(
            examples=examples,
            transform_graph=transform_graph,
            schema=schema,
            train_args=train_args,
            eval_args=eval_args,
            run_fn=run_fn,
            custom_config=json_utils.dumps(rest),
            epochs=epochs,
            learning_rate=learning_rate,
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun),
        )
        super().__init__(spec=spec)


class RuntimeParamEvaluator(base_component.BaseComponent):
    """The TFX Evaluator (TFMA) with the accuracy floor as an exec property."""

    SPEC_CLASS = RuntimeParamEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(RuntimeParamEvaluatorExecutor)

    def __init__(
        self,
        examples: types.BaseChannel,
        model: types.BaseChannel,
        baseline_model: types.BaseChannel,
        eval_config: tfma.EvalConfig,
        example_splits: Sequence[str],
        min_accuracy: Knob,
    ):
        spec = RuntimeParamEvaluatorSpec(
            examples=examples,
            model=model,
            baseline_model=baseline_model,
            eval_config=eval_config,
            example_splits=json_utils.dumps(list(example_splits)),
            fairness_indicator_thresholds=json_utils.dumps(None),
            min_accuracy=min_accuracy,
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
        )
        super().__init__(spec=spec)
