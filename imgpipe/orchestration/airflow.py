"""Apache Airflow: a DAG file that runs create_pipeline(config) with TFX's AirflowDagRunner.

`render_dag(config, schedule)` returns the Python source of a DAG file: the
resolved config as a literal, and one call, `build_dag(...)`, that Airflow runs
each time it parses the file. `build_dag` builds the same pipeline as `imgpipe
run` (create_pipeline(config), ML Metadata from `connection_config(config)`)
and hands it to TFX's AirflowDagRunner, which makes each component one task
(a PythonOperator running the component in the task's process).

The DAG's run policy (`dag_settings`): no catch-up of missed intervals, no
retries, and at most one active run (`max_active_runs=1`): a run triggered or
scheduled while one is running waits in the queue until it finishes, so two
runs never write the same pipeline root at once.

Requirements on the Airflow side (README, "Airflow"): imgpipe installed in
Airflow's Python (`pip install "imgpipe[airflow]"`), the data and serving
paths reachable from the workers, and a DAG import timeout above the time TFX
takes to load TensorFlow (`[core] dagbag_import_timeout`, default 30 s).
"""

from __future__ import annotations

import datetime
import os
import pprint
from collections.abc import Mapping
from typing import Any

from imgpipe.orchestration.schedule import ScheduleError, parse_cron
from pipeline.config import ConfigError, PipelineConfig

MAX_ACTIVE_RUNS = 1
DEFAULT_RETRIES = 0
_NO_SCHEDULE = ("", "none", "manual")


def check_schedule(schedule: str) -> str | None:
    """A 5-field cron expression or @macro as given, None for none/manual; ConfigError if invalid."""
    text = (schedule or "").strip()
    if text.lower() in _NO_SCHEDULE:
        return None
    try:
        parse_cron(text)
    except ScheduleError as e:
        raise ConfigError(f"schedule: {e}") from e
    return text


def check_start_date(value: str) -> datetime.datetime:
    """YYYY-MM-DD as midnight UTC; ConfigError naming the value otherwise."""
    try:
        day = datetime.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ConfigError(f"start_date: expected YYYY-MM-DD, got {value!r}") from None
    return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.timezone.utc)


def dag_settings(
    schedule: str | None, start_date: str, retries: int = DEFAULT_RETRIES, catchup: bool = False
) -> dict[str, Any]:
    """The Airflow DAG arguments (AirflowPipelineConfig.airflow_dag_config): schedule and run policy."""
    if retries < 0:
        raise ConfigError(f"retries: must be >= 0, got {retries}")
    return {
        "schedule": check_schedule(schedule or ""),
        "start_date": check_start_date(start_date),
        "catchup": catchup,
        "max_active_runs": MAX_ACTIVE_RUNS,
        "default_args": {
            "owner": "imgpipe",
            "retries": retries,
            "retry_delay": datetime.timedelta(minutes=5),
        },
        "tags": ["imgpipe"],
        "description": "imgpipe: labelled images -> gated, served classifier (TFX)",
    }


def check_config(config: PipelineConfig) -> PipelineConfig:
    """The config resolved (absolute local paths) and checked for an Airflow DAG; ConfigError if not."""
    if config.replicas:
        raise ConfigError(
            "replicas: a testing aid of `imgpipe run` (it splits this machine's CPU before TensorFlow "
            "starts); Airflow tasks use the devices of the worker they run on"
        )
    if config.resources.is_set:
        raise ConfigError(
            "trainer_machine_type / trainer_accelerator: apply to Kubeflow / Vertex AI (`imgpipe compile`); "
            "an Airflow task runs on its worker's machine"
        )
    return config.resolved().validate_paths()


def render_dag(
    config: PipelineConfig,
    schedule: str | None,
    start_date: str | None = None,
    retries: int = DEFAULT_RETRIES,
    catchup: bool = False,
) -> str:
    """The source of a DAG file for `config` (checked here, so a bad value fails now, not in Airflow)."""
    config = check_config(config)
    start_date = start_date or datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    settings = dag_settings(schedule, start_date, retries, catchup)  # validates
    values = pprint.pformat(config.to_dict(), width=100, sort_dicts=True)
    return _TEMPLATE.format(
        name=config.pipeline_name,
        config=values,
        schedule=settings["schedule"],
        start_date=start_date,
        retries=retries,
        catchup=catchup,
    )


_TEMPLATE = '''"""imgpipe pipeline {name!r} as an Airflow DAG (dag_id {name!r}), one task per TFX component.

Written by `imgpipe airflow-dag`; render it again rather than editing it. Needs
imgpipe installed in Airflow's Python (pip install "imgpipe[airflow]") and a DAG
import timeout above TensorFlow's load time ([core] dagbag_import_timeout = 300).
At most one run is active at a time; no catch-up unless rendered with --catchup.
"""

import os
import sys

# TFX 1.16 runs Keras 2 (tf-keras); chosen before TensorFlow loads, in every task process too.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("GLOG_minloglevel", "1")

# Airflow puts the DAG folder on sys.path, where a DAG file named imgpipe.py would stand in
# for the imgpipe package: import the package with that folder left out.
_dag_folder = os.path.dirname(os.path.abspath(__file__))
_path = list(sys.path)
sys.path[:] = [p for p in _path if os.path.abspath(p or os.curdir) != _dag_folder]
try:
    from imgpipe.orchestration.airflow import build_dag
finally:
    sys.path[:] = _path

CONFIG = {config}

dag = build_dag(CONFIG, schedule={schedule!r}, start_date={start_date!r}, retries={retries!r}, catchup={catchup!r})
'''


def build_dag(
    config: Mapping[str, Any],
    schedule: str | None,
    start_date: str,
    retries: int = DEFAULT_RETRIES,
    catchup: bool = False,
):
    """The Airflow DAG of the pipeline for `config` (a config mapping): what a rendered file calls."""
    # TFX and Airflow load on use: `imgpipe airflow-dag` renders the file without them.
    from tfx.orchestration.airflow.airflow_dag_runner import AirflowDagRunner, AirflowPipelineConfig

    from imgpipe.orchestration import metadata
    from pipeline.pipeline import create_pipeline

    cfg = PipelineConfig.from_dict(config)
    if not cfg.metadata:
        os.makedirs(cfg.home, exist_ok=True)  # the SQLite store's folder
    pipeline = create_pipeline(cfg, metadata.connection_config(cfg))
    runner = AirflowDagRunner(
        AirflowPipelineConfig(airflow_dag_config=dag_settings(schedule, start_date, retries, catchup))
    )
    return runner.run(pipeline)
