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

from benchmarks import common

CHILD = (
    common.DECODER_CHILD_PRELUDE
    + r"""
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
        out[f"{name}|{what}"] = us_per_image(fn, x, len(data))
print(json.dumps(out))
"""
)


def main() -> None:
    common.trees_main(
        __doc__,
        "What reading the orientation costs the decoder (us per image)",
        "images|measure",
        CHILD,
        "the orientation benchmark",
    )


if __name__ == "__main__":
    main()
