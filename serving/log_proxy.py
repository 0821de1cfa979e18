"""A request-logging gRPC proxy in front of a model server: what `imgpipe log-proxy` runs.

Open-source TF Serving writes no request log. Its model config's `logging_config` hands
records to a log collector, and the released server registers none, so production's server
(the `tensorflow/serving` image with serving/deploy's configs) leaves `imgpipe drift` nothing to
read. The proxy stands between the clients and the server: clients call it as they would call
the server (the same gRPC API, the same answers), and it writes the sampled successful Predict,
Classify and MultiInference calls as `imgpipe serve --log-requests` does (TF Serving's
PredictionLog records in TFRecord files, serving/devserver/request_log.py), which `imgpipe drift`
reads.

Each call is forwarded as it came: its bytes (never parsed on the way), its metadata, its
deadline (the time the client has left); a client that cancels cancels the forwarded call. The
server's answer comes back as it was sent: the response bytes, or the error status with its
code and message, so a client's checks on TF Serving's words still hold. Any unary method is
forwarded (PredictionService, ModelService, and whatever else the server has); only the three
above are logged, and only when they succeed. Logging never delays or fails a call: a sampled
call's bytes are queued and parsed by the log's writer thread; a full queue drops the record
and counts it. A server that cannot be reached is the clients' UNAVAILABLE, as without the
proxy, and warned about once until it answers again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import signal
import socket
import threading
import time
from typing import Any

import grpc

from serving.config import MAX_MESSAGE_MB, check_bind, host_for_target, listener_problems
from serving.errors import ServerStartError

log = logging.getLogger(__name__)

MB = 1024 * 1024
DEFAULT_PORT = 8600
INVALID_PROXY_SETTINGS = "invalid proxy settings: "  # how ProxyConfig.validate's refusal begins

# The calls logged, by gRPC method, and the PredictionLog field each one's record goes in.
LOGGED_METHODS = {
    "/tensorflow.serving.PredictionService/Predict": "predict_log",
    "/tensorflow.serving.PredictionService/Classify": "classify_log",
    "/tensorflow.serving.PredictionService/MultiInference": "multi_inference_log",
}

# Headers gRPC sets itself on each hop: not the caller's to pass on. Its other reserved keys
# (grpc-*) are its own too, but for an error's rich status details, which are the answer's.
_HOP_HEADERS = ("user-agent", "te", "content-type", "host")
_STATUS_DETAILS = "grpc-status-details-bin"
# UNAVAILABLE in these words is gRPC's own: no connection to the server. TF Serving answers
# UNAVAILABLE itself too (a full batching queue): that is the server answering.
_NO_CONNECTION = (
    "failed to connect",
    "connection refused",
    "connections to all backends failing",
    "socket closed",
    "connection reset",
    "broken pipe",
    "dns resolution failed",
    "goaway",
    "keepalive",
)


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    """Settings of one proxy process; `validate()` raises ServerStartError naming each field."""

    target: str = ""  # the model server: HOST:PORT or a gRPC URI (dns:///host:port)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    threads: int = 64  # calls forwarded at once; more wait for a thread (their deadlines running)
    max_message_mb: int = MAX_MESSAGE_MB  # as TF Serving's: a request it takes passes here too
    grace_seconds: float = 10.0  # on SIGTERM, how long calls in flight may take
    connect_seconds: float = 5.0  # at start, how long to wait for the server before warning
    log_requests: str = ""
    log_sample_rate: float = 1.0
    log_max_file_mb: int = 64
    log_queue_size: int = 1000
    log_queue_mb: int = 128

    def validate(self) -> ProxyConfig:
        problems = listener_problems(self)
        if not self.target.strip():
            problems.append("target must be the model server's HOST:PORT (e.g. tfserving:8500), got ''")
        if not self.log_requests.strip():
            problems.append("log_requests must name the directory the request logs go to, got ''")
        if not self.connect_seconds >= 0:  # NaN too
            problems.append(f"connect_seconds must be >= 0, got {self.connect_seconds}")
        if problems:
            raise ServerStartError(INVALID_PROXY_SETTINGS + "; ".join(problems))
        return self


def _passed_on(metadata: Any) -> tuple[tuple[str, Any], ...]:
    """A call's metadata without the headers gRPC sets on each hop."""
    return tuple(
        (key, value)
        for key, value in metadata or ()
        if key == _STATUS_DETAILS or (not key.startswith((":", "grpc-")) and key not in _HOP_HEADERS)
    )


class _ServerHealth:
    """Says once when the server stops answering and once when it answers again."""

    def __init__(self, target: str):
        self._target = target
        self._down = False
        self._lock = threading.Lock()

    def answered(self) -> None:
        with self._lock:
            if self._down:
                self._down = False
                log.info("the model server at %s answers again", self._target)

    def unreachable(self, details: str) -> None:
        with self._lock:
            if not self._down:
                self._down = True
                log.warning(
                    "the model server at %s is unavailable (%s): clients get UNAVAILABLE until it answers",
                    self._target,
                    details,
                )


class _Forwarder(grpc.GenericRpcHandler):
    """Every unary method: forwarded to the server's channel, the logged ones offered to the log."""

    def __init__(self, channel: grpc.Channel, request_log: Any, health: _ServerHealth):
        self._channel = channel
        self._log = request_log
        self._health = health

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        call = self._channel.unary_unary(method)  # bytes in, bytes out: nothing is parsed on the way
        kind = LOGGED_METHODS.get(method)

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            remaining = context.time_remaining()
            timeout = remaining if remaining is not None and remaining < 1e8 else None
            future = call.future(request, timeout=timeout, metadata=_passed_on(context.invocation_metadata()))
            # The client went away: so does the forwarded call. A client that cancelled between the
            # call's start and this line finds the RPC over, and add_callback refuses the callback
            # (False): the forwarded call then ran on to its end (seen in a loaded suite run).
            if not context.add_callback(future.cancel):
                future.cancel()
            try:
                response = future.result()
            except grpc.FutureCancelledError:
                context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled by the client")
            except grpc.RpcError as e:
                details = e.details() or ""
                if e.code() == grpc.StatusCode.UNAVAILABLE and any(
                    w in details.lower() for w in _NO_CONNECTION
                ):
                    self._health.unreachable(details)
                else:
                    self._health.answered()
                    context.send_initial_metadata(_passed_on(e.initial_metadata()))
                context.set_trailing_metadata(_passed_on(e.trailing_metadata()))
                context.abort(e.code(), details)
            self._health.answered()
            context.send_initial_metadata(_passed_on(future.initial_metadata()))
            context.set_trailing_metadata(_passed_on(future.trailing_metadata()))
            if kind is not None and self._log is not None:
                self._log.offer_serialized(kind, request, response)
            return response

        return grpc.unary_unary_rpc_method_handler(forward)  # no (de)serializers: the bytes as sent


def _is_own_address(target: str, host: str, port: int) -> bool:
    """Whether a HOST:PORT target names this machine's `port` where the proxy listens (`host`)."""
    target_host, sep, target_port = target.rpartition(":")
    if not sep or target_port != str(port) or "://" in target:
        return False
    target_host = target_host.strip("[]")
    if target_host == host.strip("[]"):
        return True
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(target_host, port, type=socket.SOCK_STREAM)}
    except OSError:
        return False
    local = {"127.0.0.1", "::1"}
    if host.strip("[]") in ("0.0.0.0", "::", ""):
        with contextlib.suppress(OSError):
            local |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), port)}
    else:
        with contextlib.suppress(OSError):
            local = {info[4][0] for info in socket.getaddrinfo(host.strip("[]"), port)} | (
                local if host.strip("[]") in ("localhost", "127.0.0.1", "::1") else set()
            )
    return bool(addresses & local)


class RunningProxy:
    """A started proxy: its bound port, the request log, and stop()."""

    def __init__(
        self, server: grpc.Server, channel: grpc.Channel, config: ProxyConfig, port: int, request_log: Any
    ):
        self.server = server
        self.channel = channel
        self.config = config
        self.port = port
        self.request_log = request_log
        self._stopped = False

    @property
    def target(self) -> str:
        """HOST:PORT a client connects to."""
        return f"{host_for_target(self.config.host)}:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, let those in flight finish (up to `grace` s), close the log."""
        if self._stopped:
            return
        self._stopped = True
        self.server.stop(self.config.grace_seconds if grace is None else grace).wait()
        self.channel.close()
        if self.request_log is not None:
            self.request_log.close()


def start_proxy(config: ProxyConfig, stop: threading.Event | None = None) -> RunningProxy:
    """Bind the port, open the request log and start forwarding; returns once it takes calls and
    the server answers, or `connect_seconds` passed (warned about, not refused: in a pod or a
    compose file the proxy may start first), or `stop` was set meanwhile.

    ServerStartError for invalid settings, a port that cannot be bound or a log directory that
    cannot be written.
    """
    config.validate()
    if config.port and _is_own_address(config.target, config.host, config.port):
        raise ServerStartError(
            f"target {config.target} is this proxy's own address (port {config.port}): each call would be "
            "forwarded to itself until its deadline; give the model server's HOST:PORT"
        )
    check_bind(config.host, config.port)
    from serving.devserver.request_log import start_request_log  # TensorFlow's protos: at start only

    size = config.max_message_mb * MB
    sizes = [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]
    request_log = start_request_log(config)
    # Reconnect within a second of the server's return: gRPC's backoff grows to two minutes, and
    # a server restarted (a pod's, a compose service's) stayed UNAVAILABLE through the proxy for
    # half a minute after it answered clients that called it directly.
    reconnect = [("grpc.initial_reconnect_backoff_ms", 500), ("grpc.max_reconnect_backoff_ms", 1000)]
    channel = grpc.insecure_channel(config.target, options=[*sizes, *reconnect])
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="log-proxy"),
        options=[*sizes, ("grpc.so_reuseport", 0)],
    )
    health = _ServerHealth(config.target)
    server.add_generic_rpc_handlers((_Forwarder(channel, request_log, health),))
    address = f"{host_for_target(config.host)}:{config.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as e:
        port, reason = 0, str(e)
    else:
        reason = "address in use or not available"
    if not port:
        channel.close()
        if request_log is not None:
            request_log.close()
        raise ServerStartError(f"cannot bind {address}: {reason}")
    server.start()
    ready = grpc.channel_ready_future(channel)
    deadline = time.monotonic() + config.connect_seconds
    while not ready.done() and not (stop is not None and stop.is_set()):
        left = deadline - time.monotonic()
        if left <= 0:
            health.unreachable(f"no connection within {config.connect_seconds:g} s")
            break
        try:
            ready.result(timeout=min(0.5, left))
        except grpc.FutureTimeoutError:
            pass
    ready.cancel()
    if stop is not None and stop.is_set():
        return RunningProxy(server, channel, config, port, request_log)  # stopping: not said to forward
    log.info(
        "Forwarding calls on %s to the model server at %s; logging %s to %s",
        address.replace(f":{config.port}", f":{port}"),
        config.target,
        "every successful Predict, Classify and MultiInference call"
        if config.log_sample_rate >= 1
        else f"{config.log_sample_rate * 100:g}% of successful Predict, Classify and MultiInference calls",
        config.log_requests,
    )
    return RunningProxy(server, channel, config, port, request_log)


def serve(config: ProxyConfig, stop_event: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop_event`), then stop gracefully; returns 0.

    A first signal stops taking calls and lets those in flight finish for up to
    `grace_seconds`; a second cancels them and returns 128 + its number at once.
    """
    stop = stop_event or threading.Event()
    holder: dict[str, RunningProxy] = {}
    forced: list[int] = []
    previous: dict[int, Any] = {}

    def on_signal(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("second %s: cancelling calls in flight", name)
            forced.append(128 + signum)
            if "running" in holder:
                threading.Thread(target=holder["running"].server.stop, args=(0,), daemon=True).start()
            return
        log.info("%s received: shutting down", name)
        stop.set()

    # Before the start: a signal while it waits for the server (--connect-seconds) stops it too.
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        running = holder["running"] = start_proxy(config, stop)
        while not stop.wait(0.5):
            pass
        log.info("Stopping: finishing calls in flight (grace %.1fs)", config.grace_seconds)
        running.stop()
        log.info("Proxy stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return forced[0] if forced else 0
