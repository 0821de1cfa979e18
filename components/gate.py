"""The blessing gate's settings: the `gate` part of the run's config (no TensorFlow import).

The Evaluator blesses a model when, on the eval split,

- its gated metric reaches the floor. With `metric` accuracy: max(min_accuracy,
  the majority class's share of the eval split + majority_margin, the accuracy
  a one-sided binomial test at `significance` needs to beat that share on the
  split's size), so a model must beat the best constant predictor, by more
  than luck on a few images, not just the configured number. With
  balanced_accuracy (the mean per-class recall; what `auto` picks on an
  imbalanced eval split, as the Trainer's `class_weights: auto` trains for it):
  max(min_accuracy, 1/k + majority_margin on k eval classes, what answers
  that ignore the image reach with probability `significance`);
- every true class's slice reaches min_class_recall (accuracy within a class's
  slice is that class's recall), so a model that never predicts a class is not
  blessed however good the overall number looks;
- when min_class_precision is set, every class the model answers (top-1) is
  right that often among the eval images it is given to, so a model that
  calls many images of other classes by one class (false alarms) is not
  blessed though every recall is high;
- and its gated metric does not regress against the latest blessed model by more than
  `max_regression`. With no blessed model yet there is nothing to compare; when there is
  one but it cannot be compared (too few eval images neither model trained on), the
  model is not blessed, with the reason, unless `bless_without_comparison`, or the run
  let through images relabelled since that model trained or a label change leaving
  fewer than two classes in common (gate_decision._waiver): the served model must not
  be replaced unjudged.

Accuracy is TFMA's sparse categorical accuracy on the model's per-class
`scores` output (valid for both head types: the sigmoid unit is expanded to
[1-p, p]). The decision logic is in components/gate_decision.py (pure), the
TFMA EvalConfig and executor in components/evaluator.py. `allow_anomalies`
belongs to the data gate before training (components/data_gate.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import Field

from trainer.config import Settings

ACCURACY_CLASS = "SparseCategoricalAccuracy"  # the gated metric
ACCURACY_KEY = "sparse_categorical_accuracy"  # its name in TFMA's output
EXAMPLE_COUNT_KEY = "example_count"  # TFMA's ExampleCount in its output
# Each eval example's (true class, top-1 class) counted by TFMA: per-class precision. The plot,
# not the metric of the same counts: its default threshold is 0 (every top-1 answer counts; the
# metric's is 0.5), and setting the metric's would put a JSON string in the eval_config, whose
# escaped quotes ML Metadata's PostgreSQL backend writes as broken SQL.
CONFUSION_CLASS = "MultiClassConfusionMatrixPlot"
CONFUSION_KEY = "multi_class_confusion_matrix_plot"


# How the data gate's anomaly about relabelled images starts (components/data_contract.py writes
# it; the Evaluator and the run report read it from gate.json's anomalies_allowed).
RELABELLED = "images relabelled since the latest blessed model trained on them"


def relabel_allowed(anomalies_allowed: Iterable[object]) -> bool:
    """Whether the data gate let relabelled images through (an anomaly starting RELABELLED)."""
    return any(isinstance(a, str) and a.startswith(RELABELLED) for a in anomalies_allowed)


METRIC_AUTO = "auto"
METRIC_ACCURACY = "accuracy"
METRIC_BALANCED = "balanced_accuracy"


class GateConfig(Settings):
    """The gates: what the data must pass before training, and a model before it is pushed."""

    metric: Literal["auto", "accuracy", "balanced_accuracy"] = Field(
        METRIC_AUTO,
        description="the number the floor, min_accuracy and max_regression apply to: accuracy; "
        "balanced_accuracy (the mean of the per-class recalls, where any answer that ignores the image "
        "scores 1/k on k classes however skewed the eval split); auto: balanced_accuracy when the eval "
        "split's largest class has more than 1.5x the examples of its smallest, else accuracy",
        json_schema_extra={"flag": "--gate-metric"},
    )
    min_accuracy: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="absolute floor of the gated metric for blessing (the chance floor applies when higher)",
        json_schema_extra={"runtime": True},
    )
    majority_margin: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="the floor is at least chance plus this margin: the eval split's majority-class share "
        "(accuracy) or 1/k on k classes (balanced accuracy)",
    )
    significance: float = Field(
        0.05,
        ge=0.0,
        le=0.5,
        description="the floor is at least what answers that ignore the image reach with this probability on "
        "the eval split's size (a one-sided test), so a few lucky eval images bless nothing (0: off)",
    )
    min_class_recall: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="per-class floor: accuracy within each true class's eval slice (0: off)",
    )
    min_class_precision: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="per-class floor on precision: of the eval images the model gives a class (its top "
        "answer), the share that are that class, so a class answered for many images of others (false "
        "alarms) fails; a class the model never answers is left to min_class_recall (0: off)",
    )
    max_regression: float = Field(
        0.0, ge=0.0, le=1.0, description="allowed drop of the gated metric against the latest blessed model"
    )
    bless_without_comparison: bool = Field(
        False,
        description="bless a model that passes every floor although the latest blessed model could not be "
        "compared with it (too few eval images neither trained on); off, such a model is not blessed and the "
        "served model stays, unless the run let through images relabelled since that model trained (a class "
        "renamed or two swapped) or a label change leaving fewer than two classes in common",
    )
    allow_anomalies: bool = Field(
        False,
        description="continue past data anomalies found before training; the summary lists what was overridden",
    )
    accept_label_change: bool = Field(
        False,
        description="continue past the label changes only: a label set other than the latest blessed model's "
        "(a class added or removed; the gate then compares the two models on the eval examples of the "
        "classes both have), and images it trained on that now carry another label (folders renamed or "
        "swapped on purpose)",
    )
    eval_batch_size: int = Field(
        128,
        ge=1,
        le=1000,
        description="eval examples per model call in the Evaluator (TFMA); lower it for large images on a "
        "small machine",
    )
    eval_graph_optimization: Literal["auto", "on", "off"] = Field(
        "auto",
        description="TensorFlow's graph optimiser (Grappler) for the Evaluator's models: on, off, or auto "
        "(off when the eval split is too small for its one-off cost per model to pay back)",
    )
