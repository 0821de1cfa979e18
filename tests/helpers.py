"""Shared test fixtures: small real images, tf.Examples, a Transform output, an exported model."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from imgpipe.demo.analyze import analyze_transform, raw_feature_spec
from imgpipe.demo.data import digit_images
from trainer.features import IMAGE_KEY, LABEL_KEY

# Re-exported: the tests' one way to get a Transform output, and real digit images.
__all__ = ["analyze_transform", "digit_images", "raw_feature_spec"]


def encode_image(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    img = Image.fromarray(array)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


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


def write_split_dataset(data_dir: str, items, eval_every: int = 5) -> str:
    """TFRecords under data_dir/train and data_dir/eval (every n-th item to eval)."""
    train = [it for i, it in enumerate(items) if i % eval_every]
    evals = [it for i, it in enumerate(items) if i % eval_every == 0]
    write_tfrecords(os.path.join(data_dir, "train", "data-00000-of-00001.tfrecord"), train)
    write_tfrecords(os.path.join(data_dir, "eval", "data-00000-of-00001.tfrecord"), evals)
    return data_dir


def replicas_task(workdir: str) -> str:
    """The two-replica task (tests/test_replicas.py, benchmarks/multi_device_iterator.py): 40 real
    32 px digits per class 0-2 under workdir/data (every 4th to eval) and the Transform output
    of the train split in workdir/transform."""
    items = digit_images((0, 1, 2), per_class=40, size=32, seed=0)
    write_split_dataset(os.path.join(workdir, "data"), items, eval_every=4)
    train = [it for i, it in enumerate(items) if i % 4]
    analyze_transform(train, os.path.join(workdir, "transform"), image_size=32)
    return workdir


def pretrained_weights(
    workdir: str,
    backbone: str = "MobileNetV2",
    image_size: int = 32,
    epochs: int = 3,
    digits=(0, 1, 2, 3, 4),
    per_class: int = 40,
) -> str:
    """A backbone pre-trained here on a digits source task (no ImageNet download)."""
    from trainer.pretrain import pretrain_backbone

    data_dir = write_split_dataset(
        os.path.join(workdir, "source"), digit_images(digits, per_class=per_class, size=image_size, seed=1)
    )
    out = os.path.join(workdir, f"{backbone}_{image_size}.h5")
    pretrain_backbone(data_dir, backbone, out, image_size=image_size, epochs=epochs, verbose=0)
    return out


def in_memory_scores(m, tfo, num_classes: int, serialized_examples) -> np.ndarray:
    """The in-memory model's class scores on raw serialized examples (Transform graph applied)."""
    import tensorflow as tf

    from trainer.features import IMAGE_XF
    from trainer.model import class_scores

    spec = {k: v for k, v in tfo.raw_feature_spec().items() if k != LABEL_KEY}
    xf = tfo.transform_features_layer()(tf.io.parse_example(tf.constant(serialized_examples), spec))
    return class_scores(m(xf[IMAGE_XF], training=False), num_classes).numpy()


def track_iterators(monkeypatch) -> list:
    """Weak references to every tf.data iterator Python makes from now on (for the test)."""
    import weakref

    from tensorflow.python.data.ops import iterator_ops

    made: list[weakref.ref] = []
    init = iterator_ops.OwnedIterator.__init__

    def tracked(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(weakref.ref(self))

    monkeypatch.setattr(iterator_ops.OwnedIterator, "__init__", tracked)
    return made


@contextlib.contextmanager
def logged(logger: str | logging.Logger, level: int = logging.NOTSET) -> Iterator[list[str]]:
    """The messages `logger` emits at `level` or above while the block runs, through a handler of
    its own: imgpipe's loggers stop propagating once a command ran in this process, so a test
    cannot count on the root logger (or caplog) seeing them."""
    target = logging.getLogger(logger) if isinstance(logger, str) else logger
    seen: list[str] = []
    handler = logging.Handler(level)
    handler.emit = lambda record: seen.append(record.getMessage())
    target.addHandler(handler)
    try:
        yield seen
    finally:
        target.removeHandler(handler)


@contextlib.contextmanager
def tf1_session(saved_model_dir: str) -> Iterator[Callable[[str, dict, str], np.ndarray]]:
    """A SavedModel as TF Serving and the report run it: its MetaGraph loaded into a TF1 session,
    whose runtime refuses some graphs a TF2 call runs. Yields `run(signature, {input key: batch},
    output key)`, the output as a numpy array."""
    import tensorflow as tf

    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, [tf.saved_model.SERVING], saved_model_dir)

        def run(name: str, inputs: dict, output: str) -> np.ndarray:
            signature = meta.signature_def[name]
            feeds = {signature.inputs[key].name: batch for key, batch in inputs.items()}
            return session.run(signature.outputs[output].name, feeds)

        yield run


def wait_for(condition: Callable[[], object], timeout: float, what: str = "the condition") -> None:
    """Return once `condition()` is true; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
