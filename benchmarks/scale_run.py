"""Scale: `imgpipe run` on 4x the data: wall time, per-component time and peak memory.

Issue 13's scale target: 4x data <= 4.4x time and peak memory <= 4 GiB for
`imgpipe run` at 30k images, 96 px. For each size (default 7,500 and 30,000
images: the demo's target task, digits 5-9 written at the image size, replicated
by `common.replicate_images` with small random affine changes since ingest drops
identical bytes), once:

- `python -m imgpipe ingest` of the folder (the demo's split settings), timed;
- `python -m imgpipe run --config` with the demo's settings (the head's epoch
  cap, the gate, pre-push validation on) in a fresh home, timed from process
  start to exit.

Memory is the resident set of the whole process tree (the run and the model
server it starts for pre-push validation), sampled every 0.2 s with psutil:
its peak over the run and within each component's ML Metadata execution span.
The backbone is pre-trained here on digits 0-4 at the same size.

    python -m benchmarks.scale_run                           # MobileNetV2, 96px, 7500 and 30000 images
    python -m benchmarks.scale_run --sizes 1000 4000 --quick # a smoke test
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time

from benchmarks import common

GIB = 1024**3


class TreeMemory:
    """Samples the summed RSS of a process and its descendants on a thread: (epoch s, bytes) pairs."""

    def __init__(self, every: float = 0.2):
        self._root = None
        self._every = every
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                procs = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:
                return  # the process has exited
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass  # a child that exited between the listing and the read
            self.samples.append((time.time(), total))
            self._stop.wait(self._every)

    def watching(self, pid: int) -> TreeMemory:
        """Sample process `pid` and its descendants while the returned block runs."""
        import psutil

        self._root = psutil.Process(pid)
        return self

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float = float("-inf"), end: float = float("inf")) -> int:
        inside = [rss for t, rss in self.samples if start <= t <= end]
        return max(inside, default=0)


def component_spans(config) -> dict[str, tuple[str, float, float]]:
    """Node id -> (state, start epoch s, end epoch s) of the latest run's executions."""
    from imgpipe.orchestration import metadata as mlmd

    with mlmd.open_store(config) as store:
        run = mlmd.latest_run(store, config.pipeline_name)
        return {
            node: (
                mlmd.state_name(e),
                e.create_time_since_epoch / 1000.0,
                e.last_update_time_since_epoch / 1000.0,
            )
            for node, e in mlmd.run_executions(store, config.pipeline_name, run).items()
        }


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default="MobileNetV2")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="image counts (7500 30000)")
    p.add_argument("--epochs", type=int, default=None, help="head epoch cap (default 30, quick 5)")
    p.add_argument("--pretrain-epochs", type=int, default=10)
    args = p.parse_args(argv)
    common.quiet()
    sizes = args.sizes or ([500, 2000] if args.quick else [7500, 30000])
    size, epochs = args.image_size, args.epochs or (5 if args.quick else 30)
    head = common.header(
        f"Scale: `imgpipe run` at {' and '.join(map(str, sizes))} images, {args.backbone} {size}px"
    )

    from imgpipe.demo import steps as demo

    common.demo_tasks(args.workdir, size)
    weights = common.source_backbone(args.workdir, args.backbone, size, args.pretrain_epochs)
    data_root = os.path.join(args.workdir, f"digits{size}")
    py = sys.executable
    results = {}
    for n in sizes:
        images = os.path.join(data_root, "images", f"target_n{n}")
        common.say(f"[bench] {n} images: replicating the target task into {images}")
        common.replicate_images(os.path.join(data_root, "images", "target"), images, n)
        d = os.path.join(args.workdir, f"scale_{args.backbone}_{size}", f"n{n}")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        tfrecords = os.path.join(d, "tfrecords")
        ingest_mem = TreeMemory()
        ingest_s, ingest_out = common.json_process(
            [py, "-m", "imgpipe", "ingest", "--images", images, "--out", tfrecords]
            + ["--eval-fraction", "0.2", "--seed", "42"],
            os.path.join(d, "ingest.log"),
            watch=ingest_mem.watching,
        )
        common.say(f"[bench] {n} images: ingest {ingest_s:.1f}s")
        cfg = demo.target_config(d, tfrecords, args.backbone, weights, size, epochs, min_accuracy=0.5)
        config_file = os.path.join(d, "config.yaml")
        cfg.save(config_file)
        memory = TreeMemory()
        run_s, summary = common.json_process(
            [py, "-m", "imgpipe", "run", "--config", config_file],
            os.path.join(d, "run.log"),
            watch=memory.watching,
        )
        spans = component_spans(cfg)
        common.say(f"[bench] {n} images: run {run_s:.1f}s, peak {memory.peak() / GIB:.2f} GiB")
        results[n] = {
            "ingest": ingest_s,
            "ingest_peak": ingest_mem.peak(),
            "records": ingest_out.get("counts"),
            "run": run_s,
            "peak": memory.peak(),
            "accuracy": summary.get("accuracy"),
            "blessed": summary.get("blessed"),
            "components": {
                node: (state, end - start, memory.peak(start, end))
                for node, (state, start, end) in spans.items()
            },
        }

    raw = os.path.join(args.workdir, f"scale_{args.backbone}_{size}", "results.json")
    with open(raw, "w", encoding="utf-8") as f:
        json.dump({str(n): r for n, r in results.items()}, f, indent=1)
    common.emit(head)
    common.emit(render(results, sizes, args.backbone, size, epochs))
    return 0


def render(results: dict, sizes: list[int], backbone: str, size: int, epochs: int) -> str:
    """The markdown tables of one scale run."""
    out: list[str] = []
    base = sizes[0]
    out.append(
        f"The demo's target task (digits 5-9 at {size}px) replicated to each size; {backbone} "
        f"pre-trained here on digits 0-4; head epoch cap {epochs}; one run per size (fresh processes, "
        "fresh home). Peak memory: summed RSS of the process tree (the run and its model server), "
        "sampled every 0.2 s."
    )
    out.append("")
    rows = []
    for n in sizes:
        r = results[n]
        rows.append(
            [
                n,
                r["ingest"],
                r["run"],
                r["run"] / results[base]["run"],
                r["peak"] / GIB,
                r["ingest_peak"] / GIB,
                r["accuracy"],
                r["blessed"],
            ]
        )
    out.append(
        common.table(
            [
                "images",
                "imgpipe ingest s",
                "imgpipe run s",
                f"run time / {base} images",
                "run peak RSS GiB",
                "ingest peak RSS GiB",
                "accuracy",
                "blessed",
            ],
            rows,
        )
    )
    out.append("")
    out.append(
        f"Data ratio {sizes[-1] / base:g}x; run time ratio {results[sizes[-1]]['run'] / results[base]['run']:.2f}x."
    )
    out.append("")
    nodes = list(results[sizes[-1]]["components"])
    headers = ["component"]
    for n in sizes:
        headers += [f"{n}: s", f"{n}: peak GiB"]
    headers.append(f"s ratio {sizes[-1]}/{base}")
    comp_rows = []
    for node in nodes:
        row: list = [node]
        for n in sizes:
            _, sec, peak = results[n]["components"].get(node, ("", float("nan"), 0))
            row += [sec, peak / GIB]
        first = results[base]["components"].get(node, ("", float("nan"), 0))[1]
        last = results[sizes[-1]]["components"][node][1]
        row.append(last / first if first and first > 0.5 else "")
        comp_rows.append(row)
    out.append("Per component (ML Metadata execution span; peak RSS of the tree within it):")
    out.append("")
    out.append(common.table(headers, comp_rows))
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
