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
from typing import Any, Protocol

import numpy as np
from scipy.stats import binom

from components.gate import METRIC_ACCURACY, METRIC_AUTO, METRIC_BALANCED, GateConfig
from trainer.class_names import is_plain
from trainer.config import IMBALANCE_RATIO
from trainer.features import code_points, counted

GATE_FILE = "gate.json"  # written into the Evaluator's `evaluation` artifact directory

FLOOR_MAJORITY = "majority"
FLOOR_MIN_ACCURACY = "min_accuracy"
FLOOR_SIGNIFICANCE = "significance"
FLOOR_CHANCE = "chance"  # balanced accuracy: 1/k on k eval classes + margin

_METRIC_TEXT = {METRIC_ACCURACY: "accuracy", METRIC_BALANCED: "balanced accuracy"}

NO_BASELINE = "no blessed model yet"

# On a Model artifact (`imgpipe rollback`, imgpipe/orchestration/rollback.py): why the model was
# taken out of serving. The Evaluator does not bless it and the Pusher does not push it again.
ROLLED_BACK_KEY = "rolled_back"


def rolled_back_reason(note: str) -> str:
    """The gate's reason for a candidate that an `imgpipe rollback` took out of serving."""
    return (
        f"this model was {note}; it is not blessed again (a model trained anew on changed data or "
        "settings is judged as usual; `imgpipe rollback --to <its version>` serves it again on purpose)"
    )


class GateNotComputable(ValueError):
    """The eval split cannot judge the model (no examples, or a class without examples)."""


def quoted(name: str) -> str:
    """The label quoted; with its code points when it does not print as what it is (not NFC, or
    a hidden character: class_names.is_plain), so that two labels that print alike ('é'
    composed, 'é' as e + accent) read differently: "new class 'café'; vanished class 'café'"
    named a label in another Unicode form than the served model's."""
    name = str(name)
    if is_plain(name):
        return repr(name)
    return f"{name!r} ({code_points(name)})"


_q = quoted


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
    # balanced accuracy's significance bound: "exact" or "simulation" (how it was computed), or
    # "hoeffding" (not computed: Hoeffding's inequality shows it is below the floor; see
    # chance_cannot_reach); "" with significance off.
    chance_method: str = ""
    # The pictures among eval_examples when fewer (ingest's sets of near-copies, each counted
    # once: `eval_pictures`): the significance bound's sample size, significant_right of these.
    eval_pictures: int | None = None

    @property
    def _sample(self) -> str:
        """The significance test's sample, in words."""
        return sample_text(self.eval_examples, self.eval_pictures)

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
            n = self.eval_examples if self.eval_pictures is None else self.eval_pictures
            if not self.reachable:
                return (
                    f"not even {n} right of {self._sample} would pass a {test}: "
                    "the eval split is too small to tell a model from chance; add eval images"
                )
            if self.eval_pictures is not None:
                return f"{self.significant_right} right of {self._sample} is the fewest that passes a {test}"
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
                f"answers that ignore the image, on {self._sample} in {k} "
                f"classes, whatever the frequencies they answer with (p <= {self.significance:g}; "
                f"{'exact distribution' if self.chance_method == 'exact' else 'seeded simulation'})"
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


def sample_text(examples: Any, pictures: Any) -> str:
    """What a significance bound counted, in words: the eval examples, or their pictures when
    ingest's near-copy sets made fewer (gate.json's `eval_pictures`)."""
    if not isinstance(pictures, int):
        return f"{examples} eval examples"
    return f"{pictures} pictures (the eval split's {examples} images, each set of near-copies counted once)"


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


def _pictures(
    eval_label_counts: Mapping[str, int], pictures: Mapping[str, int] | None
) -> dict[str, int] | None:
    """Each class's eval pictures (at most its examples) when some class has fewer pictures than
    examples; None otherwise (every example its own picture, or not known)."""
    if not pictures:
        return None
    counted = {c: max(0, min(int(pictures.get(c, n)), n)) for c, n in eval_label_counts.items()}
    return counted if any(counted[c] < n for c, n in eval_label_counts.items()) else None


def accuracy_floor(
    min_accuracy: float,
    eval_label_counts: Mapping[str, int],
    margin: float,
    significance: float = 0.0,
    pictures: Mapping[str, int] | None = None,
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

    `pictures`: each class's eval pictures, when ingest kept sets of near-copies (a clip's frames,
    one picture saved several ways) in the eval split: the binomial test counts pictures, not
    images, for frames of one picture are answered alike and are one piece of evidence (an
    audit's two classes of three 25-frame clips, one clip each in eval: a model that learned
    nothing was blessed at 1.0 on one seed of four). The majority share stays the images'
    (what the constant predictor scores).
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
    counted = _pictures(eval_label_counts, pictures)
    n = total if counted is None else sum(counted.values())
    right = fewest_right_beating(n, share, significance) if significance > 0 else None
    if significance > 0:
        by_significance = round(right / n, 10) if right is not None else (n + 1) / n
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
        right,
        eval_classes=k,
        eval_pictures=None if counted is None else n,
    )


def gated_metric(
    setting: str, eval_label_counts: Mapping[str, int], where: str = "the eval split's"
) -> tuple[str, str]:
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
            f"auto: {where} largest/smallest class = {ratio:.2f} > {IMBALANCE_RATIO}",
        )
    return (
        METRIC_ACCURACY,
        f"auto: {where} largest/smallest class = {ratio:.2f} <= {IMBALANCE_RATIO}",
    )


def balanced_accuracy(per_class_recall: Mapping[str, float], classes: Iterable[str]) -> float | None:
    """The mean recall over `classes` (the eval split's); None when one of them has no recall."""
    values = [per_class_recall.get(c) for c in classes]
    if not values or any(v is None for v in values):
        return None
    return float(sum(values) / len(values))


def balanced_floor(
    min_accuracy: float,
    eval_label_counts: Mapping[str, int],
    margin: float,
    significance: float = 0.0,
    pictures: Mapping[str, int] | None = None,
) -> Floor:
    """The floor for balanced accuracy: the highest of min_accuracy; 1/k + margin on the k classes
    with eval examples (capped at 1.0), which is what any answer that ignores the image scores,
    however skewed the split; and, with `significance`, the least balanced accuracy such answers
    reach with probability at most `significance` on this split's class sizes (above 1.0 when
    even a perfect score is that likely: nothing is blessed). `pictures`: as for accuracy_floor,
    the class sizes the chance bound is computed on."""
    total = sum(eval_label_counts.values())
    if total <= 0:
        raise GateNotComputable("the eval split has no labelled examples: the gate cannot judge any model")
    counted = _pictures(eval_label_counts, pictures)
    sized = (
        eval_label_counts
        if counted is None
        else {c: max(1, n) for c, n in counted.items() if eval_label_counts[c] > 0}
    )
    sizes = [n for _, n in sorted(sized.items()) if n > 0]
    k = len(sizes)
    majority_class = min(eval_label_counts, key=lambda c: (-eval_label_counts[c], c))
    share = eval_label_counts[majority_class] / total
    by_chance = min(1.0, round(1.0 / k + margin, 10))
    if by_chance > min_accuracy:
        value, source = by_chance, FLOOR_CHANCE
    else:
        value, source = min_accuracy, FLOOR_MIN_ACCURACY
    method = ""
    if significance > 0 and chance_cannot_reach(sizes, value, significance):
        method = CHANCE_HOEFFDING  # the search could not raise the floor: not run
    elif significance > 0:
        method = balanced_chance_method(sizes)
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
        chance_method=method,
        eval_pictures=None if counted is None else sum(sizes),
    )


CHANCE_HOEFFDING = "hoeffding"  # Floor.chance_method: the bound was shown not to matter, not computed


def chance_tail_bound(sizes: Sequence[int], b: float) -> float:
    """An upper bound on P(B >= b) for every answer that ignores the image, on eval classes of
    `sizes` examples: whatever the frequencies q it answers with, B = sum over classes c and their
    images of [answer right] / (k n_c) is a sum of independent terms, class c's within
    [0, 1 / (k n_c)], with mean sum_c q_c / k <= 1/k. Hoeffding's inequality bounds its tail
    by exp(-2 k^2 t^2 / sum_c 1/n_c) for t = b - 1/k > 0 (1 for t <= 0)."""
    k = len(sizes)
    t = b - 1.0 / k
    if k == 0 or t <= 0:
        return 1.0
    return math.exp(-2.0 * k * k * t * t / sum(1.0 / n_c for n_c in sizes))


def chance_cannot_reach(sizes: Sequence[int], floor: float, alpha: float) -> bool:
    """Whether chance_balanced_accuracy_bound on `sizes` is shown, without computing it, to be at
    most `floor` (a floor from min_accuracy or 1/k + margin): where chance reaches
    b0 = floor - 1/(k min n_c) with probability at most alpha whatever q (chance_tail_bound).

    Why b0 and not `floor`: the search returns a value B takes, the least whose tail is at most
    alpha; B's values (for any q, the exact distributions list them all) step by at most
    1 / (k min n_c), from 0 to 1, so one lies in [b0, floor], and its tail is at most alpha: the
    exact search's bound is at most `floor`. (A simulation lists only the values it reached;
    there `floor` holds by the inequality itself: chance reaches it with probability <= alpha.)
    Where it holds (a few hundred eval images per class, or a thousand classes) the search
    would cost seconds to a minute for a bound below the floor.
    """
    k = len(sizes)
    if k == 0 or alpha <= 0:
        return False
    b0 = floor - 1.0 / (k * min(sizes)) - 2 * _SLACK
    return chance_tail_bound(sizes, b0) <= alpha


# Splits whose exact distribution of B takes at most this many steps (_exact_cost) get it
# exactly; larger ones a seeded simulation. The simulation draws
# at least SIMULATION_DRAWS samples and at least SIMULATION_TAIL_HITS / significance (so the
# tail at the significance is estimated from ~SIMULATION_TAIL_HITS draws), at most
# DRAW_BUDGET binomial draws per null predictor: a significance too small for that budget
# is refused (SignificanceTooSmall) rather than estimated from a handful of draws.
EXACT_STATES = 200_000
SIMULATION_DRAWS = 20_000
SIMULATION_TAIL_HITS = 400
DRAW_BUDGET = 40_000_000
# The search over null answers' frequencies q: on two classes q_1 is scanned at SCAN_POINTS
# points, on more START_POINTS seeded points spread over the simplex are tried; then at most
# REFINE_ROUNDS rounds of coordinate ascent (each of at most REFINE_ROUNDS sweeps), while the
# work (distribution sizes summed: steps, or draws x classes) stays within SEARCH_WORK.
SCAN_POINTS = 48
START_POINTS = 48
REFINE_ROUNDS = 6
SEARCH_WORK = 20_000_000
DENSE_VALUES = 1_000_000  # k * lcm(n_c) below this: B's exact distribution over a dense array
DENSE_SPEEDUP = 50  # its steps are vector slices: exact up to this many times EXACT_STATES steps
# Measured values this close below the floor pass it (the gate's METRIC_TOLERANCE): the floor
# is chosen so that they, too, are rare under chance.
_SLACK = 2e-6


class SignificanceTooSmall(GateNotComputable):
    """The balanced-accuracy chance bound cannot be estimated at this significance on this split."""


def balanced_chance_method(sizes: Sequence[int]) -> str:
    """How chance_balanced_accuracy_bound gets B's distribution on these class sizes:
    "exact" or "simulation" (when computing it exactly takes more than EXACT_STATES steps)."""
    n = [int(n_c) for n_c in sizes]
    work, _ = _exact_cost(n, cap=DENSE_SPEEDUP * EXACT_STATES)
    if work <= EXACT_STATES or (_dense(n) and work <= DENSE_SPEEDUP * EXACT_STATES):
        return "exact"
    return "simulation"


def _dense(sizes: list[int]) -> bool:
    """Whether B's exact distribution goes over a dense array of numerators (see _Lattice)."""
    return len(sizes) * math.lcm(*sizes) < DENSE_VALUES


def _exact_cost(sizes: list[int], cap: int) -> tuple[int, int]:
    """(steps, slices) of B's exact distribution, counted until the steps pass `cap`: steps sum
    over classes (values so far) x (n_c + 1), slices (the dense path's vector operations) the
    smaller of the two. The values so far are at most both the product of n_c + 1 and, as
    integers over k * lcm(n_c) after c classes, c * lcm + 1 (equal class sizes share most sums)."""
    lcm = math.lcm(*sizes)
    work, slices, support = 0, 0, 1
    for c, n_c in enumerate(sizes, start=1):
        work += support * (n_c + 1)
        slices += min(support, n_c + 1)
        support = min(support * (n_c + 1), c * lcm + 1)
        if work > cap:
            break
    return work, slices


def chance_balanced_accuracy_bound(sizes: Sequence[int], alpha: float, seed: int = 0) -> float:
    """The least balanced accuracy b that answers ignoring the image reach with probability at
    most alpha, whatever the frequencies they answer with, on eval classes of `sizes` examples;
    above 1.0 when no b <= 1 is that rare.

    Such an answer picks class j with probability q_j whatever the image, so class c's right
    answers are X_c ~ Binomial(n_c, q_c) and B = mean_c(X_c / n_c) has mean 1/k for every q; its
    tail depends on q. A small class lets a q that favours it reach a high B often (one eval
    image: its recall is 0 or 1), so the bound is the worst over the q searched: the uniform one,
    the one maximising B's variance, a scan of q_1 (two classes) or seeded points spread over
    the simplex (more), then from the q likeliest to reach the bound (and the Chernoff-worst
    one) a coordinate ascent moving mass between pairs of classes, repeated while it raises
    the bound. A search, not a proof: it matched a brute-force worst case over fine grids of
    q on small splits (tests/test_gate_decision.py).
    B's values are exact fractions (integer numerators over k * lcm(n_c)), its distribution
    exact on small splits (EXACT_STATES) and simulated with a fixed seed on larger ones, so a
    split always gets the same floor; there only values the simulation reached are candidates
    for b, so b errs high. SignificanceTooSmall when alpha is below what the simulation can resolve.
    """
    n = np.asarray(sizes, dtype=np.int64)
    if n.size == 0 or np.any(n <= 0):
        raise ValueError(f"class sizes must be positive, got {list(sizes)}")
    if alpha <= 0:
        return 0.0
    lattice = _Lattice(n)
    if balanced_chance_method(n.tolist()) == "exact":
        distribution, cost = lattice.exact, lattice.exact_cost()
    else:
        draws = max(SIMULATION_DRAWS, math.ceil(SIMULATION_TAIL_HITS / alpha))
        if draws * n.size > DRAW_BUDGET:
            least = SIMULATION_TAIL_HITS * n.size / DRAW_BUDGET
            raise SignificanceTooSmall(
                f"significance {alpha:g} is too small to estimate the chance bound of balanced accuracy on "
                f"this eval split ({int(n.sum())} examples in {n.size} classes: it would take "
                f"{draws * n.size:,} simulated answers); set gate.significance >= {least:.2g}, or gate.metric "
                "accuracy"
            )

        cost = draws * n.size

        def distribution(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return lattice.simulated(q, np.random.default_rng(seed), draws)

    search = _WorstChance(n, distribution, alpha, cost=cost)
    k = n.size
    candidates = [np.full(k, 1.0 / k), _widest_chance(n)]
    if k == 2:
        candidates += [np.array([p, 1.0 - p]) for p in np.linspace(0.0, 1.0, SCAN_POINTS + 2)[1:-1]]
    else:  # seeded, spread over the simplex and its faces (a small alpha favours sparse q)
        candidates += list(np.random.default_rng(seed).dirichlet(np.full(k, 0.5), START_POINTS))
    # The first two always; the spread ones while half the search's work budget lasts.
    candidates = [q for i, q in enumerate(candidates) if i < 2 or search.work < SEARCH_WORK / 2]
    bound = max(search.least_rare(q) for q in candidates)
    for _ in range(REFINE_ROUNDS):
        if bound > 1.0:
            break
        # The q that makes the current bound likeliest: from the likeliest so far and the
        # Chernoff-worst q, moving mass between pairs of classes. One that reaches the bound
        # more often than alpha raises it, and the search goes on from there.
        candidates.append(_chernoff_worst(n, k * bound))
        start = max(candidates, key=lambda q, b=bound: search.tail(q, b))
        q = search.ascend(start, bound)
        candidates.append(q)
        raised = search.least_rare(q)
        if raised <= bound:
            break
        bound = raised
    return bound


class _WorstChance:
    """P_q(B >= b) and the bound for one q, and a local search over q, on one split; stops
    searching once its work (sum of the distributions' sizes) reaches SEARCH_WORK."""

    def __init__(self, n: np.ndarray, distribution, alpha: float, cost: int):
        self.n, self.distribution, self.alpha, self.cost = n, distribution, alpha, cost
        self.work = 0
        self._seen: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def _dist(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = q.tobytes()
        if key not in self._seen:
            self.work += self.cost
            if len(self._seen) >= 256:
                self._seen.clear()
            self._seen[key] = self.distribution(q)
        return self._seen[key]

    def least_rare(self, q: np.ndarray) -> float:
        values, probs = self._dist(q)
        return _least_rare_value(values, probs, self.alpha, int(self.n.sum()))

    def tail(self, q: np.ndarray, b: float) -> float:
        values, probs = self._dist(q)
        return float(probs[values >= b - _SLACK].sum())

    def ascend(self, q: np.ndarray, b: float) -> np.ndarray:
        """Coordinate ascent of P_q(B >= b): for each pair of classes (the smallest classes'
        pairs first: their recalls swing most), the split of the pair's mass that maximises it
        (golden section), until a round raises it no more or the work budget is spent."""
        order = np.argsort(self.n, kind="stable").tolist()
        pairs = [(order[i], order[j]) for j in range(len(order)) for i in range(j)]
        best = self.tail(q, b)
        for _ in range(REFINE_ROUNDS):
            improved = False
            for i, j in pairs:
                mass = q[i] + q[j]
                if mass <= 0 or self.work >= SEARCH_WORK:
                    continue

                def moved(x: float, i=i, j=j, mass=mass, q=q) -> np.ndarray:
                    r = q.copy()
                    r[i], r[j] = x * mass, (1.0 - x) * mass
                    return r

                x = _golden_max(lambda x, moved=moved: self.tail(moved(x), b), 0.0, 1.0, iterations=14)
                value = self.tail(moved(x), b)
                if value > best * (1 + 1e-9):
                    q, best, improved = moved(x), value, True
            if not improved or self.work >= SEARCH_WORK:
                break
        return q


def _least_rare_value(values: np.ndarray, probs: np.ndarray, alpha: float, examples: int) -> float:
    """The least of `values` (sorted) whose tail, counting every value down to _SLACK below it,
    is at most alpha; 1 + 1/examples (above any balanced accuracy) when none is."""
    tail = np.cumsum(probs[::-1])[::-1]  # tail[i] = P(B >= values[i])
    reach = tail[np.searchsorted(values, values - _SLACK, side="left")]
    rare = values[reach <= alpha * (1 + 1e-9)]
    return float(rare[0]) if rare.size else 1.0 + 1.0 / examples


class _Lattice:
    """B's values as exact integers: X_c / (k n_c) = X_c w_c / (k L) with L = lcm(n_c), w_c = L / n_c."""

    def __init__(self, n: np.ndarray):
        self.n = n
        self.dense = _dense(n.tolist())
        self._reachable: np.ndarray | None = None
        lcm = math.lcm(*n.tolist())
        self.exact_ints = n.size * lcm < 2**62  # always so on a split small enough to be exact
        self.scale = float(n.size * lcm)
        self.w = (
            np.array([lcm // int(n_c) for n_c in n.tolist()], dtype=np.int64) if self.exact_ints else None
        )

    def exact_cost(self) -> int:
        """The work of one exact distribution, in steps of the np.unique path: on the dense path
        a slice costs ~60 of them and an element of a slice 1/25."""
        steps, slices = _exact_cost(self.n.tolist(), cap=DENSE_SPEEDUP * EXACT_STATES)
        return 60 * slices + steps // 25 if self.dense else steps

    def exact(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """B's exact distribution (sorted values, their probabilities), one class convolved at a time:
        over an array of every numerator 0..k L when that is at most DENSE_VALUES long, else
        over the values reached so far (merged by np.unique)."""
        if self.dense:
            return self._exact_dense(q)
        keys, probs = np.zeros(1, dtype=np.int64), np.ones(1)
        for n_c, w_c, q_c in zip(self.n.tolist(), self.w.tolist(), q.tolist(), strict=True):
            x = np.arange(n_c + 1)
            keys = (keys[:, None] + x[None, :] * w_c).ravel()
            keys, where = np.unique(keys, return_inverse=True)
            probs = np.bincount(
                where.ravel(), weights=(probs[:, None] * binom.pmf(x, n_c, q_c)[None, :]).ravel()
            )
        return keys / self.scale, probs

    def _exact_dense(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._reachable is None:  # the numerators some answers give (whatever their probability)
            reach = np.ones(1)
            for n_c, w_c in zip(self.n.tolist(), self.w.tolist(), strict=True):
                reach = _convolve_strided(reach, np.ones(n_c + 1), w_c) > 0
            self._reachable = np.flatnonzero(reach)
        probs = np.ones(1)
        for n_c, w_c, q_c in zip(self.n.tolist(), self.w.tolist(), q.tolist(), strict=True):
            probs = _convolve_strided(probs, binom.pmf(np.arange(n_c + 1), n_c, q_c), w_c)
        return self._reachable / self.scale, probs[self._reachable]

    def simulated(self, q: np.ndarray, rng: np.random.Generator, draws: int) -> tuple[np.ndarray, np.ndarray]:
        """B's distribution estimated from `draws` seeded draws (sorted values reached, frequencies)."""
        counts = rng.binomial(self.n, q, size=(draws, self.n.size))
        if self.exact_ints:
            keys = counts @ self.w
        else:
            keys = np.round((counts / self.n).mean(axis=1), 12)
        keys, hits = np.unique(keys, return_counts=True)
        return (keys / self.scale if self.exact_ints else keys), hits / draws


def _convolve_strided(probs: np.ndarray, pmf: np.ndarray, stride: int) -> np.ndarray:
    """out[i + x * stride] = sum of probs[i] * pmf[x]: one slice per value of the shorter of the two."""
    out = np.zeros(probs.size + (pmf.size - 1) * stride)
    if probs.size <= pmf.size:
        for i in np.flatnonzero(probs).tolist():
            out[i : i + (pmf.size - 1) * stride + 1 : stride] += probs[i] * pmf
    else:
        for x in np.flatnonzero(pmf).tolist():
            out[x * stride : x * stride + probs.size] += probs * pmf[x]
    return out


def _golden_max(f, lo: float, hi: float, iterations: int = 24) -> float:
    """The x in [lo, hi] maximising f (unimodal there), by golden-section search."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo + (1 - ratio) * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(iterations):
        if fa >= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - ratio) * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    return a if fa >= fb else b


def _chernoff_worst(n: np.ndarray, t: float) -> np.ndarray:
    """The q that maximises the Chernoff bound of P(sum_c X_c / n_c >= t): for a fixed tilt lam,
    log E exp(lam sum_c X_c / n_c) = sum_c n_c log(1 + q_c a_c), a_c = exp(lam / n_c) - 1, is
    concave in q and maximised where n_c a_c / (1 + q_c a_c) is a common mu (q_c = n_c / mu -
    1 / a_c, at least 0); lam minimises exp(-lam t) times that maximum (convex in lam)."""
    n_f = n.astype(np.float64)

    def q_of(lam: float) -> np.ndarray:
        inv_a = 1.0 / np.expm1(np.minimum(lam / n_f, 700.0))

        def total(mu: float) -> float:
            return float(np.clip(n_f / mu - inv_a, 0.0, None).sum())

        lo = float(np.min(n_f / (1.0 + inv_a)))  # at mu = n_c / (1 + 1/a_c), q_c = 1
        hi = float(np.max(n_f / inv_a))  # every q_c = 0 from here
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if total(mid) > 1.0 else (lo, mid)
        q = np.clip(n_f / hi - inv_a, 0.0, None)
        return q / q.sum()

    def objective(log_lam: float) -> float:
        lam = math.exp(log_lam)
        q = q_of(lam)
        s = np.minimum(lam / n_f, 700.0)
        with np.errstate(divide="ignore"):  # q_c of 0 or 1: log 0 is -inf, which logaddexp takes
            log_mgf = float((n_f * np.logaddexp(np.log1p(-q), np.log(q) + s)).sum())
        return lam * t - log_mgf

    log_lam = _golden_max(objective, math.log(1e-3), math.log(700.0 * float(n_f.min())), iterations=60)
    return q_of(math.exp(log_lam))


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


def check_computable(
    eval_label_counts: Mapping[str, int], class_names: Sequence[str], judged_on: JudgedOn | None = None
) -> None:
    """GateNotComputable naming each of the model's classes that has no eval example (with
    `judged_on`: none among the eval images the gate judges on)."""
    if judged_on is not None and judged_on.examples <= 0:
        raise GateNotComputable(
            f"no eval image is left to judge the candidate on: of the eval split's {judged_on.records} records, "
            f"{judged_on.left_out_text()}; the eval split must hold images the model did not train on "
            "(split the data again, e.g. with `imgpipe ingest`, which keeps each image in one split)"
        )
    where = "the eval split" if judged_on is None else f"the eval split's {judged_on.describe()}"
    if sum(eval_label_counts.values()) <= 0:
        verb = "has" if judged_on is None else "hold"
        raise GateNotComputable(f"{where} {verb} no labelled examples: the gate cannot judge any model")
    missing = [c for c in class_names if eval_label_counts.get(c, 0) <= 0]
    if missing:
        which = "class" if len(missing) == 1 else "classes"
        near = (
            "; where its eval images are near-copies of its train images, ingest found the class to be one "
            "set (its warning: a clip's frames, one picture saved again) and split it image by image: give "
            "it pictures of other scenes or objects"
            if judged_on is not None and judged_on.near_copies_in_train
            else ""
        )
        raise GateNotComputable(
            f"{which} {_names(missing)} of the model {'has' if len(missing) == 1 else 'have'} no example "
            f"in {where}: the gate cannot judge its recall, so nothing is blessed or pushed "
            f"(add eval examples of it, or remove it from train{near})"
        )


@dataclasses.dataclass(frozen=True)
class JudgedOn:
    """The eval records the candidate is judged on when that is not the whole split: each image
    once, and none the candidate trained on.

    A copy of an eval image is no new evidence: counted, ten copies of two images per class
    pass the significance floor that two images cannot. An image the candidate trained on
    flatters it. Both come only from TFRecords made elsewhere (`imgpipe ingest` drops
    duplicates before splitting).
    """

    records: int  # the eval split's records
    repeats: int  # records whose image is an earlier eval record's
    in_train: int  # records of the rest whose image the candidate trained on
    train_known: bool = True  # False: the candidate keeps no record of its train images
    conflicting: int = 0  # images whose copies carry more than one label
    # Records of the rest that are near-copies (ingest's sets) of images the candidate trained on:
    # frames of a clip whose class is that one clip, split by image.
    near_copies_in_train: int = 0

    @property
    def examples(self) -> int:
        return self.records - self.repeats - self.in_train - self.near_copies_in_train

    def left_out_text(self) -> str:
        """What was left out and why: '3 repeat an image earlier in the split; 2 are images ...'."""
        parts = []
        if self.repeats:
            parts.append(f"{self.repeats} repeat an image earlier in the split")
        if self.in_train:
            parts.append(
                f"{self.in_train} {'is an image' if self.in_train == 1 else 'are images'} the candidate trained on"
            )
        if self.near_copies_in_train:
            n = self.near_copies_in_train
            parts.append(
                f"{n} {'is a near-copy' if n == 1 else 'are near-copies'} (ingest's sets: a clip's frames, a "
                "picture saved again) of images the candidate trained on"
            )
        if self.conflicting:
            parts.append(
                f"{self.conflicting} {'image has' if self.conflicting == 1 else 'images have'} copies under "
                "another label (the first record's label in the split as ExampleGen wrote it is the one judged)"
            )
        if not self.train_known:
            parts.append("the candidate keeps no record of its train images")
        return "; ".join(parts)

    def describe(self) -> str:
        which = " the candidate did not train on" if self.train_known else ""
        return (
            f"{self.examples} distinct eval images{which} (of {self.records} records: {self.left_out_text()})"
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "records": self.records,
            "repeats": self.repeats,
            "in_train": self.in_train,
            "near_copies_in_train": self.near_copies_in_train,
            "examples": self.examples,
            "conflicting_labels": self.conflicting,
        }


# --------------------------------------------------------------------- the baseline
def class_order_change(candidate: Sequence[str], baseline: Sequence[str] | None) -> str | None:
    """The warning when the candidate has the latest blessed model's classes in another order
    (None otherwise): models trained before 2026-12-08 ordered the label vocabulary by each
    class's count (TensorFlow Transform's default), so a home's first run after it (the order is
    in Transform's cache key) reorders their outputs once (the order now follows the names:
    trainer/preprocessing.py); a client reading `scores` by position then reads other classes.
    gate.json's `class_order_changed`."""
    if baseline is None or list(candidate) == list(baseline) or sorted(candidate) != sorted(baseline):
        return None
    return (
        f"the model's classes are in another order than the latest blessed model's ({_names(baseline)} "
        f"then, {_names(candidate)} now: models trained before 2026-12-08 ordered them by each class's "
        "count, later ones by the class names, the same in every retrain); a client that reads the scores by "
        "position gets other classes: read the class names each signature returns beside its scores"
    )


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
    # The label set changed (a class added or removed): the models are compared on the eval
    # examples of these classes, the ones both have, and `label_change` says what changed.
    shared_classes: tuple[str, ...] | None = None
    label_change: str | None = None


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
        shared = tuple(sorted(set(baseline_classes) & set(candidate_classes)))
        if len(shared) < 2:  # one class both have: any answer of that class is right there
            return BaselinePlan(
                False,
                f"label set changed: {change} (against the latest blessed model); "
                f"{len(shared)} class{'' if len(shared) == 1 else 'es'} in common, too few to compare on",
                label_change=change,
            )
        return BaselinePlan(True, None, shared_classes=shared, label_change=change)
    return BaselinePlan(True, None, identical)


def on_shared_classes(baseline: BaselinePlan, compared: int) -> BaselinePlan:
    """The plan once it is known how many eval examples of the shared classes (not seen by
    either model, not repeats) there are: compared on those, or skipped, saying why, when they
    are fewer than MIN_UNSEEN_TO_COMPARE."""
    if baseline.shared_classes is None:
        return baseline
    if compared < MIN_UNSEEN_TO_COMPARE:
        return BaselinePlan(
            False,
            f"label set changed: {baseline.label_change} (against the latest blessed model); the "
            f"{compared} eval examples of the classes both models have are fewer than "
            f"{MIN_UNSEEN_TO_COMPARE} to compare on",
            shared_classes=baseline.shared_classes,
            label_change=baseline.label_change,
        )
    return dataclasses.replace(baseline, compared_examples=compared, reused_from=None)


# Fewest eval images a comparison is made on (the whole split, or the images neither model
# trained on). Below it the comparison is skipped with the reason: a handful of images cannot
# tell two models apart, and the images a model saw flatter it.
MIN_UNSEEN_TO_COMPARE = 20


def with_seen_examples(
    baseline: BaselinePlan,
    eval_examples: int,
    seen: int | None,
    candidate_seen: int = 0,
    either: int | None = None,
    repeats: int = 0,
) -> BaselinePlan:
    """The baseline plan once it is known which eval examples each model trained on.

    seen: how many the baseline trained on (None: it keeps no record of its training images);
    candidate_seen: how many the candidate trained on; either: how many at least one of the
    two trained on, or that repeat an earlier eval record's image (needed when the candidate
    trained on any or `repeats` is not 0; else `seen`). None of them: compared on the whole
    split, as before. Some: compared only on the ones neither trained
    on, both models measured on exactly those; when a model trained on some and fewer than
    MIN_UNSEEN_TO_COMPARE are left, not compared, saying why (copies alone never skip it).
    """
    if not baseline.compared or baseline.identical:
        return baseline
    if either is None:
        if candidate_seen or repeats:
            raise ValueError(
                "with_seen_examples: `either` is needed when the candidate trained on eval examples "
                "or some repeat an image"
            )
        either = seen or 0
    if either <= 0:
        return dataclasses.replace(baseline, seen_eval_examples=seen)
    unseen = eval_examples - either
    # Here the minimum is for images a model saw: copies of an image, left out, flatter neither
    # model; `with_enough_compared` then holds every comparison, the whole split's too, to it.
    if unseen < MIN_UNSEEN_TO_COMPARE and (seen or candidate_seen):
        return BaselinePlan(
            False,
            f"{_who_trained_on(eval_examples, seen, candidate_seen, repeats)}: the {unseen} "
            f"{'distinct images left' if repeats else 'that neither model trained on'} are fewer than "
            f"{MIN_UNSEEN_TO_COMPARE} to compare on",
            seen_eval_examples=seen,
        )
    return dataclasses.replace(baseline, seen_eval_examples=seen, compared_examples=unseen, reused_from=None)


def with_enough_compared(baseline: BaselinePlan, eval_examples: int) -> BaselinePlan:
    """The plan, or its comparison skipped saying why when it would be made on fewer than
    MIN_UNSEEN_TO_COMPARE eval examples (`eval_examples`: the whole split's, used when the plan
    compares on the whole split). On five images one answer moves accuracy by 0.2: a model
    trained on a tenth of the data scored 4 of 5 against the served model's 3 of 5 there, and
    replaced a model better by 0.38 on 400 images neither trained on. An identical baseline is
    compared by its files, not its answers."""
    if not baseline.compared or baseline.identical:
        return baseline
    compared = baseline.compared_examples if baseline.compared_examples is not None else eval_examples
    if compared >= MIN_UNSEEN_TO_COMPARE:
        return baseline
    what = (
        f"the eval split's {compared} examples"
        if baseline.compared_examples is None
        else f"the {compared} eval examples it would be made on"
    )
    return dataclasses.replace(
        baseline,
        compared=False,
        skipped_reason=(
            f"{what} are fewer than {MIN_UNSEEN_TO_COMPARE} to tell two models apart (one answer moves "
            f"accuracy by {1 / max(compared, 1):.2f})"
        ),
        reused_from=None,
    )


def _who_trained_on(eval_examples: int, seen: int | None, candidate_seen: int, repeats: int = 0) -> str:
    """Which model trained on how many of the eval examples (the same image bytes in its train
    split), and how many repeat an earlier eval record's image."""
    parts = []
    if seen:
        parts.append(f"the latest blessed model trained on {seen}")
    if candidate_seen:
        parts.append(
            f"the candidate on {candidate_seen}" if parts else f"the candidate trained on {candidate_seen}"
        )
    whose = "their train splits" if len(parts) > 1 else "its train split"
    text = (
        f"{' and '.join(parts)} of the {eval_examples} eval examples (the same image bytes were in {whose})"
    )
    return f"{text}, and {repeats} repeat an image earlier in the split" if repeats else text


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
    # Not None: the candidate is judged on these eval records only, by the executor (TFMA then
    # gates nothing; see JudgedOn and judged_results).
    judged_on: JudgedOn | None = None
    min_class_precision: float | None = None  # None: off
    # A blessed model that cannot be compared stops the blessing, unless this says why not:
    # gate.bless_without_comparison, or a label change accepted in this run (its served model
    # answers for other labels: a comparison would say nothing).
    comparison_waived: str | None = None
    # Eval examples per class (of those the candidate is judged on), for the reasons' words.
    eval_class_counts: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @property
    def metric(self) -> str:
        return self.floor.metric


def plan_gate(
    gate: GateConfig,
    eval_label_counts: Mapping[str, int],
    class_names: Sequence[str],
    baseline_classes: Sequence[str] | None,
    baseline_identical: bool = False,
    judged_on: JudgedOn | None = None,
    relabel_accepted: bool = False,
    eval_pictures: Mapping[str, int] | None = None,
) -> GatePlan:
    """The thresholds for this run; GateNotComputable when the eval split cannot judge the model.

    eval_label_counts: of the records the candidate is judged on (`judged_on`'s, when given).
    relabel_accepted: the data gate let through images relabelled since the latest blessed model
    trained on them (a class renamed or two swapped): that model answers for other labels.
    eval_pictures: each class's eval pictures, near-copies counted once (the significance bound's
    sample), when ingest's report says so."""
    check_computable(eval_label_counts, class_names, judged_on)
    where = "the eval split's" if judged_on is None else "the judged eval images'"
    metric, why = gated_metric(gate.metric, eval_label_counts, where)
    floor_of = balanced_floor if metric == METRIC_BALANCED else accuracy_floor
    baseline = baseline_plan(class_names, baseline_classes, baseline_identical)
    return GatePlan(
        floor=floor_of(
            gate.min_accuracy, eval_label_counts, gate.majority_margin, gate.significance, eval_pictures
        ),
        class_names=tuple(class_names),
        min_class_recall=gate.min_class_recall or None,
        min_class_precision=gate.min_class_precision or None,
        max_regression=gate.max_regression,
        baseline=baseline,
        eval_classes=tuple(sorted(c for c, n in eval_label_counts.items() if n > 0)),
        metric_reason=why,
        judged_on=judged_on,
        comparison_waived=_waiver(gate, baseline, relabel_accepted),
        eval_class_counts=dict(eval_label_counts),
    )


def _waiver(gate: GateConfig, baseline: BaselinePlan, relabel_accepted: bool) -> str | None:
    """Why a model may be blessed on the floors when the latest blessed model cannot be compared
    with it, or None (then it may not). A class added or removed keeps the served model's answers
    on the classes both have comparable: only when fewer than two remain is there nothing to
    compare on."""
    if gate.bless_without_comparison:
        return "gate.bless_without_comparison"
    if relabel_accepted:
        return (
            "images were relabelled since the latest blessed model trained on them (a class renamed or two "
            "swapped), let through by --accept-label-change or --allow-anomalies: it answers for other labels"
        )
    if baseline.label_change is not None and baseline.shared_classes is None and not baseline.compared:
        return f"the label set changed ({baseline.label_change}), leaving fewer than two classes in common"
    return None


def uncompared_failure(plan: GatePlan) -> Failure | None:
    """The failure of a model the latest blessed model could not be compared with (there is one,
    and the plan skipped it: too few eval images neither trained on, too few classes in common),
    unless the gate blesses without a comparison; None otherwise. Without it, a model on a
    smaller eval split had only the chance floor to pass, and replaced a better served model."""
    if not uncompared(plan) or plan.comparison_waived:
        return None
    return Failure(None, True, None, uncompared=True)


def uncompared(plan: GatePlan) -> bool:
    """Whether there is a blessed model and the plan does not compare the candidate with it."""
    skipped = plan.baseline.skipped_reason
    return not plan.baseline.compared and skipped is not None and skipped != NO_BASELINE


# ------------------------------------------------------------ TFMA's answer, plainly
@dataclasses.dataclass(frozen=True)
class Failure:
    """One threshold TFMA found unmet."""

    class_name: str | None  # None: the overall slice
    is_change: bool  # True: the no-regression (change) threshold
    value: float | None
    precision: bool = False  # True: the class's precision floor (min_class_precision), else its recall
    # True: a blessed model exists and could not be compared (BaselinePlan.skipped_reason), and
    # the gate does not bless without a comparison (GatePlan.comparison_waived is None).
    uncompared: bool = False
    # True: the served model's answers show labels exchanged since it trained (EvalResults.
    # labels_moved, `exchanged`), and no one accepted a label change.
    moved: bool = False


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
    # When the candidate was judged on part of the split (GatePlan.judged_on): TFMA's accuracy
    # and example count on the whole split, for the record; the fields above are the part's.
    whole_split_accuracy: float | None = None
    whole_split_examples: int | None = None
    # The candidate's precision of each class it answered (top-1) on the eval examples judged,
    # and how many it gave each; None: not measured (an eval_config without TFMA's confusion
    # matrix, from an earlier imgpipe).
    per_class_precision: Mapping[str, float] | None = None
    per_class_answered: Mapping[str, int] | None = None
    # The pairs of classes the candidate tells apart no better than chance (classes_at_chance),
    # from TFMA's confusion matrix on the whole split; None: not measured.
    classes_at_chance: Sequence[Mapping[str, Any]] | None = None
    # Each class of the examples the baseline was compared on: (its images there, the candidate's
    # recall, the baseline's): what a regression comes from. None: not measured (a baseline's
    # value reused from an earlier gate, or no comparison).
    compared_per_class: Mapping[str, tuple[int, float, float]] | None = None
    # The classes whose eval images the served model answers with one other class (labels_moved),
    # where it was measured on them; None: not measured (no comparison, or one by files or by a
    # reused number).
    labels_moved: Sequence[LabelMove] | None = None


def compared_classes(
    counts: Mapping[str, int], candidate: Mapping[str, float], baseline: Mapping[str, float]
) -> dict[str, tuple[int, float, float]] | None:
    """EvalResults.compared_per_class from the two models' per-class recall on the same examples,
    `counts` images of each class there; None when either recall is missing for a class."""
    out = {}
    for c, n in sorted(counts.items()):
        if n <= 0:
            continue
        if candidate.get(c) is None or baseline.get(c) is None:
            return None
        out[c] = (int(n), float(candidate[c]), float(baseline[c]))
    return out or None


MAX_DROPS_SHOWN = 3


def largest_drops(per_class: Mapping[str, tuple[int, float, float]] | None, balanced: bool = False) -> str:
    """ "; where it fell: 'two' 2 of 2 right, now 0, ..." for the classes that cost the candidate
    most (at most MAX_DROPS_SHOWN): by right answers lost, or with `balanced` (each class's recall
    weighs the same) by recall lost; "" when none fell or nothing was measured."""
    if not per_class:
        return ""
    lost = []
    for c, (n, mine, theirs) in per_class.items():
        before, now = round(theirs * n), round(mine * n)
        if now < before:
            lost.append(((theirs - mine) if balanced else before - now, c, n, before, now))
    if not lost:
        return ""
    lost.sort(key=lambda t: (-t[0], t[1]))
    shown = ", ".join(
        f"{_q(c)} {before} of {n} right, now {now}" for _, c, n, before, now in lost[:MAX_DROPS_SHOWN]
    )
    rest = len(lost) - MAX_DROPS_SHOWN
    more = f" (and {rest} more {'class' if rest == 1 else 'classes'})" if rest > 0 else ""
    return f"; where it fell: {shown}{more}"


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


class Measured(Protocol):
    """A model's answers on some eval records (components/unseen_comparison.py's Answers)."""

    def __len__(self) -> int: ...
    def accuracy(self) -> float: ...
    def per_class(self) -> dict[str, float]: ...
    def counts(self) -> dict[str, int]: ...
    def answered(self) -> dict[str, tuple[int, int]]: ...
    def value(self, balanced: bool) -> float: ...


# Two classes the model does not tell apart better than a coin between them (one-sided binomial
# test at this level), once they share this many eval answers: the same concept under two names
# (a folder copied, or split in two) passes every recall floor at about 1/2 each.
PAIR_CHANCE_ALPHA = 0.05
PAIR_MIN_ANSWERS = 10


def chance_of_pair(right: int, between: int) -> float:
    """P(at least `right` of `between` right by a coin): the one-sided binomial p-value of a
    model's answers between two classes."""
    return float(binom.sf(right - 1, between, 0.5))


PAIR_BELOW_ALPHA = 0.01


def below_chance(right: int, between: int) -> bool:
    """A model's `right` of `between` answers between two classes are fewer than a coin gives
    more often than PAIR_BELOW_ALPHA (the lower tail): it answers them the wrong way round."""
    return float(binom.cdf(right, between, 0.5)) < PAIR_BELOW_ALPHA


def answered_as_each_other(
    a_right: int,
    a_as_b: int,
    b_right: int,
    b_as_a: int,
    a_images: int | None = None,
    b_images: int | None = None,
) -> bool:
    """Two classes' eval images answered mostly with the other class each (more than half of each
    class's `a_images`, `b_images` eval images: by default those answered with a or b), wrong far
    more often than a coin (below_chance): the model tells them apart the wrong way round. Not a
    class whose images mostly went to a third class: one of 25 answered with the other is no swap."""
    a_images = a_right + a_as_b if a_images is None else a_images
    b_images = b_right + b_as_a if b_images is None else b_images
    right = a_right + b_right
    return (
        2 * a_as_b > a_images
        and 2 * b_as_a > b_images
        and a_as_b > a_right
        and b_as_a > b_right
        and below_chance(right, right + a_as_b + b_as_a)
    )


def pair_at_chance(right: int, between: int) -> bool:
    """No evidence the model tells two classes apart: its `right` of `between` answers between
    them are what a coin gives more often than PAIR_CHANCE_ALPHA."""
    return chance_of_pair(right, between) > PAIR_CHANCE_ALPHA


def classes_at_chance(
    counts: Mapping[tuple[str, str], int], class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """The pairs of classes the model tells apart no better than chance, from the confusion
    counts {(true class, answered class): examples}: of the eval images of a and b that it
    answered with a or b, it got `right` of `between` right, and a coin would do at least as well
    with probability above PAIR_CHANCE_ALPHA. Only pairs with PAIR_MIN_ANSWERS such answers and at
    least one mistake between them, most mistakes first."""
    out = []
    names = list(class_names)
    totals: dict[str, int] = {}  # each class's eval images, whatever they were answered
    for (true, _), n in counts.items():
        totals[true] = totals.get(true, 0) + n
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            mistakes = counts.get((a, b), 0) + counts.get((b, a), 0)
            right = counts.get((a, a), 0) + counts.get((b, b), 0)
            between = right + mistakes
            if not mistakes or between < PAIR_MIN_ANSWERS:
                continue
            p = chance_of_pair(right, between)
            if p > PAIR_CHANCE_ALPHA:  # pair_at_chance, with its p-value kept
                images = {
                    a: counts.get((a, a), 0) + counts.get((a, b), 0),
                    b: counts.get((b, b), 0) + counts.get((b, a), 0),
                }
                out.append(
                    {
                        "classes": [a, b],
                        "right": right,
                        "between": between,
                        "p_value": round(p, 4),
                        "images": images,
                        # Wrong far more often than a coin, each class answered mostly with the
                        # other: the model tells the two apart and answers each with the other
                        # (eval labels swapped, pictures turned).
                        "below_chance": answered_as_each_other(
                            counts.get((a, a), 0),
                            counts.get((a, b), 0),
                            counts.get((b, b), 0),
                            counts.get((b, a), 0),
                            totals.get(a, 0),
                            totals.get(b, 0),
                        ),
                    }
                )
    return sorted(out, key=lambda d: (-(d["between"] - d["right"]), d["classes"]))


PAIR_FEW = 0.25  # a pair whose smaller class has under this share of the larger's eval images


def pair_hint(pair: Mapping[str, Any], pairs: Sequence[Mapping[str, Any]] = ()) -> str:
    """What to do about a pair of classes told apart at chance (`classes_at_chance`): two folders
    of one concept look alike in size; a class with few images beside a large one is more likely
    too small to learn. `pairs`: every pair at chance: a class at chance with two or more others is
    not one concept under two names (labels at random, or features that cannot tell them apart)."""
    a, b = pair["classes"]
    if pair.get("below_chance"):
        return (
            f"wrong far more often than a coin would be ({pair['right']} of {pair['between']} right): "
            f"the model tells the two apart and answers each with the other. Were the eval labels of "
            f"{_q(a)} and {_q(b)} swapped against train's, or the eval pictures turned or mirrored "
            "so each looks like the other? Compare a sample of the eval split with train"
        )
    partners = {c: sum(c in p["classes"] for p in pairs) for c in (a, b)}
    if max(partners.values(), default=0) > 1:
        many = max((a, b), key=lambda c: (partners[c], c))
        return (
            f"{_q(many)} is told apart at chance from {partners[many]} classes: labels given at random, or "
            "images the backbone's features cannot tell apart? Check a sample of the labels"
        )
    images = pair.get("images") or {}
    small, large = sorted((a, b), key=lambda c: (images.get(c, 0), c))
    if images and images.get(small, 0) < PAIR_FEW * images.get(large, 0):
        return (
            f"{_q(small)} has {images.get(small, 0)} of these eval images against {images.get(large, 0)} of "
            f"{_q(large)}: too few to learn it apart? Add images of {_q(small)}, or check their labels"
        )
    # Or one class holds the other's kind among its own (an audit's "odd" held 3s beside a "3"
    # class): merging would then swallow the rest of it.
    return (
        f"one concept under two names, or {_q(a)} or {_q(b)} holding the other's kind among its own images? "
        "Merge the folders if they are one concept; else check their labels (the label check lists the "
        "train images it doubts)"
    )


# ------------------------------------------------- labels moved since the served model trained
# A class "moved" when the served model answers one other class for at least MOVED_SHARE of its
# eval images (at least MOVED_MIN_IMAGES of them). Moves on a cycle (a swap, or labels passed
# round) are labels exchanged since the served model trained, when the answers of all of them
# together are unlike a coin's between each class and the one it is answered with: P(that many
# or more moved of those answered with one of the two) below MOVED_ALPHA (4 of 4 each way, the
# smallest split compared: 8 of 8, 0.004). New images under swapped folder names were trained, blessed and
# pushed: the served model's 0.0 recall on both classes read as a model the candidate beat. The
# data gate finds this only for images the served model trained on (data_gate.relabelled).
MOVED_SHARE = 0.75
MOVED_MIN_IMAGES = 3
MOVED_ALPHA = 0.01
LABELS_MOVED = "labels moved since the served model trained"


@dataclasses.dataclass(frozen=True)
class LabelMove:
    """Of `images` eval images labelled `label`, the served model answered `answered` for `moved`
    and `label` for `kept`."""

    label: str
    answered: str
    images: int
    moved: int
    kept: int

    def text(self) -> str:
        return f"{_q(self.answered)} for {self.moved} of the {self.images} labelled {_q(self.label)}"

    def chance(self) -> float:
        """P(this many or more of its answers between the two moved, by a coin)."""
        return _coin_chance([self])

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "chance": self.chance()}


def _coin_chance(moves: Sequence[LabelMove]) -> float:
    moved = sum(m.moved for m in moves)
    return float(binom.sf(moved - 1, moved + sum(m.kept for m in moves), 0.5))


def labels_moved(counts: Mapping[tuple[str, str], int]) -> list[LabelMove]:
    """The classes the served model answers with one other class (see MOVED_SHARE), from its
    {(true class, answered class): eval images} on this run's eval split; by label."""
    images: dict[str, int] = {}
    for (true, _), n in counts.items():
        images[true] = images.get(true, 0) + n
    moves = []
    for label, n in sorted(images.items()):
        others = [(m, given) for (true, given), m in counts.items() if true == label and given != label]
        if n < MOVED_MIN_IMAGES or not others:
            continue
        moved, answered = max(others, key=lambda o: (o[0], o[1]))
        if moved >= MOVED_SHARE * n:
            moves.append(LabelMove(label, answered, n, moved, counts.get((label, label), 0)))
    return moves


def exchanged(moves: Sequence[LabelMove]) -> list[LabelMove]:
    """The moves on a cycle (labels swapped, or passed round: following each class to the one it
    is answered with leads back to it), when their answers together are unlike a coin's
    (MOVED_ALPHA); else none. A chain (six answered seven, seven answered nine, nine kept) is no
    exchange: new pictures unlike the served model's (another camera) do that too."""
    answered = {m.label: m.answered for m in moves}

    def on_cycle(label: str) -> bool:
        current = answered.get(label)
        for _ in range(len(answered)):
            if current == label:
                return True
            current = answered.get(current)
        return False

    members = [m for m in moves if on_cycle(m.label)]
    return members if members and _coin_chance(members) < MOVED_ALPHA else []


def moved_alone(moves: Sequence[LabelMove]) -> list[LabelMove]:
    """The moves worth a warning: not exchanged, and unlike a coin's answers on their own."""
    swapped = exchanged(moves)
    return [m for m in moves if m not in swapped and m.chance() < MOVED_ALPHA]


def moved_reason(moves: Sequence[LabelMove]) -> str:
    """The reason a model is refused when its data's labels look exchanged."""
    shown = "; ".join(m.text() for m in moves)
    return (
        f"{LABELS_MOVED}: on this run's eval images the served model answers {shown}. Folders renamed "
        "or swapped? The candidate learned the new names and the comparison read the served model's "
        "answers as wrong. The served model stays; fix the labels, or pass --accept-label-change "
        "if they changed on purpose (or the served model had them wrong)"
    )


def moved_warning(
    move: LabelMove, eval_shifted: bool = False, counts: Mapping[tuple[str, str], int] | None = None
) -> str:
    """The warning of one class moved alone or along a chain; `counts` (the served model's
    {(true class, answered class): eval images}) say how the class it is answered with fares on
    its own images: the words claimed it kept most of them, unchecked, when the served model
    answered 8 of that class's 57 right (an audit). `eval_shifted`: the data gate found the eval
    images unlike the train images, which alone can make a model answer a class as another
    (inverted or thickened strokes: an audit's run asked whether the images were under the wrong
    label)."""
    shifted = (
        "; the eval images also differ from the train images (the data gate's warning): pictures made "
        "another way, not relabelled, can do this too"
        if eval_shifted
        else ""
    )
    target = _q(move.answered)
    own = sum(n for (true, _), n in (counts or {}).items() if true == move.answered)
    kept = (counts or {}).get((move.answered, move.answered), 0)
    if not own:
        fares = ""
    elif kept * 2 > own:
        fares = f" (it answers most of {target}'s own as {target}: {kept} of {own})"
    else:
        fares = f" (and only {kept} of the {own} labelled {target} as {target})"
    return (
        f"the served model answers {move.text()}{fares}: are these {target} images under the wrong label, "
        f"or did {_q(move.label)} change?{shifted}"
    )


def precision_of(answered: Mapping[str, tuple[int, int]]) -> tuple[dict[str, float], dict[str, int]]:
    """({class: precision}, {class: answers}) from {class: (answers giving it, right ones)}; a
    class never answered has no precision."""
    precision = {c: right / n for c, (n, right) in sorted(answered.items()) if n}
    return precision, {c: n for c, (n, _) in sorted(answered.items()) if n}


def precision_failures(plan: GatePlan, results: EvalResults) -> list[Failure]:
    """The classes whose precision is below min_class_precision (none when it is off); when it is
    on and precision was not measured, one failure without a class or value."""
    if not plan.min_class_precision:
        return []
    if results.per_class_precision is None:
        return [Failure(None, False, None, precision=True)]
    return [
        Failure(c, False, value, precision=True)
        for c, value in results.per_class_precision.items()
        if not value >= plan.min_class_precision - METRIC_TOLERANCE
    ]


def judged_results(
    plan: GatePlan,
    tfma_results: EvalResults,
    candidate: Measured,
    compared: tuple[Measured, Measured] | None = None,
) -> tuple[EvalResults, bool]:
    """Every threshold of the plan applied to the records the candidate is judged on
    (plan.judged_on), where TFMA gated nothing: (results, whether a threshold failed).

    candidate: its answers on those records. compared: (the candidate's, the baseline's) answers
    on the ones the baseline did not train on either, when the baseline is compared and is not
    the candidate. The results' accuracy, per-class recall and example count are then the
    judged records'; TFMA's numbers on the whole split are kept beside them. Each threshold
    is applied as TFMA applies its own.
    """
    per_class = candidate.per_class()
    precision, answered = precision_of(candidate.answered())
    results = dataclasses.replace(
        tfma_results,
        accuracy=candidate.accuracy(),
        examples=len(candidate),
        per_class=per_class,
        per_class_precision=precision,
        per_class_answered=answered,
        balanced_accuracy=balanced_accuracy(per_class, plan.eval_classes),
        baseline_accuracy=None,
        baseline_per_class={},
        whole_split_accuracy=tfma_results.accuracy,
        whole_split_examples=tfma_results.examples,
    )
    failures = [floor_failure(plan.floor, gated_value(plan, results))]
    if plan.min_class_recall:
        failures.extend(
            Failure(c, False, recall)
            for c, recall in per_class.items()
            if not recall >= plan.min_class_recall - METRIC_TOLERANCE
        )
    failures.extend(precision_failures(plan, results))
    failures.append(uncompared_failure(plan))
    if compared is not None:
        mine, theirs = (a.value(plan.metric == METRIC_BALANCED) for a in compared)
        results = dataclasses.replace(
            results,
            compared_accuracy=mine,
            baseline_accuracy=theirs,
            compared_per_class=compared_classes(
                compared[0].counts(), compared[0].per_class(), compared[1].per_class()
            ),
        )
        failures.append(change_failure(mine, theirs, plan.max_regression))
    failures = [f for f in failures if f is not None]
    if failures:
        results = dataclasses.replace(results, failures=[*results.failures, *failures])
    return results, bool(failures)


def reasons(plan: GatePlan, results: EvalResults) -> list[str]:
    """Why the model was not blessed, one sentence per failed threshold (empty when none failed):
    the floor first, then the comparison with the served model, then the precisions, then the
    classes' recall, lowest first, or one sentence for many (`_class_reasons`). (In TFMA's order a
    class's recall could come first, before the floor, of 17 reasons.)"""
    out = []
    classes: list[tuple[float, str, str]] = []  # (recall, class, sentence) below min_class_recall
    known = set(plan.class_names)

    def rank(f: Failure) -> int:
        if f.is_change or f.uncompared or f.moved:
            return 1
        return 0 if f.class_name is None and not f.precision else 2

    for f in sorted(results.failures, key=rank):
        value = f.value if f.value is not None else float("nan")
        if f.moved:
            out.append(moved_reason(exchanged(results.labels_moved or ())))
        elif f.uncompared:
            out.append(
                f"the latest blessed model could not be compared with: {plan.baseline.skipped_reason}. The "
                "served model stays; give the eval split more images neither model trained on (ingest the "
                "new images together with the earlier ones, whose splits the same --seed keeps, or with a "
                "larger --eval-fraction), or pass --bless-without-comparison (gate.bless_without_comparison) "
                "to bless on the floors alone"
            )
        elif f.is_change:
            base = results.baseline_accuracy
            base_text = f"{base:.3f}" if base is not None else "unknown"
            unseen = plan.baseline.compared_examples
            current = results.compared_accuracy if unseen is not None else gated_value(plan, results)
            current = current if current is not None else float("nan")
            what = (
                "distinct eval images"
                if plan.judged_on is not None and plan.judged_on.repeats
                else "eval examples"
            )
            where = f" on the {unseen} {what} neither model trained on" if unseen is not None else ""
            if plan.baseline.shared_classes is not None:
                # Images the latest blessed model trained on are left out of these classes too.
                seen = " that neither model trained on" if plan.baseline.seen_eval_examples else ""
                where = (
                    f" on the {unseen} {what} of the classes both models have{seen} "
                    f"({_names(plan.baseline.shared_classes)}; {plan.baseline.label_change})"
                )
            added = plan.baseline.shared_classes is not None and set(plan.class_names) - set(
                plan.baseline.shared_classes
            )
            way = (
                f" (there, the candidate's answers of {_names(sorted(added))} count as wrong; to accept a drop on "
                "the classes both have for the class added, raise --max-regression)"
                if added
                else ""
            )
            out.append(
                f"{plan.floor.metric_text} {current:.3f}{where} regressed from the latest blessed model's {base_text} "
                f"by more than max_regression {plan.max_regression:.3f}{way}"
                f"{largest_drops(results.compared_per_class, plan.metric == METRIC_BALANCED)}"
            )
        elif f.precision:
            out.append(_precision_reason(plan, results, f))
        elif f.class_name is None and not plan.floor.reachable:
            out.append(f"no model can be blessed on this eval split: {plan.floor.describe()}{_judged(plan)}")
        elif f.class_name is None and f.value is None and plan.metric == METRIC_BALANCED:
            missing = [c for c in plan.eval_classes if results.per_class.get(c) is None]
            out.append(
                f"balanced accuracy could not be computed: TFMA reported no recall for eval class(es) "
                f"{_names(missing) or '(none named)'}, so the floor {plan.floor.value:.3f} is not met"
            )
        elif f.class_name is None:
            got, floor = _apart(value, plan.floor.value)
            out.append(
                f"{plan.floor.metric_text} {got} is below the floor {floor} ({plan.floor.describe()}){_judged(plan)}"
            )
        else:
            got, bound = _apart(value, plan.min_class_recall or 0.0)
            text = f"class {_q(f.class_name)} recall {got} is below min_class_recall {bound}"
            if f.class_name not in known:
                text += " (the model has no such class: it was not in the train split)"
            elif 0 < (n := plan.eval_class_counts.get(f.class_name, 0)) and (n - 1) / n < (
                plan.min_class_recall or 0.0
            ):
                text += (
                    f" ({counted(n, 'eval image')} of the class: one mistake fails it; give the eval "
                    "split more, --eval-fraction at ingest, or lower --min-class-recall)"
                )
            classes.append((value, str(f.class_name), text))
    out.extend(_class_reasons(plan, classes))
    out.extend(f"TFMA: {p}" for p in results.problems)
    return out


MAX_CLASS_REASONS = 10  # more classes below min_class_recall than this: one reason for them all
LOWEST_SHOWN = 5


def _class_reasons(plan: GatePlan, classes: list[tuple[float, str, str]]) -> list[str]:
    """The classes below min_class_recall, lowest recall first: a sentence each, or, past
    MAX_CLASS_REASONS of them, one sentence with the count and the lowest few (a 300-class model
    gave 291 lines, in no order a reader could use; gate.json keeps each class's recall)."""
    classes.sort(key=lambda c: (c[0] if c[0] == c[0] else -1.0, c[1]))  # NaN (no recall) first
    if len(classes) <= MAX_CLASS_REASONS:
        return [text for _, _, text in classes]
    bound = plan.min_class_recall or 0.0

    def shown(value: float, name: str) -> str:
        recall = "no recall" if value != value else _apart(value, bound)[0]
        return f"{_q(name)} {recall} ({counted(plan.eval_class_counts.get(name, 0), 'eval image')})"

    lowest = ", ".join(shown(value, name) for value, name, _ in classes[:LOWEST_SHOWN])
    fragile = sum(
        1 for _, name, _ in classes if 0 < (n := plan.eval_class_counts.get(name, 0)) and (n - 1) / n < bound
    )
    hint = (
        f"; {fragile} of them have so few eval images that one mistake fails them: give the eval split more "
        "(--eval-fraction at ingest), or lower --min-class-recall"
        if fragile
        else ""
    )
    return [
        f"{len(classes)} of the {len(plan.eval_classes)} eval classes have recall below min_class_recall "
        f"{bound:.3f}{_judged(plan)}; the lowest: {lowest}{hint}; each class's recall is in gate.json's "
        "per_class_recall and the report's per-class table"
    ]


def _precision_reason(plan: GatePlan, results: EvalResults, f: Failure) -> str:
    bound = plan.min_class_precision or 0.0
    if f.class_name is None:
        return (
            f"min_class_precision {bound:.3f} is set but precision was not measured (TFMA's eval_config "
            "has no confusion matrix: render or compile the pipeline again with this imgpipe)"
        )
    got, shown = _apart(f.value if f.value is not None else float("nan"), bound)
    n = (results.per_class_answered or {}).get(f.class_name)
    right = round(f.value * n) if n and f.value is not None else None
    of = f": {right} of the {n} eval images it called {_q(f.class_name)} are {_q(f.class_name)}" if n else ""
    return f"class {_q(f.class_name)} precision {got} is below min_class_precision {shown}{of}{_judged(plan)}"


def _judged(plan: GatePlan) -> str:
    return "" if plan.judged_on is None else f"; judged on the {plan.judged_on.describe()}"


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
    rolled_back: str | None = None,
    classes_told_apart_at_chance: Sequence[Mapping[str, Any]] | None = None,
    class_order_changed: str | None = None,
) -> dict[str, Any]:
    """The decision record (gate.json): every key of the contract, null where not applicable.

    measured: what the accuracy was measured on (model, eval examples, model specs), so a later
    Evaluator comparing against this model on the same examples can reuse the number.
    tfma_run: every input of TFMA's run, so a later identical run can reuse its output;
    tfma_reused_from: the execution folder whose output this one reused.
    eval_examples_in_train: how many eval examples are images the candidate trained on (None:
    the candidate has no record of its training images).
    rolled_back: the candidate's ROLLED_BACK_KEY note (an `imgpipe rollback` took it out of
    serving): it is not blessed, whatever its numbers, and the first reason says why.
    """
    why = reasons(plan, results)
    if rolled_back:
        why = [rolled_back_reason(rolled_back), *why]
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
        "floor_note": floor.describe(),
        "min_accuracy": floor.min_accuracy,
        "majority_class": floor.majority_class,
        "majority_share": floor.majority_share,
        "majority_margin": floor.margin,
        "significance": floor.significance,
        "significant_right": floor.significant_right,
        "eval_pictures": floor.eval_pictures,
        "class_names": list(plan.class_names),
        "class_order_changed": class_order_changed,
        "per_class_recall": dict(sorted(results.per_class.items())),
        "min_class_recall": plan.min_class_recall,
        "per_class_precision": (
            None if results.per_class_precision is None else dict(sorted(results.per_class_precision.items()))
        ),
        "per_class_answered": (
            None if results.per_class_answered is None else dict(sorted(results.per_class_answered.items()))
        ),
        "min_class_precision": plan.min_class_precision,
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
            "shared_classes": list(plan.baseline.shared_classes) if plan.baseline.shared_classes else None,
            "label_change": plan.baseline.label_change,
            # Why a model may be judged on the floors alone though a blessed model exists and was
            # not compared with it (None: it was compared, or there is none, or nothing waives it).
            "comparison_waived": plan.comparison_waived if uncompared(plan) else None,
            # The served model's own number when it was blessed, beside its number here ({value,
            # eval_examples, gate}; None: not compared, or no record of it): the Evaluator fills it
            # (evaluator.baseline_when_blessed).
            "when_blessed": None,
            # {class: {images, candidate, baseline}}: each model's recall of the class on the
            # examples compared (None: not measured).
            "per_class": None
            if results.compared_per_class is None
            else {
                c: {"images": n, "candidate": mine, "baseline": theirs}
                for c, (n, mine, theirs) in results.compared_per_class.items()
            },
        },
        "reasons": [] if blessed else why,
        "anomalies_allowed": list(anomalies_allowed),
        "measured": dict(measured) if measured is not None else None,
        "tfma_run": dict(tfma_run) if tfma_run is not None else None,
        "tfma_reused_from": tfma_reused_from,
        "eval_examples_in_train": eval_examples_in_train,
        # Pairs of classes the candidate does not tell apart better than chance (classes_at_chance;
        # None: not measured). Said, not a reason to refuse: two names of one concept.
        "classes_at_chance": None
        if classes_told_apart_at_chance is None
        else list(classes_told_apart_at_chance),
        "rolled_back": rolled_back or None,
        # Classes whose eval images the served model answered with one other class (None: not
        # measured): exchanged ones refuse the model unless a label change was accepted.
        "labels_moved": None if results.labels_moved is None else [m.to_dict() for m in results.labels_moved],
        "judged_on": plan.judged_on.to_dict() if plan.judged_on is not None else None,
        "whole_split": (
            None
            if plan.judged_on is None
            else {"accuracy": results.whole_split_accuracy, "examples": results.whole_split_examples}
        ),
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
