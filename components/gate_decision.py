"""The gate's decisions as plain functions: the floor, what can be judged, the baseline, the record.

No TensorFlow or TFMA here: the Evaluator's executor (components/evaluator.py)
feeds these the eval split's label counts, the models' label vocabularies and
TFMA's results, writes the thresholds they choose into the EvalConfig so TFMA
does the gating, and writes the record they build as gate.json (the contract in
README.md's gates section: every key present, null where not applicable).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from components.gate import METRIC_ACCURACY, METRIC_AUTO, METRIC_BALANCED, GateConfig
from trainer.config import IMBALANCE_RATIO

GATE_FILE = "gate.json"  # written into the Evaluator's `evaluation` artifact directory

FLOOR_MAJORITY = "majority"
FLOOR_MIN_ACCURACY = "min_accuracy"
FLOOR_SIGNIFICANCE = "significance"
FLOOR_CHANCE = "chance"  # balanced accuracy: 1/k on k eval classes + margin

_METRIC_TEXT = {METRIC_ACCURACY: "accuracy", METRIC_BALANCED: "balanced accuracy"}

NO_BASELINE = "no blessed model yet"


class GateNotComputable(ValueError):
    """The eval split cannot judge the model (no examples, or a class without examples)."""


def _q(name: str) -> str:
    return repr(str(name))


def _names(names: Sequence[str]) -> str:
    return ", ".join(_q(n) for n in names)


# ------------------------------------------------------------------------ the floor
@dataclasses.dataclass(frozen=True)
class Floor:
    """The accuracy floor that applies, and every bound it was chosen from."""

    value: float  # above 1.0 when no result on the eval split is significant: nothing is blessed
    source: str  # FLOOR_MAJORITY, FLOOR_MIN_ACCURACY or FLOOR_SIGNIFICANCE
    min_accuracy: float
    majority_class: str
    majority_share: float
    margin: float
    significance: float = 0.0  # 0: off
    eval_examples: int = 0
    # The fewest right answers of eval_examples that beat the majority class at `significance`
    # (None: off, not even all of them right would, or the metric is balanced accuracy).
    significant_right: int | None = None
    metric: str = METRIC_ACCURACY  # what the floor applies to: METRIC_ACCURACY or METRIC_BALANCED
    eval_classes: int = 0  # classes with eval examples (balanced accuracy's chance is 1/eval_classes)

    @property
    def reachable(self) -> bool:
        return self.value <= 1.0

    @property
    def metric_text(self) -> str:
        return _METRIC_TEXT[self.metric]

    def describe(self) -> str:
        if self.metric == METRIC_BALANCED:
            return self._describe_balanced()
        majority = f"majority class {_q(self.majority_class)} has {self.majority_share:.3f} of eval"
        if self.source == FLOOR_SIGNIFICANCE:
            test = f"one-sided binomial test against the majority class's {self.majority_share:.3f}, p <= {self.significance:g}"
            if not self.reachable:
                return (
                    f"not even {self.eval_examples} right of {self.eval_examples} eval examples would pass a {test}: "
                    "the eval split is too small to tell a model from chance; add eval images"
                )
            return (
                f"{self.significant_right} right of {self.eval_examples} is the fewest that passes a {test}"
            )
        if self.source == FLOOR_MAJORITY:
            return f"{majority} + margin {self.margin:.3f}"
        return f"min_accuracy {self.min_accuracy:.3f}; {majority} + margin {self.margin:.3f} is not higher"

    def _describe_balanced(self) -> str:
        k = self.eval_classes
        chance = f"chance 1/{k} = {1 / k:.3f} (an answer that ignores the image) + margin {self.margin:.3f}"
        if self.source == FLOOR_SIGNIFICANCE:
            where = (
                f"answers that ignore the image, on this eval split's {self.eval_examples} examples in {k} "
                f"classes (p <= {self.significance:g}; seeded simulation)"
            )
            if not self.reachable:
                return (
                    f"even a balanced accuracy of 1.000 is reached too often by {where}: the eval split is too "
                    "small to tell a model from chance; add eval images"
                )
            return f"{self.value:.3f} is the least balanced accuracy not reached by chance by {where}"
        if self.source == FLOOR_CHANCE:
            return chance
        return f"min_accuracy {self.min_accuracy:.3f}; {chance} is not higher"


def fewest_right_beating(n: int, p0: float, alpha: float) -> int | None:
    """The smallest k with P(X >= k) <= alpha for X ~ Binomial(n, p0): the fewest right answers of n
    that a model guessing at accuracy p0 reaches with probability at most alpha. None if even n
    right is likelier than that (a small split, or p0 near 1)."""
    if n <= 0 or alpha <= 0:
        return None
    if p0 <= 0:
        return 1
    if p0 >= 1:
        return None
    log_p, log_q, log_n = math.log(p0), math.log1p(-p0), math.lgamma(n + 1)
    tail = 0.0
    for k in range(n, -1, -1):  # from all right down, until the tail is likelier than alpha
        tail += math.exp(log_n - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q)
        if tail > alpha * (1 + 1e-9):
            return k + 1 if k < n else None
    return 0


def accuracy_floor(
    min_accuracy: float, eval_label_counts: Mapping[str, int], margin: float, significance: float = 0.0
) -> Floor:
    """The highest of: min_accuracy; the majority share + margin (capped at 1.0: never below the
    best constant predictor); and, with `significance`, the accuracy a one-sided binomial test
    needs to tell the model from that constant predictor on this many eval examples.

    The majority class is the most frequent eval label (ties: the first name in
    sorted order). The majority bound's cap keeps a very skewed eval split judgeable
    (only a perfect model passes). The significance bound refuses what a split of a
    few images cannot show: 3 of 4 right, or 4 of 4, on two balanced classes is
    what guessing gives one time in 3 or 16. When no result on the split would be
    significant the floor is above 1.0 and no model is blessed, saying why.
    """
    total = sum(eval_label_counts.values())
    if total <= 0:
        raise GateNotComputable("the eval split has no labelled examples: the gate cannot judge any model")
    majority_class = min(eval_label_counts, key=lambda c: (-eval_label_counts[c], c))
    share = eval_label_counts[majority_class] / total
    k = sum(1 for n in eval_label_counts.values() if n > 0)
    # Rounded so that 0.5 + 0.05 is 0.55, not 0.55000000000000004 (which 11/20 would miss).
    by_majority = min(1.0, round(share + margin, 10))
    if by_majority > min_accuracy:
        value, source = by_majority, FLOOR_MAJORITY
    else:
        value, source = min_accuracy, FLOOR_MIN_ACCURACY
    right = fewest_right_beating(total, share, significance) if significance > 0 else None
    if significance > 0:
        by_significance = round(right / total, 10) if right is not None else (total + 1) / total
        if by_significance > value:
            value, source = by_significance, FLOOR_SIGNIFICANCE
    return Floor(
        value, source, min_accuracy, majority_class, share, margin, significance, total, right, eval_classes=k
    )


def gated_metric(setting: str, eval_label_counts: Mapping[str, int]) -> tuple[str, str]:
    """(the metric the gate applies to, why): `setting` itself, or for METRIC_AUTO balanced accuracy
    when the eval split's largest class has more than IMBALANCE_RATIO times the examples of its
    smallest (the rule the Trainer's class_weights "auto" follows on the train split), else accuracy."""
    if setting != METRIC_AUTO:
        return setting, f"gate.metric {setting}"
    sizes = [n for n in eval_label_counts.values() if n > 0]
    ratio = max(sizes) / min(sizes) if sizes else 1.0
    if ratio > IMBALANCE_RATIO:
        return (
            METRIC_BALANCED,
            f"auto: the eval split's largest/smallest class = {ratio:.2f} > {IMBALANCE_RATIO}",
        )
    return (
        METRIC_ACCURACY,
        f"auto: the eval split's largest/smallest class = {ratio:.2f} <= {IMBALANCE_RATIO}",
    )


def balanced_accuracy(per_class_recall: Mapping[str, float], classes: Iterable[str]) -> float | None:
    """The mean recall over `classes` (the eval split's); None when one of them has no recall."""
    values = [per_class_recall.get(c) for c in classes]
    if not values or any(v is None for v in values):
        return None
    return float(sum(values) / len(values))


def balanced_floor(
    min_accuracy: float, eval_label_counts: Mapping[str, int], margin: float, significance: float = 0.0
) -> Floor:
    """The floor for balanced accuracy: the highest of min_accuracy; 1/k + margin on the k classes
    with eval examples (capped at 1.0), which is what any answer that ignores the image scores,
    however skewed the split; and, with `significance`, the least balanced accuracy such answers
    reach with probability at most `significance` on this split's class sizes (above 1.0 when
    even a perfect score is that likely: nothing is blessed)."""
    total = sum(eval_label_counts.values())
    if total <= 0:
        raise GateNotComputable("the eval split has no labelled examples: the gate cannot judge any model")
    sizes = [n for _, n in sorted(eval_label_counts.items()) if n > 0]
    k = len(sizes)
    majority_class = min(eval_label_counts, key=lambda c: (-eval_label_counts[c], c))
    share = eval_label_counts[majority_class] / total
    by_chance = min(1.0, round(1.0 / k + margin, 10))
    if by_chance > min_accuracy:
        value, source = by_chance, FLOOR_CHANCE
    else:
        value, source = min_accuracy, FLOOR_MIN_ACCURACY
    if significance > 0:
        by_significance = chance_balanced_accuracy_bound(sizes, significance)
        if by_significance > value:
            value, source = by_significance, FLOOR_SIGNIFICANCE
    return Floor(
        value,
        source,
        min_accuracy,
        majority_class,
        share,
        margin,
        significance,
        total,
        None,
        metric=METRIC_BALANCED,
        eval_classes=k,
    )


# Splits with at most this many combinations of per-class right answers (the product of
# n_c + 1) get the exact distribution; larger ones a seeded simulation of SIMULATION_DRAWS draws
# (the estimated tail probability at 0.05 within ~0.0015, one standard error), at most
# DRAW_BUDGET binomial draws per null predictor.
EXACT_STATES = 200_000
SIMULATION_DRAWS = 20_000
DRAW_BUDGET = 20_000_000


def chance_balanced_accuracy_bound(sizes: Sequence[int], alpha: float, seed: int = 0) -> float:
    """The least balanced accuracy b with P(B >= b) <= alpha for B the balanced accuracy of answers
    that ignore the image, on eval classes of `sizes` examples; above 1.0 when no b <= 1 is that rare.

    Such an answer picks class j with some probability q_j whatever the image, so class c's
    right answers are Binomial(n_c, q_c) and B = mean_c(X_c / n_c) has mean 1/k for every q.
    Its spread, and so its tail, depends on q: both the uniform q and the q that maximises
    B's variance (sum_c q_c(1 - q_c) / n_c; on two classes they are the same) are taken, and
    the higher bound kept. B's distribution is exact on small splits (EXACT_STATES) and
    simulated with a fixed seed on larger ones, so a split always gets the same floor; there
    only values the simulation reached are candidates for b, so b errs high.
    """
    n = np.asarray(sizes, dtype=np.int64)
    if n.size == 0 or np.any(n <= 0):
        raise ValueError(f"class sizes must be positive, got {list(sizes)}")
    if alpha <= 0:
        return 0.0
    states = 1
    for n_c in n.tolist():
        states = min(states * (n_c + 1), EXACT_STATES + 1)
    exact = states <= EXACT_STATES
    rng = np.random.default_rng(seed)
    bound = 0.0
    for q in (np.full(n.size, 1.0 / n.size), _widest_chance(n)):
        values, probs = _balanced_distribution(n, q) if exact else _simulated(n, q, rng)
        tail = np.cumsum(probs[::-1])[::-1]  # P(B >= values[i])
        rare = values[tail <= alpha * (1 + 1e-9)]
        bound = max(bound, float(rare[0]) if rare.size else 1.0 + 1.0 / int(n.sum()))
    return bound


def _balanced_distribution(n: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """B's exact distribution (sorted values, their probabilities), one class convolved at a time."""
    values, probs = np.zeros(1), np.ones(1)
    for n_c, q_c in zip(n.tolist(), q.tolist(), strict=True):
        x = np.arange(n_c + 1)
        pmf = np.array([_binomial_pmf(n_c, j, q_c) for j in x])
        values = np.round((values[:, None] + x[None, :] / (n.size * n_c)).ravel(), 12)
        values, where = np.unique(values, return_inverse=True)
        probs = np.bincount(where.ravel(), weights=(probs[:, None] * pmf[None, :]).ravel())
    return values, probs


def _simulated(n: np.ndarray, q: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """B's distribution estimated from seeded draws (sorted values reached, their frequencies)."""
    draws = int(max(1_000, min(SIMULATION_DRAWS, DRAW_BUDGET // n.size)))
    scores = np.round((rng.binomial(n, q, size=(draws, n.size)) / n).mean(axis=1), 12)
    values, counts = np.unique(scores, return_counts=True)
    return values, counts / draws


def _binomial_pmf(n: int, k: int, p: float) -> float:
    if p <= 0.0 or p >= 1.0:
        return float(k == (n if p >= 1.0 else 0))
    return math.exp(
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )


def _widest_chance(n: np.ndarray) -> np.ndarray:
    """The class probabilities q (summing to 1) that maximise sum_c q_c (1 - q_c) / n_c: setting
    the derivative (1 - 2 q_c) / n_c to a common lam gives q_c = max(0, (1 - lam n_c) / 2), and
    lam >= 0 is found by bisection so that the q_c sum to 1."""

    def q_of(lam: float) -> np.ndarray:
        return np.clip((1.0 - lam * n) / 2.0, 0.0, 1.0)

    if q_of(0.0).sum() <= 1.0:  # one or two classes: q_c = 1/2 sums to at most 1
        q = q_of(0.0)
        return q / q.sum()
    lo, hi = 0.0, 1.0 / float(n.min())
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if q_of(mid).sum() > 1.0 else (lo, mid)
    q = q_of(hi)
    return q / q.sum()


def check_computable(eval_label_counts: Mapping[str, int], class_names: Sequence[str]) -> None:
    """GateNotComputable naming each of the model's classes that has no eval example."""
    if sum(eval_label_counts.values()) <= 0:
        raise GateNotComputable("the eval split has no labelled examples: the gate cannot judge any model")
    missing = [c for c in class_names if eval_label_counts.get(c, 0) <= 0]
    if missing:
        which = "class" if len(missing) == 1 else "classes"
        raise GateNotComputable(
            f"{which} {_names(missing)} of the model {'has' if len(missing) == 1 else 'have'} no example "
            "in the eval split: the gate cannot judge its recall, so nothing is blessed or pushed "
            "(add eval examples of it, or remove it from train)"
        )


# --------------------------------------------------------------------- the baseline
def label_set_change(before: Sequence[str], after: Sequence[str]) -> str | None:
    """'new class '8'; vanished class '7'' when the two label sets differ, else None."""
    new = sorted(set(after) - set(before))
    gone = sorted(set(before) - set(after))
    parts = []
    if new:
        parts.append(f"new {'class' if len(new) == 1 else 'classes'} {_names(new)}")
    if gone:
        parts.append(f"vanished {'class' if len(gone) == 1 else 'classes'} {_names(gone)}")
    return "; ".join(parts) or None


@dataclasses.dataclass(frozen=True)
class BaselinePlan:
    compared: bool
    skipped_reason: str | None
    # The baseline is byte for byte the candidate (a re-run whose Trainer was cached): the
    # comparison is decided without evaluating it twice, since its accuracy is the candidate's.
    identical: bool = False
    # The baseline's accuracy on these very eval examples was measured when it was the
    # candidate (gate.json of that Evaluator execution, this path): TFMA does not run it again.
    reused_from: str | None = None
    # How many eval examples the baseline trained on (trainer/image_ids.py); None: unknown (a
    # model without the record) or not looked at (none compared, or the candidate itself).
    seen_eval_examples: int | None = None
    # The eval examples both models are compared on when either trained on some of the split
    # (the same image bytes in its train split): the ones neither saw. None: the whole split.
    compared_examples: int | None = None


def baseline_plan(
    candidate_classes: Sequence[str], baseline_classes: Sequence[str] | None, identical: bool = False
) -> BaselinePlan:
    """Compare with the latest blessed model only when there is one with the candidate's label set.

    baseline_classes: None when there is no blessed model yet. Accuracy over a
    different set of classes is a different task, so a regression test against
    it would be meaningless: it is skipped, with the reason, never silently.
    identical: the baseline's files are the candidate's; it is compared (and
    cannot have regressed) without TFMA running it a second time.
    """
    if baseline_classes is None:
        return BaselinePlan(False, NO_BASELINE)
    change = label_set_change(baseline_classes, candidate_classes)
    if change:
        return BaselinePlan(False, f"label set changed: {change} (against the latest blessed model)")
    return BaselinePlan(True, None, identical)


# Fewest eval images neither model trained on that a comparison is made on. Below it the
# comparison is skipped with the reason: a handful of images cannot tell two models apart,
# and the images a model saw flatter it.
MIN_UNSEEN_TO_COMPARE = 20


def with_seen_examples(
    baseline: BaselinePlan,
    eval_examples: int,
    seen: int | None,
    candidate_seen: int = 0,
    either: int | None = None,
) -> BaselinePlan:
    """The baseline plan once it is known which eval examples each model trained on.

    seen: how many the baseline trained on (None: it keeps no record of its training images);
    candidate_seen: how many the candidate trained on; either: how many at least one of the
    two trained on (needed when the candidate trained on any; else `seen`). None of them:
    compared on the whole split, as before. Some: compared only on the ones neither trained
    on, both models measured on exactly those; when fewer than MIN_UNSEEN_TO_COMPARE are
    left, not compared, saying why.
    """
    if not baseline.compared or baseline.identical:
        return baseline
    if either is None:
        if candidate_seen:
            raise ValueError(
                "with_seen_examples: `either` is needed when the candidate trained on eval examples"
            )
        either = seen or 0
    if either <= 0:
        return dataclasses.replace(baseline, seen_eval_examples=seen)
    unseen = eval_examples - either
    if unseen < MIN_UNSEEN_TO_COMPARE:
        return BaselinePlan(
            False,
            f"{_who_trained_on(eval_examples, seen, candidate_seen)}: the {unseen} that neither model "
            f"trained on are fewer than {MIN_UNSEEN_TO_COMPARE} to compare on",
            seen_eval_examples=seen,
        )
    return dataclasses.replace(baseline, seen_eval_examples=seen, compared_examples=unseen, reused_from=None)


def _who_trained_on(eval_examples: int, seen: int | None, candidate_seen: int) -> str:
    """Which model trained on how many of the eval examples (the same image bytes in its train split)."""
    parts = []
    if seen:
        parts.append(f"the latest blessed model trained on {seen}")
    if candidate_seen:
        parts.append(
            f"the candidate on {candidate_seen}" if parts else f"the candidate trained on {candidate_seen}"
        )
    whose = "their train splits" if len(parts) > 1 else "its train split"
    return (
        f"{' and '.join(parts)} of the {eval_examples} eval examples (the same image bytes were in {whose})"
    )


# --------------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class GatePlan:
    """Everything the Evaluator decides before TFMA runs."""

    floor: Floor
    class_names: tuple[str, ...]  # the candidate's vocabulary, in index order
    min_class_recall: float | None  # None: off
    max_regression: float
    baseline: BaselinePlan
    # The classes with eval examples (sorted): balanced accuracy is the mean recall over them.
    eval_classes: tuple[str, ...] = ()
    metric_reason: str = ""  # why the floor's metric is gated on (gated_metric)

    @property
    def metric(self) -> str:
        return self.floor.metric


def plan_gate(
    gate: GateConfig,
    eval_label_counts: Mapping[str, int],
    class_names: Sequence[str],
    baseline_classes: Sequence[str] | None,
    baseline_identical: bool = False,
) -> GatePlan:
    """The thresholds for this run; GateNotComputable when the eval split cannot judge the model."""
    check_computable(eval_label_counts, class_names)
    metric, why = gated_metric(gate.metric, eval_label_counts)
    floor_of = balanced_floor if metric == METRIC_BALANCED else accuracy_floor
    return GatePlan(
        floor=floor_of(gate.min_accuracy, eval_label_counts, gate.majority_margin, gate.significance),
        class_names=tuple(class_names),
        min_class_recall=gate.min_class_recall or None,
        max_regression=gate.max_regression,
        baseline=baseline_plan(class_names, baseline_classes, baseline_identical),
        eval_classes=tuple(sorted(c for c, n in eval_label_counts.items() if n > 0)),
        metric_reason=why,
    )


# ------------------------------------------------------------ TFMA's answer, plainly
@dataclasses.dataclass(frozen=True)
class Failure:
    """One threshold TFMA found unmet."""

    class_name: str | None  # None: the overall slice
    is_change: bool  # True: the no-regression (change) threshold
    value: float | None


@dataclasses.dataclass(frozen=True)
class EvalResults:
    """What TFMA measured and which thresholds failed.

    accuracy, per_class and balanced_accuracy are the candidate's on the whole split;
    baseline_accuracy and compared_accuracy are in the gated metric (the plan's floor.metric).
    """

    accuracy: float | None
    examples: int | None
    per_class: Mapping[str, float]
    baseline_accuracy: float | None
    failures: Sequence[Failure] = ()
    problems: Sequence[str] = ()  # TFMA validation problems that are not a metric below a bound
    # The candidate's gated metric on the examples the baseline was compared on, when that is
    # not the whole split (BaselinePlan.compared_examples); baseline_accuracy is then the
    # baseline's on those same examples.
    compared_accuracy: float | None = None
    balanced_accuracy: float | None = None
    baseline_per_class: Mapping[str, float] = dataclasses.field(default_factory=dict)


def gated_value(plan: GatePlan, results: EvalResults) -> float | None:
    """The candidate's gated metric on the whole eval split."""
    return results.balanced_accuracy if plan.metric == METRIC_BALANCED else results.accuracy


def floor_failure(floor: Floor, value: float | None) -> Failure | None:
    """The floor as TFMA applies it (value >= floor), where it is decided outside TFMA (balanced
    accuracy); a missing or NaN value fails."""
    if value is not None and value >= floor.value - METRIC_TOLERANCE:
        return None
    return Failure(None, False, value)


# TFMA computes accuracy in float32: 19/20 arrives as 0.94999998807907, below a floor of
# 0.95 by 1.2e-8. Every bound is compared with this much slack, so a model exactly at a
# bound passes; it is far below one example's share of any eval split under a million.
METRIC_TOLERANCE = 1e-6


def change_failure(accuracy: float | None, baseline: float, max_regression: float) -> Failure | None:
    """The no-regression threshold as TFMA applies it (change >= -max_regression), for a reused baseline."""
    if accuracy is None:
        return None
    change = accuracy - baseline
    # Not `change < bound`: a NaN accuracy (or baseline) fails the threshold instead of passing it.
    return None if change >= -max_regression - METRIC_TOLERANCE else Failure(None, True, change)


def reasons(plan: GatePlan, results: EvalResults) -> list[str]:
    """Why the model was not blessed, one sentence per failed threshold (empty when none failed)."""
    out = []
    known = set(plan.class_names)
    for f in results.failures:
        value = f.value if f.value is not None else float("nan")
        if f.is_change:
            base = results.baseline_accuracy
            base_text = f"{base:.3f}" if base is not None else "unknown"
            unseen = plan.baseline.compared_examples
            current = results.compared_accuracy if unseen is not None else gated_value(plan, results)
            current = current if current is not None else float("nan")
            where = f" on the {unseen} eval examples neither model trained on" if unseen is not None else ""
            out.append(
                f"{plan.floor.metric_text} {current:.3f}{where} regressed from the latest blessed model's {base_text} "
                f"by more than max_regression {plan.max_regression:.3f}"
            )
        elif f.class_name is None and not plan.floor.reachable:
            out.append(f"no model can be blessed on this eval split: {plan.floor.describe()}")
        elif f.class_name is None:
            got, floor = _apart(value, plan.floor.value)
            out.append(f"{plan.floor.metric_text} {got} is below the floor {floor} ({plan.floor.describe()})")
        else:
            got, bound = _apart(value, plan.min_class_recall or 0.0)
            text = f"class {_q(f.class_name)} recall {got} is below min_class_recall {bound}"
            if f.class_name not in known:
                text += " (the model has no such class: it was not in the train split)"
            out.append(text)
    out.extend(f"TFMA: {p}" for p in results.problems)
    return out


def _apart(value: float, bound: float) -> tuple[str, str]:
    """The two numbers with 3 decimals, or with as many more (up to 6) as it takes for them not
    to read the same: a value a hair below its bound must not read "0.550 is below 0.550"."""
    for digits in (3, 4, 5, 6):
        a, b = f"{value:.{digits}f}", f"{bound:.{digits}f}"
        if a != b:
            break
    return a, b


def gate_record(
    plan: GatePlan,
    results: EvalResults,
    blessed: bool,
    anomalies_allowed: Sequence[str] = (),
    measured: Mapping[str, Any] | None = None,
    tfma_run: Mapping[str, Any] | None = None,
    tfma_reused_from: str | None = None,
    eval_examples_in_train: int | None = None,
) -> dict[str, Any]:
    """The decision record (gate.json): every key of the contract, null where not applicable.

    measured: what the accuracy was measured on (model, eval examples, model specs), so a later
    Evaluator comparing against this model on the same examples can reuse the number.
    tfma_run: every input of TFMA's run, so a later identical run can reuse its output;
    tfma_reused_from: the execution folder whose output this one reused.
    eval_examples_in_train: how many eval examples are images the candidate trained on (None:
    the candidate has no record of its training images).
    """
    why = reasons(plan, results)
    if not blessed and not why:
        why = ["TFMA did not bless the model without naming a failed threshold (see its validations file)"]
    floor = plan.floor
    return {
        "blessed": bool(blessed),
        "metric": plan.metric,
        "metric_reason": plan.metric_reason,
        "value": gated_value(plan, results),
        "accuracy": results.accuracy,
        "balanced_accuracy": results.balanced_accuracy,
        "eval_examples": results.examples,
        "eval_classes": floor.eval_classes,
        "floor": floor.value,
        "floor_source": floor.source,
        "min_accuracy": floor.min_accuracy,
        "majority_class": floor.majority_class,
        "majority_share": floor.majority_share,
        "majority_margin": floor.margin,
        "significance": floor.significance,
        "significant_right": floor.significant_right,
        "class_names": list(plan.class_names),
        "per_class_recall": dict(sorted(results.per_class.items())),
        "min_class_recall": plan.min_class_recall,
        "baseline": {
            "accuracy": _baseline_accuracy(plan, results),
            "max_regression": plan.max_regression,
            "compared": plan.baseline.compared,
            "skipped_reason": plan.baseline.skipped_reason,
            "identical": plan.baseline.identical,
            "reused_from": plan.baseline.reused_from,
            "seen_eval_examples": plan.baseline.seen_eval_examples,
            "compared_examples": _compared_examples(plan.baseline, results),
            "candidate_accuracy": _candidate_accuracy(plan, results),
        },
        "reasons": [] if blessed else why,
        "anomalies_allowed": list(anomalies_allowed),
        "measured": dict(measured) if measured is not None else None,
        "tfma_run": dict(tfma_run) if tfma_run is not None else None,
        "tfma_reused_from": tfma_reused_from,
        "eval_examples_in_train": eval_examples_in_train,
    }


def _baseline_accuracy(plan: GatePlan, results: EvalResults) -> float | None:
    baseline = plan.baseline
    if not baseline.compared:
        return None
    return gated_value(plan, results) if baseline.identical else results.baseline_accuracy


def _compared_examples(baseline: BaselinePlan, results: EvalResults) -> int | None:
    if not baseline.compared:
        return None
    return baseline.compared_examples if baseline.compared_examples is not None else results.examples


def _candidate_accuracy(plan: GatePlan, results: EvalResults) -> float | None:
    """The candidate's gated metric on the examples the baseline was compared on."""
    baseline = plan.baseline
    if not baseline.compared:
        return None
    return results.compared_accuracy if baseline.compared_examples is not None else gated_value(plan, results)
