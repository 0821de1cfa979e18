"""`imgpipe ingest`: an image folder tree -> train/eval TFRecords, with a JSON report."""

from __future__ import annotations

import argparse

from imgpipe.cli.output import Command, UsageError, emit
from imgpipe.ingest import IngestError, ingest
from trainer.features import DEFAULT_MAX_PIXELS


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, help="class-per-subfolder image tree (IMAGES/<class>/<file>)")
    p.add_argument("--out", required=True, help="output TFRecord directory (train/ and eval/ are written)")
    p.add_argument(
        "--eval-fraction", type=float, default=0.2, help="share of each class for eval (default 0.2)"
    )
    p.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    p.add_argument("--shards", type=int, default=None, help="TFRecord shards per split (default: by size)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="skip images whose header declares more pixels (width x height), undecoded "
        f"(default {DEFAULT_MAX_PIXELS}; `imgpipe run --max-image-pixels` is the model's limit)",
    )


def _run(args: argparse.Namespace) -> int:
    try:
        report = ingest(
            args.images,
            args.out,
            eval_fraction=args.eval_fraction,
            seed=args.seed,
            num_shards=args.shards,
            overwrite=args.overwrite,
            max_pixels=args.max_pixels,
        )
    except IngestError as e:
        raise UsageError(str(e)) from e
    emit(report.to_dict())
    return 0


COMMANDS = [Command("ingest", "image folder tree -> train/eval TFRecords", _add, _run)]
