"""Small files that declare huge images ("decompression bombs"), built without allocating them."""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid all-black 1-bit grayscale PNG of width x height, compressed row by row.

    20000 x 20000 is about 50 KB on disk and 1.2 GB once decoded to RGB.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte 0 + packed pixels
    z = zlib.compressobj(9)
    parts = [z.compress(row * 100) for _ in range(height // 100)]
    parts.append(z.compress(row * (height % 100)))
    parts.append(z.flush())
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
    )


def gif_header(width: int, height: int) -> bytes:
    """A GIF whose logical screen is width x height (header and an empty image)."""
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + image + b"\x3b"


def gif_frame_past_screen(frame_width: int, frame_height: int, left: int = 0, top: int = 0) -> bytes:
    """A GIF whose 32 x 32 logical screen hides a larger first frame (after a graphic control
    extension): the decoder allocates the frame, not the screen."""
    screen = struct.pack("<HHBBB", 32, 32, 0, 0, 0)
    control = b"\x21\xf9\x04\x00\x00\x00\x00\x00"
    image = b"\x2c" + struct.pack("<HHHHB", left, top, frame_width, frame_height, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + control + image + b"\x3b"


def bmp_header(width: int, height: int, top_down: bool = False) -> bytes:
    """The first 54 bytes of a 24-bit BMP of width x height (no pixel data)."""
    info = struct.pack("<IiiHHIIiiII", 40, width, -height if top_down else height, 1, 24, 0, 0, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + info


def jpeg_header(width: int, height: int) -> bytes:
    """SOI, APP0, a baseline SOF0 declaring width x height, an empty scan and EOI."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = (
        b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    )
    sos = b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    return b"\xff\xd8" + app0 + sof + sos + b"\xff\xd9"
