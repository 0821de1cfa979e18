"""What a request's inputs may hold, checked before the model runs on them.

The signatures' contract (serving/signatures.py) says which inputs carry
encoded images and which carry serialized tf.Examples with an `image`
feature. Here the server:

- refuses a value of an Example input that is not a serialized tf.Example,
  with a message saying so (not a protobuf codec error from the graph);
- reads every image's size from its header and refuses the request when an
  image is above `max_pixels`, naming the image's index and size. Nothing is
  decoded, so a small file declaring a huge canvas (a "decompression bomb")
  costs the server a header read, not gigabytes.

Every refusal is INVALID_ARGUMENT.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping

import numpy as np
from google.protobuf import message
from tensorflow.core.example import example_pb2

from serving.errors import InvalidRequestError
from serving.image_header import read_header
from serving.signatures import EXAMPLE_INPUTS, IMAGE_FEATURE, IMAGE_INPUTS


def parse_example(value: bytes, where: str, signature: str) -> example_pb2.Example:
    """A serialized tf.Example, or INVALID_ARGUMENT saying the input must be one.

    Protobuf parses some foreign bytes (a PNG, plain text) as an Example made
    only of unknown fields; those are refused too.
    """
    try:
        with warnings.catch_warnings():  # protobuf warns on some foreign bytes; refused below
            warnings.simplefilter("ignore", RuntimeWarning)
            example = example_pb2.Example.FromString(value)
    except message.DecodeError:
        example = None
    if example is None or (not example.HasField("features") and len(example.UnknownFields())):
        hint = ""
        if read_header(value) is not None:
            hint = " (these bytes are an encoded image: wrap it in a tf.Example, or use predict_images)"
        raise InvalidRequestError(
            f"{where} is not a serialized tf.Example ({len(value)} bytes){hint}: the input of "
            f"signature {signature!r} must be serialized tf.Example protos with the image bytes "
            f"in feature {IMAGE_FEATURE!r}"
        )
    return example


def request_images(signature: str, arrays: Mapping[str, np.ndarray]) -> Iterator[tuple[str, bytes]]:
    """(description, encoded bytes) of every image in a request's inputs, checking Examples.

    The description names the image by its index in the batch (and, for an
    Example input, the feature), for error messages.
    """
    alias = IMAGE_INPUTS.get(signature)
    if alias in arrays:
        for i, value in enumerate(arrays[alias].reshape(-1)):
            if isinstance(value, bytes):
                yield f"image {i} (input {alias!r})", value
    alias = EXAMPLE_INPUTS.get(signature)
    if alias in arrays:
        for i, value in enumerate(arrays[alias].reshape(-1)):
            if not isinstance(value, bytes):
                continue
            example = parse_example(value, f"{alias}[{i}]", signature)
            feature = example.features.feature.get(IMAGE_FEATURE)
            if feature is None:
                continue  # the graph names the missing feature
            for j, image in enumerate(feature.bytes_list.value):
                suffix = f"[{j}]" if len(feature.bytes_list.value) > 1 else ""
                yield f"image {i} ({alias}[{i}] feature {IMAGE_FEATURE!r}{suffix})", image


def check_inputs(signature: str, arrays: Mapping[str, np.ndarray], max_pixels: int) -> None:
    """INVALID_ARGUMENT for a non-Example value of an Example input or an image above max_pixels.

    `max_pixels` 0 turns the size limit off (the Example check still runs).
    Images whose header cannot be read are left to the model's decoder, which
    refuses them with its own message.
    """
    too_big = []
    for where, image in request_images(signature, arrays):
        if not max_pixels:
            continue
        header = read_header(image)
        if header is not None and header.pixels > max_pixels:
            too_big.append(f"{where} is {header.describe()}")
    if too_big:
        shown = "; ".join(too_big[:5]) + (f"; and {len(too_big) - 5} more" if len(too_big) > 5 else "")
        raise InvalidRequestError(
            f"image too large for signature {signature!r}: {shown}. This server accepts at most "
            f"{max_pixels / 1e6:g} MP ({max_pixels} pixels) per image (imgpipe serve --max-pixels); "
            f"downscale the image before sending it"
        )
