"""Eval images unlike the train images: the data gate says so before anything is judged on them.

A model is judged on the eval split as a stand-in for the pictures it will be sent. When the eval
images are not drawn like the train ones (TFRecords made elsewhere: an eval set from another
camera, darker, inverted, another size), the gate's number measures that difference too: a model
that scored 0.79 on eval images like its train images scored 0.51 on the same images darkened
and 0.21 inverted, and the run's notes blamed the labels ("labels given at random?") without a
word of the eval split.

The check compares a seeded sample of each split (at most SAMPLE images) in what a picture's
decoding shows: its brightness and contrast (the mean and the spread of its grey levels), its
colour (the mean spread of a pixel's red, green and blue: 0 for a grey picture) and where its subject
sits (`subject_position`: pictures moved or cropped off-centre), measured on the
picture reduced to MEASURED_SIDE pixels a side, so that a large JPEG read at a reduced scale and a
small one are measured alike; its width and height; its format. When the splits' classes come in
other proportions (a balanced eval split of skewed data), the train sample is drawn in the eval
split's proportions first, so classes that differ in brightness or size do not read as a shift.
A numeric feature differs when the two samples' distributions are far apart (a two-sample
Kolmogorov-Smirnov statistic of at least MIN_DISTANCE) and sampling alone would seldom put them
so (p below SIGNIFICANCE); the format when its shares differ by at least MIN_DISTANCE and a
chi-squared test of the two samples' counts gives p below SIGNIFICANCE. A split drawn at random
from one set of pictures stays below both: with 300 and 72 images, sampling alone reaches a
distance of 0.26 once in a thousand draws.
"""

from __future__ import annotations

import collections
import io
import itertools
import logging
import random
import warnings
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from components import class_apart

log = logging.getLogger(__name__)

SAMPLE = 300  # images per split, a seeded uniform sample
MEASURED_SIDE = 64
MIX_APART = 0.1  # class shares this far apart (or more): the train sample is drawn in eval's mix
MIN_DISTANCE = 0.3
SIGNIFICANCE = 0.001
MIN_IMAGES = 20  # per split: fewer, and the check does not judge
NUMERIC = ("brightness", "contrast", "colour", "width", "height", "across", "down")
# How the warning names the position features: where a picture's subject sits (its pixels unlike
# the picture's border, weighed by how unlike), from -0.5 (left edge, top) to 0.5 (right, bottom).
NAMES = {
    "across": "subject's position across (-0.5 left edge, 0.5 right)",
    "down": "subject's position down (-0.5 top, 0.5 bottom)",
}
# A position differs only when its medians are this far apart too (a twentieth of a side, 1.6 px
# of 32): digits turned 180 degrees, or an eval split missing a class, put the subject's mean
# position 0.02 away, far apart for the test (the positions cluster tightly) but no move.
MIN_MOVE = 0.05
_MAX_PIXELS = 50_000_000  # larger images are not measured


def measure(image: bytes) -> dict[str, Any] | None:
    """{brightness, contrast, colour, border, border_spread, flat, width, height, format} of one
    encoded image (None: not readable). Colour: the mean spread of a pixel's red, green and blue
    (0 for a grey picture); border(_spread): the mean (deviation) of its outer edge's grey levels
    (class_apart.border); flat: every pixel alike.

    The pixels are the model's decode (trainer.preprocessing.decode_image: transparency laid on
    white, 16-bit samples by their high byte, EXIF orientation applied, a JPEG at the smallest
    DCT scale that covers MEASURED_SIDE), not Pillow's convert("RGB"), which drops an alpha band
    and clips 16-bit samples: an audit's drawings on transparent canvases measured all black and
    its 16-bit PNGs all white, and the gate told the user to remove them as one-colour images (52
    of 72) and called a class of such drawings "apart" (brightness 0 against 179) while the model
    saw them at 182. Width, height and format are the file's header's."""
    from PIL import Image

    from trainer.preprocessing import traced_decoder  # TensorFlow: loaded by the data gate anyway

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(image)) as opened:  # the header only
                width, height, fmt = opened.width, opened.height, opened.format or "?"
        if width * height > _MAX_PIXELS:
            return None
        decoded = traced_decoder(MEASURED_SIDE, _MAX_PIXELS)(image).numpy()
        rgb = Image.fromarray(decoded, "RGB").resize((MEASURED_SIDE, MEASURED_SIDE), Image.BOX)
        pixels = np.asarray(rgb, np.float32)
    except Exception:  # noqa: BLE001 - any damaged image is left out of an advisory check
        return None
    grey = pixels @ np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as Pillow's "L"
    edge, edge_spread = class_apart.border(grey)
    across, down = subject_position(grey, edge)
    return {
        "brightness": float(grey.mean()),
        "contrast": float(grey.std()),
        "colour": float((pixels.max(axis=-1) - pixels.min(axis=-1)).mean()),
        "border": edge,
        "border_spread": edge_spread,
        "flat": bool(np.all(pixels == pixels[0, 0])),  # one colour, grey or not
        "width": float(width),
        "height": float(height),
        "across": across,
        "down": down,
        "format": fmt,
    }


def subject_position(grey: np.ndarray, background: float) -> tuple[float, float]:
    """(across, down) of a picture's subject: the mean position of its pixels weighed by how far
    their grey level is from the border's (`background`), from -0.5 (left edge, top) to 0.5 (right,
    bottom); (0, 0) for a picture without one (every pixel the border's grey). An eval split whose
    digits were moved 6 px of 32 keeps its brightness and contrast; this moves by about 0.19."""
    weight = np.abs(grey - background)
    total = float(weight.sum())
    if total <= 0:
        return 0.0, 0.0
    h, w = grey.shape
    xs = (np.arange(w) + 0.5) / w - 0.5
    ys = (np.arange(h) + 0.5) / h - 0.5
    return float(weight.sum(axis=0) @ xs / total), float(weight.sum(axis=1) @ ys / total)


def sample(records: Iterable[Any], size: int = SAMPLE, seed: int = 0) -> list[Any]:
    """A seeded uniform sample of at most `size` of the records (reservoir: one pass)."""
    rng = random.Random(seed)
    chosen: list[Any] = []
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
        if any(name not in row for row in itertools.chain(train, eval_)):
            continue  # rows measured before the feature was (hand-made rows, older records)
        a = np.array([row[name] for row in train])
        b = np.array([row[name] for row in eval_])
        if np.all(a == a[0]) and np.all(b == a[0]):
            continue
        result = stats.ks_2samp(a, b)
        medians = float(np.median(a)), float(np.median(b))
        moved = name not in NAMES or abs(medians[0] - medians[1]) >= MIN_MOVE
        if result.statistic >= MIN_DISTANCE and result.pvalue < SIGNIFICANCE and moved:
            digits = 2 if name in NAMES else 1  # positions are fractions of a side
            out[name] = {
                "distance": round(float(result.statistic), 3),
                "p_value": float(f"{result.pvalue:.3g}"),
                "train_median": round(medians[0], digits),
                "eval_median": round(medians[1], digits),
            }
    shares = [_shares(row["format"] for row in side) for side in (train, eval_)]
    formats = sorted(set(shares[0]) | set(shares[1]))
    apart = max(abs(shares[0].get(f, 0.0) - shares[1].get(f, 0.0)) for f in formats)
    if apart >= MIN_DISTANCE and len(formats) > 1:
        # As for the numbers: would sampling alone seldom put the shares so far apart?
        table = [[sum(row["format"] == f for row in side) for f in formats] for side in (train, eval_)]
        apart = apart if stats.chi2_contingency(table).pvalue < SIGNIFICANCE else 0.0
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
                f"{NAMES.get(name, name)} (median {found['train_median']:g} in train, "
                f"{found['eval_median']:g} in eval)"
            )
    return ", ".join(parts)


def _share_text(shares: dict[str, float]) -> str:
    return ", ".join(f"{fmt} {share:.0%}" for fmt, share in shares.items())


SHIFT_WARNING = "the eval images differ from the train images"


def in_proportions(
    train: list[dict[str, Any]], eval_: list[dict[str, Any]], seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, eval rows) to compare: the train rows drawn (without repeats) in the eval
    rows' class proportions, as many as the train rows allow; both whole when a row's class is
    unknown or the two mixes are less than MIX_APART apart in every class's share.

    A class rare in train and common in eval limits how many train rows keep eval's mix: when
    fewer than MIN_IMAGES would be left, the classes that limit it most are left out of both
    sides (as few as need be), so the rest are still compared rather than none."""
    labels = [row["label"] for row in train] + [row["label"] for row in eval_]
    if not eval_ or any(label is None for label in labels):
        return train, eval_
    mix = _shares(row["label"] for row in train)
    wanted = collections.Counter(row["label"] for row in eval_)
    if max(abs(mix.get(c, 0.0) - n / len(eval_)) for c, n in wanted.items()) < MIX_APART:
        return train, eval_  # alike enough: the whole samples
    by_class: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for row in train:
        by_class[row["label"]].append(row)
    shared = {c: n for c, n in wanted.items() if by_class.get(c)}
    if not shared:
        return train, eval_

    def kept(classes: dict[str, int]) -> float:  # train rows that can be kept in that mix
        total = sum(classes.values())
        return min(len(by_class[c]) * total / n for c, n in classes.items())

    while len(shared) > 1 and kept(shared) < MIN_IMAGES:
        limiting = min(shared, key=lambda c: (len(by_class[c]) / shared[c], c))
        del shared[limiting]
    total, scale = sum(shared.values()), kept(shared)
    rng = random.Random(seed)
    out = []
    for c, n in sorted(shared.items()):
        out += rng.sample(by_class[c], max(1, int(scale * n / total)))
    return out, [row for row in eval_ if row["label"] in shared]


def one_colour(samples: dict[str, Sequence[dict[str, Any]]]) -> list[str]:
    """A warning for each split whose sample holds images of one colour as decoded (hand-made
    records: `imgpipe ingest` refuses them), which tell nothing of their class."""
    out = []
    for split, rows in samples.items():
        flat = sum(1 for row in rows if row["flat"])
        if flat:
            out.append(
                f"{flat} of the {len(rows)} sampled {split} images are one colour as decoded (about "
                f"{flat / len(rows):.0%} of the split): nothing in them tells their class, so they teach "
                "noise (train) or are answered by chance (eval); remove them (`imgpipe ingest` refuses "
                "such images)"
            )
    return out


def gate_warnings(
    train_records: Iterable[bytes],
    eval_records: Iterable[bytes],
    sizes: dict[str, list[float]] | None = None,
    class_positions: Collection[int] | None = None,
) -> list[str]:
    """The data gate's warnings from the two splits' samples (`one_colour`'s, a class apart's,
    then the shift's); `sizes`, when given, gets each split's median [width, height] of its
    sample; `class_positions`, the positions of the train records drawn class by class for the
    class check (class_apart.class_sample; None: the train sample). Advisory: when the check
    cannot run, it says so in the log, and the run goes on."""
    notes: list[str] = []
    try:
        _, warning = split_shift(train_records, eval_records, notes, sizes, class_positions)
    except Exception as e:  # noqa: BLE001 - a record it cannot read stops nothing
        log.warning("the check of eval images against train images could not run: %s", e)
        warning = None
    return notes + ([warning] if warning else [])


def split_shift(
    train_records: Iterable[bytes],
    eval_records: Iterable[bytes],
    notes: list[str] | None = None,
    sizes: dict[str, list[float]] | None = None,
    class_positions: Collection[int] | None = None,
) -> tuple[dict | None, str | None]:
    """(the shift found, or {} / None as `compare`; the data gate's warning, or None) for two
    splits' serialized tf.Examples. `notes`, when given, gets the samples' other findings (images
    of one colour: `one_colour`; a class apart: class_apart, on the train records at
    `class_positions` when given, else on the train sample); `sizes` each split's median
    [width, height]. The train records are read once, each image measured once."""
    from trainer.image_ids import record_image

    def row_of(record: bytes) -> dict[str, Any] | None:
        image, label = record_image(record)
        row = measure(image) if image else None
        return None if row is None else {**row, "label": label}

    wanted = class_positions if class_positions is not None else ()
    set_aside: dict[int, bytes] = {}  # the class check's records, kept as the one pass goes by

    def numbered(records: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
        for i, record in enumerate(records):
            if i in wanted:
                set_aside[i] = record
            yield i, record

    train_rows = {i: row_of(record) for i, record in sample(numbered(train_records))}
    sides = [
        [row for row in train_rows.values() if row is not None],
        [row for row in map(row_of, sample(eval_records)) if row is not None],
    ]
    if notes is not None:
        notes.extend(one_colour(dict(zip(("train", "eval"), sides, strict=True))))
    if sizes is not None:
        for split, rows in zip(("train", "eval"), sides, strict=True):
            if rows:
                sizes[split] = [
                    float(np.median([r["width"] for r in rows])),
                    float(np.median([r["height"] for r in rows])),
                ]
    if notes is not None:
        if class_positions is None:
            by_class = sides[0]
        else:
            rows = (train_rows[i] if i in train_rows else row_of(set_aside[i]) for i in sorted(set_aside))
            by_class = [row for row in rows if row is not None]
        notes.extend(class_apart.warnings(class_apart.classes_apart(by_class)))
    sides = list(in_proportions(sides[0], sides[1]))
    shift = compare(*sides)
    if shift is None and sides[1]:
        log.info(
            "the eval images were not compared with the train images: %d train and %d eval images "
            "measured in their classes' shares, fewer than %d",
            len(sides[0]),
            len(sides[1]),
            MIN_IMAGES,
        )
    if not shift:
        return shift, None
    return shift, (
        f"{SHIFT_WARNING}: {describe(shift)}, in a sample of {len(sides[0])} train and {len(sides[1])} eval "
        "images. The gate judges the model on pictures unlike those it learned from: its accuracy "
        "measures that difference too, and classes may look told apart at chance for it. If the eval "
        "split should be like the train split, make both from one set of pictures (`imgpipe ingest` "
        "splits each class at random, but keeps near-copies, a clip's or a burst's frames, in one split: "
        "a class of a few clips has whole clips in eval, which its ingest report's `near_copies` lists)"
    )
