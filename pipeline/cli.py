"""The `imgpipe` command: ingest, pretrain-backbone, run, demo, serve, predict.

Progress goes to stderr; the machine-readable result (one JSON line) to stdout.
Exit codes: 0 done, 1 the work failed, 2 bad arguments or configuration,
75 `run --lock-file` found another run holding the lock.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence

# TFT 1.16 and TFMA 0.47 run Keras 2 (tf-keras): choose it before TensorFlow loads.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", category=FutureWarning)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _err(msg: str) -> None:
    print(f"imgpipe: error: {msg}", file=sys.stderr, flush=True)


def _print_json(obj) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


# --------------------------------------------------------------------------- ingest
def _add_ingest(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, help="class-per-subfolder image tree (IMAGES/<class>/<file>)")
    p.add_argument("--out", required=True, help="output TFRecord directory (train/ and eval/ are written)")
    p.add_argument(
        "--eval-fraction", type=float, default=0.2, help="share of each class for eval (default 0.2)"
    )
    p.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    p.add_argument("--shards", type=int, default=None, help="TFRecord shards per split (default: by size)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")


def _cmd_ingest(args) -> int:
    from pipeline import ingest

    try:
        report = ingest.ingest(
            args.images,
            args.out,
            eval_fraction=args.eval_fraction,
            seed=args.seed,
            num_shards=args.shards,
            overwrite=args.overwrite,
        )
    except ingest.IngestError as e:
        _err(str(e))
        return EXIT_USAGE
    _print_json(report.to_dict())
    return EXIT_OK


# --------------------------------------------------------------------------- pretrain
def _add_pretrain(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="TFRecord dir of the source task (from `imgpipe ingest`)")
    p.add_argument("--backbone", required=True, help="tf.keras.applications name, e.g. DenseNet121")
    p.add_argument("--out", required=True, help="weights file to write (.h5)")
    p.add_argument("--image-size", type=int, default=32, help="input size in pixels (default 32)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs (default 15)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)


def _cmd_pretrain(args) -> int:
    from trainer import backbones

    try:
        backbones.get(args.backbone)
    except ValueError as e:
        _err(str(e))
        return EXIT_USAGE
    from trainer.pretrain import pretrain_backbone

    try:
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
        _err(str(e))
        return EXIT_USAGE
    _print_json(report)
    return EXIT_OK


# --------------------------------------------------------------------------- run
def _add_run(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and locations")
    g.add_argument(
        "--data", dest="data_dir", help="TFRecord dir with train/ and eval/ (from `imgpipe ingest`)"
    )
    g.add_argument("--config", help="YAML config file; flags override its values")
    g.add_argument("--home", help="pipeline home: artifacts and ML Metadata (default imgpipe_home)")
    g.add_argument("--pipeline-name")
    g.add_argument("--model-name", help="TF Serving model name (default imgpipe)")
    g.add_argument(
        "--serving-dir", help="TF Serving model base dir root; pushes go to SERVING_DIR/MODEL_NAME/<version>"
    )
    g = p.add_argument_group("model")
    g.add_argument("--backbone", help="tf.keras.applications backbone (default MobileNetV2)")
    g.add_argument("--weights", help="imagenet (default) | none | path to a weights file (.h5)")
    g.add_argument("--image-size", type=int, help="input size (default: the backbone's)")
    g.add_argument("--dropout", type=float)
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", type=int, help="per replica (global = this x replicas)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--steps-per-epoch", type=int)
    g.add_argument("--learning-rate", type=float)
    g.add_argument(
        "--fine-tune-layers", type=int, help="unfreeze the top K backbone layers in a second phase"
    )
    g.add_argument("--fine-tune-epochs", type=int)
    g.add_argument("--fine-tune-learning-rate", type=float)
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None, help="flip + crop/zoom")
    g.add_argument(
        "--feature-cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the head on backbone features computed once (default on where valid)",
    )
    g.add_argument("--seed", type=int)
    g = p.add_argument_group("gate")
    g.add_argument("--min-accuracy", type=float, help="absolute accuracy floor for blessing (default 0.5)")
    g.add_argument(
        "--max-regression", type=float, help="allowed accuracy drop vs the blessed baseline (default 0)"
    )
    g = p.add_argument_group("execution")
    g.add_argument("--beam-runner", help="direct (default) | multiprocess | dataflow | flink | spark")
    g.add_argument("--beam-workers", type=int, help="workers for the multiprocess runner (default: CPUs)")
    g.add_argument(
        "--beam-arg", dest="beam_args", action="append", help="extra Beam pipeline arg (repeatable)"
    )
    g.add_argument("--replicas", type=int, help="testing aid: split the CPU into N logical devices")
    g.add_argument(
        "--cache",
        dest="enable_cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reuse cached component outputs (default on)",
    )
    p.add_argument("--verbose", action="store_true", help="show TFX's own logs")
    p.add_argument("--lock-file", help="hold this lock for the run; if another run holds it, exit 75 at once")


RUN_FIELDS = (
    "data_dir",
    "home",
    "pipeline_name",
    "model_name",
    "serving_dir",
    "backbone",
    "weights",
    "image_size",
    "dropout",
    "batch_size",
    "epochs",
    "steps_per_epoch",
    "learning_rate",
    "fine_tune_layers",
    "fine_tune_epochs",
    "fine_tune_learning_rate",
    "augment",
    "feature_cache",
    "seed",
    "min_accuracy",
    "max_regression",
    "beam_runner",
    "beam_workers",
    "beam_args",
    "replicas",
    "enable_cache",
)


def config_from_args(args):
    from pipeline.config import PipelineConfig

    base = PipelineConfig.from_yaml(args.config) if args.config else PipelineConfig()
    return base.replace(**{k: getattr(args, k, None) for k in RUN_FIELDS})


def _run_pipeline(config, verbose: bool) -> int:
    from pipeline.config import ConfigError
    from pipeline.local import PipelineRunError, run_local

    try:
        summary = run_local(config, verbose=verbose)
    except ConfigError as e:
        _err(str(e))
        return EXIT_USAGE
    except PipelineRunError as e:
        _err(f"pipeline run failed: {e}")
        return EXIT_FAILED
    result = summary.to_dict()
    print(
        f"[imgpipe] run {summary.run_id}: accuracy {summary.accuracy}, "
        f"blessed {summary.blessed}, pushed {summary.pushed or 'nothing'}",
        file=sys.stderr,
        flush=True,
    )
    _print_json(result)
    return EXIT_OK


def _cmd_run(args) -> int:
    from pipeline.config import ConfigError

    try:
        config = config_from_args(args)
    except ConfigError as e:
        _err(str(e))
        return EXIT_USAGE
    from pipeline.schedule import run_locked

    return run_locked(getattr(args, "lock_file", None), lambda: _run_pipeline(config, args.verbose))


# --------------------------------------------------------------------------- demo
def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workdir", default="demo_out", help="where data, home and serving dir go (default demo_out)"
    )
    p.add_argument(
        "--backbone", default="DenseNet121", help="backbone to pre-train and transfer (default DenseNet121)"
    )
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument("--epochs", type=int, default=30, help="head training epochs on the target task")
    p.add_argument("--min-accuracy", type=float, default=0.9)
    p.add_argument("--replicas", type=int, default=None, help="split the CPU into N logical devices")
    p.add_argument("--verbose", action="store_true")


def _cmd_demo(args) -> int:
    from pipeline import demo

    return demo.run_demo(args)


# --------------------------------------------------------------------------- serving
def _cmd_serve(args) -> int:
    from serving import server  # loads TensorFlow: only when the command runs

    return server.run_serve(args)


def _cmd_predict(args) -> int:
    from serving import client

    return client.run_predict(args)


# --------------------------------------------------------------------------- main
Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _commands() -> list[Command]:
    from pipeline import cli_scale
    from serving import config as serving_config

    cmds: list[Command] = [
        ("ingest", "image folder tree -> train/eval TFRecords", _add_ingest, _cmd_ingest),
        (
            "pretrain-backbone",
            "pre-train a backbone on a source task; write a weights file",
            _add_pretrain,
            _cmd_pretrain,
        ),
        ("run", "run the pipeline locally (LocalDagRunner, SQLite ML Metadata)", _add_run, _cmd_run),
        ("demo", "offline end-to-end demo on scikit-learn digits", _add_demo, _cmd_demo),
        (
            "serve",
            "serve pushed models over TF Serving's gRPC API (dev/test server)",
            serving_config.add_serve_arguments,
            _cmd_serve,
        ),
        (
            "predict",
            "query a TF Serving (or `imgpipe serve`) endpoint with images",
            serving_config.add_predict_arguments,
            _cmd_predict,
        ),
    ]
    cmds.extend(cli_scale.commands())  # compile, submit, schedule
    return cmds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgpipe",
        description="Labelled image folders -> a gated, served image classifier (TFX transfer learning).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text, add, handler in _commands():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
