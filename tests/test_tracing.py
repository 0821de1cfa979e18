"""trainer.tracing: AutoGraph leaves tf_keras and TFT alone; training and Transform give the same results."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tensorflow.python.autograph.core import config as ag_config
from tensorflow.python.autograph.impl import conversion

from trainer import tracing


@pytest.fixture
def original_rules():
    """AutoGraph's rules as TensorFlow ships them, restored afterwards (the rule is process-wide)."""
    saved = ag_config.CONVERSION_RULES
    with tracing.as_shipped():
        yield
    assert ag_config.CONVERSION_RULES is saved


def _fit(steps_per_execution: int = 1) -> tuple[list[np.ndarray], list[float]]:
    """A small model with the layer kinds the backbones use, trained a few steps from a fixed seed."""
    keras.utils.set_random_seed(7)
    x = np.random.default_rng(0).normal(size=(96, 8, 8, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, 3, size=96)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU(6.0)(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dropout(0.3)(h)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(h))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    hist = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, validation_data=(x, y))
    return model.get_weights(), hist.history["val_loss"]


def test_install_adds_one_rule_and_is_idempotent(original_rules):
    assert not tracing.installed()
    assert not conversion.is_allowlisted(keras.layers.Dense.call)
    assert tracing.install()
    assert tracing.install()
    assert tracing.installed()
    for module in tracing.MODULES:
        assert len([r for r in ag_config.CONVERSION_RULES if r.matches(module)]) == 1, module
    assert conversion.is_allowlisted(keras.layers.Dense.call)
    assert conversion.is_allowlisted(keras.Model.train_step)
    assert conversion.is_allowlisted(tft.TFTransformOutput.transform_raw_features)
    # Only tf_keras: user code and other libraries are still converted as before.
    assert not conversion.is_allowlisted(_fit)


def test_training_is_unchanged_by_the_rule(original_rules):
    converted_weights, converted_loss = _fit()
    tracing.install()
    plain_weights, plain_loss = _fit()
    for a, b in zip(converted_weights, plain_weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(converted_loss, plain_loss, rtol=1e-5)


def test_multi_step_execution_still_loops(original_rules):
    """Keras's steps_per_execution loop is a tensor loop in the function tf.function converts."""
    tracing.install()
    one, _ = _fit(steps_per_execution=1)
    three, _ = _fit(steps_per_execution=3)
    for a, b in zip(one, three, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


class _Gate(keras.layers.Layer):
    """A user layer with tensor-dependent Python control flow: needs AutoGraph."""

    def call(self, x):
        if tf.reduce_sum(x) > 0:
            return x * 2.0
        return -x


def test_user_layers_are_still_converted(original_rules):
    tracing.install()
    inputs = keras.Input((2,))
    model = keras.Model(inputs, _Gate()(inputs))
    fn = tf.function(lambda t: model(t))
    np.testing.assert_allclose(fn(tf.constant([[1.0, 2.0]])).numpy(), [[2.0, 4.0]])
    np.testing.assert_allclose(fn(tf.constant([[-1.0, -2.0]])).numpy(), [[1.0, 2.0]])


def test_transform_analysis_and_input_function_unchanged(original_rules, tmp_path):
    """TFT traced with and without the rules: same vocabulary, same transformed images."""
    from tests import helpers
    from trainer import data

    items = helpers.digit_images(digits=(3, 7), per_class=6, size=20)
    files = helpers.write_tfrecords(str(tmp_path / "data.tfrecord"), items)

    def run(name: str):
        tfo = helpers.analyze_transform(items, str(tmp_path / name), image_size=32)
        spec = data.InputSpec(batch_size=5, num_classes=2)
        batches = list(data.make_dataset(files, tfo, spec).as_numpy_iterator())
        return (
            data.class_names(tfo),
            np.concatenate([x for x, _ in batches]),
            np.concatenate([y for _, y in batches]),
        )

    shipped = run("shipped")
    tracing.install()
    ours = run("ours")
    assert shipped[0] == ours[0] and sorted(ours[0]) == ["3", "7"]
    np.testing.assert_array_equal(shipped[1], ours[1])
    np.testing.assert_array_equal(shipped[2], ours[2])
    assert shipped[1].shape == (12, 32, 32, 3)


def test_the_projects_own_traced_functions_are_not_converted_by_autograph(tmp_path, monkeypatch):
    """The ingest check, the training input function, the export's signatures and the TFLite
    conversion's function branch on Python values only; AutoGraph's conversion of them cost
    seconds per process (BENCHMARKS.md, "AutoGraph"). Every AutoGraph conversion while they are
    traced is recorded: none may be of imgpipe's own code (TensorFlow's and Keras's own wrappers
    may still be converted)."""
    from tensorflow.python.autograph.impl import api

    from imgpipe.ingest import images
    from tests import helpers, image_samples
    from trainer import data, export, tflite

    converted = []
    convert = api._convert_actual

    def recording(entity, program_ctx):
        converted.append(f"{getattr(entity, '__module__', '?')}.{getattr(entity, '__qualname__', entity)}")
        return convert(entity, program_ctx)

    monkeypatch.setattr(api, "_convert_actual", recording)

    # A limit no other test uses: the check is traced anew here (one trace per limit).
    assert images.check_image(image_samples.png(image_samples.asymmetric_image()), max_pixels=123_457) is None
    assert "over the limit" in images.check_image(image_samples.black_png(400, 400), max_pixels=123_457)

    items = helpers.digit_images(digits=(3, 7), per_class=4, size=20)
    files = helpers.write_tfrecords(str(tmp_path / "data.tfrecord"), items)
    tfo = helpers.analyze_transform(items, str(tmp_path / "transform"), image_size=16)
    x, y = next(iter(data.make_dataset(files, tfo, data.InputSpec(batch_size=8, num_classes=2))))
    assert x.shape == (8, 16, 16, 3) and y.shape == (8, 1)

    inputs = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(pooled))
    export_dir = export.export_serving_model(model, tfo, data.class_names(tfo), str(tmp_path / "export"))
    assert set(tf.saved_model.load(export_dir).signatures) >= {"serving_default", "predict_images"}
    # The TFLite conversion's function too: converted, its backbone's preprocess_input sent
    # AutoGraph into importlib, which printed a warning into every run's output.
    lite = tflite.inference_function(model, "MobileNetV2", 16, 2).get_concrete_function()
    assert lite.structured_outputs["scores"].shape.as_list() == [1, 2]

    assert converted, "the recording hook saw no conversion at all: it no longer sees AutoGraph's work"
    ours = [
        name
        for name in converted
        if name.split(".")[0] in {"imgpipe", "trainer", "serving", "components", "importlib"}
    ]
    assert ours == []
