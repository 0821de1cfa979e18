"""Training as plain functions: no TFX types here, so it can be tested and benchmarked directly.

Phase 1 trains the head on the frozen backbone (from cached backbone features
where valid) to convergence: early stopping on a validation slice held out from
the train split (never the eval split, which the Evaluator gates on), the best
epoch's weights kept, then by default a fresh head trained on the whole train
split for that many epochs (trainer/head.py says why). Balanced class weights
apply when the classes are imbalanced; `--tune N` searches head settings
first (trainer/tune.py). The eval split is read once, at the end, to report
accuracy. Optional phase 2 unfreezes the top K backbone layers, BatchNorm
excepted, and continues at a low learning rate on images for exactly
`fine_tune_epochs` epochs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer import (
    data,
    distribution,
    feature_store,
    flip_check,
    head,
    image_ids,
    label_check,
    memory_fit,
    tracing,
)
from trainer import model as model_lib
from trainer.config import TrainingConfig
from trainer.features import images_per_call

if TYPE_CHECKING:  # only for annotations: importing TFT costs seconds
    import tensorflow_transform as tft

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    """What train() did. `feature_cache_used` is about phase 1 (the head on the frozen
    backbone); `feature_cache_phases` says it per phase ("head", and "fine_tune" when run);
    `notes` carries the reason for each decision, as logged.

    Epochs are counted from 1. `best_epoch` is the epoch with the lowest validation-slice
    loss (None without early stopping), `stopped_epoch` the epoch at which early stopping
    ended the selection fit (None when it ran to the `epochs` cap), `refit_epochs` the
    epochs of the final head on the whole train split (None when the selected head was
    kept). `class_weights` maps class name to loss weight (None: unweighted). `history`
    holds the selection fit (`val_*` = the validation slice, not the eval split), the
    refit (`refit_*`) and fine-tuning (`fine_tune_*`).
    """

    model: keras.Model
    class_names: list[str]
    replicas: int
    global_batch_size: int
    eval_accuracy: float
    history: dict[str, list[float]]
    # disjoint phases: feature_extraction (or feature_stats), train (or tune), fine_tune
    seconds: dict[str, float]
    notes: list[str]
    feature_cache_phases: dict[str, bool] = dataclasses.field(default_factory=dict)
    class_weights: dict[str, float] | None = None
    hparams: dict[str, float] = dataclasses.field(default_factory=dict)
    validation_examples: int = 0
    epochs_run: int = 0
    best_epoch: int | None = None
    stopped_epoch: int | None = None
    refit_epochs: int | None = None
    selection_folds: int | None = None  # the epoch count came from k-fold cross-validation
    tuning: dict[str, Any] | None = None
    standardized: bool = False
    # What the feature store did (trainer/feature_store.py): images whose features were reused
    # and extracted, per split, and the store; None when it was not used.
    feature_store: dict[str, Any] | None = None
    # The head's held-out answers against the train labels (trainer/label_check.py); None when
    # no train images were held out from a fit in memory.
    label_check: dict[str, Any] | None = None
    # Whether augment's flip turns a class into another (trainer/flip_check.py); None: augment off.
    flip_check: dict[str, Any] | None = None

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
            "class_weights": self.class_weights,
            "head": self.hparams,
            "standardized": self.standardized,
            "validation_examples": self.validation_examples,
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
            "refit_epochs": self.refit_epochs,
            "selection_folds": self.selection_folds,
            "tuning": self.tuning,
            "feature_store": self.feature_store,
            "label_check": self.label_check,
            "flip_check": self.flip_check,
            "history": self.history,
            "seconds": self.seconds,
            "notes": self.notes,
        }


def _callbacks(
    log_dir: str | None, extra: Sequence[keras.callbacks.Callback]
) -> list[keras.callbacks.Callback]:
    board = [keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch")] if log_dir else []
    return board + list(extra)


def _merge(history: dict[str, list[float]], h: dict[str, list[float]], prefix: str = "") -> None:
    for k, v in h.items():
        history.setdefault(prefix + k, []).extend(float(x) for x in v)


def _accuracy(model: keras.Model, ds: tf.data.Dataset) -> float:
    return float(model_lib.evaluate_batches(model, ds)["accuracy"])


@dataclasses.dataclass
class HeadPhase:
    """Phase 1's outcome: the final head (or full model, on the image path) and its story."""

    run: head.HeadRun
    eval_accuracy: float
    class_weights: np.ndarray | None
    validation_examples: int
    tuning: dict[str, Any] | None
    seconds: dict[str, float]  # "train", or "tune" (the search and the final head)
    feature_stats: tuple[np.ndarray, np.ndarray] | None = None  # the head's standardisation
    label_check: dict[str, Any] | None = None  # trainer/label_check.py's record (None: not made)
    flip_check: dict[str, Any] | None = None  # trainer/flip_check.py's record (None: augment off)


def _head_phase(
    labels: np.ndarray,
    make_data: Callable[[np.ndarray | None], tuple[head.HeadData, str]],
    build: Callable[[head.HeadHParams], keras.Model],
    evaluate: Callable[[keras.Model], float],
    params: TrainingConfig,
    num_classes: int,
    callbacks: Sequence[keras.callbacks.Callback],
    verbose: int,
    note: Callable[[str], None],
    class_names: Sequence[str] | None = None,
    eval_examples: int = 0,
) -> HeadPhase:
    """Class weights, the validation slice, (tuning,) training, then the eval split's one use,
    and the label check on the selection's held-out answers (trainer/label_check.py)."""
    weights, why = head.class_weights(labels, num_classes, params.class_weights, class_names)
    note(why)
    head_data, why = make_data(weights)
    note(why)
    seconds: dict[str, float] = {}
    tuning = None
    t0 = time.perf_counter()
    if params.tune_trials:
        # Imported here: KerasTuner imports Keras 3 on import (~10-20 s here), which only
        # --tune needs.
        from trainer import tune

        if isinstance(head_data, head.ArrayData) and head.needs_folds(head_data, params):
            # The trials are scored on the slice alone (a trial per fold would multiply the
            # search by cv_folds); without --tune, cross-validation would choose the epochs.
            log.warning(
                "tune: the validation slice holds fewer than %d examples of a class: the %d trials are "
                "scored on it alone, so which one wins is noisy; with this little data, the untuned "
                "head (--tune 0) has its epochs chosen by %d-fold cross-validation instead",
                head.FOLDS_BELOW,
                params.tune_trials,
                params.cv_folds,
            )
            note(
                f"tune: trials scored on a validation slice with fewer than {head.FOLDS_BELOW} examples of "
                "a class (noisy; without --tune, cross-validation would choose the epochs)"
            )
        tuned = tune.tune_head(build, head_data, params, params.tune_trials, judge=evaluate)
        seconds["tune"] = time.perf_counter() - t0
        run, tuning = tuned.run, tuned.summary()
        note(f"tune: {len(tuned.trials)} trials, best {tuned.best.to_dict()}")
    else:
        hp = head.HeadHParams(params.learning_rate, params.dropout, params.l2)
        run = head.train_head(build, hp, head_data, params, callbacks, verbose, judge=evaluate)
        seconds["train"] = time.perf_counter() - t0
    _describe(note, run, params)
    uniform = _no_better_than_uniform(run, num_classes, head_data.validation_examples)
    if uniform:
        note(uniform)
        log.warning("%s", uniform)  # the model may still pass the gate on its accuracy: said aloud
    accuracy = evaluate(run.model)
    labels_checked = _label_check(
        run, labels, num_classes, class_names, accuracy, eval_examples, note, tuned=bool(params.tune_trials)
    )
    return HeadPhase(
        run, accuracy, weights, head_data.validation_examples, tuning, seconds, label_check=labels_checked
    )


def _label_check(
    run: head.HeadRun,
    labels: np.ndarray,
    num_classes: int,
    class_names: Sequence[str] | None,
    eval_accuracy: float,
    eval_examples: int,
    note: Callable[[str], None],
    tuned: bool = False,
) -> dict[str, Any] | None:
    """trainer/label_check.py's record from the selection's held-out answers, noted (and its
    warning logged); None, noted, when the selection held none out. `tuned`: --tune's winning
    trial answers, chosen on the slice it answers (said in the record's `held_out`)."""
    held = run.selection.held_out
    if held is None or not len(held.positions):
        note("label check: not made (no train images were held out from a fit in memory)")
        return None
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if tuned:
        held = dataclasses.replace(held, source=f"{held.source}, the tuned trial chosen on it")
    same_head = held.eval_accuracy is not None
    if same_head:  # the answering head's own, not the refit's
        eval_accuracy = held.eval_accuracy
    record = label_check.check(
        held, labels, names, eval_accuracy if eval_examples else None, eval_examples, chosen_on_it=tuned
    )
    if not same_head:
        record["eval_accuracy_of"] = "the final model"
    elif run.selection.folds:
        record["eval_accuracy_of"] = "the folds' heads that answered the held-out images (their mean)"
    else:
        record["eval_accuracy_of"] = "the head that answered the held-out images (before the refit)"
    if record["agreement"] is None:
        note(f"label check: not judged ({record.get('not_judged')})")
        return record
    note(
        f"label check: the head's answers on {record['examined']} held-out train images "
        f"({record['held_out']}) agree with their labels at {record['agreement']:.4f}; "
        f"{record['doubted']} answered as another class as surely as its own images"
    )
    if record["warning"]:
        log.warning("%s", record["warning"])  # kept in the record: the summary's label_check.warning
    return record


def _stats(cache: data.FeatureCache, params: TrainingConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """The head's standardisation from the train split's features (None when off)."""
    return model_lib.feature_stats(*cache.moments()) if params.standardize else None


# The images one backbone call extracts features from, in pixels: 32 images at 256 px. The
# activations of a call grow with its pixels: MobileNetV2 at 1024 px took a 10.6 GB peak for a
# batch of 32 and 1.7 GB for 4, in less time (BENCHMARKS.md "Feature extraction at large image
# sizes"). At 256 px and below the training batch (32 a replica) is under it and used as is.
EXTRACTION_PIXELS = 32 * 256 * 256


def extraction_batch(global_batch: int, image_size: int, replicas: int = 1) -> int:
    """Images per feature-extraction call: the global batch, or fewer where that many images of
    `image_size` pixels a side pass EXTRACTION_PIXELS (a multiple of `replicas`, at least one each)."""
    return images_per_call(global_batch, image_size, EXTRACTION_PIXELS, replicas)


def train_cached_head(
    train_cache: data.FeatureCache,
    eval_cache: data.FeatureCache,
    params: TrainingConfig,
    num_classes: int,
    batch_size: int,
    strategy: tf.distribute.Strategy | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
    note: Callable[[str], None] = log.info,
    class_names: Sequence[str] | None = None,
    groups: np.ndarray | None = None,
) -> HeadPhase:
    """Phase 1 on cached features: what train() runs after extraction (benchmarks call it
    directly). `batch_size` is the global batch. A memory cache trains with memory_fit,
    off any strategy; a spilled one with Keras' fit under `strategy`. `groups`: an int per
    train example, the same for near-copies, which the validation slice and the folds keep whole
    (head.holdout_mask; None: every example on its own)."""
    strategy = strategy or tf.distribute.get_strategy()
    labels = train_cache.labels
    in_memory = train_cache.arrays is not None and eval_cache.arrays is not None
    stats = _stats(train_cache, params)

    def make_data(weights: np.ndarray | None) -> tuple[head.HeadData, str]:
        if in_memory:
            return head.array_data(*train_cache.arrays, labels, weights, params, batch_size, groups)

        def batches(mask: np.ndarray | None, shuffle: bool) -> tf.data.Dataset:
            cache = train_cache if mask is None else train_cache.select(mask)
            return cache.batches(batch_size, shuffle=shuffle, seed=params.seed)

        return head.dataset_data(labels, batches, weights, params, groups)

    def build(hp: head.HeadHParams) -> keras.Model:
        with contextlib.nullcontext() if in_memory else strategy.scope():
            m = model_lib.build_head(train_cache.feature_dim, num_classes, hp.dropout, hp.l2, stats)
            model_lib.compile_model(m, num_classes, hp.learning_rate)
        return m

    def evaluate(m: keras.Model) -> float:
        if in_memory:
            return memory_fit.evaluate(m, memory_fit.Arrays.of(*eval_cache.arrays))["accuracy"]
        return _accuracy(m, eval_cache.batches(batch_size, shuffle=False, seed=params.seed))

    phase = _head_phase(
        labels,
        make_data,
        build,
        evaluate,
        params,
        num_classes,
        callbacks,
        verbose,
        note,
        class_names,
        eval_examples=eval_cache.count,
    )
    phase.feature_stats = stats
    return phase


@dataclasses.dataclass
class _Training:
    """One `train()` call: its settings, how it reads a split, and the notes and timings it records."""

    params: TrainingConfig
    tf_transform_output: tft.TFTransformOutput
    strategy: tf.distribute.Strategy
    class_names: list[str]
    cache_dir: str | None
    cache_memory_bytes: int
    verbose: int
    callbacks: list[keras.callbacks.Callback]
    feature_store_dir: str | None = None
    near_copies: Sequence[np.ndarray] = ()  # image_ids.near_copy_sets of the data's ingest
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return self.params.effective_image_size()

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def global_batch(self) -> int:
        return self.params.batch_size * self.replicas

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def note(self, msg: str) -> None:
        log.info(msg)
        self.notes.append(msg)

    def images(
        self,
        files,
        shuffle: bool,
        augment: bool,
        select: np.ndarray | None = None,
        measuring: bool = False,
        batch_size: int | None = None,
    ) -> tf.data.Dataset:
        spec = data.InputSpec(
            batch_size=batch_size or self.global_batch,
            num_classes=self.num_classes,
            shuffle=shuffle,
            augment=augment,
            seed=self.params.seed,
            drop_unmapped=measuring,
        )
        return data.make_dataset(files, self.tf_transform_output, spec, select=select)

    def extraction_batch(self) -> int:
        return extraction_batch(self.global_batch, self.image_size, self.replicas)


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
    feature_store_dir: str | None = None,
    near_copies: Sequence[np.ndarray] = (),
) -> TrainResult:
    """Build the model under `strategy` (default: every local device) and train it.

    Phase 1 trains the head; with the feature cache on (the default where valid)
    the backbone runs once over each split and the head trains on its features
    for every epoch. Features past `cache_memory_bytes` spill to `cache_dir` (or
    a temporary directory) and are deleted when training ends. With `feature_store_dir`,
    images whose features an earlier run kept there are not extracted again, and this
    run's are kept for the next (trainer/feature_store.py). `near_copies` (the data's sets of
    near-copies, image_ids.near_copy_sets) and images repeated in the train split are kept whole
    on one side of the head's validation slice and folds. The returned model
    is always the full image -> probabilities model. `callbacks` are added to the
    selection fit, the refit and fine-tuning (not to --tune trials), e.g. an epoch timer.
    """
    tracing.install()  # trace Keras's fit/evaluate steps without converting tf_keras itself
    tf.keras.utils.set_random_seed(params.seed)
    run = _Training(
        params,
        tf_transform_output,
        strategy or distribution.make_strategy(),
        data.class_names(tf_transform_output),
        cache_dir,
        cache_memory_bytes,
        verbose,
        _callbacks(log_dir, callbacks),
        feature_store_dir,
        near_copies,
    )
    history: dict[str, list[float]] = {}
    phases: dict[str, bool] = {}
    log.info(
        f"{run.num_classes} classes, backbone {params.backbone} ({params.weights}), "
        f"{run.image_size}px, batch {params.batch_size}/replica x {run.replicas} = {run.global_batch}"
    )
    with run.strategy.scope():
        base = model_lib.build_backbone(params.backbone, params.weights, run.image_size)
        base.trainable = False

    # Train labels with no class fail the input function, by name (never trained on). Eval
    # labels with no class reach here only when the user allowed that anomaly at the
    # DataGate: the Trainer's own eval accuracy leaves them out, the Evaluator counts them.
    data.check_labelled(train_files, "train")  # the input function would fail on one, naming no record
    unmapped = data.unmapped_label_counts(eval_files, tf_transform_output)
    if unmapped:
        listed = ", ".join(f"{name!r} x{n}" for name, n in unmapped.items())
        run.note(
            f"eval examples whose label has no class in the model ({listed}) are left out of the "
            "Trainer's eval accuracy; the Evaluator's gate counts them as errors"
        )
    use_cache, why = data.cache_decision(params.augment, fine_tuning=False, requested=params.feature_cache)
    run.note(why)
    phases["head"] = use_cache

    # Phase 1 fits the head alone on cached features, or the full model on images.
    stored = None
    with contextlib.ExitStack() as cleanup:
        if use_cache:
            phase, model, stored = _head_on_features(run, base, train_files, eval_files, cleanup)
        else:
            phase, model = _head_on_images(run, base, train_files, eval_files)
    run.seconds.update(phase.seconds)
    fitted, weights, accuracy = phase.run, phase.class_weights, phase.eval_accuracy
    _merge(history, fitted.selection.history)
    if fitted.refit is not None:
        _merge(history, fitted.refit.history, prefix="refit_")

    if params.fine_tune_layers > 0 and params.fine_tune_epochs > 0:
        phases["fine_tune"], why = data.cache_decision(
            params.augment, fine_tuning=True, requested=params.feature_cache
        )
        run.note(why)
        accuracy = _fine_tune(run, model, weights, train_files, eval_files, history)

    log.info(f"eval accuracy {accuracy:.4f}; training took {sum(run.seconds.values()):.1f}s")
    return TrainResult(
        model=model,
        class_names=run.class_names,
        replicas=run.replicas,
        global_batch_size=run.global_batch,
        eval_accuracy=accuracy,
        history=history,
        seconds=run.seconds,
        notes=run.notes,
        feature_cache_phases=phases,
        class_weights=None
        if weights is None
        else dict(zip(run.class_names, map(float, weights), strict=True)),
        hparams=fitted.hparams.to_dict(),
        validation_examples=phase.validation_examples,
        epochs_run=fitted.selection.epochs_run,
        best_epoch=fitted.selection.best_epoch,
        stopped_epoch=fitted.selection.stopped_epoch,
        refit_epochs=None if fitted.refit is None else fitted.refit.epochs_run,
        selection_folds=fitted.selection.folds,
        tuning=phase.tuning,
        standardized=phase.feature_stats is not None,
        feature_store=stored,
        label_check=phase.label_check,
        flip_check=phase.flip_check,
    )


def _head_on_features(
    run: _Training,
    base: keras.Model,
    train_files: str | Sequence[str],
    eval_files: str | Sequence[str],
    cleanup: contextlib.ExitStack,
) -> tuple[HeadPhase, keras.Model, dict[str, Any] | None]:
    """The head trained on the backbone's features of each split, extracted once (spilled files
    are released by `cleanup`) or reused from the feature store; the phase, the full model (the
    backbone and a copy of the final head made under the strategy), and what the store did."""
    params, strategy = run.params, run.strategy
    t_cache = time.perf_counter()
    extractor = data.FeatureExtractor(strategy, base)
    batch = run.extraction_batch()
    if batch < run.global_batch:
        run.note(
            f"features extracted {batch} images a call at {run.image_size}px, not the batch of "
            f"{run.global_batch}: a call's memory grows with its pixels"
        )
    splits = (("train", train_files), ("eval", eval_files))
    reuse = _StoreUse.open(run, extractor, batch)
    if reuse is not None:
        caches = reuse.caches(splits)
    else:
        caches = [_extract(run, extractor, split, files, batch) for split, files in splits]
    for cache in caches:
        cleanup.callback(cache.release)  # spilled files go when training ends
    train_cache, eval_cache = caches
    stored = reuse.finish([split for split, _ in splits]) if reuse else None
    run.seconds["feature_extraction"] = time.perf_counter() - t_cache
    where = f"spilled to disk ({train_cache.location})" if train_cache.spilled else "memory"
    how = (
        f"{stored['reused']} reused from an earlier run, {stored['extracted']} extracted"
        if stored and stored["reused"]
        else "extracted"
    )
    run.note(
        f"feature cache: {train_cache.count} train + {eval_cache.count} eval "
        f"{train_cache.feature_dim}-d vectors in {where}, "
        f"{how} in {run.seconds['feature_extraction']:.1f}s"
    )
    phase = train_cached_head(
        train_cache,
        eval_cache,
        params,
        run.num_classes,
        run.global_batch,
        strategy,
        run.callbacks,
        run.verbose,
        run.note,
        class_names=run.class_names,
        groups=_validation_groups(run, train_files, train_cache.labels, reuse),
    )
    hp = phase.run.hparams
    with strategy.scope():
        final = model_lib.build_head(
            train_cache.feature_dim, run.num_classes, hp.dropout, hp.l2, phase.feature_stats
        )
        final.set_weights(phase.run.model.get_weights())
        model = model_lib.assemble(base, final, run.image_size)
    return phase, model, stored


def _validation_groups(
    run: _Training,
    train_files: str | Sequence[str],
    labels: np.ndarray,
    reuse: _StoreUse | None,
) -> np.ndarray | None:
    """image_ids.groups of the train split's records (near-copies, repeated images), or None when
    every record is its own; said in a note when some are kept together (those of one class: the
    head's slice and folds deal by class, so one image under two labels is not held together)."""
    count = len(labels)
    kept = reuse.kept.get("train") if reuse is not None else None
    ids = kept[0] if kept is not None else image_ids.split_ids(train_files)
    if len(ids) != count:
        log.warning(
            "near-copies: %d train fingerprints for %d train examples: each image validated on its own",
            len(ids),
            count,
        )
        return None
    groups = image_ids.groups(ids, run.near_copies)
    _, sizes = np.unique(np.stack([groups, np.asarray(labels, np.int64)]), axis=1, return_counts=True)
    together = sizes[sizes > 1]
    if not len(together):
        return None
    run.note(
        f"validation: {int(together.sum())} train images in {len(together)} sets of near-copies or "
        "repeats, each set kept whole on one side of the validation slice and of each fold"
    )
    return groups


def _extract(
    run: _Training,
    extractor: data.FeatureExtractor,
    split: str,
    files: str | Sequence[str],
    batch: int,
    select: np.ndarray | None = None,
) -> data.FeatureCache:
    """The backbone's features of a split's records (those `select` keeps, in file order)."""
    return extractor.cache(
        run.images(files, False, False, select=select, measuring=split == "eval", batch_size=batch),
        _sub(run.cache_dir, split),
        run.cache_memory_bytes,
    )


@dataclasses.dataclass
class _StoreUse:
    """One run's use of the feature store: each split's features taken from it where it holds
    the image, the rest extracted, a sample of the stored ones extracted again to check it; the
    run's features kept in it for the next run (`finish`)."""

    run: _Training
    extractor: data.FeatureExtractor
    batch: int
    directory: str
    key: str
    store: feature_store.Store | None
    # Per split: (fingerprints, features) of the records the input function yields, and how
    # many of them were reused. A split missing here (its cache spilled, or the input function
    # had to say what is wrong with it) keeps the store from being written.
    kept: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
    reused: dict[str, int] = dataclasses.field(default_factory=dict)
    dropped: str | None = None  # why the store was discarded

    @classmethod
    def open(cls, run: _Training, extractor: data.FeatureExtractor, batch: int) -> _StoreUse | None:
        if not run.feature_store_dir:
            return None
        key = feature_store.store_key(run.params.backbone, run.params.weights, run.image_size)
        if key is None:
            run.note("feature store not used: weights none (a random backbone, drawn again each run)")
            return None
        store = feature_store.load(run.feature_store_dir, key)
        return cls(run, extractor, batch, run.feature_store_dir, key, store)

    def caches(self, splits: Sequence[tuple[str, str | Sequence[str]]]) -> list[data.FeatureCache]:
        """Each split's features. When a split's check discards the store, a split before it
        that took features from it is extracted again whole."""
        out = [self._split(split, files) for split, files in splits]
        for i, (split, files) in enumerate(splits):
            if self.dropped and self.reused.get(split):
                out[i] = self._split(split, files)
        return out

    def _split(self, split: str, files: str | Sequence[str]) -> data.FeatureCache:
        run, dim = self.run, self.extractor.feature_dim
        ids, labels = [], []
        for batch_ids, batch_labels, _ in image_ids.batches(files):
            ids.append(batch_ids)
            labels.extend(
                label.decode("utf-8", "backslashreplace") if label else None for label in batch_labels
            )
        all_ids = np.concatenate(ids) if ids else np.zeros(0, np.uint64)
        index = {name: i for i, name in enumerate(run.class_names)}
        # The records the input function yields: every one of train (a label with no class
        # fails it, by name: left to it), those with a class of eval.
        kept = np.array([label in index for label in labels], dtype=bool)
        fits = kept.sum() * (dim * 4 + 8) <= run.cache_memory_bytes  # float32 features, an int64 label
        if (split == "train" and not kept.all()) or None in labels or not fits:
            self.kept.pop(split, None)
            return _extract(run, self.extractor, split, files, self.batch)
        wanted = all_ids[kept]
        if self.store is not None:
            found, row = self.store.find(wanted)
        else:
            found, row = np.zeros(len(wanted), bool), np.zeros(len(wanted), np.int64)
        sample = feature_store.check_sample(found)
        fresh = ~found
        fresh[sample] = True
        cache = self._fresh(split, files, kept, fresh)
        if cache.arrays is None:  # spilled after all (the limit's margin): as without the store
            self.kept.pop(split, None)
            if fresh.all():
                return cache
            cache.release()
            return _extract(run, self.extractor, split, files, self.batch)
        features = np.empty((len(wanted), dim), np.float32)
        features[fresh] = cache.arrays[0]
        if self.store is not None and len(sample):
            same, diff = feature_store.agrees(features[sample], self.store.features[row[sample]])
            if not same:
                self._drop(
                    f"{len(sample)} stored images' features differ from the backbone's by up to {diff:.3g}"
                )
                return self._split(split, files)
        if not fresh.all():
            features[~fresh] = self.store.features[row[~fresh]]
        classes = np.array([index[label] for label, k in zip(labels, kept, strict=True) if k], dtype=np.int64)
        given = cache.arrays[1]
        labels_out = classes.astype(given.dtype).reshape((len(classes), *given.shape[1:]))
        if not np.array_equal(labels_out[fresh], given):
            self._drop("the records' labels read here differ from the input function's")
            return self._split(split, files)
        self.kept[split] = (wanted, features)
        self.reused[split] = int((~fresh).sum())
        return data.FeatureCache.in_memory(features, labels_out, memory_limit_bytes=run.cache_memory_bytes)

    def _fresh(
        self, split: str, files: str | Sequence[str], kept: np.ndarray, fresh: np.ndarray
    ) -> data.FeatureCache:
        """The features of the kept records where `fresh` (over the kept ones) is true (a cache
        that spilled to disk has no arrays)."""
        select = np.zeros(len(kept), bool)
        select[np.flatnonzero(kept)[fresh]] = True
        cache = _extract(self.run, self.extractor, split, files, self.batch, None if select.all() else select)
        if cache.count != int(fresh.sum()):
            raise RuntimeError(
                f"feature store: {cache.count} {split} features extracted for {int(fresh.sum())} records"
            )
        return cache

    def _drop(self, why: str) -> None:
        log.warning(
            "feature store %s discarded: %s; every image's features are extracted", self.store.path, why
        )
        self.run.notes.append(f"feature store discarded: {why}")
        self.store.drop()
        self.store = None
        self.dropped = why

    def finish(self, splits: Sequence[str]) -> dict[str, Any]:
        """Keep this run's features for the next run; what the store did, for the summary."""
        path = None
        if all(split in self.kept for split in splits):
            path = feature_store.save(
                self.directory,
                self.key,
                [self.kept[split][0] for split in splits],
                [self.kept[split][1] for split in splits],
            )
        counts = {
            split: {"reused": self.reused[split], "extracted": len(self.kept[split][0]) - self.reused[split]}
            for split in splits
            if split in self.kept
        }
        return {
            "key": self.key,
            "splits": counts,
            "reused": sum(c["reused"] for c in counts.values()),
            "extracted": sum(c["extracted"] for c in counts.values()),
            "saved": path,
            "discarded": self.dropped,
        }


def _head_on_images(
    run: _Training, base: keras.Model, train_files: str | Sequence[str], eval_files: str | Sequence[str]
) -> tuple[HeadPhase, keras.Model]:
    """The head trained inside the full model on images (the feature cache off: augmentation);
    the phase and the model."""
    params, strategy = run.params, run.strategy

    def make_data(weights: np.ndarray | None) -> tuple[head.HeadData, str]:
        def batches(mask: np.ndarray | None, shuffle: bool) -> tf.data.Dataset:
            return run.images(train_files, shuffle, params.augment and shuffle, select=mask)

        return head.dataset_data(labels, batches, weights, params, groups)

    stats = None
    extractor = data.FeatureExtractor(strategy, base)  # one trace for every pass below
    if params.standardize:
        # The standardisation needs the train split's features: one backbone pass
        # over its images (not augmented), kept only as sums.
        t_stats = time.perf_counter()
        cache = extractor.cache(
            run.images(train_files, False, False, batch_size=run.extraction_batch()),
            _sub(run.cache_dir, "stats"),
            run.cache_memory_bytes,
        )
        try:
            stats = _stats(cache, params)
        finally:
            cache.release()
        run.seconds["feature_stats"] = time.perf_counter() - t_stats
        run.note(f"feature standardisation: statistics of {cache.count} train images' features")

    def build(hp: head.HeadHParams) -> keras.Model:
        with strategy.scope():
            new_head = model_lib.build_head(
                int(base.output_shape[-1]), run.num_classes, hp.dropout, hp.l2, stats
            )
            m = model_lib.assemble(base, new_head, run.image_size)
            model_lib.compile_model(m, run.num_classes, hp.learning_rate)
        return m

    labels = data.class_indices(train_files, run.tf_transform_output)
    groups = _validation_groups(run, train_files, labels, None)
    flipped = _flip_check(run, extractor, train_files, labels) if params.augment else None
    eval_images = run.images(eval_files, False, False, measuring=True)
    phase = _head_phase(
        labels,
        make_data,
        build,
        lambda m: _accuracy(m, eval_images),
        params,
        run.num_classes,
        run.callbacks,
        run.verbose,
        run.note,
        run.class_names,
    )
    phase.feature_stats = stats
    phase.flip_check = flipped
    return phase, phase.run.model


def _flip_check(
    run: _Training, extractor: data.FeatureExtractor, train_files, labels: np.ndarray
) -> dict[str, Any]:
    """trainer/flip_check.py's record for a sample of the train images (augment flips them),
    noted, its warning logged."""
    t0 = time.perf_counter()
    keep = flip_check.sample(labels, run.num_classes, run.params.seed)
    ds = run.images(train_files, False, False, select=keep, batch_size=run.extraction_batch())
    as_they_are, flipped = (
        extractor.cache(images, memory_limit_bytes=1 << 62)  # a sample: kept in memory
        for images in (ds, ds.map(lambda x, y: (tf.image.flip_left_right(x), y)))
    )
    record = flip_check.check(as_they_are.arrays[0], flipped.arrays[0], as_they_are.labels, run.class_names)
    run.seconds["flip_check"] = time.perf_counter() - t0
    turned = ", ".join(f"{p['class']!r} -> {p['becomes']!r}" for p in record["pairs"]) or "none"
    unlike = ", ".join(repr(u["class"]) for u in record["unlike"]) or "none"
    found = (
        f"not judged: {record['not_judged']}"
        if record.get("not_judged")
        else f"classes a flip turns into another: {turned}; like no class once flipped: {unlike}"
    )
    if record.get("skipped"):
        found += "; not judged: " + ", ".join(f"{s['class']!r} ({s['why']})" for s in record["skipped"])
    run.note(
        f"flip check (augment flips images): {record['examined']} train images through the backbone as "
        f"they are and flipped; {found}"
    )
    if record["warning"]:
        log.warning("%s", record["warning"])
    return record


def _fine_tune(
    run: _Training,
    model: keras.Model,
    weights: np.ndarray | None,
    train_files: str | Sequence[str],
    eval_files: str | Sequence[str],
    history: dict[str, list[float]],
) -> float:
    """Phase 2: the top `fine_tune_layers` of the backbone trained with the head, on images; the
    eval accuracy after it. The backbone is frozen again afterwards."""
    params = run.params
    with run.strategy.scope():
        n = model_lib.unfreeze_top(model, params.fine_tune_layers)
        model_lib.compile_model(model, run.num_classes, params.fine_tune_learning_rate)
    log.info(f"fine-tuning {n} backbone layers at learning rate {params.fine_tune_learning_rate}")
    t1 = time.perf_counter()
    train_ds = run.images(train_files, True, params.augment)
    if params.steps_per_epoch:
        train_ds = train_ds.repeat()
    train_ds = head.with_sample_weights(train_ds, weights)
    h2 = model_lib.fit_batches(
        model,
        train_ds,
        epochs=params.fine_tune_epochs,
        steps_per_epoch=params.steps_per_epoch,
        callbacks=run.callbacks,
        verbose=run.verbose,
    )
    run.seconds["fine_tune"] = time.perf_counter() - t1
    _merge(history, h2.history, prefix="fine_tune_")
    accuracy = _accuracy(model, run.images(eval_files, False, False, measuring=True))
    # Freeze again so the exported model reports no trainable backbone weights.
    model_lib.backbone_of(model).trainable = False
    return accuracy


def _describe(note: Callable[[str], None], run: head.HeadRun, params: TrainingConfig) -> None:
    sel = run.selection
    if sel.best_epoch is None:
        note(f"head: trained {sel.epochs_run} epochs on the whole train split")
        return
    how = (
        f"early stopping at epoch {sel.stopped_epoch}"
        if sel.stopped_epoch
        else f"ran to the cap of {params.epochs} epochs"
        if params.early_stopping
        else f"{sel.epochs_run} epochs (early stopping off)"
    )
    msg = f"head: best validation loss {sel.best_val_loss:.4f} at epoch {sel.best_epoch} ({how})"
    if sel.folds:
        msg = (
            f"head: epoch {sel.best_epoch} chosen by {sel.folds}-fold cross-validation on the train "
            f"split (the validation slice holds fewer than {head.FOLDS_BELOW} examples of a class): "
            f"pooled weighted accuracy {sel.best_val_weighted_accuracy:.4f}, loss {sel.best_val_loss:.4f} "
            f"({'the folds ran up to ' + str(sel.epochs_run) + ' epochs' if sel.stopped_epoch else 'ran to the cap of ' + str(params.epochs) + ' epochs'})"
        )
        if sel.folds < params.cv_folds:
            msg += (
                f"; {sel.folds} folds held examples, not cv_folds {params.cv_folds}: the classes have too few"
            )
    if run.refit is not None:
        msg += f"; refit on the whole train split for {run.refit.epochs_run} epochs"
    note(msg)
    # The folds choose by pooled accuracy, not by the loss: said of that accuracy there.
    if params.early_stopping and not sel.stopped_epoch and sel.best_epoch == sel.epochs_run:
        what = "validation loss was still falling"
        if sel.folds:
            accuracy = sel.history.get(head.WEIGHTED_ACCURACY) or []
            before = accuracy[max(0, sel.best_epoch - 1 - params.patience)] if accuracy else None
            rising = bool(accuracy) and accuracy[sel.best_epoch - 1] > before
            # Flat accuracy, the last epoch best by the pooled loss (the tie-break): said as that.
            what = (
                "pooled weighted accuracy over the folds was still rising"
                if rising
                else "pooled loss over the folds was still falling, at an unchanged weighted accuracy,"
            )
        note(
            f"head: its {what} at the cap of {params.epochs} epochs (best at epoch "
            f"{sel.best_epoch}): more epochs (--epochs) may train it further"
        )


# A head's train loss this many times a uniform guess's (ln K) at its lowest did not fit its own
# images: the learning rate, not the data (the audit's rates of 10 and 1e-6: 3.8x and 4.1x). On
# labels unrelated to the images, dropout keeps it within a hair of 1x: not taken for the rate.
UNFITTED = 1.25


def _no_better_than_uniform(run: head.HeadRun, num_classes: int, validation_examples: int) -> str | None:
    """What to say when the epochs were chosen on answers no better than a uniform guess's: on a
    validation slice, a best loss no lower than ln K; under k-fold cross-validation (which chooses
    by pooled weighted accuracy), that accuracy no higher than 1/K. None otherwise, or with no
    validation."""
    sel = run.selection
    if sel.best_epoch is None or num_classes < 2:
        return None
    causes = "Too few images a class, labels that do not follow the images, or features that do not tell the classes apart"
    losses = list(sel.history.get("loss", []))
    # The train cross-entropy without the L2 penalty (memory_fit logs it), else the loss.
    fitted = [x for x in sel.history.get("cross_entropy", losses) if math.isfinite(x)]

    def rate() -> str:
        return (
            f"the learning rate, {run.hparams.learning_rate:g}, is likely too high or too low for the head "
            f"(the default is {TrainingConfig.model_fields['learning_rate'].default:g})"
        )

    diverged = next((epoch for epoch, x in enumerate(losses, 1) if not math.isfinite(x)), None)
    if diverged is not None:
        causes = f"Its train loss became {losses[diverged - 1]} at epoch {diverged}: {rate()}"
    elif len(losses) >= 2 and min(losses[1:]) >= 0.99 * losses[0]:
        causes = (
            f"Its train loss did not fall either ({losses[0]:.4f} at epoch 1, {min(losses):.4f} at its lowest): "
            f"{rate()}"
        )
    elif fitted and min(fitted) >= UNFITTED * math.log(num_classes):
        # Any working rate takes a head's loss on its own train images below a uniform guess's
        # (shrinking its weights alone gets there); an audit's rate of 10 fell once, then froze at
        # 6.12 on 5 classes, and 1e-6 crawled from 9.2 to 6.7 in 200 epochs: both blamed the data.
        causes = (
            f"Its loss on the images it trained on never went below a uniform guess's either ({min(fitted):.4f} "
            f"at its lowest, ln {num_classes} = {math.log(num_classes):.4f}): it did not fit even those, which "
            f"a head does in a few epochs at a working rate: {rate()}; or it trained too few epochs (--epochs)"
        )
    if sel.folds:
        chance = 1 / num_classes
        pooled = sel.best_val_weighted_accuracy
        if pooled is None or pooled > chance:
            return None
        return (
            f"head: its pooled weighted accuracy over the train split's {sel.folds} folds, {pooled:.4f}, is no "
            f"higher than a uniform guess's over {num_classes} classes (1/{num_classes} = {chance:.4f}): it "
            f"learned nothing the held-out folds show. {causes}"
        )
    if sel.best_val_loss is None:
        return None
    uniform = math.log(num_classes)
    if not sel.best_val_loss >= uniform:
        return None
    per_class = validation_examples / num_classes
    return (
        f"head: its best validation loss {sel.best_val_loss:.4f} is no lower than a uniform guess's over "
        f"{num_classes} classes (ln {num_classes} = {uniform:.4f}): on {validation_examples} validation "
        f"examples ({per_class:.1f} a class) it learned nothing they show. {causes}"
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
