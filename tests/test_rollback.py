"""`imgpipe rollback`: an earlier version served again, the rolled-back model kept out, the gate's
baseline the model served.

Histories are written into ML Metadata as LocalDagRunner writes them (tests/mlmd_fixtures.py),
with stand-in SavedModels; the e2e file checks a real run after a rollback
(tests/e2e/test_pipeline_e2e.py, `test_a_rolled_back_model_is_not_pushed_again`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from ml_metadata.proto import metadata_store_pb2

from imgpipe.orchestration import lock, metadata, rollback, runs, summary
from imgpipe.orchestration.rollback import LOG_FILE, RollbackError, RollbackFailed, rollback_home
from imgpipe.orchestration.summary import RunSummary
from pipeline.config import PipelineConfig
from serving import model_files as served_files
from tests.mlmd_fixtures import RUNNING, FakeHome, model_files

FAILED = metadata_store_pb2.Execution.FAILED
_REAL_DAMAGE = served_files.damage


@pytest.fixture(autouse=True)
def stand_ins_load(monkeypatch):
    """The histories' versions are stand-ins (tests/mlmd_fixtures.model_files), not SavedModels:
    taken as loadable while their index file is there. test_a_version_that_cannot_be_loaded_is_never_served_again
    checks real ones with the real check."""

    def damage(path: str) -> str | None:
        index = os.path.join(path, "variables", "variables.index")
        return None if os.path.isfile(index) else f"{index} is missing"

    monkeypatch.setattr(served_files, "damage", damage)


ROLLED_BACK = "rolled_back"


def _copied_in_by_hand(version: str) -> None:
    """A stand-in version no run pushed (its files as mlmd_fixtures.model_files writes them)."""
    os.makedirs(os.path.join(version, "variables"))
    with open(os.path.join(version, "saved_model.pb"), "wb") as f:
        f.write(b"copied in by hand")
    with open(os.path.join(version, "variables", "variables.index"), "wb") as f:
        f.write(b"index copied in by hand")


class History:
    """A home whose runs each trained a model, blessed and pushed it as the next version."""

    def __init__(self, tmp_path, metadata_url: str = "", pipeline: str = "imgpipe", loadable: bool = False):
        """metadata_url: runs recording to that PostgreSQL database instead of the home's SQLite;
        loadable: models whose files pass the real load check (mlmd_fixtures.model_files)."""
        self.loadable = loadable
        self.config = PipelineConfig(
            data_dir=str(tmp_path / "data"),
            home=str(tmp_path / "home"),
            serving_dir=str(tmp_path / "serving"),
            model_name="m",
            metadata=metadata_url,
            pipeline_name=pipeline,
        )
        connection = metadata.connection_config(self.config) if metadata_url else None
        self.home = FakeHome(self.config.home, pipeline, connection=connection)
        os.makedirs(tmp_path / "data", exist_ok=True)
        self.serving = self.config.model_serving_dir
        self.models, self.blessings = [], []

    def run(self, content: bytes, version: str | None) -> tuple:
        """One run: a new model with `content`, blessed; pushed as `version` (None: not pushed)."""
        run = f"{self.home.pipeline}-run-{len(self.models) + 1}"
        _, made = self.home.execute(run, "Trainer", outputs={"model": ("Model", {})})
        model = made["model"]
        model_files(model, content, loadable=self.loadable)
        _, made = self.home.execute(
            run,
            "Evaluator",
            inputs={"model": [model]},
            outputs={"blessing": ("ModelBlessing", {"blessed": 1, "current_model_id": model.id})},
        )
        blessing = made["blessing"]
        pushed = None
        if version is not None:
            pushed = os.path.join(self.serving, version)
            shutil.copytree(os.path.join(model.uri, "Format-Serving"), pushed)
            self.home.execute(
                run,
                "Pusher",
                inputs={"model": [model], "model_blessing": [blessing]},
                outputs={"pushed_model": ("PushedModel", {"pushed": 1, "pushed_destination": pushed})},
            )
        runs.write_record(
            self.config,
            RunSummary(run_id=run, blessed=True, pushed=pushed, accuracy=0.9, replicas=1, executions={}),
        )
        self.models.append(model)
        self.blessings.append(blessing)
        return model, blessing

    def artifact(self, a):
        return self.home.artifact(a.id)

    def versions(self) -> list[str]:
        return sorted((n for n in os.listdir(self.serving) if n.isdigit()), key=int)


def _same(a: str, b: str) -> bool:
    from components import pusher

    return pusher.same_model(a, b)


def test_rollback_serves_the_earlier_model_again_and_keeps_the_newer_out(tmp_path):
    h = History(tmp_path)
    model_a, blessing_a = h.run(b"model A", "100")
    model_b, blessing_b = h.run(b"model B", "200")

    result = rollback_home(h.home.home, reason="answers 'cat' for every dog photo")

    assert (result.from_version, result.to_version) == ("200", "100")
    # The earlier model, pushed again as the newest version (a "latest" policy serves it): every
    # version kept.
    assert h.versions() == ["100", "200", result.new_version] and int(result.new_version) > 200
    assert _same(os.path.join(h.serving, result.new_version), os.path.join(h.serving, "100"))
    # The model taken out is marked, with why; its blessing withdrawn and out of TFX's cache.
    b = h.artifact(model_b)
    note = b.custom_properties[ROLLED_BACK].string_value
    assert "served version 200 replaced by version 100's model" in note
    assert "answers 'cat' for every dog photo" in note
    withdrawn = h.artifact(blessing_b)
    assert withdrawn.custom_properties["blessed"].int_value == 0
    assert withdrawn.state == withdrawn.ABANDONED
    assert withdrawn.custom_properties[metadata.WITHDRAWN_KEY].string_value == note
    assert h.artifact(blessing_a).custom_properties["blessed"].int_value == 1
    assert ROLLED_BACK not in h.artifact(model_a).custom_properties
    assert result.rolled_back_model == {"id": model_b.id, "uri": model_b.uri}
    assert result.restored_model == {"id": model_a.id, "uri": model_a.uri}
    assert result.baseline == {"id": model_a.id, "uri": model_a.uri} and result.warnings == []
    # What the next run's own check finds: the served model is the baseline, nothing left to withdraw.
    assert summary.withdraw_unserved_blessings(h.config) == []
    line, served = [json.loads(x) for x in open(os.path.join(h.home.home, LOG_FILE), encoding="utf-8")]
    assert line["from_version"] == "200" and line["to_version"] == "100" and line["note"] == note
    assert [(m["version"], m["id"]) for m in line["marked"]] == [("200", model_b.id)]
    assert served["served"] == {"serving_dir": h.serving, "version": result.new_version, "copy_of": "100"}


def test_every_model_newer_than_the_target_loses_its_blessing(tmp_path):
    """Rolled back two versions: the served model and the one between are marked and lose their
    blessings (neither is served, so neither may be the gate's baseline)."""
    h = History(tmp_path)
    model_a, blessing_a = h.run(b"model A", "100")
    model_b, blessing_b = h.run(b"model B", "200")
    model_c, blessing_c = h.run(b"model C", "300")

    result = rollback_home(h.home.home, to="100")

    assert result.to_version == "100" and result.baseline["id"] == model_a.id
    reasons = {w["blessing"]: w["reason"] for w in result.withdrawn}
    assert set(reasons) == {blessing_b.id, blessing_c.id}
    assert reasons[blessing_c.id].startswith("rolled back on ")
    assert reasons[blessing_b.id] == "superseded: " + reasons[blessing_c.id]
    # Every version after the target is taken out: C, served, and B, skipped (a run whose Trainer
    # is cached on B would push it over the rollback).
    assert ROLLED_BACK in h.artifact(model_c).custom_properties
    assert ROLLED_BACK in h.artifact(model_b).custom_properties
    assert [m["version"] for m in result.marked] == ["200", "300"]
    assert h.artifact(blessing_b).custom_properties["blessed"].int_value == 0
    assert h.artifact(blessing_a).custom_properties["blessed"].int_value == 1


def test_rolling_forward_again_clears_the_mark_and_gives_the_blessing_back(tmp_path):
    h = History(tmp_path)
    model_a, blessing_a = h.run(b"model A", "100")
    model_b, blessing_b = h.run(b"model B", "200")
    back = rollback_home(h.home.home)
    # While B was marked, a run judged it again and refused it: a LIVE not-blessed blessing.
    _, made = h.home.execute(
        "run-3",
        "Evaluator",
        inputs={"model": [h.artifact(model_b)]},  # as ML Metadata holds it now (an input is written back)
        outputs={"blessing": ("ModelBlessing", {"blessed": 0, "current_model_id": model_b.id})},
    )
    refusal = made["blessing"]

    forward = rollback_home(h.home.home, to="200", undo=True)

    assert forward.from_version == back.new_version and forward.to_version == "200"
    assert ROLLED_BACK not in h.artifact(model_b).custom_properties
    restored = h.artifact(blessing_b)
    assert restored.custom_properties["blessed"].int_value == 1 and restored.state == restored.LIVE
    assert metadata.WITHDRAWN_KEY not in restored.custom_properties
    assert forward.restored == [{"blessing": blessing_b.id, "model": model_b.id}]
    # The refusal is out of the cache: the next identical run judges B again.
    assert h.artifact(refusal).state == refusal.ABANDONED
    # An undo: A, served until now, did not misbehave: not marked, and its blessing stays (B,
    # newer, is the baseline again); a later default rollback may serve A again.
    assert ROLLED_BACK not in h.artifact(model_a).custom_properties and forward.rolled_back_model is None
    assert h.artifact(blessing_a).custom_properties["blessed"].int_value == 1
    assert forward.withdrawn == []
    assert forward.baseline["id"] == model_b.id
    assert summary.withdraw_unserved_blessings(h.config) == []
    assert h.versions()[-1] == forward.new_version
    assert _same(os.path.join(h.serving, forward.new_version), os.path.join(h.serving, "200"))


def test_rolling_back_twice_goes_further_back_not_forward_again(tmp_path):
    """100 (A), 200 (B), rolled back to A: the next rollback skips B (taken out) and A's own
    version; with nothing older it says so, naming B's version and how to serve it on purpose."""
    h = History(tmp_path)
    model_z, _ = h.run(b"model Z", "50")
    model_a, _ = h.run(b"model A", "100")
    model_b, _ = h.run(b"model B", "200")
    first = rollback_home(h.home.home)
    assert first.to_version == "100"
    second = rollback_home(h.home.home)
    assert (second.from_version, second.to_version) == (first.new_version, "50")
    assert ROLLED_BACK in h.artifact(model_a).custom_properties
    assert ROLLED_BACK in h.artifact(model_b).custom_properties
    assert second.baseline["id"] == model_z.id
    with pytest.raises(RollbackError) as e:
        rollback_home(h.home.home)
    assert (
        f"versions {first.new_version}, 200, 100 hold models rolled back earlier (--to VERSION serves one again)"
        in str(e.value)
    )


def test_a_dry_run_changes_nothing(tmp_path):
    h = History(tmp_path)
    h.run(b"model A", "100")
    model_b, blessing_b = h.run(b"model B", "200")
    before = open(h.home.metadata_path, "rb").read()

    result = rollback_home(h.home.home, dry_run=True)

    assert result.dry_run and result.new_version is None
    assert (result.from_version, result.to_version) == ("200", "100")
    assert [w["blessing"] for w in result.withdrawn] == [blessing_b.id]
    assert h.versions() == ["100", "200"]
    assert open(h.home.metadata_path, "rb").read() == before
    assert not os.path.exists(os.path.join(h.home.home, LOG_FILE))


def test_the_default_target_skips_versions_holding_the_served_model(tmp_path):
    """A version byte-identical to the served one (an earlier rollback's copy) is no rollback."""
    h = History(tmp_path)
    model_a, _ = h.run(b"model A", "100")
    h.run(b"model B", "200")
    shutil.copytree(os.path.join(h.serving, "200"), os.path.join(h.serving, "250"))
    shutil.copytree(os.path.join(h.serving, "200"), os.path.join(h.serving, "300"))
    assert rollback_home(h.home.home, dry_run=True).to_version == "100"


@pytest.mark.parametrize(
    "to, message",
    [
        ("150", "--to 150: no such version in {serving} (its versions: 100, 200)"),
        ("200", "--to 200: version 200 is the one served now"),
        ("abc", "--to abc: not a version number (a version folder's name: 100, 200)"),
    ],
)
def test_a_bad_target_is_named(tmp_path, to, message):
    h = History(tmp_path)
    h.run(b"model A", "100")
    h.run(b"model B", "200")
    with pytest.raises(RollbackError, match=None) as e:
        rollback_home(h.home.home, to=to)
    assert message.format(serving=h.serving) in str(e.value)
    assert h.versions() == ["100", "200"]


def test_nothing_to_roll_back_to(tmp_path):
    h = History(tmp_path)
    h.run(b"model A", "100")
    with pytest.raises(
        RollbackError, match="no earlier version holds another model than the served version 100"
    ):
        rollback_home(h.home.home)
    # A same-bytes copy is no other model either.
    shutil.copytree(os.path.join(h.serving, "100"), os.path.join(h.serving, "101"))
    with pytest.raises(
        RollbackError, match=r"version 100 holds the same model \(byte for byte, or the same weights\)"
    ):
        rollback_home(h.home.home, to="100")


def test_a_home_without_records_is_refused(tmp_path):
    os.makedirs(tmp_path / "empty")
    with pytest.raises(RollbackError, match="has no readable run record"):
        rollback_home(str(tmp_path / "empty"))
    with pytest.raises(RollbackError, match="is not a directory"):
        rollback_home(str(tmp_path / "missing"))


def test_a_config_file_names_the_pipeline_when_runs_keep_no_record(tmp_path):
    """Runs under Airflow write no HOME/runs records: the pipeline's config file says where its
    serving dir and ML Metadata are."""
    h = History(tmp_path)
    h.run(b"model A", "100")
    model_b, _ = h.run(b"model B", "200")
    shutil.rmtree(os.path.join(h.home.home, "runs"))
    with pytest.raises(RollbackError, match="has no readable run record"):
        rollback_home(h.home.home)
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(h.config.dumps(str(config_file)), encoding="utf-8")
    result = rollback_home(None, config_path=str(config_file))
    assert (result.from_version, result.to_version) == ("200", "100")
    assert ROLLED_BACK in h.artifact(model_b).custom_properties
    with pytest.raises(RollbackError, match="--config: config file not found"):
        rollback_home(None, config_path=str(tmp_path / "nowhere.yaml"))
    with pytest.raises(RollbackError, match="give --home"):
        rollback_home(None)


def test_a_target_unknown_to_ml_metadata_leaves_no_baseline(tmp_path):
    """Z at 50 copied in by hand, A at 100, B at 200; rolled back to 50: no blessed model is the
    one served, so none may be the next baseline (A was: a run cached on A was "identical" to
    it, blessed, and pushed over the rollback)."""
    h = History(tmp_path)
    model_a, blessing_a = h.run(b"model A", "100")
    model_b, blessing_b = h.run(b"model B", "200")
    _copied_in_by_hand(os.path.join(h.serving, "50"))

    result = rollback_home(h.home.home, to="50")

    assert result.baseline is None and result.restored_model is None
    assert {w["blessing"] for w in result.withdrawn} == {blessing_a.id, blessing_b.id}
    assert ROLLED_BACK in h.artifact(model_b).custom_properties
    assert ROLLED_BACK in h.artifact(model_a).custom_properties  # pushed after 50: taken out too
    assert any("every blessing is withdrawn" in w for w in result.warnings)
    assert summary.withdraw_unserved_blessings(h.config) == []


def test_a_failed_copy_changes_nothing(tmp_path, monkeypatch):
    import errno

    from components import pusher

    h = History(tmp_path)
    h.run(b"model A", "100")
    model_b, blessing_b = h.run(b"model B", "200")
    before = open(h.home.metadata_path, "rb").read()

    def full_disk(model_path, base_directory):
        raise OSError(errno.ENOSPC, "No space left on device", base_directory)

    monkeypatch.setattr(pusher, "stage_copy", full_disk)
    with pytest.raises(
        RollbackFailed,
        match="version 100 could not be copied into .*No space left on device.*nothing was changed",
    ):
        rollback_home(h.home.home)
    assert open(h.home.metadata_path, "rb").read() == before and h.versions() == ["100", "200"]


def test_a_failed_rename_says_ml_metadata_has_it_and_a_second_run_completes_it(tmp_path, monkeypatch):
    import errno

    from components import pusher

    h = History(tmp_path)
    model_a, _ = h.run(b"model A", "100")
    model_b, _ = h.run(b"model B", "200")

    def refused(staging, base_directory, now=None):
        shutil.rmtree(staging)
        raise OSError(errno.EACCES, "Permission denied", base_directory)

    with monkeypatch.context() as m:
        m.setattr(pusher, "rename_in", refused)
        with pytest.raises(
            RollbackFailed,
            match=r"ML Metadata and rollbacks.jsonl already record the rollback \(marked model\(s\) \d+",
        ) as e:
            rollback_home(h.home.home, reason="wrong answers")
    assert h.versions() == ["100", "200"]  # no staging folder left either
    assert sorted(os.listdir(h.serving)) == ["100", "200"]
    assert ROLLED_BACK in h.artifact(model_b).custom_properties
    assert str(e.value).endswith(
        f"`imgpipe rollback --home {h.home.home} --to 100 --reason 'wrong answers'` serves the copy"
    )
    # Killed there instead (kill -9), no one would have been told: each later run and rollback says so,
    # with the command that completes it, its reason repeated.
    unfinished = rollback.unfinished_rollback(h.home.home, h.serving)
    assert unfinished.startswith("the last rollback (rolled back on ") and unfinished.endswith(
        f"but its copy of version 100 was never served (it was killed, or its rename failed): version 200, "
        f"which it took out, is still the newest in {h.serving}; `imgpipe rollback --home {h.home.home} "
        "--to 100 --reason 'wrong answers'` completes it"
    )
    assert rollback_home(h.home.home, dry_run=True).warnings[0] == unfinished
    assert (
        "is recorded in rollbacks.jsonl (and in ML Metadata, unless it was killed before that)" in unfinished
    )
    # The command it names is the completion: it does not warn of itself (an audit's did).
    completing = rollback_home(h.home.home, to="100", reason="wrong answers", dry_run=True)
    assert not any("was never served" in w for w in completing.warnings), completing.warnings
    again = rollback_home(h.home.home)
    assert (again.from_version, again.to_version) == ("200", "100") and again.baseline["id"] == model_a.id
    assert _same(os.path.join(h.serving, again.new_version), os.path.join(h.serving, "100"))
    assert rollback.unfinished_rollback(h.home.home, h.serving) is None


def test_a_push_the_pusher_refused_as_rolled_back_loses_its_blessing(tmp_path):
    """Under Airflow (no home lock) a rollback can mark a model between its run's Evaluator and
    Pusher: the Pusher refuses it and finishes. Its blessing must not stay, counted as pushed,
    and become the baseline."""
    h = History(tmp_path)
    h.run(b"model A", "100")
    note = "rolled back on 2026-12-06T10:00:00Z: served version 200 replaced by version 100's model"
    _, made = h.home.execute("run-2", "Trainer", outputs={"model": ("Model", {ROLLED_BACK: note})})
    model = made["model"]
    model_files(model, b"model B")
    _, made = h.home.execute(
        "run-2",
        "Evaluator",
        inputs={"model": [model]},
        outputs={"blessing": ("ModelBlessing", {"blessed": 1, "current_model_id": model.id})},
    )
    blessing = made["blessing"]
    h.home.execute(
        "run-2",
        "Pusher",
        inputs={"model": [model], "model_blessing": [blessing]},
        outputs={"pushed_model": ("PushedModel", {"pushed": 0, ROLLED_BACK: note})},
    )
    [(withdrawn, reason)] = summary.withdraw_unserved_blessings(h.config)
    assert withdrawn == blessing.id and reason == f"not pushed in run run-2: the model was {note}"


def test_prune_keeps_a_rolled_back_model(tmp_path):
    """Its record lets a later rollback skip its version and a run cached on it refuse it."""
    from imgpipe.orchestration.prune import prune_home

    h = History(tmp_path)
    h.run(b"model A", "100")
    model_b, _ = h.run(b"model B", "200")
    for i in range(3):
        h.run(f"model {i}".encode(), None)
    rollback_home(h.home.home, to="100")
    result = prune_home(h.home.home, keep=1)
    [kept] = [p for p in result.pipelines["imgpipe"].protected if p["id"] == model_b.id]
    assert kept["why"].startswith("a model rolled back")
    assert h.artifact(model_b).state == model_b.LIVE and os.path.isdir(model_b.uri)


def test_an_airflow_run_between_its_tasks_stops_a_rollback(tmp_path):
    """Airflow's tasks take no home lock: a run past its Evaluator, its Pusher not yet started,
    may push over the rollback. One that failed, or stopped a day ago, does not stop it."""
    from imgpipe.orchestration.prune import airflow_run_in_progress

    h = History(tmp_path)
    h.run(b"model A", "100")
    h.run(b"model B", "200")
    airflow = h.home
    airflow.airflow = True  # the next executions as TFX's Airflow launcher records them
    _, made = airflow.execute("scheduled-1", "Trainer", outputs={"model": ("Model", {})})
    airflow.execute("scheduled-1", "Evaluator", inputs={"model": [made["model"]]})
    with pytest.raises(
        RollbackError, match="has an Airflow run between two tasks .*roll back after the run ends"
    ):
        rollback_home(h.home.home)
    assert airflow_run_in_progress(airflow.store, "imgpipe") is None  # prune: nothing runs now
    later = airflow_run_in_progress(airflow.store, "imgpipe", before_pusher=True, now=time.time() + 2 * 86400)
    assert later is None
    airflow.execute("scheduled-1", "Pusher", state=FAILED)
    assert rollback_home(h.home.home, dry_run=True).to_version == "100"
    # A failed attempt that Airflow's retry followed (the same component, a later execution)
    # does not end the run: between its tasks again, it still stops a rollback.
    props = {"run_id": "scheduled-2", "component_id": "Trainer"}
    airflow.execute("scheduled-2", "Trainer", state=FAILED, exec_properties=props)
    airflow.execute("scheduled-2", "Trainer", outputs={"model": ("Model", {})}, exec_properties=props)
    with pytest.raises(RollbackError, match="has an Airflow run between two tasks"):
        rollback_home(h.home.home, dry_run=True)


def test_a_failed_airflow_task_stops_no_rollback_for_good(tmp_path):
    """TFX's Airflow launcher left a failed task's execution RUNNING, and `rollback` and `prune`
    refused for good ("an Airflow run in progress"), through later runs that succeeded. The
    failed task marks its own execution FAILED, a later DAG run's first tasks mark what earlier
    runs left unfinished, and `imgpipe run` takes one not updated for a day for a dead task's."""
    from imgpipe.orchestration.prune import airflow_run_in_progress
    from imgpipe.orchestration.recovery import fail_airflow_executions

    h = History(tmp_path)
    h.run(b"model A", "100")
    h.run(b"model B", "200")
    airflow = h.home
    airflow.airflow = True

    def task(run, node):
        execution, _ = airflow.execute(
            run, node, state=RUNNING, exec_properties={"run_id": run, "component_id": node}
        )
        return execution

    statistics = task("manual-1", "StatisticsGen")
    task("manual-1", "SchemaGen")  # a task of the same run, running beside it
    with pytest.raises(RollbackError, match="has an Airflow run in progress"):
        rollback_home(h.home.home, dry_run=True)
    assert fail_airflow_executions(
        airflow.store, "imgpipe", "its task failed", "manual-1", "StatisticsGen"
    ) == [statistics.id]
    [marked] = airflow.store.get_executions_by_id([statistics.id])
    assert marked.last_known_state == FAILED and "its task failed" in str(marked.custom_properties)
    assert airflow_run_in_progress(airflow.store, "imgpipe") is not None  # SchemaGen's still runs
    # The next DAG run's first task: what earlier runs left unfinished is a dead task's.
    assert len(fail_airflow_executions(airflow.store, "imgpipe", "earlier run", "manual-2", others=True)) == 1
    assert airflow_run_in_progress(airflow.store, "imgpipe") is None
    assert rollback_home(h.home.home, dry_run=True).to_version == "100"
    # Unfinished, but not updated for a day: `imgpipe run` does not wait for it; prune and rollback do.
    task("manual-3", "Trainer")
    later = time.time() + 2 * 86400
    assert (
        airflow_run_in_progress(airflow.store, "imgpipe", "run", True, now=later, stale_after=86400) is None
    )
    assert airflow_run_in_progress(airflow.store, "imgpipe", "run", True, now=later) is not None
    # `imgpipe run` beside a live Airflow run of the pipeline: refused as a held home is (exit 75).
    from imgpipe.orchestration.local import _refuse_beside_an_airflow_run
    from imgpipe.orchestration.lock import LockBusy

    with pytest.raises(LockBusy, match="not starting: pipeline 'imgpipe' has an Airflow run in progress"):
        _refuse_beside_an_airflow_run(h.config)


def test_a_version_unknown_to_ml_metadata_is_rolled_back_with_warnings(tmp_path):
    """Versions copied in by hand: the rollback still serves the target; it says what it cannot do."""
    h = History(tmp_path)
    model_a, blessing_a = h.run(b"model A", "100")
    _copied_in_by_hand(os.path.join(h.serving, "50"))

    result = rollback_home(h.home.home)

    assert result.to_version == "50" and result.restored_model is None
    assert any("version 50 holds no model this home's ML Metadata knows" in w for w in result.warnings)
    assert ROLLED_BACK in h.artifact(model_a).custom_properties
    assert result.baseline is None  # A's blessing withdrawn, no other
    assert h.artifact(blessing_a).custom_properties["blessed"].int_value == 0
    # The other way: the served version unknown, the target A.
    again = rollback_home(h.home.home, to="100")
    assert any("refused by the rollback log only" in w for w in again.warnings)
    assert ROLLED_BACK not in h.artifact(model_a).custom_properties
    assert again.baseline["id"] == model_a.id


def test_a_run_holding_the_home_makes_it_wait_or_exit(tmp_path):
    h = History(tmp_path)
    h.run(b"model A", "100")
    h.run(b"model B", "200")
    with lock.run_lock(lock.home_lock_path(h.home.home), holder="run test"):
        with pytest.raises(lock.LockBusy):
            rollback_home(h.home.home)
    assert h.versions() == ["100", "200"]


def test_the_command_prints_its_result_as_json(tmp_path):
    h = History(tmp_path, loadable=True)  # another process: the real load check
    h.run(b"model A", "100")
    h.run(b"model B", "200")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = subprocess.run(
        [sys.executable, "-m", "imgpipe", "rollback", "--home", h.home.home, "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["to_version"] == "100" and result["dry_run"] is True
    assert "would serve version 100's model" in done.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "imgpipe", "rollback", "--home", h.home.home, "--to", "7"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert "--to 7: no such version" in bad.stderr


def test_drift_follows_a_rollbacks_copy_to_the_run_that_trained_it(tmp_path):
    """`drift --run served`: the served version is a rollback's copy, which no run pushed."""
    from imgpipe.drift import sources

    h = History(tmp_path)
    h.run(b"model A", "100")
    h.run(b"model B", "200")
    result = rollback_home(h.home.home)
    folder = sources.pushing_run(h.home.home, result.new_version)
    assert runs.read_summary(folder)["pushed"] == os.path.join(h.serving, "100")
    with pytest.raises(sources.SourceError, match="pushed model version 999"):
        sources.pushing_run(h.home.home, "999")


def test_prune_counts_a_rollbacks_copies_as_this_homes_versions(tmp_path):
    from imgpipe.orchestration.prune import prune_home

    h = History(tmp_path, loadable=True)  # prune checks the newest versions load
    h.run(b"model A", "100")
    h.run(b"model B", "200")
    h.run(b"model C", "300")
    result = rollback_home(h.home.home, to="100")
    pruned = prune_home(h.home.home, keep=5, keep_versions=2)
    # 200 and 300 were taken out by the rollback: kept (not counted), so that `--undo` can serve
    # them again; 100, the original of the copy served, goes (an audit: prune deleted the version
    # a rollback took out, and the documented undo then failed with "no such version").
    assert sorted(os.path.basename(v["path"]) for v in pruned.versions_removed) == ["100"]
    assert h.versions() == ["200", "300", result.new_version]
    assert rollback_home(h.home.home, to="300", undo=True, dry_run=True).to_version == "300"
    # Served again by the undo, 300 is an ordinary version of the home, which prune may remove.
    rollback_home(h.home.home, to="300", undo=True)
    again = prune_home(h.home.home, keep=5, keep_versions=2)
    assert "300" in [os.path.basename(v["path"]) for v in again.versions_removed]


def test_the_versions_a_rollback_took_out_are_read_from_every_kind_of_log_line(tmp_path):
    """prune keeps what `--undo` may need: versions marked and not served again since. A target
    counts as served again only once its copy is renamed in (a `served` line): a rollback whose
    rename failed still needs it. Lines from before `marked` existed took out `from_version`."""
    from serving.model_fingerprint import versions_taken_out

    lines = [
        {"from_version": "100", "to_version": "50", "undo": False},  # an early line: 100 out
        {"from_version": "300", "to_version": "200", "marked": [{"version": "300"}, {"version": "250"}]},
        {"from_version": "400", "to_version": "250", "undo": True, "marked": []},  # its rename failed
    ]
    (tmp_path / "rollbacks.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    assert versions_taken_out(str(tmp_path)) == {"100", "250", "300"}
    with open(tmp_path / "rollbacks.jsonl", "a") as f:
        f.write(json.dumps({"served": {"serving_dir": "/s", "version": "500", "copy_of": "250"}}) + "\n")
    assert versions_taken_out(str(tmp_path)) == {"100", "300"}
    assert versions_taken_out(str(tmp_path / "nowhere")) == set()


def test_undo_needs_its_target_and_never_takes_out_the_model_served(tmp_path):
    """100 (A), 200 (B), 300 (C); rolled back to B (a copy; C taken out). `--undo` alone would go
    further back and take out B: refused. `--to 100 --undo` spares B's versions, its original
    and its copy: only C, already out, is listed."""
    h = History(tmp_path)
    h.run(b"model A", "100")
    model_b, _ = h.run(b"model B", "200")
    h.run(b"model C", "300")
    back = rollback_home(h.home.home)
    assert back.to_version == "200"
    with pytest.raises(RollbackError, match="--undo: give --to VERSION"):
        rollback_home(h.home.home, undo=True)
    undo = rollback_home(h.home.home, to="100", undo=True)
    assert ROLLED_BACK not in h.artifact(model_b).custom_properties
    assert [m["version"] for m in undo.marked] == ["300"] and undo.rolled_back_model is None


def test_a_retry_keeps_the_reason_and_names_every_argument(tmp_path, monkeypatch):
    import errno

    from components import pusher

    h = History(tmp_path)
    h.run(b"model A", "100")
    model_b, _ = h.run(b"model B", "200")
    config_file = tmp_path / "my pipeline.yaml"
    config_file.write_text(h.config.dumps(str(config_file)), encoding="utf-8")

    def refused(staging, base_directory, now=None):
        shutil.rmtree(staging)
        raise OSError(errno.EACCES, "Permission denied", base_directory)

    with monkeypatch.context() as m:
        m.setattr(pusher, "rename_in", refused)
        with pytest.raises(RollbackFailed) as e:
            rollback_home(None, reason="breaks scanner B's client", config_path=str(config_file))
    retry = str(e.value).split("`")[1]
    assert retry == (
        f"imgpipe rollback --home {h.home.home} --to 100 --config '{config_file}' --reason 'breaks scanner B'\"'\"'s client'"
    )
    first_note = h.artifact(model_b).custom_properties[ROLLED_BACK].string_value
    assert "breaks scanner B's client" in first_note
    rollback_home(None, to="100", config_path=str(config_file))  # without the reason: the first note stays
    assert h.artifact(model_b).custom_properties[ROLLED_BACK].string_value == first_note


def test_a_log_that_cannot_be_written_or_read_changes_nothing(tmp_path):
    from serving.model_fingerprint import rolled_back_models

    h = History(tmp_path)
    h.run(b"model A", "100")
    h.run(b"model B", "200")
    before = open(h.home.metadata_path, "rb").read()
    os.makedirs(os.path.join(h.home.home, LOG_FILE))  # a folder where the log goes: unreadable, unwritable
    with pytest.raises(OSError, match="the rollback log .* cannot be read"):
        rollback_home(h.home.home)
    with pytest.raises(OSError, match="cannot be read"):
        rolled_back_models(os.path.join(h.home.home, LOG_FILE))
    assert open(h.home.metadata_path, "rb").read() == before and h.versions() == ["100", "200"]
    assert sorted(os.listdir(h.serving)) == ["100", "200"]


def test_a_dry_run_warns_of_a_serving_dir_too_full_for_the_copy(tmp_path, monkeypatch):
    import collections

    h = History(tmp_path)
    h.run(b"model A", "100")
    h.run(b"model B", "200")
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100, 99, 1))
    result = rollback_home(h.home.home, dry_run=True)
    assert any(
        w.startswith(f"the serving dir {h.serving} has 1 bytes free; the copy needs ")
        for w in result.warnings
    )


def test_the_baseline_reported_is_a_model_that_still_exists(tmp_path):
    """A blessed model whose artifact prune marked DELETED is no baseline (TFX's strategy takes
    LIVE models only): the report names the one the next run will use."""
    from imgpipe.orchestration.rollback import _next_baseline

    h = History(tmp_path)
    h.run(b"model A", "100")
    model_b, _ = h.run(b"model B", "200")
    model_c, _ = h.run(b"model C", "300")
    assert _next_baseline(h.home.store, h.home.root, [], [])["id"] == model_c.id
    gone = h.artifact(model_c)
    gone.state = gone.DELETED
    h.home.store.put_artifacts([gone])
    assert _next_baseline(h.home.store, h.home.root, [], [])["id"] == model_b.id


def test_one_version_skipped_as_rolled_back_is_named_with_its_way_back(tmp_path):
    h = History(tmp_path)
    h.run(b"model A", "100")
    h.run(b"model B", "200")
    rollback_home(h.home.home)  # B taken out; A's copy served
    with pytest.raises(RollbackError) as e:
        rollback_home(h.home.home)
    assert "; version 200 holds a model rolled back earlier (--to 200 serves it again); nothing" in str(
        e.value
    )


@pytest.mark.filterwarnings("ignore:Unexpected end-group tag")  # the stand-in saved_model.pb files
def test_a_home_on_a_shared_postgres_database_rolls_back_its_own_models_only(
    tmp_path, postgres_server, monkeypatch
):
    """Two homes record to one PostgreSQL database: a rollback in one marks and withdraws there,
    and the other home's models, blessings and baseline are as they were."""
    monkeypatch.setenv("PGPASSWORD", postgres_server.password)
    monkeypatch.setenv("PGPASSFILE", os.devnull)
    url = postgres_server.url("rollback_shared")
    ours = History(tmp_path / "ours", url, "alpha")
    theirs = History(tmp_path / "theirs", url, "beta")
    model_a, _ = ours.run(b"model A", "100")
    model_b, blessing_b = ours.run(b"model B", "200")
    their_models = [theirs.run(b"their model %d" % i, str(100 * i))[0] for i in (1, 2)]

    result = rollback_home(ours.home.home, reason="misreads scanner B")

    assert (result.from_version, result.to_version) == ("200", "100")
    assert result.baseline == {"id": model_a.id, "uri": model_a.uri}
    assert ROLLED_BACK in ours.artifact(model_b).custom_properties
    assert ours.artifact(blessing_b).custom_properties["blessed"].int_value == 0
    assert not os.path.exists(os.path.join(ours.home.home, "metadata.sqlite"))
    for model, blessing in zip(theirs.models, theirs.blessings, strict=True):
        assert ROLLED_BACK not in theirs.artifact(model).custom_properties
        assert theirs.artifact(blessing).custom_properties["blessed"].int_value == 1
    assert theirs.versions() == ["100", "200"]
    # Their next rollback finds their own history (their newest model served, the older one next).
    assert rollback_home(theirs.home.home, dry_run=True).restored_model["id"] == their_models[0].id


@pytest.mark.parametrize("damage", ["no variables yet", "a data shard cut short", "no predict_images"])
def test_a_version_that_cannot_be_loaded_is_never_served_again(serving_model, tmp_path, caplog, damage):
    """A version whose variables were deleted by hand was the rollback's target: copied in as the
    newest, the server served nothing, and no later run repaired it."""
    from tests.serving_fixtures import damaged_copy

    serving = tmp_path / "serving"
    shutil.copytree(serving_model.export_dir, serving / "1")
    damaged_copy(serving_model.export_dir, serving / "2", damage)
    shutil.copytree(serving_model.export_dir, serving / "3")
    versions = [(1, str(serving / "1")), (2, str(serving / "2")), (3, str(serving / "3"))]

    def pick(to=None):
        return rollback._pick(versions, to, str(serving), lambda p: False, lambda a, b: False, _REAL_DAMAGE)

    assert pick() == (versions[2], versions[0])
    assert "version 2 is passed over: its files cannot be loaded" in caplog.text
    with pytest.raises(RollbackError, match=r"--to 2: version 2 cannot be loaded, so it cannot be served: "):
        pick("2")
    assert _REAL_DAMAGE(str(serving / "1")) is None
    shutil.rmtree(serving / "1")
    with pytest.raises(RollbackError, match=r"; version 2 cannot be loaded; nothing to roll back to$"):
        rollback._pick(versions[1:], None, str(serving), lambda p: False, lambda a, b: False, _REAL_DAMAGE)
