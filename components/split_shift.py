"""Eval images unlike the train images: the data gate says so before anything is judged on them.

A model is judged on the eval split as a stand-in for the pictures it will be sent. When the eval
images are not drawn like the train ones (TFRecords made elsewhere: an eval set from another
camera, darker, inverted, another size), the gate's number measures that difference too: a model
that scored 0.79 on eval images like its train images scored 0.51 on the same images darkened
and 0.21 inverted, and the run's notes blamed the labels ("labels given at random?") without a
word of the eval split.

The check compares a seeded sample of each split (at most SAMPLE images) in what a picture's
decoding shows: its brightness and contrast (the mean and the spread of its grey levels), its
width and height, and its format. A numeric feature differs when the two samples' distributions
are far apart (a two-sample Kolmogorov-Smirnov statistic of at least MIN_DISTANCE) and sampling
alone would seldom put them so (p below SIGNIFICANCE); the format when its shares differ by at
least MIN_DISTANCE. A split drawn at random from one set of pictures stays below both: with 300
and 72 images, sampling alone reaches a distance of 0.26 once in a thousand draws.
"""

from __future__ import annotations

import io
import random
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

SAMPLE = 300  # images per split, a seeded uniform sample
MIN_DISTANCE = 0.3
SIGNIFICANCE = 0.001
MIN_IMAGES = 20  # per split: fewer, and the check does not judge
NUMERIC = ("brightness", "contrast", "width", "height")
_DRAFT = (256, 256)  # a JPEG is measured at a reduced scale (block means: the mean moves little)


def measure(image: bytes) -> dict[str, Any] | None:
    """{brightness, contrast, width, height, format} of one encoded image (None: not readable)."""
    from PIL import Image, ImageStat

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(image)) as opened:
                width, height, fmt = opened.width, opened.height, opened.format or "?"
                if width * height > 50_000_000:
                    return None
                if fmt == "JPEG":
                    opened.draft("L", _DRAFT)
                stat = ImageStat.Stat(opened.convert("L"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return {
        "brightness": stat.mean[0],
        "contrast": stat.stddev[0],
        "width": float(width),
        "height": float(height),
        "format": fmt,
    }


def sample(records: Iterable[bytes], size: int = SAMPLE, seed: int = 0) -> list[bytes]:
    """A seeded uniform sample of at most `size` of the records (reservoir: one pass)."""
    rng = random.Random(seed)
    chosen: list[bytes] = []
    for seen, record in enumerate(records, start=1):
        if len(chosen) < size:
            chosen.append(record)
        else:
            j = rng.randrange(seen)
            if j < size:
                chosen[j] = record
    return chosen


def compare(train: Sequence[dict[str, Any]], eval_: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """How the eval sample differs from the train sample ({feature: {...}}), {} when it does not,
    None when a sample is too small to judge."""
    from scipy import stats

    if len(train) < MIN_IMAGES or len(eval_) < MIN_IMAGES:
        return None
    out: dict[str, Any] = {}
    for name in NUMERIC:
        a = np.array([row[name] for row in train])
        b = np.array([row[name] for row in eval_])
        if np.all(a == a[0]) and np.all(b == a[0]):
            continue
        result = stats.ks_2samp(a, b)
        if result.statistic >= MIN_DISTANCE and result.pvalue < SIGNIFICANCE:
            out[name] = {
                "distance": round(float(result.statistic), 3),
                "p_value": float(f"{result.pvalue:.3g}"),
                "train_median": round(float(np.median(a)), 1),
                "eval_median": round(float(np.median(b)), 1),
            }
    shares = [_shares(row["format"] for row in side) for side in (train, eval_)]
    apart = max(abs(shares[0].get(f, 0.0) - shares[1].get(f, 0.0)) for f in set(shares[0]) | set(shares[1]))
    if apart >= MIN_DISTANCE:
        out["format"] = {"distance": round(apart, 3), "train": shares[0], "eval": shares[1]}
    return out


def _shares(values: Iterable[str]) -> dict[str, float]:
    values = list(values)
    return {v: round(values.count(v) / len(values), 3) for v in sorted(set(values))}


def describe(shift: dict[str, Any]) -> str:
    """'brightness (median 62 in train, 22 in eval), format (...)' for a warning."""
    parts = []
    for name, found in shift.items():
        if name == "format":
            parts.append(f"format (train {_share_text(found['train'])}; eval {_share_text(found['eval'])})")
        else:
            parts.append(
                f"{name} (median {found['train_median']:g} in train, {found['eval_median']:g} in eval)"
            )
    return ", ".join(parts)


def _share_text(shares: dict[str, float]) -> str:
    return ", ".join(f"{fmt} {share:.0%}" for fmt, share in shares.items())


SHIFT_WARNING = "the eval images differ from the train images"


def split_shift(
    train_records: Iterable[bytes], eval_records: Iterable[bytes]
) -> tuple[dict | None, str | None]:
    """(the shift found, or {} / None as `compare`; the data gate's warning, or None) for two
    splits' serialized tf.Examples."""
    from trainer.image_ids import record_image

    sides = []
    for records in (train_records, eval_records):
        rows = [measure(image) for image in map(record_image, sample(records)) if image]
        sides.append([row for row in rows if row is not None])
    shift = compare(*sides)
    if not shift:
        return shift, None
    return shift, (
        f"{SHIFT_WARNING}: {describe(shift)}, in a sample of {len(sides[0])} train and {len(sides[1])} eval "
        "images. The gate judges the model on pictures unlike those it learned from: its accuracy "
        "measures that difference too, and classes may look told apart at chance for it. If the eval "
        "split should be like the train split, make both from one set of pictures (`imgpipe ingest` "
        "splits each class at random)"
    )
