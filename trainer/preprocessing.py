"""preprocessing_fn: the one definition of image decoding and preprocessing.

Transform runs it over the data (via TFT) and exports it as a graph; the
Trainer's input function, the Evaluator (through the `transform_features`
signature) and every serving signature apply that same graph, so training and
serving cannot drift apart. `imgpipe ingest` checks each file with the same
decoder (`decode_image`), so what ingest accepts the graph decodes.

Decoding is bounded and upright by construction, inside the graph (so a real
TF Serving behaves the same):

- the image's width and height are read from its header (JPEG SOF, PNG IHDR,
  GIF screen, BMP DIB header) and an image over `max_pixels` fails with
  InvalidArgument before a single pixel is decoded;
- a JPEG much larger than the target size is decoded at 1/2, 1/4 or 1/8 scale
  (libjpeg's DCT scaling), and a GIF only up to the end of its first frame;
- what a page shows is what the model sees: transparency (PNG, GIF) is composited onto
  white, a GIF's first frame is placed on its screen, a BMP's channels are read where its
  bit masks put them, and a BMP TensorFlow's decoder would misread (compressed, or bit masks
  that are not whole bytes) is refused;
- the EXIF Orientation tag (JPEG APP1 or PNG eXIf; without it, XMP's
  tiff:Orientation) is applied, as photo viewers and Pillow's
  ImageOps.exif_transpose do; unreadable metadata means no rotation.

The label goes to TFT's vocabulary unchanged (ingest decides what a class name
may be). A label the vocabulary lacks maps to -1; the Trainer's input function
(trainer/data.py) refuses it by name. That check is not in this graph: TFT
feeds placeholder labels to serving requests, which hold no label.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar

import tensorflow as tf
import tensorflow_transform as tft
from tensorflow.core.framework import attr_value_pb2

from trainer import backbones
from trainer.features import (
    DEFAULT_MAX_PIXELS,
    IMAGE_KEY,
    IMAGE_XF,
    LABEL_KEY,
    LABEL_VOCAB,
    LABEL_XF,
)

_F = TypeVar("_F", bound=Callable[..., Any])
_FUNCTIONAL_KINDS = frozenset({"If", "StatelessIf", "While", "StatelessWhile"})


def _unlowered(build: _F) -> _F:
    """`build`, a graph-building part of the decoder, with the conditionals and loops it adds to
    the graph being built kept as functional If and While ops, not marked for lowering into the
    caller's graph as Switch and Merge nodes.

    The decoder is a tree of format branches and bounded header walks (~2,800 nodes). Lowered,
    all of it is inlined into the caller when the caller first runs (a tf.data map, a signature
    loaded by `tf.saved_model.load`: the dev server's, TFMA's) and Grappler rewrites it there, on
    every such first run; then each image still steps through the dead branches' plumbing.
    Functional, a branch's body is made ready the first time it is taken, and an image runs only
    what it takes.
    The orientation walks, the GIF header walk and the GIF, BMP and PNG branches are built so;
    `decode_image`'s switch on the format stays lowered (functional, a 427 x 640 JPEG decoded in
    1.3x the time). A TF1 session's load and first run (TF Serving's runtime) gains little
    (0.97x). BENCHMARKS.md, "The decoder's control flow", has the numbers. Same ops, same
    results.

    A functional op must not read a lowered loop's answer, directly or through a lowered
    conditional: TensorFlow's session runtime (TF Serving's, the report's) refuses such a graph
    ("has inputs from different frames") though a TF2 call of the same graph runs it.

    Only the ops this call creates are marked, after it returns and before their graph is sealed
    into a function: no TensorFlow switch is set, so graphs other threads build meanwhile are not
    touched. Ops nested inside their branches and bodies keep TensorFlow's default, lowered into
    the branch that holds them when that branch is first made ready.
    """

    @functools.wraps(build)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if tf.executing_eagerly():
            return build(*args, **kwargs)
        graph = tf.compat.v1.get_default_graph()
        before = len(graph.get_operations())
        result = build(*args, **kwargs)
        functional = attr_value_pb2.AttrValue(b=False)
        for op in graph.get_operations()[before:]:
            if op.type in _FUNCTIONAL_KINDS:
                op._set_attr("_lower_using_switch_merge", functional)  # noqa: SLF001
        return result

    return wrapped  # type: ignore[return-value]


# JPEG DCT scaling factors libjpeg offers, smallest first.
JPEG_RATIOS = (1, 2, 4, 8)
# The IDCT of every JPEG decode (see decode_image): Pillow's, so a device reproduces the pixels.
# Changing what decode_image gives means changing trainer.features.DECODER_VERSION too.
JPEG_DCT_METHOD = "INTEGER_ACCURATE"
# Bounds of the header walks: marker segments before the JPEG scan, PNG chunks
# before IDAT (real files have a handful; each is a graph iteration, and a file of
# a million empty chunks took 17 s) and after it (the image data's chunks: 2**14
# of libpng's 8 KiB cover a 128 MB file; walked only when the bytes "eXIf" or XMP's
# keyword follow the image data), entries of EXIF's IFD0, GIF blocks and
# sub-blocks up to the end of the first frame (255 bytes each: 2**20 of them cover
# a 255 MB frame).
_MAX_JPEG_SEGMENTS = 256
_MAX_PNG_CHUNKS = 1024
_MAX_PNG_TAIL_CHUNKS = 1 << 14
_MAX_IFD_ENTRIES = 128
_MAX_GIF_STEPS = 1 << 20
_ORIENTATION_TAG = 0x0112

# How images are resized (tf.image.resize); the TFLite contract (trainer/tflite.py) states these.
RESIZE_METHOD = "bilinear"
RESIZE_ANTIALIAS = True


def _dense_1d(t: tf.Tensor | tf.SparseTensor, default: str = "") -> tf.Tensor:
    """A [batch] string tensor from a dense [batch]/[batch, 1] or sparse feature."""
    if isinstance(t, tf.SparseTensor):
        t = tf.sparse.to_dense(t, default_value=default)
    if isinstance(t, tf.RaggedTensor):
        t = t.to_tensor(default_value=default)
    return tf.reshape(t, [-1])


# ---------------------------------------------------------------------------------------
# Reading header bytes. Every read is bounds-safe (past the end, or before the start,
# reads zeros), so a truncated or malformed header yields "no information", never an error.

# How much of a file the header and EXIF readers look at: EXIF sits in the segments
# before a JPEG's scan (usually right after SOI or JFIF's APP0) and before IDAT in a PNG.
_HEADER_PREFIX = 1 << 18


def _i64(value: int) -> tf.Tensor:
    return tf.constant(value, tf.int64)


class _Bytes:
    """The first `limit` bytes of one encoded file (all of it when None), for random reads."""

    def __init__(self, data: tf.Tensor, limit: int | None = _HEADER_PREFIX):
        head = data if limit is None else tf.strings.substr(data, 0, limit)
        # One zero byte past the end: every out-of-range read is sent there.
        raw = tf.io.decode_raw(tf.strings.join([head, tf.constant(b"\0")]), tf.uint8)
        self.raw = tf.reshape(raw, [-1])
        self.zero = tf.size(self.raw, out_type=tf.int64) - 1
        self.length = tf.cast(tf.strings.length(data, unit="BYTE"), tf.int64)

    def get(self, pos: tf.Tensor | int, n: int) -> tf.Tensor:
        """int64 [n]: the bytes at pos..pos+n-1 (0 where out of range)."""
        idx = tf.cast(pos, tf.int64) + tf.range(n, dtype=tf.int64)
        idx = tf.where((idx < 0) | (idx > self.zero), self.zero, idx)
        return tf.cast(tf.gather(self.raw, idx), tf.int64)


def _uint(b: tf.Tensor, start: int, size: int, little: bool | tf.Tensor) -> tf.Tensor:
    """The unsigned integer in bytes b[..., start:start+size], little- or big-endian (int64)."""
    part = b[..., start : start + size]
    le = tf.reduce_sum(part * tf.constant([1 << (8 * i) for i in range(size)], tf.int64), axis=-1)
    be = tf.reduce_sum(part * tf.constant([1 << (8 * i) for i in reversed(range(size))], tf.int64), axis=-1)
    if isinstance(little, bool):
        return le if little else be
    return tf.where(little, le, be)


def _equals(b: tf.Tensor, start: int, text: bytes) -> tf.Tensor:
    """Whether bytes b[start:start+len(text)] spell `text`."""
    return tf.reduce_all(tf.equal(b[start : start + len(text)], tf.constant(list(text), tf.int64)))


def _bytes_at(data: tf.Tensor, pos: tf.Tensor | int, n: int, size: tf.Tensor | None = None) -> tf.Tensor:
    """int64 [n]: a scalar string's bytes at pos..pos+n-1 (0 past its end; pos clamped to it).
    `size`: the string's length in bytes, when already known."""
    if size is None:
        size = tf.cast(tf.strings.length(data, unit="BYTE"), tf.int64)
    read = tf.strings.substr(data, tf.clip_by_value(tf.cast(pos, tf.int64), 0, size), n)
    return tf.cast(tf.io.decode_raw(read, tf.uint8, fixed_length=n), tf.int64)


def _abs_signed32(value: tf.Tensor) -> tf.Tensor:
    """The size in a BMP header's signed 32-bit field (a height is negative for top-down rows)."""
    return tf.abs(tf.where(value >= (1 << 31), value - (1 << 32), value))


# Format codes, and the leading bytes tf.io.decode_image dispatches on (-1: any byte).
_JPEG, _PNG, _GIF, _BMP, _UNKNOWN = 0, 1, 2, 3, 4
FORMAT_CODES = {"JPEG": _JPEG, "PNG": _PNG, "GIF": _GIF, "BMP": _BMP, "unknown": _UNKNOWN}  # image_shape's
_MAGIC = ((0xFF, 0xD8, 0xFF), (0x89, 0x50, 0x4E), (0x47, 0x49, 0x46), (0x42, 0x4D, -1))


def _format(first3: tf.Tensor) -> tf.Tensor:
    """The format code of an image from its first three bytes."""
    magic = tf.constant(_MAGIC, tf.int64)
    matches = tf.reduce_all(tf.equal(first3[tf.newaxis, :], magic) | (magic < 0), axis=1)
    return tf.where(
        tf.reduce_any(matches), tf.argmax(tf.cast(matches, tf.int32), output_type=tf.int64), _UNKNOWN
    )


# Size fields of the non-JPEG headers: (offset, bytes, little-endian) gathered in one step.
_SIZE_FIELDS = {
    "png_w": (16, 4, False),
    "png_h": (20, 4, False),
    "gif_w": (6, 2, True),
    "gif_h": (8, 2, True),
    "bmp_dib": (14, 4, True),
    "bmp_core_w": (18, 2, True),
    "bmp_core_h": (20, 2, True),
    "bmp_w": (18, 4, True),
    "bmp_h": (22, 4, True),
}


def _size_fields(head: tf.Tensor) -> dict[str, tf.Tensor]:
    index = [[min(o + i, o + n - 1) for i in range(4)] for o, n, _ in _SIZE_FIELDS.values()]
    weight = [
        [(1 << (8 * (i if little else n - 1 - i))) if i < n else 0 for i in range(4)]
        for _, n, little in _SIZE_FIELDS.values()
    ]
    values = tf.reduce_sum(tf.gather(head, index) * tf.constant(weight, tf.int64), axis=1)
    return dict(zip(_SIZE_FIELDS, tf.unstack(values, num=len(_SIZE_FIELDS)), strict=True))


def image_shape(image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(format code, height, width) of one encoded image, from its header only (int64).

    JPEG: the SOF segment (tf.io.extract_jpeg_shape); PNG: IHDR; GIF: the logical
    screen, or its first frame's extent where that reaches past it; BMP: the DIB
    header. Unknown formats give 0 x 0 (the decoder then rejects them). Nothing is
    decoded.
    """
    return _header(image_bytes)[:3]


def _header(image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, _GifFrame]:
    """`image_shape`, and for a GIF where its first image is (`_gif_first_image`; -1s
    otherwise), so decoding finds the frame without walking its blocks a second time."""
    head = _Bytes(image_bytes, 32).get(0, 32)
    fmt = _format(head[:3])
    jpeg = tf.cond(
        tf.equal(fmt, _JPEG),
        lambda: tf.io.extract_jpeg_shape(image_bytes, output_type=tf.int64)[:2],
        lambda: tf.zeros([2], tf.int64),
    )
    f = _size_fields(head)

    # A GIF's first frame may reach past its logical screen: the decoder allocates the frame.
    gif = _gif_first_image(image_bytes, only_if=tf.equal(fmt, _GIF))
    gif_h, gif_w = tf.maximum(f["gif_h"], gif.height), tf.maximum(f["gif_w"], gif.width)
    core = tf.equal(f["bmp_dib"], 12)  # BITMAPCOREHEADER: 16-bit sizes
    bmp_w = tf.where(core, f["bmp_core_w"], _abs_signed32(f["bmp_w"]))
    bmp_h = tf.where(core, f["bmp_core_h"], _abs_signed32(f["bmp_h"]))
    heights = tf.stack([jpeg[0], f["png_h"], gif_h, bmp_h, _i64(0)])
    widths = tf.stack([jpeg[1], f["png_w"], gif_w, bmp_w, _i64(0)])
    return fmt, heights[fmt], widths[fmt], gif


def check_pixels(height: tf.Tensor, width: tf.Tensor, max_pixels: int) -> tf.Operation:
    """An op that fails with InvalidArgument when height x width > max_pixels."""
    pixels = height * width
    message = tf.strings.format(
        "image header says {} x {} = {} pixels, over the limit of {} pixels (max_image_pixels); a "
        "damaged header can claim any size: `imgpipe ingest` checks each file by decoding it",
        (width, height, pixels, max_pixels),
    )
    return tf.debugging.Assert(pixels <= max_pixels, [message], name="max_image_pixels")


def _bmp_palette_is_grey(b: _Bytes, dib: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
    """Whether an 8-bit BMP's colour table (after its `dib`-byte Windows header; `b` holds the
    file's first 14 + 124 + 256 * 4 bytes) is the grey ramp (entry i = (i, i, i)); true for other
    bit depths.

    tf.io.decode_bmp returns an 8-bit BMP's palette indices as grey levels, which are its
    pixels only when the table is that ramp; for any other table the model would be shown
    garbage and answer it with confidence. Pillow calls the same two cases "L" and "P", and
    ingest refuses "P" by Pillow's reason. (1- and 4-bit BMPs the decoder refuses itself.)
    """
    used = _uint(b.get(46, 4), 0, 4, True)
    colors = tf.where(used > 0, tf.minimum(used, 256), _i64(256))
    at = 14 + dib + 4 * tf.range(256, dtype=tf.int64)
    table = b.get(0, _BMP_PREFIX)
    rgb = tf.stack([tf.gather(table, at + k) for k in range(3)], axis=1)
    grey = tf.reduce_all(tf.equal(rgb, tf.range(256, dtype=tf.int64)[:, tf.newaxis]), axis=1)
    return tf.logical_not(tf.equal(bits, 8)) | tf.reduce_all(grey | (tf.range(256, dtype=tf.int64) >= colors))


class _BmpLayout(NamedTuple):
    """How a BMP's pixels are stored, from its headers (`_bmp_layout`)."""

    problem: tf.Tensor  # why tf.io.decode_bmp would misread it ("" when it reads it right)
    masked: tf.Tensor  # 24- or 32-bit with bit masks: the channels are where the masks say
    order: tf.Tensor  # int32 [4]: the channels of decode_bmp(channels=4) holding R, G, B, alpha
    alpha: tf.Tensor  # an alpha mask (a V3-V5 header's, or BI_ALPHABITFIELDS'): composited
    size: tf.Tensor  # the bytes the decoder reads: pixel data offset + rows (0 when unknown)


# BMP compression codes: none, and the bit-mask codings (BI_BITFIELDS, BI_ALPHABITFIELDS). The
# rest (RLE8 1, RLE4 2, JPEG 4, PNG 5) tf.io.decode_bmp does not check: it reads their bytes as
# pixels.
_BMP_PLAIN, _BMP_BITFIELDS, _BMP_ALPHABITFIELDS = 0, 3, 6
# The DIB headers tf.io.decode_bmp reads (BITMAPINFOHEADER, its V2-V5 successors): it takes the
# 40-byte header's fields from any file, so a 12-byte OS/2 core header gave sizes from pixel bytes.
_BMP_HEADERS = (40, 52, 56, 108, 124)
# What the BMP checks read: the largest Windows header, then a 256-entry colour table.
_BMP_PREFIX = 14 + 124 + 256 * 4


def _bmp_layout(image_bytes: tf.Tensor) -> _BmpLayout:
    """How a BMP's pixels are stored, and what would make tf.io.decode_bmp misread them.

    decode_bmp reads a 24- or 32-bit pixel's bytes as B, G, R (A) whatever the header's bit masks
    say, so a BMP whose masks put red in the low byte (an RGBA layout some writers use) decoded
    with red and blue swapped, without an error; it reads compressed pixel data (RLE, JPEG, PNG)
    as raw pixels, and refuses a file with any bytes after its rows (padding, or a V5 header's
    ICC profile, which follows the pixels).
    """
    b = _Bytes(image_bytes, _BMP_PREFIX)
    head = b.get(0, 70)
    dib = _uint(head, 14, 4, True)
    bits = _uint(head, 28, 2, True)
    compression = _uint(head, 30, 4, True)
    # The masks (R, G, B, alpha): after a 40-byte BITMAPINFOHEADER, or inside a V2-V5 header, at
    # byte 54. An alpha mask is there in a V3-V5 header, or with BI_ALPHABITFIELDS.
    masks = tf.stack([_uint(head, 54 + 4 * i, 4, True) for i in range(4)])
    has_alpha = (dib >= 56) | tf.equal(compression, _BMP_ALPHABITFIELDS)
    masks = tf.where(tf.range(4) < 3, masks, tf.where(has_alpha, masks, _i64(0)))
    whole = tf.constant([0xFF << (8 * k) for k in range(4)], tf.int64)
    matches = tf.equal(masks[:, tf.newaxis], whole[tf.newaxis, :])  # [4 masks, 4 bytes]
    byte = tf.argmax(tf.cast(matches, tf.int32), axis=1, output_type=tf.int32)
    named = tf.reduce_any(matches, axis=1)  # a mask that is one whole byte
    distinct = tf.not_equal(byte[:, tf.newaxis], byte[tf.newaxis, :]) | tf.eye(4, dtype=tf.bool)
    in_pixel = tf.cast(byte[:3], tf.int64) < bits // 8
    rgb_ok = tf.reduce_all(named[:3]) & tf.reduce_all(distinct[:3, :3]) & tf.reduce_all(in_pixel)
    alpha = named[3] & tf.reduce_all(distinct[3, :3]) & tf.equal(bits, 32)
    bitfields = tf.equal(compression, _BMP_BITFIELDS) | tf.equal(compression, _BMP_ALPHABITFIELDS)
    masked = bitfields & (tf.equal(bits, 24) | tf.equal(bits, 32))
    # decode_bmp(channels=4) gives a pixel's bytes 0-3 as its channels 2, 1, 0, 3.
    order = tf.gather(tf.constant([2, 1, 0, 3]), tf.where(named, byte, 3))
    width, height = _uint(head, 18, 4, True), _abs_signed32(_uint(head, 22, 4, True))
    size = _uint(head, 10, 4, True) + (bits * width + 31) // 32 * 4 * height
    known = tf.reduce_any(tf.equal(dib, _BMP_HEADERS))
    problem = tf.where(
        tf.logical_not(known),
        tf.strings.format(
            "BMP with a {}-byte header (12: OS/2 1.x, 64: OS/2 2.x): the TensorFlow decoder reads "
            "Windows' 40- to 124-byte headers only; convert it to PNG",
            dib,
        ),
        tf.where(
            tf.logical_not(
                tf.reduce_any(tf.equal(compression, [_BMP_PLAIN, _BMP_BITFIELDS, _BMP_ALPHABITFIELDS]))
            ),
            tf.strings.format(
                "compressed BMP (compression {}; 1 and 2 are RLE, 4 JPEG, 5 PNG): the TensorFlow decoder "
                "would read the compressed bytes as pixels; convert it to PNG",
                compression,
            ),
            tf.where(
                bitfields & tf.logical_not(masked & rgb_ok),
                tf.strings.format(
                    "{}-bit BMP with bit masks other than one whole byte per channel: the TensorFlow "
                    "decoder cannot read them; convert it to PNG",
                    bits,
                ),
                tf.where(
                    _bmp_palette_is_grey(b, dib, bits),
                    "",
                    "palette (indexed-colour) BMP: the TensorFlow decoder gives its colour indices, not "
                    "its colours; convert it to PNG",
                ),
            ),
        ),
    )
    return _BmpLayout(problem, masked & rgb_ok, order, masked & rgb_ok & alpha, size)


# ---------------------------------------------------------------------------------------
# EXIF orientation


_XMP_APP1 = b"http://ns.adobe.com/xap/1.0/\0"
_XMP_KEYWORD = b"XML:com.adobe.xmp\0"  # a PNG text chunk's keyword for XMP


def _jpeg_metadata_segments(b: _Bytes, xmp_named: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Offsets of a JPEG's first APP1 'Exif\\0\\0' segment and of its last APP1 XMP segment
    (their markers), -1 for none: the ones Pillow reads.

    Walks the segments from SOI to the start of scan, as Pillow reads them: EXIF usually
    follows SOI (or JFIF's APP0), but some editors write it after the tables or the frame
    header, and Pillow applies it there too. At most _MAX_JPEG_SEGMENTS steps (a segment, or
    one stray byte between segments) within the first _HEADER_PREFIX bytes; it ends at the EXIF
    segment unless `xmp_named` (XMP's namespace occurs in those bytes).
    """

    def cond(pos, found, xmp, stop, step):
        more = tf.logical_not(stop) & ((found < 0) | xmp_named)
        return more & (pos < b.length) & (step < _MAX_JPEG_SEGMENTS)

    def body(pos, found, xmp, stop, step):
        seg = b.get(pos, 4 + len(_XMP_APP1))
        marker = seg[1]
        is_marker = tf.equal(seg[0], 0xFF)
        fill = is_marker & tf.equal(marker, 0xFF)  # padding before a marker
        # RSTn, TEM and a stray 0xFF00 have no length; every other marker before the scan has.
        short = is_marker & (
            ((marker >= 0xD0) & (marker <= 0xD7)) | tf.equal(marker, 0x01) | tf.equal(marker, 0)
        )
        # The walk ends at the start of scan (DA), EOI (D9) or another SOI (D8). It steps over
        # what libjpeg and Pillow step over in a damaged header: a byte that is not a marker
        # (one at a time) and a length under 2 (as 2: the two length bytes).
        ends = is_marker & tf.reduce_any(tf.equal(marker, _i64([0xDA, 0xD9, 0xD8])))
        seglen = _uint(seg, 2, 2, False)
        app1 = is_marker & tf.equal(marker, 0xE1) & (pos + 2 + seglen <= b.length)  # all there
        exif = app1 & _equals(seg, 4, b"Exif\0\0") & (seglen >= 8) & (found < 0)
        xmp = tf.where(app1 & _equals(seg, 4, _XMP_APP1) & (seglen >= 2 + len(_XMP_APP1)), pos, xmp)
        step_to = tf.where(
            fill | tf.logical_not(is_marker),
            pos + 1,
            tf.where(short, pos + 2, pos + 2 + tf.maximum(seglen, 2)),
        )
        return step_to, tf.where(exif, pos, found), xmp, ends, step + 1

    start = (_i64(2), _i64(-1), _i64(-1), tf.constant(False), tf.constant(0))
    _, found, xmp, _, _ = tf.while_loop(cond, body, start)
    return found, xmp


# PNG chunk types the EXIF walks act on, one row each (in this order).
_PNG_KINDS = (b"eXIf", b"IDAT", b"IEND", b"acTL", b"fcTL", b"tEXt", b"iTXt")
_EXIF, _IDAT, _IEND, _ACTL, _FCTL, _TEXT, _ITXT = range(len(_PNG_KINDS))
# How much of a chunk the walks read: its head, then as much of its data as XMP's keyword and
# an iTXt's compression flag.
_PNG_CHUNK_READ = 8 + len(_XMP_KEYWORD) + 1


def _holds_any(data: tf.Tensor, names: tuple[bytes, ...]) -> tf.Tensor:
    """Whether any of `names` occurs in `data` (searches for fixed bytes: one regular expression
    for several names took 3.5x as long per byte)."""
    found = [tf.size(tf.strings.split(data, sep=name, maxsplit=1)) > 1 for name in names]
    return functools.reduce(tf.logical_or, found)


def _png_kinds(head: tf.Tensor) -> tf.Tensor:
    """bool [7]: which of _PNG_KINDS the chunk whose 8-byte head is `head` is."""
    kinds = tf.constant([list(kind) for kind in _PNG_KINDS], tf.int64)
    return tf.reduce_all(tf.equal(head[tf.newaxis, 4:8], kinds), axis=1)


def _png_xmp(chunk: tf.Tensor, kind: tf.Tensor) -> tf.Tensor:
    """Whether the chunk read as `chunk` (_PNG_CHUNK_READ bytes) holds XMP as text that can be
    read without inflating it: a tEXt, or an uncompressed iTXt, with XMP's keyword."""
    keyword = _equals(chunk, 8, _XMP_KEYWORD)
    return keyword & (kind[_TEXT] | (kind[_ITXT] & tf.equal(chunk[8 + len(_XMP_KEYWORD)], 0)))


def _png_chunk(data: tf.Tensor, size: tf.Tensor, pos: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(bytes, kinds): the first _PNG_CHUNK_READ bytes of the chunk at `pos` of `data` (`size`
    bytes long; zeros past its end) as int64, and which of _PNG_KINDS it is."""
    chunk = _bytes_at(data, pos, _PNG_CHUNK_READ, size)
    return chunk, _png_kinds(chunk)


def _png_metadata(data: tf.Tensor, b: _Bytes) -> tuple[tf.Tensor, tf.Tensor]:
    """The offsets of the eXIf chunk and the XMP text chunk Pillow's exif_transpose takes a
    PNG's orientation from: the last of each (-1 for none) among the chunks Pillow reads.

    Pillow reads the chunks up to the image data when it opens the file, and those after it,
    up to IEND, when it loads the pixels (an animation's: up to its next frame's fcTL); what
    it reads there replaces what it read before, and exif_transpose loads the pixels first.
    Two forward walks read each chunk's head (and, for XMP's keyword, the start of its data)
    from the whole file, so they find only chunks: never bytes of the compressed image that
    spell "eXIf", nor anything after IEND (an appended file). The first, up to the first IDAT,
    is skipped when IDAT follows IHDR (most files); the second, after it, runs only when the
    bytes "eXIf" or XMP's keyword occur after that IDAT at all. At most _MAX_PNG_CHUNKS chunks
    before the image data and _MAX_PNG_TAIL_CHUNKS after it.
    """
    size = tf.cast(tf.strings.length(data), tf.int64)
    none = _i64(-1)

    def before_cond(pos, exif, xmp, idat, frames, fctl, step):
        return (idat < 0) & (pos + 8 <= size) & (step < _MAX_PNG_CHUNKS)

    def before_body(pos, exif, xmp, idat, frames, fctl, step):
        chunk, kind = _png_chunk(data, size, pos)
        # IEND before any image data: nothing further (idat -2 ends the walk, none found).
        idat = tf.where(kind[_IDAT], pos, tf.where(kind[_IEND], _i64(-2), idat))
        # Pillow takes a frame count of 1..2**31 from the first acTL, and forgets it at a second.
        count = _uint(chunk, 8, 4, False)
        counted = tf.where(frames >= 0, none, tf.where((count > 0) & (count <= 1 << 31), count, none))
        frames = tf.where(kind[_ACTL], counted, frames)
        exif = tf.where(kind[_EXIF], pos, exif)
        xmp = tf.where(_png_xmp(chunk, kind), pos, xmp)
        return pos + 12 + _uint(chunk, 0, 4, False), exif, xmp, idat, frames, fctl | kind[_FCTL], step + 1

    def walk_before() -> tuple[tf.Tensor, ...]:
        start = (_i64(8), none, none, none, none, tf.constant(False), tf.constant(0))
        _, exif, xmp, idat, frames, fctl, _ = tf.while_loop(before_cond, before_body, start)
        # Pillow counts the image data as a frame of its own when no fcTL comes before it (a
        # default image outside the animation).
        return exif, xmp, idat, (frames > 1) | (tf.equal(frames, 1) & tf.logical_not(fctl))

    second = 8 + 12 + _uint(b.get(8, 4), 0, 4, False)
    exif, xmp, idat, animated = tf.cond(
        _png_kinds(b.get(second, 8))[_IDAT], lambda: (none, none, second, tf.constant(False)), walk_before
    )
    word = tf.constant([bytes([c]).isalnum() or c == ord("_") for c in range(256)])

    def after_cond(pos, exif, xmp, stop, step):
        return tf.logical_not(stop) & (pos + 8 <= size) & (step < _MAX_PNG_TAIL_CHUNKS)

    def after_body(pos, exif, xmp, stop, step):
        chunk, kind = _png_chunk(data, size, pos)
        # Pillow stops at a chunk type that is not four word characters ([0-9A-Za-z_]).
        stop = (
            kind[_IEND]
            | (kind[_FCTL] & animated)
            | tf.logical_not(tf.reduce_all(tf.gather(word, chunk[4:8])))
        )
        exif = tf.where(kind[_EXIF] & tf.logical_not(stop), pos, exif)
        xmp = tf.where(_png_xmp(chunk, kind) & tf.logical_not(stop), pos, xmp)
        return pos + 12 + _uint(chunk, 0, 4, False), exif, xmp, stop, step + 1

    def walk_after() -> tuple[tf.Tensor, tf.Tensor]:
        start = (idat, none, none, tf.constant(False), tf.constant(0))
        _, after_exif, after_xmp, _, _ = tf.while_loop(after_cond, after_body, start)
        return tf.where(after_exif >= 0, after_exif, exif), tf.where(after_xmp >= 0, after_xmp, xmp)

    def named_after() -> tf.Tensor:
        return _holds_any(tf.strings.substr(data, idat, size), (b"eXIf", _XMP_KEYWORD))

    walk = tf.cond(idat >= 0, named_after, lambda: tf.constant(False))
    return tf.cond(walk, walk_after, lambda: (exif, xmp))


def _tiff_orientation(b: _Bytes, tiff: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(orientation, tagged): the Orientation (1..8) in IFD0 of the TIFF structure at `tiff`,
    1 when absent or invalid; and whether IFD0 has the tag at all (then Pillow takes it, valid
    or not, and looks no further)."""
    header = b.get(tiff, 8)
    little = _equals(header, 0, b"II")
    valid = little | _equals(header, 0, b"MM")
    valid &= tf.equal(_uint(header, 2, 2, little), 42)
    ifd = tiff + _uint(header, 4, 4, little)
    count = _uint(b.get(ifd, 2), 0, 2, little)
    entries = tf.reshape(b.get(ifd + 2, 12 * _MAX_IFD_ENTRIES), [_MAX_IFD_ENTRIES, 12])
    tag, kind = _uint(entries, 0, 2, little), _uint(entries, 2, 2, little)
    # SHORT (type 3) as cameras write it; LONG (4) tolerated.
    value = tf.where(tf.equal(kind, 4), _uint(entries, 8, 4, little), _uint(entries, 8, 2, little))
    tagged = (tf.range(_MAX_IFD_ENTRIES, dtype=tf.int64) < count) & tf.equal(tag, _ORIENTATION_TAG)
    match = tagged & (tf.equal(kind, 3) | tf.equal(kind, 4))
    orientation = tf.gather(value, tf.argmax(tf.cast(match, tf.int32)))
    ok = valid & tf.reduce_any(match) & (orientation >= 1) & (orientation <= 8)
    return tf.cast(tf.where(ok, orientation, _i64(1)), tf.int32), valid & tf.reduce_any(tagged)


# XMP's orientation as Pillow finds it: the first 'tiff:Orientation' followed by '="<digit>' or
# '><digit>', within the first _MAX_XMP_BYTES of the XMP.
_XMP_ORIENTATION = b"tiff:Orientation"
_MAX_XMP_BYTES = 1 << 20


def _xmp_orientation(xmp: tf.Tensor) -> tf.Tensor:
    """The orientation (1..8) XMP text `xmp` states, as Pillow reads it; 1 when it states none
    or one outside 1..8 (which exif_transpose leaves as stored)."""
    after = tf.strings.split(xmp, sep=_XMP_ORIENTATION)[1:]
    heads = tf.cast(tf.io.decode_raw(tf.strings.substr(after, 0, 3), tf.uint8, fixed_length=3), tf.int64)
    heads = tf.reshape(heads, [-1, 3])
    digit = (heads >= 48) & (heads <= 57)
    quoted = tf.equal(heads[:, 0], ord("=")) & tf.equal(heads[:, 1], ord('"')) & digit[:, 2]
    element = tf.equal(heads[:, 0], ord(">")) & digit[:, 1]
    # A last candidate that always matches, stating 1: what no match gives.
    value = tf.concat([tf.where(quoted, heads[:, 2], heads[:, 1]) - 48, [1]], 0)
    found = tf.concat([quoted | element, [True]], 0)
    first = tf.gather(value, tf.argmax(tf.cast(found, tf.int32)))
    return tf.cast(tf.where((first >= 1) & (first <= 8), first, _i64(1)), tf.int32)


# Pillow strips any number of 'Exif\0\0' prefixes before the TIFF header (a PNG's eXIf
# payload may carry one, as a JPEG's APP1 does); up to this many are stepped over here.
_MAX_EXIF_PREFIXES = 16


def _metadata(data: tf.Tensor, b: _Bytes, fmt: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Where the EXIF payload Pillow reads from a JPEG or PNG starts (an APP1 segment's data,
    or an eXIf chunk's), and where the XMP it reads starts (an APP1 segment's packet, or a text
    chunk's data); -1 where there is none. `_payload_length` reads their lengths."""

    def jpeg() -> tuple[tf.Tensor, tf.Tensor]:
        # The walk only when the bytes of an EXIF or XMP segment's header occur at all (most
        # JPEGs without metadata: the walk is most of a small JPEG's decode time).
        head = tf.strings.substr(data, 0, _HEADER_PREFIX)
        xmp_named = _holds_any(head, (_XMP_APP1,))
        found, xmp = tf.cond(
            xmp_named | _holds_any(head, (b"Exif\0\0",)),
            lambda: _jpeg_metadata_segments(b, xmp_named),
            lambda: (_i64(-1), _i64(-1)),
        )
        return tf.where(found >= 0, found + 4, found), tf.where(xmp >= 0, xmp + 4 + len(_XMP_APP1), xmp)

    def png() -> tuple[tf.Tensor, tf.Tensor]:
        found, xmp = _png_metadata(data, b)
        return tf.where(found >= 0, found + 8, found), tf.where(xmp >= 0, xmp + 8, xmp)

    none = (_i64(-1), _i64(-1))
    return tf.case([(tf.equal(fmt, _JPEG), jpeg), (tf.equal(fmt, _PNG), png)], default=lambda: none)


def _payload_length(data: tf.Tensor, b: _Bytes, fmt: tf.Tensor, start: tf.Tensor, header: int) -> tf.Tensor:
    """The length of the payload at `start` that `_metadata` found: a JPEG segment's (its
    length field, less itself and the `header` bytes before `start`; within the first bytes,
    `b`), or a PNG chunk's (anywhere in the file)."""
    in_jpeg = _uint(b.get(start - header - 2, 2), 0, 2, False) - 2 - header
    in_png = _uint(_Bytes(tf.strings.substr(data, tf.maximum(start - 8, 0), 4), None).get(0, 4), 0, 4, False)
    return tf.where(tf.equal(fmt, _JPEG), in_jpeg, in_png)


@_unlowered
def exif_orientation(image_bytes: tf.Tensor, head: _Bytes | None = None) -> tf.Tensor:
    """The orientation (int32 1..8) of one encoded JPEG or PNG as Pillow's exif_transpose
    applies it; 1 (upright) otherwise.

    Reads the EXIF where Pillow reads it: the first APP1 'Exif' segment before a JPEG's scan
    (within the file's first 256 KiB), or a PNG's eXIf chunk, before its image data or after
    it up to IEND. Then, past any 'Exif\\0\\0' prefixes, its TIFF header (II/MM byte order,
    42) and tag 0x0112 of IFD0, within the payload's first 256 KiB. Without that tag, the
    XMP's 'tiff:Orientation' (the last XMP APP1 before a JPEG's scan; a PNG's last tEXt or
    uncompressed iTXt chunk with XMP's keyword). Anything missing, truncated or out of range
    gives 1.
    """
    b = head if head is not None else _Bytes(image_bytes)
    fmt = _format(b.get(0, 3))
    start, xmp_start = _metadata(image_bytes, b, fmt)

    def from_exif() -> tuple[tf.Tensor, tf.Tensor]:
        length = tf.clip_by_value(_payload_length(image_bytes, b, fmt, start, 0), 0, _HEADER_PREFIX)
        payload = _Bytes(tf.strings.substr(image_bytes, start, length), None)
        prefixes = tf.reshape(payload.get(0, 6 * _MAX_EXIF_PREFIXES), [_MAX_EXIF_PREFIXES, 6])
        prefixed = tf.reduce_all(tf.equal(prefixes, tf.constant(list(b"Exif\0\0"), tf.int64)), axis=1)
        skip = 6 * tf.reduce_sum(tf.math.cumprod(tf.cast(prefixed, tf.int64)))
        return _tiff_orientation(payload, skip)

    def from_xmp() -> tf.Tensor:
        length = _payload_length(image_bytes, b, fmt, xmp_start, len(_XMP_APP1))
        return _xmp_orientation(
            tf.strings.substr(image_bytes, xmp_start, tf.clip_by_value(length, 0, _MAX_XMP_BYTES))
        )

    orientation, tagged = tf.cond(
        start >= 0, from_exif, lambda: (tf.constant(1, tf.int32), tf.constant(False))
    )
    return tf.cond(tagged | (xmp_start < 0), lambda: orientation, from_xmp)


# Per orientation 1..8 (index 0 unused): transpose first, then flip rows and/or columns.
_TRANSPOSE = (False, False, False, False, False, True, True, True, True)
_FLIP_ROWS = (False, False, False, True, True, False, False, True, True)  # upside down
_FLIP_COLUMNS = (False, False, True, True, False, False, True, True, False)  # mirrored


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """[H, W, C] as stored -> upright, for EXIF orientation 1..8 (as Pillow's exif_transpose).

    5..8 swap the axes (5 transpose, 6 turn clockwise, 7 transverse, 8 turn
    counter-clockwise); 2 mirrors, 3 turns 180 degrees, 4 flips upside down.
    """
    o = tf.clip_by_value(tf.cast(orientation, tf.int32), 1, 8)
    perm = tf.where(tf.gather(_TRANSPOSE, o), [1, 0, 2], [0, 1, 2])
    axes = tf.boolean_mask([0, 1], tf.stack([tf.gather(_FLIP_ROWS, o), tf.gather(_FLIP_COLUMNS, o)]))
    upright = tf.reverse(tf.transpose(image, perm), axes)
    upright.set_shape([None, None, image.shape[-1]])
    return upright


# ---------------------------------------------------------------------------------------
# Decoding


def _color_table_size(flags: tf.Tensor) -> tf.Tensor:
    """Bytes of a GIF colour table from its packed flags byte (0 when there is none)."""
    size = 3 * tf.bitwise.left_shift(_i64(2), flags % 8)
    return tf.where(flags >= 128, size, _i64(0))


class _GifFrame(NamedTuple):
    """Where a GIF's first image is, as offsets into the file (-1: none found)."""

    end: tf.Tensor  # just past its data: the cut that drops later frames (-1: not followed)
    height: tf.Tensor  # its extent on the screen: top + height (0 when there is no image)
    width: tf.Tensor  # left + width
    descriptor: tf.Tensor  # its image descriptor (the 0x2C byte)
    control: tf.Tensor  # the last graphic control extension before it that sets a transparent
    #   colour (its 0x21 byte): the one Pillow and browsers apply
    first_control: tf.Tensor  # the first graphic control extension before it: the one giflib
    #   (tf.io.decode_gif) applies, painting its transparent colour black


@_unlowered
def _gif_first_image(data: tf.Tensor, only_if: tf.Tensor | None = None) -> _GifFrame:
    """Where a GIF's first image is: its end, its extent on the screen, its descriptor and its
    graphic control extensions (`_GifFrame`). The end is -2 when the walk stopped at its bound
    (_MAX_GIF_STEPS blocks and sub-blocks) before the end of the first image.

    A frame may be larger than the logical screen the header declares, and the decoder
    allocates the frame: the pixel limit must see both.

    `only_if` false: no walk, the answer for no GIF (end -1, size 0 x 0, no blocks); the header
    read asks so instead of putting the walk in a conditional.

    The loop is a functional While (`_unlowered`), as is each op that reads its answer
    (`gif_on_white`'s branches): a functional op reading a lowered loop's answer, directly or
    through a lowered conditional, made a graph that TensorFlow's session runtime (TF Serving's,
    the report's) refuses ("has inputs from different frames") though a TF2 call of the same
    graph runs it. Functional, a crafted GIF's walk of 200,000 sub-blocks takes 1.4x as long
    (BENCHMARKS.md, "The decoder's control flow").
    """
    if only_if is not None:
        data = tf.where(only_if, data, tf.constant(b""))
    b = _Bytes(data, None)

    # mode 0: at a block; 1: in an extension's sub-blocks; 2: in the first image's sub-blocks.
    def cond(pos, mode, end, step, height, width, descriptor, control, first_control):
        return (end < 0) & (pos < b.length) & (step < _MAX_GIF_STEPS)

    def body(pos, mode, end, step, height, width, descriptor, control, first_control):
        block = b.get(pos, 10)
        is_ext, is_image = tf.equal(block[0], 0x21), tf.equal(block[0], 0x2C)
        image_data = pos + 11 + _color_table_size(block[9])  # descriptor, table, LZW code size
        block_pos = tf.where(is_ext, pos + 2, tf.where(is_image, image_data, b.length))
        block_mode = tf.where(is_ext, _i64(1), tf.where(is_image, _i64(2), _i64(0)))
        size = block[0]  # in sub-blocks: the sub-block's length, 0 ends the sequence
        at_block = tf.equal(mode, 0)
        found = at_block & is_image  # left, top, width, height: 16-bit little-endian
        height = tf.where(found, _uint(block, 3, 2, True) + _uint(block, 7, 2, True), height)
        width = tf.where(found, _uint(block, 1, 2, True) + _uint(block, 5, 2, True), width)
        descriptor = tf.where(found, pos, descriptor)
        is_control = at_block & is_ext & tf.equal(block[1], 0xF9)  # 21 F9 04 flags delay(2) index 00
        control = tf.where(is_control & tf.equal(block[3] % 2, 1), pos, control)
        first_control = tf.where(is_control & (first_control < 0), pos, first_control)
        new_pos = tf.where(at_block, block_pos, pos + 1 + size)
        new_mode = tf.where(at_block, block_mode, tf.where(tf.equal(size, 0), _i64(0), mode))
        new_end = tf.where(tf.equal(mode, 2) & tf.equal(size, 0), pos + 1, end)
        return new_pos, new_mode, new_end, step + 1, height, width, descriptor, control, first_control

    start = (13 + _color_table_size(b.get(10, 1)[0]), _i64(0), _i64(-1), tf.constant(0))
    pos, _, end, step, height, width, descriptor, control, first_control = tf.while_loop(
        cond, body, start + (_i64(0), _i64(0), _i64(-1), _i64(-1), _i64(-1))
    )
    end = tf.where((end < 0) & (step >= _MAX_GIF_STEPS) & (pos < b.length), _i64(-2), end)
    return _GifFrame(end, height, width, descriptor, control, first_control)


def _gif_first_frame(data: tf.Tensor, end: tf.Tensor | None = None) -> tf.Tensor:
    """The GIF cut after its first frame (plus the trailer), so only that frame is decoded.

    TensorFlow's GIF decoder allocates every frame of an animation; only the first
    is used. When the block structure cannot be followed, the bytes are returned
    unchanged (and the decoder reports what is wrong with them). `end`: the first
    image's end when already found (`_header`).
    """
    if end is None:
        end = _gif_first_image(data).end
    return tf.cond(
        end > 0,
        lambda: tf.strings.join([tf.strings.substr(data, _i64(0), end), tf.constant(b";")]),
        lambda: data,
    )


# Each byte value as a one-byte string: int64 bytes back to a string (gather, then join).
_BYTE_STRINGS = tuple(bytes([i]) for i in range(256))


def _replaced(data: tf.Tensor, pos: tf.Tensor | int, values: list[tf.Tensor | int]) -> tf.Tensor:
    """A scalar string with its bytes at pos.. replaced by `values` (each a byte, 0-255)."""
    pos = tf.cast(pos, tf.int64)
    new = tf.cast(tf.stack([tf.cast(v, tf.int64) for v in values]), tf.int32)
    text = tf.strings.reduce_join(tf.gather(tf.constant(_BYTE_STRINGS), new))
    rest = tf.cast(tf.strings.length(data, unit="BYTE"), tf.int64)
    return tf.strings.join(
        [tf.strings.substr(data, _i64(0), pos), text, tf.strings.substr(data, pos + len(values), rest)]
    )


@_unlowered
def gif_on_white(data: tf.Tensor, frame: _GifFrame | None = None) -> tf.Tensor:
    """A GIF's first frame as uint8 RGB on its logical screen, as a page shows it: transparent
    pixels and the screen the frame leaves uncovered are white. `frame`: `_gif_first_image`'s
    answer when already found (`_header`).

    TensorFlow's decoder gives a first frame's transparent pixels as black, so drawings on a
    transparent background all decoded to one black picture (the PNG case `png_on_white` fixes),
    and it lays a frame placed off the screen's corner on a canvas of the frame's size, cutting
    it. So the frame is decoded on its own: the bytes are cut after it, the screen is set to its
    size and its position to the corner, the first graphic control block's transparency flag is
    cleared (giflib applies that block only), and the transparent colour Pillow and browsers apply
    (the last block before the image that sets one) gets white in the colour table (GIF
    transparency is all or nothing, so that is the composite onto white). The frame is then
    placed on the screen, which grows to cover the frame where the frame reaches past it (the
    pixel limit counts that extent, `_header`).
    """
    if frame is None:
        frame = _gif_first_image(data)

    def first() -> tf.Tensor:
        screen = _bytes_at(data, 0, 13)
        descriptor = _bytes_at(data, frame.descriptor, 10)
        control = _bytes_at(data, frame.control, 8)  # 21 F9 04 flags delay(2) index 00
        giflibs = _bytes_at(data, frame.first_control, 8)
        left, top = _uint(descriptor, 1, 2, True), _uint(descriptor, 3, 2, True)
        local = descriptor[9] >= 128  # a local colour table follows the descriptor
        table = tf.where(local, frame.descriptor + 10, tf.where(screen[10] >= 128, _i64(13), _i64(-1)))
        entries = tf.where(local, _color_table_size(descriptor[9]), _color_table_size(screen[10])) // 3
        index = control[6]
        transparent = (frame.control >= 0) & (table >= 0) & (index < entries)
        # giflib applies the first control block (black for its colour), Pillow and browsers the
        # last that sets one: the first's flag is cleared, the last's colour made white.
        black = (frame.first_control >= 0) & tf.equal(giflibs[3] % 2, 1)
        cut = _gif_first_frame(data, frame.end)
        # Most GIFs: a first frame that fills the screen, no transparency; decoded as they are.
        fills = tf.equal(left + top, 0) & tf.reduce_all(tf.equal(descriptor[5:9], screen[6:10]))

        def placed() -> tf.Tensor:
            alone = _replaced(cut, 6, [descriptor[5], descriptor[6], descriptor[7], descriptor[8]])
            alone = _replaced(alone, frame.descriptor + 1, [0, 0, 0, 0])
            alone = tf.cond(
                black, lambda: _replaced(alone, frame.first_control + 3, [giflibs[3] - 1]), lambda: alone
            )
            alone = tf.cond(
                transparent, lambda: _replaced(alone, table + 3 * index, [255, 255, 255]), lambda: alone
            )
            image = tf.io.decode_gif(alone)[0]
            size = tf.shape(image, out_type=tf.int64)
            height = tf.maximum(_uint(screen, 8, 2, True), top + size[0])
            width = tf.maximum(_uint(screen, 6, 2, True), left + size[1])
            padding = [[top, height - top - size[0]], [left, width - left - size[1]], [_i64(0), _i64(0)]]
            return tf.pad(image, padding, constant_values=255)

        plain = fills & tf.logical_not(transparent | black)
        return tf.cond(plain, lambda: tf.io.decode_gif(cut)[0], placed)

    def unfollowed() -> tf.Tensor:
        # Not followed to the end of a first image: the decoder says what is wrong with the bytes,
        # unless the walk stopped at its bound (a GIF of over a million blocks before its image).
        bounded = tf.debugging.Assert(
            tf.not_equal(frame.end, -2),
            [
                f"GIF with more than {_MAX_GIF_STEPS} blocks and sub-blocks before the end of its first image: not read"
            ],
            name="gif_blocks",
        )
        with tf.control_dependencies([bounded]):
            return tf.io.decode_gif(tf.identity(data))[0]

    return tf.cond((frame.end > 0) & (frame.descriptor >= 0), first, unfollowed)


def _jpeg_ratio_index(height: tf.Tensor, width: tf.Tensor, target_size: int) -> tf.Tensor:
    """Index into JPEG_RATIOS of the largest scale-down that keeps both sides >= target_size."""
    short = tf.minimum(height, width)
    index = _i64(0)
    for i, ratio in enumerate(JPEG_RATIOS[1:], start=1):
        index = tf.where(short // ratio >= target_size, _i64(i), index)
    return index


def decode_image(
    image_bytes: tf.Tensor,
    target_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    orientation: tf.Tensor | None = None,
) -> tf.Tensor:
    """One encoded JPEG/PNG/GIF/BMP -> upright uint8 RGB [H, W, 3], bounded in memory.

    Fails with InvalidArgument, before decoding, when the header declares more
    than `max_pixels`. A JPEG is decoded at the smallest libjpeg scale (1, 1/2,
    1/4, 1/8) that keeps both sides >= `target_size`; a GIF gives its first
    frame, placed on its screen (`gif_on_white`); grayscale is replicated to 3 channels; a
    PNG's or GIF's transparency is composited onto white (`png_on_white`, `gif_on_white`), a
    BMP's channels and alpha read where its bit masks put them and a BMP the decoder would misread refused
    (`bmp_or_unknown`). The EXIF orientation is applied last: `orientation` when the caller
    has read it already (`exif_orientation` of the same bytes), which spares the graph a second
    copy of the walks.
    """
    fmt, height, width, gif = _header(image_bytes)
    with tf.control_dependencies([check_pixels(height, width, max_pixels)]):
        image_bytes = tf.identity(image_bytes)
    ratio = _jpeg_ratio_index(height, width, target_size)
    branch = tf.where(
        tf.equal(fmt, _JPEG),
        ratio,
        tf.where(tf.equal(fmt, _GIF), _i64(4), tf.where(tf.equal(fmt, _PNG), _i64(6), _i64(5))),
    )

    def jpeg(r: int):
        # libjpeg's accurate integer IDCT (JDCT_ISLOW), not TensorFlow's default fast one: it is
        # what Pillow, and most decoders on a device, use, so a device that follows the TFLite
        # contract gets these pixels at every scale (the fast IDCT was up to 16 levels apart at
        # scale 1, which changed a 32 px model's answer for 1 JPEG in 5); ~2% slower per decode.
        return lambda: tf.io.decode_jpeg(image_bytes, channels=3, ratio=r, dct_method=JPEG_DCT_METHOD)

    branches = [jpeg(r) for r in JPEG_RATIOS] + [
        lambda: gif_on_white(image_bytes, gif),
        lambda: bmp_or_unknown(image_bytes, fmt),
        lambda: png_on_white(image_bytes),
    ]
    image = tf.switch_case(tf.cast(branch, tf.int32), branches)
    image.set_shape([None, None, 3])
    return apply_orientation(image, exif_orientation(image_bytes) if orientation is None else orientation)


@_unlowered
def bmp_or_unknown(image_bytes: tf.Tensor, fmt: tf.Tensor) -> tf.Tensor:
    """A BMP as uint8 RGB: its channels where its bit masks put them, its alpha (where an alpha
    mask names it) composited onto white, after refusing what tf.io.decode_bmp would misread
    (`_bmp_layout`'s problem, as InvalidArgument). Any other bytes go to tf.io.decode_image, which
    says they are no image it knows.

    An alpha channel that is 0 everywhere is taken as no alpha, as browsers take it: writers that
    fill the alpha mask's byte with nothing meant an opaque image, not an invisible one.
    """

    def bmp() -> tf.Tensor:
        layout = _bmp_layout(image_bytes)
        ok = tf.debugging.Assert(tf.equal(layout.problem, ""), [layout.problem], name="bmp_layout")
        with tf.control_dependencies([ok]):
            # Bytes after the rows (padding, a V5 header's ICC profile) the decoder refuses: cut.
            length = tf.cast(tf.strings.length(image_bytes, unit="BYTE"), tf.int64)
            cut = tf.where((layout.size > 54) & (layout.size < length), layout.size, length)
            data = tf.strings.substr(image_bytes, _i64(0), cut)

        def masked() -> tf.Tensor:
            rgba = tf.gather(tf.io.decode_bmp(data, channels=4), layout.order, axis=2)
            opaque = tf.logical_not(layout.alpha) | tf.reduce_all(tf.equal(rgba[..., 3], 0))
            return tf.cond(opaque, lambda: rgba[..., :3], lambda: _on_white(rgba))

        return tf.cond(layout.masked, masked, lambda: tf.io.decode_bmp(data, channels=3))

    return tf.cond(
        tf.equal(fmt, _BMP), bmp, lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    )


def _on_white(rgba: tf.Tensor) -> tf.Tensor:
    """uint8 RGBA [H, W, 4] -> uint8 RGB, composited onto white: round(rgb * a + 255 * (1 - a))."""
    alpha = tf.cast(rgba[..., 3:], tf.float32) / 255.0
    rgb = tf.cast(rgba[..., :3], tf.float32) * alpha + 255.0 * (1.0 - alpha)
    return tf.cast(tf.round(rgb), tf.uint8)


def _png_has_trns(image_bytes: tf.Tensor) -> tf.Tensor:
    """Whether a PNG has a tRNS chunk, or may have: its chunks are walked from the signature to
    the first IDAT (tRNS must come before it), reading each one's 8-byte head only, at most
    _MAX_PNG_CHUNKS of them (true beyond that)."""
    size = tf.cast(tf.strings.length(image_bytes), tf.int64)

    def more(pos, found, done):
        return tf.logical_and(tf.logical_not(done), pos + 8 <= size)

    def step(pos, found, done):
        head = tf.cast(tf.io.decode_raw(tf.strings.substr(image_bytes, pos, 8), tf.uint8), tf.int64)
        length = head[0] * 2**24 + head[1] * 2**16 + head[2] * 2**8 + head[3]
        kind = tf.strings.substr(image_bytes, pos + 4, 4)
        found = tf.equal(kind, "tRNS")
        return pos + 12 + length, found, tf.logical_or(found, tf.equal(kind, "IDAT"))

    _, found, done = tf.while_loop(
        more,
        step,
        (tf.constant(8, tf.int64), tf.constant(False), tf.constant(False)),
        maximum_iterations=_MAX_PNG_CHUNKS,
    )
    # Not done: more chunks than that before the image data (or a file cut short, which the
    # decode refuses either way). Blending then costs time, never pixels: it keeps opaque ones.
    return tf.logical_or(found, tf.logical_not(done))


@_unlowered
def png_on_white(image_bytes: tf.Tensor) -> tf.Tensor:
    """A PNG as uint8 RGB, its transparency composited onto white, as a page shows it.

    Dropping the alpha channel instead would show what transparent pixels happen to hold: a
    drawing exported from a web canvas is black strokes in alpha over RGB that is black
    everywhere, so every such image decoded to one black picture (ingest merged them all as
    copies; a served model gave them all one answer). Opaque pixels are unchanged (alpha 255).
    """
    # Only a PNG that can be transparent pays for the blend (2x a large PNG's decode): colour type
    # 4 or 6 (grey or RGB with alpha, IHDR's byte 25), or a tRNS chunk (a palette's or one colour's
    # transparency).
    color_type = tf.cond(
        tf.strings.length(image_bytes) > 25,
        lambda: tf.io.decode_raw(tf.strings.substr(image_bytes, 25, 1), tf.uint8)[0],
        lambda: tf.constant(0, tf.uint8),  # cut short: decode_png says so
    )
    transparent = tf.logical_or(
        tf.logical_or(tf.equal(color_type, 4), tf.equal(color_type, 6)), _png_has_trns(image_bytes)
    )

    return tf.cond(
        transparent,
        lambda: _on_white(tf.io.decode_png(image_bytes, channels=4)),
        lambda: tf.io.decode_png(image_bytes, channels=3),
    )


def decode_and_resize(encoded: tf.Tensor, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """[batch] encoded JPEG/PNG/GIF/BMP bytes -> float32 [batch, S, S, 3] in [0, 255].

    Each image goes through `decode_image` (pixel limit, DCT scaling, first GIF
    frame, EXIF orientation), then an antialiased resize. Works on a rank-1
    batch of any length (tf.map_fn per image, since images in a batch differ in
    size and format).

    One traced function per (image_size, max_pixels) in a process: a graph that
    calls it (TFT traces preprocessing_fn six times in one Transform run) holds a
    call to that function instead of tracing the decoder's header walks and
    branches again (~0.5 s each), and an eager caller runs it as a graph rather
    than op by op.
    """
    return _decode_and_resize_function(int(image_size), int(max_pixels))(encoded)


@functools.cache
def _decode_and_resize_function(image_size: int, max_pixels: int) -> tf.types.experimental.GenericFunction:
    def one(image_bytes: tf.Tensor) -> tf.Tensor:
        image = decode_image(image_bytes, image_size, max_pixels)
        return tf.image.resize(
            tf.cast(image, tf.float32),
            [image_size, image_size],
            method=RESIZE_METHOD,
            antialias=RESIZE_ANTIALIAS,
        )

    def batch(encoded: tf.Tensor) -> tf.Tensor:
        return tf.map_fn(
            one,
            encoded,
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
        )

    # autograph=False, as TFT traces preprocessing_fn: the decoder's control flow is explicit.
    return tf.function(batch, input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)


@functools.cache
def traced_decoder(
    target_size: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tf.types.experimental.GenericFunction:
    """`decode_image` of one encoded image (a scalar string) as a function traced once per
    (target_size, max_pixels) in a process: op by op, each image would pay the header walks and
    branches again. autograph=False, as everywhere the decoder is traced: its control flow is
    explicit. For callers that decode image by image (the report's thumbnails, the search for
    records the decoder refuses)."""
    return tf.function(
        lambda image: decode_image(image, target_size, max_pixels),
        input_signature=[tf.TensorSpec([], tf.string)],
        autograph=False,
    )


def forget_traced_functions() -> None:
    """Drop the traced decoders (benchmarks: make a run pay the trace as a new process does)."""
    _decode_and_resize_function.cache_clear()
    traced_decoder.cache_clear()


def preprocess_images(
    encoded: tf.Tensor, backbone: str, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tf.Tensor:
    """Decode, resize, then apply the backbone's own preprocess_input."""
    images = decode_and_resize(_dense_1d(encoded), image_size, max_pixels)
    return backbones.get(backbone).preprocess_input(images)


def preprocessing_fn(inputs: Mapping[str, Any], custom_config: Mapping[str, Any]) -> dict[str, Any]:
    """TFT preprocessing_fn.

    custom_config: {'backbone': name, 'image_size': int, 'max_image_pixels': int (optional)}.
    """
    backbone = custom_config["backbone"]
    image_size = int(custom_config["image_size"])
    max_pixels = int(custom_config.get("max_image_pixels") or DEFAULT_MAX_PIXELS)
    outputs = {IMAGE_XF: preprocess_images(inputs[IMAGE_KEY], backbone, image_size, max_pixels)}
    if LABEL_KEY in inputs:
        # Class names go to the vocabulary exactly as given: ingest decides what a class
        # name may be; the Trainer's input function refuses labels the vocabulary lacks.
        # The vocabulary's order is the model's output order. TFT orders by count unless told
        # otherwise, so a retrain whose counts changed reordered the outputs (and flipped what a
        # two-class model's one score means); ordered by each name's SHA-1, two classes keep
        # their order in every retrain, whatever their counts. Changing the order means changing
        # trainer.features.LABEL_ORDER too (Transform's cache key).
        labels = _dense_1d(inputs[LABEL_KEY])
        outputs[LABEL_XF] = tft.compute_and_apply_vocabulary(
            labels, vocab_filename=LABEL_VOCAB, fingerprint_shuffle=True
        )
    return outputs
