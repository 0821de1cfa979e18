"""What a home's history costs: imgpipe's own ML Metadata work at a run's start, and a prune's
plan, on homes of 40, 160 and 640 earlier runs.

Before LocalDagRunner starts, a run repairs what dead runs left (unfinished executions,
models and served versions gone) and withdraws blessings of models that are not served
(`local._abandon_dead_executions`); `imgpipe prune --dry-run` plans what a prune removes.
Both read the pipeline's history, so their cost grows with it: a home scheduled hourly has
640 runs after four weeks. Each home is written as LocalDagRunner writes ML Metadata
(tests/mlmd_fixtures.py: 11 executions per run, the data components cached after the first
run, a new model blessed and pushed as a new version each run, a run record each).

Variants, each in its own process on the same homes, rounds interleaved: "this tree" and,
with `--baseline DIR`, the imgpipe code in DIR (a checkout of an earlier commit, e.g.
`git worktree add /tmp/base <commit>`). Per home size and operation: the median of the
rounds' medians of 3 calls, in milliseconds, and the ratio.

    python -m benchmarks.home_history --baseline /tmp/base          # 3 rounds
    python -m benchmarks.home_history --quick
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import common

SIZES = (40, 160, 640)
NODES = ("ImportExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Transform", "DataGate")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(parent: str, n: int) -> str:
    """A home with `n` runs of history; its folder."""
    from imgpipe.orchestration import runs
    from imgpipe.orchestration.summary import RunSummary
    from pipeline.config import PipelineConfig
    from tests.mlmd_fixtures import CACHED, FakeHome, model_files

    root = os.path.join(parent, f"history-{n}")
    home = FakeHome(os.path.join(root, "home"))
    config = PipelineConfig(
        home=home.home, serving_dir=os.path.join(root, "serving"), model_name="m", data_dir=root
    ).resolved()
    first: dict = {}
    for i in range(1, n + 1):
        run = f"2026-01-01T00:00:00.{i:06d}-r{i}"
        for node in NODES:
            if node in first:
                home.execute(run, node, reuse={"out": [first[node]]}, state=CACHED, size=10)
            else:
                first[node] = home.execute(run, node, outputs={"out": ("Examples", {})}, size=10)[1]["out"]
        made = home.execute(
            run,
            "Trainer",
            inputs={"examples": [first["Transform"]]},
            outputs={"model": ("Model", {}), "model_run": ("ModelRun", {})},
            size=10,
        )[1]
        model = made["model"]
        model_files(model, b"model %d" % i)
        home.execute(run, "latest_blessed_model_resolver")
        blessing = home.execute(
            run,
            "Evaluator",
            inputs={"model": [model]},
            outputs={
                "blessing": ("ModelBlessing", {"blessed": 1, "current_model_id": model.id}),
                "evaluation": ("ModelEvaluation", {}),
            },
            size=10,
        )[1]["blessing"]
        home.execute(
            run,
            "InfraValidator",
            inputs={"model": [model]},
            outputs={"blessing": ("InfraBlessing", {"blessed": 1})},
        )
        version = str(1_000_000 + i)
        dest = os.path.join(config.model_serving_dir, version)
        shutil.copytree(os.path.join(model.uri, "Format-Serving"), dest)
        home.execute(
            run,
            "Pusher",
            inputs={"model": [model], "model_blessing": [blessing]},
            outputs={
                "pushed_model": (
                    "PushedModel",
                    {"pushed": 1, "pushed_destination": dest, "pushed_version": version},
                )
            },
        )
        runs.write_record(config, RunSummary(run, True, dest, 0.9, 1, {}, sequence=i))
    return root


def measure(root: str) -> dict[str, float]:
    """In this process (the tree it was started in): seconds, the median of 3 calls each."""
    common.quiet()
    from imgpipe.orchestration import local
    from imgpipe.orchestration.prune import prune_home
    from pipeline.config import PipelineConfig

    config = PipelineConfig(
        home=os.path.join(root, "home"),
        serving_dir=os.path.join(root, "serving"),
        model_name="m",
        data_dir=root,
    ).resolved()
    out = {}
    for name, call in (
        ("a run's start", lambda: local._abandon_dead_executions(config, "bench")),
        ("prune --dry-run --keep 5", lambda: prune_home(config.home, 5, dry_run=True)),
    ):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        out[name] = common.median(times)
    return out


def _child(tree: str, root: str) -> dict[str, float]:
    """`measure(root)` in a fresh process importing imgpipe from `tree` (this file is loaded by
    its path, so the tree's own code is what runs)."""
    code = (
        "import importlib.util, json, sys\n"
        f"sys.path.insert(0, {tree!r})\n"
        f"spec = importlib.util.spec_from_file_location('home_history_bench', {os.path.abspath(__file__)!r})\n"
        "bench = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(bench)\n"
        f"result = bench.measure({root!r})\n"
        "sys.__stdout__.write(json.dumps(result) + '\\n')\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"measuring in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--baseline", metavar="DIR", help="an earlier checkout of imgpipe to compare with")
    args = p.parse_args(argv)
    rounds = common.repeats(args, default=3)
    common.quiet()
    trees = {"this tree": ROOT}
    if args.baseline:
        trees["baseline"] = os.path.abspath(args.baseline)
    rows = []
    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-history-") as parent:
        for n in SIZES:
            common.say(f"[home_history] building a home of {n} runs")
            root = build(parent, n)
            got = common.interleaved(
                {name: (lambda r, t=tree, h=root: _child(t, h)) for name, tree in trees.items()},
                rounds,
                say=common.say,
            )
            for op in got["this tree"][0]:
                new = common.median([g[op] for g in got["this tree"]])
                row = [n, op]
                if "baseline" in got:
                    old = common.median([g[op] for g in got["baseline"]])
                    row += [f"{old * 1000:.0f}", f"{new * 1000:.0f}", f"{new / old:.2f}x"]
                else:
                    row += ["", f"{new * 1000:.0f}", ""]
                rows.append(row)
            shutil.rmtree(root)
    common.emit(common.header("A home's history: ML Metadata work at a run's start and a prune's plan"))
    base = f" (baseline: {args.baseline})" if args.baseline else ""
    common.emit(f"Medians of {rounds} interleaved round(s), each the median of 3 calls{base}.\n")
    common.emit(common.table(["runs", "operation", "baseline ms", "this tree ms", "ratio"], rows))
    common.emit("")
    return 0


if __name__ == "__main__":
    sys.exit(main())
