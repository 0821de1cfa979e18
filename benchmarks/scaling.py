"""Scaling with data: Transform + training time at 1x, 2x and 4x the images.

Each size is its own ingested digits dataset (the first k images of every
digit, k = 43, 86, 172 -> 430, 860, 1720 images), read by ImportExampleGen once.
Per round, for each size (order rotated between rounds):

- transform: TFX's Transform executor as the pipeline configures it
  (materialize=False, disable_statistics=True, DirectRunner) -- see benchmarks/transform.py;
- train: trainer.train() on ImportExampleGen's output through that Transform
  graph, feature cache on (the default), MobileNetV2 pre-trained here.

Reports the median seconds and the ratio to 1x. A fixed cost (Beam start-up,
graph tracing, model build) makes time grow slower than data at small sizes;
the table also gives the marginal seconds per 1,000 images between sizes.

    python -m benchmarks.scaling           # 64px, 10 epochs, 3 rounds
    python -m benchmarks.scaling --quick
"""

from __future__ import annotations

import glob
import os
import sys
import time

from benchmarks import common
from benchmarks import transform as tbench

BACKBONE = "MobileNetV2"


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=None, help="default 10 (quick 3)")
    p.add_argument("--base-per-class", type=int, default=None, help="1x images per digit (43)")
    p.add_argument("--pretrain-epochs", type=int, default=10)
    args = p.parse_args(argv)
    common.quiet()
    runs = common.repeats(args)
    size = args.image_size
    epochs = args.epochs or (3 if args.quick else 10)
    k = args.base_per_class or (15 if args.quick else 43)
    head = common.header(f"Scaling: Transform + train time vs data, {BACKBONE} {size}px")

    import tensorflow_transform as tft

    from imgpipe.demo import data as datasets
    from trainer import distribution, train
    from trainer.config import TrainingConfig

    weights = common.source_backbone(args.workdir, BACKBONE, size, args.pretrain_epochs)
    strategy = distribution.make_strategy()
    sets = {}
    for factor in (1, 2, 4):
        name = f"scaling_{size}_{k * factor}"
        records = tbench.ingested(
            args.workdir,
            name,
            lambda d, n=k * factor: datasets.write_digits_tree(d, size=size, limit_per_class=n),
        )
        examples, schema = tbench.example_gen(records, os.path.join(args.workdir, name, "home"))
        n = tbench.count_records(tbench.examples_files(examples))
        sets[factor] = (name, examples, schema, n)

    params = TrainingConfig(
        backbone=BACKBONE,
        weights=weights,
        image_size=size,
        batch_size=32,
        epochs=epochs,
        learning_rate=1e-2,
        dropout=0.1,
        early_stopping=False,  # a fixed epoch count at every size
    )

    def one(factor: int) -> dict[str, float]:
        import tf_keras as keras

        name, examples, schema, _ = sets[factor]
        out = os.path.join(args.workdir, name, "transform_out")
        t_transform = tbench.transform_executor(examples, schema, out, size, statistics=False)
        tfo = tft.TFTransformOutput(os.path.join(out, "graph"))
        keras.backend.clear_session()
        t0 = time.perf_counter()
        result = train.train(
            glob.glob(os.path.join(examples, "Split-train", "*")),
            glob.glob(os.path.join(examples, "Split-eval", "*")),
            tfo,
            params,
            strategy=strategy,
            verbose=0,
        )
        assert result.feature_cache_used
        return {
            "transform": t_transform,
            "train": time.perf_counter() - t0,
            "extract": result.seconds["feature_extraction"],
        }

    one(1)  # warm-up, untimed: the first Keras trace in a process also converts Keras itself
    res = common.interleaved({f: (lambda r, f=f: one(f)) for f in sets}, runs, say=common.say)
    med = {
        f: {key: common.median([r[key] for r in rs]) for key in ("transform", "train", "extract")}
        for f, rs in res.items()
    }
    for m in med.values():
        m["total"] = m["transform"] + m["train"]
    rows = []
    for f in sets:
        n = sets[f][3]
        m, m1 = med[f], med[1]
        rows.append(
            [
                f"{f}x",
                n,
                m["transform"],
                m["train"],
                m["extract"],
                m["total"],
                f"{m['transform'] / m1['transform']:.2f}x",
                f"{m['train'] / m1['train']:.2f}x",
                f"{m['total'] / m1['total']:.2f}x",
            ]
        )
    marg = []
    for lo, hi in ((1, 2), (2, 4)):
        dn = (sets[hi][3] - sets[lo][3]) / 1000
        marg.append(
            [
                f"{lo}x -> {hi}x",
                (med[hi]["transform"] - med[lo]["transform"]) / dn,
                (med[hi]["train"] - med[lo]["train"]) / dn,
                (med[hi]["total"] - med[lo]["total"]) / dn,
            ]
        )
    r2 = med[2]["total"] / med[1]["total"]
    common.emit(head)
    common.emit(
        f"Digits 0-9 at {size}px (80/20 train/eval), {epochs} epochs, batch 32, "
        f"median of {runs} interleaved round(s). Target: 2x data <= 2.2x time "
        f"(measured {r2:.2f}x: {'met' if r2 <= 2.2 else 'missed'}).\n"
    )
    common.emit(
        common.table(
            [
                "data",
                "images",
                "transform s",
                "train s",
                "(of which feature extraction s)",
                "transform + train s",
                "transform vs 1x",
                "train vs 1x",
                "total vs 1x",
            ],
            rows,
        )
    )
    common.emit()
    common.emit("Marginal cost, seconds per 1,000 extra images:\n")
    common.emit(common.table(["step", "transform", "train", "total"], marg))
    common.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
