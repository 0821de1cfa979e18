"""serving/warmup.py: TF Serving's warmup file format, written and read back."""

from __future__ import annotations

import os

import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving import warmup
from tests.helpers import encode_image, make_example


def _examples(n: int) -> list[bytes]:
    import numpy as np

    return [make_example(encode_image(np.full((4, 4), i * 40, np.uint8))) for i in range(n)]


def test_round_trip(tmp_path):
    examples = _examples(3)
    path = warmup.write_warmup_requests(str(tmp_path), examples, model_name="digits")
    assert path == os.path.join(str(tmp_path), "assets.extra", "tf_serving_warmup_requests")
    logs = warmup.read_warmup_requests(str(tmp_path))
    assert len(logs) == 3
    for log, example in zip(logs, examples, strict=True):
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.name == "digits"
        assert request.model_spec.signature_name == "serving_default"
        assert list(request.inputs) == ["examples"]
        tensor = request.inputs["examples"]
        assert tensor.dtype == tf.string.as_datatype_enum
        assert [d.size for d in tensor.tensor_shape.dim] == [1]
        assert tf.make_ndarray(tensor).tolist() == [example]


def test_file_is_a_plain_tfrecord_of_prediction_logs(tmp_path):
    """Read with TensorFlow alone, as TF Serving does, not with our reader."""
    examples = _examples(4)
    path = warmup.write_warmup_requests(str(tmp_path), examples, signature="predict_images", batch_size=3)
    records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in records]
    assert [len(tf.make_ndarray(x.predict_log.request.inputs["images"])) for x in logs] == [3, 1]


def test_no_file_reads_as_empty(tmp_path):
    assert warmup.read_warmup_requests(str(tmp_path)) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"examples": []}, "no warmup values"),
        ({"examples": ["text"]}, "non-empty bytes"),
        ({"examples": [b"x"], "signature": "mystery"}, "no known input name"),
        ({"examples": [b"x"], "batch_size": 0}, "batch_size"),
        ({"examples": [b"x"] * 1001}, "at most 1000"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        warmup.write_warmup_requests(str(tmp_path), **kwargs)
    assert not os.path.exists(warmup.warmup_path(str(tmp_path)))


def test_missing_export_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        warmup.write_warmup_requests(str(tmp_path / "nowhere"), _examples(1))


def test_custom_input_key(tmp_path):
    warmup.write_warmup_requests(str(tmp_path), [b"abc"], signature="mine", input_key="x")
    (log,) = warmup.read_warmup_requests(str(tmp_path))
    assert log.predict_log.request.model_spec.signature_name == "mine"
    assert tf.make_ndarray(log.predict_log.request.inputs["x"]).tolist() == [b"abc"]


def test_corrupt_file_is_reported_with_its_path(tmp_path):
    path = warmup.write_warmup_requests(str(tmp_path), _examples(2))
    with open(path, "r+b") as f:
        f.seek(20)
        f.write(b"\x00garbage\xff" * 4)
    with pytest.raises(ValueError, match="tf_serving_warmup_requests"):
        warmup.read_warmup_requests(str(tmp_path))


def test_every_client_signature_is_warmed(tmp_path):
    """serving_default, classification and predict_images each get one request per example."""
    examples = _examples(2)
    images = [warmup.image_of(e) for e in examples]
    path = warmup.write_warmup_logs(str(tmp_path), warmup.build_signature_warmup_logs(examples, "digits"))
    logs = warmup.read_warmup_requests(os.path.dirname(os.path.dirname(path)))
    kinds = [(log.WhichOneof("log_type"), _signature(log)) for log in logs]
    assert (
        kinds
        == [("predict_log", "serving_default")] * 2
        + [("classify_log", "classification")] * 2
        + [("predict_log", "predict_images")] * 2
    )
    assert [tf.make_ndarray(log.predict_log.request.inputs["examples"]).tolist() for log in logs[:2]] == [
        [e] for e in examples
    ]
    classified = [log.classify_log.request.input.example_list.examples for log in logs[2:4]]
    assert [[x.SerializeToString() for x in c] for c in classified] == [
        [tf.train.Example.FromString(e).SerializeToString()] for e in examples
    ]
    assert [tf.make_ndarray(log.predict_log.request.inputs["images"]).tolist() for log in logs[4:]] == [
        [i] for i in images
    ]


def _signature(log: prediction_log_pb2.PredictionLog) -> str:
    kind = log.WhichOneof("log_type")
    return getattr(log, kind).request.model_spec.signature_name


def test_signature_warmup_names_an_example_without_an_image():
    no_image = tf.train.Example().SerializeToString()
    with pytest.raises(ValueError, match="warmup value 1 has no 'image' bytes"):
        warmup.build_signature_warmup_logs([_examples(1)[0], no_image])
    with pytest.raises(ValueError, match="warmup value 0 is not a serialized tf.Example"):
        warmup.build_signature_warmup_logs([b"\xff\xff not a proto"])
