"""TFLite export: size, latency and top-1 agreement of each quantization, on the demo's model.

The demo's setting: its backbone (DenseNet121, pre-trained here on digits 0-4,
re-used between runs) with a head trained on digits 5-9 at the demo's image
size, exported as the Trainer does. Each variant (float32 as the baseline,
float16, dynamic, int8) is converted once; then, interleaved over rounds, one
TFLite interpreter per variant (one thread: a phone core's view) classifies
the same eval images one at a time. Reported: file size, median latency per
image, both as ratios to float32, the agreement check the Trainer runs (top-1
vs the SavedModel on the whole eval split, strict and with near-tie swaps counted
as agreeing, as the check counts them) and the conversion time. Two
TensorFlow rows, interleaved with the same rounds, put the latency beside the
SavedModel's: the same function the converter freezes (a tf.function on the
resized image), and the exported SavedModel's predict_images signature on the
encoded image (decode and resize included: what a server runs per request).

    python -m benchmarks.tflite                      # DenseNet121, 32 px (the demo's)
    python -m benchmarks.tflite --image-size 96 --quick
"""

from __future__ import annotations

import os
import time

import numpy as np

from benchmarks import common

VARIANTS = ("float32", "float16", "dynamic", "int8")
TF_FUNCTION = "TF: the converted function"
SAVED_MODEL = "SavedModel predict_images"


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default="DenseNet121", help="the demo's backbone (default %(default)s)")
    p.add_argument("--image-size", type=int, default=32, help="the demo's image size (default %(default)s)")
    p.add_argument("--pretrain-epochs", type=int, default=15, help="as `imgpipe demo` (default %(default)s)")
    p.add_argument("--epochs", type=int, default=30, help="head epochs, as the demo (default %(default)s)")
    p.add_argument(
        "--images", type=int, default=200, help="eval images timed per round (default %(default)s)"
    )
    p.add_argument("--threads", type=int, default=1, help="interpreter threads (default %(default)s)")
    args = p.parse_args(argv)
    common.quiet()
    rounds = common.repeats(args, default=3, quick=1)
    images_timed = 40 if args.quick else args.images
    pretrain_epochs = 2 if args.quick else args.pretrain_epochs
    epochs = 3 if args.quick else args.epochs

    import tensorflow as tf

    from trainer import export, tflite, train
    from trainer.config import TrainingConfig

    size = args.image_size
    source_weights = common.source_backbone(args.workdir, args.backbone, size, pretrain_epochs)
    _, target = common.demo_tasks(args.workdir, size)
    work = os.path.join(args.workdir, f"tflite_{args.backbone}_{size}")
    tfo = common.analyze(target, os.path.join(work, "transform"), args.backbone, size)
    params = TrainingConfig(
        backbone=args.backbone,
        weights=source_weights,
        image_size=size,
        epochs=epochs,
        learning_rate=1e-2,
        dropout=0.1,
    )
    train_files = common.split_files(target, "train")
    eval_files = common.split_files(target, "eval")
    result = train.train(train_files, eval_files, tfo, params, verbose=0)
    export_dir = os.path.join(work, "export")
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)
    export.export_serving_model(result.model, tfo, result.class_names, export_dir)
    saved_model_bytes = sum(
        os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(export_dir) for f in files
    )

    reference = tflite.saved_model_scores(export_dir, eval_files, tflite.MAX_CHECK_EXAMPLES)
    eval_images = tflite.resized_images(eval_files, size, tflite.MAX_CHECK_EXAMPLES)
    representative = tflite.resized_images(train_files, size, tflite.REPRESENTATIVE_IMAGES, seed=params.seed)
    num_classes = len(result.class_names)

    models: dict[str, bytes] = {}
    convert_s: dict[str, float] = {}
    agreement: dict[str, float] = {}
    # The agreement the Trainer's check holds: near-tie swaps count as agreeing.
    counted: dict[str, float] = {}
    for name in VARIANTS:
        t0 = time.perf_counter()
        models[name] = tflite.convert(
            result.model,
            args.backbone,
            size,
            num_classes,
            name,
            representative if name == "int8" else (),
        )
        convert_s[name] = time.perf_counter() - t0
        scores = tflite.tflite_scores(tflite.interpreter(models[name]), eval_images)
        agreement[name] = tflite.top1_agreement(scores, reference)
        near_ties = tflite.near_tie_disagreements(scores, reference)
        counted[name] = tflite.agreement_beyond_ties(agreement[name], near_ties, len(reference))
        common.say(
            f"[bench] {name}: {len(models[name]) / 1024:.0f} KB, agreement {agreement[name]:.4f} "
            f"({counted[name]:.4f} with near-ties)"
        )

    timed = eval_images[:images_timed]
    interpreters = {name: tflite.interpreter(content, args.threads) for name, content in models.items()}

    def per_image_ms(name: str) -> float:
        interpreter = interpreters[name]
        [inp] = interpreter.get_input_details()
        for image in timed[:5]:  # warm up
            interpreter.set_tensor(inp["index"], image[np.newaxis])
            interpreter.invoke()
        millis = []
        for image in timed:
            interpreter.set_tensor(inp["index"], image[np.newaxis])
            t0 = time.perf_counter()
            interpreter.invoke()
            millis.append((time.perf_counter() - t0) * 1000.0)
        return common.median(millis)

    tf_function = tflite.inference_function(result.model, args.backbone, size, num_classes)
    predict_images = tf.saved_model.load(export_dir).signatures["predict_images"]
    encoded = [image for image, _ in common.read_items(eval_files)][: len(timed)]

    def tf_ms(call, inputs) -> float:
        for x in inputs[:5]:  # warm up (and trace)
            call(x)
        millis = []
        for x in inputs:
            t0 = time.perf_counter()
            call(x)
            millis.append((time.perf_counter() - t0) * 1000.0)
        return common.median(millis)

    timers = {n: (lambda _r, n=n: per_image_ms(n)) for n in VARIANTS}
    timers[TF_FUNCTION] = lambda _r: tf_ms(lambda x: tf_function(tf.constant(x[np.newaxis])), timed)
    timers[SAVED_MODEL] = lambda _r: tf_ms(lambda b: predict_images(images=tf.constant([b])), encoded)
    runs = common.interleaved(timers, rounds, common.say)
    latency = {n: common.median(v) for n, v in runs.items()}

    common.emit(
        common.header(
            f"TFLite: size, latency and agreement per quantization, {args.backbone} {size}px (the demo's model)"
        )
    )
    common.emit(
        f"- SavedModel (full serving model, Transform graph included): {saved_model_bytes / 1024:.0f} KB; "
        f"{len(eval_images)} eval images checked, {len(representative)} train images calibrate int8; "
        f"latency: median per image over {len(timed)} images x {rounds} interleaved rounds, "
        f"{args.threads} interpreter thread(s), batch 1; the TensorFlow rows use TensorFlow's "
        "default threads (both cores)"
    )
    common.emit()
    rows = []
    for name in VARIANTS:
        rows.append(
            [
                name,
                len(models[name]) / 1024,
                len(models[name]) / len(models["float32"]),
                latency[name],
                latency[name] / latency["float32"],
                agreement[name],
                counted[name],
                tflite.MIN_AGREEMENT[name],
                convert_s[name],
            ]
        )
    for name, size_kb in ((TF_FUNCTION, float("nan")), (SAVED_MODEL, saved_model_bytes / 1024)):
        rows.append(
            [
                name,
                size_kb,
                size_kb * 1024 / len(models["float32"]),
                latency[name],
                latency[name] / latency["float32"],
                float("nan"),
                float("nan"),
                "",
                float("nan"),
            ]
        )
    common.emit(
        common.table(
            [
                "variant",
                "size KB",
                "size / float32",
                "ms per image",
                "latency / float32",
                "top-1 agreement",
                f"near-ties (< {tflite.TIE_MARGIN}) as agreeing",
                "required",
                "convert s",
            ],
            rows,
        )
    )
    common.emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
