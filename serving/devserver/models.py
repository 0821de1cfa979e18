"""The models one server serves: a ModelManager per model of its config, and their version labels.

TF Serving's ServerCore over a model config list. `ServedModels.apply(entries)` takes a config
(serving/model_config.py) as TF Serving's ReloadConfig does: the labels are checked against the
versions available now (before a new model loads, so a label in the first config needs
`allow_unavailable_labels`, TF Serving's --allow_version_labels_for_unavailable_models), then new
models are loaded (the call returns once each has a version available or has failed), models no
longer listed are unloaded (their requests drained), and the others take their new policy.
A config refused for a label or a missing base path changes nothing (TF Serving can keep part
of it); one whose new model loads no version is applied and reported (UNKNOWN). `acquire`
finds the version a request's ModelSpec names, by number, label or newest; a model taken out
keeps its last version states for GetModelStatus (END), as TF Serving's state monitor does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator, Sequence

import grpc
import tensorflow as tf
from tensorflow_serving.apis import model_pb2

from serving.devserver.loaded import LoadedVersion
from serving.devserver.manager import ModelManager, VersionStatus
from serving.devserver.versions import Fingerprint, fingerprint, list_versions
from serving.errors import UNKNOWN_LABEL, InvalidRequestError, ModelNotFoundError
from serving.model_config import ModelConfigError, ModelEntry, label_problems

log = logging.getLogger(__name__)


class ServedModels:
    """Every model of the server's config, by name; `make_manager(entry)` builds an unstarted one."""

    def __init__(
        self, make_manager: Callable[[ModelEntry], ModelManager], allow_unavailable_labels: bool = False
    ):
        self._make_manager = make_manager
        self.allow_unavailable_labels = allow_unavailable_labels
        self._lock = threading.Lock()  # guards the maps below; held briefly
        self._apply_lock = threading.Lock()  # one config change at a time (TF Serving's config_mu_)
        self._managers: dict[str, ModelManager] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._retired: dict[str, list[VersionStatus]] = {}  # models taken out: their last states
        # Managers loading (not yet serving) or unloading (taken out): a second shutdown signal
        # reaches them too, and GetModelStatus reports an unloading model's states.
        self._arriving: set[ModelManager] = set()
        self._leaving: dict[str, ModelManager] = {}
        self._stopped = False
        self._cut = False
        # Models whose move to a new base path loaded no version: that path, the failed versions'
        # files and the failure. The same move is not loaded again (at every poll of the config
        # file) until those files change, as TF Serving does not retry a version that failed.
        self._failed_moves: dict[str, _FailedMove] = {}

    # -- the config -------------------------------------------------------------------------
    def apply(self, entries: Sequence[ModelEntry] | None) -> None:
        """Serve `entries` from now on (None: an empty config file, which changes nothing, as in TF
        Serving's ReloadConfig).

        Refused before anything changes: a label on a version not available (ModelConfigError,
        FAILED_PRECONDITION), a new model's base path that does not exist (INVALID_ARGUMENT).
        Otherwise the config is applied, and a new model (or a model's new base path) whose
        versions all failed to load is reported after it (UNKNOWN, naming them, as TF Serving's
        "did not become available"); a model whose new base path loads nothing keeps serving
        from its earlier one."""
        if entries is None:
            log.info("the model config is empty: taking no action")
            return
        with self._apply_lock:
            if self._stopped:
                return
            available = {name: m.serving_versions() for name, m in self.managers().items()}
            problem = label_problems(entries, available, self.labels(), self.allow_unavailable_labels)
            if problem:
                hint = (
                    ""
                    if self.allow_unavailable_labels
                    else " (assign labels once their versions have loaded, by a config reload, or start "
                    "with --allow-version-labels-for-unavailable-models, as TF Serving's "
                    "--allow_version_labels_for_unavailable_models)"
                )
                raise ModelConfigError(problem + hint, grpc.StatusCode.FAILED_PRECONDITION)
            wanted = {entry.name: entry for entry in entries}
            paths = {name: m.base_path for name, m in self.managers().items()}
            for entry in entries:
                if paths.get(entry.name) != entry.base_path and not tf.io.gfile.isdir(entry.base_path):
                    raise ModelConfigError(
                        f"Could not find base path {entry.base_path} for servable {entry.name} (expected "
                        "a directory of integer version directories, <serving_dir>/<model_name>)"
                    )
            with self._lock:
                self._labels = {e.name: e.label_map for e in entries if e.labels}
            failed = [self._add(entry) for entry in entries if entry.name not in self._managers]
            for name in [n for n in self.managers() if n not in wanted]:
                self._remove(name)
            for name in [n for n in self._failed_moves if n not in wanted]:
                del self._failed_moves[name]
            for name, manager in self.managers().items():
                entry = wanted[name]
                if entry.base_path != manager.base_path:
                    failed.append(self._move(entry, manager))
                else:
                    self._failed_moves.pop(name, None)
                    manager.set_policy(entry.policy)  # nothing when it is the same
            failed = [f for f in failed if f]
            if failed:
                raise ModelConfigError(
                    f"{len(failed)} model(s) did not become available: {{{', '.join(failed)}}} (the rest "
                    "of the config is applied)",
                    grpc.StatusCode.UNKNOWN,
                )

    def _move(self, entry: ModelEntry, manager: ModelManager) -> str | None:
        """Serve `entry`'s model from its new base path (see _add); a move that loaded nothing
        is not tried again while the versions it would load are the files that failed: its
        failure is reported again instead."""
        earlier = self._failed_moves.get(entry.name)
        if earlier is not None and earlier.base_path == entry.base_path:
            if earlier.files == _aspired_files(entry):
                log.debug(
                    "model %r: its base path %s failed to load and is unchanged: not loaded again",
                    entry.name,
                    entry.base_path,
                )
                return earlier.failure
        self._failed_moves.pop(entry.name, None)
        return self._add(entry, replacing=manager)

    def _add(self, entry: ModelEntry, replacing: ModelManager | None = None) -> str | None:
        """Load a new model (blocking, as TF Serving waits for new models); None when a version
        of it is available or none is on disk yet, else the words of its failure. `replacing`:
        the model's manager of its earlier base path, which serves until the new one has loaded,
        then is unloaded; when the new one loads nothing, it stays and the new one goes."""
        manager = self._make_manager(entry)
        log.info("Adding model %r from %s (%s)", entry.name, entry.base_path, entry.policy.describe())
        with self._lock:
            self._arriving.add(manager)
            cut = self._cut
        if cut:
            manager.cut_drains()
        try:
            manager.start()
        finally:
            with self._lock:
                self._arriving.discard(manager)
        failures = [s for s in manager.statuses() if s.error_code != grpc.StatusCode.OK]
        failure = None
        if failures and not manager.serving_versions():
            failure = f"{{name: {entry.name} version: {failures[0].version}}} due to error: {failures[0].error_message}"
        if replacing is not None and failure is not None:
            log.error(
                "model %r: no version of its new base path %s loaded: it keeps serving from %s",
                entry.name,
                entry.base_path,
                replacing.base_path,
            )
            manager.stop()
            self._failed_moves[entry.name] = _FailedMove(entry.base_path, manager.failed_files(), failure)
            return failure
        with self._lock:
            self._managers[entry.name] = manager
            self._retired.pop(entry.name, None)
        if replacing is not None:
            log.info(
                "model %r: unloading the versions of its earlier base path %s",
                entry.name,
                replacing.base_path,
            )
            self._unload(entry.name, replacing)
        return failure

    def _remove(self, name: str) -> None:
        with self._lock:
            manager = self._managers.pop(name)
        log.info("Removing model %r (no longer in the config)", name)
        self._unload(name, manager)
        with self._lock:
            self._retired[name] = manager.statuses()

    def _unload(self, name: str, manager: ModelManager) -> None:
        """Stop `manager`, its requests drained; reached by a second shutdown signal meanwhile."""
        with self._lock:
            self._leaving[name] = manager
            cut = self._cut
        if cut:
            manager.cut_drains()
        try:
            manager.stop()
        finally:
            with self._lock:
                if self._leaving.get(name) is manager:
                    del self._leaving[name]

    def stop(self) -> None:
        """Unload every model (waiting for their requests). After `cut_drains` (a second shutdown
        signal), a config change still under way is not waited for."""
        with self._lock:
            self._stopped = True  # no config change starts from now on
        while not self._apply_lock.acquire(timeout=0.25):
            with self._lock:
                if self._cut:
                    log.warning("a model config change is still under way: left to the process's exit")
                    managers = [*self._managers.values(), *self._arriving, *self._leaving.values()]
                    break
        else:
            try:
                managers = list(self.managers().values())
            finally:
                self._apply_lock.release()
        for manager in managers:
            manager.stop()

    def cut_drains(self) -> None:
        """Unload without waiting for in-flight requests, from now on: every model's manager, and
        those loading or unloading in a config change."""
        with self._lock:
            self._cut = True
            managers = [*self._managers.values(), *self._arriving, *self._leaving.values()]
        for manager in managers:
            manager.cut_drains()

    # -- queries ----------------------------------------------------------------------------
    def managers(self) -> dict[str, ModelManager]:
        with self._lock:
            return dict(self._managers)

    def labels(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {name: dict(labels) for name, labels in self._labels.items()}

    def names(self) -> list[str]:
        return sorted(self.managers())

    def _serves(self) -> str:
        names = self.names()
        return f" (this server serves {', '.join(repr(n) for n in names) or 'no model'})"

    def manager_for(self, spec: model_pb2.ModelSpec) -> ModelManager:
        """The model a request names; INVALID_ARGUMENT without a name, NOT_FOUND for a model not
        served, in TF Serving's words."""
        if not spec.name:
            raise InvalidRequestError(f"ModelSpec has no name specified.{self._serves()}")
        manager = self.managers().get(spec.name)
        if manager is None:
            wanted = (
                f"Specific({spec.name}, {spec.version.value})"
                if spec.HasField("version")
                else f"Latest({spec.name})"
            )
            raise ModelNotFoundError(f"Servable not found for request: {wanted}{self._serves()}")
        return manager

    def statuses(self, spec: model_pb2.ModelSpec) -> list[VersionStatus]:
        """GetModelStatus: the states of the model's versions (of one, when the spec names it),
        newest first; NOT_FOUND in TF Serving's words when none is known."""
        version = spec.version.value if spec.HasField("version") else None
        with self._lock:
            manager = self._managers.get(spec.name) or self._leaving.get(spec.name)
        if manager is not None:
            found = manager.statuses(version)
        else:
            with self._lock:
                found = [
                    s for s in self._retired.get(spec.name, []) if version is None or s.version == version
                ]
        if not found:
            what = f"version {version}" if version is not None else "any versions"
            unknown = manager is None and spec.name not in self._retired
            raise ModelNotFoundError(
                f"Could not find {what} of model {spec.name}{self._serves() if unknown else ''}"
            )
        return found

    @contextlib.contextmanager
    def acquire(self, spec: model_pb2.ModelSpec) -> Iterator[LoadedVersion]:
        """The version `spec` asks for (by number, by label, else the newest), held until the
        block ends."""
        version = spec.version.value if spec.HasField("version") else None
        if spec.HasField("version_label") and spec.name:  # TF Serving resolves the label first
            version = self.labels().get(spec.name, {}).get(spec.version_label)
            if version is None:
                raise InvalidRequestError(f"{UNKNOWN_LABEL}: {spec.version_label}")
        manager = self.manager_for(spec)
        with manager.acquire(version) as loaded:
            yield loaded


@dataclasses.dataclass(frozen=True)
class _FailedMove:
    base_path: str
    files: dict[int, Fingerprint | str]  # each version that failed, with its files then (or why unreadable)
    failure: str


def _aspired_files(entry: ModelEntry) -> dict[int, Fingerprint] | None:
    """The versions `entry`'s policy would load from its base path, each with its files now
    (None when they cannot be read: try loading, which says why)."""
    try:
        on_disk = list_versions(entry.base_path)
        return {v: fingerprint(on_disk[v]) for v in entry.policy.aspired(on_disk)}
    except (tf.errors.OpError, OSError):
        return None
