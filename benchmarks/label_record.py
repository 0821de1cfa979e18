"""What the record of each train image's label costs: the Trainer's write and the DataGate's check.

The Trainer records, beside each train image's fingerprint, its label
(`trainer/image_ids.py` `write`: `train_image_labels.npz`), and the next run's DataGate reads
that record of the latest blessed model and the fingerprints and labels of its own train and
eval splits to find images relabelled since (`components/data_gate.py` `relabelled`).
On the demo's target task (717 train, 179 eval records), interleaved in one process:

- "write": `image_ids.write` (fingerprints and labels) against the fingerprints alone, as the
  Trainer wrote them before (`split_ids`, one .npy);
- "check": what the DataGate now does more per run: read the record, index the eval split,
  compare (the train split's index it made before, for copies of one image).

    python -m benchmarks.label_record            # 5 rounds
    python -m benchmarks.label_record --quick    # 1 round
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time

from benchmarks import common


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=32)
    args = p.parse_args(argv)
    rounds = common.repeats(args, default=5)
    common.quiet()
    import numpy as np

    from components.data_gate import relabelled
    from trainer import image_ids

    _, target = common.demo_tasks(args.workdir, args.image_size)
    train = os.path.join(target, "train", "*")
    evals = os.path.join(target, "eval", "*")

    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-labels-") as tmp:

        def ids_only(r):
            start = time.perf_counter()
            ids = np.unique(image_ids.split_ids(train))
            buffer = io.BytesIO()
            np.save(buffer, ids.astype("<u8"), allow_pickle=False)
            with open(os.path.join(tmp, f"ids-{r}.npy"), "wb") as f:
                f.write(buffer.getvalue())
            return time.perf_counter() - start

        def with_labels(r):
            start = time.perf_counter()
            image_ids.write(os.path.join(tmp, f"model-{r}"), train)
            return time.perf_counter() - start

        def check(r):
            start = time.perf_counter()
            trained = image_ids.read_labels(os.path.join(tmp, "model-0"))
            indexed = {"train": image_ids.split_index(train), "eval": image_ids.split_index(evals)}
            assert relabelled(trained, indexed) == (None, [])
            total = time.perf_counter() - start
            start = time.perf_counter()
            image_ids.split_index(train)  # done before this check too (copies of one image)
            return total - (time.perf_counter() - start)

        write = common.interleaved(
            {"fingerprints": ids_only, "and labels": with_labels}, rounds, say=common.say
        )
        checked = [check(r) for r in range(rounds)]
        size = os.path.getsize(os.path.join(tmp, "model-0", image_ids.LABELS_FILE))

    before, after = common.median(write["fingerprints"]), common.median(write["and labels"])
    common.emit(
        common.header("The record of each train image's label: the Trainer's write, the DataGate's check")
    )
    common.emit(
        f"Demo target task at {args.image_size} px (717 train, 179 eval records); medians of {rounds} round(s).\n"
    )
    common.emit(
        common.table(
            ["step", "before ms", "now ms", "ratio"],
            [
                [
                    "Trainer: record of its train images",
                    f"{before * 1000:.1f}",
                    f"{after * 1000:.1f}",
                    f"{after / before:.2f}x",
                ],
                ["DataGate: relabelled images (added)", "0", f"{common.median(checked) * 1000:.1f}", "-"],
            ],
        )
    )
    common.emit(f"\n`train_image_labels.npz`: {size:,} bytes.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
