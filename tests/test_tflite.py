"""TFLite export: each quantization converts and agrees with the SavedModel; the contract is the model's,
and a device that follows it (Pillow) feeds the model the pixels the graph does.

One small model per module: MobileNetV2 at 32 px (the session's pre-trained
backbone) with a head trained on digits 0-2, exported as the Trainer does.

Digits 0-2 are among the backbone's source classes, so the head's decisions are
clear: what these tests check is the conversion and the agreement check, and
they need a model whose top-1 answers are not near-ties. On a task the small
backbone transfers to weakly (digits 5-7 on some CPUs' numerics: scores such as
0.38/0.31/0.31), quantization flips near-tied answers and the check rightly
refuses the int8 and dynamic exports.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from PIL import Image

from tests import helpers, image_samples
from trainer import data, export, preprocessing, tflite, train
from trainer import model as model_lib
from trainer.config import ConfigError, TrainingConfig
from trainer.task import parse_custom_config

SIZE = 32
CLASSES = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class Trained:
    model: keras.Model
    class_names: list[str]
    export_dir: str
    train_files: str
    eval_files: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory, source_backbone) -> Trained:
    work = str(tmp_path_factory.mktemp("tflite"))
    items = helpers.digit_images(CLASSES, per_class=50, size=SIZE, seed=3)
    records = helpers.write_split_dataset(os.path.join(work, "data"), items, eval_every=3)
    train_items = [it for i, it in enumerate(items) if i % 3]
    tfo = helpers.analyze_transform(train_items, os.path.join(work, "transform"), image_size=SIZE)
    params = TrainingConfig(
        weights=source_backbone,
        image_size=SIZE,
        batch_size=16,  # the Trainer's defaults otherwise
    )
    train_files, eval_files = os.path.join(records, "train"), os.path.join(records, "eval")
    result = train.train(train_files, eval_files, tfo, params, verbose=0)
    export_dir = export.export_serving_model(
        result.model, tfo, result.class_names, os.path.join(work, "export")
    )
    return Trained(result.model, result.class_names, export_dir, train_files, eval_files)


def _copy(trained: Trained, tmp_path) -> str:
    return shutil.copytree(trained.export_dir, str(tmp_path / "export"))


def _export(trained: Trained, export_dir: str, quantization: str, model: keras.Model | None = None):
    return tflite.export_tflite(
        model or trained.model,
        trained.class_names,
        "MobileNetV2",
        SIZE,
        quantization,
        export_dir,
        trained.train_files,
        trained.eval_files,
    )


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """quantization -> (export dir, TFLiteResult), each converted once per module."""
    done: dict[str, tuple[str, tflite.TFLiteResult]] = {}

    def get(quantization: str) -> tuple[str, tflite.TFLiteResult]:
        if quantization not in done:
            export_dir = _copy(trained, tmp_path_factory.mktemp(quantization))
            done[quantization] = export_dir, _export(trained, export_dir, quantization)
        return done[quantization]

    return get


def _tensor_types(path: str) -> set[str]:
    interpreter = tf.lite.Interpreter(model_path=path)
    return {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}


@pytest.mark.parametrize("quantization", tflite.QUANTIZATIONS)
def test_each_variant_converts_and_agrees_with_the_saved_model(trained, exported, quantization):
    export_dir, result = exported(quantization)
    result.check()  # does not raise
    assert result.passed and result.agreement_beyond_ties >= tflite.MIN_AGREEMENT[quantization]
    assert result.examples == data.count_examples(trained.eval_files)
    assert result.path == os.path.join(export_dir, "assets.extra", "model.tflite")
    assert os.path.getsize(result.path) == result.size_bytes
    assert result.representative_images == (
        min(tflite.REPRESENTATIVE_IMAGES, data.count_examples(trained.train_files))
        if quantization == "int8"
        else 0
    )
    # The quantization really applied: what the flatbuffer stores.
    types = _tensor_types(result.path)
    expected = {"float16": "float16", "dynamic": "int8", "int8": "int8"}[quantization]
    assert expected in types, types
    if quantization == "int8":
        assert "float16" not in types
    # The SavedModel beside it still loads and serves (assets.extra is not read).
    served = tf.saved_model.load(export_dir).signatures[export.PREDICT_IMAGES]
    assert (
        served(images=tf.constant([helpers.digit_images(CLASSES[:1], 1, SIZE)[0][0]]))["scores"].shape[0] == 1
    )


def test_the_contract_is_what_the_converter_produced(trained, exported):
    export_dir, result = exported("dynamic")
    with open(result.contract_path, encoding="utf-8") as f:
        contract = json.load(f)
    interpreter = tf.lite.Interpreter(model_path=result.path)
    [inp], [out] = interpreter.get_input_details(), interpreter.get_output_details()
    assert contract["file"] == "model.tflite" and contract["quantization"] == "dynamic"
    assert contract["input"]["name"] == inp["name"] and contract["output"]["name"] == out["name"]
    assert contract["input"]["shape"] == [1, SIZE, SIZE, 3] == list(inp["shape"])
    assert contract["input"]["dtype"] == np.dtype(inp["dtype"]).name == "float32"
    assert contract["output"]["shape"] == [1, len(trained.class_names)] == list(out["shape"])
    # The class names are the SavedModel's, in output order.
    example = helpers.make_example(helpers.digit_images(CLASSES[1:2], 1, SIZE)[0][0])
    saved = tf.saved_model.load(export_dir).signatures[export.SERVING_DEFAULT](
        examples=tf.constant([example])
    )
    assert contract["class_names"] == [c.decode() for c in saved["classes"].numpy()[0]]
    # Following the contract alone (decode, resize as stated, feed [0, 255] RGB) gives what the
    # agreement check fed (the Transform graph's own decode and resize), and the SavedModel's classes.
    images = [img for img, _ in helpers.digit_images(CLASSES, per_class=4, size=SIZE, seed=9)]
    resize = contract["input"]["resize"]
    fed = [
        tf.image.resize(
            tf.cast(tf.io.decode_image(img, channels=3, expand_animations=False), tf.float32),
            resize["size"],
            method=resize["method"],
            antialias=resize["antialias"],
        ).numpy()
        for img in images
    ]
    np.testing.assert_array_equal(np.stack(fed), preprocessing.decode_and_resize(tf.constant(images), SIZE))
    lite = tflite.tflite_scores(tflite.interpreter(pathlib.Path(result.path).read_bytes()), np.stack(fed))
    serve = tf.saved_model.load(export_dir).signatures[export.SERVING_DEFAULT]
    full = serve(examples=tf.constant([helpers.make_example(i) for i in images]))["scores"].numpy()
    assert tflite.top1_agreement(lite, full) == 1.0


def test_a_disagreeing_tflite_model_fails_the_check_with_a_clear_message(trained, tmp_path):
    """A model whose head always favours one class, converted against the real SavedModel."""
    other = keras.models.clone_model(trained.model)
    other.set_weights(trained.model.get_weights())
    dense = model_lib.head_of(other).layers[-1]
    kernel, bias = dense.get_weights()
    bias[0] += 1e3
    dense.set_weights([kernel, bias])
    result = _export(trained, _copy(trained, tmp_path), "float16", model=other)
    assert not result.passed and result.agreement_beyond_ties < 0.6
    with pytest.raises(tflite.TFLiteAgreementError) as e:
        result.check()
    message = str(e.value)
    assert "TFLite export (float16): top-1 agreement with the SavedModel is " in message
    assert f"on {result.examples} eval examples, below the required 0.98" in message
    # A failed Trainer's output is removed: the message names no path a user would find gone.
    assert result.path not in message and "model.tflite with it, is not kept" in message


def test_a_disagreement_on_a_near_tie_does_not_count_and_a_clear_one_does(tmp_path):
    """The SavedModel's own answer on a near-tie (TFLite's class scored within TIE_MARGIN of its
    top one) is nearly a coin toss: float16's rounding may swap it. A swapped clear answer counts."""
    m = tflite.TIE_MARGIN
    reference = np.array(
        [
            [0.5, 0.5 - m / 2, m / 2],  # near-tie, swapped: not counted
            [0.9, 0.05, 0.05],  # clear, swapped: counted
            [0.6, 0.3, 0.1],  # agreed
            [0.34, 0.33, 0.33],  # near-tie, TFLite picks the third class: not counted
            [0.5 + m / 2, 0.5 - m / 2, 0.0],  # exactly TIE_MARGIN apart, swapped: counted
        ]
    )
    lite = np.array(
        [
            [0.5 - m / 2, 0.5, m / 2],
            [0.05, 0.9, 0.05],
            [0.6, 0.3, 0.1],
            [0.33, 0.33, 0.34],
            [0.5 - m / 2, 0.5 + m / 2, 0.0],
        ]
    )
    assert tflite.top1_agreement(lite, reference) == 0.2
    assert tflite.near_tie_disagreements(lite, reference) == 2
    with pytest.raises(ValueError, match="differ in shape"):
        tflite.near_tie_disagreements(lite[:, :2], reference)

    def result(min_agreement: float) -> tflite.TFLiteResult:
        path = str(tmp_path / "model.tflite")
        return tflite.TFLiteResult("float16", path, path + ".json", 1, 0.2, 5, min_agreement, 0, near_ties=2)

    assert result(0.6).agreement_beyond_ties == pytest.approx(0.6) and result(0.6).passed
    assert result(0.6).to_dict()["agreement_beyond_ties"] == pytest.approx(0.6)
    with pytest.raises(tflite.TFLiteAgreementError) as e:
        result(0.98).check()
    assert "is 0.2000 on 5 eval examples (0.6000 with its 2 disagreements on near-ties" in str(e.value)


def test_the_converters_lines_about_itself_are_dropped_from_stderr_and_nothing_else(trained, capfd):
    """TFLite's C++ code logs, on every conversion, two legacy flags it ignored, and once per
    process absl's note that it logged before its set-up and the XNNPACK delegate's creation:
    nothing about the model. The project's conversion and interpreter leave those lines out."""

    class Double(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)], autograph=False)
        def f(self, x):
            return {"y": x * 2.0}

    # As TensorFlow words them (a new wording fails here, not by a pattern that stops matching).
    capfd.readouterr()
    tf.lite.TFLiteConverter.from_concrete_functions([Double().f.get_concrete_function()]).convert()
    raw = [line for line in capfd.readouterr().err.splitlines() if "Ignored " in line]
    assert len(raw) == 2 and all(tflite.TFLITE_NOISE.search(line.encode()) for line in raw), raw
    for line in (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    ):
        assert tflite.TFLITE_NOISE.search(line.encode()), line
    for kept in (
        "W0000 00:00:1.0 1 tf_tfl_flatbuffer_helpers.cc:390] Ignored an unknown op.",
        "ERROR: Created TensorFlow Lite XNNPACK delegate for CPU failed.",
        "error: 'tf.Conv2D' op is neither a custom op nor a flex op",
    ):
        assert not tflite.TFLITE_NOISE.search(kept.encode()), kept

    content = tflite.convert(trained.model, "MobileNetV2", SIZE, len(trained.class_names), "float16")
    tflite.interpreter(content)
    err = capfd.readouterr().err
    assert "Ignored " not in err and "XNNPACK" not in err and "absl::InitializeLog" not in err, err


def test_export_tflite_is_a_checked_training_setting():
    assert TrainingConfig().export_tflite is None
    assert TrainingConfig(export_tflite="int8").export_tflite == "int8"
    assert TrainingConfig(export_tflite="none").export_tflite is None
    assert TrainingConfig(export_tflite="off").export_tflite is None  # the error names it: accepted
    with pytest.raises(ConfigError, match="export_tflite.*must be float16, dynamic, int8, or none or off"):
        parse_custom_config({"export_tflite": "int4"})
    assert tflite.export_for_config(TrainingConfig(), None, [], "/nowhere", "", "") is None


# ---------------------------------------------------------------------------------------
# A device that follows the contract: Pillow for its decode steps, then its resize.


def _format(data: bytes) -> str:
    """The contract's format name of an encoded file, by its first bytes (as the graph tells them)."""
    magic = {b"\xff\xd8\xff": "jpeg", b"\x89PN": "png", b"GIF": "gif"}
    return magic.get(data[:3]) or ("bmp" if data[:2] == b"BM" else "unknown")


def _device(data: bytes, contract: dict) -> np.ndarray:
    """The float32 [S, S, 3] a device feeds the model when it follows the contract's `input`
    literally, with Pillow: each `decode` step in the order listed, by the step's own fields
    (the JPEG scale by evaluating `rule` on `ratios`, `size` and the stored size; the composite
    onto `background`; the orientation by `tag` and `orientations`), then `resize`. A step it
    does not know fails it."""
    fmt = _format(data)
    image = Image.open(io.BytesIO(data))
    box, pixels = None, None
    for step in contract["input"]["decode"]:
        if step["formats"][fmt] is None:  # nothing to do for this format
            continue
        if step["step"] == "decode":
            if fmt == "jpeg":
                names = {
                    "ratios": step["ratios"],
                    "size": step["size"],
                    "height": image.height,
                    "width": image.width,
                }
                r = eval(step["rule"], {"__builtins__": {"max": max, "min": min}, **names})
                image.draft("RGB", (step["size"], step["size"]))
                assert image.size == (-(-names["width"] // r), -(-names["height"] // r))  # 1/r, rounded up
            if fmt == "gif":
                box = image.tile[0][1]  # the first frame on the screen: before loading
            image.load()
        elif step["step"] == "to_rgb" and (
            fmt == "jpeg" or (fmt == "bmp" and (image.mode != "RGBA" or not np.asarray(image)[..., 3].any()))
        ):  # grey replicated, alpha dropped (a BMP's: no alpha mask, or an alpha that is 0 everywhere)
            pixels = np.asarray(image.convert("RGB"))
        elif step["step"] == "to_rgb":  # PNG, GIF, a BMP's alpha: composited onto the background
            rgba = np.asarray(image.convert("RGBA"), np.float32)
            a = rgba[..., 3:] / np.float32(255)
            background = np.asarray(step["background"], np.float32)
            pixels = np.round(rgba[..., :3] * a + background * (1 - a)).astype(np.uint8)
            if box is not None:  # the screen the GIF's frame does not cover
                covered = np.zeros(pixels.shape[:2], bool)
                covered[box[1] : box[3], box[0] : box[2]] = True
                pixels[~covered] = background.astype(np.uint8)
        elif step["step"] == "orient":
            orientation = image.getexif().get(step["tag"], 1)  # EXIF, else XMP: what exif_transpose reads
            name = step["orientations"].get(str(orientation), {"pillow": None})["pillow"]
            if name is not None:
                pixels = np.asarray(Image.fromarray(pixels).transpose(Image.Transpose[name]))
        else:
            raise AssertionError(f"the device does not know the step {step['step']!r}")
    resize = contract["input"]["resize"]
    resized = tf.image.resize(
        tf.cast(pixels, tf.float32), resize["size"], method=resize["method"], antialias=resize["antialias"]
    )
    return resized.numpy()


def _old_sentence_device(data: bytes, contract: dict) -> np.ndarray:
    """What the one-sentence contract (version 1) told a device: "to 3-channel RGB: grayscale
    replicated, a PNG's transparency composited onto white (other formats' alpha dropped), the
    first frame of a GIF", then the resize: no DCT scale, no orientation."""
    rgba = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"), np.float32)
    a = rgba[..., 3:] / np.float32(255)
    rgb = np.round(rgba[..., :3] * a + 255 * (1 - a))
    resize = contract["input"]["resize"]
    return tf.image.resize(
        rgb, resize["size"], method=resize["method"], antialias=resize["antialias"]
    ).numpy()


_XMP_APP1 = b"http://ns.adobe.com/xap/1.0/\0"


def _xmp_oriented_jpeg(pixels: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose only orientation is XMP's tiff:Orientation (an APP1 XMP packet, no EXIF)."""
    packet = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-'
        b'syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="%d"/>'
        b"</rdf:RDF></x:xmpmeta>" % orientation
    )
    jpeg = image_samples.jpeg(pixels, quality=90)
    return image_samples.with_segment(jpeg, image_samples.app1(_XMP_APP1 + packet), after_app0=True)


def _placed_gif(screen: tuple[int, int], left: int, top: int, transparency: int | None) -> bytes:
    """A one-frame GIF (Pillow's writer) of 12 x 20 palette pixels whose logical screen is
    `screen` (width, height) and whose frame sits at (left, top)."""
    indices = np.random.default_rng(5).integers(0, 3, (12, 20), dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette([20, 40, 200, 250, 120, 0, 0, 0, 0] + [0, 0, 0] * 253)
    buffer = io.BytesIO()
    options = {} if transparency is None else {"transparency": transparency}
    image.save(buffer, format="GIF", optimize=False, **options)
    return image_samples.gif_placed(buffer.getvalue(), screen, left, top)


# The most a device's pixels may differ from the graph's: nothing. JPEGs at every DCT scale: the
# graph and Pillow both decode with libjpeg's accurate IDCT (JDCT_ISLOW; TensorFlow's default fast
# one was up to 3 levels apart after the resize at r = 1 and 2, and changed answers). PNG, GIF and
# BMP decode losslessly. All must be equal, bit for bit.
_IDCT_TOLERANCE = 0.0


def _device_cases() -> dict[str, tuple[bytes, float, bool]]:
    """name -> (encoded image, tolerance, oriented). sklearn's two 427 x 640 sample photos, cut
    to sizes that take the graph's JPEG decode to each DCT scale at 32 px."""
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    exif = image_samples.pillow_exif
    rgba = np.dstack([flower[100:160, 200:290], np.tile(np.linspace(0, 255, 90).astype(np.uint8), (60, 1))])
    rgba[:20, :, 3] = 128  # half transparent
    grey = np.asarray(Image.fromarray(china[100:160, 300:390]).convert("L"))
    bmp = io.BytesIO()
    Image.fromarray(np.dstack([china[:30, :50], np.full((30, 50), 77, np.uint8)]), "RGBA").save(bmp, "BMP")
    return {
        # 200 x 300: 200 // 4 >= 32 > 200 // 8, so r = 4.
        "JPEG 200 x 300 at 1/4, EXIF orientation 6": (
            image_samples.jpeg(china[:200, :300], quality=90, exif=exif(6)),
            0.0,
            True,
        ),
        # 100 x 150: r = 2.
        "JPEG 100 x 150 at 1/2, EXIF orientation 8": (
            image_samples.jpeg(flower[100:200, 150:300], quality=90, exif=exif(8)),
            _IDCT_TOLERANCE,
            True,
        ),
        "JPEG 427 x 640 at 1/8, XMP orientation 5": (_xmp_oriented_jpeg(china, 5), 0.0, True),
        "JPEG 24 x 40 (under the size: r = 1), EXIF orientation 3": (
            image_samples.jpeg(flower[:24, :40], quality=90, exif=exif(3)),
            _IDCT_TOLERANCE,
            True,
        ),
        "PNG, eXIf orientation 6": (image_samples.png(china[50:110, 100:190], exif=exif(6)), 0.0, True),
        "grayscale PNG": (image_samples.png(grey), 0.0, False),
        "RGBA PNG, half transparent": (image_samples.png(rgba), 0.0, False),
        "GIF frame inside its screen, no transparency": (_placed_gif((30, 20), 6, 5, None), 0.0, False),
        "GIF frame reaching past its screen, transparency": (_placed_gif((15, 10), 5, 4, 2), 0.0, False),
        "32-bit BMP with alpha": (bmp.getvalue(), 0.0, False),
        "32-bit BMP with an alpha mask (V4 header)": (
            image_samples.bmp_masked(
                china[:30, :50], (0xFF0000, 0xFF00, 0xFF, 0xFF000000), 108, alpha=rgba[:30, :50, 3]
            ),
            0.0,
            False,
        ),
    }


def test_a_device_following_the_contract_feeds_the_pixels_the_graph_feeds(exported):
    """Following the contract file as written (decode steps with Pillow, then the stated resize)
    gives the pixels trainer.preprocessing.decode_and_resize feeds the model in training and
    serving. The version-1 sentence left out the JPEG scale and the orientation: a device
    following it fed a photo stored sideways sideways."""
    _, result = exported("dynamic")
    with open(result.contract_path, encoding="utf-8") as f:
        contract = json.load(f)
    assert contract["contract_version"] == tflite.CONTRACT_VERSION == 2
    steps = contract["input"]["decode"]
    assert [step["step"] for step in steps] == ["decode", "to_rgb", "orient"]
    for step in steps:  # the documented shape: per format, what it does and the calls, or null
        assert list(step["formats"]) == ["jpeg", "png", "gif", "bmp"], step["step"]
        for how in filter(None, step["formats"].values()):
            assert {"does", "tensorflow", "pillow"} <= set(how), step["step"]
    assert steps[0]["ratios"] == list(preprocessing.JPEG_RATIOS) and steps[0]["size"] == SIZE
    assert contract["input"]["resize"]["size"] == [SIZE, SIZE]
    cases = _device_cases()
    graph = preprocessing.decode_and_resize(tf.constant([encoded for encoded, _, _ in cases.values()]), SIZE)
    for (name, (encoded, tolerance, oriented)), fed in zip(cases.items(), graph.numpy(), strict=True):
        np.testing.assert_allclose(_device(encoded, contract), fed, rtol=0, atol=tolerance, err_msg=name)
        if oriented:  # what the version-1 contract told a device is far off
            assert np.abs(_old_sentence_device(encoded, contract) - fed).max() > 50, name


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_contracts_orientations_are_pillows_and_the_graphs(orientation):
    """Each `orientations` entry is the transpose PIL.ImageOps.exif_transpose applies for that
    EXIF value, and what trainer.preprocessing.apply_orientation does."""
    pixels = image_samples.asymmetric_image()
    name, _ = tflite.ORIENTATIONS[orientation]
    stated = pixels if name is None else np.asarray(Image.fromarray(pixels).transpose(Image.Transpose[name]))
    pillow = image_samples.upright(image_samples.png(pixels, exif=image_samples.pillow_exif(orientation)))
    np.testing.assert_array_equal(stated, pillow)
    np.testing.assert_array_equal(stated, preprocessing.apply_orientation(tf.constant(pixels), orientation))
