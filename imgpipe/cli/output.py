"""What every command shares: exit codes, the JSON result on stdout, errors and logging on stderr.

stdout carries only a command's machine-readable result (JSON lines); progress,
warnings and errors go to stderr through `logging`, configured once here.

Exit codes: 0 done, 1 the work failed, 2 bad arguments or configuration,
3 `imgpipe drift` found drift, 75 another run holds the lock (sysexits
EX_TEMPFAIL), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from imgpipe.orchestration.lock import EXIT_LOCKED

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DRIFT = 3  # the check ran and found drift: a schedule may retrain on it
EXIT_INTERRUPTED = 130
__all__ = ["EXIT_DRIFT", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_LOCKED", "EXIT_OK", "EXIT_USAGE"]

# Logger name (its first part) -> the tag shown in front of its lines on stderr.
_TAGS = {"trainer": "trainer", "components": "imgpipe", "pipeline": "imgpipe", "serving": "serving"}
_OWN = ("imgpipe", "pipeline", "components", "trainer", "serving")


class UsageError(Exception):
    """Bad arguments or configuration: exit 2 with the message."""


class WorkFailed(Exception):
    """The work was attempted and failed: exit 1 with the message."""


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


def emit(result: Any) -> None:
    """Write one JSON line to stdout: a command's result."""
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()


def show(text: str) -> None:
    """Write a human-readable view (e.g. a report's text) to stderr, beside the JSON result on stdout."""
    sys.stderr.write(text if text.endswith("\n") else text + "\n")
    sys.stderr.flush()


@contextlib.contextmanager
def stdout_to_stderr():
    """While the work runs, what libraries print to stdout (Keras' epoch lines) goes to stderr,
    so stdout holds only the command's JSON result (written after the block)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def error(message: str) -> None:
    sys.stderr.write(f"imgpipe: error: {message}\n")
    sys.stderr.flush()


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = record.name.split(".")
        if parts[0] == "imgpipe" and len(parts) > 1:
            tag = {"demo": "demo", "ingest": "ingest"}.get(parts[1], "imgpipe")
        else:
            tag = _TAGS.get(parts[0], parts[0])
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        if record.exc_info and record.levelno >= logging.ERROR:
            text += "\n" + self.formatException(record.exc_info)
        return f"[{tag}] {text}"


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (tests swap it)."""

    _imgpipe = True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never fail the work
            self.handleError(record)


def setup_logging(verbose: bool = False) -> None:
    """Send imgpipe's own loggers to stderr at INFO (DEBUG with verbose); once per process.

    imgpipe's loggers do not propagate, so absl's root handler (TFX, Beam) never
    prints them twice; third-party logging keeps its own configuration.
    """
    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    for name in _OWN:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        logger.propagate = False
