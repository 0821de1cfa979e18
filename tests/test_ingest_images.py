"""Ingest's image check: the pixel limit (read from the header, nothing decoded) and EXIF orientation."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
    assert inspect_image(image_samples.oriented_jpeg(6))[:2] == (None, 6)
    assert inspect_image(image_samples.oriented_jpeg(8, "MM"))[:2] == (None, 8)
    broken = image_samples.with_segment(
        image_samples.jpeg(_photo(2)), image_samples.app1(b"Exif\0\0" + b"XX" + b"\0" * 20)
    )
    assert inspect_image(broken)[:2] == (None, 1)
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


# ------------------------------------------------- one image stored as different files


def _png_bytes(pixels: np.ndarray, **save: object) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=save.pop("format", "PNG"), **save)
    return buffer.getvalue()


def test_one_image_stored_as_different_files_has_one_key() -> None:
    """What the pipeline decodes decides: a PNG saved again (other compression, a text chunk), a
    BMP of its pixels, a grey PNG and its RGB copy; a JPEG with metadata (a comment, EXIF that
    says upright) and bytes after its end. Other pixels, another orientation: another key."""
    from PIL import PngImagePlugin

    pixels = _photo(3)
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "saved again")
    same = [
        image_samples.png(pixels),
        _png_bytes(pixels, compress_level=0, pnginfo=text),
        _png_bytes(pixels, format="BMP"),
    ]
    keys = {inspect_image(data).image for data in same}
    assert len(keys) == 1 and keys.pop().startswith("pixels:30x50:")
    grey = pixels[..., 0]
    assert inspect_image(_png_bytes(grey)).image == inspect_image(_png_bytes(np.stack([grey] * 3, -1))).image
    other = pixels.copy()
    other[0, 0, 0] ^= 1
    assert inspect_image(image_samples.png(other)).image != inspect_image(same[0]).image

    photo = image_samples.jpeg(pixels)
    comment = b"\xff\xfe\x00\x07hello"
    dressed = image_samples.with_segment(
        photo, comment + image_samples.app1(b"Exif\0\0" + image_samples.tiff_block(1))
    )
    key = inspect_image(photo).image
    assert key.startswith("jpeg:") and inspect_image(dressed + b"trailing bytes").image == key
    assert inspect_image(image_samples.oriented_jpeg(6, pixels=pixels)).image != key
    assert inspect_image(image_samples.jpeg(pixels, quality=80)).image != key


def test_jpegs_alike_at_the_checks_scale_keep_their_own_keys() -> None:
    """The check decodes a JPEG at 1/8 scale (its 8x8 block means), where a flat grey and a
    checkerboard of the same mean are the same pixels; their keys, from the coded data, differ."""
    import tensorflow as tf

    flat = np.full((64, 64, 3), 128, np.uint8)
    board = (
        np.where((np.indices((64, 64)).sum(0) % 2)[..., None] == 0, 96, 160).astype(np.uint8).repeat(3, -1)
    )
    a, b = image_samples.jpeg(flat), image_samples.jpeg(board)
    small = [tf.io.decode_jpeg(x, channels=3, ratio=8).numpy() for x in (a, b)]
    assert (small[0] == small[1]).all()
    assert inspect_image(a).image != inspect_image(b).image


def _segments(jpeg: bytes) -> list[tuple[int, bytes]]:
    """A JPEG's marker segments before its scan, each (marker, the segment's bytes)."""
    out, pos = [], 2
    while jpeg[pos + 1] != 0xDA:
        length = int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        out.append((jpeg[pos + 1], jpeg[pos : pos + 2 + length]))
        pos += 2 + length
    return out


def test_a_jfif_segment_is_part_of_a_jpegs_key_but_its_density_is_not() -> None:
    """A three-channel JPEG without JFIF or Adobe segment and with components named R, G, B is
    RGB to libjpeg; with a JFIF APP0 added, the same coded data is read as YCbCr: other colours,
    so another key. The JFIF segment's fields (density, thumbnail) decide no pixel. Fill bytes
    before a marker after the scan are padding."""
    import io

    import tensorflow as tf
    from PIL import Image

    pixels = _photo(5, 32, 32)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95, keep_rgb=True)
    coded = buffer.getvalue()
    head = b"\xff\xd8" + b"".join(seg for marker, seg in _segments(coded) if marker != 0xEE)
    plain = head + coded[coded.index(b"\xff\xda") :]
    jfif = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + plain[2:]
    dense = jfif.replace(b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01", b"JFIF\x00\x01\x02\x01\x01\x2c\x01\x2c", 1)
    decoded = [tf.io.decode_jpeg(x, channels=3).numpy().astype(int) for x in (plain, jfif, dense)]
    assert np.abs(decoded[0] - decoded[1]).max() > 50 and (decoded[1] == decoded[2]).all()
    keys = [inspect_image(x).image for x in (plain, jfif, dense)]
    assert keys[0] != keys[1] and keys[1] == keys[2]
    padded = jfif[:-2] + b"\xff" * 5 + b"\xff\xd9"
    assert (tf.io.decode_jpeg(padded, channels=3).numpy() == decoded[1]).all()
    assert inspect_image(padded).image == keys[1]


def test_a_jpeg_whose_markers_cannot_be_walked_is_known_by_its_bytes() -> None:
    from imgpipe.ingest.images import image_key, jpeg_coded_image

    photo = image_samples.jpeg(_photo(4))
    assert jpeg_coded_image(photo) is not None
    cut = photo[:2] + b"\x00" + photo[2:]  # no marker where one must be
    assert jpeg_coded_image(cut) is None and jpeg_coded_image(photo[:40]) is None
    assert image_key(photo[:40], 1, (0, 0, 0)) == "file:" + hashlib.sha256(photo[:40]).hexdigest()


def test_ingest_writes_one_copy_of_an_image_saved_twice(tmp_path: Path) -> None:
    """The same picture re-saved in its class is one image (never one copy in each split); under
    another class, a label conflict: nothing of it is written."""
    from PIL import PngImagePlugin

    images, out = tmp_path / "images", tmp_path / "out"
    files = {f"{c}/{i}.png": image_samples.png(_photo(20 * (c == "b") + i)) for c in "ab" for i in range(4)}
    text = PngImagePlugin.PngInfo()
    text.add_text("Software", "an editor")
    files["a/0 (1).png"] = _png_bytes(_photo(0), compress_level=1, pnginfo=text)
    files["a/0.bmp"] = _png_bytes(_photo(0), format="BMP")
    files["b/stolen.png"] = _png_bytes(_photo(1), compress_level=9, pnginfo=text)
    _tree(images, files)

    report = ingest(str(images), str(out), eval_fraction=0.5, seed=0)

    (dup,) = report.duplicates
    assert (dup["kept"], dup["duplicates"], dup["same"]) == ("a/0 (1).png", ["a/0.bmp", "a/0.png"], "image")
    (conflict,) = report.label_conflicts
    assert conflict["same"] == "image"
    assert [f["path"] for f in conflict["files"]] == ["a/1.png", "b/stolen.png"]
    assert {c: sum(n.values()) for c, n in report.counts.items()} == {"a": 3, "b": 4}
    assert report.files_scanned == sum(report.totals.values()) + report.num_duplicates + 2


def test_drawings_held_in_transparency_are_distinct_images(tmp_path: Path) -> None:
    """Canvas exports (strokes in alpha, RGB black everywhere) of different digits are different
    images to ingest, as to the model, which sees them composited onto white: PNGs, and GIFs
    (strokes on a transparent colour index, which TensorFlow's decoder gives as black)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, out = tmp_path / "images", tmp_path / "out"
    files = {}
    for label in (5, 6):
        gifs: set[bytes] = set()  # two-level drawings: unlike the PNGs' alpha, two can coincide
        for i, k in enumerate(np.flatnonzero(digits.target == label)[:12]):
            strokes = (digits.images[k] * 16).clip(0, 255).astype(np.uint8)
            if i < 4:
                rgba = np.zeros((8, 8, 4), np.uint8)
                rgba[..., 3] = strokes
                files[f"{label}/{i}.png"] = _png_bytes(rgba)
            elif len(gifs) < 4 and (strokes > 64).tobytes() not in gifs:
                gifs.add((strokes > 64).tobytes())
                drawing = Image.fromarray((strokes > 64).astype(np.uint8), "P")
                drawing.putpalette([0, 0, 0] * 256)  # black everywhere, index 0 transparent
                buffer = io.BytesIO()
                drawing.save(buffer, format="GIF", transparency=0)
                files[f"{label}/{i}.gif"] = buffer.getvalue()
    _tree(images, files)
    keys = {inspect_image(data).image for data in files.values()}
    assert len(keys) == len(files)
    report = ingest(str(images), str(out), eval_fraction=0.25, seed=0)
    assert report.duplicates == [] and report.label_conflicts == []
    assert sum(report.totals.values()) == len(files)


def _png16(samples: np.ndarray) -> bytes:
    """A 16-bit PNG (grey, grey + alpha, RGB or RGBA by the last axis) of uint16 `samples`."""
    import tensorflow as tf

    return tf.io.encode_png(tf.constant(samples, tf.uint16)).numpy()


def test_16_bit_pngs_whose_values_use_few_bits_are_refused_with_their_range() -> None:
    """The decoders keep a 16-bit sample's high byte: 8-bit values stored as 16 bits (OpenCV
    writing a uint16 array) all decode black, so distinct pictures were "one image under
    several classes"; 12-bit sensor data keeps 16 levels. Full-range ones are read as before."""
    picture = np.random.default_rng(3).integers(0, 256, (20, 24, 1)).astype(np.uint16)
    black = inspect_image(_png16(picture)).reason
    assert black.startswith("16-bit PNG whose samples are all below 256 of 65535 (8-bit values stored")
    assert "it is black everywhere; scale it to the full 16-bit range, or save it as an 8-bit PNG" in black
    twelve = inspect_image(_png16(picture * 16)).reason  # 0..4080
    assert twelve.startswith("16-bit PNG whose samples are all below 4096 of 65535 (data of 12 bits")
    assert "at most 16 grey levels" in twelve
    assert inspect_image(_png16(picture * 257)).reason is None  # the full range
    assert inspect_image(_png16(picture * 16 + 4096)).reason is None  # reaches past 12 bits
    # An opaque alpha channel (65535 everywhere) is not a colour: RGBA and grey + alpha alike.
    rgb = np.concatenate([picture] * 3, axis=-1)
    opaque = np.full_like(picture, 65535)
    assert inspect_image(_png16(np.concatenate([rgb, opaque], -1))).reason == black
    assert inspect_image(_png16(np.concatenate([picture, opaque], -1))).reason == black
    assert inspect_image(_png16(np.concatenate([rgb * 257, opaque], -1))).reason is None
    # Cut short after its header: the decoder's own reason, not a range.
    data = _png16(picture * 257)
    assert "16-bit PNG" not in inspect_image(data[:40]).reason


def test_an_image_of_one_colour_is_refused() -> None:
    flat = np.full((16, 16, 3), (200, 30, 90), np.uint8)
    reason = "the image is one colour everywhere as decoded: nothing in it tells its class"
    assert inspect_image(image_samples.png(flat)).reason == reason
    assert inspect_image(image_samples.jpeg(np.full((64, 64, 3), 128, np.uint8))).reason == reason
    dot = flat.copy()
    dot[3, 5] = (201, 30, 90)  # one pixel differs by one level
    assert inspect_image(image_samples.png(dot)).reason is None


def test_ingest_names_black_16_bit_pngs_instead_of_calling_them_label_conflicts(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    files = {
        f"{c}/{i}.png": image_samples.png(_photo(10 * n + i)) for n, c in enumerate("ab") for i in range(4)
    }
    low = np.random.default_rng(9).integers(0, 256, (30, 50, 3)).astype(np.uint16)
    files |= {f"{c}/deep{i}.png": _png16((low + i) % 256) for c in "ab" for i in range(2)}
    _tree(images, files)
    report = ingest(str(images), str(out), eval_fraction=0.3)
    assert report.label_conflicts == [] and report.totals == {"train": 6, "eval": 2}
    assert sorted(s["path"] for s in report.skipped) == [
        "a/deep0.png",
        "a/deep1.png",
        "b/deep0.png",
        "b/deep1.png",
    ]
    assert all(s["reason"].startswith("16-bit PNG whose samples are all below 256") for s in report.skipped)


def test_a_cancelled_decode_is_tried_again_not_taken_for_the_images_reason():
    """A suite run's OS/2 BMP was refused for "Function was cancelled before it was started":
    inside the check's function the failing decode and the ops it cancels race to report, and
    under load the cancellation won. CANCELLED is tried again; any other error is the answer."""
    import tensorflow as tf

    from imgpipe.ingest.images import _checked

    calls = []

    def cancelled_once(data):
        calls.append(data)
        if len(calls) == 1:
            raise tf.errors.CancelledError(None, None, "Function was cancelled before it was started")
        raise tf.errors.InvalidArgumentError(None, None, "BMP with a 12-byte header")

    with pytest.raises(tf.errors.InvalidArgumentError, match="12-byte header"):
        _checked(cancelled_once, b"x")
    assert len(calls) == 2
    calls.clear()

    def always_cancelled(data):
        calls.append(data)
        raise tf.errors.CancelledError(None, None, "cancelled")

    with pytest.raises(tf.errors.CancelledError):
        _checked(always_cancelled, b"x")
    assert len(calls) == 3
    assert _checked(lambda data: data * 2, b"ab") == b"abab"
