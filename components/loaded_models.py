"""The candidate SavedModel the Evaluator loaded, handed to what runs it later in the same run.

In a local run every component runs in one process, one after the other. TFMA loads the
candidate model to evaluate it; pre-push validation (its in-process reference answers) and
the run's report (its predictions on the eval split) then each loaded the same SavedModel
again (~2-2.5 s each for the demo's DenseNet121: the load, then the first call's graph
optimisation). Within `sharing()` (imgpipe's local runner holds it for the run and its
report), the Evaluator offers each candidate TFMA loaded, under its path, and the
InfraValidator and the report `get` the one they run instead of loading it. It is the same
object TFMA's evaluation ran, so their answers are those of the same SavedModel.

Outside `sharing()` nothing is kept: on Airflow or Kubeflow each component has its own
process, and a long-lived process never holds a model for nobody. `get` drops every model
but the one asked for, and the end of the outermost `sharing()` block drops that one too.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

_lock = threading.Lock()
_depth = 0
_models: dict[str, Any] = {}


def _key(path: str) -> str:
    return os.path.realpath(os.path.normpath(path))


@contextlib.contextmanager
def sharing() -> Iterator[None]:
    """Within the block, offered models are kept for `get`; on leaving it they are dropped."""
    global _depth
    with _lock:
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if not _depth:
                _models.clear()


def active() -> bool:
    """Whether a `sharing()` block is open (offered models are kept)."""
    with _lock:
        return _depth > 0


def offer(path: str, model: Any) -> bool:
    """Keep `model`, loaded from the SavedModel at `path`, for `get(path)`. False outside `sharing()`."""
    with _lock:
        if not _depth:
            return False
        _models[_key(path)] = model
        return True


def get(path: str) -> Any | None:
    """The model offered for `path`, or None; every other offered model is dropped.

    The one asked for stays until the end of `sharing()`: in a local run the InfraValidator
    and then the report both run it.
    """
    with _lock:
        model = _models.get(_key(path))
        _models.clear()
        if model is not None:
            _models[_key(path)] = model
    return model


def held() -> list[str]:
    """The paths of the models kept now."""
    with _lock:
        return sorted(_models)
