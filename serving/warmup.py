"""TF Serving warmup requests: `assets.extra/tf_serving_warmup_requests` in a SavedModel.

The file is a TFRecord of `PredictionLog` protos. TF Serving (and the local
server in serving/devserver) replays them after loading a version and before
serving it, so the first real request does not pay for graph initialisation.
TF Serving reads at most 1000 records.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import tensorflow as tf
from google.protobuf import message
from tensorflow_serving.apis import classification_pb2, input_pb2, model_pb2, predict_pb2, prediction_log_pb2

from serving.signatures import CLASSIFICATION, IMAGE_FEATURE, INPUT_KEYS, PREDICT_IMAGES, SERVING_DEFAULT

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit


def warmup_path(export_dir: str) -> str:
    """Where TF Serving looks for the warmup file of a SavedModel directory."""
    return os.path.join(export_dir, WARMUP_DIR, WARMUP_FILE)


def build_warmup_logs(
    values: Sequence[bytes],
    model_name: str = "model",
    signature: str = SERVING_DEFAULT,
    input_key: str | None = None,
    batch_size: int = 1,
) -> list[prediction_log_pb2.PredictionLog]:
    """PredictionLogs, one PredictRequest per `batch_size` values, as a [n] DT_STRING tensor."""
    key = input_key or INPUT_KEYS.get(signature)
    if key is None:
        raise ValueError(
            f"no known input name for signature {signature!r}; pass input_key "
            f"(known: {', '.join(sorted(INPUT_KEYS))})"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not values:
        raise ValueError("no warmup values given: pass at least one serialized input")
    for i, v in enumerate(values):
        if not isinstance(v, bytes) or not v:
            raise ValueError(f"warmup value {i} must be non-empty bytes, got {type(v).__name__}")
    logs = []
    for start in range(0, len(values), batch_size):
        batch = list(values[start : start + batch_size])
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
        )
        request.inputs[key].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
        logs.append(
            prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        )
    if len(logs) > MAX_WARMUP_RECORDS:
        raise ValueError(f"{len(logs)} warmup requests; TF Serving reads at most {MAX_WARMUP_RECORDS}")
    return logs


def build_classify_logs(
    examples: Sequence[bytes], model_name: str = "model", signature: str = CLASSIFICATION
) -> list[prediction_log_pb2.PredictionLog]:
    """PredictionLogs, one ClassificationRequest per serialized tf.Example."""
    logs = []
    for i, value in enumerate(examples):
        example = _parse_example(value, i)
        request = classification_pb2.ClassificationRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature),
            input=input_pb2.Input(example_list=input_pb2.ExampleList(examples=[example])),
        )
        logs.append(
            prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=request))
        )
    return logs


def _parse_example(value: bytes, index: int) -> tf.train.Example:
    try:
        return tf.train.Example.FromString(value)
    except message.DecodeError as e:
        raise ValueError(f"warmup value {index} is not a serialized tf.Example: {e}") from None


def image_of(example: bytes, index: int = 0) -> bytes:
    """The encoded image a serialized tf.Example holds in IMAGE_FEATURE; ValueError naming `index` if none."""
    values = _parse_example(example, index).features.feature[IMAGE_FEATURE].bytes_list.value
    if not values or not values[0]:
        raise ValueError(f"warmup value {index} has no {IMAGE_FEATURE!r} bytes")
    return values[0]


def build_signature_warmup_logs(
    examples: Sequence[bytes], model_name: str = "model"
) -> list[prediction_log_pb2.PredictionLog]:
    """Warmup for every client signature the exporter writes, one request per example each.

    serving_default (Predict over the tf.Examples), classification (Classify over
    them) and predict_images (Predict over the image each example holds). A model
    server optimises each signature's graph on that signature's first call (about
    1.6 s for DenseNet121 on 2 cores, BENCHMARKS.md): warming serving_default alone
    left the first Classify and predict_images requests to pay it.
    """
    if not examples:
        raise ValueError("no warmup values given: pass at least one serialized tf.Example")
    images = [image_of(e, i) for i, e in enumerate(examples)]
    logs = build_warmup_logs(examples, model_name, SERVING_DEFAULT)
    logs += build_classify_logs(examples, model_name)
    logs += build_warmup_logs(images, model_name, PREDICT_IMAGES)
    if len(logs) > MAX_WARMUP_RECORDS:
        raise ValueError(f"{len(logs)} warmup requests; TF Serving reads at most {MAX_WARMUP_RECORDS}")
    return logs


def write_warmup_logs(export_dir: str, logs: Sequence[prediction_log_pb2.PredictionLog]) -> str:
    """Write `logs` as the SavedModel's warmup file; return the path written."""
    if not tf.io.gfile.isdir(export_dir):
        raise FileNotFoundError(f"SavedModel directory not found: {export_dir}")
    path = warmup_path(export_dir)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def write_warmup_requests(
    export_dir: str,
    examples: Sequence[bytes],
    model_name: str = "model",
    signature: str = SERVING_DEFAULT,
    input_key: str | None = None,
    batch_size: int = 1,
) -> str:
    """Write `examples` (serialized inputs for `signature`) as TF Serving warmup requests.

    Returns the path written. The model name in the requests is informational:
    TF Serving replays them against whichever model loads the directory.
    """
    if not tf.io.gfile.isdir(export_dir):
        raise FileNotFoundError(f"SavedModel directory not found: {export_dir}")
    return write_warmup_logs(
        export_dir, build_warmup_logs(examples, model_name, signature, input_key, batch_size)
    )


def read_warmup_requests(export_dir: str) -> list[prediction_log_pb2.PredictionLog]:
    """The PredictionLogs in a SavedModel's warmup file; [] when there is none.

    Raises ValueError naming the file and record for a corrupt file, or one
    holding more records than TF Serving accepts.
    """
    path = warmup_path(export_dir)
    if not tf.io.gfile.exists(path):
        return []
    logs = []
    try:
        for i, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            if i >= MAX_WARMUP_RECORDS:
                raise ValueError(
                    f"{path}: more than {MAX_WARMUP_RECORDS} warmup records (TF Serving's limit)"
                )
            log = prediction_log_pb2.PredictionLog()
            try:
                log.ParseFromString(record)
            except message.DecodeError as e:
                raise ValueError(f"{path}: record {i} is not a PredictionLog: {e}") from e
            logs.append(log)
    except tf.errors.DataLossError as e:
        raise ValueError(f"{path}: corrupt TFRecord file: {e.message}") from e
    return logs
