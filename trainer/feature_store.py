"""Backbone features kept from one run to the next: a retrain extracts only the images it has not seen.

With the backbone frozen, an image's features depend only on its bytes, the backbone and its
weights, the image size and the preprocessing. A scheduled retrain on a folder that grew by a
few percent used to run the backbone over every image again, the largest cost of a run at
realistic sizes. The Trainer now keeps every image's features of its run, by the image's
fingerprint (trainer/image_ids.py), in a store file beside its runs' outputs
(`<pipeline root>/Trainer/feature_store/<key>.npz`), and a later Trainer whose key is the same
extracts only the images not in it.

The key is a digest of what the features depend on: the backbone, its weights (a file's
sha256; `imagenet` by Keras' version), the image size, the decoder's version and the source of
the preprocessing code, and TensorFlow's version. What the key might miss is checked: a sample
of the stored images is extracted again with the rest, and when their features differ from
the stored ones the store is dropped and every image extracted (warned). On a CPU the same
image's features are bit for bit the same in any batch, so a run that reuses them trains the
same model as one that extracts them all.

Only a run whose features fit the feature cache's memory limit reuses them (a spilled cache
extracts as before), and only with a local pipeline root (not a bucket: a Kubeflow or Vertex
job's outputs are its own). The store holds the features of the latest run's images only; the
two most recent keys are kept (a team trying two backbones), older ones deleted.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

STORE_DIR = "feature_store"
KEEP_KEYS = 2
SAMPLE = 8  # stored images extracted again to check the store against the backbone
# The most a stored feature may differ from a fresh one, relative to the features' largest
# magnitude (a GPU's kernels may round differently from one batch to the next; a CPU's do not).
TOLERANCE = 1e-4
# The code an image's features depend on, besides the weights: its digest is in the key.
_SOURCES = ("preprocessing.py", "backbones.py", "features.py", "imagenet.py")


def store_dir(model_run_dir: str) -> str | None:
    """Where a Trainer whose ModelRun artifact is `model_run_dir` (<root>/Trainer/model_run/<id>)
    keeps its features; None for a pipeline root that is not a local path."""
    if "://" in model_run_dir:
        return None
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(model_run_dir))), STORE_DIR)


def store_key(backbone: str, weights: str, image_size: int) -> str | None:
    """The digest of what a backbone's features depend on; None when they cannot be kept
    (`weights: none`: a random backbone, drawn again each run)."""
    import tensorflow as tf
    import tf_keras

    from trainer.features import DECODER_VERSION

    kind = weights.strip().lower()
    if kind == "none":
        return None
    if kind == "imagenet":
        identity = f"imagenet (tf_keras {tf_keras.__version__})"
    else:
        from trainer.model import weights_digest

        identity = f"sha256 {weights_digest(weights)}"
    here = os.path.dirname(os.path.abspath(__file__))
    code = hashlib.sha256()
    for name in _SOURCES:
        with open(os.path.join(here, name), "rb") as f:
            code.update(f.read())
    described = {
        "backbone": backbone,
        "weights": identity,
        "image_size": int(image_size),
        "decoder": DECODER_VERSION,
        "code": code.hexdigest(),
        "tensorflow": tf.__version__,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:32]


@dataclasses.dataclass
class Store:
    """Features by image fingerprint: `ids` sorted and unique, `features` [len(ids), D] float32."""

    path: str
    ids: np.ndarray
    features: np.ndarray

    def find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found, row): whether each of `ids` is stored, and its row (meaningless where not)."""
        ids = np.asarray(ids, dtype=np.uint64)
        if not len(self.ids):
            return np.zeros(len(ids), bool), np.zeros(len(ids), np.int64)
        row = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return self.ids[row] == ids, row

    def drop(self) -> None:
        """Delete the store's file (its features disagreed with the backbone's); one that cannot be
        deleted is said, and replaced when this run's store is written."""
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("feature store %s could not be deleted (%s)", self.path, e)


def _path(directory: str, key: str) -> str:
    return os.path.join(directory, f"{key}.npz")


def load(directory: str, key: str) -> Store | None:
    """The store of `key` under `directory`, or None (none yet, or unreadable: said, and
    every image is extracted)."""
    path = _path(directory, key)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            ids, features = f["ids"], f["features"]
        if ids.dtype != np.uint64 or ids.ndim != 1 or features.dtype != np.float32 or features.ndim != 2:
            raise ValueError(
                f"ids {ids.dtype} of {ids.ndim} dimensions, features {features.dtype} of {features.ndim}"
            )
        if len(ids) != len(features) or np.any(ids[1:] <= ids[:-1]):
            raise ValueError("ids not sorted and unique, one per feature vector")
    except Exception as e:  # noqa: BLE001 - a damaged file (cut short, a bad CRC) must not stop a run
        log.warning(
            "feature store %s cannot be read (%s: %s): every image's features are extracted, and the "
            "file is replaced by this run's",
            path,
            type(e).__name__,
            e,
        )
        return None
    return Store(path, ids, features)


def save(directory: str, key: str, ids: Sequence[np.ndarray], features: Sequence[np.ndarray]) -> str | None:
    """Keep these images' features (fingerprints and [N, D] arrays, repeats allowed) as the store
    of `key`, replacing it whole; delete all but the KEEP_KEYS most recent stores. Returns the
    path, or None when it could not be written (said; the run goes on)."""
    all_ids = np.concatenate([np.asarray(i, dtype=np.uint64) for i in ids])
    all_features = np.concatenate([np.asarray(f, dtype=np.float32) for f in features])
    unique, first = np.unique(all_ids, return_index=True)
    path = _path(directory, key)
    # A new name each time, created as any file (the umask applies, as to the rest of the home).
    tmp = os.path.join(directory, f".writing-{os.getpid()}-{uuid.uuid4().hex}.npz")
    try:
        os.makedirs(directory, exist_ok=True)
        try:
            with open(tmp, "xb") as f:
                np.savez(f, ids=unique, features=all_features[first])
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    except OSError as e:
        log.warning(
            "the feature store could not be written to %s (%s): the next run reuses what it held before, "
            "if anything, and extracts the rest",
            path,
            e,
        )
        return None
    stores = sorted(glob.glob(os.path.join(directory, "*.npz")), key=os.path.getmtime, reverse=True)
    # And what a run killed while writing left (runs on one home take turns: none is writing).
    for old in [p for p in stores if p != path][KEEP_KEYS - 1 :] + glob.glob(
        os.path.join(directory, ".writing-*")
    ):
        try:
            os.remove(old)
        except OSError:
            pass
    return path


def check_sample(hits: np.ndarray, n: int = SAMPLE) -> np.ndarray:
    """Positions, among the True entries of `hits`, of up to `n` stored images spread over the
    split: extracted again to check the store."""
    where = np.flatnonzero(hits)
    if len(where) <= n:
        return where
    return where[np.linspace(0, len(where) - 1, n).round().astype(int)]


def agrees(fresh: np.ndarray, stored: np.ndarray) -> tuple[bool, float]:
    """Whether freshly extracted features match the stored ones, and their largest difference."""
    if fresh.shape != stored.shape:
        return False, float("inf")
    if not len(fresh):
        return True, 0.0
    diff = float(np.max(np.abs(fresh.astype(np.float64) - stored)))
    scale = max(1.0, float(np.max(np.abs(stored))))
    return diff <= TOLERANCE * scale, diff
