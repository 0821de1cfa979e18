"""Pre-push validation's reference answers: a second load of the SavedModel vs the Evaluator's model.

In a local run the InfraValidator computes the candidate's answers in-process (the reference
the server's answers are compared with). It loaded the SavedModel for that, after TFMA had
loaded the same model in the Evaluator; now the Evaluator's loaded object is handed over
(components/loaded_models.py). Each round runs two fresh processes, in alternating order:
"handed over" (imgpipe's code) and "loaded again" (the same code with the hand-over turned
off). Each makes, in a fresh pipeline home, a first run of the demo's target task and a run on
new eval data (benchmarks/beam_memo.py's two runs: both train, and both models are blessed,
validated and pushed).

Reported: medians of the whole run, the InfraValidator's and the Evaluator's seconds (ML
Metadata) and the validation's own steps (the report's `seconds`: reference answers done,
server ready, checks), and the ratio of the medians.

    python -m benchmarks.prepush_reference                          # DenseNet121, 3 rounds
    python -m benchmarks.prepush_reference --backbone MobileNetV2   # the tests' backbone
"""

from __future__ import annotations

import sys

from benchmarks import common

NODES = ("Evaluator", "InfraValidator")
STEPS = ("reference", "server_ready", "checks")
VARIANTS = {"handed over": "1", "loaded again": "0"}


def child(args) -> dict:
    if args.handover == "0":
        from components import loaded_models

        loaded_models.offer = lambda path, model: False  # nothing kept: the InfraValidator loads it

    def record(summary, wall: float, comps: dict) -> dict:
        prepush = summary.prepush or {}
        return {
            "whole run": wall,
            **common.node_seconds(comps, NODES),
            **{s: (prepush.get("seconds") or {}).get(s, float("nan")) for s in STEPS},
            "reference_from_evaluator": prepush.get("reference_from_evaluator"),
            "validated": prepush.get("validated"),
            "accuracy": summary.accuracy,
        }

    return common.first_and_new_eval_runs(args, record)


def main(argv=None) -> int:
    paired = common.paired_demo_main(
        argv, __doc__.splitlines()[0], "benchmarks.prepush_reference", child, "handover", VARIANTS
    )
    if paired is None:
        return 0
    args, runs, results = paired
    common.emit(
        common.header(
            f"Pre-push reference answers: the Evaluator's model vs a second load, {args.backbone} {args.image_size}px"
        )
    )
    common.emit(
        common.paired_intro(
            runs,
            "handed over / loaded again",
            note="reference, server ready, checks: the validation's own clock (`prepush.seconds`), "
            "from its start.",
        )
    )
    common.emit(common.paired_table(results, "loaded again", "handed over", ("whole run", *NODES, *STEPS)))
    flags = {name: common.distinct({name: rs}, "reference_from_evaluator") for name, rs in results.items()}
    accs = common.distinct(results, "accuracy", 4)
    common.emit(f"\nreference_from_evaluator: {flags}; accuracies over all processes: {accs}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
