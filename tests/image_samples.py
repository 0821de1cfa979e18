"""Hand-made image files for the decoding tests: huge-but-tiny PNGs, EXIF-oriented photos.

Built byte by byte where Pillow cannot write what a test needs (a 20000 x 20000
PNG without allocating it, big-endian or broken EXIF blocks).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of each chunk of a PNG, in order (up to and including IEND)."""
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
        if kind == b"IEND":
            break
    return chunks


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return PNG_SIGNATURE + b"".join(png_chunk(kind, payload) for kind, payload in chunks)


def black_png(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of width x height black pixels, built without holding them.

    20000 x 20000 compresses to about 50 KB: small bytes, huge pixels.
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def asymmetric_image(height: int = 40, width: int = 64) -> np.ndarray:
    """An RGB image whose every flip and turn looks different (gradients and a corner block)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, :, 0] = np.linspace(0, 255, width, dtype=np.float64)[None, :].astype(np.uint8)
    pixels[:, :, 1] = np.linspace(0, 255, height, dtype=np.float64)[:, None].astype(np.uint8)
    pixels[: height // 4, : width // 3, 2] = 255
    return pixels


def tiff_block(orientation: int, byte_order: str = "II", kind: int = 3, extra_entries: int = 2) -> bytes:
    """A TIFF structure (header + IFD0) holding the Orientation tag, as EXIF carries it."""
    e = "<" if byte_order == "II" else ">"
    entries = []
    # Sorted tags as TIFF wants: ImageWidth-like filler tags before Orientation (0x0112).
    for i in range(extra_entries):
        entries.append(struct.pack(e + "HHI", 0x010F + i, 2, 4) + b"abc\0")
    if kind == 4:
        value = struct.pack(e + "I", orientation)
    else:
        value = struct.pack(e + "H", orientation) + b"\0\0"
    entries.append(struct.pack(e + "HHI", 0x0112, kind, 1) + value)
    ifd = struct.pack(e + "H", len(entries)) + b"".join(entries) + struct.pack(e + "I", 0)
    return byte_order.encode() + struct.pack(e + "HI", 42, 8) + ifd


def app1(payload: bytes, length: int | None = None) -> bytes:
    """A JPEG APP1 segment; `length` overrides the declared length (to break it)."""
    declared = len(payload) + 2 if length is None else length
    return b"\xff\xe1" + struct.pack(">H", declared) + payload


def with_segment(jpeg: bytes, segment: bytes, after_app0: bool = False) -> bytes:
    """`jpeg` with `segment` inserted after SOI (or after a leading APP0 JFIF segment)."""
    at = 2
    if after_app0 and jpeg[2:4] == b"\xff\xe0":
        at = 4 + struct.unpack(">H", jpeg[4:6])[0]
    return jpeg[:at] + segment + jpeg[at:]


def jpeg(pixels: np.ndarray, quality: int = 95, exif: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    kwargs = {"exif": exif} if exif is not None else {}
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality, **kwargs)
    return buffer.getvalue()


def png(pixels: np.ndarray, exif: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    kwargs = {"exif": exif} if exif is not None else {}
    Image.fromarray(pixels).save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def pillow_exif(orientation: int) -> bytes:
    """Pillow's own EXIF block holding one Orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def oriented_jpeg(orientation: int, byte_order: str = "II", pixels: np.ndarray | None = None) -> bytes:
    """A JPEG carrying EXIF Orientation `orientation` in an APP1 segment right after SOI."""
    base = jpeg(asymmetric_image() if pixels is None else pixels)
    return with_segment(base, app1(b"Exif\0\0" + tiff_block(orientation, byte_order)))


def upright(data: bytes) -> np.ndarray:
    """What Pillow shows: the image with ImageOps.exif_transpose applied, as RGB."""
    from PIL import ImageOps

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def bmp_masked(
    rgb: np.ndarray,
    masks: tuple[int, ...],
    header: int,
    compression: int = 3,
    alpha: np.ndarray | None = None,
) -> bytes:
    """A bottom-up 32-bit BMP of rgb whose pixels put each channel where its bit mask says (R, G,
    B, then `alpha`, 255 by default, in the remaining byte); the masks after a 40-byte header or
    inside a V4/V5 one (`header` 108 or 124, where a fourth mask is the alpha's)."""
    height, width, _ = rgb.shape
    places = [m.bit_length() // 8 - 1 for m in masks[:3]]
    spare = ({0, 1, 2, 3} - set(places)).pop()
    pixels = np.zeros((height, width, 4), np.uint8)
    pixels[..., spare] = 255 if alpha is None else alpha
    for channel, place in enumerate(places):
        pixels[..., place] = rgb[..., channel]
    mask_bytes = b"".join(struct.pack("<I", m) for m in masks)
    info = struct.pack("<IiiHHIIiiII", header, width, height, 1, 32, compression, 0, 2835, 2835, 0, 0)
    info += mask_bytes if header == 40 else mask_bytes.ljust(header - 40, b"\0")
    offset = 14 + len(info)
    data = pixels[::-1].tobytes()
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + data


def gif_placed(gif: bytes, screen: tuple[int, int], left: int, top: int) -> bytes:
    """The GIF with its logical screen set to (width, height) and its first image moved to
    (left, top): a frame that does not fill its screen."""
    data = bytearray(gif)
    data[6:10] = struct.pack("<HH", *screen)
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while data[pos] == 0x21:  # extensions before the image: label, then sub-blocks
        pos += 2
        while data[pos]:
            pos += 1 + data[pos]
        pos += 1
    assert data[pos] == 0x2C
    data[pos + 1 : pos + 5] = struct.pack("<HH", left, top)
    return bytes(data)
