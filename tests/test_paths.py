"""One rule for "under the pipeline root" (imgpipe/orchestration/paths.py)."""

from __future__ import annotations

import os

from imgpipe.orchestration.paths import under


def test_local_paths_are_compared_as_the_folders_they_are(tmp_path):
    home = tmp_path / "home"
    (home / "pipelines" / "Trainer").mkdir(parents=True)
    (tmp_path / "home2").mkdir()
    link = tmp_path / "link"
    os.symlink(home, link)
    assert under(str(home / "pipelines" / "Trainer"), str(home))
    assert under(str(home / "pipelines" / "not-made-yet"), str(home))
    assert under(str(home / "pipelines"), str(link))  # the home reached through a symlink
    assert under(str(link / "pipelines"), str(home))
    assert not under(str(tmp_path / "home2" / "x"), str(home))  # a sibling sharing a prefix
    assert not under(str(home), str(home))
    assert not under(str(home / ".." / "home2"), str(home))


def test_remote_uris_are_compared_by_whole_segments():
    assert under("gs://bucket/home/pipelines/x", "gs://bucket/home")
    assert under("gs://bucket/home/pipelines/x", "gs://bucket/home/")
    assert not under("gs://bucket/home2/x", "gs://bucket/home")
    assert not under("/local/home/x", "gs://bucket/home")
    # The root itself, however its slashes are written, is not inside it.
    assert not under("gs://bucket/home/", "gs://bucket/home")
    assert not under("gs://bucket/home", "gs://bucket/home/")
