"""Which files a batch prediction scores: a folder (recursively) or a glob, and reading them."""

from __future__ import annotations

import glob
import os

from imgpipe.ingest.images import read_regular_file


class NoInputs(ValueError):
    """--images names nothing to score; the message says what was looked for."""


def _is_remote(path: str) -> bool:
    return "://" in path


def list_images(spec: str) -> list[str]:
    """Every file under directory `spec` (recursively), or matching glob `spec` (`**` allowed).

    Hidden entries (names starting with '.') are not walked, as in ingest;
    directories matched by a glob are walked. Paths keep the form given
    (relative stays relative). gs:// and other TensorFlow file systems work too.
    Sorted; raises NoInputs when there is no file.
    """
    if _is_remote(spec):
        return _list_remote(spec)
    if os.path.isdir(spec):
        found = _walk(spec)
        if not found:
            raise NoInputs(f"--images {spec}: the directory holds no files")
        return sorted(found)
    matches = sorted(glob.glob(spec, recursive=True))
    if not matches:
        raise NoInputs(f"--images {spec}: no such directory, and no file matches it as a glob")
    files: list[str] = []
    for path in matches:
        files.extend(_walk(path) if os.path.isdir(path) else [path])
    if not files:
        raise NoInputs(f"--images {spec}: the matching directories hold no files")
    return sorted(set(files))


def _walk(root: str) -> list[str]:
    """Every non-hidden file under `root`; directory links are followed, each real folder once
    (a link loop, or two links to one folder, would otherwise list the same files again)."""
    found = []
    seen = {os.path.realpath(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if not d.startswith(".") and real not in seen:
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        found += [os.path.join(dirpath, n) for n in sorted(filenames) if not n.startswith(".")]
    return found  # empty for an empty folder: a glob may match one beside others


def _list_remote(spec: str) -> list[str]:
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow

    gfile = tf.io.gfile
    if gfile.isdir(spec):
        files = []
        for dirpath, _, filenames in gfile.walk(spec):
            files += [os.path.join(dirpath, n) for n in filenames if not n.startswith(".")]
    else:
        files = [p for p in gfile.glob(spec) if not gfile.isdir(p)]
    if not files:
        raise NoInputs(f"--images {spec}: no files there")
    return sorted(files)


def read_image_file(path: str) -> bytes:
    """The file's bytes (local or remote); OSError for unreadable or non-regular files."""
    if not _is_remote(path):
        return read_regular_file(path)
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow

    try:
        with tf.io.gfile.GFile(path, "rb") as handle:
            return handle.read()
    except tf.errors.OpError as exc:
        raise OSError(exc.message) from exc
