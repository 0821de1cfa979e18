"""What a user writes instead of imgpipe: a plain Keras transfer-learning script.

The yardstick of `python -m benchmarks.pipeline --versus-plain-keras` (issue 13).
It is written as a competent user would write it without imgpipe, and it
imports nothing from imgpipe, pipeline/, components/ or trainer/:

- data: the labelled image folder itself (IMAGES/<class>/<file>, the tree the
  demo writes and `imgpipe ingest` reads). Classes are the sub-folder names,
  sorted. The train/eval membership comes from `--split FILE` (JSON
  {"train": [paths relative to IMAGES], "eval": [...]}; the benchmark writes the
  membership `imgpipe ingest` chose, so both sides train and score on the same
  images); without it, a seeded 80/20 split of each class.
- input: tf.data from the file paths: read, `decode_image` to RGB, resize to the
  image size (bilinear, antialiased) -> `.cache()` -> shuffle (train) -> batch
  -> the backbone's own `preprocess_input` -> prefetch. Caching after the
  decode is what a careful user does when the decoded images fit in memory
  (896 x 32x32x3 floats: 11 MB; 30k x 64x64x3: 1.5 GB): PNG decoding then
  happens once, not once per epoch. The frozen backbone still runs every
  epoch: that is the script this is, a model with a frozen backbone inside.
- model: `tf.keras.applications.<Backbone>(include_top=False, weights=FILE)`
  (Keras loads the .h5 weights file, the same file and the same call the
  pipeline's Trainer uses), frozen and called in inference mode, then
  GlobalAveragePooling2D and a Dense softmax layer; Adam, sparse categorical
  cross-entropy.
- `fit` for exactly `--epochs` epochs (no validation data during fit: scoring
  the eval images every epoch would only make this side slower), then
  `evaluate` on the eval images once, then `model.save(OUT)` (a SavedModel).

Keras 2 through tf_keras (TF_USE_LEGACY_KERAS=1), as the project runs it, with
TensorFlow's AutoGraph as it ships (imgpipe's trainer/tracing.py rule is not
applied: a user's script does not have it).

stdout: one JSON line: accuracy, counts, seconds by phase (import, data, build,
fit, evaluate, save, total; `total` from the start of this script, the
benchmark times the whole process from outside).

    python benchmarks/plain_keras.py --images DIR --backbone DenseNet121 \\
        --weights backbone.h5 --image-size 32 --epochs 30 --out plain_model
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # Keras 2 (tf_keras), as TFX 1.16 needs
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Backbone -> its tf.keras.applications module (for preprocess_input).
MODULES = {
    "MobileNetV2": "mobilenet_v2",
    "MobileNetV3Small": "mobilenet_v3",
    "MobileNetV3Large": "mobilenet_v3",
    "EfficientNetB0": "efficientnet",
    "EfficientNetV2B0": "efficientnet_v2",
    "ResNet50": "resnet50",
    "ResNet50V2": "resnet_v2",
    "Xception": "xception",
    "InceptionV3": "inception_v3",
    "DenseNet121": "densenet",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp")


def list_images(images_dir: str) -> tuple[list[str], dict[str, list[str]]]:
    """Sorted class names and, per class, its image paths relative to `images_dir` (sorted)."""
    classes = sorted(
        d
        for d in os.listdir(images_dir)
        if not d.startswith(".") and os.path.isdir(os.path.join(images_dir, d))
    )
    files = {
        c: sorted(
            f"{c}/{f}"
            for f in os.listdir(os.path.join(images_dir, c))
            if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)
        )
        for c in classes
    }
    return classes, files


def split_files(
    files: dict[str, list[str]], split_file: str | None, eval_fraction: float, seed: int
) -> dict[str, list[str]]:
    """{"train": [...], "eval": [...]} relative paths: from `split_file`, else seeded per class."""
    if split_file:
        with open(split_file, encoding="utf-8") as f:
            chosen = json.load(f)
        return {"train": list(chosen["train"]), "eval": list(chosen["eval"])}
    rng = random.Random(seed)
    out: dict[str, list[str]] = {"train": [], "eval": []}
    for c in sorted(files):
        names = list(files[c])
        rng.shuffle(names)
        n_eval = max(1, round(eval_fraction * len(names))) if len(names) > 1 else 0
        out["eval"] += names[:n_eval]
        out["train"] += names[n_eval:]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", required=True, help="IMAGES/<class>/<file> tree")
    p.add_argument("--split", help='JSON {"train": [...], "eval": [...]} of paths relative to --images')
    p.add_argument("--eval-fraction", type=float, default=0.2, help="without --split: eval share per class")
    p.add_argument("--backbone", default="DenseNet121", choices=sorted(MODULES))
    p.add_argument("--weights", required=True, help="backbone weights .h5 file (or 'imagenet' / 'none')")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", required=True, help="where model.save writes the SavedModel")
    args = p.parse_args(argv)
    seconds: dict[str, float] = {}
    t = time.perf_counter()

    import tensorflow as tf

    seconds["import"] = time.perf_counter() - t
    t = time.perf_counter()
    tf.keras.utils.set_random_seed(args.seed)
    size = args.image_size
    classes, files = list_images(args.images)
    parts = split_files(files, args.split, args.eval_fraction, args.seed)
    index = {c: i for i, c in enumerate(classes)}
    preprocess = getattr(tf.keras.applications, MODULES[args.backbone]).preprocess_input

    def load(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return tf.image.resize(tf.cast(image, tf.float32), [size, size], antialias=True), label

    def dataset(names: list[str], train: bool) -> tf.data.Dataset:
        paths = [os.path.join(args.images, n) for n in names]
        labels = [index[n.split("/", 1)[0]] for n in names]
        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).cache()
        if train:
            ds = ds.shuffle(len(paths), seed=args.seed, reshuffle_each_iteration=True)
        ds = ds.batch(args.batch_size).map(
            lambda x, y: (preprocess(x), y), num_parallel_calls=tf.data.AUTOTUNE
        )
        return ds.prefetch(tf.data.AUTOTUNE)

    train_ds, eval_ds = dataset(parts["train"], True), dataset(parts["eval"], False)
    seconds["data"] = time.perf_counter() - t

    t = time.perf_counter()
    extra = (
        {"include_preprocessing": True}
        if MODULES[args.backbone] in ("mobilenet_v3", "efficientnet_v2")
        else {}
    )
    weights = {"none": None}.get(args.weights.lower(), args.weights)
    base = getattr(tf.keras.applications, args.backbone)(
        include_top=False, weights=weights, input_shape=(size, size, 3), **extra
    )
    base.trainable = False
    inputs = tf.keras.Input((size, size, 3))
    x = tf.keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    outputs = tf.keras.layers.Dense(len(classes), activation="softmax")(x)
    model = tf.keras.Model(inputs, outputs)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(args.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    seconds["build"] = time.perf_counter() - t

    t = time.perf_counter()
    epoch_seconds: list[float] = []
    began = [0.0]
    timer = tf.keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: began.__setitem__(0, time.perf_counter()),
        on_epoch_end=lambda epoch, logs: epoch_seconds.append(time.perf_counter() - began[0]),
    )
    model.fit(train_ds, epochs=args.epochs, verbose=0, callbacks=[timer])
    seconds["fit"] = time.perf_counter() - t

    t = time.perf_counter()
    _, accuracy = model.evaluate(eval_ds, verbose=0)
    seconds["evaluate"] = time.perf_counter() - t

    t = time.perf_counter()
    model.save(args.out)
    seconds["save"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - T_START
    result = {
        "accuracy": float(accuracy),
        "classes": len(classes),
        "train_images": len(parts["train"]),
        "eval_images": len(parts["eval"]),
        "epochs": args.epochs,
        "epoch_seconds": [round(s, 3) for s in epoch_seconds],
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
