"""A model server subprocess for pre-push validation: TF Serving when installed, else `imgpipe serve`.

`imgpipe run` starts the InfraValidator's server early (orchestration/local.py):
`standby_server` starts one on a base path it polls, the model is added with `stage_into` (a
rename, so no half-copied version is ever seen), and `take_standby` hands it to the
InfraValidator; elsewhere (Airflow, Kubeflow) the InfraValidator starts its own. `started_server`
starts a server on a free loopback port over a base path and stops it when the block ends,
however it ends; `stage_model` copies a SavedModel into TF Serving's base path layout
(`<root>/<model_name>/<version>/`). `serve_model` is `started_server` that also waits until
the version is AVAILABLE (the tests' way to serve one model):

    with serve_model(base_path, "digits", log_path, timeout=300) as server:
        ServingClient(server.target).predict(...)

The server is `tensorflow_model_server` when that binary is on PATH (the
production server, run with --port, --model_name, --model_base_path and no
load retries), and otherwise the project's own TF Serving-compatible server
(`python -m imgpipe serve`, serving/devserver), which every imgpipe image has. Either way it is a
child process of the component, in the component's own container: no Docker.

No process is left behind: the server runs in its own process group, which
is sent SIGTERM and then SIGKILL (after `grace` seconds) when the block exits,
on success, failure, timeout or interrupt. On Linux the server also gets
SIGKILL from the kernel if the process that started it dies first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import tensorflow as tf

from serving.client import ServingClient
from serving.errors import ServingRpcError

log = logging.getLogger(__name__)

TF_SERVING_BINARY = "tensorflow_model_server"
IMGPIPE_SERVER = "imgpipe serve"
LOOPBACK = "127.0.0.1"
STAGED_VERSION = 1  # the version number the candidate is served under
_LOG_TAIL_CHARS = 2000
_POLL_SECONDS = 0.25
_NOT_READY_YET = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED)


class ModelServerError(RuntimeError):
    """The server did not come up serving the model: exited, failed the load, or timed out."""


@dataclasses.dataclass(frozen=True)
class ServerCommand:
    """Which server to run (`kind`: TF_SERVING_BINARY or IMGPIPE_SERVER) and its argv."""

    kind: str
    argv: tuple[str, ...]


def server_command(
    model_base_path: str,
    model_name: str,
    port: int,
    tf_serving_binary: str | None = None,
    poll_seconds: float | None = None,
) -> ServerCommand:
    """The command serving `model_base_path` as `model_name` on `port`.

    `tf_serving_binary`: a tensorflow_model_server path; None looks it up on PATH.
    Without one, the project's own server runs with this interpreter.
    `poll_seconds`: how often the server looks for new versions (None: its default);
    whole seconds for TF Serving, at least 1.
    """
    binary = tf_serving_binary or shutil.which(TF_SERVING_BINARY)
    if binary and os.sep in binary:
        binary = os.path.abspath(binary)  # the server starts in another folder (ModelServer.start)
    if binary:
        # gRPC only (TF Serving's REST port is off unless --rest_api_port is given). A failed
        # load fails at once instead of being retried for minutes.
        argv = (
            binary,
            f"--port={port}",
            f"--model_name={model_name}",
            f"--model_base_path={os.path.abspath(model_base_path)}",
            "--max_num_load_retries=0",
        )
        if poll_seconds is not None:
            argv += (f"--file_system_poll_wait_seconds={max(1, round(poll_seconds))}",)
        return ServerCommand(TF_SERVING_BINARY, argv)
    argv = (
        sys.executable,
        "-m",
        "imgpipe",
        "serve",
        f"--model-base-path={os.path.abspath(model_base_path)}",
        f"--model-name={model_name}",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        # No batch limit: TF Serving above is started without --enable_batching, and pre-push
        # sends its eval examples in one request per signature.
        "--max-batch-size",
        "0",
    )
    if poll_seconds is not None:
        argv += ("--poll-seconds", f"{poll_seconds:g}")
    return ServerCommand(IMGPIPE_SERVER, argv)


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def stage_model(saved_model_dir: str, root: str, model_name: str, version: int = STAGED_VERSION) -> str:
    """Copy a SavedModel to `<root>/<model_name>/<version>/`; return the model base path.

    TF Serving serves integer version directories below a base path, not a bare
    SavedModel; the copy (local or gs://) also keeps the server away from the
    pipeline's artifact.
    """
    if not tf.io.gfile.isdir(saved_model_dir):
        raise FileNotFoundError(f"SavedModel directory not found: {saved_model_dir}")
    base = os.path.join(root, model_name)
    target = os.path.join(base, str(version))
    for dirpath, _, files in tf.io.gfile.walk(saved_model_dir):
        rel = os.path.relpath(dirpath, saved_model_dir)
        out_dir = target if rel == "." else os.path.join(target, rel)
        tf.io.gfile.makedirs(out_dir)
        for name in files:
            tf.io.gfile.copy(os.path.join(dirpath, name), os.path.join(out_dir, name), overwrite=True)
    return base


def stage_into(saved_model_dir: str, model_base_path: str, version: int = STAGED_VERSION) -> str:
    """Add a SavedModel as `version` under a base path a server is already polling; return the version dir.

    The copy is made beside the base path and renamed into it, so the server never
    sees a half-copied version.
    """
    root, model_name = os.path.split(os.path.normpath(model_base_path))
    staging = stage_model(saved_model_dir, os.path.join(root, f".staging-{model_name}"), model_name, version)
    target = os.path.join(model_base_path, str(version))
    os.rename(os.path.join(staging, str(version)), target)
    return target


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when its parent dies; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)

    return preexec


class ModelServer:
    """One server subprocess serving one model; `stop()` ends it and everything it started."""

    def __init__(
        self, command: ServerCommand, model_name: str, port: int, log_path: str, base_path: str | None = None
    ):
        self.command = command
        self.model_name = model_name
        self.port = port
        self.log_path = log_path
        self.base_path = base_path  # the model base path it serves, when known
        self.staged_from: str | None = None  # a standby's: the SavedModel staged into it
        self._stopped = False
        self.process: subprocess.Popen | None = None
        self.version: int | None = None

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        """Start the process (its output goes to `log_path`); returns at once."""
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
        if env.get("PYTHONPATH"):  # entries relative to where the run started, kept so in another folder
            env["PYTHONPATH"] = os.pathsep.join(
                os.path.abspath(p) if p else p for p in env["PYTHONPATH"].split(os.pathsep)
            )
        os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - argv built by server_command
                list(self.command.argv),
                # `python -m imgpipe` puts its working directory first on the import path, where a
                # project's own trainer/ or serving/ package would shadow imgpipe's: it starts in
                # the interpreter's folder, the first entry the `imgpipe` console script has.
                cwd=os.path.dirname(os.path.abspath(sys.executable)),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: stop() reaches its children too
                preexec_fn=_die_with_parent(),  # noqa: PLW1509 - only prctl, resolved beforehand
            )
        log.info("started %s (pid %d) on port %d", self.command.kind, self.process.pid, self.port)

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        """The end of the server's output, for error messages."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - chars))
                return f.read().decode("utf-8", errors="replace").strip()
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> int:
        """Wait until a version of the model is AVAILABLE; return it.

        Raises ModelServerError when the process exits, a version fails to
        load (the server's status message is in the error), or `timeout`
        seconds pass first.
        """
        if self.process is None:
            raise RuntimeError("start() the server first")
        deadline = time.monotonic() + timeout
        with ServingClient(self.target, timeout=2.0, retries=0) as client:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise ModelServerError(
                        f"{self.command.kind} exited with code {code} before serving the model; "
                        f"its output ends with:\n{self.log_tail()}"
                    )
                try:
                    statuses = client.model_status(self.model_name)
                except ServingRpcError as e:
                    # Not listening yet, the model not known yet, or too busy loading it to
                    # answer within the call's deadline (a server that listens while it loads,
                    # like a standby): keep waiting, up to `timeout`.
                    if e.code not in _NOT_READY_YET:
                        raise ModelServerError(f"GetModelStatus failed: {e.code.name}: {e.details}") from e
                    statuses = []
                for version, state, message in statuses:
                    if state == "AVAILABLE":
                        self.version = version
                        return version
                    if state == "END" and message:
                        raise ModelServerError(
                            f"{self.command.kind} failed to load model {self.model_name!r} "
                            f"version {version}: {message}"
                        )
                if time.monotonic() >= deadline:
                    raise ModelServerError(
                        f"{self.command.kind} did not serve model {self.model_name!r} within "
                        f"{timeout:g}s; its output ends with:\n{self.log_tail()}"
                    )
                time.sleep(_POLL_SECONDS)

    def stop(self, grace: float = 5.0, graceful: bool = True) -> None:
        """SIGTERM the server's process group, SIGKILL it after `grace` seconds; wait for it.

        `graceful=False` sends SIGKILL at once: for a server with nothing left to
        finish or flush (no requests in flight, no request log), which saves the
        ~1 s a Python server spends tearing TensorFlow down on exit.
        """
        proc = self.process
        if proc is None or self._stopped:  # never started, or stopped already (a taken-over standby)
            return
        self._stopped = True
        if graceful and proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s (pid %d) ignored SIGTERM for %gs: killing it", self.command.kind, proc.pid, grace
                )
        # Whatever the leader did, nothing of its group may outlive it.
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        log.info("stopped %s (pid %d, exit code %s)", self.command.kind, proc.pid, proc.returncode)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@contextlib.contextmanager
def serve_model(
    model_base_path: str,
    model_name: str,
    log_path: str,
    timeout: float,
    command: Callable[[str, str, int], ServerCommand] = server_command,
    grace: float = 5.0,
    graceful: bool = True,
) -> Iterator[ModelServer]:
    """A server on a free loopback port, ready (a version AVAILABLE), stopped when the block exits.

    `command(model_base_path, model_name, port)` builds the argv (server_command by default);
    `grace` and `graceful` are ModelServer.stop's.
    """
    with started_server(model_base_path, model_name, log_path, command, grace, graceful) as server:
        server.wait_ready(timeout)
        yield server


@contextlib.contextmanager
def started_server(
    model_base_path: str,
    model_name: str,
    log_path: str,
    command: Callable[[str, str, int], ServerCommand] = server_command,
    grace: float = 5.0,
    graceful: bool = True,
) -> Iterator[ModelServer]:
    """A server process on a free loopback port, started but not yet ready; stopped when the block exits.

    For work that can overlap the server's start-up (importing TensorFlow and
    loading the model take seconds): call `wait_ready` before sending requests.
    """
    port = free_port()
    server = ModelServer(
        command(model_base_path, model_name, port), model_name, port, log_path, model_base_path
    )
    try:
        server.start()
        yield server
    finally:
        server.stop(grace, graceful)


# -- a server started before its model exists ----------------------------------------------------
# A local run starts the pre-push server while the Evaluator runs (imgpipe/orchestration/
# local.py: _PrepushStandby): its process imports TensorFlow and loads the model on the core
# the Evaluator leaves idle, and the InfraValidator, which runs in the same process, takes it
# over (`take_standby`) instead of starting one. Runners that put components in separate
# processes never offer one.
STANDBY_POLL_SECONDS = 0.2
_standby_lock = threading.Lock()
_standbys: dict[str, ModelServer] = {}


@contextlib.contextmanager
def standby_server(
    root: str, model_name: str, log_path: str, saved_model_dir: str | None = None
) -> Iterator[ModelServer]:
    """A server on the base path `<root>/<model_name>`, offered to `take_standby`.

    `saved_model_dir` is staged (`stage_into`) as soon as the process is started, so the
    server loads it as soon as it has imported TensorFlow. Without it the server starts
    empty, polling its base path, and `stage_standby` gives it its model later (a server
    started before the model exists). `server.staged_from` says which model it has. Killed
    when the block exits, taken or not (a taken one has been stopped already).
    """
    base_path = os.path.join(root, model_name)
    os.makedirs(base_path)
    port = free_port()
    command = server_command(base_path, model_name, port, poll_seconds=STANDBY_POLL_SECONDS)
    server = ModelServer(command, model_name, port, log_path, base_path)
    server.start()
    if saved_model_dir is not None:
        try:
            stage_standby(server, saved_model_dir)
        except BaseException:
            server.stop(graceful=False)
            raise
    with _standby_lock:
        _standbys[model_name] = server
    try:
        yield server
    finally:
        with _standby_lock:
            if _standbys.get(model_name) is server:
                del _standbys[model_name]
        server.stop(graceful=False)


def stage_standby(server: ModelServer, saved_model_dir: str) -> None:
    """Give a standby server started empty its model: staged into the base path it polls."""
    if server.staged_from is not None:
        raise ValueError(f"the standby server has a model already ({server.staged_from})")
    stage_into(saved_model_dir, server.base_path)
    server.staged_from = saved_model_dir


def take_standby(model_name: str) -> ModelServer | None:
    """The standby server of `model_name` if one is offered and still running (it is then yours to stop)."""
    with _standby_lock:
        server = _standbys.pop(model_name, None)
    if server is None or server.process is None or server.process.poll() is not None:
        return None
    return server
