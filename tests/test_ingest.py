"""Tests for pipeline.ingest (image tree -> TFRecords) and pipeline.datasets."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgpipe.demo.data import write_digits_tree, write_sample_photos
from imgpipe.ingest import IngestError, ingest, validate_tfrecord_dir

tf = pytest.importorskip("tensorflow")


# ---------------------------------------------------------------- helpers


def _encode(mode: str = "RGB", fmt: str = "PNG", seed: int = 0, **save: object) -> bytes:
    """A small random image (distinct per seed) encoded in the given format."""
    rng = np.random.default_rng(seed)
    pixels = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    image = pixels if mode == "RGB" else pixels.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _put(root: Path, rel: str, data: bytes) -> bytes:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def _make_tree(root: Path, sizes: dict[str, int], seed_base: int = 0) -> dict[str, bytes]:
    """Class folders of distinct PNGs; returns {rel_path: bytes}."""
    files = {}
    for c, (name, n) in enumerate(sorted(sizes.items())):
        for i in range(n):
            rel = f"{name}/img_{i:03d}.png"
            files[rel] = _put(root, rel, _encode(seed=seed_base + 1000 * c + i))
    return files


def _records(out: Path, split: str) -> list[tuple[str, bytes]]:
    """(label, image bytes) of every record in out/<split>/, in file order."""
    result = []
    for path in sorted((out / split).iterdir()):
        for raw in tf.data.TFRecordDataset(str(path)):
            feature = tf.train.Example.FromString(raw.numpy()).features.feature
            assert sorted(feature) == ["image", "label"]
            label = feature["label"].bytes_list.value[0].decode("utf-8")
            result.append((label, feature["image"].bytes_list.value[0]))
    return result


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _quiet(_: str) -> None:
    """Progress sink that keeps test output clean."""


def _run(images: Path, out: Path, **kwargs: object):
    kwargs.setdefault("progress", _quiet)
    return ingest(str(images), str(out), **kwargs)


def _write_example(path: Path, features: dict[str, object]) -> None:
    feature = {}
    for key, value in features.items():
        if isinstance(value, int):
            feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        else:
            feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(example.SerializeToString())


# ------------------------------------------------------ bad files, counts


def test_bad_files_are_reported_with_reasons_and_not_written(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    good = _make_tree(images, {"cats": 4, "dogs": 4})
    jpeg = _encode(fmt="JPEG", seed=99)
    rng = np.random.default_rng(5)
    big = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG")
    big_jpeg = buffer.getvalue()
    _put(images, "cats/truncated.jpg", big_jpeg[: len(big_jpeg) // 2])
    _put(images, "cats/corrupt.jpg", jpeg[:20] + bytes(range(256)) * 4)
    _put(images, "cats/empty.png", b"")
    _put(images, "cats/notes.txt", b"these are not the pixels you are looking for\n")
    _put(images, "cats/.DS_Store", b"\0\0\0\1Bud1")  # hidden: not read, listed as skipped
    _put(images, "stray.jpg", jpeg)  # not inside a class folder

    report = _run(images, out)

    reasons = {s["path"]: s["reason"] for s in report.skipped}
    assert set(reasons) == {
        "cats/truncated.jpg",
        "cats/corrupt.jpg",
        "cats/empty.png",
        "cats/notes.txt",
        "cats/.DS_Store",
        "stray.jpg",
    }
    assert "hidden" in reasons["cats/.DS_Store"]
    assert "truncated" in reasons["cats/truncated.jpg"]
    assert "empty" in reasons["cats/empty.png"]
    assert "not a recognised image" in reasons["cats/notes.txt"]
    assert "not in a class folder" in reasons["stray.jpg"]
    written = {data for split in ("train", "eval") for _, data in _records(out, split)}
    assert written == set(good.values())
    on_disk = json.loads((out / "ingest_report.json").read_text())
    assert on_disk["skipped"] == report.to_dict()["skipped"]
    assert on_disk["num_skipped"] == 6
    # Every file is accounted for: written or reported.
    assert report.files_scanned == sum(report.totals.values()) + len(report.skipped)


def test_counts_in_tfrecords_match_report(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    _make_tree(images, {"ant": 9, "bee": 6, "cow": 4})
    report = _run(images, out, num_shards=2)

    on_disk = json.loads((out / "ingest_report.json").read_text())
    assert on_disk == report.to_dict()
    assert json.loads((out / "classes.json").read_text()) == ["ant", "bee", "cow"]
    for split in ("train", "eval"):
        labels = [label for label, _ in _records(out, split)]
        counted = {c: labels.count(c) for c in report.classes}
        assert counted == {c: report.counts[c][split] for c in report.classes}
        assert sorted(p.name for p in (out / split).iterdir()) == report.shards[split]
    assert report.shards["train"] == [
        "data-00000-of-00002.tfrecord",
        "data-00001-of-00002.tfrecord",
    ]
    assert report.totals == {"train": 15, "eval": 4}


def test_split_is_stratified_per_class(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    _make_tree(images, {"big": 10, "mid": 5, "pair": 2})
    report = _run(images, out, eval_fraction=0.3)

    # round(0.3 * n) half up, >= 1 eval and >= 1 train when n >= 2.
    assert report.counts == {
        "big": {"train": 7, "eval": 3},
        "mid": {"train": 3, "eval": 2},
        "pair": {"train": 1, "eval": 1},
    }
    assert report.warnings == []
    eval_labels = sorted(label for label, _ in _records(out, "eval"))
    assert eval_labels == ["big"] * 3 + ["mid"] * 2 + ["pair"]


def test_tiny_eval_fraction_still_puts_one_image_in_eval(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    _make_tree(images, {"a": 5, "b": 3})
    report = _run(images, out, eval_fraction=0.01)
    assert report.counts == {"a": {"train": 4, "eval": 1}, "b": {"train": 2, "eval": 1}}


# ------------------------------------------------------------ determinism


def test_same_input_and_seed_give_byte_identical_output(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _make_tree(images, {"a": 12, "b": 12, "c": 12})
    outs = [tmp_path / name for name in ("one", "two", "other_seed")]
    reports = [
        _run(images, outs[0], seed=7, num_shards=3),
        _run(images, outs[1], seed=7, num_shards=3),
        _run(images, outs[2], seed=8, num_shards=3),
    ]

    def tree_bytes(out: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(out)): p.read_bytes()
            for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "ingest_report.json"
        }

    assert tree_bytes(outs[0]) == tree_bytes(outs[1])
    first, second = (r.to_dict() for r in reports[:2])
    first.pop("out_dir"), second.pop("out_dir")
    assert first == second

    eval_one = {_sha(d) for _, d in _records(outs[0], "eval")}
    eval_other = {_sha(d) for _, d in _records(outs[2], "eval")}
    assert eval_one != eval_other, "the seed must change which images go to eval"
    # Records are interleaved across classes, not written class by class.
    labels = [label for label, _ in _records(outs[0], "train")]
    assert labels != sorted(labels)


# ------------------------------------------------- duplicates and conflicts


def test_duplicates_written_once_and_label_conflicts_not_at_all(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    _make_tree(images, {"a": 4, "b": 4})
    copy = _encode(seed=500)
    for rel in ("a/x.png", "a/copy1.png", "a/nested/copy2.png"):
        _put(images, rel, copy)
    clash = _encode(seed=600)
    _put(images, "a/clash.png", clash)
    _put(images, "b/clash_too.png", clash)

    report = _run(images, out)

    records = _records(out, "train") + _records(out, "eval")
    hashes = [_sha(d) for _, d in records]
    assert hashes.count(_sha(copy)) == 1
    assert _sha(clash) not in hashes
    assert report.counts["a"]["train"] + report.counts["a"]["eval"] == 5
    assert report.counts["b"]["train"] + report.counts["b"]["eval"] == 4
    (dup,) = report.duplicates
    assert dup["class"] == "a" and dup["sha256"] == _sha(copy)
    assert dup["kept"] == "a/copy1.png"
    assert dup["duplicates"] == ["a/nested/copy2.png", "a/x.png"]
    assert report.num_duplicates == 2
    (conflict,) = report.label_conflicts
    assert conflict["files"] == [
        {"path": "a/clash.png", "class": "a"},
        {"path": "b/clash_too.png", "class": "b"},
    ]
    assert report.files_scanned == (
        sum(report.totals.values()) + report.num_duplicates + len(conflict["files"])
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identical_images_never_cross_splits(tmp_path: Path, seed: int) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    for c in ("a", "b"):
        for group in range(6):  # 6 groups of 3 identical files per class
            data = _encode(seed=100 * ord(c) + group)
            for k in range(3):
                _put(images, f"{c}/g{group}_{k}.png", data)
    report = _run(images, out, seed=seed, eval_fraction=0.5)

    train = {_sha(d) for _, d in _records(out, "train")}
    evals = [_sha(d) for _, d in _records(out, "eval")]
    assert train.isdisjoint(evals)
    assert len(train) + len(evals) == 12  # one copy per group
    assert report.counts == {c: {"train": 3, "eval": 3} for c in ("a", "b")}


# ---------------------------------------------------------------- formats


def test_all_supported_formats_and_modes_are_written_byte_for_byte(
    tmp_path: Path,
) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    variants = {
        "gray.png": _encode("L", seed=1),
        "rgba.png": _encode("RGBA", seed=2),
        "palette.png": _encode("P", seed=3),
        "gray_alpha.png": _encode("LA", seed=4),
        "still.gif": _encode("P", "GIF", seed=5),
        "rgb.bmp": _encode("RGB", "BMP", seed=6),
        "gray.bmp": _encode("L", "BMP", seed=7),
        "rgb.jpg": _encode("RGB", "JPEG", seed=8),
        "gray.jpg": _encode("L", "JPEG", seed=9),
        "progressive.jpg": _encode("RGB", "JPEG", seed=10, progressive=True),
        "jpeg_named.png": _encode("RGB", "JPEG", seed=11),  # content decides
    }
    frames = [Image.open(io.BytesIO(_encode("P", "GIF", seed=s))) for s in (12, 13)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    variants["animated.gif"] = buffer.getvalue()
    expected = {_put(images, f"synthetic/{n}", d) for n, d in variants.items()}
    photos = write_sample_photos(str(images / "photos"))
    expected |= {Path(p).read_bytes() for p in photos}

    report = _run(images, out)

    assert report.skipped == []
    written = {d for s in ("train", "eval") for _, d in _records(out, s)}
    assert written == expected
    assert report.counts["photos"]["train"] + report.counts["photos"]["eval"] == 4


def test_unsupported_or_misdecoded_images_are_skipped(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    _make_tree(images, {"a": 2, "b": 2})
    _put(images, "a/scan.tiff", _encode("RGB", "TIFF", seed=20))
    _put(images, "a/bilevel.bmp", _encode("1", "BMP", seed=21))
    _put(images, "b/indexed.bmp", _encode("P", "BMP", seed=22))
    _put(images, "b/text.jpg", b"hello, I am a text file with an image extension")

    report = _run(images, out)

    reasons = {s["path"]: s["reason"] for s in report.skipped}
    assert "unsupported image format TIFF" in reasons["a/scan.tiff"]
    assert reasons["a/bilevel.bmp"].startswith("1-bit BMP: TensorFlow decodes 8-, 24- and 32-bit BMPs only")
    assert "palette" in reasons["b/indexed.bmp"]
    assert "not a recognised image" in reasons["b/text.jpg"]
    assert report.totals == {"train": 2, "eval": 2}


# ----------------------------------------------------------------- errors


def test_missing_and_non_directory_images_dir(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"nowhere.*does not exist"):
        _run(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "file.png").write_bytes(_encode())
    with pytest.raises(IngestError, match=r"file\.png.*not a directory"):
        _run(tmp_path / "file.png", tmp_path / "out")


def test_empty_dir_and_loose_files_only(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    with pytest.raises(IngestError, match="no class subfolders"):
        _run(images, tmp_path / "out")
    _put(images, "loose.png", _encode())
    with pytest.raises(IngestError, match=r"no class subfolders.*1 files found"):
        _run(images, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "a failed ingest must not create out_dir"


def test_single_class_tree_is_refused(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _make_tree(images, {"only": 5})
    with pytest.raises(IngestError, match="at least 2"):
        _run(images, tmp_path / "out")


def test_class_without_valid_images(tmp_path: Path) -> None:
    """A class folder whose files are all unusable would silently be a class short: refused,
    naming it and why, nothing written; with allow_left_out_classes the others are written."""
    images = tmp_path / "images"
    _make_tree(images, {"a": 3, "b": 3})
    _put(images, "broken/x.jpg", b"not an image")
    _put(images, "broken/y.jpg", b"not an image either")
    (images / "placeholder").mkdir()  # no files at all: nothing lost, a warning only
    with pytest.raises(IngestError) as caught:
        _run(images, tmp_path / "out")
    assert str(caught.value).startswith(
        "1 class folder with files would be left out of the training set: 'broken' (2 files): "
        "no usable image (2 files: not a recognised image"
    )
    assert "--allow-left-out-classes" in str(caught.value)
    assert caught.value.report["left_out_classes"][0]["folder"] == "broken"
    assert not (tmp_path / "out").exists()

    said: list[str] = []
    report = _run(images, tmp_path / "out", allow_left_out_classes=True, progress=said.append)
    # The summary counts them with the folders refused for their names (it said 0 beside the warnings).
    assert any("2 class folders not used" in line for line in said), said
    assert report.empty_classes == ["broken", "placeholder"]
    assert report.classes == ["a", "b"]
    assert [c["files"] for c in report.left_out_classes] == [2, 0]
    assert report.left_out_classes[1]["reason"] == "no image files"
    assert report.warnings == [
        "class folder 'broken' (2 files) is left out: no usable image (2 files: not a recognised image "
        "(cannot identify image file))",
        "class folder 'placeholder' (0 files) is left out: no image files",
    ]
    assert json.loads((tmp_path / "out" / "ingest_report.json").read_text())["allow_left_out_classes"] is True
    # `imgpipe run` on those records says which class is not in its model (summary and stderr).
    from imgpipe.orchestration.local import left_out_classes

    assert [c["folder"] for c in left_out_classes(str(tmp_path / "out"))] == ["broken"]
    assert left_out_classes(str(tmp_path)) == []  # no ingest report: records made another way

    # With only one usable class left, ingest refuses and says why.
    (images / "b").rename(tmp_path / "b_moved")
    with pytest.raises(IngestError, match=r"at least 2.*broken") as caught:
        _run(images, tmp_path / "out2")
    assert caught.value.report["skipped"][0]["path"] == "broken/x.jpg"

    # Only an empty folder beside the classes: written, with its warning.
    (tmp_path / "b_moved").rename(images / "b")
    shutil.rmtree(images / "broken")
    report = _run(images, tmp_path / "out3")
    assert report.classes == ["a", "b"] and report.warnings == [
        "class folder 'placeholder' (0 files) is left out: no image files"
    ]


def test_no_decodable_images_at_all(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _put(images, "a/1.png", b"junk")
    _put(images, "b/2.png", b"")
    with pytest.raises(IngestError, match=r"no usable images.*2 files skipped"):
        _run(images, tmp_path / "out")


def test_a_class_with_one_unique_image_is_refused_naming_it(tmp_path: Path) -> None:
    """It could not be in both splits, and the run's data gate refuses a class eval lacks."""
    images = tmp_path / "images"
    _make_tree(images, {"a": 1, "b": 1})
    with pytest.raises(IngestError, match="classes 'a', 'b' in .* have a single unique image"):
        _run(images, tmp_path / "out")
    images = tmp_path / "images2"
    _make_tree(images, {"cats": 5, "dogs": 1})
    with pytest.raises(IngestError, match="class 'dogs' in .* has a single unique image") as e:
        _run(images, tmp_path / "out")
    assert "'cats'" not in str(e.value)
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5, math.nan, "0.2", True])
def test_eval_fraction_outside_open_unit_interval(tmp_path: Path, fraction: float) -> None:
    _make_tree(tmp_path / "images", {"a": 2, "b": 2})
    with pytest.raises(IngestError, match="eval_fraction"):
        _run(tmp_path / "images", tmp_path / "out", eval_fraction=fraction)


def test_non_empty_out_dir_is_refused_unless_overwrite(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    _make_tree(images, {"a": 3, "b": 3})
    out.mkdir()
    (out / "notes.md").write_text("mine")
    with pytest.raises(IngestError, match=r"out.*not empty.*overwrite=True"):
        _run(images, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.md"]

    stale = _put(out, "train/old-shard.tfrecord", b"stale")
    _put(out, ".ingest-tmp-killed/train/data-00000-of-00001.tfrecord", b"half")
    report = _run(images, out, overwrite=True)
    assert (out / "notes.md").read_text() == "mine"
    assert not (out / "train" / "old-shard.tfrecord").exists() and stale
    assert sorted(p.name for p in (out / "train").iterdir()) == report.shards["train"]
    assert not [p for p in out.iterdir() if p.name.startswith(".ingest-tmp")]


def test_out_dir_inside_images_dir_is_refused(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _make_tree(images, {"a": 2, "b": 2})
    with pytest.raises(IngestError, match="overlap"):
        _run(images, images / "records", overwrite=True)


def test_symlinks_followed_but_loops_and_cross_class_links_reported(
    tmp_path: Path,
) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    _make_tree(images, {"a": 3})
    _make_tree(tmp_path / "elsewhere", {"b": 3}, seed_base=50)
    (images / "b").symlink_to(tmp_path / "elsewhere" / "b")  # linked class: used
    (images / "a" / "loop").symlink_to(images)  # would re-walk everything
    (images / "a" / "to_b").symlink_to(images / "b")  # would mislabel b as a
    (images / "a" / "broken.png").symlink_to(tmp_path / "missing.png")

    report = _run(images, out)

    assert report.counts == {c: {"train": 2, "eval": 1} for c in ("a", "b")}
    reasons = {s["path"]: s["reason"] for s in report.skipped}
    assert set(reasons) == {"a/loop", "a/to_b", "a/broken.png"}
    assert "not followed" in reasons["a/loop"] and "not followed" in reasons["a/to_b"]
    assert report.label_conflicts == []


# ---------------------------------------------------------------- progress


def test_progress_lines_and_summary(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    _make_tree(images, {"a": 3, "b": 3})
    _put(images, "a/bad.png", b"nope")
    lines: list[str] = []
    _run(images, out, progress=lines.append, progress_every=2)
    assert "ingest: checked 2/7 files" in lines
    assert "ingest: wrote 4/6 records" in lines
    assert "skipped 1 files" in lines[-2] and str(out) in lines[-2]
    assert lines[-1] == "ingest: skipped 1 file: not a recognised image (cannot identify image file)"


# --------------------------------------------------- validate_tfrecord_dir


def test_validate_accepts_ingest_output(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    _make_tree(images, {"a": 6, "b": 6})
    _run(images, out, num_shards=3)
    assert validate_tfrecord_dir(str(out)) == {"train_files": 3, "eval_files": 2}


def test_a_run_failing_in_example_gen_names_the_damaged_files(tmp_path: Path) -> None:
    """A copy cut short passes the first-record check; when ExampleGen then fails (its error is
    Beam's, with the record's bytes in hex and no file name) the run's message names the file."""
    from imgpipe.orchestration.local import MAX_ERROR_LINE, _failure_message
    from pipeline.config import PipelineConfig

    images, out = tmp_path / "images", tmp_path / "out"
    _make_tree(images, {"a": 6, "b": 6})
    _run(images, out, num_shards=2)
    [first, second] = sorted((out / "train").iterdir())
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    assert validate_tfrecord_dir(str(out)) == {"train_files": 2, "eval_files": 2}
    from imgpipe.ingest.contract import damaged_tfrecord_files

    [damaged] = damaged_tfrecord_files(str(out))
    assert damaged.startswith(f"{first}: unreadable after ") and str(second) not in damaged

    beams = ValueError("Not a valid TFRecord. Fewer than 694 bytes: b'" + "0a" * 50_000 + "'")
    message = _failure_message(PipelineConfig(data_dir=str(out)), "ImportExampleGen", beams)
    head, *rest = message.splitlines()
    assert head == (
        "ImportExampleGen failed: ValueError: Not a valid TFRecord. Fewer than 694 bytes: "
        f"b'{'0a' * 16}...' (50000 bytes)"
    )
    long = _failure_message(PipelineConfig(data_dir=str(out)), "ImportExampleGen", ValueError("x" * 5000))
    assert len(long.splitlines()[0]) < MAX_ERROR_LINE + 100 and "characters) ... " in long
    assert rest[0].startswith("damaged TFRecord files") and rest[1].strip() == damaged
    # The line's end is kept too: ML Metadata puts its cause after the execution it could not write.
    mlmd = RuntimeError("Cannot create node for type_id: 31 " + "x" * 2000 + " database or disk is full")
    cut = _failure_message(PipelineConfig(data_dir=str(out)), "Evaluator", mlmd)
    assert cut.endswith("database or disk is full") and len(cut) < MAX_ERROR_LINE + 100
    # Another component's failure does not read the data again.
    assert (
        _failure_message(PipelineConfig(data_dir=str(out)), "Trainer", ValueError("x"))
        == "Trainer failed: ValueError: x"
    )


def test_a_file_cut_inside_a_record_header_is_named_though_tensorflow_reads_to_a_quiet_end(
    tmp_path: Path,
) -> None:
    """TensorFlow's reader stops without an error at a record header cut short (or a few bytes
    added after the last record); Beam's ExampleGen refuses such a file. The file is named."""
    import tensorflow as tf

    from imgpipe.ingest.contract import damaged_tfrecord_files

    images, out = tmp_path / "images", tmp_path / "out"
    _make_tree(images, {"a": 6, "b": 6})
    _run(images, out, num_shards=2)
    first, second = sorted((out / "train").iterdir())
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(first))]
    whole = 16 + len(records[0])
    first.write_bytes(first.read_bytes()[: whole + 5])
    second.write_bytes(second.read_bytes() + b"\0" * 7)
    assert len(list(tf.data.TFRecordDataset(str(first)))) == 1  # no error from TensorFlow
    assert damaged_tfrecord_files(str(out)) == [
        f"{first}: 5 bytes after its 1 good records are not a whole record (a file cut short, or "
        "bytes added after it)",
        f"{second}: 7 bytes after its {len(list(tf.data.TFRecordDataset(str(second))))} good records are "
        "not a whole record (a file cut short, or bytes added after it)",
    ]


def test_a_run_failing_on_an_image_names_the_records_the_model_cannot_decode(tmp_path: Path) -> None:
    """TFRecords made elsewhere are checked by their first records only; when Transform then
    fails on an image further in (TensorFlow's error names no record), the run's message names
    each record the model's own decoder refuses: cut short, or over max_image_pixels."""
    import numpy as np

    from imgpipe.orchestration.local import _failure_message
    from pipeline.config import PipelineConfig
    from tests import helpers

    images, out = tmp_path / "images", tmp_path / "out"
    _make_tree(images, {"a": 6, "b": 6})
    _run(images, out)
    good = _encode(seed=77)
    big = helpers.encode_image(np.zeros((40, 40, 3), np.uint8))
    extra = out / "train" / "more.tfrecord"
    helpers.write_tfrecords(str(extra), [(good, "a"), (good[: len(good) // 2], "a"), (good, "b"), (big, "b")])
    config = PipelineConfig(data_dir=str(out), max_image_pixels=1000)
    assert validate_tfrecord_dir(str(out))["train_files"] == 2
    transform = ValueError(
        'An error occurred while trying to apply the transformation: "Graph execution error: Detected at '
        "node map/while/switch_case/indexed_case/decode_image/DecodeImage ... Invalid PNG. Failed to "
        'initialize decoder."'
    )
    head, *rest = _failure_message(config, "Transform", transform).splitlines()
    assert head.startswith("Transform failed: ValueError: An error occurred")
    assert rest[0].startswith("records whose image the model cannot decode")
    assert [line.strip().split(": ", 1)[0] for line in rest[1:3]] == [
        f"{extra} record 1",
        f"{extra} record 3",
    ]
    assert "not a decodable image" in rest[1] and "over the limit of 1000 pixels" in rest[2]
    # An image over the run's pixel limit among them: the flag that takes it is named (an audit:
    # ingest took 48 MP images with --max-pixels, the run refused them, and only "re-encode" was said).
    assert rest[3].startswith("images over max_image_pixels (1000) are among them") and (
        "pass --max-image-pixels" in rest[3]
    )
    # And the run says so before it starts, when the data's ingest took more than it will.
    from imgpipe.orchestration.local import pixel_limit_mismatch

    assert pixel_limit_mismatch(PipelineConfig(data_dir=str(out))) is None  # both at the default
    ingested = json.loads((out / "ingest_report.json").read_text())
    assert ingested["max_pixels"] > 1000
    assert "pass --max-image-pixels " + str(ingested["max_pixels"]) in pixel_limit_mismatch(config)
    # Progress on a long scan: the count of records read, every `progress_every`.
    from imgpipe.ingest.contract import undecodable_images

    counts: list[int] = []
    # TensorFlow's own decoder (the default) has no pixel limit: only the cut-short PNG is named.
    [cut] = undecodable_images(str(out / "train"), progress=counts.append, progress_every=3)
    assert cut.startswith(f"{extra} record 1: ")
    records = sum(1 for _ in tf.data.TFRecordDataset(sorted(str(p) for p in (out / "train").iterdir())))
    assert records > 9 and counts == list(range(3, records + 1, 3))
    # A failure that is not about an image does not read the data.
    assert _failure_message(config, "Trainer", ValueError("out of memory")) == (
        "Trainer failed: ValueError: out of memory"
    )


def test_a_run_failing_on_a_record_of_another_shape_names_the_records(tmp_path: Path) -> None:
    """Records further in than the first, made elsewhere: two labels, a label of numbers, no
    image, an empty label. The pre-run check passes (first records only); StatisticsGen or the
    DataGate then fail in TensorFlow's words, naming a feature and no record: the run's message
    lists each record, with what is wrong with it."""
    from imgpipe.ingest.contract import records_off_contract
    from imgpipe.orchestration.local import _failure_message
    from pipeline.config import PipelineConfig

    images, out = tmp_path / "images", tmp_path / "out"
    _make_tree(images, {"a": 6, "b": 6})
    _run(images, out)
    good = _encode(seed=78)

    def example(**features):
        return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()

    def strings(*values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))

    extra = out / "eval" / "later.tfrecord"
    with tf.io.TFRecordWriter(str(extra)) as w:
        w.write(example(image=strings(good), label=strings(b"a")))
        w.write(example(image=strings(good), label=strings(b"a", b"b")))
        w.write(
            example(image=strings(good), label=tf.train.Feature(int64_list=tf.train.Int64List(value=[1])))
        )
        w.write(example(label=strings(b"b")))
        w.write(example(image=strings(good, good), label=strings(b"b")))
        w.write(example(image=strings(good), label=strings(b"")))
        w.write(b"not an example")
    assert validate_tfrecord_dir(str(out))["eval_files"] == 2
    config = PipelineConfig(data_dir=str(out))
    statistics = ValueError(
        'Feature had wrong type, expected bytes_list, found int64_list for feature "label" '
        "[while running 'TFXIORead[eval]/RawRecordToRecordBatch']"
    )
    head, *rest = _failure_message(config, "StatisticsGen", statistics).splitlines()
    assert head.startswith("StatisticsGen failed: ValueError: Feature had wrong type")
    assert rest[0].startswith("records that are not an Example of one 'image' and one 'label'")
    assert [line.strip() for line in rest[1:]] == [
        f"{extra} record 1: feature 'label' holds 2 values, expected one",
        f"{extra} record 2: feature 'label' is int64_list, expected bytes_list",
        f"{extra} record 3: no 'image' feature (found: ['label']); expected image: bytes, label: bytes",
        f"{extra} record 4: feature 'image' holds 2 values, expected one",
        f"{extra} record 5: feature 'label' is an empty string",
        f"{extra} record 6: not a tf.train.Example (Error parsing message with type 'tensorflow.Example')",
    ]
    gate = tf.errors.InvalidArgumentError(
        None, None, "Name: <unknown>, Key: label, Index: 1.  Can't parse serialized Example."
    )
    assert "record 1: feature 'label' holds 2 values" in _failure_message(config, "DataGate", gate)
    # With --allow-anomalies the Trainer reads the record without an image (TensorFlow's text
    # names the feature), and ExampleGen a record that is no tf.Example (protobuf's).
    trainer = tf.errors.InvalidArgumentError(
        None, None, "Feature: image (data type: string) is required but could not be found."
    )
    assert f"{extra} record 3: no 'image' feature" in _failure_message(config, "Trainer", trainer)
    example_gen = ValueError(
        "DecodeError: Error parsing message with type 'tensorflow.Example' "
        "[while running 'InputToRecord[eval]/ToTFExample']"
    )
    assert f"{extra} record 6: not a tf.train.Example" in _failure_message(
        config, "ImportExampleGen", example_gen
    )
    assert len(records_off_contract(str(out), limit=2)) == 2
    # The scoring steps read score_data (images without labels), not data_dir: not searched there.
    from pipeline.pipeline import SCORING_IDS

    assert "records that are not an Example" not in _failure_message(config, SCORING_IDS[0], statistics)
    # The same faults in a file's first record stop the run before it starts, with the same words.
    with tf.io.TFRecordWriter(str(extra)) as w:
        w.write(example(image=strings(good), label=strings(b"a", b"b")))
    with pytest.raises(IngestError, match="first record of .*later.tfrecord: feature 'label' holds 2 values"):
        validate_tfrecord_dir(str(out))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing_dir", "does not exist"),
        ("no_eval", "no 'eval/' subdirectory"),
        ("empty_train", "train holds no TFRecord files"),
        ("garbage", "not a readable TFRecord"),
        ("gzip", "GZIP-compressed"),
        ("no_label", "no 'label' feature"),
        ("int_label", "'label' is int64_list"),
        ("not_an_image", "not a decodable image"),
        ("hidden_file", r"\.DS_Store"),
        ("short_stray", r"README\.txt: 6 bytes that hold no TFRecord record"),
    ],
)
def test_validate_rejects_bad_dirs(tmp_path: Path, breakage: str, message: str) -> None:
    root = tmp_path / "data"
    good = {"image": _encode(), "label": b"cat"}
    for split in ("train", "eval"):
        _write_example(root / split / "part-0.tfrecord", good)
    train_file = root / "train" / "part-0.tfrecord"
    if breakage == "missing_dir":
        root = tmp_path / "absent"
    elif breakage == "no_eval":
        (root / "eval" / "part-0.tfrecord").unlink()
        (root / "eval").rmdir()
    elif breakage == "empty_train":
        train_file.unlink()
    elif breakage == "garbage":
        train_file.write_bytes(b"this is not a tfrecord file at all")
    elif breakage == "gzip":
        train_file.write_bytes(gzip.compress(train_file.read_bytes()))
    elif breakage == "no_label":
        _write_example(train_file, {"image": _encode()})
    elif breakage == "int_label":
        _write_example(train_file, {"image": _encode(), "label": 3})
    elif breakage == "not_an_image":
        _write_example(train_file, {"image": b"pixels?", "label": b"cat"})
    elif breakage == "hidden_file":
        (root / "eval" / ".DS_Store").write_bytes(b"x")
    elif breakage == "short_stray":  # under a record header: TensorFlow's reader sees no records
        (root / "eval" / "README.txt").write_bytes(b"hello\n")
    with pytest.raises(IngestError, match=message):
        validate_tfrecord_dir(str(root))


# ----------------------------------------------------------------- datasets


def test_write_digits_tree(tmp_path: Path) -> None:
    counts = write_digits_tree(str(tmp_path / "d1"), digits=[7, 0], size=16, limit_per_class=3)
    assert counts == {"0": 3, "7": 3}
    names = sorted(p.name for p in (tmp_path / "d1" / "7").iterdir())
    assert len(names) == 3 and all(n.startswith("7_") and n.endswith(".png") for n in names)
    with Image.open(tmp_path / "d1" / "7" / names[0]) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "L", (16, 16))
        assert np.asarray(image).max() > 128, "digit strokes should be bright"

    write_digits_tree(str(tmp_path / "d2"), digits=[7, 0], size=16, limit_per_class=3)
    first = {p.relative_to(tmp_path / "d1"): p.read_bytes() for p in (tmp_path / "d1").rglob("*.png")}
    again = {p.relative_to(tmp_path / "d2"): p.read_bytes() for p in (tmp_path / "d2").rglob("*.png")}
    assert first == again

    with pytest.raises(ValueError, match=r"0\.\.9"):
        write_digits_tree(str(tmp_path / "d3"), digits=[10])


def test_digits_tree_ingests_cleanly(tmp_path: Path) -> None:
    counts = write_digits_tree(str(tmp_path / "digits"), digits=range(3), limit_per_class=10)
    report = _run(tmp_path / "digits", tmp_path / "out")
    assert report.classes == ["0", "1", "2"]
    assert report.skipped == [] and report.duplicates == []
    assert {c: v["train"] + v["eval"] for c, v in report.counts.items()} == counts


# ------------------------------------------------- trees laid out otherwise


def test_a_tree_split_already_is_refused_and_a_wrapper_folder_gets_the_fix(tmp_path: Path) -> None:
    """train/<class>/..., val/<class>/...: ingest labels by the folder under --images, so it
    would train "train" against "val": refused, saying why. One wrapper folder above the classes:
    the refusal names its subfolders and the folder to pass instead."""
    images, out = tmp_path / "presplit", tmp_path / "out"
    for s, (split, n) in enumerate((("train", 4), ("val", 2))):
        for c in ("5", "6"):
            for i in range(n):
                _put(images, f"{split}/{c}/{i}.png", _encode(seed=300 + 100 * s + 10 * int(c) + i))
    with pytest.raises(IngestError) as caught:
        _run(images, out)
    assert str(caught.value).startswith(
        "the tree looks laid out by split: class folders 'train' (holding '5', '6'), 'val' (holding '5', '6') "
        "are named like splits and hold subfolders named like classes"
    )
    assert not out.exists()
    # Classes that hold subfolders of their own (years, sources) are no warning.
    plain = tmp_path / "plain"
    for c in ("cats", "dogs"):
        for i in range(3):
            _put(plain, f"{c}/2024/{i}.png", _encode(seed=50 + 10 * ("cats", "dogs").index(c) + i))
    assert _run(plain, tmp_path / "out2").warnings == []

    wrapped = tmp_path / "deep"
    for c in ("5", "6", "7"):
        for i in range(2):
            _put(wrapped, f"animals/{c}/{i}.png", _encode(seed=200 + 10 * int(c) + i))
    with pytest.raises(IngestError) as caught:
        _run(wrapped, tmp_path / "out3")
    assert str(caught.value).endswith(
        f"its images sit in subfolders ('5', '6', '7'): if those are the classes, pass {wrapped}/animals "
        "as the image directory"
    )


def test_a_split_folder_beside_the_class_folders_is_refused_and_a_misfiled_subfolder_warned(
    tmp_path: Path,
) -> None:
    """cat/, dog/ and test/{cat,dog}/: the test images became a third class, 'test', and the
    served model answered 'test'; the split check only looked for subfolders every class shared."""
    images = tmp_path / "images"
    for c, base in (("cat", 100), ("dog", 200)):
        for i in range(4):
            _put(images, f"{c}/{i}.png", _encode(seed=base + i))
            _put(images, f"Test/{c}/{i}.png", _encode(seed=base + 50 + i))
    with pytest.raises(IngestError) as caught:
        _run(images, tmp_path / "out")
    assert str(caught.value).startswith(
        "the tree looks laid out by split: class folder 'Test' (holding 'cat', 'dog') is named like a split"
    )
    # A class folder holding a subfolder named like another class: labelled by the outer folder, said.
    misfiled = tmp_path / "misfiled"
    for c, base in (("cat", 300), ("dog", 400)):
        for i in range(3):
            _put(misfiled, f"{c}/{i}.png", _encode(seed=base + i))
    _put(misfiled, "cat/Dog/x.png", _encode(seed=499))
    report = _run(misfiled, tmp_path / "out2")
    assert report.warnings == [
        "class folder 'cat' holds a subfolder named like another class ('Dog'): their images are labelled "
        "'cat', the folder right under the image directory; move them to their class folder if that is "
        "what they show"
    ]


def test_class_folders_that_cannot_be_listed_are_refused_with_their_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A class folder that may not be listed, or a link to a share not mounted, was left out with
    "no image files" (or as a file outside the class folders) and the run went on a class short."""
    images = tmp_path / "images"
    _make_tree(images, {"a": 3, "b": 3})
    _put(images, "locked/x.png", _encode(seed=600))
    _put(images, "tab\there/x.png", _encode(seed=601))  # a refused name, and not listable either
    (images / "birds").symlink_to(tmp_path / "nas" / "birds")  # not mounted
    (images / "notes.txt").symlink_to(tmp_path / "gone.txt")  # a stray file link: not a class
    (images / "kitty").symlink_to(images / "a")  # a second name for a class folder: skipped, not lost
    locked = {str(images / "locked"), str(images / "tab\there")}
    real_scandir = os.scandir

    def scandir(path: str | int = ".") -> object:  # chmod 000 does not stop root, so refuse here
        if not isinstance(path, int) and os.fspath(path) in locked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(IngestError) as caught:
        _run(images, tmp_path / "out")
    message = str(caught.value)
    assert message.startswith("3 class folders with files would be left out of the training set: ")
    assert "'tab\\there' (its files could not be counted): " in message and "kitty" not in message
    assert (
        f"'birds' (its files could not be counted): a link to {tmp_path}/nas/birds, which does not exist "
        "(a share not mounted?)" in message
    )
    assert "'locked' (its files could not be counted): cannot list directory: Permission denied" in message

    report = _run(images, tmp_path / "out", allow_left_out_classes=True)
    assert report.classes == ["a", "b"]
    assert sorted((c["folder"], c["files"]) for c in report.left_out_classes) == [
        ("birds", None),
        ("locked", None),
        ("tab\there", None),
    ]
    from imgpipe.orchestration.local import left_out_classes

    assert sorted(c["folder"] for c in left_out_classes(str(tmp_path / "out"))) == [
        "birds",
        "locked",
        "tab\there",
    ]


def test_nas_thumbnails_and_zip_resource_forks_are_not_images_of_the_tree(tmp_path: Path) -> None:
    """A Synology NAS writes smaller versions of each picture into @eaDir beside it: scanned, they
    were more images, near-copies of the real ones on both sides of the split."""
    images, out = tmp_path / "images", tmp_path / "out"
    _make_tree(images, {"a": 3, "b": 3})
    _put(images, "a/@eaDir/img_000.png/SYNOPHOTO_THUMB_S.png", _encode(seed=900))
    _put(images, "__MACOSX/a/img_000.png", _encode(seed=901))
    report = _run(images, out)
    assert sum(report.totals.values()) == 6
    assert {s["path"]: s["reason"] for s in report.skipped} == {
        "__MACOSX": "macOS resource forks from a zip archive (__MACOSX): not scanned",
        "a/@eaDir": "a Synology NAS's thumbnail folder (@eaDir): not scanned",
    }


def test_a_class_left_with_one_image_by_label_conflicts_is_told_so(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    _make_tree(images, {"a": 4})
    for i in range(3):
        _put(images, f"b/{i}.png", _encode(seed=700 + i))
        _put(images, f"a/again_{i}.png", _encode(seed=700 + i))  # the same image under a too
    _put(images, "b/own.png", _encode(seed=799))
    with pytest.raises(IngestError) as caught:
        _run(images, out)
    assert "class 'b' in" in str(caught.value)
    assert (
        "(copies of one image count once; 6 files are label conflicts, the same image under several classes, and none of them is used: see label_conflicts)"
        in str(caught.value)
    )


def test_ingest_writes_the_file_of_each_record(tmp_path: Path) -> None:
    """image_files.jsonl: a line per record written ({split, sha256 of the image bytes, path}), so
    a run's report can name a misclassified record's file; copies and conflicts are not in it."""
    from imgpipe.ingest.contract import FILES_FILE

    images, out = tmp_path / "images", tmp_path / "out"
    files = _make_tree(images, {"a": 4, "b": 3})
    _put(images, "a/zcopy.png", files["a/img_000.png"])  # a copy: not written, not listed
    report = _run(images, out)
    lines = [json.loads(x) for x in (out / FILES_FILE).read_text(encoding="utf-8").splitlines()]
    by_hash = {_sha(data): rel for rel, data in files.items()}
    assert len(lines) == sum(report.totals.values()) == 7
    for split in ("train", "eval"):
        written = sorted(_sha(data) for _, data in _records(out, split))
        assert sorted(x["sha256"] for x in lines if x["split"] == split) == written
    assert all(by_hash[x["sha256"]] == x["path"] for x in lines)


def test_images_far_from_square_are_warned_about(tmp_path: Path) -> None:
    """The pipeline resizes each image to a square without cropping: a 3 x 60 strip is squeezed
    out of shape, which ingest took without a word (an audit's 2 x 300 images)."""
    images = tmp_path / "images"
    _make_tree(images, {"a": 3, "b": 3})  # 10 x 12: near square
    rng = np.random.default_rng(7)
    strip = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (3, 60, 3), dtype=np.uint8)).save(strip, format="PNG")
    _put(images, "b/strip.png", strip.getvalue())
    report = _run(images, tmp_path / "out")
    assert report.warnings == [
        "1 image with a long side over 4 times the short one (e.g. b/strip.png, 60 x 3): the pipeline resizes "
        "each image to a square, without cropping, so their content is squeezed out of shape; crop "
        "them, or check they belong"
    ]
    square = tmp_path / "square"
    _make_tree(square, {"a": 3, "b": 3})
    assert _run(square, tmp_path / "out2").warnings == []
