"""Beam's fixed cost per job: `imgpipe run` with and without pipeline/beam_memo.py, paired.

Each round runs two fresh processes, one with the memo (the default) and one
with IMGPIPE_BEAM_MEMO=0, in alternating order. Each process makes, in a
fresh pipeline home:

1. a first run of the demo's target task (every component executes: four
   Beam jobs, ImportExampleGen, StatisticsGen, Transform and the Evaluator);
2. a run on new eval data (the eval split rewritten without its last 10
   records: ImportExampleGen and everything after it run again, and the
   Evaluator's TFMA job evaluates the candidate and the blessed baseline,
   since nothing measured the baseline on these examples).

Reported: the run's wall time and each Beam component's seconds (ML
Metadata), medians over rounds and the memo/no-memo ratio of the medians.

    python -m benchmarks.beam_memo --backbone DenseNet121       # the demo's task, 3 rounds
    python -m benchmarks.beam_memo --backbone MobileNetV2       # the tests' backbone
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from benchmarks import common

BEAM_NODES = ("ImportExampleGen", "StatisticsGen", "Transform", "Evaluator")


def _new_eval_data(target: str, out: str) -> str:
    """A copy of `target` whose eval split lost its last 10 records (a new eval artifact)."""
    import tensorflow as tf

    from trainer import data

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(os.path.join(target, "train"), os.path.join(out, "train"))
    records = list(data.raw_examples(os.path.join(target, "eval")))
    os.makedirs(os.path.join(out, "eval"))
    with tf.io.TFRecordWriter(os.path.join(out, "eval", "eval-00000-of-00001.tfrecord")) as w:
        for r in records[:-10]:
            w.write(r.numpy())
    return out


def child(args) -> dict:
    from benchmarks.pipeline import component_seconds
    from imgpipe.demo import steps as demo
    from imgpipe.orchestration.local import run_local

    cfg = demo.target_config(args.home, args.target, args.backbone, args.weights, args.image_size, 30, 0.5)
    shutil.rmtree(args.home, ignore_errors=True)
    new_eval = _new_eval_data(args.target, os.path.join(args.home, "new_eval"))
    out = {}
    for kind, config in (("first run", cfg), ("new eval data", cfg.replace(data_dir=new_eval))):
        t0 = time.perf_counter()
        summary = run_local(config, progress=lambda _m: None)
        wall = time.perf_counter() - t0
        comps = component_seconds(config)
        out[kind] = {
            "wall": wall,
            "components": {n: comps[n][1] for n in BEAM_NODES if n in comps},
            "accuracy": summary.accuracy,
            "baseline": summary.gate["baseline"] if summary.gate else None,
        }
    return out


def _values(rounds: list[dict], kind: str, what: str) -> list[float]:
    return [
        x[kind]["wall"] if what == "wall" else x[kind]["components"].get(what, float("nan")) for x in rounds
    ]


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default="DenseNet121")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--home")
    p.add_argument("--target")
    p.add_argument("--weights")
    args = p.parse_args(argv)
    common.quiet()
    if args.child:
        result = child(args)
        with open(os.path.join(args.home, "..", f"{os.path.basename(args.home)}.json"), "w") as f:
            json.dump(result, f)
        return 0
    runs = common.repeats(args)
    _, target = common.demo_tasks(args.workdir, args.image_size)
    weights = common.source_backbone(args.workdir, args.backbone, args.image_size, args.pretrain_epochs)
    work = os.path.join(args.workdir, f"beam_memo_{args.backbone}_{args.image_size}")
    os.makedirs(work, exist_ok=True)

    def variant(memo: str):
        def run(r: int) -> dict:
            home = os.path.join(work, f"memo{memo}_round{r}")
            env = dict(os.environ, IMGPIPE_BEAM_MEMO=memo)
            cmd = [sys.executable, "-m", "benchmarks.beam_memo", "--child", "--workdir", args.workdir]
            cmd += ["--home", home, "--target", target, "--weights", weights]
            cmd += ["--backbone", args.backbone, "--image-size", str(args.image_size)]
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            with open(os.path.join(work, f"memo{memo}_round{r}.json"), encoding="utf-8") as f:
                return json.load(f)

        return run

    results = common.interleaved({"memo": variant("1"), "no memo": variant("0")}, runs, common.say)
    common.emit(
        common.header(
            f"Beam's fixed cost per job: `imgpipe run` with and without the memo, {args.backbone} {args.image_size}px"
        )
    )
    common.emit(
        f"Demo target task, 30 head epochs; {runs} rounds, each a fresh process per variant, order "
        "alternating. Seconds: medians (per round in brackets); ratio = memo / no memo.\n"
    )
    rows = []
    for kind in ("first run", "new eval data"):
        for what in ("wall", *BEAM_NODES):
            a, b = (_values(results[name], kind, what) for name in ("memo", "no memo"))
            rows.append(
                [
                    kind,
                    "whole run" if what == "wall" else what,
                    common.median(b),
                    " ".join(f"{v:.1f}" for v in b),
                    common.median(a),
                    " ".join(f"{v:.1f}" for v in a),
                    common.median(a) / common.median(b),
                ]
            )
    common.emit(
        common.table(["run", "step", "no memo s", "per round", "memo s", "per round", "memo / no memo"], rows)
    )
    same = {
        kind: sorted({round(x[kind]["accuracy"], 4) for v in results.values() for x in v})
        for kind in ("first run", "new eval data")
    }
    baselines = sorted(
        {str((x["new eval data"]["baseline"] or {}).get("reused_from")) for v in results.values() for x in v}
    )
    common.emit(f"\nAccuracy per run kind, all processes: {same}; baseline reused_from: {baselines}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
