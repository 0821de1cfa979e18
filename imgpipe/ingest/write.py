"""The write: a plan -> shards, classes.json and the report in out_dir, all or nothing.

Shards are written to a staging dir inside ``out_dir`` (same file system, so
the final moves are renames), then moved into place; on any failure the
staging dir is removed and a freshly created ``out_dir`` too. Every kept file
is read again and its SHA-256 compared with the scan's, so a file that
changed in between is never written under a stale check. ``overwrite``
replaces only what ingest itself writes (train/, eval/, the two JSON files and
staging dirs of killed runs); other files in ``out_dir`` are left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from imgpipe import stop_signals
from imgpipe.ingest.contract import CLASSES_FILE, FILES_FILE, REPORT_FILE, SPLITS, example_bytes
from imgpipe.ingest.errors import IngestError, IngestWriteError, tf_error_text
from imgpipe.ingest.images import read_regular_file
from imgpipe.ingest.plan import Candidate, Plan
from imgpipe.ingest.report import IngestReport, display_path, display_text
from trainer.features import image_fingerprint
from trainer.same_files import same_bytes

log = logging.getLogger(__name__)

STAGING_PREFIX = ".ingest-tmp-"  # work dir inside out_dir, renamed into place


def check_out_dir(images_dir: str, out_dir: str, overwrite: bool) -> None:
    """Raise IngestError unless ``out_dir`` may receive ingest's outputs.

    It must not overlap the image tree, and must be absent, empty, or (with
    ``overwrite``) a directory whose ingest outputs may be replaced.
    """
    real_in, real_out = os.path.realpath(images_dir), os.path.realpath(out_dir)
    if os.path.commonpath([real_in, real_out]) in (real_in, real_out):
        raise IngestError(
            f"the output directory {out_dir} and the image directory {images_dir} overlap; "
            "write the TFRecords outside the image tree"
        )
    if not os.path.lexists(out_dir):
        _check_creatable(out_dir)
        return
    if os.path.lexists(out_dir):
        if not os.path.isdir(out_dir):
            raise IngestError(f"the output directory {out_dir} exists and is not a directory")
        if not os.access(out_dir, os.W_OK | os.X_OK):
            raise IngestError(f"the output directory {out_dir} is not writable")
        entries = os.listdir(out_dir)
        leftovers = _leftovers(entries)
        if len(entries) > len(leftovers) and not overwrite:
            raise IngestError(
                f"the output directory {out_dir} exists and is not empty; choose a new directory "
                f"or pass --overwrite (overwrite=True from Python), which replaces train/, "
                f"eval/, {REPORT_FILE}, {CLASSES_FILE} and {FILES_FILE} only; other files are left alone"
                + (
                    f" (and removes what an interrupted ingest left: {', '.join(leftovers)})"
                    if leftovers
                    else ""
                )
            )


def _leftovers(entries: list[str], keep: str | None = None) -> list[str]:
    """What an interrupted ingest left in out_dir (its staging folders, its half-written JSON),
    but ``keep``; removed by the next ingest into that folder."""
    partial = {f"{CLASSES_FILE}.tmp", f"{REPORT_FILE}.tmp"}
    return sorted(n for n in entries if n != keep and (n.startswith(STAGING_PREFIX) or n in partial))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _check_creatable(out_dir: str) -> None:
    """Raise IngestError unless ``out_dir`` (absent) can be made: made and removed again here,
    before any image is read, so a bad location fails in a second, not after the scan."""
    made = []
    path = os.path.abspath(out_dir)
    while not os.path.lexists(path):
        made.append(path)
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise IngestError(f"the output directory {out_dir} cannot be created: {path} is not a directory")
    try:
        for folder in reversed(made):
            os.mkdir(folder)
    except OSError as exc:
        raise IngestError(f"the output directory {out_dir} cannot be created: {exc.strerror or exc}") from exc
    finally:
        for folder in made:  # innermost first; only the empty folders made just now
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def write_outputs(
    images_dir: str,
    out_dir: str,
    plan: Plan,
    report: IngestReport,
    *,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    progress_every: int = 1000,
) -> None:
    """Write ``plan``'s shards, ``report.classes`` and ``report`` into ``out_dir``.

    Everything is written into a staging folder inside ``out_dir`` first; only then are
    earlier outputs removed (``overwrite``) and the new ones renamed into place. Raises
    IngestError when a planned file cannot be read again or changed since the scan, and
    IngestWriteError when the outputs cannot be written (a full disk, say); ``out_dir`` is
    then as it was. What an interrupted ingest left there is removed first. ``progress``
    gets a line every ``progress_every`` records (default: this module's logger).
    """
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow

    say = progress or log.info
    created_out = not os.path.exists(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir)
    except OSError as exc:
        raise IngestError(f"cannot write to the output directory {out_dir}: {exc.strerror or exc}") from exc

    def undo() -> None:
        shutil.rmtree(staging, ignore_errors=True)
        if created_out and not os.listdir(out_dir):
            os.rmdir(out_dir)

    try:
        leftovers = _leftovers(os.listdir(out_dir), keep=os.path.basename(staging))
        if leftovers:
            say(f"removing what an interrupted ingest left in {out_dir}: {', '.join(leftovers)}")
            for name in leftovers:
                _remove(os.path.join(out_dir, name))
        total = sum(len(shard.records) for shards in plan.shards.values() for shard in shards)
        done = 0
        written: dict[str, int] = {}  # each record's image fingerprint, by its file's display path
        for split in SPLITS:
            os.makedirs(os.path.join(staging, split))
            for shard in plan.shards[split]:
                with tf.io.TFRecordWriter(os.path.join(staging, split, shard.name)) as writer:
                    for cand in shard.records:
                        image = _read_again(images_dir, cand)
                        written[display_path(cand.rel)] = image_fingerprint(image)
                        writer.write(example_bytes(image, cand.label))
                        done += 1
                        if done % progress_every == 0 and done < total:
                            say(f"wrote {done}/{total} records")
        _write_json(os.path.join(staging, CLASSES_FILE), report.classes)
        _add_fingerprints(report, written)
        _write_json(os.path.join(staging, REPORT_FILE), report.to_dict())
        with open(os.path.join(staging, FILES_FILE), "w", encoding="utf-8") as index:
            for split in SPLITS:
                for cand in plan.records(split):
                    line = {"split": split, "sha256": cand.sha256, "path": display_path(cand.rel)}
                    index.write(json.dumps(line, ensure_ascii=False) + "\n")
        # A split whose shards are byte for byte the ones there stays as it is, file times
        # included: ExampleGen fingerprints its input by path, size and modification time, so a
        # nightly ingest of unchanged images would otherwise make every run train again and
        # push a copy of the served model.
        kept = [
            split
            for split in SPLITS
            if overwrite and _same_files(os.path.join(staging, split), os.path.join(out_dir, split))
        ]
        if kept:
            say(
                f"{' and '.join(f'{s}/' for s in kept)} unchanged (the same bytes): kept as {'it was' if len(kept) == 1 else 'they were'}"
            )
        # Ctrl-C or SIGTERM here waits for the last rename: stopped half-way, `out_dir` held a new
        # train/ and nothing else (or, with --overwrite, the earlier outputs half deleted).
        with stop_signals.held():
            if overwrite:
                _remove_previous_outputs(out_dir, keep=kept)
            for name in (*SPLITS, CLASSES_FILE, REPORT_FILE, FILES_FILE):
                if name not in kept:
                    os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
    except (OSError, tf.errors.OpError) as exc:
        undo()
        text = tf_error_text(exc) if isinstance(exc, tf.errors.OpError) else str(exc)
        raise IngestWriteError(f"cannot write ingest's outputs to {out_dir}: {text}") from exc
    except BaseException:
        undo()
        raise
    shutil.rmtree(staging, ignore_errors=True)


def _add_fingerprints(report: IngestReport, written: dict[str, int]) -> None:
    """Each set of near-copies' image fingerprints (``fingerprints``: 16 hex digits each, in the
    order of its ``files``), in ``report``: the Trainer keeps a set's images on one side of its
    validation slice and of each cross-validation fold by them (trainer/image_ids.py)."""
    for entry in report.near_copies:
        entry["fingerprints"] = [f"{written[path]:016x}" for path in entry["files"]]


def _read_again(images_dir: str, cand: Candidate) -> bytes:
    """A kept file's bytes, re-read and checked against the scan's hash."""
    path = os.path.join(images_dir, *cand.rel.split("/"))
    try:
        data = read_regular_file(path)
    except OSError as exc:
        raise IngestError(display_text(f"{path} became unreadable during ingest: {exc}")) from exc
    if hashlib.sha256(data).hexdigest() != cand.sha256:
        raise IngestError(f"{display_path(path)} changed during ingest; re-run on a stable image tree")
    return data


def _write_json(path: str, payload: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    os.replace(tmp, path)


def _remove_previous_outputs(out_dir: str, keep: Sequence[str] = ()) -> None:
    """Delete only what ``ingest`` writes (used with overwrite=True), but the splits in `keep`;
    what an interrupted ingest left was removed as the write began (``_leftovers``)."""
    for name in (*SPLITS, REPORT_FILE, CLASSES_FILE, FILES_FILE):
        if name not in keep:
            _remove(os.path.join(out_dir, name))


def _same_files(new: str, old: str) -> bool:
    """Whether folder `old` holds exactly the files of folder `new` (names and bytes), no more."""
    if not os.path.isdir(old) or os.path.islink(old):
        return False
    names = sorted(os.listdir(new))
    if sorted(os.listdir(old)) != names:
        return False
    for name in names:
        a, b = os.path.join(new, name), os.path.join(old, name)
        if not os.path.isfile(b) or os.path.islink(b) or os.path.getsize(a) != os.path.getsize(b):
            return False
    return all(same_bytes(os.path.join(new, n), os.path.join(old, n)) for n in names)
