"""The Trainer node: TFX's Trainer (run_fn, GenericExecutor) with its knobs as execution properties.

The knobs (components/runtime_params.py: the runtime fields of TrainingConfig)
live in their own properties only, one source of truth per value; the executor
merges them into custom_config, which run_fn parses strictly as a TrainingConfig.

`weights_digest` (optional): the sha256 of the backbone's weights file as the run
found it. An execution property, it keys TFX's cache, so a file changed at the
same path trains again instead of reusing the model of the old bytes; the executor
checks the file still has it before training.

`ingest_report` (optional): the path of the data's ingest_report.json, passed to run_fn in
custom_config (trainer.config.INGEST_REPORT_CONFIG): the head's validation slice and folds keep
each of its sets of near-copies whole (trainer/image_ids.py).
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
from trainer import image_ids
from trainer.config import INGEST_REPORT_CONFIG

WEIGHTS_DIGEST_KEY = "weights_digest"
INGEST_REPORT_KEY = image_ids.INGEST_REPORT_KEY


class WeightsChanged(RuntimeError):
    """The weights file is not the one the run started with."""


class RuntimeParamTrainerExecutor(trainer_executor.GenericExecutor):
    """GenericExecutor that first merges the knob properties into custom_config."""

    def Do(self, input_dict, output_dict, exec_properties):  # noqa: N802 - TFX's name
        props = dict(exec_properties)
        key = standard_component_specs.CUSTOM_CONFIG_KEY
        custom = json_utils.loads(props.get(key) or "null") or {}
        digest = props.pop(WEIGHTS_DIGEST_KEY, None)
        if digest:
            _check_weights(custom.get("weights", ""), digest)
        report = props.pop(INGEST_REPORT_KEY, None)
        if report:
            custom[INGEST_REPORT_CONFIG] = report
        for name in TRAINER_KNOBS:
            value = props.pop(name, None)
            if value is not None:
                custom[name] = check_knob(name, value)
        props[key] = json_utils.dumps(custom)
        return super().Do(input_dict, output_dict, props)


def _check_weights(path: str, digest: str) -> None:
    from trainer.model import weights_digest

    found = weights_digest(path)
    if found != digest:
        raise WeightsChanged(
            f"weights: {path} changed since this run started (sha256 {found[:12]}..., not {digest[:12]}...): "
            "the Trainer does not train on a file other than the one the run was keyed by; run again"
        )


class RuntimeParamTrainerSpec(standard_component_specs.TrainerSpec):
    PARAMETERS = {
        **standard_component_specs.TrainerSpec.PARAMETERS,
        WEIGHTS_DIGEST_KEY: ExecutionParameter(type=str, optional=True),
        INGEST_REPORT_KEY: ExecutionParameter(type=str, optional=True),
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
        weights_digest: str | None = None,
        ingest_report: str | None = None,
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
            **({WEIGHTS_DIGEST_KEY: weights_digest} if weights_digest else {}),
            **({INGEST_REPORT_KEY: ingest_report} if ingest_report else {}),
        )
        super().__init__(spec=spec)
