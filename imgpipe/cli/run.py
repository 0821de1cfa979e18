"""`imgpipe run`: the pipeline on this machine (LocalDagRunner; ML Metadata in SQLite or on PostgreSQL).

Every flag comes from the config schema (imgpipe/cli/flags.py). Progress goes
to stderr; the run's summary is the one JSON line on stdout. While the pipeline
runs, anything written to stdout goes to stderr: Python prints (Keras' epoch
lines), C/C++ writes and child processes (output.stdout_to_stderr).

A run holds its home's lock (HOME/run.lock); a second run on the same home
exits 75 naming the holder at once, or after waiting `--lock-wait SECONDS`
(`--home-lock-wait` for the home's lock alone, as scheduled runs do).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Collection

from imgpipe.cli.flags import add_config_flags, config_from_args
from imgpipe.cli.output import Command, UsageError, WorkFailed, emit, emit_failure, stdout_to_stderr
from imgpipe.orchestration.lock import home_lock_path, run_lock
from pipeline.config import ConfigError, PipelineConfig, leaves

log = logging.getLogger(__name__)


# The Trainer machine's fields (ResourcesConfig): read by Kubeflow / Vertex AI alone.
MACHINE_FIELDS = tuple(name for section, name, _ in leaves() if section == "resources")


def add_run_arguments(
    p: argparse.ArgumentParser,
    local: bool = True,
    home_lock_default: str = "--lock-wait",
    unlisted: Collection[str] = (),
) -> None:
    """`--config FILE`, one flag per config field, `--verbose`, and the locks' flags.

    local=False (a command that writes a pipeline for another runner): the lock flags are
    still parsed, so the command can refuse them by name, but not listed in its help; nor are
    the config fields in `unlisted` (they do not apply to the command).
    """
    p.add_argument("--config", action=_GivenOnce, help="YAML config file; flags override its values")
    add_config_flags(p, unlisted)
    p.add_argument("--verbose", action="store_true", help="show TFX's own logs")
    add_lock_wait_argument(p, shown=local)
    p.add_argument(
        "--home-lock-wait",
        type=_seconds,
        metavar="SECONDS",
        help="wait up to SECONDS for the home's lock (another pipeline's run in the same home), "
        f"apart from --lock-wait, which then applies to --lock-file alone (default: {home_lock_default})"
        if local
        else argparse.SUPPRESS,
    )
    p.add_argument(
        "--lock-file",
        help="also hold this lock for the run (e.g. one lock for several homes' schedules); "
        "every run always holds its home's lock, HOME/run.lock"
        if local
        else argparse.SUPPRESS,
    )


class _GivenOnce(argparse.Action):
    """A flag that may be given once: a second --config silently dropped the first file."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001 - argparse's
        if getattr(namespace, f"_given_{self.dest}", False):
            parser.error(
                f"argument {option_string}: given twice (one config file; flags override its values)"
            )
        setattr(namespace, f"_given_{self.dest}", True)
        setattr(namespace, self.dest, values)


def add_lock_wait_argument(
    p: argparse.ArgumentParser, locks: str = "the home (or --lock-file)", shown: bool = True
) -> None:
    """`--lock-wait SECONDS`: how long to wait while another process holds the lock."""
    p.add_argument(
        "--lock-wait",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help=f"if another run or prune holds {locks}, wait up to SECONDS for it to end "
        "(default 0: exit 75 at once, naming the holder)"
        if shown
        else argparse.SUPPRESS,
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def config_from(args: argparse.Namespace) -> PipelineConfig:
    if getattr(args, "config", None) is not None and not args.config.strip():
        raise UsageError("--config is empty: give the config file, or leave the flag out")
    try:
        return config_from_args(args)
    except ConfigError as e:
        raise UsageError(str(e)) from e


def run_pipeline(config: PipelineConfig, verbose: bool = False, lock_wait: float = 0.0) -> dict:
    """Run `config` locally; return the summary.

    UsageError for bad config, WorkFailed for a failed run (its summary, with `failed` and
    `error`, is written to stdout first: it is also its run record), LockBusy when
    another run holds the home for more than `lock_wait` seconds.
    """
    from imgpipe.orchestration.local import PipelineRunError, run_local  # loads TFX: only when it runs

    try:
        with stdout_to_stderr():
            summary = run_local(config, verbose=verbose, lock_wait=lock_wait)
    except ConfigError as e:
        raise UsageError(str(e)) from e
    except PipelineRunError as e:
        if e.summary is not None:  # the failed run's record: stdout still holds the run's JSON
            emit_failure(e.summary.to_dict())
        raise WorkFailed(f"pipeline run failed: {e}") from e
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (exit 130 / 143): its record, if written
        if getattr(e, "summary", None) is not None:
            emit_failure(e.summary.to_dict())
        raise
    log.info(
        "run %s: %s, blessed %s, pushed %s",
        summary.run_id,
        _judged(summary.gate, summary.accuracy),
        summary.blessed,
        summary.pushed or (f"nothing ({summary.push_skipped})" if summary.push_skipped else "nothing"),
    )
    return summary.to_dict()


def _judged(gate: dict | None, accuracy: float | None) -> str:
    """The figure the gate judged by, named, against its floor ("balanced_accuracy 0.7895 (floor
    0.7807); accuracy 0.6000"): on a skewed split the plain accuracy alone misleads."""
    if not gate or gate.get("value") is None or not gate.get("metric"):
        return f"accuracy {accuracy}"
    floor = f" (floor {gate['floor']:.4f})" if isinstance(gate.get("floor"), (int, float)) else ""
    judged = f"{gate['metric']} {gate['value']:.4f}{floor}"
    if gate["metric"] != "accuracy" and accuracy is not None:
        judged += f"; accuracy {accuracy:.4f}"
    return judged


def _add_local_run_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p, unlisted=MACHINE_FIELDS)


def _run(args: argparse.Namespace) -> int:
    config = config_from(args)
    if config.resources.is_set:
        log.warning(
            "trainer_machine_type / trainer_accelerator apply to Kubeflow / Vertex AI (imgpipe compile, "
            "imgpipe schedule --runner vertex or kfp): this run trains on this machine's devices"
        )
    extra = args.lock_file
    if extra and os.path.realpath(extra) == os.path.realpath(home_lock_path(config.resolved().home)):
        extra = None  # the home's own lock, which the run takes anyway
    # LockBusy (exit 75) and LockError (exit 2) are mapped by cli/main.py.
    home_wait = args.lock_wait if args.home_lock_wait is None else args.home_lock_wait
    with run_lock(extra, wait=args.lock_wait) if extra else contextlib.nullcontext():
        emit(run_pipeline(config, args.verbose, home_wait))
    return 0


COMMANDS = [
    Command(
        "run",
        "run the pipeline locally (LocalDagRunner; ML Metadata in SQLite, or on PostgreSQL with --metadata)",
        _add_local_run_arguments,
        _run,
    )
]
