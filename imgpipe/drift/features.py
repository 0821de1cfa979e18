"""The features drift is measured on, computed from an image's bytes by one function for both sides.

Per image: `width`, `height` (pixels, from the header), `channels` (as stored:
1 grayscale, 2 grayscale + alpha, 3 colour, 4 colour + alpha or CMYK; a
palette image counts 3, or 4 with transparency), `format` (JPEG, PNG, GIF,
BMP) and `brightness` (mean luminance 0..255, ITU-R BT.601 as Pillow's "L"
conversion, of the first frame as the model's decoder makes it: 16-bit samples by
their high byte, transparency laid on white; `_grey`). Each row also carries `class`: the label on
the training side, the predicted top class on the served side.

Images that cannot be measured (not one of the four formats, undecodable,
above the pixel limit) are not rows: they are counted by reason.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import random
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageStat

from imgpipe.drift import FEATURE_NAMES
from serving.config import DEFAULT_MAX_PIXELS
from serving.image_header import read_header

NUMERIC = ("width", "height", "brightness")
CATEGORICAL = ("channels", "format", "class")
CLASS = "class"
FEATURES = FEATURE_NAMES  # width, height, channels, format, brightness, CLASS (the package's, for the CLI)

# Brightness is a mean: measuring it on a JPEG decoded at a reduced scale (DCT
# scaling averages blocks) changes it by a fraction of a grey level and makes
# large photos cheap. Other formats are decoded at full size.
_DRAFT_SIZE = (512, 512)

T = TypeVar("T")


class ImageFeatureError(ValueError):
    """An image whose features cannot be computed; the message is the reason (counted, not raised)."""


def image_features(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """{width, height, channels, format, brightness} of one encoded image.

    Raises ImageFeatureError (a short reason, for counting) when the bytes are
    not a JPEG/PNG/GIF/BMP image, declare more than `max_pixels` pixels, or
    cannot be decoded.
    """
    header = read_header(data)
    if header is None:
        raise ImageFeatureError("not a readable JPEG, PNG, GIF or BMP image")
    if max_pixels and header.pixels > max_pixels:
        raise ImageFeatureError(f"larger than {max_pixels / 1e6:g} MP")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own bomb warnings: the limit above applies
            with Image.open(io.BytesIO(data)) as image:
                channels = len(image.getbands())
                if image.mode == "P":
                    channels = 4 if "transparency" in image.info else 3
                if image.format == "JPEG":
                    image.draft("L", _DRAFT_SIZE)
                brightness = ImageStat.Stat(_grey(image)).mean[0]
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageFeatureError("cannot be decoded") from e
    return {
        "width": header.width,
        "height": header.height,
        "channels": channels,
        "format": header.format,
        "brightness": float(brightness),
    }


# Pillow's modes of 16-bit (or wider) grey samples: a 16-bit grey PNG opens as one of them.
_WIDE_GREY = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def _grey(image: Image.Image) -> Image.Image:
    """The picture in grey ("L"), as the model's decoder gives it (trainer/preprocessing.py):
    16-bit samples become 8-bit by their high byte, where Pillow's convert("L") clips them at
    255 (an audit's 16-bit copies of 300 digits measured 180 against 72: drift, exit 3, for the
    same pictures and the same scores); transparency (an alpha band, a palette's or one
    colour's tRNS) is laid on white, where convert("L") drops it (a drawing on a transparent
    canvas measured 0 against 183 for the same drawing on white, answered alike)."""
    if image.mode in _WIDE_GREY:
        samples = np.asarray(image.convert("I") if image.mode != "I" else image, dtype=np.int64)
        grey = (samples >> 8).clip(0, 255).astype(np.uint8)
        clear = image.info.get("transparency")
        if isinstance(clear, int):  # a tRNS grey value: those pixels are transparent, on white
            grey = np.where(samples == clear, np.uint8(255), grey)
        return Image.fromarray(grey, "L")
    if image.format == "BMP" and image.mode == "RGBA" and image.getchannel("A").getextrema() == (0, 0):
        # An alpha mask with every pixel 0: writers that leave the alpha byte empty; the
        # decoder takes such a BMP as opaque (bmp_or_unknown), not as all transparent.
        return image.convert("RGB").convert("L")
    if image.mode in _ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("L")
    return image.convert("L")


@dataclasses.dataclass
class FeatureTable:
    """Rows of features, one per measurable image, and the images skipped, counted by reason."""

    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    skipped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    def add(self, image: bytes, label: str | None) -> None:
        """Measure one image; its class is `label` (None when unknown)."""
        try:
            row = image_features(image)
        except ImageFeatureError as e:
            self.skipped[str(e)] += 1
            return
        row[CLASS] = label
        self.rows.append(row)

    @classmethod
    def of(cls, items: Iterable[tuple[bytes, str | None]]) -> FeatureTable:
        table = cls()
        for image, label in items:
            table.add(image, label)
        return table

    def columns(self) -> dict[str, list[Any]]:
        """Column name -> values, in FEATURES order (for a DataFrame)."""
        return {name: [row[name] for row in self.rows] for name in FEATURES}


def reservoir_sample(items: Iterable[T], size: int, seed: int = 0) -> tuple[list[T], int]:
    """A uniform sample of at most `size` items from a stream, and how many there were.

    Deterministic for a seed; keeps the stream's order among the chosen items.
    """
    rng = random.Random(seed)
    chosen: list[tuple[int, T]] = []
    seen = 0
    for seen, item in enumerate(items, start=1):
        if len(chosen) < size:
            chosen.append((seen, item))
            continue
        j = rng.randrange(seen)
        if j < size:
            chosen[j] = (seen, item)
    return [item for _, item in sorted(chosen, key=lambda pair: pair[0])], seen


def class_distribution(labels: Sequence[str | None]) -> dict[str, float]:
    """Share of each class among the rows (None: no class known), sorted by class."""
    counts = collections.Counter("" if label is None else label for label in labels)
    total = sum(counts.values()) or 1
    return {name: counts[name] / total for name in sorted(counts)}
