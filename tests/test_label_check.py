"""The label check: train labels the head's held-out answers doubt (trainer/label_check.py).

The rule on hand-made probabilities; then heads trained on synthetic feature clusters with
labels flipped at random, through the folds and through the validation slice, where the doubted
images must be mostly the flipped ones and the warning must come only when train and eval
disagree (a real train() run's check: tests/test_train_convergence.py); the files the run's JSON
names.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from trainer import head, label_check
from trainer import model as model_lib
from trainer.config import TrainingConfig

D = 16


def _blobs(counts, seed, sep=2.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, sep, (len(counts), D))
    x = np.concatenate([rng.normal(centers[c], 1.0, (n, D)) for c, n in enumerate(counts)]).astype(np.float32)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int64)
    return x, y


def _flip(y, share, classes, seed):
    """`y` with `share` of its labels moved to another class at random; the flipped positions."""
    rng = np.random.default_rng(seed)
    flipped = np.flatnonzero(rng.random(len(y)) < share)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, classes, len(flipped))) % classes
    return noisy, flipped


def _build(k):
    def build(hp):
        tf.keras.utils.set_random_seed(0)
        m = model_lib.build_head(D, k, hp.dropout, hp.l2)
        model_lib.compile_model(m, k, hp.learning_rate)
        return m

    return build


def _params(**kw):
    return TrainingConfig(**{"backbone": "MobileNetV2", "weights": "none", "image_size": 32, **kw})


def test_doubted_needs_another_class_answered_surely_and_the_given_one_unsurely():
    p = np.array(
        [
            [0.9, 0.1],  # labelled 0, answered 0
            [0.7, 0.3],  # labelled 0, answered 0
            [0.05, 0.95],  # labelled 0, answered 1 as surely as class 1's images: doubted
            [0.2, 0.8],  # labelled 1
            [0.1, 0.9],  # labelled 1
            [0.45, 0.55],  # labelled 1, answered 1
            [0.52, 0.48],  # labelled 1, answered 0 but less surely than class 0's images (0.55): kept
        ]
    )
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    # class 0's images hold 0 at (0.9 + 0.7 + 0.05) / 3 = 0.55; class 1's hold 1 at 0.67
    assert label_check.doubted(p, labels).tolist() == [2]
    p[0] = [0.99, 0.01]  # class 0's mean for 0: (0.99 + 0.7 + 0.05) / 3 = 0.58
    p[6] = [0.58, 0.42]  # now as sure of 0 as class 0's images are on average: doubted too
    # the least likely given label first: image 2 (0.05) before image 6 (0.42)
    assert label_check.doubted(p, labels).tolist() == [2, 6]
    # a sigmoid head's one unit reads as [1 - p, p]
    np.testing.assert_allclose(label_check.class_probabilities(np.array([[0.25]])), [[0.75, 0.25]])


def test_a_class_with_no_held_out_image_is_never_the_answer_that_doubts():
    # Image 0 is answered 2 surely, but no image is labelled 2: nothing to be as sure as.
    p = np.array([[0.1, 0.1, 0.8], [0.9, 0.05, 0.05], [0.1, 0.85, 0.05], [0.8, 0.15, 0.05]])
    assert label_check.doubted(p, np.array([0, 0, 1, 1])).tolist() == [3]


def _noisy_run(counts, share, seed, params):
    x, y = _blobs(counts, seed)
    noisy, flipped = _flip(y, share, len(counts), seed + 1)
    targets = noisy.astype(np.float32).reshape(-1, 1) if len(counts) == 2 else noisy  # one sigmoid unit
    hd = head.array_data(x, targets, noisy, None, params, params.batch_size)[0]
    run = head.train_head(_build(len(counts)), head.HeadHParams(0.01, 0.0, 0.0), hd, params)
    return run, noisy, flipped


@pytest.mark.parametrize("folds", [True, False])
def test_flipped_train_labels_are_doubted_and_warned_against_a_clean_eval_split(folds):
    """A fifth of the train labels flipped: most doubted images are flipped ones, the flipped ones
    come first, and against an eval split the head answers well the check says train labels may be
    wrong. Through the folds (a small slice) every train image is examined; through the slice only
    its images."""
    counts = [30, 30, 30] if folds else [200, 200, 200]
    params = _params(cv_folds=5 if folds else 0, epochs=80, patience=4)
    run, noisy, flipped = _noisy_run(counts, 0.2, 3, params)
    held = run.selection.held_out
    assert held.source == ("cross-validation (5 folds)" if folds else "the validation slice")
    if folds:
        assert sorted(held.positions.tolist()) == list(range(len(noisy)))
    else:
        mask = head.holdout_mask(noisy, params.validation_fraction, params.seed)
        assert held.positions.tolist() == np.flatnonzero(mask).tolist()
    record = label_check.check(held, noisy, ["a", "b", "c"], 0.97, 300)
    examined_flipped = np.isin(held.positions, flipped)
    listed = [img["position"] for img in record["images"]]
    doubted_flipped = np.isin(listed, flipped)
    assert record["doubted"] >= 0.5 * examined_flipped.sum()
    assert doubted_flipped.mean() >= 0.8, (doubted_flipped.mean(), record["doubted"])
    assert doubted_flipped[:5].all()
    assert record["agreement"] < 0.87
    assert "train labels may be wrong" in record["warning"]
    assert {img["given"] for img in record["images"]} <= {"a", "b", "c"}
    first = record["images"][0]
    assert first["answered"] != first["given"] and first["given_probability"] < first["answered_probability"]
    # The same run judged against an eval split with the same wrong labels: no gap, no warning;
    # the doubted images are still listed.
    same = label_check.check(held, noisy, ["a", "b", "c"], record["agreement"], 300)
    assert same["warning"] is None and same["doubted"] == record["doubted"]


def test_frames_of_one_clip_are_held_out_together_so_memorised_clips_do_not_read_as_learned():
    """Three classes of six clips each, eight frames a clip (a clip's frames lie close together),
    the clips' places unrelated to their labels: nothing about the classes can be learned. Folds
    that deal a clip's frames apart score frames whose siblings trained (near 1.0: the epochs
    chosen and the label check's agreement then read memorising as learning); kept whole (the
    ingest's sets of near-copies), they score what a head learned of the classes: near chance."""
    rng = np.random.default_rng(11)
    clips = rng.normal(0, 3.0, (18, D))
    x = np.repeat(clips, 8, axis=0) + rng.normal(0, 0.1, (18 * 8, D))
    x = x.astype(np.float32)
    y = np.repeat(np.arange(18) % 3, 8)
    clip = np.repeat(np.arange(18), 8)
    params = _params(cv_folds=5, epochs=60, patience=3)
    scores = {}
    for name, groups in (("apart", None), ("whole", clip)):
        hd = head.array_data(x, y, y, None, params, params.batch_size, groups)[0]
        run = head.train_head(_build(3), head.HeadHParams(0.01, 0.0, 0.0), hd, params)
        assert run.selection.folds == 5
        record = label_check.check(run.selection.held_out, y, ["a", "b", "c"], 0.34, 60)
        scores[name] = (run.selection.best_val_weighted_accuracy, record["agreement"])
    assert scores["apart"][0] > 0.9 and scores["apart"][1] > 0.9, scores
    assert scores["whole"][0] < 0.6 and scores["whole"][1] < 0.6, scores


def test_clean_labels_say_nothing_and_a_worse_eval_split_is_named_instead():
    params = _params(cv_folds=5, epochs=80, patience=4)
    run, labels, _ = _noisy_run([30, 30, 30], 0.0, 5, params)
    held = run.selection.held_out
    record = label_check.check(held, labels, ["a", "b", "c"], 0.98, 150)
    assert record["agreement"] > 0.9 and record["warning"] is None
    assert record["doubted"] <= 3
    # An eval split the head answers far worse than it answers train images it never saw.
    worse = label_check.check(held, labels, ["a", "b", "c"], 0.6, 150)
    assert "the eval split disagrees with what the train split teaches" in worse["warning"]
    # ... but not when the eval split is too small for the gap to mean anything.
    assert label_check.check(held, labels, ["a", "b", "c"], 0.6, 5)["warning"] is None


def test_a_sigmoid_head_is_checked_too():
    params = _params(cv_folds=5, epochs=80, patience=4)
    run, noisy, flipped = _noisy_run([40, 40], 0.25, 7, params)
    record = label_check.check(run.selection.held_out, noisy, ["cat", "dog"], 0.95, 200)
    listed = [img["position"] for img in record["images"]]
    assert record["doubted"] >= 5 and np.isin(listed, flipped).mean() >= 0.7  # of a quarter flipped
    assert "train labels may be wrong" in record["warning"]
    assert {p["given"] for p in record["pairs"]} <= {"cat", "dog"}


def test_the_run_summary_names_the_doubted_images_files(tmp_path):
    """The doubted images' places in the train split become their files through ingest's index
    (matched by the image bytes' SHA-256); an image the index does not hold keeps no file; a
    train split that cannot be read is a note, never a failed summary."""
    import hashlib

    from imgpipe.orchestration.summary import with_files

    items = helpers.digit_images((3, 5), per_class=4, size=16)
    split = tmp_path / "Split-train"
    helpers.write_tfrecords(str(split / "data-00000-of-00001.tfrecord"), items)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    index = [
        {"split": "train", "sha256": hashlib.sha256(img).hexdigest(), "path": f"{lab}/{i}.png"}
        for i, (img, lab) in enumerate(items[:6])
    ]
    index.append({"split": "eval", "sha256": hashlib.sha256(items[6][0]).hexdigest(), "path": "eval/6.png"})
    with open(data_dir / "image_files.jsonl", "w") as f:
        f.write("\n".join(json.dumps(e) for e in index) + "\nnot an entry\n")
    check = {
        "doubted": 3,
        "images": [
            {"position": 5, "given": "5"},
            {"position": 2, "given": "3"},
            {"position": 6, "given": "5"},
        ],
    }
    named = with_files(check, str(split), str(data_dir))
    assert [img["file"] for img in named["images"]] == ["5/5.png", "3/2.png", None]  # 6: an eval entry only
    assert named["doubted"] == 3 and "1 line(s)" in named["files_notes"][0]
    assert with_files(check, str(tmp_path / "gone"), str(data_dir))["images"][0]["file"] is None
    assert with_files({"doubted": 0, "images": []}, str(split), str(data_dir)) == {"doubted": 0, "images": []}
    assert with_files(None, str(split), str(data_dir)) is None


def test_odd_answers_are_read_or_left_unjudged():
    """A one-unit sigmoid's answers as a flat vector read as [1 - p, p]; answers that are not all
    finite (a diverged head) are not judged, instead of an argmax of NaN agreeing by chance; a
    head that won --tune's search on the slice it answers warns of no gap in eval's disfavour."""
    np.testing.assert_allclose(
        label_check.class_probabilities(np.array([0.2, 0.9])), [[0.8, 0.2], [0.1, 0.9]]
    )
    held = label_check.HeldOut(np.arange(3), np.array([[0.5, 0.5], [np.nan, 1.0], [1.0, 0.0]]), "s")
    record = label_check.check(held, np.array([0, 1, 0]), ["a", "b"], 0.9, 100)
    assert record["agreement"] is None and record["doubted"] == 0 and record["warning"] is None
    assert "not all finite" in record["not_judged"]
    right = np.eye(3)[np.arange(300) % 3]
    held = label_check.HeldOut(np.arange(300), right, "the validation slice")
    labels = np.arange(300) % 3
    assert "eval split disagrees" in label_check.check(held, labels, ["a", "b", "c"], 0.6, 300)["warning"]
    assert label_check.check(held, labels, ["a", "b", "c"], 0.6, 300, chosen_on_it=True)["warning"] is None
