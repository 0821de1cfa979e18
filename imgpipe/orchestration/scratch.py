"""Per-run scratch space: nothing a local run writes outside its home outlives the run.

A TFX run on LocalDagRunner leaves files in the system temp dir that nobody
removes (measured in RELIABILITY.md, ~158 MB per run): every Beam-based
component (ImportExampleGen, StatisticsGen, Transform, Evaluator) packs TFX's
own source into a 39 MB sdist (tfx.utils.dependency_utils.build_ephemeral_package,
about 4 s each) so remote Beam workers could install it, and Beam adds staging
and temp folders beside it.

`run_scratch(home, run_id)` points Python's `tempfile` (and, through TMPDIR,
child processes and C++ code) at HOME/tmp/<run_id>/ for the run and deletes
that folder when the run ends, failed or not. Folders left there by a run that
was killed (kill -9 skips every cleanup) are deleted by the next run or prune,
which hold the home's lock, so no live run can own them.

`no_tfx_package_for_local_beam()` stops the sdist from being built at all when
Beam runs on this machine (DirectRunner, in memory or in worker processes
started from this same Python environment): those workers import the installed
TFX, so the package is never used. Remote runners (Dataflow, Flink, Spark)
keep TFX's behaviour, or use the container image given in their Beam args.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

log = logging.getLogger(__name__)

SCRATCH_DIR = "tmp"
LOCAL_BEAM_RUNNERS = ("direct", "multiprocess")


def scratch_root(home: str) -> str:
    """HOME/tmp: the parent of every run's scratch folder."""
    return os.path.join(home, SCRATCH_DIR)


def tree_bytes(path: str) -> int:
    """Bytes of the regular files under `path` (0 if it does not exist); symlinks are not followed."""
    if os.path.isfile(path) or os.path.islink(path):
        return os.lstat(path).st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


@dataclasses.dataclass(frozen=True)
class Removal:
    """What deleting one path did: `freed` bytes gone, `left` bytes still there and why."""

    path: str
    freed: int
    left: int = 0
    error: str = ""  # the first failure ("" when the path is gone)

    @property
    def complete(self) -> bool:
        """Whether the path is gone, every byte of it."""
        return not self.left and not self.error


def remove_path(path: str) -> Removal:
    """Delete a file, symlink or folder (its symlinks are removed, not followed). A failure
    (permissions, a busy mount) does not stop the walk: the rest is deleted, and the result
    says how many bytes are left and the first error."""
    before = tree_bytes(path)
    errors: list[str] = []

    def failed(_fn, failed_path, exc_info) -> None:
        errors.append(f"{failed_path}: {getattr(exc_info[1], 'strerror', None) or exc_info[1]}")

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, onerror=failed)
    elif os.path.lexists(path):
        try:
            os.remove(path)
        except OSError as e:
            errors.append(f"{path}: {e.strerror or e}")
    if not os.path.lexists(path):
        return Removal(path, before)
    left = tree_bytes(path)
    return Removal(path, max(0, before - left), left, errors[0] if errors else f"{path}: still there")


def remove_stale(home: str, keep: str | None = None) -> list[Removal]:
    """Delete the scratch folders of dead runs (call it holding the home's lock); a folder that
    could not be deleted in full is warned about and left to the next run or prune."""
    root = scratch_root(home)
    if not os.path.isdir(root):
        return []
    removed = []
    for name in sorted(os.listdir(root)):
        if name == keep:
            continue
        done = remove_path(os.path.join(root, name))
        if not done.complete:
            log.warning(
                "%s, left by a run that did not end cleanly, could not be deleted in full (%d bytes left): %s",
                done.path,
                done.left,
                done.error,
            )
        removed.append(done)
    return removed


@contextlib.contextmanager
def run_scratch(home: str, run_id: str) -> Iterator[str]:
    """Make HOME/tmp/<run_id>/ the temp dir of this process and its children for the block, then delete it."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
    for done in remove_stale(home, keep=name):
        if done.freed and done.complete:
            log.info("removed %s (%d bytes) left by a run that did not end cleanly", done.path, done.freed)
    path = os.path.join(scratch_root(home), name)
    os.makedirs(path, exist_ok=True)
    saved_tempdir = tempfile.tempdir
    saved_env = os.environ.get("TMPDIR")
    tempfile.tempdir = path
    os.environ["TMPDIR"] = path
    try:
        yield path
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        size = tree_bytes(path)
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(scratch_root(home))  # only if no other folder is left in it
        log.debug("removed the run's scratch folder %s (%d bytes)", path, size)


@contextlib.contextmanager
def no_tfx_package_for_local_beam(beam_runner: str) -> Iterator[None]:
    """For the block, Beam components on a local runner do not build TFX's ephemeral sdist.

    TFX calls dependency_utils.make_beam_dependency_flags(args) in every Beam
    executor; on a local runner it returns the args unchanged. Other runners
    keep TFX's behaviour.
    """
    if beam_runner not in LOCAL_BEAM_RUNNERS:
        yield
        return
    from tfx.utils import dependency_utils

    from components import patching

    def local_flags(beam_pipeline_args: list[str]) -> list[str]:
        return list(beam_pipeline_args)

    with patching.replaced(dependency_utils, "make_beam_dependency_flags", lambda _original: local_flags):
        yield
