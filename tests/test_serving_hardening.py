"""Dev server hardening: the pixel limit (before decoding), non-Example payloads, every
unimplemented RPC answering cleanly, and a taken port failing before the model load.

The server runs in this process, so its memory is this process's (/proc/self/status).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    model_management_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)

from imgpipe.cli import main as cli
from serving.config import DEFAULT_MAX_PIXELS, ServerConfig
from serving.devserver import inputs, lifecycle, servicers
from serving.errors import InvalidRequestError, ServerStartError
from tests import image_bombs, serving_fixtures
from tests.helpers import encode_image, make_example

NAME = serving_fixtures.MODEL_NAME
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOMB_SIDE = 20000  # 400 MP: 1.2 GB as decoded RGB, ~50 KB as a PNG
MB = 1024 * 1024


@pytest.fixture(scope="session")
def model(serving_model) -> serving_fixtures.ServingModel:
    return serving_model


@pytest.fixture(scope="module")
def base_path(model, tmp_path_factory) -> str:
    base = tmp_path_factory.mktemp("models") / NAME
    shutil.copytree(model.export_dir, base / "1")
    return str(base)


@pytest.fixture(scope="module")
def server(base_path):
    with lifecycle.start_in_thread(base_path, NAME, poll_seconds=60) as running:
        yield running


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(server.target)
    yield (
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
    )
    channel.close()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return image_bombs.png_bomb(BOMB_SIDE, BOMB_SIDE)


def _classify(images: list[bytes]) -> classification_pb2.ClassificationRequest:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = NAME
    request.model_spec.signature_name = "classification"
    for image in images:
        request.input.example_list.examples.add().ParseFromString(make_example(image))
    return request


def _assert_healthy(stubs, model) -> None:
    predict, _ = stubs
    response = predict.Predict(
        serving_fixtures.predict_request("predict_images", "images", [model.items[0][0]]), timeout=60
    )
    assert tf.make_ndarray(response.outputs["classes"])[0, 0].decode() == model.items[0][1]


def _memory_kb() -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of this process, in kB."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------
# The pixel limit


def test_bombs_are_refused_before_decoding_and_memory_stays_flat(stubs, model, bomb):
    """Each way an image reaches the model, several times: refused, naming index and size.

    Decoding even one of these would take the process's peak RSS up by 1.2 GB;
    the bound allowed here is a small fraction of that.
    """
    predict, _ = stubs
    good = model.items[0][0]
    requests = [
        ("Predict", serving_fixtures.predict_request("predict_images", "images", [good, bomb]), "image 1"),
        (
            "Predict",
            serving_fixtures.predict_request("serving_default", "examples", [make_example(bomb)]),
            "image 0",
        ),
        (
            "Predict",
            serving_fixtures.predict_request(
                "classification", "inputs", [make_example(good), make_example(bomb)]
            ),
            "image 1",
        ),
        ("Classify", _classify([good, good, bomb]), "image 2"),
    ]
    _assert_healthy(stubs, model)  # everything lazily initialised is initialised
    before = _memory_kb()
    peak_reset = _reset_peak()
    for _ in range(3):
        for method, request, where in requests:
            with pytest.raises(grpc.RpcError) as e:
                getattr(predict, method)(request, timeout=60)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
            details = e.value.details()
            assert where in details and f"{BOMB_SIDE}x{BOMB_SIDE} px" in details, details
            assert "400.0 MP" in details and "--max-pixels" in details
    after = _memory_kb()
    rss_growth = (after["VmRSS"] - before["VmRSS"]) / 1024
    assert rss_growth < 100, f"RSS grew {rss_growth:.0f} MB over 12 refused bombs"
    if peak_reset:
        peak_growth = (after["VmHWM"] - before["VmRSS"]) / 1024
        assert peak_growth < 200, f"peak RSS rose {peak_growth:.0f} MB: something decoded a bomb"
    _assert_healthy(stubs, model)


def test_pixel_limit_boundary_and_messages():
    limit = 32 * 32
    at = encode_image(np.zeros((32, 32), np.uint8))
    over = encode_image(np.zeros((32, 33), np.uint8))
    images = np.array([at, over, at, over], dtype=object)
    inputs.check_inputs("predict_images", {"images": np.array([at, at], dtype=object)}, limit)
    with pytest.raises(InvalidRequestError) as e:
        inputs.check_inputs("predict_images", {"images": images}, limit)
    message = str(e.value)
    assert "image 1 (input 'images') is 33x32 px" in message and "image 3" in message
    assert "image 0" not in message and "image 2" not in message
    inputs.check_inputs("predict_images", {"images": images}, 0)  # 0: no limit
    examples = np.array([make_example(at), make_example(over)], dtype=object)
    with pytest.raises(InvalidRequestError, match=r"image 1 \(examples\[1\] feature 'image'\) is 33x32"):
        inputs.check_inputs("serving_default", {"examples": examples}, limit)
    # Headers that cannot be read are the decoder's to refuse, with its own message.
    inputs.check_inputs("predict_images", {"images": np.array([b"junk", at[:20]], dtype=object)}, limit)


def test_default_limit_and_settings():
    assert ServerConfig("b", "m").max_pixels == DEFAULT_MAX_PIXELS == 40_000_000
    with pytest.raises(ServerStartError, match="max_pixels"):
        ServerConfig("b", "m", max_pixels=-1).validate()
    # gRPC's size options are 32-bit: 2048 MiB overflowed them with a traceback at start.
    for size in (0, 2048):
        with pytest.raises(ServerStartError, match=r"max_message_mb must be in 1\.\.2047"):
            ServerConfig("b", "m", max_message_mb=size).validate()
    from serving.client import ServingClient

    with pytest.raises(ValueError, match=r"max_message_mb must be in 1\.\.2047"):
        ServingClient("localhost:1", max_message_mb=2048)


def test_an_empty_tensorflow_message_still_gives_a_status_message():
    """An empty error message used to raise IndexError inside the error handling itself."""
    from serving.errors import clean_tf_message

    assert clean_tf_message("") == "(TensorFlow gave no message)"
    assert clean_tf_message("  \n ") == "(TensorFlow gave no message)"
    assert clean_tf_message("[[{{node x}}]]") == "[[{{node x}}]]"
    assert clean_tf_message("bad input [Op:DecodePng]") == "bad input"


# ----------------------------------------------------------------------------------------
# Payloads that are not tf.Examples


@pytest.mark.parametrize("signature,key", [("serving_default", "examples"), ("classification", "inputs")])
@pytest.mark.parametrize("payload", ["png", "text", "garbage"])
def test_non_example_payload_is_invalid_argument_saying_so(stubs, model, signature, key, payload):
    value = {
        "png": model.items[0][0],
        "text": b"hello, this is not a proto",
        "garbage": b"\xff\xff\xff not a proto",
    }[payload]
    predict, _ = stubs
    request = serving_fixtures.predict_request(signature, key, [make_example(model.items[0][0]), value])
    with pytest.raises(grpc.RpcError) as e:
        predict.Predict(request, timeout=60)
    details = e.value.details()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{key}[1] is not a serialized tf.Example" in details, details
    assert "must be serialized tf.Example protos" in details and signature in details
    assert "codec" not in details.lower() and "DecodeError" not in details
    if payload == "png":
        assert "encoded image" in details
    _assert_healthy(stubs, model)


# ----------------------------------------------------------------------------------------
# Unimplemented RPCs


def test_every_declared_rpc_is_defined_by_the_servicers():
    """The generated base class raises for an RPC we do not define, which gRPC logs as an ERROR."""
    for module, cls in (
        (prediction_service_pb2, servicers.PredictionServicer),
        (model_service_pb2, servicers.ModelServicer),
    ):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert method.name in vars(cls), f"{cls.__name__} does not define {method.name}"


def test_a_refused_config_reload_answers_cleanly_without_error_logs(stubs, model, caplog):
    """A config TF Serving's reload refuses (not a model_config_list) answers INVALID_ARGUMENT in
    its words, logs no error or traceback, and changes nothing."""
    _, models = stubs
    request = model_management_pb2.ReloadConfigRequest()
    request.config.custom_model_config.Pack(model_management_pb2.ReloadConfigRequest())
    with caplog.at_level(logging.WARNING):
        with pytest.raises(grpc.RpcError) as e:
            models.HandleReloadConfigRequest(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("ServerModelConfig type not supported by HandleReloadConfigRequest")
    noisy = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not noisy, [r.getMessage() for r in noisy]
    _assert_healthy(stubs, model)


# ----------------------------------------------------------------------------------------
# A taken port


@pytest.fixture()
def taken_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_start_server_binds_before_loading(base_path, taken_port, monkeypatch):
    loads = []
    monkeypatch.setattr(lifecycle.ModelManager, "start", lambda self: loads.append(self))
    with pytest.raises(ServerStartError, match="cannot bind"):
        lifecycle.start_server(ServerConfig(base_path, NAME, port=taken_port))
    assert loads == []


def test_cli_serve_port_taken_exits_2_before_the_model_loads(base_path, taken_port, capsys):
    argv = ["serve", "--model-base-path", base_path, "--model-name", NAME, "--port", str(taken_port)]
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"cannot bind 127.0.0.1:{taken_port}" in err and "--port" in err
    assert "Loading model" not in err


def test_cli_serve_port_taken_fails_without_loading_tensorflow(base_path, taken_port):
    """In a fresh process: exit 2 and TensorFlow never imported, so the answer is immediate."""
    script = (
        "import sys\n"
        "from imgpipe.cli import main\n"
        "code = main.main(sys.argv[1:])\n"
        "print('tensorflow' in sys.modules)\n"
        "sys.exit(code)\n"
    )
    argv = ["serve", "--model-base-path", base_path, "--model-name", NAME, "--port", str(taken_port)]
    proc = subprocess.run(
        [sys.executable, "-c", script, *argv],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.strip() == "False"
    assert "cannot bind" in proc.stderr and "Address already in use" in proc.stderr
