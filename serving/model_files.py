"""Whether a SavedModel's files can be loaded, read without loading it.

A version folder a copy left half-written, a shard cut short or holding other
bytes, a `variables/` folder deleted by hand: TF Serving (and the dev server)
fail to load such a version. `check_model_files` finds each of these from the
files alone, without building a graph: predict-batch checks a model before its
workers load it, and rollback never serves such a version again.
"""

from __future__ import annotations

import os
import warnings

from serving.errors import clean_tf_message
from serving.signatures import PREDICT_IMAGES


class ModelFilesError(Exception):
    """The files show the model cannot be loaded (`str()`: why), or it lacks the signature asked
    for (`signature_missing`: the files are whole, the model is not one imgpipe exported)."""

    def __init__(self, why: str, signature_missing: bool = False):
        super().__init__(why)
        self.signature_missing = signature_missing


def _text(exc: Exception) -> str:
    return clean_tf_message(getattr(exc, "message", None) or str(exc))


def check_model_files(export_dir: str, signature: str = PREDICT_IMAGES) -> None:
    """Raise ModelFilesError unless saved_model.pb parses and has `signature`, the variables'
    index and each of its data shards are there, and every variable reads back with the checksum
    its index holds (a shard cut short, or with other bytes in it: what a copy interrupted or
    gone wrong leaves). One pass over the variables' bytes, one variable in memory at a time."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    pb = os.path.join(export_dir, "saved_model.pb")
    saved = saved_model_pb2.SavedModel()
    try:
        with tf.io.gfile.GFile(pb, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the parser's "not all data was converted"
            saved.ParseFromString(f.read())
    except (tf.errors.OpError, OSError) as exc:
        raise ModelFilesError(f"{pb}: {_text(exc)}") from exc
    except DecodeError as exc:
        raise ModelFilesError(f"{pb} is not a SavedModel ({exc})") from exc
    if not saved.meta_graphs:  # what a file of other bytes can parse to
        raise ModelFilesError(f"{pb} is not a SavedModel (no graph in it)")
    if signature not in saved.meta_graphs[0].signature_def:
        raise ModelFilesError(f"{export_dir} has no {signature} signature", signature_missing=True)
    variables = os.path.join(export_dir, "variables")
    index = os.path.join(variables, "variables.index")
    if not tf.io.gfile.exists(index):
        raise ModelFilesError(f"{index} is missing")
    shards = tf.io.gfile.glob(os.path.join(variables, "variables.data-*-of-*"))
    total = int(shards[0].rsplit("-of-", 1)[1]) if shards else 1
    missing = [
        name
        for name in (f"variables.data-{i:05d}-of-{total:05d}" for i in range(total))
        if os.path.join(variables, name) not in shards
    ]
    if missing:
        raise ModelFilesError(f"{variables} lacks {', '.join(missing)}")
    try:
        reader = tf.train.load_checkpoint(os.path.join(variables, "variables"))
        for name in sorted(reader.get_variable_to_shape_map()):
            reader.get_tensor(name)  # the bundle reader checks each variable's CRC32C as it reads
    except (tf.errors.OpError, ValueError, IndexError) as exc:  # IndexError: cut short, as above
        raise ModelFilesError(f"{variables}: {_text(exc)}") from exc


def damage(export_dir: str, signature: str = PREDICT_IMAGES) -> str | None:
    """Why the model's files cannot be loaded or lack `signature` (check_model_files), or None."""
    try:
        check_model_files(export_dir, signature)
    except ModelFilesError as e:
        return str(e)
    return None
