"""Tracing cost of Keras in a fresh process: AutoGraph as TF 2.16 ships it vs imgpipe's tf_keras rule.

A TFX Trainer is a fresh process, so the one-off cost of tracing Keras's train and
test steps lands on every run. TensorFlow 2.16's AutoGraph converts tf_keras's own
code on each trace (its do-not-convert list names `keras`, not `tf_keras`);
trainer/tracing.py adds the missing rule. Each measurement is its own Python
process that builds a frozen backbone + softmax head, then times:

- first fit: 1 epoch of 2 steps with validation (traces train and test steps),
- second fit: the same again on a new model in the same process,
- first predict on that second model (traces the predict step).

Random inputs (tracing does not depend on the data), weights=None.

    python -m benchmarks.tracing            # MobileNetV2 + DenseNet121 at 64px, 3 rounds
    python -m benchmarks.tracing --quick    # MobileNetV2 only, 1 round
"""

from __future__ import annotations

import sys

from benchmarks import common

CHILD = r"""
import json, os, sys, time
import numpy as np
import tensorflow as tf
import tf_keras as keras
if sys.argv[3] == "1":
    from trainer import tracing
    tracing.install()
name, size = sys.argv[1], int(sys.argv[2])

def build():
    base = getattr(keras.applications, name)(
        include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Dropout(0.1)(base(inputs, training=False))
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model

x = np.random.default_rng(0).uniform(-1, 1, (64, size, size, 3)).astype("float32")
y = np.random.default_rng(1).integers(0, 5, 64)
out = {}
for key in ("first_fit", "second_fit"):
    model = build()
    t = time.perf_counter()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, validation_data=(x[:32], y[:32]))
    out[key] = time.perf_counter() - t
t = time.perf_counter()
model.predict(x, batch_size=32, verbose=0)
out["first_predict"] = time.perf_counter() - t
print(json.dumps(out))
"""

VARIANTS = {
    "AutoGraph as shipped (plain TF 2.16 + tf_keras)": "0",
    "imgpipe: tf_keras not converted (trainer/tracing.py)": "1",
}


def measure(backbone: str, size: int, rule: str) -> dict[str, float]:
    return common.python_child(CHILD, [backbone, str(size), rule], f"tracing child ({backbone}, rule={rule})")


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--backbones", nargs="+", default=None, help="default MobileNetV2 DenseNet121")
    args = p.parse_args(argv)
    common.quiet()
    runs = common.repeats(args)
    names = args.backbones or (["MobileNetV2"] if args.quick else ["MobileNetV2", "DenseNet121"])
    size = args.image_size
    head = common.header(f"Tracing: Keras fit/predict in a fresh process, {size}px")
    variants = {
        (bb, label): (lambda r, bb=bb, rule=rule: measure(bb, size, rule))
        for bb in names
        for label, rule in VARIANTS.items()
    }
    res = common.interleaved(
        {f"{bb} | {label}": fn for (bb, label), fn in variants.items()}, runs, say=common.say
    )
    rows, ratio_rows = [], []
    for bb in names:
        meds = {}
        for label in VARIANTS:
            rs = res[f"{bb} | {label}"]
            meds[label] = {k: common.median([r[k] for r in rs]) for k in rs[0]}
            m = meds[label]
            rows.append([bb, label, m["first_fit"], m["second_fit"], m["first_predict"]])
        shipped, ours = (meds[label] for label in VARIANTS)
        ratio_rows.append(
            [
                bb,
                f"{shipped['first_fit'] / ours['first_fit']:.1f}x",
                f"{shipped['second_fit'] / ours['second_fit']:.1f}x",
                f"{shipped['first_predict'] / ours['first_predict']:.1f}x",
            ]
        )
    common.emit(head)
    common.emit(
        "Each cell: median seconds over "
        f"{runs} fresh process(es) per variant, interleaved. first fit = 1 epoch of 2 steps of "
        "batch 32 plus a 1-step validation, on a new model in a new process (tracing train + test "
        "steps, and AutoGraph converting Keras for the first time); second fit = the same on a "
        "second new model in that process; first predict = predict on that model.\n"
    )
    common.emit(
        common.table(["backbone", "AutoGraph", "first fit s", "second fit s", "first predict s"], rows)
    )
    common.emit()
    common.emit(common.table(["backbone", "first fit", "second fit", "first predict"], ratio_rows))
    common.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
