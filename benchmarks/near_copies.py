"""Near-copies at ingest: how well the thumbnails tell copies from other pictures, and what they cost.

`imgpipe ingest` keeps near-copies (one picture saved again, resized, brighter) in one split
(imgpipe/ingest/near_copies.py). Three measurements:

1. Separation: the correlation of each picture's thumbnail with its copies' (JPEG quality 90 and
   50, half size, 3 levels brighter, 10% darker, a grey copy as Pillow makes one), for crops of scikit-learn's two photos and for
   its hand-drawn digits at 32 px, against the largest correlation between two different digits
   of all 1,797 (the most alike pictures shipped). The threshold must sit between. The same for
   copies moved by a pixel of the 32 x 32 grid (a digit of 34 px cut to 32 a pixel apart, a photo
   crop moved 8 px of 256) in the grids compared shifted (`shifted_correlation`), and for a move
   between two grid pixels (a photo crop moved 4 px: half a grid pixel). And for copies turned or
   mirrored (the seven other orientations of a square: offline augmentation's copies), the
   thumbnail compared in the copy's orientation, against the largest correlation of two
   different digits in any orientation.
2. The scan's cost per file: the check decodes a JPEG at the smallest scale keeping 64 pixels a
   side, for the thumbnail, instead of always at 1/8 as before; variants "1/8" and "64 px"
   (`images.THUMBNAIL_DECODE_SIDE`), interleaved in one process, on 256 px JPEG crops, 640 x 427
   JPEG photos and 32 px PNG digits.
3. The search: `near_copy_sets` over one class of n images (random signatures: no set to form,
   every pair compared), with the thumbnails alone (as before the grids), with the grids' eight
   shifted comparisons, and with those and the thumbnails' seven other orientations (now),
   interleaved.

    python -m benchmarks.near_copies            # 5 rounds
    python -m benchmarks.near_copies --quick    # 1 round
"""

from __future__ import annotations

import io
import sys
import time

import numpy as np

from benchmarks import common

SEARCH_SIZES = (2_000, 8_000, 15_000)


def _encode(image, fmt="PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _copies(picture) -> dict[str, bytes]:
    from PIL import Image

    pixels = np.asarray(picture).astype(np.float32)
    return {
        "JPEG q90": _encode(picture, "JPEG", quality=90),
        "JPEG q50": _encode(picture, "JPEG", quality=50),
        "half size": _encode(picture.resize((picture.width // 2, picture.height // 2), Image.BILINEAR)),
        "+3 levels": _encode(Image.fromarray(np.clip(pixels + 3, 0, 255).astype(np.uint8))),
        "10% darker": _encode(Image.fromarray(np.clip(pixels * 0.9, 0, 255).astype(np.uint8))),
        "grey (Pillow's L), JPEG q90": _encode(picture.convert("L").convert("RGB"), "JPEG", quality=90),
    }


def _pictures():
    from PIL import Image
    from sklearn.datasets import load_digits, load_sample_images

    rng = np.random.default_rng(0)
    photos = []
    for array in load_sample_images().images:
        for _ in range(10):
            y, x = rng.integers(0, array.shape[0] - 256), rng.integers(0, array.shape[1] - 256)
            photos.append(Image.fromarray(array[y : y + 256, x : x + 256]))
    digits = [
        Image.fromarray((d * 16).clip(0, 255).astype(np.uint8))
        .resize((32, 32), Image.BILINEAR)
        .convert("RGB")
        for d in load_digits().images
    ]
    return photos, digits


def _thumb(data: bytes) -> bytes:
    from imgpipe.ingest.images import inspect_image

    check = inspect_image(data)
    if check.reason is not None:
        raise RuntimeError(check.reason)
    return check.thumb


def _digit34(digit):
    from PIL import Image

    return digit.resize((34, 34), Image.BILINEAR)


def _cut(picture, pad: int, move: tuple[int, int]):
    """`picture` cut `pad` pixels in from each side, moved by `move`."""
    dx, dy = move
    w, h = picture.size
    return picture.crop((pad + dx, pad + dy, w - pad + dx, h - pad + dy))


def separation(photos, digits) -> str:
    from PIL import Image

    from imgpipe.ingest.near_copies import _TURNS, NEAR_COPY_CORRELATION, shifted_correlation, thumbnails

    rows = []
    for kind, pictures in (("256 px photo crops", photos), ("32 px digits", digits[:200])):
        lowest: dict[str, float] = {}
        for picture in pictures:
            original = thumbnails([_thumb(_encode(picture))])[0]
            for name, data in _copies(picture).items():
                value = float(thumbnails([_thumb(data)])[0] @ original)
                lowest[name] = min(lowest.get(name, 1.0), value)
        rows += [[kind, name, f"{value:.5f}"] for name, value in lowest.items()]
    moved = {
        "32 px digits": [(_digit34(d), 1, (1, 0)) for d in digits[:200]],
        "256 px photo crops": [(p, 8, (8, 0)) for p in photos] + [(p, 8, (0, -8)) for p in photos],
    }
    for kind, cases in moved.items():
        lowest_thumb, lowest_shifted = 1.0, 1.0
        for picture, pad, (dx, dy) in cases:
            a, b = (_thumb(_encode(_cut(picture, pad, move))) for move in ((0, 0), (dx, dy)))
            lowest_thumb = min(lowest_thumb, float(thumbnails([a])[0] @ thumbnails([b])[0]))
            lowest_shifted = min(lowest_shifted, shifted_correlation(a, b))
        rows.append([kind, "moved a grid pixel (1/32 of the side): thumbnails", f"{lowest_thumb:.5f}"])
        rows.append([kind, "moved a grid pixel: grids compared shifted", f"{lowest_shifted:.5f}"])
    between = [
        shifted_correlation(*(_thumb(_encode(_cut(p, 8, move))) for move in ((0, 0), (4, 0)))) for p in photos
    ]
    rows.append(
        ["256 px photo crops", "moved half a grid pixel: grids compared shifted", f"{min(between):.5f}"]
    )
    turns = {
        "mirrored left-right": Image.FLIP_LEFT_RIGHT,
        "turned 90 degrees": Image.ROTATE_90,
        "turned 180 degrees": Image.ROTATE_180,
        "mirrored on the diagonal": Image.TRANSPOSE,
    }
    for kind, pictures in (("256 px photo crops", photos), ("32 px digits", digits[:200])):
        for name, method in turns.items():
            lowest = 1.0
            for picture in pictures:
                original = thumbnails([_thumb(_encode(picture))])[0]
                copy = thumbnails([_thumb(_encode(picture.transpose(method), "JPEG", quality=90))])[0]
                lowest = min(lowest, max(float(copy @ original[order]) for order in _TURNS.values()))
            rows.append([kind, f"{name}, JPEG q90: thumbnails in its orientation", f"{lowest:.5f}"])
    signatures = [_thumb(_encode(d)) for d in digits]
    every = thumbnails(signatures)
    turned = max(float((every @ every[:, order].T).max()) for order in _TURNS.values())
    similarity = every @ every.T
    np.fill_diagonal(similarity, -1)
    rows.append(
        ["32 px digits", f"two different digits (of {len(digits):,}): the largest", f"{similarity.max():.5f}"]
    )
    rows.append(
        ["32 px digits", "two different digits, one turned or mirrored: the largest", f"{turned:.5f}"]
    )
    # The most alike different digits in the thumbnails, compared shifted too.
    top = np.dstack(np.unravel_index(np.argsort(-similarity, axis=None)[:400:2], similarity.shape))[0]
    largest = max(shifted_correlation(signatures[i], signatures[j]) for i, j in top)
    rows.append(
        [
            "32 px digits",
            "the 200 most alike pairs of different digits, shifted: the largest",
            f"{largest:.5f}",
        ]
    )
    text = common.table(["pictures", "copy", "correlation (lowest over pictures)"], rows)
    return text + f"\n\nThreshold: {NEAR_COPY_CORRELATION}."


def scan_cost(photos, digits, rounds: int) -> str:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from imgpipe.ingest import images

    big = [
        _encode(Image.fromarray(a), "JPEG", quality=q)
        for a in load_sample_images().images
        for q in (70, 80, 90, 95)
    ]
    sets = {
        "256 px JPEG crops": [_encode(p, "JPEG", quality=90) for p in photos] * 5,
        "640 x 427 JPEG photos": big * 10,
        "32 px PNG digits": [_encode(d) for d in digits[:300]],
    }
    decode_side = images.THUMBNAIL_DECODE_SIDE

    def run(side: int, files: list[bytes]) -> float:
        images.THUMBNAIL_DECODE_SIDE = side
        images._graph_check.cache_clear()
        images.inspect_image(files[0])  # trace
        start = time.perf_counter()
        for data in files:
            images.inspect_image(data)
        return (time.perf_counter() - start) / len(files) * 1e3

    rows = []
    try:
        for name, files in sets.items():
            got = common.interleaved(
                {"1/8": lambda r, f=files: run(1, f), "64 px": lambda r, f=files: run(decode_side, f)},
                rounds,
                say=common.say,
            )
            before, after = common.median(got["1/8"]), common.median(got["64 px"])
            rows.append([name, len(files), f"{before:.2f}", f"{after:.2f}", f"{after / before:.2f}"])
    finally:
        images.THUMBNAIL_DECODE_SIDE = decode_side
        images._graph_check.cache_clear()
    return common.table(
        ["files", "n", "ms per file, JPEG at 1/8", "ms per file, 64 px a side", "ratio"], rows
    )


def search_cost(rounds: int) -> str:
    from imgpipe.ingest.near_copies import near_copy_sets, quantized

    rng = np.random.default_rng(1)
    rows = []
    for n in SEARCH_SIZES:
        vectors = rng.normal(size=(n, 256)).astype(np.float32)
        grids = rng.integers(0, 256, size=(n, 32 * 32)).astype(np.float32)
        whole = [
            quantized(np.concatenate([v / np.linalg.norm(v), g])) for v, g in zip(vectors, grids, strict=True)
        ]
        thumbs_only = [w[:256] for w in whole]
        variants = {
            "thumbnails": (thumbs_only, False),
            "with grids": (whole, False),
            "with grids and turns": (whole, True),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, (signatures, turned) in variants.items():
                start = time.perf_counter()
                near_copy_sets(signatures, turned=turned)
                times[name].append(time.perf_counter() - start)
        alone, shifted, turned = (common.median(times[name]) for name in variants)
        rows.append([f"{n:,}", f"{alone:.2f}", f"{shifted:.2f}", f"{turned:.2f}", f"{turned / shifted:.2f}"])
    return common.table(
        [
            "images in the class",
            "thumbnails alone, s",
            "with the shifted grids, s",
            "and the turns (now), s",
            "turns' ratio",
        ],
        rows,
    )


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    rounds = common.repeats(args, default=5)
    common.quiet()
    photos, digits = _pictures()
    common.emit(common.header("Near-copies at ingest"))
    common.emit("### Separation\n")
    common.emit(separation(photos, digits))
    common.emit(f"\n### The scan's cost per file (medians of {rounds} interleaved rounds)\n")
    common.emit(scan_cost(photos, digits, rounds))
    common.emit(f"\n### The search over one class (median of {rounds})\n")
    common.emit(search_cost(rounds))
    common.emit("")
    return 0


if __name__ == "__main__":
    sys.exit(main())
