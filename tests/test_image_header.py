"""serving/image_header.py: format and size from the header, checked against Pillow on real files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imgpipe.demo.data import sample_photos
from serving.image_header import ImageHeader, image_format, read_header
from tests import image_bombs


def _encoded(size: tuple[int, int], fmt: str, mode: str, **save) -> bytes:
    rng = np.random.default_rng(sum(size))
    array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buf, format=fmt, **save)
    return buf.getvalue()


REAL_CASES = [
    ((37, 21), "JPEG", "RGB", {}),
    ((37, 21), "JPEG", "L", {}),
    ((64, 48), "JPEG", "RGB", {"progressive": True}),
    ((64, 48), "JPEG", "CMYK", {}),
    ((40, 30), "JPEG", "RGB", {"exif": b"Exif\x00\x00" + b"\x00" * 200}),
    ((33, 17), "PNG", "RGB", {}),
    ((33, 17), "PNG", "RGBA", {}),
    ((33, 17), "PNG", "L", {}),
    ((33, 17), "PNG", "P", {}),
    ((33, 17), "PNG", "1", {}),
    ((25, 19), "GIF", "P", {}),
    ((25, 19), "BMP", "RGB", {}),
    ((25, 19), "BMP", "L", {}),
]


@pytest.mark.parametrize(
    ("size", "fmt", "mode", "save"), REAL_CASES, ids=[f"{c[1]}-{c[2]}" for c in REAL_CASES]
)
def test_header_matches_pillow(size, fmt, mode, save):
    data = _encoded(size, fmt, mode, **save)
    header = read_header(data)
    assert header == ImageHeader(fmt, *size)
    assert Image.open(io.BytesIO(data)).size == (header.width, header.height)


def test_sample_photos():
    for _, jpeg, png in sample_photos(96):
        for data in (jpeg, png):
            assert (read_header(data).width, read_header(data).height) == Image.open(io.BytesIO(data)).size


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (image_bombs.png_bomb(20000, 20000), ImageHeader("PNG", 20000, 20000)),
        (image_bombs.jpeg_header(65000, 65000), ImageHeader("JPEG", 65000, 65000)),
        (image_bombs.gif_header(65535, 40000), ImageHeader("GIF", 65535, 40000)),
        (image_bombs.bmp_header(30000, 20000), ImageHeader("BMP", 30000, 20000)),
        (image_bombs.bmp_header(30000, 20000, top_down=True), ImageHeader("BMP", 30000, 20000)),
    ],
    ids=["png", "jpeg", "gif", "bmp", "bmp-top-down"],
)
def test_huge_declared_sizes_are_read_without_decoding(data, expected):
    assert read_header(data) == expected
    assert expected.pixels > 40_000_000
    assert "MP" in expected.describe() and expected.format in expected.describe()


def test_png_bomb_is_small_on_the_wire():
    data = image_bombs.png_bomb(20000, 20000)
    assert len(data) < 200_000  # 1.2 GB once decoded to RGB


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an image",
        b"\xff\xd8\xff",  # JPEG magic, nothing else
        image_bombs.jpeg_header(100, 100)[:24],  # cut inside the frame header
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xda\x00\x08",  # scan first
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00",  # cut inside IHDR
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIDAT" + b"\x00" * 12,  # IHDR missing
        b"GIF89a\x10",
        b"BM\x00\x00",
        image_bombs.png_bomb(0, 10)[:40],  # zero width
    ],
)
def test_unreadable_headers_are_none(data):
    assert read_header(data) is None


def test_image_format_by_magic():
    assert image_format(_encoded((4, 4), "PNG", "L")) == "PNG"
    assert image_format(b"GIF87a....") == "GIF"
    assert image_format(b"\x00\x01") is None


def test_junk_bytes_before_a_jpeg_marker_do_not_hide_its_size():
    """libjpeg skips extraneous bytes before a marker and decodes on: the header is read on too."""
    data = _encoded((2000, 1500), "JPEG", "RGB")
    sof = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
    junk = data[:sof] + b"\x00\x17" + data[sof:]
    header = read_header(junk)
    assert (header.width, header.height) == (2000, 1500)
    assert Image.open(io.BytesIO(junk)).size == (2000, 1500)


def test_a_gif_frame_past_its_screen_counts_at_its_extent():
    """A 32 x 32 screen over a 12000 x 12000 frame is 144 MP to the decoder, not 1,024 pixels."""
    header = read_header(image_bombs.gif_frame_past_screen(12_000, 12_000))
    assert (header.format, header.width, header.height) == ("GIF", 12_000, 12_000)
    header = read_header(image_bombs.gif_frame_past_screen(10, 20, left=30, top=5))
    assert (header.width, header.height) == (40, 32)  # the screen's height, the frame's right edge
    assert read_header(image_bombs.gif_header(25, 19)).pixels == 25 * 19
