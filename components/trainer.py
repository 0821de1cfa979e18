"""The Trainer node: TFX's Trainer (run_fn, GenericExecutor) with its knobs as execution properties.

The knobs (components/runtime_params.py: the runtime fields of TrainingConfig)
live in their own properties only, one source of truth per value; the executor
merges them into custom_config, which run_fn parses strictly as a TrainingConfig.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tfx import types
from tfx.components.trainer import executor as trainer_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import json_utils

from components.runtime_params import TRAINER_KNOBS, Knob, check_knob


class RuntimeParamTrainerExecutor(trainer_executor.GenericExecutor):
    """GenericExecutor that first merges the knob properties into custom_config."""

    def Do(self, input_dict, output_dict, exec_properties):  # noqa: N802 - TFX's name
        props = dict(exec_properties)
        key = standard_component_specs.CUSTOM_CONFIG_KEY
        custom = json_utils.loads(props.get(key) or "null") or {}
        for name in TRAINER_KNOBS:
            value = props.pop(name, None)
            if value is not None:
                custom[name] = check_knob(name, value)
        props[key] = json_utils.dumps(custom)
        return super().Do(input_dict, output_dict, props)


class RuntimeParamTrainerSpec(standard_component_specs.TrainerSpec):
    PARAMETERS = {
        **standard_component_specs.TrainerSpec.PARAMETERS,
        **{name: ExecutionParameter(type=spec.ptype, optional=True) for name, spec in TRAINER_KNOBS.items()},
    }


class RuntimeParamTrainer(base_component.BaseComponent):
    """The TFX Trainer with the training knobs as execution properties."""

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
        knobs: Mapping[str, Knob],
    ):
        rest = {k: v for k, v in custom_config.items() if k not in TRAINER_KNOBS}
        spec = RuntimeParamTrainerSpec(
            examples=examples,
            transform_graph=transform_graph,
            schema=schema,
            train_args=train_args,
            eval_args=eval_args,
            run_fn=run_fn,
            custom_config=json_utils.dumps(rest),
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun),
            **{name: knobs[name] for name in TRAINER_KNOBS},
        )
        super().__init__(spec=spec)
