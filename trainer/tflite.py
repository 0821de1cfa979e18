"""TFLite export: the trained classifier as `model.tflite` beside the SavedModel, with its input contract.

Where: `<serving model dir>/assets.extra/model.tflite` and `model.tflite.json`
(the contract). assets.extra/ travels with the SavedModel (the Pusher copies
the whole directory into `<serving_dir>/<model_name>/<version>/`) and neither
TF Serving nor the dev server reads anything there but the warmup file, so
loading is unaffected.

What is inside: the backbone's own `preprocess_input`, the backbone, the head
and the class-score expansion: float32 RGB [1, S, S, 3] in [0, 255] -> class
probabilities [1, N]. What is not: decoding and resizing. The Transform graph
starts from encoded bytes (tf.io.decode_image, a map over the batch, string
parsing of tf.Examples) and the label vocabulary is a string table: string and
decode ops are not TFLite builtins, and with Select TF ops they would need the
Flex delegate (megabytes on a device). So decoding and resizing stay on the
device side, and the contract file says exactly how (from
trainer/preprocessing.py's constants): decode to RGB, bilinear resize with
antialiasing to S x S, no crop, values kept in [0, 255]; and it lists the class
names in output order.

Quantization (TrainingConfig.export_tflite):

- float16: weights stored as float16, computed in float32 (half the size);
- dynamic: weights int8, activations quantized on the fly (about a quarter);
- int8: weights and activations int8, calibrated on a representative set of
  train images; input and output stay float32 (quantize/dequantize at the
  edges), so every variant has the same contract.

The check: the TFLite model and the exported SavedModel (through its own
serving_default, i.e. the Transform graph) must give the same top-1 class on
the eval split for at least 98% of the examples (int8: 95%); the Trainer fails
otherwise, naming the agreement and the threshold.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer import backbones, data, preprocessing, tracing
from trainer.config import TrainingConfig
from trainer.features import IMAGE_KEY
from trainer.model import class_scores, fold_standardization

log = logging.getLogger(__name__)

QUANTIZATIONS = ("float16", "dynamic", "int8")
FLOAT32 = "float32"  # no quantization: the baseline benchmarks/tflite.py compares against
MIN_AGREEMENT = {FLOAT32: 0.98, "float16": 0.98, "dynamic": 0.98, "int8": 0.95}
TFLITE_DIR = "assets.extra"
TFLITE_FILE = "model.tflite"
CONTRACT_FILE = "model.tflite.json"
REPRESENTATIVE_IMAGES = 200  # train images that calibrate int8 ranges
MAX_CHECK_EXAMPLES = 2000  # eval examples of the agreement check (the first ones)
_BATCH = 64
_SHUFFLE_BUFFER = 4096


class TFLiteAgreementError(RuntimeError):
    """The TFLite model's top-1 classes disagree with the SavedModel's too often."""


@dataclasses.dataclass(frozen=True)
class TFLiteResult:
    """One TFLite export and its agreement check."""

    quantization: str
    path: str
    contract_path: str
    size_bytes: int
    agreement: float  # fraction of checked eval examples with the same top-1 class
    examples: int  # eval examples checked
    min_agreement: float
    representative_images: int  # int8 only; 0 otherwise

    @property
    def passed(self) -> bool:
        return self.agreement >= self.min_agreement

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "passed": self.passed}

    def check(self) -> None:
        """Raise TFLiteAgreementError when the agreement is below the threshold."""
        if not self.passed:
            raise TFLiteAgreementError(
                f"TFLite export ({self.quantization}): top-1 agreement with the SavedModel is "
                f"{self.agreement:.4f} on {self.examples} eval examples, below the required "
                f"{self.min_agreement:.2f}; the model at {self.path} does not classify like the "
                f"served model (try another export_tflite mode, or none)"
            )


def tflite_paths(export_dir: str) -> tuple[str, str]:
    """(model.tflite, its contract JSON) inside a SavedModel directory."""
    return os.path.join(export_dir, TFLITE_DIR, TFLITE_FILE), os.path.join(
        export_dir, TFLITE_DIR, CONTRACT_FILE
    )


def inference_function(model: keras.Model, backbone: str, image_size: int, num_classes: int):
    """float32 RGB [1, S, S, 3] in [0, 255] -> {'scores': [1, N]}: what the TFLite model computes."""
    spec = backbones.get(backbone)

    @tf.function(input_signature=[tf.TensorSpec([1, image_size, image_size, 3], tf.float32, name="image")])
    def classify(image):
        probabilities = model(spec.preprocess_input(image), training=False)
        return {"scores": class_scores(probabilities, num_classes)}

    return classify


def convert(
    model: keras.Model,
    backbone: str,
    image_size: int,
    num_classes: int,
    quantization: str,
    representative: Sequence[np.ndarray] = (),
) -> bytes:
    """The TFLite flatbuffer of `model` with `quantization`; int8 needs `representative` images [S, S, 3].

    FLOAT32 (no optimization: the benchmark's baseline) is accepted besides QUANTIZATIONS.
    """
    if quantization not in (FLOAT32, *QUANTIZATIONS):
        raise ValueError(
            f"export_tflite: unknown quantization {quantization!r}; choose {', '.join(QUANTIZATIONS)}"
        )
    tracing.install()  # the converter traces the Keras model
    # The head's standardisation folded into its Dense layer: same answers, and no
    # intermediate tensor whose range int8 activations cannot cover.
    fn = inference_function(fold_standardization(model), backbone, image_size, num_classes)
    # No trackable object: the converter then freezes the function's graph directly. Given the
    # Keras model it would first save it as a SavedModel, re-tracing every layer (about 20x
    # slower for MobileNetV2: 70 s against 3 s here); the flatbuffer's answers are the same.
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()])
    if quantization != FLOAT32:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        if not len(representative):
            raise ValueError("int8 quantization needs representative images")

        def dataset() -> Iterator[list[np.ndarray]]:
            for image in representative:
                yield [np.asarray(image, np.float32)[np.newaxis]]

        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def resized_images(
    file_pattern: str | Sequence[str], image_size: int, limit: int, seed: int | None = None
) -> np.ndarray:
    """Up to `limit` images of a split as the TFLite model takes them: [n, S, S, 3] float32 in [0, 255].

    Decoded and resized by trainer.preprocessing.decode_and_resize, the very
    function the Transform graph runs before `preprocess_input`. With `seed`
    the examples are drawn shuffled (a representative set), else the first ones.
    """
    ds = data.raw_examples(file_pattern)
    if seed is not None:
        ds = ds.shuffle(_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=False)
    spec = {IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)}
    ds = ds.take(limit).batch(_BATCH).map(lambda s: tf.io.parse_example(s, spec)[IMAGE_KEY])
    batches = [preprocessing.decode_and_resize(b, image_size).numpy() for b in ds]
    if not batches:
        raise ValueError(f"no examples in {file_pattern}")
    return np.concatenate(batches)


def tflite_scores(model_content: bytes, images: np.ndarray, num_threads: int | None = None) -> np.ndarray:
    """Run the TFLite model on each image [S, S, 3]; return scores [n, N]."""
    interpreter = tf.lite.Interpreter(model_content=model_content, num_threads=num_threads)
    interpreter.allocate_tensors()
    [inp] = interpreter.get_input_details()
    [out] = interpreter.get_output_details()
    rows = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[np.newaxis].astype(np.float32))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.stack(rows)


def saved_model_scores(export_dir: str, file_pattern: str | Sequence[str], limit: int) -> np.ndarray:
    """The exported SavedModel's serving_default scores [n, N] on the first `limit` raw examples."""
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    batches = data.raw_examples(file_pattern).take(limit).batch(_BATCH)
    return np.concatenate([serve(examples=b)["scores"].numpy() for b in batches])


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose argmax is the same in both [n, N] score arrays."""
    if a.shape != b.shape:
        raise ValueError(f"score arrays differ in shape: {list(a.shape)} vs {list(b.shape)}")
    return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))


def contract(
    model_content: bytes, backbone: str, image_size: int, class_names: Sequence[str], quantization: str
) -> dict[str, Any]:
    """What a device must feed the TFLite model and how to read its output, from the model itself."""
    interpreter = tf.lite.Interpreter(model_content=model_content)
    [inp] = interpreter.get_input_details()
    [out] = interpreter.get_output_details()
    if list(out["shape"]) != [1, len(class_names)]:
        raise ValueError(f"TFLite output shape {list(out['shape'])} != [1, {len(class_names)}] classes")
    spec = backbones.get(backbone)
    return {
        "file": TFLITE_FILE,
        "quantization": quantization,
        "backbone": backbone,
        "input": {
            "name": inp["name"],
            "shape": [int(d) for d in inp["shape"]],
            "dtype": np.dtype(inp["dtype"]).name,
            "layout": "NHWC",
            "channel_order": "RGB",
            "value_range": [0.0, 255.0],
            "decode": "to 3-channel RGB: grayscale replicated, a PNG's transparency composited onto white (other formats' alpha dropped), the first frame of a GIF",
            "resize": {
                "size": [image_size, image_size],
                "method": preprocessing.RESIZE_METHOD,
                "antialias": preprocessing.RESIZE_ANTIALIAS,
                "keep_aspect_ratio": False,
                "crop": None,
                "function": "tf.image.resize(float32 image, size, method, antialias)",
            },
            "normalisation": (
                f"inside the model: tf_keras.applications.{spec.module}.preprocess_input "
                "(do not normalise before feeding)"
            ),
        },
        "output": {
            "name": out["name"],
            "shape": [int(d) for d in out["shape"]],
            "dtype": np.dtype(out["dtype"]).name,
            "meaning": "class probabilities; index i is class_names[i]",
        },
        "class_names": list(class_names),
        "reference": "trainer/preprocessing.py decode_and_resize, then the model: the SavedModel's Transform graph",
    }


def export_tflite(
    model: keras.Model,
    class_names: Sequence[str],
    backbone: str,
    image_size: int,
    quantization: str,
    export_dir: str,
    train_files: str | Sequence[str],
    eval_files: str | Sequence[str],
    seed: int = 42,
) -> TFLiteResult:
    """Convert, write model.tflite and its contract into export_dir/assets.extra, check agreement.

    `export_dir` is the exported SavedModel (the agreement reference). Returns
    the result; call `.check()` to fail on a low agreement.
    """
    representative = np.zeros((0,))
    if quantization == "int8":
        representative = resized_images(train_files, image_size, REPRESENTATIVE_IMAGES, seed=seed)
    content = convert(model, backbone, image_size, len(class_names), quantization, representative)
    path, contract_path = tflite_paths(export_dir)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(content)
    with tf.io.gfile.GFile(contract_path, "w") as f:
        json.dump(contract(content, backbone, image_size, class_names, quantization), f, indent=2)

    reference = saved_model_scores(export_dir, eval_files, MAX_CHECK_EXAMPLES)
    images = resized_images(eval_files, image_size, MAX_CHECK_EXAMPLES)
    agreement = top1_agreement(tflite_scores(content, images), reference)
    result = TFLiteResult(
        quantization=quantization,
        path=path,
        contract_path=contract_path,
        size_bytes=len(content),
        agreement=agreement,
        examples=len(images),
        min_agreement=MIN_AGREEMENT[quantization],
        representative_images=len(representative),
    )
    log.info(
        "TFLite %s: %.1f KB, top-1 agreement with the SavedModel %.4f on %d eval examples (need %.2f)",
        quantization,
        result.size_bytes / 1024,
        agreement,
        result.examples,
        result.min_agreement,
    )
    return result


def export_for_config(
    params: TrainingConfig,
    model: keras.Model,
    class_names: Sequence[str],
    export_dir: str,
    train_files: str | Sequence[str],
    eval_files: str | Sequence[str],
) -> TFLiteResult | None:
    """export_tflite with the training settings; None when `export_tflite` is off."""
    if not params.export_tflite:
        return None
    return export_tflite(
        model,
        class_names,
        params.backbone,
        params.effective_image_size(),
        params.export_tflite,
        export_dir,
        train_files,
        eval_files,
        seed=params.seed,
    )
