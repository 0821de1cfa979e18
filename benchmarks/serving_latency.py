"""Latency and throughput of `predict_images` through the local gRPC server vs in-process.

In one run, on loopback only: the same SavedModel is called
(a) in-process through its `predict_images` signature, (b) through
`imgpipe serve` (a separate process, like a deployment) with the gRPC client,
and (c) through `imgpipe log-proxy` in front of that server (a third process,
logging every call, as production's request logger in front of TF Serving),
each at concurrency 1 and 8, one image per request, a bounded number of
requests. Prints a markdown table with p50/p99 latency, throughput and the
served/in-process ratios (ratios, not absolute numbers, are what compare
across runs on a shared machine).

    python -m benchmarks.serving_latency                  # builds a small model (~1 min)
    python -m benchmarks.serving_latency --export-dir DIR --requests 400
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from benchmarks import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_NAME = "bench"


def bench_images(count: int = 16) -> list[bytes]:
    """Real images: scikit-learn's two photos (JPEG, 256 px) and digits (PNG)."""
    from imgpipe.demo.data import digit_images, sample_photos

    images = [jpeg for _, jpeg, _ in sample_photos(size=256, quality=75)]
    images += [img for img, _ in digit_images((0, 1, 2), per_class=max(1, count // 3))]
    return images[:count]


def measure(
    call: Callable[[bytes], object],
    images: Sequence[bytes],
    requests: int,
    concurrency: int,
) -> dict[str, float]:
    """Send `requests` single-image calls from `concurrency` threads; latencies in ms."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        start = time.perf_counter()
        call(images[i % len(images)])
        elapsed = (time.perf_counter() - start) * 1000.0
        with lock:
            latencies.append(elapsed)

    for i in range(min(10, requests)):  # warm up this path and thread count
        one(i)
    latencies.clear()
    wall = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - wall
    lat = np.array(latencies)
    return {
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "rps": requests / wall,
    }


def start_server_process(base_path: str, timeout: float = 300.0) -> tuple[subprocess.Popen, int]:
    """`imgpipe serve` on a free loopback port; returns (process, port)."""
    cmd = ["serve", "--model-base-path", base_path, "--model-name", MODEL_NAME]
    return _start(cmd, r"Serving model .* on 127\.0\.0\.1:(\d+)", timeout)


def start_proxy_process(target: str, log_dir: str, timeout: float = 300.0) -> tuple[subprocess.Popen, int]:
    """`imgpipe log-proxy` in front of `target`, logging every call to `log_dir`; (process, port)."""
    cmd = ["log-proxy", "--target", target, "--log-requests", log_dir]
    return _start(cmd, r"Forwarding calls on 127\.0\.0\.1:(\d+)", timeout)


def _start(args: list[str], started: str, timeout: float) -> tuple[subprocess.Popen, int]:
    """`imgpipe ARGS` on a free loopback port, once its stderr says `started` (the port its group)."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "imgpipe", *args, "--port", "0", "--host", "127.0.0.1"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    tail: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        tail = (tail + [line])[-20:]
        m = re.search(started, line)
        if m:
            # Keep draining stderr so the server never blocks on a full pipe.
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, int(m.group(1))
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError(f"imgpipe {args[0]} did not start:\n" + "".join(tail))


def run(export_dir: str, requests: int, concurrencies: Sequence[int]) -> list[dict]:
    import tensorflow as tf

    from serving.client import ServingClient

    images = bench_images()
    signature = tf.saved_model.load(export_dir).signatures["predict_images"]

    def in_process(image: bytes) -> object:
        return signature(images=tf.constant([image]))["scores"].numpy()

    rows = []

    def measured(path: str, call: Callable[[bytes], object]) -> None:
        rows.extend(
            {"path": path, "concurrency": c, **measure(call, images, requests, c)} for c in concurrencies
        )

    def through(target: str, path: str) -> None:
        with ServingClient(target, timeout=60.0) as client:
            measured(path, lambda image: client.predict_images(MODEL_NAME, [image]))

    measured("in-process", in_process)
    workdir = tempfile.mkdtemp(prefix="imgpipe-bench-")
    base = os.path.join(workdir, MODEL_NAME)
    shutil.copytree(export_dir, os.path.join(base, "1"))
    proc, port = start_server_process(base)
    try:
        through(f"127.0.0.1:{port}", "gRPC server")
        proxy, proxy_port = start_proxy_process(f"127.0.0.1:{port}", os.path.join(workdir, "logs"))
        try:
            through(f"127.0.0.1:{proxy_port}", "gRPC server via log-proxy")
        finally:
            proxy.terminate()
            proxy.wait(timeout=60)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def table(rows: list[dict], requests: int) -> str:
    base = {r["concurrency"]: r for r in rows if r["path"] == "in-process"}
    out = [
        f"predict_images, 1 image/request, {requests} requests per row, loopback",
        "",
        "| path | concurrency | p50 ms | p99 ms | req/s | p50 vs in-process | req/s vs in-process |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = base[r["concurrency"]]
        out.append(
            f"| {r['path']} | {r['concurrency']} | {r['p50']:.1f} | {r['p99']:.1f} | "
            f"{r['rps']:.1f} | {r['p50'] / ref['p50']:.2f}x | {r['rps'] / ref['rps']:.2f}x |"
        )
    direct = {r["concurrency"]: r for r in rows if r["path"] == "gRPC server"}
    for r in rows:
        if r["path"] == "gRPC server via log-proxy" and r["concurrency"] in direct:
            d = direct[r["concurrency"]]
            out.append(
                f"\nlog-proxy against the server called directly, concurrency {r['concurrency']}: p50 "
                f"{r['p50'] / d['p50']:.2f}x ({r['p50'] - d['p50']:+.1f} ms), req/s {r['rps'] / d['rps']:.2f}x"
            )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-dir", help="a SavedModel with predict_images (default: build one)")
    parser.add_argument("--requests", type=int, default=200, help="requests per row")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be >= 1")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    export_dir = args.export_dir
    if export_dir is None:
        from imgpipe.demo.classifier import build_serving_model

        print("building the small digits model (about a minute)...", file=sys.stderr)
        export_dir = build_serving_model(tempfile.mkdtemp(prefix="imgpipe-bench-model-")).export_dir
    rows = run(export_dir, args.requests, args.concurrency)
    print(common.machine())
    print()
    print(table(rows, args.requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
