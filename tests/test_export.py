"""Exported SavedModel: signatures, and parity with the in-memory model (no train/serve skew)."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from tests import helpers
from trainer import data, export
from trainer import model as model_lib

SIZE = 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory, source_backbone):
    work = str(tmp_path_factory.mktemp("export"))
    weights = source_backbone
    items = helpers.digit_images((5, 6, 7), per_class=15, size=SIZE)
    tfo = helpers.analyze_transform(items, os.path.join(work, "transform"), image_size=SIZE)
    records = helpers.write_tfrecords(os.path.join(work, "train.tfrecord"), items)
    classes = data.class_names(tfo)
    m = model_lib.build_model("MobileNetV2", weights, SIZE, len(classes), dropout=0.0)
    model_lib.compile_model(m, len(classes), 1e-2)
    m.fit(data.make_dataset(records, tfo, data.InputSpec(batch_size=16, num_classes=3)), epochs=3, verbose=0)
    export_dir = export.export_serving_model(m, tfo, classes, os.path.join(work, "export"), top_k=2)
    return m, tfo, classes, export_dir, items, weights


@pytest.fixture(scope="module")
def loaded(trained):
    """The exported model as `tf.saved_model.load` gives it (the dev server's and TFMA's load),
    loaded once for the tests that only call its signatures."""
    return tf.saved_model.load(trained[3])


def test_serving_default_equals_in_memory_model(trained, loaded):
    m, tfo, classes, export_dir, items, _ = trained
    examples = [helpers.make_example(img) for img, _ in items]
    expected = helpers.in_memory_scores(m, tfo, len(classes), examples)
    assert expected.std(axis=0).max() > 1e-3, (
        "fixture model gives constant scores: parity would prove nothing"
    )
    out = loaded.signatures[export.SERVING_DEFAULT](examples=tf.constant(examples))
    np.testing.assert_allclose(out["scores"].numpy(), expected, rtol=1e-4, atol=5e-5)
    names = out["classes"].numpy().astype(str)
    assert names.shape == (len(items), 3)
    assert all(list(row) == classes for row in names)


def test_predict_images_ranks_the_same_scores(trained, loaded):
    _, _, _, export_dir, items, _ = trained
    images = [img for img, _ in items[:8]]
    full = loaded.signatures[export.SERVING_DEFAULT](
        examples=tf.constant([helpers.make_example(i) for i in images])
    )
    top = loaded.signatures[export.PREDICT_IMAGES](images=tf.constant(images))
    assert top["classes"].shape == (8, 2)
    scores = full["scores"].numpy()
    best = full["classes"].numpy()[np.arange(8), scores.argmax(axis=1)]
    np.testing.assert_array_equal(top["classes"].numpy()[:, 0], best)
    np.testing.assert_allclose(top["scores"].numpy()[:, 0], scores.max(axis=1), rtol=1e-6)
    assert np.all(np.diff(top["scores"].numpy(), axis=1) <= 0)  # ranked


def test_a_tf1_session_runs_both_image_signatures_as_the_tf2_load(trained, loaded):
    """TF Serving runs a SavedModel in a TF1 session, whose runtime refuses some graphs a TF2 call
    runs (a functional op reading a lowered loop's answer: "has inputs from different frames").
    Both signatures that decode, loaded that way, answer as `tf.saved_model.load` does, for
    each image format the decoder reads."""
    _, _, _, export_dir, items, _ = trained
    rgb = np.asarray(tf.io.decode_png(items[0][0], channels=3))
    images = [img for img, _ in items[:2]] + [helpers.encode_image(rgb, f) for f in ("JPEG", "GIF", "BMP")]
    examples = [helpers.make_example(img) for img in images]
    expected = {
        export.SERVING_DEFAULT: loaded.signatures[export.SERVING_DEFAULT](examples=tf.constant(examples)),
        export.PREDICT_IMAGES: loaded.signatures[export.PREDICT_IMAGES](images=tf.constant(images)),
    }
    with helpers.tf1_session(export_dir) as run:
        for name, inputs in (
            (export.SERVING_DEFAULT, {"examples": examples}),
            (export.PREDICT_IMAGES, {"images": images}),
        ):
            scores = run(name, inputs, "scores")
            np.testing.assert_allclose(scores, expected[name]["scores"].numpy(), rtol=1e-5, atol=1e-6)


def test_classification_signature_has_classify_method(trained):
    export_dir = trained[3]
    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    sigs = sm.meta_graphs[0].signature_def
    assert sigs[export.CLASSIFY].method_name == "tensorflow/serving/classify"
    assert set(sigs[export.CLASSIFY].inputs) == {"inputs"}
    assert set(sigs[export.CLASSIFY].outputs) == {"classes", "scores"}
    assert sigs[export.SERVING_DEFAULT].method_name == "tensorflow/serving/predict"
    assert set(sigs) >= {
        export.SERVING_DEFAULT,
        export.CLASSIFY,
        export.PREDICT_IMAGES,
        export.TRANSFORM_FEATURES,
    }


def test_transform_features_signature_gives_labels(trained, loaded):
    _, _, classes, export_dir, items, _ = trained
    out = loaded.signatures[export.TRANSFORM_FEATURES](
        examples=tf.constant([helpers.make_example(img, lab) for img, lab in items[:6]])
    )
    labels = out["label_xf"].numpy().reshape(-1)
    assert [classes[i] for i in labels] == [lab for _, lab in items[:6]]
    assert out["image_xf"].shape == (6, SIZE, SIZE, 3)


def test_pretrained_weights_file_loads_into_the_backbone(trained):
    weights = trained[5]
    x = np.random.RandomState(0).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    a = model_lib.build_backbone("MobileNetV2", weights, SIZE)(x).numpy()
    b = model_lib.build_backbone("MobileNetV2", weights, SIZE)(x).numpy()
    fresh = model_lib.build_backbone("MobileNetV2", "none", SIZE)(x).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert not np.allclose(a, fresh, atol=1e-3)


def test_two_class_export_has_per_class_scores(tmp_path):
    items = helpers.digit_images((0, 1), per_class=4, size=SIZE)
    tfo = helpers.analyze_transform(items, str(tmp_path / "t"), image_size=SIZE)
    classes = data.class_names(tfo)
    m = model_lib.build_model("MobileNetV2", "none", SIZE, 2, dropout=0.0)
    export_dir = export.export_serving_model(m, tfo, classes, str(tmp_path / "e"))
    out = tf.saved_model.load(export_dir).signatures[export.SERVING_DEFAULT](
        examples=tf.constant([helpers.make_example(img) for img, _ in items])
    )
    assert out["scores"].shape == (len(items), 2)
    np.testing.assert_allclose(out["scores"].numpy().sum(axis=1), 1.0, rtol=1e-6)


def test_the_frozen_graph_passes_no_constant_through_an_identity_and_answers_the_same_bits():
    """Freezing turns each variable read into Identity(Const); the export drops those no-ops."""
    import tf_keras as keras
    from tensorflow.python.framework import convert_to_constants

    keras.utils.set_random_seed(3)
    m = model_lib.build_model("MobileNetV2", "none", SIZE, 3, dropout=0.0)
    spec = tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32)
    traced = tf.function(lambda x: m(x, training=False), input_signature=[spec], autograph=False)
    concrete = traced.get_concrete_function()
    graph_def, input_name, outputs = export._frozen_graph(concrete)
    by_name = {n.name: n for n in graph_def.node}

    def constant_reads(nodes) -> int:
        return sum(
            1
            for n in nodes
            if n.op == "Identity" and by_name.get(n.input[0].lstrip("^").split(":")[0], n).op == "Const"
        )

    assert constant_reads(graph_def.node) == 0
    # TensorFlow's own freezing keeps them: one per variable.
    reference = convert_to_constants.convert_variables_to_constants_v2(concrete)
    kept = reference.graph.as_graph_def().node
    assert len(graph_def.node) < len(kept) - len(m.variables) // 2

    frozen = tf.function(
        lambda x: tf.graph_util.import_graph_def(
            graph_def, input_map={input_name: x}, return_elements=outputs
        ),
        input_signature=[spec],
        autograph=False,
    )
    x = tf.random.stateless_uniform([4, SIZE, SIZE, 3], seed=(1, 2), minval=-1.0, maxval=1.0)
    [ours] = frozen(x)
    [expected] = tf.nest.flatten(reference(x))
    np.testing.assert_array_equal(ours.numpy(), expected.numpy())  # the same bits
