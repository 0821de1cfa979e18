"""A run's temp files live in HOME/tmp/<run_id>/ and go when it ends; TFX builds no sdist for local Beam.

(tests/e2e checks the real thing: no scratch folder is left after real runs.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from imgpipe.orchestration import scratch


def test_the_run_scratch_is_the_temp_dir_of_the_process_and_its_children_then_goes(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", "/somewhere/else")
    home = str(tmp_path / "home")
    before = tempfile.gettempdir()
    with scratch.run_scratch(home, "2026-01-01T00:00:00.1-ab") as path:
        assert path == os.path.join(home, "tmp", "2026-01-01T00_00_00.1-ab")
        assert tempfile.gettempdir() == path and os.environ["TMPDIR"] == path
        child = subprocess.run(
            [sys.executable, "-c", "import tempfile; print(tempfile.mkdtemp())"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert child.stdout.strip().startswith(path + os.sep)  # e.g. TFX's sdist build, Beam workers
        with open(os.path.join(tempfile.mkdtemp(), "big"), "wb") as f:
            f.write(b"x" * 1000)
    assert not os.path.exists(os.path.join(home, "tmp"))
    assert tempfile.gettempdir() == before and os.environ["TMPDIR"] == "/somewhere/else"


def test_the_scratch_goes_when_the_run_fails(tmp_path):
    home = str(tmp_path / "home")
    with pytest.raises(RuntimeError), scratch.run_scratch(home, "r1") as path:
        tempfile.mkdtemp()
        raise RuntimeError("a component failed")
    assert not os.path.exists(path)


def test_folders_left_by_killed_runs_are_removed_by_the_next_run(tmp_path):
    home = str(tmp_path / "home")
    dead = os.path.join(home, "tmp", "killed-run", "build")
    os.makedirs(dead)
    with open(os.path.join(dead, "tfx.tar.gz"), "wb") as f:
        f.write(b"x" * 4096)
    assert scratch.remove_stale(home, keep="r2") == [
        scratch.Removal(os.path.join(home, "tmp", "killed-run"), 4096)
    ]
    with scratch.run_scratch(home, "r2"):
        assert os.listdir(os.path.join(home, "tmp")) == ["r2"]


def test_no_tfx_sdist_is_built_for_local_beam_runners():
    from tfx.utils import dependency_utils

    original = dependency_utils.make_beam_dependency_flags
    args = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
    for runner in scratch.LOCAL_BEAM_RUNNERS:
        with scratch.no_tfx_package_for_local_beam(runner):
            assert dependency_utils.make_beam_dependency_flags(args) == args  # no --extra_package
        assert dependency_utils.make_beam_dependency_flags is original
    with scratch.no_tfx_package_for_local_beam("dataflow"):
        assert dependency_utils.make_beam_dependency_flags is original  # remote workers need TFX shipped


def test_tree_bytes_counts_files_not_symlink_targets(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_bytes(b"12345")
    (tmp_path / "big").write_bytes(b"x" * 10_000)
    os.symlink(tmp_path / "big", tmp_path / "d" / "link")
    assert scratch.tree_bytes(str(tmp_path / "d")) == 5 + os.lstat(tmp_path / "d" / "link").st_size
    assert scratch.tree_bytes(str(tmp_path / "missing")) == 0
