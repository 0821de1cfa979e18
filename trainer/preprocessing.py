"""preprocessing_fn: the one definition of image preprocessing.

Transform runs it over the data (via TFT) and exports it as a graph; the
Trainer's input function, the Evaluator (through the `transform_features`
signature) and every serving signature apply that same graph, so training and
serving cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow as tf
import tensorflow_transform as tft

from trainer import backbones
from trainer.features import IMAGE_KEY, IMAGE_XF, LABEL_KEY, LABEL_VOCAB, LABEL_XF

# How images are resized (tf.image.resize); the TFLite contract (trainer/tflite.py) states these.
RESIZE_METHOD = "bilinear"
RESIZE_ANTIALIAS = True


def _dense_1d(t: tf.Tensor | tf.SparseTensor, default: str = "") -> tf.Tensor:
    """A [batch] string tensor from a dense [batch]/[batch, 1] or sparse feature."""
    if isinstance(t, tf.SparseTensor):
        t = tf.sparse.to_dense(t, default_value=default)
    if isinstance(t, tf.RaggedTensor):
        t = t.to_tensor(default_value=default)
    return tf.reshape(t, [-1])


def decode_and_resize(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """[batch] encoded JPEG/PNG/GIF/BMP bytes -> float32 [batch, S, S, 3] in [0, 255].

    Grayscale is replicated to 3 channels, alpha is dropped, a GIF gives its
    first frame. Works on a rank-1 batch of any length (tf.map_fn per image,
    since images in a batch differ in size and format).
    """

    def one(image_bytes: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return tf.image.resize(
            tf.cast(image, tf.float32),
            [image_size, image_size],
            method=RESIZE_METHOD,
            antialias=RESIZE_ANTIALIAS,
        )

    return tf.map_fn(
        one,
        encoded,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
    )


def preprocess_images(encoded: tf.Tensor, backbone: str, image_size: int) -> tf.Tensor:
    """Decode, resize, then apply the backbone's own preprocess_input."""
    images = decode_and_resize(_dense_1d(encoded), image_size)
    return backbones.get(backbone).preprocess_input(images)


def preprocessing_fn(inputs: Mapping[str, Any], custom_config: Mapping[str, Any]) -> dict[str, Any]:
    """TFT preprocessing_fn. custom_config: {'backbone': name, 'image_size': int}."""
    backbone = custom_config["backbone"]
    image_size = int(custom_config["image_size"])
    outputs = {IMAGE_XF: preprocess_images(inputs[IMAGE_KEY], backbone, image_size)}
    if LABEL_KEY in inputs:
        labels = tf.strings.strip(_dense_1d(inputs[LABEL_KEY]))
        outputs[LABEL_XF] = tft.compute_and_apply_vocabulary(labels, vocab_filename=LABEL_VOCAB)
    return outputs
