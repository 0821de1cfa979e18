"""Which files a batch prediction scores: a folder (recursively) or a glob, and reading them."""

from __future__ import annotations

import fnmatch
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
            hidden = any(name.startswith(".") for name in os.listdir(spec))
            raise NoInputs(
                f"--images {spec}: the directory holds no files"
                + (" but hidden ones (names starting with '.'), which are left out" if hidden else "")
            )
        return sorted(found)
    matches = sorted(_glob(spec))
    if not matches:
        raise NoInputs(f"--images {spec}: no such directory, and no file matches it as a glob")
    # `**` follows directory links, so a link loop (or two links to one folder) matches the same
    # files under ever longer paths: as in a directory's walk, each real folder's files are taken
    # under one path only, the shortest that matched.
    # A folder that an earlier match's walk went through is not walked again: with a trailing
    # `**` every folder below matches, and walking each would go over its subtree once per level.
    files: list[str] = []
    folders: dict[str, str] = {}  # a real folder -> the path its files are listed under
    walked: set[str] = set()  # real folders already walked
    for path in sorted(matches, key=lambda p: (len(p), p)):
        if os.path.isdir(path):
            if os.path.realpath(path) in walked:
                continue
            listed = _walk(path, visited=walked)
        else:
            listed = [path]
        for file in listed:
            parent = os.path.dirname(file)
            if folders.setdefault(os.path.realpath(parent or "."), parent) == parent:
                files.append(file)
    if not files:
        raise NoInputs(f"--images {spec}: the matching directories hold no files")
    return sorted(set(files))


def _glob(spec: str) -> list[str]:
    """glob.glob(spec, recursive=True), but `**` goes into each real folder once.

    Python's `**` follows directory links with no memory of where it has been: a link loop is
    walked until the path is too long for the system, and two loops make that exponential (the
    same files under ever longer paths). Here the folder above the pattern's first wildcard is
    walked as a directory is (`_walk`: each real folder once, hidden names skipped, as `*` skips
    them) and each folder and file below it is matched against the rest of the pattern, `**`
    standing for any number of folders. Patterns without `**` go to glob.glob, which cannot
    recurse without it.
    """
    parts = spec.split(os.sep)
    if "**" not in parts:
        return glob.glob(spec)
    fixed = 0
    while not glob.has_magic(parts[fixed]):
        fixed += 1
    prefix = os.sep.join(parts[:fixed])  # "" for a relative pattern starting with a wildcard
    root = prefix or (os.sep if spec.startswith(os.sep) else os.curdir)
    if not os.path.isdir(root):
        return []
    rest = parts[fixed:]
    found = [prefix + os.sep] if _matches([], rest) and prefix else []  # `**` as no folder at all
    for path in _walk(root, folders=True):
        names = os.path.relpath(path, root).split(os.sep)
        if _matches(names, rest):
            found.append(os.path.join(prefix, *names))
    return found


def _matches(names: list[str], parts: list[str]) -> bool:
    """Whether the path components `names` match the pattern components `parts` (fnmatch's
    rules per name; `**` any number of names, none too)."""
    if not parts:
        return not names
    if parts[0] == "**":
        return any(_matches(names[i:], parts[1:]) for i in range(len(names) + 1))
    return bool(names) and fnmatch.fnmatchcase(names[0], parts[0]) and _matches(names[1:], parts[1:])


def _walk(root: str, folders: bool = False, visited: set[str] | None = None) -> list[str]:
    """Every non-hidden file under `root`; directory links are followed, each real folder once
    (a link loop, or two links to one folder, would otherwise list the same files again).
    `visited`, when given, gets the real path of every folder walked."""
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
        if folders:
            found += [os.path.join(dirpath, d) for d in keep]
        found += [os.path.join(dirpath, n) for n in sorted(filenames) if not n.startswith(".")]
    if visited is not None:
        visited.update(seen)
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
