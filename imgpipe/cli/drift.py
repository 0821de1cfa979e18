"""`imgpipe drift`: have the served images drifted from a run's training data?

Reads the request logs of `imgpipe serve --log-requests DIR`, measures the
logged images and the run's training split with one function, compares them
with TFDV and prints one JSON result. Exit codes: 0 no drift, 3 drift (a
feature above its threshold: a schedule can trigger retraining on it), 1 the
check could not judge (too few measurable images), 2 bad arguments, no logs,
or no such run.
"""

from __future__ import annotations

import argparse

from imgpipe.cli.flags import fraction, non_negative_number
from imgpipe.cli.output import EXIT_DRIFT, EXIT_OK, Command, UsageError, WorkFailed, emit, emit_failure
from imgpipe.drift import (
    DEFAULT_CATEGORICAL_THRESHOLD,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MIN_IMAGES,
    DEFAULT_NUMERIC_THRESHOLD,
    DEFAULT_SIGNIFICANCE,
    FEATURE_NAMES,
)
from pipeline.config import PipelineConfig


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--logs", required=True, metavar="DIR", help="request log directory (imgpipe serve --log-requests)"
    )
    p.add_argument(
        "--run",
        required=True,
        metavar="RUN_ID|latest|served",
        help="the run whose training split is the reference: a run id, `latest` (the newest run that "
        "finished) or `served` (the run that pushed the model version that answered most logged requests)",
    )
    p.add_argument(
        "--model-name",
        metavar="NAME",
        default=None,
        help="read only the logged requests for this model (default: the run's model_name; give the "
        "server's --model-name when it serves the run's model under another name)",
    )
    p.add_argument(
        "--home",
        default=PipelineConfig.model_fields["home"].default,
        help="pipeline home holding runs/ (each run's saved config names its ML Metadata store: SQLite in the "
        "home or PostgreSQL) (default %(default)s)",
    )
    p.add_argument(
        "--categorical-threshold",
        type=non_negative_number,
        default=DEFAULT_CATEGORICAL_THRESHOLD,
        help="L-infinity distance above which channels, format or class drifted (default %(default)s)",
    )
    p.add_argument(
        "--numeric-threshold",
        type=non_negative_number,
        default=DEFAULT_NUMERIC_THRESHOLD,
        help="Jensen-Shannon divergence above which width, height or brightness drifted "
        "(default %(default)s)",
    )
    p.add_argument(
        "--significance",
        type=fraction,
        default=DEFAULT_SIGNIFICANCE,
        help="a distance above its threshold is drift only when two samples of these sizes from one "
        "distribution would be that far apart less often than this (permutation test; "
        "Kolmogorov-Smirnov for brightness); 0: the thresholds alone (default %(default)s)",
    )
    p.add_argument(
        "--ignore-feature",
        action="append",
        choices=FEATURE_NAMES,
        default=[],
        metavar="NAME",
        help="measure and report this feature but do not count it as drift (repeatable; one of "
        f"{', '.join(FEATURE_NAMES)}; e.g. channels and format when clients may re-encode images)",
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=DEFAULT_MAX_IMAGES,
        help="measure at most N images per side, a seeded uniform sample (default %(default)s)",
    )
    p.add_argument(
        "--min-images",
        type=int,
        default=DEFAULT_MIN_IMAGES,
        help="refuse to judge (exit 1) with fewer measurable images on a side (default %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the samples and of the permutation test (default %(default)s)",
    )


def _run(args: argparse.Namespace) -> int:
    for name in ("categorical_threshold", "numeric_threshold"):
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    for name in ("max_images", "min_images"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.min_images > args.max_images:
        raise UsageError(f"--min-images {args.min_images} is above --max-images {args.max_images}")
    # Loads TensorFlow and TFDV: imported only when the command runs.
    from imgpipe.drift.detect import TooFewImages, drift_report
    from imgpipe.drift.sources import SourceError

    try:
        report = drift_report(
            args.logs,
            args.home,
            args.run,
            categorical_threshold=args.categorical_threshold,
            numeric_threshold=args.numeric_threshold,
            significance=args.significance,
            ignore=args.ignore_feature,
            max_images=args.max_images,
            min_images=args.min_images,
            seed=args.seed,
            model_name=args.model_name,
        )
    except SourceError as e:
        raise UsageError(str(e)) from e
    except TooFewImages as e:
        # Still one JSON line on stdout: a schedule reading it sees "not judged", not nothing.
        emit_failure({"drift": None, "judged": False, "reason": str(e), **e.counts})
        raise WorkFailed(f"cannot judge drift: {e}") from e
    emit({**report, "judged": True})
    return EXIT_DRIFT if report["drift"] else EXIT_OK


COMMANDS = [
    Command(
        "drift",
        "compare logged serving requests with a run's training data (TFDV); exit 3 on drift",
        _add,
        _run,
    )
]
