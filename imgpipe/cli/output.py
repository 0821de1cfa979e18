"""What every command shares: exit codes, the JSON result on stdout, errors and logging on stderr.

stdout carries only a command's machine-readable result (JSON lines); progress,
warnings and errors go to stderr through `logging`, configured once here.
`stdout_to_stderr()` keeps everything else off stdout while work runs (library
prints, C/C++ writes, child processes). Known noise is dropped from stderr,
precisely (`_NOISE`; imgpipe/quiet_tensorflow.py for TensorFlow's import) and, unless
--verbose, the libraries' notices about their own code (`_LIBRARY_NOTICES`).

Exit codes: 0 done, 1 the work failed, 2 bad arguments or configuration,
3 `imgpipe drift` found drift, 75 another run holds the lock (sysexits
EX_TEMPFAIL), 130 interrupted (SIGINT, Ctrl-C), 143 terminated (SIGTERM: what
`systemctl stop`, `docker stop`, Kubernetes and `timeout` send), 141 stdout's reader
went away (`| head`; 128 + SIGPIPE, as a shell's writer ends). Both signals take
the same path: the work's cleanup runs (servers stopped, scratch removed, a
run's executions marked FAILED and its record written) before the exit.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

from imgpipe.orchestration.lock import EXIT_LOCKED
from imgpipe.stop_signals import Terminated, received_signals, stopped_by
from trainer.stdio import flush_c_stdio

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DRIFT = 3  # the check ran and found drift: a schedule may retrain on it
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_BROKEN_PIPE = 141  # stdout's reader went away (128 + SIGPIPE), as a shell pipeline's writer ends
__all__ = [
    "Terminated",
    "received_signals",
    "stopped_by",
    "EXIT_BROKEN_PIPE",
    "EXIT_DRIFT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
]


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside: SIGTERM raises Terminated in the main thread, SIGINT KeyboardInterrupt as
    always, and each is recorded (`stopped_by`); elsewhere nothing changes. A command that
    handles SIGTERM itself (`imgpipe serve`) installs its own handler inside."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _terminate(signum, frame):
        received_signals.append("SIGTERM")
        raise Terminated()

    def _interrupt(signum, frame):
        received_signals.append("SIGINT")
        raise KeyboardInterrupt()

    previous = signal.signal(signal.SIGTERM, _terminate)
    previous_int = None
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not if SIGINT is ignored
        previous_int = signal.signal(signal.SIGINT, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)


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


class StdoutClosed(Exception):
    """stdout's reader has gone (`imgpipe predict ... | head -1`): the CLI ends quietly."""


def emit(result: Any) -> None:
    """Write one JSON line to stdout: a command's result (StdoutClosed when its reader has gone)."""
    try:
        sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
        sys.stdout.flush()
    except BrokenPipeError as e:
        raise StdoutClosed() from e


def emit_failure(result: Any) -> None:
    """emit() the summary of work that failed or was stopped: the failure decides the exit, so
    a reader of stdout that has gone is not what the command ends on."""
    with contextlib.suppress(StdoutClosed):
        emit(result)


def show(text: str) -> None:
    """Write a human-readable view (e.g. a report's text) to stderr, beside the JSON result on stdout."""
    sys.stderr.write(text if text.endswith("\n") else text + "\n")
    sys.stderr.flush()


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
    for name in {**_NOISE, **_LIBRARY_NOTICES, **_SHORTENED}:
        library = logging.getLogger(name)
        for old in [f for f in library.filters if isinstance(f, _Drop)]:
            library.removeFilter(old)
        patterns = _NOISE.get(name, ()) + (() if verbose else _LIBRARY_NOTICES.get(name, ()))
        shorten = () if verbose else _SHORTENED.get(name, ())
        if patterns or shorten:
            library.addFilter(_Drop(patterns, shorten))
    for name in _OWN:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        logger.propagate = False


# --------------------------------------------------------------------------- stdout
@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout during the block to stderr, so stdout holds only the result.

    Covers Python prints (sys.stdout: Keras' epoch lines), C/C++ code writing to
    file descriptor 1, and child processes (Beam workers inherit the descriptor).
    C stdio buffers are flushed before descriptor 1 is restored, so nothing
    written inside the block reaches stdout later.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no descriptor 1 (closed stdout): nothing to protect at that level
        saved = None
    if saved is not None:
        os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            flush_c_stdio()
            os.dup2(saved, 1)
            os.close(saved)


# --------------------------------------------------------------------------- stderr noise
# Dropped from these loggers always, each message by a pattern:
# - absl: TFX 1.16 checks `if artifact_query.property_predicate:` on a protobuf sub-message,
#   which is always true, so it warns "not supported" for every input channel of every
#   component, though imgpipe's pipeline sets no property predicate (tests/test_output.py
#   checks the compiled pipeline). Only this exact message.
# - Beam's local job service relays each of its worker processes' start-up warnings
#   (--beam-runner multiprocess): the worker has no semi-persistent directory (a remote
#   runner's staging feature) and does not know the direct runner's own two options (in
#   either order). Only these exact worker messages; every other one is still relayed.
_BEAM_WORKER_LOGGER = "apache_beam.runners.portability.local_job_service"
_NOISE = {
    "absl": (re.compile(r"^ArtifactQuery\.property_predicate is not supported\.\Z"),),
    _BEAM_WORKER_LOGGER: (
        re.compile(
            r'message: "(No semi_persistent_directory found: |Discarding unparseable args: '
            r"\[\\'--(pipeline_type_check|direct_runner_use_stacked_bundle)\\'"
            r"(, \\'--(pipeline_type_check|direct_runner_use_stacked_bundle)\\')?\]\")"
        ),
    ),
}


# Notices TFT, TFMA and TensorFlow log on every run about their own code, not about the
# user's data, model or settings; dropped from stderr unless --verbose (one pattern per
# notice, matched on the logger it comes from):
# - TFT: a full analysis pass is needed (the label vocabulary is an analyzer: always so);
# - TFT: tables traced in a tf.function, on its own label vocabulary's table (a few entries);
# - TFMA loads a model with Keras first: imgpipe exports with tf.saved_model.save by design, so
#   "saved prior to TF 2.5" is Keras's guess at why there is no Keras metadata;
# - a TensorFlow deprecation whose call site is an installed package's code (TFMA's writer
#   calls tf_record_iterator): only that package can change it. One from imgpipe's code, a
#   user's module file or any path outside site-/dist-packages is still shown;
# - TFX's launcher: "Execution N failed." as it re-raises a component's error, which the run's
#   own failure message names with the component and the reason (the number is ML Metadata's).
# - Beam, as a step of a job fails: the error with its traceback, before the job re-raises it as
#   the component's error, which the run's failure message names (with the records behind it).
# - TFLite's converter asks for the Keras model beside the function it converts: trainer/tflite.py
#   leaves it out on purpose (the converter would then save and re-trace the whole model, ~20x
#   slower), so the notice is about the converter's API, not about the run.
_LIBRARY_NOTICES = {
    "absl": (
        re.compile(r"^Execution \d+ failed\.\Z"),
        re.compile(r"^Not using the in-place Transform because the following features require analyzing"),
        re.compile(
            r"^Tables initialized inside a tf\.function +will be re-initialized on every invocation.*"
            r": compute_and_apply_vocabulary(_\d+)?/apply_vocab/",
            re.DOTALL,
        ),
        re.compile(r"^Please consider providing the trackable_obj argument in the from_concrete_functions\."),
    ),
    "apache_beam.runners.common": (re.compile(r" \[while running '[^\n]*'\]\Z"),),
    "tensorflow": (
        re.compile(r"^SavedModel saved prior to TF 2\.5 detected when loading Keras model"),
        re.compile(r"^From [^\n]*/(site|dist)-packages/[^\n]*:\d+: .* is deprecated and will be removed"),
    ),
}


# Library messages kept, but cut to their first sentence unless --verbose: TFX's launcher, when
# a component's temp folder is gone (the home deleted during the run), logs the whole execution
# info after it, ~500 lines of protobuf text.
_SHORTENED = {
    "absl": (
        (
            re.compile(r"^(execution_info\.tmp_dir \S+ is not found), it is likely that .*\Z", re.DOTALL),
            r"\1 (deleted while the component ran; --verbose shows the execution info)",
        ),
    ),
}


class _Drop(logging.Filter):
    """Drops a logger's records whose text one of `patterns` finds; cuts those `shorten` finds."""

    def __init__(self, patterns: tuple[re.Pattern, ...], shorten: tuple[tuple[re.Pattern, str], ...] = ()):
        super().__init__()
        self.patterns = patterns
        self.shorten = shorten

    def filter(self, record: logging.LogRecord) -> bool:
        text = _message(record)
        if text is None:
            return True
        if any(p.search(text) for p in self.patterns):
            return False
        for pattern, replacement in self.shorten:
            if pattern.search(text):
                record.msg, record.args = pattern.sub(replacement, text), None
                break
        return True


def _message(record: logging.LogRecord) -> str | None:
    """The record's text, or None when its arguments do not fit its format: a filter must not
    raise into the library's call (logging's handler reports such a record itself)."""
    try:
        return record.getMessage()
    except Exception:  # noqa: BLE001 - any formatting error: keep the record, unfiltered
        return None
