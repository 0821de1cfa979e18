"""`imgpipe schedule`: recurring runs with cron/systemd (local), Vertex AI schedules, or KFP recurring runs."""

from __future__ import annotations

import argparse

from imgpipe.cli.flags import overrides
from imgpipe.cli.kubeflow import reject
from imgpipe.cli.output import Command, UsageError, WorkFailed, emit
from imgpipe.cli.run import add_run_arguments, config_from
from imgpipe.orchestration import schedule

# --------------------------------------------------------------------------- schedule
_LOCAL_ONLY = {
    "systemd": "--systemd",
    "on_calendar": "--on-calendar",
    "log_file": "--log-file",
    "imgpipe": "--imgpipe",
}
_KFP_ONLY = {"host": "--host", "experiment": "--experiment"}
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
    g.add_argument(
        "--cron", help='standard 5-field cron, e.g. "0 3 * * *" (or @daily); required but with --remove'
    )
    g = p.add_argument_group("--runner local (plus any `imgpipe run` flag below)")
    g.add_argument("--systemd", metavar="DIR", help="also write imgpipe-NAME.service and .timer into DIR")
    g.add_argument("--on-calendar", help="systemd OnCalendar= (default: converted from --cron)")
    g.add_argument("--log-file", help="where cron appends the run's output (default HOME/schedule/NAME.log)")
    g.add_argument("--imgpipe", help="imgpipe executable for cron (default: the one beside this Python)")
    g.add_argument(
        "--remove",
        action="store_true",
        help="take the schedule of --pipeline-name in --home out: its config and, with --systemd DIR, "
        "its units there; prints how to delete its crontab line (the log is kept)",
    )
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
    g.add_argument("--experiment", help="KFP experiment (kfp; default imgpipe)")
    add_run_arguments(
        p,
        home_lock_default=f"{schedule.SCHEDULED_HOME_LOCK_WAIT} ({schedule.SCHEDULED_HOME_LOCK_WAIT // 3600} h) "
        "for a scheduled run",
    )


def _run_flags_given(args: argparse.Namespace) -> list[str]:
    given = list(overrides(args))
    given += [f for f in ("config", "lock_file", "lock_wait") if getattr(args, f, None)]
    given += ["home_lock_wait"] if getattr(args, "home_lock_wait", None) is not None else []
    return given


def _cmd_schedule(args: argparse.Namespace) -> int:
    try:
        if args.remove:
            if args.runner != "local":
                raise ValueError("--remove applies to --runner local (remove a Vertex or KFP schedule there)")
            if args.cron:
                raise ValueError(
                    "--remove takes no --cron: it removes the schedule of --pipeline-name in --home"
                )
            emit(schedule.remove_local_schedule(config_from(args), systemd_dir=args.systemd))
            return 0
        if not args.cron:
            raise ValueError("--cron is required (or --remove)")
        if args.runner == "local":
            reject(args, _REMOTE_ONLY, "applies to --runner vertex|kfp only")
            reject(
                args,
                {"project": "--project", "region": "--region", "time_zone": "--time-zone"},
                "applies to --runner vertex only",
            )
            reject(args, _KFP_ONLY, "applies to --runner kfp only")
            for flag in ("systemd", "log_file", "lock_file", "imgpipe"):
                value = getattr(args, flag)
                if value is not None and not value.strip():
                    raise ValueError(
                        f"--{flag.replace('_', '-')} is empty: give a path, or leave the flag out"
                    )
            if args.on_calendar and not args.systemd:
                raise ValueError("--on-calendar applies with --systemd DIR only (cron reads --cron)")
            result = schedule.local_schedule(
                config_from(args),
                args.cron,
                imgpipe=[args.imgpipe] if args.imgpipe else None,
                lock_file=args.lock_file,
                log_file=args.log_file,
                systemd_dir=args.systemd,
                on_calendar=args.on_calendar,
                lock_wait=args.lock_wait,
                home_lock_wait=(
                    schedule.SCHEDULED_HOME_LOCK_WAIT if args.home_lock_wait is None else args.home_lock_wait
                ),
                verbose=args.verbose,
            ).to_dict()
        else:
            reject(args, _LOCAL_ONLY, "applies to --runner local only")
            given = _run_flags_given(args)
            if given:
                raise ValueError(
                    f"run flags ({', '.join(given)}) apply to --runner local only; for {args.runner}, "
                    "bake them into the spec with `imgpipe compile` or pass --parameter NAME=VALUE"
                )
            if not args.spec:
                raise ValueError(f"--runner {args.runner} needs --spec (from `imgpipe compile`)")
            if args.runner == "vertex":
                reject(args, _KFP_ONLY, "applies to --runner kfp only")
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
                reject(
                    args,
                    {"project": "--project", "region": "--region", "time_zone": "--time-zone"},
                    "applies to --runner vertex only",
                )
                result = schedule.kfp_recurring_run(
                    args.spec,
                    args.cron,
                    host=args.host,
                    experiment=args.experiment or "imgpipe",
                    parameters=args.parameter,
                    job_name=args.display_name,
                    service_account=args.service_account,
                )
    except ValueError as e:  # ScheduleError, SpecError and ConfigError included
        raise UsageError(str(e)) from e
    except OSError as e:  # writing the config or the units, after every check passed
        raise WorkFailed(f"cannot write the schedule: {e}") from e
    except Exception as e:  # a cloud client's error: one line, not its traceback
        from imgpipe.orchestration.kubeflow import remote_failure

        message = remote_failure(e)
        if message is None:
            raise
        raise WorkFailed(f"{args.runner} schedule not created: {message}") from e
    emit(result)
    return 0


COMMANDS = [
    Command(
        "schedule",
        "run the pipeline on a schedule: cron/systemd (local), Vertex AI, or KFP",
        _add_schedule,
        _cmd_schedule,
    )
]
