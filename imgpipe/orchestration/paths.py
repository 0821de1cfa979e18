"""Whether an artifact's URI lies under a pipeline root (one rule for prune, the blessing
withdrawal and the missing-model check), and the files the commands write whole or not at all."""

from __future__ import annotations

import errno
import os

from pipeline.config import folder_problem


def under(path: str, root: str) -> bool:
    """Whether `path` is strictly inside `root`.

    Local paths are compared after resolving symlinks, `..` and relative parts, so a home
    reached through a symlink is still the same home. Remote URIs (`gs://...`) are
    compared as text, by whole path segments.
    """
    if "://" in path or "://" in root:
        return path.rstrip("/").startswith(root.rstrip("/") + "/")
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path != root and os.path.commonpath([path, root]) == root


def output_file_problem(path: str) -> str | None:
    """Why a file cannot be written at `path` (a directory is there, a file is where a folder of
    its path goes, or the nearest existing folder is not writable), or None."""
    if os.path.isdir(path):
        return f"{path} is a directory: give a file name"
    problem = folder_problem(os.path.dirname(os.path.abspath(path)))
    if problem is None:
        return None
    existing, kind = problem
    if kind == "file":
        return f"{path} is under {existing}, which is a file"
    return f"{existing} is not writable by this user"


def write_atomically(path: str, text: str) -> None:
    """`text` into `path` through a file beside it moved over it: a reader sees the old file or
    the new one, and a failed write leaves neither a part nor its temporary file."""
    write_all_atomically([(path, text)])


def write_all_atomically(files: list[tuple[str, str]]) -> None:
    """Each (path, text) written to a file beside its path, then all moved over their paths.

    Every file is written in full before any is moved, so a failure to write one (a full disk,
    a folder that cannot be made, a directory where a file goes: OSError) leaves every existing
    file as it was and no temporary file behind. Only a failed rename, after all were written,
    could leave some moved and not others.
    """
    staged: list[tuple[str, str]] = []
    try:
        for path, text in files:
            if os.path.isdir(path):
                raise IsADirectoryError(errno.EISDIR, "a directory is where the file goes", path)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}"
            staged.append((tmp, path))
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.remove(tmp)
