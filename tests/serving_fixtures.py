"""A small exported model whose scores really depend on the image, built once per session.

A random-weight MobileNetV2 gives backbone features of ~1e-12, nearly constant,
so a head trained on them for a few epochs scores every image the same and
equality checks between serving paths would prove nothing. Here the export
path is the real one, but the head is fitted in closed form (logistic
regression on standardised backbone features), so the model separates the
digits and scores vary per image, without paying for a pre-trained backbone.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
import threading

import numpy as np
from PIL import Image

from tests import helpers

MODEL_NAME = "digits"
DIGITS = ("0", "1", "2")
IMAGE_SIZE = 32
BACKBONE = "MobileNetV2"
WARMUP_COUNT = 2


@dataclasses.dataclass(frozen=True)
class ServingModel:
    """An exported SavedModel and the images it was fitted on."""

    export_dir: str
    items: list[tuple[bytes, str]]  # (PNG bytes, label)
    class_names: list[str]


_lock = threading.Lock()
_cache: dict[str, ServingModel] = {}


def _fit_head(m, features: np.ndarray, labels: np.ndarray) -> None:
    """Set the Dense head so it is a logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression

    from trainer import model as model_lib

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


def build_serving_model(workdir: str) -> ServingModel:
    """Transform analysis + model + fitted head + export (with warmup requests)."""
    import tensorflow as tf

    from trainer import data, export
    from trainer import model as model_lib
    from trainer.features import IMAGE_KEY, IMAGE_XF

    items = helpers.digit_images(tuple(int(d) for d in DIGITS), per_class=12, size=IMAGE_SIZE)
    tfo = helpers.analyze_transform(
        items,
        os.path.join(workdir, "transform"),
        backbone=BACKBONE,
        image_size=IMAGE_SIZE,
    )
    classes = data.class_names(tfo)
    m = model_lib.build_model(BACKBONE, "none", IMAGE_SIZE, len(classes), dropout=0.0)
    layer = tfo.transform_features_layer()
    raw = {IMAGE_KEY: tf.constant([[img] for img, _ in items])}
    images = layer(raw)[IMAGE_XF]
    features = model_lib.backbone_of(m)(images, training=False).numpy()
    labels = np.array([classes.index(label) for _, label in items])
    _fit_head(m, features, labels)
    warmup = [helpers.make_example(img) for img, _ in items[:WARMUP_COUNT]]
    export_dir = export.export_serving_model(
        m,
        tfo,
        classes,
        os.path.join(workdir, "export"),
        top_k=3,
        warmup_examples=warmup,
    )
    return ServingModel(export_dir, items, classes)


def serving_model() -> ServingModel:
    """The session's model, built on first use (about a minute) in a temp dir."""
    with _lock:
        if "model" not in _cache:
            workdir = tempfile.mkdtemp(prefix="imgpipe-serving-")
            _cache["model"] = build_serving_model(workdir)
        return _cache["model"]


def sample_photos(size: int = 96) -> list[tuple[str, bytes, bytes]]:
    """scikit-learn's two sample photos, downscaled: [(name, JPEG bytes, PNG bytes)]."""
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    out = []
    for name, array in zip(data.filenames, data.images, strict=True):
        img = Image.fromarray(array).resize((size, size), Image.BILINEAR)
        jpeg, png = io.BytesIO(), io.BytesIO()
        img.save(jpeg, format="JPEG", quality=90)
        img.save(png, format="PNG")
        out.append((os.path.basename(name), jpeg.getvalue(), png.getvalue()))
    return out


def as_jpeg(png: bytes, quality: int = 95) -> bytes:
    """Re-encode image bytes as JPEG."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
