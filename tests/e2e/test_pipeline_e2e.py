"""Whole-pipeline runs on LocalDagRunner with real images and a backbone pre-trained here.

One module-scoped sequence: a first run (every component executes, the model is
blessed, validated in a model server and pushed), an identical re-run (served
from cache), a worse model that the gate must stop (nothing pushed, serving dir
unchanged), and last a model with a broken serving signature that pre-push
validation must stop.
"""

import json
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
        export_tflite="float16",
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
    # Pre-push validation served it (`imgpipe serve`: no tensorflow_model_server here) and passed.
    assert s.prepush["blessed"] is True and s.prepush["validated"] is True, s.prepush
    assert s.prepush["server"] == "imgpipe serve" and s.prepush["failures"] == []
    assert set(s.prepush["p99_ms"]) == {"serving_default", "classification", "predict_images"}
    assert s.replicas == 1
    assert set(s.per_class_accuracy) == {str(c) for c in CLASSES}
    model_dir = base_config.resolved().model_serving_dir
    versions = _versions(model_dir)
    assert len(versions) == 1
    [(version, files)] = versions.items()
    assert version.isdigit() and "saved_model.pb" in files
    assert s.pushed and os.path.samefile(s.pushed, os.path.join(model_dir, version))
    # The TFLite model and its contract travel inside the pushed SavedModel; it still serves (above).
    assert sorted(os.listdir(os.path.join(s.pushed, "assets.extra"))) == [
        "model.tflite",
        "model.tflite.json",
        "tf_serving_warmup_requests",
    ]
    cfg = base_config.resolved()
    with mlmd.open_store(cfg.metadata_path) as store:
        trainer = mlmd.run_executions(store, cfg.pipeline_name, mlmd.latest_run(store, cfg.pipeline_name))[
            "Trainer"
        ]
        model_run = mlmd.output_uri(store, trainer, "model_run")
    with open(os.path.join(model_run, "training_summary.json"), encoding="utf-8") as f:
        lite = json.load(f)["tflite"]
    assert lite["quantization"] == "float16" and lite["passed"] and lite["agreement"] >= 0.98
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
    worse = base_config.replace(weights="none", epochs=2, min_accuracy=0.0, export_tflite="none")
    s = run_local(worse)
    assert s.executions["Trainer"] == "COMPLETE" and s.executions["Evaluator"] == "COMPLETE"
    assert s.baseline_accuracy == pytest.approx(first_run.accuracy, abs=1e-6)
    assert s.accuracy < first_run.accuracy
    assert s.blessed is False
    assert s.pushed is None
    assert s.prepush["validated"] is False and s.prepush["blessed"] is False  # nothing to serve
    assert "did not bless" in s.prepush["reason"]
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

    from serving import client
    from serving.devserver import lifecycle
    from tests import helpers

    cfg = base_config.resolved()
    images = [img for img, _ in helpers.digit_images(CLASSES, per_class=3, size=SIZE, seed=11)]
    newest = max(int(v) for v in _versions(cfg.model_serving_dir))
    pushed = os.path.join(cfg.model_serving_dir, str(newest))
    local = tf.saved_model.load(pushed).signatures["predict_images"](images=tf.constant(images))
    with lifecycle.start_in_thread(cfg.model_serving_dir, cfg.model_name) as running:
        got = client.predict_images(running.target, cfg.model_name, images, timeout=30.0)
    assert [p.version for p in got] == [newest] * len(images)
    assert [p.classes[0] for p in got] == [c.decode() for c in local["classes"].numpy()[:, 0]]
    np.testing.assert_allclose([p.scores[0] for p in got], local["scores"].numpy()[:, 0], rtol=1e-5)


def test_prepush_validation_stops_a_model_whose_signature_is_broken(base_config, first_run, monkeypatch):
    """The Evaluator blesses it (serving_default works), the served predict_images fails: no push.

    Last in the module: the Evaluator's blessing makes this model the next runs' baseline.
    """
    import tensorflow as tf

    from trainer import export
    from trainer.features import IMAGE_KEY

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def broken_predict_images(self, images):
        tf.debugging.assert_equal(tf.size(images), -1, message="predict_images broken on purpose")
        scores = self._scores({IMAGE_KEY: export._raw_image_input(images, self.raw_spec)})  # noqa: SLF001
        return {"scores": scores, "classes": self._all_classes(scores)}

    monkeypatch.setattr(export._ServingModule, "predict_images", broken_predict_images)  # noqa: SLF001
    model_dir = base_config.resolved().model_serving_dir
    before = _versions(model_dir)
    # Fewer epochs: the Trainer runs again (its export is the broken one); the gate lets anything through.
    s = run_local(base_config.replace(epochs=2, min_accuracy=0.0, max_regression=1.0, export_tflite="none"))
    assert s.executions["Trainer"] == "COMPLETE" and s.executions["InfraValidator"] == "COMPLETE"
    assert s.blessed is True
    p = s.prepush
    assert p["validated"] is True and p["blessed"] is False
    assert p["reason"].startswith("answer (predict_images, eval example 0): INVALID_ARGUMENT: "), p
    assert "predict_images broken on purpose" in p["reason"]
    assert all("predict_images" in f for f in p["failures"])  # the other signatures answered
    assert s.pushed is None
    assert _versions(model_dir) == before
