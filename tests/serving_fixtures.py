"""The serving tests' model: imgpipe.demo.classifier's small digits classifier, built once per session."""

from __future__ import annotations

import io
import tempfile
import threading

from PIL import Image

from imgpipe.demo import data
from imgpipe.demo.classifier import ServingModel, build_serving_model

MODEL_NAME = "digits"
DIGITS = (0, 1, 2)
IMAGE_SIZE = 32
WARMUP_COUNT = 2  # warmup examples; each is replayed through the 3 client signatures
WARMUP_REQUESTS = 3 * WARMUP_COUNT

_lock = threading.Lock()
_cache: dict[str, ServingModel] = {}


def serving_model(workdir: str | None = None) -> ServingModel:
    """The process's model, built on first use (several seconds) in `workdir` (default: a temp dir).

    Tests take it through conftest's `serving_model` fixture, which shares one between workers.
    """
    with _lock:
        if "model" not in _cache:
            workdir = workdir or tempfile.mkdtemp(prefix="imgpipe-serving-")
            _cache["model"] = build_serving_model(
                workdir, DIGITS, per_class=12, image_size=IMAGE_SIZE, warmup_count=WARMUP_COUNT
            )
        return _cache["model"]


def sample_photos(size: int = 96) -> list[tuple[str, bytes, bytes]]:
    """scikit-learn's two sample photos, downscaled: [(name, JPEG bytes, PNG bytes)]."""
    return data.sample_photos(size)


def as_jpeg(png: bytes, quality: int = 95) -> bytes:
    """Re-encode image bytes as JPEG."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
