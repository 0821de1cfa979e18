"""The Evaluator's graph optimisation: Grappler's rewrites of each model TFMA loads, on vs auto.

A loaded model's first call has TensorFlow's graph optimiser (Grappler) rewrite its serving
graph: ~2 s for the demo's DenseNet121, once per model. `gate.eval_graph_optimization: auto`
(the default, components/graph_optimization.py) turns the rewrites off for an eval split
with fewer pixels than ~50 images at 224 px, where they cannot pay that back; the demo's
179 eval images of 32x32 px are far below it.

Each round runs two fresh processes, in alternating order: "on" (the rewrites as before)
and "auto". Each makes, in a fresh pipeline home, a first run of the demo's target task and
a run on new eval data (both train; the second's Evaluator also evaluates the first model as
its baseline). Reported: medians of the whole run and of the Evaluator's seconds (ML
Metadata), the ratio of the medians, and the gate's numbers (the same in both variants, or
the table says which differ). `--per-call` instead times the first and later calls of
saved models' serving signatures, rewrites on and off, in fresh processes (no pipeline):
the cost and the gain the threshold weighs.

    python -m benchmarks.evaluator_graph                          # DenseNet121 32px, 3 rounds
    python -m benchmarks.evaluator_graph --per-call               # first/later calls, 32 and 224 px
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks import common

VARIANTS = {"on": "on", "auto": "auto"}

# --per-call: one saved model per (backbone, size), a batch of BATCH random images, CALLS calls.
PER_CALL_MODELS = (("MobileNetV2", 32), ("DenseNet121", 32), ("MobileNetV2", 224), ("DenseNet121", 224))
BATCH = 64
CALLS = 5

CALL_CHILD = r"""
import json, statistics, sys, time
import numpy as np, tensorflow as tf
path, rewrites = sys.argv[1], sys.argv[2] == "on"
if not rewrites:
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
f = tf.saved_model.load(path).signatures["serving_default"]
spec = list(f.structured_input_signature[1].values())[0]
x = tf.constant(np.random.default_rng(0).uniform(0, 255, (int(sys.argv[3]), *spec.shape[1:])).astype("float32"))
seconds = []
for _ in range(int(sys.argv[4])):
    t = time.perf_counter()
    [y.numpy() for y in f(x).values()]
    seconds.append(time.perf_counter() - t)
print(json.dumps({"first": seconds[0], "later": statistics.median(seconds[1:])}))
"""


def child(args) -> dict:
    from imgpipe.demo import steps as demo

    make = demo.target_config
    demo.target_config = lambda *a, **k: make(*a, **k).replace(eval_graph_optimization=args.graph)

    def record(summary, wall: float, comps: dict) -> dict:
        out = common.evaluator_run_record(summary, wall, comps)
        out["graph_optimization"] = ((summary.gate or {}).get("tfma_run") or {}).get("graph_optimization")
        return out

    return common.first_and_new_eval_runs(args, record)


def _saved_model(workdir: str, backbone: str, size: int) -> str:
    """A frozen-backbone classifier (random weights: the time does not depend on them) saved
    with a float-image serving signature, made once under workdir."""
    path = os.path.join(workdir, "evaluator_graph", f"{backbone}_{size}")
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    import tensorflow as tf
    import tf_keras as keras

    from trainer import backbones

    base = backbones.get(backbone).constructor()(
        include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg"
    )
    model = keras.Sequential([base, keras.layers.Dense(10, activation="softmax")])

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    def serve(images):
        return {"scores": model(images, training=False)}

    tf.saved_model.save(model, path, signatures={"serving_default": serve})
    return path


def per_call(args, rounds: int) -> None:
    paths = {(b, s): _saved_model(args.workdir, b, s) for b, s in PER_CALL_MODELS}
    results: dict[tuple, dict[str, list[dict]]] = {key: {"on": [], "off": []} for key in paths}
    for r in range(rounds):
        for key, path in paths.items():
            for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
                out = subprocess.run(
                    [sys.executable, "-c", CALL_CHILD, path, mode, str(BATCH), str(CALLS)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                results[key][mode].append(json.loads(out.strip().splitlines()[-1]))
                common.say(f"[bench] round {r + 1}/{rounds} {key} rewrites {mode}: {results[key][mode][-1]}")
    common.emit(
        common.header(f"The serving signature's calls with and without Grappler's rewrites, batch {BATCH}")
    )
    common.emit(
        f"Each cell: the median over {rounds} fresh processes (order alternating) of the first call's "
        f"seconds and of the median of the {CALLS - 1} later calls. One-off cost of the rewrites = "
        "(first - later) on minus (first - later) off; gain per image = (later off - later on) / batch.\n"
    )
    rows = []
    for (backbone, size), modes in results.items():
        m = {
            mode: {k: common.median([x[k] for x in xs]) for k in ("first", "later")}
            for mode, xs in modes.items()
        }
        one_off = (m["on"]["first"] - m["on"]["later"]) - (m["off"]["first"] - m["off"]["later"])
        gain_ms = 1000 * (m["off"]["later"] - m["on"]["later"]) / BATCH
        rows.append(
            [
                f"{backbone} {size}px",
                m["on"]["first"],
                m["on"]["later"],
                m["off"]["first"],
                m["off"]["later"],
                one_off,
                f"{gain_ms:.2f}",
                f"{one_off * 1000 / gain_ms:.0f}" if gain_ms > 0.01 else "never",
            ]
        )
    common.emit(
        common.table(
            [
                "model",
                "on: first s",
                "on: later s",
                "off: first s",
                "off: later s",
                "one-off cost s",
                "gain ms/image",
                "images to pay back",
            ],
            rows,
        )
    )
    common.emit("")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--per-call" in argv:
        p = common.parser(__doc__.splitlines()[0])
        p.add_argument("--per-call", action="store_true")
        args = p.parse_args(argv)
        common.quiet()
        per_call(args, common.repeats(args))
        return 0
    paired = common.paired_evaluator_main(
        argv,
        __doc__.splitlines()[0],
        "benchmarks.evaluator_graph",
        child,
        "graph",
        VARIANTS,
        "The Evaluator's graph optimisation: on vs auto",
        "on",
        "auto",
    )
    if paired is None:
        return 0
    _, results = paired
    choice = {name: rs[0][common.RUN_KINDS[0]]["graph_optimization"] for name, rs in results.items()}
    common.emit(f"\nGraph optimisation of the Evaluator's models (gate.json's tfma_run): {choice}")
    common.emit("")
    return 0


if __name__ == "__main__":
    sys.exit(main())
