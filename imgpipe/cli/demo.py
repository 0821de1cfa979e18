"""`imgpipe demo`: the offline end-to-end demo on scikit-learn's digits (what `make demo` runs)."""

from __future__ import annotations

import argparse
import logging
import os

from imgpipe.cli.flags import whole_number
from imgpipe.cli.output import Command, emit, stdout_to_stderr
from imgpipe.cli.run import run_pipeline
from imgpipe.demo import steps

log = logging.getLogger(__name__)


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workdir", default="demo_out", help="where data, home and serving dir go (default demo_out)"
    )
    p.add_argument(
        "--backbone", default="DenseNet121", help="backbone to pre-train and transfer (default DenseNet121)"
    )
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="cap on head-training epochs on the target task (default: the Trainer's; early stopping ends sooner)",
    )
    p.add_argument("--min-accuracy", type=float, default=0.9)
    p.add_argument(
        "--replicas",
        type=whole_number(1, None, "a whole number >= 1"),
        default=None,
        help="split the CPU into N logical devices",
    )
    p.add_argument("--verbose", action="store_true")


def _run(args: argparse.Namespace) -> int:
    if args.replicas:
        # Before the data preparation and pre-training below run TensorFlow in this process.
        from trainer import distribution

        distribution.split_cpu(args.replicas)
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    with stdout_to_stderr():
        source, target = steps.prepare_data(workdir, args.image_size)
        weights = steps.pretrained_backbone(
            workdir, source, args.backbone, args.image_size, args.pretrain_epochs
        )
    config = steps.target_config(
        workdir,
        target,
        args.backbone,
        weights,
        args.image_size,
        args.epochs,
        args.min_accuracy,
        replicas=args.replicas,
    )
    log.info(
        "running the pipeline on the target task (digits %d-%d)",
        steps.TARGET_DIGITS[0],
        steps.TARGET_DIGITS[-1],
    )
    emit(run_pipeline(config, args.verbose))
    log.info(
        "serve it: imgpipe serve --model-base-path %s --model-name %s",
        config.model_serving_dir,
        config.model_name,
    )
    return 0


COMMANDS = [Command("demo", "offline end-to-end demo on scikit-learn digits", _add, _run)]
