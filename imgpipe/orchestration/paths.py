"""Whether an artifact's URI lies under a pipeline root: one rule for prune, the blessing
withdrawal and the missing-model check."""

from __future__ import annotations

import os


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
