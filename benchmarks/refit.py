"""The head's refit on tf.data: a new build against the selection model restarted, in paired
fresh processes.

With early stopping (the Trainer's default) the head is first trained on the train split
less a validation slice, then, by default, refit: trained afresh on the whole split for
the best epoch count (trainer/head.py), and the result scored once on the eval split. On
features in memory (the feature cache) the refit restarted the selection model already. On
tf.data (`augment: true`, `feature_cache: false`, or a cache spilled to disk) it built a
new model, whose train step, and then whose evaluation step, Keras traced again: on the
image path, through the whole backbone. Now the selection model is restarted there too (its
initial trainable weights restored, its optimizer zeroed).

Workload: the demo's target task (digits 5-9, 32 px, as `imgpipe demo` ingests them) on
the demo's backbone (DenseNet121 pre-trained here on digits 0-4), `train()` on the image
path (`augment: true`) with early stopping and the refit, capped at `--epochs` (default 10,
patience 3: the Trainer's cap of 200 and patience 10 make a run 4-6 minutes here, and the
selection's length varies between runs: augmentation in a parallel map is not
deterministic). One fresh process per variant and round:

- before: a new build for the refit on tf.data, as it was;
- after: imgpipe's code (the selection model restarted).

Reported (medians): `train()`'s whole time; the refit's fit, its first epoch (which holds
any trace) and its later epochs; the final evaluation on the eval split (its first call
holds any trace); the model builds (`model.assemble`) and their time; and "after the
selection" = the refit's fit + the evaluation: what the change touches. Per round: the
selection's and the refit's epochs, and the eval accuracy.

    python -m benchmarks.refit              # 3 rounds
    python -m benchmarks.refit --quick      # 1 round
"""

from __future__ import annotations

import os
import sys

from benchmarks import common

BACKBONE = "DenseNet121"
SIZE = 32
PRETRAIN_EPOCHS = 15  # the demo's default

CHILD = (
    common.TIMED_FIT
    + r"""
import json, sys
import tensorflow_transform as tft
from benchmarks import common
from trainer import data, head, train
from trainer import model as model_lib
from trainer.config import TrainingConfig

target, transform, weights, variant, backbone, size, epochs, patience = sys.argv[1:9]
if variant == "before":
    head.DatasetData.fresh = lambda self, model, build, hp: build(hp)  # a new build for the refit
calls = {"build": [], "evaluate": []}
def timed(name, fn):
    def wrapped(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            calls[name].append(time.perf_counter() - t)
    return wrapped
model_lib.assemble = timed("build", model_lib.assemble)  # the image path's build of each head model
# fit's validation calls evaluate too; the last call is train()'s score on the eval split.
keras.Model.evaluate = timed("evaluate", keras.Model.evaluate)
params = TrainingConfig(
    backbone=backbone, weights=weights, image_size=int(size), augment=True,
    epochs=int(epochs), patience=int(patience),
)
timer = common.epoch_timer()
t = time.perf_counter()
result = train.train(
    data.list_files(target + "/train"), data.list_files(target + "/eval"),
    tft.TFTransformOutput(transform), params, verbose=0, callbacks=[timer],
)
whole = time.perf_counter() - t
refit = timer.seconds[result.epochs_run:]
print(json.dumps({
    "train": whole, "selection_epochs": result.epochs_run, "refit_epochs": len(refit),
    "refit_fit": fits[-1], "refit_first_epoch": refit[0],
    "refit_later_epoch": common.median(refit[1:]) if len(refit) > 1 else float("nan"),
    "evaluate": calls["evaluate"][-1], "builds": len(calls["build"]), "build": sum(calls["build"]),
    "after_selection": fits[-1] + calls["evaluate"][-1], "accuracy": result.eval_accuracy,
}))
"""
)

# --alternate: one process, one model restarted and new builds in turn, on the same batches.
ALTERNATE = r"""
import json, sys
import numpy as np
import tensorflow_transform as tft
import tf_keras as keras
from benchmarks import common
from trainer import data, tracing
from trainer import model as model_lib

target, transform, weights, backbone, size, rounds, epochs = sys.argv[1:8]
size, rounds, epochs = int(size), int(rounds), int(epochs)
tracing.install()  # as train() does
keras.utils.set_random_seed(0)
tfo = tft.TFTransformOutput(transform)
classes = data.class_names(tfo)
spec = data.InputSpec(batch_size=32, num_classes=len(classes), shuffle=True, augment=True, seed=0)
batches = data.make_dataset(data.list_files(target + "/train"), tfo, spec)
base = model_lib.build_backbone(backbone, weights, size)
base.trainable = False
def build():
    new_head = model_lib.build_head(int(base.output_shape[-1]), len(classes), 0.0, 0.0, None)
    m = model_lib.assemble(base, new_head, size)
    model_lib.compile_model(m, len(classes), 1e-3)
    return m
def epoch_seconds(m):
    timer = common.epoch_timer()
    model_lib.fit_batches(m, batches, epochs=epochs, verbose=0, callbacks=[timer])
    return timer.seconds
selected = build()
initial = [v.numpy() for v in selected.trainable_variables]
epoch_seconds(selected)  # the selection fit
out = {"restarted": [], "new build": []}
for _ in range(rounds):
    for v, value in zip(selected.trainable_variables, initial):
        v.assign(value)
    model_lib.reset_optimizer(selected.optimizer)
    out["restarted"].append(epoch_seconds(selected))
    out["new build"].append(epoch_seconds(build()))
print(json.dumps(out))
"""

VARIANTS = ("before", "after")
TIMES = (
    ("train", "train() s"),
    ("after_selection", "after the selection s"),
    ("refit_fit", "refit's fit s"),
    ("refit_first_epoch", "refit epoch 1 s"),
    ("refit_later_epoch", "refit later epochs s"),
    ("evaluate", "final evaluation s"),
    ("build", "model builds s"),
)


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10, help="the epoch cap (default 10)")
    p.add_argument("--patience", type=int, default=3, help="early stopping's patience (default 3)")
    p.add_argument(
        "--alternate",
        action="store_true",
        help="one process instead: the selection model restarted and a new build, in turn, "
        "each fitted --epochs epochs on the same batches (per-epoch seconds of each)",
    )
    args = p.parse_args(argv)
    common.quiet()
    runs = common.repeats(args)
    _, target = common.demo_tasks(args.workdir, SIZE)
    weights = common.source_backbone(args.workdir, BACKBONE, SIZE, PRETRAIN_EPOCHS)
    transform = os.path.join(args.workdir, "refit", "transform")
    common.analyze(target, transform, BACKBONE, SIZE)
    if args.alternate:
        return _alternate(target, transform, weights, runs, args.epochs)
    child_args = [BACKBONE, str(SIZE), str(args.epochs), str(args.patience)]

    def measure(variant: str) -> dict:
        return common.python_child(
            CHILD, [target, transform, weights, variant, *child_args], f"train child ({variant})"
        )

    res = common.interleaved({v: (lambda r, v=v: measure(v)) for v in VARIANTS}, runs, say=common.say)
    meds = {v: {k: common.median([r[k] for r in res[v]]) for k, _ in TIMES} for v in VARIANTS}
    rows = [
        [
            v,
            *(meds[v][k] for k, _ in TIMES),
            ", ".join(str(r["builds"]) for r in res[v]),
            ", ".join(f"{r['selection_epochs']}+{r['refit_epochs']}" for r in res[v]),
            ", ".join(f"{r['accuracy']:.4f}" for r in res[v]),
        ]
        for v in VARIANTS
    ]
    title = f"The head's refit on tf.data: a new build vs the restarted selection model, {BACKBONE} {SIZE}px"
    common.emit(common.header(title))
    common.emit(
        f"Medians over {runs} fresh process(es) per variant, interleaved (order alternating). Demo "
        f"target task, `augment: true` (the image path), epochs <= {args.epochs}, patience "
        f"{args.patience}, the Trainer's defaults otherwise.\n"
    )
    common.emit(
        common.table(
            [
                "variant",
                *(label for _, label in TIMES),
                "builds (per round)",
                "selection+refit epochs (per round)",
                "eval accuracy (per round)",
            ],
            rows,
        )
    )
    common.emit()
    b, a = meds["before"], meds["after"]
    common.emit(
        common.table(
            ["after / before", *(label.removesuffix(" s") for _, label in TIMES)],
            [["ratio", *(f"{a[k] / b[k]:.2f}x" if b[k] else "-" for k, _ in TIMES)]],
        )
    )
    common.emit()
    return 0


def _alternate(target: str, transform: str, weights: str, rounds: int, epochs: int) -> int:
    args = [target, transform, weights, BACKBONE, str(SIZE), str(rounds), str(epochs)]
    res = common.python_child(ALTERNATE, args, "alternating child")
    rows = []
    for kind, fits in res.items():
        for i, seconds in enumerate(fits, start=1):
            rows.append(
                [kind, i, seconds[0], common.median(seconds[1:]), " ".join(f"{x:.2f}" for x in seconds)]
            )
    common.emit(
        common.header(f"The refit's model in one process: restarted vs a new build, {BACKBONE} {SIZE}px")
    )
    common.emit(
        f"One process: the selection model fitted {epochs} epochs, then {rounds} rounds of (that model "
        f"restarted, a new build), each fitted {epochs} epochs on the same image batches (`augment: true`).\n"
    )
    common.emit(
        common.table(["model", "round", "epoch 1 s", "later epochs s (median)", "every epoch s"], rows)
    )
    common.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
