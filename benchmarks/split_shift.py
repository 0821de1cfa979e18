"""What the data gate's train/eval shift check costs, against the image index it already makes.

`components/split_shift.py` reads every record of the train and eval splits to draw a seeded
sample of 300 images each, and measures those. The DataGate already reads the train split once
for its copies of one image (`trainer/image_ids.split_index`). Both are timed on ExampleGen-like
folders (gzipped TFRecords, 80/20) of scikit-learn's digits as 64 px PNGs, at three sizes.

    python -m benchmarks.split_shift            # 3 rounds, 1k, 10k and 30k images
    python -m benchmarks.split_shift --quick    # 1 round
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks import common

SIZES = (1_000, 10_000, 30_000)


def _folder(root: str, n: int) -> dict[str, str]:
    import tensorflow as tf
    from PIL import Image
    from sklearn.datasets import load_digits

    from tests.helpers import make_example

    digits = load_digits()
    encoded = []
    for pixels, label in zip(digits.images, digits.target, strict=True):
        buffer = io.BytesIO()
        Image.fromarray((pixels * 16).clip(0, 255).astype(np.uint8)).resize((64, 64)).save(buffer, "PNG")
        encoded.append(make_example(buffer.getvalue(), str(label)))
    patterns = {}
    for split, count in (("train", n * 4 // 5), ("eval", n // 5)):
        folder = os.path.join(root, f"{n}", f"Split-{split}")
        os.makedirs(folder)
        with tf.io.TFRecordWriter(os.path.join(folder, "data_tfrecord-00000-of-00001.gz"), "GZIP") as w:
            for i in range(count):
                w.write(encoded[i % len(encoded)])
        patterns[split] = os.path.join(folder, "*")
    return patterns


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    rounds = common.repeats(args, default=3)
    common.quiet()
    from components import split_shift
    from trainer import image_ids

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in SIZES:
            patterns = _folder(tmp, n)

            def index(r, patterns=patterns) -> float:
                start = time.perf_counter()
                image_ids.split_index(patterns["train"])
                return time.perf_counter() - start

            def shift(r, patterns=patterns) -> float:
                start = time.perf_counter()
                split_shift.split_shift(
                    image_ids.records(patterns["train"]), image_ids.records(patterns["eval"])
                )
                return time.perf_counter() - start

            got = common.interleaved({"index": index, "shift": shift}, rounds, say=common.say)
            a, b = common.median(got["index"]), common.median(got["shift"])
            rows.append([f"{n:,}", f"{a:.2f}", f"{b:.2f}", f"{b / a:.2f}"])
    common.emit(common.header("The data gate's train/eval shift check"))
    common.emit(f"Medians of {rounds} interleaved round(s); digits as 64 px PNGs, 80/20 split, gzipped.\n")
    common.emit(
        common.table(["images", "train image index s", "shift check s (both splits)", "shift / index"], rows)
    )
    common.emit("")
    return 0


if __name__ == "__main__":
    sys.exit(main())
