"""Beam pipeline arguments for each supported runner.

`config.beam_runner` picks the runner; `config.beam_args` carries the runner's
settings (``--project=...``, ``--job_endpoint=...``) and any extra Beam flag,
passed through verbatim. `beam_pipeline_args(config)` turns both into the
argument list TFX hands to every Beam-based component, and fails early, naming
the missing flag, when a runner lacks a setting it cannot work without.

    direct        DirectRunner, in memory, one worker (the default; tests, demo)
    multiprocess  DirectRunner with one worker process per CPU (or beam_workers)
    dataflow      Google Cloud Dataflow: --project, --region, --temp_location (gs://)
                  required; --sdk_container_image defaults to the pipeline image
    flink, spark  Beam's PortableRunner against a job server: --job_endpoint
                  required; --environment_type DOCKER (with the pipeline image),
                  PROCESS, EXTERNAL or LOOPBACK
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from trainer.config import ConfigError, Settings

BeamRunner = Literal["direct", "multiprocess", "dataflow", "flink", "spark"]
BEAM_RUNNERS: tuple[str, ...] = BeamRunner.__args__

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


class BeamConfig(Settings):
    """Apache Beam: the runner of the data work (ExampleGen, StatisticsGen, Transform, Evaluator)."""

    beam_runner: BeamRunner = Field(
        "direct", description="runner of the data work: " + " | ".join(BEAM_RUNNERS)
    )
    beam_workers: int = Field(0, ge=0, description="workers for the multiprocess runner (0: one per CPU)")
    beam_args: tuple[str, ...] = Field(
        (),
        description="extra Beam pipeline argument, verbatim (repeatable)",
        json_schema_extra={"flag": "--beam-arg"},
    )


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
            f"beam_runner {runner} needs --{flag} (e.g. --beam-arg=--{flag}={example}, "
            f"or the `imgpipe compile` flag --{flag.replace('_', '-')})"
        )
    return value


def beam_pipeline_args(config: BeamConfig) -> list[str]:
    """The `beam_pipeline_args` for config.beam_runner, then config.beam_args verbatim.

    Raises BeamConfigError naming the missing or conflicting flag.
    """
    runner = config.beam_runner
    extra = list(config.beam_args)
    if _has_flag(extra, "runner"):
        raise BeamConfigError(
            "beam_args: do not pass --runner; choose the runner with --beam-runner "
            "(direct | multiprocess | dataflow | flink | spark)"
        )
    settings = BeamSettings.from_args(extra)
    if runner == "direct":
        args = ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]
    elif runner == "multiprocess":
        workers = config.beam_workers or (os.cpu_count() or 1)
        args = [
            "--runner=DirectRunner",
            "--direct_running_mode=multi_processing",
            f"--direct_num_workers={workers}",
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
    return args + extra


def with_container_image(config: BeamConfig, image: str) -> BeamConfig:
    """config with the pipeline image as the Beam worker image where the runner uses one.

    Dataflow gets ``--sdk_container_image=IMAGE``; Flink/Spark get
    ``--environment_type=DOCKER --environment_config=IMAGE`` unless an
    environment was chosen. Settings already in beam_args win.
    """
    args = list(config.beam_args)
    if config.beam_runner == "dataflow" and not _has_flag(args, "sdk_container_image"):
        args.append(f"--sdk_container_image={image}")
    elif config.beam_runner in PORTABLE_RUNNERS:
        if not _has_flag(args, "environment_type"):
            args.append("--environment_type=DOCKER")
        env = flag_value(args, "environment_type") or ""
        if env.upper() == "DOCKER" and not _has_flag(args, "environment_config"):
            args.append(f"--environment_config={image}")
    return config.model_copy(update={"beam_args": tuple(args)})
