"""A small exported digits classifier whose scores really depend on the image, in about a minute.

For the serving tests and the serving benchmark, and for trying `imgpipe serve`
without a pipeline run. A random-weight MobileNetV2 gives backbone features of
~1e-12, nearly constant, so a head trained on them for a few epochs scores
every image the same and comparisons between serving paths would prove
nothing. Here the export path is the real one (Transform analysis, the
pipeline's model, trainer/export.py with warmup requests), but the head is
fitted in closed form (logistic regression on standardised backbone
features), so the model separates the digits without a pre-trained backbone.

Needs scikit-learn (`pip install 'imgpipe[demo]'`), like the demo's images.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from imgpipe.demo.analyze import analyze_transform
from imgpipe.demo.data import digit_images
from serving.client import make_image_example
from trainer import data, export
from trainer import model as model_lib
from trainer.features import IMAGE_KEY, IMAGE_XF


@dataclasses.dataclass(frozen=True)
class ServingModel:
    """An exported SavedModel and the images it was fitted on."""

    export_dir: str
    items: list[tuple[bytes, str]]  # (PNG bytes, label)
    class_names: list[str]


def fit_head(m: keras.Model, features: np.ndarray, labels: np.ndarray) -> None:
    """Set the model's Dense head to a logistic regression on standardised backbone features."""
    from sklearn.linear_model import LogisticRegression  # demo extra, as for the images

    feats = features.astype(np.float64)
    mu = feats.mean(axis=0)
    sigma = feats.std(axis=0)
    live = sigma > 0
    z = np.zeros_like(feats)
    z[:, live] = (feats[:, live] - mu[live]) / sigma[live]
    clf = LogisticRegression(C=0.05, max_iter=2000).fit(z, labels)
    coef = np.zeros_like(clf.coef_)  # [classes, features]
    coef[:, live] = clf.coef_[:, live] / sigma[live]
    bias = clf.intercept_ - coef @ mu
    dense = model_lib.head_of(m).layers[-1]
    dense.set_weights([coef.T.astype(np.float32), bias.astype(np.float32)])


def build_serving_model(
    workdir: str,
    digits: Sequence[int] = (0, 1, 2),
    per_class: int = 12,
    image_size: int = 32,
    backbone: str = "MobileNetV2",
    warmup_count: int = 2,
    seed: int = 0,
) -> ServingModel:
    """Transform analysis + model + fitted head + export (with warmup requests) under `workdir`.

    The first `warmup_count` images become the SavedModel's TF Serving warmup
    requests (each sent through the three client signatures). Returns the export directory and the (image, label) items.
    The backbone is randomly initialised from `seed` (Keras' global seed, as the Trainer
    sets it): without one each process drew another backbone, and what the model
    answers off its training distribution (inverted digits, say) changed with the draw.
    """
    keras.utils.set_random_seed(seed)
    items = digit_images(tuple(digits), per_class=per_class, size=image_size)
    tfo = analyze_transform(
        items, os.path.join(workdir, "transform"), backbone=backbone, image_size=image_size
    )
    classes = data.class_names(tfo)
    m = model_lib.build_model(backbone, "none", image_size, len(classes), dropout=0.0)
    raw = {IMAGE_KEY: tf.constant([[img] for img, _ in items])}
    images = tfo.transform_features_layer()(raw)[IMAGE_XF]
    features = model_lib.backbone_of(m)(images, training=False).numpy()
    labels = np.array([classes.index(label) for _, label in items])
    fit_head(m, features, labels)
    warmup = [make_image_example(img) for img, _ in items[:warmup_count]]
    export_dir = export.export_serving_model(
        m,
        tfo,
        classes,
        os.path.join(workdir, "export"),
        top_k=3,
        warmup_examples=warmup,
    )
    return ServingModel(export_dir, items, classes)
