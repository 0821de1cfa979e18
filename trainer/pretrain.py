"""Pre-train a backbone on a source task and save its weights for transfer.

Offline (no ImageNet download) the demo and the tests still need a backbone
that learned something: this trains the chosen tf.keras.applications backbone,
all layers trainable, with a throw-away softmax head on a labelled TFRecord
dataset (from `imgpipe ingest`), then writes the backbone's weights (no head)
to an .h5 file that `--weights FILE` loads into the frozen backbone.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer import backbones, data, tracing
from trainer.config import MAX_IMAGE_SIZE
from trainer.features import IMAGE_KEY, LABEL_KEY
from trainer.model import build_backbone, evaluate_batches, fit_batches, weights_digest
from trainer.preprocessing import preprocess_images
from trainer.shape_inference import static_shapes

log = logging.getLogger(__name__)


class PretrainDiverged(RuntimeError):
    """Training ended with weights that are not finite numbers; nothing was written."""


# Keras applications use BatchNorm momentum 0.99-0.999, tuned for ImageNet's
# millions of steps; on a small source task the moving statistics would still be
# near their initial values when training ends, and the frozen backbone would
# then normalise with the wrong statistics. A faster momentum fixes that.
PRETRAIN_BN_MOMENTUM = 0.9


def _load_split(split_dir: str) -> tuple[np.ndarray, list[str]]:
    spec = {IMAGE_KEY: tf.io.FixedLenFeature([], tf.string), LABEL_KEY: tf.io.FixedLenFeature([], tf.string)}
    images, labels = [], []
    for record in data.raw_examples(split_dir):
        ex = tf.io.parse_single_example(record, spec)
        images.append(ex[IMAGE_KEY].numpy())
        labels.append(ex[LABEL_KEY].numpy().decode("utf-8"))
    return np.array(images, dtype=object), labels


def optimizer(learning_rate: float) -> keras.optimizers.legacy.Optimizer:
    """Adam as TensorFlow's fused kernels run it (tf_keras's `optimizers.legacy.Adam`).

    Pre-training updates every variable of the backbone. tf_keras's default Adam builds each
    variable's update from ~10 Python-level ops when the train step is traced; the legacy
    one calls one fused `ResourceApplyAdam` op per variable, with the same update rule
    (bias-corrected step, the same defaults). The first epoch, which traces the step, took
    about half as long: DenseNet121 at 32 px 44 -> 24 s, MobileNetV2 16-19 -> 9 s; later
    epochs ~10% less (BENCHMARKS.md, "The pre-training's optimizer"). The Trainer's head and
    fine-tuning keep tf_keras's default (`model.compile_model`).
    """
    return keras.optimizers.legacy.Adam(learning_rate=learning_rate)


def recalibrate_batchnorm(backbone: keras.Model, images: tf.data.Dataset) -> int:
    """Set every BatchNorm's moving statistics to their average over `images`' batches.

    After a short pre-training the exponential moving averages still remember
    their initial values; the frozen backbone would then normalise with wrong
    statistics. A forward pass in training mode over `images` with momentum 0
    makes each BatchNorm's moving statistics those of the batch; their sum over
    the batches, divided by the number of batches, is the plain mean over the
    data, which the moving statistics are set to. The pass is one traced
    function, called once per batch (an eager pass costs ~0.2-0.5 s per batch in
    Python overhead alone). `images` yields (images, labels). Returns the number
    of batches used.
    """
    bns = [m for m in backbone.submodules if isinstance(m, keras.layers.BatchNormalization)]
    stats = [v for bn in bns for v in (bn.moving_mean, bn.moving_variance)]
    if not stats:
        return sum(1 for _ in images)
    sums = [tf.Variable(tf.zeros_like(v), trainable=False) for v in stats]
    saved = [bn.momentum for bn in bns]

    def accumulate(x: tf.Tensor) -> None:
        backbone(x, training=True)  # momentum 0: each moving statistic becomes the batch's
        for total, v in zip(sums, stats, strict=True):
            total.assign_add(v)  # ordered after the update: the same variable, in program order

    n = 0
    try:
        for bn in bns:
            bn.momentum = 0.0  # read when the function is traced
        step = tf.function(accumulate, input_signature=[images.element_spec[0]], autograph=False)
        for x, _ in images:
            step(x)
            n += 1
    finally:
        for bn, m in zip(bns, saved, strict=True):
            bn.momentum = m
    if n:
        for total, v in zip(sums, stats, strict=True):
            v.assign(total / n)
    return n


def pretrain_backbone(
    data_dir: str,
    backbone: str,
    out: str,
    image_size: int = 32,
    epochs: int = 15,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 42,
    verbose: int = 2,
) -> dict[str, Any]:
    """Train `backbone` on DATA_DIR/train (reporting DATA_DIR/eval); save weights to `out` (.h5)."""
    if not out.endswith(".h5"):
        raise ValueError(f"--out must be an .h5 file (Keras applications load that format): {out}")
    spec = backbones.get(backbone)
    if not spec.min_size <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"image size {image_size} is out of range for {backbone} ({spec.min_size}..{MAX_IMAGE_SIZE})"
        )
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch size must be >= 1, got {epochs} and {batch_size}")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning rate must be a positive number, got {learning_rate}")
    for split in ("train", "eval"):
        if not os.path.isdir(os.path.join(data_dir, split)):
            raise FileNotFoundError(f"{data_dir} has no {split}/ directory (run `imgpipe ingest` first)")
    tracing.install()
    tf.keras.utils.set_random_seed(seed)
    t0 = time.perf_counter()
    train_images, train_labels = _load_split(os.path.join(data_dir, "train"))
    eval_images, eval_labels = _load_split(os.path.join(data_dir, "eval"))
    classes = sorted(set(train_labels))
    if len(classes) < 2:
        raise ValueError(f"the source task in {data_dir} needs at least 2 classes, found {classes}")
    index = {c: i for i, c in enumerate(classes)}

    def dataset(images, labels, shuffle: bool) -> tf.data.Dataset:
        y = np.array([index.get(lab, -1) for lab in labels], np.int64)
        keep = y >= 0
        ds = tf.data.Dataset.from_tensor_slices((list(images[keep]), y[keep]))
        if shuffle:
            ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
        # do_not_convert: plain TensorFlow ops, and AutoGraph would otherwise try to convert
        # the importlib call that looks up the backbone's preprocess_input (and warn).
        ds = ds.batch(batch_size).map(
            tf.autograph.experimental.do_not_convert(
                lambda b, lab: (preprocess_images(b, backbone, image_size), lab)
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return ds.cache().prefetch(tf.data.AUTOTUNE) if not shuffle else ds.prefetch(tf.data.AUTOTUNE)

    base = build_backbone(backbone, "none", image_size)
    for layer in base.submodules:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = PRETRAIN_BN_MOMENTUM
    inputs = keras.Input((image_size, image_size, 3))
    with static_shapes():  # base's output is its own: not traced again for the new input
        outputs = keras.layers.Dense(len(classes), activation="softmax")(base(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=optimizer(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    log.info(
        "pre-training %s at %dpx on %d images, %d classes, %d epochs",
        backbone,
        image_size,
        len(train_labels),
        len(classes),
        epochs,
    )
    eval_ds = dataset(eval_images, eval_labels, False)
    train_ds = dataset(train_images, train_labels, True)
    fit_batches(model, train_ds, validation_data=eval_ds, epochs=epochs, verbose=verbose)
    recalibrate_batchnorm(base, dataset(train_images, train_labels, False))
    bad = [w.name for w in base.weights if not np.all(np.isfinite(w.numpy()))]
    if bad:
        raise PretrainDiverged(
            f"pre-training diverged: {len(bad)} of {len(base.weights)} weight arrays hold NaN or "
            f"infinity (e.g. {bad[0]}); nothing was written{' and ' + out + ' is as it was' if os.path.exists(out) else ''}. "
            f"Lower the learning rate (it was {learning_rate})"
        )
    eval_acc = evaluate_batches(model, eval_ds)["accuracy"]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    # Written beside `out` and moved over it: a failed save leaves an existing file whole.
    partial = f"{out}.partial-{os.getpid()}.h5"
    try:
        base.save_weights(partial)
        os.replace(partial, out)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    report = {
        "backbone": backbone,
        "weights": os.path.abspath(out),
        # What check_weights_file compares the file with before it trusts this description.
        "sha256": weights_digest(out),
        "image_size": image_size,
        "classes": classes,
        "train_examples": len(train_labels),
        "eval_examples": len(eval_labels),
        "epochs": epochs,
        "source_eval_accuracy": float(eval_acc),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    with open(out + ".json.partial", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    os.replace(out + ".json.partial", out + ".json")
    return report
