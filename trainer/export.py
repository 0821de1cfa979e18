"""Serving signatures and SavedModel export.

The exported SavedModel is the full model: raw input -> Transform graph ->
backbone -> head, as an inference graph with the weights folded in as constants
(no variables, no Keras object graph; see frozen_scores_function). Signatures:

- `serving_default`: serialized tf.Example [batch] (`examples`) -> `scores`
  [batch, N] and `classes` [batch, N] (class names). Used by TF Serving Predict.
- `classification`: the same, with input `inputs` and method name
  `tensorflow/serving/classify`, so TF Serving's Classify RPC works.
- `predict_images`: encoded image bytes [batch] (`images`) -> top-k `classes`
  and `scores`, ranked. Users send photos, not tensors.
- `transform_features`: serialized tf.Example -> transformed features (the
  Evaluator's preprocessing function).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tensorflow.core.framework import graph_pb2
from tensorflow.python.framework import convert_to_constants

from trainer import tracing
from trainer.features import IMAGE_KEY, IMAGE_XF
from trainer.model import class_scores

SERVING_DEFAULT = "serving_default"
CLASSIFY = "classification"
PREDICT_IMAGES = "predict_images"
TRANSFORM_FEATURES = "transform_features"

CLASSIFY_METHOD = "tensorflow/serving/classify"


def _raw_image_input(images: tf.Tensor, feature_spec: dict) -> tf.Tensor:
    """Shape a [batch] bytes tensor like the parsed raw `image` feature."""
    spec = feature_spec[IMAGE_KEY]
    if isinstance(spec, tf.io.FixedLenFeature) and list(spec.shape) == [1]:
        return tf.reshape(images, [-1, 1])
    if isinstance(spec, tf.io.VarLenFeature):
        return tf.sparse.from_dense(tf.reshape(images, [-1, 1]))
    return tf.reshape(images, [-1])


def frozen_scores_function(model: keras.Model, num_classes: int) -> tf.types.experimental.ConcreteFunction:
    """The model as one function, preprocessed images [batch, S, S, 3] -> per-class scores
    [batch, N], with its weights folded in as constants.

    The SavedModel then holds the inference graph and no variables: saving ~600
    variables (DenseNet121) made TensorFlow build save and restore functions over
    every one of them, and tracking the Keras model made it serialise Keras's own
    object graph (each layer's config and traced call functions). Neither is read
    by anything that loads the model: the signatures are the model. Together they
    were most of the Trainer's time (BENCHMARKS.md, "Fixed costs").
    """
    size = model.input_shape[1:]
    spec = tf.TensorSpec([None, *size], tf.float32, name="images")
    traced = tf.function(
        lambda images: class_scores(model(images, training=False), num_classes),
        input_signature=[spec],
        autograph=False,  # a functional Keras model: no Python control flow to convert
    ).get_concrete_function()
    frozen = _frozen_graph(traced)
    if frozen is None:
        return convert_to_constants.convert_variables_to_constants_v2(traced)
    graph_def, input_name, output_names = frozen
    # One function that imports the frozen GraphDef (one copy, called by every signature).
    # TensorFlow's own convert_variables_to_constants_v2 rebuilds the function op by op in
    # Python from that GraphDef (wrap_function.prune), which took longer than the whole
    # freeze (~5 s of ~7 s for DenseNet121 here); import_graph_def does it in C++.
    return tf.function(
        lambda images: tf.graph_util.import_graph_def(
            graph_def, input_map={input_name: images}, return_elements=output_names, name="model"
        ),
        input_signature=[spec],
        autograph=False,
    ).get_concrete_function()


def _frozen_graph(traced) -> tuple[graph_pb2.GraphDef, str, list[str]] | None:
    """(GraphDef with the variables as constants, its image input's name, its outputs' names)
    of a one-input concrete function, by the first half of convert_variables_to_constants_v2;
    None where this TensorFlow lacks those internals (the caller then uses the public call)."""
    try:
        data = convert_to_constants._FunctionConverterDataInEager(
            func=traced, lower_control_flow=True, aggressive_inlining=False
        )
        graph_def, converted = convert_to_constants._replace_variables_by_constants(converter_data=data)
    except AttributeError:  # pragma: no cover - depends on TensorFlow internals
        return None
    captures = traced.graph.internal_captures
    constant = {id(captures[i]) for i in converted}
    inputs = [t.name for t in traced.inputs if id(t) not in constant]
    if len(inputs) != 1:
        raise ValueError(f"expected one image input after freezing, got {inputs}")
    outputs = [t.name for t in traced.outputs]
    kept = {name.split(":")[0] for name in (*inputs, *outputs)}
    return without_constant_reads(graph_def, kept), inputs[0], outputs


def without_constant_reads(graph_def: graph_pb2.GraphDef, kept: set[str]) -> graph_pb2.GraphDef:
    """`graph_def` without the Identity nodes that only pass a Const on (each frozen variable's
    former read), its consumers reading the Const itself; the nodes named in `kept` stay.

    Freezing turns each variable read into Identity(Const): a third of a frozen DenseNet121's
    nodes (606 of 1706). An Identity computes nothing, so the answers are the same bits; every
    load of the SavedModel imports, and every first call optimises, that many fewer nodes
    (BENCHMARKS.md, "The Evaluator with a baseline on new data").
    """
    by_name = {node.name: node for node in graph_def.node}
    spliced: dict[str, str] = {}  # Identity name -> the Const output it passes on
    for node in graph_def.node:
        if node.op != "Identity" or node.name in kept or len(node.input) != 1:
            continue
        [source] = node.input
        origin = by_name.get(source.split(":")[0])
        if not source.startswith("^") and origin is not None and origin.op == "Const":
            spliced[node.name] = source
    if not spliced:
        return graph_def
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name in spliced:
            continue
        copy = out.node.add()
        copy.CopyFrom(node)
        for i, name in enumerate(copy.input):
            control = name.startswith("^")
            target = spliced.get(name.lstrip("^").split(":")[0])
            if target is not None:
                copy.input[i] = "^" + target.split(":")[0] if control else target
    return out


class _ServingModule(tf.Module):
    """The signatures, the class names, the frozen model and the Transform layer (its tables and
    vocabulary asset); one copy of the model's graph, called by the three scoring signatures.

    The signatures are traced with autograph=False: they branch on Python values only, and
    AutoGraph's conversion of them cost the export ~0.5 s (BENCHMARKS.md).
    """

    def __init__(
        self,
        model: keras.Model,
        tf_transform_output: tft.TFTransformOutput,
        class_names: Sequence[str],
        top_k: int,
    ):
        super().__init__()
        self.tft_layer = tf_transform_output.transform_features_layer()
        self.num_classes = len(class_names)
        self.image_scores = frozen_scores_function(model, self.num_classes)
        self.class_names = tf.constant(list(class_names), dtype=tf.string)
        self.top_k = max(1, min(top_k, self.num_classes))
        self.raw_spec = tf_transform_output.raw_feature_spec()
        # A request carries the image only: other features of the training records (a file
        # name, a source id) are not the model's, and are not asked of a client.
        self.serving_spec = {IMAGE_KEY: self.raw_spec[IMAGE_KEY]}

    def _scores(self, raw_features: dict) -> tf.Tensor:
        xf = self.tft_layer(raw_features)
        [scores] = self.image_scores(xf[IMAGE_XF])
        return scores

    def _all_classes(self, scores: tf.Tensor) -> tf.Tensor:
        return tf.tile(self.class_names[tf.newaxis, :], [tf.shape(scores)[0], 1])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def serve_examples(self, examples):
        scores = self._scores(tf.io.parse_example(examples, self.serving_spec))
        return {"scores": scores, "classes": self._all_classes(scores)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")], autograph=False)
    def classify(self, inputs):
        scores = self._scores(tf.io.parse_example(inputs, self.serving_spec))
        return {"scores": scores, "classes": self._all_classes(scores)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")], autograph=False)
    def predict_images(self, images):
        scores = self._scores({IMAGE_KEY: _raw_image_input(images, self.raw_spec)})
        top = tf.math.top_k(scores, k=self.top_k)
        return {"scores": top.values, "classes": tf.gather(self.class_names, top.indices)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def transform_features(self, examples):
        return self.tft_layer(tf.io.parse_example(examples, self.raw_spec))


def export_serving_model(
    model: keras.Model,
    tf_transform_output: tft.TFTransformOutput,
    class_names: Sequence[str],
    export_dir: str,
    top_k: int = 5,
    warmup_examples: Sequence[bytes] = (),
) -> str:
    """Save the full model with its signatures to export_dir; return export_dir.

    `warmup_examples` (serialized tf.Examples) become TF Serving warmup requests
    for serving_default, classification and predict_images alike.
    """
    tracing.install()  # the signatures trace the Keras model
    module = _ServingModule(model, tf_transform_output, class_names, top_k)
    signatures = {
        SERVING_DEFAULT: module.serve_examples.get_concrete_function(),
        CLASSIFY: module.classify.get_concrete_function(),
        PREDICT_IMAGES: module.predict_images.get_concrete_function(),
        TRANSFORM_FEATURES: module.transform_features.get_concrete_function(),
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
    set_method_name(export_dir, CLASSIFY, CLASSIFY_METHOD)
    if warmup_examples:
        from serving.warmup import build_signature_warmup_logs, write_warmup_logs

        write_warmup_logs(export_dir, build_signature_warmup_logs(list(warmup_examples)))
    return export_dir


def set_method_name(export_dir: str, signature: str, method_name: str) -> None:
    """Rewrite one signature's method name in saved_model.pb.

    tf.saved_model.save marks every signature as Predict; TF Serving's Classify
    RPC only accepts signatures whose method is tensorflow/serving/classify.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(export_dir, "saved_model.pb")
    sm = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        sm.ParseFromString(f.read())
    for meta_graph in sm.meta_graphs:
        if signature not in meta_graph.signature_def:
            raise KeyError(f"signature {signature!r} not in {export_dir}")
        meta_graph.signature_def[signature].method_name = method_name
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(sm.SerializeToString())
