"""Run the pipeline locally: TFX LocalDagRunner with SQLite ML Metadata.

`run_local(config)` runs every component in-process (Beam DirectRunner for the
data work), logs a progress line per component, and returns the run's
RunSummary (orchestration/summary.py), also saved with the run's config under
HOME/runs/<run_id>/ (orchestration/runs.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable

from imgpipe.ingest import IngestError, validate_tfrecord_dir
from imgpipe.orchestration import metadata, runs
from imgpipe.orchestration.summary import RunSummary, summarize_latest_run
from pipeline.config import ConfigError, PipelineConfig

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


class PipelineRunError(RuntimeError):
    """The run failed; the message names the component that failed."""


class _ComponentProgress:
    """Prints one line as each component starts and ends, with cached/done and time.

    LocalDagRunner runs nodes one by one through Launcher.launch; wrapping that
    method for the duration of a run is the one hook it offers for per-component
    progress. Whether a node was served from cache is read from ML Metadata.
    """

    def __init__(self, progress: Progress, total: int, metadata_path: str):
        self.progress = progress
        self.total = total
        self.metadata_path = metadata_path
        self.current: str | None = None
        self.done = 0

    def _state(self, result) -> str:
        execution_id = getattr(result, "execution_id", None)
        if execution_id is None:
            return "done"
        try:
            with metadata.open_store(self.metadata_path) as store:
                [execution] = store.get_executions_by_id([execution_id])
            return "cached" if metadata.state_name(execution) == "CACHED" else "done"
        except Exception:  # noqa: BLE001 - progress output must never fail a run
            return "done"

    @contextlib.contextmanager
    def installed(self):
        from tfx.orchestration.portable import launcher

        original = launcher.Launcher.launch
        tracker = self

        def launch(launcher_self, *args, **kwargs):
            node_id = launcher_self._pipeline_node.node_info.id  # noqa: SLF001
            tracker.current = node_id
            tracker.progress(f"[{tracker.done + 1}/{tracker.total}] {node_id} ...")
            started = time.perf_counter()
            result = original(launcher_self, *args, **kwargs)
            tracker.done += 1
            how = tracker._state(result)
            secs = time.perf_counter() - started
            tracker.progress(f"[{tracker.done}/{tracker.total}] {node_id} {how} in {secs:.1f}s")
            tracker.current = None
            return result

        launcher.Launcher.launch = launch
        try:
            yield self
        finally:
            launcher.Launcher.launch = original


def run_local(config: PipelineConfig, progress: Progress = log.info, verbose: bool = False) -> RunSummary:
    """Check `config`'s paths, run the pipeline with LocalDagRunner, and summarise the run."""
    config = config.resolved().validate_paths()
    check_data_dir(config.data_dir)
    if config.replicas:
        # Before TensorFlow initialises its devices (imported here, on use: the CLI stays light).
        from trainer import distribution

        distribution.split_cpu(config.replicas)

    from tfx import v1 as tfx

    from pipeline.pipeline import create_pipeline

    os.makedirs(config.home, exist_ok=True)
    metadata_config = tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path)
    pipeline = create_pipeline(config, metadata_config)

    tracker = _ComponentProgress(progress, len(pipeline.components), config.metadata_path)
    if not verbose:
        # TFX, Beam and TensorFlow log at INFO through absl; keep the terminal to progress lines.
        import absl.logging

        absl.logging.set_verbosity(absl.logging.WARNING)
    progress(f"pipeline {config.pipeline_name}: data {config.data_dir}, home {config.home}")
    try:
        with tracker.installed():
            tfx.orchestration.LocalDagRunner().run(pipeline)
    except Exception as e:  # noqa: BLE001 - re-raised with the failing component named
        where = tracker.current or "the pipeline"
        raise PipelineRunError(f"{where} failed: {type(e).__name__}: {e}") from e

    summary = summarize_latest_run(config.metadata_path, config.pipeline_name)
    summary.run_dir = runs.write_record(config, summary)
    return summary


def check_data_dir(data_dir: str) -> None:
    """Fail before any component runs when the TFRecord dir is unusable (ConfigError)."""
    try:
        validate_tfrecord_dir(data_dir)
    except IngestError as e:
        raise ConfigError(f"data_dir: {e}") from e
