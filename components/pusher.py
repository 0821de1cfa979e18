"""The Pusher node: TFX's filesystem Pusher that never pushes the model TF Serving already serves.

TF Serving loads every new version directory under the model base path and
swaps it in. TFX's own Pusher copies the blessed model to a new version on
every blessing, so an exact re-run of a finished run (same data, same cached
model, blessed again against itself) pushed a byte-identical copy and made
every server reload and warm up the same model. This executor compares the
model with the newest version in the serving dir first and, when every file is
byte-identical, pushes nothing and records which version it matched
(`IDENTICAL_VERSION_KEY` on the PushedModel artifact; `pushed` is 0).

It also picks a version that is always new: TFX names versions by the Unix
time in seconds and, when that directory already exists (two pushes in one
second), skips the copy yet still reports the push. Here the version is
max(now, newest + 1), and on a local filesystem the model is copied to a
hidden staging folder first and renamed into place, so a server never sees a
half-written version and two pushers cannot claim the same one. A staging
folder left by a push that was killed mid-copy is removed by the next push
(`remove_dead_staging`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from typing import Any

from tfx import types
from tfx.components.pusher import component as pusher_component
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from components.gate_decision import ROLLED_BACK_KEY, rolled_back_reason
from serving.version_names import INT64_MAX, version_number
from serving.warmup import WARMUP_DIR, WARMUP_FILE
from trainer import liveness
from trainer.same_files import same_bytes

log = logging.getLogger(__name__)

IDENTICAL_VERSION_KEY = "identical_to_version"  # PushedModel property: the version that matched
SAVED_MODEL = "saved_model.pb"


def served_versions(base_directory: str) -> list[int]:
    """The versions under a TF Serving model base path: its numeric folders, oldest first.

    A server treats every folder named by a 64-bit integer as a version (even one a
    crashed copy left unfinished), so a new push must be newer than all of them; other
    names (serving.version_names), a number too large for int64 included, are no version.
    """
    if not fileio.isdir(base_directory):
        return []
    versions = (version_number(name) for name in fileio.listdir(base_directory))
    return sorted(v for v in versions if v is not None)


def newest_version(base_directory: str) -> tuple[int, str] | None:
    """The newest version under a model base path and its folder as named on disk ("007" is
    version 7: its folder is not `str(7)`); None when there is none."""
    if not fileio.isdir(base_directory):
        return None
    named = [(version_number(n), n) for n in (str(x).rstrip("/") for x in fileio.listdir(base_directory))]
    named = [(v, n) for v, n in named if v is not None]
    if not named:
        return None
    # The largest number; of two spellings of it ("7", "007"), the plain one first.
    version, name = max(named, key=lambda vn: (vn[0], vn[1] == str(vn[0])))
    return version, os.path.join(base_directory, name)


def _files(root: str) -> dict[str, str]:
    """Relative path -> full path of every file under `root`."""
    root = root.rstrip("/")
    out = {}
    for dirpath, _, files in fileio.walk(root):
        dirpath = dirpath.decode() if isinstance(dirpath, bytes) else dirpath
        for name in files:
            name = name.decode() if isinstance(name, bytes) else name
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = full
    return out


# The files of a SavedModel that differ between two exports of the same weights: TensorFlow
# numbers the functions it traces anew in each (`saved_model.pb`), and fingerprints that file.
GRAPH_FILES = frozenset({SAVED_MODEL, "fingerprint.pb"})
# A file that changes no answer of the model: the warmup requests the Trainer makes from the
# eval split's first records (a server replays them as it loads the version).
ANSWER_FREE_FILES = frozenset({os.path.join(WARMUP_DIR, WARMUP_FILE)})


def same_model(a: str, b: str) -> bool:
    """True when SavedModel directories `a` and `b` hold the same model: the same files with
    byte-identical content, or differing only in the warmup requests (ANSWER_FREE_FILES) and in
    the graph files of a re-export whose weights fingerprint (constants, op counts, signatures,
    variables, assets) is the same.

    A retrain to the same weights (the first run after an upgrade that keys a cache anew, a
    `--no-cache` run) exports a `saved_model.pb` that differs only in TensorFlow's function
    names; byte for byte it was another model, pushed as a new version of the served one. A
    retrain on the same train split with new eval data trains the same weights but warms up
    with other requests: that too was pushed as a new version (an audit)."""
    fa, fb = _files(a), _files(b)
    if fa.keys() != fb.keys():
        return False
    every = {k for k in sorted(fa) if not same_bytes(fa[k], fb[k], fileio.open)}
    differ = every - ANSWER_FREE_FILES
    if not differ:
        if every:
            log.debug("%s and %s: the same model, warmed up with other requests (other eval data)", a, b)
        return True
    if not differ <= GRAPH_FILES or SAVED_MODEL not in differ:
        return False
    from serving.model_fingerprint import weights_fingerprint  # parses the graphs: only here

    try:
        same = weights_fingerprint(a) == weights_fingerprint(b)
    except Exception as e:  # noqa: BLE001 - a graph that cannot be read is not shown to be the same
        log.warning("cannot compare the graphs of %s and %s: %s", a, b, e)
        return False
    if same:
        # Debug: asked several times a run (its start, pre-push validation, the Pusher, the summary).
        log.debug("%s and %s: the same weights and graph, exported apart (function names differ)", a, b)
    return same


def _copy_model(model_path: str, dest: str) -> None:
    """Copy a SavedModel with saved_model.pb last (servers treat it as the 'version complete' mark)."""
    io_utils.copy_dir(model_path, dest, deny_regex_patterns=[r"saved_model\.pb$"])
    if fileio.exists(os.path.join(model_path, SAVED_MODEL)):
        io_utils.copy_file(os.path.join(model_path, SAVED_MODEL), os.path.join(dest, SAVED_MODEL))


STAGING_PREFIX = ".push-"
# A staging folder of another host (a shared serving dir), or of no known host, is taken for
# dead when it has not changed for this long: no copy of one model takes a day.
STALE_STAGING_SECONDS = liveness.STALE_SECONDS
_HOST = liveness.HOST


# `imgpipe prune` renames a served version it deletes to `<PRUNED_PREFIX><host>-<pid>-<version>`
# (a name no server loads) before removing it: a prune killed in between leaves a whole model there.
PRUNED_PREFIX = ".pruned-"
# The leftovers in a model base path of processes that died, and what each one was.
_LEFTOVERS = {
    STAGING_PREFIX: "the staging folder of a push that did not finish",
    PRUNED_PREFIX: "a served version an `imgpipe prune` that did not finish was deleting",
}


def dead_leftovers(base_directory: str, now: float | None = None) -> list[tuple[str, str]]:
    """[(path, what it was)] of the leftovers of dead pushes and prunes in a model base path
    (SIGKILL, power loss). One of this host's is dead when its process is gone; any, when
    untouched for STALE_STAGING_SECONDS (another host's on a shared serving dir, a reused pid)."""
    return [
        (path, what)
        for prefix, what in _LEFTOVERS.items()
        for path in liveness.dead_entries(base_directory, prefix, now)
    ]


def remove_dead_staging(base_directory: str, now: float | None = None) -> list[str]:
    """Remove the `dead_leftovers` of a model base path; return their paths."""
    removed = []
    for path, what in dead_leftovers(base_directory, now):
        shutil.rmtree(path, ignore_errors=True)
        log.warning("removed %s: %s", path, what)
        removed.append(path)
    return removed


def _next_version(base_directory: str, now: float | None) -> int:
    newest = max(served_versions(base_directory), default=0)
    version = max(int(time.time() if now is None else now), newest + 1)
    if version > INT64_MAX:
        raise ValueError(
            f"{base_directory}: version {newest} is the largest a server can read (64-bit); "
            "no newer version can be pushed"
        )
    return version


def stage_copy(model_path: str, base_directory: str) -> str:
    """Copy the model into a staging folder of a local base path (a name no server loads) and
    return it: `rename_in` makes it a version. The slow, failing part (a full disk) of a push."""
    os.makedirs(base_directory, exist_ok=True)
    remove_dead_staging(base_directory)
    # Not a number: servers ignore it. Named by host and process, so a later push can tell a
    # dead pusher's leftover (killed mid-copy) from a live one's.
    staging = os.path.join(base_directory, f"{STAGING_PREFIX}{_HOST}-{os.getpid()}-{uuid.uuid4().hex}")
    try:
        _copy_model(model_path, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def rename_in(staging: str, base_directory: str, now: float | None = None) -> tuple[str, str]:
    """Rename a staged copy to a version newer than every existing one; return (version, path).
    The staging folder is removed whatever happens."""
    try:
        version = _next_version(base_directory, now)
        while True:
            dest = os.path.join(base_directory, str(version))
            if not os.path.exists(dest):
                try:
                    os.rename(staging, dest)
                    return str(version), dest
                except OSError:
                    if not os.path.exists(dest):
                        raise
            version += 1
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def push_new_version(model_path: str, base_directory: str, now: float | None = None) -> tuple[str, str]:
    """Copy the model to a version newer than every existing one; return (version, its path)."""
    if "://" in base_directory:  # object stores: no atomic rename; the TFX order (saved_model.pb last)
        version = _next_version(base_directory, now)
        while fileio.exists(os.path.join(base_directory, str(version))):
            version += 1
        dest = os.path.join(base_directory, str(version))
        _copy_model(model_path, dest)
        return str(version), dest
    _next_version(base_directory, now)  # a base path at the largest version: refused before the copy
    return rename_in(stage_copy(model_path, base_directory), base_directory, now)


class ServingPusherExecutor(pusher_executor.Executor):
    """Filesystem push to a TF Serving base path; skips a model identical to the newest version."""

    def Do(  # noqa: N802 - TFX's name
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY]
        )
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
        if model.has_custom_property(ROLLED_BACK_KEY):  # rolled back after its Evaluator blessed it
            log.warning(
                "not pushed: %s", rolled_back_reason(model.get_string_custom_property(ROLLED_BACK_KEY))
            )
            self._MarkNotPushed(model_push)
            model_push.set_string_custom_property(
                ROLLED_BACK_KEY, model.get_string_custom_property(ROLLED_BACK_KEY)
            )
            return
        model_path = self.GetModelPath(input_dict)
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") != "filesystem":
            raise ValueError("push_destination: imgpipe's Pusher pushes to a filesystem base_directory only")
        base = destination.filesystem.base_directory
        newest = newest_version(base)
        if newest and same_model(model_path, newest[1]):
            log.info("model is identical to the served version %d: nothing pushed", newest[0])
            self._MarkNotPushed(model_push)
            model_push.set_string_custom_property(IDENTICAL_VERSION_KEY, str(newest[0]))
            return
        # The pushed model's record (as TFX's Pusher keeps it) first, the version's rename into the
        # serving dir last: a failure in between (a full disk) must not leave a version served
        # by a Pusher that failed, whose blessing a later run would withdraw as "not pushed".
        io_utils.copy_dir(model_path, model_push.uri)
        version, serving_path = push_new_version(model_path, base)
        log.info("pushed the model as version %s: %s", version, serving_path)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=version)


class ServingPusher(pusher_component.Pusher):
    """TFX's Pusher component with ServingPusherExecutor."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(ServingPusherExecutor)
