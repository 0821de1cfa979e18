"""The Trainer's machine on Kubeflow / Vertex AI (pipeline/resources.py) and the Beam setting fields."""

from __future__ import annotations

import pytest

from imgpipe.cli.flags import config_from_args
from imgpipe.cli.main import build_parser
from pipeline.beam import BeamConfig, BeamConfigError, BeamSettings, beam_pipeline_args, with_container_image
from pipeline.config import ConfigError, PipelineConfig
from pipeline.resources import ACCELERATOR_TYPES, ResourcesConfig, machine_shape, parse_accelerator


# ------------------------------------------------------------------------ resources
def test_machine_shapes():
    assert (machine_shape("n1-standard-8").cpus, machine_shape("n1-standard-8").memory_gb) == (8, 30.0)
    assert machine_shape("n1-highmem-16").memory_gb == 104.0
    a2 = machine_shape("a2-highgpu-2g")
    assert (a2.cpus, a2.gpu_type, a2.gpus) == (24, "NVIDIA_TESLA_A100", 2)


def test_limits_follow_the_machine_and_accelerator():
    r = ResourcesConfig(trainer_machine_type="N1-Standard-8", trainer_accelerator="nvidia_tesla_t4:2")
    assert (r.trainer_machine_type, r.trainer_accelerator) == ("n1-standard-8", "NVIDIA_TESLA_T4:2")
    assert r.trainer_limits() == {
        "cpu_limit": 8.0,
        "memory_limit": 30.0,
        "accelerator_type": "NVIDIA_TESLA_T4",
        "accelerator_count": 2,
    }
    assert ResourcesConfig().trainer_limits() == {} and not ResourcesConfig().is_set
    gpus_only = ResourcesConfig(trainer_accelerator="NVIDIA_TESLA_V100:8").trainer_limits()
    assert gpus_only == {"accelerator_type": "NVIDIA_TESLA_V100", "accelerator_count": 8}
    assert ResourcesConfig(trainer_machine_type="g2-standard-24", trainer_accelerator="NVIDIA_L4:2").is_set
    assert parse_accelerator("NVIDIA_H100_80GB:8") == ("NVIDIA_H100_80GB", 8)
    assert "NVIDIA_TESLA_T4" in ACCELERATOR_TYPES
    # Any case is accepted and stored in the platform's spelling.
    assert (
        ResourcesConfig(trainer_accelerator=" nvidia_tesla_t4:02 ").trainer_accelerator == "NVIDIA_TESLA_T4:2"
    )


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (
            {"trainer_machine_type": "n1-standard-7"},
            "trainer_machine_type: n1-standard comes in .*n1-standard-8",
        ),
        (
            {"trainer_machine_type": "huge"},
            "trainer_machine_type: unknown machine type 'huge'; known: n1-standard-N",
        ),
        ({"trainer_accelerator": "NVIDIA_TESLA_T4"}, "trainer_accelerator: expected TYPE:COUNT"),
        ({"trainer_accelerator": "TPU_V9:1"}, "trainer_accelerator: unknown accelerator type 'TPU_V9'"),
        # The type is quoted as written, not upper-cased.
        ({"trainer_accelerator": "nvidia_tesla_t5:1"}, "unknown accelerator type 'nvidia_tesla_t5'"),
        ({"trainer_accelerator": "NVIDIA_TESLA_T4:3"}, "NVIDIA_TESLA_T4 is offered in counts 1, 2, 4; got 3"),
        ({"trainer_accelerator": "NVIDIA_TESLA_T4:0"}, "count must be at least 1"),
        (
            {"trainer_machine_type": "e2-standard-8", "trainer_accelerator": "NVIDIA_TESLA_T4:1"},
            "trainer_accelerator: NVIDIA_TESLA_T4 attaches to N1 machine types",
        ),
        (
            {"trainer_machine_type": "a2-highgpu-2g"},
            "trainer_accelerator: a2-highgpu-2g comes with 2 NVIDIA_TESLA_A100; set trainer_accelerator "
            "NVIDIA_TESLA_A100:2",
        ),
        (
            {"trainer_machine_type": "a2-highgpu-2g", "trainer_accelerator": "NVIDIA_TESLA_A100:1"},
            "comes with 2 NVIDIA_TESLA_A100",
        ),
        (
            {"trainer_accelerator": "NVIDIA_L4:1"},
            "NVIDIA_L4 comes built into its machine types; .*g2-standard-4",
        ),
        (
            {"trainer_machine_type": "n1-standard-8", "trainer_accelerator": "NVIDIA_TESLA_A100:1"},
            "NVIDIA_TESLA_A100 needs one of the machine types a2-highgpu-1g",
        ),
    ],
)
def test_bad_resources_are_named(values, match):
    with pytest.raises(ConfigError, match=match):
        PipelineConfig.from_dict(values)


def test_resource_flags_come_from_the_schema():
    args = build_parser().parse_args(
        ["compile", "--image", "i", "--output", "o", "--trainer-machine-type", "n1-standard-8",
         "--trainer-accelerator", "NVIDIA_TESLA_T4:2"]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert cfg.resources == ResourcesConfig(
        trainer_machine_type="n1-standard-8", trainer_accelerator="NVIDIA_TESLA_T4:2"
    )
    # Flat YAML keys work too, and go to their section.
    assert PipelineConfig.from_dict(
        {"trainer_accelerator": "NVIDIA_TESLA_T4:1"}
    ).resources.trainer_accelerator


# --------------------------------------------------------------------- beam settings
def test_beam_settings_are_fields_with_checks():
    cfg = PipelineConfig.from_dict(
        {"beam_runner": "flink", "job_endpoint": "jobs.internal:8099", "environment_type": "loopback"}
    )
    assert cfg.beam.environment_type == "LOOPBACK"
    assert beam_pipeline_args(cfg.beam) == [
        "--runner=PortableRunner",
        "--job_endpoint=jobs.internal:8099",
        "--environment_type=LOOPBACK",
    ]
    for values, match in [
        ({"beam_project": "P"}, "beam_project: 'P' is not a GCP project id"),
        ({"beam_region": "europe"}, "beam_region: 'europe' is not a GCP region"),
        ({"job_endpoint": "localhost"}, "job_endpoint: 'localhost' is not HOST:PORT"),
        ({"job_endpoint": "localhost:70000"}, "job_endpoint: 'localhost:70000' is not HOST:PORT"),
        ({"environment_type": "VM"}, "environment_type: 'VM' is not one of DOCKER, PROCESS"),
        ({"temp_location": "gs://b/t mp"}, "temp_location: .* has white space"),
    ]:
        with pytest.raises(ConfigError, match=match):
            PipelineConfig.from_dict(values)


def test_dataflow_from_fields_and_from_beam_args_alike():
    fields = BeamConfig(
        beam_runner="dataflow",
        beam_project="my-proj-1",
        beam_region="europe-west4",
        temp_location="gs://b/tmp",
    )
    passthrough = BeamConfig(
        beam_runner="dataflow",
        beam_args=("--project=my-proj-1", "--region=europe-west4", "--temp_location=gs://b/tmp"),
    )
    assert BeamSettings.of(fields) == BeamSettings.of(passthrough)
    assert sorted(beam_pipeline_args(fields)) == sorted(beam_pipeline_args(passthrough))
    # The same checks on a value given through --beam-arg.
    bad = BeamConfig(beam_runner="dataflow", beam_args=("--project=Not_A_Project",))
    with pytest.raises(
        BeamConfigError, match="beam_args: --project: 'Not_A_Project' is not a GCP project id"
    ):
        beam_pipeline_args(bad)
    with pytest.raises(BeamConfigError, match="needs a gs:// --temp_location"):
        beam_pipeline_args(fields.model_copy(update={"temp_location": "/tmp/x"}))
    with pytest.raises(BeamConfigError, match="needs --region .*--beam-region"):
        beam_pipeline_args(fields.model_copy(update={"beam_region": ""}))


def test_a_setting_given_both_ways_must_agree():
    same = BeamConfig(beam_runner="dataflow", beam_project="my-proj-1", beam_region="us-central1",
                      temp_location="gs://b/t", beam_args=("--project=my-proj-1", "--experiments=x"))  # fmt: skip
    args = beam_pipeline_args(same)
    assert args.count("--project=my-proj-1") == 1 and args[-1] == "--experiments=x"
    clash = same.model_copy(update={"beam_args": ("--project=other-proj",)})
    with pytest.raises(
        BeamConfigError, match="beam_project is 'my-proj-1' but beam_args has --project=other-proj"
    ):
        beam_pipeline_args(clash)


def test_compiled_portable_runner_defaults_to_the_pipeline_image():
    cfg = with_container_image(BeamConfig(beam_runner="spark", job_endpoint="jobs:8099"), "img:1")
    assert cfg.environment_type == "DOCKER"
    assert BeamSettings.of(cfg).environment_config == "img:1"
    own = with_container_image(
        BeamConfig(beam_runner="spark", job_endpoint="jobs:8099", environment_type="PROCESS"), "i"
    )
    assert own.environment_type == "PROCESS" and "--environment_config=i" not in own.beam_args
