"""`imgpipe airflow-dag`: write an Airflow DAG file that runs the pipeline (TFX AirflowDagRunner).

Takes every `imgpipe run` flag (the config schema) plus the schedule and run
policy; the file embeds the resolved config, so the DAG needs no config file.
"""

from __future__ import annotations

import argparse
import logging

from imgpipe.cli.kubeflow import check_output, reject
from imgpipe.cli.output import Command, UsageError, WorkFailed, emit
from imgpipe.cli.run import MACHINE_FIELDS, add_run_arguments, config_from
from imgpipe.orchestration import airflow
from imgpipe.orchestration.paths import write_atomically
from pipeline.config import ConfigError

log = logging.getLogger("imgpipe.airflow")


def _add_airflow_dag(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("airflow")
    g.add_argument(
        "--schedule",
        required=True,
        help='5-field cron (e.g. "0 3 * * *") or @daily/@hourly/...; "none" for triggered runs only',
    )
    g.add_argument("--output", required=True, help="DAG file to write, e.g. AIRFLOW_HOME/dags/imgpipe.py")
    g.add_argument("--start-date", help="first schedule date YYYY-MM-DD, UTC (default: today)")
    g.add_argument(
        "--retries", type=int, default=airflow.DEFAULT_RETRIES, help="retries of a failed task (default 0)"
    )
    g.add_argument(
        "--catchup",
        action="store_true",
        help="run the intervals missed since --start-date (default: only the latest)",
    )
    add_run_arguments(p, local=False, unlisted=("replicas", *MACHINE_FIELDS))


def _cmd_airflow_dag(args: argparse.Namespace) -> int:
    reject(
        args,
        {"lock_file": "--lock-file", "lock_wait": "--lock-wait", "home_lock_wait": "--home-lock-wait"},
        "does not apply to an Airflow DAG (it allows one active run: max_active_runs=1)",
    )
    check_output(args.output)
    if not args.output.endswith(".py"):
        log.warning(
            "--output %s does not end in .py: Airflow's scheduler reads DAG files named *.py only, "
            "so it will not see this DAG until it is renamed",
            args.output,
        )
    config = config_from(args)
    others = airflow.files_with_dag_id(args.output, config.pipeline_name)
    if others:
        raise UsageError(
            f"--output {args.output}: {', '.join(others)} already defines a DAG with dag_id "
            f"{config.pipeline_name!r} (Airflow runs one DAG per id and shows the other file as an import "
            "error): remove that file first (renaming the DAG file), or give this pipeline another "
            "--pipeline-name"
        )
    try:  # last before the write: it takes the serving dir over with --adopt-serving-dir
        source = airflow.render_dag(
            config, args.schedule, start_date=args.start_date, retries=args.retries, catchup=args.catchup
        )
    except ConfigError as e:
        raise UsageError(str(e)) from e
    try:
        write_atomically(args.output, source)
    except OSError as e:
        raise WorkFailed(f"cannot write --output {args.output}: {e}") from e
    emit(
        {
            "output": args.output,
            "dag_id": config.pipeline_name,
            "schedule": airflow.check_schedule(args.schedule),
            "max_active_runs": airflow.MAX_ACTIVE_RUNS,
            "catchup": args.catchup,
            "retries": args.retries,
            "metadata": config.resolved().metadata_location,
        }
    )
    return 0


COMMANDS = [
    Command(
        "airflow-dag",
        "write an Airflow DAG file that runs the pipeline (one task per component)",
        _add_airflow_dag,
        _cmd_airflow_dag,
    )
]
