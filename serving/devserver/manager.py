"""The versions of one model being served: which are loaded, loading, draining, failed.

`ModelManager` polls the model base path and keeps the versions its version policy
asks for loaded (TF Serving's `latest`, `all` or `specific`; the newest one by default).
A new version is loaded and warmed up before it takes
traffic (load before swap); a version no longer wanted is unloaded once the
requests holding it have finished (drain). A version that fails to load
leaves the previous one serving and is retried only when its files change.
Each version's state is kept for GetModelStatus.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import threading
import time
from collections.abc import Iterator

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2

from serving.batching_config import BatchingParameters
from serving.config import DEFAULT_MAX_PIXELS
from serving.devserver.loaded import LoadedVersion
from serving.devserver.versions import Fingerprint, fingerprint, list_versions, who_may_read
from serving.errors import (
    ModelNotFoundError,
    ServingError,
    clean_tf_message,
    status_code_from_int,
)
from serving.model_config import VersionPolicy
from serving.version_names import version_number

log = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State
_MAX_REMEMBERED_STATES = 32


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """What GetModelStatus reports for one version."""

    version: int
    state: int  # ModelVersionStatus.State
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


class ModelManager:
    """Keeps the versions of one model its policy asks for loaded, polling the base path
    (`policy`, or else the newest `num_versions`).

    Requests take a version with `acquire()`, which holds a reference: a
    version being unloaded waits for those requests before it is released.
    """

    def __init__(
        self,
        model_name: str,
        base_path: str,
        poll_seconds: float = 2.0,
        num_versions: int = 1,
        run_warmup: bool = True,
        drain_seconds: float = 30.0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_batch_size: int = 0,
        batching: BatchingParameters | None = None,
        policy: VersionPolicy | None = None,
    ):
        self.model_name = model_name
        self.base_path = base_path
        self.poll_seconds = poll_seconds
        self.policy = policy or VersionPolicy("latest", num_versions=num_versions)
        self.run_warmup = run_warmup
        self.drain_seconds = drain_seconds
        self.max_pixels = max_pixels
        self.max_batch_size = max_batch_size
        self.batching = batching
        self._lock = threading.Lock()  # guards _serving and _states
        self._serving: dict[int, LoadedVersion] = {}
        self._states: dict[int, VersionStatus] = {}
        # version -> its files when it failed to load, or why its files could not be read
        self._failed: dict[int, Fingerprint | str] = {}
        self._poll_lock = threading.Lock()
        self._listing_problem: str | None = None  # the last poll's, said once until it changes
        self._missing_said: frozenset[int] = frozenset()  # specific versions not on disk, said once
        self._unreadable_said: frozenset[str] = frozenset()  # version folders it may not open, said once
        self._stop = threading.Event()
        self._poke = threading.Event()  # poll now, not at the next interval (a new policy)
        self._thread: threading.Thread | None = None
        self._draining: set[LoadedVersion] = set()  # unloads waiting for their requests (under _lock)
        self._drains_cut = False

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Load what is on disk now (blocking), then poll in a background thread."""
        self.poll_once()
        self._thread = threading.Thread(target=self._poll_loop, name="serving-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and unload every version (waiting for their requests)."""
        self._stop.set()
        self._poke.set()
        if self._thread is not None:
            # After a second shutdown signal a load or warm-up under way is not waited for.
            self._thread.join(timeout=1.0 if self._drains_cut else max(60.0, self.drain_seconds + 30.0))
        if not self._poll_lock.acquire(timeout=1.0 if self._drains_cut else -1):
            log.warning("a version is still loading: left to the process's exit")
            return
        try:
            for version in sorted(self.serving_versions()):
                self._unload(version)
        finally:
            self._poll_lock.release()

    def cut_drains(self) -> None:
        """Unload without waiting for in-flight requests, from now on (a second SIGTERM)."""
        with self._lock:
            self._drains_cut = True
            versions = [*self._serving.values(), *self._draining]
        for loaded in versions:
            loaded.cut_drain()

    def failed_files(self) -> dict[int, Fingerprint | str]:
        """The versions that failed to load, each with its files when it failed (or why they
        could not be read)."""
        with self._poll_lock:
            return dict(self._failed)

    def set_policy(self, policy: VersionPolicy) -> None:
        """Serve the versions `policy` asks for from now on: the poller applies it at once, loading
        before it unloads, as TF Serving applies a reloaded config's policy."""
        if policy == self.policy:
            return
        log.info("model %r: serving %s (was %s)", self.model_name, policy.describe(), self.policy.describe())
        self.policy = policy
        self._poke.set()

    def _poll_loop(self) -> None:
        while True:
            self._poke.wait(self.poll_seconds)
            self._poke.clear()
            if self._stop.is_set():
                return
            try:
                self.poll_once()
            except Exception:  # the poller must outlive any one bad poll
                log.exception("polling %s failed; will retry", self.base_path)

    def poll_once(self) -> None:
        """One reconciliation of loaded versions with the directories on disk."""
        with self._poll_lock:
            if self._stop.is_set() and self._thread is not None:
                return
            unreadable: list[str] = []
            try:
                on_disk = list_versions(self.base_path, unreadable)
            except (tf.errors.OpError, OSError) as e:
                # Said once, not at every poll (each second by default), until it changes.
                problem = str(e)
                (log.debug if problem == self._listing_problem else log.warning)(
                    "cannot list model base path %s: %s (polling on)", self.base_path, problem
                )
                self._listing_problem = problem
                return
            if self._listing_problem is not None:
                log.warning("model base path %s can be listed again", self.base_path)
                self._listing_problem = None
            if unreadable and frozenset(unreadable) != self._unreadable_said:
                by_version = sorted(unreadable, key=lambda p: version_number(os.path.basename(p)) or 0)
                log.warning(
                    "model %r: this server may not read version folder(s) %s (the newest %s): not served "
                    "until it may (a push under another user or umask 077? make them readable to this user)",
                    self.model_name,
                    ", ".join(by_version),
                    who_may_read(by_version[-1]),
                )
            self._unreadable_said = frozenset(unreadable)
            policy = self.policy
            aspired = policy.aspired(on_disk)
            missing = frozenset(policy.versions) - set(on_disk) if policy.kind == "specific" else frozenset()
            if missing and missing != self._missing_said:
                log.warning(
                    "model %r: version(s) %s, which its specific version policy asks for, not found under %s",
                    self.model_name,
                    ", ".join(map(str, sorted(missing))),
                    self.base_path,
                )
            self._missing_said = missing
            for version in aspired:  # newest first: it takes traffic as soon as it is ready
                if version not in self.serving_versions():
                    self._load(version, on_disk[version])
            loaded = set(self.serving_versions())
            keep = {v for v in aspired if v in loaded}
            if not keep and aspired:
                # No wanted version could load: keep serving the newest one still on disk, else
                # the newest loaded even though its folder is gone (TF Serving's availability-
                # preserving policy: it is in memory). With no version on disk at all, none is
                # wanted and every one goes, as in TF Serving.
                still_there = [v for v in loaded if v in on_disk]
                keep = {max(still_there or loaded)} if loaded else set()
            for version in sorted(loaded - keep):
                self._unload(version)
            for version in list(self._failed):
                if version not in on_disk:
                    del self._failed[version]

    def _set_state(self, status: VersionStatus) -> None:
        with self._lock:
            self._states[status.version] = status
            for old in sorted(self._states)[: max(0, len(self._states) - _MAX_REMEMBERED_STATES)]:
                if old not in self._serving:
                    del self._states[old]

    def _load(self, version: int, path: str) -> None:
        try:
            files = fingerprint(path)
        except (tf.errors.OpError, OSError) as e:
            # A folder inside the version this server may not read (a push under umask 077 served
            # by another user): remembered as a failed load is, so it is said once, not at every
            # poll, with who may read it, and left on the version's status for clients.
            # TensorFlow names the folder first: "<path>; Permission denied".
            named = str(getattr(e, "message", "")).split(";")[0].strip()
            where = getattr(e, "filename", None) or (named if named and os.path.exists(named) else path)
            message = f"cannot read version dir {path}: {e} ({who_may_read(where)})"
            if self._failed.get(version) != message:
                log.warning(
                    "model %r: %s; still serving %s",
                    self.model_name,
                    message,
                    self.serving_versions() or "nothing",
                )
                self._failed[version] = message
                denied = isinstance(e, PermissionError | tf.errors.PermissionDeniedError)
                code = grpc.StatusCode.PERMISSION_DENIED if denied else grpc.StatusCode.UNKNOWN
                self._set_state(VersionStatus(version, State.END, code, message))
            return
        if self._failed.get(version) == files:
            return  # failed before and unchanged since: do not retry every poll
        self._set_state(VersionStatus(version, State.LOADING))
        log.info("Loading model %r version %d from %s", self.model_name, version, path)
        start = time.monotonic()
        loaded = None
        try:
            loaded = LoadedVersion(
                self.model_name, version, path, self.max_pixels, self.max_batch_size, self.batching
            )
            loaded.warmup_summary = loaded.warm_up(self.run_warmup)
        except Exception as e:  # noqa: BLE001 - any load/warm-up failure keeps the old version
            if loaded is not None:
                loaded.close()  # its batch threads end, and its model is freed
            self._failed[version] = files
            code, message = _load_failure(e)
            self._set_state(VersionStatus(version, State.END, code, message))
            log.error(
                "Failed to load model %r version %d from %s: %s (still serving %s)",
                self.model_name,
                version,
                path,
                message,
                self.serving_versions() or "nothing",
            )
            return
        self._failed.pop(version, None)
        with self._lock:
            self._serving[version] = loaded
            self._states[version] = VersionStatus(version, State.AVAILABLE)
        log.info(
            "Loaded model %r version %d in %.1fs (warm-up: %s); serving versions %s",
            self.model_name,
            version,
            time.monotonic() - start,
            loaded.warmup_summary,
            self.serving_versions(),
        )

    def _unload(self, version: int) -> None:
        with self._lock:
            loaded = self._serving.pop(version, None)
            if loaded is None:
                return
            self._states[version] = VersionStatus(version, State.UNLOADING)
            self._draining.add(loaded)
            if self._drains_cut:
                loaded.cut_drain()
        log.info(
            "Unloading model %r version %d (%d requests in flight)",
            self.model_name,
            version,
            loaded.in_flight,
        )
        if not loaded.drain(self.drain_seconds):
            log.warning(
                "version %d still has %d requests after %s; releasing it (they keep their own reference)",
                version,
                loaded.in_flight,
                "a second shutdown signal" if self._drains_cut else f"{self.drain_seconds:.0f}s",
            )
        with self._lock:
            self._draining.discard(loaded)
        # Undrained, the requests still on it keep the version whole (closed, a request between
        # taking it and calling its signature would find none): the last of them closes it.
        loaded.close_when_idle()
        del loaded
        gc.collect()
        self._set_state(VersionStatus(version, State.END))
        log.info("Unloaded model %r version %d", self.model_name, version)

    # -- queries -----------------------------------------------------------------------
    def serving_versions(self) -> list[int]:
        """The versions taking traffic, oldest first."""
        with self._lock:
            return sorted(self._serving)

    def get_loaded(self, version: int) -> LoadedVersion | None:
        """The loaded version object (for diagnostics), or None."""
        with self._lock:
            return self._serving.get(version)

    def statuses(self, version: int | None = None) -> list[VersionStatus]:
        """The state of `version`, or of every remembered version newest first."""
        with self._lock:
            if version is not None:
                return [self._states[version]] if version in self._states else []
            return [self._states[v] for v in sorted(self._states, reverse=True)]

    @contextlib.contextmanager
    def acquire(self, version: int | None = None) -> Iterator[LoadedVersion]:
        """`version`, or the newest serving, held until the block ends (the request's model
        name and label are resolved before: serving/devserver/models.py)."""
        with self._lock:
            if version is not None:
                loaded = self._serving.get(version)
                if loaded is None:
                    raise ModelNotFoundError(
                        f"Servable not found for request: Specific({self.model_name}, "
                        f"{version}); loaded versions: {sorted(self._serving)}"
                    )
            elif self._serving:
                loaded = self._serving[max(self._serving)]
            else:
                # TF Serving's answer (NOT_FOUND, "Latest(name)"), which clients retry: the
                # same code and words here, so a client tested on this server waits for a
                # loading model on the real one too.
                raise ModelNotFoundError(
                    f"Servable not found for request: Latest({self.model_name}) (no version is "
                    f"loaded yet; base path {self.base_path}{self._last_failure()})"
                )
            loaded.acquire()
        try:
            yield loaded
        finally:
            loaded.release()

    def _last_failure(self) -> str:
        """ "; version N failed to load: why" for the newest version whose load failed, so a client
        waiting for a model sees the reason, not only the server's log ("" when none failed).
        Called holding the lock."""
        failed = [v for v, state in self._states.items() if state.error_code != grpc.StatusCode.OK]
        if not failed:
            return ""
        state = self._states[max(failed)]
        return f"; version {state.version} failed to load: {state.error_message}"


def _load_failure(e: Exception) -> tuple[grpc.StatusCode, str]:
    """The status a failed load leaves on its version: ours, TensorFlow's, or UNKNOWN. A
    version copied in file by file can fail on a file not there yet, which TensorFlow raises as
    Python's FileNotFoundError around its own graph dump: NOT_FOUND, with the dump cleaned."""
    if isinstance(e, tf.errors.OpError):
        return status_code_from_int(e.error_code), clean_tf_message(e.message)
    if isinstance(e, ServingError):
        return e.code, str(e)
    if isinstance(e, FileNotFoundError):
        return grpc.StatusCode.NOT_FOUND, clean_tf_message(str(e))
    return grpc.StatusCode.UNKNOWN, f"{type(e).__name__}: {e}"
