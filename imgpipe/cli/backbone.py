"""`imgpipe pretrain-backbone`: train a backbone on a source task and write its weights file."""

from __future__ import annotations

import argparse

from imgpipe.cli.output import Command, UsageError, emit, stdout_to_stderr
from trainer import backbones


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="TFRecord dir of the source task (from `imgpipe ingest`)")
    p.add_argument("--backbone", required=True, help="tf.keras.applications name, e.g. DenseNet121")
    p.add_argument("--out", required=True, help="weights file to write (.h5)")
    p.add_argument("--image-size", type=int, default=32, help="input size in pixels (default 32)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs (default 15)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)


def _run(args: argparse.Namespace) -> int:
    try:
        backbones.get(args.backbone)
    except ValueError as e:
        raise UsageError(str(e)) from e
    from trainer.pretrain import pretrain_backbone  # loads TensorFlow: only when the command runs

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
    emit(report)
    return 0


COMMANDS = [
    Command("pretrain-backbone", "pre-train a backbone on a source task; write a weights file", _add, _run)
]
