"""The run lock: two runs that share a lock never overlap.

`run_lock(path)` holds an exclusive flock(2) on PATH for the whole run. Every
local run takes its home's lock (`home_lock_path(home)`: HOME/run.lock), so two
runs on one home never share ML Metadata, artifacts or a push; `imgpipe run
--lock-file` adds a lock of the caller's choosing (schedules use one).

A run that finds the lock taken waits up to `wait` seconds (0: not at all),
then gets LockBusy with the holder (pid, start time and run id) in the message;
the CLI exits 75 (EX_TEMPFAIL: "try again later"). The kernel drops the lock
when the holder exits, even on kill -9, so a stale lock file never blocks.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import os
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

EXIT_LOCKED = 75  # what a run that finds the lock taken exits with (sysexits.h EX_TEMPFAIL)
HOME_LOCK_FILE = "run.lock"
_POLL_SECONDS = 0.5


class LockBusy(RuntimeError):
    """Another process holds the run lock."""


class LockError(ValueError):
    """The lock file cannot be created or opened (a bad --lock-file)."""


def home_lock_path(home: str) -> str:
    """The lock every run and prune of the pipeline home `home` holds."""
    return os.path.join(home, HOME_LOCK_FILE)


def _holder(fd: int) -> str:
    return os.pread(fd, 400, 0).decode("utf-8", "replace").strip() or "unknown holder"


@contextlib.contextmanager
def run_lock(path: str, wait: float = 0.0, holder: str = "", refused: str = "") -> Iterator[None]:
    """Hold an exclusive flock on `path` for the block.

    wait: seconds to wait while another process holds it (0: LockBusy at once).
    holder: what else the lock file says about this holder (e.g. "run <id>"),
    besides pid and start time; a refused process shows it.
    refused: what LockBusy says was not started (default: "an overlapping run", or "prune").
    """
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise LockError(f"lock file {path}: cannot create or open it: {e.strerror or e}") from None
    try:
        deadline = time.monotonic() + max(wait, 0.0)
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    waited = f" after waiting {wait:g}s" if wait > 0 else ""
                    # The holder's own line says what it is (a run and its id, or prune).
                    ours = refused or ("prune" if holder == "prune" else "an overlapping run")
                    raise LockBusy(
                        f"another imgpipe process holds the lock {path} ({_holder(fd)}); "
                        f"not starting {ours}{waited}"
                    ) from None
                if not announced:
                    log.info("waiting up to %gs for the lock %s (%s)", wait, path, _holder(fd))
                    announced = True
                time.sleep(min(_POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))
        since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        note = f", {holder}" if holder else ""
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {since}{note}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
