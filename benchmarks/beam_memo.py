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
            "whole run": wall,
            **{n: comps[n][1] if n in comps else float("nan") for n in BEAM_NODES},
            "accuracy": summary.accuracy,
            "baseline": summary.gate["baseline"] if summary.gate else None,
        }

    return common.first_and_new_eval_runs(args, record)


def main(argv=None) -> int:
    p = common.demo_run_parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    common.quiet()
    if args.child:
        common.write_child_result(args.home, child(args))
        return 0
    variants = {
        "memo": ("memo1", [], dict(os.environ, IMGPIPE_BEAM_MEMO="1")),
        "no memo": ("memo0", [], dict(os.environ, IMGPIPE_BEAM_MEMO="0")),
    }
    runs, results = common.paired_demo_runs(args, "benchmarks.beam_memo", variants)
    common.emit(
        common.header(
            f"Beam's fixed cost per job: `imgpipe run` with and without the memo, {args.backbone} {args.image_size}px"
        )
    )
    common.emit(
        f"Demo target task, 30 head epochs; {runs} rounds, each a fresh process per variant, order "
        "alternating. Seconds: medians (per round in brackets); ratio = memo / no memo.\n"
    )
    cells = [(kind, what) for kind in common.RUN_KINDS for what in ("whole run", *BEAM_NODES)]
    rows = common.paired_rows(results, "no memo", "memo", cells)
    common.emit(
        common.table(["run", "step", "no memo s", "per round", "memo s", "per round", "memo / no memo"], rows)
    )
    same = {
        kind: sorted({round(x[kind]["accuracy"], 4) for v in results.values() for x in v})
        for kind in common.RUN_KINDS
    }
    baselines = sorted(
        {str((x["new eval data"]["baseline"] or {}).get("reused_from")) for v in results.values() for x in v}
    )
    common.emit(f"\nAccuracy per run kind, all processes: {same}; baseline reused_from: {baselines}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
