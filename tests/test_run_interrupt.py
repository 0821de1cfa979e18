"""A Ctrl-C or SIGTERM that a component's Beam job turned into its own error (Beam's runners
wrap the KeyboardInterrupt raised in a step in a RuntimeError) still stops `imgpipe run` as a
stop: its running executions are marked and its record says how it ended, not "failed"."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from imgpipe import stop_signals
from pipeline.config import PipelineConfig
from tests.helpers import encode_image, logged, write_split_dataset


def test_a_stop_wrapped_by_a_components_beam_job_is_recorded_as_a_stop(tmp_path, monkeypatch):
    from tfx.orchestration.local import local_dag_runner

    from imgpipe.orchestration import local

    rng = np.random.default_rng(0)
    items = [(encode_image(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)), str(i % 2)) for i in range(20)]
    config = PipelineConfig(
        data_dir=write_split_dataset(str(tmp_path / "data"), items),
        home=str(tmp_path / "home"),
        serving_dir=str(tmp_path / "serving"),
        weights="none",  # the run stops before the Trainer; no ImageNet download needed
    )

    def stopped_inside_beam(self, ir, *args, **kwargs):
        stop_signals.received_signals.append("SIGTERM")  # as the CLI's handler records it
        raise RuntimeError("imgpipe.stop_signals.Terminated [while running 'Transform/Analyze']")

    stopped = []
    monkeypatch.setattr(local_dag_runner.LocalDagRunner, "run_with_ir", stopped_inside_beam)
    monkeypatch.setattr(local, "_stop_interrupted_executions", lambda cfg, run, how: stopped.append(how))
    try:
        with pytest.raises(stop_signals.Terminated) as raised:
            local.run_local(config)
    finally:
        stop_signals.received_signals.clear()
    assert stopped == ["terminated (SIGTERM)"]
    summary = raised.value.summary
    assert summary.error == "the pipeline: the run was terminated (SIGTERM)", summary.error
    assert isinstance(raised.value.__cause__, RuntimeError)


def _tiny_config(tmp_path) -> PipelineConfig:
    rng = np.random.default_rng(0)
    items = [(encode_image(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)), str(i % 2)) for i in range(20)]
    return PipelineConfig(
        data_dir=write_split_dataset(str(tmp_path / "data"), items),
        home=str(tmp_path / "home"),
        serving_dir=str(tmp_path / "serving"),
        weights="none",
    )


def test_a_stop_while_the_report_is_written_is_recorded_and_printed(tmp_path, monkeypatch):
    """SIGTERM after every component finished (writing the report) ended with exit 143, nothing on
    stdout and an empty run folder, though the run had pushed: now recorded and printed as
    stopped, with its push."""
    from tfx.orchestration.local import local_dag_runner

    from imgpipe.orchestration import local, runs
    from imgpipe.orchestration.summary import RunSummary

    config = _tiny_config(tmp_path)
    monkeypatch.setattr(local_dag_runner.LocalDagRunner, "run_with_ir", lambda self, ir, *a, **kw: None)
    monkeypatch.setattr(local, "withdraw_unserved_blessings", lambda cfg: [])
    pushed = str(tmp_path / "serving" / "imgpipe" / "7")

    def summarize(cfg, run_id):
        return RunSummary(run_id=run_id, blessed=True, pushed=pushed, accuracy=0.9, replicas=1, executions={})

    def stopped_in_report(cfg, summary, loaded_model=None):
        raise stop_signals.Terminated()

    monkeypatch.setattr(local, "summarize_run", summarize)
    monkeypatch.setattr(local, "attach_report", stopped_in_report)
    with pytest.raises(stop_signals.Terminated) as raised:
        local.run_local(config)
    summary = raised.value.summary
    assert summary.pushed == pushed and summary.blessed is True
    assert summary.failed == "the pipeline"
    assert summary.error == "after every component finished: the run was terminated (SIGTERM)", summary.error
    assert runs.read_summary(summary.run_dir)["pushed"] == pushed


def test_a_record_that_cannot_be_saved_still_gives_the_summary(tmp_path, monkeypatch):
    """A full disk while saving the record: the finished run ended in a traceback with nothing on
    stdout; a failed run printed nothing at all. The summary now says the record was not saved."""
    import errno

    from tfx.orchestration.local import local_dag_runner

    from imgpipe.orchestration import local, runs
    from imgpipe.orchestration.summary import RunSummary

    config = _tiny_config(tmp_path)
    monkeypatch.setattr(local_dag_runner.LocalDagRunner, "run_with_ir", lambda self, ir, *a, **kw: None)
    monkeypatch.setattr(local, "withdraw_unserved_blessings", lambda cfg: [])
    monkeypatch.setattr(local, "attach_report", lambda cfg, summary, loaded_model=None: None)
    monkeypatch.setattr(
        local,
        "summarize_run",
        lambda cfg, run_id: RunSummary(
            run_id=run_id, blessed=False, pushed=None, accuracy=0.4, replicas=1, executions={}
        ),
    )

    def full(cfg, summary):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs, "write_record", full)
    summary = local.run_local(config)
    assert summary.record_error.startswith(f"the run's record was not saved in {tmp_path / 'home' / 'runs'}")
    assert "No space left on device" in summary.record_error
    # A failed run whose ML Metadata cannot be read back either: the failure alone, printed.
    monkeypatch.setattr(
        local, "summarize_run", lambda cfg, run_id: (_ for _ in ()).throw(RuntimeError("disk full"))
    )
    failed = local._record_failed_run(config.resolved(), "r1", "Evaluator", "Evaluator failed: x")
    assert (failed.run_id, failed.failed, failed.error) == ("r1", "Evaluator", "Evaluator failed: x")
    assert "No space left" in failed.record_error
    # ... after its Evaluator decided (the store's server stopped as the Pusher ran): the gate's
    # verdict and the components' states are what this process saw, not nulls.
    import types

    evaluation = tmp_path / "Evaluator" / "evaluation" / "7"
    evaluation.mkdir(parents=True)
    gate = {"blessed": True, "accuracy": 0.93, "per_class_recall": {"a": 0.9, "b": 0.96}, "reasons": []}
    (evaluation / "gate.json").write_text(json.dumps(gate))
    tracker = local._ComponentProgress(lambda line: None, 3, config.resolved())
    tracker.states = {"Trainer": "cached", "Evaluator": "done"}
    artifact = types.SimpleNamespace(uri=str(evaluation))
    # A launch's result, noted as it ended (no execution id: no store to ask).
    tracker._state("Evaluator", types.SimpleNamespace(output_dict={"evaluation": [artifact]}))
    failed = local._record_failed_run(config.resolved(), "r2", "Pusher", "Pusher failed: x", tracker)
    assert failed.executions == {"Trainer": "CACHED", "Evaluator": "COMPLETE", "Pusher": "FAILED"}
    assert (failed.blessed, failed.accuracy, failed.gate) == (True, 0.93, gate)
    assert failed.per_class_accuracy == {"a": 0.9, "b": 0.96} and failed.pushed is None

    # A cached Evaluator (the usual re-run after a failed push): the launcher's result names the
    # folder a new execution would have written, which does not exist; the store, read as the
    # node ended, names the cached one.
    from ml_metadata.proto import metadata_store_pb2 as pb

    from imgpipe.orchestration import metadata

    with metadata.open_store(config.resolved(), readonly=False) as store:
        kind = store.put_execution_type(pb.ExecutionType(name="Evaluator"))
        art_kind = store.put_artifact_type(pb.ArtifactType(name="ModelEvaluation"))
        [art] = store.put_artifacts([pb.Artifact(type_id=art_kind, uri=str(evaluation))])
        [cached] = store.put_executions([pb.Execution(type_id=kind, last_known_state=pb.Execution.CACHED)])
        event = pb.Event(artifact_id=art, execution_id=cached, type=pb.Event.OUTPUT)
        event.path.steps.add().key = "evaluation"
        store.put_events([event])
    tracker = local._ComponentProgress(lambda line: None, 3, config.resolved())
    unwritten = types.SimpleNamespace(uri=str(tmp_path / "Evaluator" / "evaluation" / "31"))
    result = types.SimpleNamespace(execution_id=cached, output_dict={"evaluation": [unwritten]})
    assert tracker._state("Evaluator", result) == "cached"
    tracker.states = {"Evaluator": "cached"}
    failed = local._record_failed_run(config.resolved(), "r3", "Pusher", "Pusher failed: x", tracker)
    assert failed.executions == {"Evaluator": "CACHED", "Pusher": "FAILED"}
    assert (failed.blessed, failed.accuracy, failed.gate) == (True, 0.93, gate)


def test_the_record_is_saved_whole_or_not_at_all(tmp_path, monkeypatch):
    """config.yaml was written in place: a full disk left it empty (0 bytes)."""
    import builtins
    import errno

    from imgpipe.orchestration import runs
    from imgpipe.orchestration.summary import RunSummary

    config = PipelineConfig(epochs=3, home=str(tmp_path / "home"))
    summary = RunSummary(run_id="r1", blessed=True, pushed=None, accuracy=0.9, replicas=1, executions={})
    folder = runs.write_record(config, summary)
    before = {name: open(os.path.join(folder, name)).read() for name in os.listdir(folder)}
    real_open = builtins.open

    def full(file, mode="r", *a, **kw):
        if ".tmp" in os.path.basename(str(file)) and "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr(builtins, "open", full)
    with pytest.raises(OSError):
        runs.write_record(config.replace(epochs=5), dataclasses.replace(summary, accuracy=0.5))
    monkeypatch.setattr(builtins, "open", real_open)
    after = {name: open(os.path.join(folder, name)).read() for name in os.listdir(folder)}
    assert after == before and sorted(after) == ["config.yaml", "summary.json"]


def test_a_run_that_died_without_a_word_is_recorded_by_the_next(tmp_path, monkeypatch, capsys):
    """kill -9 (or the OOM killer, a power cut) left no record of the run at all: `report` had
    nothing to name, and only ML Metadata knew it had started. A run now marks itself started,
    and the next run of the home, holding its lock, writes the dead run's record."""
    import json
    import subprocess
    import sys

    from tfx.orchestration.local import local_dag_runner

    from imgpipe.cli import main as cli
    from imgpipe.orchestration import local, runs
    from imgpipe.orchestration.summary import RunSummary

    config = _tiny_config(tmp_path).resolved()
    home = config.home

    def started_by(run_id: str, proc: subprocess.Popen) -> str:
        runs.mark_started(config, run_id)
        folder = runs.run_dir(home, run_id)
        marker = os.path.join(folder, runs.STARTED_FILE)
        with open(marker, encoding="utf-8") as f:
            started = json.load(f)
        with open(marker, "w", encoding="utf-8") as f:
            json.dump({**started, "pid": proc.pid}, f)
        return folder

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        dead = started_by("2026-01-01T00:00:00.000001-dead", gone)
        live = started_by("2026-01-01T00:00:01.000001-live", alive)
        # Before the next run: the dead run is named, not "not a run record".
        assert cli.main(["report", "2026-01-01T00:00:00.000001-dead", "--home", home]) == 2
        err = capsys.readouterr().err
        assert "run 2026-01-01T00:00:00.000001-dead has not written its record (started " in err
        assert f"pid {gone.pid}, host " in err and ": it died (kill -9, out of memory" in err
        # The home's lock says which: its holder names the run that is running.
        from imgpipe.orchestration import lock

        # (flock: another open file of the same lock conflicts in this process too.)
        with lock.run_lock(lock.home_lock_path(home), holder="run 2026-01-01T00:00:01.000001-live"):
            assert cli.main(["report", "2026-01-01T00:00:01.000001-live", "--home", home]) == 2
            assert "it is running (it holds the home's lock)" in capsys.readouterr().err
            assert cli.main(["report", "2026-01-01T00:00:00.000001-dead", "--home", home]) == 2
            assert "another run holds the home's lock: this one died" in capsys.readouterr().err

        monkeypatch.setattr(local_dag_runner.LocalDagRunner, "run_with_ir", lambda self, ir, *a, **kw: None)
        monkeypatch.setattr(local, "withdraw_unserved_blessings", lambda cfg: [])
        monkeypatch.setattr(local, "attach_report", lambda cfg, summary, loaded_model=None: None)
        real_summarize = local.summarize_run

        def summarize(cfg, run_id):
            if run_id.endswith("-dead"):
                return real_summarize(cfg, run_id)  # ML Metadata knows no execution of it
            return RunSummary(
                run_id=run_id, blessed=False, pushed=None, accuracy=0.4, replicas=1, executions={}
            )

        monkeypatch.setattr(local, "summarize_run", summarize)
        summary = local.run_local(config)
    finally:
        alive.kill()
        alive.wait()

    recorded = runs.read_summary(dead)
    assert recorded["run_id"] == "2026-01-01T00:00:00.000001-dead" and recorded["failed"] == "the pipeline"
    assert recorded["error"].startswith(
        "before its first component: the run ended without writing its record (started "
    )
    assert f"pid {gone.pid}: killed with SIGKILL" in recorded["error"]
    assert recorded["error"].endswith(f"recorded by run {summary.run_id}")
    assert not os.path.exists(os.path.join(dead, runs.STARTED_FILE))
    assert dead in runs.records(home)
    # Holding the home's lock, the new run knows no other run of the home is alive, whatever a
    # process id says (a reused one may be): both are recorded. Its own marker is gone with its record.
    assert runs.unfinished(home) == [] and live in runs.records(home)
    assert os.path.isfile(os.path.join(summary.run_dir, runs.SUMMARY_FILE))
    assert not os.path.exists(os.path.join(summary.run_dir, runs.STARTED_FILE))
    # `report` of the dead run now says why it has no report.
    assert cli.main(["report", "2026-01-01T00:00:00.000001-dead", "--home", home]) == 2
    assert "failed, so it has no report: before its first component: the run ended" in capsys.readouterr().err


def test_a_component_failing_before_its_executor_is_marked_failed_by_its_run(tmp_path, monkeypatch):
    """An error in a component's driver (a folder of the home the run may not write, as an
    audit's run as another user met) failed the run, but TFX left the execution RUNNING: the
    summary said RUNNING and the next run took this one for a run that died. The run now marks
    it FAILED itself before writing its record."""
    from components.example_gen import ContentFingerprintDriver
    from imgpipe.orchestration import local, metadata

    def denied(self, *args, **kwargs):
        raise PermissionError("denied on purpose")

    monkeypatch.setattr(ContentFingerprintDriver, "get_input_processor", denied)
    config = _tiny_config(tmp_path)
    with logged("imgpipe.orchestration.local") as seen:
        with pytest.raises(local.PipelineRunError) as raised:
            local.run_local(config)
    summary = raised.value.summary
    assert summary.failed == "ImportExampleGen" and "denied on purpose" in summary.error
    assert summary.executions == {"ImportExampleGen": "FAILED"}, summary.executions
    from ml_metadata.proto import metadata_store_pb2

    with metadata.open_store(config.resolved()) as store:
        states = [e.last_known_state for e in store.get_executions()]
    assert states == [metadata_store_pb2.Execution.FAILED], states
    assert any("left RUNNING as the run failed: marked FAILED" in m for m in seen), seen
