"""A class whose pictures were made unlike the others': the data gate says so before training.

A model learns whatever tells its classes apart. When one class's pictures differ from the rest
in how they were made (another camera's colour, a border, another size or file format) more
than the classes differ in what they show, the model can learn that instead, pass the gate on
an eval split made the same way, and fail on the class's pictures that lack it. An audit made
every `nine` of a retrain's new digits a tinted scan: the model was blessed at 0.94 and pushed,
and recognised none of 60 grey nines the served model had recognised 42 of.

The check compares, in a sample of each class of the train split, each class with all
the other classes in what a picture's making shows and seldom its subject: colour (the spread
of a pixel's red, green and blue: 0 for a grey picture), the brightness of its border (the
outer BORDER_SHARE of each side; compared only for a class whose borders are mostly one grey all
round, a frame, padding or a plain backdrop: a subject that reaches the edges sets it, as a
handwritten four's strokes do), its overall brightness, its width and height, its file format.
A class stands apart in a numeric property when a two-sample Kolmogorov-Smirnov statistic of at
least APART (0.9 for brightness; 1.0: no picture of the class within the others' range) puts it
so, and sampling alone would seldom do it (p below SIGNIFICANCE); in its format when a format's
share in the class and in the others differ by at least APART. Each class is measured in its own
sample (`class_sample`: up to PER_CLASS of its images), so a small class is judged as well as a
large one. Not measured, so not found: a watermark, a JPEG quality, pictures upscaled or
blurred. Contrast is not compared: the strokes of a drawing set it (a handwritten one against an
eight: 0.7). Handwritten digits, where every class is drawn and scanned alike, stay far below
(0.29 at most, brightness). It warns and stops nothing: in some tasks the classes do differ so
(night and day pictures, red and green apples).

A part of a class made unlike every other class's pictures teaches the shortcut as well: an audit
tinted every other `8` as a new camera would, the model answered `8` to 120 of 120 tinted pictures
of other digits, and the whole class stood 0.5 apart, under APART. So a class is also named when
at least PART of its sample lies beyond every picture of the other classes, past their largest
or smallest value by BEYOND (a factor, BEYOND_FACTOR, for sizes) and as far from the rest of its
class (a cluster of its own, not a tail), where sampling alone would seldom put so many (the
chance that the k largest of n + m values drawn alike are all the class's, below SIGNIFICANCE):
in colour, border brightness (of a part framed), width or height (brightness is the subject's
more often); and when a file format is PART of the class and none of the others'. A class whose
values rise smoothly past the others' differs in its subject: tiles of the flower photo shipped
are more colourful than the palace's, 55% of them past every palace tile by the margin, with no
gap.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

APART = 0.8
# Brightness is more often the subject's than the other properties (a class of green digits among
# red ones): it must stand further apart.
APART_AT = {"brightness": 0.9}
# A part of a class beyond every other class's pictures (this share of its sample at least) is named.
PART = 0.25
# ... beyond them by this much at least: grey levels of colour spread (a grey JPEG's chroma noise:
# 1-3) and border brightness; a factor of width and height.
BEYOND = {"colour": 6.0, "border": 16.0}
BEYOND_FACTOR = {"width": 1.25, "height": 1.25}
SIGNIFICANCE = 0.001  # as split_shift's: sampling alone would put a class so far apart less often
MIN_CLASS = 8  # sampled images of a class (and of the others): fewer, and it is not judged
PER_CLASS = 30  # images of each class measured (fewer when there are many classes: class_sample)
# Images measured for the check in all (0.6 ms each for small PNGs, 3 ms for a 640 x 427 JPEG):
# past MEASURED_AT_MOST / MIN_CLASS classes, a seeded choice of that many classes is judged.
MEASURED_AT_MOST = 1200
BORDER_SHARE = 1 / 16  # of each side: 4 of the 64 pixels split_shift measures
FRAME_SPREAD = 2.0  # grey levels: a border this even all round is a frame, padding or a backdrop
# ... around a picture whose grey levels spread this much (standard deviation) at least: one even
# all over (a patch of sky: 1-5) has no frame, its border is its subject's.
FRAMED_CONTENT = 8.0
# What a picture's making sets (and seldom its subject), with the words the warning uses.
PROPERTIES = {
    "colour": "colour (0 for grey)",
    "border": "border brightness",
    "brightness": "brightness",
    "width": "width (px)",
    "height": "height (px)",
}


def border(grey: np.ndarray) -> tuple[float, float]:
    """(mean, standard deviation) of a picture's outer BORDER_SHARE of each side, of its grey
    levels [H, W]: a frame or padding is one grey all round (deviation near 0)."""
    h, w = grey.shape
    k = max(1, round(min(h, w) * BORDER_SHARE))
    ring = np.ones_like(grey, dtype=bool)
    ring[k : h - k, k : w - k] = False
    return float(grey[ring].mean()), float(grey[ring].std())


def class_sample(labels: Sequence[str | None], seed: int = 0) -> np.ndarray:
    """The positions (sorted) of the records to measure for the check: of each class, PER_CLASS
    drawn at random (all of a smaller class), fewer a class when there are more than
    MEASURED_AT_MOST / PER_CLASS classes, but never under MIN_CLASS (past MEASURED_AT_MOST /
    MIN_CLASS classes, that many classes, drawn at random, are judged; the log says so)."""
    by_class: dict[str, list[int]] = collections.defaultdict(list)
    for i, label in enumerate(labels):
        if label is not None:
            by_class[label].append(i)
    if not by_class:
        return np.zeros(0, np.int64)
    each = max(MIN_CLASS, min(PER_CLASS, MEASURED_AT_MOST // len(by_class)))
    rng = np.random.default_rng(seed)
    names = sorted(by_class)
    most = MEASURED_AT_MOST // MIN_CLASS
    if len(names) > most:
        log.info(
            "%d classes: %d of them, drawn at random, compared with the others for how their "
            "pictures were made",
            len(names),
            most,
        )
        names = sorted(rng.choice(names, most, replace=False).tolist())
    chosen = [
        rng.choice(by_class[name], each, replace=False)
        if len(by_class[name]) > each
        else np.asarray(by_class[name])
        for name in names
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def classes_apart(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each class (the rows' "label") that stands apart from the others in a property, sorted by
    class: {"class", "property", "distance", "class_median" and "others_median" (numbers) or
    "class_share" and "others_share" (a format's), "class_images", "other_images", "classes"}.
    Of two classes only the first is named (the comparison is the same both ways)."""
    from scipy import stats

    by_class: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for row in rows:
        if row.get("label") is not None:
            by_class[row["label"]].append(row)
    if len(by_class) < 2:
        return []
    few = sorted(name for name, group in by_class.items() if len(group) < MIN_CLASS)
    if few:
        log.info(
            "%d class(es) with fewer than %d images measured, not compared with the others for how "
            "their pictures were made: %s",
            len(few),
            MIN_CLASS,
            ", ".join(map(repr, few[:10])) + (" ..." if len(few) > 10 else ""),
        )
    found = []
    # Two classes: each is the other's "others", and the comparison is the same both ways.
    names = sorted(by_class)[:1] if len(by_class) == 2 else sorted(by_class)
    for name in names:
        compared = _against_the_others(by_class, name)
        if compared is None:
            continue
        mine, others, sizes = compared
        for prop in PROPERTIES:
            # A subject that reaches the edges sets it (a handwritten four: 0.92). Of two classes
            # only one is tested: either may be the framed one.
            if prop == "border" and not (_framed(mine) or (len(by_class) == 2 and _framed(others))):
                continue
            a = np.array([row[prop] for row in mine if prop in row], dtype=float)
            b = np.array([row[prop] for row in others if prop in row], dtype=float)
            if len(a) < MIN_CLASS or len(b) < MIN_CLASS or (np.all(a == a[0]) and np.all(b == a[0])):
                continue
            result = stats.ks_2samp(a, b)
            if result.statistic >= APART_AT.get(prop, APART) and result.pvalue < SIGNIFICANCE:
                found.append(
                    {
                        "class": name,
                        "property": prop,
                        "distance": round(float(result.statistic), 3),
                        "class_median": round(float(np.median(a)), 1),
                        "others_median": round(float(np.median(b)), 1),
                        **sizes,
                    }
                )
        mine_formats = collections.Counter(row["format"] for row in mine)
        other_formats = collections.Counter(row["format"] for row in others)
        for fmt in sorted(set(mine_formats) | set(other_formats)):
            share, other_share = mine_formats[fmt] / len(mine), other_formats[fmt] / len(others)
            if abs(share - other_share) >= APART:
                found.append(
                    {
                        "class": name,
                        "property": "format",
                        "format": fmt,
                        "distance": round(abs(share - other_share), 3),
                        "class_share": round(share, 3),
                        "others_share": round(other_share, 3),
                        **sizes,
                    }
                )
                break  # one format's shares say it (two formats: the other's is the same gap)
    flagged = {(item["class"], item["property"]) for item in found}
    # A part beyond the others is not the same both ways: of two classes, each is tested.
    for name in sorted(by_class):
        compared = _against_the_others(by_class, name)
        if compared is None:
            continue
        mine, others, sizes = compared
        for item in _parts_beyond(mine, others):
            said = {(name, item["property"]), (sizes.get("other"), item["property"])} & flagged
            if not said:
                found.append({"class": name, **item, **sizes})
    return sorted(found, key=lambda item: item["class"])


def _against_the_others(by_class: dict[str, list[dict[str, Any]]], name: str) -> tuple | None:
    """(the class's rows, the other classes' rows, the sizes a finding carries: "class_images",
    "other_images", "classes" and, of two classes, "other"), or None when either side has fewer
    than MIN_CLASS rows."""
    mine = by_class[name]
    others = [row for other, group in by_class.items() if other != name for row in group]
    if len(mine) < MIN_CLASS or len(others) < MIN_CLASS:
        return None
    sizes = {"class_images": len(mine), "other_images": len(others), "classes": len(by_class)}
    if len(by_class) == 2:
        sizes["other"] = next(other for other in by_class if other != name)
    return mine, others, sizes


def _beyond_by_chance(k: int, n: int, m: int) -> float:
    """The probability that k or more of n values pass the largest (or smallest) of m others when
    all n + m come from one distribution: the k largest of the n + m are then the class's, each
    order of them alike, so prod over i < k of (n - i) / (n + m - i) (ties and the margin make it
    rarer still). 30 against 30: 10 of them (one in three) at 0.0004; 30 against 120: 8 at 1e-6."""
    p = 1.0
    for i in range(k):
        p *= (n - i) / (n + m - i)
    return p


def _parts_beyond(mine: Sequence[dict[str, Any]], others: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What PART or more of `mine` has that no picture of `others` has (see the module's doc):
    items {"property", "part" (its share), "part_images", "side" ("above", "below") and
    "part_median", "others_bound" (the others' largest or smallest); or "format"}."""
    out = []
    for prop in ("colour", "border", "width", "height"):
        measured = [row for row in mine if prop in row]
        a = np.array([row[prop] for row in measured], dtype=float)
        b = np.array([row[prop] for row in others if prop in row], dtype=float)
        if len(a) < MIN_CLASS or len(b) < MIN_CLASS:
            continue
        size = prop in BEYOND_FACTOR
        if size:  # compared by their logarithms: a factor is a difference there
            if np.any(a <= 0) or np.any(b <= 0):
                continue
            a, b, margin = np.log(a), np.log(b), float(np.log(BEYOND_FACTOR[prop]))
        else:
            margin = BEYOND[prop]
        for side, sign in (("above", 1.0), ("below", -1.0)):
            # On the side's own axis: the part is past the others' extreme by the margin, and as
            # far from the rest of its class (a cluster of its own, not a tail).
            along, bound = sign * a, float((sign * b).max())
            part = along >= bound + margin
            k = int(part.sum())
            rest = along[~part]
            apart = k > 0 and (len(rest) == 0 or float(along[part].min() - rest.max()) >= margin)
            if apart and prop == "border":  # a border only where it is a frame (see classes_apart)
                apart = _framed([row for row, inside in zip(measured, part, strict=True) if inside])
            if apart and k >= PART * len(a) and _beyond_by_chance(k, len(a), len(b)) < SIGNIFICANCE:
                values, extreme = a[part], sign * bound
                if size:
                    values, extreme = np.exp(values), float(np.exp(extreme))
                out.append(
                    {
                        "property": prop,
                        "part": round(k / len(a), 3),
                        "part_images": k,
                        "side": side,
                        "part_median": round(float(np.median(values)), 1),
                        "others_bound": round(extreme, 1),
                    }
                )
                break
    mine_formats = collections.Counter(row["format"] for row in mine)
    other_formats = collections.Counter(row["format"] for row in others)
    for fmt, k in sorted(mine_formats.items()):
        if (
            other_formats[fmt] == 0
            and k >= PART * len(mine)
            and _beyond_by_chance(k, len(mine), len(others)) < SIGNIFICANCE
        ):
            out.append(
                {"property": "format", "format": fmt, "part": round(k / len(mine), 3), "part_images": k}
            )
            break
    return out


def _framed(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether most of a class's pictures have a border of one grey (a frame, padding, a plain
    backdrop) around a picture that is not that even itself: only then is its brightness the
    pictures' making rather than their subject. A picture even all over (a patch of sky, a wall)
    has such a border too, but there it is the subject's brightness, compared as such."""
    rows = [row for row in rows if "border_spread" in row]
    framed = [
        row["border_spread"] <= FRAME_SPREAD and row.get("contrast", math.inf) >= FRAMED_CONTENT
        for row in rows
    ]
    return bool(framed) and sum(framed) > len(framed) / 2


def _others(item: dict[str, Any]) -> str:
    return repr(item["other"]) if item.get("other") is not None else "the others"


def describe(item: dict[str, Any]) -> str:
    if "part" in item:
        share = f"{item['part_images']} of its {item['class_images']} ({item['part']:.0%})"
        if item["property"] == "format":
            return f"file format ({share} {item['format']}, none in {_others(item)})"
        extreme = "largest" if item["side"] == "above" else "smallest"
        return (
            f"{PROPERTIES[item['property']]} ({share} {item['side']} every picture of {_others(item)}: "
            f"median {item['part_median']:g} against their {extreme} {item['others_bound']:g})"
        )
    if item["property"] == "format":
        return (
            f"file format ({item['format']}: {item['class_share']:.0%} against "
            f"{item['others_share']:.0%} in {_others(item)})"
        )
    return (
        f"{PROPERTIES[item['property']]} (median {item['class_median']:g} against "
        f"{item['others_median']:g} in {_others(item)})"
    )


def warnings(found: Sequence[dict[str, Any]]) -> list[str]:
    """One warning per class that stands apart, naming every property it stands apart in; of two
    classes, both are named (which one is made unlike the pictures it will be sent, the check
    cannot tell)."""
    by_class: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for item in found:
        by_class[item["class"]].append(item)
    out = []
    for name, items in by_class.items():
        first = items[0]
        other = first.get("other")
        if other is not None:
            who, told = f"classes {name!r} and {other!r} differ in how their", f"{name!r} from {other!r}"
            fix = "add pictures of each made like the other's"
        else:
            who, told = f"class {name!r} stands apart from the other classes in how its", repr(name)
            fix = f"add {name!r} pictures made like the others'"
        out.append(
            f"{who} train pictures were made, not only in what they show: "
            f"{', '.join(map(describe, items))}, in a sample of {first['class_images']} of {name!r}'s "
            f"images and {first['other_images']} of {_others(first)}'. A model can learn to tell "
            f"{told} by that alone, pass the gate on eval pictures made the same way, and fail on "
            "pictures without it (another camera, format, size or framing). If the pictures it will "
            "be sent differ so too, this is fine; if not, make the classes' pictures alike (one "
            f"source, format, size and framing for all), or {fix}"
        )
    return out
