"""Which images a model trained on: a fingerprint of each train record's encoded image bytes.

The Trainer writes the fingerprints of its train split into the Model artifact's
folder (`train_image_ids.npy`, beside the SavedModel's `Format-Serving`, so it is
never pushed). The Evaluator reads those of the latest blessed model and of the
candidate: when the data was split anew (ingest with another seed or `--eval-fraction`),
or TFRecords made elsewhere repeat an image across splits, images a model trained on can
sit in the eval split, where they flatter it. The Evaluator then compares the two only on
the eval images neither trained on (components/evaluator.py).

A fingerprint is the first 8 bytes of BLAKE2b over the image feature's bytes: the
same file ingested again gives the same fingerprint (ingest writes a file's bytes
as they are), whatever its label, path or split. 64 bits leave a chance of about
n^2 / 2^65 that two of n different images share one: 3e-11 at a million images.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf

from trainer import data
from trainer.features import IMAGE_KEY, LABEL_KEY
from trainer.features import image_fingerprint as fingerprint

IDS_FILE = "train_image_ids.npy"
# Each train image's label as the model learned it: the DataGate of a later run finds images
# relabelled since (two class folders' names swapped, a class renamed).
LABELS_FILE = "train_image_labels.npz"
_BATCH = 512
# The data's ingest report (imgpipe/ingest/contract.REPORT_FILE, the same name) when the records
# came from `imgpipe ingest`, and the execution property by which the Trainer, the data gate and
# the Evaluator are given its path (each reads it with read_ingest_report).
INGEST_REPORT_FILE = "ingest_report.json"
INGEST_REPORT_KEY = "ingest_report"

log = logging.getLogger(__name__)


def batches(
    file_pattern: str | Sequence[str], size: int = _BATCH
) -> Iterator[tuple[np.ndarray, list[bytes], list[bytes]]]:
    """(fingerprints, labels, serialized records) of the split's records, `size` at a time, in file order.

    A record without an image or a label has b"" there, one with more than one its first (the
    data gate refuses such splits before training, from their statistics: here they must not
    stop it before it says so). Records are parsed as one value each, the fast way; from the
    first batch that holds another count, the rest are parsed as lists (BENCHMARKS.md, "The
    image index's parse").
    """
    fixed = {
        IMAGE_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
        LABEL_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }
    ragged = {IMAGE_KEY: tf.io.RaggedFeature(tf.string), LABEL_KEY: tf.io.RaggedFeature(tf.string)}

    def first(values):
        return values[:, :1].to_tensor(default_value="", shape=[None, 1])[:, 0]

    def parse_fixed(serialized):
        parsed = tf.io.parse_example(serialized, fixed)
        return parsed[IMAGE_KEY], parsed[LABEL_KEY], serialized

    def parse_ragged(serialized):
        parsed = tf.io.parse_example(serialized, ragged)
        return first(parsed[IMAGE_KEY]), first(parsed[LABEL_KEY]), serialized

    done = 0  # batches yielded
    for parse in (parse_fixed, parse_ragged):
        dataset = data.raw_examples(file_pattern).batch(size).skip(done).map(parse)
        try:
            for images, labels, serialized in dataset.as_numpy_iterator():
                ids = np.fromiter((fingerprint(x) for x in images), dtype=np.uint64, count=len(images))
                yield ids, list(labels), list(serialized)
                done += 1
            return
        except tf.errors.InvalidArgumentError:
            if parse is parse_ragged:
                raise


def records(file_pattern: str | Sequence[str]) -> Iterator[bytes]:
    """The split's serialized records, in file order, unparsed."""
    for batch in data.raw_examples(file_pattern).batch(_BATCH).as_numpy_iterator():
        yield from batch


def record_image(serialized: bytes) -> tuple[bytes | None, str | None]:
    """The first image and label of a serialized tf.Example ((None, None) for bytes that are no
    tf.Example; None for a feature missing, empty or not of bytes)."""
    from google.protobuf import message
    from tensorflow.core.example import example_pb2

    try:
        features = example_pb2.Example.FromString(serialized).features.feature
    except message.DecodeError:
        return None, None

    def first(key: str) -> bytes | None:
        values = features[key].bytes_list.value if key in features else ()
        return values[0] if values else None

    label = first(LABEL_KEY)
    return first(IMAGE_KEY), None if label is None else label.decode("utf-8", "replace")


def split_ids(file_pattern: str | Sequence[str]) -> np.ndarray:
    """The fingerprint of each record of the split, in file order (uint64, repeats kept).

    The Trainer's record of its train split: labels are not decoded here (split_index does)."""
    parts = [ids for ids, _, _ in batches(file_pattern)]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)


def split_index(file_pattern: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(fingerprints, labels) of the split's records, in file order, repeats kept: uint64 and str
    arrays (a label that is not UTF-8 is decoded with replacement characters)."""
    ids, labels = [], []
    for batch_ids, batch_labels, _ in batches(file_pattern):
        ids.append(batch_ids)
        labels.extend(label.decode("utf-8", "replace") for label in batch_labels)
    return (np.concatenate(ids) if ids else np.zeros(0, np.uint64)), np.array(labels, dtype=object)


def labels_by_image(ids: np.ndarray, labels: Sequence[str]) -> dict[int, set[str]]:
    """Each image's (fingerprint's) labels among the records, the images in file order."""
    found: dict[int, set[str]] = {}
    for image, label in zip(ids.tolist(), labels, strict=True):
        found.setdefault(image, set()).add(label)
    return found


def conflicting_labels(ids: np.ndarray, labels: Sequence[str]) -> int:
    """How many images (fingerprints) appear under more than one label among the records."""
    return sum(1 for found in labels_by_image(ids, labels).values() if len(found) > 1)


def repeats(ids: np.ndarray) -> np.ndarray:
    """A mask over `ids`: True where that record's image is an earlier record's (the first of each
    image is False), so `ids[~repeats(ids)]` holds each image once."""
    first = np.zeros(len(ids), bool)
    first[np.unique(ids, return_index=True)[1]] = True
    return ~first


def read_ingest_report(path: str | None) -> dict | None:
    """The data's ingest report (ingest_report.json), or None when there is none (records made
    another way) or it cannot be read (logged). The one reader of it for the Trainer and the
    components (the data gate, the Evaluator)."""
    if not path:
        return None
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            report = json.load(f)
    except tf.errors.NotFoundError:
        return None
    except (tf.errors.OpError, OSError, ValueError) as e:
        log.warning("ingest report %s cannot be read (%s): its sets of near-copies are not used", path, e)
        return None
    return report if isinstance(report, dict) else None


def ingest_counts_match(report: Mapping, split: str, label_counts: Mapping[str, int]) -> bool:
    """Whether the ingest report's per-class `split` counts are `label_counts` (classes of none
    left out): a report of these records, not of other data."""
    counts = report.get("counts")
    if not isinstance(counts, dict):
        return False
    try:
        written = {str(c): int(v.get(split, 0)) for c, v in counts.items()}
    except (AttributeError, TypeError, ValueError):
        return False
    return {c: n for c, n in written.items() if n} == {str(c): int(n) for c, n in label_counts.items() if n}


def near_copy_sets(report_path: str | None) -> list[np.ndarray]:
    """near_copy_sets_in the report at `report_path` ([] when there is none or it cannot be read)."""
    return near_copy_sets_in(read_ingest_report(report_path) or {}, report_path or "")


def near_copy_sets_in(report: Mapping, source: str) -> list[np.ndarray]:
    """The sets of near-copies (a clip's frames, one picture saved again) the data's ingest found,
    as arrays of their images' fingerprints, from its report (``near_copies``, each with its
    ``fingerprints``); [] for an older report without fingerprints (logged, naming `source`)."""
    entries = report.get("near_copies")
    sets, old = [], 0
    for entry in entries if isinstance(entries, list) else ():
        found = entry.get("fingerprints") if isinstance(entry, dict) else None
        try:
            ids = np.array([int(x, 16) for x in found], np.uint64) if isinstance(found, list) else None
        except (TypeError, ValueError, OverflowError):
            ids = None
        if ids is None:
            old += 1
        elif len(ids) > 1:
            sets.append(ids)
    if old:
        log.warning(
            "near-copies: %d set(s) in %s have no image fingerprints (an ingest of an older imgpipe): "
            "they are validated image by image; ingest again to keep each set whole",
            old,
            source,
        )
    return sets


def groups(ids: np.ndarray, sets: Sequence[np.ndarray]) -> np.ndarray:
    """An int per record (`ids`: its image fingerprint, in file order): the same for the records
    of one set of near-copies (`sets`) and for records repeating one image, different otherwise.
    What the head's validation slice and folds keep whole (trainer/head.py)."""
    ids = np.asarray(ids, np.uint64)
    key = ids.copy()
    sets = [np.asarray(m, np.uint64) for m in sets if len(m)]
    if sets:  # each set's members keyed by its smallest fingerprint, looked up by a sorted search
        members = np.concatenate(sets)
        keys = np.concatenate([np.full(len(m), m.min(), np.uint64) for m in sets])
        order = np.argsort(members, kind="stable")
        members, keys = members[order], keys[order]
        at = np.minimum(np.searchsorted(members, ids), len(members) - 1)
        hit = members[at] == ids
        key[hit] = keys[at[hit]]
    return np.unique(key, return_inverse=True)[1].astype(np.int64)


def ids_path(model_uri: str) -> str:
    return os.path.join(model_uri, IDS_FILE)


def write(model_uri: str, train_files: str | Sequence[str]) -> int:
    """Record the train split's fingerprints (sorted, unique) in the Model artifact, and each
    one's label (its first record's); their number."""
    all_ids, all_labels = split_index(train_files)
    ids, first = np.unique(all_ids, return_index=True)
    classes, label_index = np.unique(
        np.array([str(x) for x in all_labels[first]], dtype=str), return_inverse=True
    )
    tf.io.gfile.makedirs(model_uri)
    buffer = io.BytesIO()
    np.save(buffer, ids.astype("<u8"), allow_pickle=False)
    _write_file(ids_path(model_uri), buffer.getvalue())
    buffer = io.BytesIO()
    np.savez(buffer, ids=ids.astype("<u8"), labels=label_index.astype("<i4"), classes=classes)
    _write_file(os.path.join(model_uri, LABELS_FILE), buffer.getvalue())
    return len(ids)


def _write_file(path: str, content: bytes) -> None:
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "wb") as f:
        f.write(content)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def read_labels(model_uri: str) -> dict[int, str] | None:
    """{fingerprint: label} of the images a model trained on, or None when it has no record of
    their labels (a model trained before imgpipe kept one); ValueError naming a damaged file."""
    path = os.path.join(model_uri, LABELS_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "rb") as f:
        raw = f.read()
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as found:
            ids, labels, classes = found["ids"], found["labels"], found["classes"]
    except (ValueError, EOFError, OSError, KeyError, AttributeError) as e:
        raise ValueError(f"{path} is not a record of image labels: {e or type(e).__name__}") from None
    if ids.ndim != 1 or labels.shape != ids.shape or classes.ndim != 1 or ids.dtype.kind != "u":
        raise ValueError(f"{path} is not a record of image labels (shapes {ids.shape}, {labels.shape})")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"{path} is not a record of image labels (a label index out of range)")
    names = [str(c) for c in classes]
    return {int(i): names[j] for i, j in zip(ids.tolist(), labels.tolist(), strict=True)}


def model_uri(serving_model_dir: str) -> str:
    """The Model artifact's folder that holds the Trainer's `serving_model_dir` (Format-Serving).

    Not os.path.normpath: it would fold a remote URI's `gs://bucket` into `gs:/bucket`, which
    TensorFlow's file system reads as a local folder."""
    return os.path.dirname(serving_model_dir.rstrip("/"))


def read(model_uri: str) -> np.ndarray | None:
    """The fingerprints a model trained on (sorted, unique), or None when it has no record of them
    (a model trained before imgpipe wrote them, or one made elsewhere)."""
    path = ids_path(model_uri)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "rb") as f:
        raw = f.read()
    try:
        ids = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:  # not .npy, empty or cut short, pickled objects
        raise ValueError(f"{path} is not a list of image fingerprints: {e or type(e).__name__}") from None
    if not isinstance(ids, np.ndarray):  # an .npz archive under this name
        raise ValueError(f"{path} is not a list of image fingerprints (a {type(ids).__name__})")
    if ids.ndim != 1 or ids.dtype.kind != "u":
        raise ValueError(f"{path} is not a list of image fingerprints (shape {ids.shape}, dtype {ids.dtype})")
    return ids.astype(np.uint64)


def seen(ids: np.ndarray, trained_on: np.ndarray) -> np.ndarray:
    """A mask over `ids`: True where that record's image is among `trained_on`."""
    return np.isin(ids, trained_on)


def near_copies_seen(ids: np.ndarray, trained_on: np.ndarray, sets: Sequence[np.ndarray]) -> np.ndarray:
    """A mask over `ids`: True where that record's image is in one of ingest's near-copy `sets`
    (near_copy_sets) with an image among `trained_on`: another file of a picture the model
    trained on (a frame of its clip, the photo saved again). Ingest keeps a set in one split
    unless its class is that one set (or `--sets-by-folder` left a set across folders unjoined):
    those eval images are copies of train pictures, not evidence. Linear in the sets' sizes."""
    if not len(sets) or not len(ids):
        return np.zeros(len(ids), bool)
    members = np.concatenate(sets)
    owner = np.repeat(np.arange(len(sets)), [len(s) for s in sets])
    touched = np.unique(owner[np.isin(members, trained_on)])
    return np.isin(ids, members[np.isin(owner, touched)])
