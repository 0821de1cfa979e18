"""Compare two FeatureTables with TensorFlow Data Validation's drift comparators.

Statistics of each side come from `tfdv.generate_statistics_from_dataframe`
(in process, no Beam). The schema is inferred from the training side, then
every feature gets a drift comparator with its threshold: L-infinity distance
for the categorical ones (channels, format, class), approximate
Jensen-Shannon divergence for the numeric ones (width, height, brightness),
computed exactly, value by value, for a numeric feature whose training side
holds few distinct values (`DISCRETE_MAX_VALUES`: image sizes, often one).
`tfdv.validate_statistics(served, schema, previous_statistics=trained)`
measures every feature; a distance above its threshold is drift. Other schema
anomalies (say, a format never seen in training) are reported beside it.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np
import pandas as pd
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from imgpipe.drift import DEFAULT_CATEGORICAL_THRESHOLD, DEFAULT_NUMERIC_THRESHOLD, DEFAULT_SIGNIFICANCE
from imgpipe.drift.features import CATEGORICAL, CLASS, FEATURES, NUMERIC, FeatureTable

L_INFINITY = "L_infinity"
JENSEN_SHANNON = "Jensen_Shannon"

_MEASURES = {
    anomalies_pb2.DriftSkewInfo.Measurement.L_INFTY: L_INFINITY,
    anomalies_pb2.DriftSkewInfo.Measurement.JENSEN_SHANNON_DIVERGENCE: JENSEN_SHANNON,
}
# A value outside the domain TFDV inferred from the training sample (strings; "0" alone is
# inferred as a boolean): for the class, the whole split's classes decide instead.
_UNEXPECTED_VALUES = {
    anomalies_pb2.AnomalyInfo.ENUM_TYPE_UNEXPECTED_STRING_VALUES,
    anomalies_pb2.AnomalyInfo.BOOL_TYPE_UNEXPECTED_STRING,
    anomalies_pb2.AnomalyInfo.INT_TYPE_NOT_INT_STRING,
}
_DRIFT_ANOMALIES = {
    anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH,
    anomalies_pb2.AnomalyInfo.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH,
}


@dataclasses.dataclass(frozen=True)
class FeatureDrift:
    """One feature's distance between the two sides, and how likely sampling alone gives it.

    Drift is a distance above its threshold that sampling does not explain: `p_value` below
    `significance` (None: not tested; significance 0: the threshold alone). Twenty images drawn
    from the very distribution a model trained on put the class distance above 0.15 in about a
    third of draws; the test keeps such draws from reading as drift, and does not hold back a
    shift of a few hundred images.
    """

    feature: str
    measure: str  # L_infinity | Jensen_Shannon
    distance: float
    threshold: float
    p_value: float | None = None
    significance: float = 0.0

    @property
    def drifted(self) -> bool:
        if self.distance <= self.threshold:
            return False
        return self.p_value is None or not self.significance or self.p_value < self.significance

    def to_dict(self) -> dict:
        return {
            "measure": self.measure,
            "distance": round(self.distance, 6),
            "threshold": self.threshold,
            "p_value": None if self.p_value is None else round(self.p_value, 6),
            "drifted": self.drifted,
        }


@dataclasses.dataclass(frozen=True)
class Comparison:
    features: dict[str, FeatureDrift]
    anomalies: dict[str, str]  # feature -> description, for anomalies other than drift

    @property
    def drifted(self) -> list[str]:
        return [name for name, f in self.features.items() if f.drifted]


def statistics(table: FeatureTable) -> statistics_pb2.DatasetFeatureStatisticsList:
    """TFDV statistics of a table's rows (the columns in FEATURES, typed for TFDV)."""
    columns = table.columns()
    for name in CATEGORICAL:  # as strings: TFDV keeps value counts (what L-infinity needs) for those
        columns[name] = [None if v is None else str(v) for v in columns[name]]
    frame = pd.DataFrame(columns, columns=list(FEATURES))
    frame = frame.astype({"width": "int64", "height": "int64", "brightness": "float64"})
    return tfdv.generate_statistics_from_dataframe(frame)


def drift_schema(
    trained: statistics_pb2.DatasetFeatureStatisticsList,
    categorical_threshold: float,
    numeric_threshold: float,
) -> schema_pb2.Schema:
    """The schema inferred from the training statistics, with a drift comparator per feature."""
    schema = tfdv.infer_schema(trained)
    for name in CATEGORICAL:
        feature = tfdv.get_feature(schema, name)
        if feature.WhichOneof("domain_info") == "int_domain":
            feature.ClearField("int_domain")  # "0", "1", "3": category names that look like numbers
        feature.drift_comparator.infinity_norm.threshold = categorical_threshold
    for name in NUMERIC:
        tfdv.get_feature(
            schema, name
        ).drift_comparator.jensen_shannon_divergence.threshold = numeric_threshold
    return schema


def compare(
    trained: FeatureTable,
    served: FeatureTable,
    categorical_threshold: float = DEFAULT_CATEGORICAL_THRESHOLD,
    numeric_threshold: float = DEFAULT_NUMERIC_THRESHOLD,
    significance: float = DEFAULT_SIGNIFICANCE,
    trained_classes: set | None = None,
    seed: int = 0,
) -> Comparison:
    """Every feature's distance between the served and the trained rows, and other anomalies.

    A feature above its threshold is also tested (`p_value`): could two samples of these
    sizes drawn from one distribution be this far apart? `trained_classes`: every class of the
    whole training split (the table may be a sample of it), for "values never seen in training"."""
    trained_stats = statistics(trained)
    served_stats = statistics(served)
    schema = drift_schema(trained_stats, categorical_threshold, numeric_threshold)
    result = tfdv.validate_statistics(served_stats, schema, previous_statistics=trained_stats)
    features = {}
    for info in result.drift_skew_info:
        name = ".".join(info.path.step)
        for m in info.drift_measurements:
            if m.type in _MEASURES:
                features[name] = FeatureDrift(name, _MEASURES[m.type], m.value, m.threshold)
    anomalies = {}
    for name, info in result.anomaly_info.items():
        skipped = _DRIFT_ANOMALIES
        if name == CLASS and trained_classes:  # TFDV knows the sample's classes, not the split's
            skipped = skipped | _UNEXPECTED_VALUES
        others = [r.description for r in info.reason if r.type not in skipped]
        if others:
            anomalies[name] = " ".join(others)
    trained_columns, served_columns = trained.columns(), served.columns()
    for name in CATEGORICAL:
        of_the_split = name == CLASS and bool(trained_classes)
        if name in anomalies and not of_the_split:
            continue  # TFDV named the values its domain lacks already
        unseen = _unseen(
            list(trained_classes) if of_the_split else trained_columns[name], served_columns[name]
        )
        if unseen:
            anomalies[name] = f"{anomalies[name]} {unseen}" if name in anomalies else unseen
    continuous = set()  # numeric features TFDV measured on its histogram (not value by value)
    for name in NUMERIC:
        exact = _discrete_divergence(trained_columns[name], served_columns[name])
        if exact is not None:
            features[name] = FeatureDrift(name, JENSEN_SHANNON, exact, numeric_threshold)
        else:
            continuous.add(name)
    for name, f in list(features.items()):
        if significance and f.distance > f.threshold:
            p = _p_value(
                trained_columns[name], served_columns[name], f.measure, f.distance, name in continuous, seed
            )
            features[name] = dataclasses.replace(f, p_value=p, significance=significance)
    ordered = {name: features[name] for name in FEATURES if name in features}
    return Comparison(ordered, anomalies)


PERMUTATIONS = 999  # of the permutation test; the smallest p-value it gives is 1 / 1000


def _p_value(
    trained: list, served: list, measure: str, observed: float, continuous: bool, seed: int = 0
) -> float | None:
    """How often two samples of these sizes, drawn from the pooled values, are at least
    `observed` apart: a permutation test of the categorical distance (L-infinity) and of the
    exact divergence of a discrete numeric feature; the two-sample Kolmogorov-Smirnov test for
    a continuous one (TFDV's divergence there is an approximation over its own histogram)."""
    a = [v for v in trained if v is not None]
    b = [v for v in served if v is not None]
    if not a or not b:
        return None
    if continuous:
        from scipy import stats  # TFDV's and scikit-learn's dependency

        return float(stats.ks_2samp(np.asarray(a, float), np.asarray(b, float)).pvalue)
    values = {v: i for i, v in enumerate(sorted({*a, *b}, key=str))}
    codes = np.array([values[v] for v in a + b], dtype=np.int64)
    k, n = len(values), len(a)
    rng = np.random.default_rng(seed)
    at_least = 0
    for _ in range(PERMUTATIONS):
        shuffled = rng.permutation(codes)
        p = np.bincount(shuffled[:n], minlength=k) / n
        q = np.bincount(shuffled[n:], minlength=k) / len(b)
        distance = float(np.abs(p - q).max()) if measure == L_INFINITY else _divergence(p, q)
        at_least += distance >= observed - 1e-12
    return (at_least + 1) / (PERMUTATIONS + 1)


def _divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (log base 2) of two frequency vectors over the same values."""
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(p / m), 0.0) + np.where(q > 0, q * np.log2(q / m), 0.0)
    return max(0.0, min(1.0, float(terms.sum()) / 2))


def _unseen(trained: list, served: list, shown: int = 5) -> str | None:
    """Values of a categorical feature the served side holds and the training side never had,
    described with their counts (None when there are none).

    TFDV says so only for a feature whose schema keeps its domain: "0", "1", "3" are class
    names that look like numbers, whose inferred integer domain drift_schema removes, so a
    class the model was never trained on (logs of another model) went unmentioned.
    """
    seen = {v for v in trained if v is not None}
    new = collections.Counter(v for v in served if v is not None and v not in seen)
    if not new:
        return None
    listed = ", ".join(f"{str(v)!r} ({n} of {len(served)})" for v, n in new.most_common(shown))
    more = f" and {len(new) - shown} more" if len(new) > shown else ""
    return f"values never seen in training: {listed}{more}"


# A numeric feature whose training side holds at most this many distinct values (image sizes
# of a resized dataset: often one) is compared exactly, value by value. TFDV's approximate
# Jensen-Shannon divergence works on histograms, and the histogram of one value has no width:
# one served image of another size out of 181 measured 1.0, the maximum.
DISCRETE_MAX_VALUES = 20


def _discrete_divergence(trained: list, served: list) -> float | None:
    """Jensen-Shannon divergence (log base 2, 0..1) of the two value distributions, or None
    when the training side has more than DISCRETE_MAX_VALUES distinct values (or either side none)."""
    a = collections.Counter(v for v in trained if v is not None)
    b = collections.Counter(v for v in served if v is not None)
    if not a or not b or len(a) > DISCRETE_MAX_VALUES:
        return None
    na, nb = sum(a.values()), sum(b.values())
    divergence = 0.0
    for value in a.keys() | b.keys():
        p, q = a[value] / na, b[value] / nb
        m = (p + q) / 2
        divergence += (p * math.log2(p / m) if p else 0.0) + (q * math.log2(q / m) if q else 0.0)
    return max(0.0, min(1.0, divergence / 2))
