"""The request-logging proxy (serving/log_proxy.py, `imgpipe log-proxy`) in front of a model server.

The server behind it is the project's dev server (the same gRPC API as TF Serving), started
here; a second, bare gRPC server stands in where a test must see what reached the server (the
metadata, the deadline, a cancellation). Calls through the proxy must answer as the server does,
byte for byte and status for status, and its logs must hold what `imgpipe serve --log-requests`
writes for the same calls.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from serving import log_proxy
from serving.devserver import lifecycle, request_log
from serving.errors import ServerStartError
from tests import helpers, serving_fixtures
from tests.helpers import make_example

NAME = serving_fixtures.MODEL_NAME
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def base_path(serving_model, tmp_path_factory) -> str:
    base = tmp_path_factory.mktemp("models") / NAME
    shutil.copytree(serving_model.export_dir, base / "3")
    return str(base)


@pytest.fixture
def proxy_of(tmp_path):
    """Start proxies (in this process) in front of a target; stopped after the test."""
    started = []

    def start(target: str, **settings) -> log_proxy.RunningProxy:
        settings.setdefault("log_requests", str(tmp_path / f"proxy_logs{len(started)}"))
        settings.setdefault("connect_seconds", 2.0)
        running = log_proxy.start_proxy(log_proxy.ProxyConfig(target=target, port=0, **settings))
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop(0)


def _calls(images: list[bytes]) -> list[tuple[str, object]]:
    """One call of each logged kind, then the calls that are forwarded but not logged."""
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = NAME
    classify.model_spec.signature_name = "classification"
    for image in images[1:]:
        classify.input.example_list.examples.add().ParseFromString(make_example(image))
    multi = inference_pb2.MultiInferenceRequest(input=classify.input)
    multi.tasks.add(model_spec=classify.model_spec, method_name="tensorflow/serving/classify")
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = NAME
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = NAME
    return [
        ("Predict", serving_fixtures.predict_request("predict_images", "images", images)),
        (
            "Predict",
            serving_fixtures.predict_request("serving_default", "examples", [make_example(images[0])]),
        ),
        ("Classify", classify),
        ("MultiInference", multi),
        ("GetModelMetadata", metadata),
        ("GetModelStatus", status),
    ]


def _call(target: str, method: str, request, **kw):
    channel = grpc.insecure_channel(target)
    service = model_service_pb2_grpc if method == "GetModelStatus" else prediction_service_pb2_grpc
    stub = (service.ModelServiceStub if method == "GetModelStatus" else service.PredictionServiceStub)(
        channel
    )
    try:
        return getattr(stub, method)(request, timeout=kw.pop("timeout", 60), **kw)
    finally:
        channel.close()


def _read_logs(directory: str) -> list[prediction_log_pb2.PredictionLog]:
    """Every PredictionLog in the directory, read with TensorFlow's TFRecord reader."""
    return [
        prediction_log_pb2.PredictionLog.FromString(record)
        for path in request_log.log_files(directory)
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator()
    ]


def _without_time(entry: prediction_log_pb2.PredictionLog) -> prediction_log_pb2.PredictionLog:
    entry = prediction_log_pb2.PredictionLog.FromString(entry.SerializeToString())
    entry.log_metadata.ClearField("timestamp_secs")
    return entry


def test_calls_answer_as_the_server_does_and_are_logged_as_it_logs_them(
    serving_model, base_path, tmp_path, proxy_of
):
    """Every call through the proxy gets the server's answer (the same message); the logged ones give the records the
    dev server's own --log-requests writes for them (all but the timestamp)."""
    images = [image for image, _ in serving_model.items[:3]]
    server_logs = tmp_path / "server_logs"
    with lifecycle.start_in_thread(base_path, NAME, log_requests=str(server_logs)) as server:
        proxy = proxy_of(server.target)
        for method, request in _calls(images):
            direct, through = _call(server.target, method, request), _call(proxy.target, method, request)
            assert through == direct, method  # (a map's fields may serialise in any order)
        # A failed call is forwarded as failed, and logged by neither.
        with pytest.raises(grpc.RpcError):
            _call(
                proxy.target,
                "Predict",
                serving_fixtures.predict_request("predict_images", "images", [b"not an image"]),
            )
    proxy.stop()
    logged, own = _read_logs(proxy.config.log_requests), _read_logs(str(server_logs))
    kinds = ["predict_log", "predict_log", "classify_log", "multi_inference_log"]
    assert [entry.WhichOneof("log_type") for entry in logged] == kinds
    # The server logged each call twice (direct and through the proxy), in that order.
    assert [_without_time(e) for e in logged] == [_without_time(e) for e in own[1::2]]
    assert (
        logged[0].log_metadata.model_spec.name == NAME
        and logged[0].log_metadata.model_spec.version.value == 3
    )
    [stats_file] = request_log.stats_files(proxy.config.log_requests)
    stats = json.loads(open(stats_file, encoding="utf-8").read())
    assert stats["requests"] == stats["sampled"] == stats["written"] == 4 and stats["dropped"] == 0


def test_errors_come_back_with_the_servers_code_and_words(serving_model, base_path, proxy_of):
    image = serving_model.items[0][0]
    unknown_model = serving_fixtures.predict_request("predict_images", "images", [image])
    unknown_model.model_spec.name = "nosuch"
    unknown_label = serving_fixtures.predict_request("predict_images", "images", [image])
    unknown_label.model_spec.version_label = "canary"
    cases = [
        unknown_model,
        unknown_label,
        serving_fixtures.predict_request("no_such_signature", "images", [image]),
        serving_fixtures.predict_request("predict_images", "pictures", [image]),
        serving_fixtures.predict_request("predict_images", "images", [b"not an image"]),
        serving_fixtures.predict_request("predict_images", "images", [image] * 40),  # over the batch limit
    ]
    with lifecycle.start_in_thread(base_path, NAME) as server:
        proxy = proxy_of(server.target)
        for request in cases:
            answers = []
            for target in (server.target, proxy.target):
                with pytest.raises(grpc.RpcError) as failed:
                    _call(target, "Predict", request)
                answers.append((failed.value.code(), failed.value.details()))
            assert answers[0] == answers[1], request.model_spec
            assert answers[0][0] != grpc.StatusCode.UNAVAILABLE
    proxy.stop()
    assert request_log.log_files(proxy.config.log_requests) == []


class _Recorder(grpc.GenericRpcHandler):
    """A bare gRPC server's handler: records each call's metadata and deadline; a request of
    b"sleep" waits until the call is cancelled (or 30 s)."""

    def __init__(self):
        self.seen: list[dict] = []
        self.cancelled = threading.Event()

    def service(self, details):
        def handle(request: bytes, context):
            self.seen.append(
                {
                    "method": details.method,
                    "metadata": dict(context.invocation_metadata()),
                    "left": context.time_remaining(),
                }
            )
            if request == b"sleep":
                context.add_callback(self.cancelled.set)
                self.cancelled.wait(30)
                return b""
            if request == b"fail":  # an error with rich status details, as grpcio-status sends them
                context.set_trailing_metadata((("grpc-status-details-bin", b"\x08\x03details"),))
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
            if request == b"busy":  # TF Serving's own UNAVAILABLE: the server answering
                context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "The batch scheduling queue to which this task was submitted is full",
                )
            context.set_trailing_metadata((("x-answer", "yes"),))
            return b"echo:" + request

        return grpc.unary_unary_rpc_method_handler(handle)


@pytest.fixture
def recorder():
    handler = _Recorder()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield handler, f"127.0.0.1:{port}"
    handler.cancelled.set()
    server.stop(0)


def test_metadata_deadline_and_cancellation_reach_the_server(recorder, proxy_of):
    handler, target = recorder
    proxy = proxy_of(target)
    channel = grpc.insecure_channel(proxy.target)
    method = channel.unary_unary("/any.Service/AnyMethod")  # any unary method is forwarded
    answer, call = method.with_call(
        b"hello", timeout=20, metadata=(("x-request-id", "abc-1"), ("x-trace-bin", b"\x00\x01"))
    )
    assert answer == b"echo:hello"
    assert ("x-answer", "yes") in call.trailing_metadata()
    [seen] = handler.seen
    assert seen["method"] == "/any.Service/AnyMethod"
    assert seen["metadata"]["x-request-id"] == "abc-1" and seen["metadata"]["x-trace-bin"] == b"\x00\x01"
    assert 10 < seen["left"] <= 21, seen["left"]  # the client's deadline (as gRPC rounds it on the wire)

    # A client whose deadline passes: DEADLINE_EXCEEDED, and the server's call is cancelled.
    with pytest.raises(grpc.RpcError) as failed:
        method(b"sleep", timeout=0.5)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert handler.cancelled.wait(10), "the forwarded call ran on after the client's deadline"

    # An error's rich status details come back with it; the server's own UNAVAILABLE (a full
    # queue) comes back as it is, and is not taken for a server that cannot be reached.
    with pytest.raises(grpc.RpcError) as failed:
        method(b"fail", timeout=20)
    assert (failed.value.code(), failed.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "bad request")
    assert ("grpc-status-details-bin", b"\x08\x03details") in failed.value.trailing_metadata()
    with helpers.logged(log_proxy.log) as said:
        with pytest.raises(grpc.RpcError) as failed:
            method(b"busy", timeout=20)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE and "queue" in failed.value.details()
    assert not any("is unavailable" in m for m in said), said

    # A client that cancels: the forwarded call is cancelled too.
    handler.cancelled.clear()
    future = method.future(b"sleep", timeout=30)
    helpers.wait_for(lambda: len(handler.seen) == 5, timeout=10)
    future.cancel()
    assert handler.cancelled.wait(10), "the forwarded call ran on after the client cancelled"
    channel.close()


def test_answers_that_parse_as_no_response_are_passed_on_and_counted_once(recorder, proxy_of):
    """A server (or a hop before it) answering Predict with bytes that are no PredictResponse: the
    client gets them as sent; the log counts them as unparseable (not as a disk error) and says so
    once, not with a traceback a call."""
    _, target = recorder
    proxy = proxy_of(target)
    channel = grpc.insecure_channel(proxy.target)
    predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    with helpers.logged(request_log.log) as said:
        for _ in range(3):
            assert predict(b"\xff\xff\xff", timeout=20) == b"echo:\xff\xff\xff"
        channel.close()
        proxy.stop()
    stats = json.loads(open(proxy.request_log.stats_path, encoding="utf-8").read())
    assert stats["dropped_unparseable"] == 3 and stats["dropped_write_error"] == 0 and stats["written"] == 0
    assert len([m for m in said if "not logged" in m]) == 1 and not any("Traceback" in m for m in said)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_does_not_answer_is_unavailable_and_said_once(recorder, proxy_of):
    handler, _ = recorder
    port = _free_port()
    level = log_proxy.log.level
    log_proxy.log.setLevel(logging.INFO)  # "answers again" is said at INFO
    try:
        _unavailable_then_answering(handler, port, proxy_of, messages := [])
    finally:
        log_proxy.log.setLevel(level)
    down = [m for m in messages if "is unavailable" in m]
    assert len(down) == 1 and f"127.0.0.1:{port}" in down[0], messages
    assert any("answers again" in m for m in messages), messages


def _unavailable_then_answering(handler, port, proxy_of, messages: list) -> None:
    with helpers.logged(log_proxy.log) as said:
        proxy = proxy_of(f"127.0.0.1:{port}", connect_seconds=0.2)
        channel = grpc.insecure_channel(proxy.target)
        method = channel.unary_unary("/any.Service/AnyMethod")
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as failed:
                method(b"x", timeout=10)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        # The server comes up: calls go through, and that is said.
        late = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
        late.add_generic_rpc_handlers((handler,))
        late.add_insecure_port(f"127.0.0.1:{port}")
        late.start()
        try:
            helpers.wait_for(lambda: _answers(method), timeout=30)
        finally:
            late.stop(0)
            channel.close()
    messages.extend(said)


def _answers(method) -> bool:
    try:
        return method(b"x", timeout=5) == b"echo:x"
    except grpc.RpcError:
        return False


def test_settings_are_checked_before_anything_starts(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = {
        "target must be": log_proxy.ProxyConfig(log_requests=str(tmp_path)),
        "log_requests must": log_proxy.ProxyConfig(target="localhost:8500"),
        "log_sample_rate must be in [0, 1]": log_proxy.ProxyConfig(
            target="localhost:8500", log_requests=str(tmp_path), log_sample_rate=2.0
        ),
        "is a file: give a directory": log_proxy.ProxyConfig(
            target="localhost:8500", port=0, log_requests=str(a_file)
        ),
    }
    for words, config in cases.items():
        with pytest.raises(ServerStartError, match=words.replace("[", r"\[").replace("]", r"\]")):
            log_proxy.start_proxy(config)
    # Itself as the target: each call would go round until its deadline (an audit's did).
    own = _free_port()
    for target in (f"localhost:{own}", f"127.0.0.1:{own}"):
        with pytest.raises(ServerStartError, match="is this proxy's own address"):
            log_proxy.start_proxy(log_proxy.ProxyConfig(target=target, port=own, log_requests=str(tmp_path)))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerStartError, match="cannot bind"):
            log_proxy.start_proxy(
                log_proxy.ProxyConfig(target="localhost:8500", port=port, log_requests=str(tmp_path))
            )


def test_the_command_forwards_logs_and_stops_on_sigterm(serving_model, base_path, tmp_path):
    """`imgpipe log-proxy` in its own process: a bad flag is exit 2 in the flag's words; started,
    it forwards and logs; SIGTERM stops it (exit 0) with its counts written."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "imgpipe", "log-proxy"]
    bad = subprocess.run(
        [*command, "--target", "localhost:8500", "--log-requests", str(tmp_path), "--log-queue-size", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "--log-queue-size (log_queue_size) must be >= 1" in bad.stderr, bad.stderr
    assert bad.stdout == ""

    # SIGTERM while it waits for a server that does not answer (compose waits 60 s): it stops at
    # once, with its counts written, rather than dying without its grace.
    def started(*args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [*command, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    waiting = started(
        "--target",
        f"127.0.0.1:{_free_port()}",
        "--port",
        "0",
        "--connect-seconds",
        "120",
        "--log-requests",
        str(tmp_path / "early"),
    )
    try:
        helpers.wait_for(
            lambda: request_log.stats_files(str(tmp_path / "early")) if (tmp_path / "early").is_dir() else [],
            120,
        )
        time.sleep(0.5)  # into the wait for the server
        waiting.send_signal(signal.SIGTERM)
        out, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 0 and out == "" and "Proxy stopped" in err, err
    logs = tmp_path / "logs"
    port = _free_port()
    with lifecycle.start_in_thread(base_path, NAME) as server:
        proc = started("--target", server.target, "--port", str(port), "--log-requests", str(logs))
        try:
            request = serving_fixtures.predict_request(
                "predict_images", "images", [serving_model.items[0][0]]
            )
            helpers.wait_for(
                lambda: logs.is_dir() or proc.poll() is not None, timeout=120, what="the log dir"
            )
            assert proc.poll() is None, proc.communicate()
            answer = _call(f"127.0.0.1:{port}", "Predict", request, wait_for_ready=True)
            assert answer.model_spec.version.value == 3
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert out == "" and "Forwarding calls on" in err and "Proxy stopped" in err
    [stats_file] = request_log.stats_files(str(logs))
    assert json.loads(open(stats_file, encoding="utf-8").read())["written"] == 1
    assert [entry.WhichOneof("log_type") for entry in _read_logs(str(logs))] == ["predict_log"]


def test_serialized_calls_are_sampled_and_parsed_by_the_writer(tmp_path):
    """offer_serialized: wire bytes in, the same records as offer_predict; unknown kinds refused."""
    request = serving_fixtures.predict_request("predict_images", "images", [b"x" * 100])
    response = predict_pb2.PredictResponse()
    response.model_spec.name = NAME
    response.model_spec.version.value = 7
    by_proto = request_log.RequestLog(str(tmp_path / "a"), seed=1).start()
    by_bytes = request_log.RequestLog(str(tmp_path / "b"), seed=1).start()
    by_proto.offer_predict(request, response)
    by_bytes.offer_serialized("predict_log", request.SerializeToString(), response.SerializeToString())
    by_proto.close()
    by_bytes.close()
    [a], [b] = _read_logs(str(tmp_path / "a")), _read_logs(str(tmp_path / "b"))
    assert _without_time(a) == _without_time(b) and b.log_metadata.model_spec.version.value == 7
    with pytest.raises(ValueError, match="kind must be one of"):
        by_bytes.offer_serialized("regress_log", b"", b"")
    none = request_log.RequestLog(str(tmp_path / "c"), sample_rate=0.0).start()
    for _ in range(5):
        none.offer_serialized("predict_log", request.SerializeToString(), response.SerializeToString())
    stats = none.close()
    assert stats.requests == 5 and stats.sampled == stats.written == 0


def test_grace_lets_a_call_in_flight_finish(recorder, proxy_of):
    """stop(grace) waits for a forwarded call; the answer reaches the client."""
    handler, target = recorder
    proxy = proxy_of(target)
    channel = grpc.insecure_channel(proxy.target)
    method = channel.unary_unary("/any.Service/AnyMethod")
    future = method.future(b"sleep", timeout=30)
    helpers.wait_for(lambda: handler.seen, timeout=10)
    stopper = threading.Thread(target=proxy.stop, args=(10,))
    stopper.start()
    time.sleep(0.3)
    handler.cancelled.set()  # the server answers now
    assert future.result(timeout=20) == b""
    stopper.join(20)
    assert not stopper.is_alive(), "stop(grace) did not return once the call in flight ended"
    channel.close()


def test_a_client_gone_before_its_callback_is_added_still_cancels_the_forwarded_call():
    """A client that cancelled between the forwarded call's start and `add_callback` found the RPC
    over: gRPC refused the callback (False), and the forwarded call ran on to its end (a loaded
    suite run's failure of the test above). The race, set up by hand: the refusal cancels it."""
    import types

    cancelled = []

    class Forwarded:
        def cancel(self):
            cancelled.append(True)
            return True

        def result(self):
            raise grpc.FutureCancelledError()

    class Gone(Exception):
        pass

    class ClientGone:  # a servicer context whose RPC is over: callbacks are refused
        def time_remaining(self):
            return None

        def invocation_metadata(self):
            return ()

        def add_callback(self, callback):
            return False

        def abort(self, code, details):
            raise Gone(code)

    channel = types.SimpleNamespace(
        unary_unary=lambda method: types.SimpleNamespace(future=lambda *a, **kw: Forwarded())
    )
    health = types.SimpleNamespace(answered=lambda: None, unreachable=lambda details: None)
    handler = log_proxy._Forwarder(channel, None, health).service(types.SimpleNamespace(method="/a.B/C"))
    with pytest.raises(Gone) as stopped:
        handler.unary_unary(b"request", ClientGone())
    assert cancelled == [True] and stopped.value.args == (grpc.StatusCode.CANCELLED,)
