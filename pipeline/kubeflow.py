"""Kubeflow Pipelines v2 / Vertex AI: runtime parameters, compile, submit.

Runtime parameters. TFX 1.16's KubeflowV2DagRunner turns a RuntimeParameter
into a pipeline parameter only when it is a component's *whole* execution
property (step_builder: `isinstance(value, RuntimeParameter)` on each exec
property). One nested inside Trainer.custom_config (a JSON string) or inside
the Evaluator's eval_config (a proto) is serialised as its JSON description and
never substituted. So epochs and learning_rate (which run_fn reads from
custom_config) and min_accuracy (a threshold inside eval_config) cannot be
runtime parameters of the stock Trainer and Evaluator.

The nearest honest solution: the Trainer and Evaluator nodes here are the
stock components with those knobs added as top-level execution properties
(`RuntimeParamTrainer`, `RuntimeParamEvaluator`, same node ids, same inputs
and outputs). Their executors are the stock executors after one step: the
Trainer's merges epochs/learning_rate into custom_config before run_fn sees
it; the Evaluator's writes min_accuracy into eval_config's accuracy threshold.
Each knob is then a real, typed KFP pipeline parameter on Vertex and Kubeflow,
and on LocalDagRunner the same nodes run with plain values.

Compile. `compile_pipeline` builds create_pipeline(config) with those
parameters, compiles it with KubeflowV2DagRunner (pipeline spec schema 2.1),
records each parameter's default in the spec, and writes sorted JSON: two
compiles of the same config give byte-identical files (TFX 1.16 embeds no
timestamp or run id; its labels are the TFX and Python versions).
"""

from __future__ import annotations

import json
import os
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

from pipeline.config import ConfigError, PipelineConfig

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


# ------------------------------------------------------------------------- compile
def _remote(path: str) -> bool:
    return "://" in path


def kubeflow_pipeline_root(config: PipelineConfig, pipeline_root: str | None) -> str:
    """The explicit root, else the config's when its home is remote; ConfigError otherwise."""
    if pipeline_root:
        return pipeline_root
    if _remote(config.home):
        return config.pipeline_root
    raise ConfigError(
        "pipeline_root: compiling for Kubeflow needs --pipeline-root gs://BUCKET/PATH "
        f"(or a remote --home); the home {config.home!r} is local"
    )


def check_remote_paths(config: PipelineConfig, pipeline_root: str) -> None:
    """Kubeflow containers see no local disk: every path must be a remote URI (gs://...)."""
    fields = {"data_dir": config.data_dir, "serving_dir": config.serving_dir, "pipeline_root": pipeline_root}
    if config.weights.lower() not in ("imagenet", "none"):
        fields["weights"] = config.weights
    for field, value in fields.items():
        if not _remote(value):
            raise ConfigError(
                f"{field}: {value!r} is a local path, which Kubeflow containers cannot read; "
                "use a gs:// URI (or --allow-local-paths for a cluster that mounts it)"
            )


def compile_pipeline(
    config: PipelineConfig,
    image: str,
    output: str,
    pipeline_root: str | None = None,
    display_name: str | None = None,
    allow_local_paths: bool = False,
) -> dict[str, Any]:
    """Compile create_pipeline(config) for KFP v2 / Vertex into `output` (PipelineJob JSON)."""
    from tfx import v1 as tfx

    from pipeline.beam import with_container_image
    from pipeline.pipeline import create_pipeline

    if not image:
        raise ConfigError(
            "image: compiling for Kubeflow needs --image (the container built from the Dockerfile)"
        )
    if config.replicas:
        raise ConfigError(
            "replicas: a local testing aid (it splits this machine's CPU); on Kubeflow the Trainer "
            "uses every GPU of the machine it runs on"
        )
    root = kubeflow_pipeline_root(config, pipeline_root)
    if allow_local_paths:
        config = config.resolved()
    else:
        check_remote_paths(config, root)
    config = with_container_image(config, image).validate(check_paths=False)
    params = runtime_parameters(config)
    pipeline = create_pipeline(config, runtime_parameters=params)
    if pipeline.metadata_connection_config is not None:
        raise ConfigError(
            "Kubeflow pipelines use the cluster's ML Metadata: metadata_connection_config must be None"
        )
    # TFX keeps the root in pipeline_info; compile under the Kubeflow root.
    pipeline.pipeline_info.pipeline_root = root
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image, display_name=display_name, use_pipeline_spec_2_1=True
        ),
    )
    job = runner.run(pipeline, parameter_values={n: p.default for n, p in params.items()}, write_out=False)
    _record_defaults(job, params)
    write_json(job, output)
    return job


def _record_defaults(job: dict[str, Any], params: Mapping[str, RuntimeParameter]) -> None:
    """Put each parameter's default and description in the spec itself.

    TFX writes defaults only to runtimeConfig (which Vertex reads); a KFP
    backend given the bare pipelineSpec needs them in root.inputDefinitions.
    """
    definitions = job["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]
    for name, param in params.items():
        definitions[name].update(
            {"defaultValue": param.default, "isOptional": True, "description": param.description}
        )


def write_json(obj: Any, path: str) -> None:
    """Sorted, indented JSON written atomically (the same object always gives the same bytes)."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------- reading a spec file
class SpecError(ValueError):
    """A pipeline spec file is missing, unreadable or not a KFP v2 pipeline."""


def read_pipeline_job(path: str) -> dict[str, Any]:
    """A compiled file as a PipelineJob dict (a bare PipelineSpec is wrapped)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise SpecError(f"pipeline spec not found: {path}") from e
    except json.JSONDecodeError as e:
        raise SpecError(f"pipeline spec {path} is not JSON: {e}") from e
    if isinstance(data, dict) and "pipelineSpec" in data:
        return data
    if isinstance(data, dict) and "root" in data and "deploymentSpec" in data:
        return {"pipelineSpec": data, "runtimeConfig": {}}
    raise SpecError(f"{path} is not a KFP v2 pipeline spec (no pipelineSpec, root or deploymentSpec)")


def pipeline_spec_proto(job: Mapping[str, Any]):
    """The job's pipelineSpec parsed into kfp's PipelineSpec proto (unknown fields are an error)."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    return json_format.ParseDict(job["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())


_PARAMETER_TYPES = {
    "NUMBER_INTEGER": int,
    "INT": int,
    "NUMBER_DOUBLE": float,
    "DOUBLE": float,
    "STRING": str,
    "BOOLEAN": bool,
}


def parameter_types(job: Mapping[str, Any]) -> dict[str, type]:
    """Pipeline parameter name -> Python type, from the spec's root input definitions."""
    params = job["pipelineSpec"].get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return {
        name: _PARAMETER_TYPES.get(p.get("parameterType") or p.get("type"), str) for name, p in params.items()
    }


def parse_parameters(job: Mapping[str, Any], items: Sequence[str] | None) -> dict[str, Any]:
    """`k=v` strings -> typed values for the spec's parameters; SpecError names a bad item."""
    types_ = parameter_types(job)
    out: dict[str, Any] = {}
    for item in items or ():
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SpecError(f"--parameter {item!r}: expected NAME=VALUE")
        if name not in types_:
            known = ", ".join(sorted(types_)) or "none"
            raise SpecError(f"--parameter {name}: the pipeline has no such parameter (it has: {known})")
        if name in out:
            raise SpecError(f"--parameter {name} given twice")
        try:
            if name in KNOBS:
                out[name] = check_knob(name, raw)
            elif types_[name] is bool:
                if raw.lower() not in ("true", "false"):
                    raise ValueError(f"{raw!r} is not true or false")
                out[name] = raw.lower() == "true"
            else:
                out[name] = types_[name](raw)
        except ValueError as e:
            raise SpecError(f"--parameter {name}: {e}") from e
    return out


def pipeline_name(job: Mapping[str, Any]) -> str:
    return job["pipelineSpec"].get("pipelineInfo", {}).get("name", "imgpipe")


# -------------------------------------------------------------------------- submit
def _aiplatform():
    """google.cloud.aiplatform, imported on use (tests replace this function)."""
    from google.cloud import aiplatform

    return aiplatform


def submit(
    spec_path: str,
    project: str,
    region: str,
    parameters: Sequence[str] | None = None,
    service_account: str | None = None,
    display_name: str | None = None,
    enable_caching: bool | None = None,
    wait: bool = False,
) -> dict[str, Any]:
    """Submit a compiled spec to Vertex AI Pipelines; return the job's name and state."""
    job_spec = read_pipeline_job(spec_path)
    pipeline_spec_proto(job_spec)  # fail here, not in the cloud, on a malformed spec
    values = parse_parameters(job_spec, parameters)
    aiplatform = _aiplatform()
    aiplatform.init(project=project, location=region)
    job = aiplatform.PipelineJob(
        display_name=display_name or pipeline_name(job_spec),
        template_path=spec_path,
        parameter_values=values,
        enable_caching=enable_caching,
        project=project,
        location=region,
    )
    job.submit(service_account=service_account)
    if wait:
        job.wait()
    return {
        "job": getattr(job, "resource_name", None),
        "state": str(getattr(job, "state", "")),
        "parameters": values,
        "project": project,
        "region": region,
    }
