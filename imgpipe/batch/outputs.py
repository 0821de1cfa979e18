"""Batch prediction outputs: CSV, JSON lines or PredictionLog TFRecords, by the file's extension.

- ``.csv``: a header ``path,rank,class,score`` then one row per class of each
  image's top k (rank 1 is the best); quoting by Python's csv module, so class
  names with commas or quotes stay intact.
- ``.jsonl`` / ``.ndjson`` / ``.json``: one JSON object per image:
  ``{"path", "classes", "scores"}``, classes best first.
- ``.tfrecord`` / ``.tfrecords``: one ``tensorflow.serving.PredictionLog`` per
  image (tensorflow_serving.apis.prediction_log_pb2, the format TFX's
  BulkInferrer writes and TF Serving's warmup file uses): a ``predict_log``
  whose request is the Predict request for the ``predict_images`` signature
  (the image bytes) and whose response holds ``classes`` and ``scores``
  [1, k]; the file's path is in ``log_metadata.request_origin``.

Rows come in no particular order (Beam writes them as workers finish; in a
CSV even an image's rows may be apart: the rank column orders them); each
carries its path. ``read_predictions`` parses any of the three back.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Any

OUTPUT_FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".tfrecord": "tfrecord",
    ".tfrecords": "tfrecord",
}
CSV_HEADER = "path,rank,class,score"
PREDICT_IMAGES = "predict_images"  # the signature scored (trainer/export.py)


@dataclasses.dataclass(frozen=True)
class ScoredImage:
    """One image's top classes, best first, and where they came from."""

    path: str  # as listed, shown as text (undecodable file-name bytes escaped)
    classes: list[str]
    scores: list[float]
    model_name: str
    version: int | None = None
    image: bytes = b""  # the file's bytes: kept for PredictionLog output only

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "classes": self.classes, "scores": self.scores}


def output_format(path: str) -> str:
    """'csv' | 'jsonl' | 'tfrecord' from the output's extension; ValueError naming the choices."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".json":
        raise ValueError(
            f"--out {path}: the output is JSON Lines (one JSON document per image, not one JSON "
            "document): name it .jsonl"
        )
    if ext not in OUTPUT_FORMATS:
        raise ValueError(
            f"--out {path}: unknown output extension {ext or '(none)'!r}; "
            f"use one of {', '.join(OUTPUT_FORMATS)}"
        )
    return OUTPUT_FORMATS[ext]


# What makes a spreadsheet read a cell as a formula (`=cmd|...`, `@SUM(...)`): a file or class
# name starting so, other than a number ('-1'), is written after a ' (the CSV cell then shows the
# text; JSON Lines keep it).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text_cell(value: str) -> str:
    if not value.startswith(_FORMULA_START):
        return value
    try:
        float(value)  # '-1', '+1' (binary labels): a number to a spreadsheet, not a formula
    except ValueError:
        return "'" + value
    return value


def csv_rows(scored: ScoredImage) -> list[str]:
    """The CSV lines of one image: one per class of its top k."""
    lines = []
    for rank, (name, score) in enumerate(zip(scored.classes, scored.scores, strict=True), start=1):
        buffer = io.StringIO()
        # The default terminator, stripped after: csv quotes a field only for the characters of
        # its terminator, so a path or class holding a line break stays one quoted field.
        row = [_text_cell(scored.path), rank, _text_cell(name), repr(float(score))]
        csv.writer(buffer, lineterminator="\r\n").writerow(row)
        lines.append(buffer.getvalue()[: -len("\r\n")])
    return lines


def json_line(scored: ScoredImage) -> str:
    return json.dumps(scored.to_dict(), ensure_ascii=False)


def prediction_log(scored: ScoredImage) -> bytes:
    """A serialized PredictionLog: the predict_images request and its response."""
    import numpy as np
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = scored.model_name
    request.model_spec.signature_name = PREDICT_IMAGES
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([scored.image], dtype=tf.string))
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    if scored.version is not None:
        response.model_spec.version.value = scored.version
    classes = np.array([[c.encode("utf-8") for c in scored.classes]], dtype=object)
    response.outputs["classes"].CopyFrom(tf.make_tensor_proto(classes, dtype=tf.string))
    response.outputs["scores"].CopyFrom(tf.make_tensor_proto([scored.scores], dtype=tf.float32))
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.CopyFrom(request)
    log.predict_log.response.CopyFrom(response)
    log.log_metadata.model_spec.CopyFrom(response.model_spec)
    log.log_metadata.request_origin = scored.path
    return log.SerializeToString()


def write_transform(path: str, fmt: str) -> Any:
    """The Beam transform writing ScoredImages to exactly `path` (one file, no shard suffix)."""
    import apache_beam as beam

    one_file = {"num_shards": 1, "shard_name_template": ""}
    if fmt == "csv":
        return "CSV" >> (beam.FlatMap(csv_rows) | beam.io.WriteToText(path, header=CSV_HEADER, **one_file))
    if fmt == "jsonl":
        return "JSON lines" >> (beam.Map(json_line) | beam.io.WriteToText(path, **one_file))
    return "PredictionLogs" >> (beam.Map(prediction_log) | beam.io.WriteToTFRecord(path, **one_file))


def read_predictions(path: str) -> list[dict[str, Any]]:
    """[{"path", "classes", "scores"}] from an output of any format, in file order."""
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow

    fmt = output_format(path)
    if fmt == "tfrecord":
        from tensorflow_serving.apis import prediction_log_pb2

        rows = []
        for record in tf.data.TFRecordDataset(path):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            outputs = log.predict_log.response.outputs
            rows.append(
                {
                    "path": log.log_metadata.request_origin,
                    "classes": [c.decode("utf-8") for c in tf.make_ndarray(outputs["classes"])[0]],
                    "scores": [float(s) for s in tf.make_ndarray(outputs["scores"])[0]],
                }
            )
        return rows
    with tf.io.gfile.GFile(path, "r") as handle:
        text = handle.read()
    if fmt == "jsonl":
        # Lines end with "\n" only: str.splitlines also splits on U+2028, U+0085 and the like,
        # which json_line writes raw inside a path (ensure_ascii=False).
        return [json.loads(line) for line in text.split("\n") if line.strip()]
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header != CSV_HEADER.split(","):
        raise ValueError(f"{path}: expected the header {CSV_HEADER!r}, got {header}")
    ranked: dict[str, dict[int, tuple[str, float]]] = {}
    for row_path, rank, name, score in reader:
        ranked.setdefault(row_path, {})[int(rank)] = (name, float(score))
    rows = []
    for row_path, by_rank in ranked.items():
        if sorted(by_rank) != list(range(1, len(by_rank) + 1)):
            raise ValueError(f"{path}: the ranks of {row_path} are {sorted(by_rank)}, not 1..k")
        ordered = [by_rank[r] for r in sorted(by_rank)]
        rows.append({"path": row_path, "classes": [c for c, _ in ordered], "scores": [s for _, s in ordered]})
    return rows
