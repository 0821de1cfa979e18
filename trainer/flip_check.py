"""Does a left-right flip turn one class into another? Asked before training with `augment`.

Augmentation flips each training image left to right at random (trainer/data.py
`augment_images`). Where a class's mirror image is another class (b and d, arrows pointing left
and right, a part and its mirrored twin), the head then sees both classes in both orientations
and can only learn them as one: an audit's mirrored 7s ("7m" beside "7") were told apart at 0.92
to 1.0 without augmentation and at chance with it, and the model was blessed; the only warning
was the gate's "one concept under two names? Merge the folders", the wrong cause and the wrong
fix.

The check: a sample of train images of each class, through the backbone as they are and
flipped. Each class's mean feature (unit-length features) stands for it; an image is "nearest"
the class whose mean is closest (cosine), its own class's mean taken without it (a mean holding
the image is nearer it than any other image can be). A class whose own images are mostly nearest its own
mean (its mean stands for it), and whose flipped images are mostly nearest one other class's
mean, and as close to it as that class's own images typically are, is turned into that class by
the flip; one whose flipped images are far from every mean, its own too, looks like none of the
classes once flipped (a 3 mirrored is no digit), which augmentation then teaches.
Both are said, with the numbers. Classes that look the same either way (cats, dogs, a ring)
keep their flipped images nearest their own mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

SAMPLE_PER_CLASS = 40  # train images of a class examined (all of a smaller class)
SAMPLE_TOTAL = 2000  # fewer a class where there are many classes, down to MIN_IMAGES
MIN_IMAGES = 5  # a class with fewer sampled images is not judged
OWN_SHARE = 0.5  # the share of a class's own images nearest its mean for that mean to stand for it
TURNED_SHARE = 0.5  # the share of its flipped images nearest another class that says "turned into"
# Flipped images "look like" another class when their median closeness to its mean is at least
# this quantile of its own images' closeness (else they look like none of the classes).
TYPICAL = 0.25
# Flipped images nearest their own class's mean still look like none of the classes when their
# median closeness to it is under this quantile of its own images' (mirrored digit 1s, slanted
# the other way, fell under the 1s' 25% mark and over their 5%: still 1s, not warned).
STILL_OWN = 0.05


def sample(labels: np.ndarray, num_classes: int, seed: int, per_class: int | None = None) -> np.ndarray:
    """A boolean mask over `labels` (class index per train image): up to `per_class` images of
    each class (default: SAMPLE_PER_CLASS, fewer past SAMPLE_TOTAL images), drawn with `seed`."""
    if per_class is None:
        per_class = max(MIN_IMAGES, min(SAMPLE_PER_CLASS, SAMPLE_TOTAL // max(num_classes, 1)))
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(labels), bool)
    for c in range(num_classes):
        where = np.flatnonzero(labels == c)
        if len(where) > per_class:
            where = rng.choice(where, per_class, replace=False)
        keep[where] = True
    return keep


def _nearest(features: np.ndarray, means: np.ndarray) -> np.ndarray:
    return np.argmax(features @ means.T, axis=1)


def _unlike_text(u: dict[str, Any]) -> str:
    """How a class whose flipped images look like no class is said: where most of them went."""
    if u["flipped_nearest_own"] >= TURNED_SHARE * u["images"]:
        where = (
            f"{u['flipped_nearest_own']} of {u['images']} flipped still nearest its own mean, but farther "
            "from it than its own images are"
        )
    else:
        where = (
            f"of {u['images']} flipped, {u['flipped_nearest_it']} nearest {u['mostly_nearest']!r}, "
            f"{u['flipped_nearest_own']} its own, not as near as those classes' own images are"
        )
    return f"{u['class']!r} ({where})"


def _typical(flipped: np.ndarray, mean: np.ndarray, theirs: np.ndarray, quantile: float = TYPICAL) -> bool:
    """Whether unit rows `flipped` are as close to a class's unit `mean` as its own images
    typically are: their median cosine at least the `quantile` of `theirs` (its own images'
    cosines with it, each without itself in it)."""
    return bool(np.median(flipped @ mean) >= np.quantile(theirs, quantile))


def _without_self(rows: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Each unit row's cosine with the mean of the other rows (`total`: the rows' sum)."""
    return np.einsum("ij,ij->i", rows, _unit(total[np.newaxis, :] - rows))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def check(
    features: np.ndarray, flipped: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """The check's record: `examined` (images); `pairs`, each class the flip turns into another
    (`class`, `becomes`, `images`, `flipped_nearest_it`, `flipped_nearest_own`, `own_nearest_own`);
    `unlike`, each class whose flipped images look like no class (`class`, `images`,
    `flipped_nearest_own`, `own_nearest_own`, and `mostly_nearest`/`flipped_nearest_it`: the other
    class most of them are nearest); `skipped`, each class not judged (`class`, `why`: too few
    images, or its images mostly nearer other classes' means than its own); `warning` (None when
    no pair and nothing unlike); and `not_judged`, why, when nothing could be judged.
    `features` and `flipped`: the backbone's features of the same images as they are and
    flipped; `labels`: their class indices."""
    labels = np.asarray(labels).reshape(-1).astype(int)
    n = len(class_names)
    counts = np.bincount(labels, minlength=n)
    present = [c for c in range(n) if counts[c] >= MIN_IMAGES]
    record: dict[str, Any] = {
        "examined": int(len(labels)),
        "pairs": [],
        "unlike": [],
        "skipped": [
            {"class": class_names[c], "why": f"{counts[c]} images, fewer than {MIN_IMAGES}"}
            for c in range(n)
            if 0 < counts[c] < MIN_IMAGES
        ],
        "warning": None,
    }
    if len(present) < 2:
        record["not_judged"] = f"fewer than two classes with {MIN_IMAGES} or more train images"
        return record
    if not np.all(np.isfinite(features)) or not np.all(np.isfinite(flipped)):
        record["not_judged"] = "the backbone's features are not finite"
        return record
    own, turned = _unit(features), _unit(flipped)
    sums = np.stack([own[labels == c].sum(axis=0) for c in present])
    means = _unit(sums)
    column = {c: i for i, c in enumerate(present)}
    # An image is compared with its own class's mean without itself in it (leave one out): a
    # mean holding the image is nearer it than any flipped image can be to a mean, and 40
    # images in 1,280 dimensions were each nearest their own mean however alike the classes.
    own_sims = own @ means.T
    for c in present:
        mine = labels == c
        own_sims[mine, column[c]] = _without_self(own[mine], sums[column[c]])
    near_own, near_turned = np.argmax(own_sims, axis=1), _nearest(turned, means)
    for c in present:
        mine, count, k = labels == c, int(counts[c]), column[c]
        own_nearest_own = int(np.count_nonzero(near_own[mine] == k))
        hits = np.bincount(near_turned[mine], minlength=len(present))
        stays = int(hits[k])
        if own_nearest_own < OWN_SHARE * count:
            # Its mean does not stand for it (many classes on weak features): nothing to judge
            # its flipped images by. Named, so a mirror pair missed here is not taken for none.
            why = f"{own_nearest_own} of its {count} images nearest its own mean (others' nearer)"
            record["skipped"].append({"class": class_names[c], "why": why})
            continue
        if stays >= TURNED_SHARE * count and _typical(turned[mine], means[k], own_sims[mine, k], STILL_OWN):
            continue  # flipped, its images still look like it
        hits[k] = -1
        other = int(np.argmax(hits))
        entry = {
            "class": class_names[c],
            "images": count,
            "flipped_nearest_own": stays,
            "own_nearest_own": own_nearest_own,
        }
        # Another class's look: as close to that class's mean as its own images typically are.
        close = _typical(turned[mine], means[other], own_sims[labels == present[other], other])
        if hits[other] >= TURNED_SHARE * count and close:
            record["pairs"].append(
                {**entry, "becomes": class_names[present[other]], "flipped_nearest_it": int(hits[other])}
            )
        else:
            record["unlike"].append(
                {
                    **entry,
                    "mostly_nearest": class_names[present[other]],
                    "flipped_nearest_it": int(hits[other]),
                }
            )
    said = [
        f"{p['flipped_nearest_it']} of {p['images']} {p['class']!r} images look like {p['becomes']!r} once "
        f"flipped ({p['flipped_nearest_own']} still like {p['class']!r})"
        for p in record["pairs"]
    ]
    if record["unlike"]:
        said.append(
            "flipped, these classes' images look like none of the classes: "
            + ", ".join(_unlike_text(u) for u in record["unlike"])
        )
    if said:
        what = (
            "the model sees those classes in both orientations and cannot learn them apart"
            if record["pairs"]
            else "the model learns pictures those classes never show"
        )
        record["warning"] = (
            f"augment flips training images left to right, and here a flip changes what a class looks "
            f"like: {'; '.join(said)}. Trained so, {what}. Turn augment off (--no-augment) for classes "
            "told apart by left and right"
        )
    return record
