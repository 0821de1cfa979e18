"""The Trainer's frozen-feature cache: parity with the full model, spill to disk, bypass rules.

Tiny real data (scikit-learn digits at 32px) and a MobileNetV2 pre-trained here
(the session fixture `source_backbone`), so features are not constant and a
mismatch between the cached and the uncached path would show. Models and
feature extractors are module-scoped: tracing MobileNetV2 is most of the cost.
"""

import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from trainer import data, distribution, export, train
from trainer import model as model_lib
from trainer.config import TrainingConfig

SIZE = 32
BATCH = 8


def _split(work, digits, per_class):
    items = helpers.digit_images(digits, per_class=per_class, size=SIZE, seed=3)
    tfo = helpers.analyze_transform(items, os.path.join(work, "transform"), image_size=SIZE)
    root = helpers.write_split_dataset(os.path.join(work, "data"), items, eval_every=4)
    return tfo, os.path.join(root, "train"), os.path.join(root, "eval")


@pytest.fixture(scope="module")
def three_class(tmp_path_factory):
    """27 train / 9 eval images of digits 5, 6, 7 and their Transform output."""
    return _split(str(tmp_path_factory.mktemp("cache3")), (5, 6, 7), 12)


@pytest.fixture(scope="module")
def two_class(tmp_path_factory):
    """15 train / 5 eval images of digits 5, 6: one sigmoid unit, labels float [B, 1]."""
    return _split(str(tmp_path_factory.mktemp("cache2")), (5, 6), 10)


@pytest.fixture(scope="module")
def strategy():
    return distribution.make_strategy()


def _model(strategy, weights, num_classes):
    with strategy.scope():
        return model_lib.build_model("MobileNetV2", weights, SIZE, num_classes, dropout=0.0)


@pytest.fixture(scope="module")
def model3(strategy, source_backbone):
    """A 3-class full model and a FeatureExtractor over its backbone (one trace for all tests)."""
    m = _model(strategy, source_backbone, 3)
    return m, data.FeatureExtractor(strategy, model_lib.backbone_of(m))


def _params(weights, **kw):
    base = {
        "backbone": "MobileNetV2",
        "weights": weights,
        "image_size": SIZE,
        "batch_size": BATCH,
        "epochs": 1,
        "learning_rate": 1e-2,
        "dropout": 0.0,
    }
    return TrainingConfig(**{**base, **kw})


def _images(files, tfo, num_classes):
    return data.make_dataset(files, tfo, data.InputSpec(batch_size=BATCH, num_classes=num_classes))


def _arrays(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def test_cache_decision_rules():
    assert data.cache_decision(augment=False, fine_tuning=False, requested=True)[0] is True
    off, why = data.cache_decision(augment=False, fine_tuning=False, requested=False)
    assert not off and "off by config" in why
    aug, why = data.cache_decision(augment=True, fine_tuning=False, requested=True)
    assert not aug and "augmentation" in why
    ft, why = data.cache_decision(augment=False, fine_tuning=True, requested=True)
    assert not ft and "fine-tuning" in why
    assert TrainingConfig().feature_cache is True  # on by default


def test_head_on_cached_features_equals_full_model(three_class, model3):
    tfo, train_files, _ = three_class
    m, extractor = model3
    cache = extractor.cache(_images(train_files, tfo, 3))
    feats, labels = _arrays(cache.features.batch(64))
    images, image_labels = _arrays(_images(train_files, tfo, 3))

    assert cache.location == "memory" and cache.count == len(images) == 27
    assert feats.shape == (27, cache.feature_dim)
    assert feats.std(axis=0).max() > 1e-3, "constant features would make parity meaningless"
    np.testing.assert_array_equal(labels, image_labels)
    via_cache = model_lib.head_of(m)(feats, training=False).numpy()
    full = m(images, training=False).numpy()
    assert full.std(axis=0).max() > 1e-4
    np.testing.assert_allclose(via_cache, full, rtol=1e-4, atol=1e-5)


def test_features_extracted_in_smaller_calls_are_the_same(three_class, model3):
    tfo, train_files, _ = three_class
    _, extractor = model3
    whole, y_whole = _arrays(extractor.cache(_images(train_files, tfo, 3)).features.batch(64))
    small = data.make_dataset(train_files, tfo, data.InputSpec(batch_size=2, num_classes=3))
    parts, y_parts = _arrays(extractor.cache(small).features.batch(64))
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y_parts, y_whole)


@pytest.mark.parametrize(
    "global_batch,size,replicas,expected",
    [
        (32, 32, 1, 32),
        (32, 256, 1, 32),
        (32, 512, 1, 8),
        (32, 1024, 1, 2),
        (64, 1024, 2, 2),
        (64, 4096, 2, 2),
    ],
)
def test_extraction_calls_are_bounded_by_their_pixels(global_batch, size, replicas, expected):
    assert train.extraction_batch(global_batch, size, replicas) == expected


def test_disk_spill_gives_the_memory_features(three_class, model3, tmp_path):
    tfo, train_files, _ = three_class
    _, extractor = model3
    memory = extractor.cache(_images(train_files, tfo, 3))
    disk = extractor.cache(_images(train_files, tfo, 3), str(tmp_path), memory_limit_bytes=1)
    assert memory.location == "memory"
    assert disk.spilled and disk.location == str(tmp_path / data.SPILL_FILE)
    assert os.path.getsize(disk.location) > disk.count * disk.feature_dim * 4
    f_mem, y_mem = _arrays(memory.features.batch(64))
    f_disk, y_disk = _arrays(disk.features.batch(64))
    np.testing.assert_allclose(f_disk, f_mem, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(y_disk, y_mem)
    assert y_disk.dtype == y_mem.dtype == np.int64

    # Shuffled batches from disk: every example once per epoch, in a new order.
    f_shuf, _ = _arrays(disk.batches(BATCH, shuffle=True, seed=1))
    assert not np.array_equal(f_shuf, f_disk)
    np.testing.assert_array_equal(f_shuf[np.lexsort(f_shuf.T[:4])], f_disk[np.lexsort(f_disk.T[:4])])

    disk.release()
    assert not os.path.exists(disk.location)


def test_spill_without_cache_dir_uses_and_removes_a_temp_dir(three_class, model3):
    tfo, train_files, _ = three_class
    _, extractor = model3
    cache = extractor.cache(_images(train_files, tfo, 3), memory_limit_bytes=1)
    assert cache.spilled and os.path.isfile(cache.location)
    assert sum(1 for _ in cache.features) == 27
    cache.release()
    assert not os.path.exists(os.path.dirname(cache.location))


@pytest.fixture(scope="module")
def two_class_run(two_class, source_backbone, strategy, tmp_path_factory):
    """A default (cached) 2-class run whose features spill to its cache_dir."""
    tfo, train_files, eval_files = two_class
    cache_dir = str(tmp_path_factory.mktemp("run2") / "feature_cache")
    # Extraction calls bounded as at 1024 px (4 images of 32 px a call, not the batch of 8).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "EXTRACTION_PIXELS", 4 * SIZE * SIZE + 1)
        result = train.train(
            train_files,
            eval_files,
            tfo,
            _params(source_backbone, epochs=3),
            strategy=strategy,
            cache_dir=cache_dir,
            cache_memory_bytes=1,
            verbose=0,
        )
    return result, cache_dir, tfo, train_files


def test_two_class_run_trains_head_on_spilled_cache(two_class_run):
    result, cache_dir, _, _ = two_class_run
    assert result.feature_cache_used and result.feature_cache_phases == {"head": True}
    assert any("spilled to disk" in n and cache_dir in n for n in result.notes)
    assert (
        f"features extracted 4 images a call at {SIZE}px, not the batch of {BATCH}: a call's memory grows with its pixels"
        in result.notes
    )
    assert set(result.seconds) == {"feature_extraction", "train"}
    assert len(result.history["loss"]) == 3 and 0.0 <= result.eval_accuracy <= 1.0
    # Spilled features are deleted once the head is trained.
    assert not any(files for _, _, files in os.walk(cache_dir))


def test_exported_model_from_cached_run_serves_like_in_memory_model(two_class_run, tmp_path):
    result, _, tfo, _ = two_class_run
    m = result.model
    assert m.input_shape == (None, SIZE, SIZE, 3), "the export must be the full image model"
    export_dir = export.export_serving_model(m, tfo, result.class_names, str(tmp_path / "export"))
    items = helpers.digit_images((5, 6), per_class=5, size=SIZE, seed=9)
    examples = [helpers.make_example(img) for img, _ in items]
    expected = helpers.in_memory_scores(m, tfo, 2, examples)
    assert expected.shape == (10, 2) and expected.std(axis=0).max() > 1e-3
    served = tf.saved_model.load(export_dir).signatures[export.SERVING_DEFAULT](
        examples=tf.constant(examples)
    )
    np.testing.assert_allclose(served["scores"].numpy(), expected, rtol=1e-4, atol=5e-5)


def test_two_class_float_labels_through_memory_and_disk(two_class_run, strategy):
    result, _, tfo, train_files = two_class_run
    m = result.model
    extractor = data.FeatureExtractor(strategy, model_lib.backbone_of(m))
    _, image_labels = _arrays(_images(train_files, tfo, 2))
    assert image_labels.dtype == np.float32 and image_labels.shape == (15, 1)
    assert set(np.unique(image_labels)) == {0.0, 1.0}
    for limit in (data.DEFAULT_CACHE_MEMORY_BYTES, 1):
        cache = extractor.cache(_images(train_files, tfo, 2), memory_limit_bytes=limit)
        assert cache.spilled == (limit == 1)
        feats, labels = _arrays(cache.batches(BATCH, shuffle=False, seed=0))
        np.testing.assert_array_equal(labels, image_labels)
        assert labels.dtype == np.float32
        assert model_lib.head_of(m)(feats, training=False).shape == (15, 1)
        cache.release()


def test_augmentation_bypasses_cache(three_class, source_backbone):
    tfo, train_files, eval_files = three_class
    result = train.train(train_files, eval_files, tfo, _params(source_backbone, augment=True), verbose=0)
    assert result.feature_cache_used is False
    assert result.feature_cache_phases == {"head": False}
    assert any("augmentation changes the backbone's input" in n for n in result.notes)
    assert "feature_extraction" not in result.seconds
    # augment flips images: the flip check looked at the train images as they are and flipped.
    labels = data.class_indices(train_files, tfo)
    expected = sum(min(int(np.sum(labels == c)), 40) for c in np.unique(labels))
    assert result.flip_check["examined"] == expected and "flip_check" in result.seconds
    assert result.summary()["flip_check"] == result.flip_check
    assert any(n.startswith("flip check (augment flips images)") for n in result.notes)


def test_fine_tune_phase_bypasses_cache_and_trains_backbone(three_class, source_backbone):
    tfo, train_files, eval_files = three_class
    params = _params(source_backbone, fine_tune_layers=6, fine_tune_epochs=1)
    result = train.train(train_files, eval_files, tfo, params, verbose=0)
    assert result.feature_cache_phases == {"head": True, "fine_tune": False}
    assert any("fine-tuning changes the backbone's weights" in n for n in result.notes)
    assert "fine_tune_loss" in result.history and "fine_tune" in result.seconds
    # The fine-tune phase trained through the backbone on images: its top conv moved.
    tuned = model_lib.backbone_of(result.model).get_layer("Conv_1").get_weights()[0]
    source = model_lib.build_backbone("MobileNetV2", source_backbone, SIZE)
    assert np.abs(tuned - source.get_layer("Conv_1").get_weights()[0]).max() > 0


_TWO_REPLICAS = textwrap.dedent(
    """
    import sys
    import numpy as np
    from trainer import distribution
    distribution.split_cpu(2)
    import tensorflow as tf
    from trainer import data, model as model_lib
    base = model_lib.build_backbone("MobileNetV2", sys.argv[1], 32)
    x = np.random.RandomState(0).uniform(-1, 1, (11, 32, 32, 3)).astype(np.float32)
    y = np.arange(11, dtype=np.int64)
    images = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    two = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    assert two.num_replicas_in_sync == 2
    cache = data.build_feature_cache(two, base, images)
    f, labels = next(iter(cache.features.batch(32)))
    assert cache.count == 11, cache.count
    np.testing.assert_array_equal(labels.numpy(), y)
    # Each replica runs the backbone on its half of a batch: oneDNN picks its kernels by batch
    # size, so float32 rounding differs through the ~50 layers, by up to ~3e-6 of the features'
    # scale on one AVX-512 CPU (1.6e-5 on a feature near 0.002); examples out of order or
    # dropped would differ by the scale itself.
    want = base(x, training=False).numpy()
    np.testing.assert_allclose(f.numpy(), want, rtol=1e-4, atol=2e-5 * np.abs(want).max())
    print("OK")
    """
)


@pytest.fixture(scope="module", autouse=True)
def two_replica_run(source_backbone, tmp_path_factory):
    """Started before this module's first test so the fresh process overlaps with them."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    log = tmp_path_factory.mktemp("replicas") / "output.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _TWO_REPLICAS, source_backbone],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    yield proc, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_cache_under_two_replicas_keeps_examples_and_order(two_replica_run):
    """MirroredStrategy over 2 logical CPUs (a fresh process: devices are split before TF starts)."""
    proc, log = two_replica_run
    code = proc.wait(timeout=600)
    output = log.read_text()
    assert code == 0 and "OK" in output.splitlines(), output[-3000:]


def test_failed_extraction_removes_its_partial_spill(three_class, model3, tmp_path, monkeypatch):
    """An error part-way through a spilling extraction leaves no spill file or temp dir."""
    tfo, train_files, _ = three_class
    _, extractor = model3
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    removed = []
    real_remove = data._remove_spill

    def spy(path, owned_dir):
        removed.append((path, owned_dir, os.path.exists(path) if path else False))
        real_remove(path, owned_dir)

    monkeypatch.setattr(data, "_remove_spill", spy)
    # Two good batches (spilled: the memory limit is 1 byte), then a batch that fails to decode.
    bad = helpers.write_tfrecords(str(tmp_path / "bad" / "data.tfrecord"), [(b"not an image", "5")] * BATCH)
    broken = _images(train_files, tfo, 3).take(2).concatenate(_images(bad, tfo, 3))
    with pytest.raises(tf.errors.InvalidArgumentError):
        extractor.cache(broken, memory_limit_bytes=1)
    (path, owned_dir, existed), *_ = removed
    assert existed and owned_dir and path.startswith(owned_dir)  # the spill had started
    assert not [p for p in os.listdir(tmp_path) if p.startswith("imgpipe-feature-cache-")]

    removed.clear()
    spill_dir = tmp_path / "given"
    with pytest.raises(tf.errors.InvalidArgumentError):
        extractor.cache(broken, str(spill_dir), memory_limit_bytes=1)
    assert removed and removed[0][2] and removed[0][1] is None
    assert not (spill_dir / data.SPILL_FILE).exists()

    # The spill file cannot be opened (e.g. a bad path): the temp dir made for it goes too.
    def no_writer(path):
        raise OSError(f"cannot open {path}")

    monkeypatch.setattr(tf.io, "TFRecordWriter", no_writer)
    with pytest.raises(OSError, match="cannot open"):
        extractor.cache(_images(train_files, tfo, 3), memory_limit_bytes=1)
    assert not [p for p in os.listdir(tmp_path) if p.startswith("imgpipe-feature-cache-")]


def test_a_failed_extraction_leaves_no_tf_data_iterator_to_the_collector(
    three_class, model3, tmp_path, monkeypatch
):
    """The error's traceback (kept by the caller, as pytest.raises keeps it) must not hold the
    dataset's iterator: freed by a later collector pass, it made that pass wait for its threads
    (an 8 s pass in the next test file's test, in one reproduction)."""
    import gc

    tfo, train_files, _ = three_class
    _, extractor = model3
    made = helpers.track_iterators(monkeypatch)
    bad = helpers.write_tfrecords(str(tmp_path / "bad" / "data.tfrecord"), [(b"not an image", "5")] * BATCH)
    broken = _images(train_files, tfo, 3).take(2).concatenate(_images(bad, tfo, 3))
    gc.collect()
    gc.disable()
    try:
        with pytest.raises(tf.errors.InvalidArgumentError) as caught:
            extractor.cache(broken)
        assert made, "the extraction made no iterator: this would test nothing"
        alive = [ref for ref in made if ref() is not None]
        assert caught.value.__traceback__ is not None
    finally:
        gc.enable()
    assert alive == []
