"""`imgpipe demo`: the offline end-to-end demo on scikit-learn's digits (what `make demo` runs)."""

from __future__ import annotations

import argparse
import logging
import os

from imgpipe.cli.flags import fraction, naming_flags, whole_number
from imgpipe.cli.output import Command, emit, stdout_to_stderr
from imgpipe.cli.run import run_pipeline
from imgpipe.demo import steps
from pipeline.config import ConfigError, check_writable_dir
from trainer import backbones

# The demo's flags that set a field of the pipeline's config: its errors name both.
_CONFIG_FLAGS = {
    "backbone": "--backbone",
    "image_size": "--image-size",
    "epochs": "--epochs",
    "min_accuracy": "--min-accuracy",
    "replicas": "--replicas",
}

log = logging.getLogger(__name__)


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workdir",
        default="demo_out",
        help="where data, home and serving dir go (default %(default)s)",
    )
    p.add_argument(
        "--backbone",
        default="DenseNet121",
        help=f"backbone to pre-train and transfer: {', '.join(backbones.names())} (default %(default)s)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=32,
        help="size in pixels of the digits' images and of both models' input, at least the backbone's "
        "minimum (default %(default)s)",
    )
    p.add_argument(
        "--pretrain-epochs",
        type=whole_number(1, None, "a whole number >= 1"),
        default=15,
        help="epochs of the backbone's pre-training on the source task (default %(default)s)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="cap on head-training epochs on the target task (default: the Trainer's; early stopping ends sooner)",
    )
    p.add_argument(
        "--min-accuracy",
        type=fraction,
        default=0.9,
        help="the gate's floor on the gated metric (accuracy; balanced accuracy on a skewed eval split), "
        "0..1 (default %(default)s)",
    )
    p.add_argument(
        "--replicas",
        type=whole_number(1, None, "a whole number >= 1"),
        default=None,
        help="split the CPU into N logical devices",
    )
    p.add_argument("--verbose", action="store_true", help="show TFX's own logs")


def _run(args: argparse.Namespace) -> int:
    workdir = os.path.abspath(args.workdir)
    check_writable_dir("--workdir", args.workdir, "the demo's data, home and serving dir go there")
    # Every argument is checked before any work: the pipeline's config, built (and validated as
    # `imgpipe run` validates it: ConfigError naming the field, exit 2) from the paths the
    # steps below will write. Nothing is read from disk yet.
    try:
        config = steps.target_config(
            workdir,
            steps.records_dir(workdir, "target"),
            args.backbone,
            steps.weights_path(workdir, args.backbone, args.image_size),
            args.image_size,
            args.epochs,
            args.min_accuracy,
            replicas=args.replicas,
        )
    except ConfigError as e:
        raise ConfigError(naming_flags(str(e), _CONFIG_FLAGS)) from None
    if args.replicas:
        # Before the data preparation and pre-training below run TensorFlow in this process.
        from trainer import distribution

        distribution.split_cpu(args.replicas)
    os.makedirs(workdir, exist_ok=True)
    with stdout_to_stderr():
        source, _ = steps.prepare_data(workdir, args.image_size)  # the target's: config.data_dir
        steps.pretrained_backbone(  # writes config.training.weights
            workdir, source, args.backbone, args.image_size, args.pretrain_epochs
        )
    log.info(
        "running the pipeline on the target task (digits %d-%d)",
        steps.TARGET_DIGITS[0],
        steps.TARGET_DIGITS[-1],
    )
    summary = run_pipeline(config, args.verbose)
    emit(summary)
    from components.pusher import newest_version  # loaded by the run already

    if newest_version(config.model_serving_dir) is not None:  # pushed now, or by an earlier demo
        log.info(
            "serve it: imgpipe serve --model-base-path %s --model-name %s",
            config.model_serving_dir,
            config.model_name,
        )
    else:
        log.warning(
            "nothing to serve: no model was pushed to %s (%s; the gate's reasons are above). More "
            "--pretrain-epochs or --epochs, or a lower --min-accuracy, give a model the gate passes",
            config.model_serving_dir,
            "the model was not blessed" if not summary.get("blessed") else "the push was skipped",
        )
    return 0


COMMANDS = [Command("demo", "offline end-to-end demo on scikit-learn digits", _add, _run)]
