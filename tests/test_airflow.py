"""`imgpipe airflow-dag`: the DAG file it writes, its run policy, and the values it refuses.

The rendered file is compiled and its literals read back; one test parses it with
Airflow in a separate process (as Airflow's DAG processor does) and checks that the
parse loads no TensorFlow. tests/e2e/test_airflow_e2e.py runs the DAG for real.
"""

from __future__ import annotations

import ast
import datetime
import hashlib
import json
import os
import subprocess
import sys

import pytest

from imgpipe.cli import main as cli
from imgpipe.orchestration import airflow
from pipeline.config import ConfigError, PipelineConfig
from pipeline.pipeline import COMPONENT_IDS


@pytest.fixture
def data_dir(tmp_path):
    for split in ("train", "eval"):
        os.makedirs(tmp_path / "records" / split)
    return str(tmp_path / "records")


def _call(source: str) -> ast.Call:
    """The `dag = build_dag(...)` call of a rendered file."""
    tree = ast.parse(source)
    [call] = [
        n.value
        for n in tree.body
        if isinstance(n, ast.Assign)
        and isinstance(n.value, ast.Call)
        and getattr(n.value.func, "id", "") == "build_dag"
    ]
    return call


def _literal(source: str, name: str):
    """The value of the rendered file's `NAME = <literal>`."""
    tree = ast.parse(source)
    [value] = [
        n.value for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == name
    ]
    return ast.literal_eval(value)


def _config_literal(source: str) -> dict:
    return _literal(source, "CONFIG")


def test_rendered_file_embeds_the_resolved_config_and_policy(data_dir):
    cfg = PipelineConfig(data_dir=data_dir, home="rel_home", pipeline_name="pets", epochs=3)
    source = airflow.render_dag(cfg, "0 3 * * *", start_date="2024-05-01")
    compile(source, "imgpipe.py", "exec")  # valid Python
    assert "airflow" in source and "dag" in source  # Airflow's safe-mode scan looks for both words
    values = _config_literal(source)
    assert PipelineConfig.from_dict(values) == cfg.resolved()
    assert values["home"] == os.path.abspath("rel_home")
    kwargs = {k.arg: k.value for k in _call(source).keywords}
    assert getattr(kwargs.pop("tasks"), "id", None) == "TASKS"
    kwargs = {k: ast.literal_eval(v) for k, v in kwargs.items()}
    tasks = _literal(source, "TASKS")
    assert kwargs == {"schedule": "0 3 * * *", "start_date": "2024-05-01", "retries": 0, "catchup": False}
    assert tasks == airflow.task_graph(cfg.resolved())
    seen = set()
    for task, upstream in tasks:  # topological: a task comes after those it waits for
        assert set(upstream) <= seen, (task, upstream)
        seen.add(task)
    assert seen == set(COMPONENT_IDS)
    assert {"DataGate", "Transform"} <= set(dict(tasks)["Trainer"])  # the data gate comes first


# Run in a fresh process with Airflow, as its DAG processor parses a file: the tasks and
# their upstream tasks, and which heavy modules the parse loaded. Then, with TFX loaded,
# a task whose DAG file lists another graph is refused before anything runs, and a task whose
# failure diagnosis fails raises its component's error.
_PARSE = """
import json, os, runpy, sys
ns = runpy.run_path(sys.argv[1])
dag = ns["dag"]
heavy = sorted(m for m in ("tensorflow", "tfx", "apache_beam", "tensorflow_model_analysis") if m in sys.modules)
tasks = {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}
out = {"dag_id": dag.dag_id, "max_active_runs": dag.max_active_runs, "tasks": tasks, "heavy": heavy}
from airflow.exceptions import AirflowFailException
from imgpipe.orchestration import airflow
spec = dag.get_task("Trainer").python_callable.args[0]
stale = spec._replace(tasks=spec.tasks[:-1])
try:
    airflow.run_task(stale, ti=None)
except AirflowFailException as e:
    out["stale"] = str(e)
# A task whose component fails, with a diagnosis that fails too: the task's own error is raised.
from imgpipe.orchestration import diagnosis
def broken(*args):
    raise RuntimeError("the diagnosis broke")
diagnosis.explain = broken
class Failing:
    def prepare_for_execution(self):
        return self
    def render_template_fields(self, context):
        pass
    def execute(self, context):
        raise OSError("the component's own error")
tfx_dag, _ = airflow._tfx_dag(spec)
trainer = tfx_dag.get_task("Trainer").python_callable.keywords["component"]
out["weights_digest"] = trainer.exec_properties.get("weights_digest")
tfx_dag.get_task = lambda task_id: Failing()
class TI:
    task_id = "StatisticsGen"
try:
    airflow.run_task(spec, ti=TI())
except BaseException as e:
    out["failed"] = f"{type(e).__name__}: {e}"
# A first task makes the home's pre-flight checks before its component: a home that passes them
# runs it; one whose store no longer knows its artifacts (emptied) fails the task, named.
class First:
    task_id = next(task for task, upstream in spec.tasks if not upstream)
# A home held by a run by hand or cron: the DAG run's first task fails, before its checks.
from imgpipe.orchestration.lock import home_lock
os.makedirs(_.home, exist_ok=True)
with home_lock(_.home):
    try:
        airflow.run_task(spec, ti=First())
    except BaseException as e:
        out["first_held"] = f"{type(e).__name__}: {e}"
for case in ("passes", "emptied"):
    if case == "emptied":
        os.makedirs(os.path.join(_.pipeline_root, "Trainer", "model", "7"))
    try:
        airflow.run_task(spec, ti=First())
    except BaseException as e:
        out["first_" + case] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


def test_parsing_the_file_loads_no_tensorflow_and_gives_the_pipelines_tasks(data_dir, tmp_path):
    """Also: a task's Trainer is keyed by its weights file's bytes as the task finds them (TFX's
    cache), as in `imgpipe run`, so new weights at the same path train again."""
    weights = tmp_path / "backbone.h5"
    weights.write_bytes(b"\x89HDF\r\n\x1a\n and the weights' bytes")
    cfg = PipelineConfig(
        data_dir=data_dir, home=str(tmp_path / "home"), pipeline_name="pets", weights=str(weights)
    )
    dag_file = tmp_path / "dags" / "pets_dag.py"
    dag_file.parent.mkdir()
    dag_file.write_text(airflow.render_dag(cfg, "@daily", start_date="2024-05-01"))
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path / "airflow"), TF_CPP_MIN_LOG_LEVEL="2")
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{tmp_path / 'airflow.db'}"
    done = subprocess.run(
        [sys.executable, "-c", _PARSE, str(dag_file)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    assert out["dag_id"] == "pets" and out["max_active_runs"] == 1
    assert out["tasks"] == {task: upstream for task, upstream in airflow.task_graph(cfg.resolved())}
    assert "render it again with `imgpipe airflow-dag`" in out["stale"]
    assert out["failed"] == "OSError: the component's own error"
    assert out["first_held"].startswith(
        f"RuntimeError: the home {cfg.resolved().home} is held by another imgpipe"
    )
    assert out["first_passes"] == "OSError: the component's own error"
    assert out["first_emptied"].startswith("AirflowFailException: metadata: ")
    assert "holds no execution of pipeline 'pets'" in out["first_emptied"]
    assert out["weights_digest"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_dag_settings_one_active_run_no_catchup_no_retries():
    s = airflow.dag_settings("@daily", "2024-05-01")
    assert s["max_active_runs"] == 1
    assert s["catchup"] is False
    assert s["default_args"]["retries"] == 0
    assert s["schedule"] == "@daily"
    assert s["start_date"] == datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc)
    assert airflow.dag_settings("none", "2024-05-01")["schedule"] is None
    assert (
        airflow.dag_settings("0 3 * * *", "2024-05-01", retries=2, catchup=True)["default_args"]["retries"]
        == 2
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schedule": "0 3 * *"}, "schedule: cron '0 3 \\* \\*': expected 5 fields"),
        ({"schedule": "0 25 * * *"}, "schedule: .*hour 25"),
        ({"start_date": "01/05/2024"}, "start_date: expected YYYY-MM-DD"),
        ({"retries": -1}, "retries: must be >= 0"),
    ],
)
def test_bad_schedule_values_are_named(data_dir, kwargs, match):
    args = {"schedule": "0 3 * * *", "start_date": "2024-05-01", **kwargs}
    with pytest.raises(ConfigError, match=match):
        airflow.render_dag(PipelineConfig(data_dir=data_dir), **args)


def test_a_dag_takes_the_serving_dir_over_as_it_is_written_not_at_every_run(data_dir, tmp_path):
    """A DAG rendered with adopt_serving_dir would take over whatever version was newest at each
    run, another home's push included: it is taken over now and the DAG holds the flag off."""
    serving = tmp_path / "serving" / "imgpipe" / "3"
    serving.mkdir(parents=True)
    (serving / "saved_model.pb").write_bytes(b"")
    cfg = PipelineConfig(
        data_dir=data_dir,
        home=str(tmp_path / "home"),
        serving_dir=str(tmp_path / "serving"),
        adopt_serving_dir=True,
    )
    checked = airflow.check_config(cfg)
    assert checked.adopt_serving_dir is False
    record = json.loads((tmp_path / "home" / "adopted_serving_dirs.json").read_text())
    assert record == {str(tmp_path / "serving" / "imgpipe"): "3"}


def test_settings_that_cannot_apply_are_refused(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="replicas"):
        airflow.render_dag(PipelineConfig(data_dir=data_dir, replicas=2), "@daily")
    with pytest.raises(ConfigError, match="trainer_machine_type"):
        airflow.render_dag(PipelineConfig(data_dir=data_dir, trainer_machine_type="n1-standard-8"), "@daily")
    with pytest.raises(ConfigError, match="no train/ subdirectory"):
        airflow.render_dag(PipelineConfig(data_dir=str(tmp_path)), "@daily")
    with pytest.raises(ConfigError, match="pipeline_name: 'my pipe' is the DAG's dag_id"):
        airflow.render_dag(PipelineConfig(data_dir=data_dir, pipeline_name="my pipe"), "@daily")
    assert "dag_id 'caf\u00e9-2.nightly'" in airflow.render_dag(
        PipelineConfig(data_dir=data_dir, pipeline_name="caf\u00e9-2.nightly"), "@daily"
    )  # Airflow's \w takes any letter


def test_cli_writes_the_file_and_reports_json(data_dir, tmp_path, capsys):
    out = tmp_path / "dags" / "imgpipe.py"
    code = cli.main(
        ["airflow-dag", "--schedule", "0 3 * * *", "--output", str(out), "--data", data_dir,
         "--home", str(tmp_path / "home"), "--metadata", "postgresql://ml@db:5432/mlmd", "--start-date", "2024-05-01"]
    )  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {
        "output": str(out),
        "dag_id": "imgpipe",
        "schedule": "0 3 * * *",
        "max_active_runs": 1,
        "catchup": False,
        "retries": 0,
        "metadata": "postgresql://ml@db:5432/mlmd",
    }
    assert _config_literal(out.read_text())["metadata"] == "postgresql://ml@db:5432/mlmd"
    # The file guards its own import of imgpipe: Airflow puts the DAG folder (holding imgpipe.py) on sys.path.
    assert "_dag_folder" in out.read_text()


def test_cli_usage_errors_exit_2(data_dir, tmp_path, capsys):
    base = ["airflow-dag", "--output", str(tmp_path / "d.py"), "--data", data_dir]
    assert cli.main([*base, "--schedule", "every day"]) == 2
    assert "schedule: cron 'every day'" in capsys.readouterr().err
    assert cli.main([*base, "--schedule", "@daily", "--lock-file", str(tmp_path / "l")]) == 2
    assert "--lock-file does not apply to an Airflow DAG" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "d.py")
    # --output a directory, or under a file: named before any work, nothing left behind
    (tmp_path / "dags").mkdir()
    (tmp_path / "a-file").write_text("x")
    for output, says in (
        (tmp_path / "dags", "is a directory: give a file name"),
        (tmp_path / "a-file" / "d.py", f"is under {tmp_path / 'a-file'}, which is a file"),
    ):
        assert (
            cli.main(["airflow-dag", "--output", str(output), "--data", data_dir, "--schedule", "@daily"])
            == 2
        )
        assert f"--output {output} {says}" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "d.py") and not os.listdir(tmp_path / "dags")
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]  # no temporary file left


def test_an_empty_output_is_refused_and_a_name_airflow_skips_is_warned_about(data_dir, tmp_path, capsys):
    """`--output ""` failed after the work with a rename's error; a DAG file not named *.py is
    never read by Airflow's scheduler."""
    base = ["airflow-dag", "--data", data_dir, "--schedule", "@daily", "--home", str(tmp_path / "home")]
    assert cli.main([*base, "--output", ""]) == 2
    assert "--output is empty: give the file to write" in capsys.readouterr().err
    assert cli.main([*base, "--output", str(tmp_path / "dag.txt")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["output"] == str(tmp_path / "dag.txt")
    assert "does not end in .py: Airflow's scheduler reads DAG files named *.py only" in captured.err


def test_a_second_file_with_the_same_dag_id_is_refused(data_dir, tmp_path, capsys, monkeypatch):
    """Airflow keeps one DAG per dag_id: a DAG file written under a new name in its DAG folder
    (or beside a hand-written DAG with that id) made the second an import error that never ran.
    Inside Airflow's DAG folder the whole folder is searched, as Airflow scans it; elsewhere
    the output's own folder."""
    dags = tmp_path / "dags"
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(dags))
    base = ["airflow-dag", "--data", data_dir, "--schedule", "@daily", "--home", str(tmp_path / "home")]
    assert cli.main([*base, "--output", str(dags / "imgpipe.py")]) == 0
    assert cli.main([*base, "--output", str(dags / "imgpipe.py")]) == 0  # the same file written again
    capsys.readouterr()
    assert cli.main([*base, "--output", str(dags / "team" / "digits.py")]) == 2
    err = capsys.readouterr().err
    assert f"{dags / 'imgpipe.py'} already defines a DAG with dag_id 'imgpipe'" in err, err
    assert not (dags / "team").exists()
    assert (
        cli.main([*base, "--output", str(dags / "digits.py"), "--pipeline-name", "digits"]) == 0
    )  # another id
    (dags / "imgpipe.py").unlink()
    (dags / "legacy").mkdir()
    (dags / "legacy" / "hand.py").write_text('with DAG(dag_id = "digits", schedule=None) as dag:\n    pass\n')
    (dags / "legacy" / "other.py").write_text('DAG(dag_id="digits-2")\n')  # another id: no match
    assert cli.main([*base, "--output", str(dags / "d2.py"), "--pipeline-name", "digits"]) == 2
    err = capsys.readouterr().err
    assert str(dags / "digits.py") in err and str(dags / "legacy" / "hand.py") in err
    assert "other.py" not in err and not (dags / "d2.py").exists()
    monkeypatch.delenv("AIRFLOW__CORE__DAGS_FOLDER")
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "elsewhere"))  # not Airflow's folder: OUTPUT's own
    assert cli.main([*base, "--output", str(dags / "legacy" / "d3.py"), "--pipeline-name", "digits"]) == 2
    err = capsys.readouterr().err
    assert str(dags / "legacy" / "hand.py") in err and str(dags / "digits.py") not in err


_TASK_ON_POSTGRES = """
import json, sys
from imgpipe.orchestration import airflow
spec = airflow._TaskSpec(sys.argv[1], (), "@daily", "2024-05-01", 0, False)
tfx_dag, _ = airflow._tfx_dag(spec)
connections = {t.task_id: t.python_callable.keywords["metadata_connection_config"] for t in tfx_dag.tasks}
print(json.dumps({k: [c.postgresql.dbname, c.postgresql.skip_db_creation] for k, c in connections.items()}))
"""


def test_a_task_on_a_new_postgres_database_creates_it_and_tfx_connects_directly(
    data_dir, tmp_path, postgres_server
):
    """The DAG's first task on a database the server does not have yet: imgpipe creates it (ML
    Metadata does, through the server's `postgres` database), and TFX's connection config skips
    that step, so a password file with a line for the database alone serves every later task.
    (A fresh process: Airflow's logging set-up would stay in this one.)"""
    cfg = PipelineConfig(
        data_dir=data_dir, home=str(tmp_path / "home"), metadata=postgres_server.url("airflow_new_db")
    ).resolved()
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path / "airflow"), TF_CPP_MIN_LOG_LEVEL="2")
    env.update(PGPASSWORD=postgres_server.password, PGPASSFILE=os.devnull)
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{tmp_path / 'airflow.db'}"
    assert "airflow_new_db" not in postgres_server.databases()
    done = subprocess.run(
        [sys.executable, "-c", _TASK_ON_POSTGRES, json.dumps(cfg.to_dict())],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    connections = json.loads(done.stdout.strip().splitlines()[-1])
    assert "airflow_new_db" in postgres_server.databases()
    assert set(connections) == set(COMPONENT_IDS)
    assert all(c == ["airflow_new_db", True] for c in connections.values()), connections


def test_a_home_in_a_bucket_needs_postgres_metadata(tmp_path):
    """A DAG's tasks may write their artifacts to a bucket when ML Metadata is on PostgreSQL; with
    SQLite (a file in the home) a gs:// home made a local folder 'gs:'."""
    from imgpipe.orchestration import airflow as airflow_lib

    data = tmp_path / "data"
    for split in ("train", "eval"):
        (data / split).mkdir(parents=True)
    with pytest.raises(ConfigError, match="home: gs://b/h is a remote URI, and ML Metadata's SQLite store"):
        airflow_lib.check_config(PipelineConfig(data_dir=str(data), home="gs://b/h", weights="none"))
    config = PipelineConfig(
        data_dir=str(data), home="gs://b/h", weights="none", metadata="postgresql://u@db:5432/m"
    )
    assert airflow_lib.check_config(config).home == "gs://b/h"
    assert not (tmp_path / "gs:").exists()
