"""trainer.shape_inference: models built without the scratch-graph trace are the models Keras builds."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tf_keras.src.engine import base_layer

from trainer import model as model_lib
from trainer import shape_inference

L = keras.layers


def _every_exact_layer() -> keras.Model:
    """A functional model that uses each class of `_exact_layers()` once or more, named explicitly
    (so two builds have the same config) and float32 throughout."""
    images = keras.Input((12, 12, 3), name="in")
    x = L.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(images)
    x = L.ZeroPadding2D(((0, 1), (0, 1)), name="pad")(x)
    x = L.Conv2D(8, 3, strides=2, name="conv")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(6.0, name="relu")(x)
    a = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    b = L.SeparableConv2D(8, 3, padding="same", name="sep")(x)
    x = L.Add(name="add")([a, b])
    gate = L.Activation("sigmoid", name="sigmoid")(L.Conv2D(8, 1, name="squeeze")(x))
    x = L.Multiply(name="mul")([x, gate])
    x = L.Concatenate(name="concat")([x, L.AveragePooling2D(1, name="avg")(x)])
    x = L.MaxPooling2D(2, name="max")(x)
    x = L.Reshape((1, 9, 16), name="reshape")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dropout(0.1, name="drop")(x)
    return keras.Model(images, L.Dense(3, activation="softmax", name="dense")(x), name="every")


def _scratch_traces(monkeypatch) -> list[str]:
    """The names of the layers Keras infers an output for by tracing them in a scratch graph."""
    traced: list[str] = []
    original = base_layer.Layer._infer_output_signature

    def counting(self, *args, **kwargs):
        traced.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(base_layer.Layer, "_infer_output_signature", counting)
    return traced


def _same_models(a: keras.Model, b: keras.Model, x: np.ndarray) -> None:
    def unnumbered(text: str) -> str:  # without Keras's counters of automatic names
        return re.sub(r"_\d+(?=[/:\"])", "", text)

    def config(m: keras.Model) -> str:
        return unnumbered(json.dumps(m.get_config(), sort_keys=True, default=str))

    assert config(a) == config(b)
    assert [layer.output_shape for layer in a.layers] == [layer.output_shape for layer in b.layers]
    assert [layer.output.dtype for layer in a.layers] == [layer.output.dtype for layer in b.layers]
    assert [unnumbered(w.name) for w in a.weights] == [unnumbered(w.name) for w in b.weights]
    assert [w.shape for w in a.weights] == [w.shape for w in b.weights]
    assert [w.trainable for w in a.weights] == [w.trainable for w in b.weights]
    b.set_weights(a.get_weights())
    np.testing.assert_array_equal(a(x, training=False).numpy(), b(x, training=False).numpy())


def test_every_exact_layer_is_built_without_a_scratch_trace_and_gives_the_same_model(monkeypatch):
    traced = _scratch_traces(monkeypatch)
    with shape_inference.static_shapes() as ok:
        assert ok and shape_inference.active()
        fast = _every_exact_layer()
    assert not shape_inference.active()
    assert traced == []
    keras_built = _every_exact_layer()
    assert len(traced) == len(keras_built.layers) - 1  # every layer but the Input
    x = np.random.default_rng(0).uniform(0, 255, (4, 12, 12, 3)).astype("float32")
    _same_models(keras_built, fast, x)


def test_a_backbone_and_its_classifier_are_the_models_keras_builds(monkeypatch):
    with shape_inference.keras_own():
        keras_built = model_lib.build_model("MobileNetV2", "none", 32, num_classes=3, dropout=0.1)
    traced = _scratch_traces(monkeypatch)
    fast = model_lib.build_model("MobileNetV2", "none", 32, num_classes=3, dropout=0.1)
    # Nothing: neither the backbone's layers, nor the backbone again under its new input, nor the head.
    assert traced == []
    x = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    _same_models(keras_built, fast, x)
    _same_models(model_lib.backbone_of(keras_built), model_lib.backbone_of(fast), x)
    # The folded copy for TFLite reuses the backbone under a new input too.
    np.testing.assert_allclose(
        model_lib.fold_standardization(fast)(x).numpy(), fast(x).numpy(), rtol=1e-5, atol=1e-6
    )


def test_calls_it_cannot_answer_are_left_to_keras(monkeypatch):
    inner_in = keras.Input((8, 8, 3), name="inner_in")
    inner = keras.Model(inner_in, L.Conv2D(2, 3, name="c")(inner_in), name="inner")
    traced = _scratch_traces(monkeypatch)
    with shape_inference.static_shapes():
        # Its own input's spec: known. Another spec (no fixed size): traced.
        inner(keras.Input((8, 8, 3)))
        assert traced == []
        inner(keras.Input((None, None, 3)))
        assert traced == ["inner"]
        # A functional model whose class changes `call`: traced.
        scaled_in = keras.Input((8, 8, 3))

        class Scaled(keras.Model):
            def call(self, inputs, training=None):
                return super().call(inputs, training=training) * 2.0

        Scaled(scaled_in, L.Conv2D(2, 3, name="c2")(scaled_in), name="scaled")(keras.Input((8, 8, 3)))
        assert traced == ["inner", "scaled"]
        del traced[1:]
        # A built layer called again, a subclass of an exact layer, a non-float32 input: traced.
        conv = L.Conv2D(2, 3, name="again")
        conv(keras.Input((8, 8, 3)))
        conv(keras.Input((8, 8, 3)))

        class Doubled(L.Dense):
            def call(self, inputs):
                return super().call(inputs) * 2.0

        Doubled(2, name="sub")(keras.Input((4,)))
        L.Dense(2, name="f64", dtype="float64")(keras.Input((4,), dtype="float64"))
        assert traced == ["inner", "again", "sub", "f64"]
        # Errors are Keras's own. A kernel larger than its input: refused by the layer's build.
        with pytest.raises(ValueError) as fast_error:
            L.Conv2D(2, 5, name="too_big")(keras.Input((3, 3, 1)))
        # A Reshape to another total size: its shape rule fails, so Keras's inference runs.
        with pytest.raises(ValueError) as fast_reshape:
            L.Reshape((2, 2), name="bad_reshape")(keras.Input((3, 3)))
    assert traced == ["inner", "again", "sub", "f64", "bad_reshape"]
    with pytest.raises(ValueError) as keras_error:
        L.Conv2D(2, 5, name="too_big")(keras.Input((3, 3, 1)))
    with pytest.raises(ValueError) as keras_reshape:
        L.Reshape((2, 2), name="bad_reshape")(keras.Input((3, 3)))
    assert "dimensions in the output is <= 0" in str(fast_error.value)
    assert str(fast_error.value).split("\n")[0] == str(keras_error.value).split("\n")[0]
    assert "total size of new array must be unchanged" in str(fast_reshape.value)
    assert str(fast_reshape.value) == str(keras_reshape.value)


def test_other_threads_build_with_keras_own_inference(monkeypatch):
    traced = _scratch_traces(monkeypatch)
    elsewhere: list[int] = []

    def build():
        before = len(traced)
        L.Dense(2, name="other_thread")(keras.Input((4,)))
        elsewhere.append(len(traced) - before)

    with shape_inference.static_shapes():
        thread = threading.Thread(target=build)
        thread.start()
        thread.join()
        L.Dense(2, name="this_thread")(keras.Input((4,)))
    assert elsewhere == [1] and traced == ["other_thread"]


def test_the_block_nests_and_keras_own_wins_inside_it():
    assert not shape_inference.active()
    with shape_inference.static_shapes():
        with shape_inference.static_shapes():
            assert shape_inference.active()
        assert shape_inference.active()
        with shape_inference.keras_own():
            assert not shape_inference.active()
        assert shape_inference.active()
    assert not shape_inference.active()
    assert tf.executing_eagerly()


def test_the_environment_variable_turns_it_off_and_names_a_bad_value(monkeypatch):
    traced = _scratch_traces(monkeypatch)
    monkeypatch.setenv(shape_inference.ENV_VAR, "0")
    with shape_inference.static_shapes() as ok:
        assert not ok and not shape_inference.active()
        L.Dense(2, name="off")(keras.Input((4,)))
    assert traced == ["off"]
    monkeypatch.setenv(shape_inference.ENV_VAR, "yes")
    with pytest.raises(ValueError, match=r"IMGPIPE_STATIC_SHAPES='yes': use 1 .* or 0"):
        with shape_inference.static_shapes():
            pass
    assert not shape_inference.active()
