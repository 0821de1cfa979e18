"""Whether the Evaluator's models run with TensorFlow's graph optimiser (Grappler), and the switch.

The first call of a loaded model's serving signature has Grappler rewrite its graph before
TensorFlow instantiates it: ~2 s for the demo's DenseNet121 (2,300 nodes) on the 2-core
machine of BENCHMARKS.md, paid again for every model TFMA loads. The rewrites (above all
the fused convolutions of the remapper) make each later call faster in proportion to the
pixels it runs through: ~30% per batch at 224 px for MobileNetV2, ~10% for DenseNet121,
nothing measurable at 32 px. The Evaluator makes one pass over the eval split, so on a
split with few pixels the rewrites cost more than they can save ("The Evaluator's graph
optimisation" in BENCHMARKS.md has the numbers).

`gate.eval_graph_optimization` chooses: `on`, `off`, or `auto` (the default): off when the
eval split holds fewer pixels than PAYBACK_PIXELS, about 50 images at 224 px, on otherwise
and whenever a model's input size cannot be read. With it off, the models compute the
same functions without the rewrites; fused kernels can differ from the unfused ones in a
score's last bits, which is why the choice is part of the TFMA run's identity
(`tfma_run`), like the batch size.

The switch is TensorFlow's process-wide optimiser option, set for the Evaluator's TFMA
job and put back after it. It reaches the functions first called within the block, on
this thread and on threads started in it (the model warm-up); TFMA on a runner with
worker processes (multiprocess, Dataflow) is not reached and keeps TensorFlow's default.
TensorFlow instantiates a function once per set of options it is called with, so the
model TFMA ran is handed to pre-push validation and the report (components/loaded_models.py)
as `WithoutRewrites`, whose calls run as TFMA's did and reuse those instantiations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence

log = logging.getLogger(__name__)

SETTINGS = ("auto", "on", "off")
# 50 images at 224 px, a conservative line: the bare classifiers paid the rewrites back
# within 24 (MobileNetV2) and 56 (DenseNet121) images at 224 px; the pipeline's serving
# graph, which also decodes and transforms, costs more to rewrite (~2 s against 0.9 s for
# the bare DenseNet121 at 32 px), so it pays back later still. Below the line the rewrites
# cannot pay back on any backbone measured; above it TensorFlow's default stands. The rule
# counts pixels only: at 32 px DenseNet121 gained nothing from the rewrites at any count.
PAYBACK_PIXELS = 50 * 224 * 224


@dataclasses.dataclass(frozen=True)
class Decision:
    enabled: bool
    reason: str


def image_pixels(saved_model_path: str) -> int | None:
    """Height x width of the images the model's transform_features signature outputs, or None.

    Read from the SavedModel's signature definitions (saved_model.pb) without loading it.
    """
    from serving.devserver.versions import read_signature_defs
    from serving.signatures import TRANSFORM_FEATURES
    from trainer.features import IMAGE_XF

    try:
        signatures = read_signature_defs(saved_model_path)
    except Exception as e:  # noqa: BLE001 - any unreadable model (IOError, a file system's OpError) is "unknown"
        log.debug("no signatures read from %s: %s", saved_model_path, e)
        return None
    signature = signatures.get(TRANSFORM_FEATURES)
    if signature is None or IMAGE_XF not in signature.outputs:
        return None
    dims = [d.size for d in signature.outputs[IMAGE_XF].tensor_shape.dim]
    return dims[1] * dims[2] if len(dims) == 4 and dims[1] > 0 and dims[2] > 0 else None


def decide(
    setting: str,
    eval_examples: int | None,
    saved_model_paths: Sequence[str],
    in_process: bool = True,
    pixels: Sequence[int | None] | None = None,
) -> Decision:
    """Whether TFMA's models get Grappler's rewrites, for `setting` (auto | on | off).

    eval_examples: the eval split's size (None: unknown). in_process: whether TFMA runs its
    models in this process (Beam's in-memory runner); in worker processes the switch cannot
    reach them, so they keep TensorFlow's default whatever the setting. `pixels`: each model's
    `image_pixels`, when the caller has read them.
    """
    if setting not in SETTINGS:
        raise ValueError(f"eval_graph_optimization must be one of {', '.join(SETTINGS)}, got {setting!r}")
    if not in_process:
        return Decision(
            True, "TFMA runs the models in Beam worker processes, which keep TensorFlow's default"
        )
    if setting != "auto":
        return Decision(setting == "on", f"eval_graph_optimization: {setting}")
    if eval_examples is None:
        return Decision(True, "auto: the eval split's size is unknown")
    sizes = list(pixels) if pixels is not None else [image_pixels(path) for path in saved_model_paths]
    if not sizes or any(size is None for size in sizes):
        return Decision(True, "auto: a model's input size could not be read")
    pixels = eval_examples * max(sizes)
    side = round(max(sizes) ** 0.5)
    if pixels < PAYBACK_PIXELS:
        return Decision(
            False,
            f"auto: {eval_examples} eval images of {side}x{side} px are fewer pixels than "
            f"{PAYBACK_PIXELS:,} (the rewrites would not pay back their one-off cost)",
        )
    return Decision(True, f"auto: {eval_examples} eval images of {side}x{side} px")


@contextlib.contextmanager
def grappler(enabled: bool) -> Iterator[None]:
    """Within the block, functions first called get Grappler's rewrites only if `enabled`."""
    if enabled:
        yield
        return
    import tensorflow as tf

    before = bool(tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False))
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": before})


def rewrites_on() -> bool:
    """Whether functions first called now get Grappler's rewrites (TensorFlow's process-wide option)."""
    import tensorflow as tf

    return not tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)


@contextlib.contextmanager
def without_rewrites_on_this_thread() -> Iterator[None]:
    """Within the block, functions this thread calls run without Grappler's rewrites, with the
    options `grappler(False)` gives them (so they reuse what was instantiated there); other
    threads and the process-wide option are left alone."""
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.eager import context

    ctx = context.context()
    before = ctx.function_call_options  # this thread's, made from the process-wide options
    config = config_pb2.ConfigProto.FromString(before.config_proto_serialized)
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    ctx.function_call_options = context.FunctionCallOptions(
        executor_type=before.executor_type, config_proto=config
    )
    try:
        yield
    finally:
        ctx.function_call_options = before


class _CallWithoutRewrites:
    """A signature function whose calls run without Grappler's rewrites; other attributes pass through."""

    def __init__(self, fn):
        self._fn = fn

    def __call__(self, *args, **kwargs):
        # This thread only: a process-wide switch here would race with other threads' calls.
        with without_rewrites_on_this_thread():
            return self._fn(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._fn, name)


class WithoutRewrites:
    """A loaded SavedModel the Evaluator ran without Grappler's rewrites, for what runs it next.

    TensorFlow keys a function's instantiation on the optimiser options it is called with, so
    calling the model's signatures after the Evaluator's block, with the rewrites back on,
    would rewrite and instantiate each graph again (the ~2 s the Evaluator saved). Its
    signatures' calls here run as the Evaluator ran them, reusing those instantiations.
    `model` is the object TFMA loaded and evaluated.
    """

    def __init__(self, model):
        self.model = model
        self.signatures = {name: _CallWithoutRewrites(fn) for name, fn in model.signatures.items()}
