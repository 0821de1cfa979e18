"""The head trained to convergence: validation slice, early stopping, refit, class weights, --tune.

Head-only behaviour runs on synthetic feature vectors (milliseconds per epoch);
one module fixture runs trainer.train end to end on real digit images with the
session's tiny pre-trained MobileNetV2, for what only a real run shows (the
summary, the eval split kept out of every choice, the image path's held-out records).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from pipeline.config import ConfigError, PipelineConfig
from tests import helpers
from trainer import data, head, image_ids, memory_fit, train, tune
from trainer import model as model_lib
from trainer.config import SUMMARY_FILE, TrainingConfig

D = 12  # synthetic feature size


def _params(**kw) -> TrainingConfig:
    """The tests of the validation slice's mechanics keep it (cv_folds 0); the cross-validation
    that replaces a small slice has its own tests (`select_by_folds`)."""
    return TrainingConfig(
        **{"backbone": "MobileNetV2", "weights": "none", "image_size": 32, "cv_folds": 0, **kw}
    )


def _blobs(counts, sep=1.5, seed=0, flip=0.0):
    """Gaussian clusters in D dims, one per class, `counts[c]` examples each; `flip` of the
    labels replaced at random (noise a head can overfit)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, sep, (len(counts), D))
    x = np.concatenate([rng.normal(centers[c], 1.0, (n, D)) for c, n in enumerate(counts)]).astype(np.float32)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int64)
    noisy = rng.random(len(y)) < flip
    y[noisy] = rng.integers(0, len(counts), noisy.sum())
    return x, y


def _targets(y, k):
    return y.astype(np.float32).reshape(-1, 1) if k == 2 else y


def _build(k, seed=0):
    def build(hp: head.HeadHParams):
        tf.keras.utils.set_random_seed(seed)
        m = model_lib.build_head(D, k, hp.dropout, hp.l2)
        model_lib.compile_model(m, k, hp.learning_rate)
        return m

    return build


def _dataset_data(x, y, k, weights, params):
    targets = _targets(y, k)

    def batches(mask, shuffle):
        keep = np.ones(len(y), bool) if mask is None else mask
        ds = tf.data.Dataset.from_tensor_slices((x[keep], targets[keep]))
        if shuffle:
            ds = ds.shuffle(int(keep.sum()), seed=params.seed)
        return ds.batch(params.batch_size)

    return head.dataset_data(y, batches, weights, params)[0]


def _data(engine, x, y, k, params, weights=None):
    if engine == "memory":
        return head.array_data(x, _targets(y, k), y, weights, params, params.batch_size)[0]
    return _dataset_data(x, y, k, weights, params)


# --------------------------------------------------------------------------- validation slice


def test_holdout_mask_is_stratified_deterministic_and_leaves_train_examples():
    labels = np.repeat(np.arange(5), [50, 20, 3, 2, 1])
    np.random.default_rng(1).shuffle(labels)
    mask = head.holdout_mask(labels, 0.3, seed=7)
    held = {c: int(mask[labels == c].sum()) for c in range(5)}
    # round(0.3 * n) per class, never the whole class: 15, 6, 1, 1 (of 2), 0 (of 1).
    assert held == {0: 15, 1: 6, 2: 1, 3: 1, 4: 0}
    for c in range(5):
        assert (~mask[labels == c]).sum() >= 1, f"class {c} lost all its training examples"
    np.testing.assert_array_equal(mask, head.holdout_mask(labels, 0.3, seed=7))
    assert not np.array_equal(mask, head.holdout_mask(labels, 0.3, seed=8))
    with pytest.raises(ValueError, match="fraction"):
        head.holdout_mask(labels, 0.0, seed=7)


def test_array_and_dataset_data_hold_out_the_same_train_examples():
    x, y = _blobs([20, 10, 6])
    params = _params(validation_fraction=0.2, seed=3)
    arrays = head.array_data(x, y, y, None, params, 8)[0]
    mask = head.holdout_mask(y, 0.2, seed=3)
    assert arrays.validation_examples == mask.sum() == 4 + 2 + 1
    np.testing.assert_array_equal(arrays.val_arrays.x.numpy(), x[mask])
    np.testing.assert_array_equal(arrays.fit_arrays.x.numpy(), x[~mask])
    np.testing.assert_array_equal(arrays.whole_arrays.x.numpy(), x)
    ds = _dataset_data(x, y, 3, None, params)
    val_rows = np.concatenate([b[0].numpy() for b in ds.val_batches])
    np.testing.assert_array_equal(val_rows, x[mask])


def test_no_validation_slice_when_early_stopping_is_off_or_no_class_can_spare_one():
    x, y = _blobs([20, 10])
    off, note = head.array_data(x, y, y, None, _params(early_stopping=False), 8)
    assert not off.has_validation and "early stopping off" in note
    tiny_x, tiny_y = _blobs([1, 1, 2])  # 10% of 1-2 examples rounds to none
    skipped, note = head.array_data(tiny_x, tiny_y, tiny_y, None, _params(), 8)
    assert not skipped.has_validation and "early stopping skipped" in note
    with pytest.raises(ValueError, match="^tune_trials: .*too small"):
        head.array_data(tiny_x, tiny_y, tiny_y, None, _params(tune_trials=2), 8)


def test_feature_cache_select_memory_and_streamed_agree():
    x, y = _blobs([9, 7])
    mask = head.holdout_mask(y, 0.3, seed=1)
    memory = data.FeatureCache.in_memory(x, y)
    streamed = data.FeatureCache(memory.features, len(x), D, "/nowhere/features.tfrecord", labels=y)
    for cache in (memory.select(mask), streamed.select(mask)):
        batches = list(cache.batches(4, False, 0))
        f = np.concatenate([a.numpy() for a, _ in batches])
        lab = np.concatenate([b.numpy() for _, b in batches])
        np.testing.assert_array_equal(f, x[mask])
        np.testing.assert_array_equal(lab, y[mask])
        assert cache.count == mask.sum() and list(cache.labels) == list(y[mask])
    assert streamed.select(mask).view  # releasing it must not delete the parent's file
    with pytest.raises(ValueError, match="mask of shape"):
        memory.select(mask[:-1])
    # A dataset longer than its mask fails instead of passing the extra examples through.
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(data.select_examples(memory.features, mask[:-3]))


# --------------------------------------------------------------------------- class weights


def test_a_head_no_better_than_a_uniform_guess_is_noted():
    """300 classes with 1 validation image each: the best validation loss 5.92 was worse than a
    uniform guess (ln 300 = 5.70), and the epochs were chosen on it without a word (an audit)."""
    from trainer import head
    from trainer.train import _no_better_than_uniform

    def run(loss, best_epoch=3, **kw):
        outcome = head.FitOutcome({}, 10, best_epoch=best_epoch, best_val_loss=loss, **kw)
        return head.HeadRun(model=None, hparams=None, selection=outcome)

    said = _no_better_than_uniform(run(5.92), 300, 300)
    assert said.startswith(
        "head: its best validation loss 5.9200 is no lower than a uniform guess's over 300 classes"
    )
    assert "(ln 300 = 5.7038): on 300 validation examples (1.0 a class)" in said
    assert _no_better_than_uniform(run(math.log(10)), 10, 40) is not None  # equal: no better
    assert _no_better_than_uniform(run(2.0), 10, 40) is None
    assert _no_better_than_uniform(run(None, best_epoch=None), 10, 0) is None  # no validation
    # Cross-validation chooses by pooled weighted accuracy (its loss may rise on a few confident
    # mistakes while accuracy improves): judged by that accuracy against 1/K, not by the loss.
    assert _no_better_than_uniform(run(5.9, folds=5, best_val_weighted_accuracy=0.6), 300, 30) is None
    folds = _no_better_than_uniform(run(1.0, folds=5, best_val_weighted_accuracy=0.002), 300, 30)
    assert folds.startswith(
        "head: its pooled weighted accuracy over the train split's 5 folds, 0.0020, is no higher"
    )


def test_a_head_whose_train_loss_never_fell_names_the_learning_rate():
    """Learning rates of 1e-9 (train loss flat) and 10 (train loss rising): the note blamed the
    data ("too few images a class, labels that do not follow the images ...")."""
    from trainer import head
    from trainer.train import _describe, _no_better_than_uniform

    def run(losses, lr):
        outcome = head.FitOutcome({"loss": losses}, len(losses), best_epoch=2, best_val_loss=1.46)
        return head.HeadRun(model=None, hparams=head.HeadHParams(lr, 0.0, 0.0), selection=outcome)

    flat = _no_better_than_uniform(run([1.9505, 1.9505, 1.9504], 1e-9), 3, 45)
    assert (
        "Its train loss did not fall either (1.9505 at epoch 1, 1.9504 at its lowest): the learning rate, 1e-09"
        in flat
    )
    assert "(the default is 0.001)" in flat and "labels that do not follow" not in flat
    rising = _no_better_than_uniform(run([2.548, 4.959, 4.9], 10.0), 3, 45)
    assert "the learning rate, 10, is likely too high or too low" in rising
    falling = _no_better_than_uniform(run([1.9, 1.0, 0.8], 1e-3), 3, 45)  # below ln 3 = 1.0986
    assert "labels that do not follow the images" in falling
    # Within a hair above ln K (labels unrelated to the images, under dropout): the data, not the rate.
    assert "labels that do not follow" in _no_better_than_uniform(run([1.2, 1.15, 1.12], 1e-3), 3, 45)
    # Fell once, then froze far above a uniform guess's on its own train images (an audit's rate of
    # 10 on 5 classes), or crawled down from a high start (1e-6): the rate, not the data.
    for losses, lr in (([6.534, 6.119, 6.119, 6.119], 10.0), ([9.22, 8.1, 7.3, 6.66], 1e-6)):
        outcome = head.FitOutcome({"loss": losses}, len(losses), best_epoch=2, best_val_loss=6.58)
        said = _no_better_than_uniform(head.HeadRun(None, head.HeadHParams(lr, 0.0, 0.0), outcome), 5, 300)
        assert "never went below a uniform guess's either" in said and "ln 5 = 1.6094" in said, said
        assert f"the learning rate, {lr:g}, is likely too high or too low" in said
        assert "labels that do not follow" not in said and "too few epochs (--epochs)" in said
    # The train cross-entropy (without L2) is what is judged when logged: a loss above ln K that
    # is all weight penalty is not blamed on the rate.
    outcome = head.FitOutcome(
        {"loss": [2.5, 2.2, 2.0], "cross_entropy": [1.5, 0.9, 0.7]}, 3, best_epoch=2, best_val_loss=1.46
    )
    penalised = _no_better_than_uniform(head.HeadRun(None, head.HeadHParams(1e-3, 0.0, 0.5), outcome), 3, 45)
    assert "labels that do not follow the images" in penalised

    # Still falling at the cap: said, with the flag that gives more epochs.
    params = _params(epochs=30, patience=3)
    notes = []
    outcome = head.FitOutcome({"loss": [1.0] * 30}, 30, best_epoch=30, best_val_loss=0.2)
    _describe(notes.append, head.HeadRun(model=None, hparams=None, selection=outcome), params)
    assert notes[-1] == (
        "head: its validation loss was still falling at the cap of 30 epochs (best at epoch 30): more "
        "epochs (--epochs) may train it further"
    )
    for quiet in (
        head.FitOutcome({"loss": [1.0] * 12}, 12, best_epoch=9, best_val_loss=0.2, stopped_epoch=12),
        head.FitOutcome({"loss": [1.0] * 30}, 30, best_epoch=29, best_val_loss=0.2),  # the last was worse
        # Cross-validation that stopped before the cap: nothing more to say.
        head.FitOutcome(
            {"loss": [1.0] * 20},
            20,
            best_epoch=20,
            best_val_loss=0.2,
            stopped_epoch=20,
            folds=5,
            best_val_weighted_accuracy=0.9,
        ),
    ):
        notes.clear()
        _describe(notes.append, head.HeadRun(model=None, hparams=None, selection=quiet), params)
        assert len(notes) == 1, notes
    # Cross-validation chooses by pooled accuracy: at the cap, still rising, said of that accuracy.
    notes.clear()
    accuracy = [0.5 + 0.01 * i for i in range(30)]
    rising = head.FitOutcome(
        {"loss": [1.0] * 30, head.WEIGHTED_ACCURACY: accuracy},
        30,
        best_epoch=30,
        best_val_loss=0.2,
        folds=5,
        best_val_weighted_accuracy=0.79,
    )
    _describe(notes.append, head.HeadRun(model=None, hparams=None, selection=rising), params)
    assert notes[-1] == (
        "head: its pooled weighted accuracy over the folds was still rising at the cap of 30 epochs (best at "
        "epoch 30): more epochs (--epochs) may train it further"
    )
    # The accuracy flat, the last epoch best by the pooled loss (the tie-break): said so.
    flat = dataclasses.replace(rising, history={"loss": [1.0] * 30, head.WEIGHTED_ACCURACY: [0.8] * 30})
    _describe(notes.append, head.HeadRun(model=None, hparams=None, selection=flat), params)
    assert notes[-1].startswith(
        "head: its pooled loss over the folds was still falling, at an unchanged weighted accuracy, at the cap"
    )

    # A loss that became NaN: the learning rate, at the epoch it happened.
    nan = _no_better_than_uniform(run([2.5, float("nan"), float("nan")], 100.0), 3, 45)
    assert "Its train loss became nan at epoch 2: the learning rate, 100, is likely too high" in nan


def test_class_weights_auto_and_none():
    balanced = np.repeat([0, 1, 2], [10, 10, 10])
    assert head.class_weights(balanced, 3, "auto")[0] is None
    mild = np.repeat([0, 1], [10, 7])  # 1.43x: not imbalanced enough
    weights, why = head.class_weights(mild, 2, "auto")
    assert weights is None and "1.43 <= 1.5" in why
    skewed = np.repeat([0, 1, 2], [30, 10, 5])  # 6x
    weights, why = head.class_weights(skewed, 3, "auto")
    np.testing.assert_allclose(weights, [45 / (3 * 30), 45 / (3 * 10), 45 / (3 * 5)])
    assert "balanced" in why
    # With the classes' names, each weight says whose it is (the report's note listed bare numbers,
    # in the vocabulary's order, which is not the report's).
    _, named = head.class_weights(skewed, 3, "auto", ["cat", "dog", "emu"])
    assert named.endswith("): cat: 0.5, dog: 1.5, emu: 3")
    assert head.class_weights(skewed, 3, "none") == (None, "class weights off by config")
    with pytest.raises(ValueError, match=r"classes \[1\] have no training examples"):
        head.class_weights(np.array([0, 0, 2]), 3, "auto")


@pytest.mark.parametrize("k", [2, 3])
def test_weighted_loss_moves_the_head_toward_the_minority_class(k):
    counts = [200] * (k - 1) + [20]  # the last class is the minority
    x, y = _blobs(counts, sep=0.6, seed=4)  # overlapping classes: the prior matters
    test_x, test_y = _blobs([300] * k, sep=0.6, seed=4)  # same centres, balanced
    minority = k - 1
    params = _params(early_stopping=False, epochs=20, learning_rate=1e-2, dropout=0.0)
    recall = {}
    for mode in ("none", "auto"):
        weights, _ = head.class_weights(y, k, mode)
        assert (weights is None) == (mode == "none")
        run = head.train_head(
            _build(k), head.HeadHParams(1e-2, 0.0, 0.0), _data("memory", x, y, k, params, weights), params
        )
        probs = run.model(test_x, training=False).numpy()
        pred = (probs[:, 0] > 0.5).astype(int) if k == 2 else probs.argmax(-1)
        recall[mode] = (pred[test_y == minority] == minority).mean()
    assert recall["auto"] > recall["none"] + 0.1, recall


# --------------------------------------------------------------------------- early stopping


@pytest.mark.parametrize("engine", ["memory", "dataset"])
def test_early_stopping_stops_before_the_cap_and_restores_the_best_weights(engine):
    x, y = _blobs([40, 40, 40], sep=0.8, seed=2, flip=0.3)  # noisy labels: it overfits
    params = _params(epochs=100, patience=3, batch_size=16, validation_fraction=0.25)
    hd = _data(engine, x, y, 3, params)
    model, outcome = head.select_epochs(_build(3), head.HeadHParams(0.1, 0.0, 0.0), hd, params)
    val = outcome.history[head.MONITOR]
    assert outcome.stopped_epoch is not None and outcome.epochs_run < 100
    assert outcome.epochs_run == len(val) == outcome.best_epoch + params.patience
    assert outcome.best_epoch == int(np.argmin(val)) + 1
    assert min(val) < val[-1], "the last epoch must be worse than the best for this to test anything"
    if engine == "memory":
        now = memory_fit.evaluate(model, hd.val_arrays)["cross_entropy"]
    else:
        now = model.evaluate(hd.val_batches, verbose=0, return_dict=True)["cross_entropy"]
    assert now == pytest.approx(min(val), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("engine", ["memory", "dataset"])
def test_no_early_stopping_trains_exactly_epochs_on_the_whole_split(engine):
    x, y = _blobs([30, 30], seed=5, flip=0.3)
    params = _params(early_stopping=False, epochs=7)
    hd = _data(engine, x, y, 2, params)
    run = head.train_head(_build(2), head.HeadHParams(0.05, 0.2, 0.0), hd, params)
    assert hd.validation_examples == 0 and run.refit is None
    assert run.selection.epochs_run == len(run.selection.history["loss"]) == 7
    assert run.selection.best_epoch is None and run.selection.stopped_epoch is None


def test_refit_trains_the_whole_split_for_the_best_epoch_count():
    x, y = _blobs([40, 40, 40], sep=0.8, seed=2, flip=0.3)
    params = _params(epochs=100, patience=3, batch_size=16)
    kept = head.train_head(
        _build(3),
        head.HeadHParams(0.05, 0.0, 0.0),
        _data("memory", x, y, 3, params),
        params.model_copy(update={"refit": False}),
    )
    assert kept.refit is None
    refit = head.train_head(
        _build(3), head.HeadHParams(0.05, 0.0, 0.0), _data("memory", x, y, 3, params), params
    )
    assert refit.selection.best_epoch == kept.selection.best_epoch  # same seed, same selection
    assert refit.refit.epochs_run == refit.selection.best_epoch
    assert "val_loss" not in refit.refit.history  # nothing held out in the refit
    assert not np.allclose(refit.model.get_weights()[0], kept.model.get_weights()[0])


def test_a_fresh_head_on_memory_features_is_the_model_restarted_to_its_initial_state(tmp_path):
    x, y = _blobs([20, 20, 20])
    hp = head.HeadHParams(0.05, 0.0, 0.0)
    m = _build(3)(hp)
    params = _params(batch_size=8, seed=1, early_stopping=False)
    hd = _data("memory", x, y, 3, params)
    epochs_seen = []
    counter = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: epochs_seen.append(e))
    board = train._callbacks(str(tmp_path / "logs"), [counter])  # what run_fn passes: TensorBoard
    first = hd.fit(m, True, 5, False, 1, board)
    assert epochs_seen == [0, 1, 2, 3, 4] and os.listdir(tmp_path / "logs" / "train")

    def no_build(_):
        raise AssertionError("a model fitted here is restarted, not built again")

    m.optimizer.learning_rate.assign(0.001)  # as ReduceLROnPlateau would in the last fit
    assert hd.fresh(m, no_build, hp) is m
    assert int(m.optimizer.iterations.numpy()) == 0
    assert float(m.optimizer.learning_rate.numpy()) == pytest.approx(hp.learning_rate)
    again = hd.fit(m, True, 5, False, 1)
    np.testing.assert_allclose(again.history["loss"], first.history["loss"], rtol=1e-5)


# --------------------------------------------------------------------------- --tune


def test_tune_runs_n_trials_starting_from_the_configured_head():
    x, y = _blobs([30, 30, 30], sep=1.0, seed=6, flip=0.1)
    params = _params(tune_trials=3, epochs=60, patience=3, learning_rate=3e-3, dropout=0.1, l2=1e-4)
    hd = _data("memory", x, y, 3, params)
    result = tune.tune_head(_build(3), hd, params, params.tune_trials)
    assert len(result.trials) == 3
    assert result.trials[0].hparams == head.HeadHParams(3e-3, 0.1, 1e-4)
    assert len({t.hparams for t in result.trials}) == 3
    assert result.best.val_loss == min(t.val_loss for t in result.trials)
    assert result.run.hparams == result.best.hparams
    assert result.run.refit.epochs_run == result.best.best_epoch
    summary = result.summary()
    assert summary["trials"] == 3 and summary["best"]["learning_rate"] == result.best.hparams.learning_rate
    json.dumps(summary)  # goes into training_summary.json


def test_a_failing_trial_stops_the_search_with_its_own_error():
    x, y = _blobs([20, 20])
    params = _params(tune_trials=2, epochs=5)

    def broken(hp):
        raise RuntimeError("head could not be built")

    with pytest.raises(RuntimeError, match="head could not be built"):
        tune.tune_head(broken, _data("memory", x, y, 2, params), params, 2)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "change,field",
    [
        ({"tune_trials": 2, "feature_cache": False}, "tune_trials"),
        ({"tune_trials": 2, "augment": True}, "tune_trials"),
        ({"tune_trials": -1}, "tune_trials"),
        ({"class_weights": "balanced"}, "class_weights"),
        ({"validation_fraction": 0.0}, "validation_fraction"),
        ({"validation_fraction": 0.9}, "validation_fraction"),
        ({"patience": 0}, "patience"),
        ({"l2": -1e-3}, "l2"),
        ({"early_stopping": "sometimes"}, "early_stopping"),
    ],
)
def test_config_errors_name_the_field(change, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        PipelineConfig().replace(**change)


def test_defaults_train_to_convergence():
    t = TrainingConfig()
    assert t.early_stopping and t.refit and t.class_weights == "auto" and t.tune_trials == 0
    assert t.epochs >= 100, "epochs is the cap of early stopping, not the count"


# --------------------------------------------------------------------------- real runs

SIZE = 32


@pytest.fixture(scope="module")
def imbalanced_digits(tmp_path_factory):
    """Digits 5 and 6 at 16 images, 7 at 5 (train 12/12/3 after every 4th goes to eval)."""
    work = str(tmp_path_factory.mktemp("convergence"))
    items = helpers.digit_images((5, 6), per_class=16, size=SIZE, seed=5)
    items += helpers.digit_images((7,), per_class=5, size=SIZE, seed=5)
    items = [items[i] for i in np.random.default_rng(0).permutation(len(items))]
    tfo = helpers.analyze_transform(
        [it for i, it in enumerate(items) if i % 4], os.path.join(work, "transform"), image_size=SIZE
    )
    root = helpers.write_split_dataset(os.path.join(work, "data"), items, eval_every=4)
    return tfo, os.path.join(root, "train"), os.path.join(root, "eval"), work


def _run_params(weights, **kw):
    return TrainingConfig(
        **{"backbone": "MobileNetV2", "weights": weights, "image_size": SIZE, "batch_size": 8, **kw}
    )


def test_default_run_writes_the_convergence_summary(imbalanced_digits, source_backbone):
    tfo, train_files, eval_files, work = imbalanced_digits
    result = train.train(train_files, eval_files, tfo, _run_params(source_backbone), verbose=0)
    labels = data.class_indices(train_files, tfo)
    counts = np.bincount(labels, minlength=3)
    assert counts.max() / counts.min() > 1.5, counts  # the fixture is imbalanced
    assert result.class_weights is not None
    by_name = {n: counts[i] for i, n in enumerate(result.class_names)}
    assert max(result.class_weights, key=result.class_weights.get) == min(by_name, key=by_name.get)
    assert result.validation_examples == head.holdout_mask(labels, 0.1, 42).sum() > 0
    assert result.best_epoch is not None and 1 <= result.best_epoch <= result.epochs_run <= 200
    assert result.refit_epochs == result.best_epoch
    assert (result.stopped_epoch is None) == (result.epochs_run == 200)
    assert result.hparams == {"learning_rate": TrainingConfig().learning_rate, "dropout": 0.0, "l2": 0.0}
    assert result.standardized
    assert set(result.seconds) == {"feature_extraction", "train"}
    path = os.path.join(work, "model_run", SUMMARY_FILE)
    train.write_summary(result, path)
    with open(path) as f:
        summary = json.load(f)
    for key in (
        "class_weights",
        "best_epoch",
        "stopped_epoch",
        "epochs_run",
        "refit_epochs",
        "head",
        "tuning",
    ):
        assert key in summary, key
    assert summary["tuning"] is None and set(summary["class_weights"]) == set(result.class_names)
    # The label check (trainer/label_check.py; its own tests: test_label_check.py) on the folds'
    # answers: every train image of a class of two or more examined, clean digits not warned of.
    check = result.label_check
    assert check["held_out"] == "cross-validation (5 folds)" and check["examined"] == len(labels)
    assert check["warning"] is None and summary["label_check"]["examined"] == check["examined"]
    assert any(n.startswith("label check: the head's answers on") for n in result.notes)


def test_tune_never_reads_the_eval_split(imbalanced_digits, source_backbone, monkeypatch):
    tfo, train_files, eval_files, _ = imbalanced_digits
    fitted, evaluated = [], []
    real_fit, real_evaluate = memory_fit.fit, memory_fit.evaluate

    def spy_fit(model, train_arrays, val_arrays, *a, **kw):
        fitted.append([train_arrays.x.numpy()] + ([] if val_arrays is None else [val_arrays.x.numpy()]))
        return real_fit(model, train_arrays, val_arrays, *a, **kw)

    def spy_evaluate(model, arrays, *a, **kw):
        evaluated.append((len(fitted), arrays.x.numpy()))
        return real_evaluate(model, arrays, *a, **kw)

    monkeypatch.setattr(memory_fit, "fit", spy_fit)
    monkeypatch.setattr(memory_fit, "evaluate", spy_evaluate)
    params = _run_params(source_backbone, tune_trials=3, epochs=40)
    result = train.train(train_files, eval_files, tfo, params, verbose=0)

    assert result.tuning["trials"] == 3 and len(result.tuning["results"]) == 3
    assert result.hparams == {k: result.tuning["best"][k] for k in ("learning_rate", "dropout", "l2")}
    assert len(fitted) == 3 + 1  # three trials, then the refit of the best
    # Its validation slice holds fewer than 10 of the minority class: the noisy scoring is said.
    assert any(
        n.startswith("tune: trials scored on a validation slice with fewer than 10") for n in result.notes
    )
    # The eval split is evaluated after every trial chose (the winner, before the refit replaces
    # it: the label check compares that head's answers with its own eval accuracy; nothing is
    # chosen by it) and after every fit, and is in none of them.
    [(before_refit, judged_x), (after, eval_x)] = evaluated
    assert before_refit == 3 and after == len(fitted) and len(eval_x) == data.count_examples(eval_files)
    np.testing.assert_array_equal(judged_x, eval_x)
    seen = np.concatenate([a for arrays in fitted for a in arrays])
    for row in eval_x:
        assert not np.any(np.all(np.isclose(seen, row, atol=1e-6), axis=1)), "an eval example was trained on"


def _near_copies(train_files, tfo):
    """Sets of near-copies as ingest reports them (image fingerprints) over the fixture's train
    split: four images of its largest class, and every one of its smallest (one set: one picture
    seen several ways); the split's labels and each record's group."""
    ids = image_ids.split_ids(train_files)
    labels = data.class_indices(train_files, tfo)
    counts = np.bincount(labels)
    sets = [ids[labels == np.argmax(counts)][:4], ids[labels == np.argmin(counts)]]
    return sets, labels, image_ids.groups(ids, sets)


def test_the_folds_keep_the_data_s_near_copies_whole_in_a_real_run(imbalanced_digits, source_backbone):
    tfo, train_files, eval_files, _ = imbalanced_digits
    sets, labels, groups = _near_copies(train_files, tfo)
    params = _run_params(source_backbone, epochs=5)
    result = train.train(train_files, eval_files, tfo, params, verbose=0, near_copies=sets)
    together = f"validation: {sum(map(len, sets))} train images in 2 sets of near-copies or repeats"
    assert any(n.startswith(together + ", each set kept whole") for n in result.notes), result.notes
    smallest = labels == np.argmin(np.bincount(labels))
    # The folds (a slice too small for the smallest class): its one set is in none of them.
    assert result.selection_folds == 5
    assert result.label_check["examined"] == len(labels) - int(smallest.sum())


def test_image_path_holds_out_records_and_stops_early(imbalanced_digits, source_backbone):
    """Without the cache (augmentation), the slice is chosen by record and read via the input fn,
    each set of near-copies kept whole."""
    tfo, train_files, eval_files, _ = imbalanced_digits
    sets, labels, groups = _near_copies(train_files, tfo)
    params = _run_params(source_backbone, augment=True, epochs=3, patience=1, validation_fraction=0.25)
    result = train.train(train_files, eval_files, tfo, params, verbose=0, near_copies=sets)
    assert result.feature_cache_used is False
    held = head.holdout_mask(labels, 0.25, 42, groups)
    assert result.validation_examples == held.sum() > 0
    assert held.sum() != head.holdout_mask(labels, 0.25, 42).sum()  # the sets changed the slice
    assert len(result.history[head.MONITOR]) == result.epochs_run <= 3
    assert result.refit_epochs == result.best_epoch


def test_class_indices_reads_labels_in_file_order_and_names_unknown_ones(imbalanced_digits, tmp_path):
    tfo, train_files, _, _ = imbalanced_digits
    names = data.class_names(tfo)
    labels = data.class_indices(train_files, tfo)
    from_images = np.concatenate(
        [
            y.numpy()
            for _, y in data.make_dataset(train_files, tfo, data.InputSpec(batch_size=8, num_classes=3))
        ]
    )
    np.testing.assert_array_equal(labels, from_images)
    # Byte for byte, as preprocessing_fn maps them: a padded class name is no class.
    odd = [names[0], "cat", f" {names[0]}", "cat"]
    bad = helpers.write_tfrecords(str(tmp_path / "bad.tfrecord"), [(b"x", name) for name in odd])
    with pytest.raises(data.UnmappedLabelError, match="labels not in the label vocabulary: 'cat'") as caught:
        data.class_indices(bad, tfo)
    assert caught.value.labels == ["cat", f" {names[0]}"]


def test_unlabelled_records_are_refused_by_split_and_count_before_training(imbalanced_digits, tmp_path):
    """A record with no label (or two) cannot be trained on or judged: a clear error, not a parse error."""
    tfo, train_files, eval_files, _ = imbalanced_digits
    names = data.class_names(tfo)
    path = str(tmp_path / "unlabelled.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for labels in ([], [names[0]], [names[0], names[1]], []):
            feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"]))}
            if labels:
                values = [n.encode() for n in labels]
                feature["label"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    with pytest.raises(data.UnlabelledExamplesError, match="^3 of 4 eval examples have no 'label' value"):
        data.unmapped_label_counts(path, tfo)
    with pytest.raises(data.UnlabelledExamplesError, match="^3 of 4 train examples .* --score-data"):
        data.check_labelled(path, "train")
    with pytest.raises(data.UnlabelledExamplesError, match="train examples"):
        data.class_indices(path, tfo)
    data.check_labelled([train_files, eval_files], "train")  # labelled splits pass
    params = TrainingConfig(backbone="MobileNetV2", weights="none", image_size=SIZE, epochs=1)
    with pytest.raises(data.UnlabelledExamplesError, match="^3 of 4 train examples"):
        train.train(path, eval_files, tfo, params, verbose=0)


def test_standardised_head_equals_a_dense_layer_on_standardised_features():
    x, y = _blobs([30, 30, 30])
    x = x * np.linspace(0.3, 30, D, dtype=np.float32) + 5  # features of very different scales
    stats = model_lib.feature_stats(x.astype(np.float64).sum(0), (x.astype(np.float64) ** 2).sum(0), len(x))
    np.testing.assert_allclose(stats[0], x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats[1], x.var(0), rtol=1e-3)
    m = model_lib.build_head(D, 3, 0.0, 0.0, stats)
    kernel, bias = m.get_layer("probabilities").get_weights()
    z = (x - x.mean(0)) / x.std(0)
    expected = tf.nn.softmax(z @ kernel + bias).numpy()
    np.testing.assert_allclose(m(x, training=False).numpy(), expected, rtol=1e-3, atol=1e-5)
    # A unit that is constant in training gets a floored variance, not a division by ~0.
    constant = np.concatenate([x[:, :-1], np.full((len(x), 1), 3.0, np.float32)], axis=1)
    f = constant.astype(np.float64)
    _, variance = model_lib.feature_stats(f.sum(0), (f**2).sum(0), len(f))
    assert variance[-1] >= 1e-4 * variance.mean() * 0.999
    # Every unit constant (images of one colour): the sums' float noise is no variance to divide by.
    flat = np.full((64, 8), 0.37, np.float32) + np.float32(1e-7) * (np.arange(64)[:, None] % 2)
    f = flat.astype(np.float64)
    mean, variance = model_lib.feature_stats(f.sum(0), (f**2).sum(0), len(f))
    assert (variance >= 0.37**2 * 1e-8 * 0.999).all()
    assert np.abs((flat - mean) / np.sqrt(variance)).max() < 0.05  # noise stays noise


def test_eval_labels_with_no_class_are_left_out_of_the_trainers_accuracy(imbalanced_digits, source_backbone):
    """An eval class train lacks (the DataGate let it through: --allow-anomalies) does not fail the
    Trainer; its accuracy covers the classes it has, the notes say what was left out. In train,
    the same label fails, by name."""
    tfo, train_files, eval_files, work = imbalanced_digits
    unseen = helpers.write_tfrecords(
        os.path.join(work, "unseen", "eval-8.tfrecord"), helpers.digit_images((8,), per_class=3, size=SIZE)
    )
    spec = data.InputSpec(batch_size=4, num_classes=3, drop_unmapped=True)
    kept = sum(len(y) for _, y in data.make_dataset([eval_files, unseen], tfo, spec))
    assert kept == data.count_examples(eval_files)
    assert data.unmapped_label_counts([eval_files, unseen], tfo) == {"8": 3}
    params = _run_params(source_backbone, epochs=3, early_stopping=False)
    result = train.train(train_files, [eval_files, unseen], tfo, params, verbose=0)
    assert any("'8' x3" in n and "left out" in n for n in result.notes), result.notes
    known = data.make_dataset(eval_files, tfo, data.InputSpec(batch_size=8, num_classes=3))
    hits = [np.argmax(result.model(x, training=False).numpy(), axis=1) == y.numpy() for x, y in known]
    assert result.eval_accuracy == pytest.approx(np.concatenate(hits).mean(), abs=1e-6)
    with pytest.raises(data.UnmappedLabelError, match="'8'"), data.explain_unmapped_labels():
        train.train([train_files, unseen], eval_files, tfo, params, verbose=0)


@pytest.mark.parametrize("early_stopping", [True, False], ids=["stopped early", "every epoch"])
def test_a_fit_on_batches_leaves_no_tf_data_iterator_behind(monkeypatch, early_stopping):
    """Keras leaves a fit's train iterators in reference cycles (an early-stopped fit's epoch
    generator, and some of a fit that runs every epoch); the Trainer ends them as the fit
    returns, so none waits for a later garbage collection."""
    import gc

    made = helpers.track_iterators(monkeypatch)
    x, y = _blobs([40, 40, 40], sep=0.8, seed=2, flip=0.3)  # noisy labels: it overfits and stops
    epochs = 100 if early_stopping else 6
    params = _params(
        epochs=epochs, patience=3, batch_size=16, validation_fraction=0.25, early_stopping=early_stopping
    )
    hd = _data("dataset", x, y, 3, params)
    gc.collect()
    gc.disable()
    try:
        _, outcome = head.select_epochs(_build(3), head.HeadHParams(0.1, 0.0, 0.0), hd, params)
        if early_stopping:
            assert outcome.stopped_epoch is not None, "the fit must stop early for this to test anything"
        else:
            assert outcome.epochs_run == epochs
        assert made, "the fit made no tf.data iterator"
        alive = [r() for r in made if r() is not None]
        assert not alive, f"{len(alive)} of the fit's {len(made)} tf.data iterators outlived it"
    finally:
        gc.enable()


# --------------------------------------------------------------------------- k-fold selection


def test_fold_masks_validate_each_example_once_stratified_and_deterministic():
    labels = np.repeat(np.arange(4), [23, 7, 2, 1])
    np.random.default_rng(3).shuffle(labels)
    masks = head.fold_masks(labels, 5, seed=9)
    assert len(masks) == 5
    times = np.sum(masks, axis=0)
    assert (times[labels == 3] == 0).all()  # a class of one example always trains
    assert (times[labels != 3] == 1).all()  # every other example is validated exactly once
    for m in masks:
        for c in range(3):
            assert (labels[~m] == c).any(), "a fold must leave each class something to train on"
        assert abs(int(m.sum()) - len(labels) / 5) <= 2  # folds of even size
    assert all((a == b).all() for a, b in zip(masks, head.fold_masks(labels, 5, seed=9), strict=True))
    assert any((a != b).any() for a, b in zip(masks, head.fold_masks(labels, 5, seed=10), strict=True))


def _clips(sizes_by_class, seed):
    """Labels and group ids: class c holds groups (a clip's frames, say) of the given sizes, shuffled."""
    labels, groups = [], []
    for c, sizes in enumerate(sizes_by_class):
        for size in sizes:
            labels += [c] * size
            groups += [len(set(groups))] * size
    order = np.random.default_rng(seed).permutation(len(labels))
    return np.array(labels)[order], np.array(groups)[order]


def test_fold_masks_keep_each_group_of_near_copies_in_one_fold():
    labels, groups = _clips([[8, 1, 1, 5, 3, 1, 2, 6], [4, 4, 4, 4], [9], [1, 1, 1, 1, 1, 1]], seed=2)
    masks = head.fold_masks(labels, 5, seed=9, groups=groups)
    fold_of = np.argmax(masks, axis=0)
    times = np.sum(masks, axis=0)
    for g in np.unique(groups):
        members = groups == g
        assert len(set(fold_of[members])) == 1, f"group {g} split between folds"
    assert (times[labels == 2] == 0).all()  # a class of one group (one clip) always trains
    assert (times[labels != 2] == 1).all()  # every other image is validated once
    for m in masks:
        for c in (0, 1, 3):
            assert (labels[~m] == c).any(), "a fold must leave each class something to train on"
    held = [int(m[labels == 0].sum()) for m in masks]
    assert max(held) - min(held) <= 8  # whole groups dealt to the emptiest fold: even within a group
    again = head.fold_masks(labels, 5, seed=9, groups=groups)
    assert all((a == b).all() for a, b in zip(masks, again, strict=True))
    # Groups of one image each deal exactly as no groups do (records without near-copies).
    singles = np.arange(len(labels))
    for a, b in zip(head.fold_masks(labels, 5, 9), head.fold_masks(labels, 5, 9, singles), strict=True):
        np.testing.assert_array_equal(a, b)


def test_holdout_mask_keeps_each_group_of_near_copies_on_one_side():
    labels, groups = _clips([[3] * 20, [1] * 30, [10, 10], [25], [2, 7, 1, 1, 4]], seed=5)
    mask = head.holdout_mask(labels, 0.2, seed=7, groups=groups)
    for g in np.unique(groups):
        assert len(set(mask[groups == g])) == 1, f"group {g} split between the slice and training"
    counts = np.bincount(labels)
    held = np.bincount(labels[mask], minlength=len(counts))
    assert held[0] == 12 and held[1] == 6  # 20% of 60 in sets of 3; 20% of 30 single images
    assert held[2] == 10  # two sets of 10: neither fits in round(0.2 * 20) = 4, so one is held out
    assert held[3] == 0  # one set: it trains
    assert 0 < held[4] <= 3 and held[4] < counts[4]
    np.testing.assert_array_equal(mask, head.holdout_mask(labels, 0.2, seed=7, groups=groups))
    np.testing.assert_array_equal(
        head.holdout_mask(labels, 0.2, 7), head.holdout_mask(labels, 0.2, 7, np.arange(len(labels)))
    )


def test_folds_replace_a_slice_too_small_for_some_class():
    x, y = _blobs([200, 60], seed=4)
    small = _data("memory", x, y, 2, _params(cv_folds=5))  # 10% of 60: 6 in the slice
    assert head.needs_folds(small, _params(cv_folds=5))
    assert not head.needs_folds(small, _params(cv_folds=0))
    x, y = _blobs([200, 100], seed=4)
    assert not head.needs_folds(_data("memory", x, y, 2, _params(cv_folds=5)), _params(cv_folds=5))


def test_memory_fit_weighted_accuracy_is_balanced_accuracy_under_balanced_weights():
    x, y = _blobs([90, 10], sep=0.7, seed=5)
    weights, _ = head.class_weights(y, 2, "auto")
    params = _params(epochs=3)
    hd = _data("memory", x, y, 2, params, weights)
    model, outcome = head.select_epochs(_build(2), head.HeadHParams(0.01, 0.0, 0.0), hd, params)
    val = hd.val_arrays
    p = model(val.x, training=False).numpy()[:, 0] > 0.5
    truth = val.y.numpy()[:, 0] > 0.5
    balanced = np.mean([np.mean(p[truth == c] == c) for c in (False, True)])
    assert outcome.history["val_weighted_accuracy"][-1] == pytest.approx(balanced, abs=1e-6)


def test_select_by_folds_chooses_the_best_mean_weighted_accuracy_then_refits_on_the_whole_split():
    """A skewed, noisy task whose slice would hold 3 examples of the small class: the epoch count
    comes from 5 folds (the chosen epoch has the best pooled weighted accuracy, the lowest pooled loss
    among equals), and the final head is trained on the whole split for that many epochs, also
    with refit off (no single selection model exists)."""
    x, y = _blobs([300, 30], sep=0.6, seed=6, flip=0.1)
    weights, _ = head.class_weights(y, 2, "auto")
    params = _params(cv_folds=5, epochs=60, patience=3, refit=False)
    hd = _data("memory", x, y, 2, params, weights)
    assert head.needs_folds(hd, params)
    notes = []
    run = head.train_head(_build(2), head.HeadHParams(0.01, 0.0, 0.0), hd, params)
    sel = run.selection
    assert sel.folds == 5
    accuracy, loss = np.asarray(sel.history["val_weighted_accuracy"]), np.asarray(sel.history[head.MONITOR])
    best = sel.best_epoch - 1
    assert accuracy[best] == accuracy.max()
    assert loss[best] == loss[accuracy == accuracy.max()].min()
    assert sel.best_val_weighted_accuracy == pytest.approx(accuracy[best])
    assert run.refit is not None and run.refit.epochs_run == sel.best_epoch
    from trainer.train import _describe

    _describe(notes.append, run, params)
    assert notes[0].startswith(
        f"head: epoch {sel.best_epoch} chosen by 5-fold cross-validation on the train split"
    )


def test_a_fold_trains_on_while_its_weighted_accuracy_still_rises():
    """The folds stopped once their loss had not improved for 4 x patience epochs, while the
    weighted accuracy the epoch is chosen by was still rising: an audit's 1:10 task chose the
    last epoch run, and its eval accuracy was 0.929 against 0.980 with longer folds (a gate
    decision turned). A fold stops only when neither has improved for that long."""
    model = _build(3)(head.HeadHParams(0.01, 0.0, 0.0))
    fold = head._FoldAnswers(np.zeros((4, D), np.float32), np.array([0, 1, 2, 0]), patience=4)
    fold.set_model(model)
    model.stop_training = False
    stopped = None
    for epoch in range(40):
        loss = 1.0 - 0.1 * min(epoch, 2) + 0.01 * max(0, epoch - 2)  # best at epoch 2, then rising
        accuracy = 0.5 + 0.02 * min(epoch, 12)  # rising up to epoch 12
        fold.on_epoch_end(epoch, {head.MONITOR: loss, head.WEIGHTED_ACCURACY: accuracy})
        if model.stop_training:
            stopped = epoch
            break
    assert stopped == 16  # 4 epochs after the accuracy's last rise (the loss's alone: epoch 6)
    assert len(fold.epochs) == 17
    # A non-finite score is no improvement.
    fold = head._FoldAnswers(np.zeros((4, D), np.float32), np.array([0, 1, 2, 0]), patience=2)
    fold.set_model(model)
    model.stop_training = False
    for epoch in range(3):
        fold.on_epoch_end(epoch, {head.MONITOR: math.nan, head.WEIGHTED_ACCURACY: math.nan})
    assert model.stop_training


@pytest.mark.parametrize("k", [2, 5])
def test_a_folds_kept_answers_give_the_label_check_its_numbers_unchanged(k):
    """Each fold keeps, per epoch, three numbers a held-out image (its given class's probability,
    the class answered and that one's), not the whole row: the label check's agreement, doubted
    images, pairs and warning come out the same from them as from whole rows."""
    from trainer import label_check

    rng = np.random.default_rng(k)
    n = 300
    given = rng.integers(0, k, n)
    logits = rng.normal(0, 1.5, (n, k))
    logits[np.arange(n), given] += 1.0
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    outputs = p[:, 1:] if k == 2 else p  # one sigmoid unit for two classes

    class Fixed(keras.Model):
        def call(self, x, training=False):
            return tf.constant(outputs, tf.float32)

    fold = head._FoldAnswers(np.zeros((n, D), np.float32), given, patience=3)
    fold.set_model(Fixed())
    fold.on_epoch_end(0, {})
    positions = np.arange(n)
    whole = label_check.check(
        label_check.HeldOut(positions, outputs, "x"), given, list("abcde")[:k], 0.95, 400
    )
    kept = label_check.check(
        label_check.HeldOut(positions, fold.at(0), "x"), given, list("abcde")[:k], 0.95, 400
    )
    assert whole["doubted"] >= 5
    for key in ("agreement", "doubted", "pairs", "warning"):
        assert kept[key] == whole[key], key
    assert [i["position"] for i in kept["images"]] == [i["position"] for i in whole["images"]]
    for a, b in zip(kept["images"], whole["images"], strict=True):
        assert a["given_probability"] == pytest.approx(b["given_probability"], abs=1e-4)
        assert a["answered_probability"] == pytest.approx(b["answered_probability"], abs=1e-4)
    assert fold.at(7).shape == (n, k)  # past a fold's last epoch: its last


def test_the_label_check_compares_the_answering_heads_own_eval_accuracy():
    """The label check compared the selection head's answers on its held-out slice with the
    refit's eval accuracy: after one epoch, 0.542 against 0.720 on clean labels, "train labels
    may be wrong". The head that answered is scored on the eval split before the refit replaces
    it; the folds' heads (one per fold) leave the final model's."""
    x, y = _blobs([200, 200, 200], seed=11)
    params = _params(epochs=3, patience=2)
    hd = _data("memory", x, y, 3, params)
    judged = []

    def judge(m):
        judged.append(head.answers(m, hd.val_arrays.x))
        return 0.123

    run = head.train_head(_build(3), head.HeadHParams(0.01, 0.0, 0.0), hd, params, judge=judge)
    assert run.refit is not None and run.selection.held_out.eval_accuracy == 0.123
    np.testing.assert_allclose(judged[0], run.selection.held_out.probabilities, atol=1e-6)  # the same head
    notes = []
    record = train._label_check(run, y, 3, ["a", "b", "c"], 0.9, 300, notes.append)
    assert record["eval_accuracy"] == 0.123
    assert record["eval_accuracy_of"] == "the head that answered the held-out images (before the refit)"
    small_x, small_y = _blobs([20, 20, 20], seed=12)
    params = _params(epochs=3, patience=2, cv_folds=3)
    folds = head.train_head(
        _build(3),
        head.HeadHParams(0.01, 0.0, 0.0),
        _data("memory", small_x, small_y, 3, params),
        params,
        judge=judge,
    )
    # The folds' heads are judged after each epoch; their mean at the chosen epoch is compared.
    assert folds.selection.folds == 3 and folds.selection.held_out.eval_accuracy == pytest.approx(0.123)
    record = train._label_check(folds, small_y, 3, ["a", "b", "c"], 0.9, 300, notes.append)
    assert record["eval_accuracy"] == pytest.approx(0.123)
    assert record["eval_accuracy_of"] == "the folds' heads that answered the held-out images (their mean)"
    unjudged = head.train_head(
        _build(3), head.HeadHParams(0.01, 0.0, 0.0), _data("memory", small_x, small_y, 3, params), params
    )
    record = train._label_check(unjudged, small_y, 3, ["a", "b", "c"], 0.9, 300, notes.append)
    assert record["eval_accuracy"] == 0.9 and record["eval_accuracy_of"] == "the final model"


def test_the_folds_heads_own_eval_accuracy_is_the_mean_at_the_chosen_epoch(monkeypatch):
    """An audit's 1:8 task: class-weighted fold heads answered held-out train images at 0.786 and
    the refit 39 eval images at 1.000, and the check warned of wrong labels on clean ones. The
    folds' heads are scored on the eval split after every epoch; the check reads their mean at
    the chosen epoch (a fold that stopped earlier: its last)."""
    small_x, small_y = _blobs([20, 20, 20], seed=12)
    params = _params(epochs=12, patience=1, cv_folds=3)
    made = []

    class Kept(head._FoldAnswers):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(head, "_FoldAnswers", Kept)
    calls = []

    def judge(m):
        calls.append(None)
        return len(calls) / 1000  # each call its own number: which epochs were read shows

    data = _data("memory", small_x, small_y, 3, params)
    run = head.train_head(_build(3), head.HeadHParams(0.01, 0.0, 0.0), data, params, judge=judge)
    sel = run.selection
    assert sel.folds == 3 and len(made) == 3
    assert [len(f.judged) for f in made] == [len(f.epochs) for f in made]  # once an epoch, each fold
    assert sum(len(f.judged) for f in made) == len(calls)  # the refit is not judged: the folds were
    best = sel.best_epoch - 1
    expected = np.mean([f.judged[min(best, len(f.judged) - 1)] for f in made])
    assert sel.held_out.eval_accuracy == pytest.approx(expected)


def test_the_folds_train_one_head_redrawn_per_fold_so_its_steps_are_traced_once():
    """One model serves every fold, with weights drawn anew per fold as a new build would draw
    them (the same draws for the same seed), and the refit starts from the last fold's: a head
    built per fold traced memory_fit's steps again each time (~0.3-1 s per fold)."""
    from trainer import memory_fit

    x, y = _blobs([120, 12], sep=0.8, seed=7)
    weights, _ = head.class_weights(y, 2, "auto")
    params = _params(cv_folds=5, epochs=8, patience=1)
    hd = _data("memory", x, y, 2, params, weights)
    assert head.needs_folds(hd, params)
    built, starts = [], []
    record = keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: starts.append([v.numpy().copy() for v in built[0].trainable_variables])
    )

    def build(hp):
        built.append(_build(2)(hp))
        return built[-1]

    run = head.train_head(build, head.HeadHParams(0.05, 0.0, 0.0), hd, params, [record])
    assert run.selection.folds == 5 and len(built) == 1 and run.model is built[0]
    assert len(starts) == 6  # 5 folds and the refit
    kernels = [start[0] for start in starts]
    assert all(not np.array_equal(a, b) for i, a in enumerate(kernels[:5]) for b in kernels[i + 1 : 5])
    assert all((start[1] == 0).all() for start in starts)  # zero biases stay zero
    np.testing.assert_array_equal(kernels[5], kernels[4])  # the refit: the last fold's start
    limit = np.sqrt(6 / sum(kernels[0].shape))  # Glorot uniform, as the build draws
    assert all(np.abs(k).max() <= limit for k in kernels)
    assert memory_fit._STEPS[run.model].epoch.experimental_get_tracing_count() == 1
    built.clear()
    again = head.train_head(build, head.HeadHParams(0.05, 0.0, 0.0), hd, params)
    assert again.selection.history == run.selection.history  # the same seed, the same draws


@pytest.mark.parametrize("counts", [[40, 2], [60, 3, 2], [25, 25]])
def test_the_folds_score_is_pooled_over_their_predictions_not_a_mean_of_fold_scores(counts):
    """A head that always answers the largest class has balanced accuracy 1 / k over the whole
    split, however the folds deal the small class: folds that validate none of it must not
    count as much as those holding its heavily weighed few. (A plain mean of the folds'
    weighted accuracies gave 0.71 on [40, 2].)"""
    labels = np.repeat(np.arange(len(counts)), counts)
    weights, _ = head.class_weights(labels, len(counts), "auto")
    w = weights[labels] if weights is not None else np.ones(len(labels))
    histories, sizes = [], []
    for mask in head.fold_masks(labels, 5, 0):
        right = labels[mask] == 0  # always the largest class
        histories.append(
            {
                head.WEIGHTED_ACCURACY: [float((right * w[mask]).sum() / w[mask].sum())] * 2,
                "val_accuracy": [float(right.mean())] * 2,
                head.MONITOR: [1.0, float("nan")],
            }
        )
        sizes.append(head._FoldSize(int((~mask).sum()), int(mask.sum()), float(w[mask].sum())))
    balanced = 1 / len(counts) if weights is not None else counts[0] / sum(counts)
    pooled = head._pooled(head.WEIGHTED_ACCURACY, histories, sizes, 3)
    assert pooled == pytest.approx([balanced] * 3)
    assert head._pooled("val_accuracy", histories, sizes, 2) == pytest.approx([counts[0] / sum(counts)] * 2)
    assert head._pooled(head.MONITOR, histories, sizes, 2) == [1.0, math.inf]


def test_more_folds_asked_than_a_class_can_deal_are_said_and_bounded():
    """cv_folds 1000 on a train split whose largest class holds 240: 240 folds ran (139 s against
    13 s for the slice) and the notes said '240-fold' without a word on the 1000."""
    from trainer import head
    from trainer.train import _describe

    notes = []
    outcome = head.FitOutcome(
        {"loss": [1.0] * 4},
        4,
        best_epoch=2,
        best_val_loss=0.3,
        stopped_epoch=4,
        folds=40,
        best_val_weighted_accuracy=0.8,
    )
    _describe(notes.append, head.HeadRun(model=None, hparams=None, selection=outcome), _params(cv_folds=50))
    assert notes[0].endswith("; 40 folds held examples, not cv_folds 50: the classes have too few")


def test_the_slice_never_takes_a_class_s_largest_set_and_says_why_none_is_held_out():
    """A review: a class of one 20-frame clip and a 1-image set held out 20 of its 21 images on
    half the seeds (the one group left out at random was the small one, then the smallest
    remaining, the clip, was taken); a class that is one set said "too small" and made --tune
    fail for the wrong reason."""
    labels = np.zeros(21, int)
    groups = np.array([0] + [1] * 20)
    for seed in range(8):
        assert head.holdout_mask(labels, 0.2, seed, groups).sum() == 1
    labels = np.repeat(np.arange(3), 30)
    one_set_each = labels.copy()  # every class one set of near-copies
    mask, note = head._holdout(labels, _params(), one_set_each)
    assert mask is None and note.endswith(
        "each class's train images are one set of near-copies, which a slice would split"
    )
    with pytest.raises(ValueError, match="each class's train images are one set of near-copies"):
        head._holdout(labels, _params(tune_trials=3), one_set_each)
    clips = np.arange(90) // 3  # sets of 3: the slice holds whole sets and says its share can differ
    mask, note = head._holdout(labels, _params(), clips)
    assert mask.sum() == 9 and "whole sets of near-copies, so a class's share can differ" in note
