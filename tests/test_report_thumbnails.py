"""The report's thumbnails show what the model saw: the pipeline's decode, not Pillow's.

Pillow's plain convert("RGB") ignores the EXIF orientation (a phone photo shows sideways) and
clips a 16-bit greyscale PNG to near white; trainer.preprocessing.decode_image applies the one
and scales the other, so the thumbnail must equal its output, fitted as before.
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from imgpipe.report import build, figures
from tests import image_samples as samples
from tests.test_report import _report_data
from trainer import preprocessing


def _fit(pixels: np.ndarray, size: int = figures.THUMBNAIL_PX) -> np.ndarray:
    """`pixels` fitted in size x size as the thumbnail always was (NEAREST up, LANCZOS down)."""
    image = Image.fromarray(pixels, "RGB")
    scale = size / max(image.size)
    method = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    target = (max(1, math.floor(image.width * scale)), max(1, math.floor(image.height * scale)))
    return np.asarray(ImageOps.contain(image, target, method=method))


def _pipeline(data: bytes, size: int = figures.THUMBNAIL_PX) -> np.ndarray:
    """The thumbnail of what the model sees (the pipeline's decoder, eagerly)."""
    return _fit(preprocessing.decode_image(tf.constant(data), size).numpy(), size)


def _pillow(data: bytes, size: int = figures.THUMBNAIL_PX) -> np.ndarray:
    """The thumbnail the report used to draw: Pillow's plain convert("RGB")."""
    with Image.open(io.BytesIO(data)) as image:
        return _fit(np.asarray(image.convert("RGB")), size)


def _thumbnail(data: bytes, tmp_path, **kwargs) -> np.ndarray:
    path = str(tmp_path / "thumb.png")
    figures.thumbnail(data, path, **kwargs)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image)


@pytest.mark.parametrize("height, width", [(40, 64), (150, 240)])  # enlarged; reduced
def test_an_exif_oriented_jpeg_is_shown_upright(tmp_path, height, width):
    data = samples.oriented_jpeg(6, pixels=samples.asymmetric_image(height, width))
    got = _thumbnail(data, tmp_path)
    np.testing.assert_array_equal(got, _pipeline(data))
    # Orientation 6 turns the stored landscape picture into a portrait one, as photo viewers show it.
    assert got.shape[0] == figures.THUMBNAIL_PX and got.shape[0] > got.shape[1]
    assert _pillow(data).shape != got.shape  # what the report drew before: sideways
    upright = _fit(samples.upright(data))  # Pillow with exif_transpose: the same picture
    assert np.abs(got.astype(int) - upright.astype(int)).mean() < 3


def test_a_16_bit_grey_png_is_not_washed_out(tmp_path):
    grey = np.tile(np.linspace(0, 255, 64), (40, 1)).astype(np.uint16) * 257  # 16-bit, black to white
    data = samples.png(grey)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "I;16"
    got = _thumbnail(data, tmp_path)
    np.testing.assert_array_equal(got, _pipeline(data))
    expected = _fit(np.repeat((grey // 257).astype(np.uint8)[..., None], 3, axis=2))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # grey replicated, scaled to 8 bits
    assert _pillow(data).mean() > 240  # Pillow's convert clipped it to near white


def test_an_image_the_decoder_refuses_gets_no_thumbnail_and_a_note(tmp_path):
    """Over the run's pixel limit, or not an image: no thumbnail, the page says so (as before)."""
    d = _report_data(cap=3)
    big, junk, good = d.misclassified
    big.image = samples.png(samples.asymmetric_image(100, 100))  # 10 000 pixels
    junk.image = b"not an image"
    good.image = samples.oriented_jpeg(6)
    page = build.write_report(str(tmp_path / "report"), d, max_pixels=5_000)
    assert big.thumbnail is None and junk.thumbnail is None
    assert good.thumbnail and os.path.isfile(os.path.join(os.path.dirname(page), good.thumbnail))
    [note] = [n for n in d.notes if n.startswith("eval records whose image could not be decoded")]
    assert f"{big.record} (InvalidArgumentError)" in note and f"{junk.record} (InvalidArgumentError)" in note
    with open(page, encoding="utf-8") as f:
        assert f.read().count("(image could not be decoded)") == 2


def test_the_thumbnail_decoder_is_traced_once_per_size_and_limit(tmp_path):
    from trainer.preprocessing import traced_decoder

    traced_decoder.cache_clear()
    for data in (samples.oriented_jpeg(6), samples.png(samples.asymmetric_image()), samples.black_png(9, 5)):
        figures.thumbnail(data, str(tmp_path / "t.png"), max_pixels=123_456)
    decoder = traced_decoder(figures.THUMBNAIL_PX, 123_456)
    assert traced_decoder.cache_info().currsize == 1
    assert decoder.experimental_get_tracing_count() == 1
