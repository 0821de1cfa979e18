"""Kubeflow/Vertex: the compiled spec, runtime parameters, submit, and the Dockerfile."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import types

import pytest

from pipeline.config import ConfigError, PipelineConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "europe-docker.pkg.dev/proj/repo/imgpipe:test-7"
RUN_FLAGS = [
    "--data", "gs://bucket/data",
    "--home", "gs://bucket/home",
    "--serving-dir", "gs://bucket/serving",
    "--weights", "none",
    "--image-size", "32",
    "--epochs", "7",
    "--learning-rate", "0.02",
    "--min-accuracy", "0.65",
]  # fmt: skip


def _config() -> PipelineConfig:
    return PipelineConfig(
        data_dir="gs://bucket/data",
        home="gs://bucket/home",
        serving_dir="gs://bucket/serving",
        weights="none",
        image_size=32,
        epochs=7,
        learning_rate=0.02,
        min_accuracy=0.65,
    )


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Compile once in this process; returns (spec path, PipelineJob dict)."""
    from imgpipe.orchestration import kubeflow

    out = str(tmp_path_factory.mktemp("kfp") / "pipeline.json")
    job = kubeflow.compile_pipeline(_config(), IMAGE, out)
    return out, job


def _spec(job):
    from imgpipe.orchestration import kubeflow

    return kubeflow.pipeline_spec_proto(job)


# ------------------------------------------------------------------------- the spec
def test_spec_is_a_kfp_pipeline_spec(compiled):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    path, job = compiled
    with open(path, encoding="utf-8") as f:
        on_disk = json.load(f)
    assert on_disk == job
    # TFX writes a PipelineJob; the PipelineSpec proto is inside it. Unknown fields fail the parse.
    spec = json_format.ParseDict(on_disk["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
    assert spec.pipeline_info.name == "imgpipe"
    assert spec.schema_version == "2.1.0"
    assert on_disk["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/home/pipelines/imgpipe"


def _node_of(task: str, node_ids) -> str:
    """The local component a DAG task compiles from (a Resolver compiles to two tasks)."""
    if task in node_ids:
        return task
    owners = [n for n in node_ids if task.startswith(n + "-")]
    assert len(owners) == 1, f"task {task} maps to no single component: {owners}"
    return owners[0]


def test_dag_has_every_local_component_with_the_same_dependencies(compiled):
    from pipeline.pipeline import COMPONENT_IDS, create_pipeline

    local = create_pipeline(_config())
    assert local.metadata_connection_config is None
    expected = {c.id: {u.id for u in c.upstream_nodes} for c in local.components}
    assert set(expected) == set(COMPONENT_IDS)

    tasks = _spec(compiled[1]).root.dag.tasks
    compiled_deps: dict[str, set[str]] = {}
    for name, task in tasks.items():
        node = _node_of(name, expected)
        deps = {_node_of(d, expected) for d in task.dependent_tasks} - {node}
        compiled_deps.setdefault(node, set()).update(deps)
    assert compiled_deps == expected
    # Sanity: the comparison covers the real wiring, not empty sets.
    assert expected["Evaluator"] == {
        "ImportExampleGen",
        "Trainer",
        "latest_blessed_model_resolver",
        "DataGate",
    }
    assert expected["InfraValidator"] == {"ImportExampleGen", "Trainer", "Evaluator"}
    assert expected["Pusher"] == {"Trainer", "Evaluator", "InfraValidator"}
    # The data gate sees the data checks and the blessed model; nothing trains before it passes.
    assert expected["DataGate"] == {
        "ImportExampleGen",
        "StatisticsGen",
        "ExampleValidator",
        "latest_blessed_model_resolver",
    }
    assert "DataGate" in expected["Transform"] and "DataGate" in expected["Trainer"]


def test_every_step_runs_in_the_given_image_with_dotted_user_code(compiled):
    spec = _spec(compiled[1])
    executors = spec.deployment_spec["executors"]
    containers = {name: e["container"] for name, e in executors.items() if "container" in e}
    assert len(containers) == 10  # every component but the Resolver (a metadata query)
    tasks = compiled[1]["pipelineSpec"]["root"]["dag"]["tasks"]
    labels = {compiled[1]["pipelineSpec"]["components"][t["componentRef"]["name"]]["executorLabel"]: node
              for node, t in tasks.items()}  # fmt: skip
    for name, container in containers.items():
        assert container["image"] == IMAGE, name
        # TFX's entrypoint, through the step wrapper that adds the diagnosis to a failure.
        assert list(container["command"]) == ["python", "-m", "imgpipe.orchestration.kfp_step"], name
        args = list(container["args"])
        assert args[:3] == ["--imgpipe-step", labels[name], "--imgpipe-config"], name
        assert PipelineConfig.from_dict(json.loads(args[3])).data_dir == "gs://bucket/data"
    trainer_args = list(containers["Trainer_executor"]["args"])
    assert trainer_args[trainer_args.index("--executor_class_path") + 1] == (
        "components.trainer.RuntimeParamTrainerExecutor"
    )
    for node, executor in (
        ("SchemaGen", "components.schema_gen.ContractSchemaGenExecutor"),
        ("DataGate", "components.data_gate.DataGateExecutor"),
        ("Evaluator", "components.evaluator.GateEvaluatorExecutor"),
        ("InfraValidator", "components.infra_validator.InfraValidatorExecutor"),
    ):
        args = list(containers[f"{node}_executor"]["args"])
        assert args[args.index("--executor_class_path") + 1] == executor
    params = spec.root.dag.tasks["Trainer"].inputs.parameters
    assert params["run_fn"].runtime_value.constant.string_value == "trainer.task.run_fn"
    transform = spec.root.dag.tasks["Transform"].inputs.parameters
    assert transform["preprocessing_fn"].runtime_value.constant.string_value == (
        "trainer.preprocessing.preprocessing_fn"
    )


def test_knobs_are_runtime_parameters_with_the_config_defaults(compiled):
    from kfp.pipeline_spec import pipeline_spec_pb2

    job = compiled[1]
    spec = _spec(job)
    root = spec.root.input_definitions.parameters
    types_ = pipeline_spec_pb2.ParameterType
    assert {n: (root[n].parameter_type, root[n].default_value.number_value) for n in root} == {
        "epochs": (types_.NUMBER_INTEGER, 7),
        "learning_rate": (types_.NUMBER_DOUBLE, 0.02),
        "min_accuracy": (types_.NUMBER_DOUBLE, 0.65),
    }
    assert job["runtimeConfig"]["parameterValues"] == {
        "epochs": 7,
        "learning_rate": 0.02,
        "min_accuracy": 0.65,
    }
    trainer = spec.root.dag.tasks["Trainer"].inputs.parameters
    assert trainer["epochs"].component_input_parameter == "epochs"
    assert trainer["learning_rate"].component_input_parameter == "learning_rate"
    evaluator = spec.root.dag.tasks["Evaluator"].inputs.parameters
    assert evaluator["min_accuracy"].component_input_parameter == "min_accuracy"
    # One source of truth: the knobs are not also baked into the Trainer's custom_config.
    custom = json.loads(trainer["custom_config"].runtime_value.constant.string_value)
    assert "epochs" not in custom and "learning_rate" not in custom
    assert custom["image_size"] == 32 and custom["weights"] == "none"


def test_compile_is_deterministic_across_processes(compiled, tmp_path):
    """The CLI, in a fresh process with another hash seed, writes byte-identical JSON."""
    path, _ = compiled
    out = str(tmp_path / "again.json")
    env = dict(os.environ, PYTHONHASHSEED="12345", TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, "-m", "imgpipe", "compile", "--target", "kubeflow", "--image", IMAGE,
           "--output", out, *RUN_FLAGS]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(path, "rb") as a, open(out, "rb") as b:
        first, second = a.read(), b.read()
    assert first == second
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["sha256"] == hashlib.sha256(second).hexdigest()
    assert result["parameters"] == {"epochs": 7, "learning_rate": 0.02, "min_accuracy": 0.65}


def test_compile_refuses_what_a_cluster_cannot_run(tmp_path):
    from imgpipe.orchestration import kubeflow

    out = str(tmp_path / "x.json")
    with pytest.raises(ConfigError, match="pipeline_root"):
        kubeflow.compile_pipeline(PipelineConfig(data_dir="gs://b/d"), IMAGE, out)
    with pytest.raises(ConfigError, match="data_dir"):
        kubeflow.compile_pipeline(PipelineConfig(data_dir="/local/data", home="gs://b/h"), IMAGE, out)
    with pytest.raises(ConfigError, match="replicas"):
        kubeflow.compile_pipeline(_config().replace(replicas=2), IMAGE, out)
    with pytest.raises(ConfigError, match="--project"):
        kubeflow.compile_pipeline(_config().replace(beam_runner="dataflow"), IMAGE, out)
    assert not os.path.exists(out)


def test_compile_output_that_is_a_directory_is_named_before_compiling(tmp_path, capsys):
    from imgpipe.cli import main as cli

    (tmp_path / "specs").mkdir()
    code = cli.main(["compile", "--image", IMAGE, "--output", str(tmp_path / "specs"), *RUN_FLAGS])
    assert code == 2
    assert f"--output {tmp_path / 'specs'} is a directory: give a file name" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["specs"] and not os.listdir(tmp_path / "specs")  # no temporary file


def test_compile_output_that_cannot_be_written_is_a_failure_not_a_traceback(tmp_path, capsys, monkeypatch):
    from imgpipe.cli import main as cli
    from imgpipe.orchestration import kubeflow

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "p.json"))

    monkeypatch.setattr(kubeflow, "compile_pipeline", full)
    assert cli.main(["compile", "--image", IMAGE, "--output", str(tmp_path / "p.json"), *RUN_FLAGS]) == 1
    err = capsys.readouterr().err
    assert f"--output {tmp_path / 'p.json'}: cannot be written: No space left on device" in err
    assert "Traceback" not in err


def test_pipeline_root_flag_wins(tmp_path):
    from imgpipe.orchestration import kubeflow

    job = kubeflow.compile_pipeline(
        _config(), IMAGE, str(tmp_path / "p.json"), pipeline_root="gs://other/root"
    )
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://other/root"


def test_trainer_machine_and_beam_settings_reach_the_compiled_spec(compiled, tmp_path, capsys):
    """--trainer-machine-type/--trainer-accelerator become the Trainer container's resources;
    the Beam setting flags become the Beam args of every Beam step."""
    from imgpipe.cli import main as cli
    from imgpipe.orchestration import kubeflow

    _, plain = compiled
    assert kubeflow.trainer_resources(plain) == {}  # nothing asked, nothing compiled in
    out = str(tmp_path / "gpu.json")
    code = cli.main(
        ["compile", "--image", IMAGE, "--output", out, *RUN_FLAGS,
         "--trainer-machine-type", "n1-standard-8", "--trainer-accelerator", "NVIDIA_TESLA_T4:2",
         "--beam-runner", "dataflow", "--beam-project", "my-proj-1", "--beam-region", "europe-west4",
         "--temp-location", "gs://bucket/tmp"]
    )  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    job = kubeflow.read_pipeline_job(out)
    spec = _spec(job)  # still a valid PipelineSpec
    trainer = kubeflow.trainer_resources(job)
    assert trainer == {
        "cpuLimit": 8.0,
        "memoryLimit": 30.0,
        "accelerator": {"type": "NVIDIA_TESLA_T4", "count": "2"},
    }
    assert result["trainer_resources"] == trainer
    executors = spec.deployment_spec.fields["executors"].struct_value.fields
    with_resources = [
        name
        for name, e in executors.items()
        if "resources" in e.struct_value.fields["container"].struct_value.fields
    ]
    assert with_resources == [job["pipelineSpec"]["components"]["Trainer"]["executorLabel"]]
    args = kubeflow.step_container(job, "Transform")["args"]
    for flag in ("--runner=DataflowRunner", "--project=my-proj-1", "--region=europe-west4",
                 "--temp_location=gs://bucket/tmp", f"--sdk_container_image={IMAGE}"):  # fmt: skip
        assert flag in args, (flag, args)


def test_compile_refuses_a_local_metadata_store(tmp_path):
    from imgpipe.orchestration import kubeflow

    with pytest.raises(ConfigError, match="metadata: Kubeflow and Vertex AI pipelines record to the cluster"):
        kubeflow.compile_pipeline(
            _config().replace(metadata="postgresql://ml@db/mlmd"), IMAGE, str(tmp_path / "x.json")
        )


# ------------------------------------------------------------ the knob executors
def test_trainer_executor_puts_the_knobs_into_custom_config(monkeypatch):
    from tfx.components.trainer import executor as trainer_executor

    from components import trainer as trainer_component

    seen = {}
    monkeypatch.setattr(trainer_executor.GenericExecutor, "Do", lambda self, i, o, props: seen.update(props))
    props = {
        "custom_config": json.dumps({"batch_size": 8, "image_size": 32}),
        "epochs": 12.0,
        "learning_rate": 0.05,
    }
    trainer_component.RuntimeParamTrainerExecutor().Do({}, {}, props)
    assert "epochs" not in seen and "learning_rate" not in seen
    custom = json.loads(seen["custom_config"])
    assert custom == {"batch_size": 8, "image_size": 32, "epochs": 12, "learning_rate": 0.05}
    assert isinstance(custom["epochs"], int)
    with pytest.raises(ValueError, match="epochs: 0: Input should be greater than or equal to 1"):
        trainer_component.RuntimeParamTrainerExecutor().Do({}, {}, dict(props, epochs=0))


def _write_records(path, count: int) -> None:
    import numpy as np
    import tensorflow as tf

    from tests import helpers
    from trainer.features import IMAGE_KEY, LABEL_KEY

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(count):
            image = helpers.encode_image(rng.integers(0, 256, (8, 8, 3), np.uint8), "PNG")
            feature = {
                IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                LABEL_KEY: tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[b"cat" if i % 2 else b"dog"])
                ),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def test_a_failing_step_names_the_damaged_file_and_fails_with_its_own_error(tmp_path):
    """A compiled step run as its container runs it (its command and args, with the executor input
    KFP puts in place of {{$}}): ImportExampleGen on a train file cut short fails with Beam's
    error, which names no file. The step's log names it, as `imgpipe run` and Airflow do, and
    the step fails with the executor's own error."""
    from imgpipe.orchestration import kubeflow

    data = tmp_path / "data"
    _write_records(data / "train" / "part-0.tfrecord", 40)
    _write_records(data / "eval" / "part-0.tfrecord", 10)
    damaged = data / "train" / "part-0.tfrecord"
    # 40 records of one size (PNGs of noise): cut after 20 of them and 5 bytes of the next.
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2 + 5])
    cfg = PipelineConfig(
        data_dir=str(data), home=str(tmp_path / "home"), serving_dir=str(tmp_path / "serving"), weights="none"
    )
    job = kubeflow.compile_pipeline(
        cfg,
        IMAGE,
        str(tmp_path / "pipeline.json"),
        pipeline_root=str(tmp_path / "root"),
        allow_local_paths=True,
    )
    spec = job["pipelineSpec"]
    task = spec["root"]["dag"]["tasks"]["ImportExampleGen"]
    outputs = spec["components"][task["componentRef"]["name"]]["outputDefinitions"]["artifacts"]
    executor_input = {
        "inputs": {
            "parameterValues": {
                k: v["runtimeValue"]["constant"] for k, v in task["inputs"]["parameters"].items()
            }
        },
        "outputs": {
            "artifacts": {
                "examples": {
                    "artifacts": [
                        {
                            "name": "examples",
                            "type": outputs["examples"]["artifactType"],
                            "uri": str(tmp_path / "out" / "examples"),
                            "metadata": {},
                        }
                    ]
                }
            },
            "outputFile": str(tmp_path / "out" / "executor_output.json"),
        },
    }
    container = kubeflow.step_container(job, "ImportExampleGen")
    command = [sys.executable if part == "python" else part for part in container["command"]]
    args = [json.dumps(executor_input) if arg == "{{$}}" else arg for arg in container["args"]]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(command + args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert done.returncode != 0
    assert "ImportExampleGen failed: " in done.stderr, done.stderr[-3000:]
    heading = "damaged TFRecord files (write them again, e.g. `imgpipe ingest`):"
    assert f"{heading}\n  {damaged}: 5 bytes after its 20 good records are not a whole record" in done.stderr
    # Then the executor's own error, with its traceback: the step fails as it would have.
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: Not a valid TFRecord."), done.stderr[-2000:]
    assert done.stderr.index(heading) < done.stderr.rindex("Traceback (most recent call last)")
    assert not (tmp_path / "out" / "executor_output.json").exists()


def test_a_step_compiled_without_the_wrappers_arguments_says_so(capsys):
    from imgpipe.orchestration import kfp_step

    with pytest.raises(SystemExit) as stopped:
        kfp_step.main(["--executor_class_path", "x.Y"])
    assert stopped.value.code == 2
    assert "expected --imgpipe-step VALUE before TFX's arguments" in capsys.readouterr().err


def test_prepush_validation_runs_in_the_pipeline_image_before_the_pusher(compiled):
    """The InfraValidator compiles like any step (its server is a subprocess: no Docker in Docker)."""
    spec = _spec(compiled[1])
    task = spec.root.dag.tasks["InfraValidator"]
    params = task.inputs.parameters
    assert json.loads(params["prepush_config"].runtime_value.constant.string_value) == (
        _config().prepush.to_dict()
    )
    assert params["model_name"].runtime_value.constant.string_value == "imgpipe"
    producers = {k: a.task_output_artifact.producer_task for k, a in task.inputs.artifacts.items()}
    assert producers == {"model": "Trainer", "examples": "ImportExampleGen", "model_blessing": "Evaluator"}
    pusher = spec.root.dag.tasks["Pusher"].inputs.artifacts
    assert pusher["infra_blessing"].task_output_artifact.producer_task == "InfraValidator"
    assert pusher["model_blessing"].task_output_artifact.producer_task == "Evaluator"


def test_create_pipeline_takes_plain_values_for_local_runs():
    from pipeline.pipeline import create_pipeline

    nodes = {c.id: c for c in create_pipeline(_config()).components}
    assert nodes["Trainer"].exec_properties["epochs"] == 7
    assert nodes["Trainer"].exec_properties["learning_rate"] == 0.02
    assert nodes["Evaluator"].exec_properties["min_accuracy"] == 0.65
    # The gate's other settings travel as one property; the data gate's switch is its own.
    assert json.loads(nodes["Evaluator"].exec_properties["gate_config"]) == {
        "metric": "auto",
        "majority_margin": 0.05,
        "significance": 0.05,
        "min_class_recall": 0.05,
        "min_class_precision": 0.0,
        "max_regression": 0.0,
        "bless_without_comparison": False,
        "eval_batch_size": 128,
        "eval_graph_optimization": "auto",
    }
    assert nodes["DataGate"].exec_properties["allow_anomalies"] == 0
    allowed = {c.id: c for c in create_pipeline(_config().replace(allow_anomalies=True)).components}
    assert allowed["DataGate"].exec_properties["allow_anomalies"] == 1
    from tfx.orchestration.data_types import RuntimeParameter

    with pytest.raises(ValueError, match="no runtime parameter support for batch_size"):
        create_pipeline(_config(), runtime_parameters={"batch_size": RuntimeParameter(
            name="batch_size", ptype=int)})  # fmt: skip


# --------------------------------------------------------------------------- submit
class FakeAiplatform(types.SimpleNamespace):
    """Records what `imgpipe submit` asks of google.cloud.aiplatform."""

    def __init__(self):
        super().__init__(calls=[])
        fake = self

        class PipelineJob:
            def __init__(self, **kwargs):
                fake.calls.append(("PipelineJob", kwargs))
                self.resource_name = "projects/p/locations/r/pipelineJobs/imgpipe-1"
                self.state = "PIPELINE_STATE_PENDING"

            def submit(self, **kwargs):
                fake.calls.append(("submit", kwargs))

        self.PipelineJob = PipelineJob

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))


def test_submit_sends_the_spec_and_typed_parameters(compiled, monkeypatch, capsys):
    from imgpipe.cli import main as cli
    from imgpipe.orchestration import kubeflow

    fake = FakeAiplatform()
    monkeypatch.setattr(kubeflow, "_aiplatform", lambda region=None: fake)
    path = compiled[0]
    code = cli.main(["submit", "--project", "p", "--region", "europe-west4", "--spec", path,
                     "--parameter", "epochs=9", "--parameter", "min_accuracy=0.8",
                     "--service-account", "runner@p.iam.gserviceaccount.com"])  # fmt: skip
    assert code == 0
    assert fake.calls[0] == ("init", {"project": "p", "location": "europe-west4"})
    kind, job = fake.calls[1]
    assert kind == "PipelineJob"
    assert job["template_path"] == path
    assert job["parameter_values"] == {"epochs": 9, "min_accuracy": 0.8}
    assert isinstance(job["parameter_values"]["epochs"], int)
    assert job["display_name"] == "imgpipe"
    assert fake.calls[2] == ("submit", {"service_account": "runner@p.iam.gserviceaccount.com"})
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["job"] == "projects/p/locations/r/pipelineJobs/imgpipe-1"


@pytest.mark.parametrize(
    "parameter, message",
    [
        ("epochs=many", "valid integer"),
        ("epochs=2.5", "valid integer"),
        ("learning_rate=-1", "greater than 0"),
        # The config's own rules, which a bare type check skipped: the Trainer refused them mid-run.
        ("learning_rate=inf", "finite number"),
        ("epochs=99999999999999999999", "at most 9223372036854775807"),
        ("batch_size=8", "no such parameter (it has: epochs, learning_rate, min_accuracy)"),
        ("epochs", "expected NAME=VALUE"),
    ],
)
def test_submit_rejects_bad_parameters_before_calling_vertex(
    compiled, monkeypatch, capsys, parameter, message
):
    from imgpipe.cli import main as cli
    from imgpipe.orchestration import kubeflow

    fake = FakeAiplatform()
    monkeypatch.setattr(kubeflow, "_aiplatform", lambda region=None: fake)
    code = cli.main(
        ["submit", "--project", "p", "--region", "r", "--spec", compiled[0], "--parameter", parameter]
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert fake.calls == []


def test_submit_needs_a_real_spec(tmp_path, monkeypatch, capsys):
    from imgpipe.cli import main as cli
    from imgpipe.orchestration import kubeflow

    monkeypatch.setattr(kubeflow, "_aiplatform", lambda region=None: pytest.fail("must not reach Vertex"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    assert cli.main(["submit", "--project", "p", "--region", "r", "--spec", str(bad)]) == 2
    assert "not a KFP v2 pipeline spec" in capsys.readouterr().err
    assert (
        cli.main(["submit", "--project", "p", "--region", "r", "--spec", str(tmp_path / "missing.json")]) == 2
    )
    # A directory (was a traceback) or a binary file (named no file): one line naming it.
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n")
    for spec, says in ((tmp_path, "is a directory"), (binary, "is not JSON: not UTF-8 text")):
        capsys.readouterr()
        assert cli.main(["submit", "--project", "p", "--region", "r", "--spec", str(spec)]) == 2
        err = capsys.readouterr().err
        assert f"pipeline spec {spec} {says}" in err and "Traceback" not in err, err
        assert cli.main(["schedule", "--runner", "kfp", "--cron", "0 3 * * *", "--spec", str(spec)]) == 2
        err = capsys.readouterr().err
        assert f"pipeline spec {spec} {says}" in err and "cannot write the schedule" not in err, err


def test_submit_without_credentials_or_network_says_so_in_one_line(compiled, monkeypatch, capsys):
    """Were tracebacks: google.auth's DefaultCredentialsError, or ~2 minutes of retries offline."""
    from google.auth.exceptions import DefaultCredentialsError

    from imgpipe.cli import main as cli
    from imgpipe.orchestration import kubeflow

    argv = ["submit", "--project", "p", "--region", "europe-west4", "--spec", compiled[0]]
    fake = FakeAiplatform()

    def no_credentials(**kwargs):
        raise DefaultCredentialsError("Your default credentials were not found.")

    fake.init = no_credentials
    monkeypatch.setattr(kubeflow, "_aiplatform", lambda region=None: fake)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert (
        "not submitted: no usable Google Cloud credentials (Your default credentials were not found.)" in err
    )
    assert "gcloud auth application-default login" in err and "Traceback" not in err

    # Offline: the region's endpoint is tried before the client (which retries for minutes).
    monkeypatch.undo()
    asked = []
    monkeypatch.setattr(
        kubeflow,
        "connect_problem",
        lambda host, port=443: asked.append((host, port)) or f"{host} cannot be reached (x)",
    )
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert asked == [("europe-west4-aiplatform.googleapis.com", 443)]
    assert (
        "not submitted: Vertex AI in europe-west4: europe-west4-aiplatform.googleapis.com cannot be reached"
        in err
    )
    assert cli.main(["submit", "--project", " ", "--region", "r", "--spec", compiled[0]]) == 2
    assert "--project is empty" in capsys.readouterr().err


def test_remote_failure_is_one_line_for_cloud_clients_only():
    from google.api_core.exceptions import ServiceUnavailable

    from imgpipe.orchestration.kubeflow import remote_failure

    message = remote_failure(
        ServiceUnavailable("503 errors resolving us-central1-aiplatform.googleapis.com\nmore")
    )
    assert message == (
        "the service refused or could not be reached: ServiceUnavailable: "
        "503 503 errors resolving us-central1-aiplatform.googleapis.com"
    )
    assert remote_failure(ValueError("ours")) is None and remote_failure(KeyError("x")) is None


# ------------------------------------------------------------------------ Dockerfile
def _dockerfile_instructions() -> list[tuple[str, str]]:
    with open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8") as f:
        text = f.read()
    logical = re.sub(r"\\\n", " ", text)  # join continuation lines
    out = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _setup_py() -> tuple[list[str], list[str]]:
    """INSTALL_REQUIRES and packages= from setup.py, read without running it."""
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    requires, packages = None, None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            names = {getattr(t, "id", "") for t in node.targets}
            if "INSTALL_REQUIRES" in names:
                requires = ast.literal_eval(node.value)
            if "PACKAGES" in names:
                packages = ast.literal_eval(node.value)
    assert requires and packages
    return requires, packages


def _lock() -> dict[str, str]:
    pins = {}
    with open(os.path.join(ROOT, "requirements.lock"), encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
            if m:
                pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def test_dockerfile_installs_the_package_with_the_locked_pins():
    from packaging.requirements import Requirement

    instructions = _dockerfile_instructions()
    requires, packages = _setup_py()
    lock = _lock()

    # Base image: TFX's own image at the TFX version setup.py pins.
    tfx_pin = next(str(r.specifier) for r in map(Requirement, requires) if r.name == "tfx")
    assert tfx_pin.startswith("==")
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert froms == [f"gcr.io/tfx-oss-public/tfx:{tfx_pin[2:]}"]

    # Everything setup.py needs is copied in, with the lock.
    copied = set()
    for word, rest in instructions:
        if word == "COPY":
            copied.update(p.rstrip("/") for p in shlex.split(rest)[:-1])
    top_level = {p.split(".")[0] for p in packages}
    assert {"setup.py", "requirements.lock", *top_level} <= copied

    # One pip install: the package itself (not editable), constrained by the lock.
    installs = [rest for word, rest in instructions if word == "RUN" and "pip install" in rest]
    assert len(installs) == 1
    tokens = shlex.split(installs[0].split("&&")[0])
    assert tokens[:4] == ["python", "-m", "pip", "install"]
    args = tokens[4:]
    assert args[args.index("-c") + 1] == "requirements.lock"
    positional = [a for a in args if not a.startswith("-") and a != "requirements.lock"]
    assert positional == ["."]
    assert not {"-e", "--editable", "--no-deps", "-r"} & set(args)

    # The lock holds every setup.py requirement at a version setup.py accepts, so the
    # constrained install gives exactly setup.py's pins.
    for req in map(Requirement, requires):
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in lock, f"{req.name} is not in requirements.lock"
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"lock {name}=={lock[name]} violates {req}"
        )

    # Keras 2 for TFT/TFMA inside the containers (they start TFX's entrypoint, not the CLI).
    envs = " ".join(rest for word, rest in instructions if word == "ENV")
    assert "TF_USE_LEGACY_KERAS=1" in envs


def test_dockerignore_keeps_the_build_inputs():
    _, packages = _setup_py()
    with open(os.path.join(ROOT, ".dockerignore"), encoding="utf-8") as f:
        ignored = {line.strip().rstrip("/") for line in f if line.strip() and not line.startswith("#")}
    assert {".venv", ".git"} <= ignored
    assert not ({"setup.py", "requirements.lock", *{p.split(".")[0] for p in packages}} & ignored)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--pipeline-name", "Pets_Prod"], "pipeline_name (--pipeline-name): 'Pets_Prod' cannot name"),
        (["--pipeline-name", "pets.prod"], "(e.g. 'pets-prod')"),
        (["--data", ""], "data_dir (--data): required"),
    ],
)
def test_compile_names_the_setting_tfx_would_refuse_before_loading_it(tmp_path, capsys, flags, message):
    """TFX refused such a name after loading (~10 s) with '%' in place of the name and no setting
    named; a missing data dir was called a local path."""
    from imgpipe.cli import main as cli

    assert (
        cli.main(["compile", "--image", IMAGE, "--output", str(tmp_path / "p.json"), *RUN_FLAGS, *flags]) == 2
    )
    err = capsys.readouterr().err
    assert message in err and "%" not in err
    assert not (tmp_path / "p.json").exists()
