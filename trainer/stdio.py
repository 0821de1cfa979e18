"""File descriptor 2 without the lines a library's C++ code logs about itself.

No TensorFlow import here: the CLI installs its import filter (imgpipe/quiet_tensorflow.py)
with these before TensorFlow loads.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import tempfile
from collections.abc import Iterator


def flush_c_stdio() -> None:
    """Flush the C library's stdio buffers (C++ code's printf and std::cerr writes)."""
    with contextlib.suppress(Exception):  # no C library to reach: nothing buffered there either
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def stderr_without(noise: re.Pattern) -> Iterator[None]:
    """Capture descriptor 2 during the block, then write it back without the lines `noise`
    finds. Every other line is kept, in order, also when the block raises."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            flush_c_stdio()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = b"".join(line for line in captured if not noise.search(line))
            if kept:
                os.write(2, kept)
