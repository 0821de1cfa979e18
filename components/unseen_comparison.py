"""The no-regression comparison on the eval images neither model trained on.

When the data is split anew (ingest with another seed or eval fraction), images the
blessed model trained on can land in the new eval split; TFRecords made elsewhere can
also repeat an image in the train and eval splits. There a model scores its own training
images: a candidate as good as the baseline looks like a regression, or a worse one like
an equal. The Evaluator therefore asks `seen_by` which eval records each model trained on
(the fingerprints its Trainer recorded, trainer/image_ids.py). When some were, TFMA
judges the candidate alone (floor and per-class recall on the whole split, as always) and
`accuracies_on_unseen` measures both models here on the rest, the records neither trained
on, through the serving signature TFMA gates on. The Evaluator applies the no-regression
threshold to those two numbers (components/gate_decision.py: `with_seen_examples`,
`change_failure`).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from trainer import image_ids

log = logging.getLogger(__name__)


def seen_by(model_uri: str, eval_ids: Callable[[], np.ndarray], whose: str) -> np.ndarray | None:
    """A mask over the eval records in file order, True where the model at `model_uri` trained on
    that image.

    None, logged, when the model has no readable record of its training images (a model
    trained before imgpipe kept one). `eval_ids` (the eval records' fingerprints) is called
    only when there is a record. `whose` names the model in the log.
    """
    try:
        trained_on = image_ids.read(model_uri)
    except ValueError as e:
        log.warning("%s's record of its training images is unreadable: %s", whose, e)
        return None
    if trained_on is None:
        log.info("%s has no record of its training images", whose)
        return None
    return image_ids.seen(eval_ids(), trained_on)


def accuracies_on_unseen(
    seen: np.ndarray,
    eval_files: str | Sequence[str],
    model_dirs: Sequence[str],
    batch_size: int,
    balanced: bool = False,
) -> list[float]:
    """Each SavedModel's top-1 accuracy (serving_default) on the eval records where `seen` is False
    (`seen`: the records either model trained on); with `balanced`, its balanced accuracy there
    (the mean recall over the classes those records hold).

    A record whose label is not one of a model's classes counts as wrong, as in TFMA's
    accuracy. The records are read again in batches of `batch_size`, not held in memory.
    """
    from components.prepush_checks import reference_answers

    if not (~seen).any():
        raise ValueError("no eval record is left to compare the models on")
    start = time.perf_counter()
    models = [tf.saved_model.load(d) for d in model_dirs]
    right = np.zeros(len(models), np.int64)
    per_class = [collections.Counter() for _ in models]  # right answers by true class
    totals: collections.Counter = collections.Counter()  # records by true class
    position = total = 0
    for ids, labels, serialized in image_ids.batches(eval_files, batch_size):
        take = ~seen[position : position + len(ids)]
        position += len(ids)
        records = [r for r, t in zip(serialized, take, strict=True) if t]
        if not records:
            continue
        truth = [label.decode("utf-8", "replace") for label, t in zip(labels, take, strict=True) if t]
        totals.update(truth)
        for i, (path, model) in enumerate(zip(model_dirs, models, strict=True)):
            answers = reference_answers(path, records, model)
            hits = [want for j, want in enumerate(truth) if answers.top1(j) == want]
            right[i] += len(hits)
            per_class[i].update(hits)
        total += len(records)
    if position != len(seen):
        raise ValueError(f"the eval split changed while it was read: {position} records, {len(seen)} before")
    log.info(
        "compared %d models on %d eval examples neither trained on in %.1fs",
        len(models),
        total,
        time.perf_counter() - start,
    )
    if balanced:
        return [float(np.mean([hits[c] / n for c, n in totals.items()])) for hits in per_class]
    return [float(r) / total for r in right]
