"""Shared benchmark plumbing: environment, machine description, interleaved timing, tables, data.

Every benchmark here measures its variants interleaved in one run (A, B, C,
then B, C, A, ...) and reports medians and ratios: the machine is shared, so
absolute numbers drift from minute to minute while ratios measured side by
side hold.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# Keras 2 for TFT/TFX, quiet TensorFlow; before anything imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONWARNINGS", "ignore")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

SOURCE_DIGITS = (0, 1, 2, 3, 4)
TARGET_DIGITS = (5, 6, 7, 8, 9)


_TABLES = sys.stdout


def quiet() -> None:
    """Keep stdout for the tables: everything else printed (trainer lines, Keras
    progress, TFX) goes to stderr, and Python warnings and absl INFO logs are silenced."""
    import logging
    import warnings

    global _TABLES
    _TABLES = sys.stdout
    sys.stdout = sys.stderr

    warnings.filterwarnings("ignore")
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass


def default_workdir() -> str:
    """Data and pre-trained backbones are kept here between runs (re-used, not re-made)."""
    user = os.environ.get("USER") or str(os.getuid())
    return os.path.join(tempfile.gettempdir(), f"imgpipe-bench-{user}")


def parser(description: str) -> argparse.ArgumentParser:
    """Common flags: --quick, --repeats, --workdir."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smaller, fewer runs: a smoke test")
    p.add_argument("--repeats", type=int, default=None, help="runs per variant (default 3)")
    p.add_argument("--workdir", default=default_workdir(), help="cache for data/backbones")
    return p


def repeats(args: argparse.Namespace, default: int = 3, quick: int = 1) -> int:
    if args.repeats:
        return args.repeats
    return quick if args.quick else default


# ---------------------------------------------------------------------------------------
# Machine and run description


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> float:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return float("nan")


def machine() -> str:
    """One line: nproc, CPU model, memory, load average now, Python and TF versions."""
    from importlib import metadata

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    try:  # the installed distribution's version: no TensorFlow import for a header
        tf_version = metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        tf_version = "n/a"
    return (
        f"nproc={os.cpu_count()}, CPU: {_cpu_model()}, memory {_memory_gib():.1f} GiB, "
        f"load average {load:.2f} at start (shared machine), "
        f"Python {platform.python_version()}, TensorFlow {tf_version}"
    )


def command() -> str:
    """How this benchmark was invoked, to re-run it."""
    mod = os.path.splitext(os.path.relpath(sys.argv[0], REPO))[0].replace(os.sep, ".")
    return " ".join(["python -m", mod, *sys.argv[1:]])


def header(title: str) -> str:
    return "\n".join([f"### {title}", "", f"- machine: {machine()}", f"- command: `{command()}`", ""])


# ---------------------------------------------------------------------------------------
# Timing


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def interleaved(
    variants: Mapping[str, Callable[[int], Any]], runs: int, say: Callable[[str], None] = print
) -> dict[str, list[Any]]:
    """Call every variant with the round number, `runs` rounds, rotating the order each round."""
    names = list(variants)
    out: dict[str, list[Any]] = {n: [] for n in names}
    for r in range(runs):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            out[n].append(variants[n](r))
            say(f"[bench] round {r + 1}/{runs} {n}: {time.perf_counter() - t0:.1f}s")
    return out


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; floats are printed with 3 significant decimals."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            if math.isnan(v):
                return "n/a"
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def emit(text: str = "") -> None:
    """Print markdown to the real stdout (see quiet())."""
    print(text, file=_TABLES, flush=True)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def epoch_timer():
    """A Keras callback whose `.seconds` lists each epoch's wall time (validation included)."""
    import tf_keras as keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []
            self._t = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._t)

    return EpochTimer()


# ---------------------------------------------------------------------------------------
# Data: the demo's tasks, written once per image size and re-used


def demo_tasks(workdir: str, image_size: int) -> tuple[str, str]:
    """Source (digits 0-4) and target (digits 5-9) TFRecord dirs, as the demo ingests them."""
    from imgpipe.demo import steps as demo

    return demo.prepare_data(os.path.join(workdir, f"digits{image_size}"), image_size)


def source_backbone(workdir: str, backbone: str, image_size: int, epochs: int) -> str:
    """A backbone pre-trained here on digits 0-4 (re-used when its settings match)."""
    from imgpipe.demo import steps as demo

    source, _ = demo_tasks(workdir, image_size)
    return demo.pretrained_backbone(
        os.path.join(workdir, f"digits{image_size}"),
        source,
        backbone,
        image_size,
        epochs,
    )


def split_files(records_dir: str, split: str) -> list[str]:
    from trainer import data

    return data.list_files(os.path.join(records_dir, split))


def read_items(files: Sequence[str]) -> list[tuple[bytes, str]]:
    """(encoded image, label) pairs from ingest's TFRecords."""
    import tensorflow as tf

    from trainer import data
    from trainer.features import IMAGE_KEY, LABEL_KEY

    spec = {
        IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
        LABEL_KEY: tf.io.FixedLenFeature([], tf.string),
    }
    out = []
    for rec in data.raw_examples(list(files)):
        ex = tf.io.parse_single_example(rec, spec)
        out.append((ex[IMAGE_KEY].numpy(), ex[LABEL_KEY].numpy().decode()))
    return out


def analyze(records_dir: str, out_dir: str, backbone: str, image_size: int):
    """The Transform output (label vocabulary + graph) of a task's train split."""
    import tensorflow_transform as tft

    from imgpipe.demo.analyze import analyze_transform

    if not os.path.isdir(os.path.join(out_dir, tft.TFTransformOutput.TRANSFORM_FN_DIR)):
        items = read_items(split_files(records_dir, "train"))
        analyze_transform(items, out_dir, backbone=backbone, image_size=image_size)
    return tft.TFTransformOutput(out_dir)


def replicate_images(images_dir: str, out_dir: str, n: int, seed: int = 0) -> dict[str, int]:
    """An N-image copy of a class-per-folder PNG tree, for scaling runs; returns per-class counts.

    Image k of the output is source image k mod M (M source images, the classes
    interleaved in proportion), so the class shares stay those of the source. Its first copy keeps the
    source's bytes; every further copy is a seeded random small affine change of it
    (rotation within +-10 degrees, shift within +-6% of the side, scale 0.92-1.08),
    redrawn until its bytes differ from every image written so far: ingest
    de-duplicates identical bytes, so exact copies would not add records. Same
    arguments -> same files and bytes. A finished tree (`OUT_DIR.json`, written last,
    matching the arguments) is re-used, not re-written.
    """
    import hashlib
    import json
    import random
    import shutil

    from PIL import Image

    if n < 1:
        raise ValueError(f"replicate_images: n must be >= 1, got {n}")
    classes = sorted(d for d in os.listdir(images_dir) if os.path.isdir(os.path.join(images_dir, d)))
    per_class = {
        c: sorted(
            name
            for name in os.listdir(os.path.join(images_dir, c))
            if name.lower().endswith(".png") and not name.startswith(".")
        )
        for c in classes
    }
    # Classes interleaved by relative position, so a partial last round keeps the shares too.
    ranked = [
        ((i / len(names), c), (c, name)) for c, names in per_class.items() for i, name in enumerate(names)
    ]
    sources = [source for _, source in sorted(ranked)]
    if not sources:
        raise ValueError(f"replicate_images: no PNG files under {images_dir}/<class>/")
    stamp = {"source": os.path.abspath(images_dir), "images": n, "seed": seed, "source_images": len(sources)}
    marker = out_dir.rstrip(os.sep) + ".json"
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            done = json.load(f)
        if done.get("stamp") == stamp:
            return done["counts"]
    if os.path.exists(marker):
        os.remove(marker)
    shutil.rmtree(out_dir, ignore_errors=True)
    for c in classes:
        os.makedirs(os.path.join(out_dir, c), exist_ok=True)
    seen: set[str] = set()
    counts = dict.fromkeys(classes, 0)
    for k in range(n):
        c, name = sources[k % len(sources)]
        copy = k // len(sources)
        src = os.path.join(images_dir, c, name)
        with open(src, "rb") as f:
            data = f.read()
        attempt = 0
        while hashlib.sha256(data).hexdigest() in seen:
            rng = random.Random(f"{seed}/{c}/{name}/{copy}/{attempt}")
            attempt += 1
            with Image.open(src) as img:
                w, h = img.size
                moved = img.rotate(
                    rng.uniform(-10.0, 10.0),
                    resample=Image.Resampling.BILINEAR,
                    translate=(rng.uniform(-0.06, 0.06) * w, rng.uniform(-0.06, 0.06) * h),
                )
                s = rng.uniform(0.92, 1.08)
                side = (max(1, round(w * s)), max(1, round(h * s)))
                scaled = moved.resize(side, Image.Resampling.BILINEAR)
                out = Image.new(moved.mode, (w, h))
                out.paste(scaled, ((w - side[0]) // 2, (h - side[1]) // 2))
                buf = io.BytesIO()
                out.save(buf, format="PNG")
                data = buf.getvalue()
        seen.add(hashlib.sha256(data).hexdigest())
        stem = os.path.splitext(name)[0]
        with open(os.path.join(out_dir, c, f"{stem}_c{copy:03d}.png"), "wb") as f:
            f.write(data)
        counts[c] += 1
    with open(marker, "w", encoding="utf-8") as f:
        json.dump({"stamp": stamp, "counts": counts}, f, indent=1)
    return counts


def json_process(
    cmd: list[str], log_path: str, watch: Callable[[int], Any] | None = None
) -> tuple[float, dict]:
    """Run `cmd` as a fresh process from the repository root, stderr to `log_path`: its wall
    seconds and the JSON line it ends stdout with. `watch(pid)`, if given, is a context
    manager held while the process runs (e.g. a memory sampler)."""
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
        with watch(proc.pid) if watch else contextlib.nullcontext():
            out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        with open(log_path, encoding="utf-8") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}; end of {log_path}:\n{tail}")
    lines = [line for line in out.splitlines() if line.strip()]
    return wall, json.loads(lines[-1])


# Code for a python_child script to start with: every keras.Model.fit's wall seconds are
# appended to the list `fits`.
TIMED_FIT = r"""
import time
import tf_keras as keras
fits = []
_fit = keras.Model.fit
def _timed_fit(self, *args, **kwargs):
    t = time.perf_counter()
    try:
        return _fit(self, *args, **kwargs)
    finally:
        fits.append(time.perf_counter() - t)
keras.Model.fit = _timed_fit
"""


def python_child(code: str, args: Sequence[str], what: str) -> dict:
    """Run `python -c code args...` from the repository root with Keras 2 and quiet TensorFlow;
    the JSON object its stdout ends with. `what` names it in the error if it fails."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=REPO, capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def new_eval_data(target: str, out: str) -> str:
    """A copy of `target` whose eval split lost its last 10 records (a new eval artifact)."""
    import shutil

    import tensorflow as tf

    from trainer import data

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(os.path.join(target, "train"), os.path.join(out, "train"))
    records = list(data.raw_examples(os.path.join(target, "eval")))
    os.makedirs(os.path.join(out, "eval"))
    with tf.io.TFRecordWriter(os.path.join(out, "eval", "eval-00000-of-00001.tfrecord")) as w:
        for r in records[:-10]:
            w.write(r.numpy())
    return out


RUN_KINDS = ("first run", "new eval data")  # first_and_new_eval_runs' two runs


def first_and_new_eval_runs(args: argparse.Namespace, record: Callable[[Any, float, dict], dict]) -> dict:
    """In a fresh home (args.home), `imgpipe run` of the demo's target task (args.target,
    args.backbone, args.weights, args.image_size; 30 head epochs), then a run on new eval data
    (`new_eval_data`): both train, and the second's Evaluator also measures the first model.
    {"first run" | "new eval data": record(summary, wall seconds, component seconds)}."""
    import shutil

    from benchmarks.pipeline import component_seconds
    from imgpipe.demo import steps as demo
    from imgpipe.orchestration.local import run_local

    cfg = demo.target_config(args.home, args.target, args.backbone, args.weights, args.image_size, 30, 0.5)
    shutil.rmtree(args.home, ignore_errors=True)
    new_eval = new_eval_data(args.target, os.path.join(args.home, "new_eval"))
    out = {}
    for kind, config in zip(RUN_KINDS, (cfg, cfg.replace(data_dir=new_eval)), strict=True):
        t0 = time.perf_counter()
        summary = run_local(config, progress=lambda _m: None)
        out[kind] = record(summary, time.perf_counter() - t0, component_seconds(config))
    return out


def paired_demo_runs(
    args: argparse.Namespace, module: str, variants: Mapping[str, tuple[str, Sequence[str], Mapping | None]]
) -> tuple[int, dict[str, list[dict]]]:
    """The rounds of a paired `imgpipe run` benchmark on the demo's task: each variant, in its
    own fresh `python -m <module> --child` process (extra flags, environment), in a new home
    under args.workdir, in rotating order. variants: name -> (home prefix, extra flags, env
    or None). Returns the number of rounds and, per variant, each child's
    `write_child_result` dict."""
    _, target = demo_tasks(args.workdir, args.image_size)
    weights = source_backbone(args.workdir, args.backbone, args.image_size, args.pretrain_epochs)
    work = os.path.join(args.workdir, f"{module.rsplit('.', 1)[-1]}_{args.backbone}_{args.image_size}")
    os.makedirs(work, exist_ok=True)

    def variant(prefix: str, extra: Sequence[str], env: Mapping | None) -> Callable[[int], dict]:
        def run(r: int) -> dict:
            home = os.path.join(work, f"{prefix}_round{r}")
            cmd = [sys.executable, "-m", module, "--child", "--workdir", args.workdir, *extra]
            cmd += ["--home", home, "--target", target, "--weights", weights]
            cmd += ["--backbone", args.backbone, "--image-size", str(args.image_size)]
            subprocess.run(cmd, env=None if env is None else dict(env), check=True, stdout=subprocess.DEVNULL)
            with open(home + ".json", encoding="utf-8") as f:
                return json.load(f)

        return run

    runs = repeats(args)
    return runs, interleaved({name: variant(*v) for name, v in variants.items()}, runs, say)


def paired_demo_main(
    argv: Sequence[str] | None,
    description: str,
    module: str,
    child: Callable[[argparse.Namespace], dict],
    flag: str,
    variants: Mapping[str, str],
) -> tuple[argparse.Namespace, int, dict[str, list[dict]]] | None:
    """The parent and child sides of a paired `imgpipe run` benchmark whose variants differ by
    one hidden flag: variants maps each variant's name to its `--<flag>` value.

    In a child process (`--child`): run `child(args)`, write its result, return None. In the
    parent: run the rounds (`paired_demo_runs`) and return (args, rounds, results).
    """
    p = demo_run_parser(description)
    p.add_argument(f"--{flag}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quiet()
    if args.child:
        write_child_result(args.home, child(args))
        return None
    runs, results = paired_demo_runs(
        args,
        module,
        {name: (f"{flag}_{value}", [f"--{flag}", value], None) for name, value in variants.items()},
    )
    return args, runs, results


def paired_evaluator_main(
    argv: Sequence[str] | None,
    description: str,
    module: str,
    child: Callable[[argparse.Namespace], dict],
    flag: str,
    variants: Mapping[str, str],
    title: str,
    before: str,
    after: str,
) -> tuple[argparse.Namespace, dict[str, list[dict]]] | None:
    """A paired benchmark of the Evaluator (`paired_demo_main`): its header (`title`, then the
    backbone and image size), the whole run's and the Evaluator's seconds of `before` against
    `after`, and whether both gave the same gate numbers. Returns (args, results) in the parent,
    for lines of the benchmark's own, else None."""
    paired = paired_demo_main(argv, description, module, child, flag, variants)
    if paired is None:
        return None
    args, runs, results = paired
    emit(header(f"{title}, {args.backbone} {args.image_size}px"))
    emit(paired_intro(runs, f"{after} / {before}"))
    emit(paired_table(results, before, after, ("whole run", "Evaluator")))
    emit_same_gate_numbers(results, before, after)
    return args, results


def node_seconds(comps: Mapping[str, tuple[str, float]], nodes: Sequence[str]) -> dict[str, float]:
    """The seconds of each of `nodes` in `component_seconds`' result (NaN for a node that did not run)."""
    return {n: comps[n][1] if n in comps else float("nan") for n in nodes}


def distinct(results: Mapping[str, list[dict]], key: str, digits: int | None = None) -> list:
    """Every value of `key` over all variants, processes and runs of a paired benchmark, sorted
    (rounded to `digits`, or as text when None)."""
    return sorted(
        {
            str(x[kind][key]) if digits is None else round(x[kind][key], digits)
            for rs in results.values()
            for x in rs
            for kind in x
        }
    )


def paired_intro(runs: int, ratio: str, order: str = "alternating", note: str = "") -> str:
    """The paragraph above a paired demo benchmark's table: its rounds, and what the ratio is."""
    return (
        f"Demo target task, 30 head epochs; {runs} rounds, a fresh process per variant, order "
        f"{order}. Seconds: medians (per round in brackets); ratio = {ratio}.{' ' + note if note else ''}\n"
    )


def paired_table(results: Mapping[str, list[dict]], before: str, after: str, steps: Sequence[str]) -> str:
    """The table of a paired demo benchmark: `steps` of each of RUN_KINDS, `before` against `after`."""
    cells = [(kind, step) for kind in RUN_KINDS for step in steps]
    rows = paired_rows(results, before, after, cells)
    return table(["run", "step", f"{before} s", "(rounds)", f"{after} s", "(rounds)", "ratio"], rows)


def paired_rows(
    results: Mapping[str, list[dict]], before: str, after: str, cells: Sequence[tuple[str, str]]
) -> list[list[Any]]:
    """Table rows of a paired benchmark: for each (run kind, key) in `cells`, the medians and
    per-round values of `before` and `after` (each round's dict[kind][key]) and after/before."""
    rows = []
    for kind, key in cells:
        b, a = ([x[kind][key] for x in results[name]] for name in (before, after))
        mb, ma = median(b), median(a)
        rows.append(
            [
                kind,
                key,
                mb,
                " ".join(f"{v:.1f}" for v in b),
                ma,
                " ".join(f"{v:.1f}" for v in a),
                f"{ma / mb:.2f}x" if mb else "n/a",
            ]
        )
    return rows


def evaluator_run_record(summary: Any, wall: float, comps: dict) -> dict:
    """A `first_and_new_eval_runs` record for the Evaluator's benchmarks: the run's and the
    Evaluator's seconds, and the gate's numbers (`emit_same_gate_numbers` compares them)."""
    gate = summary.gate or {}
    return {
        "whole run": wall,
        "Evaluator": comps["Evaluator"][1],
        "gate": {
            "accuracy": gate.get("accuracy"),
            "baseline": (gate.get("baseline") or {}).get("accuracy"),
            "per_class": summary.per_class_accuracy,
            "blessed": gate.get("blessed"),
        },
    }


def emit_same_gate_numbers(results: Mapping[str, list[dict]], a: str, b: str) -> None:
    """Whether variants `a` and `b` gave the same gate numbers in each round, per run kind."""
    for kind in RUN_KINDS:
        gates = {name: [x[kind]["gate"] for x in rs] for name, rs in results.items()}
        same = all(g == gates[b][i] for i, g in enumerate(gates[a]))
        emit(
            f"\n{kind}: gate numbers {'the same' if same else 'DIFFERENT'} in each round's two processes "
            f"(round 1: {gates[b][0]})"
        )


def write_child_result(home: str, result: dict) -> None:
    with open(home + ".json", "w", encoding="utf-8") as f:
        json.dump(result, f)


def demo_run_parser(description: str) -> argparse.ArgumentParser:
    """`parser` plus the flags of a paired `imgpipe run` benchmark on the demo's task: its
    backbone, and the hidden ones `paired_demo_runs` passes to the child process."""
    p = parser(description)
    p.add_argument("--backbone", default="DenseNet121")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--pretrain-epochs", type=int, default=10)
    for hidden in ("--home", "--target", "--weights"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p


# The start of a decoder benchmark's child (tree_child's `code`, argv: tree, calls): the tree's
# decoder as `pp` (checked to come from that tree), `calls`, a sample photo, `enc` (Pillow) and
# `us_per_image`.
DECODER_CHILD_PRELUDE = r"""
import io, json, os, sys, tempfile, time
import numpy as np
import tensorflow as tf
from PIL import Image
from sklearn.datasets import load_sample_images
from trainer import preprocessing as pp

assert pp.__file__.startswith(sys.argv[1]), (pp.__file__, sys.argv[1])
calls = int(sys.argv[2])
photo = load_sample_images().images[0]

def enc(a, fmt, **kw):
    b = io.BytesIO()
    Image.fromarray(a).save(b, format=fmt, **kw)
    return b.getvalue()

# Microseconds per image of fn(x), x a batch of n encoded images: a warm call first, then the
# median of `calls` timed calls.
def us_per_image(fn, x, n):
    fn(x)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn(x).numpy()
        times.append(time.perf_counter() - t)
    return 1e6 * float(np.median(times)) / n
"""


def tree_child(code: str, tree: str, args: Sequence[str], what: str) -> dict:
    """The JSON that `code` prints last, run in a fresh child process on checkout `tree`'s modules
    (PYTHONPATH set to it, not the installed editable imgpipe's); `code` gets the tree as argv[1]."""
    tree = os.path.abspath(tree)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = tree
    proc = subprocess.run(
        [sys.executable, "-c", code, tree, *args], env=env, cwd=tree, capture_output=True, text=True
    )
    if proc.returncode:
        raise RuntimeError(f"{what} in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def trees_main(doc: str, title: str, first_column: str, child: str, what: str) -> None:
    """A benchmark of this tree, or of it beside another checkout (`--against`): `child`, a
    program run by `tree_child` with argv (tree, calls), prints {"key|second key": value}; the
    trees interleaved round by round, one row per key with each tree's median and, with
    --against, this tree's ratio to the other. `what` names the benchmark in a child's failure."""
    p = parser(doc.split("\n\n")[0])
    p.add_argument("--against", help="another checkout of imgpipe to measure beside this one")
    args = p.parse_args()
    quiet()
    runs = repeats(args, default=3, quick=1)
    calls = 5 if args.quick else 15
    trees = {"this tree": REPO}
    if args.against:
        trees = {f"{args.against}": args.against, **trees}
    results = interleaved(
        {
            name: (lambda r, tree=tree: tree_child(child, tree, [str(calls)], what))
            for name, tree in trees.items()
        },
        runs,
        say,
    )
    emit(header(title))
    headers = [*first_column.split("|"), *[f"{name} (median of {runs})" for name in trees]]
    if args.against:
        headers.append("this tree / the other")
    rows = []
    for key in results["this tree"][0]:
        medians = [median([r[key] for r in results[name]]) for name in trees]
        row = [*key.split("|"), *medians]
        if args.against:
            row.append(medians[1] / medians[0])
        rows.append(row)
    emit(table(headers, rows))
    emit()
