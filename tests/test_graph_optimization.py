"""components.graph_optimization: when the Evaluator's models get Grappler's rewrites, and the switch."""

from __future__ import annotations

import threading

import pytest
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.eager import context

from components import graph_optimization as go


def _transform_only_model(path: str, side: int | None) -> str:
    """A SavedModel whose transform_features signature outputs image_xf of side x side (None: unknown)."""

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def transform(self, examples):
            n = tf.shape(examples)[0]
            if side is None:
                s = tf.shape(examples)[0] % 7 + 1  # a size the graph does not know
                return {"image_xf": tf.zeros([n, s, s, 3]), "label_xf": tf.zeros([n], tf.int64)}
            return {"image_xf": tf.zeros([n, side, side, 3]), "label_xf": tf.zeros([n], tf.int64)}

    m = M()
    tf.saved_model.save(m, path, signatures={"transform_features": m.transform})
    return path


def _rewrites_off_for_this_thread() -> bool:
    """What the functions this thread calls next are instantiated with (Grappler reads it)."""
    config = config_pb2.ConfigProto.FromString(
        context.context().function_call_options.config_proto_serialized
    )
    return config.graph_options.rewrite_options.disable_meta_optimizer


def test_image_pixels_are_read_from_the_transform_signature_without_loading(tmp_path):
    assert go.image_pixels(_transform_only_model(str(tmp_path / "m32"), 32)) == 32 * 32
    assert go.image_pixels(_transform_only_model(str(tmp_path / "unknown"), None)) is None
    assert go.image_pixels(str(tmp_path / "no_model_here")) is None


def test_auto_turns_the_rewrites_off_only_when_the_split_cannot_pay_them_back(tmp_path):
    small = _transform_only_model(str(tmp_path / "m32"), 32)
    large = _transform_only_model(str(tmp_path / "m224"), 224)
    # The demo: 179 eval images of 32x32 px, far below ~50 images at 224 px.
    d = go.decide("auto", 179, [small])
    assert d.enabled is False and "179 eval images of 32x32 px" in d.reason
    assert go.decide("auto", 49, [large]).enabled is False
    assert go.decide("auto", 50, [large]).enabled is True
    assert go.decide("auto", 2450, [small]).enabled is True  # as many pixels as 50 at 224 px
    # With a baseline, the larger model's images count.
    assert go.decide("auto", 60, [small, large]).enabled is True
    # Unknown input size: the rewrites stay on (TensorFlow's default).
    unknown = go.decide("auto", 10, [small, str(tmp_path / "missing")])
    assert unknown.enabled is True and "could not be read" in unknown.reason
    # Explicit settings win whatever the split.
    assert go.decide("on", 1, [small]).enabled is True
    assert go.decide("off", 10**9, [large]).enabled is False
    with pytest.raises(ValueError, match="eval_graph_optimization must be one of auto, on, off"):
        go.decide("sometimes", 10, [small])
    # An eval split of unknown size is not taken for a small one.
    assert go.decide("auto", None, [small]).enabled is True
    # TFMA in Beam worker processes (multiprocess, Dataflow): the switch cannot reach them.
    remote = go.decide("off", 10, [small], in_process=False)
    assert remote.enabled is True and "worker processes" in remote.reason


def test_the_evaluator_applies_the_setting_only_where_tfma_runs_in_its_process():
    from components.evaluator import tfma_in_this_process
    from pipeline.beam import LOCAL_RUNNER

    assert tfma_in_this_process(None) and tfma_in_this_process([])
    assert tfma_in_this_process([f"--runner={LOCAL_RUNNER}", "--direct_running_mode=in_memory"])
    assert not tfma_in_this_process([f"--runner={LOCAL_RUNNER}", "--direct_running_mode=multi_processing"])
    assert not tfma_in_this_process(["--runner=DataflowRunner", "--project=p"])
    assert not tfma_in_this_process(["--runner=PortableRunner", "--job_endpoint=localhost:8099"])


def test_the_switch_reaches_this_thread_and_threads_started_in_it_and_is_put_back():
    assert not _rewrites_off_for_this_thread()
    seen = {}
    with go.grappler(False):
        assert _rewrites_off_for_this_thread()
        thread = threading.Thread(target=lambda: seen.update(off=_rewrites_off_for_this_thread()))
        thread.start()
        thread.join()
        # A function first called in the block runs, with the same result.
        assert float(tf.function(lambda x: tf.reduce_sum(x * 2.0))(tf.ones([3]))) == 6.0
    assert seen == {"off": True}
    assert not _rewrites_off_for_this_thread()
    assert not tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
    with go.grappler(True):
        assert not _rewrites_off_for_this_thread()


def test_the_switch_is_put_back_when_the_block_fails():
    with pytest.raises(RuntimeError, match="TFMA failed"), go.grappler(False):
        raise RuntimeError("TFMA failed")
    assert not _rewrites_off_for_this_thread()


def test_eval_graph_optimization_is_a_gate_setting():
    from components.gate import GateConfig
    from pipeline.config import PipelineConfig

    assert GateConfig().eval_graph_optimization == "auto"
    assert PipelineConfig(data_dir="d", eval_graph_optimization="on").gate.eval_graph_optimization == "on"
    with pytest.raises(ValueError, match="eval_graph_optimization"):
        PipelineConfig(data_dir="d", eval_graph_optimization="sometimes")


def test_a_model_run_without_rewrites_is_handed_on_with_its_calls_still_without_them():
    """The Evaluator offers the model TFMA ran to pre-push validation and the report; its
    signatures' later calls run as TFMA ran them, so TensorFlow reuses their instantiations."""

    class Loaded:
        def __init__(self):
            fn = tf.function(lambda x: x + 1.0).get_concrete_function(tf.TensorSpec([None], tf.float32))
            self.signatures = {"serving_default": fn, "probe": lambda: _rewrites_off_for_this_thread()}

    loaded = Loaded()
    with go.grappler(False):
        assert go.rewrites_on() is False
        handed = go.WithoutRewrites(loaded)
    assert go.rewrites_on() is True
    assert handed.model is loaded and set(handed.signatures) == {"serving_default", "probe"}
    assert handed.signatures["probe"]() is True  # the call runs without the rewrites
    assert not _rewrites_off_for_this_thread()  # and puts them back
    assert go.rewrites_on()  # the process-wide option was never touched
    serving = handed.signatures["serving_default"]
    assert (
        serving.structured_input_signature == loaded.signatures["serving_default"].structured_input_signature
    )
    assert serving(tf.constant([1.0, 2.0])).numpy().tolist() == [2.0, 3.0]


def test_a_handed_on_call_uses_the_options_the_evaluators_block_gave_its_functions():
    """The same serialized options, so TensorFlow reuses the instantiation made in the block."""
    with go.grappler(False):
        in_block = context.context().function_call_options.config_proto_serialized
    with go.without_rewrites_on_this_thread():
        here = context.context().function_call_options.config_proto_serialized
        seen = {}
        other = threading.Thread(target=lambda: seen.update(off=_rewrites_off_for_this_thread()))
        other.start()
        other.join()
    assert here == in_block
    assert seen == {"off": False}  # another thread is not affected
    assert not _rewrites_off_for_this_thread()


def test_the_evaluators_calls_are_bounded_by_its_largest_model(tmp_path):
    """A baseline trained at 1024 px beside a 224 px candidate: 6 examples a call, not 128."""
    from components.evaluator import models_batch

    pixels = [
        go.image_pixels(_transform_only_model(str(tmp_path / "candidate"), 224)),
        go.image_pixels(_transform_only_model(str(tmp_path / "baseline"), 1024)),
    ]
    assert models_batch(128, pixels, 224) == (6, 1024)
    assert models_batch(128, pixels[:1], 224) == (128, 224)
    assert models_batch(128, [None], 512) == (24, 512)  # unread: the run's size
    assert models_batch(128, [None], None) == (128, 0)
