"""The gate on skewed tasks: what it blesses when it gates accuracy and when it gates balanced accuracy.

Each task is two real digit classes (scikit-learn's digits at 32 px), the first with
--major images and the second with fewer, ingested with a 0.3 eval fraction; the
backbone is MobileNetV2 pre-trained here on digits 0-4 (the tests' offline stand-in
for ImageNet). For each task the same pipeline runs once per metric (its own home,
so no baseline), with the Trainer's defaults (class_weights auto: balanced loss
weights on these tasks) and no pre-push server. One row per run: the model's
per-class recall, accuracy, balanced accuracy, the floor on the gated metric and
whether it was blessed.

    python -m benchmarks.skewed_gate                          # the tasks of RELIABILITY.md
    python -m benchmarks.skewed_gate --task 8:9:30 --metric auto
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from benchmarks import common

TASKS = ("1:7:20", "8:9:30")  # major digit : minor digit : minor images (the major has --major)
METRICS = ("accuracy", "auto")


def _task(work: str, spec: str, major_images: int, weights: str) -> str:
    """The ingested records of one task (made once per work folder)."""
    from imgpipe import ingest
    from imgpipe.demo import data as datasets

    major, minor, n_minor = (int(x) for x in spec.split(":"))
    images = os.path.join(work, f"images-{major}-{minor}-{major_images}-{n_minor}")
    records = images + "-records"
    if not os.path.exists(os.path.join(records, "classes.json")):
        shutil.rmtree(images, ignore_errors=True)
        datasets.write_digits_tree(images, digits=[major], size=32, limit_per_class=major_images)
        datasets.write_digits_tree(images, digits=[minor], size=32, limit_per_class=n_minor)
        ingest.ingest(images, records, eval_fraction=0.3, seed=3, overwrite=True)
    return records


def run(work: str, tasks: list[str], metrics: list[str], major_images: int) -> list[dict]:
    from imgpipe.orchestration.local import run_local
    from pipeline.config import PipelineConfig
    from tests import helpers

    os.makedirs(work, exist_ok=True)
    done = os.path.join(work, "backbone.path")
    if not os.path.exists(done):
        weights = helpers.pretrained_weights(os.path.join(work, "backbone"), epochs=8, per_class=120)
        with open(done, "w", encoding="utf-8") as f:
            f.write(weights)
    with open(done, encoding="utf-8") as f:
        weights = f.read()
    rows = []
    for spec in tasks:
        records = _task(work, spec, major_images, weights)
        for metric in metrics:
            home = os.path.join(work, f"home-{spec.replace(':', '-')}-{metric}")
            shutil.rmtree(home, ignore_errors=True)
            config = PipelineConfig(
                data_dir=records,
                home=home,
                serving_dir=home + "-serving",
                model_name="skewed",
                backbone="MobileNetV2",
                weights=weights,
                image_size=32,
                metric=metric,
                prepush_validation=False,
            )
            print(f"[skewed_gate] task {spec}, gate.metric {metric}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            gate = run_local(config).gate or {}
            rows.append(
                {
                    "task": spec,
                    "setting": metric,
                    "metric": gate.get("metric"),
                    "eval_counts": _eval_counts(gate),
                    "per_class_recall": gate.get("per_class_recall"),
                    "accuracy": gate.get("accuracy"),
                    "balanced_accuracy": gate.get("balanced_accuracy"),
                    "floor": gate.get("floor"),
                    "floor_source": gate.get("floor_source"),
                    "majority_share": gate.get("majority_share"),
                    "blessed": gate.get("blessed"),
                    "reasons": gate.get("reasons"),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
    return rows


def _eval_counts(gate: dict) -> str:
    share, n = gate.get("majority_share"), gate.get("eval_examples")
    if not isinstance(share, float) or not isinstance(n, int):
        return "?"
    major = round(share * n)
    return f"{major}:{n - major}"


def table(rows: list[dict]) -> str:
    def num(x):
        return "-" if x is None else f"{x:.3f}"

    out = [
        "| task (major:minor digit) | eval | gate.metric | per-class recall | accuracy | balanced | floor (source) | blessed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        recall = ", ".join(f"{k}: {num(v)}" for k, v in (r["per_class_recall"] or {}).items())
        setting = r["setting"] if r["setting"] == r["metric"] else f"{r['setting']} -> {r['metric']}"
        out.append(
            f"| {r['task']} | {r['eval_counts']} | {setting} | {recall} | {num(r['accuracy'])} | "
            f"{num(r['balanced_accuracy'])} | {num(r['floor'])} ({r['floor_source']}) | {r['blessed']} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work", default=os.path.join(common.default_workdir(), "skewed_gate"), help="data, backbone, homes"
    )
    parser.add_argument(
        "--task", action="append", help=f"MAJOR:MINOR:MINOR_IMAGES (default {', '.join(TASKS)})"
    )
    parser.add_argument("--metric", action="append", choices=["accuracy", "balanced_accuracy", "auto"])
    parser.add_argument("--major", type=int, default=170, help="images of the major digit (default 170)")
    args = parser.parse_args(argv)
    rows = run(args.work, args.task or list(TASKS), args.metric or list(METRICS), args.major)
    print(table(rows))
    with open(os.path.join(args.work, "results.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
