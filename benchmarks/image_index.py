"""What the image index pays for records with more than one label: its parse against the fixed one.

`trainer.image_ids.batches` (the DataGate's and the Evaluator's index of a split, the Trainer's
record of its train images) must not stop at a record with two labels (the DataGate says what
is wrong with it). Variants, interleaved in one process on the same well-formed TFRecord file:
"fixed" (`FixedLenFeature([])` only, the parse before), "ragged" (every batch parsed as lists,
each record's first value kept) and "imgpipe" (`split_index`: the fixed parse, the ragged one
from a batch that holds another count). Per split size: the median seconds of one index over
the file, and the ratios to "fixed".

    python -m benchmarks.image_index            # 7 rounds, 2,000 and 30,000 well-formed records
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


def _index_with(path: str, ragged: bool):
    """split_index with one parse for every batch: one value per record, or lists (each record's
    first value kept)."""
    import numpy as np
    import tensorflow as tf

    from trainer import data, image_ids
    from trainer.features import IMAGE_KEY, LABEL_KEY

    keys = (IMAGE_KEY, LABEL_KEY)
    if ragged:
        spec = {k: tf.io.RaggedFeature(tf.string) for k in keys}
    else:
        spec = {k: tf.io.FixedLenFeature([], tf.string, default_value="") for k in keys}

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        if ragged:
            parsed = {k: parsed[k][:, :1].to_tensor(default_value="", shape=[None, 1])[:, 0] for k in keys}
        return parsed[IMAGE_KEY], parsed[LABEL_KEY], serialized

    ids, labels = [], []
    for images, batch_labels, _ in data.raw_examples(path).batch(512).map(parse).as_numpy_iterator():
        ids.append(
            np.fromiter((image_ids.fingerprint(x) for x in images), dtype=np.uint64, count=len(images))
        )
        labels.extend(label.decode("utf-8", "replace") for label in batch_labels)
    return np.concatenate(ids), np.array(labels, dtype=object)


def _fixed_index(path: str):
    return _index_with(path, ragged=False)


def _ragged_index(path: str):
    return _index_with(path, ragged=True)


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
            fixed = _fixed_index(path)
            for other in (_ragged_index(path), image_ids.split_index(path)):
                assert np.array_equal(fixed[0], other[0]) and list(fixed[1]) == list(other[1])
            common.say(f"[image_index] {n} records: the three indexes agree")

            def timed(index, path=path) -> float:
                start = time.perf_counter()
                index(path)
                return time.perf_counter() - start

            got = common.interleaved(
                {
                    "fixed": lambda r: timed(_fixed_index),
                    "ragged": lambda r: timed(_ragged_index),
                    "imgpipe": lambda r: timed(image_ids.split_index),
                },
                rounds,
                say=common.say,
            )
            a, b, c = (common.median(got[k]) for k in ("fixed", "ragged", "imgpipe"))
            rows.append([f"{n:,}", f"{a:.3f}", f"{b:.3f}", f"{c:.3f}", f"{b / a:.2f}x", f"{c / a:.2f}x"])
    common.emit(common.header("The image index's parse: fixed, ragged, and imgpipe's"))
    common.emit(f"Medians of {rounds} interleaved round(s) of one index over the file.\n")
    common.emit(
        common.table(
            ["records", "fixed s", "ragged s", "imgpipe s", "ragged / fixed", "imgpipe / fixed"], rows
        )
    )
    common.emit("")
    return 0


if __name__ == "__main__":
    sys.exit(main())
