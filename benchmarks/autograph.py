"""AutoGraph in the project's own traced functions: code A (a git revision) vs B (this checkout).

AutoGraph rewrites the Python source of every function a `tf.function` or a tf.data `map`
traces, unless told not to. The ingest's image check, the Trainer's input function and the
export's signatures branch on Python values only, so the rewrite changes nothing in their
graphs, but it was paid in every process that traced them. Each round runs, in fresh
processes and in rotating order, each code version's:

- `imgpipe ingest` of the demo's target images (896 PNGs): the whole process;
- `imgpipe run`, a first run of the demo's target task in a new home: the whole process, and
  the Trainer's and the Evaluator's component seconds (ML Metadata).

Code A is a git revision (`--before`, default HEAD; extracted with `git archive`), B this
checkout; both run with this checkout's virtualenv, each process from its tree's root. The
two versions' gate accuracies are printed: the change must not move them.

    python -m benchmarks.autograph --before <rev>           # 3 rounds (~12 min here)
    python -m benchmarks.autograph --before <rev> --quick   # 1 round
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from benchmarks import common
from benchmarks.fixed_costs import _source_tree

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _process(tree: str, args: list[str], log: str) -> tuple[float, dict]:
    """`python -m imgpipe args` from `tree` (its code first on the path): wall seconds and
    the JSON object its stdout holds."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = tree
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as err:
        proc = subprocess.run(
            [sys.executable, "-m", "imgpipe", *args],
            cwd=tree,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"imgpipe {args[0]} from {tree} exited {proc.returncode}; see {log}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--before", default="HEAD", help="git revision for code A (default HEAD)")
    p.add_argument("--pretrain-epochs", type=int, default=10)
    args = p.parse_args(argv)
    common.quiet()
    from benchmarks.pipeline import component_seconds
    from imgpipe.demo import steps as demo

    _, target = common.demo_tasks(args.workdir, 32)
    images = os.path.join(args.workdir, "digits32", "images", "target")
    weights = common.source_backbone(args.workdir, "DenseNet121", 32, args.pretrain_epochs)
    trees = {"A": _source_tree(args.workdir, args.before), "B": HERE}
    work = os.path.join(args.workdir, "autograph")
    os.makedirs(work, exist_ok=True)

    def variant(name: str):
        def run(r: int) -> dict:
            out = os.path.join(work, f"{name}{r}")
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
            wall, report = _process(
                trees[name], ["ingest", "--images", images, "--out", f"{out}/records"], f"{out}/ingest.log"
            )
            result = {"ingest process": wall, "images": sum(report["totals"].values())}
            cfg = demo.target_config(out, target, "DenseNet121", weights, 32, 30, 0.5)
            cfg.save(f"{out}/run.yaml")
            run_args = ["run", "--config", f"{out}/run.yaml"]
            wall, summary = _process(trees[name], run_args, f"{out}/run.log")
            comps = component_seconds(cfg)
            result |= {
                "run process": wall,
                "Trainer": comps["Trainer"][1],
                "Evaluator": comps["Evaluator"][1],
            }
            result["accuracy"] = summary["gate"]["accuracy"]
            return result

        return run

    runs = common.repeats(args)
    results = common.interleaved({v: variant(v) for v in trees}, runs, common.say)
    steps = ["ingest process", "run process", "Trainer", "Evaluator"]
    rows = []
    for step in steps:
        a, b = ([x[step] for x in results[v]] for v in ("A", "B"))
        ratios = [y / x for x, y in zip(a, b, strict=True) if x]
        rows.append(
            [
                step,
                common.median(a),
                " ".join(f"{v:.1f}" for v in a),
                common.median(b),
                " ".join(f"{v:.1f}" for v in b),
                f"{common.median(ratios):.2f}x",
            ]
        )
    common.emit(
        common.header(f"AutoGraph: A = {args.before}, B = this checkout, DenseNet121 32px, demo task")
    )
    common.emit(
        f"{runs} rounds, a fresh process per step and version, order rotating; seconds: medians "
        "(per round in brackets); ratio: median of the per-round B/A.\n"
    )
    common.emit(common.table(["step", "A s", "(rounds)", "B s", "(rounds)", "B/A"], rows))
    common.emit(
        f"\ngate accuracy: A {sorted({x['accuracy'] for x in results['A']})}, "
        f"B {sorted({x['accuracy'] for x in results['B']})}"
    )


if __name__ == "__main__":
    main()
