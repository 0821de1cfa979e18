"""preprocessing_fn through TFT on Beam: formats, modes and sizes -> one normalised shape;
the decoder's bounds (pixel limit, DCT scaling, first GIF frame) and EXIF orientation."""

import io
import os
import pickle
import struct
import tempfile

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from PIL import Image
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from pipeline.beam import LOCAL_RUNNER
from tests import helpers, image_bombs, image_samples
from trainer import backbones
from trainer.features import IMAGE_KEY, IMAGE_XF, LABEL_KEY, LABEL_VOCAB, LABEL_XF
from trainer.preprocessing import (
    _gif_first_frame,
    decode_and_resize,
    decode_image,
    exif_orientation,
    image_shape,
    preprocessing_fn,
    traced_decoder,
)

SIZE = 32


def _photo(h, w, seed):
    rng = np.random.RandomState(seed)
    base = np.linspace(0, 255, h * w * 3).reshape(h, w, 3)
    return np.clip(base + rng.randint(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def _inputs():
    """(encoded bytes, label, expected RGB uint8 array as decoded) of mixed formats and sizes."""
    out = []
    rgb = _photo(40, 60, 0)
    out.append((helpers.encode_image(rgb, "PNG"), "png_rgb", rgb))
    gray = _photo(50, 30, 1)[..., 0]
    out.append((helpers.encode_image(gray, "PNG"), "png_gray", np.repeat(gray[..., None], 3, -1)))
    rgba = np.concatenate([_photo(33, 47, 2), np.full((33, 47, 1), 128, np.uint8)], -1)
    # Half-transparent: composited onto white, as a page shows it (png_on_white).
    on_white = np.round(rgba[..., :3] * (128 / 255) + 255 * (1 - 128 / 255)).astype(np.uint8)
    out.append((helpers.encode_image(rgba, "PNG"), "png_rgba", on_white))
    jpeg = helpers.encode_image(_photo(64, 48, 3), "JPEG")
    # The reference decode is Pillow's (libjpeg's accurate IDCT), which the graph's is, bit for bit.
    out.append((jpeg, "jpeg", np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))))
    return out


def _expected(rgb: np.ndarray, backbone: str) -> np.ndarray:
    resized = tf.image.resize(rgb.astype(np.float32)[None], [SIZE, SIZE], antialias=True)
    return backbones.get(backbone).preprocess_input(resized).numpy()[0]


def _dump(rows: list, path: str) -> None:
    with open(path, "wb") as f:
        pickle.dump(rows, f)


@pytest.mark.parametrize("backbone", ["MobileNetV2", "ResNet50", "DenseNet121"])
def test_preprocessing_fn_through_tft(backbone):
    items = _inputs()
    spec = {IMAGE_KEY: tf.io.FixedLenFeature([], tf.string), LABEL_KEY: tf.io.FixedLenFeature([], tf.string)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    rows = [{IMAGE_KEY: img, LABEL_KEY: lab.encode()} for img, lab, _ in items]
    cfg = {"backbone": backbone, "image_size": SIZE}
    out_dir = tempfile.mkdtemp()
    # An explicit pipeline on the local runner (a bare `(rows, metadata) | ...` reads sys.argv).
    with beam.Pipeline(argv=[f"--runner={LOCAL_RUNNER}"]) as p:
        with tft_beam.Context(temp_dir=tempfile.mkdtemp(), force_tf_compat_v1=False):
            examples = p | beam.Create(rows)
            (transformed, _), transform_fn = (examples, metadata) | tft_beam.AnalyzeAndTransformDataset(
                lambda inputs: preprocessing_fn(inputs, cfg)
            )
            _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
            _ = transformed | beam.combiners.ToList() | beam.Map(_dump, os.path.join(out_dir, "rows.pkl"))
    with open(os.path.join(out_dir, "rows.pkl"), "rb") as f:
        transformed = pickle.load(f)
    vocab = [v.decode() for v in tft.TFTransformOutput(out_dir).vocabulary_by_name(LABEL_VOCAB)]
    assert sorted(vocab) == sorted(lab for _, lab, _ in items)
    assert len(transformed) == len(items)
    expected = {lab: _expected(rgb, backbone) for _, lab, rgb in items}
    for row in transformed:
        image = np.asarray(row[IMAGE_XF], np.float32).reshape(SIZE, SIZE, 3)
        label = vocab[int(np.asarray(row[LABEL_XF]).reshape(-1)[0])]
        np.testing.assert_allclose(image, expected[label], rtol=1e-4, atol=1e-3, err_msg=label)

    # The saved graph as TF Serving and `imgpipe report` run it: loaded into a TF1 session,
    # whose runtime refuses some mixes of lowered and functional control flow that a TF2 call
    # of the same graph runs ("inputs from different frames"). The decoder's graph is the same
    # for every backbone: checked once.
    if backbone != "MobileNetV2":
        return
    others = [(helpers.encode_image(_photo(9, 7, 8), fmt), "", None) for fmt in ("GIF", "BMP")]
    with helpers.tf1_session(os.path.join(out_dir, tft.TFTransformOutput.TRANSFORM_FN_DIR)) as run:
        for img, lab, _ in items + others:
            # The raw features in key order, as TFT names them: inputs (image), inputs_1 (label).
            inputs = {"inputs": [img], "inputs_1": [lab.encode()]}
            image = run("serving_default", inputs, IMAGE_XF).reshape(SIZE, SIZE, 3)
            if lab:
                np.testing.assert_allclose(image, expected[lab], rtol=1e-4, atol=1e-3, err_msg=lab)


def _label_vocabulary(counts: dict[str, int]) -> list[str]:
    """The label vocabulary preprocessing_fn makes through TFT from `counts` records a class."""
    spec = {IMAGE_KEY: tf.io.FixedLenFeature([], tf.string), LABEL_KEY: tf.io.FixedLenFeature([], tf.string)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    image = helpers.encode_image(_photo(8, 8, 0), "PNG")
    rows = [{IMAGE_KEY: image, LABEL_KEY: name.encode()} for name, n in counts.items() for _ in range(n)]
    out_dir = tempfile.mkdtemp()
    with beam.Pipeline(argv=[f"--runner={LOCAL_RUNNER}"]) as p:
        with tft_beam.Context(temp_dir=tempfile.mkdtemp(), force_tf_compat_v1=False):
            transform_fn = (p | beam.Create(rows), metadata) | tft_beam.AnalyzeDataset(
                lambda inputs: preprocessing_fn(inputs, {"backbone": "MobileNetV2", "image_size": SIZE})
            )
            _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
    return [v.decode() for v in tft.TFTransformOutput(out_dir).vocabulary_by_name(LABEL_VOCAB)]


def test_the_class_order_does_not_follow_the_counts():
    """The label vocabulary's order is the model's output order, which a client reading scores by
    position (and a two-class model's one score) depends on. Ordered by count, a retrain whose
    counts changed reordered it; each order of counts below gives one and the same vocabulary."""
    names = ["cat", "dog", "bird", "zebra"]
    orders = {
        tuple(_label_vocabulary(dict(zip(names, counts, strict=True))))
        for counts in ([5, 4, 3, 2], [2, 3, 4, 5], [3, 5, 2, 4])
    }
    assert len(orders) == 1 and sorted(next(iter(orders))) == sorted(names)


def test_decode_works_on_rank1_batch_of_any_length():
    png = helpers.encode_image(_photo(10, 20, 4), "PNG")
    for n in (1, 3):
        out = decode_and_resize(tf.constant([png] * n), SIZE)
        assert out.shape == (n, SIZE, SIZE, 3)
    assert decode_and_resize(tf.constant([], tf.string), SIZE).shape == (0, SIZE, SIZE, 3)


def test_gif_and_bmp_decode_to_rgb():
    rgb = _photo(16, 16, 5)
    for fmt in ("GIF", "BMP"):
        encoded = helpers.encode_image(rgb, fmt)
        expected = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
        out = decode_and_resize(tf.constant([encoded]), 16).numpy()[0]
        np.testing.assert_allclose(out, expected.astype(np.float32), atol=1e-3)


def test_a_palette_bmp_is_refused_and_a_grey_one_decodes():
    """An 8-bit BMP whose colour table is not the grey ramp: the decoder gives its indices as
    grey levels, so the model would answer garbage with confidence. It is refused, in the graph
    (served models too); an 8-bit grey BMP (Pillow's "L") and a palette PNG still decode."""

    def bmp(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="BMP")
        return buffer.getvalue()

    rgb = Image.fromarray(_photo(12, 20, 6))
    grey = bmp(rgb.convert("L"))
    assert grey[28] == 8  # 8 bits per pixel: a colour table, the grey ramp
    expected = np.asarray(rgb.convert("L").convert("RGB")).astype(np.float32)
    np.testing.assert_allclose(decode_image(tf.constant(grey), 8).numpy(), expected)
    palette = bmp(rgb.quantize(256))
    assert palette[28] == 8 and Image.open(io.BytesIO(palette)).mode == "P"
    # The same bytes with the grey ramp as their table are a grey image: only the table differs.
    ramp = b"".join(bytes([i, i, i, 0]) for i in range(256))
    start = 14 + int.from_bytes(palette[14:18], "little")
    as_grey = palette[:start] + ramp + palette[start + len(ramp) :]
    assert decode_image(tf.constant(as_grey), 8).shape == (12, 20, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"palette \(indexed-colour\) BMP"):
        decode_image(tf.constant(palette), 8)
    png = io.BytesIO()
    rgb.quantize(256).save(png, format="PNG")
    np.testing.assert_allclose(
        decode_image(tf.constant(png.getvalue()), 8).numpy(),
        np.asarray(rgb.quantize(256).convert("RGB")).astype(np.float32),
    )


def test_undecodable_bytes_raise():
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_and_resize(tf.constant([b"not an image"]), SIZE)


def _called_functions(graph) -> set[str]:
    calls = ("PartitionedCall", "StatefulPartitionedCall")
    return {op.get_attr("f").name for op in graph.get_operations() if op.type in calls}


def test_graphs_that_preprocess_call_one_traced_decoder_per_size():
    """TFT traces preprocessing_fn six times per Transform run: each trace calls one decoder
    function instead of tracing the decoder again; another image size is another function."""
    spec = tf.TensorSpec([None], tf.string)

    def graph(size: int):
        fn = tf.function(
            lambda x: preprocessing_fn({IMAGE_KEY: x}, {"backbone": "MobileNetV2", "image_size": size})
        )
        return fn.get_concrete_function(spec).graph

    first, second, other = graph(SIZE), graph(SIZE), graph(SIZE * 2)
    assert len(_called_functions(first)) == 1
    assert _called_functions(first) == _called_functions(second)
    assert not _called_functions(first) & _called_functions(other)
    # The decoder's map_fn loop lives in that function, not in the graphs that call it.
    assert not [op for op in first.get_operations() if op.type in ("While", "StatelessWhile")]


# ---------------------------------------------------------------------------------------
# Bounded, upright decoding (the graph serving runs too)


def _decode(data: bytes, target: int = 1000, max_pixels: int = 40_000_000) -> np.ndarray:
    """The decoder as every caller runs it: traced (once per target and limit in a process)."""
    return traced_decoder(target, max_pixels)(tf.constant(data)).numpy()


_traced_orientation = tf.function(
    exif_orientation, input_signature=[tf.TensorSpec([], tf.string)], autograph=False
)


def _orientation(data: bytes) -> int:
    """`exif_orientation` as the decoder's callers run it: traced, once in a process."""
    return int(_traced_orientation(tf.constant(data)))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("byte_order", ["II", "MM"])
def test_exif_orientation_matches_pillow_exif_transpose(orientation, byte_order):
    data = image_samples.oriented_jpeg(orientation, byte_order)
    expected = image_samples.upright(data)
    assert _orientation(data) == orientation
    got = _decode(data)
    assert got.shape == expected.shape
    # JPEG decoders differ by a few levels (IDCT rounding); orientation errors differ by ~100s.
    assert np.abs(got.astype(int) - expected).mean() < 1.0
    assert np.abs(got.astype(int) - expected).max() <= 12


@pytest.mark.parametrize("orientation", range(1, 9))
def test_pillow_written_exif_in_jpeg_and_png(orientation):
    pixels = image_samples.asymmetric_image()
    exif = image_samples.pillow_exif(orientation)
    jpeg = image_samples.jpeg(pixels, exif=exif)
    png = image_samples.png(pixels, exif=exif)
    for data, tolerance in ((jpeg, 12), (png, 0)):
        expected = image_samples.upright(data)
        got = _decode(data)
        assert got.shape == expected.shape
        assert np.abs(got.astype(int) - expected).max() <= tolerance


def _malformed_exif_jpegs() -> dict[str, bytes]:
    s = image_samples
    base = s.jpeg(s.asymmetric_image())
    tiff = s.tiff_block(6)
    return {
        "no exif": base,
        "bad byte order": s.with_segment(base, s.app1(b"Exif\0\0" + b"XX" + tiff[2:])),
        "bad magic": s.with_segment(base, s.app1(b"Exif\0\0" + tiff[:2] + b"\x2b\x00" + tiff[4:])),
        "ifd offset past the end": s.with_segment(
            base, s.app1(b"Exif\0\0" + tiff[:4] + b"\xff\xff\xff\x7f" + tiff[8:])
        ),
        "truncated tiff": s.with_segment(base, s.app1(b"Exif\0\0" + tiff[:13])),
        "orientation 0": s.with_segment(base, s.app1(b"Exif\0\0" + s.tiff_block(0))),
        "orientation 9": s.with_segment(base, s.app1(b"Exif\0\0" + s.tiff_block(9))),
        "orientation 65535": s.with_segment(base, s.app1(b"Exif\0\0" + s.tiff_block(65535))),
        "ascii type": s.with_segment(base, s.app1(b"Exif\0\0" + s.tiff_block(6, kind=2))),
        "not exif (xmp)": s.with_segment(base, s.app1(b"http://ns.adobe.com/xap/1.0/\0" + tiff)),
        "no exif padding": s.with_segment(base, s.app1(b"Exif" + tiff)),
        "segment length past the end": base[:2] + s.app1(b"Exif\0\0" + tiff, length=65535),
        "segment length 0": s.with_segment(base, s.app1(b"Exif\0\0" + tiff, length=0)),
    }


@pytest.mark.parametrize("case", sorted(_malformed_exif_jpegs()))
def test_malformed_exif_means_no_rotation(case):
    data = _malformed_exif_jpegs()[case]
    assert _orientation(data) == 1
    if case != "segment length past the end":  # the JPEG itself is broken there
        got = _decode(data)
        np.testing.assert_array_equal(got, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_exif_after_jfif_app0_and_long_type_are_read():
    s = image_samples
    base = s.jpeg(s.asymmetric_image())
    assert base[2:4] == b"\xff\xe0"  # Pillow writes a JFIF APP0 first
    after_app0 = s.with_segment(base, s.app1(b"Exif\0\0" + s.tiff_block(8)), after_app0=True)
    assert _orientation(after_app0) == 8
    long_type = s.with_segment(base, s.app1(b"Exif\0\0" + s.tiff_block(3, "MM", kind=4)))
    assert _orientation(long_type) == 3


def _after_segment(jpeg: bytes, marker: bytes, segment: bytes) -> bytes:
    """`jpeg` with `segment` inserted after its first segment of `marker` (e.g. DQT)."""
    at = jpeg.index(marker)
    at += 2 + int.from_bytes(jpeg[at + 2 : at + 4], "big")
    return jpeg[:at] + segment + jpeg[at:]


@pytest.mark.parametrize("after", [b"\xff\xdb", b"\xff\xc4", b"\xff\xc0"], ids=["DQT", "DHT", "SOF"])
def test_exif_after_the_tables_before_the_scan_is_read_as_pillow_reads_it(after):
    """An APP1 'Exif' segment placed after the quantisation or Huffman tables or the frame
    header (outside the usual layout, as some editors write it) is metadata Pillow reads and
    applies: the decoder turns the picture as Pillow's tools show it, not sideways."""
    s = image_samples
    data = _after_segment(s.jpeg(s.asymmetric_image()), after, s.app1(b"Exif\0\0" + s.tiff_block(6)))
    with Image.open(io.BytesIO(data)) as image:
        assert image.getexif().get(0x0112) == 6
    assert _orientation(data) == 6
    expected = s.upright(data)
    got = _decode(data)
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected).max() <= 12


def _damaged_headers() -> dict[str, bytes]:
    s = image_samples
    base, exif = s.jpeg(s.asymmetric_image()), s.app1(b"Exif\0\0" + s.tiff_block(6))
    return {
        "stray bytes before EXIF": s.with_segment(base, b"\0\0" + exif, after_app0=True),
        "a stray byte before DQT, EXIF after it": _after_segment(
            base.replace(b"\xff\xdb", b"\0\xff\xdb", 1), b"\xff\xdb", exif
        ),
        "FF00 before EXIF": s.with_segment(base, b"\xff\x00" + exif, after_app0=True),
        "an APPn of length 0 before EXIF": s.with_segment(base, b"\xff\xe3\0\0" + exif, after_app0=True),
    }


@pytest.mark.parametrize("case", sorted(_damaged_headers()))
def test_exif_past_a_damaged_header_is_read_as_libjpeg_and_pillow_step_over_it(case):
    """Stray bytes between segments, a stray 0xFF00 or a length under 2: libjpeg decodes such a
    file (with a warning) and Pillow reads the EXIF after them, so the walk steps over them too
    rather than decode a picture Pillow's tools show upright as stored, sideways."""
    data = _damaged_headers()[case]
    with Image.open(io.BytesIO(data)) as image:
        assert image.getexif().get(0x0112) == 6
    assert _orientation(data) == 6
    assert _decode(data).shape == image_samples.upright(data).shape


def test_the_exif_walk_ends_at_the_scan():
    """Bytes after the start of scan are image data, never metadata: an 'Exif' APP1 look-alike
    there is not read (a corrupt tail of a file must not rotate the picture)."""
    s = image_samples
    base = s.jpeg(s.asymmetric_image())
    sos = base.index(b"\xff\xda")
    sos += 2 + int.from_bytes(base[sos + 2 : sos + 4], "big")
    data = base[:sos] + s.app1(b"Exif\0\0" + s.tiff_block(6)) + base[sos:]
    assert _orientation(data) == 1


def _png_exif_cases() -> dict[str, tuple[bytes, int]]:
    """PNGs with an eXIf chunk placed where Pillow's exif_transpose reads it or does not, and
    the orientation it applies."""
    s = image_samples
    pixels = s.asymmetric_image()
    chunks = s.png_chunks(s.png(pixels))
    head, idat, end = chunks[:1], chunks[1:-1], chunks[-1:]
    assert [kind for kind, _ in idat] == [b"IDAT"] and end[0][0] == b"IEND"

    def exif(orientation: int, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        return [(b"eXIf", prefix + s.tiff_block(orientation))]

    # Noise compresses to ~7.7 KB: in 4-byte chunks, more than the walk before IDAT allows.
    noise = np.random.default_rng(0).integers(0, 256, pixels.shape, np.uint8)
    noisy = s.png_chunks(s.png(noise))
    data = b"".join(payload for kind, payload in noisy if kind == b"IDAT")
    many = noisy[:1] + [(b"IDAT", data[i : i + 4]) for i in range(0, len(data), 4)]
    assert len(many) > 1024
    # Stored (uncompressed) image data whose pixel bytes spell a whole eXIf chunk.
    spelled = bytearray(pixels.tobytes())
    fake = s.png_chunk(b"eXIf", s.tiff_block(6))
    spelled[: len(fake)] = fake
    buffer = io.BytesIO()
    Image.fromarray(np.frombuffer(bytes(spelled), np.uint8).reshape(pixels.shape)).save(
        buffer, format="PNG", compress_level=0
    )
    apng = io.BytesIO()
    frames = [Image.fromarray(pixels), Image.fromarray(pixels[::-1].copy())]
    frames[0].save(apng, format="PNG", save_all=True, append_images=frames[1:], duration=100)
    animation = s.png_chunks(apng.getvalue())
    # Pillow's writer with default_image=True: acTL counts 1 frame, the image data is a default
    # image outside the animation; Pillow counts 2 frames and stops at the frame's fcTL.
    hidden = io.BytesIO()
    frames[0].save(
        hidden, format="PNG", save_all=True, append_images=frames[1:], default_image=True, duration=1
    )
    with_default = s.png_chunks(hidden.getvalue())
    assert [kind for kind, _ in with_default][1:4] == [b"acTL", b"IDAT", b"fcTL"]
    big_text = [(b"tEXt", b"Comment\0" + b"x" * 300_000)]  # the image data past the first 256 KiB
    return {
        "before the image data": (s.png_from_chunks(head + exif(6) + idat + end), 6),
        "after the image data": (s.png_from_chunks(head + idat + exif(6) + end), 6),
        "after 1900 image data chunks": (s.png_from_chunks(many + exif(8) + end), 8),
        "payload prefixed 'Exif'": (s.png_from_chunks(head + exif(6, b"Exif\0\0") + idat + end), 6),
        "payload prefixed twice, after": (s.png_from_chunks(head + idat + exif(5, b"Exif\0\0" * 2) + end), 5),
        "two: the later one wins": (s.png_from_chunks(head + exif(3) + idat + exif(6) + end), 6),
        "two before the image data": (s.png_from_chunks(head + exif(3) + exif(6) + idat + end), 6),
        "after IEND (an appended file)": (s.png_from_chunks(head + idat + end + exif(6)), 1),
        "after a second PNG appended": (
            s.png_from_chunks(head + idat + end + head + idat + exif(6) + end),
            1,
        ),
        "image data spelling an eXIf chunk": (buffer.getvalue(), 1),
        "an animation's, after its next frame": (s.png_from_chunks(animation[:-1] + exif(6) + end), 1),
        "an animation's with a default image, after its frames": (
            s.png_from_chunks(with_default[:-1] + exif(6) + end),
            1,
        ),
        "after the image data, past 300 KB of text": (
            s.png_from_chunks(head + big_text + idat + exif(6) + end),
            6,
        ),
        "before 300 KB of text, and after the image data": (
            s.png_from_chunks(head + exif(6) + big_text + idat + exif(3) + end),
            3,
        ),
    }


@pytest.mark.parametrize("case", sorted(_png_exif_cases()))
def test_png_exif_is_read_where_pillow_exif_transpose_reads_it(case):
    """A PNG's eXIf chunk is read before the image data and after it up to IEND, the last one
    winning, past 'Exif\\0\\0' prefixes: where Pillow's exif_transpose (which loads the pixels
    first) reads it. Never bytes that merely spell a chunk, nor anything after IEND, nor past
    an animation's next frame."""
    data, expected = _png_exif_cases()[case]
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.getexif().get(0x0112, 1) == expected
    assert _orientation(data) == expected
    np.testing.assert_array_equal(_decode(data), image_samples.upright(data))


def test_orientation_reads_the_same_in_a_tf1_graph():
    """TFT can trace with force_tf_compat_v1, and a TF1 graph compares tensors with `==` as
    Python objects: the walks read the same there as under tf.function."""
    cases = _png_exif_cases()
    datas = [
        cases[c][0] for c in ("before the image data", "after the image data", "two: the later one wins")
    ]
    datas += [image_samples.oriented_jpeg(5), _xmp_cases()["jpeg: xmp attribute"][0]]
    expected = [_orientation(d) for d in datas]
    assert expected == [6, 6, 6, 5, 6]
    graph = tf.Graph()
    with graph.as_default():
        data = tf.compat.v1.placeholder(tf.string, [])
        orientation = exif_orientation(data)
        with tf.compat.v1.Session(graph=graph) as session:
            assert [int(session.run(orientation, {data: d})) for d in datas] == expected


def test_a_doubly_prefixed_jpeg_exif_is_read_as_pillow_reads_it():
    s = image_samples
    data = s.with_segment(s.jpeg(s.asymmetric_image()), s.app1(b"Exif\0\0" * 2 + s.tiff_block(6)))
    with Image.open(io.BytesIO(data)) as image:
        assert image.getexif().get(0x0112) == 6
    assert _orientation(data) == 6


def _xmp(orientation: str, form: str = "attribute") -> bytes:
    """An XMP packet stating tiff:Orientation as an attribute or as an element."""
    stated = (
        f'tiff:Orientation="{orientation}"'
        if form == "attribute"
        else f"><tiff:Orientation>{orientation}</tiff:Orientation"
    )
    return (
        b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" ' + stated.encode() + b"/></rdf:RDF></x:xmpmeta>"
        b'<?xpacket end="w"?>'
    )


def _xmp_cases() -> dict[str, tuple[bytes, int]]:
    """JPEGs and PNGs whose orientation is stated in XMP, and what Pillow's exif_transpose does."""
    s = image_samples
    pixels = s.asymmetric_image()
    base = s.jpeg(pixels)

    def jpeg(*segments: bytes) -> bytes:
        data = base
        for segment in reversed(segments):
            data = s.with_segment(data, segment, after_app0=True)
        return data

    def xmp(packet: bytes) -> bytes:
        return s.app1(b"http://ns.adobe.com/xap/1.0/\0" + packet)

    untagged = Image.Exif()
    untagged[0x010F] = "maker"  # EXIF without an Orientation tag
    chunks = s.png_chunks(s.png(pixels))
    head, idat, end = chunks[:1], chunks[1:-1], chunks[-1:]
    keyword = b"XML:com.adobe.xmp\0"
    itxt = (b"iTXt", keyword + b"\0\0" + b"\0\0" + _xmp("6"))  # uncompressed, no language
    return {
        "jpeg: xmp attribute": (jpeg(xmp(_xmp("6"))), 6),
        "jpeg: xmp element": (jpeg(xmp(_xmp("8", "element"))), 8),
        "jpeg: exif's tag wins over xmp": (jpeg(s.app1(b"Exif\0\0" + s.tiff_block(3)), xmp(_xmp("6"))), 3),
        "jpeg: exif without the tag, xmp": (jpeg(s.app1(untagged.tobytes()), xmp(_xmp("5"))), 5),
        "jpeg: exif's tag out of range wins, as stored": (
            jpeg(s.app1(b"Exif\0\0" + s.tiff_block(9)), xmp(_xmp("6"))),
            1,
        ),
        "jpeg: xmp out of range": (jpeg(xmp(_xmp("9"))), 1),
        "jpeg: the last xmp segment": (jpeg(xmp(_xmp("6")), xmp(_xmp("7"))), 7),
        "jpeg: the first stated orientation, past other mentions and bytes not utf-8": (
            jpeg(xmp(b"\xff\xfe tiff:Orientation is \x80 " + _xmp("2"))),
            2,
        ),
        "png: uncompressed itxt before the image data": (s.png_from_chunks(head + [itxt] + idat + end), 6),
        "png: text after the image data": (
            s.png_from_chunks(head + idat + [(b"tEXt", keyword + _xmp("8", "element"))] + end),
            8,
        ),
        "png: exif's tag wins over xmp": (
            s.png_from_chunks(head + [(b"eXIf", s.tiff_block(3)), itxt] + idat + end),
            3,
        ),
        "png: xmp after IEND": (s.png_from_chunks(head + idat + end + [itxt]), 1),
    }


@pytest.mark.parametrize("case", sorted(_xmp_cases()))
def test_an_orientation_stated_in_xmp_is_applied_as_pillow_applies_it(case):
    """Without an EXIF Orientation tag, Pillow's exif_transpose applies XMP's tiff:Orientation
    (JPEG's XMP APP1; a PNG's XMP text chunk): so does the decoder, the same first match of
    the same pattern, and only where Pillow reads XMP."""
    data, expected = _xmp_cases()[case]
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.getexif().get(0x0112, 1) in (expected, 9)  # 9: kept, but not applied
    assert _orientation(data) == expected
    expected_pixels = image_samples.upright(data)
    got = _decode(data)
    assert got.shape == expected_pixels.shape
    assert np.abs(got.astype(int) - expected_pixels).max() <= 12  # JPEG decoders' rounding


def test_orientation_of_other_formats_is_upright():
    rgb = _photo(16, 16, 7)
    for fmt in ("GIF", "BMP"):
        assert _orientation(helpers.encode_image(rgb, fmt)) == 1
    for data in (b"", b"\xff\xd8", b"\xff\xd8\xff\xe1\x008", b"\x89PNG\r\n\x1a\n", b"not an image"):
        assert _orientation(data) == 1


def test_damaged_metadata_never_fails_the_orientation():
    """Files cut short, with bytes flipped, inserted or a chunk type overwritten, around every
    place the walks read (EXIF and XMP in JPEG and PNG, before and after the image data, an
    animation): the orientation is 1..8 and never an error (an error would fail the decode of a
    file whose pixels may be fine)."""
    s = image_samples
    pixels = s.asymmetric_image()
    chunks = s.png_chunks(s.png(pixels))
    xmp = b"XML:com.adobe.xmp\0\0\0\0\0" + _xmp("6")
    seeds = [
        s.png_from_chunks(chunks[:1] + [(b"eXIf", s.tiff_block(6))] + chunks[1:]),
        s.png_from_chunks(
            chunks[:-1] + [(b"eXIf", b"Exif\0\0" + s.tiff_block(6)), (b"iTXt", xmp)] + chunks[-1:]
        ),
        s.png_from_chunks(chunks[:1] + [(b"acTL", b"\0\0\0\2\0\0\0\0"), (b"iTXt", xmp)] + chunks[1:]),
        s.with_segment(s.jpeg(pixels), s.app1(b"Exif\0\0" + s.tiff_block(6))),
        s.with_segment(s.jpeg(pixels), s.app1(b"http://ns.adobe.com/xap/1.0/\0" + _xmp("3"))),
    ]
    orientation = _traced_orientation
    rng = np.random.default_rng(7)
    for i in range(400):
        data = bytearray(seeds[i % len(seeds)])
        how = i // len(seeds) % 4
        if how == 0:
            data = data[: rng.integers(0, len(data))]
        elif how == 1:
            for _ in range(rng.integers(1, 8)):
                data[rng.integers(len(data))] = rng.integers(256)
        elif how == 2:
            at = rng.integers(len(data))
            data[at:at] = rng.integers(0, 256, rng.integers(1, 40), dtype=np.uint8).tobytes()
        else:
            at = rng.integers(8, 40)
            data[at : at + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        assert 1 <= int(orientation(tf.constant(bytes(data)))) <= 8


def test_header_sizes_match_pillow():
    rgb = _photo(37, 53, 8)
    for fmt, code in (("JPEG", 0), ("PNG", 1), ("GIF", 2), ("BMP", 3)):
        data = helpers.encode_image(rgb, fmt)
        fmt_code, height, width = (int(v) for v in image_shape(tf.constant(data)))
        assert (fmt_code, height, width) == (code, 37, 53), fmt
    assert [int(v) for v in image_shape(tf.constant(b"not an image"))] == [4, 0, 0]


def test_huge_png_fails_before_decoding():
    huge = image_samples.black_png(20_000, 20_000)
    assert len(huge) < 100_000  # tiny bytes, 400 million pixels
    assert [int(v) for v in image_shape(tf.constant(huge))[1:]] == [20_000, 20_000]
    small = helpers.encode_image(_photo(10, 20, 4), "PNG")
    decode = tf.function(lambda x: decode_and_resize(x, SIZE))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"20000 x 20000 = 400000000 pixels.*40000000"):
        decode(tf.constant([small, huge]))


def test_a_gif_frame_larger_than_its_screen_fails_before_decoding():
    bomb = image_bombs.gif_frame_past_screen(12_000, 12_000)
    assert [int(v) for v in image_shape(tf.constant(bomb))] == [2, 12_000, 12_000]
    decode = tf.function(lambda x: decode_and_resize(x, SIZE))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"12000 x 12000 = 144000000 pixels"):
        decode(tf.constant([bomb]))
    # An ordinary GIF still reads as its screen, and decodes.
    gif = helpers.encode_image(_photo(37, 53, 8), "GIF")
    assert [int(v) for v in image_shape(tf.constant(gif))] == [2, 37, 53]
    assert decode(tf.constant([gif])).shape == (1, SIZE, SIZE, 3)


def test_pixel_limit_is_a_parameter():
    data = helpers.encode_image(_photo(30, 50, 9), "PNG")  # 1500 pixels
    assert decode_and_resize(tf.constant([data]), SIZE, max_pixels=1500).shape == (1, SIZE, SIZE, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="50 x 30 = 1500 pixels"):
        decode_and_resize(tf.constant([data]), SIZE, max_pixels=1499)


def test_big_jpegs_are_decoded_at_reduced_scale():
    data = helpers.encode_image(_photo(640, 800, 10), "JPEG")
    assert _decode(data, target=32).shape == (80, 100, 3)  # 1/8: both sides still >= 32
    assert _decode(data, target=100).shape == (160, 200, 3)  # 1/4
    assert _decode(data, target=300).shape == (320, 400, 3)  # 1/2
    assert _decode(data, target=640).shape == (640, 800, 3)  # full size
    # The reduced decode resizes to nearly what the full decode does.
    full = tf.image.resize(tf.io.decode_jpeg(data, channels=3)[None] * 1, [32, 32], antialias=True)
    reduced = decode_and_resize(tf.constant([data]), 32)
    assert float(tf.reduce_mean(tf.abs(tf.cast(full, tf.float32) - reduced))) < 3.0


def test_animated_gif_decodes_only_its_first_frame():
    frames = [Image.fromarray(np.full((20, 30, 3), level, np.uint8)) for level in (10, 120, 240)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    gif = buffer.getvalue()
    assert tf.io.decode_gif(gif).shape[0] == 3
    cut = _gif_first_frame(tf.constant(gif)).numpy()
    assert len(cut) < len(gif) and cut.endswith(b";")
    assert tf.io.decode_gif(cut).shape[0] == 1
    expected = tf.io.decode_image(gif, channels=3, expand_animations=False).numpy()
    np.testing.assert_array_equal(_decode(gif), expected)
    # Not a walkable GIF: the bytes go to the decoder unchanged, which rejects them.
    assert _gif_first_frame(tf.constant(b"GIF89a")).numpy() == b"GIF89a"


def test_a_pngs_transparency_is_composited_onto_white():
    """A drawing exported from a web canvas is strokes in alpha over RGB that is black
    everywhere: with alpha dropped, every such image was one black picture. Composited onto
    white, each is its strokes; opaque pixels are unchanged, half-transparent ones blended."""
    from trainer.preprocessing import decode_image

    def png(array, mode):
        buffer = io.BytesIO()
        Image.fromarray(array, mode).save(buffer, format="PNG")
        return buffer.getvalue()

    strokes = np.zeros((8, 8), np.uint8)
    strokes[2:6, 3] = 255
    canvas = np.zeros((8, 8, 4), np.uint8)
    canvas[..., 3] = strokes
    other = canvas.copy()
    other[..., 3] = strokes.T
    a, b = (decode_image(tf.constant(png(x, "RGBA")), 8).numpy() for x in (canvas, other))
    assert (a[strokes == 255] == 0).all() and (a[strokes == 0] == 255).all()
    assert (a != b).any()

    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    opaque = np.concatenate([rgb, np.full((8, 8, 1), 255, np.uint8)], -1)
    assert (decode_image(tf.constant(png(opaque, "RGBA")), 8).numpy() == rgb).all()
    assert (decode_image(tf.constant(png(rgb, "RGB")), 8).numpy() == rgb).all()
    half = opaque.copy()
    half[..., 3] = 128
    expected = np.round(rgb * (128 / 255) + 255 * (1 - 128 / 255))
    assert np.abs(decode_image(tf.constant(png(half, "RGBA")), 8).numpy() - expected).max() <= 1
    grey_alpha = np.stack([strokes, strokes], -1)  # grey + alpha: white strokes, shown on white
    assert (decode_image(tf.constant(png(grey_alpha, "LA")), 8).numpy() == 255).all()
    # A palette PNG whose index 0 is transparent (a tRNS chunk): those pixels are white too.
    palette = Image.fromarray(np.where(strokes == 255, 1, 0).astype(np.uint8), "P")
    palette.putpalette([0, 0, 0, 200, 30, 30] + [0, 0, 0] * 254)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", transparency=0)
    decoded = decode_image(tf.constant(buffer.getvalue()), 8).numpy()
    assert (decoded[strokes == 0] == 255).all() and (decoded[strokes == 255] == [200, 30, 30]).all()
    # Opaque PNGs take the plain decode (no tRNS, no alpha): the same pixels as before.
    assert (decode_image(tf.constant(png(rgb, "RGB")), 8).numpy() == rgb).all()


def _gif(indices: np.ndarray, palette: list[int], transparency: int | None = None) -> bytes:
    """A one-frame GIF of palette indices (Pillow's writer), optionally with a transparent index."""
    image = Image.fromarray(indices.astype(np.uint8), "P")
    image.putpalette(palette + [0, 0, 0] * (256 - len(palette) // 3))
    buffer = io.BytesIO()
    options = {} if transparency is None else {"transparency": transparency}
    image.save(buffer, format="GIF", optimize=False, **options)
    return buffer.getvalue()


def test_a_gifs_transparency_is_composited_onto_white():
    """TensorFlow's decoder gives a GIF's transparent pixels as black: drawings on a transparent
    background all decoded to one black picture (ingest refused them as one image under several
    classes). Composited onto white, as a page shows them, each is its strokes."""
    from sklearn.datasets import load_digits

    from trainer.preprocessing import decode_image

    digits = load_digits()
    decoded = []
    for k in range(6):
        strokes = digits.images[k] > 4
        gif = _gif(np.where(strokes, 1, 0), [0, 0, 0, 20, 40, 200], transparency=0)
        assert tf.io.decode_gif(gif)[0].numpy()[~strokes].max() == 0  # the decoder's black
        image = decode_image(tf.constant(gif), 8).numpy()
        # Pillow's RGBA reading, composited onto white: the expected pixels.
        rgba = np.asarray(Image.open(io.BytesIO(gif)).convert("RGBA")).astype(np.float64)
        expected = rgba[..., :3] * rgba[..., 3:] / 255 + 255 * (1 - rgba[..., 3:] / 255)
        np.testing.assert_array_equal(image, expected.astype(np.uint8))
        assert (image[~strokes] == 255).all() and (image[strokes] == [20, 40, 200]).all()
        decoded.append(image.tobytes())
    assert len(set(decoded)) == 6

    # The transparent index in the middle of the table, in a local colour table (an animation's
    # later frames use one; here the first frame does), and a GIF87a with no control block.
    indices = np.arange(16).reshape(4, 4) % 3
    palette = [10, 10, 10, 90, 0, 0, 0, 90, 0]
    gif = _gif(indices, palette, transparency=1)
    expected = np.array([[10, 10, 10], [255, 255, 255], [0, 90, 0]], np.uint8)[indices]
    np.testing.assert_array_equal(decode_image(tf.constant(gif), 4).numpy(), expected)
    local = bytearray(gif)
    table = bytes(local[13 : 13 + (3 << ((local[10] & 7) + 1))])
    flags = local[10]
    local[10] &= 0x7F  # no global table: the descriptor carries it
    del local[13 : 13 + len(table)]
    at = local.index(b"\x2c", 13)
    local[at + 9] = 0x80 | (flags & 7)
    local[at + 10 : at + 10] = table
    assert Image.open(io.BytesIO(bytes(local))).convert("RGB").size == (4, 4)
    np.testing.assert_array_equal(decode_image(tf.constant(bytes(local)), 4).numpy(), expected)
    # Two control blocks before the image: giflib applies the first (painting its colour black),
    # Pillow and browsers the last that sets a transparent colour.
    at = gif.index(b"\x21\xf9")
    block = gif[at : at + 8]
    for second, see in ((b"\x21\xf9\x04\x00\x00\x00\x00\x00", 1), (block[:6] + b"\x00\x00", 0)):
        two = gif[: at + 8] + second + gif[at + 8 :]
        pil = np.asarray(Image.open(io.BytesIO(two)).convert("RGBA")).astype(np.float64)
        on_white = np.round(pil[..., :3] * pil[..., 3:] / 255 + 255 * (1 - pil[..., 3:] / 255))
        np.testing.assert_array_equal(decode_image(tf.constant(two), 4).numpy(), on_white)
        assert (on_white[indices == see] == 255).all()
    opaque = _gif(indices, palette)
    assert b"\x21\xf9" not in opaque[:40] or opaque[opaque.index(b"\x21\xf9") + 3] & 1 == 0
    np.testing.assert_array_equal(
        decode_image(tf.constant(opaque), 4).numpy(), np.array(palette, np.uint8).reshape(3, 3)[indices]
    )


def test_a_gif_walk_that_reaches_its_bound_is_refused(monkeypatch):
    """The walk to the end of a GIF's first image stops after _MAX_GIF_STEPS blocks and
    sub-blocks (a crafted 2 MB comment of 1-byte sub-blocks took 41 s to get there); the GIF
    then went to the decoder unread, which painted its transparent pixels black. It is refused."""
    from trainer import preprocessing

    gif = _gif(np.array([[0, 1], [1, 0]]), [0, 0, 0, 200, 10, 10], transparency=0)
    comment = b"\x21\xfe" + b"\x01x" * 100 + b"\x00"
    at = gif.index(b"\x21\xf9")
    data = gif[:at] + comment + gif[at:]
    expected = np.array([[[255] * 3, [200, 10, 10]], [[200, 10, 10], [255] * 3]], np.uint8)
    np.testing.assert_array_equal(preprocessing.decode_image(tf.constant(data), 1).numpy(), expected)
    monkeypatch.setattr(preprocessing, "_MAX_GIF_STEPS", 64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="GIF with more than 64 blocks"):
        preprocessing.decode_image(tf.constant(data), 1)


def test_a_gif_frame_is_placed_on_its_screen():
    """A first frame smaller than its screen, off the screen's corner: TensorFlow's decoder cut
    it to a frame-sized canvas (most of it black). It is the frame on its screen, the rest white
    (transparent on a page); a frame reaching past the screen grows it, as the pixel limit
    counts it."""
    from trainer.preprocessing import decode_image, image_shape

    indices = np.array([[1, 2, 1], [2, 1, 2]])
    palette = [0, 0, 0, 200, 0, 0, 0, 0, 200]
    frame = np.array(palette, np.uint8).reshape(3, 3)[indices]
    for screen, left, top in (((7, 5), 3, 2), ((3, 2), 0, 0), ((4, 3), 0, 1), ((4, 4), 2, 3)):
        gif = image_samples.gif_placed(_gif(indices, palette), screen, left, top)
        height, width = max(screen[1], top + 2), max(screen[0], left + 3)
        expected = np.full((height, width, 3), 255, np.uint8)
        expected[top : top + 2, left : left + 3] = frame
        np.testing.assert_array_equal(decode_image(tf.constant(gif), 1).numpy(), expected)
        assert [int(v) for v in image_shape(tf.constant(gif))[1:]] == [height, width]
    # With a transparent index too: both the uncovered screen and the transparent pixels are white.
    gif = image_samples.gif_placed(_gif(indices, palette, transparency=2), (5, 4), 1, 1)
    expected = np.full((4, 5, 3), 255, np.uint8)
    expected[1:3, 1:4] = np.where((indices == 2)[..., None], 255, frame)
    np.testing.assert_array_equal(decode_image(tf.constant(gif), 1).numpy(), expected)


def test_a_bmps_bit_masks_say_where_its_channels_are():
    """tf.io.decode_bmp reads a 32-bit pixel as B, G, R, A whatever the masks say: a BMP written
    with red in the low byte decoded with red and blue swapped, without an error."""
    from trainer.preprocessing import decode_image

    rgb = np.random.default_rng(3).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    layouts = {
        "BGRA": (0xFF0000, 0xFF00, 0xFF, 0xFF000000),
        "RGBA": (0xFF, 0xFF00, 0xFF0000, 0xFF000000),
        "ABGR": (0xFF000000, 0xFF0000, 0xFF00, 0xFF),
        "ARGB": (0xFF00, 0xFF0000, 0xFF000000, 0xFF),
    }
    for name, masks in layouts.items():
        for header in (40, 108, 124):
            data = image_samples.bmp_masked(rgb, masks if header > 40 else masks[:3], header)
            np.testing.assert_array_equal(decode_image(tf.constant(data), 1).numpy(), rgb, err_msg=name)
            if name in ("BGRA", "ABGR") or (name == "RGBA" and header > 40):  # layouts Pillow reads
                np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), rgb)
    assert (
        tf.io.decode_image(image_samples.bmp_masked(rgb, layouts["RGBA"], 108), channels=3).numpy() != rgb
    ).any()


def test_a_bmp_the_decoder_would_misread_is_refused():
    """Compressed BMPs (RLE, JPEG or PNG inside) tf.io.decode_bmp reads as raw pixels, and masks
    that are not whole bytes it ignores: refused, with the reason, instead of garbage."""
    from imgpipe.ingest.images import check_image
    from trainer.preprocessing import decode_image

    rgb = np.random.default_rng(4).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="BMP")
    plain = buffer.getvalue()
    np.testing.assert_array_equal(decode_image(tf.constant(plain), 1).numpy(), rgb)
    for code in (1, 2, 4, 5, 7):
        data = plain[:30] + struct.pack("<I", code) + plain[34:]
        assert tf.io.decode_image(data, channels=3).shape == (3, 5, 3)  # read, wrongly
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"compressed BMP \\(compression {code};"):
            decode_image(tf.constant(data), 1)
        assert check_image(data) is not None
    ten_bit = image_samples.bmp_masked(rgb, (0xFF0000, 0xFF00, 0xFF), 40)
    ten_bit = ten_bit[:54] + struct.pack("<III", 0x3FF00000, 0xFFC00, 0x3FF) + ten_bit[66:]
    with pytest.raises(tf.errors.InvalidArgumentError, match="bit masks other than one whole byte"):
        decode_image(tf.constant(ten_bit), 1)
    assert "bit masks" in check_image(ten_bit) or "bitfields" in check_image(ten_bit)


def test_a_bmp_whose_alpha_mask_names_a_byte_is_composited_onto_white():
    """A 32-bit BMP with an alpha mask (GIMP's A8 R8 G8 B8 export, a V4/V5 header) is RGBA to
    Pillow and to a browser; the decoder dropped the alpha, showing what transparent pixels hold.
    An alpha byte that is 0 everywhere is taken as no alpha, as browsers take it."""
    from trainer.preprocessing import decode_image

    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (3, 4), dtype=np.uint8)
    for masks in ((0xFF0000, 0xFF00, 0xFF, 0xFF000000), (0xFF, 0xFF00, 0xFF0000, 0xFF000000)):
        data = image_samples.bmp_masked(rgb, masks, 108, alpha=alpha)
        expected = np.round(rgb * (alpha[..., None] / 255) + 255 * (1 - alpha[..., None] / 255))
        np.testing.assert_array_equal(decode_image(tf.constant(data), 1).numpy(), expected)
        pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA")).astype(np.float64)
        on_white = np.round(pil[..., :3] * pil[..., 3:] / 255 + 255 * (1 - pil[..., 3:] / 255))
        np.testing.assert_array_equal(on_white, expected)
        empty = image_samples.bmp_masked(rgb, masks, 108, alpha=np.zeros_like(alpha))  # meant opaque
        np.testing.assert_array_equal(decode_image(tf.constant(empty), 1).numpy(), rgb)
    # Without an alpha mask (a 40-byte header with BI_BITFIELDS' three masks) the byte is unused.
    np.testing.assert_array_equal(
        decode_image(tf.constant(image_samples.bmp_masked(rgb, (0xFF0000, 0xFF00, 0xFF), 40)), 1), rgb
    )


def test_a_bmp_with_bytes_after_its_rows_or_masks_on_24_bits_decodes():
    """tf.io.decode_bmp refused a file with any bytes after its rows (row padding counted in the
    file size, a V5 header's ICC profile, which follows the pixels) and masks on a 24-bit BMP."""
    from trainer.preprocessing import decode_image

    rgb = np.random.default_rng(6).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="BMP")
    plain = buffer.getvalue()
    for tail in (b"\0\0", bytes(588)):
        data = plain[:2] + struct.pack("<I", len(plain) + len(tail)) + plain[6:] + tail
        with pytest.raises(tf.errors.InvalidArgumentError):
            tf.io.decode_bmp(data)
        np.testing.assert_array_equal(decode_image(tf.constant(data), 1).numpy(), rgb)
    masked = plain[:30] + struct.pack("<I", 3) + plain[34:54]
    masked = masked[:10] + struct.pack("<I", 66) + masked[14:] + struct.pack("<III", 0xFF, 0xFF00, 0xFF0000)
    rows = np.frombuffer(plain[54:], np.uint8).reshape(3, -1)[:, :15].reshape(3, 5, 3)[..., ::-1]
    padded = np.zeros((3, 16), np.uint8)
    padded[:, :15] = rows.reshape(3, 15)
    np.testing.assert_array_equal(decode_image(tf.constant(masked + padded.tobytes()), 1).numpy(), rgb)


def test_a_bmp_with_an_os2_header_is_refused_by_name():
    """TensorFlow's decoder takes the 40-byte header's fields from any BMP: a 12-byte OS/2 core
    header gave "Number of channels ... was 31", a number read from pixel bytes."""
    from imgpipe.ingest.images import check_image
    from trainer.preprocessing import decode_image

    core = struct.pack("<IHHHH", 12, 2, 2, 1, 24)
    rows = bytes([0, 0, 255, 0, 255, 0, 0, 0]) * 2
    data = b"BM" + struct.pack("<IHHI", 26 + len(rows), 0, 0, 26) + core + rows
    assert Image.open(io.BytesIO(data)).size == (2, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="BMP with a 12-byte header"):
        decode_image(tf.constant(data), 1)
    assert "12-byte header" in check_image(data)


def test_the_walk_for_a_trns_chunk_stops_after_a_bounded_number_of_chunks():
    """Each chunk head is a graph iteration: a file of a million empty chunks before its image data
    took 17 s. Past _MAX_PNG_CHUNKS chunks the walk stops and the PNG is taken as maybe
    transparent: blended onto white, which leaves opaque pixels as they are."""
    import struct
    import zlib

    from trainer import preprocessing

    def chunk(kind: bytes, data: bytes = b"") -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rgb = np.random.default_rng(1).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    rows = b"".join(b"\x00" + row.tobytes() for row in rgb)

    def png(extra: bytes) -> bytes:
        header = chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
        return b"\x89PNG\r\n\x1a\n" + header + extra + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND")

    has_trns = tf.function(preprocessing._png_has_trns)
    limit = preprocessing._MAX_PNG_CHUNKS
    few, many = chunk(b"abCd") * 10, chunk(b"abCd") * (limit + 5)
    assert not has_trns(tf.constant(png(few))).numpy()
    assert has_trns(tf.constant(png(few + chunk(b"tRNS", b"\x00\x00" * 3)))).numpy()
    assert has_trns(tf.constant(png(many))).numpy()  # not walked to the end: maybe
    for data in (png(few), png(many)):
        assert (decode_image(tf.constant(data), 4).numpy() == rgb).all()


def _control_flow_ops(graph_def) -> dict[str, list[bool]]:
    """For each kind of control-flow op in a traced graph and its functions: whether each one
    is marked for lowering into Switch/Merge."""
    found: dict[str, list[bool]] = {}
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    for node in nodes:
        if node.op in ("If", "StatelessIf", "Case", "StatelessCase", "While", "StatelessWhile"):
            lowered = "_lower_using_switch_merge" in node.attr and node.attr["_lower_using_switch_merge"].b
            found.setdefault(node.op.replace("Stateless", ""), []).append(lowered)
    return found


def _cond_graph(flag: tf.Tensor) -> tf.Tensor:
    return tf.cond(flag, lambda: tf.constant(1), lambda: tf.constant(2))


def test_the_decoders_branches_and_walks_are_functional_and_nothing_else_is():
    """The orientation walks and the GIF, BMP and PNG branches are built as functional If and
    While ops: a graph holding the decoder is first run in about half the time and an image runs
    only the branch it takes (BENCHMARKS.md, "The decoder's control flow"). The format switch and
    tf.map_fn's loop stay lowered, and so does every conditional the caller builds beside the
    decoder, also in other threads building graphs at the same time."""
    import threading

    ops = _control_flow_ops(traced_decoder(SIZE, 40_000_000).get_concrete_function().graph.as_graph_def())
    assert ops["Case"] == [True]  # decode_image's switch on the format and JPEG scale
    assert True in ops["While"] and False in ops["While"]  # map_fn's; the GIF and PNG walks
    assert ops["If"].count(False) >= 5 and True in ops["If"]  # those nested in branches: lowered

    def beside(x: tf.Tensor) -> tf.Tensor:  # the caller's own conditional, built after the decoder's
        orientation = exif_orientation(x)
        with tf.name_scope("callers"):
            return orientation + _cond_graph(tf.strings.length(x) > 3)

    graph = tf.function(beside, autograph=False).get_concrete_function(tf.TensorSpec([], tf.string)).graph
    top = {
        op.name: op.get_attr("_lower_using_switch_merge")
        for op in graph.get_operations()
        if op.type in ("If", "StatelessIf")
    }
    assert [lowered for name, lowered in top.items() if name.startswith("callers/")] == [True]
    decoders = [lowered for name, lowered in top.items() if not name.startswith("callers/")]
    assert decoders and not any(decoders)

    # A decoder traced in one thread (a size no other test traces) while another builds plain
    # conditionals until it is done: every plain one lowered.
    decoder = threading.Thread(target=lambda: traced_decoder(11, 40_000_000).get_concrete_function())
    plain: list[dict[str, list[bool]]] = []

    def build_plain() -> None:
        while decoder.is_alive() or len(plain) < 5:
            graph = tf.function(_cond_graph).get_concrete_function(tf.TensorSpec([], tf.bool)).graph
            plain.append(_control_flow_ops(graph.as_graph_def()))

    builder = threading.Thread(target=build_plain)
    decoder.start()
    builder.start()
    decoder.join()
    builder.join()
    assert len(plain) >= 5 and all(found == {"If": [True]} for found in plain)
    assert _control_flow_ops(
        tf.function(_cond_graph).get_concrete_function(tf.TensorSpec([], tf.bool)).graph.as_graph_def()
    ) == {"If": [True]}
