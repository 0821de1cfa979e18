"""A Ctrl-C or SIGTERM that a component's Beam job turned into its own error (Beam's runners
wrap the KeyboardInterrupt raised in a step in a RuntimeError) still stops `imgpipe run` as a
stop: its running executions are marked and its record says how it ended, not "failed"."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from imgpipe import stop_signals
from pipeline.config import PipelineConfig
from tests.helpers import encode_image, write_split_dataset


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
