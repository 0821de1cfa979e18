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
device side, and the contract file says exactly how, so that a device feeds the
pixels training and serving saw (trainer/preprocessing.py `decode_and_resize`);
the values that are the code's (JPEG_RATIOS, RESIZE_METHOD, RESIZE_ANTIALIAS,
the image size) are taken from it, not retyped.

The contract (model.tflite.json), contract_version 2:

- `file`, `quantization`, `backbone`;
- `input`: `name`, `shape` [1, S, S, 3], `dtype` float32, `layout` NHWC,
  `channel_order` RGB, `value_range` [0, 255], then how to get there from an
  encoded file:
  - `decode` (`decode_steps`): an ordered list of steps, each an object with
    `step` (its name), `does` (what it does, in words), `formats` (`jpeg`,
    `png`, `gif`, `bmp`: each an object with its own `does` and the
    `tensorflow` and `pillow` calls that reproduce it, and a `pillow_note`
    where Pillow differs; null where the step leaves that format alone) and the
    step's own fields:
    1. `decode`: the file's first image as stored, a JPEG at libjpeg's DCT
       scale 1/r: `ratios` (JPEG_RATIOS), `size` (S) and `rule`, a Python
       expression over `ratios`, `size`, `height` and `width` (the JPEG's
       stored size) whose value is r;
    2. `to_rgb`: uint8 RGB: grayscale replicated, a PNG's or GIF's
       transparency composited onto `background` (white) by `composite`, a
       GIF's frame placed on its screen, a BMP's alpha where a mask names it;
    3. `orient`: the EXIF Orientation (`tag`; else XMP's) of a JPEG or PNG,
       applied as PIL.ImageOps.exif_transpose applies it; `orientations` maps
       each value "1".."8" to its PIL.Image.Transpose member (`pillow`, null
       for none) and `does`;
  - `resize`: `size` [S, S], `method`, `antialias`, `keep_aspect_ratio`
    false, `crop` null, `function` (tf.image.resize on the float32 image);
  - `normalisation`: none on the device (inside the model);
- `output`: `name`, `shape` [1, N], `dtype`, `meaning`;
- `class_names` in output order; `reference`: the code that defines it all.

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
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer import backbones, data, preprocessing, stdio, tracing
from trainer.config import TrainingConfig
from trainer.features import IMAGE_KEY, counted
from trainer.model import class_scores, fold_standardization

log = logging.getLogger(__name__)

QUANTIZATIONS = ("float16", "dynamic", "int8")
FLOAT32 = "float32"  # no quantization: the baseline benchmarks/tflite.py compares against
MIN_AGREEMENT = {FLOAT32: 0.98, "float16": 0.98, "dynamic": 0.98, "int8": 0.95}
# A disagreement on a near-tie does not count against the agreement: the SavedModel scores the
# class TFLite picked within this much (a probability) of its own top class, so its own answer
# there is nearly a coin toss. float16 moved a 3-class MobileNetV2 head's scores by up to 0.021
# (median 0.001) here, enough to swap two classes scored within ~0.04; a conversion that breaks
# the model swaps clear answers too.
TIE_MARGIN = 0.05
TFLITE_DIR = "assets.extra"
TFLITE_FILE = "model.tflite"
CONTRACT_FILE = "model.tflite.json"
CONTRACT_VERSION = 2  # 2: `input.decode` is the list of steps (`decode_steps`); 1 was one sentence
REPRESENTATIVE_IMAGES = 200  # train images that calibrate int8 ranges
MAX_CHECK_EXAMPLES = 2000  # eval examples of the agreement check (the first ones)
_BATCH = 64
_SHUFFLE_BUFFER = 4096


def agreement_beyond_ties(agreement: float, near_ties: int, examples: int) -> float:
    """The agreement with the near-tie disagreements (near_tie_disagreements) counted as agreeing."""
    return agreement + (near_ties / examples if examples else 0.0)


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
    near_ties: int = 0  # disagreements where the SavedModel's scores are within TIE_MARGIN

    @property
    def agreement_beyond_ties(self) -> float:
        """The agreement the check holds to min_agreement."""
        return agreement_beyond_ties(self.agreement, self.near_ties, self.examples)

    @property
    def passed(self) -> bool:
        return self.agreement_beyond_ties >= self.min_agreement

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "tie_margin": TIE_MARGIN,
            "agreement_beyond_ties": self.agreement_beyond_ties,
            "passed": self.passed,
        }

    def check(self) -> None:
        """Raise TFLiteAgreementError when the agreement is below the threshold."""
        if not self.passed:
            ties = (
                f" ({self.agreement_beyond_ties:.4f} with its {counted(self.near_ties, 'disagreement')} "
                f"on near-ties counted as agreeing)"
                if self.near_ties
                else ""
            )
            raise TFLiteAgreementError(
                f"TFLite export ({self.quantization}): top-1 agreement with the SavedModel is "
                f"{self.agreement:.4f} on {self.examples} eval examples{ties}, below the required "
                f"{self.min_agreement:.2f}: the converted model does not classify like the served "
                f"model (try another export_tflite mode, or none; the failed Trainer's output, "
                f"{os.path.basename(self.path)} with it, is not kept)"
            )


# What TensorFlow Lite's C++ code logs on every conversion and interpreter start, about its own
# code: the converter's two ignored legacy flags, absl's note that those lines came before its
# log was set up, and the XNNPACK delegate's creation. Only these lines are dropped from stderr.
TFLITE_NOISE = re.compile(
    rb"(\] Ignored (output_format|drop_control_dependency)\.$"
    rb"|^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    rb"|^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$)"
)


def interpreter(model_content: bytes, num_threads: int | None = None) -> tf.lite.Interpreter:
    """A TFLite interpreter of `model_content` with its tensors allocated."""
    with stdio.stderr_without(TFLITE_NOISE):
        made = tf.lite.Interpreter(model_content=model_content, num_threads=num_threads)
        made.allocate_tensors()
    return made


def tflite_paths(export_dir: str) -> tuple[str, str]:
    """(model.tflite, its contract JSON) inside a SavedModel directory."""
    return os.path.join(export_dir, TFLITE_DIR, TFLITE_FILE), os.path.join(
        export_dir, TFLITE_DIR, CONTRACT_FILE
    )


def inference_function(model: keras.Model, backbone: str, image_size: int, num_classes: int):
    """float32 RGB [1, S, S, 3] in [0, 255] -> {'scores': [1, N]}: what the TFLite model computes."""
    spec = backbones.get(backbone)

    # No AutoGraph: a functional Keras model and the backbone's preprocess_input (whose module
    # lookup, converted, sent AutoGraph into importlib and printed its warnings) hold no
    # Python control flow on tensors.
    @tf.function(
        input_signature=[tf.TensorSpec([1, image_size, image_size, 3], tf.float32, name="image")],
        autograph=False,
    )
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
    with stdio.stderr_without(TFLITE_NOISE):
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


def tflite_scores(lite: tf.lite.Interpreter, images: np.ndarray) -> np.ndarray:
    """Run the TFLite model (an `interpreter`) on each image [S, S, 3]; return scores [n, N]."""
    [inp] = lite.get_input_details()
    [out] = lite.get_output_details()
    rows = []
    for image in images:
        lite.set_tensor(inp["index"], image[np.newaxis].astype(np.float32))
        lite.invoke()
        rows.append(lite.get_tensor(out["index"])[0].copy())
    return np.stack(rows)


def saved_model_scores(export_dir: str, file_pattern: str | Sequence[str], limit: int) -> np.ndarray:
    """The exported SavedModel's serving_default scores [n, N] on the first `limit` raw examples."""
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    batches = data.raw_examples(file_pattern).take(limit).batch(_BATCH)
    return np.concatenate([serve(examples=b)["scores"].numpy() for b in batches])


def _top1(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's argmax in two [n, N] score arrays of one shape."""
    if a.shape != b.shape:
        raise ValueError(f"score arrays differ in shape: {list(a.shape)} vs {list(b.shape)}")
    return np.argmax(a, axis=1), np.argmax(b, axis=1)


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose argmax is the same in both [n, N] score arrays."""
    first, second = _top1(a, b)
    return float(np.mean(first == second))


def near_tie_disagreements(lite: np.ndarray, reference: np.ndarray, margin: float = TIE_MARGIN) -> int:
    """How many rows the two [n, N] score arrays disagree on (argmax) where `reference` scores
    `lite`'s class within `margin` of its own top class."""
    theirs, ours = _top1(lite, reference)
    rows = np.arange(len(reference))
    gap = reference[rows, ours] - reference[rows, theirs]
    return int(np.sum((ours != theirs) & (gap < margin)))


# The JPEG scale as a Python expression over the contract's `ratios` and `size` and the JPEG's
# stored `height` and `width`: preprocessing's _jpeg_ratio_index (the largest ratio that keeps
# both sides >= size; the smallest when none does). JPEG_RATIOS is ascending.
JPEG_RATIO_RULE = (
    f"max((r for r in ratios if min(height, width) // r >= size), default={preprocessing.JPEG_RATIOS[0]})"
)
EXIF_ORIENTATION_TAG = 0x0112
# EXIF Orientation -> (the PIL.Image.Transpose member PIL.ImageOps.exif_transpose applies, in
# words). tests/test_tflite.py checks each against Pillow and trainer.preprocessing.apply_orientation.
ORIENTATIONS = {
    1: (None, "as stored"),
    2: ("FLIP_LEFT_RIGHT", "mirror left-right"),
    3: ("ROTATE_180", "turn 180 degrees"),
    4: ("FLIP_TOP_BOTTOM", "flip upside down"),
    5: ("TRANSPOSE", "transpose: mirror along the top-left to bottom-right diagonal"),
    6: ("ROTATE_270", "turn 90 degrees clockwise"),
    7: ("TRANSVERSE", "transverse: mirror along the top-right to bottom-left diagonal"),
    8: ("ROTATE_90", "turn 90 degrees counter-clockwise"),
}
_COMPOSITE_TF = (
    "rgba = tf.cast(tf.io.decode_png(data, channels=4), tf.float32); a = rgba[..., 3:] / 255.0; "
    "rgb = tf.round(rgba[..., :3] * a + 255.0 * (1.0 - a))"
)
_COMPOSITE_PILLOW = (
    "rgba = numpy.asarray(image.convert('RGBA'), numpy.float32); a = rgba[..., 3:] / numpy.float32(255); "
    "rgb = numpy.round(rgba[..., :3] * a + numpy.float32(255) * (1 - a))"
)


def decode_steps(image_size: int) -> list[dict[str, Any]]:
    """The contract's `input.decode`: what trainer/preprocessing.py `decode_image` does to an
    encoded file before the resize, as ordered steps a device can follow (module docstring).

    Each step: `step` (its name), `does` (in words), `formats` (per format an object with its
    own `does`, `tensorflow` and `pillow`, or null where the step leaves that format alone),
    and the step's own values. `tensorflow` reproduces the graph's pixels; `pillow` gives them
    too, except where a `pillow_note` says otherwise.
    """
    ratios = [int(r) for r in preprocessing.JPEG_RATIOS]
    oriented = {
        "tensorflow": (
            "trainer.preprocessing.apply_orientation(image, trainer.preprocessing.exif_orientation(data)) "
            "(no TensorFlow op reads EXIF)"
        ),
        "pillow": "image = PIL.ImageOps.exif_transpose(image)  # after the decode step's draft",
    }
    return [
        {
            "step": "decode",
            "does": (
                "Decode the file's first image as stored (before any orientation). The format is the "
                "file's content (JPEG, PNG, GIF or BMP by its first bytes), not its name; anything else is "
                "refused. A JPEG is decoded at libjpeg's DCT scale 1/r, r = `rule` evaluated with "
                "`ratios`, `size` and the JPEG's stored `height` and `width` (its SOF header): the largest "
                "ratio that keeps both sides >= size, the smallest when none does. That gives ceil(height / r) x "
                "ceil(width / r) pixels, which the resize then takes to size x size."
            ),
            "ratios": ratios,
            "size": int(image_size),
            "rule": JPEG_RATIO_RULE,
            "formats": {
                "jpeg": {
                    "does": "decoded at scale 1/r, grayscale replicated to 3 channels",
                    "tensorflow": "tf.io.decode_jpeg(data, channels=3, ratio=r, dct_method='INTEGER_ACCURATE')",
                    "pillow": "image = PIL.Image.open(f); image.draft('RGB', (size, size))",
                    "pillow_note": (
                        "draft picks the same r (the largest of 1, 2, 4, 8 <= min(width // size, height // "
                        "size)); both decode with libjpeg's accurate integer IDCT (JDCT_ISLOW), so the "
                        "pixels are the same at every r. TensorFlow's default dct_method (JDCT_IFAST) is "
                        "not: up to 16 levels apart at r = 1"
                    ),
                },
                "png": {
                    "does": "decoded; 16-bit samples become 8-bit by their high byte (value >> 8)",
                    "tensorflow": "tf.io.decode_png(data, channels=4)",
                    "pillow": "image = PIL.Image.open(f)",
                    "pillow_note": (
                        "Pillow opens a 16-bit grey PNG as mode 'I;16', whose convert clips at 255: take "
                        "its high byte instead"
                    ),
                },
                "gif": {
                    "does": "its first frame only, and where that frame lies on the logical screen",
                    "tensorflow": "trainer.preprocessing.gif_on_white(data) (decode, to_rgb and all)",
                    "pillow": (
                        "image = PIL.Image.open(f); box = image.tile[0][1]  # the first frame's (left, top, "
                        "right, bottom) on the screen, read before the pixels are loaded"
                    ),
                },
                "bmp": {
                    "does": (
                        "8-, 24- and 32-bit BMPs with a Windows header (40 to 124 bytes); bytes after the "
                        "rows ignored; refused: 1-, 4- and 16-bit, OS/2 headers, compressed (RLE, JPEG or "
                        "PNG inside), bit masks other than one whole byte per channel, and 8-bit BMPs whose "
                        "colour table is not the grey ramp (entry i = (i, i, i)): palette images"
                    ),
                    "tensorflow": (
                        "tf.io.decode_bmp(data, channels=4) after trainer.preprocessing.bmp_or_unknown's "
                        "checks (which refuse what decode_bmp would misread)"
                    ),
                    "pillow": "image = PIL.Image.open(f)  # refuse mode 'P'",
                },
            },
        },
        {
            "step": "to_rgb",
            "does": (
                "Make it uint8 RGB [H, W, 3]: grayscale replicated to the 3 channels; a PNG's or GIF's "
                "transparency composited onto white by `composite` (a = alpha / 255; opaque pixels are "
                "unchanged); a BMP's alpha composited the same way where an alpha mask names it (V3-V5 "
                "headers, BI_ALPHABITFIELDS) and its alpha is not 0 everywhere, dropped otherwise. For "
                "JPEG and PNG it changes each pixel alone, so it "
                "may come after `orient` as well."
            ),
            "background": [255, 255, 255],
            "composite": (
                "round(rgb * a + 255 * (1 - a)), a = alpha / 255, in float32, rounding halves to even "
                "(tf.round, numpy.round)"
            ),
            "formats": {
                "jpeg": {
                    "does": "already RGB (grayscale replicated by the decode)",
                    "tensorflow": "nothing more: the decode step's tf.io.decode_jpeg(data, channels=3, ...) gave RGB",
                    "pillow": "image = image.convert('RGB')",
                },
                "png": {
                    "does": (
                        "grey, grey with alpha, palette, RGB or RGBA; transparency (an alpha channel, or a "
                        "tRNS chunk: a palette's or one colour's) composited onto white"
                    ),
                    "tensorflow": _COMPOSITE_TF,
                    "pillow": _COMPOSITE_PILLOW,
                },
                "gif": {
                    "does": (
                        "the first frame placed on the logical screen at its offset, the screen grown to "
                        "cover the frame where the frame reaches past it; its transparent colour and the "
                        "screen area the frame does not cover are white (GIF transparency is all or "
                        "nothing: the composite gives white)"
                    ),
                    "tensorflow": "trainer.preprocessing.gif_on_white(data)",
                    "pillow": (
                        f"{_COMPOSITE_PILLOW}; then every pixel outside `box` = 255 (Pillow fills the "
                        "uncovered screen with the background colour when the GIF has no transparent colour)"
                    ),
                },
                "bmp": {
                    "does": (
                        "8-bit (grey): replicated; 24- and 32-bit: R, G, B where the bit masks put them "
                        "(B, G, R without masks); alpha composited onto white where an alpha mask names a "
                        "byte and some pixel's alpha is not 0 (an alpha that is 0 everywhere is taken as "
                        "none, as browsers take it), dropped otherwise"
                    ),
                    "tensorflow": (
                        "tf.gather(decoded, [the channels its R, G, B and alpha masks name], axis=2) for a "
                        "BMP with bit masks, then the composite, else tf.io.decode_bmp(data, channels=3) "
                        "(trainer.preprocessing.bmp_or_unknown)"
                    ),
                    "pillow": (
                        "image = image.convert('RGB') when Pillow opens it as RGB or its alpha is 0 "
                        f"everywhere; opened as RGBA (an alpha mask): {_COMPOSITE_PILLOW}"
                    ),
                    "pillow_note": (
                        "Pillow reads the common bit-mask layouts only (B, G, R, A and A, B, G, R; R, G, B, "
                        "A in a V4/V5 header); the graph reads any whole-byte one"
                    ),
                },
            },
        },
        {
            "step": "orient",
            "does": (
                "Turn the decoded image (at its DCT scale) upright, before the resize, exactly as "
                "PIL.ImageOps.exif_transpose does: by the EXIF Orientation tag (`tag`, in IFD0); without "
                "that tag, by XMP's tiff:Orientation; absent, unreadable or outside 1..8: as stored. "
                "`orientations` says what each value does."
            ),
            "tag": EXIF_ORIENTATION_TAG,
            "orientations": {
                str(value): {"pillow": name, "does": words} for value, (name, words) in ORIENTATIONS.items()
            },
            "formats": {
                "jpeg": {
                    "does": (
                        "EXIF: the first APP1 'Exif' segment before the scan; XMP: the last APP1 XMP "
                        "packet before the scan"
                    ),
                    **oriented,
                },
                "png": {
                    "does": (
                        "EXIF: the eXIf chunk (the last, before or after the image data up to IEND); XMP: "
                        "the last tEXt or uncompressed iTXt chunk with the keyword XML:com.adobe.xmp"
                    ),
                    **oriented,
                },
                "gif": None,
                "bmp": None,
            },
        },
    ]


def contract(
    lite: tf.lite.Interpreter, backbone: str, image_size: int, class_names: Sequence[str], quantization: str
) -> dict[str, Any]:
    """What a device must feed the TFLite model (an `interpreter`) and how to read its output,
    from the model itself."""
    [inp] = lite.get_input_details()
    [out] = lite.get_output_details()
    if list(out["shape"]) != [1, len(class_names)]:
        raise ValueError(f"TFLite output shape {list(out['shape'])} != [1, {len(class_names)}] classes")
    spec = backbones.get(backbone)
    return {
        "contract_version": CONTRACT_VERSION,
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
            "decode": decode_steps(image_size),
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
        "reference": (
            "trainer/preprocessing.py decode_and_resize (decode_image, then the resize), then the model: "
            "the SavedModel's Transform graph"
        ),
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
    lite = interpreter(content)  # read by the contract, then run for the agreement check
    path, contract_path = tflite_paths(export_dir)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(content)
    with tf.io.gfile.GFile(contract_path, "w") as f:
        json.dump(contract(lite, backbone, image_size, class_names, quantization), f, indent=2)

    reference = saved_model_scores(export_dir, eval_files, MAX_CHECK_EXAMPLES)
    images = resized_images(eval_files, image_size, MAX_CHECK_EXAMPLES)
    scores = tflite_scores(lite, images)
    agreement = top1_agreement(scores, reference)
    result = TFLiteResult(
        quantization=quantization,
        path=path,
        contract_path=contract_path,
        size_bytes=len(content),
        agreement=agreement,
        examples=len(images),
        min_agreement=MIN_AGREEMENT[quantization],
        representative_images=len(representative),
        near_ties=near_tie_disagreements(scores, reference),
    )
    log.info(
        "TFLite %s: %.1f KB, top-1 agreement with the SavedModel %.4f on %d eval examples%s (need %.2f)",
        quantization,
        result.size_bytes / 1024,
        agreement,
        result.examples,
        f", {counted(result.near_ties, 'disagreement')} on near-ties (scores within {TIE_MARGIN})"
        if result.near_ties
        else "",
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
