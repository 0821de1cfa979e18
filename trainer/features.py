"""Feature names shared by ingest, Transform, the Trainer, the Evaluator and serving."""

# Raw tf.Example features written by `imgpipe ingest`.
IMAGE_KEY = "image"  # encoded image bytes (JPEG, PNG, GIF or BMP)
LABEL_KEY = "label"  # class name (utf-8 bytes)


def transformed_name(key: str) -> str:
    return f"{key}_xf"


IMAGE_XF = transformed_name(IMAGE_KEY)  # float32 [S, S, 3], backbone-normalised
LABEL_XF = transformed_name(LABEL_KEY)  # int64 class index into the label vocabulary

LABEL_VOCAB = "label_vocab"  # TFT vocabulary file name of the class names

# The largest image (width x height, from its header) that ingest accepts and the
# preprocessing graph decodes; bigger ones are refused before any pixel is decoded.
DEFAULT_MAX_PIXELS = 40_000_000
