"""The ingest write from a given plan, the out_dir rules, the Example it writes, and ingest's logging."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgpipe.cli import main as cli
from imgpipe.ingest import ingest
from imgpipe.ingest.contract import example_bytes
from imgpipe.ingest.errors import IngestError
from imgpipe.ingest.plan import Candidate, Plan, Shard
from imgpipe.ingest.report import IngestReport
from imgpipe.ingest.write import STAGING_PREFIX, check_out_dir, write_outputs
from trainer.features import IMAGE_KEY, LABEL_KEY

tf = pytest.importorskip("tensorflow")

# What a whole ingest leaves in its output directory, by name.
WRITTEN = ["classes.json", "eval", "image_files.jsonl", "ingest_report.json", "train"]


def _png(seed: int) -> bytes:
    """A distinct 8x8 PNG per seed."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _images(root: Path, rels: list[str]) -> dict[str, Candidate]:
    """Write a PNG per rel under root; return rel -> its Candidate."""
    found = {}
    for i, rel in enumerate(rels):
        data = _png(i)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        found[rel] = Candidate(rel, rel.split("/")[0], hashlib.sha256(data).hexdigest(), len(data))
    return found


def _records(path: Path) -> list[tuple[str, bytes]]:
    """(label, image bytes) of every record of one TFRecord file."""
    result = []
    for raw in tf.data.TFRecordDataset(str(path)):
        feature = tf.train.Example.FromString(raw.numpy()).features.feature
        result.append(
            (feature[LABEL_KEY].bytes_list.value[0].decode(), feature[IMAGE_KEY].bytes_list.value[0])
        )
    return result


def _plan(shards: dict[str, list[Shard]]) -> Plan:
    classes = sorted({c.label for split in shards.values() for s in split for c in s.records})
    return Plan(classes, {}, [], [], [], [], shards)


def _report(images: Path, out: Path, plan: Plan) -> IngestReport:
    report = IngestReport(str(images), str(out), seed=1, eval_fraction=0.5, classes=plan.classes)
    report.shards = plan.shard_names()
    return report


@pytest.fixture
def given(tmp_path: Path) -> tuple[Path, dict[str, Candidate], Plan]:
    """Five images and a hand-made plan: two train shards, one eval shard."""
    images = tmp_path / "images"
    c = _images(images, ["a/1.png", "a/2.png", "b/1.png", "b/2.png", "b/3.png"])
    plan = _plan(
        {
            "train": [
                Shard("first.tfrecord", (c["b/1.png"], c["a/1.png"])),
                Shard("second.tfrecord", (c["b/2.png"],)),
            ],
            "eval": [Shard("only.tfrecord", (c["a/2.png"], c["b/3.png"]))],
        }
    )
    return images, c, plan


def test_write_follows_the_plan_exactly(tmp_path: Path, given) -> None:
    images, c, plan = given
    out = tmp_path / "out"
    report = _report(images, out, plan)
    lines: list[str] = []

    write_outputs(str(images), str(out), plan, report, progress=lines.append, progress_every=2)

    for split, shards in plan.shards.items():
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(s.name for s in shards)
        for shard in shards:
            expected = [(cand.label, (images / cand.rel).read_bytes()) for cand in shard.records]
            assert _records(out / split / shard.name) == expected
    assert json.loads((out / "classes.json").read_text()) == ["a", "b"]
    assert json.loads((out / "ingest_report.json").read_text()) == report.to_dict()
    assert sorted(p.name for p in out.iterdir()) == WRITTEN
    assert lines == ["wrote 2/5 records", "wrote 4/5 records"]


@pytest.mark.parametrize("fault", ["changed", "missing"])
def test_a_file_that_changed_since_the_scan_aborts_and_leaves_out_dir_as_it_was(
    tmp_path: Path, given, fault: str
) -> None:
    images, c, plan = given
    if fault == "changed":
        (images / "b" / "2.png").write_bytes(_png(99))
        message = r"b/2\.png changed during ingest"
    else:
        (images / "b" / "2.png").unlink()
        message = r"b/2\.png became unreadable during ingest"

    fresh = tmp_path / "fresh"
    with pytest.raises(IngestError, match=message):
        write_outputs(str(images), str(fresh), plan, _report(images, fresh, plan))
    assert not fresh.exists(), "a failed write must not leave a new out_dir behind"

    previous = tmp_path / "previous"
    (previous / "train").mkdir(parents=True)
    (previous / "train" / "old.tfrecord").write_bytes(b"old")
    (previous / "classes.json").write_text('["x", "y"]\n')
    before = sorted(str(p.relative_to(previous)) for p in previous.rglob("*"))
    with pytest.raises(IngestError, match=message):
        write_outputs(str(images), str(previous), plan, _report(images, previous, plan), overwrite=True)
    assert sorted(str(p.relative_to(previous)) for p in previous.rglob("*")) == before
    assert (previous / "train" / "old.tfrecord").read_bytes() == b"old"


def test_overwrite_replaces_only_what_ingest_writes(tmp_path: Path, given) -> None:
    images, c, plan = given
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "train" / "stale.tfrecord").write_bytes(b"stale")
    (out / "eval").mkdir()
    (out / "classes.json").write_text("[]\n")
    (out / "notes.md").write_text("mine")
    (out / f"{STAGING_PREFIX}killed" / "train").mkdir(parents=True)

    write_outputs(str(images), str(out), plan, _report(images, out, plan), overwrite=True)

    assert sorted(p.name for p in out.iterdir()) == [
        "classes.json",
        "eval",
        "image_files.jsonl",
        "ingest_report.json",
        "notes.md",
        "train",
    ]
    assert (out / "notes.md").read_text() == "mine"
    assert sorted(p.name for p in (out / "train").iterdir()) == ["first.tfrecord", "second.tfrecord"]


def test_an_unchanged_split_is_kept_with_its_file_times(tmp_path: Path, given) -> None:
    """A nightly ingest of unchanged images rewrote every shard; ExampleGen fingerprints its input
    by path, size and modification time, so each run trained again and pushed a copy of the served
    model. A split whose shards are byte for byte the same stays as it was; a changed one is
    replaced."""
    import os

    images, c, plan = given
    out = tmp_path / "out"
    write_outputs(str(images), str(out), plan, _report(images, out, plan))
    old = 1_000_000_000
    for shard in (out / "train").iterdir():
        os.utime(shard, (old, old))
    for shard in (out / "eval").iterdir():
        os.utime(shard, (old, old))
    said = []
    write_outputs(
        str(images), str(out), plan, _report(images, out, plan), overwrite=True, progress=said.append
    )
    assert said == ["train/ and eval/ unchanged (the same bytes): kept as they were"]
    assert {p.stat().st_mtime for p in (out / "train").iterdir()} == {old}
    assert not [p for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)]
    # One shard's bytes differ (another image under a class): that split is written again.
    (out / "eval" / sorted(os.listdir(out / "eval"))[0]).write_bytes(b"other")
    said.clear()
    write_outputs(
        str(images), str(out), plan, _report(images, out, plan), overwrite=True, progress=said.append
    )
    assert said == ["train/ unchanged (the same bytes): kept as it was"]
    assert all(p.stat().st_mtime > old for p in (out / "eval").iterdir())
    assert (out / "eval" / sorted(os.listdir(out / "eval"))[0]).read_bytes() != b"other"
    assert sorted(p.name for p in out.iterdir()) == WRITTEN


def test_out_dir_rules(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for inside_out in (images, images / "records", tmp_path):
        with pytest.raises(IngestError, match="overlap"):
            check_out_dir(str(images), str(inside_out), overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(IngestError, match="exists and is not a directory"):
        check_out_dir(str(images), str(tmp_path / "file"), overwrite=True)
    out = tmp_path / "out"
    check_out_dir(str(images), str(out), overwrite=False)  # absent: fine
    out.mkdir()
    check_out_dir(str(images), str(out), overwrite=False)  # empty: fine
    (out / "notes.md").write_text("mine")
    with pytest.raises(IngestError, match=r"not empty; choose a new directory or pass --overwrite"):
        check_out_dir(str(images), str(out), overwrite=False)
    check_out_dir(str(images), str(out), overwrite=True)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_stop_signal_while_the_outputs_move_in_waits_for_the_last(
    tmp_path: Path, given, monkeypatch, overwrite
) -> None:
    """SIGTERM (or Ctrl-C) as the first output was renamed into place left `train/` alone in the
    folder, or, re-ingesting with --overwrite, the new train/ and the earlier rest deleted (an
    audit). The renames finish; then the command stops as asked."""
    import os
    import signal

    from imgpipe.cli import output
    from imgpipe.ingest import write
    from imgpipe.stop_signals import Terminated

    images, c, plan = given
    out = tmp_path / "out"
    if overwrite:
        write_outputs(str(images), str(out), plan, _report(images, out, plan))
        (out / "train" / next(iter(os.listdir(out / "train")))).write_bytes(b"other bytes: not kept")
    renames = []
    real = os.replace

    def replace(src, dst):
        if os.path.dirname(dst) == str(out):  # an output moving into place (not a staged JSON's)
            if not renames:
                os.kill(os.getpid(), signal.SIGTERM)  # as the first one moves in
            renames.append(os.path.basename(dst))
        return real(src, dst)

    monkeypatch.setattr(write.os, "replace", replace)
    # As under `imgpipe ingest`: SIGTERM raises Terminated where the command is.
    with pytest.raises(Terminated), output.sigterm_raises():
        write_outputs(str(images), str(out), plan, _report(images, out, plan), overwrite=overwrite)
    assert sorted(p.name for p in out.iterdir()) == WRITTEN  # every output, no staging folder
    assert renames[:1] == ["train"] and "ingest_report.json" in renames


def test_what_an_interrupted_ingest_left_is_removed_by_the_next(tmp_path: Path, given) -> None:
    """A killed ingest leaves its hidden staging folder and maybe a half-written JSON: the
    folder looks empty to `ls`, so the next ingest into it takes it as empty and cleans up."""
    images, c, plan = given
    out = tmp_path / "out"
    (out / f"{STAGING_PREFIX}abc123" / "train").mkdir(parents=True)
    (out / f"{STAGING_PREFIX}abc123" / "train" / "part.tfrecord").write_bytes(b"half")
    (out / "classes.json.tmp").write_text('["a"')
    check_out_dir(str(images), str(out), overwrite=False)
    lines: list[str] = []
    write_outputs(str(images), str(out), plan, _report(images, out, plan), progress=lines.append)
    assert sorted(p.name for p in out.iterdir()) == WRITTEN
    assert (
        lines[0] == f"removing what an interrupted ingest left in {out}: .ingest-tmp-abc123, classes.json.tmp"
    )
    # Beside files of the user's, the leftovers are named in the refusal.
    (out / f"{STAGING_PREFIX}zzz").mkdir()
    with pytest.raises(
        IngestError, match=r"not empty; .* what an interrupted ingest left: \.ingest-tmp-zzz\)"
    ):
        check_out_dir(str(images), str(out), overwrite=False)


def test_a_write_that_fails_leaves_the_earlier_outputs_and_exits_1(
    tmp_path: Path, given, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full disk midway: the work failed (exit 1, not a usage error), the earlier outputs stay."""
    from imgpipe.ingest import write as writing
    from imgpipe.ingest.errors import IngestWriteError

    images, c, plan = given
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "train" / "old.tfrecord").write_bytes(b"old")
    (out / "classes.json").write_text('["x", "y"]\n')
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    real_write_json = writing._write_json

    def disk_full(path, payload):
        if path.endswith("ingest_report.json"):
            raise OSError(28, "No space left on device", path)
        real_write_json(path, payload)

    monkeypatch.setattr(writing, "_write_json", disk_full)
    with pytest.raises(IngestWriteError, match="cannot write ingest's outputs to .*No space left on device"):
        write_outputs(str(images), str(out), plan, _report(images, out, plan), overwrite=True)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before  # nothing removed, nothing left
    assert (out / "classes.json").read_text() == '["x", "y"]\n'

    tree = tmp_path / "tree"
    for i, rel in enumerate(["a/1.png", "a/2.png", "b/1.png", "b/2.png"]):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(_png(10 + i))
    code = cli.main(["ingest", "--images", str(tree), "--out", str(tmp_path / "new")])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert "No space left on device" in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "new").exists()


def test_an_out_dir_that_cannot_be_made_is_refused_before_the_scan(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(IngestError, match=r"cannot be created: .*file is not a directory"):
        check_out_dir(str(images), str(tmp_path / "file" / "sub" / "out"), overwrite=False)
    with pytest.raises(IngestError, match=r"cannot be created: "):
        check_out_dir(str(images), "/proc/imgpipe-out/records", overwrite=False)
    deep = tmp_path / "new" / "deeper" / "out"
    check_out_dir(str(images), str(deep), overwrite=False)
    assert not (tmp_path / "new").exists(), "the check leaves nothing behind"


def test_cli_shows_what_a_refused_tree_holds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a", "b"):  # the same two images in both classes: every file is a label conflict
        for seed in (1, 2):
            path = tmp_path / "img" / name / f"{seed}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_png(seed))
    (tmp_path / "img" / "b" / "notes.txt").write_text("not an image")
    code = cli.main(["ingest", "--images", str(tmp_path / "img"), "--out", str(tmp_path / "out")])
    assert code == cli.EXIT_USAGE
    captured = capsys.readouterr()
    [line] = captured.out.splitlines()
    partial = json.loads(line)
    assert "4 files are label conflicts" in partial["refused"]
    assert len(partial["label_conflicts"]) == 2 and partial["skipped"][0]["path"] == "b/notes.txt"
    assert "label conflict, the same bytes under several classes: a/1.png (a), b/1.png (b)" in captured.err
    assert "skipped 1 file(s): not a recognised image" in captured.err
    assert not (tmp_path / "out").exists()


def test_cli_names_its_overwrite_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "img" / "a").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    code = cli.main(["ingest", "--images", str(tmp_path / "img"), "--out", str(tmp_path / "out")])
    assert code == cli.EXIT_USAGE
    captured = capsys.readouterr()
    assert "--overwrite" in captured.err and captured.out == ""


# ---------------------------------------------------------------- contract


def test_example_holds_the_file_bytes_and_the_utf8_class_name() -> None:
    image = _png(5)
    raw = example_bytes(image, "café")
    feature = tf.train.Example.FromString(raw).features.feature
    assert sorted(feature) == sorted([IMAGE_KEY, LABEL_KEY])
    assert list(feature[IMAGE_KEY].bytes_list.value) == [image]
    assert list(feature[LABEL_KEY].bytes_list.value) == ["café".encode()]
    assert example_bytes(image, "café") == raw, "the same input must give the same bytes"


# --------------------------------------------------------------------- run


def test_ingest_logs_progress_and_summary_by_default(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    _images(images, [f"{c}/{i}.png" for c in "ab" for i in range(3)])
    seen: list[tuple[str, str]] = []

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.name, record.getMessage()))

    logger, handler = logging.getLogger("imgpipe.ingest"), Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        ingest(str(images), str(out), progress_every=4)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)

    assert seen[:2] == [
        ("imgpipe.ingest.scan", "checked 4/6 files"),
        ("imgpipe.ingest.write", "wrote 4/6 records"),
    ]
    assert len(seen) == 3
    name, summary = seen[2]
    assert name == "imgpipe.ingest.run"
    assert summary.startswith("wrote 4 train + 2 eval records for 2 classes") and str(out) in summary
