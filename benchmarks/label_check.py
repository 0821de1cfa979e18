"""What the Trainer's label check costs (trainer/label_check.py), against the head training it follows.

The check adds, per run: the selection's answers on the train images it held out (one head call
over the held-out features, per fold with cross-validation) and the record (per-class thresholds,
the doubted images, Fisher's exact test). Measured on synthetic features in memory (the sizes of
the Trainer's cache: N examples x D dimensions, K classes, a fifth of the labels flipped), beside
one head fit of 50 epochs on the same features for scale.

    python -m benchmarks.label_check                  # N = 3,000 and 30,000, D = 1280, K = 10
    python -m benchmarks.label_check --rounds 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks import common


def _timed(fn, rounds: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return common.median(times), out


def measure(n: int, dim: int, classes: int, rounds: int) -> dict[str, float]:
    import tensorflow as tf

    from trainer import head, label_check
    from trainer import model as model_lib
    from trainer.config import TrainingConfig

    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1.0, (classes, dim))
    y = rng.integers(0, classes, n)
    x = (centers[y] + rng.normal(0, 3.0, (n, dim))).astype(np.float32)
    noisy = y.copy()
    flip = rng.random(n) < 0.2
    noisy[flip] = (y[flip] + rng.integers(1, classes, flip.sum())) % classes
    tf.keras.utils.set_random_seed(0)
    model = model_lib.build_head(dim, classes, 0.0, 0.0)
    model_lib.compile_model(model, classes, 1e-3)
    params = TrainingConfig(
        backbone="MobileNetV2", weights="none", image_size=32, epochs=50, early_stopping=False
    )
    data = head.array_data(x, noisy, noisy, None, params, 32)[0]
    fit, _ = _timed(lambda: data.fit(model, True, 50, False, 10), 1)
    features = tf.constant(x)
    answer, outputs = _timed(lambda: head.answers(model, features), rounds)
    held = label_check.HeldOut(np.arange(n), outputs, "bench")
    check, record = _timed(
        lambda: label_check.check(held, noisy, [str(i) for i in range(classes)], 0.9, n // 5), rounds
    )
    listed = [img["position"] for img in record["images"]]
    return {
        "fit": fit,
        "answers": answer,
        "check": check,
        "doubted": record["doubted"],
        "listed_flipped": float(np.isin(listed, np.flatnonzero(flip)).mean()) if listed else float("nan"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[3000, 30000])
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    rows = []
    for n in args.sizes:
        m = measure(n, args.dim, args.classes, args.rounds)
        rows.append(
            [
                n,
                f"{m['fit']:.2f}",
                f"{m['answers'] * 1000:.1f}",
                f"{m['check'] * 1000:.1f}",
                f"{(m['answers'] + m['check']) / m['fit']:.3f}",
                m["doubted"],
                f"{m['listed_flipped']:.2f}",
            ]
        )
    common.emit(common.header(f"The label check's cost, D = {args.dim}, K = {args.classes}"))
    common.emit(
        common.table(
            [
                "train examples",
                "head fit, 50 epochs (s)",
                "held-out answers (ms)",
                "check (ms)",
                "check / fit",
                "doubted",
                "listed that were flipped",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
