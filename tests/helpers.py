"""Shared test fixtures: small real images, tf.Examples, a Transform output, an exported model."""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np
from PIL import Image

from trainer.features import IMAGE_KEY, LABEL_KEY


def encode_image(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    img = Image.fromarray(array)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def digit_images(digits=(0, 1, 2), per_class: int = 20, size: int = 32, seed: int = 0):
    """Real scikit-learn digits as (encoded PNG bytes, class name) pairs, in class order."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.RandomState(seed)
    out = []
    for digit in digits:
        idx = np.flatnonzero(d.target == digit)
        for i in rng.permutation(idx)[:per_class]:
            pix = (d.images[i] * (255.0 / 16.0)).astype(np.uint8)
            img = Image.fromarray(pix).resize((size, size), Image.BILINEAR)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            out.append((buf.getvalue(), str(digit)))
    return out


def make_example(image: bytes, label: str | None = None) -> bytes:
    import tensorflow as tf

    feats = {IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
    if label is not None:
        feats[LABEL_KEY] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[label.encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def write_tfrecords(path: str, items) -> str:
    import tensorflow as tf

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as w:
        for image, label in items:
            w.write(make_example(image, label))
    return path


def raw_feature_spec(fixed_shape=(1,)):
    import tensorflow as tf

    return {
        IMAGE_KEY: tf.io.FixedLenFeature(list(fixed_shape), tf.string),
        LABEL_KEY: tf.io.FixedLenFeature(list(fixed_shape), tf.string),
    }


def analyze_transform(items, out_dir: str, backbone: str = "MobileNetV2", image_size: int = 32):
    """Run preprocessing_fn's analyzers (TFT on Beam, in-process) and write the transform output."""
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    from trainer.preprocessing import preprocessing_fn

    spec = raw_feature_spec()
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    rows = [{IMAGE_KEY: [img], LABEL_KEY: [lab.encode()]} for img, lab in items]
    cfg = {"backbone": backbone, "image_size": image_size}
    with tft_beam.Context(temp_dir=tempfile.mkdtemp(), force_tf_compat_v1=False):
        transform_fn = (rows, metadata) | tft_beam.AnalyzeDataset(
            lambda inputs: preprocessing_fn(inputs, cfg)
        )
        _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
    metadata_io.write_metadata(metadata, os.path.join(out_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    return tft.TFTransformOutput(out_dir)


def make_exported_model(
    workdir: str,
    digits=(0, 1, 2),
    per_class: int = 12,
    image_size: int = 32,
    train_epochs: int = 2,
):
    """A small real model exported with every serving signature.

    Returns (export_dir, items) where items are the (image bytes, label) used.
    """
    from trainer import data, export, model

    items = digit_images(digits, per_class=per_class, size=image_size)
    tft_dir = os.path.join(workdir, "transform")
    tfo = analyze_transform(items, tft_dir, image_size=image_size)
    tfrecord = write_tfrecords(os.path.join(workdir, "data", "train.tfrecord"), items)
    classes = data.class_names(tfo)
    m = model.build_model("MobileNetV2", "none", image_size, len(classes), dropout=0.0)
    model.compile_model(m, len(classes), 1e-2)
    if train_epochs:
        ds = data.make_dataset(tfrecord, tfo, data.InputSpec(batch_size=8, num_classes=len(classes)))
        m.fit(ds, epochs=train_epochs, verbose=0)
    export_dir = os.path.join(workdir, "export")
    export.export_serving_model(m, tfo, classes, export_dir)
    return export_dir, items
