"""The Airflow DAG for real: `imgpipe airflow-dag` writes it, `airflow dags test` runs it, the scheduler
admits one run at a time.

Airflow runs from a temp AIRFLOW_HOME with its own SQLite database, no network.
The DAG is the smallest useful pipeline (the 32 px digits, 1 epoch, floor 0 (no significance bound), so
the first model is blessed and pushed; no pre-push validation, which
tests/e2e/test_pipeline_e2e.py covers). Then, with the run finished:

- the DAG's settings as Airflow stored them: max_active_runs 1, no catch-up,
  no retries, one task per component;
- two runs triggered with `airflow dags trigger`, and one real scheduler loop
  (`airflow scheduler --num-runs`): the first run is started, the second stays
  queued because one is active. The default pool is created with 0 slots and
  the DAG unpaused (Airflow's settings, as a deployment would set them), so the
  started run's tasks are never queued and nothing runs the pipeline again;
  `dags test` runs its tasks itself, outside the pools.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from imgpipe.cli import main as cli
from imgpipe.orchestration import metadata as mlmd
from pipeline.config import PipelineConfig
from pipeline.pipeline import COMPONENT_IDS
from tests.e2e.conftest import SIZE

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DAG_ID = "imgpipe"


class Airflow:
    """The `airflow` CLI against one temp AIRFLOW_HOME."""

    def __init__(self, home: str):
        self.home = home
        self.dags = os.path.join(home, "dags")
        self.db = os.path.join(home, "airflow.db")
        os.makedirs(self.dags, exist_ok=True)
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__DAGS_FOLDER": self.dags,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "SequentialExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db}",
            # Airflow's default DAG import timeout (30 s) holds: the file's parse loads no TensorFlow.
            # The scheduler reads the serialized DAG; it starts no parser of its own here.
            "AIRFLOW__SCHEDULER__STANDALONE_DAG_PROCESSOR": "True",
            # Set before `db migrate` creates the default pool and `dags reserialize` the DAG row.
            "AIRFLOW__CORE__DEFAULT_POOL_TASK_SLOT_COUNT": "0",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "TF_USE_LEGACY_KERAS": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            capture_output=True,
            text=True,
            cwd=self.home,
            env=self.env,
            timeout=timeout,
        )
        assert done.returncode == 0 or not check, f"airflow {' '.join(args)}: {done.stderr[-4000:]}"
        return done

    def query(self, sql: str, *params) -> list[tuple]:
        with sqlite3.connect(self.db) as db:
            return db.execute(sql, params).fetchall()


@pytest.fixture(scope="module")
def dag_run(tmp_path_factory, source_backbone, digits_records):
    """The DAG written by `imgpipe airflow-dag` into a fresh Airflow, then run once with `airflow dags test`."""
    work = tmp_path_factory.mktemp("airflow")
    af = Airflow(str(work / "airflow_home"))
    output = os.path.join(af.dags, "imgpipe.py")
    code = cli.main(
        ["airflow-dag", "--schedule", "0 3 * * *", "--output", output,
         "--data", digits_records, "--home", str(work / "home"), "--serving-dir", str(work / "serving"),
         "--model-name", "digits", "--backbone", "MobileNetV2", "--weights", source_backbone,
         "--image-size", str(SIZE), "--epochs", "1", "--learning-rate", "0.01", "--min-accuracy", "0", "--significance", "0",
         "--no-prepush-validation"]
    )  # fmt: skip
    assert code == 0
    af("db", "migrate")
    af("dags", "reserialize", timeout=1200)
    af("dags", "test", DAG_ID, timeout=1800)
    config = PipelineConfig(home=str(work / "home"), serving_dir=str(work / "serving"), model_name="digits")
    return af, config


def test_dags_test_runs_every_component_and_pushes(dag_run):
    af, config = dag_run
    [(state,)] = af.query("SELECT state FROM dag_run WHERE dag_id = ?", DAG_ID)
    assert state == "success"
    tasks = dict(af.query("SELECT task_id, state FROM task_instance WHERE dag_id = ?", DAG_ID))
    assert tasks == dict.fromkeys(COMPONENT_IDS, "success")
    # TFX's Airflow components record each execution in ML Metadata (SQLite in the home).
    with mlmd.open_store(config) as store:
        states = [mlmd.state_name(e) for e in store.get_executions()]
    assert len(states) == len(COMPONENT_IDS) and set(states) <= {"COMPLETE", "CACHED"}, states
    versions = os.listdir(config.model_serving_dir)
    assert len(versions) == 1 and versions[0].isdigit()
    assert os.path.exists(os.path.join(config.model_serving_dir, versions[0], "saved_model.pb"))


def test_dag_settings_as_airflow_stored_them(dag_run):
    af, _ = dag_run
    [(max_active_runs, schedule)] = af.query(
        "SELECT max_active_runs, timetable_description FROM dag WHERE dag_id = ?", DAG_ID
    )
    assert max_active_runs == 1
    assert "03:00" in schedule
    [(data,)] = af.query("SELECT data FROM serialized_dag WHERE dag_id = ?", DAG_ID)
    dag = json.loads(data)["dag"]
    assert dag["catchup"] is False
    assert dag["max_active_runs"] == 1
    assert dag["default_args"]["__var"]["retries"] == 0
    tasks = {t["__var"]["task_id"]: t["__var"] for t in dag["tasks"]}
    assert set(tasks) == set(COMPONENT_IDS)
    assert all(t.get("retries", 0) == 0 for t in tasks.values())


def test_a_second_triggered_run_waits_while_one_is_active(dag_run):
    af, _ = dag_run
    [(slots,)] = af.query("SELECT slots FROM slot_pool WHERE pool = 'default_pool'")
    assert slots == 0  # runs are admitted, their tasks are not queued
    [(paused,)] = af.query("SELECT is_paused FROM dag WHERE dag_id = ?", DAG_ID)
    assert not paused
    af("dags", "trigger", DAG_ID, "--run-id", "first")
    af("dags", "trigger", DAG_ID, "--run-id", "second")
    queued = dict(af.query("SELECT run_id, state FROM dag_run WHERE run_id IN ('first', 'second')"))
    assert queued == {"first": "queued", "second": "queued"}
    af("scheduler", "--num-runs", "3", timeout=600)
    states = dict(af.query("SELECT run_id, state FROM dag_run WHERE run_id IN ('first', 'second')"))
    assert states == {"first": "running", "second": "queued"}


def test_a_task_failing_on_a_damaged_tfrecord_names_the_file(
    dag_run, digits_records, source_backbone, tmp_path
):
    """A DAG's task that fails on the data logs what `imgpipe run` would add to its error: here
    ImportExampleGen (`airflow tasks test`, one task run for real) on a train file cut short,
    whose error (Beam's) names no file."""
    af, _ = dag_run
    records = tmp_path / "records"
    shutil.copytree(digits_records, records)
    [damaged] = sorted((records / "train").iterdir())[:1]
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    code = cli.main(
        ["airflow-dag", "--schedule", "0 3 * * *", "--output", os.path.join(af.dags, "damaged.py"),
         "--pipeline-name", "damaged", "--data", str(records), "--home", str(tmp_path / "home"),
         "--serving-dir", str(tmp_path / "serving"), "--model-name", "digits", "--image-size", str(SIZE),
         "--backbone", "MobileNetV2", "--weights", source_backbone]
    )  # fmt: skip
    assert code == 0
    # The default pool has 0 slots here (the scheduler test above): give the task one while it runs.
    with sqlite3.connect(af.db) as db:
        db.execute("UPDATE slot_pool SET slots = 1 WHERE pool = 'default_pool'")
    try:
        done = af("tasks", "test", "damaged", "ImportExampleGen", "2024-01-01", check=False)
    finally:
        with sqlite3.connect(af.db) as db:
            db.execute("UPDATE slot_pool SET slots = 0 WHERE pool = 'default_pool'")
    assert done.returncode != 0
    log = done.stdout + done.stderr
    assert "ImportExampleGen failed: " in log
    assert (
        f"damaged TFRecord files (write them again, e.g. `imgpipe ingest`):\n  {damaged}: unreadable after "
        in log
    )
