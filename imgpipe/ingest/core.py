"""Ingest: a class-per-folder image tree -> split, sharded TFRecords for ExampleGen.

Input is the layout of Keras ``image_dataset_from_directory``::

    images_dir/<class_name>/**/<image files>

Output (what ``ImportExampleGen`` reads, one sub-folder per split)::

    out_dir/train/data-00000-of-0000N.tfrecord   tf.train.Example:
    out_dir/eval/data-00000-of-0000M.tfrecord      image: bytes (file bytes, unchanged)
    out_dir/classes.json                           label: bytes (class folder, utf-8)
    out_dir/ingest_report.json

Every file is decoded twice before it is accepted: fully by Pillow (catches
truncation that ``verify()`` misses) and by ``tf.io.decode_image`` (the decoder
the pipeline itself uses, which rejects some files Pillow reads). Nothing is
dropped silently: each file that is not written is in the report with a reason.

The split is deterministic and content-addressed: identical bytes (same SHA-256)
are one group, so copies never straddle train and eval; a group's split is
decided by hashing (seed, class, content), never by file order or names.

Memory stays bounded: a checking pass keeps only (path, class, hash, size) per
file; a writing pass re-reads each kept file and verifies its hash again.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import numbers
import os
import re
import shutil
import stat
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from PIL import Image

from trainer.features import IMAGE_KEY, LABEL_KEY

__all__ = [
    "ACCEPTED_FORMATS",
    "CLASSES_FILE",
    "REPORT_FILE",
    "SPLITS",
    "IngestError",
    "IngestReport",
    "ingest",
    "validate_tfrecord_dir",
]

SPLITS = ("train", "eval")
REPORT_FILE = "ingest_report.json"
CLASSES_FILE = "classes.json"
# Pillow format name -> the format we report. MPO is the multi-picture JPEG
# many cameras write; its bytes start as a plain JPEG and TF decodes them so.
ACCEPTED_FORMATS = {
    "JPEG": "JPEG",
    "MPO": "JPEG",
    "PNG": "PNG",
    "GIF": "GIF",
    "BMP": "BMP",
}
# Auto sharding aims for ~128 MiB shards: big enough for efficient sequential
# reads, small enough to parallelise Beam / tf.data reading.
TARGET_SHARD_BYTES = 128 * 1024 * 1024
STAGING_PREFIX = ".ingest-tmp-"  # work dir inside out_dir, renamed into place
NOT_IN_CLASS_FOLDER = "not in a class folder (files directly in images_dir are ignored)"


class IngestError(ValueError):
    """Bad ingest input or output location; the message names the path at fault.

    ``report`` holds the partial report (as a dict) when the failure was found
    after scanning, so callers can show which files were skipped and why.
    """

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class IngestReport:
    """What ``ingest`` wrote and everything it did not write, with reasons.

    ``counts``: class -> {"train": n, "eval": n} records written. ``shards``:
    split -> shard file names. ``files_scanned``: every non-hidden entry looked
    at; it equals records written + skipped + duplicates + label-conflict
    files. ``skipped``: [{"path", "reason"}] (paths relative to images_dir).
    ``duplicates``: one entry per set of identical files in a class, naming the
    copy ``kept`` (written to ``split``) and the ``duplicates`` not written.
    ``label_conflicts``: identical bytes under several classes, none written.
    ``empty_classes``: class folders with no usable image (left out).
    """

    images_dir: str
    out_dir: str
    seed: int
    eval_fraction: float
    classes: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    shards: dict[str, list[str]] = field(default_factory=dict)
    files_scanned: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    label_conflicts: list[dict[str, Any]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        """Records written per split."""
        return {s: sum(c.get(s, 0) for c in self.counts.values()) for s in SPLITS}

    @property
    def num_duplicates(self) -> int:
        """Files not written because an identical file of the same class was."""
        return sum(len(d["duplicates"]) for d in self.duplicates)

    @property
    def num_conflicting_files(self) -> int:
        """Files not written because identical bytes sit under several classes."""
        return sum(len(c["files"]) for c in self.label_conflicts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; key order is fixed so the JSON file is reproducible."""
        return {
            "images_dir": self.images_dir,
            "out_dir": self.out_dir,
            "seed": self.seed,
            "eval_fraction": self.eval_fraction,
            "classes": list(self.classes),
            "counts": {c: dict(v) for c, v in self.counts.items()},
            "totals": self.totals,
            "shards": {s: list(v) for s, v in self.shards.items()},
            "files_scanned": self.files_scanned,
            "num_skipped": len(self.skipped),
            "skipped": [dict(s) for s in self.skipped],
            "num_duplicates": self.num_duplicates,
            "duplicates": [dict(d) for d in self.duplicates],
            "num_label_conflict_files": self.num_conflicting_files,
            "label_conflicts": [dict(c) for c in self.label_conflicts],
            "empty_classes": list(self.empty_classes),
            "warnings": list(self.warnings),
        }


class _Candidate(NamedTuple):
    """One decodable image found by the checking pass (no pixel data kept)."""

    rel: str  # path relative to images_dir, '/'-separated
    label: str
    sha256: str
    size: int


def _is_number(value: object, kind: type) -> bool:
    """True for ints/floats (numpy scalars too) of ``kind``, never for bools."""
    return isinstance(value, kind) and not isinstance(value, bool)


def _print_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _display(path: str) -> str:
    """A path safe to put in JSON (undecodable bytes shown as escapes)."""
    return path.encode("utf-8", "backslashreplace").decode("utf-8")


def _rel(root: str, path: str) -> str:
    return _display(os.path.relpath(path, root).replace(os.sep, "/"))


def _tf_error_text(exc: Exception) -> str:
    """TF op error text without the '{{function_node ...}}' / '[Op:...]' noise."""
    text = getattr(exc, "message", None) or str(exc)
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\].*", "", text, flags=re.DOTALL)
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _check_image(data: bytes) -> str | None:
    """Return why ``data`` is not an acceptable image, or None when it is."""
    if not data:
        return "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # per-image Pillow chatter
            with Image.open(io.BytesIO(data)) as image:
                fmt = image.format
                if fmt not in ACCEPTED_FORMATS:
                    return f"unsupported image format {fmt}; accepted: JPEG, PNG, GIF, BMP"
                image.verify()
            # verify() checks structure only; a full decode catches truncation.
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                mode = image.mode
    except Image.UnidentifiedImageError:
        return "not a recognised image (cannot identify image file)"
    except Exception as exc:  # noqa: BLE001 -- Pillow raises many types on bad input; each is reported
        return f"cannot decode: {type(exc).__name__}: {exc}"
    if fmt == "BMP" and mode == "P":
        # tf.io.decode_bmp returns palette indices as grey levels: silent garbage.
        return "palette (indexed-colour) BMP: TensorFlow decodes it wrongly; convert it to PNG"

    import tensorflow as tf

    try:
        tf.io.decode_image(data, expand_animations=False)
    except tf.errors.OpError as exc:
        kind = ACCEPTED_FORMATS[fmt]
        return f"TensorFlow cannot decode this {kind}: {_tf_error_text(exc)}"
    return None


LINK_NOT_FOLLOWED = (
    "directory link not followed: it leads to a folder already scanned, "
    "or to an ancestor of the image tree (a loop)"
)


def _is_within(path: str, parent: str) -> bool:
    return os.path.commonpath([path, parent]) == parent


def _walk_class(
    root: str, class_dir: str, seen: set[str], skipped: list[dict[str, str]]
) -> list[tuple[str, str]]:
    """All non-hidden files under ``class_dir`` (recursively, sorted) as (rel, abs).

    Directory symlinks are followed unless they lead to a folder in ``seen``
    (another class, or one already walked) or to an ancestor of the tree;
    those are reported, so a loop or a link to ``/`` cannot run away.
    """
    files: list[tuple[str, str]] = []
    guards = (os.path.realpath(root), os.path.realpath(class_dir))

    def on_error(exc: OSError) -> None:
        where = exc.filename or class_dir
        skipped.append({"path": _rel(root, where), "reason": f"cannot list directory: {exc}"})

    for dirpath, dirnames, filenames in os.walk(class_dir, onerror=on_error, followlinks=True):
        keep = []
        for name in sorted(dirnames):
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            real = os.path.realpath(path)
            if real in seen or any(_is_within(g, real) for g in guards):
                skipped.append({"path": _rel(root, path), "reason": LINK_NOT_FOLLOWED})
                continue
            seen.add(real)
            keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            if not name.startswith("."):
                path = os.path.join(dirpath, name)
                files.append((_rel(root, path), path))
    return files


def _list_tree(root: str, skipped: list[dict[str, str]]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Class names and (rel, abs, class) of every non-hidden file under them.

    Entries that are not walked (files directly in ``root``, unlistable or
    unfollowed directories) are appended to ``skipped``.
    """
    with os.scandir(root) as entries:
        ordered = sorted(entries, key=lambda e: e.name)
    class_dirs: list[os.DirEntry[str]] = []
    for entry in ordered:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=True):
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise IngestError(
                    f"class folder {_display(entry.path)} has a name that is not valid "
                    "UTF-8; labels are stored as UTF-8 text, so rename the folder"
                ) from exc
            class_dirs.append(entry)
        else:
            skipped.append({"path": _rel(root, entry.path), "reason": NOT_IN_CLASS_FOLDER})
    seen = {os.path.realpath(e.path) for e in class_dirs}
    files: list[tuple[str, str, str]] = []
    for entry in class_dirs:
        files += [(rel, path, entry.name) for rel, path in _walk_class(root, entry.path, seen, skipped)]
    return [e.name for e in class_dirs], files


def _read_regular_file(path: str) -> bytes:
    """File bytes; raises OSError for non-regular files (FIFOs would block)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError("not a regular file")
    with open(path, "rb") as handle:
        return handle.read()


def _eval_count(n: int, eval_fraction: float) -> int:
    """round(eval_fraction * n), half up; >= 1 eval and >= 1 train when n >= 2."""
    if n < 2:
        return 0
    return min(max(math.floor(eval_fraction * n + 0.5), 1), n - 1)


def _rank(*parts: object) -> str:
    """A seeded, content-derived sort key (stable across runs and machines)."""
    return hashlib.sha256("\0".join(str(p) for p in parts).encode("utf-8")).hexdigest()


def _shard_ranges(n: int, num_shards: int) -> list[tuple[int, int]]:
    return [(i * n // num_shards, (i + 1) * n // num_shards) for i in range(num_shards)]


def _check_out_dir(images_dir: str, out_dir: str, overwrite: bool) -> None:
    real_in, real_out = os.path.realpath(images_dir), os.path.realpath(out_dir)
    if real_in == real_out or os.path.commonpath([real_in, real_out]) in (
        real_in,
        real_out,
    ):
        raise IngestError(
            f"out_dir {out_dir} and images_dir {images_dir} overlap; "
            "write the TFRecords outside the image tree"
        )
    if os.path.lexists(out_dir):
        if not os.path.isdir(out_dir):
            raise IngestError(f"out_dir {out_dir} exists and is not a directory")
        if os.listdir(out_dir) and not overwrite:
            raise IngestError(
                f"out_dir {out_dir} exists and is not empty; choose a new directory "
                f"or pass overwrite=True (replaces train/, eval/, {REPORT_FILE} and "
                f"{CLASSES_FILE} only; other files are left alone)"
            )


def _write_json(path: str, payload: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    os.replace(tmp, path)


def _remove_previous_outputs(out_dir: str, keep: str) -> None:
    """Delete only what ``ingest`` writes (used with overwrite=True).

    That includes staging dirs of killed runs, except ``keep`` (the current one).
    """
    leftovers = [n for n in os.listdir(out_dir) if n.startswith(STAGING_PREFIX) and n != keep]
    for name in (*SPLITS, REPORT_FILE, CLASSES_FILE, *leftovers):
        path = os.path.join(out_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


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
) -> IngestReport:
    """Check, de-duplicate and split an image tree into train/eval TFRecords.

    Each class gets round(eval_fraction * n) of its n unique images in eval,
    at least one in eval and one in train when n >= 2 (a single-image class
    goes to train and is warned about). ``num_shards`` is the shard count per
    split (capped at its record count); None sizes shards at ~128 MiB.
    ``progress`` receives progress lines every ``progress_every`` files and a
    final summary (default: stderr). ``overwrite=True`` lets ``out_dir`` be
    non-empty and replaces only ingest's own outputs in it. Raises IngestError.
    """
    say = progress or _print_stderr
    if not _is_number(eval_fraction, numbers.Real) or not 0.0 < eval_fraction < 1.0:
        raise IngestError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
    if not _is_number(seed, numbers.Integral):
        raise IngestError(f"seed must be an int, got {seed!r}")
    if num_shards is not None and (not _is_number(num_shards, numbers.Integral) or num_shards < 1):
        raise IngestError(f"num_shards must be a positive int or None, got {num_shards!r}")
    if not _is_number(progress_every, numbers.Integral) or progress_every < 1:
        raise IngestError(f"progress_every must be >= 1, got {progress_every}")
    if not os.path.exists(images_dir):
        raise IngestError(f"images dir {images_dir} does not exist")
    if not os.path.isdir(images_dir):
        raise IngestError(f"images dir {images_dir} is not a directory")
    _check_out_dir(images_dir, out_dir, overwrite)

    report = IngestReport(
        images_dir=os.path.abspath(images_dir),
        out_dir=os.path.abspath(out_dir),
        seed=int(seed),
        eval_fraction=float(eval_fraction),
    )
    try:
        folders, listed = _list_tree(images_dir, report.skipped)
    except OSError as exc:
        raise IngestError(f"cannot list images dir {images_dir}: {exc}") from exc
    not_walked = len(report.skipped)
    if not folders:
        raise IngestError(
            f"no class subfolders in {images_dir}: "
            f"expected {images_dir}/<class_name>/<images>"
            + (f" ({not_walked} files found directly in it are ignored)" if not_walked else "")
        )

    # Pass 1: check every file; keep only (path, class, hash, size).
    candidates: list[_Candidate] = []
    total = len(listed)
    for done, (rel, path, label) in enumerate(listed, start=1):
        try:
            data = _read_regular_file(path)
        except OSError as exc:
            report.skipped.append({"path": rel, "reason": f"cannot read: {exc.strerror or exc}"})
            data = None
        if data is not None:
            reason = _check_image(data)
            if reason is None:
                digest = hashlib.sha256(data).hexdigest()
                candidates.append(_Candidate(rel, label, digest, len(data)))
            else:
                report.skipped.append({"path": rel, "reason": reason})
        if done % progress_every == 0 and done < total:
            say(f"ingest: checked {done}/{total} files")
        del data
    report.files_scanned = total + not_walked
    if not candidates:
        raise IngestError(
            f"no decodable images in {images_dir} "
            f"({len(report.skipped)} files skipped, "
            f"e.g. {report.skipped[0]['path']}: {report.skipped[0]['reason']})"
            if report.skipped
            else f"no image files in any class folder of {images_dir}",
            report=report.to_dict(),
        )

    # Group by content: the same bytes under two classes is a label conflict.
    by_hash: dict[str, list[_Candidate]] = {}
    for cand in candidates:
        by_hash.setdefault(cand.sha256, []).append(cand)
    groups: dict[str, dict[str, list[_Candidate]]] = {name: {} for name in folders}
    for digest in sorted(by_hash):
        members = sorted(by_hash[digest], key=lambda c: (c.label, c.rel))
        if len({c.label for c in members}) > 1:
            report.label_conflicts.append(
                {
                    "sha256": digest,
                    "files": [{"path": c.rel, "class": c.label} for c in members],
                }
            )
            continue
        groups[members[0].label][digest] = members

    # Split each class's unique images; rank by (seed, class, content).
    plan: dict[str, list[_Candidate]] = {s: [] for s in SPLITS}
    for name in folders:
        digests = sorted(groups[name], key=lambda d, n=name: _rank(seed, "split", n, d))
        if not digests:
            report.empty_classes.append(name)
            continue
        n_eval = _eval_count(len(digests), eval_fraction)
        report.classes.append(name)
        report.counts[name] = {"train": len(digests) - n_eval, "eval": n_eval}
        if n_eval == 0:
            report.warnings.append(f"class {name!r} has 1 unique image: it is in train only, none in eval")
        for i, digest in enumerate(digests):
            split = "eval" if i < n_eval else "train"
            kept, *copies = groups[name][digest]
            plan[split].append(kept)
            if copies:
                report.duplicates.append(
                    {
                        "class": name,
                        "sha256": digest,
                        "split": split,
                        "kept": kept.rel,
                        "duplicates": [c.rel for c in copies],
                    }
                )
    report.duplicates.sort(key=lambda d: (d["class"], d["kept"]))
    for name in report.empty_classes:
        report.warnings.append(f"class folder {name!r} has no usable images and is left out")

    if len(report.classes) < 2:
        raise IngestError(
            f"{images_dir} has {len(report.classes)} class(es) with usable images "
            f"({report.classes}); a classifier needs at least 2"
            + (f"; empty class folders: {report.empty_classes}" if report.empty_classes else "")
            + (f"; {len(report.skipped)} files skipped" if report.skipped else ""),
            report=report.to_dict(),
        )
    if not plan["eval"]:
        raise IngestError(
            f"every class in {images_dir} has a single unique image, so the eval split "
            "would be empty; add images",
            report=report.to_dict(),
        )

    # Interleave classes in a seeded order, so a reader's shuffle buffer sees
    # every class early, then cut each split into contiguous shards.
    for split in SPLITS:
        plan[split].sort(key=lambda c, s=split: _rank(seed, "order", s, c.label, c.sha256))
        count = len(plan[split])
        wanted = num_shards or math.ceil(sum(c.size for c in plan[split]) / TARGET_SHARD_BYTES)
        shards = max(1, min(wanted, count))
        report.shards[split] = [f"data-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]

    _write_outputs(images_dir, out_dir, plan, report, overwrite, say, progress_every)
    t = report.totals
    say(
        f"ingest: wrote {t['train']} train + {t['eval']} eval records for "
        f"{len(report.classes)} classes to {out_dir}; "
        f"skipped {len(report.skipped)} files, {report.num_duplicates} duplicates, "
        f"{report.num_conflicting_files} label-conflict files "
        f"(details in {os.path.join(out_dir, REPORT_FILE)})"
    )
    return report


def _write_outputs(
    images_dir: str,
    out_dir: str,
    plan: dict[str, list[_Candidate]],
    report: IngestReport,
    overwrite: bool,
    say: Callable[[str], None],
    progress_every: int,
) -> None:
    """Pass 2: write shards to a temp dir inside out_dir, then move them in place."""
    import tensorflow as tf

    created_out = not os.path.exists(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir)
    try:
        total = sum(len(v) for v in plan.values())
        done = 0
        for split in SPLITS:
            os.makedirs(os.path.join(staging, split))
            names = report.shards[split]
            ranges = _shard_ranges(len(plan[split]), len(names))
            for name, (start, stop) in zip(names, ranges, strict=True):
                with tf.io.TFRecordWriter(os.path.join(staging, split, name)) as writer:
                    for cand in plan[split][start:stop]:
                        writer.write(_example_bytes(images_dir, cand))
                        done += 1
                        if done % progress_every == 0 and done < total:
                            say(f"ingest: wrote {done}/{total} records")
        if overwrite:
            _remove_previous_outputs(out_dir, keep=os.path.basename(staging))
        for split in SPLITS:
            os.replace(os.path.join(staging, split), os.path.join(out_dir, split))
        _write_json(os.path.join(out_dir, CLASSES_FILE), report.classes)
        _write_json(os.path.join(out_dir, REPORT_FILE), report.to_dict())
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_out and not os.listdir(out_dir):
            os.rmdir(out_dir)
        raise
    shutil.rmtree(staging, ignore_errors=True)


def _example_bytes(images_dir: str, cand: _Candidate) -> bytes:
    """Serialized tf.train.Example for one kept image (re-read and re-hashed)."""
    import tensorflow as tf

    path = os.path.join(images_dir, *cand.rel.split("/"))
    try:
        data = _read_regular_file(path)
    except OSError as exc:
        raise IngestError(f"{path} became unreadable during ingest: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != cand.sha256:
        raise IngestError(f"{path} changed during ingest; re-run on a stable image tree")
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                LABEL_KEY: tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[cand.label.encode("utf-8")])
                ),
            }
        )
    )
    # deterministic=True orders the feature map, so output bytes are reproducible.
    return example.SerializeToString(deterministic=True)


def validate_tfrecord_dir(path: str) -> dict[str, int]:
    """Check an existing TFRecord dir is usable as-is; return its file counts.

    Requires ``path/train/`` and ``path/eval/``, each holding at least one
    uncompressed TFRecord file and nothing else (ExampleGen reads every entry,
    hidden files included). The first record of every file must parse as a
    tf.train.Example with a bytes ``image`` (a decodable image, checked once
    per split) and a bytes ``label``. Works for local and ``gs://`` paths.
    Returns ``{'train_files': n, 'eval_files': n}``; raises IngestError.
    """
    import tensorflow as tf

    gfile = tf.io.gfile
    if not gfile.exists(path):
        raise IngestError(f"TFRecord dir {path} does not exist")
    if not gfile.isdir(path):
        raise IngestError(f"TFRecord dir {path} is not a directory")
    result: dict[str, int] = {}
    for split in SPLITS:
        split_dir = os.path.join(path, split)
        if not gfile.isdir(split_dir):
            raise IngestError(
                f"{path} has no '{split}/' subdirectory; expected {path}/train/ and "
                f"{path}/eval/ holding TFRecord files of tf.train.Example "
                "(image: bytes, label: bytes)"
            )
        entries = sorted(e.rstrip("/") for e in gfile.listdir(split_dir))
        subdirs = [e for e in entries if gfile.isdir(os.path.join(split_dir, e))]
        stray = subdirs + [e for e in entries if e.startswith(".") and e not in subdirs]
        if stray:
            raise IngestError(
                f"{split_dir} contains {stray}: only TFRecord files may be there "
                f"(ExampleGen reads every entry of {split}/*)"
            )
        if not entries:
            raise IngestError(f"{split_dir} holds no TFRecord files")
        records = 0
        for name in entries:
            records += _check_first_record(os.path.join(split_dir, name), check_image=not records)
        if not records:
            raise IngestError(f"{split_dir}: all {len(entries)} files hold no records")
        result[f"{split}_files"] = len(entries)
    return result


def _check_first_record(file_path: str, check_image: bool) -> int:
    """Validate the first record of one TFRecord file; return 1, or 0 if empty."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    with tf.io.gfile.GFile(file_path, "rb") as handle:
        if handle.read(2) == b"\x1f\x8b":
            raise IngestError(f"{file_path} is GZIP-compressed; imgpipe reads uncompressed TFRecord files")
    try:
        first = [r.numpy() for r in tf.data.TFRecordDataset(file_path).take(1)]
    except tf.errors.OpError as exc:
        raise IngestError(f"{file_path} is not a readable TFRecord file: {_tf_error_text(exc)}") from exc
    if not first:
        return 0
    try:
        example = tf.train.Example.FromString(first[0])
    except DecodeError as exc:
        raise IngestError(f"first record of {file_path} is not a tf.train.Example: {exc}") from exc
    features = example.features.feature
    for key in (IMAGE_KEY, LABEL_KEY):
        if key not in features:
            raise IngestError(
                f"first record of {file_path} has no '{key}' feature "
                f"(found: {sorted(features)}); expected image: bytes, label: bytes"
            )
        kind = features[key].WhichOneof("kind")
        if kind != "bytes_list":
            raise IngestError(f"first record of {file_path}: feature '{key}' is {kind}, expected bytes_list")
        if not features[key].bytes_list.value or not features[key].bytes_list.value[0]:
            raise IngestError(f"first record of {file_path}: feature '{key}' is empty")
    if check_image:
        try:
            tf.io.decode_image(features[IMAGE_KEY].bytes_list.value[0], expand_animations=False)
        except tf.errors.OpError as exc:
            raise IngestError(
                f"first record of {file_path}: 'image' bytes are not a decodable image "
                f"({_tf_error_text(exc)})"
            ) from exc
    return 1
