"""The run lock: two runs that share a lock never overlap.

`run_lock(path)` holds an exclusive, non-blocking flock(2) on PATH for the
whole run. A second run that finds the lock taken gets LockBusy at once, with
the holder (pid and start time) in the message; the CLI exits 75 (EX_TEMPFAIL:
"try again later"). The kernel drops the lock when the holder exits, even if it
crashes, so a stale lock file never blocks.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
from collections.abc import Iterator

EXIT_LOCKED = 75  # what a run that finds the lock taken exits with (sysexits.h EX_TEMPFAIL)


class LockBusy(RuntimeError):
    """Another process holds the run lock."""


class LockError(ValueError):
    """The lock file cannot be created or opened (a bad --lock-file)."""


@contextlib.contextmanager
def run_lock(path: str) -> Iterator[None]:
    """Hold an exclusive flock on `path` for the block; LockBusy at once if it is taken."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise LockError(f"lock file {path}: cannot create or open it: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown holder"
            raise LockBusy(
                f"another imgpipe run holds the lock {path} ({holder}); not starting an overlapping run"
            ) from None
        since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {since}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
