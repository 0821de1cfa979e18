"""The per-file image check: which files ingest accepts, and reading them safely.

A file is accepted only when both decoders agree it is a whole image: Pillow
decodes it fully (``verify()`` alone misses truncation) and the pipeline's own
decoding graph (``trainer.preprocessing.decode_image``, which Transform, the
Trainer and every serving signature run) decodes it too. Memory stays bounded:
the pixel count is read from the header first and a file over ``max_pixels``
is skipped before anything is decoded; big JPEGs are decoded at 1/8 scale
(both decoders still read every coded block, so damage is still found). The
check also reports the EXIF orientation the graph applies, and a fingerprint of
the image the pipeline sees (``image_key``), so that copies of one image saved
as different files are found.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import stat
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

from PIL import Image

from imgpipe.ingest.errors import tf_error_text
from imgpipe.ingest.near_copies import GRID_SIDE, THUMBNAIL_SIDE, quantized
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
    """The verdict on one file: why it is refused (None: accepted), its EXIF orientation, and
    its image key (``image_key``; "" for a refused file)."""

    reason: str | None
    orientation: int = 1  # 1..8 as the graph reads it; 1 is upright (or no EXIF)
    image: str = ""
    width: int = 0  # as its header says (0 for a refused file)
    height: int = 0
    # The picture at THUMBNAIL_SIDE x THUMBNAIL_SIDE grey levels, standardised (``thumbnail``):
    # near-copies (saved again, resized, brighter) have almost the same (b"": not computed).
    thumb: bytes = b""


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


def _checked(check: Any, data: bytes, attempts: int = 3) -> Any:
    """`check(data)`, again when TensorFlow answers CANCELLED ("Function was cancelled before it
    was started"): when a decode fails inside the function, the op that fails and the ones it
    cancels race to report, and under load the cancellation sometimes won, so an image was refused
    for "cancelled" in place of its reason (a suite run's OS/2 BMP). The decode's own error wins
    on a second try; any other error is raised at once."""
    import tensorflow as tf

    for attempt in range(attempts):
        try:
            return check(data)
        except tf.errors.CancelledError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def check_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Return why the model cannot take ``data`` (it does not decode, or is over the pixel
    limit), or None when it can. Unlike ingest, an image of one colour or a 16-bit PNG of few
    bits passes: the model scores what it is given (predict-batch)."""
    return inspect_image(data, max_pixels, key=False, for_training=False).reason


def inspect_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, key: bool = True, for_training: bool = True
) -> ImageCheck:
    """Check ``data`` as ingest does (see the module docstring); never raises on bad data.
    ``key=False``: no image key (``image`` stays ""). ``for_training=False``: an image that
    decodes is not refused for what it holds (``_range_reason``: one colour, a 16-bit PNG of few
    bits)."""
    if not data:
        return ImageCheck(EMPTY_FILE)
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow

    graph_reason = None
    try:
        # .tolist(): iterating the tensor itself would slice it op by op (~0.3 ms an element).
        facts, small = _checked(_graph_check(max_pixels, key), data)
        height, width, orientation, decoded, rows, columns, pixels, uniform, png16_max = (
            facts.numpy().tolist()
        )
    except tf.errors.OpError as exc:
        kind = {b"\xff\xd8": "JPEG", b"\x89P": "PNG", b"GI": "GIF", b"BM": "BMP"}.get(data[:2], "image")
        graph_reason = f"TensorFlow cannot decode this {kind}: {tf_error_text(exc)}"
        if kind == "BMP" and len(data) >= 30:
            # The bits per pixel: at byte 28 (BITMAPINFOHEADER and later) or 24 (the 12-byte core header).
            bits = int.from_bytes(
                data[24:26] if data[14:18] == b"\x0c\x00\x00\x00" else data[28:30], "little"
            )
            if bits not in (8, 24, 32):  # otherwise the graph's own reason says what is wrong
                graph_reason = (
                    f"{bits}-bit BMP: TensorFlow decodes 8-, 24- and 32-bit BMPs only; convert it to PNG "
                    f"({tf_error_text(exc)})"
                )
        height = width = 0
        orientation, decoded, uniform, png16_max = 1, 0, 0, -1
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
    reason = (
        _pillow_reason(data) or graph_reason or (_range_reason(png16_max, uniform) if for_training else None)
    )
    if reason is not None:
        return ImageCheck(reason)
    image = image_key(data, orientation, (rows, columns, pixels)) if key else ""
    return ImageCheck(None, orientation, image, width, height, quantized(small.numpy()) if key else b"")


# A 16-bit PNG whose samples stay below this keeps at most 16 levels in the 8 bits the decoders
# give (each sample's high byte, as browsers show it): 12-bit sensor data stored without scaling.
PNG16_FEW_BITS = 1 << 12


def _range_reason(png16_max: int, uniform: int) -> str | None:
    """Why an image that decodes is still refused: it decodes to one colour everywhere, or it is
    a 16-bit PNG whose values use so few of its bits that 8 bits keep almost nothing of it."""
    read_as = "decoded to 8 bits as the pipeline and a browser read it (each sample's high byte)"
    fix = "scale it to the full 16-bit range, or save it as an 8-bit PNG"
    if 0 <= png16_max < 256:
        return (
            f"16-bit PNG whose samples are all below 256 of 65535 (8-bit values stored in a 16-bit "
            f"file): {read_as}, it is black everywhere; {fix}"
        )
    if 0 <= png16_max < PNG16_FEW_BITS:
        return (
            f"16-bit PNG whose samples are all below {PNG16_FEW_BITS} of 65535 (data of 12 bits or "
            f"fewer stored without scaling): {read_as}, it keeps at most 16 grey levels (0-15 of "
            f"255); {fix}"
        )
    if uniform:
        return "the image is one colour everywhere as decoded: nothing in it tells its class"
    return None


def image_key(data: bytes, orientation: int, decoded: tuple[int, int, int]) -> str:
    """Which image a checked file holds, as the pipeline decodes it: equal keys, the same picture.

    Files that differ only in how the same pixels are stored get one key, so ingest treats them as
    copies (one written, never one in each split; under two classes, a label conflict):

    - a JPEG: its coded image (frame, tables and scans: what the decoder reads) and the EXIF
      orientation the graph applies, without the metadata segments (APP0-APP15 but Adobe's
      APP14 and whether there is a JFIF APP0, which say how the colours are coded; comments)
      or bytes after the image.
      Such files decode to the same pixels. A JPEG compressed again, or transcoded losslessly
      (e.g. to progressive), has other coded data and another key;
    - any other format (PNG, GIF, BMP): the decoded pixels, upright, RGB, as the graph gives
      them (``decoded``: rows, columns, and a 64-bit fingerprint of the pixels), so a PNG saved
      again with other compression or text chunks, or a BMP of the same pixels, is a copy.

    A JPEG and a file of another format never share a key: the pixels a JPEG decodes to depend on
    the decoder, so equal pixels across formats are not a sure sign of one picture. A JPEG's key is
    not taken from its pixels because the check decodes a large JPEG at 1/8 scale (its 8x8 block
    means), where different pictures can agree.
    """
    if data.startswith(b"\xff\xd8\xff"):
        coded = jpeg_coded_image(data)
        if coded is not None:
            return "jpeg:" + hashlib.blake2b(bytes([orientation]) + coded, digest_size=16).hexdigest()
        return "file:" + hashlib.sha256(data).hexdigest()
    rows, columns, pixels = decoded
    return f"pixels:{rows}x{columns}:{pixels & (2**64 - 1):016x}"


# The grey thumbnail near-copies are found by (imgpipe/ingest/near_copies.py): the picture's
# grey levels at THUMBNAIL_SIDE x THUMBNAIL_SIDE (area means, its aspect squashed), standardised
# (THUMBNAIL_SIDE: near_copies, which compares them).
THUMBNAIL_VALUES = THUMBNAIL_SIDE**2 + GRID_SIDE**2  # the thumbnail, then the grey grid (``thumbnail``)
# A JPEG is decoded at the smallest scale (1/8 .. 1) that keeps this many pixels a side (other
# formats whole): at 1/8 of a 200 x 300 picture, its 8 x 8 blocks' grid no longer fits the
# thumbnail's, and a JPEG copy correlated 0.996 with its PNG; at this side 0.9999.
THUMBNAIL_DECODE_SIDE = 4 * THUMBNAIL_SIDE


_LUMA = (0.299, 0.587, 0.114)  # a grey level of red, green and blue (ITU-R BT.601)


def thumbnail(image: Any) -> Any:
    """A decoded image's near-copy signature (a graph op), THUMBNAIL_VALUES floats: its
    standardised grey thumbnail (THUMBNAIL_SIDE**2 values of mean 0 and norm 1, zeros for an
    image of one grey), then its grey levels (0-255) at GRID_SIDE x GRID_SIDE, from which
    ``near_copies`` compares two pictures shifted by a pixel of that grid against each other."""
    import tensorflow as tf

    def grey(side: int) -> Any:
        # Area means of each channel, then their grey (without a float copy of the whole picture
        # first: half the time on a 6 MP PNG), weighted as ITU-R BT.601 luma, as Pillow's "L" and
        # most tools make a grey copy: weighted alike, such a copy of a colour photo correlates
        # 0.998 or more with it (a plain mean of the channels: 0.94 at the lowest, a third of
        # such copies missed).
        small = tf.image.resize(image, [side, side], method="area")
        return tf.reshape(tf.tensordot(small, _LUMA, axes=[[-1], [0]]), [-1])

    small = grey(THUMBNAIL_SIDE)
    centred = small - tf.reduce_mean(small)
    norm = tf.norm(centred)
    standard = tf.where(norm > 1e-6, centred / tf.maximum(norm, 1e-6), tf.zeros_like(centred))
    return tf.concat([standard, grey(GRID_SIDE)], 0)


# JPEG markers without a length: TEM, RST0-RST7, SOI, EOI.
_STANDALONE = {0x01, *range(0xD0, 0xD8), 0xD8, 0xD9}
_APP0, _APP14, _COM, _SOS, _EOI = 0xE0, 0xEE, 0xFE, 0xDA, 0xD9
# Stands for a JFIF APP0 in the coded image: a three-channel JPEG with one is YCbCr to libjpeg,
# without one (nor Adobe's APP14) its component ids decide, so the two decode to other colours.
_JFIF = b"\xff\xe0JFIF"


def jpeg_coded_image(data: bytes) -> bytes | None:
    """The segments of a JPEG's first image that decide its pixels (see ``image_key``), joined:
    SOI up to EOI without APPn (but APP14, and whether a JFIF APP0 is there) and COM segments,
    nor fill bytes after a scan. None when the markers cannot be walked (the file is then keyed
    by its bytes)."""
    out = bytearray(b"\xff\xd8")
    pos, end = 2, len(data)
    while pos < end:
        if data[pos] != 0xFF:
            return None
        while pos < end and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= end:
            return None
        marker = data[pos]
        pos += 1
        if marker == _EOI:
            out += b"\xff\xd9"
            return bytes(out)
        if marker in _STANDALONE:
            out += bytes((0xFF, marker))
            continue
        if pos + 2 > end:
            return None
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > end:
            return None
        segment_end = pos + length
        if marker == _SOS:  # the scan's entropy-coded data runs to the next marker but RSTn
            scan = segment_end
            while True:
                scan = data.find(b"\xff", scan)
                if scan < 0 or scan + 1 >= end:
                    return None
                following = data[scan + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
                    scan += 1 if following == 0xFF else 2
                    continue
                break
            segment_end = scan
            # Fill bytes before the next marker are not image data.
            out += b"\xff\xda" + data[pos:scan].rstrip(b"\xff")
        elif marker == _APP0 and data[pos + 2 : pos + 7] == b"JFIF\x00" and length >= 16:
            out += _JFIF  # its presence alone decides how libjpeg reads the colours
        elif not (0xE0 <= marker <= 0xEF and marker != _APP14) and marker != _COM:
            out += bytes((0xFF, marker)) + data[pos:segment_end]
        pos = segment_end
    return None


EMPTY_FILE = "empty file (0 bytes)"


def unsupported_format(fmt: str) -> str:
    """Why a file of an image format the model's decoder does not take is refused."""
    return f"unsupported image format {fmt}; accepted: JPEG, PNG, GIF, BMP"


def _pillow_reason(data: bytes) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # per-image Pillow chatter
            with Image.open(io.BytesIO(data)) as image:
                fmt = image.format
                if fmt not in ACCEPTED_FORMATS:
                    return unsupported_format(fmt)
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
def _graph_check(max_pixels: int, with_thumbnail: bool = True) -> Callable[[bytes], Any]:
    """The preprocessing graph's check of one file, traced once per limit (and thumbnail or not).

    Returns [height, width, EXIF orientation, decoded (0/1), and the decoded image's rows,
    columns, a 64-bit fingerprint of its pixels, whether it is one colour everywhere (0/1), and
    for a 16-bit PNG the largest sample of its colour channels (-1 for other files)], and the
    image's ``thumbnail`` (zeros when not decoded, or not `with_thumbnail`): the header is read
    first, and only an image within ``max_pixels`` is decoded (a JPEG at the smallest scale that
    keeps THUMBNAIL_DECODE_SIDE pixels a side for the thumbnail, else at 1/8; other formats
    whole). A decoding error raises tf.errors.OpError. Without the thumbnail (`check_image`, as
    predict-batch checks each image before scoring it), no image key needs it: the cheaper check.
    """
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow

    from trainer import preprocessing

    # autograph=False: the control flow here and in the decoder is explicit (tf.cond), and
    # converting the decoder's Python took most of the first check's ~9 s (BENCHMARKS.md).
    @tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
    def check(data: tf.Tensor) -> tf.Tensor:
        fmt, height, width = preprocessing.image_shape(data)
        within = height * width <= max_pixels
        orientation = preprocessing.exif_orientation(data)  # read once: the decode applies it
        is_jpeg = tf.equal(fmt, preprocessing.FORMAT_CODES["JPEG"])

        def png16_max() -> tf.Tensor:
            """For a PNG that decoded, so has its IHDR: the largest sample of its colour channels
            (its alpha left out) when it is 16-bit, else -1."""
            ihdr = tf.io.decode_raw(tf.strings.substr(data, 24, 2), tf.uint8, fixed_length=2)
            depth, colour_type = ihdr[0], ihdr[1]

            def deepest() -> tf.Tensor:
                samples = tf.io.decode_png(data, dtype=tf.uint16)
                with_alpha = tf.logical_or(tf.equal(colour_type, 4), tf.equal(colour_type, 6))
                colours = tf.shape(samples)[-1] - tf.cast(with_alpha, tf.int32)
                return tf.cast(tf.reduce_max(samples[..., :colours]), tf.int64)

            return tf.cond(tf.equal(depth, 16), deepest, lambda: tf.constant(-1, tf.int64))

        def whole_jpeg_uniform() -> tf.Tensor:
            full = tf.io.decode_jpeg(data, channels=3, dct_method=preprocessing.JPEG_DCT_METHOD)
            return tf.reduce_all(tf.equal(full, full[:1, :1]))

        def decode() -> tf.Tensor:
            side = THUMBNAIL_DECODE_SIDE if with_thumbnail else 1
            image = preprocessing.decode_image(data, side, max_pixels, orientation)
            shape = tf.cast(tf.shape(image)[:2], tf.int64)
            pixels = tf.bitcast(tf.fingerprint(tf.reshape(image, [1, -1]))[0], tf.int64)
            uniform = tf.reduce_all(tf.equal(image, image[:1, :1]))
            # A JPEG decoded at 1/8 scale is its blocks' means, which can all be equal in a
            # picture with texture: one that looks uniform is decoded whole to be sure.
            uniform = tf.cond(uniform & is_jpeg, whole_jpeg_uniform, lambda: uniform)
            with tf.control_dependencies([image]):  # only a PNG that decoded is read again
                deep = tf.cond(
                    tf.equal(fmt, preprocessing.FORMAT_CODES["PNG"]),
                    png16_max,
                    lambda: tf.constant(-1, tf.int64),
                )
            facts = tf.concat(
                [[tf.cast(tf.size(image) > 0, tf.int64)], shape, [pixels, tf.cast(uniform, tf.int64), deep]],
                0,
            )
            return facts, thumbnail(image) if with_thumbnail else tf.zeros([THUMBNAIL_VALUES], tf.float32)

        decoded, small = tf.cond(
            within,
            decode,
            lambda: (tf.constant([0, 0, 0, 0, 0, -1], tf.int64), tf.zeros([THUMBNAIL_VALUES], tf.float32)),
        )
        return tf.concat([tf.stack([height, width, tf.cast(orientation, tf.int64)]), decoded], 0), small

    return check
