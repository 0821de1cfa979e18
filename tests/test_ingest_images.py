"""Ingest's image check: the pixel limit (read from the header, nothing decoded) and EXIF orientation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imgpipe.cli.main import main
from imgpipe.ingest import ingest
from imgpipe.ingest.images import check_image, inspect_image
from tests import image_samples


def _photo(seed: int, height: int = 30, width: int = 50) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_a_huge_image_is_refused_from_its_header() -> None:
    huge = image_samples.black_png(20_000, 20_000)
    reason = check_image(huge)
    assert reason == (
        "20000 x 20000 = 400000000 pixels, over the limit of 40000000 (--max-pixels); not decoded"
    )
    small = image_samples.png(_photo(1))  # 50 x 30 = 1500 pixels
    assert check_image(small, max_pixels=1500) is None
    assert "50 x 30 = 1500 pixels, over the limit of 1499" in check_image(small, max_pixels=1499)


def test_orientation_is_reported_and_broken_exif_is_upright() -> None:
    assert inspect_image(image_samples.oriented_jpeg(6)) == (None, 6)
    assert inspect_image(image_samples.oriented_jpeg(8, "MM")) == (None, 8)
    broken = image_samples.with_segment(
        image_samples.jpeg(_photo(2)), image_samples.app1(b"Exif\0\0" + b"XX" + b"\0" * 20)
    )
    assert inspect_image(broken) == (None, 1)
    assert inspect_image(b"not an image").reason.startswith("not a recognised image")


def test_ingest_skips_huge_images_and_lists_rotated_ones(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    rotated = image_samples.oriented_jpeg(6)
    files = {f"a/{i}.png": image_samples.png(_photo(i)) for i in range(3)}
    files |= {f"b/{i}.png": image_samples.png(_photo(10 + i)) for i in range(3)}
    files |= {"a/huge.png": image_samples.black_png(20_000, 20_000), "b/phone.jpg": rotated}
    _tree(images, files)

    report = ingest(str(images), str(out), eval_fraction=0.3)

    assert report.skipped == [
        {
            "path": "a/huge.png",
            "reason": "20000 x 20000 = 400000000 pixels, over the limit of 40000000 (--max-pixels); "
            "not decoded",
        }
    ]
    assert report.rotated == [{"path": "b/phone.jpg", "orientation": 6}]
    assert sum(report.totals.values()) == 7
    saved = json.loads((out / "ingest_report.json").read_text())
    assert saved["num_rotated"] == 1 and saved["max_pixels"] == 40_000_000
    # Ingest keeps the file's bytes: the graph turns it upright when it decodes it.
    import tensorflow as tf

    stored = [
        tf.train.Example.FromString(r.numpy()).features.feature["image"].bytes_list.value[0]
        for split in ("train", "eval")
        for f in sorted((out / split).iterdir())
        for r in tf.data.TFRecordDataset(str(f))
    ]
    assert rotated in stored


def test_cli_max_pixels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    files = {
        f"{c}/{i}.png": image_samples.png(_photo(10 * k + i, 8, 8))
        for k, c in enumerate("ab")
        for i in range(3)
    }
    files["a/big.png"] = image_samples.png(_photo(99, 20, 20))
    _tree(images, files)

    code = main(["ingest", "--images", str(images), "--out", str(out), "--max-pixels", "100"])

    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["max_pixels"] == 100
    assert result["skipped"] == [
        {
            "path": "a/big.png",
            "reason": "20 x 20 = 400 pixels, over the limit of 100 (--max-pixels); not decoded",
        }
    ]


def test_a_one_bit_bmp_names_its_depth_and_a_damaged_header_says_so():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (8, 8)).save(buf, "BMP")
    reason = check_image(buf.getvalue())
    assert reason.startswith(
        "1-bit BMP: TensorFlow decodes 8-, 24- and 32-bit BMPs only; convert it to PNG ("
    ), reason
    assert "Graph execution error" not in reason
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    damaged = bytearray(buf.getvalue())
    damaged[16:24] = b"\x7f" * 8  # IHDR's width and height
    assert check_image(bytes(damaged)).endswith("(as its header says: a damaged header can claim any size)")
