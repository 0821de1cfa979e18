"""The no-regression comparison on the eval images neither model trained on.

When the data is split anew (ingest with another seed or eval fraction), images the
blessed model trained on can land in the new eval split; TFRecords made elsewhere can
also repeat an image in the train and eval splits. There a model scores its own training
images: a candidate as good as the baseline looks like a regression, or a worse one like
an equal. The Evaluator therefore asks `seen_by` which eval records each model trained on
(the fingerprints its Trainer recorded, trainer/image_ids.py). When some were, TFMA
judges the candidate alone (floor and per-class recall on the whole split, as always) and
`answers_on_unseen` measures both models here on the rest, the records neither trained
on, through the serving signature TFMA gates on. The Evaluator applies the no-regression
threshold to those two numbers (components/gate_decision.py: `with_seen_examples`,
`change_failure`).

When the candidate itself trained on eval images, or eval records repeat an image, the
candidate is judged on the rest alone (gate_decision.JudgedOn): `answers_on` gives each
model's right and wrong answers there, from which the Evaluator takes the accuracy, the
per-class recall and the comparison.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from trainer import image_ids

log = logging.getLogger(__name__)


def seen_by(
    model_uri: str, eval_ids: Callable[[], np.ndarray], whose: str, sets: Sequence[np.ndarray] = ()
) -> np.ndarray | None:
    """A mask over the eval records in file order, True where the model at `model_uri` trained on
    that image, or on a near-copy of it (one of ingest's `sets`, image_ids.near_copies_seen).

    None, logged, when the model has no readable record of its training images (a model
    trained before imgpipe kept one). `eval_ids` (the eval records' fingerprints) is called
    only when there is a record. `whose` names the model in the log.
    """
    trained_on = trained_images(model_uri, whose)
    if trained_on is None:
        return None
    ids = eval_ids()
    return image_ids.seen(ids, trained_on) | image_ids.near_copies_seen(ids, trained_on, sets)


def trained_images(model_uri: str, whose: str) -> np.ndarray | None:
    """The fingerprints of the images the model at `model_uri` trained on; None, logged, when it
    keeps no readable record of them."""
    try:
        trained_on = image_ids.read(model_uri)
    except ValueError as e:
        log.warning("%s's record of its training images is unreadable: %s", whose, e)
        return None
    if trained_on is None:
        log.info("%s has no record of its training images", whose)
    return trained_on


@dataclasses.dataclass(frozen=True)
class Answers:
    """A model's answers on some eval records: their true labels, its top-1 classes and a
    right/wrong mask, in the split's record order."""

    labels: np.ndarray  # str
    right: np.ndarray  # bool
    top1: np.ndarray | None = None  # str: the class each record was given (None: not kept)

    def __len__(self) -> int:
        return len(self.labels)

    def on(self, mask: np.ndarray) -> Answers:
        """The answers on the records where `mask` (over these records) is True."""
        return Answers(self.labels[mask], self.right[mask], None if self.top1 is None else self.top1[mask])

    def accuracy(self) -> float:
        """Top-1 accuracy (NaN on no record)."""
        return float(np.mean(self.right)) if len(self) else float("nan")

    def per_class(self) -> dict[str, float]:
        """The recall of each true class these records hold."""
        # Counted by the labels as they are: NumPy's fixed-width strings would drop a trailing NUL.
        right: dict[str, int] = {}
        for label, hit in zip(self.labels, self.right, strict=True):
            right[label] = right.get(label, 0) + int(hit)
        return {c: right[c] / n for c, n in self.counts().items()}

    def counts(self) -> dict[str, int]:
        """How many of these records each true class holds."""
        out: dict[str, int] = {}
        for label in self.labels:
            out[label] = out.get(label, 0) + 1
        return dict(sorted(out.items()))

    def answered(self) -> dict[str, tuple[int, int]]:
        """{class: (records given it, right ones)} for each class given to a record."""
        if self.top1 is None:
            raise ValueError("these answers kept no top-1 classes")
        out: dict[str, tuple[int, int]] = {}
        for given, hit in zip(self.top1, self.right, strict=True):
            n, right = out.get(given, (0, 0))
            out[given] = (n + 1, right + int(hit))
        return out

    def balanced(self) -> float:
        """The mean recall over the true classes these records hold (NaN on no record)."""
        recall = self.per_class()
        return float(np.mean(list(recall.values()))) if recall else float("nan")

    def value(self, balanced: bool) -> float:
        return self.balanced() if balanced else self.accuracy()


def answers_on(
    measure: np.ndarray,
    eval_files: str | Sequence[str],
    model_dirs: Sequence[str],
    batch_size: int,
) -> list[Answers]:
    """Each SavedModel's answers (serving_default's top-1) on the eval records where the mask
    `measure` is True.

    A record whose label is not one of a model's classes counts as wrong, as in TFMA's
    accuracy. The records are read again in batches of `batch_size`, not held in memory.
    """
    from components.prepush_checks import reference_answers

    if not measure.any():
        raise ValueError("no eval record is left to measure the models on")
    start = time.perf_counter()
    models = [tf.saved_model.load(d) for d in model_dirs]
    top1: list[list[str]] = [[] for _ in models]
    truth: list[str] = []
    position = 0
    for ids, labels, serialized in image_ids.batches(eval_files, batch_size):
        take = measure[position : position + len(ids)]
        position += len(ids)
        records = [r for r, t in zip(serialized, take, strict=True) if t]
        if not records:
            continue
        wanted = [label.decode("utf-8", "replace") for label, t in zip(labels, take, strict=True) if t]
        truth.extend(wanted)
        for i, (path, model) in enumerate(zip(model_dirs, models, strict=True)):
            answers = reference_answers(path, records, model)
            top1[i].extend(answers.top1(j) for j in range(len(wanted)))
    if position != len(measure):
        raise ValueError(
            f"the eval split changed while it was read: {position} records, {len(measure)} before"
        )
    log.info(
        "measured %d model(s) on %d eval examples in %.1fs",
        len(models),
        len(truth),
        time.perf_counter() - start,
    )
    labels = np.array(truth, dtype=object)
    return [
        Answers(
            labels,
            np.array([g == t for g, t in zip(given, truth, strict=True)], bool),
            np.array(given, object),
        )
        for given in top1
    ]


def answers_on_unseen(
    seen: np.ndarray,
    eval_files: str | Sequence[str],
    model_dirs: Sequence[str],
    batch_size: int,
) -> list[Answers]:
    """Each SavedModel's answers (serving_default's top-1) on the eval records where `seen` is
    False (`seen`: the records either model trained on); `.value(balanced)` is its top-1 or
    balanced accuracy there (the mean recall over the classes those records hold)."""
    if not (~seen).any():
        raise ValueError("no eval record is left to compare the models on")
    return answers_on(~seen, eval_files, model_dirs, batch_size)
