"""Translation between TF Serving's request/response protos and numpy arrays.

Requests carry TensorProtos (Predict) or tf.Examples (Classify); signatures
take arrays. Every check here answers a client mistake with INVALID_ARGUMENT
naming the input, and a model output of the wrong shape with INTERNAL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2

from serving.errors import InvalidRequestError, ServingError


def tensor_to_array(alias: str, proto: Any, spec: tf.TensorSpec, signature: str) -> np.ndarray:
    """A request TensorProto -> numpy, checked against the signature's TensorSpec.

    Checks dtype, shape compatibility and, for a batch dimension, that the
    batch is not empty.
    """
    expected = spec.dtype.as_datatype_enum
    if proto.dtype != expected:
        raise InvalidRequestError(
            f"input {alias!r} has dtype {_dtype_name(proto.dtype)} but signature {signature!r} "
            f"expects {spec.dtype.name}"
        )
    _check_values_fill_the_shape(alias, proto, spec.dtype)
    try:
        array = tf.make_ndarray(proto)
    except (ValueError, TypeError) as e:
        raise InvalidRequestError(f"tensor parsing error: {alias}: {e}") from e
    if not spec.shape.is_compatible_with(array.shape):
        raise InvalidRequestError(
            f"input {alias!r} has shape {list(array.shape)} but signature {signature!r} expects {spec.shape}"
        )
    if array.ndim >= 1 and spec.shape.rank and spec.shape[0] is None and array.shape[0] == 0:
        raise InvalidRequestError(f"input {alias!r} is an empty batch: send at least one element")
    return array


def array_to_proto(array: np.ndarray) -> Any:
    """A response array as TF Serving writes it: each value in the TensorProto's repeated field
    for its dtype (`float_val`, `string_val`, ...), not packed into `tensor_content`.

    TF Serving's Predict serialises outputs with `Tensor::AsProtoField` unless started with
    another option (server_core.h's `predict_response_tensor_serialization_option`, not a flag
    of the shipped deploy files), so a client that reads `outputs["scores"].float_val` gets the
    scores; `tf.make_tensor_proto` packs numbers into `tensor_content`, where such a client
    finds nothing. `tf.make_ndarray` reads either form.
    """
    from tensorflow.core.framework import tensor_pb2

    array = np.asarray(array)
    strings = array.dtype.kind in "OS"
    field = "string_val" if strings else _NUMBER_FIELDS.get(f"{array.dtype.kind}{array.dtype.itemsize}")
    if field is None:  # a dtype no imgpipe signature returns (complex, 32/64-bit unsigned)
        return tf.make_tensor_proto(array)
    dtype = tf.string if strings else tf.dtypes.as_dtype(array.dtype)
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    values = array.ravel()
    if field == "half_val":
        values = values.view(np.uint16)  # TensorFlow keeps a half's 16 bits in an int32 field
    getattr(proto, field).extend(values.tolist())
    return proto


# numpy kind and bytes -> the TensorProto field TensorFlow's AsProtoField writes the values to.
_NUMBER_FIELDS = {
    "f4": "float_val",
    "f8": "double_val",
    "f2": "half_val",
    "i1": "int_val",
    "i2": "int_val",
    "i4": "int_val",
    "u1": "int_val",
    "u2": "int_val",
    "i8": "int64_val",
    "b1": "bool_val",
}


# The repeated value fields of a TensorProto (one entry per element for the dtypes served here).
_VALUE_FIELDS = ("string_val", "float_val", "double_val", "int_val", "int64_val", "bool_val", "half_val")


def _dtype_name(enum: int) -> str:
    if not enum:
        return "DT_INVALID"
    try:
        return tf.dtypes.as_dtype(enum).name
    except TypeError:
        return f"unknown ({enum})"


def _check_values_fill_the_shape(alias: str, proto: Any, dtype: tf.DType) -> None:
    """InvalidRequestError unless the proto's shape is known, non-negative and holds exactly as many
    values as it declares: numpy would otherwise repeat the last value to fill any declared shape,
    and a few bytes could ask the model for millions of examples."""
    if proto.tensor_shape.unknown_rank:
        raise InvalidRequestError(f"input {alias!r} has an unknown rank: give its shape")
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise InvalidRequestError(f"input {alias!r} has a negative dimension in its shape {dims}")
    declared = 1
    for d in dims:
        declared *= d
    if proto.tensor_content:
        given = len(proto.tensor_content) // max(dtype.size, 1)
    else:
        given = sum(len(getattr(proto, field)) for field in _VALUE_FIELDS)
    if given != declared:
        raise InvalidRequestError(
            f"input {alias!r} declares shape {dims} ({declared} values) but holds {given} values"
        )


def check_input_names(inputs: Mapping[str, Any], specs: Mapping[str, Any], signature: str) -> None:
    """The request's input aliases must be exactly the signature's, in TF Serving's messages: a
    count that differs first, then the first alias the signature does not have."""
    if set(inputs) == set(specs):
        return
    sent, wanted = sorted(inputs), sorted(specs)
    if len(sent) == len(wanted):
        unknown = next(alias for alias in inputs if alias not in specs)
        raise InvalidRequestError(
            f"input tensor alias not found in signature: {unknown}. Inputs expected to be in the set "
            f"{{{','.join(wanted)}}}."
        )
    raise InvalidRequestError(
        f"input size does not match signature {signature!r}: "
        f"{len(sent)}!={len(wanted)} len({{{','.join(sent)}}}) != "
        f"len({{{','.join(wanted)}}}). "
        f"Sent extra: {{{','.join(sorted(set(sent) - set(wanted)))}}}. "
        f"Missing but required: {{{','.join(sorted(set(wanted) - set(sent)))}}}."
    )


def input_arrays(
    inputs: Mapping[str, Any], specs: Mapping[str, tf.TensorSpec], signature: str
) -> dict[str, np.ndarray]:
    """A request's inputs {alias: TensorProto or ndarray} -> {alias: ndarray}, checked.

    The aliases must be the signature's inputs; TensorProtos are checked
    against their TensorSpec, ndarrays (warm-up, internal calls) pass through.
    """
    check_input_names(inputs, specs, signature)
    arrays = {}
    for alias, value in inputs.items():
        if isinstance(value, np.ndarray):
            arrays[alias] = value
        else:
            arrays[alias] = tensor_to_array(alias, value, specs[alias], signature)
    return arrays


def serialized_examples(model_input: Any) -> list[bytes]:
    """tensorflow.serving.Input -> serialized tf.Examples (context merged into each)."""
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in model_input.example_list.examples]
    elif kind == "example_list_with_context":
        lists = model_input.example_list_with_context
        examples = []
        for e in lists.examples:
            merged = tf.train.Example()
            merged.CopyFrom(lists.context)
            for key, feature in e.features.feature.items():
                merged.features.feature[key].CopyFrom(feature)
            examples.append(merged.SerializeToString())
    else:
        raise InvalidRequestError("Input is empty.")
    if not examples:
        raise InvalidRequestError("Input is empty: the example list holds no examples.")
    return examples


def classification_result(
    classes: np.ndarray | None, scores: np.ndarray | None, batch_size: int
) -> classification_pb2.ClassificationResult:
    """[batch, N] class names and/or scores -> one Classifications row per example.

    Either may be None (a signature may have only one of them); shapes that
    do not match the batch are the model's fault: INTERNAL.
    """
    if classes is None and scores is None:
        raise ServingError("the signature returned neither classes nor scores", grpc.StatusCode.INTERNAL)
    for name, array in (("classes", classes), ("scores", scores)):
        if array is not None and (array.ndim != 2 or array.shape[0] != batch_size):
            raise ServingError(
                f"Expected {name} Tensor of shape [batch_size num_classes] with "
                f"batch_size {batch_size}, got {list(array.shape)}",
                grpc.StatusCode.INTERNAL,
            )
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise ServingError(
            f"classes shape {list(classes.shape)} != scores shape {list(scores.shape)}",
            grpc.StatusCode.INTERNAL,
        )
    result = classification_pb2.ClassificationResult()
    width = (classes if classes is not None else scores).shape[1]
    for i in range(batch_size):
        row = result.classifications.add()
        for j in range(width):
            c = row.classes.add()
            if classes is not None:
                c.label = classes[i, j].decode("utf-8", errors="replace")
            if scores is not None:
                c.score = float(scores[i, j])
    return result
