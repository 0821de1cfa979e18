"""Version directories of a model base path, as TF Serving reads them.

A model base path holds one directory per version, named by an integer, each
a SavedModel (`<base>/<version>/saved_model.pb`). Anything else (temp dirs,
partial copies without saved_model.pb) is not a version. `fingerprint` tells
whether a directory's files changed, so a version that failed to load is
retried only when they do.
"""

from __future__ import annotations

import logging
import os
import warnings

import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from serving.version_names import version_number

log = logging.getLogger(__name__)

SERVE_TAG = "serve"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")

Fingerprint = tuple[int, int, float]


def list_versions(base_path: str, unreadable: list[str] | None = None) -> dict[int, str]:
    """Complete version directories under base_path: {version: path}.

    A version is a directory named by a 64-bit integer (serving.version_names) holding
    saved_model.pb (or .pbtxt); anything else (temp dirs, partial copies) is ignored. Two names
    for one number (`7` and `007`) keep the first listed and log the other. `unreadable`
    collects the local version directories this process may not open (their files cannot be
    seen, so they look like partial copies).
    """
    found: dict[int, str] = {}
    for name in tf.io.gfile.listdir(base_path):
        name = name.rstrip("/")
        version = version_number(name)
        if version is None:
            continue
        path = os.path.join(base_path, name)
        if not tf.io.gfile.isdir(path):
            continue
        if not has_saved_model(path):
            if unreadable is not None and "://" not in path and not os.access(path, os.R_OK | os.X_OK):
                unreadable.append(path)
            continue
        if version in found:
            log.warning("ignoring %s: version %d is already at %s", path, version, found[version])
            continue
        found[version] = path
    return found


def who_may_read(path: str) -> str:
    """'owned by uid U, mode 0700; this server runs as uid V' for a local path (its stat)."""
    try:
        st = os.stat(path)
    except OSError as e:
        return str(e)
    return f"owned by uid {st.st_uid}, mode {st.st_mode & 0o7777:04o}; this server runs as uid {os.geteuid()}"


def has_saved_model(path: str) -> bool:
    """Whether `path` holds a saved_model.pb or saved_model.pbtxt."""
    return any(tf.io.gfile.exists(os.path.join(path, f)) for f in SAVED_MODEL_FILES)


def fingerprint(path: str) -> Fingerprint:
    """(file count, total bytes, newest mtime) of a directory tree: changes when its files do."""
    count, size, newest = 0, 0, 0.0
    for root, _, files in tf.io.gfile.walk(path):
        for f in files:
            stat = tf.io.gfile.stat(os.path.join(root, f))
            count += 1
            size += stat.length
            newest = max(newest, stat.mtime_nsec / 1e9)
    return count, size, newest


def read_signature_defs(export_dir: str) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs of the `serve` MetaGraph, as TF Serving reads them.

    Raises ValueError naming the directory when the file holds no MetaGraph
    (not a SavedModel) or none tagged `serve`.
    """
    pb = os.path.join(export_dir, "saved_model.pb")
    sm = saved_model_pb2.SavedModel()
    if tf.io.gfile.exists(pb):
        with tf.io.gfile.GFile(pb, "rb") as f, warnings.catch_warnings():
            # protobuf only warns on some garbage; the MetaGraph checks below catch it
            warnings.simplefilter("ignore", RuntimeWarning)
            sm.ParseFromString(f.read())
    else:
        with tf.io.gfile.GFile(os.path.join(export_dir, "saved_model.pbtxt")) as f:
            text_format.Parse(f.read(), sm)
    if not sm.meta_graphs:
        raise ValueError(f"{export_dir}: saved_model.pb holds no MetaGraph (not a SavedModel?)")
    for meta_graph in sm.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"{export_dir}: no MetaGraph tagged {SERVE_TAG!r}")
