"""The dev server's model unload, with and without its start-up objects frozen (gc.freeze).

Measured in paired fresh processes.

`imgpipe serve` frees an unloaded model version at once with a full garbage collection
(serving/devserver/manager.py: _unload), while its other versions take requests. A full
collection walks every object the process tracks, and most of them are what importing
TensorFlow made, which lives as long as the process. `imgpipe serve` now freezes those
(`gc.freeze()` after its imports), so the collection walks only what came after.

Each child imports what `imgpipe serve` imports (serving.devserver.lifecycle), freezes in
the "after" variant only, then loads and unloads the model version `--loads` times through
the server's ModelManager. Reported per variant: an unload (the version's close and the
full collection; median of the child's loads after the first), a full collection with
nothing new to free, and the ratio of the medians.

    python -m benchmarks.gc_freeze                         # the small digits model, 3 rounds
    python -m benchmarks.gc_freeze --base-path DIR --model-name NAME   # a served model
    python -m benchmarks.gc_freeze --quick                 # 1 round
"""

from __future__ import annotations

import os
import sys

from benchmarks import common

CHILD = r"""
import gc, json, statistics, sys, time
from serving.devserver import lifecycle  # noqa: F401  what `imgpipe serve` imports
from serving.devserver.manager import ModelManager

base, name, loads, variant = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if variant == "after":
    gc.freeze()
unloads = []
for _ in range(loads):
    manager = ModelManager(name, base, poll_seconds=3600, num_versions=1, run_warmup=True)  # no polls
    manager.start()
    t = time.perf_counter()
    manager.stop()
    unloads.append(time.perf_counter() - t)
bare = []
for _ in range(3):
    t = time.perf_counter()
    gc.collect()
    bare.append(time.perf_counter() - t)
print(json.dumps({"unload": statistics.median(unloads[1:] or unloads), "collect": statistics.median(bare),
                  "tracked": len(gc.get_objects()), "frozen": gc.get_freeze_count()}))
"""


def small_model_base(workdir: str) -> tuple[str, str]:
    """The serving tests' small digits model, staged as version 1 under workdir (made once)."""
    base = os.path.join(workdir, "gc_freeze_model", "serving")
    version = os.path.join(base, "digits", "1")
    if not os.path.isdir(version):
        from imgpipe.demo.classifier import build_serving_model

        common.say("[bench] building the small digits model (about a minute)")
        made = build_serving_model(os.path.join(workdir, "gc_freeze_model", "build"))
        os.makedirs(os.path.dirname(version), exist_ok=True)
        os.rename(made.export_dir, version)
    return os.path.join(base, "digits"), "digits"


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--base-path", help="a model base path with integer version folders (default: build one)")
    p.add_argument("--model-name", default="digits", help="the model's name (with --base-path)")
    p.add_argument("--loads", type=int, default=4, help="loads and unloads per child process")
    args = p.parse_args(argv)
    common.quiet()
    runs = common.repeats(args)
    base, name = (args.base_path, args.model_name) if args.base_path else small_model_base(args.workdir)

    def variant(which: str):
        return lambda r: common.python_child(CHILD, [base, name, str(args.loads), which], f"{which} child")

    results = common.interleaved({"before": variant("before"), "after": variant("after")}, runs, common.say)
    rows = []
    for which in ("before", "after"):
        rs = results[which]
        rows.append(
            [
                "frozen after the imports" if which == "after" else "as before",
                common.median([r["unload"] for r in rs]),
                common.median([r["collect"] for r in rs]),
                int(common.median([r["tracked"] for r in rs])),
                int(common.median([r["frozen"] for r in rs])),
            ]
        )
    ratio = rows[1][1] / rows[0][1]
    common.emit(common.header(f"gc.freeze in the dev server: a model unload, {runs} rounds, fresh processes"))
    common.emit(f"- model: `{base}` ({name}); {args.loads} loads per process, the first not counted")
    common.emit()
    common.emit(
        common.table(
            ["variant", "unload s (median)", "full collection s", "objects tracked", "frozen"],
            rows,
        )
    )
    common.emit()
    common.emit(f"unload after / before: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
