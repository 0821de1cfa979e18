"""Whole-pipeline runs on LocalDagRunner with real images and a backbone pre-trained here.

One module-scoped sequence: a first run (every component executes, the model is
blessed and pushed), an identical re-run (served from cache), then a worse model
that the gate must stop (nothing pushed, serving dir unchanged).
"""

import os

import pytest

from imgpipe import ingest
from imgpipe.demo import data as datasets
from imgpipe.orchestration import metadata as mlmd
from imgpipe.orchestration.local import run_local
from pipeline.config import PipelineConfig
from pipeline.pipeline import COMPONENT_IDS

pytestmark = pytest.mark.e2e

CLASSES = (5, 6, 7)
SIZE = 32


def _versions(model_dir):
    if not os.path.isdir(model_dir):
        return {}
    return {
        v: sorted(os.listdir(os.path.join(model_dir, v)))
        for v in os.listdir(model_dir)
        if os.path.isdir(os.path.join(model_dir, v))
    }


@pytest.fixture(scope="module")
def base_config(tmp_path_factory, source_backbone):
    work = tmp_path_factory.mktemp("e2e")
    images = str(work / "images")
    datasets.write_digits_tree(images, digits=CLASSES, size=SIZE, limit_per_class=60)
    records = str(work / "records")
    ingest.ingest(images, records, eval_fraction=0.25, seed=7)
    return PipelineConfig(
        data_dir=records,
        home=str(work / "home"),
        serving_dir=str(work / "serving"),
        model_name="digits",
        backbone="MobileNetV2",
        weights=source_backbone,
        image_size=SIZE,
        epochs=15,
        learning_rate=1e-2,
        dropout=0.0,
        min_accuracy=0.6,
    )


@pytest.fixture(scope="module")
def first_run(base_config):
    return run_local(base_config)


def test_first_run_executes_every_component_and_pushes(base_config, first_run):
    s = first_run
    assert set(s.executions) == set(COMPONENT_IDS)
    assert all(state == "COMPLETE" for state in s.executions.values()), s.executions
    with mlmd.open_store(base_config.resolved().metadata_path) as store:
        assert len(store.get_executions()) == len(COMPONENT_IDS)
    # Far above chance (1/3) on the held-out split.
    assert s.accuracy is not None and s.accuracy >= 0.7, s
    assert s.blessed is True
    assert s.replicas == 1
    assert set(s.per_class_accuracy) == {str(c) for c in CLASSES}
    model_dir = base_config.resolved().model_serving_dir
    versions = _versions(model_dir)
    assert len(versions) == 1
    [(version, files)] = versions.items()
    assert version.isdigit() and "saved_model.pb" in files
    assert s.pushed and os.path.samefile(s.pushed, os.path.join(model_dir, version))
    assert os.path.exists(os.path.join(s.run_dir, "config.yaml"))
    assert (
        PipelineConfig.from_yaml(os.path.join(s.run_dir, "config.yaml")).training.weights
        == base_config.resolved().training.weights
    )


def test_identical_rerun_is_served_from_cache(base_config, first_run):
    s = run_local(base_config)
    assert s.run_id != first_run.run_id
    for node in (
        "ImportExampleGen",
        "StatisticsGen",
        "SchemaGen",
        "ExampleValidator",
        "Transform",
        "Trainer",
    ):
        assert s.executions[node] == "CACHED", (node, s.executions)
    assert s.accuracy == pytest.approx(first_run.accuracy)


def test_gate_stops_a_worse_model(base_config, first_run):
    model_dir = base_config.resolved().model_serving_dir
    before = _versions(model_dir)
    # A randomly initialised backbone on the same data: far worse than the blessed baseline,
    # though above this run's own floor, so only the no-regression threshold can stop it.
    worse = base_config.replace(weights="none", epochs=2, min_accuracy=0.0)
    s = run_local(worse)
    assert s.executions["Trainer"] == "COMPLETE" and s.executions["Evaluator"] == "COMPLETE"
    assert s.baseline_accuracy == pytest.approx(first_run.accuracy, abs=1e-6)
    assert s.accuracy < first_run.accuracy
    assert s.blessed is False
    assert s.pushed is None
    assert _versions(model_dir) == before


def test_floor_stops_a_model_below_min_accuracy(base_config, first_run):
    model_dir = base_config.resolved().model_serving_dir
    before = _versions(model_dir)
    s = run_local(base_config.replace(min_accuracy=1.0, max_regression=1.0))
    assert s.accuracy < 1.0
    assert s.blessed is False and s.pushed is None
    assert _versions(model_dir) == before


def test_pushed_model_is_served_over_grpc(base_config, first_run, tmp_path):
    """The Pusher's output, served by `imgpipe serve`, answers the stock client like in-process."""
    import numpy as np
    import tensorflow as tf

    from serving import client, server
    from tests import helpers

    cfg = base_config.resolved()
    images = [img for img, _ in helpers.digit_images(CLASSES, per_class=3, size=SIZE, seed=11)]
    newest = max(int(v) for v in _versions(cfg.model_serving_dir))
    pushed = os.path.join(cfg.model_serving_dir, str(newest))
    local = tf.saved_model.load(pushed).signatures["predict_images"](images=tf.constant(images))
    with server.start_in_thread(cfg.model_serving_dir, cfg.model_name) as running:
        got = client.predict_images(running.target, cfg.model_name, images, timeout=30.0)
    assert [p.version for p in got] == [newest] * len(images)
    assert [p.classes[0] for p in got] == [c.decode() for c in local["classes"].numpy()[:, 0]]
    np.testing.assert_allclose([p.scores[0] for p in got], local["scores"].numpy()[:, 0], rtol=1e-5)


def test_score_data_is_scored_by_bulk_inferrer_after_blessing(base_config, first_run, tmp_path):
    """With score_data (`--score-data`), TFX's BulkInferrer scores the unlabelled split."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from tests import helpers

    images = [img for img, _ in helpers.digit_images(CLASSES, per_class=2, size=SIZE, seed=5)]
    score_dir = tmp_path / "unlabelled"
    helpers.write_tfrecords(str(score_dir / "data.tfrecord"), [(img, None) for img in images])
    config = base_config.replace(score_data=str(score_dir))
    s = run_local(config)
    assert s.executions["Trainer"] == "CACHED" and s.blessed is True
    assert s.executions["ScoreExampleGen"] == "COMPLETE" and s.executions["BulkInferrer"] == "COMPLETE"
    cfg = config.resolved()
    with mlmd.open_store(cfg.metadata_path) as store:
        run = mlmd.latest_run(store, cfg.pipeline_name)
        inferrer = mlmd.run_executions(store, cfg.pipeline_name, run)["BulkInferrer"]
        uri = mlmd.output_uri(store, inferrer, "inference_result")
    files = tf.io.gfile.glob(os.path.join(uri, "*"))
    logs = [
        prediction_log_pb2.PredictionLog.FromString(r.numpy())
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP")
    ]
    assert len(logs) == len(images)
    for log in logs:
        scores = tf.make_ndarray(log.predict_log.response.outputs["scores"])
        assert scores.shape == (1, len(CLASSES)) and abs(float(scores.sum()) - 1.0) < 1e-4
