"""build_model: a frozen tf.keras.applications backbone with a small classification head.

The model is split in two named parts so they can be trained separately:
`backbone` (image -> pooled features, frozen) and `head` (features -> class
probabilities). The frozen-feature cache trains `head` alone on features the
backbone computed once; the full model shares the very same head weights.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer import backbones, data
from trainer.config import WEIGHTS_IMAGENET, WEIGHTS_NONE
from trainer.shape_inference import static_shapes

BACKBONE_NAME = "backbone"
HEAD_NAME = "head"


def resolve_weights(weights: str) -> str | None:
    """'imagenet' | 'none' | path to a weights file -> the Keras `weights=` argument."""
    w = weights.strip()
    if w.lower() == WEIGHTS_IMAGENET:
        return WEIGHTS_IMAGENET
    if w.lower() == WEIGHTS_NONE:
        return None
    if not os.path.isfile(w):
        raise FileNotFoundError(f"backbone weights file not found: {w}")
    return w


def build_backbone(backbone: str, weights: str, image_size: int) -> keras.Model:
    """The application without its top, globally average-pooled, named 'backbone'."""
    spec = backbones.get(backbone)
    kwargs = {}
    if spec.module == "mobilenet_v3" or spec.module.startswith("efficientnet_v2"):
        # Their preprocess_input is the identity and the model rescales itself.
        kwargs["include_preprocessing"] = True
    with static_shapes():  # the same model, built without a scratch-graph trace per layer
        base = spec.constructor()(
            include_top=False,
            weights=resolve_weights(weights),
            input_shape=(image_size, image_size, 3),
            pooling="avg",
            **kwargs,
        )
    # Re-wrap under a fixed name so the full model, the head-only model and the
    # weights file all refer to the same layer names whatever the application.
    return keras.Model(base.inputs, base.outputs, name=BACKBONE_NAME)


def weights_digest(path: str) -> str:
    """The sha256 of a weights file's bytes: what a run's Trainer is keyed by (TFX's cache) and
    checks before it loads the file, so one changed at the same path is never taken for the old."""
    from trainer.same_files import sha256

    return sha256(path)[0]


def weights_file_problem(path: str, backbone: str, image_size: int) -> str | None:
    """Why Keras cannot load the weights file `path` into `backbone` (no top) at `image_size`,
    in its loader's own words (a layer count, a weight's shape, an HDF5 file it cannot open);
    None when it loads.

    The backbone is built with the file exactly as the Trainer builds it (0.6-1.2 s for
    MobileNetV2, ~3 s for DenseNet121), so a local run can refuse a file saved from another
    backbone, or another width of this one, before its data components run.
    """
    try:
        base = build_backbone(backbone, path, image_size)
    except (ValueError, OSError, KeyError) as e:  # what tf_keras's HDF5 loader raises
        return " ".join(str(e).split()) or type(e).__name__
    del base
    gc.collect()  # the backbone's variables: the Trainer builds its own
    return None


def build_head(
    feature_dim: int,
    num_classes: int,
    dropout: float,
    l2: float = 0.0,
    feature_stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> keras.Model:
    """[Standardize +] Dropout + Dense: softmax over N classes, or one sigmoid unit for 2 classes.

    `feature_stats` (mean, variance) of the training features: the head first standardises
    its input with them (constants in the graph, so the exported model carries them).
    Backbones differ in feature scale by orders of magnitude; on standardised features
    one learning rate suits all of them. `l2` > 0 adds L2 weight decay (l2 * sum of
    squared kernel weights) to the loss.
    """
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    with static_shapes():
        return _head(feature_dim, num_classes, dropout, l2, feature_stats)


def _head(feature_dim, num_classes, dropout, l2, feature_stats) -> keras.Model:
    features = keras.Input((feature_dim,), name="features")
    x = features
    if feature_stats is not None:
        mean, variance = feature_stats
        x = keras.layers.Normalization(mean=mean, variance=variance, name="standardize")(x)
    x = keras.layers.Dropout(dropout)(x) if dropout > 0 else x
    regularizer = keras.regularizers.L2(l2) if l2 > 0 else None
    if num_classes == 2:
        out = keras.layers.Dense(1, activation="sigmoid", kernel_regularizer=regularizer, name="probability")(
            x
        )
    else:
        out = keras.layers.Dense(
            num_classes, activation="softmax", kernel_regularizer=regularizer, name="probabilities"
        )(x)
    return keras.Model(features, out, name=HEAD_NAME)


def feature_stats(total: np.ndarray, total_sq: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and variance for the head's standardisation, from the sums of the
    training features and of their squares (float64) over `count` examples.

    The variance is floored at 1e-4 of the mean variance: a unit that is (nearly) constant
    on the training data would otherwise turn tiny differences at serving time into huge
    inputs. When every unit is (nearly) constant (images of one colour), the mean variance is
    float noise itself: the floor is then also at least 1e-8 of the features' mean square, so
    float32 noise between the cached and the serving path is not scaled up a millionfold (an
    audit's head answered one class on its cached features and the other as served)."""
    if count < 1:
        raise ValueError("feature_stats: no examples")
    mean = np.asarray(total, np.float64) / count
    mean_square = np.asarray(total_sq, np.float64) / count
    variance = np.maximum(mean_square - mean**2, 0.0)
    floor = max(float(variance.mean()) * 1e-4, float(mean_square.mean()) * 1e-8, 1e-12)
    return mean.astype(np.float32), np.maximum(variance, floor).astype(np.float32)


def assemble(base: keras.Model, head: keras.Model, image_size: int) -> keras.Model:
    """Preprocessed image [S, S, 3] -> probabilities: `base` (frozen, inference mode) then `head`."""
    base.trainable = False
    images = keras.Input((image_size, image_size, 3), name="image")
    with static_shapes():  # base's output is its own: not traced again for the new input
        # training=False keeps BatchNorm in inference mode, also when fine-tuning later.
        features = base(images, training=False)
        return keras.Model(images, head(features), name="classifier")


def build_model(
    backbone: str,
    weights: str,
    image_size: int,
    num_classes: int,
    dropout: float = 0.2,
    l2: float = 0.0,
) -> keras.Model:
    """Preprocessed image [S, S, 3] -> probabilities; the backbone frozen, in inference mode.

    Call inside a distribution strategy's scope to place the variables there.
    """
    base = build_backbone(backbone, weights, image_size)
    return assemble(base, build_head(base.output_shape[-1], num_classes, dropout, l2), image_size)


def fold_standardization(model: keras.Model) -> keras.Model:
    """An inference-only copy of `model` whose head has no standardisation layer: the per-feature
    shift and scale are folded into the Dense layer (W' = W / std, b' = b - (mean / std) @ W).

    The answers are the same up to float rounding. Converters that quantize activations
    (TFLite int8) need it: the standardised features of units that are nearly constant on
    train span a far wider range than the raw ones, and one int8 scale per tensor cannot
    hold both. Dropout is left out (it is the identity at inference). `model` is returned
    unchanged when its head does not standardise.
    """
    head = head_of(model)
    layers = {layer.name: layer for layer in head.layers}
    if "standardize" not in layers:
        return model
    norm = layers["standardize"]
    dense = next(layer for layer in head.layers if isinstance(layer, keras.layers.Dense))
    mean = np.asarray(norm.mean, np.float64).reshape(-1)
    std = np.maximum(np.sqrt(np.asarray(norm.variance, np.float64).reshape(-1)), keras.backend.epsilon())
    kernel, bias = (np.asarray(w, np.float64) for w in dense.get_weights())
    folded_kernel = kernel / std[:, np.newaxis]
    folded_bias = bias - (mean / std) @ kernel
    features = keras.Input((kernel.shape[0],), name="features")
    out = keras.layers.Dense(kernel.shape[1], activation=dense.activation, name=dense.name)(features)
    folded = keras.Model(features, out, name=HEAD_NAME)
    folded.get_layer(dense.name).set_weights(
        [folded_kernel.astype(np.float32), folded_bias.astype(np.float32)]
    )
    base = backbone_of(model)
    images = keras.Input(model.input_shape[1:], name="image")
    with static_shapes():
        return keras.Model(images, folded(base(images, training=False)), name=model.name)


def backbone_of(model: keras.Model) -> keras.Model:
    return model.get_layer(BACKBONE_NAME)


def head_of(model: keras.Model) -> keras.Model:
    return model.get_layer(HEAD_NAME)


def loss_and_metric(num_classes: int):
    if num_classes == 2:
        return keras.losses.BinaryCrossentropy(), keras.metrics.BinaryAccuracy(name="accuracy")
    return (
        keras.losses.SparseCategoricalCrossentropy(),
        keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
    )


def cross_entropy_metric(num_classes: int) -> keras.metrics.Metric:
    """The class loss as a metric named 'cross_entropy': without the L2 penalty that `loss`
    includes; as a weighted metric, the sample-weighted mean."""
    if num_classes == 2:
        return keras.metrics.BinaryCrossentropy(name="cross_entropy")
    return keras.metrics.SparseCategoricalCrossentropy(name="cross_entropy")


def compile_model(model: keras.Model, num_classes: int, learning_rate: float) -> None:
    """Adam on the class loss (weighted by the dataset's sample weights when it yields them);
    accuracy is unweighted, `cross_entropy` (what early stopping watches) weighted."""
    loss, metric = loss_and_metric(num_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=loss,
        metrics=[metric],
        weighted_metrics=[cross_entropy_metric(num_classes)],
    )


def release_fit_iterators() -> None:
    """Free the tf.data iterators a Keras `fit` on batches left behind; call as it returns.

    Keras leaves a fit's train iterators in reference cycles: an early-stopped fit's epoch
    generator, closed through a context manager, keeps its frame in the GeneratorExit's
    traceback, and a fit that runs every epoch leaves some too. Each holds its shuffle and
    prefetch buffers and its autotuning thread. This collects them now (a full collection,
    ~0.4 s in a pipeline's process), not at whatever later collection reaches them in the
    middle of other work, where such a destructor has been seen to wait for that thread with
    the GIL held (BENCHMARKS.md, "Iterators left to the garbage collector").
    """
    gc.collect()


def fit_batches(model: keras.Model, batches: tf.data.Dataset, **fit_args) -> keras.callbacks.History:
    """`model.fit(batches, **fit_args)` as the project runs every Keras fit on tf.data: its train
    step traced once (`prepare_fit`), its datasets read as the model's strategy reads them
    best (`data.for_replicas`), and the iterators it leaves freed as it returns
    (`release_fit_iterators`)."""
    prepare_fit(model, batches)
    strategy = model.distribute_strategy
    if isinstance(fit_args.get("validation_data"), tf.data.Dataset):
        fit_args["validation_data"] = data.for_replicas(fit_args["validation_data"], strategy)
    history = model.fit(data.for_replicas(batches, strategy), **fit_args)
    release_fit_iterators()
    return history


def evaluate_batches(model: keras.Model, batches: tf.data.Dataset) -> dict[str, float]:
    """`model.evaluate(batches)`'s metrics by name, as the project runs every Keras evaluate on
    tf.data: the batches read as the model's strategy reads them best (`data.for_replicas`)."""
    return model.evaluate(data.for_replicas(batches, model.distribute_strategy), verbose=0, return_dict=True)


def prepare_fit(model: keras.Model, batches: tf.data.Dataset) -> bool:
    """Create now the variables `model.fit`'s first train step would create, so that Keras
    traces its train step once instead of twice.

    A `tf.function` whose first call creates variables is traced a second time for the calls
    after it. Keras's train step creates the optimizer's slots and the compiled loss and
    metrics' state on its first call, so every `fit` of a freshly compiled model traced its
    whole forward and backward pass twice (MobileNetV2 at 32 px: ~3.5 s of a ~10 s first
    epoch; BENCHMARKS.md, "One trace per fit"). Built here, under the model's distribution
    strategy, from `batches`' element spec (the labels' shape and dtype) and the model's
    output spec: the same variables with the same initial values, so training is unchanged.

    Call it after `compile` and before `fit` with the dataset `fit` gets. Returns False, and
    creates nothing, for what this cannot describe (a model not compiled or without a single
    output of known shape, batches without labels or with labels of unknown shape or rank);
    `fit` then creates them itself as before. Idempotent.
    """
    if model.optimizer is None or getattr(model, "compiled_loss", None) is None:
        return False
    outputs = getattr(model, "outputs", None)
    if not outputs or len(outputs) != 1 or not isinstance(batches.element_spec, tuple):
        return False
    labels = batches.element_spec[1] if len(batches.element_spec) > 1 else None
    if not isinstance(labels, tf.TensorSpec) or any(
        spec.shape.rank is None or None in spec.shape[1:] for spec in (labels, outputs[0])
    ):
        return False

    def one(spec) -> tf.Tensor:
        return tf.zeros([1, *spec.shape[1:]], spec.dtype)

    with model.distribute_strategy.scope():
        if hasattr(model.optimizer, "build"):
            model.optimizer.build(model.trainable_variables)
        else:  # tf_keras's legacy optimizers (the pre-training's fused Adam) create them so
            model.optimizer._create_all_weights(model.trainable_variables)
        y_pred = one(outputs[0])
        if not model.compiled_loss.built:
            model.compiled_loss.build(y_pred)
        if not model.compiled_metrics.built:
            model.compiled_metrics.build(y_pred, one(labels))
    return True


def reset_optimizer(optimizer) -> None:
    """Put an optimizer back to its state before its first step: its slots (Adam's moments)
    and step count at zero, its learning rate kept."""
    lr = getattr(optimizer, "_learning_rate", None)
    keep = {id(lr)} if isinstance(lr, tf.Variable) else set()
    variables = optimizer.variables  # a method on tf_keras's legacy optimizers
    for v in variables() if callable(variables) else variables:
        if id(v) not in keep:
            v.assign(tf.zeros_like(v))


def set_learning_rate(optimizer, rate: float) -> None:
    """Set an optimizer's constant learning rate to `rate` (a schedule is left as it is): after
    a callback such as ReduceLROnPlateau changed it, before the optimizer trains anew."""
    lr = getattr(optimizer, "learning_rate", None)
    if isinstance(lr, tf.Variable):
        lr.assign(rate)


def unfreeze_top(model: keras.Model, num_layers: int) -> int:
    """Make the top `num_layers` backbone layers trainable, BatchNorm excepted.

    Returns how many layers became trainable. Recompile afterwards.
    """
    base = backbone_of(model)
    base.trainable = True
    layers = base.layers
    cut = max(0, len(layers) - num_layers)
    changed = 0
    for i, layer in enumerate(layers):
        train = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = train
        changed += int(train and bool(layer.weights))
    return changed


def class_scores(probabilities, num_classes: int):
    """Per-class scores [batch, N] from the head's output (expands the sigmoid unit)."""
    import tensorflow as tf

    if num_classes == 2:
        return tf.concat([1.0 - probabilities, probabilities], axis=-1)
    return probabilities
