"""`imgpipe run` with and without trainer/shape_inference.py's static-shape build, paired.

Each round runs two fresh processes, one with IMGPIPE_STATIC_SHAPES=1 (the default) and
one with IMGPIPE_STATIC_SHAPES=0 (every model built by tf_keras's own shape inference), in
alternating order. Each process makes, in a fresh pipeline home, a first run of the demo's
target task and a run on new eval data (both train a model; see
`common.first_and_new_eval_runs`).

Reported: each run's wall time and its Trainer's and Evaluator's seconds (ML Metadata),
medians over rounds and the static/Keras ratio of the medians, and the accuracies of every
process (the same models are built, so they should be the same).

    python -m benchmarks.static_shapes_run                   # the demo's DenseNet121, 3 rounds
    python -m benchmarks.static_shapes_run --backbone MobileNetV2 --repeats 2
"""

from __future__ import annotations

import os
import sys

from benchmarks import common

NODES = ("Trainer", "Evaluator")


def child(args) -> dict:
    def record(summary, wall: float, comps: dict) -> dict:
        return {"whole run": wall, **common.node_seconds(comps, NODES), "accuracy": summary.accuracy}

    return common.first_and_new_eval_runs(args, record)


def main(argv=None) -> int:
    args = common.demo_run_parser(__doc__.splitlines()[0]).parse_args(argv)
    common.quiet()
    if args.child:
        common.write_child_result(args.home, child(args))
        return 0
    variants = {
        "static": ("static1", [], dict(os.environ, IMGPIPE_STATIC_SHAPES="1")),
        "keras": ("static0", [], dict(os.environ, IMGPIPE_STATIC_SHAPES="0")),
    }
    runs, results = common.paired_demo_runs(args, "benchmarks.static_shapes_run", variants)
    common.emit(
        common.header(
            f"`imgpipe run` with static shapes and with Keras's own shape inference, "
            f"{args.backbone} {args.image_size}px"
        )
    )
    common.emit(common.paired_intro(runs, "static / keras", note='"keras" is IMGPIPE_STATIC_SHAPES=0.'))
    common.emit(common.paired_table(results, "keras", "static", ("whole run", *NODES)))
    accuracies = {
        name: sorted({round(x[kind]["accuracy"], 4) for x in rs for kind in x})
        for name, rs in results.items()
    }
    common.emit(f"\nAccuracies of every process and run: {accuracies}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
