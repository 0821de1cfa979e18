"""The ingest scan on small trees: what it finds and skips, and that it writes nothing."""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgpipe.ingest.errors import IngestError
from imgpipe.ingest.plan import Candidate
from imgpipe.ingest.scan import (
    FILE_LINK_IN_TREE,
    HIDDEN,
    LINK_LOOP,
    LINK_SCANNED,
    NOT_IN_CLASS_FOLDER,
    SAME_CLASS_FOLDER,
    Scan,
    list_tree,
    scan_tree,
)

pytest.importorskip("tensorflow")


def _png(seed: int) -> bytes:
    """A distinct 8x8 PNG per seed."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _put(root: Path, rel: str, data: bytes) -> bytes:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under root with its size and mtime (links are not followed)."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


class _Lines(logging.Handler):
    """Collects the messages of one logger and its children."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.name, record.getMessage()))


def test_scan_finds_candidates_and_skips_with_reasons_without_writing(tmp_path: Path) -> None:
    images = tmp_path / "images"
    good = {
        rel: _put(images, rel, _png(i)) for i, rel in enumerate(["a/1.png", "a/deep/er/2.png", "b/3.png"])
    }
    _put(images, "a/.hidden.png", _png(9))  # hidden: not read, but reported
    _put(images, "a/.git/objects.png", _png(10))  # hidden folder: not walked, but reported
    _put(images, ".cache/c/4.png", _png(12))  # a hidden class folder: not a class, reported
    _put(images, "b/notes.txt", b"words")
    _put(images, "b/empty.png", b"")
    _put(images, "loose.png", _png(11))
    (images / "empty_class").mkdir()
    os.mkfifo(images / "b" / "pipe.png")  # reading it would block: skipped unread
    before = _snapshot(tmp_path)

    scan = scan_tree(str(images))

    assert _snapshot(tmp_path) == before, "the scan must not write anything"
    assert scan.folders == ["a", "b", "empty_class"]
    assert [c._replace(image="", thumb=b"") for c in scan.candidates] == [
        Candidate(rel, rel.split("/")[0], hashlib.sha256(data).hexdigest(), len(data))
        for rel, data in good.items()
    ]
    assert all(c.image.startswith("pixels:") for c in scan.candidates)
    assert all(len(c.thumb) == 256 + 1024 for c in scan.candidates)  # each one's thumbnail and grey grid
    assert scan.skipped == [
        {"path": ".cache", "reason": HIDDEN},  # listing first, then reading
        {"path": "loose.png", "reason": NOT_IN_CLASS_FOLDER},
        {"path": "a/.git", "reason": HIDDEN},
        {"path": "a/.hidden.png", "reason": HIDDEN},
        {"path": "b/empty.png", "reason": "empty file (0 bytes)"},
        {"path": "b/notes.txt", "reason": "not a recognised image (cannot identify image file)"},
        {"path": "b/pipe.png", "reason": "cannot read: not a regular file"},
    ]
    assert scan.files_scanned == len(scan.candidates) + len(scan.skipped) == 10
    assert scan.nothing_usable(str(images)) is None


def test_a_large_file_that_is_no_image_is_skipped_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A video in a class folder is not read into memory; a large real image still is."""
    from imgpipe.ingest import images as image_files
    from imgpipe.ingest import scan as scanning

    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    big_png = _put(images, "a/big.png", buffer.getvalue())
    _put(images, "a/clip.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(len(big_png)))
    _put(images, "a/small.bin", b"\x00" * 100)  # under the limit: read and judged by the decoders
    monkeypatch.setattr(image_files, "SNIFF_OVER", len(big_png) // 2)
    read = []
    real_read = scanning.read_regular_file
    monkeypatch.setattr(scanning, "read_regular_file", lambda path: read.append(path) or real_read(path))

    scan = scan_tree(str(images))

    assert [c.rel for c in scan.candidates] == ["a/big.png"]
    [clip] = [s for s in scan.skipped if s["path"] == "a/clip.mp4"]
    assert clip["reason"].startswith("not a JPEG, PNG, GIF or BMP file (") and clip["reason"].endswith(
        "starting 00 00 00 18 66 74 79 70); not read"
    )
    assert sorted(os.path.basename(p) for p in read) == ["big.png", "small.bin"]  # never the clip


def test_links_are_followed_only_out_of_the_tree_and_never_in_a_loop(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _put(images, "a/1.png", _png(1))
    _put(images, "c/sub/3.png", _png(3))
    _put(tmp_path / "elsewhere" / "b", "2.png", _png(2))
    _put(tmp_path / "shared", "4.png", _png(4))
    (images / "b").symlink_to(tmp_path / "elsewhere" / "b")  # a class folder kept elsewhere
    (images / "a" / "loop").symlink_to(images)
    (images / "a" / "to_b").symlink_to(images / "b")
    (images / "a" / "to_c_sub").symlink_to(images / "c" / "sub")  # into another class: not its class
    (images / "a" / "shared").symlink_to(tmp_path / "shared")
    (images / "c" / "shared").symlink_to(tmp_path / "shared")  # the same folder again
    (images / "b" / "up").symlink_to(tmp_path / "elsewhere")  # an ancestor of the link itself
    (images / "a" / "broken.png").symlink_to(tmp_path / "missing.png")
    (images / "up").symlink_to(tmp_path)  # a class folder link to an ancestor of the tree
    (images / "d").symlink_to(images / "a")  # a class folder link to another class folder
    (images / "self").symlink_to(images / "self")  # a link loop at the top
    (images / "e").symlink_to(tmp_path / "elsewhere" / "b")  # a second class link to b's folder
    (images / "a" / "fav.png").symlink_to(images / "c" / "sub" / "3.png")  # a file link into the tree
    into = "directory link into the image tree ({}) not followed: the files there are scanned where they are, under their own class folder"

    skipped: list[dict[str, str]] = []
    folders, files, _, _, unlisted = list_tree(str(images), skipped)

    assert folders == ["a", "b", "c"]
    assert [(rel, label) for rel, _, label in files] == [
        ("a/1.png", "a"),
        ("a/broken.png", "a"),
        ("a/shared/4.png", "a"),
        ("b/2.png", "b"),
        ("c/sub/3.png", "c"),  # in its own folder's class, not in the linking one's
    ]
    assert skipped == [
        {"path": "d", "reason": into.format("a")},
        # Its images would each be under two labels, b and e: label conflicts, all dropped.
        {"path": "e", "reason": SAME_CLASS_FOLDER.format(first="b")},
        {"path": "self", "reason": "cannot follow the link: Too many levels of symbolic links"},
        {"path": "up", "reason": LINK_LOOP},
        {"path": "a/loop", "reason": LINK_LOOP},
        {"path": "a/to_b", "reason": LINK_SCANNED},  # class b, kept outside the tree
        {"path": "a/to_c_sub", "reason": into.format("c/sub")},
        {"path": "a/fav.png", "reason": FILE_LINK_IN_TREE},  # else c's image would be in a too
        {"path": "b/up", "reason": LINK_LOOP},
        {"path": "c/shared", "reason": LINK_SCANNED},
    ]
    # A link that cannot be followed was meant as a class folder whose files are lost: ingest
    # refuses the tree for it (left_out_classes). The others lead to folders scanned anyway, or
    # to an ancestor: skipped, nothing lost (a review: refusing them made a harmless alias fatal).
    assert unlisted == {"self": "cannot follow the link: Too many levels of symbolic links"}
    scan = scan_tree(str(images))
    assert scan.skipped[-1]["path"] == "a/broken.png"
    assert scan.skipped[-1]["reason"].startswith("cannot read: No such file")
    assert scan.files_scanned == len(scan.candidates) + len(scan.skipped)


def test_unlistable_folder_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = tmp_path / "images"
    _put(images, "a/1.png", _png(1))
    _put(images, "a/locked/2.png", _png(2))
    locked = str(images / "a" / "locked")
    real_scandir = os.scandir

    def scandir(path: str = ".") -> object:  # chmod 000 does not stop root, so refuse here
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    scan = scan_tree(str(images))
    assert [c.rel for c in scan.candidates] == ["a/1.png"]
    assert scan.skipped == [{"path": "a/locked", "reason": "cannot list directory: Permission denied"}]
    assert scan.files_scanned == 2


def test_progress_lines_go_to_the_callback_or_the_logger(tmp_path: Path) -> None:
    images = tmp_path / "images"
    for i in range(5):
        _put(images, f"a/{i}.png", _png(i))
    lines: list[str] = []
    scan_tree(str(images), progress=lines.append, progress_every=2)
    assert lines == ["checked 2/5 files", "checked 4/5 files"]

    logger, handler = logging.getLogger("imgpipe.ingest"), _Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        scan_tree(str(images), progress_every=4)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert handler.lines == [("imgpipe.ingest.scan", "checked 4/5 files")]


def test_file_names_that_are_not_utf8_are_kept_as_on_disk(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _put(images, "a/ok.png", _png(1))
    (images / "a" / os.fsdecode(b"caf\xe9.png")).write_bytes(_png(2))
    (images / "a" / os.fsdecode(b"bad\xe9.txt")).write_bytes(b"text")
    scan = scan_tree(str(images))
    assert [c.rel for c in scan.candidates] == ["a/caf\udce9.png", "a/ok.png"]
    assert scan.skipped[0]["path"] == "a/bad\\xe9.txt"  # report text: escaped, JSON-safe


def test_nothing_usable_says_why(tmp_path: Path) -> None:
    assert Scan(["a"]).nothing_usable("imgs") == "no image files in any class folder of imgs"
    found = Scan(["a"], skipped=[{"path": "a/x.png", "reason": "empty file (0 bytes)"}], files_scanned=1)
    assert found.nothing_usable("imgs") == (
        "no usable images in imgs (1 files skipped, e.g. a/x.png: empty file (0 bytes))"
    )


def test_trees_that_cannot_be_scanned(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"cannot list the image directory .*nowhere"):
        scan_tree(str(tmp_path / "nowhere"))
    images = tmp_path / "images"
    _put(images, "loose.png", _png(1))
    with pytest.raises(IngestError, match=r"no class subfolders.*\(1 files found directly in it"):
        scan_tree(str(images))


def test_a_class_folder_name_that_is_not_utf8_is_rejected_with_the_others(tmp_path: Path) -> None:
    """Listed with the other folders not used (and its files with the skipped), not a stop."""
    images = tmp_path / "images"
    _put(images, "ok/a.png", _png(1))
    _put(images, os.fsdecode(b"caf\xe9") + "/b.png", _png(2))
    scan = scan_tree(str(images))
    assert [c.rel for c in scan.candidates] == ["ok/a.png"]
    assert list(scan.names.rejected) == [os.fsdecode(b"caf\xe9")]
    assert "not valid UTF-8 (0xE9)" in scan.names.rejected[os.fsdecode(b"caf\xe9")]
    assert [s["path"] for s in scan.skipped] == ["caf\\xe9/b.png"]
