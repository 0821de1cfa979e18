"""components/loaded_models.py: the Evaluator's candidate handed to pre-push validation in a local run."""

import os

import numpy as np
import pytest
import tensorflow_model_analysis as tfma

from components import loaded_models, tfma_warm
from components.prepush_checks import reference_answers


@pytest.fixture(autouse=True)
def _nothing_held():
    assert loaded_models.held() == []
    yield
    assert loaded_models.held() == []  # every test leaves the store empty


def test_nothing_is_kept_outside_a_run():
    assert loaded_models.offer("/m/1", object()) is False
    assert loaded_models.held() == [] and loaded_models.get("/m/1") is None


def test_the_model_asked_for_stays_for_the_run_and_the_others_are_dropped(tmp_path):
    model, other = object(), object()
    real = tmp_path / "model"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with loaded_models.sharing():
        assert loaded_models.offer(str(link) + os.sep, model)  # the same folder, spelled otherwise
        assert loaded_models.offer("/elsewhere/model", other)
        assert len(loaded_models.held()) == 2
        assert loaded_models.get(str(real)) is model
        # The others are dropped: nobody will ask for them. The one asked for stays (the
        # InfraValidator asks, then the report).
        assert loaded_models.held() == [str(real)] and loaded_models.get("/elsewhere/model") is None
        assert loaded_models.held() == []  # asking for a model never offered drops the rest too
        assert loaded_models.offer(str(real), model)
        assert loaded_models.get(str(link)) is model and loaded_models.get(str(real)) is model
    assert loaded_models.held() == []  # the run's end drops it


def test_a_run_that_takes_nothing_drops_what_it_kept():
    with loaded_models.sharing():
        with loaded_models.sharing():  # nested: kept until the outermost block ends
            assert loaded_models.offer("/m/1", object())
        assert loaded_models.held() == [os.path.realpath("/m/1")]
    assert loaded_models.offer("/m/1", object()) is False


def test_the_evaluators_candidate_is_offered_and_its_baseline_is_not(monkeypatch):
    """offer_candidates wraps TFMA's model description: what the loader constructs is offered."""
    made = []

    class Loader:
        def __init__(self, path):
            self.construct_fn = lambda: made.append(path) or f"model at {path}"

    class Shared:
        def __init__(self, path):
            self.model_path, self.model_loader = path, Loader(path)

    def describe(eval_saved_model_path, model_name="", eval_config=None):
        return Shared(eval_saved_model_path)

    config = tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(name="candidate"), tfma.ModelSpec(name="baseline", is_baseline=True)]
    )
    monkeypatch.setattr(tfma, "default_eval_shared_model", describe)
    with loaded_models.sharing(), tfma_warm.offer_candidates():
        candidate = tfma.default_eval_shared_model("/c", model_name="candidate", eval_config=config)
        baseline = tfma.default_eval_shared_model("/b", model_name="baseline", eval_config=config)
        assert loaded_models.held() == []  # nothing loaded yet
        assert candidate.model_loader.construct_fn() == "model at /c"
        assert baseline.model_loader.construct_fn() == "model at /b"
        assert made == ["/c", "/b"]
        assert loaded_models.held() == [os.path.realpath("/c")]
        assert loaded_models.get("/c") == "model at /c"
    assert tfma.default_eval_shared_model is describe  # restored

    # Outside a local run's sharing() TFMA's loaders stay its own (they are pickled into the
    # Beam job, and a remote worker need not have imgpipe's modules to unpickle them).
    with tfma_warm.offer_candidates():
        assert tfma.default_eval_shared_model is describe
        plain = tfma.default_eval_shared_model("/c", model_name="candidate", eval_config=config)
    assert plain.model_loader.construct_fn() == "model at /c" and loaded_models.held() == []
    assert plain.model_loader.construct_fn.__name__ == "<lambda>"  # the fake loader's own, not wrapped


def test_reference_answers_come_from_the_given_model(serving_model):
    """The reference is the given object's serving_default, not a second load of the folder."""
    import tensorflow as tf

    from serving.client import make_image_example

    examples = [make_image_example(img) for img, _ in serving_model.items[:3]]
    loaded = tf.saved_model.load(serving_model.export_dir)
    served = loaded.signatures["serving_default"]

    class Halved:
        signatures = {
            "serving_default": lambda examples: {
                "scores": served(examples=examples)["scores"] * 0.5,
                "classes": served(examples=examples)["classes"],
            }
        }

    from_folder = reference_answers(serving_model.export_dir, examples)
    from_object = reference_answers(serving_model.export_dir, examples, loaded)
    halved = reference_answers(serving_model.export_dir, examples, Halved())
    np.testing.assert_array_equal(from_object.scores, from_folder.scores)
    np.testing.assert_allclose(halved.scores, from_folder.scores * 0.5, rtol=1e-6)
    assert halved.class_names == from_folder.class_names
