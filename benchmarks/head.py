"""Default head vs logistic regression on the same frozen features.

Does imgpipe's head, trained with the DEFAULT settings, reach what a tuned
logistic regression reaches on the very same backbone features? Three tasks
built from shipped images (imgpipe/demo/data.py), ingested as `imgpipe ingest`
does (stratified 80/20 split, seed 42):

- digits: the demo's target task, digits 5-9 (5 classes, softmax head);
- even/odd: the same digits as 2 classes, {6, 8} vs {5, 7, 9} (the sigmoid head);
- imbalanced: digits 5-9 with digit 5 at 1/5 of the others' examples.

One backbone for all: DenseNet121 at 32px pre-trained here on digits 0-4 (the
demo's weights file, benchmarks/common.py), frozen.

- imgpipe default: `trainer.train.train` exactly as the Trainer runs it,
  `TrainingConfig(backbone, weights, image_size)` and nothing else, seeds 42..;
  extraction and head-training seconds are its own measurements in the same run.
- logistic regression: scikit-learn `LogisticRegressionCV` on the features the
  backbone gives (trainer.data.FeatureExtractor, same splits), C chosen by 5-fold
  stratified cross-validation on the train split only (C in 1e-3..1e4), lbfgs;
  on the raw features and standardised (StandardScaler fit on train); the
  better of the two on eval is the target (generous to the baseline).
- variants: `trainer.train.train_cached_head` (what train() runs after extraction)
  on the same extracted features: refit or not, class weights or not; `--grid`
  adds what the defaults were chosen from (learning rates, standardisation, dropout).

    python -m benchmarks.head            # 3 seeds: default vs LR, refit, class weights
    python -m benchmarks.head --grid     # + learning-rate grid, standardisation, dropout
    python -m benchmarks.head --quick    # 1 seed, a smoke run
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable

from benchmarks import common

BACKBONE = "DenseNet121"
SIZE = 32
PRETRAIN_EPOCHS = 15  # the demo's
LR_GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
LR_CS = (1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3, 1e4)
EVEN = ("6", "8")
MINORITY = "5"


@dataclasses.dataclass
class Task:
    name: str
    records: str
    tfo: object = None
    class_names: list[str] = dataclasses.field(default_factory=list)
    train: tuple = ()  # (features, labels as given, class indices)
    eval: tuple = ()

    @property
    def k(self) -> int:
        return len(self.class_names)


def _ingest(images: str, records: str) -> str:
    from imgpipe.ingest import ingest

    if not os.path.isdir(os.path.join(records, "train")):
        ingest(images, records, eval_fraction=0.2, seed=42, overwrite=True)
    return records


def build_tasks(workdir: str) -> list[Task]:
    """The three tasks' TFRecords (written once under workdir, then re-used)."""
    from imgpipe.demo import data as demo_data

    _, digits = common.demo_tasks(workdir, SIZE)
    root = os.path.join(workdir, f"head{SIZE}")
    even_odd_images = os.path.join(root, "images", "even_odd")
    if not os.path.isdir(even_odd_images):
        raw = os.path.join(root, "images", "digits_5_9")
        demo_data.write_digits_tree(raw, digits=common.TARGET_DIGITS, size=SIZE)
        for digit in os.listdir(raw):
            group = os.path.join(even_odd_images, "even" if digit in EVEN else "odd")
            os.makedirs(group, exist_ok=True)
            for f in os.listdir(os.path.join(raw, digit)):
                shutil.copyfile(os.path.join(raw, digit, f), os.path.join(group, f))
    imbalanced_images = os.path.join(root, "images", "imbalanced")
    if not os.path.isdir(imbalanced_images):
        others = [d for d in common.TARGET_DIGITS if str(d) != MINORITY]
        counts = demo_data.write_digits_tree(imbalanced_images, digits=others, size=SIZE)
        fifth = min(counts.values()) // 5
        demo_data.write_digits_tree(
            imbalanced_images, digits=[int(MINORITY)], size=SIZE, limit_per_class=fifth
        )
    return [
        Task("digits 5-9 (5 classes)", digits),
        Task("even/odd (2 classes)", _ingest(even_odd_images, os.path.join(root, "records", "even_odd"))),
        Task(
            f"imbalanced (digit {MINORITY} at 1/5)",
            _ingest(imbalanced_images, os.path.join(root, "records", "imbalanced")),
        ),
    ]


def extract(task: Task, workdir: str, weights: str) -> None:
    """The task's Transform output and the frozen backbone's features of both splits."""
    import tf_keras as keras

    from trainer import data, distribution
    from trainer import model as model_lib

    slug = task.records.rstrip("/").replace(os.sep, "_")[-60:]
    task.tfo = common.analyze(task.records, os.path.join(workdir, "head_transform", slug), BACKBONE, SIZE)
    task.class_names = data.class_names(task.tfo)
    keras.backend.clear_session()
    strategy = distribution.make_strategy()
    with strategy.scope():
        base = model_lib.build_backbone(BACKBONE, weights, SIZE)
    extractor = data.FeatureExtractor(strategy, base)
    for split in ("train", "eval"):
        spec = data.InputSpec(batch_size=32, num_classes=task.k)
        cache = extractor.cache(data.make_dataset(common.split_files(task.records, split), task.tfo, spec))
        features, labels = cache.arrays
        setattr(task, split, (features, labels, cache.labels))


def scores(y, p) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean per-class recall) and the lowest per-class recall."""
    import numpy as np

    recalls = [float((p[y == c] == c).mean()) for c in np.unique(y)]
    return {
        "acc": float((p == y).mean()),
        "balanced": float(np.mean(recalls)),
        "worst_recall": float(min(recalls)),
    }


def predict(head, features, k: int):
    import numpy as np

    probs = head(features, training=False).numpy()
    return (probs[:, 0] > 0.5).astype(np.int64) if k == 2 else probs.argmax(-1)


def logistic_regression(task: Task) -> dict:
    import numpy as np
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, _, y = task.train
    xe, _, ye = task.eval
    out = {}
    for name, scaled in (("raw", False), ("standardised", True)):
        lr = LogisticRegressionCV(Cs=list(LR_CS), cv=StratifiedKFold(5), max_iter=5000, n_jobs=2)
        model = make_pipeline(StandardScaler(), lr) if scaled else lr
        t0 = time.perf_counter()
        model.fit(x, y)
        seconds = time.perf_counter() - t0
        c = float(np.ravel(lr.C_)[0])
        out[name] = {**scores(ye, model.predict(xe)), "C": c, "seconds": seconds}
    best = max(out, key=lambda n: out[n]["acc"])
    return {"best": best, **out}


def imgpipe_default(task: Task, weights: str, seed: int) -> dict:
    """trainer.train() with the default TrainingConfig (only backbone, weights, size, seed set)."""
    import tf_keras as keras

    from trainer import model as model_lib
    from trainer import train
    from trainer.config import TrainingConfig

    keras.backend.clear_session()
    params = TrainingConfig(backbone=BACKBONE, weights=weights, image_size=SIZE, seed=seed)
    files = {s: common.split_files(task.records, s) for s in ("train", "eval")}
    result = train.train(files["train"], files["eval"], task.tfo, params, verbose=0)
    head = model_lib.head_of(result.model)
    p = predict(head, task.eval[0], task.k)
    return {
        **scores(task.eval[2], p),
        "reported_acc": result.eval_accuracy,
        "extract_s": result.seconds["feature_extraction"],
        "head_s": result.seconds["train"],
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "class_weights": result.class_weights,
    }


def head_variant(task: Task, seed: int, **overrides) -> dict:
    """trainer.train.train_cached_head on the extracted features with TrainingConfig overrides."""
    import tf_keras as keras

    from trainer import data, train
    from trainer.config import TrainingConfig

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    params = TrainingConfig(backbone=BACKBONE, weights="none", image_size=SIZE, seed=seed, **overrides)
    train_cache = data.FeatureCache.in_memory(*task.train[:2])
    eval_cache = data.FeatureCache.in_memory(*task.eval[:2])
    t0 = time.perf_counter()
    phase = train.train_cached_head(
        train_cache, eval_cache, params, task.k, params.batch_size, note=lambda _: None
    )
    seconds = time.perf_counter() - t0
    p = predict(phase.run.model, task.eval[0], task.k)
    return {
        **scores(task.eval[2], p),
        "head_s": seconds,
        "best_epoch": phase.run.selection.best_epoch,
        "epochs_run": phase.run.selection.epochs_run,
    }


def med(runs: list[dict], key: str) -> float:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return float(statistics.median(vals)) if vals else float("nan")


def per_run(runs: list[dict], key: str = "acc") -> str:
    return " ".join(f"{r[key]:.3f}" for r in runs)


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--grid", action="store_true", help="also run the learning-rate grid")
    args = p.parse_args(argv)
    common.quiet()
    seeds = [42 + i for i in range(common.repeats(args))]
    t_start = time.perf_counter()

    from trainer.config import TrainingConfig

    defaults = TrainingConfig()
    weights = common.source_backbone(args.workdir, BACKBONE, SIZE, PRETRAIN_EPOCHS)
    with open(weights + ".json", encoding="utf-8") as f:
        source_acc = json.load(f)["source_eval_accuracy"]
    tasks = build_tasks(args.workdir)
    for task in tasks:
        extract(task, args.workdir, weights)
        common.say(
            f"[bench] {task.name}: {len(task.train[2])} train / {len(task.eval[2])} eval, {task.k} classes"
        )

    def rounds(fn: Callable[[int], dict], label: str) -> list[dict]:
        out = []
        for s in seeds:
            t0 = time.perf_counter()
            out.append(fn(s))
            common.say(
                f"[bench] {label} seed {s}: acc {out[-1]['acc']:.4f} in {time.perf_counter() - t0:.1f}s"
            )
        return out

    lr_results = {}
    default_runs = {}
    for task in tasks:
        lr_results[task.name] = logistic_regression(task)
        common.say(f"[bench] {task.name}: logistic regression {json.dumps(lr_results[task.name])}")
        default_runs[task.name] = rounds(
            lambda s, t=task: imgpipe_default(t, weights, s), f"{task.name} default"
        )

    variants: dict[str, dict[str, list[dict]]] = {}

    def variant(label: str, task: Task, **overrides) -> None:
        variants.setdefault(label, {})[task.name] = rounds(
            lambda s: head_variant(task, s, **overrides), f"{task.name} {label}"
        )

    for task in tasks:
        variant("defaults (refit on)", task)
        variant("keep the best-epoch head (--no-refit)", task, refit=False)
    for task in tasks[1:]:
        variant("class weights none", task, class_weights="none")
    if args.grid:  # what the defaults were chosen from
        for task in tasks:
            variant("features not standardised (--no-standardize)", task, standardize=False)
            variant("dropout 0.2 (the previous default)", task, dropout=0.2)
            for lr in LR_GRID:
                variant(f"learning rate {lr:g}", task, learning_rate=lr)
    total = time.perf_counter() - t_start

    # ------------------------------------------------------------------ report
    common.emit(
        common.header(
            f"Default head vs logistic regression on the same frozen features ({BACKBONE} {SIZE}px)"
        )
    )
    common.emit(
        f"Backbone: {BACKBONE} at {SIZE}px pre-trained here on digits 0-4 (source eval accuracy "
        f"{source_acc:.3f}), frozen, one weights file for every row. imgpipe's defaults: "
        f"learning rate {defaults.learning_rate:g}, dropout {defaults.dropout:g}, batch {defaults.batch_size}, "
        f"early stopping (patience {defaults.patience}, validation slice {defaults.validation_fraction:.0%} "
        f"of train per class, cap {defaults.epochs} epochs), refit {'on' if defaults.refit else 'off'}, "
        f"class weights {defaults.class_weights}. Medians of {len(seeds)} seed(s) ({seeds[0]}..{seeds[-1]}); "
        f"logistic regression is deterministic. Whole benchmark: {total:.0f}s.\n"
    )
    rows = []
    for task in tasks:
        lr = lr_results[task.name]
        best = lr[lr["best"]]
        runs = default_runs[task.name]
        acc = med(runs, "acc")
        diff = 100 * (acc - best["acc"])
        ratio = med(runs, "head_s") / med(runs, "extract_s")
        rows.append(
            [
                task.name,
                f"{len(task.train[2])} / {len(task.eval[2])}",
                f"{best['acc']:.3f} ({lr['best']}, C={best['C']:g})",
                f"{lr['raw']['acc']:.3f} / {lr['standardised']['acc']:.3f}",
                f"{acc:.3f}",
                per_run(runs),
                f"{diff:+.1f}",
                f"{med(runs, 'extract_s'):.1f}",
                f"{med(runs, 'head_s'):.1f}",
                f"{ratio:.2f}",
                f"{med(runs, 'best_epoch'):.0f} / {med(runs, 'epochs_run'):.0f}",
                "yes" if diff >= -1.0 and ratio <= 1.0 else "no",
            ]
        )
    common.emit(
        common.table(
            [
                "task",
                "train / eval",
                "LR eval acc (target)",
                "LR raw / standardised",
                "imgpipe default eval acc",
                "per seed",
                "points vs LR",
                "extraction s",
                "head training s",
                "head / extraction",
                "best / run epochs",
                "within 1 point, head <= extraction",
            ],
            rows,
        )
    )
    common.emit()
    rows = []
    for task in tasks:
        lr = lr_results[task.name][lr_results[task.name]["best"]]
        runs = default_runs[task.name]
        rows.append(
            [
                task.name,
                f"{lr['balanced']:.3f}",
                f"{med(runs, 'balanced'):.3f}",
                f"{lr['worst_recall']:.3f}",
                f"{med(runs, 'worst_recall'):.3f}",
                "none" if runs[0]["class_weights"] is None else "balanced",
            ]
        )
    common.emit(
        common.table(
            [
                "task",
                "LR balanced acc",
                "imgpipe balanced acc",
                "LR worst class recall",
                "imgpipe worst class recall",
                "class weights (auto)",
            ],
            rows,
        )
    )
    common.emit()
    common.emit(
        "Variants on the same extracted features (trainer.train.train_cached_head, what train() runs "
        "after extraction; defaults except the named setting):\n"
    )
    rows = []
    for label, by_task in variants.items():
        for name, runs in by_task.items():
            rows.append(
                [
                    label,
                    name,
                    f"{med(runs, 'acc'):.3f}",
                    per_run(runs),
                    f"{med(runs, 'balanced'):.3f}",
                    f"{med(runs, 'worst_recall'):.3f}",
                    f"{med(runs, 'best_epoch'):.0f} / {med(runs, 'epochs_run'):.0f}",
                    f"{med(runs, 'head_s'):.2f}",
                ]
            )
    common.emit(
        common.table(
            [
                "variant",
                "task",
                "eval acc",
                "per seed",
                "balanced acc",
                "worst class recall",
                "best / run epochs",
                "head s",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
