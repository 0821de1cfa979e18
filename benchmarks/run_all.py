"""Run every benchmark, one process each, and print their markdown tables in order.

    python -m benchmarks.run_all              # each at its default size (~30-40 min here)
    python -m benchmarks.run_all --quick      # smoke run of each
    python -m benchmarks.run_all --only train roofline --out /tmp/bench.md

A benchmark that fails is reported with its exit code and the rest still run;
the exit code is non-zero if any failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = (
    "roofline",
    "tracing",
    "train",
    "transform",
    "scaling",
    "pipeline",
    "scale_run",
    "fixed_costs",
    "beam_memo",
    "fit_trace",
    "prepush_reference",
    "round_trip_report",
    "evaluator_batches",
    "precision_cost",
    "evaluator_graph",
    "standby_start",
    "gc_freeze",
    "autograph",
    "model_build",
    "static_shapes_run",
    "refit",
    "serving_latency",
    "metadata_concurrency",
    "tflite",
    "predict_batch",
    "gate_floor",
    "multi_device_iterator",
    "small_slices",
    "orientation",
    "decoder_graph",
    "run_records",
    "home_history",
    "label_record",
    "jpeg_idct",
    "image_index",
    "process_exit",
    "example_gen_key",
    "near_copies",
    "split_shift",
    "head_l2",
)
# serving_latency has its own flags (no --quick): a short run instead.
QUICK_ARGS = {"serving_latency": ["--requests", "50"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="pass --quick to each benchmark")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run just these")
    p.add_argument("--out", help="also write the combined markdown here")
    args = p.parse_args(argv)
    env = dict(
        os.environ,
        TF_USE_LEGACY_KERAS="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONWARNINGS="ignore",
    )
    names = [
        n for n in (args.only or BENCHMARKS) if os.path.exists(os.path.join(REPO, "benchmarks", f"{n}.py"))
    ]
    parts, failed = [], []
    for name in names:
        extra = []
        if args.quick:
            extra = QUICK_ARGS.get(name, ["--quick"])
        cmd = [sys.executable, "-m", f"benchmarks.{name}", *extra]
        print(f"[run_all] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, check=False)
        secs = time.perf_counter() - t0
        print(f"[run_all] {name}: exit {proc.returncode} in {secs:.0f}s", file=sys.stderr)
        if proc.returncode:
            failed.append(name)
            parts.append(f"### {name}\n\nFAILED with exit code {proc.returncode}\n")
        else:
            parts.append(proc.stdout)
        print(parts[-1], flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(parts))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
