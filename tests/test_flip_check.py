"""trainer/flip_check.py: whether augment's left-right flip turns a class into another, judged
on backbone features of train images as they are and flipped (here: made-up features)."""

from __future__ import annotations

import numpy as np
import pytest

from trainer import flip_check

NAMES = ["seven", "seven_mirrored", "ring", "three"]


def _features(seed: int = 0, per_class: int = 30, dim: int = 1024):
    """Features of four classes around their own directions, and each class's flipped look."""
    rng = np.random.default_rng(seed)
    looks = rng.normal(size=(5, dim))  # seven, its mirror, ring, three, and a mirrored three
    labels = np.repeat(np.arange(4), per_class)
    noise = lambda: 0.7 * rng.normal(size=(len(labels), dim))  # noqa: E731
    own = looks[labels] + noise()
    # Flipped: a seven looks like the mirrored class and back; a ring like itself; a three like
    # nothing the classes show.
    flipped_look = np.array([1, 0, 2, 4])[labels]
    return own, looks[flipped_look] + noise(), labels


@pytest.mark.parametrize("seed", range(5))
def test_mirror_classes_are_named_and_a_class_unlike_any_once_flipped_is_said(seed):
    """Each image is compared with its own class's mean without itself in it: with the image in
    it, 1,024-dimensional features were each nearest their own mean, and a mirror pair was said
    to be like no class (or one direction only) on a third of the seeds."""
    own, flipped, labels = _features(seed)
    record = flip_check.check(own, flipped, labels, NAMES)
    assert record["examined"] == 120
    assert [(p["class"], p["becomes"]) for p in record["pairs"]] == [
        ("seven", "seven_mirrored"),
        ("seven_mirrored", "seven"),
    ]
    assert all(p["flipped_nearest_it"] >= 25 and p["own_nearest_own"] == 30 for p in record["pairs"])
    [unlike] = record["unlike"]
    assert unlike["class"] == "three"
    # Said by where they went: still nearest its own mean but far from it, or mostly to another.
    if unlike["flipped_nearest_own"] >= 15:
        assert (
            "flipped still nearest its own mean, but farther from it than its own images are"
            in record["warning"]
        )
    else:
        assert f"{unlike['flipped_nearest_it']} nearest {unlike['mostly_nearest']!r}" in record["warning"]
    warning = record["warning"]
    assert warning.startswith("augment flips training images left to right, and here a flip changes")
    assert "'seven' images look like 'seven_mirrored' once flipped" in warning
    assert "look like none of the classes: 'three'" in warning
    assert "cannot learn them apart" in warning and "--no-augment" in warning


def test_classes_that_look_alike_either_way_give_no_warning():
    own, _, labels = _features(seed=1)
    rng = np.random.default_rng(2)
    record = flip_check.check(own, own + 0.1 * rng.normal(size=own.shape), labels, NAMES)
    assert record["pairs"] == [] and record["unlike"] == [] and record["warning"] is None


def test_a_class_whose_mean_does_not_stand_for_it_or_too_few_images_is_not_judged():
    own, flipped, labels = _features(seed=3)
    # Class "three"'s own images are half sevens, half rings: each is nearer the mean of those
    # than its own class's (no mean stands for "three"), so its flip is not judged.
    threes = np.flatnonzero(labels == 3)
    own[threes[::2]] = own[labels == 0][: len(threes[::2])]
    own[threes[1::2]] = own[labels == 2][: len(threes[1::2])]
    record = flip_check.check(own, flipped, labels, NAMES)
    assert "three" not in [u["class"] for u in record["unlike"]]
    # Named as not judged, so a pair missed there is not taken for none.
    [skipped] = record["skipped"]
    assert skipped["class"] == "three" and skipped["why"].endswith(
        "images nearest its own mean (others' nearer)"
    )
    # Four images of a class are too few; a single judged class is nothing to compare.
    few = flip_check.check(own[:34], flipped[:34], labels[:34], NAMES)
    assert few["pairs"] == [] and few["warning"] is None
    assert few["not_judged"] == "fewer than two classes with 5 or more train images"
    broken = flip_check.check(own, np.full_like(flipped, np.nan), labels, NAMES)
    assert broken["warning"] is None and broken["not_judged"] == "the backbone's features are not finite"


def test_the_sample_takes_up_to_its_share_of_each_class():
    labels = np.array([0] * 100 + [1] * 7 + [2] * 45)
    keep = flip_check.sample(labels, 3, seed=0)
    assert [int(np.sum(keep & (labels == c))) for c in range(3)] == [40, 7, 40]
    np.testing.assert_array_equal(keep, flip_check.sample(labels, 3, seed=0))
    # Many classes: fewer each, so the sample stays near SAMPLE_TOTAL (never under MIN_IMAGES).
    many = np.repeat(np.arange(400), 30)
    per = np.bincount(many[flip_check.sample(many, 400, seed=0)])
    assert set(per) == {flip_check.MIN_IMAGES}
    per = np.bincount(np.repeat(np.arange(100), 30)[flip_check.sample(np.repeat(np.arange(100), 30), 100, 0)])
    assert set(per) == {20}
