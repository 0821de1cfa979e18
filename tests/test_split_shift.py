"""components/split_shift.py: eval images unlike the train images, said by the data gate."""

from __future__ import annotations

import functools
import io
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from components import split_shift
from tests.helpers import make_example


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return (d.images * 16).clip(0, 255).astype(np.uint8), d.target


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((32, 32), Image.BILINEAR).save(buffer, format="PNG")
    return buffer.getvalue()


def _records(indices, change=lambda p: p, fmt="PNG") -> list[bytes]:
    images, labels = _digits()
    out = []
    for i in indices:
        pixels = change(images[i])
        if fmt == "PNG":
            data = _png(pixels)
        else:
            buffer = io.BytesIO()
            Image.fromarray(pixels).resize((32, 32)).convert("RGB").save(buffer, format=fmt, quality=90)
            data = buffer.getvalue()
        out.append(make_example(data, str(labels[i])))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_a_random_split_of_one_set_of_pictures_is_not_called_shifted(seed):
    order = np.random.default_rng(seed).permutation(1797)
    shift, warning = split_shift.split_shift(_records(order[:600]), _records(order[600:750]))
    assert shift == {} and warning is None


@pytest.mark.parametrize(
    ("change", "feature"),
    [
        (lambda p: (p * 0.35).astype(np.uint8), "brightness"),  # a darker eval set
        (lambda p: 255 - p, "brightness"),  # inverted
        (lambda p: (p // 4 + 96).astype(np.uint8), "contrast"),  # washed out
    ],
)
def test_eval_images_unlike_the_train_images_are_named_with_both_medians(change, feature):
    order = np.random.default_rng(0).permutation(1797)
    shift, warning = split_shift.split_shift(_records(order[:600]), _records(order[600:750], change))
    assert feature in shift
    assert warning.startswith(split_shift.SHIFT_WARNING)
    assert f"{feature} (median {shift[feature]['train_median']:g} in train" in warning
    assert "in a sample of 300 train and 150 eval images" in warning


def test_another_format_or_size_is_named():
    order = np.random.default_rng(1).permutation(1797)
    shift, warning = split_shift.split_shift(_records(order[:300]), _records(order[300:400], fmt="JPEG"))
    assert "format" in shift and "format (train PNG 100%; eval JPEG 100%)" in warning


def test_too_few_images_to_judge():
    shift, warning = split_shift.split_shift(_records(range(100)), _records(range(100, 110)))
    assert shift is None and warning is None


def _examples(tmp_path, splits):
    """An ExampleGen's Examples artifact under tmp_path holding `splits` ({split: serialized
    records}), as ImportExampleGen writes it (GZIP TFRecords in Split-<name>/)."""
    import tensorflow as tf
    from tfx.types import standard_artifacts

    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    examples.split_names = json.dumps(list(splits))
    for name, records in splits.items():
        folder = tmp_path / "examples" / f"Split-{name}"
        folder.mkdir(parents=True)
        with tf.io.TFRecordWriter(str(folder / "data_tfrecord-00000-of-00001.gz"), "GZIP") as w:
            for record in records:
                w.write(record)
    return examples


def test_the_data_gate_reports_a_shifted_eval_split(tmp_path):
    """The gate's report carries the warning (the run's report shows it beside its numbers)."""

    from components.artifacts import read_report
    from components.data_gate import DataGateExecutor
    from tests.test_data_gate import _artifacts

    order = np.random.default_rng(2).permutation(1797)
    splits = {"train": _records(order[:200]), "eval": _records(order[200:260], lambda p: 255 - p)}
    examples = _examples(tmp_path, splits)
    targets = _digits()[1]

    def counts(chosen):
        classes, n = np.unique(targets[chosen], return_counts=True)
        return {str(c): int(k) for c, k in zip(classes, n, strict=True)}

    train_counts, eval_counts = counts(order[:200]), counts(order[200:260])
    inputs, outputs = _artifacts(tmp_path, train_counts, eval_counts)
    inputs["examples"] = [examples]
    DataGateExecutor().Do(inputs, outputs, {"allow_anomalies": 0})
    report = read_report(outputs["report"])
    [warning] = [w for w in report.warnings if w.startswith(split_shift.SHIFT_WARNING)]
    assert "brightness" in warning
    assert report.image_sizes == {"train": [32.0, 32.0], "eval": [32.0, 32.0]}  # the samples' medians


def _warnings_of(call) -> list[str]:
    """What `call()` logs on components.evaluator at WARNING, read by a handler of its own
    (whatever an earlier command in this process did to the loggers' propagation)."""
    import logging

    from components import evaluator

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    evaluator.log.addHandler(handler)
    try:
        call()
    finally:
        evaluator.log.removeHandler(handler)
    return [r.getMessage() for r in records]


def test_the_evaluators_note_on_classes_at_chance_names_pictures_shrunk_much():
    """128 px pictures whose class is in a 1-pixel pattern, shrunk to a 32 px input: at chance,
    and the note blamed the folders alone ("one concept under two names?")."""
    from components.evaluator import shrink_note, warn_classes_at_chance

    assert shrink_note([128.0, 128.0], 32) == (
        "the pictures (a median 128 x 128 px) are shrunk 4x to the model's 32 x 32 px input, which loses "
        "detail finer than 4 of their pixels (a larger --image-size keeps more of it); else "
    )
    assert (
        shrink_note([64.0, 90.0], 32) == ""
        and shrink_note(None, 32) == ""
        and shrink_note([500, 500], None) == ""
    )
    pair = {"classes": ["fine", "plain"], "right": 100, "between": 200, "images": {"fine": 100, "plain": 100}}
    [note] = _warnings_of(lambda: warn_classes_at_chance([pair], shrunk=shrink_note([128.0, 128.0], 32)))
    assert "shrunk 4x to the model's 32 x 32 px input" in note and note.index("shrunk") < note.index(
        "one concept"
    )


def test_the_evaluators_note_on_classes_at_chance_says_the_shift_first():
    from components.evaluator import warn_classes_at_chance

    pair = {"classes": ["5", "8"], "right": 12, "between": 27, "images": {"5": 14, "8": 13}}
    [shifted] = _warnings_of(lambda: warn_classes_at_chance([pair], eval_shifted=True))
    [plain] = _warnings_of(lambda: warn_classes_at_chance([pair]))
    assert (
        "the eval images differ from the train images (the data gate's warning), which alone can" in shifted
    )
    assert "differ from the train images" not in plain and "one concept under two names, or " in plain


def test_classes_in_other_proportions_are_not_a_shift():
    """A skewed train split (9 light pictures to 1 dark) and a balanced eval split of the same
    kinds of pictures: the brightness differs between the samples only by the class mix, so the
    train sample is drawn in eval's proportions first."""
    images, labels = _digits()
    order = np.random.default_rng(5).permutation(1797)
    light = [make_example(_png(255 - images[i]), "light") for i in order[:700]]
    dark = [make_example(_png(images[i]), "dark") for i in order[700:1400]]
    train, eval_ = light[:540] + dark[:60], light[600:660] + dark[600:660]
    assert split_shift.split_shift(train, eval_) == ({}, None)
    # The raw samples are apart in brightness: without the class mix, this would warn.
    from trainer.image_ids import record_image

    rows = [
        [split_shift.measure(record_image(r)[0]) for r in split_shift.sample(side)] for side in (train, eval_)
    ]
    assert "brightness" in split_shift.compare(*rows)


def test_records_it_cannot_read_are_left_out():
    import tensorflow as tf

    order = np.random.default_rng(6).permutation(1797)
    odd = [
        b"not a tf.Example at all",
        tf.train.Example(
            features=tf.train.Features(
                feature={"image": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}
            )
        ).SerializeToString(),
        make_example(_png(_digits()[0][0])[:40], "0"),  # a PNG cut short
        make_example(b"GIF89a" + b"\0" * 20, "0"),
    ]
    shift, warning = split_shift.split_shift(_records(order[:300]), odd * 5 + _records(order[300:360]))
    assert shift == {} and warning is None


def test_a_grey_eval_split_of_colour_pictures_is_named():
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(7)
    photos = load_sample_images().images

    def crops(n, grey):
        out = []
        for _ in range(n):
            photo = photos[rng.integers(2)]
            y, x = rng.integers(0, photo.shape[0] - 64), rng.integers(0, photo.shape[1] - 64)
            picture = Image.fromarray(photo[y : y + 64, x : x + 64])
            buffer = io.BytesIO()
            (picture.convert("L").convert("RGB") if grey else picture).save(buffer, format="PNG")
            out.append(make_example(buffer.getvalue(), "photo"))
        return out

    shift, warning = split_shift.split_shift(crops(200, False), crops(60, True))
    assert "colour" in shift and shift["colour"]["eval_median"] == 0
    assert split_shift.split_shift(crops(200, False), crops(60, False)) == ({}, None)


def test_a_few_images_in_another_format_by_chance_are_not_a_shift():
    """Formats mixed half and half, 80 train and 20 eval images: shares 0.3 apart happen by
    chance; the chi-squared test keeps them from reading as a shift."""
    rows = [{"format": f} for f in ["PNG"] * 40 + ["JPEG"] * 40]
    eval_rows = [{"format": f} for f in ["PNG"] * 16 + ["JPEG"] * 4]  # 0.8 against 0.5: 0.3 apart
    for side in (rows, eval_rows):
        for row in side:
            row.update(brightness=100.0, contrast=50.0, colour=10.0, width=32.0, height=32.0)
    assert split_shift.compare(rows, eval_rows) == {}
    many = [dict(r) for r in rows] * 4
    assert "format" in split_shift.compare(many, [dict(r) for r in eval_rows] * 4)


def test_images_of_one_colour_in_hand_made_records_are_warned_about():
    """`imgpipe ingest` refuses a picture of one colour; hand-made records may hold them. The
    data gate's sample counts them per split."""
    order = np.random.default_rng(8).permutation(1797)
    black = [make_example(_png(np.zeros((8, 8), np.uint8)), "0")] * 30
    notes: list[str] = []
    split_shift.split_shift(_records(order[:200]) + black, _records(order[200:260]), notes)
    [note] = notes
    assert note.startswith(
        "30 of the 230 sampled train images are one colour as decoded (about 13% of the split)"
    )
    clean: list[str] = []
    split_shift.split_shift(_records(order[:200]), _records(order[200:260]), clean)
    assert clean == []


def test_eval_pictures_moved_off_centre_are_a_shift():
    """Eval digits moved 4 px right and down in their 32 px canvas keep their brightness and
    contrast: the check said nothing, and a model refused at chance had no word of why. The
    subject's position now tells; a split drawn alike does not move it."""
    from PIL import Image

    images, labels = _digits()
    order = np.random.default_rng(11).permutation(1797)

    def record(i: int, moved: bool, turned: bool = False) -> bytes:
        big = np.asarray(Image.fromarray(images[i]).resize((24, 24), Image.BILINEAR))
        big = np.rot90(big, 2) if turned else big
        canvas = np.zeros((32, 32), np.uint8)
        at = 8 if moved else 4
        canvas[at : at + 24, at : at + 24] = big
        return make_example(_png(canvas), str(labels[i]))

    train = [record(i, False) for i in order[:240]]
    shift, note = split_shift.split_shift(train, [record(i, True) for i in order[240:320]])
    assert set(shift) == {"across", "down"}, shift
    assert note.startswith(split_shift.SHIFT_WARNING)
    assert (
        "subject's position across (-0.5 left edge, 0.5 right) (median 0.01 in train, 0.08 in eval)" in note
    )
    assert "subject's position down" in note and "brightness" not in note
    assert split_shift.split_shift(train, [record(i, False) for i in order[240:320]]) == ({}, None)
    # Turned 180 degrees, the subject's mean position moves a little (a digit's ink is not
    # centred): tightly clustered, the test parts them, but under MIN_MOVE it is no move.
    turned, _ = split_shift.split_shift(train, [record(i, False, turned=True) for i in order[240:320]])
    assert not {"across", "down"} & set(turned or {}), turned


def test_a_position_apart_by_less_than_a_twentieth_of_a_side_is_no_move():
    """Digits turned 180 degrees, or an eval split missing a class, put the subject's mean position
    0.02 of a side away: tightly clustered positions make that far apart for the test, but it is
    no move (it was said as one on audit data). From MIN_MOVE on it is."""
    rng = np.random.default_rng(4)
    base = dict(brightness=100.0, contrast=50.0, colour=0.0, width=32.0, height=32.0, format="PNG", down=0.0)

    def rows(centre: float, n: int) -> list[dict]:
        return [{**base, "across": float(x)} for x in rng.normal(centre, 0.005, n)]

    train = rows(0.0, 200)
    assert split_shift.compare(train, rows(0.02, 80)) == {}
    assert set(split_shift.compare(train, rows(split_shift.MIN_MOVE + 0.01, 80))) == {"across"}


def _encoded(pixels: np.ndarray, mode: str, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def test_pictures_are_measured_as_the_model_decodes_them():
    """Pillow's convert("RGB") drops an alpha band and clips 16-bit samples: an audit's drawings on
    transparent canvases measured all black and its 16-bit PNGs all white, and the gate told the
    user to remove 52 of 72 of them as one-colour pictures. The check now measures the decoder's
    pixels (trainer.preprocessing.decode_image: transparency on white, the high byte, EXIF
    orientation applied)."""
    import tensorflow as tf

    from trainer.preprocessing import decode_image

    images, _ = _digits()
    ink = np.asarray(Image.fromarray(images[0]).resize((32, 32), Image.BILINEAR))
    canvas = np.zeros((32, 32, 4), np.uint8)
    canvas[..., 3] = ink  # black strokes on a transparent canvas
    wide = (ink.astype(np.uint16) * 257).astype(np.uint16)
    corner = np.full((40, 24), 255, np.uint8)
    corner[:10, :6] = 0  # a dark subject at the top left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: the subject then sits at the top right
    cases = {
        "RGBA canvas": _encoded(canvas, "RGBA"),
        "16-bit grey": _encoded(wide, "I;16"),
        "EXIF-turned JPEG": _encoded(corner, "L", "JPEG", exif=exif, quality=95),
    }
    for name, data in cases.items():
        pixels = decode_image(tf.constant(data), split_shift.MEASURED_SIDE).numpy()
        rgb = np.asarray(
            Image.fromarray(pixels, "RGB").resize((split_shift.MEASURED_SIDE,) * 2, Image.BOX), np.float32
        )
        row = split_shift.measure(data)
        assert row["brightness"] == pytest.approx(float((rgb @ [0.299, 0.587, 0.114]).mean()), abs=0.5), name
        assert not row["flat"], name
    assert split_shift.measure(cases["RGBA canvas"])["brightness"] > 150  # ink on white, not on black
    turned = split_shift.measure(cases["EXIF-turned JPEG"])
    assert turned["across"] > 0.1 and turned["down"] < -0.1  # top right, as shown
    # Canvas drawings in both splits: no picture "of one colour", nothing to remove.
    notes: list[str] = []
    drawn = [
        make_example(_encoded(np.dstack([np.zeros((8, 8, 3), np.uint8), images[i]]), "RGBA"), "0")
        for i in range(90)
    ]
    split_shift.split_shift(drawn[:60], drawn[60:], notes)
    assert not [n for n in notes if "one colour" in n], notes


def test_the_data_gate_counts_a_clip_once_in_the_shift_check(tmp_path):
    """An audit's clip data (ingest's random split by clip) read a brightness "shift" (p = 7e-5)
    with each frame a sample, where by clip p = 0.45: the warning headed the report and the
    Evaluator's note on classes at chance blamed it. With ingest's sets of near-copies, each set
    is one sample; without the report, each frame is, as before."""

    from components.artifacts import read_report
    from components.data_gate import DataGateExecutor
    from tests.test_data_gate import _artifacts
    from trainer.features import image_fingerprint

    images, _ = _digits()
    rng = np.random.default_rng(5)
    frames, sets = {"train": [], "eval": []}, []
    # 60 train clips with brightness offsets spread over 0..80, 25 eval clips over 28..80: a
    # distance of about 0.35 between the splits, which 8 frames a clip make "significant".
    offsets = {"train": np.linspace(0, 80, 60), "eval": np.linspace(28, 80, 25)}
    for split, shifts in offsets.items():
        for i, shift in enumerate(shifts):
            base = images[(i * 7 + (0 if split == "train" else 3)) % 1797].astype(int) + int(shift)
            clip = []
            for _ in range(8):
                data = _png(np.clip(base + rng.integers(-1, 2, base.shape), 0, 255).astype(np.uint8))
                clip.append(data)
                frames[split].append(make_example(data, "0"))
            sets.append({"class": "0", "split": split, "files": [str(len(sets))] * 8,
                         "fingerprints": [f"{image_fingerprint(d):016x}" for d in clip]})  # fmt: skip
    examples = _examples(tmp_path, frames)
    report_path = tmp_path / "ingest_report.json"
    report_path.write_text(json.dumps({"near_copies": sets}))

    def shift_warnings(props):
        inputs, outputs = _artifacts(tmp_path / str(len(props)), {"0": 480}, {"0": 200})
        inputs["examples"] = [examples]
        DataGateExecutor().Do(inputs, outputs, {"allow_anomalies": 0, **props})
        return [w for w in read_report(outputs["report"]).warnings if w.startswith(split_shift.SHIFT_WARNING)]

    [by_frame] = shift_warnings({})  # no report: every frame a sample
    assert "brightness" in by_frame
    assert shift_warnings({"ingest_report": str(report_path)}) == []  # a clip a sample


def test_the_data_gate_counts_a_clip_as_one_picture_for_a_class_with_few(tmp_path):
    """A class of three 8-frame clips in train and one in eval is three and one pictures: the
    gate's numbers for it are weak evidence, said by the DataGate as ingest says it (it counted
    24 and 8 images, and the run said nothing)."""

    from components.artifacts import read_report
    from components.data_gate import DataGateExecutor
    from tests.test_data_gate import _artifacts
    from trainer.features import image_fingerprint

    images, _ = _digits()
    rng = np.random.default_rng(6)
    records, sets = {"train": [], "eval": []}, []
    counts = {"train": {"a": 0, "b": 0}, "eval": {"a": 0, "b": 0}}
    for label, clips in (("a", {"train": 3, "eval": 1}), ("b", {"train": 6, "eval": 6})):
        for split, n in clips.items():
            for _ in range(n):
                base = images[len(sets) * 11 % 1797].astype(int)
                clip = [
                    _png(np.clip(base + rng.integers(-1, 2, base.shape), 0, 255).astype(np.uint8))
                    for _ in range(8)
                ]
                records[split] += [make_example(d, label) for d in clip]
                counts[split][label] += 8
                sets.append({"class": label, "split": split, "files": ["f"] * 8,
                             "fingerprints": [f"{image_fingerprint(d):016x}" for d in clip]})  # fmt: skip
    examples = _examples(tmp_path, records)
    report_path = tmp_path / "ingest_report.json"
    report_path.write_text(json.dumps({"near_copies": sets}))

    def few(props):
        inputs, outputs = _artifacts(tmp_path / str(len(props)), counts["train"], counts["eval"])
        inputs["examples"] = [examples]
        DataGateExecutor().Do(inputs, outputs, {"allow_anomalies": 0, **props})
        return [w for w in read_report(outputs["report"]).warnings if "fewer than 5 images" in w]

    assert few({}) == []  # 24 and 8 frames: images enough
    [said] = few({"ingest_report": str(report_path)})
    assert "'a' (3 train, 1 eval)" in said and "'b'" not in said
