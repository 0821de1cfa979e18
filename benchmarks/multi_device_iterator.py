"""The multi-device iterator: training on images over 2 replicas with and without tf.data's
default rewrites (`trainer.data.for_replicas`), in paired fresh processes.

A strategy with several replicas in one process reads a dataset through a multi-device
iterator, which instantiates the dataset once per device; Keras makes one such iterator per
epoch, one more per fit and two per evaluate. The workload is tests/test_replicas.py's: the
tests' MobileNetV2 (32 px, pre-trained here on digits 0-4) on 90 train and 30 eval digits 0-2,
the whole model every step (feature cache off), 3 epochs, the CPU split into 2 devices.
"before" is the same code with `for_replicas` returning the dataset as it is, in the same
round as "after", order alternating.

Reported per variant (medians): creating one iterator of the distributed train dataset, the
whole `train()` and the child's CPU seconds, the eval accuracy, and the after/before ratios.

    python -m benchmarks.multi_device_iterator           # 3 rounds
    python -m benchmarks.multi_device_iterator --quick   # 1 round
"""

from __future__ import annotations

import os
import sys

from benchmarks import common

CHILD = r"""
import json, os, resource, sys, time
from trainer import distribution
distribution.split_cpu(2)
import tensorflow as tf
import tensorflow_transform as tft
from trainer import data
workdir, weights, variant = sys.argv[1:4]
if variant == "before":
    data.for_replicas = lambda ds, strategy: ds
from tests.test_replicas import train_replicas

strategy = tf.distribute.MirroredStrategy()
tfo = tft.TFTransformOutput(os.path.join(workdir, "transform"))
files = tf.io.gfile.glob(os.path.join(workdir, "data", "train", "*"))
ds = data.for_replicas(data.make_dataset(files, tfo, data.InputSpec(batch_size=16, num_classes=3)), strategy)
dist = strategy.experimental_distribute_dataset(ds)
made = []
for _ in range(3):
    t = time.perf_counter()
    it = iter(dist)
    made.append(time.perf_counter() - t)
    next(it)
    del it
t = time.perf_counter()
result = train_replicas(workdir, weights, 2)
train_s = time.perf_counter() - t
use = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"iterator": sorted(made)[1], "train": train_s, "cpu": use.ru_utime + use.ru_stime,
                  "accuracy": result["eval_accuracy"]}))
"""


def _workload(workdir: str) -> tuple[str, str]:
    """tests/test_replicas.py's records and Transform output, and the tests' backbone."""
    from tests import helpers

    d = os.path.join(workdir, "replicas")
    if not os.path.isdir(os.path.join(d, "transform")):
        helpers.replicas_task(d)
    weights = os.path.join(workdir, "MobileNetV2_32.h5")
    if not os.path.exists(weights):
        helpers.pretrained_weights(workdir, epochs=8, per_class=120)
    return d, weights


def main(argv=None) -> int:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    common.quiet()
    runs = common.repeats(args)
    workdir = os.path.join(args.workdir, "multi_device_iterator")
    os.makedirs(workdir, exist_ok=True)
    d, weights = _workload(workdir)
    variants = ("before", "after")
    res = common.interleaved(
        {
            v: (lambda r, v=v: common.python_child(CHILD, [d, weights, v], f"2-replica child ({v})"))
            for v in variants
        },
        runs,
        say=common.say,
    )
    meds = {
        v: {k: common.median([r[k] for r in res[v]]) for k in ("iterator", "train", "cpu")} for v in variants
    }
    rows = [
        [
            v,
            meds[v]["iterator"],
            meds[v]["train"],
            meds[v]["cpu"],
            ", ".join(sorted({f"{r['accuracy']:.4f}" for r in res[v]})),
        ]
        for v in variants
    ]
    common.emit(common.header("The multi-device iterator: 2-replica training on images, before vs after"))
    common.emit(f"{runs} round(s), a fresh process per variant, order alternating; seconds are medians.\n")
    common.emit(
        common.table(["variant", "one iterator s", "train() s", "child CPU s", "eval accuracy"], rows)
    )
    common.emit()
    b, a = meds["before"], meds["after"]
    common.emit(
        common.table(
            ["after / before", "one iterator", "train()", "child CPU"],
            [["ratio", *(f"{a[k] / b[k]:.2f}x" for k in ("iterator", "train", "cpu"))]],
        )
    )
    common.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
