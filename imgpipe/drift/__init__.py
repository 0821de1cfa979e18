"""Drift between what a served model sees and what it was trained on.

`imgpipe serve --log-requests DIR` logs sampled requests and responses as TF
Serving PredictionLogs; `imgpipe drift` compares them with the training split
of a pipeline run:

- `features`  the one function that turns an encoded image into the compared
              features (width, height, channels, format, brightness), used for
              both sides, plus the class (predicted on the served side, the
              label on the training side)
- `sources`   the served side (images and predicted classes from the logs) and
              the training side (the run's ExampleGen train split, found from
              the run record and ML Metadata)
- `compare`   statistics and the comparison with TFDV: a schema with a drift
              comparator per feature (L-infinity for categorical features,
              Jensen-Shannon divergence for numeric ones)
- `detect`    the whole check, as `imgpipe drift` runs it
"""

# Defaults of `imgpipe drift` (here, free of TensorFlow, so the CLI's help can show them).
# Thresholds: a distance above one is drift. Both measures are 0 for identical
# distributions and 1 for disjoint ones; 0.15 sits above the sampling noise of
# a few hundred images (see tests/test_drift.py) and well below a real shift.
DEFAULT_CATEGORICAL_THRESHOLD = 0.15  # L-infinity: channels, format, class
DEFAULT_NUMERIC_THRESHOLD = 0.15  # Jensen-Shannon: width, height, brightness
DEFAULT_MAX_IMAGES = 2000  # per side, a seeded uniform sample
DEFAULT_MIN_IMAGES = 20  # per side, below it the check refuses to judge
# A distance above its threshold is drift only when sampling alone would give it less often
# than this (a permutation test, or Kolmogorov-Smirnov for a continuous feature); 0: off.
DEFAULT_SIGNIFICANCE = 0.01
# The compared features (features.FEATURES), for the CLI's --ignore-feature choices.
FEATURE_NAMES = ("width", "height", "channels", "format", "brightness", "class")
