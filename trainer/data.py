"""Input functions: raw TFRecords -> Transform graph -> tf.data, plus the feature cache.

Transform does not materialise float images (a 224x224x3 float image is 600 KB;
its JPEG is a few KB). Instead the input function reads the raw examples and
applies the Transform graph on the fly, so what is stored stays the encoded
images and train and serve run the identical preprocessing graph.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
from typing import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from trainer.features import IMAGE_XF, LABEL_VOCAB, LABEL_XF

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE


def list_files(file_pattern: str | Sequence[str]) -> list[str]:
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files: list[str] = []
    for p in patterns:
        if tf.io.gfile.isdir(p):
            p = os.path.join(p, "*")
        files.extend(sorted(tf.io.gfile.glob(p)))
    if not files:
        raise FileNotFoundError(f"no input files match {patterns}")
    return files


def _compression(files: list[str]) -> str:
    return "GZIP" if files[0].endswith(".gz") else ""


def class_names(tf_transform_output: tft.TFTransformOutput) -> list[str]:
    """The label vocabulary, in class-index order."""
    vocab = tf_transform_output.vocabulary_by_name(LABEL_VOCAB)
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in vocab]


def raw_examples(file_pattern: str | Sequence[str]) -> tf.data.Dataset:
    files = list_files(file_pattern)
    return tf.data.TFRecordDataset(files, compression_type=_compression(files))


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """How to read one split for training or evaluation."""

    batch_size: int  # the global batch (per-replica batch x replicas)
    num_classes: int
    shuffle: bool = False
    augment: bool = False
    seed: int = 42
    shuffle_buffer: int = 1024


def augment_images(images: tf.Tensor, seed: int) -> tf.Tensor:
    """Random horizontal flip and a small random crop/zoom (up to 10%), same output size."""
    size = tf.shape(images)[1:3]
    images = tf.image.random_flip_left_right(images, seed=seed)
    scale = tf.random.uniform([], 0.9, 1.0, seed=seed)
    crop = tf.cast(tf.cast(size, tf.float32) * scale, tf.int32)
    batch = tf.shape(images)[0]
    images = tf.image.random_crop(images, tf.concat([[batch], crop, [3]], 0), seed=seed)
    return tf.image.resize(images, size)


def make_dataset(
    file_pattern: str | Sequence[str],
    tf_transform_output: tft.TFTransformOutput,
    spec: InputSpec,
) -> tf.data.Dataset:
    """(image_xf, label) batches: parse raw examples, apply the Transform graph."""
    ds = raw_examples(file_pattern)
    if spec.shuffle:
        ds = ds.shuffle(spec.shuffle_buffer, seed=spec.seed, reshuffle_each_iteration=True)
    ds = ds.batch(spec.batch_size)
    feature_spec = tf_transform_output.raw_feature_spec()
    tft_layer = tf_transform_output.transform_features_layer()

    def transform(serialized: tf.Tensor):
        raw = tf.io.parse_example(serialized, feature_spec)
        xf = tft_layer(raw)
        label = xf[LABEL_XF]
        if spec.num_classes == 2:
            label = tf.cast(tf.reshape(label, [-1, 1]), tf.float32)
        return xf[IMAGE_XF], label

    ds = ds.map(transform, num_parallel_calls=AUTOTUNE)
    if spec.augment:
        ds = ds.map(lambda x, y: (augment_images(x, spec.seed), y), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def count_examples(file_pattern: str | Sequence[str]) -> int:
    return int(raw_examples(file_pattern).reduce(np.int64(0), lambda n, _: n + 1).numpy())


# ---------------------------------------------------------------------------------------
# Frozen-feature cache


@dataclasses.dataclass
class FeatureCache:
    """Backbone features computed once, kept in memory or spilled to disk."""

    features: tf.data.Dataset  # unbatched (feature_vector, label)
    count: int
    feature_dim: int
    location: str  # "memory" or the directory of the on-disk copy

    def batches(self, batch_size: int, shuffle: bool, seed: int) -> tf.data.Dataset:
        ds = self.features
        if shuffle:
            ds = ds.shuffle(max(1, min(self.count, 65536)), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(AUTOTUNE)


def cache_decision(augment: bool, fine_tuning: bool, requested: bool) -> tuple[bool, str]:
    """Whether the frozen-feature cache is valid for this phase, and why (for the run log)."""
    if not requested:
        return False, "feature cache off by config"
    if augment:
        return False, "feature cache bypassed: augmentation changes the backbone's input every epoch"
    if fine_tuning:
        return False, "feature cache bypassed: fine-tuning changes the backbone's weights"
    return True, "feature cache on: backbone features computed once, head trained on them"


def build_feature_cache(
    strategy: tf.distribute.Strategy,
    backbone: tf.keras.Model,
    images: tf.data.Dataset,
    cache_dir: str | None = None,
    memory_limit_bytes: int = 2 << 30,
) -> FeatureCache:
    """Run the frozen backbone once over `images` ((image, label) batches), on every replica.

    Features are kept in memory while they fit `memory_limit_bytes`; past that
    (and with a `cache_dir`) every batch is appended to a TFRecord file there
    and streamed back each epoch instead.
    """
    feature_dim = int(backbone.output_shape[-1])

    @tf.function
    def forward(x, y):
        return backbone(x, training=False), y

    feats: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    held = 0
    writer: tf.io.TFRecordWriter | None = None
    path = ""
    count = 0
    for x, y in strategy.experimental_distribute_dataset(images):
        f, lab = strategy.run(forward, args=(x, y))
        f = np.concatenate([t.numpy() for t in strategy.experimental_local_results(f)])
        lab = np.concatenate([t.numpy() for t in strategy.experimental_local_results(lab)])
        count += len(f)
        if writer is None and cache_dir and held + f.nbytes > memory_limit_bytes:
            tf.io.gfile.makedirs(cache_dir)
            path = os.path.join(cache_dir, "features.tfrecord")
            log.info("feature cache over %d bytes: spilling to %s", memory_limit_bytes, path)
            writer = tf.io.TFRecordWriter(path)
            for fb, lb in zip(feats, labels):
                _write_batch(writer, fb, lb)
            feats, labels = [], []
        if writer is not None:
            _write_batch(writer, f, lab)
        else:
            feats.append(f)
            labels.append(lab)
            held += f.nbytes
    if writer is None:
        f_all = np.concatenate(feats) if feats else np.zeros((0, feature_dim), np.float32)
        y_all = np.concatenate(labels) if labels else np.zeros((0,), np.int64)
        return FeatureCache(tf.data.Dataset.from_tensor_slices((f_all, y_all)), count, feature_dim, "memory")
    writer.close()
    return FeatureCache(_read_spilled(path, feature_dim, labels_like=lab), count, feature_dim, path)


def _write_batch(writer: tf.io.TFRecordWriter, feats: np.ndarray, labels: np.ndarray) -> None:
    for f, y in zip(feats, labels):
        record = tf.io.serialize_tensor(tf.constant(f)).numpy(), tf.io.serialize_tensor(tf.constant(y)).numpy()
        ex = tf.train.Example(
            features=tf.train.Features(
                feature={
                    "f": tf.train.Feature(bytes_list=tf.train.BytesList(value=[record[0]])),
                    "y": tf.train.Feature(bytes_list=tf.train.BytesList(value=[record[1]])),
                }
            )
        )
        writer.write(ex.SerializeToString())


def _read_spilled(path: str, feature_dim: int, labels_like: np.ndarray) -> tf.data.Dataset:
    label_dtype = tf.as_dtype(labels_like.dtype)
    label_shape = labels_like.shape[1:]
    spec = {"f": tf.io.FixedLenFeature([], tf.string), "y": tf.io.FixedLenFeature([], tf.string)}

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        f = tf.ensure_shape(tf.io.parse_tensor(ex["f"], tf.float32), [feature_dim])
        y = tf.ensure_shape(tf.io.parse_tensor(ex["y"], label_dtype), label_shape)
        return f, y

    return tf.data.TFRecordDataset(path).map(parse, num_parallel_calls=AUTOTUNE)
