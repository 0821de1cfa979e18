"""Beam pipeline arguments for each supported runner.

`config.beam_runner` picks the runner; the runner's settings are fields of
BeamConfig (`beam_project`, `beam_region`, `temp_location`, `job_endpoint`,
`environment_type`: each a flag and a YAML key, checked when the config is
built), and `config.beam_args` carries any other Beam flag, passed through
verbatim (a setting may also come that way, as ``--project=...``; given both
ways, the two must agree). `beam_pipeline_args(config)` turns them into the
argument list TFX hands to every Beam-based component, and fails early,
naming the missing flag, when a runner lacks a setting it cannot work without.

    direct        DirectRunner, in memory, one worker (the default; tests, demo)
    multiprocess  DirectRunner with one worker process per CPU (or beam_workers)
                  (both: Beam's Python runner, never Prism; pipeline/local_beam.py)
    dataflow      Google Cloud Dataflow: project, region, temp_location (gs://)
                  required; --sdk_container_image defaults to the pipeline image
    flink, spark  Beam's PortableRunner against a job server: job_endpoint
                  required; environment_type DOCKER (with the pipeline image),
                  PROCESS, EXTERNAL or LOOPBACK
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from trainer.config import ConfigError, Settings

BeamRunner = Literal["direct", "multiprocess", "dataflow", "flink", "spark"]
BEAM_RUNNERS: tuple[str, ...] = BeamRunner.__args__

# The --runner of direct and multiprocess: Beam's DirectRunner without its Prism attempt.
LOCAL_RUNNER = "pipeline.local_beam.DirectRunner"

# Beam flags that carry a runner's settings; read from config.beam_args.
SETTING_FLAGS = (
    "project",
    "region",
    "temp_location",
    "job_endpoint",
    "environment_type",
    "environment_config",
    "sdk_container_image",
)
ENVIRONMENT_TYPES = ("DOCKER", "PROCESS", "EXTERNAL", "LOOPBACK")
PORTABLE_RUNNERS = ("flink", "spark")

_PROJECT = re.compile(r"^([a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_ENDPOINT = re.compile(r"^[A-Za-z0-9.-]+:[0-9]{1,5}$|^\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}$")


# ------------------------------------------------------------ one check per setting
# Each takes a non-empty value and returns it (normalised) or raises ValueError. The
# same checks apply to a field and to the same setting given in beam_args.
def check_project(value: str) -> str:
    if not _PROJECT.match(value):
        raise ValueError(f"{value!r} is not a GCP project id (6-30 of a-z, 0-9, -; starting with a letter)")
    return value


def check_region(value: str) -> str:
    if not _REGION.match(value):
        raise ValueError(f"{value!r} is not a GCP region such as europe-west4 or us-central1")
    return value


def check_temp_location(value: str) -> str:
    if any(c.isspace() for c in value):
        raise ValueError(f"{value!r} has white space")
    return value


def check_job_endpoint(value: str) -> str:
    if not _ENDPOINT.match(value) or not 0 < int(value.rpartition(":")[2]) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT of a Beam job server (e.g. localhost:8099)")
    return value


def check_environment_type(value: str) -> str:
    if value.upper() not in ENVIRONMENT_TYPES:
        raise ValueError(f"{value!r} is not one of {', '.join(ENVIRONMENT_TYPES)}")
    return value.upper()


# field name -> (Beam flag, check)
SETTING_FIELDS: dict[str, tuple[str, Callable[[str], str]]] = {
    "beam_project": ("project", check_project),
    "beam_region": ("region", check_region),
    "temp_location": ("temp_location", check_temp_location),
    "job_endpoint": ("job_endpoint", check_job_endpoint),
    "environment_type": ("environment_type", check_environment_type),
}


class BeamConfig(Settings):
    """Apache Beam: the runner of the data work (ExampleGen, StatisticsGen, Transform, Evaluator)."""

    beam_runner: BeamRunner = Field(
        "direct", description="runner of the data work: " + " | ".join(BEAM_RUNNERS)
    )
    beam_workers: int = Field(0, ge=0, description="workers for the multiprocess runner (0: one per CPU)")
    beam_project: str = Field("", description="GCP project of the Dataflow jobs (dataflow)")
    beam_region: str = Field("", description="GCP region of the Dataflow jobs, e.g. europe-west4 (dataflow)")
    temp_location: str = Field("", description="temp/staging dir of the Beam jobs; gs:// for dataflow")
    job_endpoint: str = Field("", description="Beam job server HOST:PORT (flink, spark)")
    environment_type: str = Field(
        "",
        description="SDK harness of portable runners: DOCKER | PROCESS | EXTERNAL | LOOPBACK "
        "(flink, spark; `imgpipe compile` defaults to DOCKER with the pipeline image)",
    )
    beam_args: tuple[str, ...] = Field(
        (),
        description="extra Beam pipeline argument, verbatim (repeatable); as it starts with '-', join it "
        "to the flag with '=': --beam-arg=--direct_num_workers=2",
        json_schema_extra={"flag": "--beam-arg"},
    )

    @field_validator(*SETTING_FIELDS)
    @classmethod
    def _setting(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        return SETTING_FIELDS[info.field_name][1](value) if value else value


class BeamConfigError(ConfigError):
    """The Beam runner is missing a setting or has a conflicting one; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class BeamSettings:
    """The runner settings found in config.beam_args (None when not given).

    Both spellings
    ``--flag=value`` and ``--flag value`` are understood.
    """

    project: str | None = None
    region: str | None = None
    temp_location: str | None = None
    job_endpoint: str | None = None
    environment_type: str | None = None
    environment_config: str | None = None
    sdk_container_image: str | None = None

    @classmethod
    def from_args(cls, args: Sequence[str]) -> BeamSettings:
        return cls(**{name: flag_value(args, name) for name in SETTING_FLAGS})

    @classmethod
    def of(cls, config: BeamConfig) -> BeamSettings:
        """The settings of `config`: its fields, and the same flags found in beam_args.

        Raises BeamConfigError when a setting given both ways disagrees, or when a
        value in beam_args fails the check its field has.
        """
        values = dataclasses.asdict(cls.from_args(config.beam_args))
        for field, (flag, check) in SETTING_FIELDS.items():
            given = values[flag]
            if given is not None:
                try:
                    given = values[flag] = check(given)
                except ValueError as e:
                    raise BeamConfigError(f"beam_args: --{flag}: {e}") from None
            own = getattr(config, field)
            if own and given is not None and given != own:
                raise BeamConfigError(
                    f"{field} is {own!r} but beam_args has --{flag}={given}; give it one way"
                )
            if own:
                values[flag] = own
        return cls(**values)


def flag_value(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name`` in a Beam argument list (the last one wins), else None."""
    value = None
    args = list(args)
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}":
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise BeamConfigError(f"beam_args: --{name} has no value")
            value = args[i + 1]
    return value


def _has_flag(args: Sequence[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args)


def _need(value: str | None, runner: str, flag: str, example: str) -> str:
    if not value:
        raise BeamConfigError(
            f"beam_runner {runner} needs --{flag} (the flag --{_field_of(flag).replace('_', '-')} "
            f"{example}, or --beam-arg=--{flag}={example})"
        )
    return value


def _field_of(flag: str) -> str:
    return next(field for field, (f, _) in SETTING_FIELDS.items() if f == flag)


def _setting_args(config: BeamConfig) -> list[str]:
    """--flag=value for each setting field that is set and not already in beam_args."""
    return [
        f"--{flag}={getattr(config, field)}"
        for field, (flag, _) in SETTING_FIELDS.items()
        if getattr(config, field) and not _has_flag(config.beam_args, flag)
    ]


# Imported first by each local worker process (Beam's --beam_plugin): TensorFlow's import there
# without its plugin-registration errors (imgpipe/beam_worker_plugin.py).
WORKER_PLUGIN = "imgpipe.beam_worker_plugin"


def beam_pipeline_args(config: BeamConfig) -> list[str]:
    """The `beam_pipeline_args` for config.beam_runner: runner flags, the setting fields, then beam_args.

    Raises BeamConfigError naming the missing or conflicting flag.
    """
    runner = config.beam_runner
    extra = list(config.beam_args)
    if _has_flag(extra, "runner"):
        raise BeamConfigError(
            "beam_args: do not pass --runner; choose the runner with --beam-runner "
            "(direct | multiprocess | dataflow | flink | spark)"
        )
    settings = BeamSettings.of(config)
    if runner == "direct":
        args = [f"--runner={LOCAL_RUNNER}", "--direct_running_mode=in_memory", "--direct_num_workers=1"]
    elif runner == "multiprocess":
        workers = config.beam_workers or (os.cpu_count() or 1)
        args = [
            f"--runner={LOCAL_RUNNER}",
            "--direct_running_mode=multi_processing",
            f"--direct_num_workers={workers}",
            f"--beam_plugin={WORKER_PLUGIN}",
        ]
    elif runner == "dataflow":
        _need(settings.project, runner, "project", "my-gcp-project")
        _need(settings.region, runner, "region", "us-central1")
        temp = _need(settings.temp_location, runner, "temp_location", "gs://my-bucket/tmp")
        if not temp.startswith("gs://"):
            raise BeamConfigError(f"beam_runner dataflow needs a gs:// --temp_location, got {temp!r}")
        args = ["--runner=DataflowRunner"]
        if config.beam_workers:
            args.append(f"--max_num_workers={config.beam_workers}")
    elif runner in PORTABLE_RUNNERS:
        _need(settings.job_endpoint, runner, "job_endpoint", "localhost:8099")
        env = settings.environment_type
        if env is None:
            raise BeamConfigError(
                f"beam_runner {runner} needs --environment_type ({' | '.join(ENVIRONMENT_TYPES)}); "
                "`imgpipe compile` sets DOCKER with the pipeline image"
            )
        if env.upper() not in ENVIRONMENT_TYPES:
            raise BeamConfigError(f"--environment_type {env!r} is not one of {', '.join(ENVIRONMENT_TYPES)}")
        if env.upper() == "DOCKER" and not settings.environment_config:
            raise BeamConfigError(
                f"beam_runner {runner} with --environment_type=DOCKER needs --environment_config=IMAGE "
                "(the SDK harness image: the pipeline image built from the Dockerfile)"
            )
        args = ["--runner=PortableRunner"]
    else:
        raise BeamConfigError(f"unknown beam runner {runner!r}")
    args = args + _setting_args(config) + extra
    _check_beam_parses(args)
    return args


def _check_beam_parses(args: list[str]) -> None:
    """BeamConfigError with Beam's own reason when Beam's option parser refuses `args` (a value
    of the wrong type, a choice it does not know, a flag without its value): found when the
    pipeline is built, not when the first Beam job parses them mid-run (there Beam's parser
    exits the process). Flags Beam does not know pass, as they do in a job."""
    import contextlib
    import io

    from apache_beam.options.pipeline_options import PipelineOptions

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):  # argparse's usage text and error, printed before it exits
            PipelineOptions(args).get_all_options(retain_unknown_options=True)
    except SystemExit:
        lines = said.getvalue().strip().splitlines() or ["Beam's option parser refused them"]
        raise BeamConfigError(f"beam_args: {lines[-1].split('error: ', 1)[-1]}") from None


def with_container_image(config: BeamConfig, image: str) -> BeamConfig:
    """config with the pipeline image as the Beam worker image where the runner uses one.

    Dataflow gets ``--sdk_container_image=IMAGE``; Flink/Spark get
    ``--environment_type=DOCKER --environment_config=IMAGE`` unless an
    environment was chosen. Settings already in beam_args win.
    """
    args = list(config.beam_args)
    update: dict[str, object] = {}
    if config.beam_runner == "dataflow" and not _has_flag(args, "sdk_container_image"):
        args.append(f"--sdk_container_image={image}")
    elif config.beam_runner in PORTABLE_RUNNERS:
        env = config.environment_type or flag_value(args, "environment_type")
        if not env:
            env = update["environment_type"] = "DOCKER"
        if env.upper() == "DOCKER" and not _has_flag(args, "environment_config"):
            args.append(f"--environment_config={image}")
    return config.model_copy(update={**update, "beam_args": tuple(args)})
