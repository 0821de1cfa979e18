"""The serving tests' models: imgpipe.demo.classifier's small digits classifier, built once per
session, and `tiny_export`, a few TensorFlow ops that load in well under a second."""

from __future__ import annotations

import io
import shutil
import tempfile
import threading
from pathlib import Path

import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import predict_pb2

from imgpipe.demo import data
from imgpipe.demo.classifier import ServingModel, build_serving_model

MODEL_NAME = "digits"
DIGITS = (0, 1, 2)
IMAGE_SIZE = 32
WARMUP_COUNT = 2  # warmup examples; each is replayed through the 3 client signatures
WARMUP_REQUESTS = 3 * WARMUP_COUNT

_lock = threading.Lock()
_cache: dict[str, ServingModel] = {}


def serving_model(workdir: str | None = None) -> ServingModel:
    """The process's model, built on first use (several seconds) in `workdir` (default: a temp dir).

    Tests take it through conftest's `serving_model` fixture, which shares one between workers.
    """
    with _lock:
        if "model" not in _cache:
            workdir = workdir or tempfile.mkdtemp(prefix="imgpipe-serving-")
            _cache["model"] = build_serving_model(
                workdir, DIGITS, per_class=12, image_size=IMAGE_SIZE, warmup_count=WARMUP_COUNT
            )
        return _cache["model"]


def sample_photos(size: int = 96) -> list[tuple[str, bytes, bytes]]:
    """scikit-learn's two sample photos, downscaled: [(name, JPEG bytes, PNG bytes)]."""
    return data.sample_photos(size)


def as_jpeg(png: bytes, quality: int = 95) -> bytes:
    """Re-encode image bytes as JPEG."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def damaged_copy(export_dir: str, version: Path, damage: str) -> None:
    """A copy of the model at `version` with one thing wrong with it."""
    shutil.copytree(export_dir, version)
    variables = version / "variables"
    if damage == "no variables yet":  # still being copied
        shutil.rmtree(variables)
    elif damage.startswith("a data shard"):
        [shard] = [p for p in variables.iterdir() if p.name.startswith("variables.data-")]
        data = bytearray(shard.read_bytes())
        if damage == "a data shard missing":
            shard.unlink()
        elif damage == "a data shard cut short":  # a copy interrupted
            shard.write_bytes(data[: len(data) // 2])
        elif damage == "a data shard with other bytes in it":  # as long as it was: only the checksums tell
            middle = len(data) // 2
            data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
            shard.write_bytes(data)
    elif damage == "saved_model.pb not a SavedModel":
        (version / "saved_model.pb").write_bytes(b"\x00not a SavedModel" * 10)
    elif damage == "no predict_images":
        import tensorflow as tf

        shutil.rmtree(version)

        class Other(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
            def serve(self, x):
                return {"n": tf.size(x)}

        other = Other()
        tf.saved_model.save(other, str(version), signatures={"serving_default": other.serve})


class Tiny(tf.Module):
    """predict_images (input "images", bytes): the score of class 'long' grows with the byte
    length of each input (outputs "scores" and "classes", two classes)."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def predict_images(self, images):
        n = tf.cast(tf.strings.length(images), tf.float32)
        p = n / (n + 10.0)
        scores = tf.stack([1.0 - p, p], axis=1)
        classes = tf.tile(tf.constant([[b"short", b"long"]]), [tf.shape(images)[0], 1])
        return {"scores": scores, "classes": classes}


def tiny_export(path: str) -> str:
    """`Tiny` saved at `path`: a model that loads in well under a second, for tests of versions,
    swaps and configs, where its answers do not matter. Returns `path`."""
    module = Tiny()
    tf.saved_model.save(module, path, signatures={"predict_images": module.predict_images})
    return path


def predict_request(
    signature: str, key: str, values: list[bytes], name: str = MODEL_NAME
) -> predict_pb2.PredictRequest:
    """A Predict request for model `name`'s `signature`: the strings `values` as input `key`."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    request.inputs[key].CopyFrom(tf.make_tensor_proto(values, dtype=tf.string))
    return request
