"""Keep AutoGraph out of tf_keras's and TFT's own code, as TensorFlow already does for `keras`.

AutoGraph rewrites the Python functions a `tf.function` calls, except modules on
its do-not-convert list. TensorFlow 2.16's list names `keras` but not `tf_keras`,
the package Keras 2 lives in from TF 2.16 on (and the one TFT/TFMA 1.16 need).
So every trace of `model.fit`'s train step, `predict`/`evaluate`, or a
`tf.function` that calls a Keras model converts tf_keras's internals again
(Layer.__call__, the functional graph walk, the train step ...). For
MobileNetV2 at 64px that made the first `fit` of a process take ~22-28 s
instead of ~2-3 s (BENCHMARKS.md, `benchmarks/tracing.py`). Newer TensorFlow
lists `tf_keras` as well; `install()` adds the same rule on 2.16.

tensorflow_transform is not on the list either: the first trace of the Trainer's
input function (the Transform graph in tf.data) spent ~3.7 s converting TFT's
layer and graph-loading code, ~0.1 s without. TFT already traces its own
functions with autograph=False (impl_helper, saved_transform_io_v2); its layer
path has only Python-value branches. So Transform's analysis is unchanged when
the rules are in place (LocalDagRunner runs every component in one process).

What it does not change: the function a `tf.function` is created with is still
converted (AutoGraph always converts what it was asked to), so Keras's
multi-step train loop and a user's preprocessing_fn keep working; Keras itself
converts user-written Layer subclasses, losses and metrics. What it does change:
an override of Model.train_step/test_step/predict_step is reached through
tf_keras's own step function and is no longer converted, so it must not use
tensor-dependent Python control flow. imgpipe's models are functional and
override none of them; install() is called only from imgpipe's trainer entry
points.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)

MODULES = ("tf_keras", "tensorflow_transform")


def _config():
    try:
        from tensorflow.python.autograph.core import config
    except ImportError:  # pragma: no cover - depends on TensorFlow internals
        return None
    return config


def _exempted(config, module: str) -> bool:
    return any(isinstance(r, config.DoNotConvert) and r.matches(module) for r in config.CONVERSION_RULES)


def install() -> bool:
    """Add do-not-convert rules for MODULES to AutoGraph, once per process.

    Returns True if the rules are in place (added now or before), False if this
    TensorFlow's AutoGraph configuration is not where it is expected (then
    nothing changes and tracing is just slower).
    """
    config = _config()
    if config is None:
        log.warning("AutoGraph configuration not found; tf_keras/TFT tracing stays converted")
        return False
    missing = tuple(config.DoNotConvert(m) for m in MODULES if not _exempted(config, m))
    if missing:
        config.CONVERSION_RULES = (*missing, *config.CONVERSION_RULES)
    return True


def installed() -> bool:
    """Whether AutoGraph's rules already leave every module in MODULES unconverted."""
    config = _config()
    return config is not None and all(_exempted(config, m) for m in MODULES)


@contextlib.contextmanager
def as_shipped() -> Iterator[None]:
    """AutoGraph's rules without exemptions for MODULES while inside; restored on exit.

    For tests and benchmarks that compare against plain TensorFlow 2.16 behaviour.
    """
    config = _config()
    saved = config.CONVERSION_RULES
    config.CONVERSION_RULES = tuple(
        r for r in saved if not (isinstance(r, config.DoNotConvert) and any(r.matches(m) for m in MODULES))
    )
    try:
        yield
    finally:
        config.CONVERSION_RULES = saved
