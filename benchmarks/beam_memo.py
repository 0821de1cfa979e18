"""Beam's fixed cost per job: `imgpipe run` with and without pipeline/beam_memo.py, paired.

Each round runs two fresh processes, one with the memo (the default) and one
with IMGPIPE_BEAM_MEMO=0, in alternating order; with `--without PART ...`, one
with the whole memo and one without those parts only. Each process makes, in a
fresh pipeline home:

1. a first run of the demo's target task (every component executes: four
   Beam jobs, ImportExampleGen, StatisticsGen, Transform and the Evaluator);
2. a run on new eval data (the eval split rewritten without its last 10
   records: ImportExampleGen and everything after it run again, and the
   Evaluator's TFMA job evaluates the candidate and the blessed baseline,
   since nothing measured the baseline on these examples).

Reported: the run's wall time, each Beam component's seconds (ML Metadata)
and the seconds spent inside Beam's `userstate.get_dofn_specs` (timed in the
child process, memo or not), medians over rounds and the memo/no-memo ratio of
the medians.

    python -m benchmarks.beam_memo --backbone DenseNet121       # the demo's task, 3 rounds
    python -m benchmarks.beam_memo --backbone MobileNetV2       # the tests' backbone
    python -m benchmarks.beam_memo --without dofn_specs          # parts against the rest
"""

from __future__ import annotations

import os
import sys
import time

from benchmarks import common
from pipeline import beam_memo

BEAM_NODES = ("ImportExampleGen", "StatisticsGen", "Transform", "Evaluator")


SPECS = "get_dofn_specs"  # the seconds inside Beam's userstate.get_dofn_specs, memo or not


def _time_dofn_specs() -> list[float]:
    """Count the seconds spent in userstate.get_dofn_specs from when the local runner installs the memo."""
    spent = [0.0]
    install = beam_memo.install

    def timed_install(parts=None):
        installed = install(parts)
        from apache_beam.transforms import userstate

        inner = userstate.get_dofn_specs
        if not getattr(inner, "_bench_timed", False):

            def get_dofn_specs(dofn):
                t0 = time.perf_counter()
                try:
                    return inner(dofn)
                finally:
                    spent[0] += time.perf_counter() - t0

            get_dofn_specs._bench_timed = True
            userstate.get_dofn_specs = get_dofn_specs
        return installed

    beam_memo.install = timed_install
    return spent


def child(args) -> dict:
    spent = _time_dofn_specs()

    def record(summary, wall: float, comps: dict) -> dict:
        seconds, spent[0] = spent[0], 0.0
        return {
            "whole run": wall,
            **{n: comps[n][1] if n in comps else float("nan") for n in BEAM_NODES},
            SPECS: seconds,
            "accuracy": summary.accuracy,
            "baseline": summary.gate["baseline"] if summary.gate else None,
        }

    return common.first_and_new_eval_runs(args, record)


def main(argv=None) -> int:
    p = common.demo_run_parser(__doc__.splitlines()[0])
    p.add_argument(
        "--without",
        nargs="+",
        choices=beam_memo.PARTS,
        metavar="PART",
        help=f"compare the whole memo with the memo without these parts ({', '.join(beam_memo.PARTS)}; "
        "default: with and without the whole memo)",
    )
    args = p.parse_args(argv)
    common.quiet()
    if args.child:
        common.write_child_result(args.home, child(args))
        return 0
    rest = [x for x in beam_memo.PARTS if x not in (args.without or ())]
    without = ",".join(rest) if args.without and rest else "0"
    variants = {
        "memo": ("memo1", [], dict(os.environ, IMGPIPE_BEAM_MEMO="1")),
        "no memo": ("memo0", [], dict(os.environ, IMGPIPE_BEAM_MEMO=without)),
    }
    runs, results = common.paired_demo_runs(args, "benchmarks.beam_memo", variants)
    what = f"the memo without its {' and '.join(args.without)} parts" if args.without else "without the memo"
    common.emit(
        common.header(
            f"Beam's fixed cost per job: `imgpipe run` with the memo and {what}, {args.backbone} {args.image_size}px"
        )
    )
    common.emit(
        f"Demo target task, 30 head epochs; {runs} rounds, each a fresh process per variant, order "
        f'alternating; "no memo" is IMGPIPE_BEAM_MEMO={without}. Seconds: medians (per round in '
        "brackets); ratio = memo / no memo.\n"
    )
    cells = [(kind, what) for kind in common.RUN_KINDS for what in ("whole run", *BEAM_NODES, SPECS)]
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
