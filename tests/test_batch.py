"""`imgpipe predict-batch`: counts add up, every format parses, --model equals --target and the in-process model.

The model is the session's small exported classifier (tests/serving_fixtures.py),
whose scores depend on the image, so equality between paths means something.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import prediction_log_pb2

from imgpipe.batch import BatchError, ServerUnusable, predict_batch
from imgpipe.batch import job as batch_job
from imgpipe.batch.inputs import NoInputs, list_images
from imgpipe.batch.outputs import read_predictions
from imgpipe.batch.progress import ProgressBar, render
from imgpipe.cli.main import main
from pipeline.beam import BeamConfig
from serving import request_size
from tests import image_samples, serving_fixtures

NAME = serving_fixtures.MODEL_NAME


@pytest.fixture(scope="module")
def model(serving_model) -> serving_fixtures.ServingModel:
    return serving_model


@pytest.fixture(scope="module")
def folder(model, tmp_path_factory) -> tuple[Path, dict[str, bytes], dict[str, str]]:
    """A tree of good images (nested, PNG and JPEG) and files that cannot be scored.

    Returns (root, {path: bytes} of scorable images, {path: reason fragment} of the rest).
    """
    root = tmp_path_factory.mktemp("batch") / "images"
    good: dict[str, bytes] = {}
    for i, (data, _) in enumerate(model.items[:9]):
        rel = f"sub/deeper/{i}.png" if i % 3 == 0 else f"{i}.png"
        good[rel] = data
    good["photo.jpg"] = serving_fixtures.as_jpeg(model.items[10][0])
    bad = {
        "truncated.png": (model.items[11][0][:60], "cannot decode"),
        "notes.txt": (b"not an image", "not a recognised image"),
        "empty.png": (b"", "empty file"),
        "huge.png": (image_samples.black_png(20_000, 20_000), "over the limit of 40000000"),
        "sub/scan.tiff": (_tiff(), "unsupported image format TIFF"),
    }
    for rel, data in [*good.items(), *((r, d) for r, (d, _) in bad.items())]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / ".hidden.png").write_bytes(good["1.png"])  # hidden: not a file to score
    os.mkfifo(root / "pipe.png")  # unreadable as a file: listed, skipped
    bad["pipe.png"] = (b"", "cannot read: not a regular file")
    paths = {str(root / rel): data for rel, data in good.items()}
    reasons = {str(root / rel): why for rel, (_, why) in bad.items()}
    return root, paths, reasons


def _tiff() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="TIFF")
    return buffer.getvalue()


def _reference(model, paths: dict[str, bytes]) -> dict[str, tuple[list[str], list[float]]]:
    """The SavedModel called in-process on the same images: the ground truth."""
    signature = tf.saved_model.load(model.export_dir).signatures["predict_images"]
    images = list(paths.values())
    out = signature(images=tf.constant(images))
    classes = [[c.decode() for c in row] for row in out["classes"].numpy()]
    return {
        p: (c, [float(s) for s in row])
        for p, c, row in zip(paths, classes, out["scores"].numpy(), strict=True)
    }


def _by_path(rows: list[dict]) -> dict[str, tuple[list[str], list[float]]]:
    return {r["path"]: (r["classes"], r["scores"]) for r in rows}


def _assert_same(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for path, (classes, scores) in expected.items():
        assert got[path][0] == classes, path
        np.testing.assert_allclose(got[path][1], scores, rtol=1e-5, atol=1e-6, err_msg=path)


@pytest.fixture(scope="module")
def jsonl_run(model, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "scores.jsonl"
    result = predict_batch(str(folder[0]), str(out), model_dir=model.export_dir, batch_size=4, progress=False)
    return result, out


def test_counts_add_up_and_every_skipped_file_has_its_reason(folder, jsonl_run):
    _, good, bad = folder
    result, out = jsonl_run
    assert result.files == len(good) + len(bad)
    assert result.scored == len(good)
    assert result.scored + len(result.skipped) == result.files
    reasons = {s["path"]: s["reason"] for s in result.skipped}
    assert set(reasons) == set(bad)
    for path, fragment in bad.items():
        assert fragment in reasons[path], (path, reasons[path])
    report = json.loads(Path(result.report).read_text())
    assert report["files"] == result.files and report["num_skipped"] == len(bad)
    assert report["skipped"] == result.skipped


def test_predictions_equal_the_savedmodel_in_process(model, folder, jsonl_run):
    _, out = jsonl_run
    _assert_same(_by_path(read_predictions(str(out))), _reference(model, folder[1]))


@pytest.mark.parametrize("ext", ["csv", "tfrecord"])
def test_every_output_format_parses_to_the_same_predictions(model, folder, jsonl_run, tmp_path, ext):
    out = tmp_path / f"scores.{ext}"
    result = predict_batch(str(folder[0]), str(out), model_dir=model.export_dir, batch_size=4, top_k=2)
    assert result.format == ext and result.scored == len(folder[1])
    expected = {p: (c[:2], s[:2]) for p, (c, s) in _by_path(read_predictions(str(jsonl_run[1]))).items()}
    _assert_same(_by_path(read_predictions(str(out))), expected)
    if ext == "csv":
        lines = out.read_text().splitlines()
        assert lines[0] == "path,rank,class,score" and len(lines) == 1 + 2 * result.scored
    else:
        # Each record is a Predict request (the file's bytes) with its response: replayable.
        for record in tf.data.TFRecordDataset(str(out)):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            request = log.predict_log.request
            assert request.model_spec.signature_name == "predict_images"
            image = tf.make_ndarray(request.inputs["images"])[0]
            assert image == folder[1][log.log_metadata.request_origin]


def test_a_batch_over_the_servers_batch_size_is_sent_again_in_requests_it_takes(model, folder, tmp_path):
    """Against TF Serving's shipped batching config (32 images a request), --batch-size 64 fell
    back to one image per request without a word: the refusal is INVALID_ARGUMENT, the code of a
    refused image."""
    from imgpipe.batch.scoring import ScoreWithServer
    from serving.devserver import lifecycle

    base = tmp_path / "models" / NAME
    shutil.copytree(model.export_dir, base / "3")
    images = [(str(i), data) for i, data in enumerate(list(folder[1].values()) * 2)]
    assert len(images) > 3
    with lifecycle.start_in_thread(str(base), NAME, max_batch_size=3) as running:
        scorer = ScoreWithServer(running.target, NAME)
        scorer.setup()
        calls = []
        real = scorer.predict
        scorer.predict = lambda batch: calls.append(len(batch)) or real(batch)
        try:
            scored = list(scorer.process(images))
        finally:
            scorer.teardown()
    assert [s.path for s in scored] == [path for path, _ in images] and all(s.classes for s in scored)
    assert calls[0] == len(images) and max(calls[1:]) == 3 and 1 not in calls[1:-1]


def test_target_gives_the_same_predictions_as_model(model, folder, jsonl_run, tmp_path):
    from serving.devserver import lifecycle

    base = tmp_path / "models" / NAME
    shutil.copytree(model.export_dir, base / "3")
    out = tmp_path / "served.jsonl"
    with lifecycle.start_in_thread(str(base), NAME) as running:
        result = predict_batch(str(folder[0]), str(out), target=running.target, model_name=NAME, batch_size=4)
        # The job asks for the version it started with in every request: a version pushed while
        # it runs does not score the rest of its images; the old one gone fails the job by name.
        from imgpipe.batch.scoring import ScoreWithServer, VersionGone

        scorer = ScoreWithServer(running.target, NAME, version=2)
        scorer.setup()
        try:
            with pytest.raises(VersionGone, match=r"^version 2 of model 'digits' is no longer served at"):
                scorer.predict([next(iter(folder[1].values()))])
        finally:
            scorer.teardown()
        # A job that started when version 2 was the newest, which the server replaced by 3
        # before its first request: it scores every file again with version 3, and says so.
        from imgpipe.batch import job as job_lib

        real_check = job_lib.check_server
        asked = []

        def started_on_version_2(target, name, timeout, version=None, label=None):
            asked.append(version)
            return 2 if len(asked) == 1 else real_check(target, name, timeout, version, label)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(job_lib, "check_server", started_on_version_2)
            again = predict_batch(
                str(folder[0]),
                str(tmp_path / "again.jsonl"),
                target=running.target,
                model_name=NAME,
                batch_size=4,
            )
        assert asked == [None, None] and again.source["version"] == 3 and again.scored == len(folder[1])
        _assert_same(
            _by_path(read_predictions(str(tmp_path / "again.jsonl"))), _by_path(read_predictions(str(out)))
        )
        with pytest.raises(ServerUnusable, match=r"does it serve version 2 of model 'digits'"):
            predict_batch(
                str(folder[0]),
                str(tmp_path / "v2.jsonl"),
                target=running.target,
                model_name=NAME,
                model_version=2,
            )
    assert result.scored == len(folder[1])
    assert result.source == {"target": running.target, "model_name": NAME, "version": 3}
    _assert_same(_by_path(read_predictions(str(out))), _by_path(read_predictions(str(jsonl_run[1]))))
    # A model base path resolves to its newest version, like TF Serving.
    assert predict_batch(str(folder[0] / "sub"), str(tmp_path / "b.jsonl"), model_dir=str(base)).source == {
        "model": str(base / "3"),
        "version": 3,
    }


def test_target_scores_with_the_version_a_label_names(folder, tmp_path):
    """--model-version-label: the version a label of the server's model config names when the
    job starts, every image scored by it; a label the config does not give is named before the job."""
    from serving.devserver import lifecycle
    from tests import serving_fixtures

    export = serving_fixtures.tiny_export(str(tmp_path / "tiny"))
    base = tmp_path / "models" / "tiny"
    for version in (2, 3):
        shutil.copytree(export, base / str(version))
    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "tiny" base_path: "{base}" model_platform: "tensorflow" '
        'model_version_policy { all {} } version_labels { key: "stable" value: 2 } } }\n'
    )
    with lifecycle.start_in_thread(
        "",
        "",
        model_config_file=str(config),
        run_warmup=False,
        allow_version_labels_for_unavailable_models=True,
    ) as running:
        result = predict_batch(
            str(folder[0]),
            str(tmp_path / "stable.jsonl"),
            target=running.target,
            model_name="tiny",
            model_version_label="stable",
        )
        assert result.source == {
            "target": running.target,
            "model_name": "tiny",
            "version": 2,
            "version_label": "stable",
        }
        assert result.scored == len(folder[1])
        with pytest.raises(
            ServerUnusable, match=r"does its model config give model 'tiny' the version label 'beta'"
        ):
            predict_batch(
                str(folder[0]),
                str(tmp_path / "beta.jsonl"),
                target=running.target,
                model_name="tiny",
                model_version_label="beta",
            )
    with pytest.raises(BatchError, match="--model-version-label is for --target"):
        predict_batch(
            str(folder[0]), str(tmp_path / "x.jsonl"), model_dir=str(base), model_version_label="stable"
        )


def test_a_model_base_path_resolves_to_the_newest_version_a_server_reads(tmp_path):
    """As TF Serving: `007` is version 7 (its folder kept as named); past int64 is no version."""
    from imgpipe.batch.job import resolve_model

    for name in ("3", "007", "99999999999999999999", "\u0669"):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    assert resolve_model(str(tmp_path)) == (str(tmp_path / "007"), 7)
    assert resolve_model(str(tmp_path / "007")) == (str(tmp_path / "007"), 7)
    assert resolve_model(str(tmp_path / "99999999999999999999")) == (
        str(tmp_path / "99999999999999999999"),
        None,
    )


def test_multiprocess_runner_gives_the_same_predictions(model, folder, jsonl_run, tmp_path, capfd):
    out = tmp_path / "mp.jsonl"
    beam = BeamConfig(beam_runner="multiprocess", beam_workers=2)
    result = predict_batch(str(folder[0]), str(out), model_dir=model.export_dir, batch_size=3, beam=beam)
    assert result.scored + len(result.skipped) == result.files == len(folder[1]) + len(folder[2])
    _assert_same(_by_path(read_predictions(str(out))), _by_path(read_predictions(str(jsonl_run[1]))))
    # The workers imported TensorFlow (they loaded the model) without its plugin-registration
    # errors on the stderr they share with this process (imgpipe/quiet_tensorflow.py).
    err = capfd.readouterr().err
    assert "Unable to register cu" not in err, err[-2000:]


def test_images_the_model_refuses_are_skipped_alone(model, tmp_path):
    """Ingest's check lets a 45 MP image through (--max-pixels 50M); the model's 40 MP limit refuses it."""
    images = tmp_path / "images"
    images.mkdir()
    for i, (data, _) in enumerate(model.items[:3]):
        (images / f"{i}.png").write_bytes(data)
    (images / "big.png").write_bytes(image_samples.black_png(7_500, 6_000))
    result = predict_batch(
        str(images),
        str(tmp_path / "o.jsonl"),
        model_dir=model.export_dir,
        batch_size=4,
        max_pixels=50_000_000,
    )
    assert result.scored == 3
    [refused] = result.skipped
    assert refused["path"].endswith("big.png")
    assert "the model refused it" in refused["reason"] and "45000000 pixels" in refused["reason"]


def test_listing_a_directory_or_a_glob(folder, tmp_path):
    root, good, bad = folder
    everything = sorted([*good, *bad])
    assert list_images(str(root)) == everything  # recursive, hidden entries left out
    assert list_images(str(root / "**" / "*.png")) == sorted(p for p in everything if p.endswith(".png"))
    assert list_images(str(root / "su*")) == sorted(p for p in everything if "/sub/" in p)
    with pytest.raises(NoInputs, match="holds no files"):
        list_images(str(tmp_path))
    # A glob matching an empty folder beside others lists the others; matching only it, nothing.
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "1.png").write_bytes(b"x")
    (tree / "zz_empty").mkdir()
    (tree / "zz_hidden_only").mkdir()
    (tree / "zz_hidden_only" / ".DS_Store").write_bytes(b"x")
    assert list_images(str(tree / "*")) == [str(tree / "a" / "1.png")]
    with pytest.raises(NoInputs, match="the matching directories hold no files"):
        list_images(str(tree / "zz_*"))
    # A folder of hidden files only: it holds files, which are left out, and says so.
    with pytest.raises(NoInputs, match="holds no files but hidden ones \\(names starting with '.'\\)"):
        list_images(str(tree / "zz_hidden_only"))


def test_a_jsonl_path_with_a_unicode_line_separator_reads_back(tmp_path):
    """json_line writes U+2028 raw in a path; the reader splits on newlines only."""
    from imgpipe.batch.outputs import ScoredImage, json_line

    scored = [
        ScoredImage(p, ["cat", "dog"], [0.75, 0.25], "m") for p in ("a\u2028b.png", "c\x85d.png", "e.png")
    ]
    out = tmp_path / "p.jsonl"
    out.write_text("".join(json_line(s) + "\n" for s in scored), encoding="utf-8")
    assert read_predictions(str(out)) == [s.to_dict() for s in scored]


def test_a_file_name_that_is_not_utf8_is_scored_like_any_other(model, tmp_path):
    """One such name used to fail the whole job in Beam's text coder."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    image = image_samples.png(image_samples.asymmetric_image())
    (folder / "ok.png").write_bytes(image)
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.png"), "wb") as f:  # Latin-1, not UTF-8
        f.write(image)
    out = tmp_path / "scores.jsonl"
    result = predict_batch(str(folder), str(out), model_dir=model.export_dir, progress=False)
    assert (result.files, result.scored, result.skipped) == (2, 2, [])
    rows = read_predictions(str(out))
    assert sorted(os.path.basename(r["path"]) for r in rows) == ["caf\\xe9.png", "ok.png"]  # shown escaped
    assert rows[0]["classes"] == rows[1]["classes"]


def test_two_names_never_print_as_one_path(model, tmp_path):
    """A Latin-1 name and a name holding its escape as text: two files, two paths in the output.

    Both used to print as ``bad\\udcff.png``: the CSV's rows of the two merged into one image,
    and the job failed on its own count ("1 unaccounted for").
    """
    folder = tmp_path / "imgs"
    folder.mkdir()
    image = image_samples.png(image_samples.asymmetric_image())
    with open(os.path.join(os.fsencode(folder), b"bad\xff.png"), "wb") as f:
        f.write(image)
    (folder / "bad\\xff.png").write_bytes(image)  # the text of the other one's escape
    (folder / "bad\\udcff.png").write_bytes(image)  # the text the escape used to be
    out = tmp_path / "scores.csv"
    result = predict_batch(str(folder), str(out), model_dir=model.export_dir, progress=False)
    assert (result.files, result.scored, result.skipped) == (3, 3, [])
    shown = sorted(os.path.basename(r["path"]) for r in read_predictions(str(out)))
    assert shown == ["bad\\\\udcff.png", "bad\\\\xff.png", "bad\\xff.png"]


def test_a_link_loop_lists_each_file_once(tmp_path):
    (tmp_path / "imgs" / "loop").mkdir(parents=True)
    (tmp_path / "imgs" / "a.png").write_bytes(b"x")
    (tmp_path / "imgs" / "loop" / "self").symlink_to(tmp_path / "imgs")
    (tmp_path / "imgs" / "again").symlink_to(tmp_path / "imgs" / "loop")
    assert list_images(str(tmp_path / "imgs")) == [str(tmp_path / "imgs" / "a.png")]


def test_a_glob_without_links_lists_what_python_s_glob_lists(tmp_path, monkeypatch):
    """The loop-safe `**` (inputs._glob) against glob.glob on a tree with no links: the same paths,
    relative and absolute, with `**` first, in the middle, last, and beside other wildcards."""
    import glob

    from imgpipe.batch import inputs

    for path in (
        "x/y/z.png",
        "x/y/w.jpg",
        "x/top.png",
        "q/x/deep.png",
        "top.png",
        "x/.hidden/h.png",
        ".h.png",
    ):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    patterns = [
        "**",
        "**/*.png",
        "x/**",
        "x/**/*.png",
        "*/**/z.png",
        "**/x",
        "**/x/**",
        "x/y/**/*.jpg",
        "x/**/y",
    ]
    for pattern in patterns + [str(tmp_path / p) for p in patterns]:
        # Python's glob ends a folder that a last `**` matched as no folder with a separator
        # ("q/x/" for **/x/**): the same folder, and the same files once walked.
        ours = sorted(p.rstrip("/") for p in inputs._glob(pattern))
        assert ours == sorted(p.rstrip("/") for p in glob.glob(pattern, recursive=True)), pattern


@pytest.mark.parametrize("pattern", ["imgs/**/*.png", "imgs/**", "imgs/*/*.png", "imgs/**/b.png"])
def test_a_link_loop_under_a_glob_lists_each_file_once(tmp_path, pattern):
    """`**` follows directory links: a loop, or a second link to a folder, must not list a file
    again under a longer path (as a directory's walk does not); a folder reached only through
    a link is still listed."""
    imgs, outside = tmp_path / "imgs", tmp_path / "outside"
    (imgs / "loop").mkdir(parents=True)
    outside.mkdir()
    (imgs / "a.png").write_bytes(b"x")
    (imgs / "loop" / "b.png").write_bytes(b"x")
    (outside / "c.png").write_bytes(b"x")
    (imgs / "loop" / "up").symlink_to(imgs)  # the loop
    (imgs / "again").symlink_to(imgs / "loop")  # a second path to loop/
    (imgs / "linked").symlink_to(outside)  # a folder only a link reaches
    # loop/ and again/ are one real folder: its file is listed once, under one of the two paths
    # (the first a walk in name order meets under `**`, the shorter under a plain glob).
    want = {
        "imgs/**/*.png": ["imgs/a.png", "imgs/again/b.png", "imgs/linked/c.png"],
        "imgs/**": ["imgs/a.png", "imgs/again/b.png", "imgs/linked/c.png"],
        "imgs/*/*.png": ["imgs/linked/c.png", "imgs/loop/b.png"],
        "imgs/**/b.png": ["imgs/again/b.png"],
    }[pattern]
    assert list_images(str(tmp_path / pattern)) == [str(tmp_path / w) for w in want]


def test_a_trailing_globstar_walks_each_folder_once(tmp_path, monkeypatch):
    """`DIR/**` matches every folder below DIR: each is listed once and read by one walk, not
    once more per folder above it."""
    from imgpipe.batch import inputs

    deep = tmp_path / "imgs"
    for level in range(6):
        deep = deep / f"d{level}"
        deep.mkdir(parents=True)
        (deep / f"{level}.png").write_bytes(b"x")
    listed: list[str] = []
    walk = os.walk

    def counting_walk(top, *args, **kwargs):
        for entry in walk(top, *args, **kwargs):
            listed.append(os.path.realpath(entry[0]))
            yield entry

    monkeypatch.setattr(inputs.os, "walk", counting_walk)
    found = list_images(str(tmp_path / "imgs" / "**"))
    # One walk to match the pattern, one to list the files: each folder read twice, not up to 7 times.
    assert max(listed.count(folder) for folder in set(listed)) == 2, sorted(listed)
    assert len(found) == 6 and found == list_images(str(tmp_path / "imgs"))  # the folder's own files


def test_a_line_break_in_a_path_stays_one_csv_field(tmp_path):
    from imgpipe.batch.outputs import CSV_HEADER, ScoredImage, csv_rows

    scored = ScoredImage('odd\nname, "q".png', ["cat", "dog"], [0.75, 0.25], "m")
    out = tmp_path / "p.csv"
    out.write_text(CSV_HEADER + "\n" + "\n".join(csv_rows(scored)) + "\n")
    assert read_predictions(str(out)) == [scored.to_dict()]


def test_a_csv_cell_a_spreadsheet_would_run_as_a_formula_is_written_as_text(tmp_path):
    """A file or class named '=2+5+cmd|calc!A0' or '@SUM(1+1)': a ' before it in the CSV (what
    spreadsheets take as "text"), as OWASP advises; JSON Lines keep the names as they are."""
    from imgpipe.batch.outputs import ScoredImage, csv_rows, json_line

    scored = ScoredImage("=2+5+cmd|calc!A0.png", ["@SUM(1+1)", "-x", "cat"], [0.5, 0.3, 0.2], "m")
    rows = csv_rows(scored)
    assert rows == [
        "'=2+5+cmd|calc!A0.png,1,'@SUM(1+1),0.5",
        "'=2+5+cmd|calc!A0.png,2,'-x,0.3",
        "'=2+5+cmd|calc!A0.png,3,cat,0.2",
    ]
    assert json.loads(json_line(scored))["path"] == "=2+5+cmd|calc!A0.png"
    # Numbers are numbers to a spreadsheet, not formulas: binary labels -1 and +1 stay as they are.
    assert csv_rows(ScoredImage("a.png", ["-1", "+1"], [0.6, 0.4], "m")) == [
        "a.png,1,-1,0.6",
        "a.png,2,+1,0.4",
    ]


def test_bad_arguments_name_the_flag(model, folder, tmp_path):
    with pytest.raises(BatchError, match="unknown output extension '.txt'"):
        predict_batch(str(folder[0]), str(tmp_path / "o.txt"), model_dir=model.export_dir)
    with pytest.raises(BatchError, match="no file matches"):
        predict_batch(str(tmp_path / "nothing*"), str(tmp_path / "o.csv"), model_dir=model.export_dir)
    with pytest.raises(BatchError, match="exactly one of --model"):
        predict_batch(str(folder[0]), str(tmp_path / "o.csv"))
    with pytest.raises(BatchError, match="--target needs --model-name"):
        predict_batch(str(folder[0]), str(tmp_path / "o.csv"), target="localhost:1")
    with pytest.raises(BatchError, match="neither a SavedModel"):
        predict_batch(str(folder[0]), str(tmp_path / "o.csv"), model_dir=str(tmp_path))
    # --out a directory: Beam's writer would delete it; it is refused and left as it was.
    (tmp_path / "precious.csv" / "sub").mkdir(parents=True)
    (tmp_path / "precious.csv" / "sub" / "notes.txt").write_text("mine")
    with pytest.raises(BatchError, match="precious.csv is a directory"):
        predict_batch(str(folder[0]), str(tmp_path / "precious.csv"), model_dir=model.export_dir)
    assert (tmp_path / "precious.csv" / "sub" / "notes.txt").read_text() == "mine"
    with pytest.raises(BatchError, match="does not exist"):
        predict_batch(str(folder[0]), str(tmp_path / "no" / "o.csv"), model_dir=model.export_dir)
    with pytest.raises(BatchError, match="cannot write in /proc"):
        predict_batch(str(folder[0]), "/proc/o.csv", model_dir=model.export_dir)


def test_an_existing_directory_for_out_is_named_a_directory_whatever_its_name(tmp_path, capsys):
    """`--out outdir` (no extension) was refused as "unknown output extension '(none)'"."""
    (tmp_path / "outdir").mkdir()
    (tmp_path / "images").mkdir()
    argv = ["predict-batch", "--model", str(tmp_path / "m"), "--images", str(tmp_path / "images")]
    assert main([*argv, "--out", str(tmp_path / "outdir")]) == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'outdir'} is a directory: give the output file's path" in err, err
    assert os.listdir(tmp_path / "outdir") == []
    # --model a file: named a file, not "no such directory"
    (tmp_path / "model.h5").write_bytes(b"x")
    (tmp_path / "images" / "a.png").write_bytes(image_samples.png(image_samples.asymmetric_image()))
    argv = ["predict-batch", "--model", str(tmp_path / "model.h5"), "--images", str(tmp_path / "images")]
    assert main([*argv, "--out", str(tmp_path / "o.jsonl")]) == 2
    assert f"--model {tmp_path / 'model.h5'}: a file, not a directory" in capsys.readouterr().err


def test_cli(model, folder, tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    args = [
        "predict-batch",
        "--model",
        model.export_dir,
        "--images",
        str(folder[0] / "sub"),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["files"] == 4 and result["scored"] == 3 and result["num_skipped"] == 1
    assert main([*args[:-1], str(tmp_path / "o.png")]) == 2
    assert "unknown output extension" in capsys.readouterr().err
    assert main([*args, "--beam-runner", "nope"]) == 2
    assert "beam_runner" in capsys.readouterr().err
    # The server is down: the job fails (exit 1) and says why.
    down = ["predict-batch", "--target", "127.0.0.1:1", "--model-name", NAME, "--timeout", "1"]
    assert main([*down, "--images", str(folder[0] / "sub"), "--out", str(out)]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_a_second_job_writing_the_same_out_is_refused(model, folder, tmp_path, capsys):
    """Two jobs on one OUT (overlapping cron runs) would replace each other's output and report:
    the second exits 75 (as a run refused by its lock), naming OUT, and touches nothing."""
    from imgpipe.batch import job

    out = tmp_path / "shared.jsonl"
    out.write_text("earlier results\n")
    argv = ["predict-batch", "--model", model.export_dir, "--images", str(folder[0] / "sub"), "--out"]
    with job._only_job_writing(str(tmp_path / "." / "shared.jsonl")):  # the same file, spelt otherwise
        assert os.path.exists(job.lock_path(str(out)))
        assert main([*argv, str(out)]) == 75
        captured = capsys.readouterr()
        assert captured.out == "" and f"not starting a second job writing {out}" in captured.err, captured.err
        assert main([*argv, str(tmp_path / "other.jsonl")]) == 0  # another OUT is not held
    assert out.read_text() == "earlier results\n"
    assert sorted(os.listdir(tmp_path)) == ["other.jsonl", "other.jsonl.report.json", "shared.jsonl"]
    assert main([*argv, str(out)]) == 0  # free again once the first job ended
    assert not os.path.exists(job.lock_path(str(out)))  # its lock file is not left in the temporary folder


def test_the_output_and_its_report_are_not_read_as_images(model, tmp_path, capsys):
    """OUT inside the folder scored: a re-run listed the last run's OUT and report as inputs
    (two files skipped, counted). OUT named as the images: it was skipped, and then replaced
    by an empty output (nothing scored)."""
    images = tmp_path / "images"
    images.mkdir()
    image = image_samples.png(image_samples.asymmetric_image())
    (images / "a.png").write_bytes(image)
    (images / "b.png").write_bytes(image)
    out = images / "scores.jsonl"
    for _ in range(2):
        result = predict_batch(str(images), str(out), model_dir=model.export_dir, progress=False)
        assert (result.files, result.scored, result.skipped) == (2, 2, [])
    results = out.read_bytes()
    argv = ["predict-batch", "--model", model.export_dir, "--images", str(out), "--out", str(out)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "no files but the output --out" in captured.err, captured.err
    assert out.read_bytes() == results


def test_progress_bar_counts_what_workers_report():
    assert render(5, 20, 2.0) == "[#######.......................] 5/20 files (25%, 2.5/s)"
    stream = io.StringIO()
    with ProgressBar(4, stream=stream, enabled=True) as bar:
        for n in (1, 2):
            Path(bar.directory, f"worker-{n}").write_text(f"{n}\n")
    last = stream.getvalue().rstrip("\n").split("\r")[-1]  # redraws overwrite one line
    assert last.startswith("[######################........] 3/4 files (75%, ")
    assert not os.path.exists(bar.directory)
    quiet = io.StringIO()
    with ProgressBar(4, stream=quiet) as bar:  # not a terminal: nothing drawn, no directory
        assert bar.directory is None
    assert quiet.getvalue() == ""


# ---------------------------------------------------------------------------------------
# The pipeline's BulkInferrer step (the run itself: tests/e2e)


def test_score_data_adds_bulk_inferrer_after_the_gate(tmp_path):
    from google.protobuf import json_format
    from tfx.proto import bulk_inferrer_pb2, example_gen_pb2

    from pipeline.config import ConfigError, PipelineConfig
    from pipeline.pipeline import COMPONENT_IDS, SCORE_SPLIT, SCORING_IDS, create_pipeline

    plain = PipelineConfig(data_dir="/data", weights="none")
    assert {c.id for c in create_pipeline(plain).components} == set(COMPONENT_IDS)
    scored = create_pipeline(plain.replace(score_data="/unlabelled")).components
    assert {c.id for c in scored} == set(COMPONENT_IDS) | set(SCORING_IDS)
    inferrer = next(c for c in scored if c.id == "BulkInferrer")
    assert inferrer.inputs["model_blessing"].producer_component_id == "Evaluator"
    assert inferrer.inputs["model"].producer_component_id == "Trainer"
    assert inferrer.inputs["examples"].producer_component_id == "ScoreExampleGen"
    # Every example in the one split BulkInferrer reads (one input split is hashed 2:1 by default).
    gen = next(c for c in scored if c.id == "ScoreExampleGen")
    output = json_format.Parse(gen.exec_properties["output_config"], example_gen_pb2.Output())
    assert [(s.name, s.hash_buckets) for s in output.split_config.splits] == [(SCORE_SPLIT, 1)]
    data_spec = json_format.Parse(inferrer.exec_properties["data_spec"], bulk_inferrer_pb2.DataSpec())
    assert list(data_spec.example_splits) == [SCORE_SPLIT]

    records = tmp_path / "records"
    for split in ("train", "eval"):
        (records / split).mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    config = PipelineConfig(data_dir=str(records), weights="none", score_data=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="score_data: .* is not a directory holding TFRecord files"):
        config.validate_paths()
    (tmp_path / "empty" / "data.tfrecord").write_bytes(b"")
    assert config.validate_paths() is config


def test_a_failed_job_leaves_the_earlier_output_and_report_and_no_scratch(folder, tmp_path, monkeypatch):
    """The server is gone: the job fails, OUT and OUT.report.json of the run before stay as they
    were (not a new OUT beside an old report), and no Beam temp folder or partial file is left."""
    root, _, _ = folder
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    out = out_dir / "scores.csv"
    out.write_text("earlier output\n")
    report = out_dir / "scores.csv.report.json"
    report.write_text('{"scored": 3}\n')
    # The server is checked before the job; this one goes away after that check.
    monkeypatch.setattr(batch_job, "check_server", lambda *args: None)
    with pytest.raises(Exception, match="UNAVAILABLE|failed to connect|Connection refused"):  # noqa: B017
        predict_batch(
            str(root), str(out), target="127.0.0.1:1", model_name="digits", timeout=1, progress=False
        )
    assert out.read_text() == "earlier output\n" and report.read_text() == '{"scored": 3}\n'
    assert sorted(p.name for p in out_dir.iterdir()) == ["scores.csv", "scores.csv.report.json"]


def test_the_server_and_model_are_checked_before_any_image_is_read(model, tmp_path):
    """A wrong --model-name or no server: one clear error at once, not a traceback from the
    job's scoring step after every file was read."""
    from serving.devserver import lifecycle

    images = tmp_path / "images"
    images.mkdir()
    os.mkfifo(images / "would-block.png")  # reading it would hang: the check must come first
    base = tmp_path / "models" / NAME
    shutil.copytree(model.export_dir, base / "1")
    with lifecycle.start_in_thread(str(base), NAME) as running:
        with pytest.raises(ServerUnusable, match=r"does it serve a model named 'nosuch' \(--model-name\)"):
            predict_batch(str(images), str(tmp_path / "o.jsonl"), target=running.target, model_name="nosuch")
    with pytest.raises(ServerUnusable, match="is the model server running and listening at 127.0.0.1:1"):
        predict_batch(
            str(images), str(tmp_path / "o.jsonl"), target="127.0.0.1:1", model_name=NAME, timeout=1
        )
    assert not (tmp_path / "o.jsonl").exists()


def test_large_images_go_in_smaller_requests_and_one_too_large_for_any_is_skipped(
    model, folder, tmp_path, monkeypatch
):
    """A batch of large photos over the gRPC message limit failed the whole job: requests are
    cut by bytes too, and an image no request can carry is skipped with why (the limit is made
    small here, so the test's images play the large photos)."""
    from serving.devserver import lifecycle

    root, good, _ = folder
    sizes = sorted(len(data) for data in good.values())
    budget = sizes[-1] - 1  # the largest image alone is over it; any two others are too
    monkeypatch.setattr(request_size, "image_budget", lambda limit_mb: budget)
    base = tmp_path / "models" / NAME
    shutil.copytree(model.export_dir, base / "1")
    calls = []
    with lifecycle.start_in_thread(str(base), NAME) as running:
        from serving.client import ServingClient

        predict = ServingClient.predict_images

        def counted(self, name, images, *args, **kwargs):
            calls.append(sum(map(len, images)))
            return predict(self, name, images, *args, **kwargs)

        monkeypatch.setattr(ServingClient, "predict_images", counted)
        result = predict_batch(
            str(root), str(tmp_path / "o.jsonl"), target=running.target, model_name=NAME, batch_size=32
        )
    [largest] = [p for p, data in good.items() if len(data) == sizes[-1]]
    too_large = [
        s for s in result.skipped if "larger than one request to a model server can carry" in s["reason"]
    ]
    assert [s["path"] for s in too_large] == [largest]
    assert result.scored == len(good) - 1 and calls and max(calls) <= budget
    assert len(calls) >= (sum(sizes[:-1]) + budget - 1) // budget


def test_a_server_with_a_smaller_message_limit_gets_smaller_requests(model, tmp_path, capsys):
    """A server (or proxy) whose receive limit is under the client's 64 MB refused the first
    request over it (RESOURCE_EXHAUSTED "Received message larger than max"), and that failed
    the whole `predict-batch` job and stopped `predict`: both now send smaller requests, and
    skip only an image over the server's limit, naming it."""
    from serving.devserver import lifecycle

    rng = np.random.default_rng(5)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):  # noise compresses badly: ~0.3 MB each, so all four are over 1 MB together
        (images / f"mid{i}.png").write_bytes(image_samples.png(rng.integers(0, 256, (330, 330, 3), np.uint8)))
    (images / "big.png").write_bytes(image_samples.png(rng.integers(0, 256, (700, 700, 3), np.uint8)))
    assert (images / "big.png").stat().st_size > 1024 * 1024
    base = tmp_path / "models" / NAME
    shutil.copytree(model.export_dir, base / "1")
    with lifecycle.start_in_thread(str(base), NAME, max_message_mb=1) as running:
        result = predict_batch(str(images), str(tmp_path / "o.jsonl"), target=running.target, model_name=NAME)
        assert result.scored == 4, result.skipped
        [skip] = result.skipped
        assert skip["path"] == str(images / "big.png")
        assert (
            "larger than one request to a model server can carry (this server accepts 1.0 MB"
            in skip["reason"]
        )

        paths = sorted(str(p) for p in images.iterdir())
        assert main(["predict", "--target", running.target, "--model", NAME, *paths]) == 1  # one failed
        captured = capsys.readouterr()
        assert sorted(json.loads(line)["image"] for line in captured.out.splitlines()) == [
            p for p in paths if not p.endswith("big.png")
        ]
        assert f"{images / 'big.png'}: 1." in captured.err and "this server accepts 1.0 MB" in captured.err, (
            captured.err
        )
        assert "1 of 5 images failed" in captured.err


def test_no_image_scored_fails_the_command_and_json_output_is_refused(model, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"not an image")
    (images / "b.png").write_bytes(b"")
    args = [
        "predict-batch",
        "--model",
        model.export_dir,
        "--images",
        str(images),
        "--out",
        str(tmp_path / "o.jsonl"),
    ]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["scored"] == 0 and json.loads(captured.out)["num_skipped"] == 2
    assert "no image was scored: all 2 files were skipped" in captured.err
    # One JSON document is not what .json names; the choice is said.
    assert main([*args[:-1], str(tmp_path / "o.json")]) == 2
    assert "the output is JSON Lines" in capsys.readouterr().err


def test_a_report_path_that_is_a_directory_is_refused_before_the_output_is_replaced(model, folder, tmp_path):
    out = tmp_path / "scores.jsonl"
    out.write_text("earlier\n")
    (tmp_path / "scores.jsonl.report.json").mkdir()
    with pytest.raises(BatchError, match="scores.jsonl.report.json is a directory"):
        predict_batch(str(folder[0]), str(out), model_dir=model.export_dir)
    assert out.read_text() == "earlier\n"


def test_request_parts_keep_order_and_both_limits():
    from serving.request_size import request_parts, server_receive_limit

    # Only a refusal for size names a limit; too many requests at once is not about size.
    text = "SERVER: Received message larger than max (2782751 vs. 1048576)"
    assert server_receive_limit("RESOURCE_EXHAUSTED", text) == 1048576
    assert server_receive_limit("RESOURCE_EXHAUSTED", "too many concurrent requests") is None
    assert server_receive_limit("INVALID_ARGUMENT", text) is None

    items = [
        (name, b"x" * size) for name, size in [("a", 4), ("b", 4), ("c", 11), ("d", 3), ("e", 3), ("f", 3)]
    ]
    parts = [([k for k, _ in part], too_large) for part, too_large in request_parts(items, 2, 10)]
    assert parts == [(["a", "b"], False), (["c"], True), (["d", "e"], False), (["f"], False)]
    assert [[k for k, _ in p] for p, _ in request_parts(items[3:], None, 10)] == [["d", "e", "f"]]


def test_a_budget_learnt_from_one_request_applies_to_every_request_after_it():
    """A server's limit learnt from the answer to one part holds for the parts after it (they were
    sent at the old size, each refused before it was split), by bytes and by images."""
    from serving.request_size import RequestBudget

    budget = RequestBudget()
    items = [(str(i), b"x" * 10) for i in range(10)]
    sizes = []
    for part, too_large in budget.parts(items, wanted=4):
        assert not too_large
        sizes.append(len(part))
        if len(sizes) == 1:  # refused as over a server's batch size of 3
            assert budget.refused(
                "INVALID_ARGUMENT", "Task size 4 is larger than maximum input batch size 3", [10] * 4
            )
    assert sizes == [4, 3, 3]
    sizes = []
    budget = RequestBudget()
    budget.bytes = 50  # (image bytes a request may carry, small to keep the numbers small)
    for part, _ in budget.parts(items):
        sizes.append(len(part))
        budget.bytes = 20  # a server's smaller limit, learnt from the first part's answer
    assert sizes == [5, 2, 2, 1]


@pytest.mark.parametrize("runner", ["direct", "multiprocess"])
@pytest.mark.parametrize(
    "damage,message",
    [
        ("no variables yet", r"cannot be loaded \(is the version complete"),
        ("a data shard missing", r"cannot be loaded \(is the version complete"),
        ("a data shard cut short", r"cannot be loaded \(is the version complete.*Read less bytes"),
        ("a data shard with other bytes in it", r"cannot be loaded \(is the version complete.*[Cc]hecksum"),
        ("saved_model.pb not a SavedModel", r"cannot be loaded \(is the version complete"),
        ("no predict_images", r"has no predict_images signature: give a model imgpipe exported"),
    ],
)
def test_a_version_that_cannot_be_loaded_is_named_before_the_job(
    model, folder, tmp_path, monkeypatch, runner, damage, message
):
    """The newest version damaged (still being copied, a file lost, not imgpipe's): one message
    naming the model before the job starts, not the loader's text from inside its scoring step.
    The direct runner loads the model to check it (its scorer keeps that load); the others'
    workers load it themselves, so its files are checked instead (nothing is loaded here)."""
    base = tmp_path / "models" / NAME
    serving_fixtures.damaged_copy(model.export_dir, base / "7", damage)
    loads = []
    if runner != "direct":
        real = batch_job.load_signature
        monkeypatch.setattr(batch_job, "load_signature", lambda *a: loads.append(a) or real(*a))
    beam = BeamConfig(beam_runner=runner, beam_workers=2)
    with pytest.raises(BatchError, match=r"--model .*/7 " + message):
        predict_batch(str(folder[0]), str(tmp_path / "o.jsonl"), model_dir=str(base), beam=beam)
    assert not (tmp_path / "o.jsonl").exists()
    assert loads == []


def test_a_killed_jobs_working_folder_is_removed_by_the_next_job(model, folder, tmp_path, capsys):
    """A job killed with SIGKILL left its list of files and Beam's (not hidden) temporary folders
    beside OUT, and no later job removed them. Its files are now in one hidden folder named for
    host and pid, which the next job on OUT removes once its process is gone."""
    import subprocess
    import sys

    from imgpipe.batch import job
    from trainer import liveness

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    prefix = job.JOB_FOLDER_PREFIX.format("out.jsonl")
    killed = tmp_path / f"{prefix}{liveness.HOST}-{dead.stdout.strip()}-abc"
    running = (
        tmp_path / f"{prefix}{liveness.HOST}-{os.getpid()}-def"
    )  # a live process's (not this OUT's lock)
    elsewhere = tmp_path / f"{prefix}otherhost-12-fff"  # another host's, recent
    for d in (killed, running, elsewhere):
        os.makedirs(d / "beam-temp-partial.jsonl-1234")
        (d / "inputs.jsonl").write_text('"a.png"\n')
    argv = ["predict-batch", "--model", model.export_dir, "--images", str(folder[0] / "sub")]
    assert main([*argv, "--out", str(tmp_path / "out.jsonl")]) == 0
    assert "the working folder of a job on out.jsonl that did not finish" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["out.jsonl", "out.jsonl.report.json", running.name, elsewhere.name]
    )  # the killed job's folder gone, this job's own removed, nothing else beside OUT


def test_a_failure_inside_the_job_is_named_as_its_own_exception():
    """Beam wraps a step's exception in a RuntimeError; the message names the step's own
    exception, whatever its name (VersionGone kept Beam's wrapping before)."""
    from imgpipe.cli.batch import _why

    wrapped = RuntimeError(
        "imgpipe.batch.scoring.VersionGone: version 7 of model 'digits' is no longer served at 127.0.0.1:1; "
        "run it again [while running 'Score/ParDo(ScoreWithServer)']"
    )
    assert _why(wrapped) == (
        "VersionGone: version 7 of model 'digits' is no longer served at 127.0.0.1:1; run it again (in the "
        "job's step Score/ParDo(ScoreWithServer))"
    )
    assert (
        _why(RuntimeError("ValueError: bad [while running 'Read']"))
        == "ValueError: bad (in the job's step Read)"
    )
    assert _why(OSError("disk full")) == "OSError: disk full"
