"""Kubeflow Pipelines v2 / Vertex AI: runtime parameters, compile, submit.

Runtime parameters. TFX 1.16's KubeflowV2DagRunner turns a RuntimeParameter
into a pipeline parameter only when it is a component's *whole* execution
property (step_builder: `isinstance(value, RuntimeParameter)` on each exec
property). One nested inside Trainer.custom_config (a JSON string) or inside
the Evaluator's eval_config (a proto) is serialised as its JSON description and
never substituted. So epochs and learning_rate (which run_fn reads from
custom_config) and min_accuracy (a threshold inside eval_config) cannot be
runtime parameters of the stock Trainer and Evaluator.

The nearest honest solution: the Trainer and Evaluator nodes
(components/trainer.py, components/evaluator.py) are the stock components with
those knobs added as top-level execution properties (`RuntimeParamTrainer`,
`GateEvaluator`, same node ids, same inputs and outputs). Their executors are
the stock executors after one step: the Trainer's merges epochs/learning_rate
into custom_config before run_fn sees it; the Evaluator's computes the gate's
floor from min_accuracy (components/gate_decision.py) and writes it into
eval_config's accuracy threshold.
Each knob is then a real, typed KFP pipeline parameter on Vertex and Kubeflow,
and on LocalDagRunner the same nodes run with plain values.

Compile. `compile_pipeline` builds create_pipeline(config) with those
parameters, gives the Trainer step the machine of config.resources (see
`trainer_resource_spec`), compiles it with KubeflowV2DagRunner (pipeline spec schema 2.1),
records each parameter's default in the spec, and writes sorted JSON: two
compiles of the same config give byte-identical files (TFX 1.16 embeds no
timestamp or run id; its labels are the TFX and Python versions).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from tfx.orchestration import data_types

# The runner's module, not `tfx.v1.orchestration.experimental`: `tfx.v1` also imports its
# Google Cloud extensions (google-cloud-aiplatform), which compiling does not use.
from tfx.orchestration.kubeflow.v2.kubeflow_v2_dag_runner import (
    KubeflowV2DagRunner,
    KubeflowV2DagRunnerConfig,
)

from components.runtime_params import KNOBS, check_knob, runtime_parameters
from imgpipe.orchestration import kfp_step
from imgpipe.orchestration.paths import write_atomically
from pipeline.beam import with_container_image
from pipeline.config import ConfigError, PipelineConfig
from pipeline.pipeline import create_pipeline
from trainer.imagenet import connect_problem

RuntimeParameter = data_types.RuntimeParameter
TRAINER_ID = "Trainer"


# ------------------------------------------------------------------------ resources
def trainer_resource_spec(config: PipelineConfig):
    """The Trainer step's container resources (KFP ResourceSpec), or None for the cluster's defaults.

    TFX 1.16's KubeflowV2DagRunner copies a component's `platform_config`, when it is
    a PipelineContainerSpec.ResourceSpec, into that step's executor container in the
    spec's deploymentSpec (`resources: {cpuLimit, memoryLimit, accelerator {type,
    count}}`); Vertex AI Pipelines and KFP schedule the step on a machine that meets
    them. The machine type gives the CPU and memory limits (its vCPUs and GB).
    """
    limits = config.resources.trainer_limits()
    if not limits:
        return None
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec()
    if "cpu_limit" in limits:
        spec.cpu_limit = float(limits["cpu_limit"])
        spec.memory_limit = float(limits["memory_limit"])
    if "accelerator_type" in limits:
        spec.accelerator.type = str(limits["accelerator_type"])
        spec.accelerator.count = int(limits["accelerator_count"])
    return spec


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
    if config.training.weights_kind == "file":
        fields["weights"] = config.training.weights
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
    if not image:
        raise ConfigError(
            "image: compiling for Kubeflow needs --image (the container built from the Dockerfile)"
        )
    if config.replicas:
        raise ConfigError(
            "replicas: a local testing aid (it splits this machine's CPU); on Kubeflow the Trainer "
            "uses every GPU of the machine it runs on"
        )
    if config.metadata or config.metadata_password_file:
        raise ConfigError(
            "metadata: Kubeflow and Vertex AI pipelines record to the cluster's own ML Metadata; "
            "leave metadata and metadata_password_file empty when compiling"
        )
    root = kubeflow_pipeline_root(config, pipeline_root)
    if allow_local_paths:
        config = config.resolved()
    else:
        check_remote_paths(config, root)
    config = config.replace(beam=with_container_image(config.beam, image))
    params = runtime_parameters((config.training, config.gate))
    pipeline = create_pipeline(config, runtime_parameters=params)
    resources = trainer_resource_spec(config)
    if resources is not None:
        [trainer] = [c for c in pipeline.components if c.id == TRAINER_ID]
        trainer.with_platform_config(resources)
    if pipeline.metadata_connection_config is not None:
        raise ConfigError(
            "Kubeflow pipelines use the cluster's ML Metadata: metadata_connection_config must be None"
        )
    # TFX keeps the root in pipeline_info; compile under the Kubeflow root.
    pipeline.pipeline_info.pipeline_root = root
    runner = KubeflowV2DagRunner(
        config=KubeflowV2DagRunnerConfig(
            default_image=image, display_name=display_name, use_pipeline_spec_2_1=True
        ),
    )
    job = runner.run(pipeline, parameter_values={n: p.default for n, p in params.items()}, write_out=False)
    _record_defaults(job, params)
    _diagnose_failures(job, config)
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


def _diagnose_failures(job: dict[str, Any], config: PipelineConfig) -> None:
    """Run each step's executor through imgpipe's step wrapper (orchestration/kfp_step.py): TFX's
    entrypoint with TFX's args, and on a failure the diagnosis `imgpipe run` adds (the damaged
    files or undecodable records behind it) in the step's log. The wrapper gets the step's node
    id and the config as compiled."""
    config_json = json.dumps(config.to_dict(), sort_keys=True)
    for node_id in job["pipelineSpec"]["root"]["dag"]["tasks"]:
        container = _step_executor(job, node_id).get("container")  # none for the Resolver's queries
        if container and container.get("command", [])[-1:] == [kfp_step.TFX_ENTRYPOINT]:
            container["command"] = [*container["command"][:-1], kfp_step.__name__]
            container["args"] = [*kfp_step.step_args(node_id, config_json), *container.get("args", [])]


def write_json(obj: Any, path: str) -> None:
    """Sorted, indented JSON written atomically (the same object always gives the same bytes)."""
    write_atomically(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


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
    except IsADirectoryError as e:
        raise SpecError(f"pipeline spec {path} is a directory: give the file `imgpipe compile` wrote") from e
    except UnicodeDecodeError as e:
        raise SpecError(
            f"pipeline spec {path} is not JSON: not UTF-8 text ({e.reason} at byte {e.start})"
        ) from e
    except OSError as e:
        raise SpecError(f"pipeline spec {path} cannot be read: {e.strerror or e}") from e
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


def _step_executor(job: Mapping[str, Any], task: str) -> dict[str, Any]:
    """The executor of pipeline task `task` in a compiled spec (a container, or a resolver's query)."""
    spec = job["pipelineSpec"]
    component = spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]
    label = spec["components"][component]["executorLabel"]
    return spec["deploymentSpec"]["executors"][label]


def step_container(job: Mapping[str, Any], task: str) -> dict[str, Any]:
    """The executor container of pipeline task `task` in a compiled spec (its image, args, resources)."""
    return _step_executor(job, task)["container"]


def trainer_resources(job: Mapping[str, Any]) -> dict[str, Any]:
    """The Trainer step's container resources as compiled ({} when none were asked for)."""
    return dict(step_container(job, TRAINER_ID).get("resources", {}))


def pipeline_name(job: Mapping[str, Any]) -> str:
    return job["pipelineSpec"].get("pipelineInfo", {}).get("name", "imgpipe")


# -------------------------------------------------------------------------- submit
class Unreachable(Exception):
    """A service cannot be reached from this machine; the message names it and why."""


def _aiplatform(region: str | None = None):
    """google.cloud.aiplatform, imported on use, once Vertex AI's endpoint for `region` takes a
    connection: offline, its client retries for about two minutes before failing (tests
    replace this function)."""
    if region:
        problem = connect_problem(f"{region}-aiplatform.googleapis.com")
        if problem:
            raise Unreachable(f"Vertex AI in {region}: {problem}; check --region and this machine's network")
    from google.cloud import aiplatform

    return aiplatform


def remote_failure(exc: BaseException) -> str | None:
    """One line for an error a cloud client raised (credentials, the network, the service),
    instead of its traceback; None for any other error."""
    if isinstance(exc, Unreachable):
        return str(exc)
    module = type(exc).__module__ or ""
    text = (str(exc).strip().splitlines() or [""])[0][:500]
    if module.startswith("google.auth"):
        return (
            f"no usable Google Cloud credentials ({text}): run `gcloud auth application-default "
            "login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service account key"
        )
    if module.startswith(("google.api_core", "urllib3", "requests", "kfp_server_api", "grpc")):
        return f"the service refused or could not be reached: {type(exc).__name__}: {text}"
    return None


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
    aiplatform = _aiplatform(region)
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
