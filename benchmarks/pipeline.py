"""Whole-pipeline wall time: `imgpipe run` (imgpipe.orchestration.local.run_local) first run vs cached re-run.

The demo's target task (digits 5-9, written and ingested as `imgpipe demo`
does) with a backbone pre-trained here on digits 0-4. The demo itself uses
DenseNet121 at 32px; by default this uses MobileNetV2 at 32px to keep a round
short (`--backbone DenseNet121` for the demo's own setup). Each round: a first
run in a fresh pipeline home (every component executes), then an identical
re-run in that home (every component served from the TFX cache). The
per-component breakdown is read back from ML Metadata: each execution's
last_update_time - create_time.

    python -m benchmarks.pipeline            # 3 rounds (~6-8 min here)
    python -m benchmarks.pipeline --quick    # 1 round, fewer epochs
"""

from __future__ import annotations

import os
import shutil
import sys
import time

from benchmarks import common


def component_seconds(config) -> dict[str, tuple[str, float]]:
    """Node id -> (state, seconds from execution create to last update) for the latest run."""
    from imgpipe.orchestration import metadata as mlmd

    with mlmd.open_store(config) as store:
        run = mlmd.latest_run(store, config.pipeline_name)
        executions = mlmd.run_executions(store, config.pipeline_name, run)
        return {
            node: (
                mlmd.state_name(e),
                (e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000.0,
            )
            for node, e in executions.items()
        }


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default="MobileNetV2")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=None, help="head epochs (default 30, quick 5)")
    p.add_argument("--pretrain-epochs", type=int, default=10)
    args = p.parse_args(argv)
    common.quiet()
    runs = common.repeats(args)
    epochs = args.epochs or (5 if args.quick else 30)
    size = args.image_size
    head = common.header(f"Pipeline: `imgpipe run` first run and cached re-run, {args.backbone} {size}px")

    from imgpipe.demo import steps as demo
    from imgpipe.orchestration.local import run_local
    from pipeline.pipeline import COMPONENT_IDS

    _, target = common.demo_tasks(args.workdir, size)
    weights = common.source_backbone(args.workdir, args.backbone, size, args.pretrain_epochs)
    n_images = sum(1 for s in ("train", "eval") for _ in common.read_items(common.split_files(target, s)))
    homes = os.path.join(args.workdir, f"pipeline_{args.backbone}_{size}")

    def config(r: int):
        """The demo's own pipeline settings, in a fresh directory per round."""
        return demo.target_config(
            os.path.join(homes, f"round{r}"), target, args.backbone, weights, size, epochs, min_accuracy=0.5
        )

    results: dict[str, list[dict]] = {"first run": [], "cached re-run": []}
    for r in range(runs):
        cfg = config(r)
        shutil.rmtree(os.path.dirname(cfg.home), ignore_errors=True)
        for kind in ("first run", "cached re-run"):
            t0 = time.perf_counter()
            summary = run_local(cfg, progress=common.say)
            wall = time.perf_counter() - t0
            results[kind].append({"wall": wall, "summary": summary, "components": component_seconds(cfg)})
            common.say(f"[bench] round {r + 1}/{runs} {kind}: {wall:.1f}s")

    rows = []
    for kind, rs in results.items():
        last = rs[-1]["summary"]
        states = sorted(set(last.executions.values()))
        rows.append(
            [
                kind,
                common.median([x["wall"] for x in rs]),
                " ".join(f"{x['wall']:.0f}" for x in rs),
                ", ".join(states),
                last.blessed,
                last.accuracy if last.accuracy is not None else float("nan"),
            ]
        )
    comp_rows = []
    for node in COMPONENT_IDS:
        first = [x["components"].get(node, ("-", float("nan"))) for x in results["first run"]]
        again = [x["components"].get(node, ("-", float("nan"))) for x in results["cached re-run"]]
        comp_rows.append(
            [
                node,
                common.median([s for _, s in first]),
                first[-1][0],
                common.median([s for _, s in again]),
                again[-1][0],
            ]
        )
    first_total = common.median([x["wall"] for x in results["first run"]])
    again_total = common.median([x["wall"] for x in results["cached re-run"]])
    common.emit(head)
    common.emit(
        f"Target task: {n_images} images (digits 5-9, {size}px PNG, train + eval), "
        f"{args.backbone} pre-trained here on digits 0-4, {epochs} head epochs "
        f"(feature cache on, the default), Beam DirectRunner in memory; median of "
        f"{runs} round(s). Re-run / first run = {again_total / first_total:.2f}.\n"
    )
    common.emit(
        common.table(
            [
                "run",
                "wall s (median)",
                "wall s per round",
                "executions",
                "blessed",
                "accuracy",
            ],
            rows,
        )
    )
    common.emit()
    common.emit("Per component (ML Metadata: execution last_update - create time), seconds:\n")
    common.emit(common.table(["component", "first run s", "state", "re-run s", "state"], comp_rows))
    common.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
