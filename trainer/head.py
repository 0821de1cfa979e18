"""Training the classification head to convergence, on data the eval split never enters.

The eval split is what the Evaluator gates on, so nothing here may select on it:
early stopping and --tune monitor a *validation slice* held out from the train
split instead (`holdout_mask`: stratified by class, deterministic by seed, every
class keeps at least one training example).

`train_head` = `select_epochs` then `finish`. `select_epochs` trains a new head
on the rest of the train split until the validation loss (MONITOR) has not
improved for `patience` epochs (capped at `epochs`) and restores the best
epoch's weights. `finish` then, by default (`refit`), trains the head afresh on
the *whole* train split for that best epoch count: it puts the held-out
examples back into the final model, which matters most for small classes, and
on the benchmark tasks it matched keeping the best-epoch head on the medians
with a smaller spread on the imbalanced task (BENCHMARKS.md, "default head vs
logistic regression"). With early stopping off, the head
trains on the whole train split for exactly `epochs` epochs and no slice is
held out. When the slice would hold fewer than FOLDS_BELOW examples of some class,
k-fold cross-validation on the whole train split chooses the epoch count instead
(`select_by_folds`), then the refit. `HeadData` holds the split and trains with Keras' `fit` (tf.data:
images or a spilled cache) or with `memory_fit` (features in memory).

`class_weights` gives balanced loss weights for imbalanced classes; they are
applied as per-example sample weights to the training loss and to the
validation loss (so early stopping watches the same objective the head
minimises), for the softmax and the 2-class sigmoid head alike.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import weakref
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer import label_check, memory_fit
from trainer import model as model_lib
from trainer.config import IMBALANCE_RATIO, TrainingConfig
from trainer.features import label_text

# What early stopping and --tune watch: the (class-weighted) cross-entropy on the validation
# slice, without the L2 penalty (which would otherwise bias --tune against weight decay).
MONITOR = "val_cross_entropy"
# What the k-fold selection (select_by_folds) ranks epochs by: the validation part's accuracy
# with each example weighted by its class weight (memory_fit), the balanced accuracy under
# balanced class weights.
WEIGHTED_ACCURACY = "val_weighted_accuracy"


def holdout_mask(
    labels: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None
) -> np.ndarray:
    """A boolean mask over `labels` (class indices): True for the validation slice.

    Per class, round(fraction * n_c) examples are held out, but never all of them: each
    class keeps at least one training example (a class of one example gives none). Which
    examples is decided per class by a permutation seeded with (`seed`, class index), so
    the slice is the same for the same labels and seed.

    `groups` (an int per example; None: every example its own) keeps each group of a class on
    one side: near-copies (a clip's frames, one picture saved again; trainer/image_ids.py) split
    between the slice and training would score what the head memorised. A class with groups of
    more than one example holds out whole groups, in a permutation seeded as above, each one
    that still fits in its round(fraction * n_c), never its largest group (so never all of it);
    when none fits, the smallest (as ingest gives such a class's smallest set to eval). A class
    of one group holds out none.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(len(idx) - 1, int(math.floor(fraction * len(idx) + 0.5)))
        if k <= 0:
            continue
        rng = np.random.default_rng([seed, int(c)])
        units = _units(idx, groups)
        if units is None:
            mask[rng.permutation(idx)[:k]] = True
            continue
        shuffled = [units[i] for i in rng.permutation(len(units))]
        largest = max(range(len(shuffled)), key=lambda j: len(shuffled[j]))
        candidates = shuffled[:largest] + shuffled[largest + 1 :]  # the largest group always trains
        held = 0
        for unit in candidates:
            if held + len(unit) <= k:
                mask[unit] = True
                held += len(unit)
        if not held and candidates:  # no group fits in the share: the smallest one is held out
            mask[min(candidates, key=len)] = True
    return mask


def _units(idx: np.ndarray, groups: np.ndarray | None) -> list[np.ndarray] | None:
    """The examples `idx` (one class's) as their groups' members, in the order of each group's
    first example; None when every group holds one of them (no grouping to keep)."""
    if groups is None:
        return None
    _, first, inverse = np.unique(np.asarray(groups)[idx], return_index=True, return_inverse=True)
    if len(first) == len(idx):
        return None
    # Members grouped by a stable sort (linear in the class, where a mask per group was quadratic:
    # 3.8 s for a class of 100,000 images).
    members = np.split(idx[np.argsort(inverse, kind="stable")], np.cumsum(np.bincount(inverse))[:-1])
    return [members[g] for g in np.argsort(first, kind="stable")]


def class_weights(
    labels: np.ndarray, num_classes: int, mode: str, class_names: Sequence[str] | None = None
) -> tuple[np.ndarray | None, str]:
    """Loss weight per class index, or None for unweighted, and the reason (for the run log and
    the report: each weight with its class's name when `class_names` are given).

    mode "auto": balanced weights n / (k * n_c) (k classes, n examples, n_c of class c) when
    the largest class has more than IMBALANCE_RATIO times the examples of the smallest;
    "none": never. A class with no training example is an error: it could not be learnt.
    """
    if mode not in ("auto", "none"):
        raise ValueError(f"class_weights: expected 'auto' or 'none', got {mode!r}")
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    if len(counts) > num_classes:
        raise ValueError(f"class_weights: label {len(counts) - 1} is out of range for {num_classes} classes")
    if mode == "none":
        return None, "class weights off by config"
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise ValueError(f"class_weights: classes {missing.tolist()} have no training examples")
    ratio = counts.max() / counts.min()
    if ratio <= IMBALANCE_RATIO:
        return None, f"class weights: none (largest/smallest class = {ratio:.2f} <= {IMBALANCE_RATIO})"
    weights = counts.sum() / (num_classes * counts.astype(np.float64))
    return weights, (
        f"class weights: balanced (largest/smallest class = {ratio:.2f} > {IMBALANCE_RATIO}): "
        + ", ".join(
            f"{label_text(name)}: {w:.3g}" if class_names is not None else f"{w:.3g}"
            for name, w in zip(class_names if class_names is not None else weights, weights, strict=True)
        )
    )


def with_sample_weights(ds: tf.data.Dataset, weights: np.ndarray | None) -> tf.data.Dataset:
    """(x, y) batches -> (x, y, weight of y's class); unchanged when `weights` is None.

    Labels are class indices [B] (softmax) or 0/1 floats [B, 1] (sigmoid); both look up
    the same per-class table, so both head types get the same weighting.
    """
    if weights is None:
        return ds
    table = tf.constant(np.asarray(weights, dtype=np.float32))

    def add(x, y):
        index = tf.reshape(tf.cast(y, tf.int64), [-1])
        return x, y, tf.gather(table, index)

    return ds.map(add, num_parallel_calls=tf.data.AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class HeadHParams:
    """What a head is trained with: the settings --tune searches over."""

    learning_rate: float
    dropout: float
    l2: float

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class FitOutcome:
    """What one fit did. Epochs are counted from 1; `best_epoch` is None without a validation
    slice, `stopped_epoch` is None when training ran to the cap (or without early stopping)."""

    history: dict[str, list[float]]
    epochs_run: int
    best_epoch: int | None = None
    best_val_loss: float | None = None
    stopped_epoch: int | None = None
    folds: int | None = None  # the epoch count was chosen by k-fold cross-validation (select_by_folds)
    best_val_weighted_accuracy: float | None = None  # the folds pooled, at the chosen epoch
    # The selection's answers on the train images it held out (trainer/label_check.py); None
    # when it held none out, or its data was not in memory.
    held_out: label_check.HeldOut | None = None


def _outcome(
    history: dict[str, list[float]], stop: keras.callbacks.EarlyStopping | None, validated: bool
) -> FitOutcome:
    outcome = FitOutcome(history=history, epochs_run=len(history.get("loss", [])))
    val = [v if math.isfinite(v) else math.inf for v in history.get(MONITOR, [])]
    if not validated or not val:
        return outcome
    if stop is None:  # a fixed number of epochs: the last one is what the model is
        outcome.best_val_loss = val[-1]
        return outcome
    outcome.best_epoch = stop.best_epoch + 1
    outcome.best_val_loss = val[stop.best_epoch]
    outcome.stopped_epoch = stop.stopped_epoch + 1 if stop.stopped_epoch > 0 else None
    return outcome


# Each model's trainable weights before its first fit on a HeadData (`HeadData.fresh` puts
# them back).
_INITIAL: weakref.WeakKeyDictionary[keras.Model, list[np.ndarray]] = weakref.WeakKeyDictionary()


class HeadData(abc.ABC):
    """The train split for head training: the part trained on while the validation slice
    is held out (`fit`), the slice (`val`, or none) and the whole split. `fit()` trains a
    compiled model on one of them; subclasses say how (Keras fit, or memory_fit)."""

    validation_examples: int = 0

    @property
    def has_validation(self) -> bool:
        return self.validation_examples > 0

    def fit(
        self,
        model: keras.Model,
        whole: bool,
        epochs: int,
        early_stopping: bool,
        patience: int,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        verbose: int = 0,
    ) -> FitOutcome:
        """Train `model` (in place) on the whole split, or on the fit part scored on the slice.

        Scored with `early_stopping`: stop once the slice's loss (MONITOR) has not improved for
        `patience` epochs and restore the best epoch's weights, also when `epochs` is reached
        first. Otherwise exactly `epochs` epochs.
        """
        if model not in _INITIAL:
            _INITIAL[model] = [v.numpy() for v in model.trainable_variables]
        validated = self.has_validation and not whole
        stop = None
        if validated and early_stopping:
            stop = keras.callbacks.EarlyStopping(
                monitor=MONITOR, mode="min", patience=patience, restore_best_weights=True
            )
        history = self._fit(model, whole, validated, epochs, [*callbacks, *([stop] if stop else [])], verbose)
        return _outcome(history, stop, validated)

    @abc.abstractmethod
    def _fit(self, model, whole, validated, epochs, callbacks, verbose) -> dict[str, list[float]]:
        """One fit of `model` on the whole split or the fit part; Keras's history dict."""

    def fresh(self, model: keras.Model, build: Callable[[HeadHParams], keras.Model], hp: HeadHParams):
        """An untrained model like `model` (trained with `hp`) for the refit.

        `model` itself, put back to its state before its first fit here: its trainable
        weights as they were, its optimizer's slots and step count at zero and its learning
        rate `hp`'s. Its steps are already traced; a new build would trace them again, on the
        image path through the whole backbone. Only the head trains in this phase: the frozen
        backbone's variables (BatchNorm's statistics included: inference mode) and the
        head's standardisation constants do not change, so they need no reset. A model never
        fitted here gets a new build.
        """
        initial = _INITIAL.get(model)
        if initial is None:
            return build(hp)
        for v, value in zip(model.trainable_variables, initial, strict=True):
            v.assign(value)
        model_lib.reset_optimizer(model.optimizer)
        # A callback may have changed the rate in the last fit (ReduceLROnPlateau): `hp`'s again.
        model_lib.set_learning_rate(model.optimizer, hp.learning_rate)
        return model


@dataclasses.dataclass
class DatasetData(HeadData):
    """Batches from tf.data (images, or a spilled feature cache), trained with Keras' fit."""

    fit_batches: tf.data.Dataset
    val_batches: tf.data.Dataset | None
    whole_batches: tf.data.Dataset
    steps_per_epoch: int | None = None
    validation_examples: int = 0

    def _fit(self, model, whole, validated, epochs, callbacks, verbose):
        batches = self.whole_batches if whole else self.fit_batches
        h = model_lib.fit_batches(
            model,
            batches,
            validation_data=self.val_batches if validated else None,
            epochs=epochs,
            steps_per_epoch=self.steps_per_epoch,
            callbacks=list(callbacks),
            verbose=verbose,
        )
        return {k: [float(x) for x in v] for k, v in h.history.items()}


@dataclasses.dataclass
class ArrayData(HeadData):
    """Features in memory, trained with memory_fit (one graph call per epoch)."""

    fit_arrays: memory_fit.Arrays
    val_arrays: memory_fit.Arrays | None
    whole_arrays: memory_fit.Arrays
    batch_size: int
    seed: int
    steps_per_epoch: int | None = None
    validation_examples: int = 0
    val_positions: np.ndarray | None = None  # the slice's places in the whole split
    # Each example's group of near-copies (holdout_mask), kept whole by the folds too.
    groups: np.ndarray | None = None

    def _fit(self, model, whole, validated, epochs, callbacks, verbose):
        return memory_fit.fit(
            model,
            self.whole_arrays if whole else self.fit_arrays,
            self.val_arrays if validated else None,
            epochs,
            self.batch_size,
            self.seed,
            callbacks,
            self.steps_per_epoch,
        )


def _holdout(
    labels: np.ndarray, params: TrainingConfig, groups: np.ndarray | None = None
) -> tuple[np.ndarray | None, str]:
    """The validation mask params ask for (None: none held out) and a note saying so."""
    if not (params.early_stopping or params.tune_trials):
        return None, "early stopping off: the head trains on the whole train split"
    mask = holdout_mask(labels, params.validation_fraction, params.seed, groups)
    held = int(mask.sum())
    grouped = groups is not None and len(np.unique(groups)) < len(labels)
    if held == 0:
        alone = grouped and bool(holdout_mask(labels, params.validation_fraction, params.seed).any())
        why = (
            "each class's train images are one set of near-copies, which a slice would split"
            if alone
            else f"the train split ({len(labels)} examples) is too small"
        )
        if params.tune_trials:
            raise ValueError(
                f"tune_trials: no validation slice of {params.validation_fraction:.0%} per class can be "
                f"held out: {why}"
            )
        return None, (
            f"early stopping skipped: no class of the train split ({len(labels)} examples) can spare "
            f"a validation example at {params.validation_fraction:.0%}" + (f": {why}" if alone else "")
        )
    share = (
        f"{params.validation_fraction:.0%} per class in whole sets of near-copies, so a class's share "
        "can differ"
        if grouped
        else f"{params.validation_fraction:.0%} per class"
    )
    return mask, (
        f"validation slice: {held} of {len(labels)} train examples held out "
        f"({share}, seed {params.seed}); the eval split is not used"
    )


def dataset_data(
    labels: np.ndarray,
    batches: Callable[[np.ndarray | None, bool], tf.data.Dataset],
    weights: np.ndarray | None,
    params: TrainingConfig,
    groups: np.ndarray | None = None,
) -> tuple[DatasetData, str]:
    """HeadData over tf.data, and a note on what was held out.

    `labels`: the class index of every train example in order; `batches(mask, shuffle)`: the
    (x, y) batches of the examples where `mask` is true (all of them for None); `groups`:
    holdout_mask's.
    """
    repeat = params.steps_per_epoch is not None

    def train_batches(mask: np.ndarray | None) -> tf.data.Dataset:
        ds = with_sample_weights(batches(mask, True), weights)
        return ds.repeat() if repeat else ds

    whole = train_batches(None)
    mask, note = _holdout(labels, params, groups)
    if mask is None:
        return DatasetData(whole, None, whole, params.steps_per_epoch), note
    val = with_sample_weights(batches(mask, False), weights)
    return DatasetData(train_batches(~mask), val, whole, params.steps_per_epoch, int(mask.sum())), note


def array_data(
    features: np.ndarray,
    targets: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None,
    params: TrainingConfig,
    batch_size: int,
    groups: np.ndarray | None = None,
) -> tuple[ArrayData, str]:
    """HeadData over in-memory features, and a note on what was held out.

    `targets`: the labels as the head takes them ([N] class indices or [N, 1] 0/1 floats);
    `labels`: the same as class indices [N]; `groups`: holdout_mask's (and fold_masks').
    """
    w = None if weights is None else np.asarray(weights, np.float32)[labels]
    whole = memory_fit.Arrays.of(features, targets, w)
    mask, note = _holdout(labels, params, groups)
    common = {
        "batch_size": batch_size,
        "seed": params.seed,
        "steps_per_epoch": params.steps_per_epoch,
        "groups": groups,
    }
    if mask is None:
        return ArrayData(whole, None, whole, **common), note
    part = [memory_fit.Arrays.of(features[m], targets[m], None if w is None else w[m]) for m in (~mask, mask)]
    held = int(mask.sum())
    return ArrayData(
        part[0], part[1], whole, validation_examples=held, val_positions=np.flatnonzero(mask), **common
    ), note


@dataclasses.dataclass
class HeadRun:
    """A trained head (or full model, on the image path) and how it was trained."""

    model: keras.Model
    hparams: HeadHParams
    selection: FitOutcome  # the fit that chose the epoch count (or the only fit)
    refit: FitOutcome | None = None  # the fresh model trained on the whole train split


def select_epochs(
    build: Callable[[HeadHParams], keras.Model],
    hp: HeadHParams,
    data: HeadData,
    params: TrainingConfig,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
    folds: bool = True,
    judge: Callable[[keras.Model], float] | None = None,
) -> tuple[keras.Model, FitOutcome]:
    """Train `build(hp)` on the fit part, scored on the validation slice (early stopping when
    on; exactly `epochs` epochs when off). Without a slice: exactly `epochs` on the whole split.
    With early stopping on features in memory and a slice too small for some class
    (`needs_folds`), k-fold cross-validation chooses the epoch count instead (`select_by_folds`),
    unless `folds` is False (--tune's trials, scored on the slice). `judge`: finish's, which the
    folds' heads are scored by too."""
    if folds and params.early_stopping and isinstance(data, ArrayData) and needs_folds(data, params):
        return select_by_folds(build, hp, data, params, callbacks, verbose, judge)
    model = build(hp)
    whole = not data.has_validation
    outcome = data.fit(
        model, whole, params.epochs, params.early_stopping, params.patience, callbacks, verbose
    )
    if (
        not whole
        and isinstance(data, ArrayData)
        and data.val_arrays is not None
        and data.val_positions is not None
    ):
        outcome.held_out = label_check.HeldOut(
            data.val_positions, answers(model, data.val_arrays.x), "the validation slice"
        )
    return model, outcome


def answers(model: keras.Model, x: tf.Tensor | np.ndarray, chunk: int = 8192) -> np.ndarray:
    """The head's outputs for features `x` (inference mode), `chunk` rows a call."""
    return np.concatenate(
        [model(x[i : i + chunk], training=False).numpy() for i in range(0, int(x.shape[0]), chunk)]
    )


# Below this many examples of some class in the validation slice, the slice alone chooses the
# epoch count badly: one or two examples of a small class (at 10x weight under balanced
# class weights) decide the loss's minimum. A 1:20 two-class task of 315 train images stopped
# at epoch 4 (balanced accuracy 0.72, blessed; 0.87 at 200 epochs), and 30% label noise at
# epoch 1 (an untrained head). Cross-validation (select_by_folds) scores every train example.
FOLDS_BELOW = 10


def needs_folds(data: ArrayData, params: TrainingConfig) -> bool:
    """Whether the validation slice is too small to choose the epoch count alone: some class has
    fewer than FOLDS_BELOW examples in it (`cv_folds` 0: never)."""
    if params.cv_folds < 2 or data.val_arrays is None:
        return False
    labels = _class_indices(data.whole_arrays)
    held = np.bincount(_class_indices(data.val_arrays), minlength=int(labels.max()) + 1)
    return bool(held.min() < FOLDS_BELOW)


def _class_indices(arrays: memory_fit.Arrays) -> np.ndarray:
    y = arrays.y.numpy()
    return (y.reshape(-1) > 0.5).astype(np.int64) if y.ndim == 2 else y.astype(np.int64)


def fold_masks(
    labels: np.ndarray, folds: int, seed: int, groups: np.ndarray | None = None
) -> list[np.ndarray]:
    """`folds` boolean masks over `labels` (True: validated in that fold), stratified by class.

    Each class's examples are dealt in a permutation seeded with (`seed`, class) to the folds in
    turn, starting at a fold that differs by class (so the folds' sizes stay even). A class of one
    example is in no fold: it always trains. Every example of a class of two or more is
    validated exactly once, and a fold never holds all of a class.

    `groups` (an int per example; None: every example its own) keeps each group of a class in one
    fold: near-copies (a clip's frames; trainer/image_ids.py) dealt to a fold and to the folds it
    trains on would score what the head memorised. A class with groups of more than one example
    deals whole groups, largest first (ties in the seeded order), each to the fold that holds
    fewest of the class so far; a class of one group is in no fold (it always trains).
    """
    labels = np.asarray(labels)
    fold = np.full(len(labels), -1)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            continue
        rng = np.random.default_rng([seed, int(c), folds])
        units = _units(idx, groups)
        if units is None:
            order = rng.permutation(idx)
            fold[order] = (np.arange(len(order)) + int(c)) % folds
            continue
        if len(units) < 2:
            continue
        shuffled = [units[i] for i in rng.permutation(len(units))]
        held = np.zeros(folds, np.int64)
        rotation = (np.arange(folds) + int(c)) % folds  # ties: from the class's own first fold
        for unit in sorted(shuffled, key=len, reverse=True):
            target = rotation[int(np.argmin(held[rotation]))]
            fold[unit] = target
            held[target] += len(unit)
    return [fold == f for f in range(folds)]


@dataclasses.dataclass(frozen=True)
class _FoldSize:
    train: int  # examples the fold's head trains on
    val: int  # examples it is scored on
    val_weight: float  # their summed sample weights


def _pooled(key: str, histories: list[dict], sizes: list[_FoldSize], longest: int) -> list[float]:
    """The folds' per-epoch `key` pooled over their examples, as one score of every
    out-of-fold prediction: each fold's value weighed by what it is a mean over. The weighted
    metrics (`val_cross_entropy`, `val_weighted_accuracy`) are sums over the fold's sample
    weights, so a fold counts by its weight: a fold holding no example of a small class does
    not count as much as one holding its heavily weighed few (a plain mean of the folds' scores
    gives an always-majority head 0.71 on classes [40, 2], not the balanced 0.5). A fold that
    stopped early keeps its last value; a non-finite value is the worst (an infinite loss, an
    accuracy of 0)."""
    if key in (MONITOR, WEIGHTED_ACCURACY):
        weight = [s.val_weight for s in sizes]
    elif key.startswith("val_"):
        weight = [s.val for s in sizes]
    else:
        weight = [s.train for s in sizes]
    worst = math.inf if "accuracy" not in key else 0.0
    rows = [
        [v if math.isfinite(v) else worst for v in h[key] + [h[key][-1]] * (longest - len(h[key]))]
        for h in histories
    ]
    return np.average(np.asarray(rows, dtype=np.float64), axis=0, weights=weight).tolist()


def _redraw(model: keras.Model, seed: list[int]) -> keras.Model:
    """`model` (its optimizer already reset) with new initial weights, as a new build of it
    would draw them: each layer's seeded initializers drawn again under `seed` (the kernels;
    zero biases stay zero). They become the state `HeadData.fresh` restores."""
    draws = np.random.default_rng(seed)
    for layer in model.layers:
        for name in ("kernel", "bias"):
            v, init = getattr(layer, name, None), getattr(layer, f"{name}_initializer", None)
            if v is None or init is None or not v.trainable:
                continue
            config = init.get_config()
            if "seed" in config:
                config["seed"] = int(draws.integers(2**31 - 1))
            v.assign(type(init).from_config(config)(v.shape, v.dtype))
    _INITIAL[model] = [v.numpy() for v in model.trainable_variables]
    return model


def select_by_folds(
    build: Callable[[HeadHParams], keras.Model],
    hp: HeadHParams,
    data: ArrayData,
    params: TrainingConfig,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
    judge: Callable[[keras.Model], float] | None = None,
) -> tuple[keras.Model, FitOutcome]:
    """The epoch count by `params.cv_folds`-fold cross-validation on the whole train split.

    A head per fold trains on the other folds, scored after each epoch on its own fold,
    until neither its loss nor its weighted accuracy has improved for 4 x `patience` epochs
    (or `epochs`): stopping on the loss alone ended the folds at the loss's minimum + 40 while
    the accuracy the epoch is chosen by was still rising (an audit's 1:10 task of 231 images:
    the last epoch run chosen, eval accuracy 0.929 against 0.980 with longer folds, and a gate
    decision turned). A fold that
    stopped keeps its last scores for the later epochs. The chosen epoch has the best weighted
    accuracy of the folds' predictions pooled (`_pooled`: the balanced accuracy under balanced
    class weights, the accuracy without: what the gate measures), the lowest pooled loss among
    equals. The loss's
    minimum comes first: the loss keeps weighing a few confident mistakes while more examples
    come out right (on the 1:20 task above, the loss chose epoch 8, accuracy epochs 15-51).
    The folds' heads are one model, built once: before each later fold its optimizer is reset
    (its learning rate `hp`'s) and its weights drawn anew (`_redraw`), so each fold starts from
    its own random weights, as a new build would, and the steps are traced once. (With dropout,
    the folds' masks continue one random stream, deterministic for a seed, where new builds
    started their own.) `finish` then trains it from the last fold's initial weights on the
    whole split for that many epochs. Returns that model.

    The held-out answers the label check reads are each fold's head's at the chosen epoch (its
    last, for a fold that stopped before it), kept epoch by epoch as the three numbers a row the
    check uses (`_FoldAnswers`); restoring each fold's loss-best weights instead gave answers
    from epochs 2-6 against a model trained 43-51, and a warning of wrong train labels on clean
    ones. With `judge` (a model's eval accuracy), each fold's head is scored on the eval split
    after every epoch too, and the check compares the held-out answers with those heads' mean
    eval accuracy at the chosen epoch: the same heads on both sides. Against the refit's, an
    audit's 1:8 task (class weights: the folds' heads trade the large class's images for the
    small one's) read 0.786 held out against 1.000 on 39 eval images and warned of wrong labels
    on clean ones.
    """
    whole = data.whole_arrays
    x, y, w = whole.x.numpy(), whole.y.numpy(), whole.w.numpy()
    histories, sizes, positions, recorded = [], [], [], []
    model = None
    labels = _class_indices(whole)
    for mask in fold_masks(labels, params.cv_folds, params.seed, data.groups):
        if not mask.any():
            continue
        part = ArrayData(
            memory_fit.Arrays.of(x[~mask], y[~mask], w[~mask]),
            memory_fit.Arrays.of(x[mask], y[mask], w[mask]),
            whole,
            data.batch_size,
            data.seed,
            data.steps_per_epoch,
            int(mask.sum()),
        )
        # One head for every fold, its weights drawn anew between them (`_redraw`): a new build
        # per fold traced memory_fit's steps again (~0.3-1 s each).
        model = (
            build(hp) if model is None else _redraw(part.fresh(model, build, hp), [params.seed, len(sizes)])
        )
        fold = _FoldAnswers(x[mask], labels[mask], 4 * params.patience, judge)
        histories.append(part.fit(model, False, params.epochs, False, 0, [*callbacks, fold], verbose).history)
        sizes.append(_FoldSize(int((~mask).sum()), int(mask.sum()), float(w[mask].sum())))
        positions.append(np.flatnonzero(mask))
        recorded.append(fold)
    longest = max(len(h[MONITOR]) for h in histories)
    keys = set.intersection(*(set(h) for h in histories))
    pooled = {k: _pooled(k, histories, sizes, longest) for k in sorted(keys)}
    loss, accuracy = np.asarray(pooled[MONITOR]), np.asarray(pooled[WEIGHTED_ACCURACY])
    best = int(np.lexsort((loss, -accuracy))[0])
    return model, FitOutcome(
        history=pooled,
        epochs_run=longest,
        best_epoch=best + 1,
        best_val_loss=float(loss[best]),
        stopped_epoch=longest if longest < params.epochs else None,
        folds=len(histories),
        best_val_weighted_accuracy=float(accuracy[best]),
        held_out=label_check.HeldOut(
            np.concatenate(positions),
            np.concatenate([fold.at(best) for fold in recorded]),
            f"cross-validation ({len(histories)} folds)",
            None if judge is None else float(np.mean([fold.judged_at(best) for fold in recorded])),
        ),
    )


class _FoldAnswers(keras.callbacks.Callback):
    """One fold's head on the images it holds out, after every epoch; stops the fold once neither
    its loss (MONITOR, lower) nor its weighted accuracy (higher) has improved for `patience`
    epochs.

    Kept a row per image and epoch: the probability of its given class, the class answered and
    that class's probability, what trainer/label_check.check reads of a row (agreement, the
    per-class thresholds, the doubted images): n x 3 numbers an epoch, where whole answers took
    n x classes (4,000 images of 100 classes over 200 epochs: 320 MB)."""

    def __init__(
        self,
        x: np.ndarray,
        given: np.ndarray,
        patience: int,
        judge: Callable[[keras.Model], float] | None = None,
    ):
        super().__init__()
        self.x, self.given, self.patience = x, np.asarray(given, np.int64), patience
        self.judge = judge
        self.judged: list[float] = []  # the head's eval accuracy after each epoch (with `judge`)
        self.epochs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.classes = 2
        self.best_loss, self.best_accuracy, self.waited = math.inf, -math.inf, 0

    def on_epoch_end(self, epoch, logs=None):
        p = label_check.class_probabilities(answers(self.model, self.x))
        self.classes = p.shape[1]
        rows = np.arange(len(p))
        answered = np.argmax(p, axis=1)
        self.epochs.append(
            (
                p[rows, self.given].astype(np.float32),
                answered.astype(np.int32),
                p[rows, answered].astype(np.float32),
            )
        )
        if self.judge is not None:
            self.judged.append(float(self.judge(self.model)))
        logs = logs or {}
        loss, accuracy = logs.get(MONITOR, math.nan), logs.get(WEIGHTED_ACCURACY, math.nan)
        improved = False
        if math.isfinite(loss) and loss < self.best_loss:
            self.best_loss, improved = loss, True
        if math.isfinite(accuracy) and accuracy > self.best_accuracy:
            self.best_accuracy, improved = accuracy, True
        self.waited = 0 if improved else self.waited + 1
        if self.waited >= self.patience:
            self.model.stop_training = True

    def judged_at(self, epoch: int) -> float:
        """The head's eval accuracy at 0-based `epoch` (the fold's last when it stopped before it)."""
        return self.judged[min(epoch, len(self.judged) - 1)]

    def at(self, epoch: int) -> np.ndarray:
        """[n, classes] at 0-based `epoch` (the fold's last when it stopped before it): the given
        and the answered class's probabilities, 0 for the other classes."""
        given_p, answered, answered_p = self.epochs[min(epoch, len(self.epochs) - 1)]
        out = np.zeros((len(self.given), self.classes), np.float64)
        rows = np.arange(len(out))
        out[rows, self.given] = given_p
        out[rows, answered] = answered_p
        return out


def finish(
    build: Callable[[HeadHParams], keras.Model],
    model: keras.Model,
    hp: HeadHParams,
    selection: FitOutcome,
    data: HeadData,
    params: TrainingConfig,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
    judge: Callable[[keras.Model], float] | None = None,
) -> HeadRun:
    """The final model after selection: a fresh one trained on the whole train split for the
    best epoch count (`refit`; without early stopping always, for exactly `epochs`), or the
    selected model itself. `judge` (a model's eval accuracy) scores the selected model before
    the refit takes its place, for the label check's like-for-like comparison: a head of one
    epoch answered its held-out images at 0.542 and the refit the eval split at 0.720, and the
    check warned of wrong train labels on clean ones."""
    if not data.has_validation:
        return HeadRun(model, hp, selection)  # already trained on the whole split
    if params.early_stopping and not params.refit and not selection.folds:
        return HeadRun(model, hp, selection)
    if judge is not None and selection.held_out is not None and selection.held_out.eval_accuracy is None:
        selection.held_out.eval_accuracy = judge(model)
    epochs = selection.best_epoch if params.early_stopping and selection.best_epoch else params.epochs
    fresh = data.fresh(model, build, hp)
    again = data.fit(fresh, True, epochs, False, params.patience, callbacks, verbose)
    return HeadRun(fresh, hp, selection, again)


def train_head(
    build: Callable[[HeadHParams], keras.Model],
    hp: HeadHParams,
    data: HeadData,
    params: TrainingConfig,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
    judge: Callable[[keras.Model], float] | None = None,
) -> HeadRun:
    """Select the epoch count on the validation slice, then finish (see the module docstring)."""
    model, selection = select_epochs(build, hp, data, params, callbacks, verbose, judge=judge)
    return finish(build, model, hp, selection, data, params, callbacks, verbose, judge)
