"""Train labels the head's held-out answers doubt: the label check after head training.

A head trained on a split where some labels are wrong learns around them, passes the gate on a
clean eval split, and nothing points at the wrong labels: an audit flipped 75 of 300 train labels
at random and the run was blessed at 0.873 without a word. The head's answers on train images it
did not train on tell: the Trainer already has them, from the folds that chose the epoch count
(every train image held out once) or from the validation slice (the images held out from the
selection fit).

Of those held-out answers (probabilities over the classes), an image is *doubted* when the head
answers another class about as surely as it answers that class's own images and its given label
less surely than it answers that label's images: its answered class's probability is at least the
mean probability of that class over the images labelled with it, and its given label's
probability is below the mean for the images labelled so (per-class thresholds, as in confident
learning: a hard task's low confidences lower them alike). Doubted images are listed with the
lowest probability for their given label first: the order in which wrong labels come up most.

The check says more than a count when the held-out answers agree with the train labels
significantly less (or more) than the model's answers agree with the eval split's:
GAP or more apart, and sampling alone giving such a gap with probability below SIGNIFICANCE.
Agreement on train far below eval means train labels the eval split does not share: wrong
labels in train (the audit's 0.633 against 0.873). Far above means the eval split disagrees with
what train teaches: wrong eval labels, or eval pictures unlike the train pictures. A run with the
same wrong labels in both splits shows no gap; the doubted images are still listed.

It judges and stops nothing: the gate's numbers are the eval split's.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

GAP = 0.10  # held-out agreement on train and eval accuracy this far apart: said
SIGNIFICANCE = 0.001  # ... when sampling alone would part them so with a lower probability
MIN_DOUBTED = 5  # fewer doubted images than this: no warning on train labels
LISTED = 50  # doubted images listed in the training summary, lowest given-label probability first
PAIRS = 10  # (given, answered) pairs listed, most doubted images first


@dataclasses.dataclass
class HeldOut:
    """The head's answers on train images it did not train on: `positions` in the train split
    (file order), their class `probabilities` [n, classes] and how they were held out."""

    positions: np.ndarray
    probabilities: np.ndarray
    source: str  # "cross-validation (K folds)" or "the validation slice"
    # The answering heads' own accuracy on the eval split, when they are not the final model (the
    # selection fit on the slice, before the refit replaced it; the folds' heads at the chosen
    # epoch, their mean): the check compares the same heads' answers on both sides. None: the
    # final model's is used.
    eval_accuracy: float | None = None


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """[n, classes] from a head's outputs: softmax rows as they are, one sigmoid unit as [1 - p, p]."""
    outputs = np.asarray(outputs, np.float64)
    if outputs.ndim == 1:
        outputs = outputs.reshape(-1, 1)
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        return np.concatenate([1.0 - outputs, outputs], axis=1)
    return outputs


def doubted(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices (into the rows) of the doubted images (module docstring), lowest probability for the
    given label first. A class no held-out image is labelled with has no threshold: no image is
    doubted for being answered as it."""
    p = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels, np.int64)
    classes = p.shape[1]
    counts = np.bincount(labels, minlength=classes)
    sums = np.zeros(classes)
    np.add.at(sums, labels, p[np.arange(len(labels)), labels])
    thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)
    answered = np.argmax(p, axis=1)
    given = p[np.arange(len(labels)), labels]
    sure = p[np.arange(len(labels)), answered] >= thresholds[answered]
    doubt = np.flatnonzero((answered != labels) & sure & (given < thresholds[labels]))
    return doubt[np.argsort(given[doubt], kind="stable")]


def _two_sided_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Fisher's exact test on the 2 x 2 table of right and wrong answers: the probability that
    sampling alone parts the two proportions so far (exact at any size, small eval splits too)."""
    from scipy import stats

    return float(stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)


def check(
    held: HeldOut,
    labels: np.ndarray,
    class_names: Sequence[str],
    eval_accuracy: float | None,
    eval_examples: int,
    chosen_on_it: bool = False,
) -> dict[str, Any]:
    """The label check's record (the training summary's `label_check`): how the held-out answers
    agree with the train labels, the doubted images and pairs, and a `warning` (None: nothing to
    say beyond the numbers). `labels`: every train image's class index, in file order.
    `chosen_on_it`: the answering head won a search scored on those images (--tune's slice), so
    its agreement is optimistic: the gap that says the eval split disagrees is not warned on.
    Answers that are not all finite (a diverged head) are not judged: agreement None."""
    p = class_probabilities(held.probabilities)
    given = np.asarray(labels, np.int64)[held.positions]
    if not np.all(np.isfinite(p)):
        return {
            "held_out": held.source,
            "examined": len(given),
            "agreement": None,
            "eval_accuracy": eval_accuracy,
            "eval_examples": eval_examples,
            "doubted": 0,
            "pairs": [],
            "images": [],
            "warning": None,
            "not_judged": "the head's held-out answers are not all finite numbers",
        }
    n = len(given)
    agree = int((np.argmax(p, axis=1) == given).sum()) if n else 0
    agreement = agree / n if n else None
    doubt = doubted(p, given) if n else np.empty(0, np.int64)
    answered = np.argmax(p, axis=1)
    pairs = collections.Counter((int(given[i]), int(answered[i])) for i in doubt)
    record: dict[str, Any] = {
        "held_out": held.source,
        "examined": n,
        "agreement": agreement,
        "eval_accuracy": eval_accuracy,
        "eval_examples": eval_examples,
        "doubted": len(doubt),
        "pairs": [
            {"given": class_names[a], "answered": class_names[b], "images": k}
            for (a, b), k in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:PAIRS]
        ],
        "images": [
            {
                "position": int(held.positions[i]),
                "given": class_names[int(given[i])],
                "answered": class_names[int(answered[i])],
                "given_probability": round(float(p[i, given[i]]), 4),
                "answered_probability": round(float(p[i, answered[i]]), 4),
            }
            for i in doubt[:LISTED]
        ],
        "warning": None,
    }
    record["warning"] = _warning(record, agree, chosen_on_it)
    return record


def _warning(record: dict[str, Any], agree: int, chosen_on_it: bool = False) -> str | None:
    n, eval_n, eval_accuracy = record["examined"], record["eval_examples"], record["eval_accuracy"]
    if not n or not eval_n or eval_accuracy is None:
        return None
    right = round(eval_accuracy * eval_n)
    gap = record["agreement"] - eval_accuracy
    if abs(gap) < GAP or _two_sided_p(agree, n, right, eval_n) >= SIGNIFICANCE:
        return None
    numbers = (
        f"the head's answers on {n} train images it did not train on ({record['held_out']}) agree with "
        f"their labels at {record['agreement']:.3f}, its answers on the eval split at {eval_accuracy:.3f}"
    )
    if gap > 0:
        if chosen_on_it:
            return None
        return (
            f"label check: {numbers}: the eval split disagrees with what the train split teaches "
            "(eval labels wrong, or eval pictures unlike the train pictures; the run report lists the eval "
            "images answered wrongly)"
        )
    if record["doubted"] < MIN_DOUBTED:
        return None
    top = record["pairs"][0]
    return (
        f"label check: {numbers}: train labels may be wrong. {record['doubted']} train images are answered "
        f"as another class as surely as that class's own images (most often '{top['answered']}' for images "
        f"labelled '{top['given']}': {top['images']}); the training summary's label_check lists "
        f"{min(record['doubted'], LISTED)} of them, the least likely labels first"
    )
