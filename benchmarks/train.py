"""Training speed: a plain Keras script vs imgpipe's trainer.train(), feature cache off and on.

The demo's transfer task: a MobileNetV2 pre-trained here on digits 0-4, frozen,
with a new softmax head for digits 5-9 (all of scikit-learn's 5-9 digits,
ingested as the demo does: ~720 train / ~180 eval images). Three variants,
interleaved in one process (order rotated each round):

- keras: what a user writes without imgpipe -- tf.data from the same TFRecords
  (parse, decode, resize, preprocess_input in a plain map), the same frozen
  backbone file, Dropout + softmax Dense, Adam, model.fit; AutoGraph as
  TensorFlow 2.16 ships it (it converts tf_keras's own code on every trace).
- imgpipe, cache off: trainer.train(feature_cache=False): raw examples through
  the Transform graph, the Trainer's strategy (MirroredStrategy over GPUs or
  split CPUs; the default strategy on one CPU, as here), tf_keras exempt from
  AutoGraph (trainer/tracing.py), the full model fit every epoch.
- imgpipe, cache on (the default): the backbone runs once per split, the head
  trains on the cached features.

--attribute adds the plain script with imgpipe's differences swapped in one at
a time (tracing rule; + MirroredStrategy; + Transform-graph input; + both), and
imgpipe under MirroredStrategy over the one CPU (what the Trainer used before).
Same backbone, image size, batch, epochs, learning rate, dropout and seed.

    python -m benchmarks.train             # 64px, 10 epochs, 3 rounds (~6 min here)
    python -m benchmarks.train --quick     # 1 round, 3 epochs
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time

from benchmarks import common

BACKBONE = "MobileNetV2"


def plain_keras(
    train_files,
    eval_files,
    classes,
    weights,
    size,
    batch,
    epochs,
    lr,
    dropout,
    seed,
    strategy=None,
    tfo=None,
    fast_tracing=False,
):
    """The seed-style script: returns total s, epoch seconds, final eval accuracy.

    It runs with AutoGraph's rules as TensorFlow 2.16 ships them, as a user's script
    would. For attributing a gap to imgpipe: `fast_tracing` adds imgpipe's tf_keras
    exemption (trainer/tracing.py), `strategy` builds and fits it under that
    distribution strategy, `tfo` swaps its input for imgpipe's (trainer.data.make_dataset).
    """
    from trainer import tracing

    if fast_tracing:
        tracing.install()
    with contextlib.nullcontext() if fast_tracing else tracing.as_shipped():
        return _plain_keras(
            train_files, eval_files, classes, weights, size, batch, epochs, lr, dropout, seed, strategy, tfo
        )


def _plain_keras(
    train_files, eval_files, classes, weights, size, batch, epochs, lr, dropout, seed, strategy, tfo
):
    import tensorflow as tf
    import tf_keras as keras

    t0 = time.perf_counter()
    keras.utils.set_random_seed(seed)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(classes), tf.range(len(classes), dtype=tf.int64)),
        default_value=-1,
    )
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.string),
    }

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        image = tf.io.decode_image(ex["image"], channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        image = tf.image.resize(tf.cast(image, tf.float32), [size, size], antialias=True)
        image = keras.applications.mobilenet_v2.preprocess_input(image)
        return image, table.lookup(ex["label"])

    def dataset(files, shuffle):
        if tfo is not None:
            from trainer import data

            spec = data.InputSpec(batch_size=batch, num_classes=len(classes), shuffle=shuffle, seed=seed)
            return data.make_dataset(files, tfo, spec)
        ds = tf.data.TFRecordDataset(files, compression_type="")
        if shuffle:
            ds = ds.shuffle(1024, seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(batch).prefetch(tf.data.AUTOTUNE)

    with strategy.scope() if strategy else contextlib.nullcontext():
        base = keras.applications.MobileNetV2(
            include_top=False, weights=weights, input_shape=(size, size, 3), pooling="avg"
        )
        base.trainable = False
        inputs = keras.Input((size, size, 3))
        x = keras.layers.Dropout(dropout)(base(inputs, training=False))
        outputs = keras.layers.Dense(len(classes), activation="softmax")(x)
        model = keras.Model(inputs, outputs)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=lr),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    timer = common.epoch_timer()
    h = model.fit(
        dataset(train_files, True),
        validation_data=dataset(eval_files, False),
        epochs=epochs,
        verbose=0,
        callbacks=[timer],
    )
    total = time.perf_counter() - t0
    return {
        "total": total,
        "epochs": timer.seconds,
        "extract": 0.0,
        "accuracy": h.history["val_accuracy"][-1],
    }


def imgpipe(train_files, eval_files, tfo, params, strategy):
    """trainer.train() as the Trainer calls it; returns the same measures as plain_keras."""
    import tf_keras as keras

    from trainer import train

    keras.backend.clear_session()
    timer = common.epoch_timer()
    t0 = time.perf_counter()
    result = train.train(
        train_files,
        eval_files,
        tfo,
        params,
        strategy=strategy,
        verbose=0,
        callbacks=[timer],
    )
    total = time.perf_counter() - t0
    return {
        "total": total,
        "epochs": timer.seconds,
        "extract": result.seconds.get("feature_extraction", 0.0),
        "accuracy": result.eval_accuracy,
        "cache": result.feature_cache_used,
    }


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=None, help="default 10 (3 with --quick)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-2)
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument(
        "--attribute",
        action="store_true",
        help="add the plain script under MirroredStrategy and with imgpipe's input, to attribute a gap",
    )
    args = p.parse_args(argv)
    common.quiet()
    runs = common.repeats(args)
    epochs = args.epochs or (3 if args.quick else 10)
    size = args.image_size
    head = common.header(
        f"Training: plain Keras vs imgpipe (cache off / on), {BACKBONE} {size}px, {epochs} epochs"
    )

    from trainer import distribution
    from trainer.config import TrainingConfig

    _, target = common.demo_tasks(args.workdir, size)
    weights = common.source_backbone(args.workdir, BACKBONE, size, args.pretrain_epochs)
    with open(weights + ".json", encoding="utf-8") as f:
        source_acc = json.load(f)["source_eval_accuracy"]
    tfo = common.analyze(
        target,
        os.path.join(args.workdir, f"digits{size}", "transform_target"),
        BACKBONE,
        size,
    )
    train_files = common.split_files(target, "train")
    eval_files = common.split_files(target, "eval")
    with open(os.path.join(target, "classes.json"), encoding="utf-8") as f:
        classes_file = json.load(f)
    classes = sorted(classes_file if isinstance(classes_file, list) else classes_file["classes"])
    n_train = sum(1 for _ in common.read_items(train_files))
    n_eval = sum(1 for _ in common.read_items(eval_files))
    common.say(f"[bench] {n_train} train / {n_eval} eval images, backbone {weights}")

    strategy = distribution.make_strategy()  # what the Trainer uses on this machine
    mirrored = distribution.mirrored() if args.attribute else None  # MirroredStrategy, for attribution
    base = {
        "backbone": BACKBONE,
        "weights": weights,
        "image_size": size,
        "batch_size": args.batch_size,
        "epochs": epochs,
        "learning_rate": args.learning_rate,
        "dropout": 0.1,
        "early_stopping": False,  # a fixed epoch count, as the plain script trains
    }
    off = TrainingConfig(**base, feature_cache=False)
    on = TrainingConfig(**base, feature_cache=True)

    def plain_args(r: int) -> tuple:
        lr, dropout = args.learning_rate, 0.1
        return train_files, eval_files, classes, weights, size, args.batch_size, epochs, lr, dropout, 42 + r

    # Round r trains every variant with seed 42 + r: the accuracy medians then cover
    # three different initialisations and shuffles, not one trajectory three times.
    variants = {
        "plain Keras script": lambda r: plain_keras(*plain_args(r)),
        **(
            {
                "plain + imgpipe's tracing (tf_keras not AutoGraph-converted)": lambda r: plain_keras(
                    *plain_args(r), fast_tracing=True
                ),
                "plain + tracing + MirroredStrategy": lambda r: plain_keras(
                    *plain_args(r), fast_tracing=True, strategy=mirrored
                ),
                "plain + tracing + imgpipe's input (Transform graph)": lambda r: plain_keras(
                    *plain_args(r), fast_tracing=True, tfo=tfo
                ),
                "plain + tracing + MirroredStrategy + Transform-graph input": lambda r: plain_keras(
                    *plain_args(r), fast_tracing=True, strategy=mirrored, tfo=tfo
                ),
                "imgpipe, cache off, under MirroredStrategy": lambda r: imgpipe(
                    train_files, eval_files, tfo, dataclasses.replace(off, seed=42 + r), mirrored
                ),
            }
            if args.attribute
            else {}
        ),
        "imgpipe, cache off": lambda r: imgpipe(
            train_files, eval_files, tfo, dataclasses.replace(off, seed=42 + r), strategy
        ),
        "imgpipe, cache on": lambda r: imgpipe(
            train_files, eval_files, tfo, dataclasses.replace(on, seed=42 + r), strategy
        ),
    }
    # Warm-up, untimed: the first Keras trace in a process also converts Keras itself
    # (AutoGraph, without imgpipe's tracing rule), a one-off cost that would otherwise land
    # on whichever variant runs first. `benchmarks.tracing` measures it in fresh processes.
    plain_keras(*plain_args(0)[:6], 1, *plain_args(0)[7:])
    imgpipe(train_files, eval_files, tfo, dataclasses.replace(off, epochs=1), strategy)
    res = common.interleaved(variants, runs, say=common.say)

    med = {
        name: {
            "total": common.median([r["total"] for r in rs]),
            "epoch": common.median([common.median(r["epochs"]) for r in rs]),
            "first": common.median([r["epochs"][0] for r in rs]),
            "extract": common.median([r["extract"] for r in rs]),
            "setup": common.median([r["total"] - r["extract"] - sum(r["epochs"]) for r in rs]),
            "accuracy": common.median([r["accuracy"] for r in rs]),
            "accs": [r["accuracy"] for r in rs],
        }
        for name, rs in res.items()
    }
    rows = [
        [
            name,
            m["setup"],
            m["extract"],
            m["first"],
            m["epoch"],
            m["total"],
            m["accuracy"],
            " ".join(f"{a:.3f}" for a in m["accs"]),
        ]
        for name, m in med.items()
    ]
    keras_m, off_m, on_m = (med[n] for n in ("plain Keras script", "imgpipe, cache off", "imgpipe, cache on"))
    speedup = off_m["total"] / on_m["total"]
    parity = keras_m["total"] / off_m["total"]
    acc_gap = 100 * (on_m["accuracy"] - off_m["accuracy"])
    ratio_rows = [
        [
            "cache on vs off: total-time speed-up",
            f"{speedup:.2f}x",
            ">= 4x",
            speedup >= 4,
        ],
        [
            "cache on vs off: eval accuracy difference (points)",
            f"{acc_gap:+.1f}",
            "within 1",
            abs(acc_gap) <= 1.0,
        ],
        [
            "imgpipe cache off vs plain Keras: speed",
            f"{parity:.2f}x",
            ">= 0.9x",
            parity >= 0.9,
        ],
        [
            "per-epoch time, off / on (head epochs)",
            f"{off_m['epoch'] / on_m['epoch']:.1f}x",
            "",
            "",
        ],
    ]
    common.emit(head)
    common.emit(
        f"{n_train} train / {n_eval} eval images of digits 5-9 at {size}px, {BACKBONE} "
        f"pre-trained here on digits 0-4 (source eval accuracy {source_acc:.3f}), "
        f"batch {args.batch_size}, Adam lr {args.learning_rate}, dropout 0.1; "
        f"median of {runs} interleaved round(s), round r using seed 42+r for every variant. "
        "Seconds are wall time; 'epoch' includes the validation pass; other = total - "
        "extraction - epochs (model build and weight loading, compile, input pipelines, "
        "and pauses between epochs).\n"
    )
    common.emit(
        common.table(
            [
                "variant",
                "other s (build, compile, between epochs)",
                "feature extraction s",
                "first epoch s",
                "median epoch s",
                "total s",
                "final eval acc",
                "eval acc per run",
            ],
            rows,
        )
    )
    common.emit()
    common.emit(common.table(["ratio", "measured", "target", "met"], ratio_rows))
    common.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
