"""A progress bar for a Beam job on this machine: workers count into files, a thread draws.

Workers (other processes with the multiprocess runner) append the number of
files they finished to their own file in a temporary directory; a thread in
the driver sums them twice a second and redraws one line on stderr. Only when
stderr is a terminal and the runner runs on this machine; otherwise nothing
is drawn (logs and pipes get the summary instead).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from typing import TextIO

BAR_WIDTH = 30


def render(done: int, total: int, elapsed: float) -> str:
    """One progress line: bar, counts, percent and rate."""
    total = max(total, 1)
    share = min(done / total, 1.0)
    filled = int(share * BAR_WIDTH)
    rate = done / elapsed if elapsed > 0 else 0.0
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    return f"[{bar}] {done}/{total} files ({share:.0%}, {rate:.1f}/s)"


def count(directory: str) -> int:
    """The files finished so far, summed over every worker's count file."""
    done = 0
    for name in os.listdir(directory):
        try:
            with open(os.path.join(directory, name), encoding="ascii") as handle:
                done += sum(int(line) for line in handle if line.strip().isdigit())
        except OSError:
            continue
    return done


class ProgressBar:
    """Context manager; `directory` is where workers count (None when no bar is drawn)."""

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool | None = None):
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.directory: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._shown = -1

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            self.directory = tempfile.mkdtemp(prefix="imgpipe-progress-")
            self._started = time.monotonic()
            self._thread = threading.Thread(target=self._draw_until_stopped, daemon=True)
            self._thread.start()
        return self

    def _draw(self, force: bool = False) -> None:
        done = count(self.directory)
        if done == self._shown and not force:
            return
        self._shown = done
        self.stream.write("\r" + render(done, self.total, time.monotonic() - self._started))
        self.stream.flush()

    def _draw_until_stopped(self) -> None:
        self._draw(force=True)
        while not self._stop.wait(0.5):
            self._draw()

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
