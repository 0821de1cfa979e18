"""What ingest accepts reaches the exported model unchanged, bounded and upright.

One module fixture runs the real chain on a tree of awkward class names:
ingest -> Transform analysis (imgpipe/demo/analyze.py) -> the Trainer's input
function -> an exported SavedModel. Its class names must equal the folder
names byte for byte; the same model then shows the pixel limit and the EXIF
orientation at serving time. A separate Trainer run (run_fn) shows that a
label the vocabulary lacks fails the Trainer, by name.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from imgpipe.ingest import ingest
from tests import helpers, image_samples
from tests.test_ingest_labels import ACCEPTED
from trainer import data, export
from trainer import model as model_lib
from trainer.features import IMAGE_XF

SIZE = 32
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _records(out: Path, split: str) -> list[tuple[bytes, str]]:
    items = []
    for path in sorted((out / split).iterdir()):
        for record in tf.data.TFRecordDataset(str(path)):
            feature = tf.train.Example.FromString(record.numpy()).features.feature
            items.append(
                (feature["image"].bytes_list.value[0], feature["label"].bytes_list.value[0].decode())
            )
    return items


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    work = tmp_path_factory.mktemp("contract")
    images, out = work / "images", work / "records"
    rng = np.random.default_rng(0)
    for name in ACCEPTED:
        (images / name).mkdir(parents=True)
        for i in range(3):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(buffer, "PNG")
            (images / name / f"{i}.png").write_bytes(buffer.getvalue())
    report = ingest(str(images), str(out), eval_fraction=0.34, seed=3)
    assert sorted(report.classes) == sorted(ACCEPTED)
    transform_dir = str(work / "transform")
    tfo = helpers.analyze_transform(_records(out, "train"), transform_dir, image_size=SIZE)
    classes = data.class_names(tfo)
    m = model_lib.build_model("MobileNetV2", "none", SIZE, len(classes), dropout=0.0)
    export_dir = export.export_serving_model(m, tfo, classes, str(work / "export"), top_k=len(classes))
    return out, tfo, classes, export_dir, transform_dir


@pytest.fixture(scope="module")
def served(chain):
    """The exported model's signatures, loaded once."""
    return tf.saved_model.load(chain[3]).signatures


def test_vocabulary_holds_the_folder_names_byte_for_byte(chain):
    _, tfo, classes, _, _ = chain
    vocabulary = tfo.vocabulary_by_name("label_vocab")
    assert sorted(vocabulary) == sorted(name.encode("utf-8") for name in ACCEPTED)
    assert sorted(classes) == sorted(ACCEPTED)


def test_the_trainer_input_function_maps_every_example_to_its_class(chain):
    out, tfo, classes, _, _ = chain
    files = [str(p) for split in ("train", "eval") for p in sorted((out / split).iterdir())]
    expected = [label for split in ("train", "eval") for _, label in _records(out, split)]
    spec = data.InputSpec(batch_size=8, num_classes=len(classes))
    got = [int(i) for _, labels in data.make_dataset(files, tfo, spec) for i in labels.numpy()]
    assert [classes[i] for i in got] == expected


def test_the_input_function_refuses_labels_without_a_class_by_name(chain, tmp_path):
    _, tfo, classes, _, _ = chain
    image = helpers.encode_image(np.zeros((SIZE, SIZE, 3), np.uint8))
    odd = ["zebra", "", "cat ", "café\t", "cat"]  # 'cat' is a class; the others are not
    records = helpers.write_tfrecords(str(tmp_path / "odd.tfrecord"), [(image, name) for name in odd])
    spec = data.InputSpec(batch_size=8, num_classes=len(classes))
    with pytest.raises(data.UnmappedLabelError) as caught, data.explain_unmapped_labels():
        list(data.make_dataset(records, tfo, spec))
    assert caught.value.labels == odd[:4]


def test_exported_model_answers_with_the_folder_names(chain, served):
    out, _, classes, _, _ = chain
    image, _ = _records(out, "eval")[0]
    top = served[export.PREDICT_IMAGES](images=tf.constant([image]))
    names = [c.decode("utf-8") for c in top["classes"].numpy()[0]]
    assert sorted(names) == sorted(ACCEPTED)
    full = served[export.SERVING_DEFAULT](examples=tf.constant([helpers.make_example(image)]))
    assert [c.decode("utf-8") for c in full["classes"].numpy()[0]] == classes


def test_serving_refuses_a_huge_image_before_decoding(served):
    huge = image_samples.black_png(20_000, 20_000)
    with pytest.raises(tf.errors.InvalidArgumentError, match="20000 x 20000 = 400000000 pixels"):
        served[export.PREDICT_IMAGES](images=tf.constant([huge]))


def test_serving_a_huge_image_allocates_no_image(chain, tmp_path):
    """In a fresh process: peak memory barely moves (decoding would need 1.2 GB, resizing 4.8 GB)."""
    export_dir = chain[3]
    huge = tmp_path / "huge.png"
    huge.write_bytes(image_samples.black_png(20_000, 20_000))
    small = helpers.encode_image(np.zeros((SIZE, SIZE, 3), np.uint8))
    (tmp_path / "small.png").write_bytes(small)
    script = f"""
import json, resource, tensorflow as tf
sig = tf.saved_model.load({export_dir!r}).signatures["predict_images"]
sig(images=tf.constant([open({str(tmp_path / "small.png")!r}, "rb").read()]))  # warm up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    sig(images=tf.constant([open({str(huge)!r}, "rb").read()]))
    error = None
except tf.errors.InvalidArgumentError as e:
    error = e.message
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"grew_mb": (after - before) / 1024, "error": error}}))
"""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_USE_LEGACY_KERAS="1")
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env, check=True
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert "pixels, over the limit" in result["error"]
    assert result["grew_mb"] < 200, result


def _transformed(served, image: bytes) -> np.ndarray:
    example = tf.constant([helpers.make_example(image, "cat")])
    return served[export.TRANSFORM_FEATURES](examples=example)[IMAGE_XF].numpy()[0]


def test_serving_turns_exif_rotated_photos_upright(served):
    """A PNG stored sideways with EXIF orientation 6 serves exactly like the upright PNG."""
    upright = image_samples.asymmetric_image(SIZE, 48)
    stored = np.rot90(upright, 1)  # what a phone writes: upright turned 90 deg counter-clockwise
    sideways = image_samples.png(stored, exif=image_samples.pillow_exif(6))
    np.testing.assert_array_equal(image_samples.upright(sideways), upright)  # as Pillow shows it
    as_shown = _transformed(served, image_samples.png(upright))
    np.testing.assert_array_equal(_transformed(served, sideways), as_shown)
    assert not np.array_equal(_transformed(served, image_samples.png(stored)), as_shown)


def test_a_label_missing_from_the_vocabulary_fails_the_trainer_by_name(chain, tmp_path):
    """run_fn on TFRecords not made by ingest: 'a\\nb' cannot be in TFT's vocabulary file."""
    from tfx.components.trainer.fn_args_utils import FnArgs

    from trainer import task

    transform_dir = chain[4]
    image = helpers.encode_image(np.zeros((SIZE, SIZE, 3), np.uint8))
    labelled = [(image, name) for name in ACCEPTED[:3] + ["a\nb"]]
    train = helpers.write_tfrecords(str(tmp_path / "train" / "t.tfrecord"), labelled)
    evals = helpers.write_tfrecords(str(tmp_path / "eval" / "e.tfrecord"), labelled[:2])
    fn_args = FnArgs(
        train_files=[train],
        eval_files=[evals],
        transform_graph_path=transform_dir,
        serving_model_dir=str(tmp_path / "serving"),
        model_run_dir=str(tmp_path / "run"),
        custom_config={"weights": "none", "image_size": SIZE, "epochs": 1, "batch_size": 4},
    )
    with pytest.raises(data.UnmappedLabelError) as caught:
        task.run_fn(fn_args)
    assert caught.value.labels == ["a\nb"]
    assert "'a\\nb'" in str(caught.value)
    assert not os.path.exists(tmp_path / "serving" / "saved_model.pb")  # nothing exported


def test_transform_gets_the_pixel_limit_the_decoders_version_and_the_label_order():
    from pipeline.config import PipelineConfig
    from pipeline.pipeline import create_pipeline

    config = PipelineConfig(data_dir="/data", max_image_pixels=1234, image_size=32, weights="none")
    transform = next(c for c in create_pipeline(config).components if c.id == "Transform")
    custom = json.loads(transform.exec_properties["custom_config"])
    assert custom["max_image_pixels"] == 1234
    # The decoder's version is in Transform's cache key: a graph cached before the decoded pixels
    # changed (TFX keys the preprocessing_fn by its import path, not its code) is not reused.
    # So is the label vocabulary's order (a home's graph cached with classes by count kept it).
    from trainer.features import DECODER_VERSION, LABEL_ORDER

    assert custom["decoder"] == DECODER_VERSION
    assert custom["label_order"] == LABEL_ORDER
