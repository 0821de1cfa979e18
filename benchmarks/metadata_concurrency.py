"""Overlapping pipeline runs on one ML Metadata store: PostgreSQL server vs the SQLite file.

Four scenarios, each two `imgpipe run` processes started together (the second
`--stagger` seconds after the first) on the demo's target task (digits 5-9) with
a backbone pre-trained here:

    postgresql, two pipelines    pipeline_name a and b, one home, one PostgreSQL database
    postgresql, same pipeline    pipeline `imgpipe` twice, two homes, one PostgreSQL database
    sqlite, two pipelines        pipeline_name a and b, one home: one metadata.sqlite
    sqlite, same pipeline        pipeline `imgpipe` twice, one home: one metadata.sqlite

(SQLite lives in the home, so sharing the store means sharing the home.) For
each run: exit code, wall time, the component states, and the lineage check of
tests/lineage.py (one execution per component in the run's context, none
shared with the other run, the Trainer's model is the one evaluated and
pushed). The PostgreSQL server is a throwaway one (tests/postgres.py).

    python -m benchmarks.metadata_concurrency            # 4 scenarios (~25 min on 2 cores)
    python -m benchmarks.metadata_concurrency --quick    # 1 epoch
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from benchmarks import common

SCENARIOS = (
    ("postgresql", "two pipelines"),
    ("postgresql", "same pipeline"),
    ("sqlite", "two pipelines"),
    ("sqlite", "same pipeline"),
)


def _start(args: list[str], env: dict[str, str], log: str) -> subprocess.Popen:
    out = open(log, "w", encoding="utf-8")  # noqa: SIM115 - closed by the caller via proc.stdout
    return subprocess.Popen(
        [sys.executable, "-m", "imgpipe", "run", *args],
        stdout=subprocess.PIPE,
        stderr=out,
        text=True,
        env=env,
        cwd=common.REPO,
    )


def _tail(path: str, lines: int = 3) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        text = [ln.strip() for ln in f if ln.strip()]
    errors = [ln for ln in text if "error" in ln.lower()]
    return " | ".join((errors or text)[-lines:])


def run_scenario(store: str, kind: str, work: str, base: list[str], server, stagger: float) -> list[dict]:
    """Two overlapping runs; returns one result dict per run."""
    from imgpipe.orchestration import metadata
    from pipeline.config import PipelineConfig
    from tests import lineage

    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    env = dict(os.environ, PGPASSFILE=os.devnull)
    runs = []
    for i in range(2):
        name = ("a", "b")[i] if kind == "two pipelines" else "imgpipe"
        home = os.path.join(work, "home" if (store == "sqlite" or kind == "two pipelines") else f"home{i}")
        args = [
            *base,
            "--home",
            home,
            "--pipeline-name",
            name,
            "--serving-dir",
            os.path.join(work, f"serving{i}"),
        ]
        if store == "postgresql":
            db = "bench_" + kind.replace(" ", "_")
            args += ["--metadata", server.url(db)]
        runs.append({"name": name, "home": home, "args": args, "log": os.path.join(work, f"run{i}.log")})
    t0 = time.perf_counter()
    procs = []
    for i, r in enumerate(runs):
        if i:
            time.sleep(stagger)
        procs.append((r, _start(r["args"], env, r["log"]), time.perf_counter()))
    for r, proc, started in procs:
        stdout, _ = proc.communicate()
        r["code"] = proc.returncode
        r["wall"] = time.perf_counter() - started
        r["summary"] = (
            json.loads(stdout.strip().splitlines()[-1]) if proc.returncode == 0 and stdout.strip() else None
        )
    common.say(f"[bench] {store}, {kind}: both done in {time.perf_counter() - t0:.0f}s")
    for r in runs:
        r["problems"] = []
        r["states"] = ""
        if r["summary"] is None:
            r["problems"] = [f"exit {r['code']}: {_tail(r['log'])}"]
            continue
        states = r["summary"]["executions"]
        r["states"] = ", ".join(
            f"{s} {sum(v == s for v in states.values())}" for s in sorted(set(states.values()))
        )
        cfg_args = {"home": r["home"], "pipeline_name": r["name"]}
        if store == "postgresql":
            cfg_args["metadata"] = server.url("bench_" + kind.replace(" ", "_"))
        with metadata.open_store(PipelineConfig(**cfg_args)) as s:
            r["problems"] = lineage.problems(s, r["name"], r["summary"]["run_id"])
    return runs


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="head epochs (default 5, quick 1)")
    p.add_argument("--stagger", type=float, default=15.0, help="seconds between the two starts")
    p.add_argument("--only", choices=["postgresql", "sqlite"], help="run one store's scenarios")
    args = p.parse_args(argv)
    common.quiet()
    epochs = args.epochs or (1 if args.quick else 5)
    size = 32
    head = common.header("ML Metadata: two overlapping runs on one store, PostgreSQL vs SQLite")

    from tests import postgres

    _, target = common.demo_tasks(args.workdir, size)
    weights = common.source_backbone(args.workdir, "MobileNetV2", size, 10)
    base = [
        "--data", target, "--backbone", "MobileNetV2", "--weights", weights, "--image-size", str(size),
        "--epochs", str(epochs), "--learning-rate", "0.01", "--min-accuracy", "0.3", "--model-name", "digits",
    ]  # fmt: skip
    server = postgres.start()
    os.environ["PGPASSWORD"] = server.password  # for the runs, and for reading their lineage here
    rows = []
    try:
        for store, kind in SCENARIOS:
            if args.only and store != args.only:
                continue
            work = os.path.join(args.workdir, "metadata_concurrency", f"{store}_{kind.replace(' ', '_')}")
            for i, r in enumerate(run_scenario(store, kind, work, base, server, args.stagger)):
                rows.append(
                    [
                        store,
                        kind,
                        f"run {i + 1} ({r['name']})",
                        "ok" if r["code"] == 0 else f"exit {r['code']}",
                        r["wall"],
                        r["states"] or "-",
                        "; ".join(r["problems"]) or "correct",
                    ]
                )
    finally:
        server.stop()
    common.emit(head)
    common.emit(
        f"Two `imgpipe run` processes per scenario, the second started {args.stagger:.0f}s after the first; "
        f"{epochs} head epochs, MobileNetV2 {size}px, cache on (the default). Lineage: tests/lineage.py.\n"
    )
    common.emit(common.table(["store", "scenario", "run", "exit", "wall s", "states", "lineage"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
