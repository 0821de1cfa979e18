"""The per-file image check: which files ingest accepts, and reading them safely.

A file is accepted only when both decoders agree it is a whole image: Pillow
decodes it fully (``verify()`` alone misses truncation) and the pipeline's own
decoding graph (``trainer.preprocessing.decode_image``, which Transform, the
Trainer and every serving signature run) decodes it too. Memory stays bounded:
the pixel count is read from the header first and a file over ``max_pixels``
is skipped before anything is decoded; big JPEGs are decoded at 1/8 scale
(both decoders still read every coded block, so damage is still found). The
check also reports the EXIF orientation the graph applies.
"""

from __future__ import annotations

import functools
import io
import os
import stat
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

from PIL import Image

from imgpipe.ingest.errors import tf_error_text
from trainer.features import DEFAULT_MAX_PIXELS

# Pillow format name -> the format we report. MPO is the multi-picture JPEG
# many cameras write; its bytes start as a plain JPEG and TF decodes them so.
ACCEPTED_FORMATS = {
    "JPEG": "JPEG",
    "MPO": "JPEG",
    "PNG": "PNG",
    "GIF": "GIF",
    "BMP": "BMP",
}


class ImageCheck(NamedTuple):
    """The verdict on one file: why it is refused (None: accepted) and its EXIF orientation."""

    reason: str | None
    orientation: int = 1  # 1..8 as the graph reads it; 1 is upright (or no EXIF)


# A file larger than this is read whole only when its first bytes are those of an accepted
# format: a video or an archive left in a class folder is skipped without being read into
# memory. Smaller files are read and judged by the decoders, whose reasons are the clearer.
SNIFF_OVER = 16 * 1024 * 1024
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


def large_non_image(path: str) -> str | None:
    """Why the file at `path` is skipped unread: over SNIFF_OVER bytes and not starting as a
    JPEG, PNG, GIF or BMP does. None otherwise (read it and check it). Raises OSError."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode) or info.st_size <= SNIFF_OVER:
        return None
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(SIGNATURES):
        return None
    return (
        f"not a JPEG, PNG, GIF or BMP file ({info.st_size / 2**20:.0f} MiB starting {head.hex(' ')}); "
        "not read"
    )


def read_regular_file(path: str) -> bytes:
    """File bytes; raises OSError for non-regular files (FIFOs would block)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError("not a regular file")
    with open(path, "rb") as handle:
        return handle.read()


def check_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Return why ``data`` is not an acceptable image, or None when it is."""
    return inspect_image(data, max_pixels).reason


def inspect_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageCheck:
    """Check ``data`` as ingest does (see the module docstring); never raises on bad data."""
    if not data:
        return ImageCheck("empty file (0 bytes)")
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow

    graph_reason = None
    try:
        height, width, orientation, decoded = (int(v) for v in _graph_check(max_pixels)(data))
    except tf.errors.OpError as exc:
        kind = {b"\xff\xd8": "JPEG", b"\x89P": "PNG", b"GI": "GIF", b"BM": "BMP"}.get(data[:2], "image")
        graph_reason = f"TensorFlow cannot decode this {kind}: {tf_error_text(exc)}"
        if kind == "BMP" and len(data) >= 30:
            # The bits per pixel: at byte 28 (BITMAPINFOHEADER and later) or 24 (the 12-byte core header).
            bits = int.from_bytes(
                data[24:26] if data[14:18] == b"\x0c\x00\x00\x00" else data[28:30], "little"
            )
            graph_reason = (
                f"{bits}-bit BMP: TensorFlow decodes 8-, 24- and 32-bit BMPs only; convert it to PNG "
                f"({tf_error_text(exc)})"
            )
        height = width = 0
        orientation, decoded = 1, 0
    if graph_reason is None and not decoded:
        return ImageCheck(
            f"{width} x {height} = {height * width} pixels, over the limit of {max_pixels} "
            "(--max-pixels); not decoded"
            + (
                ""
                if height * width <= 64 * max_pixels
                else " (as its header says: a damaged header can claim any size)"
            )
        )
    # Pillow's reasons are the clearer ones (unsupported format, truncation), so they come first.
    reason = _pillow_reason(data) or graph_reason
    return ImageCheck(reason, orientation if reason is None else 1)


def _pillow_reason(data: bytes) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # per-image Pillow chatter
            with Image.open(io.BytesIO(data)) as image:
                fmt = image.format
                if fmt not in ACCEPTED_FORMATS:
                    return f"unsupported image format {fmt}; accepted: JPEG, PNG, GIF, BMP"
                image.verify()
            # verify() checks structure only; a full decode catches truncation. JPEGs are
            # decoded at the smallest DCT scale: every block is still read, pixels are 1/64.
            with Image.open(io.BytesIO(data)) as image:
                if fmt in ("JPEG", "MPO"):
                    image.draft(image.mode, (1, 1))
                image.load()
                mode = image.mode
    except Image.UnidentifiedImageError:
        return "not a recognised image (cannot identify image file)"
    except Exception as exc:  # noqa: BLE001 -- Pillow raises many types on bad input; each is reported
        return f"cannot decode: {type(exc).__name__}: {exc}"
    if fmt == "BMP" and mode == "P":
        # tf.io.decode_bmp returns palette indices as grey levels: silent garbage.
        return "palette (indexed-colour) BMP: TensorFlow decodes it wrongly; convert it to PNG"
    return None


@functools.cache
def _graph_check(max_pixels: int) -> Callable[[bytes], Any]:
    """The preprocessing graph's check of one file, traced once per limit.

    Returns [height, width, EXIF orientation, decoded (0/1)]: the header is read
    first, and only an image within ``max_pixels`` is decoded (at target size 1,
    so a JPEG decodes at 1/8 scale). A decoding error raises tf.errors.OpError.
    """
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow

    from trainer import preprocessing

    # autograph=False: the control flow here and in the decoder is explicit (tf.cond), and
    # converting the decoder's Python took most of the first check's ~9 s (BENCHMARKS.md).
    @tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
    def check(data: tf.Tensor) -> tf.Tensor:
        _, height, width = preprocessing.image_shape(data)
        within = height * width <= max_pixels
        decoded = tf.cond(
            within,
            lambda: tf.size(preprocessing.decode_image(data, 1, max_pixels)) > 0,
            lambda: tf.constant(False),
        )
        orientation = tf.cast(preprocessing.exif_orientation(data), tf.int64)
        return tf.stack([height, width, orientation, tf.cast(decoded, tf.int64)])

    return check
