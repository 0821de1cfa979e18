"""`imgpipe airflow-dag`: the DAG file it writes, its run policy, and the values it refuses.

These tests do not load Airflow or TFX (the rendered file is compiled and its
literals read back); tests/e2e/test_airflow_e2e.py runs the DAG for real.
"""

from __future__ import annotations

import ast
import datetime
import json
import os

import pytest

from imgpipe.cli import main as cli
from imgpipe.orchestration import airflow
from pipeline.config import ConfigError, PipelineConfig


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


def _config_literal(source: str) -> dict:
    tree = ast.parse(source)
    [value] = [
        n.value
        for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "CONFIG"
    ]
    return ast.literal_eval(value)


def test_rendered_file_embeds_the_resolved_config_and_policy(data_dir):
    cfg = PipelineConfig(data_dir=data_dir, home="rel_home", pipeline_name="pets", epochs=3)
    source = airflow.render_dag(cfg, "0 3 * * *", start_date="2024-05-01")
    compile(source, "imgpipe.py", "exec")  # valid Python
    assert "airflow" in source and "dag" in source  # Airflow's safe-mode scan looks for both words
    values = _config_literal(source)
    assert PipelineConfig.from_dict(values) == cfg.resolved()
    assert values["home"] == os.path.abspath("rel_home")
    kwargs = {k.arg: ast.literal_eval(k.value) for k in _call(source).keywords}
    assert kwargs == {"schedule": "0 3 * * *", "start_date": "2024-05-01", "retries": 0, "catchup": False}


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


def test_settings_that_cannot_apply_are_refused(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="replicas"):
        airflow.render_dag(PipelineConfig(data_dir=data_dir, replicas=2), "@daily")
    with pytest.raises(ConfigError, match="trainer_machine_type"):
        airflow.render_dag(PipelineConfig(data_dir=data_dir, trainer_machine_type="n1-standard-8"), "@daily")
    with pytest.raises(ConfigError, match="no train/ subdirectory"):
        airflow.render_dag(PipelineConfig(data_dir=str(tmp_path)), "@daily")


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
