"""Training as plain functions: no TFX types here, so it can be tested and benchmarked directly.

Phase 1 trains the head on the frozen backbone (from cached backbone features
where valid). Optional phase 2 unfreezes the top K backbone layers, BatchNorm
excepted, and continues at a low learning rate on images.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from trainer import data, distribution, model as model_lib


@dataclasses.dataclass(frozen=True)
class TrainParams:
    backbone: str = "MobileNetV2"
    weights: str = "imagenet"
    image_size: int = 224
    dropout: float = 0.2
    batch_size: int = 32  # per replica
    epochs: int = 5
    steps_per_epoch: int | None = None
    learning_rate: float = 1e-3
    fine_tune_layers: int = 0
    fine_tune_epochs: int = 0
    fine_tune_learning_rate: float = 1e-5
    augment: bool = False
    feature_cache: bool = True
    seed: int = 42

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "TrainParams":
        """Pick this class's fields out of a (larger) config mapping."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})


@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    class_names: list[str]
    replicas: int
    global_batch_size: int
    feature_cache_used: bool
    eval_accuracy: float
    history: dict[str, list[float]]
    seconds: dict[str, float]
    notes: list[str]

    def summary(self) -> dict[str, Any]:
        return {
            "class_names": self.class_names,
            "replicas": self.replicas,
            "global_batch_size": self.global_batch_size,
            "feature_cache_used": self.feature_cache_used,
            "eval_accuracy": self.eval_accuracy,
            "history": self.history,
            "seconds": self.seconds,
            "notes": self.notes,
        }


def _say(msg: str) -> None:
    print(f"[trainer] {msg}", flush=True)


def _callbacks(log_dir: str | None) -> list[keras.callbacks.Callback]:
    if not log_dir:
        return []
    return [keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch")]


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
    params: TrainParams,
    strategy: tf.distribute.Strategy | None = None,
    log_dir: str | None = None,
    cache_dir: str | None = None,
    verbose: int = 2,
) -> TrainResult:
    """Build the model under `strategy` (default: every local device) and train it."""
    tf.keras.utils.set_random_seed(params.seed)
    strategy = strategy or distribution.make_strategy()
    replicas = strategy.num_replicas_in_sync
    global_batch = params.batch_size * replicas
    class_names = data.class_names(tf_transform_output)
    num_classes = len(class_names)
    notes: list[str] = []
    seconds: dict[str, float] = {}
    history: dict[str, list[float]] = {}
    _say(
        f"{num_classes} classes, backbone {params.backbone} ({params.weights}), "
        f"{params.image_size}px, batch {params.batch_size}/replica x {replicas} = {global_batch}"
    )

    def images(files, shuffle: bool, augment: bool) -> tf.data.Dataset:
        spec = data.InputSpec(
            batch_size=global_batch, num_classes=num_classes, shuffle=shuffle, augment=augment, seed=params.seed
        )
        return data.make_dataset(files, tf_transform_output, spec)

    with strategy.scope():
        model = model_lib.build_model(
            params.backbone, params.weights, params.image_size, num_classes, params.dropout
        )

    use_cache, why = data.cache_decision(params.augment, fine_tuning=False, requested=params.feature_cache)
    _say(why)
    notes.append(why)
    fit_args: dict[str, Any] = {"epochs": params.epochs, "verbose": verbose, "callbacks": _callbacks(log_dir)}

    t0 = time.perf_counter()
    if use_cache:
        head = model_lib.head_of(model)
        backbone = model_lib.backbone_of(model)
        with strategy.scope():
            model_lib.compile_model(head, num_classes, params.learning_rate)
        t_cache = time.perf_counter()
        train_cache = data.build_feature_cache(
            strategy, backbone, images(train_files, False, False), _sub(cache_dir, "train")
        )
        eval_cache = data.build_feature_cache(
            strategy, backbone, images(eval_files, False, False), _sub(cache_dir, "eval")
        )
        seconds["feature_extraction"] = time.perf_counter() - t_cache
        _say(
            f"cached {train_cache.count} train + {eval_cache.count} eval feature vectors "
            f"({train_cache.feature_dim}-d, in {train_cache.location}) in {seconds['feature_extraction']:.1f}s"
        )
        train_ds = train_cache.batches(global_batch, shuffle=True, seed=params.seed)
        eval_ds = eval_cache.batches(global_batch, shuffle=False, seed=params.seed)
        if params.steps_per_epoch:
            train_ds = train_ds.repeat()
            fit_args["steps_per_epoch"] = params.steps_per_epoch
        h = head.fit(train_ds, validation_data=eval_ds, **fit_args)
    else:
        with strategy.scope():
            model_lib.compile_model(model, num_classes, params.learning_rate)
        train_ds = images(train_files, True, params.augment)
        eval_ds = images(eval_files, False, False)
        if params.steps_per_epoch:
            train_ds = train_ds.repeat()
            fit_args["steps_per_epoch"] = params.steps_per_epoch
        h = model.fit(train_ds, validation_data=eval_ds, **fit_args)
    seconds["train"] = time.perf_counter() - t0
    _merge(history, h)
    accuracy = _eval_accuracy(h)

    if params.fine_tune_layers > 0 and params.fine_tune_epochs > 0:
        _, why = data.cache_decision(params.augment, fine_tuning=True, requested=params.feature_cache)
        _say(why)
        notes.append(why)
        with strategy.scope():
            n = model_lib.unfreeze_top(model, params.fine_tune_layers)
            model_lib.compile_model(model, num_classes, params.fine_tune_learning_rate)
        _say(f"fine-tuning {n} backbone layers at learning rate {params.fine_tune_learning_rate}")
        t1 = time.perf_counter()
        ft_args = dict(fit_args, epochs=params.epochs + params.fine_tune_epochs, initial_epoch=params.epochs)
        train_ds = images(train_files, True, params.augment)
        if params.steps_per_epoch:
            train_ds = train_ds.repeat()
        h2 = model.fit(train_ds, validation_data=images(eval_files, False, False), **ft_args)
        seconds["fine_tune"] = time.perf_counter() - t1
        _merge(history, h2, prefix="fine_tune_")
        accuracy = _eval_accuracy(h2)
        # Freeze again so the exported model reports no trainable backbone weights.
        model_lib.backbone_of(model).trainable = False

    _say(f"eval accuracy {accuracy:.4f}; training took {sum(seconds.values()):.1f}s")
    return TrainResult(
        model=model,
        class_names=class_names,
        replicas=replicas,
        global_batch_size=global_batch,
        feature_cache_used=use_cache,
        eval_accuracy=accuracy,
        history=history,
        seconds=seconds,
        notes=notes,
    )


def _sub(d: str | None, name: str) -> str | None:
    return os.path.join(d, name) if d else None


def write_summary(result: TrainResult, path: str) -> None:
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(result.summary(), f, indent=2, default=lambda o: float(o) if isinstance(o, np.floating) else str(o))
