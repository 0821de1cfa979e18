"""What reading the orientation costs the decoder, in this tree or against another checkout.

The decoder (trainer/preprocessing.py) reads each image's orientation where Pillow's
exif_transpose reads it (EXIF, then XMP; in a PNG also after the image data) inside the
graph, for every image in training, evaluation and serving. This measures, per image:

- `exif_orientation` alone, mapped over a batch (`tf.map_fn` in one `tf.function`),
- `decode_and_resize` to 32 px over the same batch (the whole decode),

on Pillow-written images of the two sample photos: JPEGs of 64 x 64 without and with an
EXIF block (Orientation 1), 427 x 640 JPEGs, PNGs of 64 x 64 and 427 x 640, GIFs and BMPs
of 64 x 64 (their decode also places a GIF's frame on its screen, on white, and reads a BMP's
compression and bit masks). Each tree runs in
a child process of its own (PYTHONPATH set to it), the trees interleaved round by round;
medians of 15 calls per round, then the median over rounds.

    python -m benchmarks.orientation                          # this tree
    python -m benchmarks.orientation --against /path/to/old   # another checkout beside it
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks import common

CHILD = r"""
import io, json, sys, time
import numpy as np
import tensorflow as tf
from PIL import Image
from sklearn.datasets import load_sample_images
from trainer import preprocessing as pp

assert pp.__file__.startswith(sys.argv[1]), (pp.__file__, sys.argv[1])
photo = load_sample_images().images[0]
calls = int(sys.argv[2])

def enc(a, fmt, **kw):
    b = io.BytesIO()
    Image.fromarray(a).save(b, format=fmt, **kw)
    return b.getvalue()

exif = Image.Exif()
exif[0x0112] = 1
sets = {
    "JPEG 64 x 64": [enc(photo[i : i + 64, i : i + 64], "JPEG", quality=90) for i in range(256)],
    "JPEG 64 x 64, EXIF": [
        enc(photo[i : i + 64, i : i + 64], "JPEG", quality=90, exif=exif.tobytes()) for i in range(256)
    ],
    "JPEG 427 x 640": [enc(np.roll(photo, i, axis=1), "JPEG", quality=90) for i in range(32)],
    "PNG 64 x 64": [enc(photo[i : i + 64, i : i + 64], "PNG") for i in range(256)],
    "PNG 427 x 640": [enc(np.roll(photo, i, axis=1), "PNG") for i in range(16)],
    "GIF 64 x 64": [enc(photo[i : i + 64, i : i + 64], "GIF") for i in range(256)],
    "BMP 64 x 64": [enc(photo[i : i + 64, i : i + 64], "BMP") for i in range(256)],
}
out = {}
for name, data in sets.items():
    x = tf.constant(data)
    fns = {
        "orientation": tf.function(lambda x: tf.map_fn(pp.exif_orientation, x, fn_output_signature=tf.int32)),
        "decode": tf.function(lambda x: pp.decode_and_resize(x, 32)),
    }
    for what, fn in fns.items():
        fn(x)
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            fn(x).numpy()
            times.append(time.perf_counter() - t)
        out[f"{name}|{what}"] = 1e6 * float(np.median(times)) / len(data)
print(json.dumps(out))
"""


def measure(tree: str, calls: int) -> dict[str, float]:
    """Microseconds per image for every (set, measure), `tree`'s decoder in a child process."""
    tree = os.path.abspath(tree)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = tree  # the tree's modules, not the installed (editable) imgpipe's
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, tree, str(calls)], env=env, cwd=tree, capture_output=True, text=True
    )
    if proc.returncode:
        raise RuntimeError(f"the orientation benchmark in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--against", help="another checkout of imgpipe to measure beside this one")
    args = p.parse_args()
    common.quiet()
    runs = common.repeats(args, default=3, quick=1)
    calls = 5 if args.quick else 15
    trees = {"this tree": common.REPO}
    if args.against:
        trees = {f"{args.against}": args.against, **trees}
    results = common.interleaved(
        {name: (lambda r, tree=tree: measure(tree, calls)) for name, tree in trees.items()}, runs, common.say
    )
    common.emit(common.header("What reading the orientation costs the decoder (us per image)"))
    keys = list(results["this tree"][0])
    headers = ["images", "measure", *[f"{name} (median of {runs})" for name in trees]]
    if args.against:
        headers.append("this tree / the other")
    rows = []
    for key in keys:
        medians = [common.median([r[key] for r in results[name]]) for name in trees]
        row = [*key.split("|"), *medians]
        if args.against:
            row.append(medians[1] / medians[0])
        rows.append(row)
    common.emit(common.table(headers, rows))
    common.emit()


if __name__ == "__main__":
    main()
