"""Which images a model trained on (trainer/image_ids.py), and the comparison on the rest
(components/unseen_comparison.py) with a real exported model."""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import pytest

from tests import helpers


def _blake(image: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(image, digest_size=8).digest(), "little")


def _images(n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [helpers.encode_image(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(n)]


def _write_gzip(path: str, items) -> str:
    import tensorflow as tf

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for image, label in items:
            w.write(helpers.make_example(image, label))
    return path


def test_the_train_split_is_recorded_by_image_bytes_whatever_the_label(tmp_path):
    from trainer import image_ids

    a, b, c = _images(3, seed=1)
    train = tmp_path / "Split-train"
    # ExampleGen's gzip files; the same image under another label is the same image.
    _write_gzip(str(train / "data-00000.gz"), [(a, "cat"), (b, "dog")])
    _write_gzip(str(train / "data-00001.gz"), [(a, "dog"), (c, "cat")])
    model = tmp_path / "Trainer" / "model" / "7"
    assert image_ids.write(str(model), str(train)) == 3
    ids = image_ids.read(str(model))
    assert ids.dtype == np.uint64 and list(ids) == sorted(_blake(x) for x in (a, b, c))
    assert not os.path.exists(image_ids.ids_path(str(model)) + ".tmp")

    d = _images(1, seed=2)[0]
    evals = helpers.write_tfrecords(
        str(tmp_path / "eval.tfrecord"), [(d, "cat"), (c, "dog"), (d, "x"), (a, "cat")]
    )
    assert list(image_ids.seen(image_ids.split_ids(evals), ids)) == [False, True, False, True]
    # The third record is the first's image again: a repeat, whatever its label.
    ids, labels = image_ids.split_index(evals)
    assert list(labels) == ["cat", "dog", "x", "cat"] and list(ids) == [_blake(x) for x in (d, c, d, a)]
    assert list(image_ids.repeats(ids)) == [False, False, True, False]
    assert image_ids.conflicting_labels(ids, labels) == 1  # d as 'cat' and as 'x'
    assert image_ids.conflicting_labels(ids[:2], labels[:2]) == 0
    assert list(image_ids.repeats(np.zeros(0, np.uint64))) == []

    # A near-copy (ingest's sets) of an image the model trained on is seen too, for the
    # candidate's judgement and the baseline's comparison alike (seen_by); a set none of whose
    # images it trained on is not.
    from components.unseen_comparison import seen_by

    e, f = _images(2, seed=3)
    evals = helpers.write_tfrecords(str(tmp_path / "eval2.tfrecord"), [(d, "cat"), (e, "dog"), (f, "cat")])
    sets = [np.array([_blake(d), _blake(a)], np.uint64), np.array([_blake(e), _blake(f)], np.uint64)]
    eval_ids = image_ids.split_ids(evals)
    trained = image_ids.read(str(model))
    assert list(image_ids.near_copies_seen(eval_ids, trained, sets)) == [True, False, False]
    assert list(image_ids.near_copies_seen(eval_ids, trained, [])) == [False, False, False]
    assert list(seen_by(str(model), lambda: eval_ids, "the model", sets)) == [True, False, False]
    assert list(seen_by(str(model), lambda: eval_ids, "the model")) == [False, False, False]


def test_a_model_without_a_record_and_a_damaged_record(tmp_path):
    from components.unseen_comparison import seen_by
    from trainer import image_ids

    assert image_ids.read(str(tmp_path)) is None  # trained before the record existed
    good = io.BytesIO()
    np.save(good, np.arange(5, dtype=np.uint64))
    archive = io.BytesIO()
    np.savez(archive, ids=np.arange(5, dtype=np.uint64))
    objects = io.BytesIO()
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    signed = io.BytesIO()
    np.save(signed, np.arange(5, dtype=np.int64))
    damaged = {
        "not numpy": b"not numpy",
        "empty": b"",
        "cut short": good.getvalue()[:-9],
        "an .npz archive": archive.getvalue(),
        "pickled objects": objects.getvalue(),
        "signed integers": signed.getvalue(),
    }
    for what, raw in damaged.items():
        (tmp_path / image_ids.IDS_FILE).write_bytes(raw)
        with pytest.raises(ValueError, match=image_ids.IDS_FILE):
            image_ids.read(str(tmp_path))
        # The Evaluator then compares on the whole split, as for a model without a record.
        assert seen_by(str(tmp_path), lambda: np.arange(3, dtype=np.uint64), "the baseline") is None, what


def test_the_model_folder_of_a_remote_serving_dir_keeps_its_scheme():
    from trainer import image_ids

    assert image_ids.model_uri("gs://bucket/root/Trainer/model/7/Format-Serving") == (
        "gs://bucket/root/Trainer/model/7"
    )
    assert image_ids.model_uri("gs://bucket/root/Trainer/model/7/Format-Serving/") == (
        "gs://bucket/root/Trainer/model/7"
    )
    assert image_ids.model_uri("/home/x/Trainer/model/7/Format-Serving") == "/home/x/Trainer/model/7"


def test_accuracies_count_only_the_unseen_records(tmp_path, serving_model):
    """Seen records carry wrong labels: counted, they would pull the accuracy down."""
    import tensorflow as tf

    from components.unseen_comparison import answers_on_unseen

    def accuracies_on_unseen(seen, files, dirs, batch_size, balanced=False):
        return [a.value(balanced) for a in answers_on_unseen(seen, files, dirs, batch_size)]

    items = serving_model.items
    records, seen = [], []
    for i, (image, label) in enumerate(items):
        if i % 3 == 0:  # "trained on": a label the model cannot give
            records.append((image, "not-a-class"))
            seen.append(True)
        else:
            records.append((image, label))
            seen.append(False)
    records.append((items[0][0], "not-a-class"))  # unseen, with no class of the model: wrong
    seen.append(False)
    helpers.write_tfrecords(str(tmp_path / "eval" / "data.tfrecord"), records)
    mask = np.array(seen)

    # The oracle: the model's raw-image signature, another input path than serving_default's.
    model = tf.saved_model.load(serving_model.export_dir)
    top1 = model.signatures["predict_images"](images=tf.constant([img for img, _ in records]))[
        "classes"
    ].numpy()[:, 0]
    right = [c.decode() == label for c, (_, label) in zip(top1, records, strict=True)]
    expected = float(np.mean([r for r, s in zip(right, seen, strict=True) if not s]))
    assert 0 < expected < 1

    got = accuracies_on_unseen(mask, str(tmp_path / "eval"), [serving_model.export_dir] * 2, batch_size=5)
    assert got == [pytest.approx(expected, abs=1e-9)] * 2
    # Balanced: the mean recall over the classes of the unseen records ("not-a-class": recall 0).
    unseen = [(r, label) for r, s, (_, label) in zip(right, seen, records, strict=True) if not s]
    recall = {c: np.mean([r for r, label in unseen if label == c]) for c in {label for _, label in unseen}}
    assert len(recall) >= 3 and recall["not-a-class"] == 0
    balanced = accuracies_on_unseen(
        mask, str(tmp_path / "eval"), [serving_model.export_dir], batch_size=5, balanced=True
    )
    assert balanced == [pytest.approx(float(np.mean(list(recall.values()))), abs=1e-9)]
    assert balanced[0] != pytest.approx(expected)
    # Each class's records among the unseen ones, as the gate's per-class comparison counts them.
    [answers] = answers_on_unseen(mask, str(tmp_path / "eval"), [serving_model.export_dir], 5)
    assert answers.counts() == {c: sum(1 for _, label in unseen if label == c) for c in recall}

    with pytest.raises(ValueError, match="changed while it was read"):
        accuracies_on_unseen(np.append(mask, False), str(tmp_path / "eval"), [serving_model.export_dir], 64)
    with pytest.raises(ValueError, match="no eval record is left"):
        accuracies_on_unseen(
            np.ones(len(records), bool), str(tmp_path / "eval"), [serving_model.export_dir], 64
        )


def test_answers_count_each_label_as_it_is():
    """Labels padded with NUL bytes (fixed-width fields) stay themselves: NumPy's fixed-width
    strings would drop the NUL, and the recalls would match no eval class."""
    from components.unseen_comparison import Answers

    labels = np.array(["5\x00", "5\x00", "6\x00", "6", "6"], dtype=object)
    answers = Answers(labels, np.array([True, False, True, True, True]))
    assert answers.per_class() == {"5\x00": 0.5, "6": 1.0, "6\x00": 1.0}
    assert answers.accuracy() == 0.8 and answers.balanced() == pytest.approx(2.5 / 3)
    assert answers.on(np.array([True, True, False, False, False])).per_class() == {"5\x00": 0.5}
    assert Answers(labels[:0], np.zeros(0, bool)).per_class() == {}
