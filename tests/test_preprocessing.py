"""preprocessing_fn through TFT on Beam: formats, modes and sizes -> one normalised shape."""

import io
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from PIL import Image
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from tests import helpers
from trainer import backbones
from trainer.features import IMAGE_KEY, IMAGE_XF, LABEL_KEY, LABEL_VOCAB, LABEL_XF
from trainer.preprocessing import decode_and_resize, preprocessing_fn

SIZE = 32


def _photo(h, w, seed):
    rng = np.random.RandomState(seed)
    base = np.linspace(0, 255, h * w * 3).reshape(h, w, 3)
    return np.clip(base + rng.randint(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def _inputs():
    """(encoded bytes, label, expected RGB uint8 array as decoded) of mixed formats and sizes."""
    out = []
    rgb = _photo(40, 60, 0)
    out.append((helpers.encode_image(rgb, "PNG"), "png_rgb", rgb))
    gray = _photo(50, 30, 1)[..., 0]
    out.append((helpers.encode_image(gray, "PNG"), "png_gray", np.repeat(gray[..., None], 3, -1)))
    rgba = np.concatenate([_photo(33, 47, 2), np.full((33, 47, 1), 128, np.uint8)], -1)
    out.append((helpers.encode_image(rgba, "PNG"), "png_rgba", rgba[..., :3]))
    jpeg = helpers.encode_image(_photo(64, 48, 3), "JPEG")
    # JPEG decoders legitimately differ by a few levels (IDCT, chroma upsampling):
    # the reference decode is libjpeg's, as TensorFlow ships it.
    out.append((jpeg, "jpeg", tf.io.decode_jpeg(jpeg, channels=3).numpy()))
    return out


def _expected(rgb: np.ndarray, backbone: str) -> np.ndarray:
    resized = tf.image.resize(rgb.astype(np.float32)[None], [SIZE, SIZE], antialias=True)
    return backbones.get(backbone).preprocess_input(resized).numpy()[0]


@pytest.mark.parametrize("backbone", ["MobileNetV2", "ResNet50", "DenseNet121"])
def test_preprocessing_fn_through_tft(backbone):
    items = _inputs()
    spec = {IMAGE_KEY: tf.io.FixedLenFeature([], tf.string), LABEL_KEY: tf.io.FixedLenFeature([], tf.string)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    rows = [{IMAGE_KEY: img, LABEL_KEY: lab.encode()} for img, lab, _ in items]
    cfg = {"backbone": backbone, "image_size": SIZE}
    out_dir = tempfile.mkdtemp()
    with tft_beam.Context(temp_dir=tempfile.mkdtemp(), force_tf_compat_v1=False):
        (transformed, _), transform_fn = (rows, metadata) | tft_beam.AnalyzeAndTransformDataset(
            lambda inputs: preprocessing_fn(inputs, cfg)
        )
        _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
    vocab = [v.decode() for v in tft.TFTransformOutput(out_dir).vocabulary_by_name(LABEL_VOCAB)]
    assert sorted(vocab) == sorted(lab for _, lab, _ in items)
    assert len(transformed) == len(items)
    expected = {lab: _expected(rgb, backbone) for _, lab, rgb in items}
    for row in transformed:
        image = np.asarray(row[IMAGE_XF], np.float32).reshape(SIZE, SIZE, 3)
        label = vocab[int(np.asarray(row[LABEL_XF]).reshape(-1)[0])]
        np.testing.assert_allclose(image, expected[label], rtol=1e-4, atol=1e-3, err_msg=label)


def test_decode_works_on_rank1_batch_of_any_length():
    png = helpers.encode_image(_photo(10, 20, 4), "PNG")
    for n in (1, 3):
        out = decode_and_resize(tf.constant([png] * n), SIZE)
        assert out.shape == (n, SIZE, SIZE, 3)
    assert decode_and_resize(tf.constant([], tf.string), SIZE).shape == (0, SIZE, SIZE, 3)


def test_gif_and_bmp_decode_to_rgb():
    rgb = _photo(16, 16, 5)
    for fmt in ("GIF", "BMP"):
        encoded = helpers.encode_image(rgb, fmt)
        expected = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
        out = decode_and_resize(tf.constant([encoded]), 16).numpy()[0]
        np.testing.assert_allclose(out, expected.astype(np.float32), atol=1e-3)


def test_undecodable_bytes_raise():
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_and_resize(tf.constant([b"not an image"]), SIZE)
