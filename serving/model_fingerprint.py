"""What an exported model computes, as one digest that survives a re-export: its weights fingerprint.

Two exports of the same trained weights differ byte for byte: TensorFlow numbers the
functions it traces, so `saved_model.pb` changes though every weight is the same. The
Trainer's export folds the weights into the graph as constants, so a model is, for
this purpose, the multiset of its constant tensors, how many nodes of each op its
graph has and its signatures' inputs and outputs (so a fixed serving graph with the
same weights is another model), plus the files of its `variables/` (a model exported
with variables) and `assets/` (the label vocabulary). This digest is
what `imgpipe rollback` records of a model it takes out of serving, and what the
Evaluator compares a candidate with: a model trained again to the same weights (a
deterministic retrain on the same data and settings, after `--no-cache` or a prune)
is the rolled-back model again. Warmup requests (`assets.extra/`) are left out.
"""

from __future__ import annotations

import hashlib
import os

ROLLBACK_LOG = "rollbacks.jsonl"  # in a pipeline home: one JSON line per `imgpipe rollback`


def weights_fingerprint(saved_model_dir: str) -> str:
    """The sha256 of the model's constant tensors (order-free), op counts, signatures, variables
    and assets files."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    digests = []
    ops: dict[str, int] = {}
    signatures = []
    for meta in saved.meta_graphs:
        nodes = list(meta.graph_def.node)
        for function in meta.graph_def.library.function:
            nodes.extend(function.node_def)
        for node in nodes:
            ops[node.op] = ops.get(node.op, 0) + 1
            if node.op == "Const" and "value" in node.attr:
                tensor = node.attr["value"].tensor.SerializeToString(deterministic=True)
                digests.append(hashlib.sha256(tensor).hexdigest())
        for name, signature in meta.signature_def.items():
            ends = [
                f"{side}:{key}:{info.dtype}"
                for side, tensors in (("in", signature.inputs), ("out", signature.outputs))
                for key, info in tensors.items()
            ]
            signatures.append(f"{name}:{signature.method_name}:{','.join(sorted(ends))}")
    total = hashlib.sha256()
    for digest in sorted(digests):
        total.update(digest.encode())
    # The computation, up to the names TensorFlow gives functions: how many nodes of each op, and
    # the signatures' inputs and outputs (a fix to the serving graph is another model).
    total.update(repr(sorted(ops.items())).encode())
    total.update(repr(sorted(signatures)).encode())
    for sub in ("variables", "assets"):
        root = os.path.join(saved_model_dir, sub)
        if not tf.io.gfile.isdir(root):
            continue
        for dirpath, _, files in sorted(tf.io.gfile.walk(root)):
            for name in sorted(files):
                path = os.path.join(dirpath, name)
                total.update(os.path.relpath(path, saved_model_dir).encode())
                with tf.io.gfile.GFile(path, "rb") as f:
                    total.update(hashlib.sha256(f.read()).hexdigest().encode())
    return total.hexdigest()


def rolled_back_models(log_path: str) -> dict[str, str]:
    """{weights fingerprint: the rollback's note} of the models taken out of serving and not
    served again since, from a home's rollback log (JSON lines, oldest first, as `imgpipe
    rollback` appends them: `marked`, each with a `fingerprint`, and `restored`, whose
    fingerprint a later line serving it again clears). {} when there is no log; OSError naming it
    when it exists and cannot be read (an Evaluator must not bless what it cannot check); a line
    that is not JSON is skipped."""
    import json

    try:
        if "://" in log_path:
            import tensorflow as tf

            try:
                with tf.io.gfile.GFile(log_path, "r") as f:
                    text = f.read()
            except tf.errors.NotFoundError:
                return {}
        else:
            with open(log_path, encoding="utf-8") as f:
                text = f.read()
    except FileNotFoundError:  # no rollback yet
        return {}
    except Exception as e:  # noqa: BLE001 - unreadable: refusing nothing would bless a rolled-back model
        raise OSError(f"the rollback log {log_path} cannot be read: {e}") from e
    out: dict[str, str] = {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            restored = (entry.get("restored_model") or {}).get("fingerprint")
            out.pop(restored, None)
            for model in entry.get("marked") or []:
                if model.get("fingerprint"):
                    out[model["fingerprint"]] = entry.get("note") or "rolled back"
        except (ValueError, AttributeError, TypeError):
            continue
    return out


def log_entries(home: str) -> list[dict] | None:
    """The entries of `home`'s rollback log, oldest first (a line that is not a JSON object is
    skipped); None when there is no log or it cannot be read."""
    import json

    try:
        with open(os.path.join(home, ROLLBACK_LOG), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def versions_taken_out(home: str) -> set[str]:
    """The versions `imgpipe rollback` took out of serving in `home` and no rollback has served
    again since (a copy of it renamed in: its `served` line), from the rollback log: what
    `rollback --to V --undo` may still need. A line from before the log named each version taken
    out (no `marked`) took out its `from_version`, unless it was an undo. Empty when there is no
    log or it cannot be read."""
    out: set[str] = set()
    for entry in log_entries(home) or []:
        try:
            if "served" in entry:  # the copy of `copy_of` is served: it is back
                out.discard(str(entry["served"]["copy_of"]))
            elif "marked" in entry:
                out.update(str(m["version"]) for m in entry["marked"] or [] if m.get("version") is not None)
            elif "from_version" in entry and not entry.get("undo"):
                out.add(str(entry["from_version"]))
        except (AttributeError, TypeError, KeyError):
            continue
    return out


def rollback_copy_of(home: str, pushed: str) -> str | None:
    """The newest version folder, still on disk, that `imgpipe rollback` in `home` served as a copy
    of the version pushed at `pushed` (<serving dir>/<model>/<version>); None when there is none.
    A version pruned after a rollback served it again lives on as that copy: a report naming the
    pruned version named a folder gone, and said a model that serves "does not serve"."""
    base, version = os.path.split(os.path.normpath(pushed))
    copies = [
        os.path.join(base, c["version"])
        for c in served_copies(home)
        if c["copy_of"] == version
        and isinstance(c["serving_dir"], str)
        and os.path.normpath(c["serving_dir"]) == base
        and os.path.isdir(os.path.join(base, c["version"]))
    ]
    return copies[-1] if copies else None


def served_copies(home: str) -> list[dict]:
    """The copies `imgpipe rollback` served in `home`, oldest first, from its rollback log's
    `served` lines: [{serving_dir, version, copy_of}] (versions as strings). [] when there is no
    log or it cannot be read: a listing of versions, unlike a refusal, can do without it; a line
    that is not one is skipped."""
    out = []
    for entry in log_entries(home) or []:
        try:
            served = entry.get("served") or {}
            out.append(
                {
                    "serving_dir": served.get("serving_dir"),
                    "version": str(served["version"]),
                    "copy_of": str(served["copy_of"]),
                }
            )
        except (AttributeError, KeyError, TypeError):
            continue
    return out
