"""build_model: frozen backbone, head type by class count, fine-tune unfreezing."""

import numpy as np
import pytest
import tf_keras as keras

from trainer import model as model_lib


@pytest.mark.parametrize(
    "backbone,size",
    [
        ("MobileNetV2", 32),
        ("MobileNetV3Small", 32),
        ("EfficientNetB0", 32),
        ("ResNet50", 32),
        ("DenseNet121", 32),
        ("Xception", 71),
        ("InceptionV3", 75),
    ],
)
def test_backbone_frozen_and_softmax_head(backbone, size):
    m = model_lib.build_model(backbone, "none", size, num_classes=5, dropout=0.1)
    base = model_lib.backbone_of(m)
    assert not base.trainable
    assert base.trainable_weights == []
    assert len(base.non_trainable_weights) > 0
    head = model_lib.head_of(m)
    assert len(head.trainable_weights) == 2  # Dense kernel + bias only
    assert m.output_shape == (None, 5)
    assert head.layers[-1].activation is keras.activations.softmax
    # Everything trainable in the full model belongs to the head.
    assert {id(w) for w in m.trainable_weights} == {id(w) for w in head.trainable_weights}


def test_two_classes_get_a_single_sigmoid_unit():
    m = model_lib.build_model("MobileNetV2", "none", 32, num_classes=2)
    assert m.output_shape == (None, 1)
    assert model_lib.head_of(m).layers[-1].activation is keras.activations.sigmoid
    p = m.predict(np.zeros((3, 32, 32, 3), np.float32), verbose=0)
    scores = model_lib.class_scores(p, 2).numpy()
    assert scores.shape == (3, 2)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-6)


def test_one_class_is_rejected():
    with pytest.raises(ValueError, match="at least 2 classes"):
        model_lib.build_model("MobileNetV2", "none", 32, num_classes=1)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        model_lib.build_model("MobileNetV2", str(tmp_path / "nope.h5"), 32, num_classes=3)


def test_backbone_runs_in_inference_mode():
    """BatchNorm uses moving statistics: the same image gives the same features in any batch."""
    m = model_lib.build_model("MobileNetV2", "none", 32, num_classes=3, dropout=0.0)
    rng = np.random.RandomState(0)
    x = rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    alone = m(x[:1], training=True).numpy()
    batched = m(x, training=True).numpy()[:1]
    np.testing.assert_allclose(alone, batched, rtol=1e-5, atol=1e-6)


def test_unfreeze_top_keeps_batchnorm_frozen():
    m = model_lib.build_model("MobileNetV2", "none", 32, num_classes=3)
    n = model_lib.unfreeze_top(m, 20)
    assert n > 0
    base = model_lib.backbone_of(m)
    top = base.layers[-20:]
    assert any(layer.trainable and layer.weights for layer in top)
    assert all(
        not layer.trainable for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)
    )
    assert all(not layer.trainable for layer in base.layers[:-20] if layer.weights)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_folding_the_standardisation_keeps_the_answers(num_classes):
    """The head's Normalization folded into its Dense layer: the same probabilities, one layer fewer."""
    rng = np.random.RandomState(1)
    base = model_lib.build_backbone("MobileNetV2", "none", 32)
    dim = base.output_shape[-1]
    # Feature scales over orders of magnitude, some units nearly constant (the variance floor).
    mean = rng.uniform(0, 5, dim).astype(np.float32)
    variance = (10.0 ** rng.uniform(-6, 2, dim)).astype(np.float32)
    head = model_lib.build_head(dim, num_classes, dropout=0.3, feature_stats=(mean, variance))
    dense = head.layers[-1]
    dense.set_weights([rng.normal(0, 0.1, w.shape).astype(np.float32) for w in dense.get_weights()])
    m = model_lib.assemble(base, head, 32)
    folded = model_lib.fold_standardization(m)
    assert [layer.name for layer in model_lib.head_of(folded).layers] == ["features", dense.name]
    x = rng.uniform(-1, 1, (5, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(folded(x).numpy(), m(x, training=False).numpy(), rtol=1e-4, atol=1e-5)
    # Without a standardisation layer there is nothing to fold.
    plain = model_lib.build_model("MobileNetV2", "none", 32, num_classes=num_classes)
    assert model_lib.fold_standardization(plain) is plain
