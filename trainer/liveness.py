"""Whether the process that made a file is gone: for leftovers named `<...>-<host>-<pid>-<...>`.

A push's staging folder and a batch job's working folder carry this host's name
(with '-' written '_', so the name splits on '-') and the process id of their
maker. One of this host's is dead when that process is gone; another host's is
judged by age only (a shared serving dir or output folder).
"""

from __future__ import annotations

import os
import shutil
import socket
import time

HOST = socket.gethostname().replace("-", "_") or "host"
STALE_SECONDS = 24 * 3600  # a leftover of another host untouched this long is taken for dead


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def left_by_the_dead(path: str, host: str, pid: str, now: float) -> bool:
    """Whether the leftover at `path`, named for `host` and `pid`, belongs to no living process:
    this host's and its process gone, or untouched for STALE_SECONDS."""
    try:
        stale = now - os.lstat(path).st_mtime > STALE_SECONDS
    except FileNotFoundError:  # its maker just finished, or another removed it
        return False
    return stale or (host == HOST and pid.isdecimal() and not pid_alive(int(pid)))


def dead_entries(folder: str, prefix: str, now: float | None = None) -> list[str]:
    """The paths of the entries of `folder` named `<prefix><host>-<pid>-...` that belong to no
    living process (`left_by_the_dead`)."""
    now = time.time() if now is None else now
    dead = []
    for name in sorted(os.listdir(folder)):
        if not name.startswith(prefix):
            continue
        host, _, rest = name[len(prefix) :].partition("-")
        path = os.path.join(folder, name)
        if left_by_the_dead(path, host, rest.partition("-")[0], now):
            dead.append(path)
    return dead


def remove_dead(folder: str, prefix: str, now: float | None = None) -> list[str]:
    """Remove `dead_entries(folder, prefix)`; return their paths."""
    removed = dead_entries(folder, prefix, now)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
