"""The Evaluator's batches: fixed `eval_batch_size` records per model call vs Beam's adaptive batches.

TFX's Evaluator reads the eval split with `tfxio.BeamSource()`, whose record batches Beam
sizes adaptively from one record up, and TFMA calls each model once per batch: ~18 calls
per model on the demo's 179 eval images. imgpipe's Evaluator now reads fixed batches of
`eval_batch_size` (default 128) records (components/evaluator.py `fixed_record_batches`).

Each round runs two fresh processes, in alternating order: "fixed" (imgpipe's code) and
"adaptive" (the same code with `fixed_record_batches` doing nothing). Each makes, in a fresh
pipeline home, a first run of the demo's target task and a run on new eval data (both train;
the second's Evaluator also evaluates the first model as its baseline). Reported: medians of
the whole run and of the Evaluator's seconds (ML Metadata), the ratio of the medians, and the
gate's numbers (the same in both variants, or the table says which differ).

    python -m benchmarks.evaluator_batches                          # DenseNet121, 3 rounds
    python -m benchmarks.evaluator_batches --backbone MobileNetV2   # the tests' backbone
"""

from __future__ import annotations

import contextlib
import sys

from benchmarks import common

VARIANTS = {"fixed": "1", "adaptive": "0"}


def child(args) -> dict:
    # Imported in both variants before the runs are timed (the patch below needs it), so
    # neither first run pays its import inside the timer.
    from components import evaluator

    if args.fixed == "0":
        evaluator.fixed_record_batches = lambda size: contextlib.nullcontext()

    return common.first_and_new_eval_runs(args, common.evaluator_run_record)


def main(argv=None) -> int:
    if common.paired_evaluator_main(
        argv,
        __doc__.splitlines()[0],
        "benchmarks.evaluator_batches",
        child,
        "fixed",
        VARIANTS,
        "The Evaluator's batches: fixed vs adaptive",
        "adaptive",
        "fixed",
    ):
        common.emit("")
    return 0


if __name__ == "__main__":
    sys.exit(main())
