"""`imgpipe predict-batch --model` vs a plain loop calling the SavedModel, images/s end to end.

Each variant is a fresh process, as a user runs it, timed from start to exit
(Python and TensorFlow start-up, model load, reading files, scoring, writing):

- plain loop: read every file, call the SavedModel's predict_images signature
  on batches of the same size, in one process (no checks, no output file);
- predict-batch, direct runner: the command, in-memory Beam runner, one worker;
- predict-batch, multiprocess runner: the command with one worker per CPU.

predict-batch also runs ingest's checks on every file (a Pillow decode and the
graph's own check) and writes a JSON-lines file and its report. Variants run
interleaved, medians of the rounds, ratios against the plain loop.

    python -m benchmarks.predict_batch                  # 1000 JPEGs, MobileNetV2 224px
    python -m benchmarks.predict_batch --quick          # 200 images, 1 round
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time

from benchmarks import common

NAME = "bench"


def make_model(workdir: str, image_size: int) -> str:
    """An exported MobileNetV2 classifier (random weights: the cost, not the answers, is measured)."""
    export_dir = os.path.join(workdir, f"model{image_size}")
    if os.path.exists(os.path.join(export_dir, "saved_model.pb")):
        return export_dir
    from tests import helpers
    from trainer import data, export
    from trainer import model as model_lib

    items = helpers.digit_images((0, 1, 2), per_class=5, size=32)
    tfo = helpers.analyze_transform(
        items, os.path.join(workdir, f"transform{image_size}"), image_size=image_size
    )
    classes = data.class_names(tfo)
    m = model_lib.build_model("MobileNetV2", "none", image_size, len(classes), dropout=0.0)
    return export.export_serving_model(m, tfo, classes, export_dir, top_k=3)


def make_images(workdir: str, count: int) -> str:
    """`count` distinct 320x240 JPEG crops of scikit-learn's sample photos, in 10 folders."""
    folder = os.path.join(workdir, f"images{count}")
    if os.path.isdir(folder) and sum(len(f) for _, _, f in os.walk(folder)) == count:
        return folder
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - 240), rng.integers(0, photo.shape[1] - 320)
        crop = Image.fromarray(photo[top : top + 240, left : left + 320])
        path = os.path.join(folder, f"part{i % 10}", f"{i:05d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        buffer = io.BytesIO()
        crop.save(buffer, format="JPEG", quality=90)
        with open(path, "wb") as handle:
            handle.write(buffer.getvalue())
    return folder


def plain_loop(images: str, export_dir: str, batch_size: int) -> None:
    """The baseline a user would write: list, read, call the signature in batches."""
    import tensorflow as tf

    signature = tf.saved_model.load(export_dir).signatures["predict_images"]
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(images) for f in files)
    scored = 0
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start : start + batch_size]:
            with open(path, "rb") as handle:
                batch.append(handle.read())
        out = signature(images=tf.constant(batch))
        scored += int(out["scores"].shape[0])
    sys.stdout.write(json.dumps({"scored": scored}) + "\n")  # read by _timed in the parent


def _timed(cmd: list[str]) -> tuple[float, dict]:
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=common.REPO, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=None, help="number of JPEGs (default 1000; --quick 200)")
    p.add_argument("--image-size", type=int, default=224, help="model input size (default 224)")
    p.add_argument("--batch-size", type=int, default=32, help="images per model call (default 32)")
    p.add_argument("--plain-loop", nargs=3, metavar=("IMAGES", "MODEL", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.plain_loop:
        plain_loop(args.plain_loop[0], args.plain_loop[1], int(args.plain_loop[2]))
        return 0
    common.quiet()
    count = args.images or (200 if args.quick else 1000)
    work = os.path.join(args.workdir, "predict_batch")
    os.makedirs(work, exist_ok=True)
    export_dir = make_model(work, args.image_size)
    images = make_images(work, count)
    workers = os.cpu_count() or 1
    out = os.path.join(work, "out.jsonl")
    batch = str(args.batch_size)
    cli = [sys.executable, "-m", "imgpipe", "predict-batch", "--model", export_dir, "--images", images]
    cli += ["--out", out, "--batch-size", batch, "--no-progress"]
    commands = {
        "plain loop (one process)": [
            sys.executable,
            "-m",
            "benchmarks.predict_batch",
            "--plain-loop",
            images,
            export_dir,
            batch,
        ],
        "predict-batch, direct runner": [*cli, "--beam-runner", "direct"],
        f"predict-batch, multiprocess runner ({workers} workers)": [
            *cli,
            "--beam-runner",
            "multiprocess",
            "--beam-workers",
            str(workers),
        ],
    }
    rounds = common.repeats(args, default=3, quick=1)

    def variant(cmd: list[str]):
        def run(_: int) -> float:
            seconds, result = _timed(cmd)
            if result.get("scored") != count:
                raise RuntimeError(f"scored {result.get('scored')} of {count}: {result}")
            return seconds

        return run

    seconds = common.interleaved({n: variant(c) for n, c in commands.items()}, rounds, say=common.say)
    base = common.median(seconds["plain loop (one process)"])
    rows = []
    for name, times in seconds.items():
        med = common.median(times)
        rows.append([name, med, count / med, base / med])
    common.emit(
        common.header(
            f"predict-batch: {count} JPEGs (320x240), MobileNetV2 {args.image_size}px, batch {args.batch_size}, "
            f"median of {rounds}"
        )
    )
    common.emit(common.table(["variant", "wall s", "images/s", "speed vs plain loop"], rows))
    common.emit(
        "\nWall time of a fresh process each (start-up, model load, reading, scoring, output). "
        "predict-batch also checks every file as ingest does and writes JSON lines + report."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
