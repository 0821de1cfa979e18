"""What the gate's per-class precision costs: TFMA's confusion matrix plot in the Evaluator.

The Evaluator's TFMA run counts every eval example's (true, top-1) class with
`MultiClassConfusionMatrixPlot` (gate.json's `per_class_precision`, `--min-class-precision`).
Each round runs two fresh processes, in alternating order: "with" (imgpipe's code) and
"without" (the same code with the plot left out of the eval_config). Each makes, in a fresh
pipeline home, a first run of the demo's target task and a run on new eval data (both train;
the second's Evaluator also evaluates the first model as its baseline). Reported: medians of
the whole run and of the Evaluator's seconds (ML Metadata), the ratio of the medians, and
whether the gate's numbers are the same.

    python -m benchmarks.precision_cost                          # DenseNet121, 3 rounds
    python -m benchmarks.precision_cost --backbone MobileNetV2   # the tests' backbone
"""

from __future__ import annotations

import sys

from benchmarks import common

VARIANTS = {"with": "1", "without": "0"}


def child(args) -> dict:
    from components import evaluator
    from components.gate import CONFUSION_CLASS

    if args.plot == "0":
        full = evaluator.eval_config

        def without_plot(gate):
            cfg = full(gate)
            for spec in cfg.metrics_specs:
                kept = [m for m in spec.metrics if m.class_name != CONFUSION_CLASS]
                del spec.metrics[:]
                spec.metrics.extend(kept)
            return cfg

        evaluator.eval_config = without_plot

    return common.first_and_new_eval_runs(args, common.evaluator_run_record)


def main(argv=None) -> int:
    if common.paired_evaluator_main(
        argv,
        __doc__.splitlines()[0],
        "benchmarks.precision_cost",
        child,
        "plot",
        VARIANTS,
        "The gate's precision: TFMA's confusion matrix plot",
        "without",
        "with",
    ):
        common.emit("")
    return 0


if __name__ == "__main__":
    sys.exit(main())
