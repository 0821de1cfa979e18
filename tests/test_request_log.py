"""Request logging (serving/devserver/request_log.py): TF Serving PredictionLogs in rotating TFRecords.

The files are read back with TensorFlow's own TFRecord reader (an independent
check of the framing) and parsed as PredictionLog. A full disk (/dev/full), a
vanished directory and a stalled writer drop records and count them; the
requests themselves always succeed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from imgpipe.cli import main as cli
from serving.config import ServerConfig
from serving.devserver import lifecycle, request_log
from serving.errors import ServerStartError
from tests import helpers, serving_fixtures
from tests.helpers import make_example

NAME = serving_fixtures.MODEL_NAME


@pytest.fixture(scope="session")
def model(serving_model) -> serving_fixtures.ServingModel:
    return serving_model


@pytest.fixture(scope="module")
def base_path(model, tmp_path_factory) -> str:
    base = tmp_path_factory.mktemp("models") / NAME
    shutil.copytree(model.export_dir, base / "3")
    return str(base)


def _classify(images: list[bytes]) -> classification_pb2.ClassificationRequest:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = NAME
    request.model_spec.signature_name = "classification"
    for image in images:
        request.input.example_list.examples.add().ParseFromString(make_example(image))
    return request


def _read_logs(directory: str) -> list[prediction_log_pb2.PredictionLog]:
    """Every PredictionLog in the directory, read with TensorFlow's TFRecord reader."""
    logs = []
    for path in request_log.log_files(directory):
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            logs.append(prediction_log_pb2.PredictionLog.FromString(record))
    return logs


def _small_pair(i: int) -> tuple[predict_pb2.PredictRequest, predict_pb2.PredictResponse]:
    """A request/response pair of about `200 + i` bytes, without a model."""
    request = serving_fixtures.predict_request("predict_images", "images", [b"x" * (200 + i)])
    response = predict_pb2.PredictResponse()
    response.model_spec.name = NAME
    response.model_spec.version.value = 1
    response.outputs["classes"].CopyFrom(tf.make_tensor_proto([[b"1"]]))
    return request, response


# ----------------------------------------------------------------------------------------
# Through the server


def test_predict_classify_and_multi_inference_are_logged_as_prediction_logs(model, base_path, tmp_path):
    log_dir = tmp_path / "requests"
    images = [img for img, _ in model.items[:3]]
    with lifecycle.start_in_thread(base_path, NAME, log_requests=str(log_dir)) as server:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.target))
        sent_predict = serving_fixtures.predict_request("predict_images", "images", images)
        sent_default = serving_fixtures.predict_request(
            "serving_default", "examples", [make_example(images[0])]
        )
        sent_classify = _classify(images[1:])
        sent_multi = inference_pb2.MultiInferenceRequest(input=sent_classify.input)
        sent_multi.tasks.add(model_spec=sent_classify.model_spec, method_name="tensorflow/serving/classify")
        answers = [
            stub.Predict(sent_predict, timeout=60),
            stub.Predict(sent_default, timeout=60),
            stub.Classify(sent_classify, timeout=60),
            stub.MultiInference(sent_multi, timeout=60),
        ]
        with pytest.raises(grpc.RpcError):  # failed requests are not logged
            stub.Predict(
                serving_fixtures.predict_request("predict_images", "images", [b"not an image"]), timeout=60
            )
    logs = _read_logs(str(log_dir))
    kinds = ["predict_log", "predict_log", "classify_log", "multi_inference_log"]
    assert [entry.WhichOneof("log_type") for entry in logs] == kinds
    bodies = [getattr(entry, kind) for entry, kind in zip(logs, kinds, strict=True)]
    sent = [sent_predict, sent_default, sent_classify, sent_multi]
    for body, request, answer in zip(bodies, sent, answers, strict=True):
        assert body.request == request and body.response == answer
    for entry in logs:
        meta = entry.log_metadata
        assert meta.model_spec.name == NAME and meta.model_spec.version.value == 3
        assert meta.sampling_config.sampling_rate == 1.0 and list(meta.saved_model_tags) == ["serve"]
        assert meta.timestamp_secs > 0
    assert logs[2].log_metadata.model_spec.signature_name == "classification"
    assert logs[3].log_metadata.model_spec == answers[2].model_spec  # the first task's result names it
    [stats_file] = request_log.stats_files(str(log_dir))
    stats = json.loads(open(stats_file, encoding="utf-8").read())
    assert stats["requests"] == stats["sampled"] == stats["written"] == 4
    assert stats["dropped"] == 0 and stats["files"] == 1


def test_full_disk_drops_and_counts_but_requests_succeed(model, base_path, tmp_path, monkeypatch):
    """Every log file opens on /dev/full: each write fails with ENOSPC."""
    log_dir = tmp_path / "requests"
    messages = _LogCapture()
    logging.getLogger(request_log.__name__).addHandler(messages)
    monkeypatch.setattr(request_log, "_open_file", lambda path: open("/dev/full", "wb"))  # noqa: SIM115
    with lifecycle.start_in_thread(base_path, NAME, log_requests=str(log_dir)) as server:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.target))
        for i in range(6):
            response = stub.Predict(
                serving_fixtures.predict_request("predict_images", "images", [model.items[i][0]]), timeout=60
            )
            assert tf.make_ndarray(response.outputs["classes"])[0, 0].decode() == model.items[i][1]
        final = server.request_log.close()
    assert final.requests == final.sampled == 6
    assert final.written == 0 and final.dropped_write_error == 6 and final.dropped == 6
    assert "No space left on device" in final.last_error
    assert request_log.log_files(str(log_dir)) == []
    assert (
        json.loads(open(server.request_log.stats_path, encoding="utf-8").read())["dropped_write_error"] == 6
    )
    logging.getLogger(request_log.__name__).removeHandler(messages)
    assert "No space left on device" in messages.text  # said once when the trouble started
    assert "dropped 6" in messages.text and "write errors 6" in messages.text  # and at shutdown


def test_unwritable_log_dir_at_start_is_a_start_error(base_path, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ServerStartError, match="cannot write request logs"):
        lifecycle.start_server(ServerConfig(base_path, NAME, port=0, log_requests=str(blocker / "logs")))
    argv = ["serve", "--model-base-path", base_path, "--model-name", NAME, "--port", "0"]
    assert cli.main([*argv, "--log-requests", str(blocker / "logs")]) == cli.EXIT_USAGE
    assert "cannot write request logs" in capsys.readouterr().err
    # The directory given is a file: said as such (not "File exists").
    with pytest.raises(ServerStartError, match="a-file is a file: give a directory"):
        lifecycle.start_server(ServerConfig(base_path, NAME, port=0, log_requests=str(blocker)))


def test_log_settings_are_validated():
    for field, value in [("log_sample_rate", 1.5), ("log_max_file_mb", 0), ("log_queue_size", 0)]:
        with pytest.raises(ServerStartError, match=field):
            ServerConfig("b", "m", **{field: value}).validate()


# ----------------------------------------------------------------------------------------
# The writer alone


def test_sampling_rate_is_respected(tmp_path):
    log = request_log.RequestLog(str(tmp_path), sample_rate=0.25, seed=7).start()
    for i in range(800):
        log.offer_predict(*_small_pair(i % 50))
    final = log.close()
    assert final.requests == 800
    assert 140 <= final.sampled <= 260  # 200 expected; the bounds are more than 5 sigma apart
    assert final.written == final.sampled == len(_read_logs(str(tmp_path)))
    assert _read_logs(str(tmp_path))[0].log_metadata.sampling_config.sampling_rate == 0.25
    none = request_log.RequestLog(str(tmp_path / "none"), sample_rate=0.0).start()
    none.offer_predict(*_small_pair(0))
    assert none.close().written == 0


_ONE_SERVER = """
import sys
from tensorflow_serving.apis import predict_pb2
from serving.devserver import request_log
log = request_log.RequestLog(sys.argv[1]).start()
for i in range(int(sys.argv[2])):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    log.offer_predict(request, predict_pb2.PredictResponse())
log.close()
"""


def test_servers_logging_to_one_folder_each_keep_their_own_counts(tmp_path):
    """Two servers logging to one folder (replicas on a shared volume): their log files were
    apart, but one stats file held the last writer's counts alone (4 of 8 requests). Each
    server, a process of its own here, now writes its own."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for count in (3, 5):
        subprocess.run(
            [sys.executable, "-c", _ONE_SERVER, str(tmp_path), str(count)], cwd=root, check=True, timeout=300
        )
    counts = sorted(
        json.loads(open(f, encoding="utf-8").read())["written"]
        for f in request_log.stats_files(str(tmp_path))
    )
    assert counts == [3, 5]
    assert len(request_log.log_files(str(tmp_path))) == 2 and len(_read_logs(str(tmp_path))) == 8
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_rotation_by_size_makes_several_readable_files(tmp_path):
    log = request_log.RequestLog(str(tmp_path), max_file_bytes=2000).start()
    for i in range(40):
        log.offer_predict(*_small_pair(i))
    final = log.close()
    files = request_log.log_files(str(tmp_path))
    assert final.files == len(files) >= 4
    assert all(os.path.getsize(f) < 2000 + 500 for f in files)  # rotated at the first record past the size
    logs = _read_logs(str(tmp_path))
    sizes = [len(e.predict_log.request.inputs["images"].string_val[0]) for e in logs]
    assert sizes == [200 + i for i in range(40)]  # all there, in order across the files
    assert [len(list(request_log.read_records(f))) for f in files] == [
        sum(1 for _ in tf.data.TFRecordDataset(f)) for f in files
    ]


def test_a_stalled_writer_drops_on_a_full_queue_without_blocking(tmp_path, monkeypatch):
    release = threading.Event()
    real_open = request_log._open_file

    def stalled_open(path):
        release.wait(60)
        return real_open(path)

    monkeypatch.setattr(request_log, "_open_file", stalled_open)
    log = request_log.RequestLog(str(tmp_path), max_queue_records=5).start()
    for i in range(50):  # the writer holds one record and waits; 5 more fit in the queue
        log.offer_predict(*_small_pair(i))
    stats = log.stats()
    assert stats.sampled == 50 and stats.dropped_queue_full >= 44
    release.set()
    final = log.close()
    assert final.written + final.dropped_queue_full == 50 and final.written <= 6
    assert len(_read_logs(str(tmp_path))) == final.written


def test_queue_byte_budget(tmp_path, monkeypatch):
    release = threading.Event()
    real_open = request_log._open_file
    monkeypatch.setattr(request_log, "_open_file", lambda path: release.wait(60) and real_open(path))
    size = sum(m.ByteSize() for m in _small_pair(0))
    log = request_log.RequestLog(str(tmp_path), max_queue_bytes=4 * size).start()
    for _ in range(20):  # 4 fit in the budget, plus the one the stalled writer may hold
        log.offer_predict(*_small_pair(0))
    assert log.stats().dropped_queue_full in (15, 16)
    release.set()
    final = log.close()
    assert final.written == 20 - final.dropped_queue_full


def test_vanished_directory_drops_then_recovers(tmp_path):
    log_dir = tmp_path / "requests"
    log = request_log.RequestLog(str(log_dir), max_file_bytes=1, retry_seconds=0.0).start()
    log.offer_predict(*_small_pair(0))
    helpers.wait_for(lambda: log.stats().written == 1, 30)
    shutil.rmtree(log_dir)
    log_dir.write_text("the directory is gone")  # opening a file inside it now fails
    for i in range(3):
        log.offer_predict(*_small_pair(i))
    helpers.wait_for(lambda: log.stats().dropped_write_error == 3, 30)
    assert "Not a directory" in log.stats().last_error
    log_dir.unlink()
    log_dir.mkdir()
    log.offer_predict(*_small_pair(9))
    final = log.close()
    assert final.written == 2 and final.dropped_write_error == 3
    assert len(_read_logs(str(log_dir))) == 1


def test_reader_stops_at_a_cut_record_and_rejects_a_corrupt_one(tmp_path):
    path = tmp_path / "log.tfrecord"
    records = [b"first", b"second" * 10, b"third"]
    path.write_bytes(b"".join(request_log.tfrecord_frame(r) for r in records))
    assert list(request_log.read_records(str(path))) == records
    full = path.read_bytes()
    path.write_bytes(full[:-7])
    cut: list[str] = []
    assert list(request_log.read_records(str(path), cut)) == records[:2]
    assert cut and "record 2" in cut[0]
    corrupt = bytearray(full)
    corrupt[len(request_log.tfrecord_frame(records[0])) + 14] ^= 0xFF  # a byte of record 1's data
    path.write_bytes(bytes(corrupt))
    with pytest.raises(request_log.CorruptLogError, match="record 1"):
        list(request_log.read_records(str(path)))


class _LogCapture(logging.Handler):
    """Collects a logger's messages (the CLI's set-up stops imgpipe's loggers propagating to caplog)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)
