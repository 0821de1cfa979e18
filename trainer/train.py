"""Training as plain functions: no TFX types here, so it can be tested and benchmarked directly.

Phase 1 trains the head on the frozen backbone (from cached backbone features
where valid). Optional phase 2 unfreezes the top K backbone layers, BatchNorm
excepted, and continues at a low learning rate on images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer import data, distribution, tracing
from trainer import model as model_lib
from trainer.config import TrainingConfig

if TYPE_CHECKING:  # only for annotations: importing TFT costs seconds
    import tensorflow_transform as tft

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    """What train() did. `feature_cache_used` is about phase 1 (the head on the frozen
    backbone); `feature_cache_phases` says it per phase ("head", and "fine_tune" when run);
    `notes` carries the reason for each decision, as logged."""

    model: keras.Model
    class_names: list[str]
    replicas: int
    global_batch_size: int
    eval_accuracy: float
    history: dict[str, list[float]]
    seconds: dict[str, float]  # disjoint phases: feature_extraction, train, fine_tune
    notes: list[str]
    feature_cache_phases: dict[str, bool] = dataclasses.field(default_factory=dict)

    @property
    def feature_cache_used(self) -> bool:
        return self.feature_cache_phases.get("head", False)

    def summary(self) -> dict[str, Any]:
        return {
            "class_names": self.class_names,
            "replicas": self.replicas,
            "global_batch_size": self.global_batch_size,
            "feature_cache_used": self.feature_cache_used,
            "feature_cache_phases": self.feature_cache_phases,
            "eval_accuracy": self.eval_accuracy,
            "history": self.history,
            "seconds": self.seconds,
            "notes": self.notes,
        }


def _callbacks(
    log_dir: str | None, extra: Sequence[keras.callbacks.Callback]
) -> list[keras.callbacks.Callback]:
    board = [keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch")] if log_dir else []
    return board + list(extra)


def _merge(history: dict[str, list[float]], h: keras.callbacks.History, prefix: str = "") -> None:
    for k, v in h.history.items():
        history.setdefault(prefix + k, []).extend(float(x) for x in v)


def _eval_accuracy(h: keras.callbacks.History) -> float:
    vals = h.history.get("val_accuracy")
    return float(vals[-1]) if vals else float("nan")


def train(
    train_files: str | Sequence[str],
    eval_files: str | Sequence[str],
    tf_transform_output: tft.TFTransformOutput,
    params: TrainingConfig,
    strategy: tf.distribute.Strategy | None = None,
    log_dir: str | None = None,
    cache_dir: str | None = None,
    verbose: int = 2,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    cache_memory_bytes: int = data.DEFAULT_CACHE_MEMORY_BYTES,
) -> TrainResult:
    """Build the model under `strategy` (default: every local device) and train it.

    Phase 1 trains the head; with the feature cache on (the default where valid)
    the backbone runs once over each split and the head trains on its features
    for every epoch. Features past `cache_memory_bytes` spill to `cache_dir` (or
    a temporary directory) and are deleted when training ends. The returned model
    is always the full image -> probabilities model. `callbacks` are added to
    every fit (e.g. an epoch timer).
    """
    tracing.install()  # trace Keras's fit/evaluate steps without converting tf_keras itself
    tf.keras.utils.set_random_seed(params.seed)
    image_size = params.effective_image_size()
    strategy = strategy or distribution.make_strategy()
    replicas = strategy.num_replicas_in_sync
    global_batch = params.batch_size * replicas
    class_names = data.class_names(tf_transform_output)
    num_classes = len(class_names)
    notes: list[str] = []
    seconds: dict[str, float] = {}
    history: dict[str, list[float]] = {}
    phases: dict[str, bool] = {}
    log.info(
        f"{num_classes} classes, backbone {params.backbone} ({params.weights}), "
        f"{image_size}px, batch {params.batch_size}/replica x {replicas} = {global_batch}"
    )

    def note(msg: str) -> None:
        log.info(msg)
        notes.append(msg)

    def images(files, shuffle: bool, augment: bool) -> tf.data.Dataset:
        spec = data.InputSpec(
            batch_size=global_batch,
            num_classes=num_classes,
            shuffle=shuffle,
            augment=augment,
            seed=params.seed,
        )
        return data.make_dataset(files, tf_transform_output, spec)

    with strategy.scope():
        model = model_lib.build_model(
            params.backbone,
            params.weights,
            image_size,
            num_classes,
            params.dropout,
        )

    use_cache, why = data.cache_decision(params.augment, fine_tuning=False, requested=params.feature_cache)
    note(why)
    phases["head"] = use_cache
    fit_args: dict[str, Any] = {
        "epochs": params.epochs,
        "verbose": verbose,
        "callbacks": _callbacks(log_dir, callbacks),
    }

    # Phase 1 fits the head alone on cached features, or the full model on images.
    with contextlib.ExitStack() as cleanup:
        if use_cache:
            fit_model = model_lib.head_of(model)
            t_cache = time.perf_counter()
            extractor = data.FeatureExtractor(strategy, model_lib.backbone_of(model))
            caches = []
            for split, files in (("train", train_files), ("eval", eval_files)):
                caches.append(
                    extractor.cache(images(files, False, False), _sub(cache_dir, split), cache_memory_bytes)
                )
                cleanup.callback(caches[-1].release)  # spilled files go when training ends
            train_cache, eval_cache = caches
            seconds["feature_extraction"] = time.perf_counter() - t_cache
            where = f"spilled to disk ({train_cache.location})" if train_cache.spilled else "memory"
            note(
                f"feature cache: {train_cache.count} train + {eval_cache.count} eval "
                f"{train_cache.feature_dim}-d vectors in {where}, "
                f"extracted in {seconds['feature_extraction']:.1f}s"
            )
            train_ds = train_cache.batches(global_batch, shuffle=True, seed=params.seed)
            eval_ds = eval_cache.batches(global_batch, shuffle=False, seed=params.seed)
        else:
            fit_model = model
            train_ds = images(train_files, True, params.augment)
            eval_ds = images(eval_files, False, False)
        with strategy.scope():
            model_lib.compile_model(fit_model, num_classes, params.learning_rate)
        if params.steps_per_epoch:
            train_ds = train_ds.repeat()
            fit_args["steps_per_epoch"] = params.steps_per_epoch
        t0 = time.perf_counter()
        h = fit_model.fit(train_ds, validation_data=eval_ds, **fit_args)
        seconds["train"] = time.perf_counter() - t0
    _merge(history, h)
    accuracy = _eval_accuracy(h)

    if params.fine_tune_layers > 0 and params.fine_tune_epochs > 0:
        phases["fine_tune"], why = data.cache_decision(
            params.augment, fine_tuning=True, requested=params.feature_cache
        )
        note(why)
        with strategy.scope():
            n = model_lib.unfreeze_top(model, params.fine_tune_layers)
            model_lib.compile_model(model, num_classes, params.fine_tune_learning_rate)
        log.info(f"fine-tuning {n} backbone layers at learning rate {params.fine_tune_learning_rate}")
        t1 = time.perf_counter()
        ft_args = dict(
            fit_args,
            epochs=params.epochs + params.fine_tune_epochs,
            initial_epoch=params.epochs,
        )
        train_ds = images(train_files, True, params.augment)
        if params.steps_per_epoch:
            train_ds = train_ds.repeat()
        h2 = model.fit(train_ds, validation_data=images(eval_files, False, False), **ft_args)
        seconds["fine_tune"] = time.perf_counter() - t1
        _merge(history, h2, prefix="fine_tune_")
        accuracy = _eval_accuracy(h2)
        # Freeze again so the exported model reports no trainable backbone weights.
        model_lib.backbone_of(model).trainable = False

    log.info(f"eval accuracy {accuracy:.4f}; training took {sum(seconds.values()):.1f}s")
    return TrainResult(
        model=model,
        class_names=class_names,
        replicas=replicas,
        global_batch_size=global_batch,
        eval_accuracy=accuracy,
        history=history,
        seconds=seconds,
        notes=notes,
        feature_cache_phases=phases,
    )


def _sub(d: str | None, name: str) -> str | None:
    return os.path.join(d, name) if d else None


def write_summary(result: TrainResult, path: str, extra: dict[str, Any] | None = None) -> None:
    """The training summary as JSON; `extra` adds keys (e.g. the TFLite export's check)."""
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(
            {**result.summary(), **(extra or {})},
            f,
            indent=2,
            default=lambda o: float(o) if isinstance(o, np.floating) else str(o),
        )
