"""`imgpipe predict-batch`: score a folder (or glob) of images with a model, as a Beam job."""

from __future__ import annotations

import argparse
import logging
import re

from pydantic import ValidationError

from imgpipe.cli.flags import host_port, positive_number
from imgpipe.cli.output import Command, UsageError, WorkFailed, emit, emit_failure
from imgpipe.orchestration.lock import LockBusy
from pipeline.beam import BeamConfig
from pipeline.config import ConfigError, describe
from trainer.features import DEFAULT_MAX_PIXELS


def _add(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model", help="SavedModel dir, or a model base path (SERVING_DIR/NAME): its newest version"
    )
    source.add_argument(
        "--target", type=host_port, help="HOST:PORT of TF Serving or `imgpipe serve` (needs --model-name)"
    )
    p.add_argument("--model-name", help="served model name (with --target; with --model: the logs' name)")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--model-version",
        type=int,
        default=None,
        help="with --target: score with this version (default: the newest the server has available "
        "when the job starts; every image is scored by that one version)",
    )
    which.add_argument(
        "--model-version-label",
        metavar="LABEL",
        default=None,
        help="with --target: score with the version this label of the server's model config names "
        "when the job starts (version_labels in models.config, e.g. stable)",
    )
    p.add_argument(
        "--images", required=True, help="image directory (recursive) or glob, e.g. 'photos/**/*.jpg'"
    )
    p.add_argument(
        "--out",
        required=True,
        help="output file; its extension picks the format: .csv (path,rank,class,score), "
        ".jsonl or .ndjson (one JSON per image) or .tfrecord/.tfrecords (TF Serving PredictionLogs). "
        "Skipped files and the counts go to OUT.report.json",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per model call (default 32)")
    p.add_argument(
        "--top-k", type=int, default=None, help="keep the K best classes (default: all the model gives)"
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"skip images declaring more pixels, undecoded, as ingest does (default {DEFAULT_MAX_PIXELS})",
    )
    p.add_argument(
        "--timeout",
        type=positive_number,
        default=30.0,
        help="deadline per RPC with --target, seconds (default 30)",
    )
    fields = BeamConfig.model_fields
    p.add_argument(
        "--beam-runner", default="direct", help=f"{fields['beam_runner'].description} (default direct)"
    )
    p.add_argument(
        "--beam-workers", type=int, default=0, help=f"{fields['beam_workers'].description} (default 0)"
    )
    p.add_argument(
        "--beam-arg", action="append", default=[], metavar="ARG", help=fields["beam_args"].description
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)")


def _run(args: argparse.Namespace) -> int:
    from imgpipe.batch import BatchError, ServerUnusable, predict_batch  # loads Beam: only when it runs

    try:
        beam = BeamConfig(
            beam_runner=args.beam_runner, beam_workers=args.beam_workers, beam_args=args.beam_arg
        )
    except ValidationError as e:
        raise UsageError(describe(e)) from e
    beam_step_errors = logging.getLogger("apache_beam.runners.common")
    beam_step_errors.addFilter(_no_step_tracebacks)
    try:
        result = predict_batch(
            args.images,
            args.out,
            model_dir=args.model,
            target=args.target,
            model_name=args.model_name,
            model_version=args.model_version,
            model_version_label=args.model_version_label,
            batch_size=args.batch_size,
            top_k=args.top_k,
            max_pixels=args.max_pixels,
            beam=beam,
            progress=False if args.no_progress else None,
            timeout=args.timeout,
        )
    except (BatchError, ConfigError) as e:
        raise UsageError(str(e)) from e
    except ServerUnusable as e:
        raise WorkFailed(str(e)) from e
    except LockBusy:  # another job writes this OUT: exit 75, as a run refused by its lock
        raise
    except Exception as e:  # noqa: BLE001 - the job failed (model, server, runner): exit 1 with why
        raise WorkFailed(f"predict-batch failed: {_why(e)}") from e
    finally:
        beam_step_errors.removeFilter(_no_step_tracebacks)
    if result.files and not result.scored:
        emit_failure(result.to_dict(with_skipped=False))
        raise WorkFailed(
            f"no image was scored: all {result.files} files were skipped (reasons in {result.report})"
        )
    emit(result.to_dict(with_skipped=False))
    return 0


# Beam's runners re-raise a step's exception as a RuntimeError naming it and the step:
# "serving.errors.ServingRpcError: Predict to HOST failed: ... [while running 'Score/ParDo(...)']".
_WRAPPED = re.compile(r"^(?:[\w.]+\.)?([A-Z]\w*): (.*?)(?: \[while running '([^']*)'\])?$", re.S)


def _no_step_tracebacks(record: logging.LogRecord) -> bool:
    """Drop Beam's log of a step's exception ("... [while running 'Score/...']" and its
    traceback): the runner raises it again, and the command says it once, as `_why` reads it
    (or as stopped, for a Ctrl-C or SIGTERM the step was interrupted by)."""
    return not (record.levelno >= logging.ERROR and "[while running" in record.getMessage())


def _why(e: Exception) -> str:
    """The failure as its own exception names it, not as the runner's wrapper does."""
    text = str(e).strip()
    wrapped = _WRAPPED.match(text) if isinstance(e, RuntimeError) else None
    if wrapped:
        name, message, step = wrapped.groups()
        return f"{name}: {message.strip()}" + (f" (in the job's step {step})" if step else "")
    return f"{type(e).__name__}: {text}"


COMMANDS = [
    Command(
        "predict-batch",
        "score a folder of images with a model (SavedModel or TF Serving), as a Beam job",
        _add,
        _run,
    )
]
