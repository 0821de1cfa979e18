"""The TFRecord contract: what ``imgpipe ingest`` writes and what ``imgpipe run`` accepts.

Layout (what ``ImportExampleGen`` reads, one sub-folder per split)::

    out_dir/train/data-00000-of-0000N.tfrecord   tf.train.Example:
    out_dir/eval/data-00000-of-0000M.tfrecord      image: bytes (file bytes, unchanged)
    out_dir/classes.json                           label: bytes (class folder, utf-8)
    out_dir/ingest_report.json

``run`` needs only ``train/`` and ``eval/`` holding uncompressed TFRecord files
of such Examples (any file names); ``validate_tfrecord_dir`` checks that before
a pipeline starts. The feature names live in ``trainer.features``, which the
Transform and serving code read too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from imgpipe.ingest.errors import IngestError, tf_error_text
from trainer.features import IMAGE_KEY, LABEL_KEY

SPLITS = ("train", "eval")
REPORT_FILE = "ingest_report.json"
CLASSES_FILE = "classes.json"
# One JSON line per record written: {"split", "sha256" of the image bytes, "path" of its file,
# relative to the image directory}: a run's report names a misclassified record's file by it.
FILES_FILE = "image_files.jsonl"
# The most classes `imgpipe run` takes: TFDV's statistics list at most this many values of
# the label (its default num_rank_histogram_buckets), so the data gate cannot check more.
MAX_RUN_CLASSES = 1000


def shard_names(count: int) -> list[str]:
    """File names of a split cut into ``count`` shards (sorted = record order)."""
    return [f"data-{i:05d}-of-{count:05d}.tfrecord" for i in range(count)]


def example_bytes(image: bytes, label: str) -> bytes:
    """One serialized tf.train.Example: the image file's bytes and its class name."""
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow

    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                LABEL_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[label.encode("utf-8")])),
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
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow

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


def damaged_tfrecord_files(path: str, splits: tuple[str, ...] = SPLITS) -> list[str]:
    """Each TFRecord file under `path`/<split>/ that cannot be read to its end, with where it
    breaks (a truncated copy, flipped bytes: a record's length or CRC does not check out; bytes
    after the last whole record).

    Reads every record: called to explain a failed read, not before every run.
    """
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow

    damaged = []
    for split in splits:
        split_dir = os.path.join(path, split)
        if not tf.io.gfile.isdir(split_dir):
            continue
        for name in sorted(e.rstrip("/") for e in tf.io.gfile.listdir(split_dir)):
            file_path = os.path.join(split_dir, name)
            count = read = 0
            try:
                for length in tf.data.TFRecordDataset(file_path).map(tf.strings.length):
                    count += 1
                    read += _RECORD_FRAMING + int(length)
            except tf.errors.OpError as exc:
                damaged.append(f"{file_path}: unreadable after {count} good records ({tf_error_text(exc)})")
                continue
            # TensorFlow's reader ends quietly at a record header cut short; Beam's refuses it.
            left = tf.io.gfile.stat(file_path).length - read
            if left:
                damaged.append(
                    f"{file_path}: {left} bytes after its {count} good records are not a whole record "
                    "(a file cut short, or bytes added after it)"
                )
    return damaged


# A TFRecord's bytes around each record's data: its length (8) and two CRCs (4 each).
_RECORD_FRAMING = 16


def undecodable_images(
    path: str,
    limit: int = 10,
    decode: Callable[[bytes], Any] | None = None,
    progress: Callable[[int], None] | None = None,
    progress_every: int = 10_000,
) -> list[str]:
    """The records of the TFRecord files in `path` whose `image` bytes cannot be decoded (or that
    have none), as "<file> record <i>: <why>", at most `limit` of them.

    decode: what decodes one image, raising tf.errors.OpError when it cannot (the model's own
    decoder, with its pixel limit and format checks); TensorFlow's decode_image by default.
    progress: called with the number of records read so far, every `progress_every` records.
    Reads every record: called to explain a failed run, not before every run.
    """
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow
    from google.protobuf.message import DecodeError

    found: list[str] = []
    read = 0
    for file_path in _files(path):
        try:
            for i, record in enumerate(tf.data.TFRecordDataset(file_path)):
                read += 1
                if progress is not None and read % progress_every == 0:
                    progress(read)
                why = None
                try:
                    feature = tf.train.Example.FromString(record.numpy()).features.feature.get(IMAGE_KEY)
                except DecodeError as exc:
                    why = f"not a tf.train.Example ({exc})"
                else:
                    images = feature.bytes_list.value if feature is not None else []
                    if not images or not images[0]:
                        why = f"no '{IMAGE_KEY}' bytes"
                    else:
                        try:
                            if decode is None:
                                tf.io.decode_image(images[0], expand_animations=False)
                            else:
                                decode(images[0])
                        except tf.errors.OpError as exc:
                            why = f"'{IMAGE_KEY}' is not a decodable image ({tf_error_text(exc)})"
                if why is not None:
                    found.append(f"{file_path} record {i}: {why}")
                    if len(found) >= limit:
                        return found
        except tf.errors.OpError as exc:
            found.append(f"{file_path}: unreadable ({tf_error_text(exc)})")
    return found


def _files(folder: str) -> list[str]:
    """The files of a split's folder (local or gs://), sorted: its TFRecord files, in record order."""
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow

    paths = (os.path.join(folder, e.rstrip("/")) for e in sorted(tf.io.gfile.listdir(folder)))
    return [p for p in paths if not tf.io.gfile.isdir(p)]


def example_problem(example: Any) -> str | None:
    """How a tf.train.Example breaks the contract (each of `image` and `label` one non-empty
    bytes value), in words naming the feature; None when it keeps it."""
    features = example.features.feature
    for key in (IMAGE_KEY, LABEL_KEY):
        if key not in features:
            return f"no '{key}' feature (found: {sorted(features)}); expected image: bytes, label: bytes"
        kind = features[key].WhichOneof("kind")
        if kind != "bytes_list":
            return f"feature '{key}' is {kind or 'a feature with no values'}, expected bytes_list"
        values = features[key].bytes_list.value
        if not values:
            return f"feature '{key}' holds no value"
        if len(values) > 1:
            return f"feature '{key}' holds {len(values)} values, expected one"
        if not values[0]:
            return f"feature '{key}' is an empty string"
    return None


def records_off_contract(path: str, splits: tuple[str, ...] = SPLITS, limit: int = 10) -> list[str]:
    """The records under `path`/<split>/ that are not a tf.train.Example keeping the contract
    (`example_problem`), as "<file> record <i>: <why>", at most `limit` of them.

    Reads every record: called to explain a failed run (a run checks each file's first record).
    """
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow
    from google.protobuf.message import DecodeError

    found: list[str] = []
    for split in splits:
        split_dir = os.path.join(path, split) if split else path
        if not tf.io.gfile.isdir(split_dir):
            continue
        for file_path in _files(split_dir):
            try:
                for i, record in enumerate(tf.data.TFRecordDataset(file_path)):
                    try:
                        problem = example_problem(tf.train.Example.FromString(record.numpy()))
                    except DecodeError as exc:
                        problem = f"not a tf.train.Example ({exc})"
                    if problem:
                        found.append(f"{file_path} record {i}: {problem}")
                        if len(found) >= limit:
                            return found
            except tf.errors.OpError:
                continue  # a damaged file: damaged_tfrecord_files names it
    return found


def _check_first_record(file_path: str, check_image: bool) -> int:
    """Validate the first record of one TFRecord file; return 1, or 0 if empty."""
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow
    from google.protobuf.message import DecodeError

    with tf.io.gfile.GFile(file_path, "rb") as handle:
        if handle.read(2) == b"\x1f\x8b":
            raise IngestError(f"{file_path} is GZIP-compressed; imgpipe reads uncompressed TFRecord files")
    try:
        first = [r.numpy() for r in tf.data.TFRecordDataset(file_path).take(1)]
    except tf.errors.OpError as exc:
        raise IngestError(f"{file_path} is not a readable TFRecord file: {tf_error_text(exc)}") from exc
    if not first:
        size = tf.io.gfile.stat(file_path).length
        if size:
            # TensorFlow's reader takes a file too short for a record header as empty; Beam's
            # ExampleGen refuses it, after the run has started.
            raise IngestError(
                f"{file_path}: {size} bytes that hold no TFRecord record (a record takes at least "
                f"{_RECORD_FRAMING} bytes); only TFRecord files may be in the split's directory"
            )
        return 0
    try:
        example = tf.train.Example.FromString(first[0])
    except DecodeError as exc:
        raise IngestError(f"first record of {file_path} is not a tf.train.Example: {exc}") from exc
    problem = example_problem(example)
    if problem:
        raise IngestError(f"first record of {file_path}: {problem}")
    features = example.features.feature
    if check_image:
        try:
            tf.io.decode_image(features[IMAGE_KEY].bytes_list.value[0], expand_animations=False)
        except tf.errors.OpError as exc:
            raise IngestError(
                f"first record of {file_path}: 'image' bytes are not a decodable image ({tf_error_text(exc)})"
            ) from exc
    return 1


def indexed_files(data_dir: str | None, split: str, wanted: set[str]) -> tuple[dict[str, str], list[str]]:
    """The files of `split`'s images whose SHA-256 is in `wanted`, from the index ingest writes
    beside its records (FILES_FILE): ({sha256: path relative to the image folder}, notes). Records
    made elsewhere have no index ({}, no note); an unreadable index, or lines of it that are not
    an entry, are a note."""
    path = os.path.join(data_dir or "", FILES_FILE)
    if not wanted or not data_dir or not os.path.isfile(path):
        return {}, []
    found: dict[str, str] = {}
    skipped = 0
    try:
        with open(path, encoding="utf-8") as index:
            for line in index:
                try:
                    entry = json.loads(line)
                except ValueError:
                    entry = None
                if not isinstance(entry, dict) or not all(
                    isinstance(entry.get(k), str) for k in ("split", "sha256", "path")
                ):
                    skipped += line.strip() != ""
                    continue
                if entry["split"] == split and entry["sha256"] in wanted:
                    found[entry["sha256"]] = entry["path"]
    except (OSError, ValueError) as e:  # unreadable, or not UTF-8
        return {}, [f"the image files could not be named ({path}: {e})"]
    notes = []
    if skipped:
        notes.append(
            f"{skipped} line(s) of {path} are not a file's entry (a JSON object with split, sha256 and "
            "path) and were skipped"
        )
    return found, notes
