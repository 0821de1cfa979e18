"""Apache Airflow: a DAG file that runs create_pipeline(config) with TFX's AirflowDagRunner.

`render_dag(config, schedule)` returns the Python source of a DAG file: the
resolved config and the pipeline's task graph (one task per TFX component and
the tasks it waits for, `task_graph`) as literals, and one call, `build_dag(...)`,
that Airflow runs each time it parses the file.

Parsing loads neither TensorFlow nor TFX (under a second, against ~6 s and
Airflow's import timeout): `build_dag` makes one PythonOperator per task from
the literal graph. When a task runs, `run_task` builds the same pipeline as
`imgpipe run` (create_pipeline(config), ML Metadata from
`connection_config(config)`), hands it to TFX's AirflowDagRunner, checks that
its graph is still the rendered one, and executes TFX's own operator for that
component in the task's process: the component runs exactly as under a DAG
that TFX builds at parse time.

A blessed model that is not served loses its blessing in ML Metadata, as after
`imgpipe run` (summary.withdraw_unserved_blessings), so no later run takes it as
its baseline: one pre-push validation refused, after the InfraValidator's task;
one never pushed (a failed push, a run that failed or died before its Pusher),
before the Resolver's task of the next run.

The DAG's run policy (`dag_settings`): no catch-up of missed intervals, no
retries, and at most one active run (`max_active_runs=1`): a run triggered or
scheduled while one is running waits in the queue until it finishes, so two
runs never write the same pipeline root at once.

Requirements on the Airflow side (docs/scale.md, section 8): imgpipe installed in
Airflow's Python (`pip install "imgpipe[airflow]"`), and the data and serving
paths reachable from the workers.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import pprint
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from imgpipe.orchestration import scratch
from imgpipe.orchestration.schedule import ScheduleError, parse_cron
from pipeline.config import ConfigError, PipelineConfig
from pipeline.metadata_url import for_a_later_process

log = logging.getLogger(__name__)

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
    if not re.fullmatch(r"[\w.-]+", config.pipeline_name):  # Airflow's rule for a dag_id
        raise ConfigError(
            f"pipeline_name: {config.pipeline_name!r} is the DAG's dag_id, which Airflow allows only "
            "letters, digits, '-', '.' and '_' in (no spaces)"
        )
    if "://" in config.home and not config.metadata:
        raise ConfigError(
            f"home: {config.home} is a remote URI, and ML Metadata's SQLite store (the default) is a "
            "file in the home: give --metadata postgresql://... for a home in a bucket, or a local home"
        )
    config = config.resolved().validate_paths(remote_home=True)
    # A worker may be another machine: this shell's password file is named, not written in.
    _, warnings = for_a_later_process(
        config.metadata, config.metadata_password_file, os.environ, "an Airflow task", adopt=False
    )
    for warning in warnings:
        log.warning("%s", warning)
    from imgpipe.orchestration import preflight  # reads ML Metadata: not at the DAG file's parse

    # Last, after every check of the config: the serving dir taken over as the DAG is rendered.
    return preflight.adopt_once(config, "the DAG")


_DAG_FILE_READ = 256 * 1024  # a DAG file's first bytes searched for its dag_id
_DAG_FILES_SEARCHED = 5000  # *.py files, under the folder of the file written


def dag_folder(output: str) -> str:
    """The folder Airflow scans that holds OUTPUT: its DAG folder (AIRFLOW__CORE__DAGS_FOLDER,
    else AIRFLOW_HOME/dags, else ~/airflow/dags) when OUTPUT is inside it, else OUTPUT's folder."""
    here = os.path.dirname(os.path.realpath(output))
    configured = os.environ.get("AIRFLOW__CORE__DAGS_FOLDER") or os.path.join(
        os.environ.get("AIRFLOW_HOME") or os.path.join(os.path.expanduser("~"), "airflow"), "dags"
    )
    root = os.path.realpath(configured)
    return root if here == root or here.startswith(root + os.sep) else here


def files_with_dag_id(output: str, dag_id: str) -> list[str]:
    """Other *.py files in OUTPUT's DAG folder that define a DAG with id `dag_id`.

    Airflow keeps one DAG per dag_id: of two files defining it, the second it parses shows
    as an import error ("DAG ID ... is duplicated") and never runs. Found: a file written by
    `imgpipe airflow-dag` for that dag_id (its first line), or any file holding the keyword
    argument `dag_id="<dag_id>"`. The folder searched (`dag_folder`) is Airflow's DAG folder
    when OUTPUT is inside it, else OUTPUT's own folder. Files that cannot be read are passed
    over; the search stops after `_DAG_FILES_SEARCHED` files.
    """
    folder = dag_folder(output)
    if not os.path.isdir(folder):
        return []
    ours = os.path.realpath(output)
    header = f"as an Airflow DAG (dag_id {dag_id!r})".encode()
    keyword = re.compile(rb"dag_id\s*=\s*(['\"])" + re.escape(dag_id.encode()) + rb"\1")
    found, searched = [], 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            searched += 1
            if searched > _DAG_FILES_SEARCHED:
                return found
            if os.path.realpath(path) == ours:
                continue
            try:
                with open(path, "rb") as f:
                    head = f.read(_DAG_FILE_READ)
            except OSError:
                continue
            if header in head.split(b"\n", 1)[0] or keyword.search(head):
                found.append(path)
    return found


def task_graph(config: PipelineConfig) -> list[list]:
    """The pipeline's tasks in topological order: [[component id, [ids it waits for]], ...].

    Builds the TFX pipeline of `config` (no store is opened), so it loads TFX.
    """
    from pipeline.pipeline import create_pipeline

    pipeline = create_pipeline(config)
    return [[c.id, sorted(u.id for u in c.upstream_nodes)] for c in pipeline.components]


def render_dag(
    config: PipelineConfig,
    schedule: str | None,
    start_date: str | None = None,
    retries: int = DEFAULT_RETRIES,
    catchup: bool = False,
) -> str:
    """The source of a DAG file for `config` (checked here, so a bad value fails now, not in Airflow)."""
    start_date = start_date or datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    settings = dag_settings(schedule, start_date, retries, catchup)  # validates, before check_config adopts
    config = check_config(config)
    values = pprint.pformat(config.to_dict(), width=100, sort_dicts=True)
    tasks = pprint.pformat(task_graph(config), width=100)
    return _TEMPLATE.format(
        name=config.pipeline_name,
        config=values,
        tasks=tasks,
        schedule=settings["schedule"],
        start_date=start_date,
        retries=retries,
        catchup=catchup,
    )


_TEMPLATE = '''"""imgpipe pipeline {name!r} as an Airflow DAG (dag_id {name!r}), one task per TFX component.

Written by `imgpipe airflow-dag`; render it again rather than editing it (and after
upgrading imgpipe: a task refuses to run if the pipeline's graph is no longer TASKS).
Needs imgpipe installed in Airflow's Python (pip install "imgpipe[airflow]").
Parsing this file loads neither TensorFlow nor TFX; each task loads them when it runs.
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

# The pipeline's tasks, each with the tasks it waits for (one per TFX component).
TASKS = {tasks}

dag = build_dag(
    CONFIG, schedule={schedule!r}, start_date={start_date!r}, retries={retries!r}, catchup={catchup!r}, tasks=TASKS
)
'''


def build_dag(
    config: Mapping[str, Any],
    schedule: str | None,
    start_date: str,
    retries: int = DEFAULT_RETRIES,
    catchup: bool = False,
    tasks: Sequence[Sequence] | None = None,
):
    """The Airflow DAG of the pipeline for `config` (a config mapping): what a rendered file calls.

    One PythonOperator per entry of `tasks` (`task_graph`), each running `run_task`.
    Without `tasks` (a file rendered by an earlier imgpipe) the graph is built here,
    which loads TFX while the file is parsed.
    """
    from airflow.models import DAG
    from airflow.operators.python import PythonOperator

    cfg = PipelineConfig.from_dict(config)  # a bad config fails the parse, with its error
    if tasks is None:
        tasks = task_graph(cfg)
    tasks = _graph(tasks)
    dag = DAG(dag_id=cfg.pipeline_name, **dag_settings(schedule, start_date, retries, catchup))
    spec = _TaskSpec(
        json.dumps(dict(config), sort_keys=True), tuple(tasks), schedule, start_date, retries, catchup
    )
    run = functools.partial(run_task, spec)
    operators = {}
    for task_id, upstream in tasks:
        operators[task_id] = PythonOperator(task_id=task_id, python_callable=run, dag=dag)
        for up in upstream:
            if up not in operators:
                raise ConfigError(f"TASKS: {task_id!r} waits for {up!r}, which is not an earlier task")
            operators[task_id].set_upstream(operators[up])
    return dag


def _graph(tasks: Sequence[Sequence]) -> list[tuple[str, tuple[str, ...]]]:
    return [(str(task_id), tuple(sorted(map(str, upstream)))) for task_id, upstream in tasks]


class _TaskSpec(NamedTuple):
    """What every task of a rendered DAG needs to build TFX's DAG when it runs."""

    config_json: str
    tasks: tuple
    schedule: str | None
    start_date: str
    retries: int
    catchup: bool


@functools.lru_cache(maxsize=4)
def _tfx_dag(spec: _TaskSpec):
    """(TFX's own Airflow DAG, the config) for `spec`: built once per process (`dags test` runs every task in one)."""
    from tfx.orchestration.airflow.airflow_dag_runner import AirflowDagRunner, AirflowPipelineConfig

    from imgpipe.orchestration import metadata
    from imgpipe.orchestration.weights import local_weights_digest
    from pipeline.pipeline import create_pipeline

    cfg = PipelineConfig.from_dict(json.loads(spec.config_json))
    # The Trainer keyed by the weights file's bytes as this task finds them, as in `imgpipe run`:
    # new weights at the same path train again instead of reusing the old ones' model.
    digest = local_weights_digest(cfg)
    if not cfg.metadata:
        # The home's folder is made by the first tasks, after the home's checks: a home moved away
        # from under its DAG left an empty home at the old path, where `mv` back nested it.
        pipeline = create_pipeline(cfg, metadata.connection_config(cfg), weights_digest=digest)
    else:
        # The database made now if it is new (the DAG's first task): TFX then connects to it
        # directly, so a password file with a line for it alone works.
        metadata.connect(cfg)
        pipeline = create_pipeline(
            cfg, metadata.connection_config(cfg, create_database=False), weights_digest=digest
        )
    settings = dag_settings(spec.schedule, spec.start_date, spec.retries, spec.catchup)
    return AirflowDagRunner(AirflowPipelineConfig(airflow_dag_config=settings)).run(pipeline), cfg


def _fail_own_execution(cfg: PipelineConfig, run_id: str, task_id: str, error: BaseException) -> None:
    """Mark the failed task's execution FAILED (TFX's Airflow launcher leaves it RUNNING, and
    `rollback` and `prune` then refused for good). Never replaces the task's error: a store that
    cannot be reached is logged."""
    from imgpipe.orchestration import metadata, recovery

    if not cfg.metadata and not os.path.exists(cfg.metadata_path):
        return  # no store: nothing recorded to mark
    try:
        with metadata.open_store(cfg, readonly=False) as store:
            recovery.fail_airflow_executions(
                store,
                cfg.pipeline_name,
                f"its Airflow task failed: {type(error).__name__}: {' '.join(str(error).split())[:300]}",
                run_id,
                component_id=task_id,
            )
    except Exception:  # noqa: BLE001 - the task's own error is the one raised
        log.warning("the failed task's execution could not be marked FAILED in ML Metadata", exc_info=True)


def run_task(spec: _TaskSpec, /, **context: Any) -> Any:
    """Run the component of the current task (context["ti"]) with TFX's operator for it.

    The operator's templated fields (the run-time knobs, overridable in the run's
    conf) are rendered against this task's context, then it executes here.
    """
    from airflow.exceptions import AirflowFailException

    from imgpipe.orchestration import cache_outputs, diagnosis, execution_results, metadata, recovery
    from imgpipe.orchestration.summary import withdraw_unserved_blessings
    from imgpipe.process_exit import freeze_at_exit
    from pipeline.pipeline import RESOLVER_ID

    freeze_at_exit()  # a task process that exits normally (`airflow dags test`) skips the collection
    tfx_dag, cfg = _tfx_dag(spec)
    built = sorted(_graph([t.task_id, t.upstream_task_ids] for t in tfx_dag.tasks))
    if built != sorted(spec.tasks):
        raise AirflowFailException(
            f"this imgpipe builds the tasks {built}, the DAG file has {sorted(spec.tasks)}: imgpipe "
            "changed since the file was rendered; render it again with `imgpipe airflow-dag`"
        )
    task_id = context["ti"].task_id
    if not dict(spec.tasks).get(task_id, ()):
        # A first task (it waits for none: ExampleGen, and the Resolver, whose repairs below must
        # not run on a moved home's records): the home's checks `imgpipe run` makes before its
        # first component (a moved home, another home's served model, an emptied store), as a
        # failure of this task naming the problem; Airflow does not retry it.
        from imgpipe.orchestration import lock, preflight

        if lock.home_held(cfg.home):
            # A run by hand or cron (or a prune, a rollback) holds the home: this run's Resolver
            # would pick its baseline before that run's push, and its Pusher push over it
            # unjudged (an audit's DAG run and `imgpipe run` on one home both went to the end).
            # Raised as a plain error: Airflow's retries try the task again later.
            raise RuntimeError(
                f"the home {cfg.home} is held by another imgpipe process (a run by hand or cron, a prune, a "
                f"rollback: its lock {lock.home_lock_path(cfg.home)}): this DAG run would be judged against "
                "the model before that run's push and could push over it; trigger the DAG again once that "
                "process ends (with task retries set, Airflow tries again itself)"
            )
        try:
            preflight.check_records(cfg)  # before a SQLite store is made: a home moved away makes none
            if not cfg.metadata:
                os.makedirs(cfg.home, exist_ok=True)
                metadata.connect(cfg)  # the home's SQLite store made, as `imgpipe run` makes it
            preflight.check_home(cfg, records_checked=True)
        except ConfigError as e:  # an unusable SQLite store (MetadataUnavailable) too
            if cfg.metadata and isinstance(e, metadata.MetadataUnavailable):
                raise  # a PostgreSQL server down: the DAG's retries apply
            raise AirflowFailException(str(e)) from e
        # The DAG runs one run at a time (max_active_runs): an earlier run's execution still
        # unfinished is a task that died (its worker killed) or one TFX's launcher left RUNNING.
        with metadata.open_store(cfg, readonly=False) as store:
            marked = recovery.fail_airflow_executions(
                store,
                cfg.pipeline_name,
                f"left unfinished by an earlier Airflow run; found by Airflow run {context.get('run_id', '?')} "
                "(a DAG runs one run at a time)",
                str(context.get("run_id", "")),
                others=True,
            )
        if marked:
            log.warning("executions %s of earlier Airflow runs were left unfinished: marked FAILED", marked)
    # A copy locked for execution, as Airflow runs its own tasks.
    operator = tfx_dag.get_task(task_id).prepare_for_execution()
    operator.render_template_fields(context)
    if task_id == RESOLVER_ID:
        # The baseline is picked next: never a model that is not served. The DAG's earlier
        # runs have ended (one active run at a time), so a blessing no Pusher completed is unserved.
        # As at the start of `imgpipe run`: a model whose folder was deleted is no baseline, and a
        # record of a push whose version was deleted from the serving dir is not taken from the
        # cache by this run's Pusher.
        found_by = f"Airflow run {context.get('run_id', '?')}"
        with metadata.open_store(cfg, readonly=False) as store:
            gone = recovery.forget_missing_models(store, cfg.pipeline_root, found_by=found_by)
            unserved = recovery.forget_missing_pushes(store, cfg.pipeline_root, found_by=found_by)
        recovery.log_missing(gone, unserved)
        withdraw_unserved_blessings(cfg, runs_finished=True)
    # Beam on this worker imports the installed TFX: no sdist of it per component (as `imgpipe run`).
    # TFX's cache read by artifact id, as in `imgpipe run` (orchestration/cache_outputs.py).
    with (
        scratch.no_tfx_package_for_local_beam(cfg.beam.beam_runner),
        cache_outputs.by_artifact_id(),
        execution_results.storable(cfg.metadata_target is not None),
    ):
        try:
            result = operator.execute(context)
        except Exception as e:
            # What `imgpipe run` adds to such a failure: the damaged files or undecodable records
            # behind it, in the task's log before Airflow's traceback. The error is raised as it came.
            # Nothing here may replace the task's own error. (A task's timeout, AirflowTaskTimeout,
            # is a BaseException: it is not caught here, and no diagnosis runs after it.)
            diagnosis.log_failure(lambda: cfg, task_id, e)
            _fail_own_execution(cfg, str(context.get("run_id", "")), task_id, e)
            raise
        except BaseException as e:  # a task's timeout (AirflowTaskTimeout), a signal: no diagnosis
            _fail_own_execution(cfg, str(context.get("run_id", "")), task_id, e)
            raise
    if task_id == PREPUSH_ID:
        withdraw_unserved_blessings(cfg, runs_finished=False)  # this run's Pusher is still to come
    return result


PREPUSH_ID = "InfraValidator"  # after it (and before the Resolver), refused blessings are withdrawn
