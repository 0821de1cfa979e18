"""What the image index's ragged parse costs against the fixed-length one it replaced.

`trainer.image_ids.batches` (the DataGate's and the Evaluator's index of a split, the Trainer's
record of its train images) parses each record's `image` and `label` as ragged features and
keeps each one's first value, so a record with two labels reaches the DataGate's own anomaly
instead of stopping it in TensorFlow's parser. Variants, interleaved in one process on the same
TFRecord file: "fixed" (`FixedLenFeature([])`, the parse before) and "ragged" (imgpipe's).
Per split size: the median seconds of one `split_index` over the file, and the ratio.

    python -m benchmarks.image_index            # 7 rounds, 2,000 and 30,000 records
    python -m benchmarks.image_index --quick    # 1 round
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from benchmarks import common

SIZES = (2_000, 30_000)
IMAGE_BYTES = 600  # about a 32 px PNG of the demo's digits


def _write(path: str, n: int) -> None:
    import numpy as np
    import tensorflow as tf

    from imgpipe.ingest.contract import example_bytes

    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(path) as w:
        for i in range(n):
            w.write(example_bytes(rng.bytes(IMAGE_BYTES), f"class{i % 10}"))


def _fixed_index(path: str):
    """split_index with the fixed-length parse it had before."""
    import numpy as np
    import tensorflow as tf

    from trainer import data, image_ids
    from trainer.features import IMAGE_KEY, LABEL_KEY

    spec = {
        IMAGE_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
        LABEL_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        return parsed[IMAGE_KEY], parsed[LABEL_KEY], serialized

    ids, labels = [], []
    for images, batch_labels, _ in data.raw_examples(path).batch(512).map(parse).as_numpy_iterator():
        ids.append(
            np.fromiter((image_ids.fingerprint(x) for x in images), dtype=np.uint64, count=len(images))
        )
        labels.extend(label.decode("utf-8", "replace") for label in batch_labels)
    return np.concatenate(ids), np.array(labels, dtype=object)


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    rounds = common.repeats(args, default=7)
    common.quiet()
    import numpy as np

    from trainer import image_ids

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in SIZES:
            path = os.path.join(tmp, f"split-{n}.tfrecord")
            _write(path, n)
            fixed, ragged = _fixed_index(path), image_ids.split_index(path)
            assert np.array_equal(fixed[0], ragged[0]) and list(fixed[1]) == list(ragged[1])
            common.say(f"[image_index] {n} records: the two indexes agree")

            def timed(index, path=path) -> float:
                start = time.perf_counter()
                index(path)
                return time.perf_counter() - start

            got = common.interleaved(
                {"fixed": lambda r: timed(_fixed_index), "ragged": lambda r: timed(image_ids.split_index)},
                rounds,
                say=common.say,
            )
            a, b = common.median(got["fixed"]), common.median(got["ragged"])
            rows.append([f"{n:,}", f"{a:.3f}", f"{b:.3f}", f"{b / a:.2f}x"])
    common.emit(common.header("The image index's parse: ragged against fixed-length"))
    common.emit(f"Medians of {rounds} interleaved round(s) of one split_index over the file.\n")
    common.emit(common.table(["records", "fixed s", "ragged s", "ratio"], rows))
    common.emit("")
    return 0


if __name__ == "__main__":
    sys.exit(main())
