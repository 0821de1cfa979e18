"""The offline demo: real digits, a backbone pre-trained here, transferred frozen.

1. scikit-learn's handwritten digits are written as PNG folders: a source task
   (digits 0-4) and a target task (digits 5-9).
2. Both are ingested to TFRecords.
3. A backbone is pre-trained on the source task (no ImageNet download needed).
4. The full pipeline transfers it, frozen, to the target task: Transform,
   Trainer, Evaluator gate, Pusher into a TF Serving model directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

SOURCE_DIGITS = (0, 1, 2, 3, 4)
TARGET_DIGITS = (5, 6, 7, 8, 9)


def _say(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def prepare_data(workdir: str, image_size: int) -> tuple[str, str]:
    """Write and ingest the source and target tasks once; return their TFRecord dirs."""
    from pipeline import datasets, ingest

    dirs = []
    for name, digits in (("source", SOURCE_DIGITS), ("target", TARGET_DIGITS)):
        images = os.path.join(workdir, "images", name)
        records = os.path.join(workdir, "tfrecords", name)
        if not os.path.isdir(os.path.join(records, "train")):
            _say(f"writing {name} task images (digits {digits[0]}-{digits[-1]}) to {images}")
            datasets.write_digits_tree(images, digits=digits, size=image_size)
            report = ingest.ingest(images, records, eval_fraction=0.2, seed=42, overwrite=True)
            _say(f"ingested {name}: {json.dumps(report.to_dict().get('counts', {}), sort_keys=True)}")
        dirs.append(records)
    return dirs[0], dirs[1]


def pretrained_backbone(workdir: str, source: str, backbone: str, image_size: int, epochs: int) -> str:
    """Pre-train once; reuse the weights file when its recorded settings match."""
    from trainer.pretrain import pretrain_backbone

    out = os.path.join(workdir, f"{backbone.lower()}_{image_size}px_source.h5")
    meta = out + ".json"
    if os.path.exists(out) and os.path.exists(meta):
        with open(meta, encoding="utf-8") as f:
            rec = json.load(f)
        if rec.get("epochs") == epochs and rec.get("image_size") == image_size:
            _say(f"reusing pre-trained backbone {out} (source accuracy {rec['source_eval_accuracy']:.3f})")
            return out
    _say(f"pre-training {backbone} on the source task for {epochs} epochs")
    rec = pretrain_backbone(source, backbone, out, image_size=image_size, epochs=epochs)
    _say(f"source-task eval accuracy {rec['source_eval_accuracy']:.3f} in {rec['seconds']}s -> {out}")
    return out


def target_config(
    workdir: str,
    target: str,
    backbone: str,
    weights: str,
    image_size: int,
    epochs: int,
    min_accuracy: float,
    replicas: int | None = None,
):
    """The demo's pipeline settings for the target task; ML Metadata and pipeline outputs go
    under WORKDIR/home, pushed models under WORKDIR/serving/digits."""
    from pipeline.config import PipelineConfig

    return PipelineConfig(
        data_dir=target,
        home=os.path.join(workdir, "home"),
        serving_dir=os.path.join(workdir, "serving"),
        model_name="digits",
        backbone=backbone,
        weights=weights,
        image_size=image_size,
        epochs=epochs,
        learning_rate=1e-2,
        dropout=0.1,
        min_accuracy=min_accuracy,
        replicas=replicas,
    )


def run_demo(args: argparse.Namespace) -> int:
    from pipeline.cli import EXIT_FAILED, _run_pipeline

    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    source, target = prepare_data(workdir, args.image_size)
    weights = pretrained_backbone(workdir, source, args.backbone, args.image_size, args.pretrain_epochs)
    config = target_config(
        workdir,
        target,
        args.backbone,
        weights,
        args.image_size,
        args.epochs,
        args.min_accuracy,
        replicas=args.replicas,
    )
    _say(f"running the pipeline on the target task (digits {TARGET_DIGITS[0]}-{TARGET_DIGITS[-1]})")
    code = _run_pipeline(config, args.verbose)
    if code == 0:
        _say(
            f"serve it: imgpipe serve --model-base-path {config.model_serving_dir} --model-name {config.model_name}"
        )
    return code if code == 0 else EXIT_FAILED
