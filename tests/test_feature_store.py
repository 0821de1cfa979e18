"""The feature store (trainer/feature_store.py): a retrain extracts only the images an earlier run
did not, trains the same model as a run that extracts them all, and drops a store whose features
are not the backbone's.

Real digits at 32 px through a real Transform graph and the tests' pre-trained MobileNetV2
(`source_backbone`); train() as the Trainer calls it, with a store directory.
"""

import os
import shutil

import numpy as np
import pytest

from tests import helpers
from trainer import feature_store, image_ids, train
from trainer.config import TrainingConfig

SIZE = 32
CLASSES = (5, 6, 7)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """Two datasets of the same classes: `small` (12 digits a class), `grown` (16: the 12 and 4
    new ones, the splits drawn anew), and the Transform output both are read through."""
    work = str(tmp_path_factory.mktemp("store"))
    small = helpers.digit_images(CLASSES, per_class=12, size=SIZE, seed=3)
    grown = helpers.digit_images(CLASSES, per_class=16, size=SIZE, seed=3)
    assert {img for img, _ in small} < {img for img, _ in grown}
    tfo = helpers.analyze_transform(small, os.path.join(work, "transform"), image_size=SIZE)
    roots = {}
    for name, items in (("small", small), ("grown", grown)):
        roots[name] = helpers.write_split_dataset(os.path.join(work, name), items, eval_every=4)
    return tfo, roots, work


def _params(weights, **kw):
    return TrainingConfig(
        backbone="MobileNetV2", weights=weights, image_size=SIZE, batch_size=8, epochs=2, **kw
    )


def _train(task, name, weights, store, **kw):
    tfo, roots, _ = task
    root = roots[name]
    return train.train(
        os.path.join(root, "train"),
        os.path.join(root, "eval"),
        tfo,
        _params(weights),
        verbose=0,
        feature_store_dir=store,
        **kw,
    )


def _head(result):
    return [w for w in result.model.get_weights()[-4:]]


def _ids(task, name):
    _, roots, _ = task
    return {split: image_ids.split_ids(os.path.join(roots[name], split)) for split in ("train", "eval")}


@pytest.fixture(scope="module")
def first(task, source_backbone):
    """A first run with an empty store: (its result, the store it left; copy it to use it)."""
    store = os.path.join(task[2], "store")
    return _train(task, "small", source_backbone, store), store


def test_a_retrain_extracts_only_new_images_and_trains_the_same_model(task, source_backbone, first, tmp_path):
    first, kept = first
    store = str(tmp_path / "store")
    shutil.copytree(kept, store)
    counts = _ids(task, "small")
    n = {split: len(ids) for split, ids in counts.items()}
    assert first.feature_store["reused"] == 0
    assert first.feature_store["splits"] == {s: {"reused": 0, "extracted": n[s]} for s in n}
    [path] = os.listdir(store)
    assert first.feature_store["saved"] == os.path.join(kept, path)
    assert first.feature_store["key"] == path[: -len(".npz")]

    # The same images again: all but a sample of each split (checked) come from the store, and
    # the head trained is the one the first run trained, weight for weight.
    again = _train(task, "small", source_backbone, store)
    assert again.feature_store["splits"] == {
        s: {"reused": n[s] - min(feature_store.SAMPLE, n[s]), "extracted": min(feature_store.SAMPLE, n[s])}
        for s in n
    }
    assert again.feature_store["discarded"] is None
    assert any("reused from an earlier run" in note for note in again.notes)
    assert again.eval_accuracy == first.eval_accuracy
    for a, b in zip(_head(first), _head(again), strict=True):
        np.testing.assert_array_equal(a, b)

    # The folder grew and was split anew: only the new images and the samples are extracted.
    grown = _train(task, "grown", source_backbone, store)
    known = np.concatenate(list(counts.values()))
    for split, ids in _ids(task, "grown").items():
        new = int((~np.isin(ids, known)).sum())
        hits = len(ids) - new
        assert new > 0 and grown.feature_store["splits"][split] == {
            "reused": hits - min(feature_store.SAMPLE, hits),
            "extracted": new + min(feature_store.SAMPLE, hits),
        }
    fresh = _train(task, "grown", source_backbone, None)  # no store: everything extracted
    assert fresh.feature_store is None
    assert grown.eval_accuracy == fresh.eval_accuracy
    for a, b in zip(_head(grown), _head(fresh), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_store_whose_features_are_not_the_backbones_is_dropped(task, source_backbone, first, tmp_path):
    """A store the key did not tell apart (here: its features altered) fails the sample's check:
    it is dropped, every image extracted, and the model is the one a run without it trains; the
    store is written again from the run's own features."""
    first, kept = first
    store = str(tmp_path / "store")
    shutil.copytree(kept, store)
    [name] = os.listdir(store)
    path = os.path.join(store, name)
    with np.load(path) as f:
        ids, features = f["ids"], f["features"]
    np.savez(path, ids=ids, features=features * 1.01)
    again = _train(task, "small", source_backbone, store)
    assert again.feature_store["reused"] == 0 and again.feature_store["saved"] == path
    assert "differ from the backbone's by up to" in again.feature_store["discarded"]
    assert any("feature store discarded" in note for note in again.notes)
    for a, b in zip(_head(first), _head(again), strict=True):
        np.testing.assert_array_equal(a, b)
    rewritten = feature_store.load(store, name[: -len(".npz")])
    np.testing.assert_array_equal(rewritten.ids, ids)
    np.testing.assert_array_equal(rewritten.features, features)


def test_features_that_spill_are_neither_reused_nor_kept(task, source_backbone, first, tmp_path):
    store = str(tmp_path / "store")
    shutil.copytree(first[1], store)
    before = sorted(os.listdir(store))
    spilled = _train(task, "small", source_backbone, store, cache_memory_bytes=1024)
    assert spilled.feature_store["saved"] is None and spilled.feature_store["splits"] == {}
    assert any("spilled to disk" in note for note in spilled.notes)
    assert sorted(os.listdir(store)) == before


def test_the_key_changes_with_what_features_depend_on(source_backbone, tmp_path):
    key = feature_store.store_key("MobileNetV2", source_backbone, SIZE)
    assert key == feature_store.store_key("MobileNetV2", source_backbone, SIZE)
    assert key != feature_store.store_key("MobileNetV2", source_backbone, 64)
    assert key != feature_store.store_key("EfficientNetB0", source_backbone, SIZE)
    assert key != feature_store.store_key("MobileNetV2", "imagenet", SIZE)
    copy = tmp_path / "w.h5"
    shutil.copy(source_backbone, copy)
    assert feature_store.store_key("MobileNetV2", str(copy), SIZE) == key  # the bytes, not the path
    with open(copy, "ab") as f:
        f.write(b"\0")
    assert feature_store.store_key("MobileNetV2", str(copy), SIZE) != key
    assert feature_store.store_key("MobileNetV2", "none", SIZE) is None


def test_the_store_file_keeps_each_image_once_and_the_two_latest_keys(tmp_path, caplog):
    d = str(tmp_path / "s")
    ids = [np.array([5, 3, 5], np.uint64), np.array([9], np.uint64)]
    feats = [np.array([[1.0, 0], [2, 0], [1, 0]], np.float32), np.array([[4.0, 4]], np.float32)]
    path = feature_store.save(d, "a", ids, feats)
    store = feature_store.load(d, "a")
    assert store.path == path and store.ids.tolist() == [3, 5, 9]
    np.testing.assert_array_equal(store.features, [[2, 0], [1, 0], [4, 4]])
    found, row = store.find(np.array([9, 4, 3], np.uint64))
    assert found.tolist() == [True, False, True] and store.features[row[0]].tolist() == [4, 4]
    (tmp_path / "s" / ".writing-killed.npz").write_bytes(b"half")  # a run killed mid-write
    for age, key in enumerate(("b", "c"), start=1):
        os.utime(path, (age, age))  # a then b: each older than what is written next
        path = feature_store.save(d, key, ids, feats)
    assert sorted(os.listdir(d)) == ["b.npz", "c.npz"]
    (tmp_path / "s" / "c.npz").write_bytes(b"not numpy")
    assert feature_store.load(d, "c") is None
    assert "cannot be read" in caplog.text
    assert feature_store.load(d, "zzz") is None
    assert feature_store.store_dir("gs://bucket/root/Trainer/model_run/7") is None
    assert feature_store.store_dir("/h/root/Trainer/model_run/7") == "/h/root/Trainer/feature_store"


@pytest.mark.parametrize("damage", ["cut short", "empty", "bytes flipped", "ids a scalar"])
def test_a_damaged_store_is_said_and_not_read(tmp_path, damage, caplog):
    """A store file cut short stopped every later run (BadZipFile, escaping the check), until
    someone deleted it by hand."""
    d = str(tmp_path)
    path = feature_store.save(d, "k", [np.arange(2000, dtype=np.uint64)], [np.ones((2000, 64), np.float32)])
    data = open(path, "rb").read()
    if damage == "cut short":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = b""
    elif damage == "bytes flipped":
        middle = len(data) // 2
        data = data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]
    else:
        np.savez(path, ids=np.uint64(3), features=np.ones((1, 64), np.float32))
        data = open(path, "rb").read()
    open(path, "wb").write(data)
    assert feature_store.load(d, "k") is None
    assert "cannot be read" in caplog.text and path in caplog.text


def test_a_store_that_cannot_be_deleted_is_said(tmp_path, monkeypatch, caplog):
    path = feature_store.save(str(tmp_path), "k", [np.array([1], np.uint64)], [np.ones((1, 2), np.float32)])
    store = feature_store.load(str(tmp_path), "k")

    def refused(p):
        raise PermissionError(1, "Operation not permitted", p)

    monkeypatch.setattr(feature_store.os, "remove", refused)
    store.drop()  # no error: the run goes on, and writes its own store over it
    assert "could not be deleted" in caplog.text and path in caplog.text
