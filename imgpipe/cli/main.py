"""The `imgpipe` command: parse, dispatch to a command group's module, map errors to exit codes.

Each command group lives in its own module (ingest, backbone, run, report, demo,
serving, batch, drift, kubeflow, airflow, schedule, prune, rollback) and registers `COMMANDS`. Modules load TensorFlow
and TFX only inside the commands that need them, so `imgpipe --help` is quick.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

# TFT 1.16 and TFMA 0.47 run Keras 2 (tf-keras): choose it before TensorFlow loads.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# ML Metadata's C++ logs every PostgreSQL connection at INFO; keep its warnings and errors.
os.environ.setdefault("GLOG_minloglevel", "1")
warnings.filterwarnings("ignore", category=FutureWarning)
# ... in the Python processes a command starts too (Beam's workers), which import the same
# libraries (google-api-core warns at import that Python 3.10 is no longer supported).
if "ignore::FutureWarning" not in os.environ.get("PYTHONWARNINGS", "").split(","):
    os.environ["PYTHONWARNINGS"] = ",".join(
        filter(None, (os.environ.get("PYTHONWARNINGS"), "ignore::FutureWarning"))
    )

from imgpipe.cli import (  # noqa: E402
    airflow,
    backbone,
    batch,
    demo,
    drift,
    ingest,
    kubeflow,
    prune,
    report,
    rollback,
    run,
    schedule,
    serving,
)
from imgpipe.cli.output import (  # noqa: E402
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    Command,
    StdoutClosed,
    Terminated,
    UsageError,
    WorkFailed,
    error,
    received_signals,
    setup_logging,
    sigterm_raises,
    stopped_by,
)
from imgpipe.orchestration.lock import LockBusy, LockError  # noqa: E402
from imgpipe.process_exit import freeze_at_exit  # noqa: E402
from imgpipe.quiet_tensorflow import filter_tensorflow_import_noise  # noqa: E402
from pipeline.config import ConfigError  # noqa: E402

GROUPS = (
    ingest,
    backbone,
    run,
    report,
    demo,
    serving,
    batch,
    drift,
    kubeflow,
    airflow,
    schedule,
    prune,
    rollback,
)


def commands() -> list[Command]:
    return [c for group in GROUPS for c in group.COMMANDS]


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose "expected one argument" says how to give a value that starts
    with '-' (`--beam-arg --direct_num_workers=2` reads --direct_num_workers=2 as a flag)."""

    def error(self, message: str) -> NoReturn:
        """One line naming what was wrong and where the help is (argparse's own printed the
        whole usage block first: 47 lines for `run`), exit 2."""
        missing = re.fullmatch(r"argument (\S+): expected one argument", message)
        if missing:
            flag = missing.group(1).split("/")[-1]
            message += f" (a value must follow it; if the value starts with '-', write {flag}=VALUE)"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def parse_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 - argparse's signature
        """As argparse's, but an unknown flag is named with the command it was given to."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            self.exit(
                EXIT_USAGE,
                f"{prog}: error: unrecognized arguments: {' '.join(extras)} (see `{prog} --help`)\n",
            )
        return parsed


def _version() -> str:
    """The installed distribution's version (setup.py's), or "unknown" when run from a source tree."""
    from importlib import metadata

    try:
        return metadata.version("imgpipe")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: `--epoch 3` was taken as --epochs, and a later flag sharing the prefix
    # would silently change what an old command line means.
    parser = _Parser(
        prog="imgpipe",
        description="Labelled image folders -> a gated, served image classifier (TFX transfer learning).",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"imgpipe {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in commands():
        p = sub.add_parser(command.name, help=command.help, description=command.help, allow_abbrev=False)
        command.add_arguments(p)
        p.set_defaults(handler=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)  # stdout holds only a command's JSON
        return EXIT_USAGE
    received_signals.clear()  # this command's stop signals, not an earlier one's in this process
    setup_logging(verbose=getattr(args, "verbose", False))
    limited = address_space_warning()
    if limited:
        logging.getLogger("imgpipe").warning("%s", limited)
    filter_tensorflow_import_noise()
    freeze_at_exit()
    try:
        with sigterm_raises():
            return int(args.handler(args) or 0)
    except (UsageError, ConfigError, LockError) as e:
        error(str(e))
        return EXIT_USAGE
    except LockBusy as e:
        error(str(e))
        return EXIT_LOCKED
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM raised as Terminated
        return _stopped(type(e))
    except StdoutClosed:
        # The reader of stdout went away (`imgpipe predict ... | head -1`): nothing more can be
        # said there, and Python must not fail flushing it at exit.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as e:
        # Stopped by a signal whose KeyboardInterrupt a library turned into its own error (Beam's
        # runners do): the exit says it was stopped, not that the work failed.
        stopped = stopped_by()
        if stopped is not None:
            return _stopped(stopped)
        if isinstance(e, WorkFailed):
            error(str(e))
            return EXIT_FAILED
        raise


# Below this address-space limit (`ulimit -v`) TensorFlow failed to start here: `serve` aborted in
# its model load ("LLVM ERROR: pthread_create failed"), `predict-batch` crashed without a word, at
# about 3 GB; both ran at 6 GB. A process's threads and allocator arenas reserve address space
# they never touch, so the limit is met long before memory is used.
ADDRESS_SPACE_WARNED_BELOW = 8 << 30


def address_space_warning(limit: int | None = None) -> str | None:
    """A warning when the process's address-space limit (RLIMIT_AS, `ulimit -v`) is under
    ADDRESS_SPACE_WARNED_BELOW; None when unlimited or higher (or the platform has none)."""
    if limit is None:
        try:
            import resource

            limit = resource.getrlimit(resource.RLIMIT_AS)[0]
            if limit == resource.RLIM_INFINITY:
                return None
        except (ImportError, OSError, ValueError, AttributeError):
            return None
    if limit < 0 or limit >= ADDRESS_SPACE_WARNED_BELOW:
        return None
    return (
        f"the address-space limit (ulimit -v) is {limit / (1 << 30):.1f} GiB: TensorFlow reserves address "
        "space for its threads it never uses, and below about 6 GiB it can abort or crash without a message "
        '("pthread_create failed"); raise it (ulimit -v unlimited) or limit memory with a cgroup instead'
    )


def _stopped(kind: type[KeyboardInterrupt]) -> int:
    """Say how the command was stopped; its exit code (143 for SIGTERM, 130 for Ctrl-C)."""
    if issubclass(kind, Terminated):
        error("terminated (SIGTERM)")
        return EXIT_TERMINATED
    error("interrupted")
    return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
