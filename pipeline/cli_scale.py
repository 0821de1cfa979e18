"""`imgpipe compile | submit | schedule`: Kubeflow/Vertex pipelines and recurring runs.

Registered by pipeline.cli._optional_commands(). Same conventions as cli.py:
progress and errors on stderr, one JSON line on stdout, exit 0 done, 1 the
work failed, 2 bad arguments or configuration (75: a run lock was taken).
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable

Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _err(msg: str) -> None:
    from pipeline.cli import _err as cli_err

    cli_err(msg)


def _print_json(obj) -> None:
    from pipeline.cli import _print_json as cli_print_json

    cli_print_json(obj)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """The `imgpipe run` flags (config file, data, model, training, gate, execution)."""
    from pipeline.cli import _add_run

    _add_run(p)


def _config(args):
    from pipeline.cli import config_from_args

    return config_from_args(args)


def _reject(args: argparse.Namespace, flags: dict[str, str], why: str) -> None:
    """Raise ValueError naming the first of `flags` (dest -> flag) that was given."""
    for dest, flag in flags.items():
        if getattr(args, dest, None) not in (None, False, []):
            raise ValueError(f"{flag} {why}")


# --------------------------------------------------------------------------- compile
_BEAM_FLAGS = {
    "project": "project",
    "region": "region",
    "temp_location": "temp_location",
    "job_endpoint": "job_endpoint",
    "environment_type": "environment_type",
}


def _add_compile(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("compile")
    g.add_argument(
        "--target",
        choices=["kubeflow"],
        default="kubeflow",
        help="kubeflow: a KFP v2 PipelineJob JSON for Vertex AI Pipelines or Kubeflow Pipelines 2.x",
    )
    g.add_argument(
        "--image", required=True, help="container image built from the Dockerfile (every step runs in it)"
    )
    g.add_argument("--output", required=True, help="pipeline spec file to write (.json)")
    g.add_argument(
        "--pipeline-root",
        help="artifact root, e.g. gs://BUCKET/imgpipe (default: HOME/pipelines/NAME when --home is remote)",
    )
    g.add_argument("--display-name", help="pipeline display name (default: the pipeline name)")
    g.add_argument(
        "--allow-local-paths",
        action="store_true",
        help="accept local data/serving paths (for clusters that mount them at the same path)",
    )
    g = p.add_argument_group("beam runner settings (added to the Beam args)")
    g.add_argument("--project", help="GCP project (dataflow)")
    g.add_argument("--region", help="GCP region (dataflow)")
    g.add_argument("--temp-location", help="gs:// temp dir (dataflow)")
    g.add_argument("--job-endpoint", help="Beam job server host:port (flink, spark)")
    g.add_argument(
        "--environment-type",
        help="SDK harness: DOCKER (default, the --image) | PROCESS | EXTERNAL | LOOPBACK",
    )
    _add_run_flags(p)


def _cmd_compile(args: argparse.Namespace) -> int:
    try:
        _reject(
            args,
            {"lock_file": "--lock-file", "replicas": "--replicas"},
            "does not apply to a compiled pipeline",
        )
        extra = [
            f"--{flag}={getattr(args, dest)}" for dest, flag in _BEAM_FLAGS.items() if getattr(args, dest)
        ]
        config = _config(args)
        if extra:
            config = config.replace(beam_args=tuple(config.beam_args) + tuple(extra))
        from pipeline import kubeflow

        job = kubeflow.compile_pipeline(
            config,
            image=args.image,
            output=args.output,
            pipeline_root=args.pipeline_root,
            display_name=args.display_name,
            allow_local_paths=args.allow_local_paths,
        )
    except ValueError as e:  # ConfigError included
        _err(str(e))
        return EXIT_USAGE
    with open(args.output, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    params = job["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]
    _print_json(
        {
            "output": args.output,
            "image": args.image,
            "pipeline_root": job["runtimeConfig"]["gcsOutputDirectory"],
            "parameters": {name: p.get("defaultValue") for name, p in params.items()},
            "sha256": digest,
        }
    )
    return EXIT_OK


# --------------------------------------------------------------------------- submit
def _add_parameter_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--parameter",
        action="append",
        metavar="NAME=VALUE",
        help="pipeline parameter (repeatable): epochs, learning_rate, min_accuracy",
    )


def _add_submit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", required=True, help="GCP project")
    p.add_argument("--region", required=True, help="Vertex AI region, e.g. us-central1")
    p.add_argument("--spec", required=True, help="pipeline spec from `imgpipe compile`")
    p.add_argument("--service-account", help="service account the pipeline runs as")
    p.add_argument("--display-name", help="job display name (default: the pipeline name)")
    _add_parameter_flag(p)
    p.add_argument(
        "--cache",
        dest="enable_caching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="override the spec's step caching (default: as compiled)",
    )
    p.add_argument("--wait", action="store_true", help="wait for the job to finish")


def _cmd_submit(args: argparse.Namespace) -> int:
    from pipeline import kubeflow

    try:
        result = kubeflow.submit(
            args.spec,
            project=args.project,
            region=args.region,
            parameters=args.parameter,
            service_account=args.service_account,
            display_name=args.display_name,
            enable_caching=args.enable_caching,
            wait=args.wait,
        )
    except ValueError as e:  # SpecError included
        _err(str(e))
        return EXIT_USAGE
    except RuntimeError as e:  # aiplatform reports a failed job (with --wait) as RuntimeError
        _err(f"Vertex AI pipeline job failed: {e}")
        return EXIT_FAILED
    _print_json(result)
    return EXIT_OK


# --------------------------------------------------------------------------- schedule
_LOCAL_ONLY = {
    "systemd": "--systemd",
    "on_calendar": "--on-calendar",
    "log_file": "--log-file",
    "imgpipe": "--imgpipe",
}
_REMOTE_ONLY = {
    "spec": "--spec",
    "parameter": "--parameter",
    "service_account": "--service-account",
    "display_name": "--display-name",
}


def _add_schedule(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("schedule")
    g.add_argument(
        "--runner",
        required=True,
        choices=["local", "vertex", "kfp"],
        help="local: cron line (+ systemd units); vertex: Vertex AI schedule; kfp: KFP recurring run",
    )
    g.add_argument("--cron", required=True, help='standard 5-field cron, e.g. "0 3 * * *" (or @daily)')
    g = p.add_argument_group("--runner local (plus any `imgpipe run` flag below)")
    g.add_argument("--systemd", metavar="DIR", help="also write imgpipe-NAME.service and .timer into DIR")
    g.add_argument("--on-calendar", help="systemd OnCalendar= (default: converted from --cron)")
    g.add_argument("--log-file", help="where cron appends the run's output (default HOME/schedule/NAME.log)")
    g.add_argument("--imgpipe", help="imgpipe executable for cron (default: the one beside this Python)")
    g = p.add_argument_group("--runner vertex | kfp")
    g.add_argument("--spec", help="pipeline spec from `imgpipe compile`")
    g.add_argument(
        "--parameter", action="append", metavar="NAME=VALUE", help="pipeline parameter (repeatable)"
    )
    g.add_argument("--service-account", help="service account the runs use")
    g.add_argument("--display-name", help="schedule / recurring-run name")
    g.add_argument("--project", help="GCP project (vertex)")
    g.add_argument("--region", help="Vertex AI region (vertex)")
    g.add_argument("--time-zone", help="IANA time zone of --cron (vertex; default UTC)")
    g.add_argument("--host", help="KFP API endpoint (kfp; default: in-cluster or kube config)")
    g.add_argument("--experiment", default="imgpipe", help="KFP experiment (kfp; default imgpipe)")
    _add_run_flags(p)


def _run_flags_given(args: argparse.Namespace) -> list[str]:
    from pipeline.cli import RUN_FIELDS

    given = [f for f in RUN_FIELDS if getattr(args, f, None) is not None]
    given += [f for f in ("config", "lock_file") if getattr(args, f, None)]
    return given


def _cmd_schedule(args: argparse.Namespace) -> int:
    from pipeline import schedule

    try:
        if args.runner == "local":
            _reject(args, _REMOTE_ONLY, "applies to --runner vertex|kfp only")
            _reject(
                args,
                {"project": "--project", "region": "--region", "time_zone": "--time-zone", "host": "--host"},
                "applies to --runner vertex|kfp only",
            )
            result = schedule.local_schedule(
                _config(args),
                args.cron,
                imgpipe=[args.imgpipe] if args.imgpipe else None,
                lock_file=args.lock_file,
                log_file=args.log_file,
                systemd_dir=args.systemd,
                on_calendar=args.on_calendar,
            ).to_dict()
        else:
            _reject(args, _LOCAL_ONLY, "applies to --runner local only")
            given = _run_flags_given(args)
            if given:
                raise ValueError(
                    f"run flags ({', '.join(given)}) apply to --runner local only; for {args.runner}, "
                    "bake them into the spec with `imgpipe compile` or pass --parameter NAME=VALUE"
                )
            if not args.spec:
                raise ValueError(f"--runner {args.runner} needs --spec (from `imgpipe compile`)")
            if args.runner == "vertex":
                if not (args.project and args.region):
                    raise ValueError("--runner vertex needs --project and --region")
                result = schedule.vertex_schedule(
                    args.spec,
                    args.cron,
                    args.project,
                    args.region,
                    parameters=args.parameter,
                    display_name=args.display_name,
                    service_account=args.service_account,
                    time_zone=args.time_zone,
                )
            else:
                _reject(
                    args,
                    {"project": "--project", "region": "--region", "time_zone": "--time-zone"},
                    "applies to --runner vertex only",
                )
                result = schedule.kfp_recurring_run(
                    args.spec,
                    args.cron,
                    host=args.host,
                    experiment=args.experiment,
                    parameters=args.parameter,
                    job_name=args.display_name,
                    service_account=args.service_account,
                )
    except ValueError as e:  # ConfigError, ScheduleError and SpecError included
        _err(str(e))
        return EXIT_USAGE
    _print_json(result)
    return EXIT_OK


def commands() -> list[Command]:
    return [
        (
            "compile",
            "compile the pipeline for Kubeflow Pipelines v2 / Vertex AI (pipeline spec JSON)",
            _add_compile,
            _cmd_compile,
        ),
        ("submit", "submit a compiled pipeline to Vertex AI Pipelines", _add_submit, _cmd_submit),
        (
            "schedule",
            "run the pipeline on a schedule: cron/systemd (local), Vertex AI, or KFP",
            _add_schedule,
            _cmd_schedule,
        ),
    ]
