"""Drift: served images (from the dev server's request logs) against a run's training data.

Training data: the first 120 scikit-learn digits of each class 0-2 (the serving
fixture model was fitted on a subset of them). A fresh sample of the same
distribution (the remaining digits) must not be flagged; the same images
inverted or darkened must be. The run lookup goes through real run records
and an ML Metadata store laid out as TFX lays it out.
"""

from __future__ import annotations

import collections
import io
import json
import os
import shutil

import grpc
import numpy as np
import pytest
import tensorflow as tf
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from PIL import Image, ImageOps
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from imgpipe.cli import main as cli
from imgpipe.cli.output import EXIT_DRIFT, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from imgpipe.demo.data import digit_images
from imgpipe.drift import sources
from imgpipe.drift.detect import TooFewImages, compare_tables
from imgpipe.drift.features import FeatureTable, ImageFeatureError, image_features, reservoir_sample
from pipeline.config import PipelineConfig
from serving.devserver import lifecycle, request_log
from tests import image_bombs, serving_fixtures
from tests.helpers import make_example

NAME = serving_fixtures.MODEL_NAME
TRAIN_PER_CLASS = 120


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _map_png(data: bytes, fn) -> bytes:
    buf = io.BytesIO()
    fn(Image.open(io.BytesIO(data))).save(buf, format="PNG")
    return buf.getvalue()


def _invert(data: bytes) -> bytes:
    return _map_png(data, ImageOps.invert)


def _darken(data: bytes) -> bytes:
    return _map_png(data, lambda im: im.point(lambda v: int(v * 0.4)))


@pytest.fixture(scope="module")
def digits() -> dict[str, list[tuple[bytes, str]]]:
    """{'train': the first 120 of each digit 0-2, 'fresh': the rest (about 58 each)}."""
    by_class: dict[str, list[bytes]] = {}
    for image, label in digit_images((0, 1, 2), per_class=200, size=serving_fixtures.IMAGE_SIZE):
        by_class.setdefault(label, []).append(image)
    return {
        "train": [(img, label) for label, imgs in by_class.items() for img in imgs[:TRAIN_PER_CLASS]],
        "fresh": [(img, label) for label, imgs in by_class.items() for img in imgs[TRAIN_PER_CLASS:]],
    }


@pytest.fixture(scope="module")
def trained(digits) -> FeatureTable:
    return FeatureTable.of(digits["train"])


# ----------------------------------------------------------------------------------------
# The feature function


def test_image_features_of_known_images():
    black = image_features(_png(np.zeros((20, 30), np.uint8)))
    assert black == {"width": 30, "height": 20, "channels": 1, "format": "PNG", "brightness": 0.0}
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    features = image_features(_png(red))
    assert features["channels"] == 3 and features["brightness"] == pytest.approx(76, abs=1)  # BT.601
    assert image_features(_png(red, "RGBA"))["channels"] == 4
    assert image_features(_png(red, "P"))["channels"] == 3
    assert image_features(_png(np.full((8, 8), 255, np.uint8), "LA"))["channels"] == 2
    white_jpeg = serving_fixtures.as_jpeg(_png(np.full((64, 48), 255, np.uint8)))
    features = image_features(white_jpeg)
    assert features["format"] == "JPEG" and (features["width"], features["height"]) == (48, 64)
    assert features["brightness"] == pytest.approx(255, abs=2)


def _encoded(array: np.ndarray, mode: str, fmt: str = "PNG", **save) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, fmt, **save)
    return out.getvalue()


def test_brightness_is_measured_on_the_picture_the_model_decodes():
    """16-bit copies of grey digits measured 180 against the 8-bit originals' 72 (Pillow's
    convert clips 16-bit samples at 255), and a drawing on a transparent canvas 0 against 183 for
    the same drawing on white (convert drops alpha): drift (exit 3) for pictures the model
    decodes, and answers, alike. Brightness is now the mean grey level of the model decoder's
    own pixels (trainer/preprocessing.decode_image: high byte, transparency on white)."""
    from trainer.preprocessing import decode_image

    rng = np.random.default_rng(4)
    grey = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    ink = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[..., 3] = ink  # black ink as opacity on a transparent canvas
    la = np.stack([grey, ink], axis=-1)
    palette = Image.fromarray(rng.integers(0, 8, (24, 32), dtype=np.uint8), "P")
    palette.putpalette([v for i in range(8) for v in (i * 30, 255 - i * 30, 80)])
    cases = {
        "16-bit grey": _encoded(
            (grey.astype(np.uint16) * 257 + rng.integers(0, 257, grey.shape)).astype(np.uint16), "I;16"
        ),
        "RGBA": _encoded(rgba, "RGBA"),
        "LA": _encoded(la, "LA"),
        "RGB": _encoded(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), "RGB"),
    }
    wide = (grey.astype(np.uint16) * 257).astype(np.uint16)
    wide[:, :16] = 1000  # a tRNS grey value: transparent, on white
    cases["16-bit grey with tRNS"] = _encoded(wide, "I;16", transparency=1000)
    # A 32-bit BMP with an alpha mask whose every byte is 0 (writers that leave it empty): opaque.
    import struct

    pixels = bytes([50, 100, 150, 0]) * 64
    header = struct.pack("<IiiHHIIiiII", 108, 8, 8, 1, 32, 3, len(pixels), 2835, 2835, 0, 0)
    header += struct.pack("<IIII", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000) + b"BGRs" + b"\0" * 48
    offset = 14 + len(header)
    cases["BMP with an empty alpha mask"] = (
        b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + header + pixels
    )
    for name, fmt in (("palette PNG with tRNS", "PNG"), ("GIF with transparency", "GIF")):
        out = io.BytesIO()
        palette.save(out, fmt, transparency=3)
        cases[name] = out.getvalue()
    for name, data in cases.items():
        pixels = decode_image(tf.constant(data), 32).numpy().astype(np.float64)
        expected = (pixels @ np.array([299, 587, 114]) / 1000).mean()  # ITU-R BT.601, as "L" is
        assert image_features(data)["brightness"] == pytest.approx(expected, abs=1.0), name
    assert image_features(cases["16-bit grey"])["channels"] == 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not an image", "not a readable"),
        (image_bombs.png_bomb(9000, 9000), "larger than 40 MP"),
        (image_bombs.jpeg_header(100, 100), "cannot be decoded"),
    ],
)
def test_unmeasurable_images_are_counted_by_reason(data, reason):
    with pytest.raises(ImageFeatureError, match=reason):
        image_features(data)
    table = FeatureTable.of([(data, "x"), (_png(np.zeros((4, 4), np.uint8)), "y")])
    assert len(table.rows) == 1 and table.rows[0]["class"] == "y"
    assert sum(table.skipped.values()) == 1 and reason in next(iter(table.skipped))


def test_reservoir_sample_is_bounded_seeded_and_ordered():
    sample, total = reservoir_sample(iter(range(1000)), 50, seed=3)
    assert total == 1000 and len(sample) == 50 and sample == sorted(sample)
    assert reservoir_sample(iter(range(1000)), 50, seed=3)[0] == sample
    assert reservoir_sample(iter(range(1000)), 50, seed=4)[0] != sample
    assert np.mean(sample) == pytest.approx(500, abs=150)  # spread over the stream, not its head
    assert reservoir_sample(iter(range(7)), 50) == (list(range(7)), 7)


# ----------------------------------------------------------------------------------------
# Logged requests -> the served side


@pytest.fixture(scope="session")
def model(serving_model) -> serving_fixtures.ServingModel:
    return serving_model


def _send_all(target: str, images: list[bytes]) -> None:
    """Send the images in batches of 8, cycling through predict_images, serving_default, Classify
    and MultiInference."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(target))
    for n, start in enumerate(range(0, len(images), 8)):
        batch = images[start : start + 8]
        kind = n % 4
        if kind == 3:
            multi = inference_pb2.MultiInferenceRequest()
            task = multi.tasks.add(method_name="tensorflow/serving/classify")
            task.model_spec.name, task.model_spec.signature_name = NAME, "classification"
            for image in batch:
                multi.input.example_list.examples.add().ParseFromString(make_example(image))
            stub.MultiInference(multi, timeout=60)
            continue
        if kind == 2:
            request = classification_pb2.ClassificationRequest()
            request.model_spec.name = NAME
            request.model_spec.signature_name = "classification"
            for image in batch:
                request.input.example_list.examples.add().ParseFromString(make_example(image))
            stub.Classify(request, timeout=60)
            continue
        request = predict_pb2.PredictRequest()
        request.model_spec.name = NAME
        if kind == 0:
            request.model_spec.signature_name = "predict_images"
            request.inputs["images"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
        else:
            values = [make_example(image) for image in batch]
            request.inputs["examples"].CopyFrom(tf.make_tensor_proto(values, dtype=tf.string))
        stub.Predict(request, timeout=60)


@pytest.fixture(scope="module")
def log_dirs(model, digits, tmp_path_factory) -> dict[str, str]:
    """Request logs of the fresh sample and of the same images inverted, each from its own server."""
    base = tmp_path_factory.mktemp("models") / NAME
    shutil.copytree(model.export_dir, base / "1")
    fresh = [image for image, _ in digits["fresh"]]
    dirs = {}
    for name, images in (("fresh", fresh), ("inverted", [_invert(i) for i in fresh])):
        dirs[name] = str(tmp_path_factory.mktemp(f"logs-{name}"))
        with lifecycle.start_in_thread(str(base), NAME, log_requests=dirs[name]) as server:
            _send_all(server.target, images)
    return dirs


def test_logged_requests_of_every_kind_give_images_and_predicted_classes(log_dirs, digits, model):
    logged = sources.LoggedImages(log_dirs["fresh"])
    pairs = list(sources.logged_images(log_dirs["fresh"], logged))
    fresh = [image for image, _ in digits["fresh"]]
    assert [image for image, _ in pairs] == fresh  # predict_images, serving_default, Classify, MultiInference
    assert logged.records == -(-len(fresh) // 8) and logged.files == 1
    assert not logged.skipped and not logged.problems
    assert {label for _, label in pairs} <= set(model.class_names)
    accuracy = np.mean(
        [label == truth for (_, label), (_, truth) in zip(pairs, digits["fresh"], strict=True)]
    )
    assert accuracy > 0.8  # the logged classes are the model's answers, not noise


def test_fresh_sample_does_not_drift(log_dirs, trained):
    served = FeatureTable.of(sources.logged_images(log_dirs["fresh"], sources.LoggedImages("")))
    report = compare_tables(trained, served)
    assert report["drift"] is False and report["drifted"] == [], report["features"]
    assert set(report["features"]) == {"width", "height", "channels", "format", "brightness", "class"}
    measures = {name: f["measure"] for name, f in report["features"].items()}
    assert measures["brightness"] == "Jensen_Shannon" and measures["class"] == "L_infinity"
    assert all(f["distance"] < f["threshold"] for f in report["features"].values())


def test_inverted_images_drift_in_brightness_and_class(log_dirs, trained):
    served = FeatureTable.of(sources.logged_images(log_dirs["inverted"], sources.LoggedImages("")))
    report = compare_tables(trained, served)
    assert report["drift"] is True
    assert {"brightness", "class"} <= set(report["drifted"]), report["features"]
    assert report["features"]["brightness"]["distance"] > 0.5
    assert report["features"]["width"]["drifted"] is False


def test_small_samples_of_the_training_distribution_are_not_drift(digits, trained):
    """Twenty images drawn from the training distribution put the class distance above its 0.15
    threshold about a third of the time (an audit: 46% with a real model's predictions), each an
    exit 3 that a schedule retrains on. The permutation test keeps sampling from reading as drift;
    with --significance 0 the threshold alone judges, as before."""
    rng = np.random.default_rng(3)
    rows = digits["train"]
    above = alarms = 0
    for _ in range(30):
        sample = [rows[i] for i in rng.choice(len(rows), 20, replace=False)]
        report = compare_tables(trained, FeatureTable.of(sample))
        cls = report["features"]["class"]
        above += cls["distance"] > cls["threshold"]
        alarms += report["drift"]
        if cls["distance"] > cls["threshold"]:
            assert cls["p_value"] > 0.01 and cls["drifted"] is False, cls
            alone = compare_tables(trained, FeatureTable.of(sample), significance=0)
            assert (
                alone["features"]["class"]["drifted"] is True
                and alone["features"]["class"]["p_value"] is None
            )
    assert above >= 3  # the draws that fooled the threshold alone
    assert alarms == 0


def test_a_class_shift_of_a_few_hundred_images_is_significant(digits, trained):
    """Every logged image answered as one class: far above the threshold, and p at its floor."""
    served = FeatureTable.of((image, "0") for image, _ in digits["fresh"])
    cls = compare_tables(trained, served)["features"]["class"]
    assert cls["drifted"] is True and cls["p_value"] == pytest.approx(0.001)


def test_a_class_the_training_sample_missed_is_not_unseen(digits):
    only_zeros = FeatureTable.of([(image, label) for image, label in digits["train"] if label == "0"][:30])
    served = FeatureTable.of(digits["fresh"])
    assert 'unexpected value "1"' in compare_tables(only_zeros, served)["anomalies"]["class"]  # TFDV's
    report = compare_tables(only_zeros, served, trained_classes={"0", "1", "2"})
    assert "class" not in report["anomalies"]
    # TFDV's other findings about the class stay (served rows without one, here).
    unanswered = FeatureTable.of([(image, None) for image, _ in digits["fresh"][:60]] + digits["fresh"][60:])
    report = compare_tables(only_zeros, unanswered, trained_classes={"0", "1", "2"})
    assert "present in fewer examples than expected" in report["anomalies"].get("class", ""), report[
        "anomalies"
    ]


def test_darker_images_drift_in_brightness(digits, trained):
    served = FeatureTable.of((_darken(image), label) for image, label in digits["fresh"])
    report = compare_tables(trained, served)
    assert "brightness" in report["drifted"] and "class" not in report["drifted"]


def test_other_formats_and_sizes_drift(digits, trained):
    fresh = digits["fresh"]
    as_jpeg_96 = [
        (serving_fixtures.as_jpeg(_map_png(image, lambda im: im.convert("RGB").resize((96, 96)))), label)
        for image, label in fresh
    ]
    report = compare_tables(trained, FeatureTable.of(as_jpeg_96))
    assert {"width", "height", "format", "channels"} <= set(report["drifted"])
    assert "format" in report["anomalies"]  # JPEG was never seen in training: TFDV says so too


def test_too_few_images_refuse_to_judge(trained):
    few = FeatureTable.of([(_png(np.zeros((32, 32), np.uint8)), "0")] * 5)
    with pytest.raises(TooFewImages, match="only 5 measurable logged images"):
        compare_tables(trained, few)


def test_cut_and_corrupt_log_files_are_reported(log_dirs, tmp_path):
    [path] = sorted(p for p in os.listdir(log_dirs["fresh"]) if p.endswith(".tfrecord"))
    data = open(os.path.join(log_dirs["fresh"], path), "rb").read()
    (tmp_path / "prediction_log-a.tfrecord").write_bytes(data[:-10])
    bad = bytearray(data)
    bad[40] ^= 0xFF
    (tmp_path / "prediction_log-b.tfrecord").write_bytes(bytes(bad))
    (tmp_path / "prediction_log-c.tfrecord").write_bytes(b"not a log")  # under one record's header
    logged = sources.LoggedImages(str(tmp_path))
    pairs = list(sources.logged_images(str(tmp_path), logged))
    assert logged.files == 3 and len(pairs) > 0
    assert any("prediction_log-a" in p and "cut short" in p for p in logged.problems)
    assert any(
        "prediction_log-c" in p and "holds no whole record (9 bytes: not a TFRecord file" in p
        for p in logged.problems
    ), logged.problems
    assert any("prediction_log-b" in p and "checksum" in p for p in logged.problems)


def test_tfrecords_of_examples_are_not_read_as_requests(digits, tmp_path):
    """A tf.Example parses as a PredictionLog whose model is named after its first feature: a
    split copied in as a log read as requests for 'label'."""
    from serving.devserver.request_log import tfrecord_frame
    from tests.helpers import make_example

    with open(tmp_path / "prediction_log-x.tfrecord", "wb") as f:
        for image, _ in digits["fresh"][:5]:
            f.write(tfrecord_frame(make_example(image)))
    logged = sources.LoggedImages(str(tmp_path))
    assert list(sources.logged_images(str(tmp_path), logged)) == []
    assert logged.skipped == {"not a PredictionLog (no logged call in it)": 5} and not logged.models


def test_log_files_that_cannot_be_opened_are_listed_and_the_rest_read(log_dirs, tmp_path):
    """A dangling link or a directory under a log file's name (or a file a pruning job removed
    after the folder was listed) is listed like a corrupt file; the readable files are read."""
    for name in os.listdir(log_dirs["fresh"]):
        shutil.copy(os.path.join(log_dirs["fresh"], name), tmp_path / name)
    os.symlink(tmp_path / "gone", tmp_path / "prediction_log-y.tfrecord")
    (tmp_path / "prediction_log-z.tfrecord").mkdir()
    logged = sources.LoggedImages(str(tmp_path))
    pairs = list(sources.logged_images(str(tmp_path), logged))
    assert logged.files == 3 and len(pairs) > 0
    assert sorted(logged.problems) == [
        f"{tmp_path / 'prediction_log-y.tfrecord'}: cannot be read (No such file or directory)",
        f"{tmp_path / 'prediction_log-z.tfrecord'}: cannot be read (Is a directory)",
    ]
    [stats_file] = request_log.stats_files(log_dirs["fresh"])  # a server's stats file, given as the logs
    with pytest.raises(sources.SourceError, match="is a file; give the directory"):
        list(sources.logged_images(stats_file, sources.LoggedImages("")))


def _renamed_logs(source: str, target, model: str, every: int = 1, version: int | None = None) -> None:
    """The log files of `source` with every `every`-th record's model named `model` (request
    and metadata, as a server serving that model logs it), and answered by `version` if given."""
    from tensorflow_serving.apis import prediction_log_pb2

    from serving.devserver.request_log import log_files, read_records, tfrecord_frame

    os.makedirs(target, exist_ok=True)
    for path in log_files(source):
        with open(os.path.join(target, os.path.basename(path)), "wb") as out:
            for n, record in enumerate(read_records(path)):
                entry = prediction_log_pb2.PredictionLog.FromString(record)
                if n % every == 0:
                    entry.log_metadata.model_spec.name = model
                    body = getattr(entry, entry.WhichOneof("log_type"))
                    tasks = body.request.tasks if entry.HasField("multi_inference_log") else [body.request]
                    for task in tasks:
                        task.model_spec.name = model
                    if version is not None:
                        entry.log_metadata.model_spec.version.value = version
                out.write(tfrecord_frame(entry.SerializeToString()))


def test_requests_for_another_model_are_counted_not_read(log_dirs, tmp_path):
    _renamed_logs(log_dirs["fresh"], tmp_path, "pets", every=2)
    logged = sources.LoggedImages(str(tmp_path), NAME)
    pairs = list(sources.logged_images(str(tmp_path), logged))
    records = logged.records
    assert logged.models == {"pets": (records + 1) // 2, NAME: records // 2}
    assert logged.skipped == {"a request for another model ('pets')": (records + 1) // 2}
    assert sum(logged.versions.values()) == records // 2 and set(logged.versions) == {"1"}
    assert 0 < len(pairs) < 100
    everything = sources.LoggedImages(str(tmp_path))  # no model named: all of them
    assert len(list(sources.logged_images(str(tmp_path), everything))) > len(pairs)


def test_classes_never_seen_in_training_are_an_anomaly(trained, digits):
    """Class names that look like numbers lose TFDV's domain check: the report still names a
    class the training data never had (the logs of another model answer with its own)."""
    served = FeatureTable.of((image, "cat") for image, _ in digits["fresh"])
    report = compare_tables(trained, served)
    n = len(digits["fresh"])
    assert report["anomalies"]["class"] == f"values never seen in training: 'cat' ({n} of {n})"
    same = compare_tables(trained, FeatureTable.of(digits["fresh"]))
    assert "class" not in same["anomalies"]


# ----------------------------------------------------------------------------------------
# The run lookup (run records + ML Metadata) and `imgpipe drift`


def _write_split(directory: str, items) -> None:
    """An ExampleGen-style split: one gzipped TFRecord file of tf.Examples."""
    os.makedirs(directory, exist_ok=True)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(os.path.join(directory, "data_tfrecord-00000-of-00001.gz"), options) as w:
        for image, label in items:
            w.write(make_example(image, label))


def _record_run(store, types, pipeline_ctx_id: int, run_id: str, examples_uri: str) -> None:
    """One run as TFX records it: run and node contexts, an ExampleGen execution, its output."""
    node_name = f"imgpipe.{sources.EXAMPLE_GEN}"
    [run_ctx_id] = store.put_contexts(
        [metadata_store_pb2.Context(type_id=types["pipeline_run"], name=run_id)]
    )
    node = store.get_context_by_type_and_name("node", node_name)
    node_id = (
        node.id
        if node
        else store.put_contexts([metadata_store_pb2.Context(type_id=types["node"], name=node_name)])[0]
    )
    store.put_parent_contexts(
        [metadata_store_pb2.ParentContext(child_id=run_ctx_id, parent_id=pipeline_ctx_id)]
    )
    execution = metadata_store_pb2.Execution(
        type_id=types["execution"], last_known_state=metadata_store_pb2.Execution.COMPLETE
    )
    artifact = metadata_store_pb2.Artifact(type_id=types["Examples"], uri=examples_uri)
    event = metadata_store_pb2.Event(type=metadata_store_pb2.Event.OUTPUT)
    event.path.steps.add().key = sources.EXAMPLES_KEY
    event.path.steps.add().index = 0
    store.put_execution(execution, [(artifact, event)], store.get_contexts_by_id([run_ctx_id, node_id]))


def _home(tmp_path, runs: list[tuple[str, list]], pushed: dict[str, str] | None = None) -> str:
    """A pipeline home with ML Metadata and a run record per (run_id, training items), oldest
    first; `pushed` gives the model version a run pushed (its summary's `pushed`)."""
    home = str(tmp_path / "home")
    config = PipelineConfig(home=home, model_name=NAME)
    os.makedirs(home)
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = config.metadata_path
    connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(connection)
    types = {
        name: store.put_context_type(metadata_store_pb2.ContextType(name=name))
        for name in ("pipeline", "pipeline_run", "node")
    }
    types["execution"] = store.put_execution_type(metadata_store_pb2.ExecutionType(name="ImportExampleGen"))
    types["Examples"] = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="Examples"))
    [pipeline_ctx] = store.put_contexts(
        [metadata_store_pb2.Context(type_id=types["pipeline"], name="imgpipe")]
    )
    for n, (run_id, items) in enumerate(runs):
        uri = os.path.join(home, "pipelines", "imgpipe", sources.EXAMPLE_GEN, "examples", str(n + 1))
        _write_split(os.path.join(uri, "Split-train"), items)
        _write_split(os.path.join(uri, "Split-eval"), items[:3])
        _record_run(store, types, pipeline_ctx, run_id, uri)
        folder = os.path.join(home, "runs", run_id.replace(":", "_"))
        os.makedirs(folder)
        config.save(os.path.join(folder, "config.yaml"))
        summary = os.path.join(folder, "summary.json")
        with open(summary, "w", encoding="utf-8") as f:
            version = (pushed or {}).get(run_id)
            json.dump(
                {
                    "run_id": run_id,
                    "run_dir": folder,
                    "pushed": os.path.join(str(tmp_path), "serving", NAME, version) if version else None,
                },
                f,
            )
        os.utime(summary, (1_700_000_000 + n, 1_700_000_000 + n))
    return home


OLD_RUN, NEW_RUN = "2026-01-01T00:00:00.000001", "2026-02-01T00:00:00.000001"


@pytest.fixture(scope="module")
def home(digits, tmp_path_factory) -> str:
    """Two runs: the older trained on the digits, the newer on the same digits inverted."""
    inverted = [(_invert(image), label) for image, label in digits["train"]]
    return _home(
        tmp_path_factory.mktemp("drift-home"),
        [(OLD_RUN, digits["train"]), (NEW_RUN, inverted)],
        pushed={OLD_RUN: "1"},  # the version the log_dirs' servers serve; the newer run pushed nothing
    )


def test_training_split_of_a_run_is_found_through_ml_metadata(home):
    split = sources.training_split(home, OLD_RUN)
    assert split.run_id == OLD_RUN and split.pipeline_name == "imgpipe"
    assert split.files == [os.path.join(split.examples_uri, "Split-train", "data_tfrecord-00000-of-00001.gz")]
    assert split.examples_uri.endswith(os.path.join("examples", "1"))
    assert sources.training_split(home, "latest").run_id == NEW_RUN
    assert sources.training_split(home, NEW_RUN.replace(":", "_")).run_id == NEW_RUN  # the folder name
    skipped: collections.Counter = collections.Counter()
    items = list(sources.example_images(split.files, skipped))
    assert len(items) == 3 * TRAIN_PER_CLASS and items[0][1] == "0" and not skipped
    with pytest.raises(sources.SourceError, match="no run 'nope'"):
        sources.training_split(home, "nope")


def _drift_cli(capsys, *argv) -> tuple[int, dict | None, str]:
    code = cli.main(["drift", *argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_cli_drift_exit_codes(home, log_dirs, digits, capsys, tmp_path):
    code, report, err = _drift_cli(capsys, "--logs", log_dirs["fresh"], "--run", OLD_RUN, "--home", home)
    assert code == EXIT_OK, err
    assert report["drift"] is False and report["judged"] is True and report["training"]["run_id"] == OLD_RUN
    assert report["logged"]["measured"] == report["logged"]["images"] == len(digits["fresh"])
    assert report["training"]["measured"] == 3 * TRAIN_PER_CLASS
    assert set(report["features"]["brightness"]) == {"measure", "distance", "threshold", "p_value", "drifted"}
    assert report["significance"] == 0.01

    code, report, _ = _drift_cli(capsys, "--logs", log_dirs["inverted"], "--run", OLD_RUN, "--home", home)
    assert code == EXIT_DRIFT == 3
    assert "brightness" in report["drifted"]
    # Ignored features are measured and reported, and make no drift.
    code, report, _ = _drift_cli(
        capsys, "--logs", log_dirs["inverted"], "--run", OLD_RUN, "--home", home,
        *[f"--ignore-feature={name}" for name in report["drifted"]],
    )  # fmt: skip
    assert code == EXIT_OK and report["drift"] is False and report["drifted"] == []
    assert report["features"]["brightness"]["drifted"] is True and report["features"]["brightness"]["ignored"]
    with pytest.raises(SystemExit):
        cli.main(["drift", "--logs", log_dirs["inverted"], "--run", OLD_RUN, "--ignore-feature", "size"])
    assert "invalid choice: 'size'" in capsys.readouterr().err

    # `latest` is the newer run, trained on inverted digits: the inverted logs match it.
    code, report, _ = _drift_cli(capsys, "--logs", log_dirs["inverted"], "--run", "latest", "--home", home)
    assert report["training"]["run_id"] == NEW_RUN and "brightness" not in report["drifted"]

    code, report, err = _drift_cli(capsys, "--logs", log_dirs["fresh"], "--run", "nope", "--home", home)
    assert code == EXIT_USAGE and report is None and "no run 'nope'" in err
    code, _, err = _drift_cli(capsys, "--logs", str(tmp_path), "--run", OLD_RUN, "--home", home)
    assert code == EXIT_USAGE and "no request log files" in err
    code, _, err = _drift_cli(capsys, "--logs", log_dirs["fresh"], "--run", OLD_RUN, "--home", str(tmp_path))
    assert code == EXIT_USAGE and "no run records" in err
    argv = ["--logs", log_dirs["fresh"], "--run", OLD_RUN, "--home", home]
    code, report, err = _drift_cli(capsys, *argv, "--min-images", "500", "--max-images", "600")
    assert code == EXIT_FAILED and "cannot judge drift" in err
    # Not judged is still one JSON line: no verdict, the reason, and what each side held.
    assert report["drift"] is None and report["judged"] is False and "need 500" in report["reason"]
    assert report["logged"]["measured"] == len(digits["fresh"]) and report["training"]["run_id"] == OLD_RUN
    # `served`: the run that pushed the version that answered the logged requests (version 1,
    # the older run), not the newest run.
    code, report, err = _drift_cli(capsys, "--logs", log_dirs["fresh"], "--run", "served", "--home", home)
    assert code == EXIT_OK, err
    assert report["training"]["run_id"] == OLD_RUN
    assert report["training"]["chosen_by"] == "served: the run that pushed version 1"
    assert report["logged"]["versions"] == {"1": report["logged"]["records"]}
    assert report["logged"]["models"] == {NAME: report["logged"]["records"]}
    # Logs of another model are refused by name, unless that is the name the model is served as.
    pets = tmp_path / "pets"
    _renamed_logs(log_dirs["fresh"], pets, "pets")
    code, report, err = _drift_cli(capsys, "--logs", str(pets), "--run", OLD_RUN, "--home", home)
    assert code == EXIT_USAGE and report is None
    records = -(-len(digits["fresh"]) // 8)
    assert f"hold requests for 'pets' ({records} records) and none for 'digits', the model of run" in err
    assert "give --model-name NAME" in err
    code, report, err = _drift_cli(
        capsys, "--logs", str(pets), "--run", OLD_RUN, "--home", home, "--model-name", "pets"
    )
    assert code == EXIT_OK and report["logged"]["measured"] == len(digits["fresh"]), err
    # A --model-name the logs lack is named as the flag's, not as the run's model.
    code, _, err = _drift_cli(
        capsys, "--logs", str(pets), "--run", OLD_RUN, "--home", home, "--model-name", "cats"
    )
    assert code == EXIT_USAGE and "none for 'cats' (--model-name); run " in err
    assert f"'s model is {NAME!r}" in err and "give --model-name" not in err
    code, _, err = _drift_cli(
        capsys, "--logs", log_dirs["inverted"], "--run", "served", "--home", str(tmp_path)
    )
    assert code == EXIT_USAGE and "no run record in" in err and "pushed model version 1" in err
    assert "which no run of" not in err  # version 1 is the home's own
    # Logs answered by a version no run of the home pushed: judged, and said (another pipeline's
    # model under the same name is the usual cause).
    other = tmp_path / "other-version"
    _renamed_logs(log_dirs["fresh"], other, NAME, version=777)
    code, report, err = _drift_cli(capsys, "--logs", str(other), "--run", OLD_RUN, "--home", home)
    assert code == EXIT_OK and report["logged"]["versions"] == {"777": report["logged"]["records"]}
    assert f"answered by model version(s) 777, which no run of {home} pushed" in err
    # A sample of 3 training images misses classes; the classes are those of the whole split.
    code, report, err = _drift_cli(capsys, *argv, "--max-images", "3", "--min-images", "1")
    assert "class" not in report["anomalies"], report["anomalies"]
    code, _, err = _drift_cli(capsys, *argv, "--numeric-threshold", "2")
    assert code == EXIT_USAGE and "--numeric-threshold" in err
    # Logs that are all unreadable: the refusal names the files, not only "0 measurable".
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "prediction_log-x.tfrecord").write_bytes(b"\x00\x01 not a record")
    code, report, err = _drift_cli(capsys, "--logs", str(garbage), "--run", OLD_RUN, "--home", home)
    assert code == EXIT_FAILED and "only 0 measurable logged images" in err
    assert (
        report["judged"] is False
        and report["logged"]["measured"] == 0
        and "could not be read" in report["reason"]
    )
    assert f"log files that could not be read: {garbage / 'prediction_log-x.tfrecord'}" in err


def test_one_image_of_another_size_is_not_drift_when_training_has_one_size():
    """TFDV's approximate divergence of a one-value histogram measured 1.0 here; exactly it is ~0.003."""
    from imgpipe.drift.compare import compare

    def rows(sizes):
        return [
            {
                "width": w,
                "height": w,
                "channels": 1,
                "format": "PNG",
                "brightness": 100.0 + i % 7,
                "class": "0",
            }
            for i, w in enumerate(sizes)
        ]

    trained = FeatureTable(rows=rows([32] * 180))
    same = compare(trained, FeatureTable(rows=rows([32] * 180 + [33])))
    assert same.features["width"].distance < 0.01 and "width" not in same.drifted, same.features["width"]
    other = compare(trained, FeatureTable(rows=rows([33] * 90 + [32] * 90)))
    assert {"width", "height"} <= set(other.drifted)
    assert other.features["width"].distance == pytest.approx(0.311, abs=0.001)  # JS of (1, 0) and (1/2, 1/2)


def test_a_pruned_runs_training_split_is_named_as_deleted(digits, tmp_path):
    """`drift --run R` after `imgpipe prune` deleted R's artifacts said "no train files in
    .../Split-train", where `report` says the artifacts were deleted."""
    import shutil

    pruned = _home(tmp_path / "home", [(OLD_RUN, digits["train"])], pushed={OLD_RUN: "1"})
    split = sources.training_split(pruned, OLD_RUN)
    shutil.rmtree(split.examples_uri)
    with pytest.raises(
        sources.SourceError, match=r"examples were deleted \(by `imgpipe prune`, or by hand\)"
    ):
        sources.training_split(pruned, OLD_RUN)
