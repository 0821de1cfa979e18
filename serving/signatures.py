"""The serving signatures' contract: names, input keys and TF Serving method names.

trainer/export.py writes these signatures; the client, the warmup writer and
the dev server read them. Kept free of TensorFlow so `imgpipe --help` can use
the names for its flag choices.
"""

from __future__ import annotations

SERVING_DEFAULT = "serving_default"
CLASSIFICATION = "classification"
PREDICT_IMAGES = "predict_images"
TRANSFORM_FEATURES = "transform_features"

# The single input name of each signature the exporter writes.
INPUT_KEYS = {
    SERVING_DEFAULT: "examples",
    CLASSIFICATION: "inputs",
    PREDICT_IMAGES: "images",
}

# What each signature's input holds: encoded image bytes, or serialized tf.Examples whose
# IMAGE_FEATURE holds them. The dev server checks these before running the model.
IMAGE_INPUTS = {PREDICT_IMAGES: "images"}
EXAMPLE_INPUTS = {SERVING_DEFAULT: "examples", CLASSIFICATION: "inputs", TRANSFORM_FEATURES: "examples"}
IMAGE_FEATURE = "image"  # trainer.features.IMAGE_KEY (serving does not import trainer)

# SignatureDef.method_name values TF Serving dispatches on.
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
