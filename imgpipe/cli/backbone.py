"""`imgpipe pretrain-backbone`: train a backbone on a source task and write its weights file."""

from __future__ import annotations

import argparse
import os

from imgpipe.cli.flags import positive_number, whole_number
from imgpipe.cli.output import Command, UsageError, WorkFailed, emit, stdout_to_stderr
from imgpipe.ingest import validate_tfrecord_dir
from imgpipe.orchestration.paths import output_file_problem
from trainer import backbones
from trainer.config import MAX_IMAGE_SIZE


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="TFRecord dir of the source task (from `imgpipe ingest`)")
    p.add_argument("--backbone", required=True, help="tf.keras.applications name, e.g. DenseNet121")
    p.add_argument("--out", required=True, help="weights file to write (.h5)")
    p.add_argument(
        "--image-size",
        type=whole_number(1, MAX_IMAGE_SIZE, f"a whole number 1..{MAX_IMAGE_SIZE}"),
        default=32,
        help="input size in pixels (default 32; at least the backbone's minimum)",
    )
    at_least_one = whole_number(1, None, "a whole number >= 1")
    p.add_argument("--epochs", type=at_least_one, default=15, help="training epochs (default 15)")
    p.add_argument("--batch-size", type=at_least_one, default=32, help="batch size (default 32)")
    p.add_argument("--learning-rate", type=positive_number, default=1e-3, help="Adam's (default 0.001)")
    p.add_argument(
        "--seed",
        type=whole_number(0, 2**32 - 1, "a whole number 0..2**32 - 1"),
        default=42,
        help="random seed of the source task's split and training (default 42)",
    )


def _check_out(out: str) -> None:
    """UsageError naming --out unless the weights file and its description (OUT.json) can be
    written there; its missing folders are made. Checked before training, which takes minutes."""
    if not out.endswith(".h5"):
        raise UsageError(f"--out: must be an .h5 file (Keras applications load that format), got {out}")
    problem = output_file_problem(out)
    if problem is not None:
        raise UsageError(f"--out: {problem}")
    if os.path.isdir(out + ".json"):
        raise UsageError(
            f"--out: {out}.json, where the weights' description goes, is a directory; "
            "move it or choose another --out"
        )
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out: cannot make the folder of {out}: {e.strerror or e}") from e


def _run(args: argparse.Namespace) -> int:
    try:
        spec = backbones.get(args.backbone)
        validate_tfrecord_dir(args.data)  # a missing folder or files that are not TFRecords, named
    except ValueError as e:
        raise UsageError(str(e)) from e
    if args.image_size < spec.min_size:
        raise UsageError(f"--image-size: at least {spec.min_size} for {args.backbone}, got {args.image_size}")
    _check_out(args.out)
    from trainer.pretrain import PretrainDiverged, pretrain_backbone  # loads TensorFlow: only when it runs

    try:
        with stdout_to_stderr():
            report = pretrain_backbone(
                args.data,
                args.backbone,
                args.out,
                image_size=args.image_size,
                epochs=args.epochs,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                seed=args.seed,
            )
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from e
    except PretrainDiverged as e:
        raise WorkFailed(str(e)) from e
    emit(report)
    return 0


COMMANDS = [
    Command("pretrain-backbone", "pre-train a backbone on a source task; write a weights file", _add, _run)
]
