"""Roofline: backbone FLOPs per image, this machine's matmul FLOP/s, achieved fraction.

- FLOPs per image: TensorFlow's profiler (tf.compat.v1.profiler, float_operation)
  on the frozen graph of a concrete function backbone(x, training=False) at batch
  1, cross-checked by counting 2 x multiply-adds from the layers' shapes (Conv2D,
  DepthwiseConv2D, Dense; BatchNorm, activations and pooling left out).
- Peak: tf.linalg.matmul of two 2048x2048 float32 matrices, 2*n^3 FLOPs, median.
- Achieved: images/s of the frozen backbone's forward pass (batch 32, inputs
  already preprocessed, as in the feature cache) x FLOPs/image / peak. For the
  trainer's configuration the end-to-end feature cache (raw TFRecords ->
  Transform graph -> backbone, data.build_feature_cache) is measured too.

Peak and forward passes are measured interleaved, round after round.

    python -m benchmarks.roofline
    python -m benchmarks.roofline --quick
"""

from __future__ import annotations

import os
import sys
import time

from benchmarks import common

CONFIGS = (
    ("MobileNetV2", 32),
    ("MobileNetV2", 64),
    ("MobileNetV2", 224),
    ("DenseNet121", 32),
)
QUICK_CONFIGS = (("MobileNetV2", 32), ("MobileNetV2", 64))
BATCH = 32


def profiler_flops(model, size: int) -> int:
    """Float ops of one forward pass at batch 1, as counted by TF's profiler."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    opts = builder(builder.float_operation()).with_empty_output().build()
    prof = tf.compat.v1.profiler.profile(
        graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=opts
    )
    return int(prof.total_float_ops)


def layer_flops(model) -> int:
    """2 x multiply-adds of Conv2D / DepthwiseConv2D / Dense, from layer shapes (batch 1)."""
    import numpy as np
    import tf_keras as keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c = layer.output_shape
            kh, kw = layer.kernel_size
            total += 2 * h * w * kh * kw * c
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, cout = layer.output_shape
            kh, kw = layer.kernel_size
            cin = layer.input_shape[-1] // layer.groups
            total += 2 * h * w * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * int(np.prod(layer.kernel.shape))
    return int(total)


def matmul_flops_per_s(n: int = 2048, reps: int = 5) -> float:
    """Median FLOP/s of an n x n float32 matmul (after one warm-up)."""
    import tensorflow as tf

    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    tf.linalg.matmul(a, b).numpy()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / common.median(times)


def forward_images_per_s(fn, x, batches: int) -> float:
    t0 = time.perf_counter()
    for _ in range(batches):
        fn(x).numpy()
    return batches * int(x.shape[0]) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    common.quiet()
    runs = common.repeats(args)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    head = common.header("Roofline: backbone FLOPs, matmul peak, achieved fraction")

    import numpy as np
    import tensorflow as tf

    from trainer import data, distribution
    from trainer import model as model_lib

    models, flops, fns, inputs, batches = {}, {}, {}, {}, {}
    for name, size in configs:
        m = model_lib.build_backbone(name, "none", size)
        m.trainable = False
        key = f"{name} {size}px"
        models[key] = m
        flops[key] = (profiler_flops(m, size), layer_flops(m))
        fns[key] = tf.function(lambda x, m=m: m(x, training=False))
        inputs[key] = tf.constant(
            np.random.RandomState(0).uniform(-1, 1, (BATCH, size, size, 3)).astype(np.float32)
        )
        fns[key](inputs[key]).numpy()  # trace + warm up
        # About one second of work per measurement at a nominal 20 GFLOP/s.
        batches[key] = max(2, min(40, int(20e9 / (flops[key][0] * BATCH))))

    # End-to-end feature cache as the trainer runs it (64px target task, real TFRecords).
    size = 64
    _, target = common.demo_tasks(args.workdir, size)
    tfo = common.analyze(
        target,
        os.path.join(args.workdir, f"digits{size}", "transform_target"),
        "MobileNetV2",
        size,
    )
    files = common.split_files(target, "train")
    strategy = distribution.make_strategy()
    with strategy.scope():
        e2e_backbone = model_lib.build_backbone("MobileNetV2", "none", size)
    e2e_key = f"MobileNetV2 {size}px"

    extractor = data.FeatureExtractor(strategy, e2e_backbone)
    spec = data.InputSpec(batch_size=BATCH, num_classes=len(data.class_names(tfo)))

    def input_only() -> float:
        t0 = time.perf_counter()
        n = sum(int(x.shape[0]) for x, _ in data.make_dataset(files, tfo, spec))
        return n / (time.perf_counter() - t0)

    def e2e() -> float:
        t0 = time.perf_counter()
        cache = extractor.cache(data.make_dataset(files, tfo, spec))
        return cache.count / (time.perf_counter() - t0)

    n_e2e = extractor.cache(data.make_dataset(files, tfo, spec)).count  # warm up: one trace
    peaks: list[float] = []
    rates: dict[str, list[float]] = {k: [] for k in models}
    e2e_rates: list[float] = []
    input_rates: list[float] = []
    for r in range(runs):
        peaks.append(matmul_flops_per_s())
        for key in models:
            rates[key].append(forward_images_per_s(fns[key], inputs[key], batches[key]))
        e2e_rates.append(e2e())
        input_rates.append(input_only())
        common.say(f"[bench] round {r + 1}/{runs}: peak {peaks[-1] / 1e9:.1f} GFLOP/s")
    peak = common.median(peaks)
    rows = []
    for key in models:
        prof, count = flops[key]
        ips = common.median(rates[key])
        rows.append(
            [
                key,
                prof / 1e6,
                count / 1e6,
                ips,
                ips * prof / 1e9,
                f"{100 * ips * prof / peak:.1f}%",
            ]
        )
    e2e_ips = common.median(e2e_rates)
    e2e_flops = flops[e2e_key][0] if e2e_key in flops else profiler_flops(e2e_backbone, size)
    rows.append(
        [
            f"{e2e_key}, feature cache end to end (TFRecords -> Transform graph -> backbone)",
            e2e_flops / 1e6,
            float("nan"),
            e2e_ips,
            e2e_ips * e2e_flops / 1e9,
            f"{100 * e2e_ips * e2e_flops / peak:.1f}%",
        ]
    )
    rows.append(
        [
            f"{e2e_key} input only (TFRecords -> Transform graph), no backbone",
            float("nan"),
            float("nan"),
            common.median(input_rates),
            float("nan"),
            "",
        ]
    )
    common.emit(head)
    common.emit(
        f"Peak: float32 2048x2048 matmul, median {peak / 1e9:.1f} GFLOP/s over {runs} "
        f"round(s) (per round: {', '.join(f'{x / 1e9:.1f}' for x in peaks)}). Forward passes "
        f"at batch {BATCH}, inference mode, random-initialised weights (FLOPs do not depend "
        "on the weights). End-to-end rows use the trainer's own input function on the "
        f"train split of the 64px digits task ({n_e2e} images), traced once before timing.\n"
    )
    common.emit(
        common.table(
            [
                "backbone",
                "MFLOPs/image (profiler)",
                "MFLOPs/image (conv+dense count)",
                "images/s",
                "achieved GFLOP/s",
                "of matmul peak",
            ],
            rows,
        )
    )
    common.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
