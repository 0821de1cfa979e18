"""The whole pipeline with ML Metadata on a PostgreSQL server (a throwaway one, tests/postgres.py).

A first run through the CLI (a separate process, --verbose so TFX logs its
connection config) with the password only in PGPASSWORD: it completes with
correct lineage in PostgreSQL, writes no SQLite store, and the password shows
up in no output and no file. A second run, in this process, finds the first
run's blessed model as its baseline (the Resolver reads PostgreSQL). `imgpipe prune` then
prunes the home's runs there, and a third run still finds its cache and baseline.
"""

import json
import os
import subprocess
import sys

import pytest

from imgpipe.orchestration import metadata as mlmd
from imgpipe.orchestration.local import run_local
from pipeline.config import PipelineConfig
from pipeline.pipeline import COMPONENT_IDS
from tests import lineage
from tests.e2e.conftest import SIZE

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DB = "mlmd_e2e"


@pytest.fixture(scope="module")
def pg_config(tmp_path_factory, source_backbone, digits_records, postgres_server):
    work = tmp_path_factory.mktemp("pg_e2e")
    return PipelineConfig(
        data_dir=digits_records,
        home=str(work / "home"),
        serving_dir=str(work / "serving"),
        metadata=postgres_server.url(DB),
        model_name="digits",
        backbone="MobileNetV2",
        weights=source_backbone,
        image_size=SIZE,
        epochs=10,
        learning_rate=1e-2,
        dropout=0.0,
        min_accuracy=0.5,
        prepush_validation=False,  # ML Metadata is the subject; test_pipeline_e2e covers pre-push validation
    ).resolved()


@pytest.fixture(scope="module")
def cli_run(pg_config, postgres_server, tmp_path_factory):
    """`imgpipe run --config FILE --verbose` with the password in PGPASSWORD only."""
    path = str(tmp_path_factory.mktemp("pg_cfg") / "run.yaml")
    pg_config.save(path)
    env = dict(os.environ, PGPASSWORD=postgres_server.password, PGPASSFILE=os.devnull)
    done = subprocess.run(
        [sys.executable, "-m", "imgpipe", "run", "--config", path, "--verbose"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done, json.loads(done.stdout.strip().splitlines()[-1])


def test_run_on_postgres_completes_with_correct_lineage(pg_config, cli_run, postgres_server, monkeypatch):
    _, summary = cli_run
    assert set(summary["executions"]) == set(COMPONENT_IDS)
    assert all(s == "COMPLETE" for s in summary["executions"].values()), summary["executions"]
    assert summary["blessed"] is True and summary["pushed"]
    assert os.path.exists(os.path.join(summary["pushed"], "saved_model.pb"))
    assert DB in postgres_server.databases()
    assert not os.path.exists(pg_config.metadata_path)  # no SQLite store beside it
    monkeypatch.setenv("PGPASSWORD", postgres_server.password)
    with mlmd.open_store(pg_config) as store:
        assert lineage.problems(store, pg_config.pipeline_name, summary["run_id"]) == []
        assert len(store.get_executions()) == len(COMPONENT_IDS)


def test_the_password_is_in_no_output_and_no_file(pg_config, cli_run, postgres_server):
    done, summary = cli_run
    secret = postgres_server.password
    # --verbose: TFX logged the connection config it used, and that config has no password.
    assert "Using connection config" in done.stderr and pg_config.metadata_target.host in done.stderr
    assert secret not in done.stdout and secret not in done.stderr
    saved = os.path.join(summary["run_dir"], "config.yaml")
    assert PipelineConfig.from_yaml(saved).metadata == pg_config.metadata
    needle = secret.encode()
    for top in (pg_config.home, pg_config.serving_dir):
        for dirpath, _, files in os.walk(top):
            for name in files:
                with open(os.path.join(dirpath, name), "rb") as f:
                    assert needle not in f.read(), os.path.join(dirpath, name)


def test_second_run_finds_the_blessed_baseline_in_postgres(pg_config, cli_run, postgres_server, monkeypatch):
    _, first = cli_run
    monkeypatch.setenv("PGPASSWORD", postgres_server.password)
    s = run_local(pg_config)
    assert s.run_id != first["run_id"]
    assert s.executions["Trainer"] == "CACHED"
    assert s.baseline_accuracy == pytest.approx(first["accuracy"], abs=1e-6)
    assert s.baseline_model == {"run_id": first["run_id"], "pushed": first["pushed"]}
    with mlmd.open_store(pg_config) as store:
        assert lineage.problems(store, pg_config.pipeline_name, s.run_id) == []


def test_prune_works_on_the_runs_postgres_records(pg_config, cli_run, postgres_server, monkeypatch):
    """`imgpipe prune` on a home whose runs record to PostgreSQL prunes there (the home has no
    SQLite store): every artifact left LIVE is on disk, the gate's baseline is one of them, and
    the next run is served from the cache the prune kept."""
    from imgpipe.orchestration.prune import prune_home

    monkeypatch.setenv("PGPASSWORD", postgres_server.password)
    _, first = cli_run
    result = prune_home(pg_config.home, keep=1)
    assert list(result.pipelines) == [pg_config.pipeline_name]
    report = result.pipelines[pg_config.pipeline_name]
    assert first["run_id"] in report.runs_pruned and len(report.runs_kept) == 1
    with mlmd.open_store(pg_config) as store:
        live = [a for a in store.get_artifacts() if a.state == a.LIVE and a.uri]
        assert live and all(os.path.exists(a.uri) for a in live), [a.uri for a in live]
        models = {a.uri for a in live if a.type_id == store.get_artifact_type("Model").id}
    assert any(p["why"].startswith("latest blessed model") and p["uri"] in models for p in report.protected)
    # The next run is served from the cache the prune kept, against the same baseline.
    s = run_local(pg_config)
    assert s.executions["Trainer"] == "CACHED"
    assert s.baseline_accuracy == pytest.approx(first["accuracy"], abs=1e-6)
