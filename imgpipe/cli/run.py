"""`imgpipe run`: the pipeline on this machine (LocalDagRunner, SQLite ML Metadata).

Every flag comes from the config schema (imgpipe/cli/flags.py). Progress goes
to stderr; the run's summary is the one JSON line on stdout. While the pipeline
runs, anything a library prints to stdout (Keras' epoch lines) goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from imgpipe.cli.flags import add_config_flags, config_from_args
from imgpipe.cli.output import EXIT_LOCKED, Command, UsageError, WorkFailed, emit, error
from imgpipe.orchestration.lock import LockBusy, LockError, run_lock
from pipeline.config import ConfigError, PipelineConfig

log = logging.getLogger(__name__)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """`--config FILE`, one flag per config field, `--verbose`, `--lock-file`."""
    p.add_argument("--config", help="YAML config file; flags override its values")
    add_config_flags(p)
    p.add_argument("--verbose", action="store_true", help="show TFX's own logs")
    p.add_argument("--lock-file", help="hold this lock for the run; if another run holds it, exit 75 at once")


def config_from(args: argparse.Namespace) -> PipelineConfig:
    try:
        return config_from_args(args)
    except ConfigError as e:
        raise UsageError(str(e)) from e


def run_pipeline(config: PipelineConfig, verbose: bool = False) -> dict:
    """Run `config` locally; return the summary. UsageError for bad config, WorkFailed for a failed run."""
    from imgpipe.orchestration.local import PipelineRunError, run_local  # loads TFX: only when it runs

    try:
        with contextlib.redirect_stdout(sys.stderr):
            summary = run_local(config, verbose=verbose)
    except ConfigError as e:
        raise UsageError(str(e)) from e
    except PipelineRunError as e:
        raise WorkFailed(f"pipeline run failed: {e}") from e
    log.info(
        "run %s: accuracy %s, blessed %s, pushed %s",
        summary.run_id,
        summary.accuracy,
        summary.blessed,
        summary.pushed or "nothing",
    )
    return summary.to_dict()


def _run(args: argparse.Namespace) -> int:
    config = config_from(args)
    lock = run_lock(args.lock_file) if args.lock_file else contextlib.nullcontext()
    try:
        with lock:
            emit(run_pipeline(config, args.verbose))
    except LockBusy as e:
        error(str(e))
        return EXIT_LOCKED
    except LockError as e:
        raise UsageError(str(e)) from e
    return 0


COMMANDS = [
    Command("run", "run the pipeline locally (LocalDagRunner, SQLite ML Metadata)", add_run_arguments, _run)
]
