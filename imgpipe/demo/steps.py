"""The offline demo's steps: real digits, a backbone pre-trained here, transferred frozen.

1. scikit-learn's handwritten digits are written as PNG folders: a source task
   (digits 0-4) and a target task (digits 5-9).
2. Both are ingested to TFRecords.
3. A backbone is pre-trained on the source task (no ImageNet download needed).
4. The full pipeline transfers it, frozen, to the target task: Transform,
   Trainer, Evaluator gate, Pusher into a TF Serving model directory.

Steps 1-3 are here; `imgpipe demo` (imgpipe/cli/demo.py) runs them, then the
pipeline with `target_config`.
"""

from __future__ import annotations

import json
import logging
import os

from imgpipe.demo import data
from imgpipe.ingest import REPORT_FILE, SPLITS, ingest
from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

SOURCE_DIGITS = (0, 1, 2, 3, 4)
TARGET_DIGITS = (5, 6, 7, 8, 9)


def records_dir(workdir: str, task: str) -> str:
    """Where `prepare_data` puts a task's ("source" or "target") TFRecords."""
    return os.path.join(workdir, "tfrecords", task)


def weights_path(workdir: str, backbone: str, image_size: int) -> str:
    """Where `pretrained_backbone` writes the backbone's weights file."""
    return os.path.join(workdir, f"{backbone.lower()}_{image_size}px_source.h5")


def ingested(records: str) -> bool:
    """Whether `records` holds a whole ingest: both splits and its report (ingest moves the report
    in last, so a demo interrupted while its ingest moved the splits in ingests again)."""
    return os.path.isfile(os.path.join(records, REPORT_FILE)) and all(
        os.path.isdir(os.path.join(records, split)) for split in SPLITS
    )


def prepare_data(workdir: str, image_size: int) -> tuple[str, str]:
    """Write and ingest the source and target tasks once; return their TFRecord dirs."""
    dirs = []
    for name, digits in (("source", SOURCE_DIGITS), ("target", TARGET_DIGITS)):
        images = os.path.join(workdir, "images", name)
        records = records_dir(workdir, name)
        if not ingested(records):
            log.info("writing %s task images (digits %d-%d) to %s", name, digits[0], digits[-1], images)
            data.write_digits_tree(images, digits=digits, size=image_size)
            report = ingest(images, records, eval_fraction=0.2, seed=42, overwrite=True)
            log.info("ingested %s: %s", name, json.dumps(report.to_dict().get("counts", {}), sort_keys=True))
        dirs.append(records)
    return dirs[0], dirs[1]


def pretrained_backbone(workdir: str, source: str, backbone: str, image_size: int, epochs: int) -> str:
    """Pre-train once; reuse the weights file when its recorded settings match."""
    from trainer.model import weights_digest  # loads TensorFlow, which the demo's run needs next
    from trainer.pretrain import pretrain_backbone

    out = weights_path(workdir, backbone, image_size)
    meta = out + ".json"
    if os.path.exists(out) and os.path.exists(meta):
        with open(meta, encoding="utf-8") as f:
            rec = json.load(f)
        # And the file's bytes are the ones described: pre-training replaces the file before its
        # description, so a run killed between the two left another run's weights under it.
        if (
            rec.get("epochs") == epochs
            and rec.get("image_size") == image_size
            and rec.get("sha256") == weights_digest(out)
        ):
            log.info(
                "reusing pre-trained backbone %s (source accuracy %.3f)", out, rec["source_eval_accuracy"]
            )
            return out
    log.info("pre-training %s on the source task for %d epochs", backbone, epochs)
    rec = pretrain_backbone(source, backbone, out, image_size=image_size, epochs=epochs)
    log.info("source-task eval accuracy %.3f in %ss -> %s", rec["source_eval_accuracy"], rec["seconds"], out)
    return out


def target_config(
    workdir: str,
    target: str,
    backbone: str,
    weights: str,
    image_size: int,
    epochs: int | None,
    min_accuracy: float,
    replicas: int | None = None,
) -> PipelineConfig:
    """The demo's pipeline settings for the target task; ML Metadata and pipeline outputs go
    under WORKDIR/home, pushed models under WORKDIR/serving/digits. The head trains with
    the Trainer's defaults (to convergence); `epochs` caps it (None: the default cap).
    ConfigError naming the field when a value is invalid (nothing is read from disk: the
    data and the weights file may not exist yet)."""
    cap = {} if epochs is None else {"epochs": epochs}
    return PipelineConfig.from_dict(
        {
            "data_dir": target,
            "home": os.path.join(workdir, "home"),
            "serving_dir": os.path.join(workdir, "serving"),
            "model_name": "digits",
            "backbone": backbone,
            "weights": weights,
            "image_size": image_size,
            "min_accuracy": min_accuracy,
            "replicas": replicas,
            **cap,
        }
    )
