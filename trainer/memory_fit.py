"""Head epochs on in-memory features: one graph call per epoch instead of Keras' fit loop.

With the frozen-feature cache a head epoch is a few dozen tiny matrix products,
and Keras' `fit` spends several times that in per-step and per-epoch Python
(callbacks, iterator set-up, a full `evaluate` for the validation data). Run to
convergence (tens to hundreds of epochs), that overhead was larger than the
feature extraction itself (BENCHMARKS.md, "default head vs logistic regression").
Here an epoch is one `tf.function` call: the shuffled batches, their gradient
steps and the validation pass all run inside the graph.

What it keeps from `fit`: the compiled model's optimizer and loss (Keras'
semantics: per-batch loss = sum(weight * loss) / batch size, plus the
model's regularisation losses), the same logs (`loss`, `accuracy`,
`cross_entropy` and their `val_` forms), and epoch-level Keras callbacks
(EarlyStopping, TensorBoard, timers: `on_epoch_*`, `on_train_*`; per-batch
hooks are not called). The model is trained on the default device, outside
any distribution strategy: a head on cached features is too small to gain
from replicas (the caller copies the weights into a model under its strategy).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer import model as model_lib


@dataclasses.dataclass
class Arrays:
    """Features [N, D], labels as the head takes them ([N] class indices or [N, 1] floats),
    and per-example loss weights [N] (ones when unweighted), as tensors."""

    x: tf.Tensor
    y: tf.Tensor
    w: tf.Tensor

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> Arrays:
        w = np.ones(len(x), np.float32) if w is None else np.asarray(w, np.float32)
        return cls(tf.constant(x, tf.float32), tf.constant(y), tf.constant(w))

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _accurate(y: tf.Tensor, p: tf.Tensor) -> tf.Tensor:
    """1.0 where the prediction is right: argmax for softmax, p > 0.5 for one sigmoid unit."""
    if p.shape[-1] == 1:
        return tf.cast(tf.equal(tf.cast(p > 0.5, tf.float32), tf.cast(y, tf.float32)), tf.float32)[:, 0]
    return tf.cast(tf.equal(tf.argmax(p, axis=-1), tf.cast(tf.reshape(y, [-1]), tf.int64)), tf.float32)


class _Steps:
    """The traced epoch and evaluation of one compiled model (one trace each per model)."""

    def __init__(self, model: keras.Model, batch_size: int):
        self.model = model
        self.batch_size = batch_size
        if model.optimizer is None:
            raise ValueError("memory_fit: compile the model first (its optimizer is used)")
        units = int(model.output_shape[-1])
        # The head's loss as model.compile_model sets it (Keras' reduction: sum(weight * loss)
        # / batch size), and unreduced, for the weighted cross-entropy and the validation pass.
        self.loss, _ = model_lib.loss_and_metric(2 if units == 1 else units)
        self.per_example = self.loss.__class__(reduction=keras.losses.Reduction.NONE)
        # Create the optimizer's slots now: not inside the traced loop.
        model.optimizer.build(model.trainable_variables)
        spec = [
            tf.TensorSpec([None, None], tf.float32),
            tf.TensorSpec(None, self.loss_dtype(model)),
            tf.TensorSpec([None], tf.float32),
        ]
        # Plain TensorFlow control flow (tf.while_loop): nothing for AutoGraph to convert.
        self.epoch = tf.function(
            self._epoch, input_signature=[*spec, tf.TensorSpec([None], tf.int32)], autograph=False
        )
        self.evaluate = tf.function(self._evaluate, input_signature=spec, autograph=False)

    @staticmethod
    def loss_dtype(model: keras.Model) -> tf.DType:
        return tf.float32 if model.output_shape[-1] == 1 else tf.int64

    def _regularisation(self) -> tf.Tensor:
        losses = self.model.losses
        return tf.add_n(losses) if losses else tf.constant(0.0)

    def _epoch(self, x, y, w, order):
        """Gradient steps over the batches of `order` (example indices); the epoch's train logs."""
        model, b = self.model, self.batch_size
        n = tf.shape(order)[0]
        batches = (n + b - 1) // b

        def step(i, loss_sum, weighted, weight, correct):
            idx = order[i * b : tf.minimum((i + 1) * b, n)]
            xb, yb, wb = tf.gather(x, idx), tf.gather(y, idx), tf.gather(w, idx)
            with tf.GradientTape() as tape:
                p = model(xb, training=True)
                total = self.loss(yb, p, sample_weight=wb) + self._regularisation()
            grads = tape.gradient(total, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            each = self.per_example(yb, p)
            return (
                i + 1,
                loss_sum + total * tf.cast(tf.shape(idx)[0], tf.float32),
                weighted + tf.reduce_sum(each * wb),
                weight + tf.reduce_sum(wb),
                correct + tf.reduce_sum(_accurate(yb, p)),
            )

        zero = tf.constant(0.0)
        _, loss_sum, weighted, weight, correct = tf.while_loop(
            lambda i, *_: i < batches, step, (tf.constant(0), zero, zero, zero, zero)
        )
        count = tf.cast(n, tf.float32)
        return loss_sum / count, correct / count, weighted / weight

    def _evaluate(self, x, y, w):
        """(loss as Keras reports it, accuracy, weighted mean cross-entropy) over all examples.

        One forward pass over all of them: the features are in memory already, and the
        head's output ([N, classes]) is small next to them."""
        p = self.model(x, training=False)
        each = self.per_example(y, p)
        weighted = tf.reduce_sum(each * w)
        count = tf.cast(tf.shape(x)[0], tf.float32)
        # Keras' evaluate: the mean over examples of weight * loss, plus the regularisation.
        right = _accurate(y, p)
        accuracy = tf.reduce_sum(right) / count
        # With balanced class weights, the weighted accuracy is the balanced accuracy.
        weighted_accuracy = tf.reduce_sum(right * w) / tf.reduce_sum(w)
        return (
            weighted / count + self._regularisation(),
            accuracy,
            weighted / tf.reduce_sum(w),
            weighted_accuracy,
        )


# Traces are the main fixed cost here (~0.3-1 s per model): keep them with their model.
_STEPS: weakref.WeakKeyDictionary[keras.Model, _Steps] = weakref.WeakKeyDictionary()


def _steps(model: keras.Model, batch_size: int) -> _Steps:
    steps = _STEPS.get(model)
    if steps is None or steps.batch_size != batch_size:
        steps = _STEPS[model] = _Steps(model, batch_size)
    return steps


def fit(
    model: keras.Model,
    train: Arrays,
    val: Arrays | None,
    epochs: int,
    batch_size: int,
    seed: int,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    steps_per_epoch: int | None = None,
) -> dict[str, list[float]]:
    """Train the compiled `model` on `train` for up to `epochs` epochs; the history.

    Each epoch visits a new permutation of the examples (seeded by `seed`), or, with
    `steps_per_epoch`, the next `steps_per_epoch` batches of a stream of permutations.
    `val` is evaluated after every epoch (logs `val_*`). A callback that sets
    `model.stop_training` (EarlyStopping) ends training after that epoch.
    """
    steps = _steps(model, batch_size)
    rng = np.random.default_rng(seed)
    n = len(train)
    stream = np.empty(0, np.int32)
    history: dict[str, list[float]] = {}
    cbs = keras.callbacks.CallbackList(
        list(callbacks), add_history=False, add_progbar=False, model=model, epochs=epochs, verbose=0
    )
    model.stop_training = False
    cbs.on_train_begin()
    for epoch in range(epochs):
        cbs.on_epoch_begin(epoch)
        if steps_per_epoch is None:
            order = rng.permutation(n).astype(np.int32)
        else:
            want = steps_per_epoch * batch_size
            while len(stream) < want:
                stream = np.concatenate([stream, rng.permutation(n).astype(np.int32)])
            order, stream = stream[:want], stream[want:]
        loss, accuracy, xent = steps.epoch(train.x, train.y, train.w, tf.constant(order))
        logs = {"loss": float(loss), "accuracy": float(accuracy), "cross_entropy": float(xent)}
        if val is not None:
            v_loss, v_accuracy, v_xent, v_weighted = steps.evaluate(val.x, val.y, val.w)
            logs.update(
                val_loss=float(v_loss),
                val_accuracy=float(v_accuracy),
                val_cross_entropy=float(v_xent),
                val_weighted_accuracy=float(v_weighted),
            )
        for k, v in logs.items():
            history.setdefault(k, []).append(v)
        cbs.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cbs.on_train_end()
    return history


def evaluate(model: keras.Model, data: Arrays) -> dict[str, float]:
    """`loss`, `accuracy`, `cross_entropy` of the compiled `model` on `data`."""
    steps = _STEPS.get(model) or _steps(model, 32)
    loss, accuracy, xent, _ = steps.evaluate(data.x, data.y, data.w)
    return {"loss": float(loss), "accuracy": float(accuracy), "cross_entropy": float(xent)}
