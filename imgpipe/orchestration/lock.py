"""The run lock: two runs that share a lock never overlap.

`run_lock(path)` holds an exclusive flock(2) on PATH for the whole run. Every
local run takes its home's lock (`home_lock_path(home)`: HOME/run.lock), so two
runs on one home never share ML Metadata, artifacts or a push; `imgpipe run
--lock-file` adds a lock of the caller's choosing (schedules use one).

A run that finds the lock taken waits up to `wait` seconds (0: not at all),
then gets LockBusy with the holder (pid, start time and run id) in the message;
the CLI exits 75 (EX_TEMPFAIL: "try again later"). The kernel drops the lock
when the holder exits, even on kill -9, so a stale lock file never blocks.

The home's lock (`home_lock`) also holds a flock on the home folder itself: a
lock file deleted by hand ("a stale lock") while a run holds it would otherwise
let a prune or a second run in, to recover the live run's executions as dead.
A folder cannot be deleted while it holds the home. Where a folder cannot be
flocked (a filesystem that refuses it), the lock file alone is the lock; where
the folder's lock is local to one machine (network filesystems), the lock file
stays the lock between machines.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator

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


@contextlib.contextmanager
def home_lock(home: str, wait: float = 0.0, holder: str = "", refused: str = "") -> Iterator[None]:
    """Hold the home's lock for the block: HOME/run.lock (`run_lock`) and the home folder."""
    deadline = time.monotonic() + max(wait, 0.0)
    with run_lock(home_lock_path(home), wait=wait, holder=holder, refused=refused):
        try:
            fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:  # a home this user may enter but not list
            log.debug("the home folder %s cannot be opened to lock (%s): its lock file is the lock", home, e)
            yield
            return
        try:
            locked = _flock_folder(fd, home, deadline, wait, holder, refused)
            try:
                yield
            finally:
                if locked:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _flock_folder(fd: int, home: str, deadline: float, wait: float, holder: str, refused: str) -> bool:
    """Lock the home folder open at `fd`, waiting until `deadline`; False where folders cannot
    be flocked (the lock file is the lock there). LockBusy when another process holds it:
    that process holds the home although its lock file was deleted or replaced."""
    ours = _not_started(holder, refused)
    try:
        _flock(
            fd,
            deadline,
            lambda waited: (
                f"another imgpipe process holds the home {home}, although its lock file "
                f"{home_lock_path(home)} was deleted or replaced while it held it (do not delete it: "
                f"the lock is freed when its holder exits, even on kill -9); not starting {ours}{waited}"
            ),
            lambda: f"waiting up to {wait:g}s for the home {home} (its lock file was deleted while held)",
            wait,
        )
    except LockBusy:
        raise
    except OSError as e:  # EBADF, ENOLCK, EINVAL: a filesystem whose folders take no flock
        log.debug("the home folder %s cannot be flocked (%s): its lock file is the lock", home, e)
        return False
    return True


def home_held(home: str) -> bool | None:
    """Whether another process holds the home's lock now (`held`, of its lock file, else of the
    home folder: a holder whose lock file was deleted)."""
    busy = held(home_lock_path(home))
    return busy if busy else (held(home, folder=True) or busy)


def held(path: str, folder: bool = False) -> bool | None:
    """Whether another process holds the lock at `path` now: True, False (free, or no lock file),
    None when it cannot be told (the file cannot be opened). Takes and drops the lock at once."""
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    return os.pread(fd, 400, 0).decode("utf-8", "replace").strip() or "unknown holder"


@contextlib.contextmanager
def run_lock(
    path: str, wait: float = 0.0, holder: str = "", refused: str = "", remove: bool = False
) -> Iterator[None]:
    """Hold an exclusive flock on `path` for the block.

    wait: seconds to wait while another process holds it (0: LockBusy at once).
    holder: what else the lock file says about this holder (e.g. "run <id>"),
    besides pid and start time; a refused process shows it.
    refused: what LockBusy says was not started (default: "an overlapping run", or "prune").
    remove: delete the lock file when the block ends, for a lock in a shared folder (the
    temporary one) that would otherwise gather a file per locked path. The file is removed
    while still locked, and a process that locked a file no longer at `path` (removed or
    replaced between its open and its flock) opens the path again, so two holders never
    coexist on two files.
    """
    deadline = time.monotonic() + max(wait, 0.0)
    ours = _not_started(holder, refused)
    while True:
        fd = _open_lock_file(path)
        try:
            _flock(
                fd,
                deadline,
                lambda waited, fd=fd: (
                    f"another imgpipe process holds the lock {path} ({_holder(fd)}); not starting {ours}{waited}"
                ),
                lambda fd=fd: f"waiting up to {wait:g}s for the lock {path} ({_holder(fd)})",
                wait,
            )
        except BaseException:
            os.close(fd)
            raise
        if not remove or _still_at(fd, path):
            break
        os.close(fd)  # locked an inode another holder has since removed: take the path's own
    try:
        _say_who_holds(fd, holder)
        try:
            yield
        finally:
            if remove:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            else:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _say_who_holds(fd: int, holder: str) -> None:
    """Write the holder's pid, start time and `holder` into the locked file, for a refused process
    to show. Best effort: the flock is the lock, and a full disk (ENOSPC) must not stop the
    run or the prune that would free it."""
    since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    note = f", {holder}" if holder else ""
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
        # Another user's lock file, opened to read (_open_lock_file): truncating it fails with
        # EINVAL ("Invalid argument"), which named nothing.
        st = os.fstat(fd)
        whose = (
            "read-only to this user, its owner (chmod u+w it)"
            if st.st_uid == os.geteuid()
            else f"another user's (uid {st.st_uid}), which this user (uid {os.geteuid()}) may not write"
        )
        log.warning(
            "the lock is held, but who holds it is not written into its file: the file (mode %04o) is %s",
            st.st_mode & 0o7777,
            whose,
        )
        return
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {since}{note}\n".encode(), 0)
    except OSError as e:
        log.warning(
            "the lock is held, but who holds it could not be written into its file: %s", e.strerror or e
        )


def _open_lock_file(path: str) -> int:
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides who else may write
        except PermissionError:
            if not os.path.isfile(path):
                raise
            # Another user's lock file this user may read: flock takes a lock through a read-only
            # descriptor too (who holds it is then not written into the file).
            return os.open(path, os.O_RDONLY)
    except OSError as e:
        raise LockError(f"lock file {path}: cannot create or open it: {e.strerror or e}") from None


def _not_started(holder: str, refused: str) -> str:
    """What a refused process says it did not start (the holder's own line says what it is)."""
    return refused or ("prune" if holder == "prune" else "an overlapping run")


def _flock(
    fd: int, deadline: float, busy: Callable[[str], str], waiting: Callable[[], str], wait: float
) -> None:
    """Lock `fd`, waiting until `deadline` while another process holds it (saying `waiting()`
    once), then LockBusy(busy(" after waiting Ns" or "")). Other OSErrors are raised."""
    announced = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockBusy(busy(f" after waiting {wait:g}s" if wait > 0 else "")) from None
            if not announced:
                log.info("%s", waiting())
                announced = True
            time.sleep(min(_POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))


def _still_at(fd: int, path: str) -> bool:
    """Whether the locked file is still the one at `path` (not removed or replaced since opened)."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)
