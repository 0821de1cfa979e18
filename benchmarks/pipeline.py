"""Whole-pipeline wall time: `imgpipe run` (imgpipe.orchestration.local.run_local) first run vs cached re-run.

The demo's target task (digits 5-9, written and ingested as `imgpipe demo`
does) with a backbone pre-trained here on digits 0-4. The demo itself uses
DenseNet121 at 32px; by default this uses MobileNetV2 at 32px to keep a round
short (`--backbone DenseNet121` for the demo's own setup). Each round: a first
run in a fresh pipeline home (every component executes), then an identical
re-run in that home (every component served from the TFX cache), then a run
with another training seed (the Trainer trains a different model on the same,
cached, data, so the Evaluator has a baseline that is not the candidate). The
per-component breakdown is read back from ML Metadata: each execution's
last_update_time - create_time.

    python -m benchmarks.pipeline            # 3 rounds (~6-8 min here)
    python -m benchmarks.pipeline --quick    # 1 round, fewer epochs

`--versus-plain-keras` (issue 13) instead measures the pipeline against what a
user writes without it, `benchmarks/plain_keras.py`, side by side: each round
runs, interleaved with the order rotated, (a) the pipeline as a user runs it:
`python -m imgpipe ingest` of the image folder, then `python -m imgpipe run
--config` with the demo's settings (imgpipe.demo.steps.target_config) in a
fresh home, and (b) `python benchmarks/plain_keras.py` on the same folder,
with the same train/eval membership (the one ingest chooses), backbone
weights file, image size, epochs, batch size and learning rate (the Trainer's
defaults). Every step is a fresh process, timed from its start to its exit.
`--images N` runs it on an N-image copy of the target task (replicated with
small random shifts and rotations, since ingest drops identical copies).

    python -m benchmarks.pipeline --versus-plain-keras --backbone DenseNet121      # the demo
    python -m benchmarks.pipeline --versus-plain-keras --backbone DenseNet121 \
        --images 30000 --image-size 64 --repeats 1                                 # the 30k row
"""

from __future__ import annotations

import json
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


def execution_span(config) -> tuple[float, float]:
    """Epoch seconds of the latest run's first execution create and last execution update."""
    from imgpipe.orchestration import metadata as mlmd

    with mlmd.open_store(config) as store:
        run = mlmd.latest_run(store, config.pipeline_name)
        executions = mlmd.run_executions(store, config.pipeline_name, run).values()
        return (
            min(e.create_time_since_epoch for e in executions) / 1000.0,
            max(e.last_update_time_since_epoch for e in executions) / 1000.0,
        )


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default="MobileNetV2")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=None, help="head epochs (default 30, quick 5)")
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument(
        "--versus-plain-keras",
        action="store_true",
        help="the pipeline's first run (imgpipe ingest + imgpipe run, fresh processes) against "
        "benchmarks/plain_keras.py, interleaved",
    )
    p.add_argument(
        "--images",
        type=int,
        default=None,
        help="with --versus-plain-keras: an N-image copy of the target task",
    )
    args = p.parse_args(argv)
    common.quiet()
    if args.versus_plain_keras:
        return versus_plain_keras(args)
    if args.images:
        p.error("--images needs --versus-plain-keras")
    runs = common.repeats(args)
    epochs = args.epochs or (5 if args.quick else 30)
    size = args.image_size
    head = common.header(
        f"Pipeline: `imgpipe run` first run, cached re-run and a new-seed run, {args.backbone} {size}px"
    )

    from imgpipe.demo import steps as demo
    from imgpipe.orchestration.local import run_local
    from pipeline.pipeline import COMPONENT_IDS
    from trainer import preprocessing

    _, target = common.demo_tasks(args.workdir, size)
    weights = common.source_backbone(args.workdir, args.backbone, size, args.pretrain_epochs)
    n_images = sum(1 for s in ("train", "eval") for _ in common.read_items(common.split_files(target, s)))
    homes = os.path.join(args.workdir, f"pipeline_{args.backbone}_{size}")

    def config(r: int):
        """The demo's own pipeline settings, in a fresh directory per round."""
        return demo.target_config(
            os.path.join(homes, f"round{r}"), target, args.backbone, weights, size, epochs, min_accuracy=0.5
        )

    kinds = {
        "first run": lambda cfg: cfg,
        "cached re-run": lambda cfg: cfg,
        "new seed": lambda cfg: cfg.replace(seed=cfg.training.seed + 1),
    }
    results: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for r in range(runs):
        cfg = config(r)
        shutil.rmtree(os.path.dirname(cfg.home), ignore_errors=True)
        for kind, variant in kinds.items():
            if kind == "first run":
                # Each round's first run traces the image decoder again, as an `imgpipe run`
                # process does (the rounds share this process and its traced functions).
                preprocessing.forget_traced_functions()
            t0 = time.perf_counter()
            summary = run_local(variant(cfg), progress=common.say)
            wall = time.perf_counter() - t0
            results[kind].append({"wall": wall, "summary": summary, "components": component_seconds(cfg)})
            if kind == "new seed":
                baseline = summary.gate["baseline"] if summary.gate else {}
                results[kind][-1]["baseline"] = "reused" if baseline.get("reused_from") else "evaluated"
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
        seed = [x["components"].get(node, ("-", float("nan"))) for x in results["new seed"]]
        comp_rows.append(
            [
                node,
                common.median([s for _, s in first]),
                first[-1][0],
                common.median([s for _, s in again]),
                again[-1][0],
                common.median([s for _, s in seed]),
                seed[-1][0],
            ]
        )
    first_total = common.median([x["wall"] for x in results["first run"]])
    again_total = common.median([x["wall"] for x in results["cached re-run"]])
    common.emit(head)
    common.emit(
        f"Target task: {n_images} images (digits 5-9, {size}px PNG, train + eval), "
        f"{args.backbone} pre-trained here on digits 0-4, {epochs} head epochs "
        f"(feature cache on, the default), Beam's Python DirectRunner in memory; median of "
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
    common.emit(
        common.table(
            ["component", "first run s", "state", "re-run s", "state", "new seed s", "state"], comp_rows
        )
    )
    evaluator = {
        kind: common.median([x["components"].get("Evaluator", ("-", float("nan")))[1] for x in results[kind]])
        for kind in kinds
    }
    common.emit(
        f"\nEvaluator with a baseline that is another model (new seed) / without a baseline (first "
        f"run), same rounds: {evaluator['new seed']:.1f} s / {evaluator['first run']:.1f} s = "
        f"{evaluator['new seed'] / evaluator['first run']:.2f}; the new seed's baseline was "
        f"{', '.join(x['baseline'] for x in results['new seed'])} (per round).\n"
    )
    return 0


def ingest_split(
    images_dir: str, out: str, eval_fraction: float = 0.2, seed: int = 42
) -> dict[str, list[str]]:
    """The train/eval membership `imgpipe ingest` gives `images_dir` (its own scan and plan,
    the demo's split settings), as paths relative to `images_dir`; also written to `out` (JSON)
    for benchmarks/plain_keras.py --split."""
    from imgpipe.ingest.plan import make_plan
    from imgpipe.ingest.scan import scan_tree

    if os.path.exists(out):
        with open(out, encoding="utf-8") as f:
            return json.load(f)
    found = scan_tree(images_dir, progress=common.say, progress_every=5000)
    plan = make_plan(found.folders, found.candidates, seed=seed, eval_fraction=eval_fraction)
    split = {s: sorted(c.rel for c in plan.records(s)) for s in ("train", "eval")}
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        json.dump(split, f)
    os.replace(out + ".tmp", out)
    return split


def versus_plain_keras(args) -> int:
    """The pipeline's first run vs benchmarks/plain_keras.py, fresh processes, interleaved."""
    from imgpipe.demo import steps as demo
    from trainer.config import TrainingConfig

    runs = common.repeats(args)
    epochs = args.epochs or (5 if args.quick else 30)
    size = args.image_size
    defaults = TrainingConfig.model_fields
    batch, lr = defaults["batch_size"].default, defaults["learning_rate"].default
    _, records = common.demo_tasks(args.workdir, size)
    data_root = os.path.join(args.workdir, f"digits{size}")
    images = os.path.join(data_root, "images", "target")
    name = "target"
    if args.images:
        name = f"target_n{args.images}"
        source = images
        images = os.path.join(data_root, "images", name)
        common.say(f"[bench] replicating {source} to {args.images} images in {images}")
        common.replicate_images(source, images, args.images)
    weights = common.source_backbone(args.workdir, args.backbone, size, args.pretrain_epochs)
    split_file = os.path.join(data_root, f"split_{name}.json")
    split = ingest_split(images, split_file)
    n_train, n_eval = len(split["train"]), len(split["eval"])
    head = common.header(
        f"Pipeline vs plain Keras: `imgpipe ingest` + `imgpipe run` (first run) vs benchmarks/plain_keras.py, "
        f"{args.backbone} {size}px, {n_train + n_eval} images"
    )
    rounds_dir = os.path.join(args.workdir, f"versus_{args.backbone}_{size}_{name}")
    py = sys.executable

    def pipeline_side(r: int) -> dict:
        d = os.path.join(rounds_dir, f"round{r}", "pipeline")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        tfrecords = os.path.join(d, "tfrecords")
        ingest_s, _ = common.json_process(
            [
                py,
                "-m",
                "imgpipe",
                "ingest",
                "--images",
                images,
                "--out",
                tfrecords,
                "--eval-fraction",
                "0.2",
                "--seed",
                "42",
            ],
            os.path.join(d, "ingest.log"),
        )
        cfg = demo.target_config(d, tfrecords, args.backbone, weights, size, epochs, min_accuracy=0.5)
        config_file = os.path.join(d, "config.yaml")
        cfg.save(config_file)
        started = time.time()
        run_s, summary = common.json_process(
            [py, "-m", "imgpipe", "run", "--config", config_file], os.path.join(d, "run.log")
        )
        components = component_seconds(cfg)
        first, last = execution_span(cfg)
        timeline = {
            "start": first - started,
            "components": sum(sec for _, sec in components.values()),
            "between": (last - first) - sum(sec for _, sec in components.values()),
            "end": started + run_s - last,
        }
        common.say(f"[bench] round {r + 1}: imgpipe ingest {ingest_s:.1f}s, run {run_s:.1f}s")
        return {
            "ingest": ingest_s,
            "run": run_s,
            "accuracy": summary.get("accuracy"),
            "blessed": summary.get("blessed"),
            "components": components,
            "timeline": timeline,
        }

    def plain_side(r: int) -> dict:
        d = os.path.join(rounds_dir, f"round{r}", "plain")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        cmd = [py, os.path.join(common.REPO, "benchmarks", "plain_keras.py"), "--images", images, "--split",
               split_file, "--backbone", args.backbone, "--weights", weights, "--image-size", str(size),
               "--epochs", str(epochs), "--batch-size", str(batch), "--learning-rate", str(lr), "--seed", "42",
               "--out", os.path.join(d, "model")]  # fmt: skip
        wall, result = common.json_process(cmd, os.path.join(d, "plain.log"))
        common.say(f"[bench] round {r + 1}: plain Keras {wall:.1f}s")
        return {"wall": wall, **result}

    res = common.interleaved({"imgpipe": pipeline_side, "plain Keras": plain_side}, runs, say=common.say)
    pipe, plain = res["imgpipe"], res["plain Keras"]
    per_round = lambda xs: " ".join(f"{x:.0f}" for x in xs)  # noqa: E731
    ingest_s = [x["ingest"] for x in pipe]
    run_s = [x["run"] for x in pipe]
    both_s = [x["ingest"] + x["run"] for x in pipe]
    plain_s = [x["wall"] for x in plain]
    pipe_acc = common.median([x["accuracy"] for x in pipe if x["accuracy"] is not None])
    plain_acc = common.median([x["accuracy"] for x in plain])
    rows = [
        ["imgpipe ingest", common.median(ingest_s), per_round(ingest_s), "", ""],
        ["imgpipe run (first run, fresh home)", common.median(run_s), per_round(run_s), pipe_acc,
         f"blessed {sum(bool(x['blessed']) for x in pipe)}/{len(pipe)}"],
        ["imgpipe ingest + run", common.median(both_s), per_round(both_s), pipe_acc, ""],
        ["plain Keras script", common.median(plain_s), per_round(plain_s), plain_acc, ""],
    ]  # fmt: skip
    ratio_run = common.median([p / q for p, q in zip(plain_s, run_s, strict=True)])
    ratio_both = common.median([p / q for p, q in zip(plain_s, both_s, strict=True)])
    common.emit(head)
    common.emit(
        f"Task {name}: {n_train} train + {n_eval} eval images (digits 5-9, {size}px PNG), "
        f"{args.backbone} from the same weights file (pre-trained here on digits 0-4), {epochs} head epochs "
        f"(imgpipe: the cap, early stopping and refit as the Trainer defaults; plain: exactly {epochs}), "
        f"batch {batch}, Adam lr {lr}; every step a fresh process, wall time from start to exit; "
        f"median of {runs} round(s), order rotated each round.\n"
    )
    common.emit(common.table(["side", "wall s (median)", "wall s per round", "eval accuracy", "note"], rows))
    common.emit()
    common.emit(
        f"Plain / pipeline wall time (median of per-round ratios): **{ratio_run:.2f}x** against `imgpipe run` "
        f"alone, **{ratio_both:.2f}x** against `imgpipe ingest` + `imgpipe run`.\n"
    )
    phases = ["import", "data", "build", "fit", "evaluate", "save", "total"]
    phase_rows = [[k, common.median([x["seconds"][k] for x in plain])] for k in phases]
    first_epoch = common.median([x["epoch_seconds"][0] for x in plain])
    later = [common.median(x["epoch_seconds"][1:]) for x in plain if len(x["epoch_seconds"]) > 1]
    phase_rows.insert(4, ["  fit: first epoch", first_epoch])
    phase_rows.insert(5, ["  fit: later epochs, median each", common.median(later)])
    common.emit("Plain Keras script by phase (its own clock), median seconds:\n")
    common.emit(common.table(["phase", "s"], phase_rows))
    common.emit()
    from pipeline.pipeline import COMPONENT_IDS

    comp_rows = [
        [node, common.median([x["components"].get(node, ("-", float("nan")))[1] for x in pipe])]
        for node in COMPONENT_IDS
    ]
    common.emit(
        "`imgpipe run` per component (ML Metadata: execution last_update - create time), median seconds:\n"
    )
    common.emit(common.table(["component", "s"], comp_rows))
    common.emit()
    steps = {
        "start": "process start -> first component starts (imports, config, pipeline compile, lock, ML Metadata)",
        "components": "components (sum of the above)",
        "between": "between components (orchestration)",
        "end": "last component ends -> process exit (run report, summary, exit)",
    }
    common.emit(
        "`imgpipe run` timeline (wall clock against ML Metadata's execution times), median seconds:\n"
    )
    common.emit(
        common.table(
            ["part", "s"],
            [[text, common.median([x["timeline"][k] for x in pipe])] for k, text in steps.items()],
        )
    )
    common.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
