"""One trace per fit: model.prepare_fit and the pre-training's BatchNorm recalibration.

prepare_fit creates the variables Keras's first train step would create, so `fit`
traces its train step once; training must be unchanged (same weights, same history).
recalibrate_batchnorm runs its forward pass as one traced function; the moving
statistics must still be the plain mean of the batches' statistics.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from trainer import model as model_lib
from trainer import pretrain, tracing
from trainer.pretrain import recalibrate_batchnorm

SIZE = 16


@pytest.fixture(autouse=True, scope="module")
def _traced_as_the_trainer_traces():
    tracing.install()  # what the trainer's entry points do (fit traces in ~1 s, not ~10 s)


def _small_model(num_classes: int, seed: int = 3) -> keras.Model:
    """Conv + BatchNorm + pooling + the project's head type: a small stand-in for a backbone."""
    keras.utils.set_random_seed(seed)
    images = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2)(images)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    units, activation = (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")
    return keras.Model(images, keras.layers.Dense(units, activation=activation)(x))


def _batches(num_classes: int, weighted: bool, n: int = 44, batch: int = 8) -> tf.data.Dataset:
    rng = np.random.RandomState(0)
    x = rng.uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32)
    y = rng.randint(0, num_classes, n)
    y = y.astype(np.float32)[:, None] if num_classes == 2 else y.astype(np.int64)
    parts = (x, y, rng.uniform(0.5, 2.0, n).astype(np.float32)) if weighted else (x, y)
    return tf.data.Dataset.from_tensor_slices(parts).batch(batch)  # 44 = 5 x 8 + a batch of 4


def _trained(num_classes: int, weighted: bool, prepare: bool):
    model = _small_model(num_classes)
    model_lib.compile_model(model, num_classes, learning_rate=0.05)
    ds = _batches(num_classes, weighted)
    if prepare:
        assert model_lib.prepare_fit(model, ds) is True
    history = model.fit(ds, validation_data=_batches(num_classes, False, n=12), epochs=3, verbose=0)
    return model, history.history


@pytest.mark.parametrize(
    "num_classes,weighted", [(3, False), (3, True), (2, True)], ids=["softmax", "weighted", "sigmoid"]
)
def test_a_prepared_fit_traces_once_and_trains_the_same(num_classes, weighted):
    plain, plain_history = _trained(num_classes, weighted, prepare=False)
    prepared, prepared_history = _trained(num_classes, weighted, prepare=True)
    assert plain.train_function.experimental_get_tracing_count() == 2  # what prepare_fit saves
    assert prepared.train_function.experimental_get_tracing_count() == 1
    assert prepared_history.keys() == plain_history.keys()
    for key, values in plain_history.items():
        np.testing.assert_allclose(prepared_history[key], values, rtol=1e-6, err_msg=key)
    for a, b in zip(prepared.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert [m.name for m in prepared.metrics] == [m.name for m in plain.metrics]


def test_prepare_fit_is_idempotent_and_declines_what_it_cannot_describe():
    model = _small_model(3)
    ds = _batches(3, False)
    assert model_lib.prepare_fit(model, ds) is False  # not compiled: nothing to build
    model_lib.compile_model(model, 3, learning_rate=0.05)
    assert model_lib.prepare_fit(model, ds) is True
    slots = [v.ref() for v in model.optimizer.variables]
    assert model_lib.prepare_fit(model, ds) is True
    assert [v.ref() for v in model.optimizer.variables] == slots  # nothing created twice
    # No labels, or labels of an unknown shape: left to fit, which still trains.
    other = _small_model(3)
    model_lib.compile_model(other, 3, learning_rate=0.05)
    assert model_lib.prepare_fit(other, ds.map(lambda x, y: (x,))) is False
    pairs = [(x.numpy(), y.numpy()[:, None]) for x, y in ds]
    unknown = tf.data.Dataset.from_generator(
        lambda: iter(pairs),
        output_signature=(tf.TensorSpec([None, SIZE, SIZE, 3]), tf.TensorSpec([None, None], tf.int64)),
    )
    assert model_lib.prepare_fit(other, unknown) is False
    no_rank = tf.data.Dataset.from_generator(
        lambda: iter(pairs),
        output_signature=(tf.TensorSpec([None, SIZE, SIZE, 3]), tf.TensorSpec(None, tf.int64)),
    )
    assert model_lib.prepare_fit(other, no_rank) is False
    assert not other.compiled_metrics.built
    assert other.fit(unknown, epochs=1, verbose=0).history["loss"]


def test_recalibrated_statistics_are_the_mean_of_the_batches():
    model = _small_model(3)
    [bn] = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    bn.momentum = 0.37
    ds = _batches(3, False)  # 6 batches, the last one smaller
    # The reference: each batch's own statistics, as the layer computes them in training mode.
    means, variances = [], []
    for x, _ in ds:
        before = [v.numpy() for v in (bn.moving_mean, bn.moving_variance)]
        bn.momentum = 0.0
        model(x, training=True)
        means.append(bn.moving_mean.numpy())
        variances.append(bn.moving_variance.numpy())
        bn.moving_mean.assign(before[0])
        bn.moving_variance.assign(before[1])
        bn.momentum = 0.37

    assert recalibrate_batchnorm(model, ds) == 6
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean(means, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean(variances, axis=0), rtol=1e-5, atol=1e-6)
    # Not the last batch's statistics (what a momentum of 0 alone would leave).
    assert not np.allclose(bn.moving_mean.numpy(), means[-1], rtol=1e-3)
    assert bn.momentum == 0.37  # restored


def _trained_for_pretraining(optimizer, prepare: bool):
    """_small_model compiled as the pre-training compiles its model, trained 3 epochs."""
    model = _small_model(3)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    ds = _batches(3, False)
    if prepare:
        assert model_lib.prepare_fit(model, ds) is True
        slots = [v.ref() for v in model.optimizer.variables()]
        assert model_lib.prepare_fit(model, ds) is True  # idempotent for this optimizer too
        assert [v.ref() for v in model.optimizer.variables()] == slots
    history = model.fit(ds, epochs=3, verbose=0)
    return model, history.history


def test_the_pretrainings_fused_adam_is_prepared_traces_once_and_updates_as_adam_does():
    """pretrain.optimizer (tf_keras's legacy Adam: one fused op per variable) gets its slots
    from prepare_fit like the default optimizer, and takes the same steps as the default Adam."""
    plain, plain_history = _trained_for_pretraining(pretrain.optimizer(0.05), prepare=False)
    prepared, prepared_history = _trained_for_pretraining(pretrain.optimizer(0.05), prepare=True)
    assert plain.train_function.experimental_get_tracing_count() == 2
    assert prepared.train_function.experimental_get_tracing_count() == 1
    np.testing.assert_allclose(prepared_history["loss"], plain_history["loss"], rtol=1e-6)
    for a, b in zip(prepared.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)

    # The update rule, on a model without BatchNorm (a bias before a BatchNorm gets gradients
    # of ~0, whose Adam steps are all rounding): a softmax layer, 3 epochs.
    def softmax_steps(optimizer):
        keras.utils.set_random_seed(5)
        model = keras.Sequential(
            [keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(), keras.layers.Dense(3)]
        )
        model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        losses = model.fit(_batches(3, False), epochs=3, verbose=0).history["loss"]
        return losses, model.get_weights()

    fused_losses, fused = softmax_steps(pretrain.optimizer(0.01))
    python_losses, python = softmax_steps(keras.optimizers.Adam(learning_rate=0.01))
    np.testing.assert_allclose(fused_losses, python_losses, rtol=1e-4)
    for a, b in zip(fused, python, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_the_refit_on_batches_restarts_the_selection_model_without_a_new_build_or_trace():
    """head.finish on tf.data (the image path, a spilled cache): the refit trains the selection
    model again from its initial weights with a zeroed optimizer, on the whole split. That is
    what a fresh head would do, with the train step Keras traced for the selection."""
    from trainer import head
    from trainer.config import TrainingConfig

    n, classes = 60, 3
    rng = np.random.RandomState(1)
    x = rng.uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32)
    labels = np.arange(n) % classes
    x[:, :4, :4, 0] += labels[:, None, None]  # learnable: the class shifts one corner

    def batches(mask, shuffle):  # unshuffled: the refit and its reference see the same batches
        keep = np.ones(n, bool) if mask is None else mask
        return tf.data.Dataset.from_tensor_slices((x[keep], labels[keep].astype(np.int64))).batch(8)

    def frozen_base_model() -> keras.Model:
        model = _small_model(classes, seed=5)
        for layer in model.layers[:-1]:  # a frozen stand-in backbone (BatchNorm in inference mode)
            layer.trainable = False
        model_lib.compile_model(model, classes, learning_rate=0.05)
        return model

    builds = []

    def build(hp):
        builds.append(frozen_base_model())
        return builds[-1]

    params = TrainingConfig(epochs=6, patience=2, validation_fraction=0.25, seed=0)
    hp = head.HeadHParams(learning_rate=0.05, dropout=0.0, l2=0.0)
    data, _ = head.dataset_data(labels, batches, None, params)
    initial = [v.numpy() for v in frozen_base_model().trainable_variables]
    run = head.train_head(build, hp, data, params)

    assert run.refit is not None and run.refit.epochs_run == run.selection.best_epoch >= 1
    assert len(builds) == 1 and run.model is builds[0]
    assert run.model.train_function.experimental_get_tracing_count() == 1
    assert int(run.model.optimizer.iterations.numpy()) == run.refit.epochs_run * 8  # 60 / 8 -> 8 batches

    # The reference: a new build (the same initial weights: same seed) trained on the whole
    # split for the refit's epochs.
    reference = frozen_base_model()
    for a, b in zip(reference.trainable_variables, initial, strict=True):
        np.testing.assert_array_equal(a.numpy(), b)
    history = model_lib.fit_batches(reference, batches(None, False), epochs=run.refit.epochs_run, verbose=0)
    np.testing.assert_allclose(run.refit.history["loss"], history.history["loss"], rtol=1e-5)
    for a, b in zip(run.model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
