"""The blessing gate's settings: the `gate` part of the run's config (no TensorFlow import).

The Evaluator blesses a model when its accuracy on the eval split reaches the
floor AND it does not regress against the latest blessed model by more than
`max_regression`. Accuracy is TFMA's sparse categorical accuracy on the model's
per-class `scores` output (valid for both head types: the sigmoid unit is
expanded to [1-p, p]). Slices: overall (gated) and per class (reported). The
TFMA EvalConfig that encodes this is built in components/evaluator.py.
"""

from __future__ import annotations

from pydantic import Field

from trainer.config import Settings

ACCURACY_CLASS = "SparseCategoricalAccuracy"  # the gated metric
ACCURACY_KEY = "sparse_categorical_accuracy"  # its name in TFMA's output


class GateConfig(Settings):
    """The Evaluator's gate: what a model must reach to be blessed and pushed."""

    min_accuracy: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="absolute accuracy floor for blessing",
        json_schema_extra={"runtime": True},
    )
    max_regression: float = Field(
        0.0, ge=0.0, le=1.0, description="allowed accuracy drop against the latest blessed model"
    )
