"""A Ctrl-C or SIGTERM that a component's Beam job turned into its own error (Beam's runners
wrap the KeyboardInterrupt raised in a step in a RuntimeError) still stops `imgpipe run` as a
stop: its running executions are marked and its record says how it ended, not "failed"."""

from __future__ import annotations

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
