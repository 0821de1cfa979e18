"""Starting and stopping the dev server: bind, serve, shut down gracefully on SIGTERM.

`start_server(config)` binds the port, loads the model and starts gRPC
(returns once it accepts requests); `start_in_thread(...)` wraps it for tests
and benchmarks; `serve(config)` runs until SIGTERM/SIGINT and is what
`imgpipe serve` calls. The port is bound before the model loads, so a taken
port fails in a moment, not after the load.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving.config import ServerConfig, host_for_target
from serving.devserver.manager import ModelManager
from serving.devserver.models import ServedModels
from serving.devserver.request_log import RequestLog, start_request_log
from serving.devserver.servicers import ModelServicer, PredictionServicer
from serving.devserver.versions import has_saved_model
from serving.errors import ServerStartError, ServingError
from serving.model_config import ModelConfigError, ModelEntry, read_model_config

log = logging.getLogger(__name__)

MB = 1024 * 1024


class RunningServer:
    """A started server: its bound port, its models, the request log, and stop()."""

    def __init__(
        self,
        server: grpc.Server,
        models: ServedModels,
        config: ServerConfig,
        port: int,
        request_log: RequestLog | None = None,
        config_poller: ConfigFilePoller | None = None,
    ):
        self.server = server
        self.models = models
        self.config = config
        self.port = port
        self.request_log = request_log
        self.config_poller = config_poller
        self._stopped = False

    @property
    def manager(self) -> ModelManager:
        """The version manager of a server of one model (`--model-name`)."""
        managers = self.models.managers()
        if len(managers) != 1:
            raise ValueError(f"this server serves {len(managers)} models: use .models.managers()")
        return next(iter(managers.values()))

    @property
    def target(self) -> str:
        """HOST:PORT a client connects to."""
        return f"{host_for_target(self.config.host)}:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting RPCs, let in-flight ones finish (up to `grace` s), unload models."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.grace_seconds if grace is None else grace
        if self.config_poller is not None:
            self.config_poller.stop()
        self.server.stop(grace).wait()
        if self.request_log is not None:
            self.request_log.close()
        self.models.stop()


class ConfigFilePoller:
    """Reads the model config file again every `seconds` and applies it, as TF Serving's
    --model_config_file_poll_wait_seconds does: every poll, so a config refused once (a label on
    a version still loading) is applied when it can be, and one sent by HandleReloadConfigRequest
    gives way to the file's. A file that cannot be read, or a config refused, is logged once
    until the reason changes, and the models served stay as they are."""

    def __init__(self, path: str, seconds: float, models: ServedModels, applied: object):
        self.path, self.seconds, self.models = path, seconds, models
        self._applied = applied  # the config applied last, said when another one is
        self._said: str | None = None  # the last problem logged
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model-config-poll", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.seconds):
            self.poll_once()

    def _problem(self, text: str) -> None:
        if text != self._said:
            log.error("%s", text)
            self._said = text

    def poll_once(self) -> None:
        try:
            entries = read_model_config(self.path)
        except ModelConfigError as e:
            self._problem(f"the model config file was not reloaded: {e} (serving as before)")
            return
        if entries is None:  # TF Serving takes no action for an empty config
            self._problem(f"the model config file {self.path} is empty: no action (serving as before)")
            return
        try:
            self.models.apply(entries)
        except ServingError as e:
            if e.code == grpc.StatusCode.UNKNOWN:  # applied, but a model loaded nothing
                self._problem(f"the model config file {self.path} is applied, but: {e}")
                self._applied = entries
            else:
                self._problem(f"the model config file {self.path} was not applied: {e} (serving as before)")
            return
        except Exception:  # the poller must outlive one bad reload
            log.exception("applying the model config file %s failed", self.path)
            return
        self._said = None
        if entries != self._applied:
            log.info("the model config file %s is applied: serving %s", self.path, self.models.names())
            self._applied = entries

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


def _model_folders_hint(base: str) -> str:
    """When `base` holds no version but model folders that do (the serving dir given instead of
    SERVING_DIR/MODEL_NAME), the words naming them; when it is itself a SavedModel (a version
    dir given instead of its parent), the words saying so; else ""."""
    if has_saved_model(base):
        parent = os.path.dirname(os.path.abspath(base))
        return f" (it is itself a SavedModel, one version's dir: give its parent, {parent})"

    def has_versions(folder: str) -> bool:
        try:
            return any(v.isdigit() and os.path.isdir(os.path.join(folder, v)) for v in os.listdir(folder))
        except OSError:
            return False

    try:
        models = [e for e in sorted(os.listdir(base)) if has_versions(os.path.join(base, e))]
    except OSError:
        return ""
    if not models:
        return ""
    return f" (it holds model folders with versions: {', '.join(models[:5])}; give {os.path.join(base, models[0])})"


class StoppedBeforeServing(Exception):
    """`start_server`'s stop event was set while the models loaded: the port is released and
    nothing was served (a stop signal to `serve` during its first load)."""


def start_server(config: ServerConfig, stop: threading.Event | None = None) -> RunningServer:
    """Bind the port, load the models and start the gRPC server; returns once it accepts requests.

    Raises ServerStartError for invalid settings or model config, a missing base path, a port
    that cannot be bound (before any model is loaded), a label on a version that did not load,
    or a request log directory that cannot be written; StoppedBeforeServing when `stop` was set
    by the end of the load (the server never starts answering, nor says it serves).
    """
    config.validate()
    entries = config.models()
    batching = config.batching()

    def make_manager(entry: ModelEntry) -> ModelManager:
        return ModelManager(
            entry.name,
            entry.base_path,
            poll_seconds=config.poll_seconds,
            policy=entry.policy,
            run_warmup=config.run_warmup,
            drain_seconds=config.drain_seconds,
            max_pixels=config.max_pixels,
            max_batch_size=config.max_batch_size,
            batching=batching,
        )

    models = ServedModels(make_manager, config.allow_version_labels_for_unavailable_models)
    request_log = start_request_log(config)
    size = config.max_message_mb * MB
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="serving-rpc"),
        options=[
            ("grpc.max_send_message_length", size),
            ("grpc.max_receive_message_length", size),
            ("grpc.so_reuseport", 0),  # a port already in use must fail, not be shared
        ],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs or None,
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(models, request_log), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(models), server)
    address = f"{host_for_target(config.host)}:{config.port}"
    try:
        port = server.add_insecure_port(address)  # binds now: before the model load
    except RuntimeError as e:
        port = 0
        reason = str(e)
    else:
        reason = "address in use or not available"
    if not port:
        if request_log is not None:
            request_log.close()
        raise ServerStartError(f"cannot bind {address}: {reason}")
    try:
        try:
            models.apply(entries)
        except ModelConfigError as e:
            if e.code != grpc.StatusCode.UNKNOWN:  # not a model that failed to load: served on
                where = f" ({config.model_config_file})" if config.model_config_file else ""
                raise ServerStartError(f"the model config{where} cannot be served: {e}") from None
        if stop is not None and stop.is_set():
            raise StoppedBeforeServing("stopped during the model load: nothing was served")
    except BaseException:
        server.stop(0)
        models.stop()
        if request_log is not None:
            request_log.close()
        raise
    for name, manager in models.managers().items():
        if not manager.serving_versions():
            log.warning(
                "model %r: no loadable version under %s yet; answering NOT_FOUND until one appears (as "
                "TF Serving does once its versions are gone; TF Serving itself opens no port until a "
                "version loads)%s",
                name,
                manager.base_path,
                _model_folders_hint(manager.base_path),
            )
    if not entries:
        log.warning("the model config %s lists no model: serving none", config.model_config_file)
    server.start()
    poller = None
    if config.model_config_file_poll_wait_seconds > 0:
        poller = ConfigFilePoller(
            config.model_config_file, config.model_config_file_poll_wait_seconds, models, entries
        )
    served = ", ".join(
        f"{name!r} (versions {manager.serving_versions()})" for name, manager in models.managers().items()
    )
    log.info(
        "Serving %s on %s:%d%s",
        f"model {served}" if len(models.managers()) == 1 else f"models {served or '(none)'}",
        host_for_target(config.host),  # an IPv6 address in brackets, as a client writes it
        port,
        ""
        if batching is None
        else f" with batching (up to {batching.max_batch_size} images a batch, a partial batch waiting "
        f"{batching.batch_timeout_micros} us, {batching.num_batch_threads} batch threads)",
    )
    return RunningServer(server, models, config, port, request_log, poller)


@contextlib.contextmanager
def start_in_thread(
    model_base_path: str,
    model_name: str,
    host: str = "127.0.0.1",
    port: int = 0,
    **settings: Any,
) -> Iterator[RunningServer]:
    """A server on a free port (port=0) for tests and benchmarks; stopped on exit.

    Yields the RunningServer; `.port` is the bound port, `.target` the address.
    `settings` are further ServerConfig fields.
    """
    config = ServerConfig(
        model_base_path=model_base_path,
        model_name=model_name,
        host=host,
        port=port,
        **settings,
    )
    running = start_server(config)
    try:
        yield running
    finally:
        running.stop()


def serve(config: ServerConfig, stop_event: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop_event`), then shut down gracefully; returns 0.

    Shutdown stops accepting RPCs, lets in-flight ones finish for up to
    `grace_seconds`, then unloads the model. A second signal cuts the grace short,
    cancels what is in flight and unloads without waiting; serve then returns
    128 + that signal's number (143 for SIGTERM), for the caller to exit at once
    (a TensorFlow call already running is not interrupted: the process exit is).
    A signal during the initial model load ends it without serving: the load runs on in another
    thread while this one waits, the port is released when it ends, and the server never says it
    serves; a second signal then returns at once (the caller exits, the load with it).
    """
    stop = stop_event or threading.Event()
    holder: dict[str, Any] = {}  # "starting"/"server": the RunningServer; "failed": its start's error
    previous: dict[int, Any] = {}
    forced: list[int] = []  # the exit code a second signal asks for
    started = threading.Event()  # the first load ended (served, failed or stopped)

    def cut(running: RunningServer) -> None:
        # Not on the main thread: a signal handler runs there, which may hold the manager's lock.
        threading.Thread(target=running.models.cut_drains, name="cut-drains", daemon=True).start()
        running.server.stop(0)

    def on_signal(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            forced.append(128 + signum)
            if "server" in holder:
                log.warning(
                    "second %s: cancelling in-flight requests and exiting without waiting for them", name
                )
                cut(holder["server"])
            else:
                log.warning("second %s during the model load: exiting without waiting for it", name)
                started.set()
            return
        log.info("%s received: shutting down", name)
        stop.set()

    def start() -> None:
        try:
            holder["starting"] = start_server(config, stop)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            holder["failed"] = e
        finally:
            started.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        # The first load on its own thread: this one stays free to take signals (a load is one
        # long TensorFlow call, and a handler on the thread making it runs only after it).
        threading.Thread(target=start, name="serving-start", daemon=True).start()
        while not started.wait(0.5):
            pass
        if forced and "starting" not in holder:
            return forced[0]
        failed = holder.get("failed")
        if isinstance(failed, StoppedBeforeServing):
            log.info("Stopped during the model load: nothing was served")
            return forced[0] if forced else 0
        if failed is not None:
            raise failed
        holder["server"] = running = holder.pop("starting")
        if forced:  # a second signal as the load ended
            cut(running)
        try:
            while not stop.wait(0.5):
                pass
        finally:
            log.info("Stopping: finishing in-flight requests (grace %.1fs)", config.grace_seconds)
            running.stop()
            log.info("Server stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return forced[0] if forced else 0
