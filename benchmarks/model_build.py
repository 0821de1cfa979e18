"""Building the model: tf_keras's own shape inference vs `trainer.shape_inference`, per backbone.

Each round is one fresh process per backbone. After one warm-up build (a process's first
build also pays the application module's import and TensorFlow's first ops), it builds the
classifier as the Trainer does (`trainer.model.build_model`: the backbone with weights
'none', re-wrapped, put under a new input with the head) twice, once with Keras's own
inference (`shape_inference.keras_own()`) and once without the scratch-graph traces, in
alternating order, and times the backbone's build and the whole `build_model` of each. The
two models are then compared: their layers' output shapes and dtypes, their weights' names
(Keras's automatic name counters aside) and shapes, and, with the first model's weights
copied into the second, their answers on the same random images (max abs difference).

    python -m benchmarks.model_build                          # every backbone, 3 rounds
    python -m benchmarks.model_build --quick                  # MobileNetV2 and DenseNet121, 1 round
    python -m benchmarks.model_build --backbones DenseNet121 --repeats 5
"""

from __future__ import annotations

from benchmarks import common

CHILD = r"""
import json, re, sys
import numpy as np
from benchmarks.fixed_costs import timer
from trainer import backbones
from trainer import model as model_lib
from trainer import shape_inference

name, order = sys.argv[1], sys.argv[2].split(",")
size = max(32, backbones.get(name).min_size)
model_lib.build_model(name, "none", size, 5)  # warm-up: imports, TensorFlow's first ops
build_backbone, build_model = model_lib.build_backbone, model_lib.build_model
built, times = {}, {}
for variant in order:
    times[variant] = {}
    model_lib.build_backbone = timer(times[variant], "backbone", build_backbone)
    own = shape_inference.keras_own() if variant == "keras" else shape_inference.static_shapes()
    with own:
        built[variant] = timer(times[variant], "build_model", build_model)(name, "none", size, 5)
model_lib.build_backbone = build_backbone

a, b = built["keras"], built["static"]
unnumbered = lambda s: re.sub(r"_\d+(?=[/:])", "", s)
same = {
    "output shapes": [l.output_shape for l in a.layers] == [l.output_shape for l in b.layers]
    and [l.output_shape for l in a.get_layer("backbone").layers]
    == [l.output_shape for l in b.get_layer("backbone").layers],
    "output dtypes": [str(l.output.dtype) for l in a.get_layer("backbone").layers]
    == [str(l.output.dtype) for l in b.get_layer("backbone").layers],
    "weight names": [unnumbered(w.name) for w in a.weights] == [unnumbered(w.name) for w in b.weights],
    "weight shapes": [tuple(w.shape) for w in a.weights] == [tuple(w.shape) for w in b.weights],
}
b.set_weights(a.get_weights())
x = np.random.default_rng(0).uniform(-1, 1, (4, size, size, 3)).astype("float32")
diff = float(np.abs(a(x, training=False).numpy() - b(x, training=False).numpy()).max())
print(json.dumps({"size": size, "times": times, "same": same, "max_abs_diff": diff}))
"""


def main() -> None:
    from trainer import backbones

    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=None, help="default: every registered backbone")
    args = p.parse_args()
    common.quiet()
    names = args.backbones or (["MobileNetV2", "DenseNet121"] if args.quick else backbones.names())
    for n in names:
        backbones.get(n)  # an unknown name fails here, naming the choices
    runs = common.repeats(args)
    results: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(runs):
        order = "keras,static" if r % 2 == 0 else "static,keras"
        for n in names:
            out = common.python_child(CHILD, [n, order], f"{n} round {r + 1}")
            results[n].append(out)
            t = out["times"]
            common.say(
                f"[bench] round {r + 1}/{runs} {n}: build_model keras {t['keras']['build_model']:.2f}s, "
                f"static {t['static']['build_model']:.2f}s"
            )
    rows = []
    for n in names:
        med = {
            (v, k): common.median([o["times"][v][k] for o in results[n]])
            for v in ("keras", "static")
            for k in ("backbone", "build_model")
        }
        same = all(all(o["same"].values()) for o in results[n])
        diff = max(o["max_abs_diff"] for o in results[n])
        rows.append(
            [
                n,
                results[n][0]["size"],
                med["keras", "backbone"],
                med["static", "backbone"],
                med["keras", "build_model"],
                med["static", "build_model"],
                f"{med['keras', 'build_model'] / med['static', 'build_model']:.2f}x",
                "yes" if same else "NO",
                diff,
            ]
        )
    common.emit(common.header("Building the model: Keras's shape inference vs static shapes"))
    common.emit(
        f"{runs} round(s), one fresh process per backbone and round, after a warm-up build; "
        "medians in seconds; the order of the two builds alternates by round."
    )
    common.emit()
    common.emit(
        common.table(
            [
                "backbone",
                "px",
                "backbone keras s",
                "backbone static s",
                "build_model keras s",
                "build_model static s",
                "speed-up",
                "same model",
                "max abs diff",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
