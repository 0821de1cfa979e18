"""What the accurate JPEG IDCT costs the decoder, and how far the fast one is from Pillow's pixels.

The preprocessing graph decodes JPEGs with libjpeg's accurate integer IDCT
(`dct_method='INTEGER_ACCURATE'`, trainer.preprocessing.JPEG_DCT_METHOD), Pillow's, so a
device following the TFLite contract gets the graph's pixels; TensorFlow's default is the fast
IDCT. Variants, interleaved in one process on the same files: "fast" (TensorFlow's default)
and "accurate" (imgpipe's). Per file set: the median milliseconds of one decode, the ratio,
and each variant's largest difference from Pillow's decode at the same DCT scale.

    python -m benchmarks.jpeg_idct            # 7 rounds
    python -m benchmarks.jpeg_idct --quick    # 1 round
"""

from __future__ import annotations

import io
import sys
import time

from benchmarks import common

SCALES = (1, 2, 4, 8)
DECODES_PER_ROUND = 40


def _files() -> dict[str, list[bytes]]:
    """scikit-learn's two 427 x 640 photos as JPEGs (quality 75 and 95, 4:2:0 and 4:4:4), and
    the digits at 32 px."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits, load_sample_images

    photos = []
    for image in load_sample_images().images:
        for quality, subsampling in ((75, 2), (95, 0)):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "JPEG", quality=quality, subsampling=subsampling)
            photos.append(buffer.getvalue())
    digits = []
    for d in load_digits().images[:40]:
        grey = np.kron((d * 16).clip(0, 255).astype(np.uint8), np.ones((4, 4), np.uint8))
        buffer = io.BytesIO()
        Image.fromarray(np.stack([grey, 255 - grey, grey // 2], -1)).save(buffer, "JPEG", quality=90)
        digits.append(buffer.getvalue())
    return {"427 x 640 photos": photos, "32 x 32 digits": digits}


def _pillow(data: bytes, ratio: int):
    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    width, height = image.size
    image.draft("RGB", (max(1, width // ratio), max(1, height // ratio)))
    return np.asarray(image.convert("RGB"), dtype=int)


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    rounds = common.repeats(args, default=7)
    common.quiet()
    import numpy as np
    import tensorflow as tf

    methods = {"fast": "", "accurate": "INTEGER_ACCURATE"}
    rows = []
    for name, files in _files().items():
        common.say(f"[jpeg_idct] {name}")

        def timed(method: str, files=files) -> float:
            start = time.perf_counter()
            for i in range(DECODES_PER_ROUND):
                tf.io.decode_jpeg(files[i % len(files)], channels=3, dct_method=method)
            return (time.perf_counter() - start) / DECODES_PER_ROUND

        got = common.interleaved(
            {label: (lambda r, m=method: timed(m)) for label, method in methods.items()},
            rounds,
            say=common.say,
        )
        far = {}
        for label, method in methods.items():
            far[label] = max(
                int(
                    np.abs(
                        tf.io.decode_jpeg(data, channels=3, ratio=r, dct_method=method).numpy().astype(int)
                        - _pillow(data, r)
                    ).max()
                )
                for data in files
                for r in SCALES
            )
        fast, accurate = common.median(got["fast"]), common.median(got["accurate"])
        rows.append(
            [
                name,
                f"{fast * 1000:.3f}",
                f"{accurate * 1000:.3f}",
                f"{accurate / fast:.2f}x",
                far["fast"],
                far["accurate"],
            ]
        )
    common.emit(common.header("The JPEG decoder's IDCT: cost, and distance from Pillow's pixels"))
    common.emit(f"Medians of {rounds} interleaved round(s) of {DECODES_PER_ROUND} full-size decodes.\n")
    common.emit(
        common.table(
            [
                "files",
                "fast ms",
                "accurate ms",
                "ratio",
                "fast: most levels from Pillow",
                "accurate: most levels",
            ],
            rows,
        )
    )
    common.emit("")
    return 0


if __name__ == "__main__":
    sys.exit(main())
