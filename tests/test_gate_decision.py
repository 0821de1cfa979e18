"""The gate's decisions without TFMA: the floor, what can be judged, the baseline, the record."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from components.gate import GateConfig
from components.gate_decision import (
    FLOOR_MAJORITY,
    FLOOR_MIN_ACCURACY,
    FLOOR_SIGNIFICANCE,
    MIN_UNSEEN_TO_COMPARE,
    NO_BASELINE,
    EvalResults,
    Failure,
    GateNotComputable,
    JudgedOn,
    accuracy_floor,
    baseline_plan,
    check_computable,
    exchanged,
    fewest_right_beating,
    gate_record,
    judged_results,
    label_set_change,
    labels_moved,
    moved_reason,
    on_shared_classes,
    plan_gate,
    precision_failures,
    reasons,
    uncompared_failure,
    with_enough_compared,
    with_seen_examples,
)

CONTRACT_KEYS = {
    "labels_moved",
    "floor_note",
    "per_class_precision",
    "per_class_answered",
    "min_class_precision",
    "judged_on",
    "whole_split",
    "blessed",
    "metric",
    "metric_reason",
    "value",
    "accuracy",
    "balanced_accuracy",
    "eval_classes",
    "eval_examples",
    "floor",
    "floor_source",
    "min_accuracy",
    "majority_class",
    "majority_share",
    "majority_margin",
    "significance",
    "significant_right",
    "eval_pictures",
    "class_names",
    "class_order_changed",
    "per_class_recall",
    "min_class_recall",
    "baseline",
    "reasons",
    "anomalies_allowed",
    "measured",
    "tfma_run",
    "tfma_reused_from",
    "eval_examples_in_train",
    "rolled_back",
    "classes_at_chance",
}
BASELINE_KEYS = {
    "accuracy",
    "per_class",
    "max_regression",
    "compared",
    "skipped_reason",
    "identical",
    "reused_from",
    "seen_eval_examples",
    "compared_examples",
    "candidate_accuracy",
    "shared_classes",
    "label_change",
    "comparison_waived",
    "when_blessed",
}


# ------------------------------------------------------------------------ the floor
def test_balanced_two_classes_floor_is_above_chance_not_at_it():
    # The case that blessed a 0.64 model: min_accuracy 0.5 on a balanced 2-class task.
    floor = accuracy_floor(0.5, {"cat": 50, "dog": 50}, margin=0.05)
    assert floor.value == pytest.approx(0.55)
    assert floor.source == FLOOR_MAJORITY
    assert (floor.majority_class, floor.majority_share) == ("cat", 0.5)  # tie: first name


def test_skewed_eval_raises_the_floor_past_min_accuracy():
    floor = accuracy_floor(0.5, {"5": 70, "6": 30}, margin=0.05)
    assert floor.value == pytest.approx(0.75) and floor.source == FLOOR_MAJORITY
    assert floor.majority_class == "5" and floor.majority_share == pytest.approx(0.7)
    # The constant predictor "always 5" scores 0.70: below the floor.
    assert 0.70 < floor.value


def test_min_accuracy_applies_when_it_is_the_higher_bound():
    floor = accuracy_floor(0.8, {"a": 10, "b": 10, "c": 10}, margin=0.05)
    assert floor.value == 0.8 and floor.source == FLOOR_MIN_ACCURACY
    assert floor.majority_share == pytest.approx(1 / 3)
    assert "min_accuracy 0.800" in floor.describe() and "is not higher" in floor.describe()


def test_floor_is_exact_for_a_reachable_accuracy_and_capped_at_one():
    # 0.5 + 0.05 in floating point is 0.55000000000000004; a model with 11/20 right must pass.
    floor = accuracy_floor(0.0, {"a": 10, "b": 10}, margin=0.05)
    assert 11 / 20 >= floor.value
    skewed = accuracy_floor(0.5, {"a": 98, "b": 2}, margin=0.05)
    assert skewed.value == 1.0  # judgeable (a perfect model passes), not impossible


def test_floor_needs_eval_examples():
    with pytest.raises(GateNotComputable, match="no labelled examples"):
        accuracy_floor(0.5, {}, margin=0.05)


# ------------------------------------------------------------------ computable
def test_a_class_without_eval_examples_cannot_be_judged_and_is_named():
    with pytest.raises(GateNotComputable, match=r"class '7' of the model has no example in the eval split"):
        check_computable({"5": 3, "6": 4}, ["5", "6", "7"])
    with pytest.raises(GateNotComputable, match=r"classes '6', '7'"):
        check_computable({"5": 3, "6": 0}, ["5", "6", "7"])
    with pytest.raises(GateNotComputable, match="no labelled examples"):
        check_computable({}, ["5"])
    check_computable({"5": 1, "6": 1, "9": 2}, ["5", "6"])  # an extra eval class is judged (recall 0)


# ------------------------------------------------------------------- the baseline
def test_baseline_plan():
    assert baseline_plan(["a", "b"], None).skipped_reason == NO_BASELINE
    assert not baseline_plan(["a", "b"], None).compared
    same = baseline_plan(["b", "a"], ["a", "b"])  # vocabulary order may differ: same task
    assert same.compared and same.skipped_reason is None
    changed = baseline_plan(["a", "b", "c"], ["a", "d"])
    assert not changed.compared
    assert changed.skipped_reason == (
        "label set changed: new classes 'b', 'c'; vanished class 'd' (against the latest blessed model); "
        "1 class in common, too few to compare on"
    )
    # A class added (or removed) with two or more kept: compared on the classes both have.
    added = baseline_plan(["a", "b", "c"], ["b", "a"])
    assert added.compared and added.shared_classes == ("a", "b") and added.label_change == "new class 'c'"
    assert on_shared_classes(added, 19).skipped_reason == (
        "label set changed: new class 'c' (against the latest blessed model); the 19 eval examples of the "
        "classes both models have are fewer than 20 to compare on"
    )
    assert on_shared_classes(added, 20).compared and on_shared_classes(added, 20).compared_examples == 20


def test_label_set_change_wording():
    assert label_set_change(["a"], ["a"]) is None
    assert label_set_change(["a"], ["a", "b"]) == "new class 'b'"
    assert label_set_change(["a", "b"], ["a"]) == "vanished class 'b'"
    # A label in another Unicode form than the served model's printed as the same name twice
    # ("new class 'café'; vanished class 'café'"): the one that does not print as it is shows
    # its code points.
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    said = label_set_change([nfc], [nfd])
    assert said == f"new class {nfd!r} (U+0063 U+0061 U+0066 U+0065 U+0301); vanished class {nfc!r}", said


# ------------------------------------------------------------------------ the plan
def test_plan_takes_the_gate_settings():
    gate = GateConfig(min_accuracy=0.5, majority_margin=0.1, min_class_recall=0.2, max_regression=0.01)
    plan = plan_gate(gate, {"x": 60, "y": 40}, ["x", "y"], ["x", "y"])
    assert plan.floor.value == pytest.approx(0.7) and plan.floor.source == FLOOR_MAJORITY
    assert plan.min_class_recall == 0.2 and plan.max_regression == 0.01
    assert plan.baseline.compared
    off = plan_gate(gate.model_copy(update={"min_class_recall": 0.0}), {"x": 6, "y": 4}, ["x", "y"], None)
    assert off.min_class_recall is None and off.baseline.skipped_reason == NO_BASELINE
    with pytest.raises(GateNotComputable, match="'y'"):
        plan_gate(gate, {"x": 6}, ["x", "y"], None)


def test_default_gate_has_a_small_per_class_floor():
    gate = GateConfig()
    assert gate.min_class_recall == 0.05 and gate.majority_margin == 0.05 and not gate.allow_anomalies


# ------------------------------------------------------------------- reasons, record
def _plan(**gate):
    """20 eval examples, gated on accuracy unless asked; the significance bound off unless asked (it
    would be 15 right of 20 here)."""
    return plan_gate(
        GateConfig(**{"significance": 0.0, "metric": "accuracy", **gate}),
        {"7": 10, "5": 6, "6": 4},
        ["7", "5", "6"],
        None,
    )


@pytest.mark.parametrize(
    ("n", "p0"), [(4, 0.5), (5, 0.5), (16, 0.5), (20, 0.6), (45, 1 / 3), (40, 0.9), (1000, 0.99), (7, 0.2)]
)
def test_fewest_right_beating_is_the_binomial_tests_critical_count(n, p0):
    from scipy.stats import binom

    k = fewest_right_beating(n, p0, 0.05)
    critical = [j for j in range(n + 1) if binom.sf(j - 1, n, p0) <= 0.05]
    assert k == (min(critical) if critical else None)


def test_a_few_lucky_eval_images_bless_nothing():
    """Labels shuffled at random, 4 eval images: guessing gets 3 of 4 one time in 3, 4 of 4 one in 16."""
    gate = GateConfig()  # the defaults: significance 0.05
    tiny = plan_gate(gate, {"a": 2, "b": 2}, ["a", "b"], None)
    assert tiny.floor.source == FLOOR_SIGNIFICANCE and not tiny.floor.reachable
    assert tiny.floor.significant_right is None
    [reason] = reasons(
        tiny, EvalResults(1.0, 4, {"a": 1.0, "b": 1.0}, None, failures=[Failure(None, False, 1.0)])
    )
    assert reason.startswith(
        "no model can be blessed on this eval split: not even 4 right of 4 eval examples"
    )
    assert "too small to tell a model from chance; add eval images" in reason
    # 16 balanced eval images: 12 right is the fewest guessing reaches at most 5% of the time.
    small = plan_gate(gate, {"a": 8, "b": 8}, ["a", "b"], None)
    assert small.floor.value == pytest.approx(12 / 16) and small.floor.significant_right == 12
    assert "12 right of 16 is the fewest that passes a one-sided binomial test" in small.floor.describe()
    # A large split: the majority bound is the higher one, as before.
    large = plan_gate(gate, {"a": 500, "b": 500}, ["a", "b"], None)
    assert large.floor.source == FLOOR_MAJORITY and large.floor.value == pytest.approx(0.55)
    off = plan_gate(gate.model_copy(update={"significance": 0.0}), {"a": 2, "b": 2}, ["a", "b"], None)
    assert off.floor.source == FLOOR_MAJORITY and off.floor.significant_right is None
    record = gate_record(
        tiny, EvalResults(1.0, 4, {}, None, failures=[Failure(None, False, 1.0)]), blessed=False
    )
    assert record["floor_source"] == "significance" and record["significance"] == 0.05
    assert record["floor"] > 1.0 and record["significant_right"] is None


def test_reasons_name_each_failed_threshold():
    plan = _plan(min_accuracy=0.5, max_regression=0.0)
    results = EvalResults(
        accuracy=0.52,
        examples=20,
        per_class={"5": 0.0, "6": 0.5, "7": 0.9},
        baseline_accuracy=0.9,
        failures=[Failure(None, False, 0.52), Failure("5", False, 0.0), Failure(None, True, -0.38)],
        problems=["no examples in slice label:9"],
    )
    assert reasons(plan, results) == [
        # The floor, then the comparison with the served model, then each class's (TFMA gave the
        # class's first).
        "accuracy 0.520 is below the floor 0.550 (majority class '7' has 0.500 of eval + margin 0.050)",
        "accuracy 0.520 regressed from the latest blessed model's 0.900 by more than max_regression 0.000",
        "class '5' recall 0.000 is below min_class_recall 0.050",
        "TFMA: no examples in slice label:9",
    ]


def test_the_regression_on_shared_classes_says_images_the_baseline_trained_on_were_left_out():
    """A class added, and eval images the latest blessed model trained on: the comparison is on the
    shared classes' images neither model trained on, which the reason says (it read as if every
    eval image of those classes was compared; an audit)."""
    plan = _plan(max_regression=0.0)
    shared = dataclasses.replace(
        plan.baseline,
        compared=True,
        shared_classes=("5", "6"),
        label_change="new class '7'",
        seen_eval_examples=1,
        compared_examples=35,
    )
    results = EvalResults(0.7, 40, {}, 0.82, compared_accuracy=0.51, failures=[Failure(None, True, -0.31)])
    [reason] = reasons(dataclasses.replace(plan, baseline=shared), results)
    assert reason.startswith(
        "accuracy 0.510 on the 35 eval examples of the classes both models have that neither model trained "
        "on ('5', '6'; new class '7') regressed from the latest blessed model's 0.820"
    ), reason
    [reason] = reasons(
        dataclasses.replace(plan, baseline=dataclasses.replace(shared, seen_eval_examples=0)), results
    )
    assert "of the classes both models have ('5', '6'" in reason


def test_a_regression_says_which_classes_it_fell_on_with_their_counts():
    """A drop from 0.823 to 0.510 in balanced accuracy that rests on one class of 2 images (an
    audit): the reason names where the right answers were lost, with the images there."""
    from components.gate_decision import compared_classes, largest_drops

    per_class = compared_classes(
        {"one": 1, "two": 2, "five": 30, "six": 4},
        {"one": 1.0, "two": 0.0, "five": 0.5, "six": 0.75},
        {"one": 1.0, "two": 1.0, "five": 0.5, "six": 1.0},
    )
    assert per_class == {
        "five": (30, 0.5, 0.5),
        "one": (1, 1.0, 1.0),
        "six": (4, 0.75, 1.0),
        "two": (2, 0.0, 1.0),
    }
    assert largest_drops(per_class) == "; where it fell: 'two' 2 of 2 right, now 0, 'six' 4 of 4 right, now 3"
    many = {f"c{i}": (10, 0.5, (5 + i) / 10) for i in range(1, 6)}
    assert largest_drops(many) == (
        "; where it fell: 'c5' 10 of 10 right, now 5, 'c4' 9 of 10 right, now 5, 'c3' 8 of 10 right, now 5 "
        "(and 2 more classes)"
    )
    assert largest_drops({"a": (5, 1.0, 0.8)}) == "" and largest_drops(None) == ""
    # Balanced accuracy weighs each class's recall the same: a class of 2 images that fell from 1.0
    # to 0 is the cause, before three of 100 that lost 3 answers each.
    mixed = {f"b{i}": (100, 0.90, 0.93) for i in (1, 2, 3)} | {"tiny": (2, 0.0, 1.0)}
    assert largest_drops(mixed, balanced=True).startswith("; where it fell: 'tiny' 2 of 2 right, now 0, 'b1'")
    assert largest_drops(mixed).endswith("'b3' 93 of 100 right, now 90 (and 1 more class)")
    # A class one model has no recall for (not measured): no per-class comparison, not a wrong one.
    assert compared_classes({"a": 3}, {"a": 1.0}, {}) is None


def test_many_classes_below_the_recall_floor_are_one_reason_lowest_first():
    """300 classes, 291 below min_class_recall: 291 reasons on the run's stderr, the report and
    gate.json, in TFMA's order (an audit). Up to MAX_CLASS_REASONS they are a sentence each,
    lowest recall first; past it, one sentence with the count and the lowest."""
    from components.gate_decision import MAX_CLASS_REASONS

    names = [f"c{i:02d}" for i in range(30)]
    plan = plan_gate(
        GateConfig(min_accuracy=0.0, significance=0, min_class_recall=0.5),
        dict.fromkeys(names, 10),
        names,
        None,
    )
    recall = {c: (0.05 * (i % 7)) for i, c in enumerate(names)}
    few = [Failure(c, False, recall[c]) for c in ("c03", "c01", "c02")]
    assert reasons(plan, EvalResults(0.5, 300, recall, None, failures=few)) == [
        "class 'c01' recall 0.050 is below min_class_recall 0.500",
        "class 'c02' recall 0.100 is below min_class_recall 0.500",
        "class 'c03' recall 0.150 is below min_class_recall 0.500",
    ]
    many = [Failure(c, False, recall[c]) for c in reversed(names)]
    assert len(many) > MAX_CLASS_REASONS
    assert reasons(plan, EvalResults(0.5, 300, recall, None, failures=many)) == [
        "30 of the 30 eval classes have recall below min_class_recall 0.500; the lowest: 'c00' 0.000 (10 "
        "eval images), 'c07' 0.000 (10 eval images), 'c14' 0.000 (10 eval images), 'c21' 0.000 (10 eval "
        "images), 'c28' 0.000 (10 eval images); each class's recall is in gate.json's per_class_recall and "
        "the report's per-class table"
    ]
    # One eval image a class (one mistake fails it): said once for them all, as for one class.
    tiny = plan_gate(
        GateConfig(min_accuracy=0.0, significance=0, min_class_recall=0.5),
        dict.fromkeys(names, 1),
        names,
        None,
    )
    [reason] = reasons(tiny, EvalResults(0.5, 30, recall, None, failures=many))
    assert "; 30 of them have so few eval images that one mistake fails them: give the eval split" in reason


def test_recall_reason_says_when_one_mistake_fails_a_class():
    """40 classes of 1 eval image: a model right on 19 was refused by 21 recall lines, none saying
    that one wrong answer fails such a class (an audit)."""
    names = [f"c{i}" for i in range(4)]
    plan = plan_gate(
        GateConfig(min_accuracy=0.1, significance=0), {"c0": 1, "c1": 1, "c2": 1, "c3": 20}, names, None
    )
    results = EvalResults(
        0.9, 23, {"c0": 0.0, "c1": 1.0, "c2": 1.0, "c3": 0.9}, None, failures=[Failure("c0", False, 0.0)]
    )
    assert reasons(plan, results) == [
        "class 'c0' recall 0.000 is below min_class_recall 0.050 (1 eval image of the class: one mistake "
        "fails it; give the eval split more, --eval-fraction at ingest, or lower --min-class-recall)"
    ]
    more = plan_gate(
        GateConfig(min_accuracy=0.1, significance=0), {"c0": 5, "c1": 1, "c2": 1, "c3": 20}, names, None
    )
    assert reasons(more, results) == ["class 'c0' recall 0.000 is below min_class_recall 0.050"]


def test_recall_reason_says_when_the_model_does_not_know_the_class():
    plan = _plan()
    results = EvalResults(0.6, 20, {"9": 0.0}, None, failures=[Failure("9", False, 0.0)])
    [reason] = reasons(plan, results)
    assert reason.startswith("class '9' recall 0.000") and "not in the train split" in reason


def test_near_copies_in_eval_count_once_in_the_significance_bound():
    """An audit's two classes of three 25-frame clips each (labels unrelated to the pictures), one
    clip of each in eval: 50 eval images of 2 pictures, and a model that learned nothing was
    blessed at 1.0 on one seed of four. With ingest's picture counts, the binomial test counts
    pictures: 2 cannot show anything, 20 need 15 right (images: 59 of 100)."""
    gate = GateConfig()
    clips = plan_gate(gate, {"a": 25, "b": 25}, ["a", "b"], None, eval_pictures={"a": 1, "b": 1})
    assert not clips.floor.reachable and clips.floor.eval_pictures == 2
    assert clips.floor.describe().startswith(
        "not even 2 right of 2 pictures (the eval split's 50 images, each set of near-copies counted once)"
    )
    assert plan_gate(gate, {"a": 25, "b": 25}, ["a", "b"], None).floor.reachable  # counted as images
    some = plan_gate(gate, {"a": 50, "b": 50}, ["a", "b"], None, eval_pictures={"a": 10, "b": 10})
    assert some.floor.source == FLOOR_SIGNIFICANCE and some.floor.value == pytest.approx(15 / 20)
    assert some.floor.significant_right == 15 and some.floor.eval_examples == 100
    assert "15 right of 20 pictures (the eval split's 100 images" in some.floor.describe()
    images = plan_gate(gate, {"a": 50, "b": 50}, ["a", "b"], None)
    assert images.floor.value == pytest.approx(0.59) and images.floor.eval_pictures is None
    # Every image its own picture, or no counts: the images' floor, no pictures said.
    same = plan_gate(gate, {"a": 50, "b": 50}, ["a", "b"], None, eval_pictures={"a": 50, "b": 50})
    assert same.floor == images.floor
    # Balanced accuracy: the chance bound on the classes' picture counts.
    skewed = {"a": 90, "b": 10}
    balanced = plan_gate(gate, skewed, ["a", "b"], None, eval_pictures={"a": 30, "b": 2})
    assert balanced.floor.metric == "balanced_accuracy" and balanced.floor.eval_pictures == 32
    assert balanced.floor.value > plan_gate(gate, skewed, ["a", "b"], None).floor.value
    assert (
        "32 pictures (the eval split's 100 images, each set of near-copies counted once)"
        in balanced.floor.describe()
    )
    record = gate_record(some, EvalResults(0.7, 100, {"a": 0.7, "b": 0.7}, None), blessed=False)
    assert record["eval_pictures"] == 20 and record["eval_examples"] == 100


def test_record_has_every_contract_key():
    plan = _plan(min_accuracy=0.6)
    results = EvalResults(0.8, 20, {"7": 0.9, "5": 0.7, "6": 0.75}, None)
    record = gate_record(plan, results, blessed=True, anomalies_allowed=["eval: x"])
    assert set(record) == CONTRACT_KEYS and set(record["baseline"]) == BASELINE_KEYS
    assert record["blessed"] is True and record["reasons"] == []
    assert record["floor"] == 0.6 and record["floor_source"] == "min_accuracy"
    assert (
        record["floor_note"]
        == plan.floor.describe()
        == "min_accuracy 0.600; majority class '7' has 0.500 of eval + margin 0.050 is not higher"
    )
    assert record["majority_class"] == "7" and record["majority_share"] == 0.5
    assert record["class_names"] == ["7", "5", "6"]  # index order, as given
    assert list(record["per_class_recall"]) == ["5", "6", "7"]
    assert record["baseline"] == {
        "accuracy": None,
        "max_regression": 0.0,
        "compared": False,
        "skipped_reason": NO_BASELINE,
        "identical": False,
        "reused_from": None,
        "seen_eval_examples": None,
        "compared_examples": None,
        "candidate_accuracy": None,
        "shared_classes": None,
        "label_change": None,
        "comparison_waived": None,
        "when_blessed": None,
        "per_class": None,
    }
    assert record["anomalies_allowed"] == ["eval: x"] and record["measured"] is None


def test_record_never_says_not_blessed_without_a_reason():
    record = gate_record(_plan(), EvalResults(0.9, 20, {}, None), blessed=False)
    assert record["blessed"] is False and len(record["reasons"]) == 1
    assert "TFMA did not bless" in record["reasons"][0]


def test_a_rolled_back_model_is_refused_first_whatever_its_numbers():
    """A model `imgpipe rollback` took out of serving: the record says why it is not blessed,
    before any threshold it also failed; without the mark the same numbers pass."""
    note = (
        "rolled back on 2026-12-06T10:00:00Z: served version 20 replaced by version 10's model (bad on dogs)"
    )
    results = EvalResults(0.95, 20, {"a": 0.9, "b": 1.0}, None)
    plan = _plan(min_accuracy=0.6)
    record = gate_record(plan, results, blessed=False, rolled_back=note)
    assert record["blessed"] is False and record["rolled_back"] == note
    [reason] = record["reasons"]
    assert reason.startswith(f"this model was {note}; it is not blessed again")
    assert "imgpipe rollback --to" in reason
    below = dataclasses.replace(results, accuracy=0.5, failures=[Failure(None, False, 0.5)])
    failing = gate_record(plan, below, blessed=False, rolled_back=note)
    assert failing["reasons"][0] == reason and failing["reasons"][1].startswith("accuracy 0.500")
    assert gate_record(plan, results, blessed=True)["rolled_back"] is None


def test_record_keeps_the_baseline_accuracy_only_when_compared():
    plan = plan_gate(GateConfig(), {"a": 5, "b": 5}, ["a", "b"], ["a", "b"])
    record = gate_record(plan, EvalResults(0.9, 10, {}, 0.85), blessed=True)
    assert record["baseline"]["compared"] is True and record["baseline"]["accuracy"] == 0.85
    assert record["baseline"]["compared_examples"] == 10 and record["baseline"]["candidate_accuracy"] == 0.9
    same = plan_gate(GateConfig(), {"a": 5, "b": 5}, ["a", "b"], ["a", "b"], baseline_identical=True)
    record = gate_record(same, EvalResults(0.9, 10, {}, None), blessed=True)
    assert record["baseline"]["identical"] is True and record["baseline"]["accuracy"] == 0.9
    changed = plan_gate(GateConfig(), {"a": 5, "b": 5}, ["a", "b"], ["a", "c"], baseline_identical=True)
    assert not changed.baseline.compared and not changed.baseline.identical


def test_change_failure_is_tfmas_no_regression_threshold():
    from components.gate_decision import change_failure

    assert change_failure(0.90, 0.90, 0.0) is None  # equal is not a regression
    assert change_failure(0.91, 0.90, 0.0) is None
    failure = change_failure(0.89, 0.90, 0.0)
    assert failure.is_change and failure.class_name is None and failure.value == pytest.approx(-0.01)
    assert change_failure(0.89, 0.90, 0.02) is None  # within max_regression
    assert change_failure(0.87, 0.90, 0.02) is not None
    assert change_failure(None, 0.90, 0.0) is None  # no accuracy: TFMA's own failures speak
    # Float32 metrics: a drop of exactly max_regression (0.8 -> 0.7 as TFMA stores them) passes.
    assert change_failure(float(np.float32(0.7)), float(np.float32(0.8)), 0.1) is None
    assert change_failure(float(np.float32(0.65)), float(np.float32(0.8)), 0.1) is not None
    # A NaN on either side is no evidence of no regression: it fails.
    assert change_failure(float("nan"), 0.90, 0.1) is not None
    assert change_failure(0.90, float("nan"), 0.1) is not None


# ------------------------------------------------- a baseline that trained on eval images
def test_a_baseline_that_saw_no_eval_image_is_compared_on_the_whole_split():
    plan = with_seen_examples(baseline_plan(["a", "b"], ["a", "b"]), 60, 0)
    assert plan.compared and plan.seen_eval_examples == 0 and plan.compared_examples is None


def test_a_baseline_that_trained_on_eval_images_is_compared_on_the_rest():
    """The data was split anew: 46 of the 60 eval images were in the baseline's train split."""
    from components.gate_decision import MIN_UNSEEN_TO_COMPARE

    reused = dataclasses.replace(baseline_plan(["a", "b"], ["a", "b"]), reused_from="/x/gate.json")
    plan = with_seen_examples(reused, 60, 60 - MIN_UNSEEN_TO_COMPARE)
    assert plan.compared and plan.seen_eval_examples == 40 and plan.compared_examples == MIN_UNSEEN_TO_COMPARE
    assert plan.reused_from is None  # a number measured on the whole split does not apply
    few = with_seen_examples(reused, 60, 61 - MIN_UNSEEN_TO_COMPARE)
    assert not few.compared and few.seen_eval_examples == 41 and few.compared_examples is None
    assert few.skipped_reason == (
        "the latest blessed model trained on 41 of the 60 eval examples (the same image bytes were in its "
        f"train split): the 19 that neither model trained on are fewer than {MIN_UNSEEN_TO_COMPARE} to compare on"
    )


def test_eval_images_the_candidate_trained_on_are_left_out_of_the_comparison_too():
    """Records made elsewhere repeat images across splits: counted, they would flatter the candidate."""
    base = baseline_plan(["a", "b"], ["a", "b"])
    # The baseline saw 20 of 60, the candidate 15 (5 of them the same records): 25 neither saw.
    plan = with_seen_examples(base, 60, 20, candidate_seen=15, either=35)
    assert plan.compared and plan.seen_eval_examples == 20 and plan.compared_examples == 25
    # Only the candidate saw some (the baseline saw none, or keeps no record): still left out.
    only = with_seen_examples(base, 60, None, candidate_seen=3, either=3)
    assert only.compared and only.seen_eval_examples is None and only.compared_examples == 57
    few = with_seen_examples(base, 60, 30, candidate_seen=12, either=42)
    assert not few.compared and few.skipped_reason == (
        "the latest blessed model trained on 30 and the candidate on 12 of the 60 eval examples (the same "
        "image bytes were in their train splits): the 18 that neither model trained on are fewer than 20 "
        "to compare on"
    )
    alone = with_seen_examples(base, 30, 0, candidate_seen=11, either=11)
    assert alone.skipped_reason.startswith(
        "the candidate trained on 11 of the 30 eval examples (the same image"
    )
    with pytest.raises(ValueError, match="either"):
        with_seen_examples(base, 60, 0, candidate_seen=3)


def test_what_is_not_compared_or_is_the_candidate_is_left_as_it_was():
    none = baseline_plan(["a", "b"], None)
    assert with_seen_examples(none, 60, 30) == none
    same = baseline_plan(["a", "b"], ["a", "b"], identical=True)
    assert with_seen_examples(same, 60, 30) == same


def test_a_regression_on_the_unseen_images_names_them_and_uses_their_numbers():
    gate = plan_gate(GateConfig(), {"a": 30, "b": 30}, ["a", "b"], ["a", "b"])
    plan = dataclasses.replace(gate, baseline=with_seen_examples(gate.baseline, 60, 35))
    # Overall the candidate has 0.95; on the 25 images the baseline did not see, 0.80 against its 0.88.
    results = EvalResults(0.95, 60, {}, 0.88, failures=[Failure(None, True, -0.08)], compared_accuracy=0.8)
    assert reasons(plan, results) == [
        "accuracy 0.800 on the 25 eval examples neither model trained on regressed "
        "from the latest blessed model's 0.880 by more than max_regression 0.000"
    ]
    record = gate_record(plan, results, blessed=False)["baseline"]
    assert (record["seen_eval_examples"], record["compared_examples"]) == (35, 25)
    assert (record["accuracy"], record["candidate_accuracy"]) == (0.88, 0.8)


def test_a_value_a_hair_below_its_bound_does_not_read_as_equal():
    gate = plan_gate(GateConfig(min_accuracy=0.55), {"a": 50010, "b": 49990}, ["a", "b"], None)
    results = EvalResults(
        0.54996,
        100000,
        {"a": 0.05, "b": 0.9},
        None,
        failures=[Failure(None, False, 0.54996), Failure("a", False, 0.05)],
    )
    plan = dataclasses.replace(gate, min_class_recall=0.0504)
    why = reasons(plan, results)
    # The majority bound (0.5001 + 0.05) is the floor: at 3 decimals both would read 0.550.
    assert why[0].startswith("accuracy 0.5500 is below the floor 0.5501 (majority class 'a'")
    assert why[1] == "class 'a' recall 0.0500 is below min_class_recall 0.0504"


# ------------------------------------------------------------------ balanced accuracy
def _null_predictors(k: int) -> list:
    """Class frequencies q of answers that ignore the image: a fine grid of q_1 for two classes;
    for three, a grid of the simplex (faces included) and seeded points near its faces."""
    import numpy as np

    if k == 2:
        return [(p, 1 - p) for p in np.linspace(0.001, 0.999, 999)]
    grid = [(a, b, 1 - a - b) for a in np.arange(0, 1.0001, 0.02) for b in np.arange(0, 1.0001 - a, 0.02)]
    return grid + [tuple(x) for x in np.random.default_rng(0).dirichlet(np.full(k, 0.3), 500)]


def _worst_least_rare(sizes, alpha):
    """The least balanced accuracy b that no q of _null_predictors reaches with probability above
    alpha, by enumerating every combination of per-class right answers (their sums as exact
    fractions, so equal values merge exactly); 2.0 when none is that rare."""
    import itertools
    from fractions import Fraction

    import numpy as np
    from scipy.stats import binom

    qs = np.clip(np.array(_null_predictors(len(sizes))), 0.0, 1.0)  # the grid's 1 - a - b may be -1e-16
    pmfs = [binom.pmf(np.arange(n + 1)[None, :], n, qs[:, [c]]) for c, n in enumerate(sizes)]
    by_value: dict = {}
    for xs in itertools.product(*(range(n + 1) for n in sizes)):
        b = sum(Fraction(x, n * len(sizes)) for x, n in zip(xs, sizes, strict=True))
        p = np.prod([pmf[:, x] for pmf, x in zip(pmfs, xs, strict=True)], axis=0)
        by_value[b] = by_value.get(b, 0.0) + p
    tail = np.zeros(len(qs))
    least = 2.0
    for b in sorted(by_value, reverse=True):  # from the top: the tail of every q grows
        tail = tail + by_value[b]
        if tail.max() > alpha:
            return least
        least = float(b)
    return least


@pytest.mark.parametrize(
    "sizes",
    [
        [4, 4],
        [8, 8],
        [10, 3],
        [30, 5],
        [20, 2],
        [9, 1],
        [1, 200],
        [3, 5, 5],
        [12, 4, 4],
        [6, 6, 1],
        [20, 5, 2],
        [1, 1, 200],
    ],
)
def test_the_chance_bound_on_balanced_accuracy_is_the_worst_case_over_class_frequencies(sizes):
    """No answer that ignores the image, whatever the frequencies it answers with, reaches the
    bound more often than alpha: checked against every q of a fine grid. [1, 200]: answering the
    one-image class 40% of the time reaches 0.775 (1/2 + margin) with probability 0.4; [3, 5, 5]:
    values that floating-point sums would keep apart are one value."""
    from components.gate_decision import chance_balanced_accuracy_bound

    got = chance_balanced_accuracy_bound(sizes, 0.05)
    want = _worst_least_rare(sizes, 0.05)
    assert (got > 1.0) if want > 1.0 else got == pytest.approx(want, abs=1e-9)


def test_a_one_image_class_gets_a_floor_near_perfect():
    from components.gate import GateConfig
    from components.gate_decision import FLOOR_SIGNIFICANCE, plan_gate

    gate = plan_gate(
        GateConfig(metric="balanced_accuracy"), {"rare": 1, "common": 200}, ["common", "rare"], None
    )
    assert gate.floor.source == FLOOR_SIGNIFICANCE and gate.floor.value >= 0.95
    text = gate.floor.describe()
    assert "whatever the frequencies they answer with" in text and "exact distribution" in text, text


@pytest.mark.parametrize("sizes", [[30, 5], [12, 4, 4], [20, 2], [15, 15]])
def test_the_simulated_chance_bound_errs_at_most_a_step_high(monkeypatch, sizes):
    """Where the split is too large to enumerate, the seeded simulation gives the exact bound or the
    next value up (never one that chance reaches more often than alpha + its error)."""
    from fractions import Fraction

    from components import gate_decision

    monkeypatch.setattr(gate_decision, "EXACT_STATES", 1)
    assert gate_decision.balanced_chance_method(sizes) == "simulation"
    got = gate_decision.chance_balanced_accuracy_bound(sizes, 0.05)
    want = _worst_least_rare(sizes, 0.05)
    k = len(sizes)
    values = sorted(
        {
            float(sum(Fraction(x, n * k) for x, n in zip(xs, sizes, strict=True)))
            for xs in _combinations(sizes)
        }
    )
    assert want - 1e-9 <= got <= min((v for v in values if v > want + 1e-9), default=want) + 1e-9
    assert gate_decision.chance_balanced_accuracy_bound(sizes, 0.05) == got  # seeded: the same every time


def _combinations(sizes):
    import itertools

    return itertools.product(*(range(n + 1) for n in sizes))


@pytest.mark.parametrize("sizes", [[1, 4], [3, 5, 5], [6, 6, 1], [2, 9]])
def test_hoeffdings_bound_is_above_chances_tail_for_every_frequency(sizes):
    """chance_tail_bound(b) >= P_q(B >= b) for every q of the grid and every value B takes."""
    from components.gate_decision import _Lattice, chance_tail_bound

    lattice = _Lattice(np.array(sizes))
    qs = np.clip(np.array(_null_predictors(len(sizes))), 0.0, 1.0)
    worst = 0.0
    for q in qs:
        values, probs = lattice.exact(q)
        tails = np.cumsum(probs[::-1])[::-1]
        bounds = np.array([chance_tail_bound(sizes, b) for b in values])
        assert np.all(tails <= bounds + 1e-12), (q, values[tails > bounds + 1e-12])
        worst = max(worst, float((tails / bounds)[values > 1 / len(sizes) + 0.2].max()))
    assert worst > 0.01  # the bound is a bound, not a constant far above every tail


@pytest.mark.parametrize(
    "sizes,min_accuracy",
    [
        ([500, 500], 0.0),
        ([800, 400], 0.0),
        ([300, 300, 300], 0.0),
        ([200, 200, 200, 200], 0.0),
        ([30, 30, 30], 0.7),
    ],
)
def test_where_the_search_is_skipped_the_floor_is_the_one_it_gives(monkeypatch, sizes, min_accuracy):
    """On splits where Hoeffding's inequality shows the search cannot raise the floor (1/k + margin,
    or a higher min_accuracy), the floor (value and source) is the one the exact search would have
    given, and says it was not run."""
    from components import gate_decision

    counts = {f"c{i}": n for i, n in enumerate(sizes)}
    assert gate_decision.balanced_chance_method(sizes) == "exact"
    skipped = gate_decision.balanced_floor(min_accuracy, counts, 0.05, 0.05)
    assert skipped.chance_method == gate_decision.CHANCE_HOEFFDING
    monkeypatch.setattr(gate_decision, "chance_cannot_reach", lambda *a: False)
    searched = gate_decision.balanced_floor(min_accuracy, counts, 0.05, 0.05)
    assert searched.chance_method == "exact"
    assert (skipped.value, skipped.source) == (searched.value, searched.source)
    if min_accuracy:
        assert (skipped.value, skipped.source) == (min_accuracy, "min_accuracy")
    else:
        assert (skipped.value, skipped.source) == (pytest.approx(1 / len(sizes) + 0.05), "chance")


@pytest.mark.parametrize("sizes", [[100, 100], [120, 120], [140, 140], [950, 50], [12, 4, 4]])
def test_where_chance_reaches_above_the_floor_the_search_runs_and_raises_it(sizes):
    """Splits whose significance bound is above 1/k + margin, some by a few thousandths: not skipped."""
    from components import gate_decision

    floor = gate_decision.balanced_floor(0.0, {f"c{i}": n for i, n in enumerate(sizes)}, 0.05, 0.05)
    assert floor.source == "significance" and floor.chance_method == "exact", floor
    assert floor.value > 1 / len(sizes) + 0.05


def test_a_thousand_classes_get_their_floor_without_the_search(monkeypatch):
    """1,000 classes of 30 eval images: the search would take about half a minute (simulated, 20,000
    draws per frequency tried) for a bound far below 1/1000 + margin; it is not run, and a
    significance too small to simulate is answered too."""
    from components import gate_decision

    def search(*args, **kwargs):
        raise AssertionError("the chance bound's search ran")

    monkeypatch.setattr(gate_decision, "chance_balanced_accuracy_bound", search)
    counts = {f"class{i:04d}": 30 for i in range(1000)}
    for significance in (0.05, 1e-9):
        floor = gate_decision.balanced_floor(0.0, counts, 0.05, significance)
        assert (floor.source, floor.chance_method) == ("chance", "hoeffding")
        assert floor.value == pytest.approx(0.051)
    # Where it cannot be shown, the search runs: 4 of 4 balanced images is chance's 1 time in 16.
    with pytest.raises(AssertionError, match="search ran"):
        gate_decision.balanced_floor(0.5, {"a": 2, "b": 2}, 0.05, 0.05)


def test_a_significance_the_simulation_cannot_resolve_is_refused():
    from components import gate_decision

    sizes = [997, 1009, 1013]  # coprime: simulated
    assert gate_decision.balanced_chance_method(sizes) == "simulation"
    with pytest.raises(
        gate_decision.SignificanceTooSmall, match=r"significance 1e-07 is too small .*gate.significance >= "
    ):
        gate_decision.chance_balanced_accuracy_bound(sizes, 1e-7)


def test_values_within_the_gates_tolerance_below_the_floor_are_rare_too():
    """The gate passes a value METRIC_TOLERANCE below the floor: the floor is chosen so that a value
    that close below it is as rare as the floor itself."""
    import numpy as np

    from components.gate_decision import _least_rare_value

    values = np.array([0.4, 0.5, 0.5000005, 0.6])
    probs = np.array([0.5, 0.43, 0.03, 0.04])  # P(B >= 0.5000005) = 0.07, P(B >= 0.6) = 0.04
    assert _least_rare_value(values, probs, 0.05, 100) == 0.6
    probs = np.array([0.5, 0.47, 0.01, 0.02])  # P(B >= 0.5) = 0.5: 0.5000005 is within the slack of 0.5
    assert _least_rare_value(values, probs, 0.05, 100) == 0.6
    probs = np.array([0.95, 0.01, 0.01, 0.03])
    assert _least_rare_value(values, probs, 0.05, 100) == 0.5


def test_balanced_accuracy_with_a_class_without_recall_names_it():
    from components.gate import GateConfig
    from components.gate_decision import EvalResults, Failure, plan_gate, reasons

    gate = plan_gate(
        GateConfig(metric="balanced_accuracy", significance=0.0, min_accuracy=0.6),
        {"a": 30, "b": 10},
        ["a", "b"],
        None,
    )
    results = EvalResults(0.8, 40, {"a": 0.9}, None, failures=[Failure(None, False, None)])
    [why] = reasons(gate, results)
    assert (
        why
        == "balanced accuracy could not be computed: TFMA reported no recall for eval class(es) 'b', so the floor 0.600 is not met"
    )


def test_widest_chance_maximises_the_spread():
    import numpy as np

    from components.gate_decision import _widest_chance

    n = np.array([100, 5, 3])
    q = _widest_chance(n)
    assert q.sum() == pytest.approx(1.0) and (q >= 0).all()
    spread = (q * (1 - q) / n).sum()
    rng = np.random.default_rng(1)
    for other in rng.dirichlet(np.ones(3), 500):
        assert (other * (1 - other) / n).sum() <= spread + 1e-12
    assert list(_widest_chance(np.array([7, 3]))) == [0.5, 0.5]


@pytest.mark.parametrize(
    ("counts", "setting", "metric"),
    [
        ({"a": 90, "b": 10}, "auto", "balanced_accuracy"),
        ({"a": 16, "b": 10}, "auto", "balanced_accuracy"),  # 1.6 > 1.5
        ({"a": 15, "b": 10}, "auto", "accuracy"),  # 1.5: balanced enough
        ({"a": 10, "b": 10, "c": 10}, "auto", "accuracy"),
        ({"a": 90, "b": 10}, "accuracy", "accuracy"),
        ({"a": 10, "b": 10}, "balanced_accuracy", "balanced_accuracy"),
    ],
)
def test_auto_gates_balanced_accuracy_on_a_skewed_eval_split(counts, setting, metric):
    from components.gate_decision import gated_metric

    got, why = gated_metric(setting, counts)
    assert got == metric
    assert (
        why.startswith("auto: the eval split's largest/smallest class")
        if setting == "auto"
        else why == f"gate.metric {setting}"
    )


def test_a_95_to_5_split_can_bless_on_balanced_accuracy_not_on_accuracy():
    """On 950:50 the accuracy floor is 1.0 (0.95 + margin): only a perfect model passes. Balanced
    accuracy's floor is a little above 1/2 + margin, whatever the skew."""
    counts = {"ok": 950, "defect": 50}
    on_accuracy = plan_gate(GateConfig(metric="accuracy"), counts, ["ok", "defect"], None)
    assert on_accuracy.floor.value == 1.0 and on_accuracy.metric == "accuracy"
    plan = plan_gate(GateConfig(), counts, ["ok", "defect"], None)
    assert plan.metric == "balanced_accuracy" and plan.eval_classes == ("defect", "ok")
    assert plan.floor.value == pytest.approx(0.5605263) and plan.floor.reachable  # README.md quotes it
    assert plan.floor.source == "significance" and plan.floor.eval_classes == 2


def test_balanced_floor_sources():
    from components.gate_decision import balanced_floor

    big = balanced_floor(0.2, {"a": 3000, "b": 3000, "c": 600}, 0.05, 0.05)
    assert (big.source, big.value) == ("chance", pytest.approx(1 / 3 + 0.05))
    assert big.describe() == "chance 1/3 = 0.333 (an answer that ignores the image) + margin 0.050"
    by_min = balanced_floor(0.7, {"a": 3000, "b": 600}, 0.05, 0.05)
    assert (by_min.source, by_min.value) == ("min_accuracy", 0.7)
    assert by_min.describe().startswith("min_accuracy 0.700; chance 1/2 = 0.500")
    tiny = balanced_floor(0.5, {"a": 2, "b": 2}, 0.05, 0.05)  # 4 of 4 is what guessing gets 1 time in 16
    assert not tiny.reachable and "too small to tell a model from chance; add eval images" in tiny.describe()
    assert balanced_floor(0.5, {"a": 2, "b": 2}, 0.05, 0.0).value == 0.55  # significance off


def test_balanced_reasons_and_record():
    from components.gate_decision import EvalResults, Failure, gate_record, reasons

    plan = plan_gate(
        GateConfig(metric="balanced_accuracy", significance=0.0, min_accuracy=0.6),
        {"7": 10, "5": 6, "6": 4},
        ["7", "5", "6"],
        None,
    )
    results = EvalResults(
        0.75,
        20,
        {"7": 0.9, "5": 0.5, "6": 0.25},
        None,
        failures=[Failure(None, False, 0.55)],
        balanced_accuracy=0.55,
    )
    assert reasons(plan, results) == [
        "balanced accuracy 0.550 is below the floor 0.600 "
        "(min_accuracy 0.600; chance 1/3 = 0.333 (an answer that ignores the image) + margin 0.050 is not higher)"
    ]
    record = gate_record(plan, results, blessed=False)
    assert set(record) == CONTRACT_KEYS
    assert (record["metric"], record["value"], record["accuracy"]) == ("balanced_accuracy", 0.55, 0.75)
    assert record["eval_classes"] == 3 and record["significant_right"] is None


def test_balanced_accuracy_is_the_mean_recall_over_the_eval_classes():
    from components.gate_decision import balanced_accuracy

    assert balanced_accuracy({"a": 1.0, "b": 0.5, "x": 0.0}, ["a", "b", "x"]) == pytest.approx(0.5)
    assert balanced_accuracy({"a": 1.0}, ["a", "b"]) is None  # a class without a recall: unknown
    assert balanced_accuracy({}, []) is None


# ------------------------------------------------- judged on part of the eval split
class _Answers:
    """A model's answers on some eval records, as components/unseen_comparison.Answers."""

    def __init__(self, labels, right, given=None):
        self.labels, self.right = list(labels), list(right)
        # The class each record was given: by default its own when right, else one no record has.
        self.given = (
            list(given)
            if given is not None
            else [c if r else "?" for c, r in zip(labels, right, strict=True)]
        )

    def answered(self):
        out = {}
        for g, r in zip(self.given, self.right, strict=True):
            n, right = out.get(g, (0, 0))
            out[g] = (n + 1, right + int(r))
        return out

    def __len__(self):
        return len(self.labels)

    def counts(self):
        return {c: self.labels.count(c) for c in sorted(set(self.labels))}

    def accuracy(self):
        return sum(self.right) / len(self.right)

    def per_class(self):
        out = {}
        for c in sorted(set(self.labels)):
            hits = [r for label, r in zip(self.labels, self.right, strict=True) if label == c]
            out[c] = sum(hits) / len(hits)
        return out

    def value(self, balanced):
        recall = self.per_class()
        return sum(recall.values()) / len(recall) if balanced else self.accuracy()


def test_judged_results_apply_every_bound_to_the_judged_records():
    """TFMA saw 100 records and 0.95; on the 60 judged ones the candidate is right on all 40 'a',
    all 10 'c' and 1 of 10 'b': the floor passes (0.85), 'b''s recall 0.1 fails min_class_recall
    0.2, and the comparison on the ones the baseline did not see fails too."""
    from components.gate_decision import EvalResults, JudgedOn, judged_results

    judged = JudgedOn(records=100, repeats=30, in_train=10)
    counts = {"a": 40, "b": 10, "c": 10}
    labels = ["a"] * 40 + ["b"] * 10 + ["c"] * 10
    config = GateConfig(metric="accuracy", min_class_recall=0.2)
    plan = plan_gate(config, counts, ["a", "b", "c"], ["a", "b", "c"], judged_on=judged)
    assert plan.judged_on == judged and plan.floor.eval_examples == 60 and plan.floor.value < 0.85
    candidate = _Answers(labels, [True] * 40 + [True] + [False] * 9 + [True] * 10)
    pair = (_Answers(["a", "b"], [True, False]), _Answers(["a", "b"], [True, True]))
    tfma = EvalResults(0.95, 100, {"a": 0.95, "b": 0.95, "c": 0.95}, None)
    results, failed = judged_results(plan, tfma, candidate, pair)
    assert failed and (results.accuracy, results.examples) == (51 / 60, 60)
    assert results.per_class == {"a": 1.0, "b": 0.1, "c": 1.0}
    assert (results.whole_split_accuracy, results.whole_split_examples) == (0.95, 100)
    assert (results.compared_accuracy, results.baseline_accuracy) == (0.5, 1.0)
    assert [(f.class_name, f.is_change) for f in results.failures] == [("b", False), (None, True)]
    record = gate_record(plan, results, blessed=False)
    assert record["judged_on"] == {
        "records": 100,
        "repeats": 30,
        "in_train": 10,
        "examples": 60,
        "conflicting_labels": 0,
        "near_copies_in_train": 0,
    }
    assert record["whole_split"] == {"accuracy": 0.95, "examples": 100}
    assert "class 'b' recall 0.100 is below min_class_recall 0.200" in record["reasons"]

    # Balanced accuracy: the mean of the judged recalls (1/3 when only 'a' is right) fails its floor.
    balanced = plan_gate(
        GateConfig(metric="balanced_accuracy", min_class_recall=0),
        counts,
        ["a", "b", "c"],
        None,
        judged_on=judged,
    )
    only_a = _Answers(labels, [True] * 40 + [False] * 20)
    results, failed = judged_results(balanced, tfma, only_a)
    assert failed and results.balanced_accuracy == pytest.approx(1 / 3)
    assert results.failures[0].class_name is None and results.failures[0].value == pytest.approx(1 / 3)
    assert reasons(balanced, results)[0].endswith(
        "; judged on the 60 distinct eval images the candidate did not train on (of 100 records: 30 repeat "
        "an image earlier in the split; 10 are images the candidate trained on)"
    )
    # All right on the judged records: nothing fails.
    results, failed = judged_results(plan, tfma, _Answers(labels, [True] * 60))
    assert not failed and list(results.failures) == []


def test_a_blessed_model_that_cannot_be_compared_stops_the_blessing_unless_told():
    """There is a blessed model, and the plan could not compare with it (too few images neither
    trained on; classes in common too few): judged on part of the split or on the whole of it,
    the candidate is not blessed on the floors alone, unless bless_without_comparison. With no
    blessed model yet there is nothing to compare, and nothing stops it."""
    from components.gate_decision import (
        NO_BASELINE,
        EvalResults,
        JudgedOn,
        judged_results,
        on_shared_classes,
        uncompared_failure,
        with_seen_examples,
    )

    judged = JudgedOn(records=40, repeats=0, in_train=10)
    counts = {"a": 15, "b": 15}
    labels = ["a"] * 15 + ["b"] * 15
    tfma = EvalResults(0.95, 40, {"a": 0.95, "b": 0.95}, None)
    right = _Answers(labels, [True] * 30)
    for bless_anyway in (False, True):
        config = GateConfig(metric="accuracy", bless_without_comparison=bless_anyway)
        plan = plan_gate(config, counts, ["a", "b"], ["a", "b"], judged_on=judged)
        plan = dataclasses.replace(plan, baseline=with_seen_examples(plan.baseline, 40, 25, 10, 35))
        assert (
            not plan.baseline.compared and "are fewer than 20 to compare on" in plan.baseline.skipped_reason
        )
        results, failed = judged_results(plan, tfma, right)
        assert failed is not bless_anyway
        why = reasons(plan, results)
        if bless_anyway:
            assert why == [] and uncompared_failure(plan) is None
        else:
            assert [f.uncompared for f in results.failures] == [True]
            assert why == [
                f"the latest blessed model could not be compared with: {plan.baseline.skipped_reason}. The "
                "served model stays; give the eval split more images neither model trained on (ingest the "
                "new images together with the earlier ones, whose splits the same --seed keeps, or with a "
                "larger --eval-fraction), or pass --bless-without-comparison (gate.bless_without_comparison) "
                "to bless on the floors alone"
            ]
        # A class added with a new split (the served model trained on most eval images): still
        # refused; the served model's answers on the classes both have are comparable.
        added = plan_gate(config, {"a": 10, "b": 10, "c": 10}, ["a", "b", "c"], ["a", "b"])
        added = dataclasses.replace(added, baseline=on_shared_classes(added.baseline, 5))
        assert not added.baseline.compared and "fewer than 20 to compare on" in added.baseline.skipped_reason
        assert (uncompared_failure(added) is None) is bless_anyway
    # Classes in common too few (a label change the data gate let through): nothing to compare on.
    other = plan_gate(GateConfig(), counts, ["a", "b"], ["a", "c"])
    assert other.baseline.skipped_reason.endswith("1 class in common, too few to compare on")
    assert uncompared_failure(other) is None
    assert other.comparison_waived == (
        "the label set changed (new class 'b'; vanished class 'c'), leaving fewer than two classes in common"
    )
    # A label change accepted in this run (a class renamed or two swapped): the served model answers
    # for other labels, so the floors decide, and the record says why.
    renamed = plan_gate(GateConfig(), counts, ["a", "b"], ["a", "b"], judged_on=judged, relabel_accepted=True)
    renamed = dataclasses.replace(renamed, baseline=with_seen_examples(renamed.baseline, 40, 25, 10, 35))
    assert uncompared_failure(renamed) is None
    record = gate_record(renamed, EvalResults(0.95, 30, {"a": 0.95, "b": 0.95}, None), blessed=True)
    assert record["baseline"]["comparison_waived"] == (
        "images were relabelled since the latest blessed model trained on them (a class renamed or two "
        "swapped), let through by --accept-label-change or --allow-anomalies: it answers for other labels"
    )
    told = plan_gate(GateConfig(bless_without_comparison=True), counts, ["a", "b"], ["a", "c"])
    assert gate_record(told, EvalResults(0.95, 30, {}, None), blessed=True)["baseline"][
        "comparison_waived"
    ] == ("gate.bless_without_comparison")
    first = plan_gate(GateConfig(), counts, ["a", "b"], None)
    assert first.baseline.skipped_reason == NO_BASELINE and uncompared_failure(first) is None
    assert (
        gate_record(first, EvalResults(0.95, 30, {}, None), blessed=True)["baseline"]["comparison_waived"]
        is None
    )
    assert uncompared_failure(plan_gate(GateConfig(), counts, ["a", "b"], ["a", "b"])) is None


def test_a_judged_split_without_a_class_names_what_was_left_out():
    from components.gate_decision import GateNotComputable, JudgedOn

    judged = JudgedOn(records=40, repeats=0, in_train=20, train_known=True)
    with pytest.raises(
        GateNotComputable, match=r"class 'b' of the model has no example in the eval split's 20 distinct"
    ):
        plan_gate(GateConfig(), {"a": 20}, ["a", "b"], None, judged_on=judged)
    assert JudgedOn(10, 4, 0, train_known=False).describe() == (
        "6 distinct eval images (of 10 records: 4 repeat an image earlier in the split; the candidate keeps "
        "no record of its train images)"
    )
    assert JudgedOn(10, 4, 1, conflicting=2).describe() == (
        "5 distinct eval images the candidate did not train on (of 10 records: 4 repeat an image earlier in "
        "the split; 1 is an image the candidate trained on; 2 images have copies under another label (the "
        "first record's label in the split as ExampleGen wrote it is the one judged))"
    )
    # Nothing left at all: said so, not "no labelled examples".
    with pytest.raises(
        GateNotComputable,
        match=r"^no eval image is left to judge the candidate on: of the eval "
        r"split's 30 records, 10 repeat an image earlier in the split; 20 are images the candidate "
        r"trained on; the eval split must hold images the model did not train on",
    ):
        plan_gate(GateConfig(), {}, ["a", "b"], None, judged_on=JudgedOn(30, 10, 20))
    # The metric's reason names what its counts are of.
    plan = plan_gate(GateConfig(), {"a": 30, "b": 10}, ["a", "b"], None, judged_on=JudgedOn(60, 20, 0))
    assert plan.metric_reason == "auto: the judged eval images' largest/smallest class = 3.00 > 1.5"


def test_judged_results_apply_min_class_precision_to_the_judged_answers():
    """Judged on part of the split, precision comes from the candidate's own top-1 answers there."""
    labels = ["a"] * 10 + ["b"] * 10
    # Every 'a' right; 'b' right 6 times, called 'a' 4 times: 'a' answered 14 times, 10 right.
    given = ["a"] * 10 + ["b"] * 6 + ["a"] * 4
    candidate = _Answers(labels, [g == t for g, t in zip(given, labels, strict=True)], given)
    judged = JudgedOn(records=30, repeats=10, in_train=0)
    config = GateConfig(significance=0.0, metric="accuracy", min_accuracy=0.5, min_class_precision=0.75)
    plan = plan_gate(config, {"a": 10, "b": 10}, ["a", "b"], None, judged_on=judged)
    tfma = EvalResults(0.9, 30, {"a": 1.0, "b": 0.8}, None)
    results, failed = judged_results(plan, tfma, candidate)
    assert failed and results.per_class_precision == {"a": 10 / 14, "b": 1.0}
    assert results.per_class_answered == {"a": 14, "b": 6}
    [reason] = reasons(plan, results)
    assert reason == (
        "class 'a' precision 0.714 is below min_class_precision 0.750: 10 of the 14 eval images it called "
        f"'a' are 'a'; judged on the {judged.describe()}"
    )
    record = gate_record(plan, results, blessed=False)
    assert record["min_class_precision"] == 0.75 and record["per_class_answered"] == {"a": 14, "b": 6}
    # Off: the same answers pass, their precision still recorded.
    plan = plan_gate(
        GateConfig(significance=0.0, metric="accuracy", min_accuracy=0.5),
        {"a": 10, "b": 10},
        ["a", "b"],
        None,
        judged_on=judged,
    )
    results, failed = judged_results(plan, tfma, candidate)
    assert not failed and results.per_class_precision == {"a": 10 / 14, "b": 1.0}


def test_a_bound_a_hair_above_the_precision_reads_apart():
    plan = _plan(min_class_precision=0.5)
    results = EvalResults(
        0.9, 20, {}, None, per_class_precision={"7": 0.4999}, per_class_answered={"7": 10000}
    )
    [failure] = precision_failures(plan, results)
    assert failure.precision and failure.class_name == "7"
    assert reasons(plan, dataclasses.replace(results, failures=[failure]))[0].startswith(
        "class '7' precision 0.4999 is below min_class_precision 0.5000: 4999 of the 10000"
    )


def test_classes_told_apart_no_better_than_chance_are_named():
    """One concept under two names (a folder copied, or split in two): about half right between
    the two, which every per-class recall floor lets through (an audit: 'd2' and 'two' at 0.125 and
    0.25, blessed and pushed without a word outside the report)."""
    from components.gate_decision import classes_at_chance, pair_hint

    names = ["d0", "d1", "d2", "two"]
    counts = {("d0", "d0"): 10, ("d1", "d1"): 9, ("d1", "d0"): 1, ("d2", "d2"): 1, ("d2", "two"): 7}
    counts |= {("two", "two"): 2, ("two", "d2"): 6}
    [pair] = classes_at_chance(counts, names)
    assert pair == {
        "classes": ["d2", "two"],
        "right": 3,
        "between": 16,
        "p_value": pytest.approx(0.9979, abs=1e-4),
        "images": {"d2": 8, "two": 8},
        "below_chance": False,  # 3 of 16: a coin's lower tail 0.011, not under 0.01
    }
    assert pair_hint(pair).startswith("one concept under two names, or ")
    assert "holding the other's kind among its own images? Merge the folders if they are one" in pair_hint(
        pair
    )
    assert pair_hint(pair, [pair]) == pair_hint(pair)
    # Labels at random: every class at chance with every other. Merging folders is not the cure.
    noise = {(a, b): 5 for a in "wxyz" for b in "wxyz"}
    at_chance = classes_at_chance(noise, list("wxyz"))
    assert len(at_chance) == 6
    assert pair_hint(at_chance[0], at_chance) == (
        f"'{max(at_chance[0]['classes'])}' is told apart at chance from 3 classes: labels given at random, or "
        "images the backbone's features cannot tell apart? Check a sample of the labels"
    )
    # A class with few images beside a large one (an audit's 500 against 3, the head trained to
    # answer both): at chance too, but two folders of one concept are not what to look for.
    [few] = classes_at_chance(
        {("big", "big"): 14, ("big", "small"): 12, ("small", "small"): 1, ("small", "big"): 2},
        ["big", "small"],
    )
    assert few["images"] == {"big": 26, "small": 3}
    assert pair_hint(few) == (
        "'small' has 3 of these eval images against 26 of 'big': too few to learn it apart? Add images of "
        "'small', or check their labels"
    )
    # Wrong far more often than a coin, each answered with the other (an eval split turned upside
    # down: six and nine; an audit's 0 of 14): not "at chance", and not one concept either.
    [turned] = classes_at_chance({("six", "nine"): 7, ("nine", "six"): 7}, ["nine", "six"])
    assert turned["below_chance"] is True and turned["right"] == 0
    assert pair_hint(turned).startswith(
        "wrong far more often than a coin would be (0 of 14 right): the model tells the two apart and "
        "answers each with the other. Were the eval labels of 'nine' and 'six' swapped"
    )
    # One way only (every 'b' answered 'a', every 'a' right): a class the model does not know,
    # not an exchange.
    [one_way] = classes_at_chance({("a", "a"): 2, ("b", "a"): 12}, ["a", "b"])
    assert one_way["below_chance"] is False
    # Each answered with the other within the pair, but 'b' mostly with a third class: 24 of its
    # 25 answered 'c' and one 'd' (an audit's clips). The pair is at chance; no swap of labels.
    [pair] = [
        p
        for p in classes_at_chance(
            {("d", "b"): 25, ("b", "c"): 24, ("b", "d"): 1, ("c", "c"): 25}, ["b", "c", "d"]
        )
        if p["classes"] == ["b", "d"]
    ]
    assert pair["below_chance"] is False and pair["right"] == 0
    assert not pair_hint(pair).startswith("wrong far more often")
    # Told apart: 14 of 16 right between the two (p 0.002); and too few answers to say (under 10).
    assert classes_at_chance({("a", "a"): 7, ("b", "b"): 7, ("a", "b"): 1, ("b", "a"): 1}, ["a", "b"]) == []
    assert classes_at_chance({("a", "a"): 2, ("b", "b"): 2, ("a", "b"): 3, ("b", "a"): 2}, ["a", "b"]) == []


# ------------------------------------------------------------ the comparison's size, labels moved


def test_no_comparison_on_fewer_than_twenty_images_the_whole_split_included():
    """A model trained on a tenth of the data scored 4 of 5 against the served model's 3 of 5
    and replaced it (0.50 against 0.87 on 400 images neither trained on): too few to compare."""
    plan = baseline_plan(["a", "b"], ["a", "b"])
    small = with_enough_compared(plan, 5)
    assert not small.compared
    assert small.skipped_reason == (
        "the eval split's 5 examples are fewer than 20 to tell two models apart (one answer moves accuracy by 0.20)"
    )
    assert with_enough_compared(plan, MIN_UNSEEN_TO_COMPARE) == plan
    # On the images neither trained on: their count, not the split's.
    unseen = dataclasses.replace(plan, compared_examples=12)
    assert "the 12 eval examples it would be made on" in with_enough_compared(unseen, 500).skipped_reason
    # An identical model is compared by its files; none to compare with stays as it was.
    assert with_enough_compared(baseline_plan(["a"], ["a"], identical=True), 3).compared
    assert with_enough_compared(baseline_plan(["a"], None), 3).skipped_reason == NO_BASELINE
    # Skipped, the blessing needs the waiver like any comparison that cannot be made.
    gate_plan = dataclasses.replace(
        plan_gate(GateConfig(), {"a": 3, "b": 2}, ["a", "b"], ["a", "b"]), baseline=small
    )
    assert uncompared_failure(gate_plan) is not None


def _counts(rows: dict[str, dict[str, int]]) -> dict[tuple[str, str], int]:
    return {(true, given): n for true, answers in rows.items() for given, n in answers.items()}


def test_labels_exchanged_since_the_served_model_trained_are_found_on_new_images():
    """The served model's answers on new eval images under swapped folder names: 'six' images
    answered 'nine' and 'nine' ones 'six' (the audit's case), a third class as before."""
    counts = _counts(
        {"six": {"nine": 16}, "nine": {"six": 14, "nine": 1, "eight": 1}, "eight": {"eight": 15, "nine": 1}}
    )
    moves = labels_moved(counts)
    assert [(m.label, m.answered, m.images, m.moved, m.kept) for m in moves] == [
        ("nine", "six", 16, 14, 1),
        ("six", "nine", 16, 16, 0),
    ]
    assert exchanged(moves) == moves
    reason = moved_reason(moves)
    assert "'six' for 14 of the 16 labelled 'nine'; 'nine' for 16 of the 16 labelled 'six'" in reason
    assert "--accept-label-change" in reason


@pytest.mark.parametrize(
    "rows, moved, swapped",
    [
        # A model confused between two classes (at chance there) moves nothing.
        ({"a": {"a": 8, "b": 8}, "b": {"b": 7, "a": 9}}, [], []),
        # Too few images of a class to say.
        ({"a": {"b": 2}, "b": {"a": 2}}, [], []),
        # A cycle a -> b -> c -> a is an exchange too.
        ({"a": {"b": 10}, "b": {"c": 10}, "c": {"a": 11, "c": 1}}, ["a", "b", "c"], ["a", "b", "c"]),
        # One class answered as another that itself stays: warned about, not an exchange.
        ({"a": {"b": 12, "a": 1}, "b": {"b": 20}}, ["a"], []),
        # A mostly-right model with some mistakes.
        ({"a": {"a": 15, "b": 5}, "b": {"b": 14, "a": 6}}, [], []),
        # The smallest split compared (20 images): 6 of 6 each way is 12 of 12 together (0.0002).
        ({"a": {"b": 6}, "b": {"a": 6}, "c": {"c": 6}, "d": {"d": 6}}, ["a", "b"], ["a", "b"]),
        # 9 of 10 each way: 18 of 20 together.
        ({"a": {"b": 9, "a": 1}, "b": {"a": 9, "b": 1}}, ["a", "b"], ["a", "b"]),
        # 4 of 5 each way, 8 of 10 together (0.055): not unlike a coin's.
        ({"a": {"b": 4, "a": 1}, "b": {"a": 4, "b": 1}}, ["a", "b"], []),
        # Four eval images a class (20 images, five classes): 4 of 4 each way, 8 of 8 (0.004).
        ({"a": {"b": 4}, "b": {"a": 4}, "c": {"c": 4}, "d": {"d": 4}, "e": {"e": 4}}, ["a", "b"], ["a", "b"]),
        # A chain, not a cycle: six answered seven, seven answered nine, nine kept (another camera).
        (
            {"six": {"seven": 16}, "seven": {"nine": 13, "seven": 3}, "nine": {"nine": 16}},
            ["seven", "six"],
            [],
        ),
    ],
    ids=[
        "confused",
        "too-few",
        "cycle",
        "one-way",
        "mistakes",
        "six-each",
        "nine-of-ten",
        "four-of-five",
        "four-each",
        "chain",
    ],
)
def test_what_counts_as_labels_moved(rows, moved, swapped):
    moves = labels_moved(_counts(rows))
    assert [m.label for m in moves] == moved
    assert [m.label for m in exchanged(moves)] == swapped


def test_a_class_moved_alone_is_warned_about_only_when_unlike_a_coin():
    from components.gate_decision import moved_alone

    assert [
        m.label for m in moved_alone(labels_moved(_counts({"a": {"b": 12, "a": 1}, "b": {"b": 20}})))
    ] == ["a"]
    assert moved_alone(labels_moved(_counts({"a": {"b": 5}, "b": {"b": 20}}))) == []  # 5 of 5: 0.03


def test_a_class_moved_alone_beside_a_shift_of_the_eval_images_says_both(caplog):
    """Eval digits drawn inverted: the served model answered '9' for 35 of 36 '7's and the run
    asked only whether the images were under the wrong label (an audit). With the data gate's
    shift warning, the warning says the pictures' change can do this too."""
    from components.evaluator import with_labels_moved
    from components.gate_decision import EvalResults

    counts = _counts({"7": {"9": 35, "7": 1}, "9": {"9": 30}})
    for shifted in (False, True):
        caplog.clear()
        with caplog.at_level("WARNING"):
            results = EvalResults(accuracy=None, examples=None, per_class={}, baseline_accuracy=None)
            _, refused = with_labels_moved(results, counts, accepted=False, eval_shifted=shifted)
        assert refused is False  # moved alone: warned, not refused
        [said] = [r.getMessage() for r in caplog.records if "under the wrong label" in r.getMessage()]
        assert ("the eval images also differ from the train images" in said) is shifted, said
        assert "(it answers most of '9''s own as '9': 30 of 30)" in said
    # The class it is answered with does not keep its own (the served model misreads the split):
    # said as counted, not claimed.
    from components.gate_decision import moved_alone, moved_warning

    counts = _counts({"7": {"9": 42, "7": 8}, "9": {"9": 8, "4": 49}})
    [move] = [m for m in moved_alone(labels_moved(counts)) if m.label == "7"]
    said = moved_warning(move, True, counts)
    assert "(and only 8 of the 57 labelled '9' as '9')" in said and "most of" not in said


def test_an_exchange_is_a_reason_and_recorded():
    plan = plan_gate(GateConfig(), {"six": 16, "nine": 16}, ["six", "nine"], ["six", "nine"])
    moves = labels_moved(_counts({"six": {"nine": 16}, "nine": {"six": 16}}))
    results = EvalResults(
        0.95,
        32,
        {"six": 0.95, "nine": 0.95},
        0.0,
        failures=[Failure(None, False, None, moved=True)],
        labels_moved=moves,
    )
    [why] = reasons(plan, results)
    assert why.startswith("labels moved since the served model trained: on this run's eval images")
    record = gate_record(plan, results, False, [], None, None)
    assert record["labels_moved"][0] == {
        "label": "nine",
        "answered": "six",
        "images": 16,
        "moved": 16,
        "kept": 0,
        "chance": 0.5**16,
    }


def test_a_candidate_with_the_baselines_classes_in_another_order_is_warned_about():
    """TensorFlow Transform orders the label vocabulary by each class's count: a retrain that only
    added train images pushed ['7', '9', '5', '6', '8'] over ['5', '6', '9', '7', '8'] without a
    word, though clients reading scores by position then read other classes (an audit)."""
    from components.gate_decision import class_order_change

    said = class_order_change(["7", "9", "5", "6", "8"], ["5", "6", "9", "7", "8"])
    assert said.startswith("the model's classes are in another order than the latest blessed model's")
    assert "'5', '6', '9', '7' and '8' then" in said or "then" in said
    assert "reads the scores by position" in said
    assert class_order_change(["5", "6"], ["5", "6"]) is None  # the same order
    assert class_order_change(["5", "6", "7"], ["5", "6"]) is None  # another label set: said elsewhere
    assert class_order_change(["6", "5"], None) is None  # no baseline
    plan = plan_gate(GateConfig(), {"a": 20, "b": 20}, ["a", "b"], ["b", "a"])
    results = EvalResults(0.9, 40, {"a": 0.9, "b": 0.9}, None)
    record = gate_record(plan, results, True, class_order_changed=class_order_change(["a", "b"], ["b", "a"]))
    assert record["class_order_changed"].startswith("the model's classes are in another order")
    assert gate_record(plan, results, True)["class_order_changed"] is None
