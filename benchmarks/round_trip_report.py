"""Two per-run costs removed: Beam's runner-API round trip, and the report's second model load.

- Beam's `Pipeline.run` rebuilds a batch pipeline from its runner API proto before running
  it (every DoFn pickled and unpickled once more) unless the runner's class is called
  `SwitchingDirectRunner`, the name of Beam's own DirectRunner. imgpipe's local runner
  (pipeline/local_beam.py) had another name, so each of a run's Beam jobs (ExampleGen,
  StatisticsGen, Transform, the Evaluator's TFMA job) paid it.
- The run's report (imgpipe/report) loaded the trained SavedModel once more for its
  predictions; it now runs the object the Evaluator's TFMA loaded (components/loaded_models.py).

Each round runs two fresh processes, in alternating order: "now" (imgpipe's code) and
"before" (the same code with the runner renamed back and the report given no loaded model).
Each makes, in a fresh pipeline home, a first run of the demo's target task and a run on new
eval data (both train; the second's Evaluator also measures the first model as its baseline).
Reported: medians of the whole run, of each Beam component's seconds (ML Metadata) and of the
report's seconds, and the ratio of the medians.

    python -m benchmarks.round_trip_report                          # DenseNet121, 3 rounds
    python -m benchmarks.round_trip_report --backbone MobileNetV2   # the tests' backbone
"""

from __future__ import annotations

import sys
import time

from benchmarks import common

NODES = ("ImportExampleGen", "StatisticsGen", "Transform", "Evaluator")
VARIANTS = {"now": "0", "before": "1"}


def child(args) -> dict:
    from imgpipe.orchestration import local

    report_seconds = []
    attach = local.attach_report

    def timed_attach(config, summary, loaded_model=None):
        started = time.perf_counter()
        attach(config, summary, loaded_model=None if args.before == "1" else loaded_model)
        report_seconds.append(time.perf_counter() - started)

    local.attach_report = timed_attach
    if args.before == "1":
        from pipeline import local_beam

        local_beam.SwitchingDirectRunner.__name__ = "DirectRunner"  # Beam's round trip again

    def record(summary, wall: float, comps: dict) -> dict:
        return {
            "whole run": wall,
            **common.node_seconds(comps, NODES),
            "report": report_seconds[-1],
            "blessed": summary.blessed,
            "accuracy": summary.accuracy,
        }

    return common.first_and_new_eval_runs(args, record)


def main(argv=None) -> int:
    paired = common.paired_demo_main(
        argv, __doc__.splitlines()[0], "benchmarks.round_trip_report", child, "before", VARIANTS
    )
    if paired is None:
        return 0
    args, runs, results = paired
    common.emit(
        common.header(f"Beam's round trip and the report's model load, {args.backbone} {args.image_size}px")
    )
    common.emit(common.paired_intro(runs, "now / before"))
    common.emit(common.paired_table(results, "before", "now", ("whole run", *NODES, "report")))
    accs, blessed = common.distinct(results, "accuracy", 4), common.distinct(results, "blessed")
    common.emit(f"\naccuracies over all processes: {accs}; blessed: {blessed}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
