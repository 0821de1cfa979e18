"""TFLite export: each quantization converts and agrees with the SavedModel; the contract is the model's.

One small model per module: MobileNetV2 at 32 px (the session's pre-trained
backbone) with a head trained on digits 0-2, exported as the Trainer does.

Digits 0-2 are among the backbone's source classes, so the head's decisions are
clear: what these tests check is the conversion and the agreement check, and
they need a model whose top-1 answers are not near-ties. On a task the small
backbone transfers to weakly (digits 5-7 on some CPUs' numerics: scores such as
0.38/0.31/0.31), quantization flips near-tied answers and the check rightly
refuses the int8 and dynamic exports.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests import helpers
from trainer import data, export, preprocessing, tflite, train
from trainer import model as model_lib
from trainer.config import ConfigError, TrainingConfig
from trainer.task import parse_custom_config

SIZE = 32
CLASSES = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class Trained:
    model: keras.Model
    class_names: list[str]
    export_dir: str
    train_files: str
    eval_files: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory, source_backbone) -> Trained:
    work = str(tmp_path_factory.mktemp("tflite"))
    items = helpers.digit_images(CLASSES, per_class=50, size=SIZE, seed=3)
    records = helpers.write_split_dataset(os.path.join(work, "data"), items, eval_every=3)
    train_items = [it for i, it in enumerate(items) if i % 3]
    tfo = helpers.analyze_transform(train_items, os.path.join(work, "transform"), image_size=SIZE)
    params = TrainingConfig(
        weights=source_backbone,
        image_size=SIZE,
        batch_size=16,  # the Trainer's defaults otherwise
    )
    train_files, eval_files = os.path.join(records, "train"), os.path.join(records, "eval")
    result = train.train(train_files, eval_files, tfo, params, verbose=0)
    export_dir = export.export_serving_model(
        result.model, tfo, result.class_names, os.path.join(work, "export")
    )
    return Trained(result.model, result.class_names, export_dir, train_files, eval_files)


def _copy(trained: Trained, tmp_path) -> str:
    return shutil.copytree(trained.export_dir, str(tmp_path / "export"))


def _export(trained: Trained, export_dir: str, quantization: str, model: keras.Model | None = None):
    return tflite.export_tflite(
        model or trained.model,
        trained.class_names,
        "MobileNetV2",
        SIZE,
        quantization,
        export_dir,
        trained.train_files,
        trained.eval_files,
    )


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """quantization -> (export dir, TFLiteResult), each converted once per module."""
    done: dict[str, tuple[str, tflite.TFLiteResult]] = {}

    def get(quantization: str) -> tuple[str, tflite.TFLiteResult]:
        if quantization not in done:
            export_dir = _copy(trained, tmp_path_factory.mktemp(quantization))
            done[quantization] = export_dir, _export(trained, export_dir, quantization)
        return done[quantization]

    return get


def _tensor_types(path: str) -> set[str]:
    interpreter = tf.lite.Interpreter(model_path=path)
    return {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}


@pytest.mark.parametrize("quantization", tflite.QUANTIZATIONS)
def test_each_variant_converts_and_agrees_with_the_saved_model(trained, exported, quantization):
    export_dir, result = exported(quantization)
    result.check()  # does not raise
    assert result.passed and result.agreement >= tflite.MIN_AGREEMENT[quantization]
    assert result.examples == data.count_examples(trained.eval_files)
    assert result.path == os.path.join(export_dir, "assets.extra", "model.tflite")
    assert os.path.getsize(result.path) == result.size_bytes
    assert result.representative_images == (
        min(tflite.REPRESENTATIVE_IMAGES, data.count_examples(trained.train_files))
        if quantization == "int8"
        else 0
    )
    # The quantization really applied: what the flatbuffer stores.
    types = _tensor_types(result.path)
    expected = {"float16": "float16", "dynamic": "int8", "int8": "int8"}[quantization]
    assert expected in types, types
    if quantization == "int8":
        assert "float16" not in types
    # The SavedModel beside it still loads and serves (assets.extra is not read).
    served = tf.saved_model.load(export_dir).signatures[export.PREDICT_IMAGES]
    assert (
        served(images=tf.constant([helpers.digit_images(CLASSES[:1], 1, SIZE)[0][0]]))["scores"].shape[0] == 1
    )


def test_the_contract_is_what_the_converter_produced(trained, exported):
    export_dir, result = exported("dynamic")
    with open(result.contract_path, encoding="utf-8") as f:
        contract = json.load(f)
    interpreter = tf.lite.Interpreter(model_path=result.path)
    [inp], [out] = interpreter.get_input_details(), interpreter.get_output_details()
    assert contract["file"] == "model.tflite" and contract["quantization"] == "dynamic"
    assert contract["input"]["name"] == inp["name"] and contract["output"]["name"] == out["name"]
    assert contract["input"]["shape"] == [1, SIZE, SIZE, 3] == list(inp["shape"])
    assert contract["input"]["dtype"] == np.dtype(inp["dtype"]).name == "float32"
    assert contract["output"]["shape"] == [1, len(trained.class_names)] == list(out["shape"])
    # The class names are the SavedModel's, in output order.
    example = helpers.make_example(helpers.digit_images(CLASSES[1:2], 1, SIZE)[0][0])
    saved = tf.saved_model.load(export_dir).signatures[export.SERVING_DEFAULT](
        examples=tf.constant([example])
    )
    assert contract["class_names"] == [c.decode() for c in saved["classes"].numpy()[0]]
    # Following the contract alone (decode, resize as stated, feed [0, 255] RGB) gives what the
    # agreement check fed (the Transform graph's own decode and resize), and the SavedModel's classes.
    images = [img for img, _ in helpers.digit_images(CLASSES, per_class=4, size=SIZE, seed=9)]
    resize = contract["input"]["resize"]
    fed = [
        tf.image.resize(
            tf.cast(tf.io.decode_image(img, channels=3, expand_animations=False), tf.float32),
            resize["size"],
            method=resize["method"],
            antialias=resize["antialias"],
        ).numpy()
        for img in images
    ]
    np.testing.assert_array_equal(np.stack(fed), preprocessing.decode_and_resize(tf.constant(images), SIZE))
    lite = tflite.tflite_scores(pathlib.Path(result.path).read_bytes(), np.stack(fed))
    serve = tf.saved_model.load(export_dir).signatures[export.SERVING_DEFAULT]
    full = serve(examples=tf.constant([helpers.make_example(i) for i in images]))["scores"].numpy()
    assert tflite.top1_agreement(lite, full) == 1.0


def test_a_disagreeing_tflite_model_fails_the_check_with_a_clear_message(trained, tmp_path):
    """A model whose head always favours one class, converted against the real SavedModel."""
    other = keras.models.clone_model(trained.model)
    other.set_weights(trained.model.get_weights())
    dense = model_lib.head_of(other).layers[-1]
    kernel, bias = dense.get_weights()
    bias[0] += 1e3
    dense.set_weights([kernel, bias])
    result = _export(trained, _copy(trained, tmp_path), "float16", model=other)
    assert not result.passed and result.agreement < 0.6
    with pytest.raises(tflite.TFLiteAgreementError) as e:
        result.check()
    message = str(e.value)
    assert "TFLite export (float16): top-1 agreement with the SavedModel is " in message
    assert f"on {result.examples} eval examples, below the required 0.98" in message


def test_export_tflite_is_a_checked_training_setting():
    assert TrainingConfig().export_tflite is None
    assert TrainingConfig(export_tflite="int8").export_tflite == "int8"
    assert TrainingConfig(export_tflite="none").export_tflite is None
    with pytest.raises(ConfigError, match="export_tflite"):
        parse_custom_config({"export_tflite": "int4"})
    assert tflite.export_for_config(TrainingConfig(), None, [], "/nowhere", "", "") is None
