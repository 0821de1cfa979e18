"""Input functions: raw TFRecords -> Transform graph -> tf.data, plus the feature cache.

Transform does not materialise float images (a 224x224x3 float image is 600 KB;
its JPEG is a few KB). Instead the input function reads the raw examples and
applies the Transform graph on the fly, so what is stored stays the encoded
images and train and serve run the identical preprocessing graph.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import logging
import os
import re
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from trainer.features import IMAGE_XF, LABEL_KEY, LABEL_VOCAB, LABEL_XF

if TYPE_CHECKING:  # only for annotations: importing TFT costs seconds
    import tensorflow_transform as tft

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
    # Examples whose label has no class: refused (InvalidArgument naming them) when
    # training; left out when only measuring (the eval split, where the DataGate has
    # already stopped the run unless the user allowed that anomaly).
    drop_unmapped: bool = False


UNMAPPED_LABELS = "labels not in the label vocabulary:"


class UnmappedLabelError(ValueError):
    """Examples carry labels the label vocabulary lacks; the message names them."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)
        super().__init__(
            f"{UNMAPPED_LABELS} {', '.join(repr(name) for name in self.labels)}. The vocabulary "
            "holds the class names of the train split, and cannot hold an empty name or one "
            "with a line break; `imgpipe ingest` writes only names it can hold."
        )


def refuse_unmapped_labels(indices: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """`indices` unchanged, or InvalidArgument naming each label that mapped to no class (-1).

    TFT maps a label missing from the vocabulary to -1, which Keras would train
    on as a negative loss. TFRecords not made by `imgpipe ingest` can carry
    such labels. `explain_unmapped_labels` turns the error into an
    UnmappedLabelError with the names readable.
    """
    if isinstance(labels, tf.SparseTensor):
        labels = tf.sparse.to_dense(labels, default_value="")
    flat_labels, flat_indices = tf.reshape(labels, [-1]), tf.reshape(indices, [-1])
    unmapped = tf.unique(tf.boolean_mask(flat_labels, flat_indices < 0)).y
    # NUL-separated; the op's message C-escapes them, explain_unmapped_labels decodes that.
    check = tf.debugging.Assert(
        tf.equal(tf.size(unmapped), 0),
        [UNMAPPED_LABELS, tf.strings.reduce_join(unmapped, separator="\0")],
        name="unmapped_labels",
    )
    with tf.control_dependencies([check]):
        return tf.identity(indices)


def unmapped_labels(error: BaseException) -> list[str] | None:
    """The labels named by refuse_unmapped_labels' error, or None for any other error."""
    text = getattr(error, "message", None) or str(error)
    found = re.search(re.escape(f"[{UNMAPPED_LABELS}] [") + r"(.*)\]$", text, flags=re.MULTILINE)
    if not found:
        return None
    raw = codecs.escape_decode(found.group(1).encode("utf-8"))[0]
    return [name.decode("utf-8", errors="backslashreplace") for name in raw.split(b"\0")]


@contextlib.contextmanager
def explain_unmapped_labels() -> Iterator[None]:
    """Re-raise refuse_unmapped_labels' InvalidArgumentError as UnmappedLabelError."""
    try:
        yield
    except tf.errors.InvalidArgumentError as e:
        labels = unmapped_labels(e)
        if labels is None:
            raise
        raise UnmappedLabelError(labels) from e


def augment_images(images: tf.Tensor, seed: int) -> tf.Tensor:
    """Random horizontal flip and a small random crop/zoom (up to 10%), same output size."""
    size = tf.shape(images)[1:3]
    images = tf.image.random_flip_left_right(images, seed=seed)
    scale = tf.random.uniform([], 0.9, 1.0, seed=seed)
    crop = tf.cast(tf.cast(size, tf.float32) * scale, tf.int32)
    batch = tf.shape(images)[0]
    images = tf.image.random_crop(images, tf.concat([[batch], crop, [3]], 0), seed=seed)
    return tf.image.resize(images, size)


def select_examples(ds: tf.data.Dataset, keep: np.ndarray | None, chunk: int = 1024) -> tf.data.Dataset:
    """The elements of unbatched `ds` where the boolean mask `keep` is true, in order.

    The mask covers the whole dataset in its order; a dataset longer than the mask fails
    with an out-of-range error rather than passing the extra elements. Selection runs on
    chunks of `chunk` elements (vectorised), not element by element.
    """
    if keep is None:
        return ds
    mask = tf.constant(np.asarray(keep, dtype=bool))

    def pick(i, element):
        wanted = tf.gather(mask, i)
        return tf.nest.map_structure(lambda t: tf.boolean_mask(t, wanted), element)

    return ds.enumerate().batch(chunk).map(pick, num_parallel_calls=AUTOTUNE).unbatch()


def make_dataset(
    file_pattern: str | Sequence[str],
    tf_transform_output: tft.TFTransformOutput,
    spec: InputSpec,
    select: np.ndarray | None = None,
) -> tf.data.Dataset:
    """(image_xf, label) batches: parse raw examples, apply the Transform graph.

    `select`: a boolean mask over the records in file order (list_files sorts the files);
    only the records where it is true are read (e.g. a validation slice, or the rest).
    """
    ds = select_examples(raw_examples(file_pattern), select)
    if spec.shuffle:
        ds = ds.shuffle(spec.shuffle_buffer, seed=spec.seed, reshuffle_each_iteration=True)
    ds = ds.batch(spec.batch_size)
    feature_spec = tf_transform_output.raw_feature_spec()
    tft_layer = tf_transform_output.transform_features_layer()
    vocabulary = tf.constant([n.encode("utf-8") for n in class_names(tf_transform_output)], tf.string)

    def transform(serialized: tf.Tensor):
        raw = tf.io.parse_example(serialized, feature_spec)
        if spec.drop_unmapped:
            # Left out before the image graph runs (nothing decoded for them); labels are
            # compared byte for byte, as the vocabulary lookup does.
            labels = raw[LABEL_KEY]
            if isinstance(labels, tf.SparseTensor):
                labels = tf.sparse.to_dense(labels, default_value="")
            labels = tf.reshape(labels, [-1, 1])
            known = tf.reduce_any(tf.equal(labels, vocabulary[tf.newaxis, :]), axis=1)
            raw = tf.io.parse_example(tf.boolean_mask(serialized, known), feature_spec)
        xf = tft_layer(raw)
        label = refuse_unmapped_labels(xf[LABEL_XF], raw[LABEL_KEY])
        if spec.num_classes == 2:
            label = tf.cast(tf.reshape(label, [-1, 1]), tf.float32)
        return xf[IMAGE_XF], label

    # do_not_convert: its branches are on Python values only, and AutoGraph's conversion of
    # it (and of the label check it calls) took ~1.2 s of each process's first dataset.
    ds = ds.map(tf.autograph.experimental.do_not_convert(transform), num_parallel_calls=AUTOTUNE)
    if spec.augment:
        ds = ds.map(lambda x, y: (augment_images(x, spec.seed), y), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def for_replicas(ds: tf.data.Dataset, strategy: tf.distribute.Strategy) -> tf.data.Dataset:
    """`ds` as a strategy with several replicas in this process should read it: without
    tf.data's default graph rewrites.

    Such a strategy reads a dataset through a multi-device iterator, which instantiates the
    dataset once per device, and with the default rewrites each instance re-optimises the
    whole dataset graph, the Transform graph's functions included: 1.9-3.0 s per iterator for
    MobileNetV2's 32 px input over 2 CPU devices, against 0.3-0.5 s without them. Keras makes
    one per epoch, one more per fit and two per evaluate, so a 3-epoch fit and its accuracy
    spent 14-20 s there (BENCHMARKS.md, "The multi-device iterator"). The rewrites do
    nothing this input needs: its maps are already parallel and it ends with a prefetch.
    One replica (the default strategy) keeps them: its plain iterator costs 0.2-0.3 s with them.
    """
    if strategy.num_replicas_in_sync <= 1:
        return ds
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    return ds.with_options(options)


def count_examples(file_pattern: str | Sequence[str]) -> int:
    return int(raw_examples(file_pattern).reduce(np.int64(0), lambda n, _: n + 1).numpy())


class UnlabelledExamplesError(ValueError):
    """Records of a split carry no single label value; the message says how many and what to do."""

    def __init__(self, split: str, count: int, total: int):
        self.split, self.count = split, count
        super().__init__(
            f"{count} of {total} {split} examples have no {LABEL_KEY!r} value (or more than one): "
            "an unlabelled example can be neither trained on nor judged, --allow-anomalies or not. "
            f"Take them out of the {split} split; images to score without labels go to --score-data."
        )


def unmapped_label_counts(
    file_pattern: str | Sequence[str],
    tf_transform_output: tft.TFTransformOutput,
    batch_size: int = 1024,
    split: str = "eval",
) -> dict[str, int]:
    """Label -> number of records whose label the Transform's vocabulary lacks (no image decoded).

    Raises UnlabelledExamplesError when records of ``split`` have no label at all.
    """
    index = set(class_names(tf_transform_output))
    counts: dict[str, int] = {}
    labels = list(_raw_labels(file_pattern, batch_size))
    _refuse_unlabelled(labels, split)
    for name in labels:
        if name not in index:
            counts[name] = counts.get(name, 0) + 1
    return counts


def check_labelled(file_pattern: str | Sequence[str], split: str, batch_size: int = 1024) -> None:
    """UnlabelledExamplesError unless every record of ``split`` has one label (no image decoded)."""
    _refuse_unlabelled(list(_raw_labels(file_pattern, batch_size)), split)


def _refuse_unlabelled(labels: Sequence[str | None], split: str) -> None:
    missing = sum(1 for name in labels if name is None)
    if missing:
        raise UnlabelledExamplesError(split, missing, len(labels))


def _raw_labels(file_pattern: str | Sequence[str], batch_size: int) -> Iterator[str | None]:
    """Every record's label as written (byte for byte, nothing stripped), in file order.

    None for a record with no label value, or more than one: the Transform's raw feature
    spec (one string) would refuse it with a parse error naming no record.
    """
    spec = {LABEL_KEY: tf.io.VarLenFeature(tf.string)}
    for batch in raw_examples(file_pattern).batch(batch_size):
        labels = tf.io.parse_example(batch, spec)[LABEL_KEY]
        rows = labels.indices[:, 0].numpy()
        per_row = np.bincount(rows, minlength=int(labels.dense_shape[0].numpy()))
        values = iter(labels.values.numpy())
        for n in per_row:
            found = [next(values) for _ in range(n)]
            yield found[0].decode("utf-8", errors="backslashreplace") if n == 1 else None


def class_indices(
    file_pattern: str | Sequence[str], tf_transform_output: tft.TFTransformOutput, batch_size: int = 1024
) -> np.ndarray:
    """The class index of every record, in file order, without decoding any image.

    Labels are read as preprocessing_fn reads them (byte for byte, nothing stripped)
    and looked up in the Transform's label vocabulary. Labels outside the vocabulary
    are an UnmappedLabelError naming each of them, as in the input function.
    """
    names = class_names(tf_transform_output)
    index = {n: i for i, n in enumerate(names)}
    out: list[int] = []
    unmapped: dict[str, None] = {}  # in order of first appearance
    labels = list(_raw_labels(file_pattern, batch_size))
    _refuse_unlabelled(labels, "train")
    for name in labels:
        if name in index:
            out.append(index[name])
        else:
            unmapped.setdefault(name)
    if unmapped:
        raise UnmappedLabelError(list(unmapped))
    return np.asarray(out, dtype=np.int64)


# ---------------------------------------------------------------------------------------
# Frozen-feature cache

# Features held in memory past this size are spilled to disk. In-memory features
# become one constant in the tf.data graph, and a graph proto cannot exceed 2 GiB
# (the dataset graph is serialized when a strategy distributes it), so stay well below.
DEFAULT_CACHE_MEMORY_BYTES = 1 << 30
SPILL_FILE = "features.tfrecord"
SPILL_SHUFFLE_MIN = 1024  # examples; a smaller shuffle buffer would barely shuffle at all
_SPILL_PARSE_BATCH = 1024


@dataclasses.dataclass
class FeatureCache:
    """Backbone features computed once, kept in memory or spilled to a TFRecord file.

    `features` yields unbatched (feature_vector float32 [D], label) pairs, the
    label exactly as the image dataset gave it (int64 [] or float32 [1] for a
    2-class head); `labels` holds the same labels as class indices, in order.
    A memory cache also keeps them as `arrays` (features, labels as given).
    Call `release()` when done to delete a spilled file. `select(mask)` gives
    some of the examples (e.g. a validation slice): a memory cache copies them,
    a spilled cache streams them from the same file (a view: releasing it is a no-op).
    """

    features: tf.data.Dataset
    count: int
    feature_dim: int
    location: str  # "memory" or the path of the spilled TFRecord file
    memory_limit_bytes: int = DEFAULT_CACHE_MEMORY_BYTES
    owned_dir: str | None = None  # a temporary spill directory to remove on release()
    labels: np.ndarray | None = None  # class index per example, in order
    view: bool = False  # a subset of another cache: it owns no files
    arrays: tuple[np.ndarray, np.ndarray] | None = None  # a memory cache's (features, labels)

    @classmethod
    def in_memory(cls, features: np.ndarray, labels: np.ndarray, **kwargs) -> FeatureCache:
        """A memory cache of `features` [N, D] and `labels` as the image dataset gives them."""
        return cls(
            tf.data.Dataset.from_tensor_slices((features, labels)),
            len(features),
            int(features.shape[1]),
            "memory",
            labels=np.asarray(labels).reshape(len(labels)).astype(np.int64),
            arrays=(features, labels),
            **kwargs,
        )

    @property
    def spilled(self) -> bool:
        return self.location != "memory"

    def select(self, keep: np.ndarray) -> FeatureCache:
        """The examples where the boolean mask `keep` (one entry per example) is true."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (self.count,):
            raise ValueError(f"select: mask of shape {keep.shape} for a cache of {self.count} examples")
        if self.arrays is not None:
            features, labels = self.arrays
            return FeatureCache.in_memory(
                features[keep], labels[keep], memory_limit_bytes=self.memory_limit_bytes
            )
        return dataclasses.replace(
            self,
            features=select_examples(self.features, keep),
            count=int(keep.sum()),
            labels=None if self.labels is None else self.labels[keep],
            owned_dir=None,
            view=True,
        )

    def batches(self, batch_size: int, shuffle: bool, seed: int) -> tf.data.Dataset:
        """Batches for Keras. A memory cache shuffles all of it; a spilled cache shuffles
        within a buffer sized to the memory limit, but never under SPILL_SHUFFLE_MIN examples.

        A memory cache shuffles example indices and gathers each batch from the arrays, so
        an epoch costs a few operations per batch rather than per example (same order as
        shuffling the examples themselves with the same seed and buffer).
        """
        if self.arrays is not None:
            features, labels = (tf.constant(a) for a in self.arrays)
            index = tf.data.Dataset.range(self.count)
            if shuffle:
                index = index.shuffle(self.count, seed=seed, reshuffle_each_iteration=True)
            return (
                index.batch(batch_size)
                .map(lambda i: (tf.gather(features, i), tf.gather(labels, i)), num_parallel_calls=AUTOTUNE)
                .prefetch(AUTOTUNE)
            )
        ds = self.features
        if shuffle:
            buffer = self.count
            if self.spilled:
                fits = self.memory_limit_bytes // (4 * (self.feature_dim + 1))
                buffer = min(buffer, max(SPILL_SHUFFLE_MIN, fits))
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(AUTOTUNE)

    def moments(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(sum of the features, sum of their squares, count), in float64: one pass over a
        spilled cache, a reduction over a memory cache's array."""
        if self.arrays is not None:
            f = self.arrays[0].astype(np.float64)
            return f.sum(axis=0), (f * f).sum(axis=0), len(f)
        total = np.zeros(self.feature_dim)
        total_sq = np.zeros(self.feature_dim)
        count = 0
        for f, _ in self.features.batch(_SPILL_PARSE_BATCH):
            f = f.numpy().astype(np.float64)
            total += f.sum(axis=0)
            total_sq += (f * f).sum(axis=0)
            count += len(f)
        return total, total_sq, count

    def release(self) -> None:
        """Delete the spilled file (and a temporary spill directory); a memory cache or a view
        is a no-op."""
        if self.spilled and not self.view:
            _remove_spill(self.location, self.owned_dir)


def _remove_spill(path: str, owned_dir: str | None) -> None:
    if path and tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)
    if owned_dir and tf.io.gfile.exists(owned_dir):
        tf.io.gfile.rmtree(owned_dir)


def cache_decision(augment: bool, fine_tuning: bool, requested: bool) -> tuple[bool, str]:
    """Whether the frozen-feature cache is valid for this phase, and why (for the run log)."""
    if not requested:
        return False, "feature cache off by config"
    if augment:
        return False, "feature cache bypassed: augmentation changes the backbone's input every epoch"
    if fine_tuning:
        return False, "feature cache bypassed: fine-tuning changes the backbone's weights"
    return True, "feature cache on: backbone features computed once, head trained on them"


class FeatureExtractor:
    """The frozen backbone's forward pass under `strategy`, traced once for every split.

    `cache(images)` runs it over (image, label) global batches on every replica
    and returns a FeatureCache. The step is a tf.function with the distributed
    dataset's element spec as its signature, so a partial last batch or a
    second split (eval) re-uses the same trace instead of tracing the backbone again.
    """

    def __init__(self, strategy: tf.distribute.Strategy, backbone: tf.keras.Model):
        self.strategy = strategy
        self.backbone = backbone
        self.feature_dim = int(backbone.output_shape[-1])
        self._steps: dict[str, Callable] = {}

    def _step(self, element_spec) -> Callable:
        key = repr(element_spec)
        if key not in self._steps:
            strategy, backbone = self.strategy, self.backbone

            def forward(x, y):
                return backbone(x, training=False), y

            # autograph=False: a Keras application is a functional graph of built-in layers
            # with no tensor-dependent Python control flow, and converting its layers' call
            # methods made tracing ~10x slower (3.3 s vs 0.3 s for MobileNetV2 here).
            self._steps[key] = tf.function(
                lambda x, y: strategy.run(forward, args=(x, y)),
                input_signature=list(element_spec),
                autograph=False,
            )
        return self._steps[key]

    def _gather(self, per_replica) -> np.ndarray:
        # Replica order is the global batch order: the strategy splits each batch in order.
        local = self.strategy.experimental_local_results(per_replica)
        return np.concatenate([t.numpy() for t in local])

    def cache(
        self,
        images: tf.data.Dataset,
        cache_dir: str | None = None,
        memory_limit_bytes: int = DEFAULT_CACHE_MEMORY_BYTES,
    ) -> FeatureCache:
        """Features of every example in `images`, in memory or spilled (see build_feature_cache).

        If extraction fails part-way, a partly written spill file (and a temporary spill
        directory) is removed before the error propagates.
        """
        dist = self.strategy.experimental_distribute_dataset(for_replicas(images, self.strategy))
        step = self._step(dist.element_spec)
        feats: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        classes: list[np.ndarray] = []  # every label as a class index, also when spilling
        held = 0
        count = 0
        label_dtype: np.dtype | None = None
        label_shape: tuple[int, ...] = ()
        writer: tf.io.TFRecordWriter | None = None
        path = ""  # set when the features start spilling to disk
        owned_dir: str | None = None
        try:
            for x, y in dist:
                f, lab = step(x, y)
                f = self._gather(f).astype(np.float32, copy=False)
                lab = self._gather(lab)
                if label_dtype is None:
                    label_dtype, label_shape = lab.dtype, lab.shape[1:]
                classes.append(lab.reshape(len(lab)).astype(np.int64))
                count += len(f)
                if writer is None and held + f.nbytes + lab.nbytes > memory_limit_bytes:
                    spill_dir = cache_dir
                    if not spill_dir:
                        spill_dir = owned_dir = tempfile.mkdtemp(prefix="imgpipe-feature-cache-")
                    tf.io.gfile.makedirs(spill_dir)
                    path = os.path.join(spill_dir, SPILL_FILE)
                    log.info("feature cache over %d bytes: spilling to %s", memory_limit_bytes, path)
                    writer = tf.io.TFRecordWriter(path)
                    for fb, lb in zip(feats, labels, strict=True):
                        _write_batch(writer, fb, lb)
                    feats, labels = [], []
                if writer is not None:
                    _write_batch(writer, f, lab)
                else:
                    feats.append(f)
                    labels.append(lab)
                    held += f.nbytes + lab.nbytes
            if writer is not None:
                writer.close()
                writer = None
        except BaseException as e:
            # The frames below this one hold the dataset's iterator (the `self` of its
            # `__next__`). The error's traceback keeps them, in reference cycles, so the
            # iterator lived on until some later collector pass in the middle of other work,
            # which has been seen to take 8 s freeing it. Drop their locals now (the
            # traceback still prints the same).
            traceback.clear_frames(e.__traceback__)
            # Whatever failed (input, backbone, a full disk), leave no partial spill behind.
            try:
                if writer is not None:
                    with contextlib.suppress(Exception):
                        writer.close()
            finally:
                _remove_spill(path, owned_dir)
            raise
        if count == 0:
            raise ValueError("feature cache: the image dataset yielded no examples")
        dim = self.feature_dim
        indices = np.concatenate(classes)
        if not path:
            return FeatureCache.in_memory(
                np.concatenate(feats), np.concatenate(labels), memory_limit_bytes=memory_limit_bytes
            )
        ds = _read_spilled(path, dim, tf.as_dtype(label_dtype), label_shape)
        return FeatureCache(ds, count, dim, path, memory_limit_bytes, owned_dir, labels=indices)


def build_feature_cache(
    strategy: tf.distribute.Strategy,
    backbone: tf.keras.Model,
    images: tf.data.Dataset,
    cache_dir: str | None = None,
    memory_limit_bytes: int = DEFAULT_CACHE_MEMORY_BYTES,
) -> FeatureCache:
    """Run the frozen backbone once over `images` ((image, label) global batches) on every replica.

    Features are kept in memory while features + labels fit `memory_limit_bytes`;
    past that every batch goes to `cache_dir`/features.tfrecord (a temporary
    directory when `cache_dir` is None) and is streamed back each epoch.
    The backbone runs with training=False, as it does inside the full model.
    To cache several splits with one trace, use a FeatureExtractor.
    """
    return FeatureExtractor(strategy, backbone).cache(images, cache_dir, memory_limit_bytes)


def _write_batch(writer: tf.io.TFRecordWriter, feats: np.ndarray, labels: np.ndarray) -> None:
    """One record per example: the raw bytes of its feature vector and of its label."""
    for f, y in zip(feats, labels, strict=True):
        ex = tf.train.Example(
            features=tf.train.Features(
                feature={
                    "f": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f.tobytes()])),
                    "y": tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[np.ascontiguousarray(y).tobytes()])
                    ),
                }
            )
        )
        writer.write(ex.SerializeToString())


def _read_spilled(
    path: str, feature_dim: int, label_dtype: tf.DType, label_shape: tuple[int, ...]
) -> tf.data.Dataset:
    """Unbatched (feature, label) pairs from a spilled file; parsed a thousand records at a time."""
    spec = {
        "f": tf.io.FixedLenFeature([], tf.string),
        "y": tf.io.FixedLenFeature([], tf.string),
    }

    def parse(records):
        ex = tf.io.parse_example(records, spec)
        f = tf.reshape(tf.io.decode_raw(ex["f"], tf.float32), [-1, feature_dim])
        y = tf.reshape(tf.io.decode_raw(ex["y"], label_dtype), [-1, *label_shape])
        return f, y

    return (
        tf.data.TFRecordDataset(path)
        .batch(_SPILL_PARSE_BATCH)
        .map(parse, num_parallel_calls=AUTOTUNE)
        .unbatch()
    )
