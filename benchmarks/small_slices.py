"""The head's epoch count on small validation slices: the slice alone vs cross-validation.

When the 10% validation slice holds fewer than 10 images of some class, the
Trainer chooses the head's epoch count by k-fold cross-validation on the train
split (`--cv-folds`, default 5; README "Cross-validation when the slice is too
small"). This benchmark measures that choice against the slice alone on three
small tasks built from scikit-learn's digits 5-9 (the demo's target digits),
ingested as `imgpipe ingest` does (stratified 80/20 split, seed 42):

- 1:20 two classes: "common" (digits 5, 6 and 7 in turn, 376 images) vs "rare" (digit 9,
  19 images): about 300 : 15 train images, the sigmoid head;
- 1:10 two classes: the same with 38 images of digit 9 (about 300 : 30);
- noisy three classes: digits 5, 6, 7 (100 images each), 30% of the train
  split's labels moved to another class at random (eval labels kept).

One backbone for all: DenseNet121 at 32px pre-trained here on digits 0-4 (the
demo's weights file, benchmarks/common.py), frozen; features extracted once per
task. Both arms are `trainer.train.train_cached_head`, what the Trainer runs on
features in memory: "slice" with `cv_folds=0`, "folds" with the defaults. The
yardstick is scikit-learn's LogisticRegression (balanced class weights, C=1,
standardised features) on the same features.

    python -m benchmarks.small_slices            # seeds 42, 1, 2
    python -m benchmarks.small_slices --quick    # seed 42 only
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

from benchmarks import common
from benchmarks import head as head_bench

SEEDS = (42, 1, 2)
NOISE = 0.3


@dataclasses.dataclass
class Spec:
    name: str
    classes: dict[str, tuple[tuple[int, ...], int]]  # class -> (digits, images)
    noise: float = 0.0


SPECS = (
    Spec("1:20 two classes", {"common": ((5, 6, 7), 376), "rare": ((9,), 19)}),
    Spec("1:10 two classes", {"common": ((5, 6, 7), 376), "rare": ((9,), 38)}),
    Spec("noisy three classes", {"5": ((5,), 100), "6": ((6,), 100), "7": ((7,), 100)}, NOISE),
)


def write_tree(spec: Spec, root: str) -> str:
    """The task's image tree: each class the first N images of its digits, taken in turn."""
    from imgpipe.demo import data as demo_data

    images = os.path.join(root, "images")
    if os.path.isdir(images):
        return images
    raw = os.path.join(root, "raw")
    demo_data.write_digits_tree(raw, digits=range(5, 10), size=head_bench.SIZE)
    for cls, (digits, n) in spec.classes.items():
        files = [sorted(os.listdir(os.path.join(raw, str(d)))) for d in digits]
        picked = [f for group in zip(*files, strict=False) for f in group][:n]
        if len(picked) < n:
            raise SystemExit(f"{spec.name}: {cls} wants {n} images, digits {digits} have {len(picked)}")
        os.makedirs(os.path.join(images + ".tmp", cls), exist_ok=True)
        for f in picked:
            digit = f.split("_", 1)[0]
            shutil.copyfile(os.path.join(raw, digit, f), os.path.join(images + ".tmp", cls, f))
    os.replace(images + ".tmp", images)
    shutil.rmtree(raw)
    return images


def add_label_noise(task: head_bench.Task, fraction: float, seed: int = 0) -> int:
    """Move `fraction` of the train split's labels to another class at random; return how many."""
    import numpy as np

    features, given, indices = task.train
    rng = np.random.default_rng(seed)
    moved = rng.choice(len(indices), size=round(fraction * len(indices)), replace=False)
    new = indices.copy()
    new[moved] = (indices[moved] + rng.integers(1, task.k, size=len(moved))) % task.k
    given = np.asarray(given)
    if given.ndim == 2 and given.shape[1] == task.k:  # one-hot
        labels = np.eye(task.k, dtype=given.dtype)[new]
    else:
        labels = new.astype(given.dtype).reshape(given.shape)
    task.train = (features, labels, new)
    return len(moved)


def yardstick(task: head_bench.Task) -> dict[str, float]:
    """The tester's logistic regression: balanced class weights, C=1, standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, _, y = task.train
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000))
    model.fit(x, y)
    return head_bench.scores(task.eval[2], model.predict(task.eval[0]))


def cells(runs: list[dict], k: int) -> str:
    """Per seed: accuracy, and /balanced accuracy for two classes."""
    if k == 2:
        return ", ".join(f"{r['acc']:.3f}/{r['balanced']:.3f}" for r in runs)
    return ", ".join(f"{r['acc']:.3f}" for r in runs)


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", help=f"the seeds to run (default {SEEDS})")
    args = p.parse_args(argv)
    common.quiet()
    seeds = args.seeds or SEEDS[: common.repeats(args)]
    t_start = time.perf_counter()
    weights = common.source_backbone(
        args.workdir, head_bench.BACKBONE, head_bench.SIZE, head_bench.PRETRAIN_EPOCHS
    )
    rows = []
    for spec in SPECS:
        root = os.path.join(args.workdir, "small_slices", spec.name.replace(" ", "_").replace(":", "-"))
        images = write_tree(spec, root)
        task = head_bench.Task(spec.name, head_bench._ingest(images, os.path.join(root, "records")))
        head_bench.extract(task, args.workdir, weights)
        moved = add_label_noise(task, spec.noise) if spec.noise else 0
        counts = [int((task.train[2] == c).sum()) for c in range(task.k)]
        common.say(
            f"[bench] {spec.name}: train {counts}, {len(task.eval[2])} eval, {moved} train labels moved"
        )
        lr = yardstick(task)
        arms: dict[str, list[dict]] = {"slice": [], "folds": []}
        for seed in seeds:
            for arm, overrides in (("slice", {"cv_folds": 0}), ("folds", {})):
                run = head_bench.head_variant(task, seed, **overrides)
                arms[arm].append(run)
                common.say(
                    f"[bench] {spec.name} {arm} seed {seed}: acc {run['acc']:.3f} balanced "
                    f"{run['balanced']:.3f} epoch {run['best_epoch']} in {run['head_s']:.1f}s"
                )

        rows.append(
            [
                f"{spec.name} ({' : '.join(map(str, counts))})",
                cells(arms["slice"], task.k),
                cells(arms["folds"], task.k),
                ", ".join(str(r["best_epoch"]) for r in arms["folds"]),
                f"{lr['acc']:.3f}/{lr['balanced']:.3f}" if task.k == 2 else f"{lr['acc']:.3f}",
                f"{head_bench.med(arms['slice'], 'head_s'):.1f} / {head_bench.med(arms['folds'], 'head_s'):.1f}",
            ]
        )
    common.emit(common.header("The head's epoch count on small slices: the slice alone vs cross-validation"))
    common.emit(
        f"DenseNet121 at {head_bench.SIZE}px from the demo's weights file, frozen; seeds "
        f"{', '.join(map(str, seeds))}; eval accuracy, /balanced accuracy for two classes. "
        f"Whole benchmark: {time.perf_counter() - t_start:.0f}s.\n"
    )
    common.emit(
        common.table(
            [
                "task (train images)",
                "slice alone (cv_folds=0)",
                "5-fold cross-validation (default)",
                "epochs chosen by the folds",
                "logistic regression (balanced, C=1)",
                "head s slice / folds (median)",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
