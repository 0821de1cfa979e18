"""An encoded image's format and pixel size, read from its header without decoding it.

The dev server refuses images above its pixel limit before anything is
decoded (a 20000 x 20000 PNG of one colour is a few tens of KB on the wire and
1.2 GB once decoded to RGB), and drift statistics skip them the same way.
Only the formats `tf.io.decode_image` accepts are read: JPEG, PNG, GIF, BMP.
Pure Python (no TensorFlow, no Pillow), so the CLI can use it cheaply.

The size read here is the size a decoder allocates for: a JPEG's frame
header (SOFn), a PNG's IHDR, a GIF's logical screen (TensorFlow decodes
frames onto it) or its first frame where that reaches past the screen, a
BMP's info header.
"""

from __future__ import annotations

import dataclasses
import struct

JPEG, PNG, GIF, BMP = "JPEG", "PNG", "GIF", "BMP"

# What tf.io.decode_image accepts, by leading bytes.
_MAGIC = (
    (b"\xff\xd8\xff", JPEG),
    (b"\x89PNG\r\n\x1a\n", PNG),
    (b"GIF87a", GIF),
    (b"GIF89a", GIF),
    (b"BM", BMP),
)

# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); not DHT/JPG/DAC.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Markers without a length field: TEM and the restart markers (SOI/EOI handled apart).
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What an image's header says: its format and the pixel size a decoder allocates."""

    format: str  # JPEG | PNG | GIF | BMP
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def describe(self) -> str:
        """'20000x20000 px (400.0 MP, PNG)': for error messages."""
        return f"{self.width}x{self.height} px ({self.pixels / 1e6:.1f} MP, {self.format})"


def image_format(data: bytes) -> str | None:
    """'JPEG' | 'PNG' | 'GIF' | 'BMP' from the leading bytes, or None if not one of them."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    return None


def read_header(data: bytes) -> ImageHeader | None:
    """The format and size of an encoded image, or None when the header is not readable.

    None means: not one of the four formats, or a header cut short or
    malformed; a decoder refuses such bytes too, so callers may pass them on.
    """
    fmt = image_format(data)
    if fmt is None:
        return None
    try:
        size = _READERS[fmt](data)
    except (struct.error, IndexError):
        return None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return ImageHeader(fmt, size[0], size[1])


def _png(data: bytes) -> tuple[int, int] | None:
    # 8-byte signature, then the IHDR chunk: length, b"IHDR", width, height (big-endian).
    if data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _gif(data: bytes) -> tuple[int, int]:
    """The logical screen, or the first frame's extent where it reaches past the screen (the
    decoder allocates the frame; a 12000 x 12000 frame on a 32 x 32 screen is not 1,024 pixels)."""
    width, height = struct.unpack("<HH", data[6:10])  # the logical screen
    pos = 13 + _gif_table(data[10])
    for _ in range(1 << 20):  # blocks before the first image: extensions, each a chain of sub-blocks
        if pos >= len(data) or data[pos] != 0x21:
            break
        pos += 2
        while pos < len(data) and data[pos]:
            pos += 1 + data[pos]
        pos += 1
    if pos + 9 < len(data) and data[pos] == 0x2C:
        left, top, frame_w, frame_h = struct.unpack("<HHHH", data[pos + 1 : pos + 9])
        width, height = max(width, left + frame_w), max(height, top + frame_h)
    return width, height


def _gif_table(flags: int) -> int:
    """Bytes of a GIF colour table from its packed flags byte (0 when there is none)."""
    return 3 * (2 << (flags % 8)) if flags >= 128 else 0


def _bmp(data: bytes) -> tuple[int, int]:
    (info_size,) = struct.unpack("<I", data[14:18])
    if info_size == 12:  # BITMAPCOREHEADER: 16-bit unsigned sizes
        width, height = struct.unpack("<HH", data[18:22])
        return width, height
    width, height = struct.unpack("<ii", data[18:26])  # negative height: rows stored top-down
    return abs(width), abs(height)


def _jpeg(data: bytes) -> tuple[int, int] | None:
    """Walk the marker segments after SOI up to the first start-of-frame."""
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            # Extraneous bytes before a marker: libjpeg skips them (with a warning) and decodes
            # on, so the size must be read on too, or a few junk bytes would hide it.
            i = data.find(b"\xff", i)
            if i < 0:
                return None
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return None
        marker = data[i]
        i += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (_JPEG_SOS, _JPEG_EOI):
            return None  # image data or the end before any frame header
        (length,) = struct.unpack(">H", data[i : i + 2])
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[i + 3 : i + 7])
            return width, height  # height 0 (set later by a DNL marker) reads as unknown
        i += length
    return None


_READERS = {JPEG: _jpeg, PNG: _png, GIF: _gif, BMP: _bmp}
