"""Build Keras models without tracing every layer in a throwaway graph.

When tf_keras assembles a functional model, each layer call on a symbolic input
(`KerasTensor`) learns its output's shape and dtype by running the layer's `call`
in a scratch graph, whose ops are then thrown away
(`Layer._infer_output_signature`). For a backbone that is most of its build:
MobileNetV2 at 32 px took ~1.9-2.5 s, DenseNet121 ~5.7 s on the machine of
BENCHMARKS.md ("Building the model"), and calling the built backbone on a new
input to put a head on it traced all of its layers again (0.7-0.8 s and 1.8 s).
Every Trainer process pays that, and so does each head trial on images.

Inside `static_shapes()` two kinds of call skip the scratch graph, on this thread:

- a first call (the one that builds the layer) of one of the standard layers in
  `_exact_layers()`, exactly these classes (not subclasses, which may change
  `call`), float32, without an activity regulariser, on float32 inputs with no
  masks and no argument but `training`: the layer is built as Keras builds it
  (the same input check, its variables under the same name scope) and its output
  is what the layer's own `compute_output_shape` says, which is exact for these
  classes. A build that refuses the input (a kernel larger than its input) raises
  as Keras's does, from the same build; where the shape rule itself fails (a
  Reshape to another total size), Keras's own inference runs and raises Keras's
  own error;
- a functional model called on an input of exactly its own input's shape and
  dtype (a backbone under a new head): the output is its own output's, the same
  graph on the same spec.

Anything else, and every call outside the block or on another thread, goes to
tf_keras's own inference; `IMGPIPE_STATIC_SHAPES=0` sends every call there. The
models built are the same: the same layers, config, weights and weight names,
output shapes and dtypes and answers
(tests/test_shape_inference.py compares them, `benchmarks/model_build.py` for every
registered backbone).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

ENV_VAR = "IMGPIPE_STATIC_SHAPES"  # 0: every model built with tf_keras's own inference
_state = threading.local()
_installed: list = []  # [the tf_keras method replaced], once installed
_install_lock = threading.Lock()


def _exact_layers() -> tuple[type, ...]:
    import tf_keras as keras

    L = keras.layers  # noqa: N806
    return (
        L.Activation,
        L.Add,
        L.AveragePooling2D,
        L.BatchNormalization,
        L.Concatenate,
        L.Conv2D,
        L.Dense,
        L.DepthwiseConv2D,
        L.Dropout,
        L.GlobalAveragePooling2D,
        L.MaxPooling2D,
        L.Multiply,
        L.ReLU,
        L.Rescaling,
        L.Reshape,
        L.SeparableConv2D,
        L.ZeroPadding2D,
    )


def enabled() -> bool:
    """ENV_VAR: 1 (the default) builds with static shapes, 0 with Keras's own inference only."""
    value = os.environ.get(ENV_VAR, "1").strip()
    if value not in ("0", "1"):
        raise ValueError(
            f"{ENV_VAR}={value!r}: use 1 (static shapes, the default) or 0 (Keras's own inference)"
        )
    return value == "1"


def active() -> bool:
    """Whether this thread's model construction skips the scratch graph where it can now."""
    return bool(_installed) and getattr(_state, "depth", 0) > 0 and not getattr(_state, "off", 0)


def _plain_call(args, kwargs, input_masks) -> bool:
    import tensorflow as tf

    return not args and set(kwargs) <= {"training"} and all(m is None for m in tf.nest.flatten(input_masks))


def _float32_inputs(inputs) -> bool:
    import tensorflow as tf

    flat = tf.nest.flatten(inputs)
    return bool(flat) and all(
        getattr(x, "dtype", None) == tf.float32 and getattr(x, "_keras_mask", None) is None for x in flat
    )


def _own_output(model, inputs, functional_call):
    """The functional model's own output KerasTensor spec if `inputs` is one tensor of exactly
    its own input's shape and dtype, else None. Only for models whose `call` is the functional
    graph's own (not a subclass that changes it)."""
    if (
        not getattr(model, "_is_graph_network", False)
        or getattr(type(model), "call", None) is not functional_call
        or len(model.inputs) != 1
        or len(model.outputs) != 1
    ):
        return None
    flat = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    if len(flat) != 1:
        return None
    given, own, out = flat[0], model.inputs[0], model.outputs[0]
    if getattr(given, "_keras_mask", None) is not None or getattr(out, "_keras_mask", None) is not None:
        return None
    same = (
        given.shape.rank is not None
        and given.shape.as_list() == own.shape.as_list()
        and given.dtype == own.dtype
    )
    return out.type_spec if same else None


def install() -> bool:
    """Put the thread-aware replacement of tf_keras's symbolic call in place, once per process.

    Returns False, changing nothing, when this tf_keras has no such method (then
    `static_shapes()` is a no-op and builds trace as before).
    """
    with _install_lock:
        return bool(_installed) or _install()


def _install() -> bool:
    import tensorflow as tf

    try:
        from tf_keras.src.engine import base_layer, functional, keras_tensor
    except ImportError:  # pragma: no cover - depends on tf_keras internals
        log.warning("tf_keras internals not found; models are built with Keras's own shape inference")
        return False
    original = getattr(base_layer.Layer, "_keras_tensor_symbolic_call", None)
    if original is None:  # pragma: no cover - depends on tf_keras internals
        log.warning("tf_keras has no _keras_tensor_symbolic_call; models are built as before")
        return False
    exact = _exact_layers()
    backend = base_layer.backend

    def symbolic_call(self, inputs, input_masks, args, kwargs):
        if active() and _plain_call(args, kwargs, input_masks):
            if (
                type(self) in exact
                and not self.built
                and _float32_inputs(inputs)
                and self._dtype_policy.name == "float32"
                and self._activity_regularizer is None
            ):
                # Building checks the input against the layer's input spec, as Keras does.
                with backend.name_scope(self._name_scope()):
                    self._maybe_build(inputs)
                try:
                    signature = self.compute_output_signature(
                        tf.nest.map_structure(lambda x: tf.TensorSpec(x.shape, x.dtype), inputs)
                    )
                except (ValueError, TypeError, NotImplementedError):
                    signature = None  # e.g. a Reshape to another total size: Keras's own error below
                if signature is not None:
                    self._set_save_spec(inputs, args, kwargs)
                    return tf.nest.map_structure(keras_tensor.KerasTensor, signature)
            spec = _own_output(self, inputs, functional.Functional.call)
            if spec is not None:
                self._set_save_spec(inputs, args, kwargs)
                return keras_tensor.KerasTensor(spec)
        return original(self, inputs, input_masks, args, kwargs)

    symbolic_call.__wrapped__ = original
    base_layer.Layer._keras_tensor_symbolic_call = symbolic_call
    _installed.append(original)
    return True


@contextlib.contextmanager
def static_shapes() -> Iterator[bool]:
    """Within the block, this thread's functional model construction skips the scratch graph
    where the output is known (module docstring). Yields whether it is in effect."""
    ok = enabled() and install()
    _state.depth = getattr(_state, "depth", 0) + int(ok)
    try:
        yield ok
    finally:
        _state.depth -= int(ok)


@contextlib.contextmanager
def keras_own() -> Iterator[None]:
    """Within the block, this thread's models are built with tf_keras's own shape inference
    even inside `static_shapes()` (for tests and benchmarks that compare the two)."""
    _state.off = getattr(_state, "off", 0) + 1
    try:
        yield
    finally:
        _state.off -= 1
