"""``ingest``: scan -> plan -> write, with the argument checks and the summary line."""

from __future__ import annotations

import collections
import logging
import numbers
import os
from collections.abc import Callable
from typing import Any

from imgpipe.ingest.contract import REPORT_FILE
from imgpipe.ingest.errors import IngestError
from imgpipe.ingest.plan import Plan, make_plan
from imgpipe.ingest.report import IngestReport, display_path, left_out_files
from imgpipe.ingest.scan import MAX_ASPECT, Scan, check_images_dir, scan_tree
from imgpipe.ingest.write import check_out_dir, write_outputs
from trainer.features import DEFAULT_MAX_PIXELS, counted

log = logging.getLogger(__name__)


def ingest(
    images_dir: str,
    out_dir: str,
    eval_fraction: float = 0.2,
    seed: int = 42,
    num_shards: int | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    overwrite: bool = False,
    progress_every: int = 1000,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_left_out_classes: bool = False,
    sets_by_folder: bool = False,
) -> IngestReport:
    """Check, de-duplicate and split an image tree into train/eval TFRecords.

    Each class gets round(eval_fraction * n) of its n unique images in eval,
    at least one in eval and one in train when n >= 2 (a single-image class
    goes to train and is warned about). ``num_shards`` is the shard count per
    split (capped at its record count); None sizes shards at ~128 MiB.
    Progress lines (every ``progress_every`` files) and a final summary go to
    the ``imgpipe.ingest.*`` loggers at INFO, or, when given, to ``progress``
    (each line prefixed ``ingest: ``). ``overwrite=True`` lets ``out_dir`` be
    non-empty and replaces only ingest's own outputs in it. Images whose header
    declares more than ``max_pixels`` (width x height) are skipped undecoded;
    the pipeline's graph refuses them too (``max_image_pixels``). Class folder
    names become labels as ``labels`` decides (Unicode NFC; refused names and
    name conflicts are reported). A class folder holding files that would not become a class
    (a refused name, a name conflict, no usable image) makes ingest refuse the tree, naming
    each one, unless ``allow_left_out_classes``: a model without a class the user gave images
    for is not what was asked for. Raises IngestError.
    """
    _check_arguments(eval_fraction, seed, num_shards, progress_every)
    if not _is_number(max_pixels, numbers.Integral) or max_pixels < 1:
        raise IngestError(f"max_pixels must be a positive int, got {max_pixels!r}")
    check_images_dir(images_dir)
    check_out_dir(images_dir, out_dir, overwrite)
    say = (lambda line: progress(f"ingest: {line}")) if progress else None
    report = IngestReport(
        images_dir=os.path.abspath(images_dir),
        out_dir=os.path.abspath(out_dir),
        seed=int(seed),
        eval_fraction=float(eval_fraction),
        max_pixels=int(max_pixels),
        allow_left_out_classes=bool(allow_left_out_classes),
        sets_by_folder=bool(sets_by_folder),
    )

    found = scan_tree(images_dir, progress=say, progress_every=progress_every, max_pixels=max_pixels)
    report.skipped, report.files_scanned = found.skipped, found.files_scanned
    report.rejected_class_folders = [
        {"folder": display_path(name), "reason": reason} for name, reason in found.names.rejected.items()
    ]
    report.class_name_conflicts = found.names.conflicts
    report.normalised_classes = found.names.normalised
    report.rotated = found.rotated
    problem = found.nothing_usable(images_dir)
    if problem:
        raise IngestError(problem, report=report.to_dict())

    plan = make_plan(
        found.folders,
        found.candidates,
        seed=seed,
        eval_fraction=eval_fraction,
        num_shards=num_shards,
        sets_by_folder=sets_by_folder,
    )
    report.classes, report.counts = plan.classes, plan.counts
    report.duplicates, report.label_conflicts = plan.duplicates, plan.label_conflicts
    report.near_copies = plan.near_copies
    report.empty_classes, report.warnings = plan.empty_classes, plan.warnings
    report.split_warnings = plan.split_warnings
    report.left_out_classes = left_out_classes(found, plan)
    problem = plan.refusal(images_dir, num_skipped=len(report.skipped))
    if problem:
        raise IngestError(problem, report=report.to_dict())
    lost = [c for c in report.left_out_classes if c["files"] is None or c["files"]]
    if lost and not allow_left_out_classes:
        shown = "; ".join(f"{c['folder']!r} ({left_out_files(c)}): {c['reason']}" for c in lost[:5])
        more = f"; and {len(lost) - 5} more" if len(lost) > 5 else ""
        raise IngestError(
            f"{counted(len(lost), 'class folder')} with files would be left out of the training set: "
            f"{shown}{more}. "
            "Fix them, or pass --allow-left-out-classes (allow_left_out_classes=True) to write the "
            "other classes without them",
            report=report.to_dict(),
        )
    report.warnings += [
        f"class folder {c['folder']!r} ({left_out_files(c)}) is left out: {c['reason']}"
        for c in report.left_out_classes
    ]
    if found.stretched:
        first = found.stretched[0]
        report.warnings.append(
            f"{counted(len(found.stretched), 'image')} with a long side over {MAX_ASPECT} times the short one (e.g. "
            f"{first['path']}, {first['width']} x {first['height']}): the pipeline resizes each image to "
            "a square, without cropping, so their content is squeezed out of shape; crop them, or check "
            "they belong"
        )
    report.shards = plan.shard_names()

    write_outputs(
        images_dir, out_dir, plan, report, overwrite=overwrite, progress=say, progress_every=progress_every
    )
    t = report.totals
    (say or log.info)(
        f"wrote {t['train']} train + {t['eval']} eval records for "
        f"{len(report.classes)} classes to {out_dir}; "
        f"skipped {len(report.skipped)} files, {report.num_duplicates} duplicates, "
        f"{report.num_conflicting_files} label-conflict files, "
        f"{sum(len(n['files']) for n in report.near_copies if n['split'] != 'both')} images in sets of "
        "near-copies kept in one split, "
        f"{len(report.rejected_class_folders) + len(report.left_out_classes)} class folders not used, "
        f"{len(report.rotated)} rotated "
        f"(details in {os.path.join(out_dir, REPORT_FILE)})"
    )
    reasons = collections.Counter(s["reason"] for s in report.skipped)
    for reason, n in reasons.most_common(3):
        (say or log.info)(f"skipped {counted(n, 'file')}: {reason}")
    if len(reasons) > 3:
        (say or log.info)(f"... and {len(reasons) - 3} more reasons (skipped in {REPORT_FILE})")
    for warning in report.warnings:
        if say is None:
            log.warning("%s", warning)  # the log line says "warning:" already
        else:
            say(f"warning: {warning}")
    return report


def left_out_classes(found: Scan, plan: Plan) -> list[dict[str, Any]]:
    """[{"folder", "files", "reason"}] of every class folder that is not a class of the plan:
    refused names and name conflicts (their reason), folders that could not be listed (files
    None: a link to nothing, no permission), and folders with no usable image (the most common
    reasons their files were not used)."""
    left = [
        # A refused name that could not be listed either: its files are unknown, so lost (a review).
        {"folder": display_path(name), "files": None, "reason": f"{reason}; {found.unlisted[name]}"}
        if name in found.unlisted
        else {"folder": display_path(name), "files": found.folder_files.get(name, 0), "reason": reason}
        for name, reason in found.names.rejected.items()
    ]
    left += [
        {"folder": display_path(name), "files": None, "reason": reason}
        for name, reason in found.unlisted.items()
        if name not in found.folder_files  # not walked: a link not followed
    ]
    folder_of = {label: name for name, label in found.names.labels.items()}
    for label in plan.empty_classes:
        name = folder_of.get(label, label)
        if name in found.unlisted:  # a class folder that could not be listed
            left.append({"folder": display_path(name), "files": None, "reason": found.unlisted[name]})
            continue
        prefix = display_path(name) + "/"
        reasons = collections.Counter(s["reason"] for s in found.skipped if s["path"].startswith(prefix))
        why = [f"{counted(n, 'file')}: {reason}" for reason, n in reasons.most_common(3)]
        conflicts = sum(1 for c in plan.label_conflicts for f in c["files"] if f["class"] == label)
        if conflicts:
            why.append(f"{counted(conflicts, 'file')}: label conflicts (the same image under another class)")
        reason = f"no usable image ({'; '.join(why)})" if why else "no image files"
        left.append(
            {"folder": display_path(name), "files": found.folder_files.get(name, 0), "reason": reason}
        )
    return left


def _check_arguments(eval_fraction: object, seed: object, num_shards: object, progress_every: object) -> None:
    """Raise IngestError naming the first argument of the wrong type or range."""
    if not _is_number(eval_fraction, numbers.Real) or not 0.0 < eval_fraction < 1.0:
        raise IngestError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
    if not _is_number(seed, numbers.Integral):
        raise IngestError(f"seed must be an int, got {seed!r}")
    if num_shards is not None and (not _is_number(num_shards, numbers.Integral) or num_shards < 1):
        raise IngestError(f"num_shards must be a positive int or None, got {num_shards!r}")
    if not _is_number(progress_every, numbers.Integral) or progress_every < 1:
        raise IngestError(f"progress_every must be >= 1, got {progress_every}")


def _is_number(value: object, kind: type) -> bool:
    """True for ints/floats (numpy scalars too) of ``kind``, never for bools."""
    return isinstance(value, kind) and not isinstance(value, bool)
