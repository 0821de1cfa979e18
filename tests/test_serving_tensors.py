"""serving/devserver/tensors.py: request protos <-> arrays, with TF Serving's checks and statuses."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import input_pb2

from serving.devserver import tensors
from serving.errors import InvalidRequestError, ServingError

STRINGS = tf.TensorSpec([None], tf.string)


def _example(**features: bytes) -> tf.train.Example:
    feats = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v])) for k, v in features.items()}
    return tf.train.Example(features=tf.train.Features(feature=feats))


def test_tensor_to_array_round_trip():
    proto = tf.make_tensor_proto([b"a", b"bc"], dtype=tf.string)
    array = tensors.tensor_to_array("images", proto, STRINGS, "predict_images")
    assert array.tolist() == [b"a", b"bc"]


def _declared(values: list[bytes], dims: list[int]):
    """A string TensorProto whose declared shape need not match its values (as a client may send)."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]
    )
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=values)


def _dtype(enum: int):
    proto = tf.make_tensor_proto([b"a"], dtype=tf.string)
    proto.dtype = enum
    return proto


@pytest.mark.parametrize(
    ("proto", "message"),
    [
        # One image declared as 20,000: numpy would repeat it 20,000 times into the model.
        (_declared([b"png"], [20000]), "declares shape [20000] (20000 values) but holds 1 values"),
        (_declared([b"png"], [10**12]), "but holds 1 values"),
        (_declared([b"png"], [-5]), "negative dimension"),
        (_declared([b"a", b"b", b"c"], [2]), "declares shape [2] (2 values) but holds 3 values"),
        (_dtype(999), "dtype unknown (999) but signature 'sig' expects string"),
    ],
)
def test_a_declared_shape_must_hold_exactly_its_values(proto, message):
    with pytest.raises(InvalidRequestError) as e:
        tensors.tensor_to_array("images", proto, STRINGS, "sig")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("proto", "message"),
    [
        (tf.make_tensor_proto([1.0], dtype=tf.float32), "dtype float32 but signature 'sig' expects string"),
        (tf.make_tensor_proto([[b"a"]], dtype=tf.string), "shape [1, 1]"),
        (tf.make_tensor_proto([], dtype=tf.string, shape=[0]), "empty batch"),
    ],
)
def test_tensor_to_array_rejects_with_invalid_argument(proto, message):
    with pytest.raises(InvalidRequestError) as e:
        tensors.tensor_to_array("images", proto, STRINGS, "sig")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(e.value) and "images" in str(e.value)


def test_input_arrays_names_extra_and_missing_inputs():
    """TF Serving's two messages: a count that differs names what is extra and missing; the
    right count with a wrong alias names that alias (before: "1!=1", which contradicts itself)."""
    specs = {"images": STRINGS}
    proto = tf.make_tensor_proto([b"x"])
    with pytest.raises(InvalidRequestError) as e:
        tensors.input_arrays({"image": proto}, specs, "predict_images")
    assert str(e.value) == (
        "input tensor alias not found in signature: image. Inputs expected to be in the set {images}."
    )
    with pytest.raises(
        InvalidRequestError, match=r"2!=1 .*Sent extra: \{image\}. Missing but required: \{\}"
    ):
        tensors.input_arrays({"image": proto, "images": proto}, specs, "predict_images")
    arrays = tensors.input_arrays({"images": np.array([b"x"], dtype=object)}, specs, "predict_images")
    assert arrays["images"].tolist() == [b"x"]  # ndarrays (internal calls) pass through


def test_serialized_examples_merges_context_into_each_example():
    model_input = input_pb2.Input()
    lists = model_input.example_list_with_context
    lists.context.CopyFrom(_example(image=b"ctx", label=b"c"))
    lists.examples.add().CopyFrom(_example(label=b"own"))
    lists.examples.add()
    out = [tf.train.Example.FromString(s) for s in tensors.serialized_examples(model_input)]
    assert [e.features.feature["image"].bytes_list.value[0] for e in out] == [b"ctx", b"ctx"]
    assert [e.features.feature["label"].bytes_list.value[0] for e in out] == [b"own", b"c"]


def test_serialized_examples_plain_list_and_empty_inputs():
    model_input = input_pb2.Input()
    model_input.example_list.examples.add().CopyFrom(_example(image=b"a"))
    assert tensors.serialized_examples(model_input) == [_example(image=b"a").SerializeToString()]
    with pytest.raises(InvalidRequestError, match="Input is empty"):
        tensors.serialized_examples(input_pb2.Input())
    empty = input_pb2.Input()
    empty.example_list.SetInParent()
    with pytest.raises(InvalidRequestError, match="no examples"):
        tensors.serialized_examples(empty)


def test_classification_result_rows():
    classes = np.array([[b"7", b"1"], [b"1", b"7"]], dtype=object)
    scores = np.array([[0.9, 0.1], [0.6, 0.4]], dtype=np.float32)
    result = tensors.classification_result(classes, scores, 2)
    rows = [[(c.label, round(c.score, 3)) for c in r.classes] for r in result.classifications]
    assert rows == [[("7", 0.9), ("1", 0.1)], [("1", 0.6), ("7", 0.4)]]
    only_scores = tensors.classification_result(None, scores, 2)
    assert [c.label for c in only_scores.classifications[0].classes] == ["", ""]


def test_classification_result_wrong_shapes_are_internal():
    scores = np.zeros((2, 3), np.float32)
    with pytest.raises(ServingError, match="batch_size 3") as e:
        tensors.classification_result(None, scores, 3)
    assert e.value.code == grpc.StatusCode.INTERNAL
    with pytest.raises(ServingError, match="classes shape"):
        tensors.classification_result(np.zeros((2, 2), object), scores, 2)


@pytest.mark.parametrize(
    ("array", "field"),
    [
        (np.array([[0.25, 0.75], [1.0, 0.0]], np.float32), "float_val"),
        (np.array([[b"cat", b"dog"], [b"dog", b"cat"]], object), "string_val"),
        (np.array([b"\xff\x00", b""], "S2"), "string_val"),
        (np.array([3, -1], np.int64), "int64_val"),
        (np.array([3, -1], np.int32), "int_val"),
        (np.array([0.5, 2.0], np.float64), "double_val"),
        (np.array([0.5, -2.0], np.float16), "half_val"),
        (np.array([True, False]), "bool_val"),
        (np.zeros([0, 3], np.float32), "float_val"),
    ],
)
def test_response_arrays_are_written_as_tf_serving_writes_them(array, field):
    """TF Serving's Predict writes each value in its dtype's repeated field (AsProtoField), and a
    client reading `outputs["scores"].float_val` must find the scores there, not in tensor_content."""
    proto = tensors.array_to_proto(array)
    assert proto.tensor_content == b""
    assert [d.size for d in proto.tensor_shape.dim] == list(array.shape)
    assert len(getattr(proto, field)) == array.size
    back = tf.make_ndarray(proto)
    assert back.shape == array.shape
    if array.dtype.kind in "OS":
        assert back.tolist() == np.asarray(array, object).tolist()
    else:
        assert back.dtype == array.dtype
        np.testing.assert_array_equal(back, array)
