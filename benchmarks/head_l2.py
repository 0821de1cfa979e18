"""Should the head's default L2 follow the data size? l2 = c/(2n) against the default l2 = 0.

An audit's binary task (digit 3 against digit 8 at 180:12 images) had the default head miss eval
images that a logistic regression on the same features got right, and `--l2 0.003` (about
scikit-learn's C=1 for its 154 train images: Keras' l2 adds l2*||w||^2 to the mean loss, C=1
is the mean loss + ||w||^2/(2n)) missed fewer. This measures whether l2 = c/(2n) (n = train
examples, c in 0.3, 1, 3) is better than l2 = 0 in general, and never clearly worse.

Features: every scikit-learn digit (1,797) at 32px, ingested as `imgpipe ingest` does, through
the Transform and the frozen backbone (benchmarks/head.py's `extract`: DenseNet121 at 32px
pre-trained here on digits 0-4, the demo's weights file), once. Tasks are subsets and relabellings
of those features ("the first N of a digit" in scikit-learn's order, as `write_digits_tree`'s
limit_per_class takes them); each seed draws its own stratified 80/20 split (per class
round(0.2 n_c) eval images, at least 1) and trains the head with that seed. Heads:
`benchmarks.head.head_variant` (trainer.train.train_cached_head, as the Trainer runs it) with
only `l2` changed; logistic regression: `benchmarks.head.logistic_regression` (first 3 seeds).
Eval accuracy, balanced accuracy and log loss (finer than accuracy on small splits).

    python -m benchmarks.head_l2              # 10 seeds, every task
    python -m benchmarks.head_l2 --quick      # 1 seed, two tasks: a smoke run
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time

from benchmarks import common
from benchmarks import head as hb

VARIANTS = (("l2=0 (default)", 0.0), ("0.3/(2n)", 0.3), ("1/(2n)", 1.0), ("3/(2n)", 3.0))
LR_SEEDS = 3


def features(workdir: str, weights: str):
    """(features, digit, scikit-learn index) of every digit image, both splits of its ingest."""
    import numpy as np

    from imgpipe.demo import data as demo_data

    root = os.path.join(workdir, "head_l2")
    images = os.path.join(root, "images")
    if not os.path.isdir(images):
        demo_data.write_digits_tree(images, digits=range(10), size=hb.SIZE)
    records = hb._ingest(images, os.path.join(root, "records"))
    task = hb.Task("all digits", records)
    hb.extract(task, workdir, weights)
    path_of = {}
    with open(os.path.join(records, "image_files.jsonl"), encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            path_of[(entry["split"], entry["sha256"])] = entry["path"]
    feats, paths = [], []
    for split in ("train", "eval"):
        items = common.read_items(common.split_files(records, split))
        x, _, idx = getattr(task, split)
        assert [task.class_names[i] for i in idx] == [
            label.decode() if isinstance(label, bytes) else label for _, label in items
        ], "the features are not in the records' order"
        feats.append(x)
        paths += [path_of[(split, hashlib.sha256(image).hexdigest())] for image, _ in items]
    digit = np.array([int(p.split("/")[0]) for p in paths])
    index = np.array([int(p.rsplit("_", 1)[-1].split(".")[0]) for p in paths])
    return np.concatenate(feats), digit, index


def task_defs(digit, index) -> dict:
    """{name: (selected rows, labels or None for the digits themselves)}."""
    import numpy as np

    order = np.lexsort((index, digit))

    def first(d: int, n: int = 10**6):
        return order[digit[order] == d][:n]

    five9 = np.concatenate([first(d) for d in range(5, 10)])
    rnd = np.concatenate([first(d, 20) for d in range(10)])
    fifth = min(len(first(d)) for d in (6, 7, 8, 9)) // 5
    return {
        "3v8 180:12": (np.r_[first(3, 180), first(8, 12)], None),
        "3v8 180:30": (np.r_[first(3, 180), first(8, 30)], None),
        "10 classes x15": (np.concatenate([first(d, 15) for d in range(10)]), None),
        "digits 5-9": (five9, None),
        "even/odd 5-9": (five9, np.isin(digit[five9], (5, 7, 9)).astype(int)),
        "imbalanced, 5 at 1/5": (
            np.r_[first(5, fifth), np.concatenate([first(d) for d in (6, 7, 8, 9)])],
            None,
        ),
        "digits 0-9 all": (np.arange(len(digit)), None),
        "random labels, 2 classes": (rnd, np.random.default_rng(0).permutation(np.arange(len(rnd)) % 2)),
    }


def make(name: str, x, digit, rows, labels, seed: int) -> hb.Task:
    import numpy as np

    y = labels if labels is not None else np.unique(digit[rows], return_inverse=True)[1]
    k = int(y.max()) + 1
    rng = np.random.default_rng(seed)
    held = np.zeros(len(y), bool)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        held[rng.permutation(members)[: max(1, round(0.2 * len(members)))]] = True
    task = hb.Task(name, "", class_names=[str(i) for i in range(k)])

    def given(part):
        return part.astype(np.float32).reshape(-1, 1) if k == 2 else part.astype(np.int64)

    for split, mask in (("train", ~held), ("eval", held)):
        setattr(task, split, (x[rows][mask], given(y[mask]), y[mask].astype(np.int64)))
    return task


def head_run(task: hb.Task, seed: int, l2: float) -> dict:
    """head.head_variant's numbers and the eval log loss."""
    import numpy as np
    import tf_keras as keras

    from trainer import data, train
    from trainer.config import TrainingConfig

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    params = TrainingConfig(
        backbone=hb.BACKBONE, weights="none", image_size=hb.SIZE, seed=seed, **({"l2": l2} if l2 else {})
    )
    t0 = time.perf_counter()
    phase = train.train_cached_head(
        data.FeatureCache.in_memory(*task.train[:2]),
        data.FeatureCache.in_memory(*task.eval[:2]),
        params,
        task.k,
        params.batch_size,
        note=lambda _: None,
    )
    seconds = time.perf_counter() - t0
    scores = phase.run.model(task.eval[0], training=False).numpy()
    y = task.eval[2]
    if task.k == 2:
        right = np.where(y == 1, scores[:, 0], 1 - scores[:, 0])
        answers = (scores[:, 0] > 0.5).astype(np.int64)
    else:
        right, answers = scores[np.arange(len(y)), y], scores.argmax(-1)
    loss = float(-np.log(np.clip(right, 1e-7, 1.0)).mean())
    return {**hb.scores(y, answers), "logloss": loss, "head_s": seconds}


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    common.quiet()
    seeds = [42 + i for i in range(common.repeats(args, default=10))]
    weights = common.source_backbone(args.workdir, hb.BACKBONE, hb.SIZE, hb.PRETRAIN_EPOCHS)
    t0 = time.perf_counter()
    x, digit, index = features(args.workdir, weights)
    common.say(f"[bench] features of {len(x)} digits in {time.perf_counter() - t0:.1f}s")
    tasks = task_defs(digit, index)
    if args.quick:
        tasks = {name: tasks[name] for name in ("3v8 180:12", "digits 5-9")}
    print(f"## Head L2 against the data size ({common.machine()}; seeds {seeds[0]}-{seeds[-1]})\n")
    print(
        "| task (train/eval) | head | accuracy | balanced | log loss | accuracy better/same/worse | time ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, (rows, labels) in tasks.items():
        runs: dict[str, list[dict]] = {v: [] for v, _ in VARIANTS}
        lr_runs = []
        for seed in seeds:
            task = make(name, x, digit, rows, labels, seed)
            n = len(task.train[2])
            for variant, c in VARIANTS:
                runs[variant].append(head_run(task, seed, c / (2 * n)))
            if seed < seeds[0] + LR_SEEDS:
                lr = hb.logistic_regression(task)
                lr_runs.append(lr[lr["best"]])
            common.say(
                f"[bench] {name} seed {seed}: "
                + ", ".join(f"{v} {r[-1]['acc']:.3f}/{r[-1]['balanced']:.3f}" for v, r in runs.items())
            )
        base = runs[VARIANTS[0][0]]
        size = f"{len(task.train[2])}/{len(task.eval[2])}"
        for variant, _ in VARIANTS:
            got = runs[variant]
            diff = [round(a["acc"] - b["acc"], 9) for a, b in zip(got, base, strict=True)]
            versus = (
                ""
                if got is base
                else f"{sum(d > 0 for d in diff)}/{sum(d == 0 for d in diff)}/{sum(d < 0 for d in diff)}"
            )
            ratio = statistics.median(a["head_s"] / b["head_s"] for a, b in zip(got, base, strict=True))
            print(
                f"| {name} ({size}) | {variant} | {hb.med(got, 'acc'):.3f} | {hb.med(got, 'balanced'):.3f} | "
                f"{hb.med(got, 'logloss'):.3f} | {versus} | {ratio:.2f} |"
            )
        print(
            f"| {name} ({size}) | logistic regression (CV, first {len(lr_runs)} seeds) | "
            f"{hb.med(lr_runs, 'acc'):.3f} | {hb.med(lr_runs, 'balanced'):.3f} | | | |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
