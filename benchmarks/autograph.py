"""AutoGraph in the project's own traced functions: code A (a git revision) vs B (this checkout).

AutoGraph rewrites the Python source of every function a `tf.function` or a tf.data `map`
traces, unless told not to. The ingest's image check, the Trainer's input function and the
export's signatures branch on Python values only, so the rewrite changes nothing in their
graphs, but every process that traced them paid for it. Each round runs, in fresh processes
and in rotating order, each code version's:

- the three traced steps, timed one after the other in one process after TensorFlow's
  import, with `trainer.tracing`'s rules installed as in the Trainer: the ingest check of
  one demo image (its first call traces it), the training input function's first batch of
  the demo's eval split (`make_dataset`, with the Transform graph), and the export of a
  MobileNetV2 32px classifier with its four signatures;
- `imgpipe ingest` of the demo's target images (896 PNGs), the whole process.

Code A is a git revision (`--before`, default the last one before the change; extracted
with `git archive`), B this checkout; both run with this checkout's virtualenv, each
process from its tree's root with that tree first on the path. Both versions' checks and
batches are compared.

    python -m benchmarks.autograph            # 5 rounds (~6 min here)
    python -m benchmarks.autograph --quick    # 1 round
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time

from benchmarks import common
from benchmarks.fixed_costs import _source_tree

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEFORE = "ad843c7"  # the last revision whose traced functions AutoGraph converted


CHILD = r"""
import glob, json, os, sys, time
import tensorflow as tf
import tensorflow_transform as tft
from imgpipe.ingest.images import check_image
from trainer import data, export
from trainer import model as model_lib
from trainer import tracing

tracing.install()  # as the Trainer's entry points do: tf_keras and TFT are never converted
image, records, transform, out = sys.argv[1:5]
times = {}
t0 = time.perf_counter()
verdict = check_image(open(image, "rb").read())
times["ingest check"] = time.perf_counter() - t0
tfo = tft.TFTransformOutput(transform)
classes = data.class_names(tfo)
t0 = time.perf_counter()
x, y = next(iter(data.make_dataset(records, tfo, data.InputSpec(batch_size=32, num_classes=len(classes)))))
times["input first batch"] = time.perf_counter() - t0
model = model_lib.build_model("MobileNetV2", "none", 32, len(classes), dropout=0.0)
t0 = time.perf_counter()
export.export_serving_model(model, tfo, classes, out)
times["export"] = time.perf_counter() - t0
times["check"] = str(verdict)
times["batch"] = float(tf.reduce_sum(x).numpy())
print(json.dumps(times))
"""


def _child(tree: str, args: list[str], log: str) -> tuple[float, dict]:
    """`python <args>` from `tree` (its code first on the path): wall seconds and the JSON
    object its stdout ends with."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = tree
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as err:
        proc = subprocess.run(
            [sys.executable, *args], cwd=tree, env=env, stdout=subprocess.PIPE, stderr=err, text=True
        )
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{args[:3]} from {tree} exited {proc.returncode}; see {log}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--before", default=BEFORE, help=f"git revision for code A (default {BEFORE})")
    args = p.parse_args(argv)
    common.quiet()

    _, target = common.demo_tasks(args.workdir, 32)
    images = os.path.join(args.workdir, "digits32", "images", "target")
    image = sorted(glob.glob(os.path.join(images, "*", "*.png")))[0]
    transform = os.path.join(args.workdir, "autograph", "transform")
    common.analyze(target, transform, "MobileNetV2", 32)
    eval_records = common.split_files(target, "eval")
    trees = {"A": _source_tree(args.workdir, args.before), "B": HERE}
    work = os.path.join(args.workdir, "autograph")

    def variant(name: str):
        def run(r: int) -> dict:
            out = os.path.join(work, f"{name}{r}")
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
            _, result = _child(
                trees[name],
                ["-c", CHILD, image, ",".join(eval_records), transform, f"{out}/export"],
                f"{out}/steps.log",
            )
            ingest = ["-m", "imgpipe", "ingest", "--images", images, "--out", f"{out}/records"]
            result["ingest process"], _ = _child(trees[name], ingest, f"{out}/ingest.log")
            return result

        return run

    runs = common.repeats(args, default=5)
    results = common.interleaved({v: variant(v) for v in trees}, runs, common.say)
    rows = []
    for step in ("ingest check", "input first batch", "export", "ingest process"):
        a, b = ([x[step] for x in results[v]] for v in ("A", "B"))
        ratios = [y / x for x, y in zip(a, b, strict=True) if x]
        rows.append(
            [
                step,
                common.median(a),
                " ".join(f"{v:.2f}" for v in a),
                common.median(b),
                " ".join(f"{v:.2f}" for v in b),
                f"{common.median(ratios):.2f}x",
            ]
        )
    common.emit(common.header(f"AutoGraph: A = {args.before}, B = this checkout"))
    common.emit(
        f"{runs} rounds, a fresh process per version and round, order rotating; seconds: medians "
        "(per round); ratio: median of the per-round B/A.\n"
    )
    common.emit(common.table(["step", "A s", "(rounds)", "B s", "(rounds)", "B/A"], rows))
    for key in ("check", "batch"):
        common.emit(
            f"\n{key}: A {sorted({x[key] for x in results['A']})}, B {sorted({x[key] for x in results['B']})}"
        )


if __name__ == "__main__":
    main()
