"""`imgpipe ingest`: an image folder tree -> train/eval TFRecords, with a JSON report."""

from __future__ import annotations

import argparse
import collections
import logging

from imgpipe.cli.flags import open_fraction, whole_number
from imgpipe.cli.output import Command, UsageError, WorkFailed, emit
from imgpipe.ingest import IngestError, IngestWriteError, ingest, left_out_files
from trainer.features import DEFAULT_MAX_PIXELS

log = logging.getLogger("imgpipe.ingest")


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, help="class-per-subfolder image tree (IMAGES/<class>/<file>)")
    p.add_argument("--out", required=True, help="output TFRecord directory (train/ and eval/ are written)")
    p.add_argument(
        "--eval-fraction", type=open_fraction, default=0.2, help="share of each class for eval (default 0.2)"
    )
    p.add_argument(
        "--seed",
        type=whole_number(0, 2**32 - 1, "a whole number 0..2**32 - 1"),
        default=42,
        help="split seed (default 42)",
    )
    p.add_argument(
        "--shards",
        type=whole_number(1, None, "a whole number >= 1"),
        default=None,
        help="TFRecord shards per split (default: by size)",
    )
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    p.add_argument(
        "--allow-left-out-classes",
        action="store_true",
        help="write the other classes when a class folder holding files cannot be a class (a refused "
        "or conflicting name, no usable image); by default ingest refuses the tree and names them",
    )
    p.add_argument(
        "--sets-by-folder",
        action="store_true",
        help="the images under each folder inside a class folder (IMAGES/<class>/<clip>/<frame>) are one "
        "set, as near-copies are: kept in one split, counted once by the gate, kept whole in the "
        "Trainer's validation (the frames of a clip, one object's photos, one session's shots)",
    )
    p.add_argument(
        "--max-pixels",
        type=whole_number(1, None, "a whole number >= 1"),
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
            sets_by_folder=args.sets_by_folder,
            allow_left_out_classes=args.allow_left_out_classes,
        )
    except IngestError as e:
        if e.report is not None:
            # What the scan found, so the refusal can be acted on: the partial report on
            # stdout (one JSON line, "refused" holds the reason), its gist on stderr.
            emit({**e.report, "refused": str(e)})
            for line in _refusal_details(e.report):
                log.error(line)
        raise UsageError(str(e)) from e
    except IngestWriteError as e:
        raise WorkFailed(str(e)) from e
    emit(report.to_dict())
    return 0


def _refusal_details(report: dict) -> list[str]:
    """Lines naming what made a refused tree unusable: skip reasons with counts, conflicts."""
    lines = []
    left_out = report.get("left_out_classes", [])
    # A refused class folder's files are skipped with its reason: said once, by its own line below.
    reasons = collections.Counter(
        s["reason"]
        for s in report.get("skipped", [])
        if not (left_out and s["reason"].startswith("class folder ") and " is not used: " in s["reason"])
    )
    for reason, n in reasons.most_common(5):
        lines.append(f"skipped {n} file(s): {reason}")
    if len(reasons) > 5:
        lines.append(f"... and {len(reasons) - 5} more reasons (all in the JSON report on stdout)")
    conflicts = report.get("label_conflicts", [])
    for conflict in conflicts[:5]:
        files = ", ".join(f"{f['path']} ({f['class']})" for f in conflict["files"])
        what = "bytes" if conflict.get("same", "bytes") == "bytes" else "image (files that differ)"
        lines.append(f"label conflict, the same {what} under several classes: {files}")
    if len(conflicts) > 5:
        lines.append(f"... and {len(conflicts) - 5} more label conflicts (all in the JSON report on stdout)")
    for folder in left_out:
        lines.append(
            f"class folder {folder['folder']!r} ({left_out_files(folder)}) not used: {folder['reason']}"
        )
    return lines


COMMANDS = [Command("ingest", "image folder tree -> train/eval TFRecords", _add, _run)]
