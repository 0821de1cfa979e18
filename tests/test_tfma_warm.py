"""components/tfma_warm.py: TFMA's own loader loads each model once, in the warming thread,
and TFMA's later load gets that object, its serving signature already called."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_model_analysis as tfma

from components import tfma_warm
from tests import helpers


class _Counted(tf.Module):
    def __init__(self):
        super().__init__()
        self.calls = tf.Variable(0, dtype=tf.int64)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples):
        self.calls.assign_add(tf.size(examples, out_type=tf.int64))
        return {"scores": tf.ones([tf.size(examples), 2])}


def _saved(path: str) -> str:
    module = _Counted()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


class _Described:
    """What tfma.default_eval_shared_model returns, as far as warming reads it."""

    def __init__(self, name: str, loader):
        self.model_name = name
        self.model_loader = loader


def test_each_model_is_loaded_once_and_called_once_before_tfma_loads_it(tmp_path, monkeypatch):
    paths = {name: _saved(str(tmp_path / name)) for name in ("candidate", "baseline")}
    constructed = []

    def loader(path):
        def construct():
            constructed.append(path)
            return tf.saved_model.load(path)

        return tfma.types.ModelLoader(construct_fn=construct)

    monkeypatch.setattr(tfma, "default_eval_shared_model", lambda name: _Described(name, loader(paths[name])))
    describe = tfma.default_eval_shared_model
    with tfma_warm.warm_models(b"one example"):
        described = [tfma.default_eval_shared_model(name) for name in paths]  # as TFX's Evaluator does
        loaded = [d.model_loader.load() for d in described]  # as TFMA's DoFns do, maybe while warming
    assert sorted(constructed) == sorted(paths.values())  # each once, by either side
    assert tfma.default_eval_shared_model is describe
    # The objects TFMA got were called once each, on the one example, by the warming threads.
    assert [int(m.calls.numpy()) for m in loaded] == [1, 1]


def test_a_model_that_fails_to_load_is_left_to_tfma(tmp_path, monkeypatch):
    def broken():
        raise OSError("no SavedModel here")

    monkeypatch.setattr(
        tfma, "default_eval_shared_model", lambda: _Described("c", tfma.types.ModelLoader(broken))
    )
    with tfma_warm.warm_models(None):
        described = tfma.default_eval_shared_model()
    # No error in the block: TFMA loads it again and reports the error itself.
    assert isinstance(described, _Described)


def test_first_example_reads_the_first_record_of_a_readable_split(tmp_path):
    from tfx.types import artifact_utils, standard_artifacts

    image = helpers.encode_image(np.zeros((4, 4, 3), np.uint8))
    helpers.write_tfrecords(str(tmp_path / "Split-eval" / "data.tfrecord"), [(image, "a"), (image, "b")])
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path)
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    first = tfma_warm.first_example(
        examples, ["missing", "train", "eval"]
    )  # no such split, no files, then eval
    assert tf.train.Example.FromString(first).features.feature["label"].bytes_list.value == [b"a"]
    assert tfma_warm.first_example(examples, ["train"]) is None
