"""Prune, dead-run recovery and one run's summary on ML Metadata written the way TFX writes it.

tests/mlmd_fixtures.py builds the histories; tests/e2e checks the same code on real runs
(the Resolver and the cache still work after a prune; a kill -9 mid-Trainer is recovered).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
from ml_metadata.proto import metadata_store_pb2 as pb

from imgpipe.orchestration import lock, metadata, recovery, scratch
from imgpipe.orchestration.prune import PruneError, prune_home
from imgpipe.orchestration.summary import summarize_run
from pipeline.config import PipelineConfig
from tests import helpers
from tests.mlmd_fixtures import CACHED, RUNNING, FakeHome, loadable_files, training_history

LIVE, DELETED = pb.Artifact.LIVE, pb.Artifact.DELETED


def _state(home: FakeHome, artifact) -> int:
    return home.artifact(artifact.id).state


def test_prune_keeps_newest_runs_and_the_gates_baseline(tmp_path):
    home = FakeHome(str(tmp_path / "home"))
    r1, r2, r3 = training_history(home, runs=3, blessed_runs=(1,))
    os.makedirs(os.path.join(home.home, "tmp", "dead-run", "beam"))  # a killed run's scratch folder

    result = prune_home(home.home, keep=1)

    report = result.pipelines["imgpipe"]
    assert report.runs_kept == [r3["id"]] and report.runs_pruned == [r1["id"], r2["id"]]
    # Run 3 (kept) and the examples it reused from run 1's cached ExampleGen stay.
    for a in (r3["model"], r3["blessing"], r3["pushed"], r1["examples"]):
        assert _state(home, a) == LIVE and os.path.isdir(a.uri)
    # Run 1's model is the latest blessed one: the gate's baseline stays, with its blessing and push record.
    for a in (r1["model"], r1["blessing"], r1["pushed"]):
        assert _state(home, a) == LIVE and os.path.isdir(a.uri)
    assert {p["id"] for p in report.protected} == {r1["model"].id, r1["blessing"].id, r1["pushed"].id}
    # Run 2's outputs: DELETED in ML Metadata, folders gone, bytes counted.
    gone = (r2["model"], r2["blessing"], r2["pushed"])
    for a in gone:
        assert _state(home, a) == DELETED and not os.path.exists(a.uri)
    assert {r["id"] for r in report.removed} == {a.id for a in gone}
    assert all(r["run"] == r2["id"] for r in report.removed)
    assert sum(r["bytes"] for r in report.removed) == 5000 + 1000 + 0
    assert not os.path.exists(os.path.join(home.home, "tmp", "dead-run"))
    assert result.bytes_freed == (
        sum(r["bytes"] for r in report.removed)
        + sum(d["bytes"] for d in report.execution_dirs_removed)
        + sum(d["bytes"] for d in result.scratch_removed)
    )

    # The executor folders of pruned runs' executions went too; the kept run's stay.
    def executions_of(run):
        ctx = home.store.get_context_by_type_and_name("pipeline_run", run["id"])
        return {e.id for e in home.store.get_executions_by_context(ctx.id)}

    removed_dirs = {int(os.path.basename(d["path"])) for d in report.execution_dirs_removed}
    assert removed_dirs == executions_of(r1) | executions_of(r2)
    assert all(not os.path.exists(d["path"]) for d in report.execution_dirs_removed)
    json.dumps(result.to_dict())  # the CLI prints it

    # Pruning again finds nothing more to do.
    again = prune_home(home.home, keep=1)
    assert again.pipelines["imgpipe"].removed == [] and again.bytes_freed == 0


def _refuse_to_delete(monkeypatch, name: str) -> None:
    """Deleting a file named `name` fails as one another user owns would (root may delete any)."""
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):
        if os.path.basename(path) == name:
            raise PermissionError(13, "Permission denied", path)
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)


def test_a_folder_that_cannot_be_deleted_is_reported_and_not_counted_as_freed(tmp_path, monkeypatch, caplog):
    """A permission error mid-delete (a file another user owns, a read-only mount) left the rest
    of prune's deletions going but was swallowed: the JSON counted the folder's bytes as freed."""
    home = FakeHome(str(tmp_path / "home"))
    _r1, r2, _r3 = training_history(home, runs=3, blessed_runs=(1,))
    with open(os.path.join(r2["model"].uri, "stuck.bin"), "wb") as f:
        f.write(b"x" * 700)
    dead = os.path.join(home.home, "tmp", "dead-run")  # a killed run's scratch folder, the same
    os.makedirs(dead)
    for name, size in (("stuck.bin", 700), ("gone.bin", 300)):
        with open(os.path.join(dead, name), "wb") as f:
            f.write(b"x" * size)
    planned = prune_home(home.home, keep=1, dry_run=True).bytes_freed
    _refuse_to_delete(monkeypatch, "stuck.bin")
    result = prune_home(home.home, keep=1)

    assert sorted((n["path"], n["bytes"]) for n in result.not_removed) == sorted(
        [(r2["model"].uri, 700), (dead, 700)]
    )
    assert "Permission denied" in result.not_removed[0]["error"]
    assert result.scratch_removed == [{"path": dead, "bytes": 300}]
    assert result.bytes_freed == planned - 700 - 700  # a review: the scratch folder's was taken twice
    assert os.listdir(r2["model"].uri) == ["stuck.bin"]  # the rest of the folder went
    assert not os.path.exists(r2["blessing"].uri)  # and the deletions after it went on
    assert f"{r2['model'].uri} could not be deleted in full (700 bytes left)" in caplog.text


def test_prune_zero_keeps_only_the_lineage_and_never_points_the_resolver_at_a_deleted_model(tmp_path):
    home = FakeHome(str(tmp_path / "home"))
    r1, r2, r3 = training_history(home, runs=3, blessed_runs=(1, 2))
    prune_home(home.home, keep=0)
    # The Resolver's candidates are the LIVE models and blessings (TFX filters on LIVE).
    live = [a for a in home.store.get_artifacts() if a.state == LIVE]
    assert {a.id for a in live} == {r2["model"].id, r2["blessing"].id, r2["pushed"].id}
    assert _state(home, r1["model"]) == DELETED and _state(home, r3["model"]) == DELETED
    assert not os.path.exists(r1["examples"].uri)


def test_dry_run_reports_the_same_and_changes_nothing(tmp_path):
    home = FakeHome(str(tmp_path / "home"))
    training_history(home, runs=3)
    before = {a.id: (a.state, os.path.isdir(a.uri)) for a in home.store.get_artifacts()}
    dry = prune_home(home.home, keep=1, dry_run=True)
    assert {a.id: (a.state, os.path.isdir(a.uri)) for a in home.store.get_artifacts()} == before
    real = prune_home(home.home, keep=1)
    assert dry.dry_run and not real.dry_run
    assert dry.pipelines["imgpipe"].removed == real.pipelines["imgpipe"].removed
    assert dry.bytes_freed == real.bytes_freed > 0


def test_a_dry_run_reads_a_read_only_home(tmp_path, monkeypatch):
    """`prune --dry-run` on a read-only home (a snapshot, a read-only mount) failed opening the lock
    file; it only reads, and nothing can change such a home."""
    from imgpipe.orchestration import prune

    home = FakeHome(str(tmp_path / "home"))
    training_history(home, runs=3)
    expected = prune_home(home.home, keep=1, dry_run=True)
    real_access = os.access
    monkeypatch.setattr(prune.os, "access", lambda p, mode: False if p == home.home else real_access(p, mode))

    def no_lock(*a, **kw):
        raise AssertionError("a read-only home's lock file cannot be opened")

    monkeypatch.setattr(prune, "home_lock", no_lock)
    dry = prune_home(home.home, keep=1, dry_run=True)
    assert dry.pipelines["imgpipe"].removed == expected.pipelines["imgpipe"].removed
    with pytest.raises(AssertionError):  # a real prune still takes the lock (and fails there)
        prune_home(home.home, keep=1)


def test_prune_leaves_artifacts_outside_the_home_alone(tmp_path):
    home = FakeHome(str(tmp_path / "home"))
    r1, r2 = training_history(home, runs=2, blessed_runs=(2,))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    model = home.artifact(r1["model"].id)
    model.uri = str(outside)
    home.store.put_artifacts([model])
    with helpers.logged("imgpipe.orchestration.prune") as said:
        prune_home(home.home, keep=1)
    assert outside.is_dir() and _state(home, model) == LIVE
    # Said once for all of them (an audit's copied home printed 47 lines, one per artifact).
    [line] = [m for m in said if "outside the pipeline root" in m]
    assert line.startswith("1 artifact(s) outside the pipeline root") and str(outside) in line


def test_prune_refuses_bad_homes_and_waits_for_no_one(tmp_path):
    with pytest.raises(PruneError, match="not a pipeline home"):
        prune_home(str(tmp_path), keep=1)
    # A home whose runs record to PostgreSQL is pruned there: a server that cannot be reached is
    # named (its URL, no password), not "not a home".
    from imgpipe.orchestration import runs
    from imgpipe.orchestration.summary import RunSummary
    from pipeline.config import PipelineConfig

    pg_home = tmp_path / "pg"
    config = PipelineConfig(
        home=str(pg_home), metadata="postgresql://ml@nowhere.invalid:5432/mlmd"
    ).resolved()
    runs.write_record(config, RunSummary("r1", True, None, 0.9, 1, {}))
    with pytest.raises(
        metadata.MetadataUnavailable,
        match=r"cannot connect to ML Metadata at postgresql://ml@nowhere\.invalid:5432/mlmd",
    ):
        prune_home(str(pg_home), keep=1)
    with pytest.raises(PruneError, match="give --home .* or --config"):
        prune_home(None, keep=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metadata.sqlite").write_bytes(b"")  # a dry run failed on it; a prune wrote a schema in
    for dry_run in (True, False):
        with pytest.raises(PruneError, match="metadata.sqlite is empty: no ML Metadata store to prune"):
            prune_home(str(empty), keep=1, dry_run=dry_run)
    assert (empty / "metadata.sqlite").stat().st_size == 0
    home = FakeHome(str(tmp_path / "home"))
    training_history(home, runs=1)
    with pytest.raises(PruneError, match="keep: must be 0 or more"):
        prune_home(home.home, keep=-1)
    with lock.run_lock(lock.home_lock_path(home.home), holder="run X"):
        with pytest.raises(lock.LockBusy, match=r"\(pid \d+ since .*, run X\); not starting prune$"):
            prune_home(home.home, keep=1)


# --------------------------------------------------------------------------- recovery
def test_a_dead_runs_running_execution_is_marked_failed_and_its_partial_outputs_removed(tmp_path):
    home = FakeHome(str(tmp_path / "home"))
    [r1] = training_history(home, runs=1)
    dead, _ = home.execute("run2", "Trainer", inputs={"examples": [r1["examples"]]}, state=RUNNING)
    partial = os.path.join(home.root, "Trainer", "model", str(dead.id))
    os.makedirs(partial)
    system = os.path.join(home.root, "Trainer", ".system", "executor_execution", str(dead.id))

    # A metadata server shared with other homes: an execution with no folder here is not ours.
    other, _ = home.execute("run-elsewhere", "Trainer", state=RUNNING)
    os.rmdir(os.path.join(home.root, "Trainer", ".system", "executor_execution", str(other.id)))
    # One of this home's runs (its record or started marker says so) that failed before its
    # executor made a folder (input resolution): ours, or it would stay RUNNING for good.
    early, _ = home.execute("run-own", "InfraValidator", state=RUNNING)
    os.rmdir(os.path.join(home.root, "InfraValidator", ".system", "executor_execution", str(early.id)))
    found = recovery.abandon_dead_executions(
        home.store, "imgpipe", home.root, "run 3", shared_store=True, own_runs={"run-own"}
    )
    assert sorted(a.execution_id for a in found) == [dead.id, early.id]
    assert home.store.get_executions_by_id([other.id])[0].last_known_state == RUNNING
    assert home.store.get_executions_by_id([early.id])[0].last_known_state == pb.Execution.FAILED

    [execution] = home.store.get_executions_by_id([dead.id])
    assert execution.last_known_state == pb.Execution.FAILED
    reason = execution.custom_properties[recovery.ABANDONED_KEY].string_value
    assert "left RUNNING by run run2" in reason and "run 3" in reason
    [trainer] = [a for a in found if a.execution_id == dead.id]
    assert trainer.node == "Trainer" and sorted(trainer.removed) == sorted([partial, system])
    assert not os.path.exists(partial) and not os.path.exists(system)
    # The home's own store: every unfinished execution in it is from a dead run of this home.
    found = recovery.abandon_dead_executions(home.store, "imgpipe", home.root, "run 4")
    assert [a.execution_id for a in found] == [other.id]
    states = {e.last_known_state for e in home.store.get_executions()}
    assert RUNNING not in states and pb.Execution.NEW not in states
    assert recovery.abandon_dead_executions(home.store, "imgpipe", home.root, "run 5") == []


def test_a_dead_runs_output_that_cannot_be_deleted_is_not_counted_as_removed(tmp_path, monkeypatch, caplog):
    home = FakeHome(str(tmp_path / "home"))
    [r1] = training_history(home, runs=1)
    dead, _ = home.execute("run2", "Trainer", inputs={"examples": [r1["examples"]]}, state=RUNNING)
    partial = os.path.join(home.root, "Trainer", "model", str(dead.id))
    os.makedirs(partial)
    for name, size in (("stuck.bin", 300), ("gone.bin", 200)):
        with open(os.path.join(partial, name), "wb") as f:
            f.write(b"x" * size)
    _refuse_to_delete(monkeypatch, "stuck.bin")
    [found] = recovery.abandon_dead_executions(home.store, "imgpipe", home.root, "run 3")

    system = os.path.join(home.root, "Trainer", ".system", "executor_execution", str(dead.id))
    assert found.removed == [system] and not os.path.exists(system)
    assert found.bytes == 200
    assert [(n["path"], n["bytes"]) for n in found.not_removed] == [(partial, 300)]
    assert os.listdir(partial) == ["stuck.bin"]
    assert f"{partial}, execution {dead.id}'s partial output, could not be deleted in full" in caplog.text


def test_prune_also_recovers_dead_runs(tmp_path):
    home = FakeHome(str(tmp_path / "home"))
    [r1] = training_history(home, runs=1)
    dead, _ = home.execute("run2", "Trainer", inputs={"examples": [r1["examples"]]}, state=RUNNING)
    dry = prune_home(home.home, keep=5, dry_run=True)
    assert [a["execution_id"] for a in dry.abandoned_executions] == [dead.id]
    assert home.store.get_executions_by_id([dead.id])[0].last_known_state == RUNNING
    result = prune_home(home.home, keep=5)
    assert [a["execution_id"] for a in result.abandoned_executions] == [dead.id]
    assert home.store.get_executions_by_id([dead.id])[0].last_known_state == pb.Execution.FAILED


def test_a_failed_newest_run_does_not_cost_the_last_good_runs_cache(tmp_path):
    """--keep 1 after a run that failed (SIGTERM mid-Trainer): the last finished run is kept too."""
    home = FakeHome(str(tmp_path / "home"))
    r1, r2 = training_history(home, runs=2, blessed_runs=(1,))
    home.execute("run3", "ImportExampleGen", reuse={"examples": [r1["examples"]]}, state=CACHED)
    home.execute("run3", "Trainer", inputs={"examples": [r1["examples"]]}, state=pb.Execution.FAILED)
    result = prune_home(home.home, keep=1)
    report = result.pipelines["imgpipe"]
    assert report.runs_kept == [r2["id"], "run3"] and report.runs_pruned == [r1["id"]]
    removed = {r["id"] for r in report.removed}
    assert r2["model"].id not in removed and r2["blessing"].id not in removed
    assert r1["model"].id not in removed  # the baseline (blessed in run 1)


def test_a_baseline_model_deleted_by_hand_is_forgotten_and_the_previous_one_protected(tmp_path):
    """Its folder gone, the latest blessed model would fail every later run (its label vocabulary
    is unreadable): prune (and a run's start) marks it DELETED, so the Resolver passes it over."""
    import shutil

    home = FakeHome(str(tmp_path / "home"))
    r1, r2 = training_history(home, runs=2, blessed_runs=(1, 2))
    shutil.rmtree(r2["model"].uri)

    dry = prune_home(home.home, keep=5, dry_run=True)
    assert dry.missing_models == [{"id": r2["model"].id, "uri": r2["model"].uri}]
    assert home.artifact(r2["model"].id).state == pb.Artifact.LIVE
    result = prune_home(home.home, keep=5)
    assert result.missing_models == dry.missing_models
    # The dry run planned as the prune did, with the missing model taken as DELETED: it had
    # listed that model and its blessings as protected, and fewer removals.
    assert dry.pipelines["imgpipe"].protected == result.pipelines["imgpipe"].protected
    assert dry.pipelines["imgpipe"].removed == result.pipelines["imgpipe"].removed
    gone = home.artifact(r2["model"].id)
    assert (
        gone.state == pb.Artifact.DELETED
        and "folder was gone when prune started" in gone.custom_properties[recovery.MISSING_KEY].string_value
    )
    protected = {p["id"]: p["why"] for p in result.pipelines["imgpipe"].protected}
    assert r1["model"].id in protected and r2["model"].id not in protected
    assert prune_home(home.home, keep=5).missing_models == []


def _served_version(base: str, name: str) -> str:
    folder = os.path.join(base, name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "saved_model.pb"), "wb") as f:
        f.write(b"model")
    return folder


def test_a_push_whose_serving_version_was_deleted_is_not_taken_from_the_cache(tmp_path, caplog):
    """A re-run with the same model takes its Pusher from TFX's cache: with the version that
    Pusher pushed (or found identical) gone from the serving dir, the record is false and
    nothing is served. A run's start marks such a record DELETED, so the cache misses and the
    Pusher pushes again; records whose version is still there, records of no push, and remote
    serving dirs are left alone."""
    import shutil

    from components.pusher import IDENTICAL_VERSION_KEY
    from imgpipe.orchestration.local import _abandon_dead_executions
    from tests.mlmd_fixtures import cached_outputs

    home = FakeHome(str(tmp_path / "home"))
    base = str(tmp_path / "serving" / "digits")

    def push(run: str, props: dict, base_directory: str = base):
        _, made = home.execute(
            run,
            "Pusher",
            outputs={"pushed_model": ("PushedModel", props)},
            exec_properties={
                "push_destination": json.dumps({"filesystem": {"base_directory": base_directory}})
            },
        )
        return made["pushed_model"]

    pushed = push(
        "run-1",
        {"pushed": 1, "pushed_destination": _served_version(base, "1001"), "pushed_version": "1001"},
    )
    # Version 7 is served from a folder named "007"; a half-written "7" beside it is not it.
    identical = push("run-2", {"pushed": 0, IDENTICAL_VERSION_KEY: "7"})
    _served_version(base, "007")
    os.makedirs(os.path.join(base, "7"))
    not_blessed = push("run-3", {"pushed": 0})
    remote = push(
        "run-4",
        {"pushed": 1, "pushed_destination": "gs://bucket/digits/5", "pushed_version": "5"},
        base_directory="gs://bucket/digits",
    )
    # Another home's pipeline in the same (shared) store: its version is gone, but not ours to judge.
    other = FakeHome(home.home, pipeline="other")
    _, made = other.execute(
        "other-run-1",
        "Pusher",
        outputs={
            "pushed_model": (
                "PushedModel",
                {"pushed": 1, "pushed_destination": os.path.join(base, "999"), "pushed_version": "999"},
            )
        },
    )
    theirs = made["pushed_model"]
    records = (pushed, identical, not_blessed, remote, theirs)
    assert recovery.forget_missing_pushes(home.store, home.root, found_by="test") == []
    assert all(cached_outputs(home, a) is not None for a in records)

    # Version 1001 deleted by hand; version 7 left half-written (no saved_model.pb: no server loads it).
    shutil.rmtree(os.path.join(base, "1001"))
    os.remove(os.path.join(base, "007", "saved_model.pb"))
    dry = recovery.forget_missing_pushes(home.store, home.root, found_by="test", dry_run=True)
    assert dry == [
        {"id": pushed.id, "version": "1001", "folder": os.path.join(base, "1001"), "model_dir_gone": False},
        {"id": identical.id, "version": "7", "folder": os.path.join(base, "7"), "model_dir_gone": False},
    ]
    assert all(home.artifact(a.id).state == LIVE for a in records)

    with caplog.at_level("WARNING"):
        _abandon_dead_executions(PipelineConfig(home=home.home), "run-5")
    for a, version in ((pushed, "1001"), (identical, "7")):
        after = home.artifact(a.id)
        assert after.state == DELETED and cached_outputs(home, a) is None
        assert after.custom_properties[recovery.MISSING_KEY].string_value == (
            f"serving version {version} was gone when run run-5 started"
        )
    assert (
        f"serving version 1001 ({os.path.join(base, '1001')}) is gone: the record of its push "
        f"(artifact {pushed.id}) is marked DELETED, so this run's Pusher pushes its model again"
    ) in caplog.text
    assert "gone altogether" not in caplog.text
    for a in (not_blessed, remote, theirs):
        assert home.artifact(a.id).state == LIVE and cached_outputs(home, a) is not None
    assert recovery.forget_missing_pushes(home.store, home.root, found_by="test") == []


# --------------------------------------------------------------------------- summary
def test_summary_reads_the_run_asked_for_not_the_latest(tmp_path):
    home = FakeHome(str(tmp_path / "home"))
    r1, r2, r3 = training_history(home, runs=3, blessed_runs=(1,))
    first = summarize_run(PipelineConfig(home=home.home), r1["id"])
    assert first.run_id == r1["id"] and first.blessed is True
    assert first.pushed == "/serving/m/1001" and first.push_skipped is None
    second = summarize_run(PipelineConfig(home=home.home), r2["id"])
    assert second.run_id == r2["id"] and second.blessed is False and second.pushed is None
    assert second.executions["ImportExampleGen"] == "CACHED"
    assert summarize_run(PipelineConfig(home=home.home), None).run_id == r3["id"]
    with pytest.raises(LookupError, match="no run 'nope'"):
        summarize_run(PipelineConfig(home=home.home), "nope")


def test_summary_says_why_nothing_was_pushed(tmp_path):
    from components.pusher import IDENTICAL_VERSION_KEY

    home = FakeHome(str(tmp_path / "home"))
    [r1] = training_history(home, runs=1, blessed_runs=(1,))
    # A re-run: the Pusher found the newest served version identical.
    _, made = home.execute(
        "run2",
        "Pusher",
        inputs={"model": [r1["model"]]},
        outputs={"pushed_model": ("PushedModel", {"pushed": 0, IDENTICAL_VERSION_KEY: "1001"})},
    )
    s = summarize_run(PipelineConfig(home=home.home), "run2")
    assert s.pushed is None and s.push_skipped == "identical to version 1001"
    # A run whose Pusher came from cache: the push it links is run 1's.
    home.execute("run3", "Pusher", reuse={"pushed_model": [r1["pushed"]]}, state=CACHED)
    s = summarize_run(PipelineConfig(home=home.home), "run3")
    assert s.pushed is None and s.push_skipped == "cached: version 1001 was pushed by an earlier run"
    assert metadata.push_skipped_version(home.store, None) is None


# --------------------------------------------------------------------------- CLI
def test_prune_cli_prints_one_json_result(tmp_path, capsys):
    from imgpipe.cli import main as cli

    home = FakeHome(str(tmp_path / "home"))
    training_history(home, runs=2)
    assert cli.main(["prune", "--home", home.home, "--keep", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and json.loads(out[0])["dry_run"] is True
    assert cli.main(["prune", "--home", str(tmp_path / "nothing"), "--keep", "1"]) == 2
    assert "nothing is not a directory" in capsys.readouterr().err
    (tmp_path / "nothing").mkdir()
    assert cli.main(["prune", "--home", str(tmp_path / "nothing"), "--keep", "1"]) == 2
    assert "not a pipeline home" in capsys.readouterr().err
    with lock.run_lock(lock.home_lock_path(home.home), holder="run R"):
        assert cli.main(["prune", "--home", home.home, "--keep", "1"]) == lock.EXIT_LOCKED
    assert "run R" in capsys.readouterr().err


def test_an_airflow_home_keeps_its_newest_runs_and_is_not_pruned_mid_run(tmp_path):
    """TFX's Airflow launcher records runs as `run` contexts: they count as runs (before, prune
    found none and kept nothing), and one in progress stops prune (Airflow takes no home lock)."""
    home = FakeHome(str(tmp_path / "home"), airflow=True)
    r1, r2, r3 = training_history(home, runs=3, blessed_runs=(1,))
    dry = prune_home(home.home, keep=2, dry_run=True).pipelines["imgpipe"]
    assert dry.runs_kept == [r2["id"], r3["id"]] and dry.runs_pruned == [r1["id"]]
    assert dry.removed == []  # run 1's outputs: the baseline, and the examples runs 2 and 3 reused
    latest = metadata.latest_run(home.store, "imgpipe")
    assert metadata.run_id(latest) == r3["id"]
    assert set(metadata.run_executions(home.store, "imgpipe", latest)) == {
        "ImportExampleGen",
        "Trainer",
        "Evaluator",
        "Pusher",
    }
    one = prune_home(home.home, keep=1, dry_run=True).pipelines["imgpipe"]
    assert one.runs_kept == [r3["id"]]
    assert {r["id"] for r in one.removed} == {r2[k].id for k in ("model", "blessing", "pushed")}

    # A fourth run whose Trainer is RUNNING under Airflow: prune refuses and changes nothing.
    run4 = "2026-01-04T00:00:00-run4"
    running, _ = home.execute(run4, "Trainer", inputs={"examples": [r1["examples"]]}, state=RUNNING)
    with pytest.raises(
        PruneError, match=f"Airflow run in progress \\(run {run4}: execution {running.id} is RUNNING\\)"
    ):
        prune_home(home.home, keep=1)
    assert home.store.get_executions_by_id([running.id])[0].last_known_state == RUNNING
    assert all(_state(home, r["model"]) == LIVE for r in (r1, r2, r3))
    # A local run's recovery leaves that execution alone too: it may be alive.
    assert recovery.abandon_dead_executions(home.store, "imgpipe", home.root, found_by="a run") == []


def test_a_judged_runs_accuracy_is_the_gates_not_tfmas(tmp_path):
    """When the gate judged the candidate on part of the eval split (copies of images, images it
    trained on), the run's accuracy and per-class accuracy are the gate's numbers."""
    home = FakeHome(str(tmp_path / "home"))
    _, made = home.execute(
        "run1",
        "Evaluator",
        outputs={"blessing": ("ModelBlessing", {"blessed": 0}), "evaluation": ("ModelEvaluation", {})},
    )
    gate = {
        "accuracy": 0.5,
        "per_class_recall": {"a": 0.4, "b": 0.6},
        "judged_on": {"records": 40, "repeats": 36, "in_train": 0, "examples": 4},
        "whole_split": {"accuracy": 0.9, "examples": 40},
        "metric": "accuracy",
        "baseline": {"compared": False, "accuracy": None},
    }
    with open(os.path.join(made["evaluation"].uri, "gate.json"), "w", encoding="utf-8") as f:
        json.dump(gate, f)
    s = summarize_run(PipelineConfig(home=home.home), "run1")
    assert (s.accuracy, s.per_class_accuracy, s.baseline_accuracy) == (0.5, {"a": 0.4, "b": 0.6}, None)
    assert s.gate["whole_split"]["accuracy"] == 0.9


def test_old_served_versions_go_with_keep_versions(tmp_path, capsys):
    """Every push stays in the serving dir: 7 versions (69 MB) after 27 runs of one schedule, and
    nothing in imgpipe removed any. --keep-versions K keeps the newest K (the newest is served)."""
    from imgpipe.cli import main as cli
    from imgpipe.orchestration import runs
    from imgpipe.orchestration.summary import RunSummary

    home = FakeHome(str(tmp_path / "home"))
    training_history(home, runs=1)
    config = PipelineConfig(home=home.home, serving_dir=str(tmp_path / "serving"), model_name="m").resolved()
    base = tmp_path / "serving" / "m"
    for i, version in enumerate(("1700000001", "1700000003", "0001700000004")):
        runs.write_record(config, RunSummary(f"r1-{i}", True, str(base / version), 0.9, 1, {}))
    # 1700000002 was pushed by another home to the same serving dir: not this prune's to delete.
    for version in ("1700000001", "1700000002", "1700000003"):
        os.makedirs(base / version / "variables")
        (base / version / "saved_model.pb").write_bytes(b"x" * 100)
    loadable_files(str(base / "0001700000004"), b"the served model")  # the newest: it must load
    (base / ".push-host-1-staging").mkdir()  # a push in progress: not a version
    # A failed run of this home named another home's serving dir: not this home's to prune.
    theirs = tmp_path / "theirs" / "m"
    for version in ("1", "2", "3"):
        os.makedirs(theirs / version)
    failed = config.replace(serving_dir=str(tmp_path / "theirs"))
    runs.write_record(failed, RunSummary("r2", None, None, None, None, {}, failed="Trainer", error="x"))

    with pytest.raises(PruneError, match="keep_versions: must be 1 or more"):
        prune_home(home.home, keep=1, keep_versions=0)
    dry = prune_home(home.home, keep=1, dry_run=True, keep_versions=1)
    assert [v["path"] for v in dry.versions_removed] == [str(base / "1700000001"), str(base / "1700000003")]
    assert sorted(dry.versions_kept) == sorted(str(base / v) for v in ("0001700000004", "1700000002"))
    assert all(v["bytes"] == 100 for v in dry.versions_removed) and (base / "1700000001").is_dir()
    # A version that cannot be moved aside (here: its folder's parent is read-only to the rename,
    # simulated) stays whole and is not counted.
    real_rename = os.rename

    def refuse_one(src, dst):
        if str(src).endswith("1700000001"):
            raise PermissionError(13, "Permission denied")
        return real_rename(src, dst)

    import unittest.mock

    with unittest.mock.patch("os.rename", refuse_one):
        assert cli.main(["prune", "--home", home.home, "--keep", "1", "--keep-versions", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["keep_versions"] == 1 and [v["path"] for v in out["versions_removed"]] == [
        str(base / "1700000003")
    ]
    assert (
        str(base / "1700000001") in out["versions_kept"]
        and (base / "1700000001" / "saved_model.pb").is_file()
    )
    assert out["bytes_freed"] >= 100
    assert sorted(os.listdir(base)) == [".push-host-1-staging", "0001700000004", "1700000001", "1700000002"]
    assert sorted(os.listdir(theirs)) == ["1", "2", "3"]
    # Without it the serving dirs are left alone.
    assert prune_home(home.home, keep=1).versions_removed == []
    assert sorted(os.listdir(base)) == [".push-host-1-staging", "0001700000004", "1700000001", "1700000002"]


def _dead_pid() -> int:
    """A process id no process has now (a child that has exited and been waited for)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_killed_prunes_hidden_version_is_removed_by_the_next(tmp_path, monkeypatch):
    """A prune killed between hiding a version and deleting it left `.pruned-...` (a whole model)
    that nothing removed: the next `prune --keep-versions` and the next push remove it; a live
    prune's and a live push's are left alone."""
    from components import pusher
    from imgpipe.orchestration import runs
    from imgpipe.orchestration.summary import RunSummary
    from trainer import liveness

    home = FakeHome(str(tmp_path / "home"))
    training_history(home, runs=1)
    config = PipelineConfig(home=home.home, serving_dir=str(tmp_path / "serving"), model_name="m").resolved()
    base = tmp_path / "serving" / "m"
    loadable_files(str(base / "2"), b"the served model")
    runs.write_record(config, RunSummary("r1", True, str(base / "2"), 0.9, 1, {}))
    # What a killed prune leaves: the version hidden under a name no server loads.
    dead = base / f"{pusher.PRUNED_PREFIX}{liveness.HOST}-{_dead_pid()}-1"
    loadable_files(str(dead), b"an old model")
    live = base / f"{pusher.PRUNED_PREFIX}{liveness.HOST}-{os.getpid()}-0"  # a prune at work
    live.mkdir()
    size = scratch.tree_bytes(str(dead))

    dry = prune_home(home.home, keep=1, dry_run=True, keep_versions=1)
    assert dry.serving_leftovers_removed == [
        {
            "path": str(dead),
            "bytes": size,
            "what": "a served version an `imgpipe prune` that did not finish was deleting",
        }
    ]
    assert dead.is_dir()
    with helpers.logged("imgpipe.orchestration.prune") as said:
        done = prune_home(home.home, keep=1, keep_versions=1)
    assert [d["path"] for d in done.serving_leftovers_removed] == [str(dead)] and not dead.exists()
    assert done.bytes_freed >= size and any(str(dead) in m for m in said)
    assert sorted(os.listdir(base)) == [live.name, "2"]
    # A push sweeps them too: the same leftover again, removed by the Pusher's staging.
    loadable_files(str(dead), b"an old model")
    assert pusher.remove_dead_staging(str(base)) == [str(dead)] and live.is_dir()
    # The hidden name is the one this sweep knows: a prune's own rename is named so, and a version
    # pushed days ago, hidden by a prune at work, is not taken for a dead prune's leftover by its age.
    from imgpipe.orchestration import prune as prune_module

    loadable_files(str(base / "1"), b"an old model")
    days_ago = time.time() - 3 * 24 * 3600
    os.utime(base / "1", (days_ago, days_ago))
    seen = []
    real_remove = scratch.remove_path

    def remove(path):
        seen.append((path, pusher.dead_leftovers(str(base))))
        return real_remove(path)

    monkeypatch.setattr(scratch, "remove_path", remove)
    prune_module._remove_version(str(base / "1"))
    [(hidden, dead_then)] = seen
    assert os.path.basename(hidden).startswith(f"{pusher.PRUNED_PREFIX}{liveness.HOST}-{os.getpid()}-")
    assert dead_then == [] and not os.path.exists(hidden)


def test_keep_versions_that_leave_no_way_back_are_warned_about(tmp_path):
    """An audit's --keep-versions 2 kept two versions of one model (the served one and its copy) and
    removed the only other: `imgpipe rollback` then had nothing to roll back to, and nothing said so."""
    from imgpipe.orchestration import runs
    from imgpipe.orchestration.summary import RunSummary

    home = FakeHome(str(tmp_path / "home"))
    training_history(home, runs=1)
    config = PipelineConfig(home=home.home, serving_dir=str(tmp_path / "serving"), model_name="m").resolved()
    base = tmp_path / "serving" / "m"
    for i, (version, content) in enumerate((("1", b"model C"), ("2", b"model A"), ("3", b"model A"))):
        loadable_files(str(base / version), content)
        runs.write_record(config, RunSummary(f"r{i}", True, str(base / version), 0.9, 1, {}))
    dry = prune_home(home.home, keep=1, dry_run=True, keep_versions=2)
    [said] = dry.versions_no_way_back
    assert (
        said["path"] == str(base)
        and "would keep no version `imgpipe rollback` could serve again" in said["warning"]
    )
    with helpers.logged("imgpipe.orchestration.prune") as logged:
        done = prune_home(home.home, keep=1, keep_versions=2)
    assert [v["path"] for v in done.versions_removed] == [str(base / "1")]
    assert any("keeps no version `imgpipe rollback` could serve again" in m for m in logged), logged
    # Versions of other models kept: a way back, nothing said.
    loadable_files(str(base / "4"), b"model D")
    runs.write_record(config, RunSummary("r4", True, str(base / "4"), 0.9, 1, {}))
    assert prune_home(home.home, keep=1, dry_run=True, keep_versions=2).versions_no_way_back == []


def test_keep_versions_counts_only_versions_that_can_be_loaded(tmp_path):
    """The newest version damaged (variables deleted by hand): kept, it is no version to fall back
    on, so --keep-versions 1 kept it alone and removed the last loadable one."""
    from imgpipe.orchestration import runs
    from imgpipe.orchestration.summary import RunSummary

    home = FakeHome(str(tmp_path / "home"))
    training_history(home, runs=1)
    config = PipelineConfig(home=home.home, serving_dir=str(tmp_path / "serving"), model_name="m").resolved()
    base = tmp_path / "serving" / "m"
    for i, version in enumerate(("1", "2", "3")):
        loadable_files(str(base / version), version.encode())
        runs.write_record(config, RunSummary(f"r1-{i}", True, str(base / version), 0.9, 1, {}))
    shutil.rmtree(base / "3" / "variables")

    result = prune_home(home.home, keep=1, keep_versions=1)

    assert [v["path"] for v in result.versions_removed] == [str(base / "1")]
    assert sorted(result.versions_kept) == [str(base / "2"), str(base / "3")]
    [unloadable] = result.versions_unloadable
    assert unloadable["path"] == str(base / "3") and "variables.index is missing" in unloadable["error"]
    assert sorted(os.listdir(base)) == ["2", "3"]


# --------------------------------------------------------------------------- a shared database
def _pg_home(server, path, pipeline: str, db: str, airflow: bool = False) -> FakeHome:
    """A FakeHome whose pipeline `pipeline` records to database `db` of the PostgreSQL server."""
    from pipeline.config import PipelineConfig

    config = PipelineConfig(home=str(path), metadata=server.url(db), pipeline_name=pipeline)
    return FakeHome(str(path), pipeline, airflow=airflow, connection=metadata.connection_config(config))


def _record(home: FakeHome, url: str) -> str:
    """A run record of `home` naming the database (what `imgpipe run` writes); the config's path."""
    from imgpipe.orchestration import runs
    from imgpipe.orchestration.summary import RunSummary
    from pipeline.config import PipelineConfig

    config = PipelineConfig(home=home.home, metadata=url, pipeline_name=home.pipeline).resolved()
    return os.path.join(runs.write_record(config, RunSummary("r9", True, None, 0.9, 1, {})), "config.yaml")


def test_a_home_on_a_shared_postgres_database_is_pruned_there_and_no_other_home_is(
    tmp_path, postgres_server, monkeypatch
):
    """Two homes record to one PostgreSQL database: pruning one marks its old artifacts DELETED
    there and removes their folders, and leaves the other home's pipeline, runs and folders alone.
    A home that ran on SQLite before has both stores pruned."""
    monkeypatch.setenv("PGPASSWORD", postgres_server.password)
    monkeypatch.setenv("PGPASSFILE", os.devnull)
    url = postgres_server.url("prune_shared")
    ours = _pg_home(postgres_server, tmp_path / "ours", "alpha", "prune_shared")
    theirs = _pg_home(postgres_server, tmp_path / "theirs", "beta", "prune_shared")
    r1, r2, r3 = training_history(ours, runs=3, blessed_runs=(1,))
    t1, t2, t3 = training_history(theirs, runs=3, blessed_runs=(1,), prefix="theirs-")
    _record(ours, url)
    _record(theirs, url)
    # The pipeline this home ran on its own SQLite store before it moved to the shared database;
    # another home later ran a pipeline of that name on the database (allowed: it had none).
    before = FakeHome(ours.home, "alpha_sqlite")
    _, s2, _ = training_history(before, runs=3, blessed_runs=(1,))
    namesake = _pg_home(postgres_server, tmp_path / "namesake", "alpha_sqlite", "prune_shared")
    namesake_runs = training_history(namesake, runs=2, blessed_runs=(1,), prefix="namesake-")
    # A folder of a pipeline no store of this home records (its runs went to another database).
    os.makedirs(os.path.join(ours.home, "pipelines", "elsewhere", "Trainer"))

    # A run of each home died mid-Trainer (NEW / RUNNING in the database): prune recovers ours,
    # found by ML Metadata's query on PostgreSQL, and leaves theirs to them.
    dead, _ = ours.execute(
        "2026-01-04T00:00:00-run4", "Trainer", inputs={"examples": [r1["examples"]]}, state=RUNNING
    )
    os.makedirs(os.path.join(ours.root, "Trainer", "model", str(dead.id)))
    their_dead, _ = theirs.execute("theirs-run4", "Trainer", state=pb.Execution.NEW)

    dry = prune_home(ours.home, keep=1, dry_run=True)
    assert sorted(dry.pipelines) == ["alpha", "alpha_sqlite"]
    assert [a["execution_id"] for a in dry.abandoned_executions] == [dead.id]
    assert all(_state(ours, r[k]) == LIVE for r in (r1, r2, r3) for k in ("model", "blessing"))
    done = prune_home(ours.home, keep=1)
    assert done.to_dict()["pipelines"] == dry.to_dict()["pipelines"]
    assert ours.store.get_executions_by_id([dead.id])[0].last_known_state == pb.Execution.FAILED
    assert theirs.store.get_executions_by_id([their_dead.id])[0].last_known_state == pb.Execution.NEW
    alpha = done.pipelines["alpha"]
    # The failed fourth run is kept (newer than the newest finished one), its outputs with it.
    assert alpha.runs_kept == [r3["id"], "2026-01-04T00:00:00-run4"]
    assert alpha.runs_pruned == [r1["id"], r2["id"]]
    assert {r["id"] for r in alpha.removed} == {r2["model"].id, r2["blessing"].id, r2["pushed"].id}
    assert _state(ours, r2["model"]) == DELETED and not os.path.exists(r2["model"].uri)
    assert _state(ours, r1["model"]) == LIVE and os.path.isdir(r1["model"].uri)  # the gate's baseline
    assert {r["id"] for r in done.pipelines["alpha_sqlite"].removed} == {
        s2["model"].id,
        s2["blessing"].id,
        s2["pushed"].id,
    }
    assert _state(before, s2["model"]) == DELETED
    assert done.unknown_pipelines == [os.path.join(ours.home, "pipelines", "elsewhere")]
    for run in namesake_runs:
        assert _state(namesake, run["model"]) == LIVE and os.path.isdir(run["model"].uri)
    # One pipeline name in both of the home's stores, its folders under the same root: each
    # store may name the other's folders (a database numbering executions from 1 again), so
    # pruning either could delete the other's live models: refused.
    sqlite_side = FakeHome(ours.home, "both")
    training_history(sqlite_side, runs=2)
    pg_side = _pg_home(postgres_server, tmp_path / "ours", "both", "prune_shared")
    pg_runs = training_history(pg_side, runs=2, prefix="both-")
    with pytest.raises(PruneError, match="pipeline 'both' is in both .*metadata.sqlite and postgresql://"):
        prune_home(ours.home, keep=0)
    assert all(os.path.isdir(r["model"].uri) for r in pg_runs)
    # The other home: every artifact LIVE, every folder there.
    for run in (t1, t2, t3):
        for key in ("model", "blessing", "pushed"):
            assert _state(theirs, run[key]) == LIVE and os.path.isdir(run[key].uri)


def test_a_shared_pipeline_name_is_refused_and_an_airflow_home_is_pruned_by_its_config(
    tmp_path, postgres_server, monkeypatch, capsys
):
    from imgpipe.cli import main as cli

    monkeypatch.setenv("PGPASSWORD", postgres_server.password)
    monkeypatch.setenv("PGPASSFILE", os.devnull)
    url = postgres_server.url("prune_conflict")
    first = _pg_home(postgres_server, tmp_path / "first", "gamma", "prune_conflict", airflow=True)
    r1, r2, r3 = training_history(first, runs=3, blessed_runs=(1,))
    # Runs under Airflow keep no record: the home's database comes from the pipeline's config.
    config_path = shutil.copy(_record(first, url), tmp_path / "gamma.yaml")
    shutil.rmtree(os.path.join(first.home, "runs"))
    assert cli.main(["prune", "--home", first.home, "--keep", "1", "--dry-run"]) == 2
    assert "no run record naming a PostgreSQL ML Metadata database" in capsys.readouterr().err
    assert cli.main(["prune", "--config", str(config_path), "--keep", "1", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pipelines"]["gamma"]["runs_kept"] == [r3["id"]]
    assert {r["id"] for r in out["pipelines"]["gamma"]["removed"]} == {
        r2[k].id for k in ("model", "blessing", "pushed")
    }

    # A second home that copied the config (same pipeline name): its run was refused, but a
    # folder of the pipeline is there, with none of the database's artifacts: not its pipeline,
    # said so, nothing pruned.
    copy = tmp_path / "copy"
    os.makedirs(copy / "pipelines" / "gamma" / "Trainer")
    result = prune_home(str(copy), keep=0, config_path=config_path)
    assert result.pipelines == {} and result.unknown_pipelines == [str(copy / "pipelines" / "gamma")]
    assert all(_state(first, r["model"]) == LIVE for r in (r1, r2, r3))
    # Had both homes' runs been recorded under the name (the home copied with its folders, then
    # run), which runs are whose cannot be told: neither is pruned.
    both = _pg_home(postgres_server, copy, "gamma", "prune_conflict", airflow=True)
    both.execute("copy-run1", "Trainer", outputs={"model": ("Model", {})})
    with pytest.raises(PruneError, match=f"pipeline 'gamma' in {url} also has artifacts under {first.root}"):
        prune_home(str(copy), keep=0, config_path=config_path)
    assert all(_state(first, r["model"]) == LIVE for r in (r1, r2, r3))
    # A home that is not there, or a database that is not (a mistyped name): refused, and the
    # database is not created by the dry run or the prune.
    with pytest.raises(PruneError, match="is not a directory"):
        prune_home(str(tmp_path / "nohome"), keep=1, config_path=config_path)
    assert not (tmp_path / "nohome").exists()
    typo = PipelineConfig(home=first.home, metadata=postgres_server.url("prune_typo"), pipeline_name="gamma")
    typo_path = str(tmp_path / "typo.yaml")
    typo.save(typo_path)
    for dry_run in (True, False):
        with pytest.raises(metadata.MetadataUnavailable, match="no database of that name"):
            prune_home(None, keep=1, config_path=typo_path, dry_run=dry_run)
    assert "prune_typo" not in postgres_server.databases()
    # Without a password the server refuses: named, exit 2, nothing printed on stdout.
    monkeypatch.delenv("PGPASSWORD")
    assert cli.main(["prune", "--config", str(config_path), "--keep", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and f"cannot connect to ML Metadata at {url}" in captured.err
