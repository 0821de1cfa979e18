"""One trace per fit: backbone pre-training with and without model.prepare_fit and the traced
BatchNorm recalibration, in paired fresh processes.

Keras's train step creates the optimizer's slots and the compiled metrics' state on its
first call, and a `tf.function` that creates variables on its first call is traced a
second time; `trainer.model.prepare_fit` creates them before `fit`, so the step is traced
once. `trainer.pretrain.recalibrate_batchnorm` ran the backbone eagerly once per batch;
it is now one traced function. The "before" variant is the same code with prepare_fit
turned off and the former eager recalibration (kept below as the reference), in the same
round as the "after" variant, order alternating.

Workloads (`pretrain_backbone`, all layers trained, the project's own source task):
- demo: the demo's backbone, DenseNet121 at 32 px on the demo's source task (digits 0-4,
  as `imgpipe demo` ingests them), `imgpipe demo`'s 15 pre-training epochs;
- tests: the tests' backbone, MobileNetV2 at 32 px on 600 digits 0-4 (tests/helpers.py),
  8 epochs, as tests/conftest.py's session fixture makes it.

Reported per variant: the whole pre-training, its fit, the recalibration (medians), the
source eval accuracy, and the before/after ratio of the medians.

    python -m benchmarks.fit_trace                 # both workloads, 3 rounds
    python -m benchmarks.fit_trace --quick         # the tests' workload, 1 round
    python -m benchmarks.fit_trace --compare optimizer   # the pre-training's fused Adam vs tf_keras's default
"""

from __future__ import annotations

import os
import sys

from benchmarks import common

CHILD = (
    common.TIMED_FIT
    + r"""
import json, sys, time
import tf_keras as keras
from trainer import model as model_lib
from trainer import pretrain

data_dir, backbone, out, epochs, variant = sys.argv[1:6]

def eager_recalibration(backbone_model, images):
    # The former recalibration: the backbone called eagerly on each batch, momentum (n-1)/n.
    bns = [m for m in backbone_model.submodules if isinstance(m, keras.layers.BatchNormalization)]
    saved = [bn.momentum for bn in bns]
    n = 0
    try:
        for n, (x, _) in enumerate(images, start=1):
            for bn in bns:
                bn.momentum = (n - 1) / n
            backbone_model(x, training=True)
    finally:
        for bn, m in zip(bns, saved):
            bn.momentum = m
    return n

if variant == "before":
    model_lib.prepare_fit = lambda model, batches: False  # what fit_batches calls
    recalibrate = eager_recalibration
else:
    recalibrate = pretrain.recalibrate_batchnorm
if variant == "python adam":  # tf_keras's default Adam in place of the fused one
    pretrain.optimizer = lambda learning_rate: keras.optimizers.Adam(learning_rate=learning_rate)
timed = {}
def timed_recalibration(backbone_model, images):
    t = time.perf_counter()
    n = recalibrate(backbone_model, images)
    timed["recalibrate"] = time.perf_counter() - t
    return n
pretrain.recalibrate_batchnorm = timed_recalibration
t = time.perf_counter()
report = pretrain.pretrain_backbone(data_dir, backbone, out, image_size=32, epochs=int(epochs), verbose=0)
print(json.dumps({"pretrain": time.perf_counter() - t, "fit": sum(fits),
                  "recalibrate": timed["recalibrate"], "accuracy": report["source_eval_accuracy"]}))
"""
)

# --compare: which variants run (the first is the one compared against, the second imgpipe's code)
COMPARISONS = {"trace": ("before", "after"), "optimizer": ("python adam", "fused adam")}


def _tests_source(workdir: str) -> str:
    """The tests' source task: 120 digits per class 0-4 (tests/helpers.py's pretrained_weights)."""
    from tests import helpers

    out = os.path.join(workdir, "tests_source")
    if not os.path.isdir(os.path.join(out, "train")):
        helpers.write_split_dataset(
            out, helpers.digit_images((0, 1, 2, 3, 4), per_class=120, size=32, seed=1)
        )
    return out


def measure(data_dir: str, backbone: str, epochs: int, variant: str, workdir: str) -> dict[str, float]:
    out = os.path.join(workdir, f"{backbone}_{variant}.h5")
    return common.python_child(
        CHILD, [data_dir, backbone, out, str(epochs), variant], f"pre-training child ({backbone}, {variant})"
    )


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--workloads", nargs="+", choices=("demo", "tests"), default=None)
    p.add_argument(
        "--compare",
        choices=tuple(COMPARISONS),
        default="trace",
        help="trace: prepare_fit and the traced recalibration off/on (default); "
        "optimizer: tf_keras's default Adam vs the pre-training's fused Adam",
    )
    args = p.parse_args(argv)
    variants = COMPARISONS[args.compare]
    common.quiet()
    runs = common.repeats(args)
    workdir = os.path.join(args.workdir, "fit_trace")
    os.makedirs(workdir, exist_ok=True)
    chosen = args.workloads or (["tests"] if args.quick else ["demo", "tests"])
    workloads = {}
    if "demo" in chosen:
        source, _ = common.demo_tasks(args.workdir, 32)
        workloads["demo: DenseNet121 32px, 15 epochs"] = (source, "DenseNet121", 15)
    if "tests" in chosen:
        workloads["tests: MobileNetV2 32px, 8 epochs"] = (_tests_source(workdir), "MobileNetV2", 8)
    res = common.interleaved(
        {
            f"{name} | {variant}": (lambda r, w=w, v=variant: measure(*w, v, workdir))
            for name, w in workloads.items()
            for variant in variants
        },
        runs,
        say=common.say,
    )
    rows, ratios = [], []
    for name in workloads:
        meds = {}
        for variant in variants:
            rs = res[f"{name} | {variant}"]
            meds[variant] = {k: common.median([r[k] for r in rs]) for k in rs[0]}
            m = meds[variant]
            accs = sorted({round(r["accuracy"], 4) for r in rs})
            rows.append([name, variant, m["pretrain"], m["fit"], m["recalibrate"], ", ".join(map(str, accs))])
        b, a = (meds[v] for v in variants)
        ratios.append([name, *(f"{a[k] / b[k]:.2f}x" for k in ("pretrain", "fit", "recalibrate"))])
    what = {
        "trace": "before = prepare_fit off and the eager recalibration; after = imgpipe's code.",
        "optimizer": "python adam = tf_keras's default Adam; fused adam = imgpipe's code (its legacy Adam).",
    }[args.compare]
    common.emit(common.header(f"One trace per fit: backbone pre-training, {' vs '.join(variants)}"))
    common.emit(
        f"Median seconds over {runs} fresh process(es) per variant, interleaved (order alternating). {what}\n"
    )
    common.emit(
        common.table(
            ["workload", "variant", "pre-training s", "fit s", "recalibration s", "source eval accuracy"],
            rows,
        )
    )
    common.emit()
    common.emit(
        common.table(
            [f"workload ({variants[1]} / {variants[0]})", "pre-training", "fit", "recalibration"], ratios
        )
    )
    common.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
