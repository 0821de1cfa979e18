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

import os
import sys

from benchmarks import common

BEAM_NODES = ("ImportExampleGen", "StatisticsGen", "Transform", "Evaluator")


def child(args) -> dict:
    def record(summary, wall: float, comps: dict) -> dict:
        return {
            "wall": wall,
            "components": {n: comps[n][1] for n in BEAM_NODES if n in comps},
            "accuracy": summary.accuracy,
            "baseline": summary.gate["baseline"] if summary.gate else None,
        }

    return common.first_and_new_eval_runs(args, record)


def _values(rounds: list[dict], kind: str, what: str) -> list[float]:
    return [
        x[kind]["wall"] if what == "wall" else x[kind]["components"].get(what, float("nan")) for x in rounds
    ]


def main(argv=None) -> int:
    p = common.demo_run_parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    common.quiet()
    if args.child:
        common.write_child_result(args.home, child(args))
        return 0
    runs = common.repeats(args)
    target, weights, work = common.demo_run_setup(args, "beam_memo")

    def variant(memo: str):
        def run(r: int) -> dict:
            home = os.path.join(work, f"memo{memo}_round{r}")
            env = dict(os.environ, IMGPIPE_BEAM_MEMO=memo)
            return common.demo_run_child("benchmarks.beam_memo", args, home, target, weights, env=env)

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
