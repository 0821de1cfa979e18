"""Whether two files hold the same bytes, and a file's SHA-256, read a chunk at a time (models,
TFRecord shards, weights files)."""

from __future__ import annotations

import hashlib
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


def sha256(path: str, open_file: Callable[[str, str], IO[Any]] | None = None) -> tuple[str, int]:
    """The SHA-256 (hex) of a file's bytes and its size. A local file is read with Python's own
    unbuffered reads (~1.5 GB/s here, 2-3x TensorFlow's file system); a URI (`gs://`) with
    `open_file`, TensorFlow's file system by default."""
    digest = hashlib.sha256()
    size = 0
    if "://" in path:
        if open_file is None:
            import tensorflow as tf

            open_file = tf.io.gfile.GFile
        with open_file(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return digest.hexdigest(), size
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
            size += n
    return digest.hexdigest(), size
