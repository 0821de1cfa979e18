"""Whether two files hold the same bytes, read a chunk at a time (models, TFRecord shards)."""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

CHUNK = 1 << 20


def same_bytes(a: str, b: str, open_file: Callable[[str, str], IO[Any]] = open, chunk: int = CHUNK) -> bool:
    """True when files `a` and `b` hold the same bytes; `open_file` opens each (e.g. TFX's
    fileio.open for remote paths)."""
    with open_file(a, "rb") as fa, open_file(b, "rb") as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                return False
            if not x:
                return True
