"""When pre-push validation's standby model server starts: as the Trainer starts, or as the Evaluator starts.

In a local run the InfraValidator takes over a model server started earlier in the run
(imgpipe/orchestration/local.py `_PrepushStandby`). Its start-up is a fresh process importing
TensorFlow, then loading the Trainer's model and replaying its warmup requests. It used to
start, with the model, as the Evaluator started; now the process starts as the Trainer starts
(when the run's Transform executed, so the Trainer trains), and the model is staged into it as
the Evaluator starts. A third variant, "model after the Evaluator", starts the process as the
Trainer starts too but stages the model only as the InfraValidator starts, so the model's load
and warmup no longer run beside the Evaluator (whose TFMA job loads one or two models itself).
A fourth, "none", starts no standby (the InfraValidator starts its own server): what the
standby costs and saves.

Each round runs the variants in fresh processes, in rotating order. Each makes, in a fresh
pipeline home, a first run of the demo's target task and a run on new eval data (both train;
the second's Evaluator also evaluates the first model as its baseline). Reported: medians of the
whole run and of the Trainer's, the Evaluator's and the InfraValidator's seconds (ML Metadata),
and ratios against "at the Evaluator".

    python -m benchmarks.standby_start                          # DenseNet121, 3 rounds
    python -m benchmarks.standby_start --backbone MobileNetV2   # the tests' backbone
"""

from __future__ import annotations

import sys

from benchmarks import common

NODES = ("Trainer", "Evaluator", "InfraValidator")
VARIANTS = {
    "at the Trainer": "trainer",
    "at the Evaluator": "evaluator",
    "model after the Evaluator": "late",
    "none": "none",
}


def child(args) -> dict:
    from imgpipe.orchestration import local

    if args.start == "evaluator":
        local._PrepushStandby.EARLY_START = False  # noqa: SLF001
    elif args.start == "none":
        local._PrepushStandby.before_launch = lambda self, node_id, tracker: None  # noqa: SLF001
    elif args.start == "late":
        stage = local._PrepushStandby.before_launch  # noqa: SLF001

        def late(self, node_id: str, tracker) -> None:
            if node_id == "Evaluator":
                return  # the model waits for the InfraValidator's launch
            stage(self, "Evaluator" if node_id == "InfraValidator" else node_id, tracker)

        local._PrepushStandby.before_launch = late  # noqa: SLF001

    def record(summary, wall: float, comps: dict) -> dict:
        prepush = summary.prepush or {}
        return {
            "whole run": wall,
            **common.node_seconds(comps, NODES),
            "server_ready": (prepush.get("seconds") or {}).get("server_ready", float("nan")),
            "early": prepush.get("server_started_early"),
            "accuracy": summary.accuracy,
            "blessed": summary.blessed,
        }

    return common.first_and_new_eval_runs(args, record)


def main(argv=None) -> int:
    paired = common.paired_demo_main(
        argv, __doc__.splitlines()[0], "benchmarks.standby_start", child, "start", VARIANTS
    )
    if paired is None:
        return 0
    args, runs, results = paired
    common.emit(
        common.header(
            f"The standby model server's start: Trainer vs Evaluator, {args.backbone} {args.image_size}px"
        )
    )
    common.emit(
        common.paired_intro(
            runs,
            "the variant / the one it is set against",
            order="rotating",
            note="server_ready: the validation's own clock (`prepush.seconds`), from its start.",
        )
    )
    for before, name in (
        ("at the Evaluator", "at the Trainer"),
        ("at the Trainer", "model after the Evaluator"),
        ("at the Evaluator", "none"),
    ):
        common.emit(f"**{name}** against {before}:\n")
        common.emit(common.paired_table(results, before, name, ("whole run", *NODES, "server_ready")))
        common.emit("")
    flags = {name: common.distinct({name: rs}, "early") for name, rs in results.items()}
    accs = common.distinct(results, "accuracy", 4)
    common.emit(f"server_started_early: {flags}; accuracies over all processes: {accs}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
