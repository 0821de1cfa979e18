"""What the decoder's graph costs each graph that holds it, in this tree or against another checkout.

Every graph that reads encoded images holds the decoder (trainer/preprocessing.py): the
Transform graph, the Trainer's and the extraction's tf.data maps, every serving signature,
the model server's and TFMA's loads of them. Beside what it costs per image, it costs each
such graph a fixed amount when TensorFlow first runs it (instantiation: the graph inlined,
rewritten by Grappler, its kernels made). This measures, in a fresh child process per tree:

- `trace`: building the decoder's graph (`decode_and_resize`'s function, once per process);
- `first iterator`: the first iterator of a tf.data map over it (what a fit or an extraction
  pays for each new dataset);
- `first call`: the first call of the traced function;
- `load + first call`: a SavedModel whose signature decodes, saved and loaded again in the
  same process, and its first call (what the dev server or TFMA pays per model);
- `TF1 session: load + first run`: the same SavedModel loaded into a TF1 session and run once,
  as TF Serving and the report run a model;
- per image, the decode to 32 px of batches of 64 x 64 JPEGs, PNGs, GIFs and BMPs and of
  427 x 640 JPEGs (the two sample photos; medians of 15 calls);
- the header's block walk over a crafted GIF of 200,000 sub-blocks (median of 3 calls).

The trees run interleaved round by round, each in a child process of its own (PYTHONPATH
set to it); the median over rounds is reported.

    python -m benchmarks.decoder_graph                          # this tree
    python -m benchmarks.decoder_graph --against /path/to/old   # another checkout beside it
"""

from __future__ import annotations

from benchmarks import common

CHILD = (
    common.DECODER_CHILD_PRELUDE
    + r"""
sets = {
    "JPEG 64 x 64": [enc(photo[i : i + 64, i : i + 64], "JPEG", quality=90) for i in range(64)],
    "JPEG 427 x 640": [enc(np.roll(photo, i, axis=1), "JPEG", quality=90) for i in range(16)],
    "PNG 64 x 64": [enc(photo[i : i + 64, i : i + 64], "PNG") for i in range(64)],
    "GIF 64 x 64": [enc(photo[i : i + 64, i : i + 64], "GIF") for i in range(64)],
    "BMP 64 x 64": [enc(photo[i : i + 64, i : i + 64], "BMP") for i in range(64)],
}
out = {}
decode = pp._decode_and_resize_function(32, pp.DEFAULT_MAX_PIXELS)
t = time.perf_counter()
decode.get_concrete_function()
out["trace|s"] = time.perf_counter() - t

ds = tf.data.Dataset.from_tensor_slices(sets["JPEG 64 x 64"]).batch(16).map(decode)
t = time.perf_counter()
iterator = iter(ds)
out["first iterator|s"] = time.perf_counter() - t
for _ in iterator:
    pass

x = tf.constant(sets["PNG 64 x 64"][:8])
t = time.perf_counter()
decode(x).numpy()
out["first call|s"] = time.perf_counter() - t

class Module(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(self, images):
        return {"pixels": tf.reduce_mean(decode(images), axis=[1, 2, 3])}

with tempfile.TemporaryDirectory() as d:
    tf.saved_model.save(Module(), d)
    t = time.perf_counter()
    loaded = tf.saved_model.load(d)
    loaded.signatures["serving_default"](images=x)["pixels"].numpy()
    out["load + first call|s"] = time.perf_counter() - t
    # As TF Serving and the report run a model: the MetaGraph in a TF1 session.
    graph = tf.Graph()
    t = time.perf_counter()
    with tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], d)
        signature = meta.signature_def["serving_default"]
        (feed,) = [v.name for v in signature.inputs.values()]
        session.run(signature.outputs["pixels"].name, {feed: sets["PNG 64 x 64"][:8]})
    out["TF1 session: load + first run|s"] = time.perf_counter() - t

for name, data in sets.items():
    out[f"{name}|us per image"] = us_per_image(decode, tf.constant(data), len(data))
# A crafted GIF whose first image is 200,000 one-byte sub-blocks: the header's block walk.
screen = b"GIF89a" + (8).to_bytes(2, "little") * 2 + b"\x00\x00\x00"
descriptor = b"\x2c" + b"\x00\x00" * 2 + (8).to_bytes(2, "little") * 2 + b"\x00"
blocks = tf.constant(screen + descriptor + b"\x02" + b"\x01\x00" * 200_000 + b"\x00\x3b")
shape = tf.function(pp.image_shape, input_signature=[tf.TensorSpec([], tf.string)])
shape(blocks)
times = []
for _ in range(3):
    t = time.perf_counter()
    [v.numpy() for v in shape(blocks)]
    times.append(time.perf_counter() - t)
out["GIF of 200,000 sub-blocks, header walk|s"] = float(np.median(times))
print(json.dumps(out))
"""
)


def main() -> None:
    common.trees_main(
        __doc__,
        "What the decoder's graph costs each graph that holds it",
        "measure|unit",
        CHILD,
        "the decoder graph benchmark",
    )


if __name__ == "__main__":
    main()
