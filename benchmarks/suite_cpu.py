"""The test suite's CPU, by file and by test: where `make test`'s seconds go.

`make test` keeps both cores busy from start to end (pytest-xdist, one worker per
core), so the suite gets shorter only when its CPU work shrinks. This runs it with
the suite's `--cpu-log` option (tests/conftest.py): each test's wall time, the CPU
seconds of its worker process, and those of the child processes it waited for
(CLI runs, Airflow commands, model servers, Beam's worker processes, trainings
in a fresh process). Then it prints the totals, the files and the tests by CPU.

    python -m benchmarks.suite_cpu                       # runs `make test` (~8 min here)
    python -m benchmarks.suite_cpu --log FILE            # summarises an earlier log
    python -m benchmarks.suite_cpu --top 30 -- -x        # arguments after -- go to pytest

A child process is counted for the test during which it was waited for; one left
running (a server stopped without a wait) counts for the test that reaps it, or
for none, so the children's column is a lower bound.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

from benchmarks import common

FIELDS = ("test", "worker", "start", "wall", "cpu", "children_cpu")


def read_log(path: str) -> list[dict]:
    """The records of a --cpu-log file; a line that is not one is refused with its number."""
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n}: not JSON ({e.msg}): {line.strip()[:80]!r}") from None
            missing = [k for k in FIELDS if not isinstance(record, dict) or k not in record]
            if missing:
                raise ValueError(f"{path}, line {n}: not a --cpu-log record (no {', '.join(missing)})")
            records.append(record)
    return records


def summarise(records: list[dict], top: int) -> str:
    """Markdown: totals per worker, then the `top` files and tests by CPU (own + children)."""
    if not records:
        raise SystemExit("the log holds no tests")
    out = []
    workers = collections.defaultdict(list)
    for r in records:
        workers[r["worker"] or "main"].append(r)
    rows = []
    for w, rs in sorted(workers.items()):
        span = max(r["start"] + r["wall"] for r in rs) - min(r["start"] for r in rs)
        cpu = sum(r["cpu"] + r["children_cpu"] for r in rs)
        own = sum(r["cpu"] for r in rs)
        rows.append(
            [
                w,
                len(rs),
                round(span, 1),
                round(own, 1),
                round(cpu - own, 1),
                f"{cpu / span:.2f}" if span else "n/a",
            ]
        )
    out.append(common.table(["worker", "tests", "span s", "own CPU s", "children CPU s", "CPU / span"], rows))
    files = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for r in records:
        f = files[r["test"].split("::", 1)[0]]
        f[0] += 1
        f[1] += r["wall"]
        f[2] += r["cpu"]
        f[3] += r["children_cpu"]
    total = sum(v[2] + v[3] for v in files.values())
    ranked = sorted(files.items(), key=lambda kv: -(kv[1][2] + kv[1][3]))
    out.append("")
    out.append(
        f"{len(records)} tests in {len(files)} file{'s' if len(files) > 1 else ''}: {total:.0f} CPU seconds "
        f"({sum(v[2] for v in files.values()):.0f} in the workers, "
        f"{sum(v[3] for v in files.values()):.0f} in the children they waited for), "
        f"{sum(v[1] for v in files.values()):.0f} s of summed wall time."
    )
    out.append("")
    out.append(
        common.table(
            ["file", "tests", "wall s", "own CPU s", "children CPU s", "share of CPU"],
            [
                [
                    name,
                    n,
                    round(wall, 1),
                    round(cpu, 1),
                    round(ch, 1),
                    f"{(cpu + ch) / total:.1%}" if total else "n/a",
                ]
                for name, (n, wall, cpu, ch) in ranked[:top]
            ],
        )
    )
    out.append("")
    tests = sorted(records, key=lambda r: -(r["cpu"] + r["children_cpu"]))
    out.append(
        common.table(
            ["test", "wall s", "own CPU s", "children CPU s"],
            [
                [r["test"], round(r["wall"], 1), round(r["cpu"], 1), round(r["children_cpu"], 1)]
                for r in tests[:top]
            ],
        )
    )
    return "\n".join(out)


def run_suite(pytest_args: list[str], log: str) -> float:
    """`make test` with --cpu-log; its wall seconds. Its output goes to stderr."""
    args = " ".join([f"--cpu-log={shlex.quote(log)}", *map(shlex.quote, pytest_args)])
    common.say(f"[bench] make test PYTEST_ARGS={args!r} (the whole suite)")
    t0 = time.perf_counter()
    done = subprocess.run(["make", "test", f"PYTEST_ARGS={args}"], cwd=common.REPO, stdout=sys.stderr)
    seconds = time.perf_counter() - t0
    if done.returncode:
        common.say(f"[bench] make test exited with {done.returncode}: the tests that ran are still counted")
    return seconds


def main(argv=None) -> int:
    # Not common.parser: --quick, --repeats and --workdir mean nothing for the test suite.
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--log", help="summarise this --cpu-log file instead of running the suite")
    p.add_argument("--top", type=int, default=20, help="files and tests listed (default %(default)s)")
    p.add_argument("pytest_args", nargs="*", help="after --: more arguments for pytest")
    args = p.parse_args(argv)
    if args.top < 1:
        p.error("--top must be at least 1")
    common.quiet()
    head = common.header("Test suite: CPU by file and test (`--cpu-log`)")
    if args.log:
        if not os.path.isfile(args.log):
            p.error(f"--log {args.log}: no such file")
        log, wall = args.log, None
    else:
        log = os.path.join(tempfile.mkdtemp(prefix="suite-cpu-"), "cpu.jsonl")
        wall = run_suite(args.pytest_args, log)
        if not os.path.isfile(log):
            raise SystemExit("the suite wrote no --cpu-log lines (did pytest start?)")
    common.emit(head)
    if wall is not None:
        common.emit(f"`make test`: {wall:.0f} s of wall time; log {log}")
        common.emit()
    try:
        records = read_log(log)
    except ValueError as e:
        raise SystemExit(f"suite_cpu: {e}") from None
    common.emit(summarise(records, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
