"""Load the models TFMA will evaluate while it builds its Beam pipeline, and run each once.

A model costs TFMA two serial steps before its first prediction: the SavedModel's load
(~1 s for the demo's DenseNet121) and the first call of its serving signature, where
TensorFlow optimises and instantiates the graph (~1.5 s, most of it Grappler). TFMA
does both inside its Beam job, one model after the other; a baseline doubles them.

`warm_models()` wraps the function TFX's Evaluator calls to describe each model
(`tfma.default_eval_shared_model`). As soon as TFX has described a model, a thread loads
it through the model's own loader and calls its serving signature once on one eval
example. TFMA's loader keeps the model in a Beam `Shared` handle, so TFMA's job gets that
same object (waiting for it if the thread is still loading) with its graph already
instantiated: the loads and first calls overlap the pipeline's construction and each
other. The numbers cannot change: TFMA runs the same model objects on the same data.
A model that fails to load here is left to TFMA, which loads it again and reports the
error as it always did.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import tensorflow as tf
import tensorflow_model_analysis as tfma

from components import graph_optimization, patching

log = logging.getLogger(__name__)

# A thread still loading when the evaluation ends is not waited for longer than this.
JOIN_SECONDS = 60.0


class _Warmer:
    def __init__(self, example: bytes | None):
        self.example = example
        self.threads: list[threading.Thread] = []
        # Strong references: Beam's Shared handle holds the models weakly.
        self.models: list[Any] = []
        self._lock = threading.Lock()

    def wrap(self, describe: Callable[..., Any]) -> Callable[..., Any]:
        def eval_shared_model(*args, **kwargs):
            shared = describe(*args, **kwargs)
            loader = getattr(shared, "model_loader", None)
            if loader is not None:
                name = getattr(shared, "model_name", "") or "candidate"
                thread = threading.Thread(target=self._warm, args=(loader, name), name=f"tfma-warm-{name}")
                thread.daemon = True
                thread.start()
                self.threads.append(thread)
            return shared

        return eval_shared_model

    def _warm(self, loader: Any, name: str) -> None:
        try:
            model = loader.load()
            with self._lock:
                self.models.append(model)
            signature = getattr(model, "signatures", {}).get("serving_default")
            if signature is None or self.example is None:
                return
            inputs = signature.structured_input_signature[1]
            if len(inputs) != 1:
                return
            [(key, spec)] = inputs.items()
            if spec.dtype == tf.string and spec.shape.rank == 1:
                signature(**{key: tf.constant([self.example])})
        except Exception as e:  # noqa: BLE001 - TFMA loads and runs the model itself and reports errors
            log.debug("warming model %s for TFMA failed (TFMA will load it itself): %s", name, e)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(JOIN_SECONDS)


@contextlib.contextmanager
def warm_models(example: bytes | None) -> Iterator[None]:
    """Within the block, each model TFX describes for TFMA is loaded and called once in a thread.

    `example`: one serialized tf.Example of the eval data (None: load only).
    """
    warmer = _Warmer(example)
    try:
        with patching.replaced(tfma, "default_eval_shared_model", warmer.wrap):
            yield
    finally:
        warmer.join()
        warmer.models.clear()


def _is_baseline(kwargs: dict[str, Any]) -> bool:
    config, name = kwargs.get("eval_config"), kwargs.get("model_name", "")
    return any(s.is_baseline and s.name == name for s in getattr(config, "model_specs", []))


@contextlib.contextmanager
def offer_candidates() -> Iterator[None]:
    """Within the block, each candidate model TFMA loads is offered to pre-push validation.

    The candidate's loader is wrapped so that the object it constructs, the one TFMA
    evaluates, is also offered under its path (components/loaded_models.py). Only within a
    local run's `sharing()`, which imgpipe opens only when TFMA runs in this process (Beam's
    in-memory runner): elsewhere the loader TFMA pickles into its job stays TFMA's own, so
    a remote worker never needs imgpipe's modules to unpickle it. Baselines are not offered.
    """
    from components import loaded_models

    if not loaded_models.active():
        yield
        return

    def offering(describe):
        def eval_shared_model(*args, **kwargs):
            shared = describe(*args, **kwargs)
            loader, path = getattr(shared, "model_loader", None), getattr(shared, "model_path", None)
            if loader is not None and path and not _is_baseline(kwargs):
                construct = loader.construct_fn

                def construct_and_offer():
                    model = construct()
                    # Within the Evaluator's block: whether TFMA runs it with Grappler's rewrites.
                    loaded_models.offer(
                        path,
                        model
                        if graph_optimization.rewrites_on()
                        else graph_optimization.WithoutRewrites(model),
                    )
                    return model

                loader.construct_fn = construct_and_offer
            return shared

        return eval_shared_model

    with patching.replaced(tfma, "default_eval_shared_model", offering):
        yield


def first_example(examples: Any, splits: list[str]) -> bytes | None:
    """The first serialized record of the Examples artifact's first readable split, or None."""
    from tfx.types import artifact_utils

    from trainer import data

    for split in splits:
        try:
            uri = artifact_utils.get_split_uri([examples], split)
            for record in data.raw_examples(uri).take(1):
                return bytes(record.numpy())
        except (tf.errors.OpError, ValueError, FileNotFoundError) as e:
            log.debug("no example read from split %s of %s: %s", split, examples.uri, e)
    return None
