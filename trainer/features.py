"""Feature names shared by ingest, Transform, the Trainer, the Evaluator and serving."""

import hashlib

from trainer.class_names import is_plain

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

# Which pixels the preprocessing graph's decode gives (trainer.preprocessing.decode_image): part
# of Transform's cache key (pipeline/pipeline.py), since TFX's key holds the preprocessing_fn's
# import path, not its code, and a cached transform graph of an older decoder would keep giving
# its pixels after an upgrade. Change it whenever the decoded pixels change.
DECODER_VERSION = "2 (JPEG: libjpeg's accurate IDCT)"
# The order of the label vocabulary (the model's outputs: trainer.preprocessing.preprocessing_fn),
# in Transform's cache key for the same reason: a home's cached transform graph of the order
# before it (by count) would keep it until its data changed.
LABEL_ORDER = "each name's SHA-1"


def image_fingerprint(image: bytes) -> int:
    """The image's fingerprint: the first 8 bytes of BLAKE2b over its encoded bytes, little-endian.

    What the Trainer records of its train images (trainer/image_ids.py) and ingest of each set of
    near-copies (its report's ``near_copies``), so the two can be matched."""
    return int.from_bytes(hashlib.blake2b(image, digest_size=8).digest(), "little")


def code_points(text: str) -> str:
    """'U+0063 U+0301': each character of `text` by its Unicode code point."""
    return " ".join(f"U+{ord(ch):04X}" for ch in text)


def counted(n: int, noun: str) -> str:
    """'1 file', '3 files': a count and its noun, for messages."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def label_text(name: str) -> str:
    """A class name as messages and reports show it: as it is when it prints as what it is
    (class_names.is_plain: NFC, what `imgpipe ingest` writes, with no hidden character), else
    followed by its code points, so that two labels that print alike ('é' composed and e + a
    combining accent, 'a' and 'a ', 'dog' and 'd<U+200B>og') read differently."""
    name = str(name)
    return name if is_plain(name) else f"{name} ({code_points(name)})"


# The pixels of the images one model call takes where only scores are needed (the Evaluator, the
# run report): 128 images at 224 px. A call's activations grow with its pixels (BENCHMARKS.md
# "Feature extraction at large image sizes"): at 1024 px, 128 images would take tens of GB.
SCORING_CALL_PIXELS = 128 * 224 * 224


def images_per_call(most: int, image_size: int | None, pixels: int, multiple: int = 1) -> int:
    """`most` images a model call, or fewer where that many of `image_size` pixels a side pass
    `pixels`: a multiple of `multiple` (replicas), at least `multiple`. No size: `most`."""
    if not image_size:
        return most
    fits = pixels // (image_size * image_size)
    return min(most, max(multiple, fits // multiple * multiple))
