"""Real images from scikit-learn for the demo and tests (offline, no downloads).

- ``write_digits_tree``: the 8x8 handwritten digits of ``load_digits`` as a
  class-per-folder tree of grayscale PNGs, the input layout ``ingest`` expects.
- ``write_sample_photos``: the two colour photos of ``load_sample_images``
  (``china``, ``flower``) as their original JPEG bytes plus a PNG copy each,
  so tests decode real camera-style JPEGs, not only synthetic ones.
- ``digit_images`` / ``sample_photos``: the same images in memory, as encoded
  bytes, for code that needs a few real images without a folder (tests,
  benchmarks, the small serving model in ``imgpipe.demo.classifier``).

Output is deterministic: same arguments -> same file names and bytes.

scikit-learn is a demo/dev dependency only (`pip install 'imgpipe[demo]'`);
it is imported when a writer runs.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterable

import numpy as np
from PIL import Image

__all__ = ["digit_images", "sample_photos", "write_digits_tree", "write_sample_photos"]


def _sklearn_datasets():
    try:
        from sklearn import datasets
    except ImportError as e:
        raise RuntimeError(
            "the demo's images come from scikit-learn, which is not installed: pip install 'imgpipe[demo]'"
        ) from e
    return datasets


def _digit_to_uint8(image: np.ndarray) -> np.ndarray:
    """Map a ``load_digits`` image (floats 0..16) to uint8 0..255."""
    return np.clip(np.rint(image * (255.0 / 16.0)), 0, 255).astype(np.uint8)


def write_digits_tree(
    out_dir: str,
    digits: Iterable[int] = range(10),
    size: int = 32,
    limit_per_class: int | None = None,
) -> dict[str, int]:
    """Write scikit-learn digits as ``out_dir/<d>/<d>_<index>.png``; return counts.

    Each 8x8 image becomes an 8-bit grayscale (mode ``L``) PNG, upscaled
    bilinearly to ``size`` x ``size`` (smooth strokes suit ImageNet backbones
    better than blocky nearest-neighbour pixels). Class folders are named by
    the digit (``"0"`` .. ``"9"``); ``<index>`` is the sample's index in
    ``load_digits``, so names are stable. ``limit_per_class`` keeps the first N
    samples of each digit in dataset order. Returns ``{class_name: count}``.
    """
    wanted = sorted(set(digits))
    if not wanted:
        raise ValueError("write_digits_tree: 'digits' is empty")
    bad = [d for d in wanted if not isinstance(d, (int, np.integer)) or not 0 <= d <= 9]
    if bad:
        raise ValueError(f"write_digits_tree: digits must be integers 0..9, got {bad}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"write_digits_tree: size must be a positive int, got {size!r}")
    if limit_per_class is not None and limit_per_class < 1:
        raise ValueError(f"write_digits_tree: limit_per_class must be >= 1 or None, got {limit_per_class}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"write_digits_tree: {out_dir} exists and is not a directory")

    data = _sklearn_datasets().load_digits()
    counts: dict[str, int] = {str(d): 0 for d in wanted}
    for index, (image, target) in enumerate(zip(data.images, data.target, strict=True)):
        name = str(int(target))
        if name not in counts:
            continue
        if limit_per_class is not None and counts[name] >= limit_per_class:
            continue
        class_dir = os.path.join(out_dir, name)
        os.makedirs(class_dir, exist_ok=True)
        picture = Image.fromarray(_digit_to_uint8(image))  # 2-D uint8 -> mode L
        if size != picture.width:
            picture = picture.resize((size, size), Image.Resampling.BILINEAR)
        picture.save(os.path.join(class_dir, f"{name}_{index:04d}.png"), format="PNG")
        counts[name] += 1
    return counts


def write_sample_photos(out_dir: str) -> list[str]:
    """Write scikit-learn's two 427x640 sample photos; return the sorted paths.

    Writes ``china.jpg`` and ``flower.jpg`` (the original JPEG files shipped
    with scikit-learn, byte for byte) and ``china.png`` / ``flower.png``
    (lossless copies of the decoded pixels) directly into ``out_dir``.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"write_sample_photos: {out_dir} exists and is not a directory")
    os.makedirs(out_dir, exist_ok=True)
    samples = _sklearn_datasets().load_sample_images()
    written: list[str] = []
    for source, pixels in zip(samples.filenames, samples.images, strict=True):
        stem = os.path.splitext(os.path.basename(source))[0]
        jpeg_path = os.path.join(out_dir, f"{stem}.jpg")
        shutil.copyfile(source, jpeg_path)
        png_path = os.path.join(out_dir, f"{stem}.png")
        Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(png_path, format="PNG")
        written += [jpeg_path, png_path]
    return sorted(written)


def digit_images(
    digits: Iterable[int] = (0, 1, 2), per_class: int = 20, size: int = 32, seed: int = 0
) -> list[tuple[bytes, str]]:
    """Real scikit-learn digits as (PNG bytes, class name) pairs, in class order.

    ``per_class`` samples of each digit, drawn by a seeded permutation (same
    arguments -> same bytes), upscaled bilinearly to ``size`` px. Pixels are
    scaled 0..16 -> 0..255 by truncation (the tests' fixtures were fitted on
    exactly these bytes; ``write_digits_tree`` rounds).
    """
    data = _sklearn_datasets().load_digits()
    rng = np.random.RandomState(seed)
    out = []
    for digit in digits:
        idx = np.flatnonzero(data.target == digit)
        for i in rng.permutation(idx)[:per_class]:
            pix = (data.images[i] * (255.0 / 16.0)).astype(np.uint8)
            img = Image.fromarray(pix).resize((size, size), Image.BILINEAR)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            out.append((buf.getvalue(), str(digit)))
    return out


def sample_photos(size: int = 96, quality: int = 90) -> list[tuple[str, bytes, bytes]]:
    """scikit-learn's two sample photos, resized to ``size`` px: [(file name, JPEG bytes, PNG bytes)]."""
    samples = _sklearn_datasets().load_sample_images()
    out = []
    for name, array in zip(samples.filenames, samples.images, strict=True):
        img = Image.fromarray(array).resize((size, size), Image.BILINEAR)
        jpeg, png = io.BytesIO(), io.BytesIO()
        img.save(jpeg, format="JPEG", quality=quality)
        img.save(png, format="PNG")
        out.append((os.path.basename(name), jpeg.getvalue(), png.getvalue()))
    return out
