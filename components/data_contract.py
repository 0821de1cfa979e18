"""The data contract checked before training, as plain functions on TFDV's protos.

The contract (what `imgpipe ingest` writes and the Trainer needs): every
example has exactly one `image` (bytes) and one `label` (a UTF-8 class name);
train and eval hold the same classes, none empty; and the label set is the
latest blessed model's unless a person says otherwise.

- `apply_contract(schema, train_labels)`: the schema SchemaGen infers, made to
  state the contract. TFDV alone does not: it infers a string domain only for a
  feature with at most 100 distinct values (max_string_domain_size), gives
  numeric-looking class names ("5", "7") an empty int_domain that accepts any
  value, and a schema inferred from eval as well as train would admit an eval
  class that train never saw. So the label's domain is set to exactly the train
  labels, and ExampleValidator reports any other label as an anomaly.
- `split_labels(stats)`: a split's label counts from its statistics (exact:
  TFDV's top-k on Beam counts exactly; complete only while the number of
  distinct labels fits its rank histogram, checked).
- `find_anomalies(...)`: every problem, one sentence each, for the data gate.

No TensorFlow import (tensorflow_metadata protos only), so tests build these
protos by hand.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from components.gate import RELABELLED
from components.gate_decision import label_set_change, quoted
from trainer.class_names import almost_alike, looks, name_problem, normalise
from trainer.features import IMAGE_KEY, LABEL_KEY, code_points

REQUIRED_FEATURES = (IMAGE_KEY, LABEL_KEY)
SPLITS = ("train", "eval")


class DataContractError(ValueError):
    """The data cannot be checked at all (not an anomaly a person could override)."""


_q = quoted


def look_alike_labels(labels: Iterable[str]) -> list[str]:
    """One sentence per group of labels that look the same (`class_names.looks`: one text in
    another Unicode form, or apart only by invisible format characters or kinds of spaces):
    they print alike and are different classes."""
    groups: dict[str, set[str]] = {}
    for label in labels:
        groups.setdefault(looks(label), set()).add(label)
    out = []
    for shown, group in sorted(groups.items()):
        if len(group) < 2:
            continue
        names = " and ".join(f"{label!r} ({code_points(label)})" for label in sorted(group))
        if len({normalise(label) for label in group}) == 1:
            out.append(
                f"labels {names} are one text in different Unicode forms: they print alike but are "
                f"{len(group)} classes (normalise the labels to NFC; `imgpipe ingest` does)"
            )
        else:
            out.append(
                f"labels {names} look the same ({shown!r} once normalised: Unicode NFC, invisible format "
                f"characters left out, each run of spaces one space): they print alike but are {len(group)} "
                "classes; relabel them as one text (`imgpipe ingest` refuses such folder names)"
            )
    return out


def label_problems(split: SplitLabels) -> list[str]:
    """One sentence per label of the split that cannot be a class name (class_names.name_problem:
    a control character, a line break, whitespace or an invisible character at an end): the same
    names `imgpipe ingest` refuses as folder names."""
    out = []
    for label in sorted(split.counts):
        problem = name_problem(label)
        if problem:
            out.append(
                f"{split.split}: label {label!r} ({code_points(label)}, {split.counts[label]} examples) cannot "
                f"be a class name: {problem}; relabel those records (`imgpipe ingest` refuses such folder names)"
            )
    return out


def label_warnings(splits: Mapping[str, SplitLabels | None]) -> list[str]:
    """Labels of the splits that print almost alike (letter case, Unicode compatibility forms, a
    look-alike letter of another script): warnings, as ingest gives for folder names."""
    labels = sorted(set().union(*(s.labels for s in splits.values() if s is not None)))
    return almost_alike(labels, "labels", "relabel them as one")


FEW_IMAGES = 5  # a class with fewer in a split is warned about (few_images_warning)


def few_images_warning(distinct: Mapping[str, Mapping[str, int]]) -> str | None:
    """A warning naming the classes with fewer than FEW_IMAGES distinct images (copies of one
    image count once) in the train or the eval split, from {split: {class: images}}; a class a
    split lacks altogether is an anomaly, not this. None without both splits, or when none.

    A run on them is gated on the same rules, but its numbers for such a class are weak evidence:
    an audit's class of 1 train and 1 eval image was blessed with a recall of 1.0 that was 0.35
    on 40 new ones."""
    train, evals = distinct.get("train"), distinct.get("eval")
    if train is None or evals is None:
        return None
    few = [
        (name, train[name], evals[name])
        for name in sorted(set(train) & set(evals))
        if min(train[name], evals[name]) < FEW_IMAGES
    ]
    if not few:
        return None
    listed = ", ".join(f"{name!r} ({n_train} train, {n_eval} eval)" for name, n_train, n_eval in few)
    return (
        f"{len(few)} class{'es have' if len(few) > 1 else ' has'} fewer than {FEW_IMAGES} images in a "
        f"split (copies of one image, and a set of near-copies, counted once): {listed}. A model learns little of a class from so "
        "few pictures, and its recall on so few eval images says little (one image moves it by 1/n): "
        f"the gate's numbers for {'them' if len(few) > 1 else 'it'} are weak evidence. Add pictures"
    )


def distinct_images(ids: Sequence[int], labels: Sequence[str]) -> dict[str, int]:
    """{class: distinct images} of a split's (fingerprint, label) records."""
    return dict(collections.Counter(label for _, label in set(zip(ids, labels, strict=True))))


def _feature(stats: statistics_pb2.DatasetFeatureStatistics, name: str):
    for f in stats.features:
        if (f.path.step and list(f.path.step) == [name]) or f.name == name:
            return f
    return None


# ----------------------------------------------------------------- the label counts
@dataclasses.dataclass(frozen=True)
class SplitLabels:
    """A split's size and label counts, read from its statistics."""

    split: str
    examples: int
    counts: dict[str, int]
    distinct: int  # distinct label values TFDV saw (may exceed len(counts) when truncated)
    is_string: bool  # the label is a bytes feature (False: absent or numeric)
    invalid_utf8: int
    # The most values one example holds, of `image` and of `label` (absent: no statistics of it).
    max_values: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.counts) >= self.distinct

    @property
    def labels(self) -> set[str]:
        return set(self.counts)


def split_labels(split: str, stats: statistics_pb2.DatasetFeatureStatisticsList) -> SplitLabels:
    """The label counts of one split's statistics (the first dataset: TFX writes one per split)."""
    if not stats.datasets:
        return SplitLabels(split, 0, {}, 0, False, 0)
    ds = stats.datasets[0]
    max_values = {}
    for key in REQUIRED_FEATURES:
        feature = _feature(ds, key)
        kind = feature.WhichOneof("stats") if feature is not None else None
        if kind:
            max_values[key] = int(getattr(feature, kind).common_stats.max_num_values)
    f = _feature(ds, LABEL_KEY)
    if f is None or not f.HasField("string_stats"):
        return SplitLabels(split, int(ds.num_examples), {}, 0, False, 0, max_values)
    counts: dict[str, int] = {}
    for bucket in f.string_stats.rank_histogram.buckets:
        counts[bucket.label] = counts.get(bucket.label, 0) + int(round(bucket.sample_count))
    return SplitLabels(
        split=split,
        examples=int(ds.num_examples),
        counts=dict(sorted(counts.items())),
        distinct=int(f.string_stats.unique),
        is_string=True,
        invalid_utf8=int(f.string_stats.invalid_utf8_count),
        max_values=max_values,
    )


def require_complete(labels: SplitLabels) -> None:
    """DataContractError when the statistics list fewer labels than the split has."""
    if not labels.complete:
        raise DataContractError(
            f"{labels.split}: {LABEL_KEY!r} has {labels.distinct} distinct values but the statistics list "
            f"only {len(labels.counts)} (TFDV's num_rank_histogram_buckets): imgpipe cannot check a label "
            f"set of more than {len(labels.counts)} classes"
        )


# ----------------------------------------------------------------- the schema
def apply_contract(schema: schema_pb2.Schema, train_labels: Sequence[str]) -> schema_pb2.Schema:
    """A copy of `schema` requiring one image and one label per example, the label in `train_labels`.

    Any other feature the records carry (a file name, a source id: records made elsewhere) is
    the user's, not the model's: it keeps its inferred type and nothing else, so it may be
    missing, repeated or hold values train never had, and Transform parses it as optional
    (a VarLenFeature). Inferred as required, one value each, with a domain from train's few
    values, it stopped the data gate on eval's other values, and made every served signature
    that parses tf.Examples require it of each request.
    """
    out = schema_pb2.Schema()
    out.CopyFrom(schema)
    for feature in out.feature:
        if feature.name not in REQUIRED_FEATURES:
            for field in ("presence", "shape", "value_count", "value_counts", "distribution_constraints"):
                feature.ClearField(field)
            feature.ClearField("domain_info")
    by_name = {f.name: f for f in out.feature}
    for name in REQUIRED_FEATURES:
        feature = by_name.get(name)
        if feature is None:
            feature = out.feature.add(name=name)
        feature.type = schema_pb2.BYTES
        feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
        feature.ClearField("value_count")
        feature.ClearField("value_counts")
        feature.shape.Clear()
        feature.shape.dim.add(size=1)
    label = next(f for f in out.feature if f.name == LABEL_KEY)
    old = label.domain if label.WhichOneof("domain_info") == "domain" else None
    keep = [d for d in out.string_domain if d.name not in {old, LABEL_KEY}]
    del out.string_domain[:]
    out.string_domain.extend(keep)
    out.string_domain.add(name=LABEL_KEY, value=sorted(set(train_labels)))
    label.domain = LABEL_KEY  # also clears an inferred int_domain or inline string_domain
    return out


# ----------------------------------------------------------------- the checks
def validator_messages(split: str, anomalies: anomalies_pb2.Anomalies) -> list[str]:
    """ExampleValidator's anomalies for a split, one sentence per reason."""
    out = []
    for key in sorted(anomalies.anomaly_info):
        info = anomalies.anomaly_info[key]
        reasons = list(info.reason) or [info]
        for r in reasons:
            out.append(f"{split}: feature {_q(key)}: {r.short_description}: {r.description.strip()}")
    if anomalies.HasField("dataset_anomaly_info"):
        info = anomalies.dataset_anomaly_info
        for r in list(info.reason) or [info]:
            out.append(f"{split}: dataset: {r.short_description}: {r.description.strip()}")
    return out


LABEL_CHANGE = "label set changed against the latest blessed model"  # starts that anomaly's text
# The anomalies `accept_label_change` lets through: the label set's change and relabelled images.
LABEL_CHANGES = (LABEL_CHANGE, RELABELLED)


def find_anomalies(
    splits: Mapping[str, SplitLabels],
    validator: Mapping[str, anomalies_pb2.Anomalies],
    baseline_classes: Sequence[str] | None = None,
) -> list[str]:
    """Every data anomaly, one sentence each naming the split, feature or class.

    splits: the train and eval SplitLabels (a missing key: no statistics for it).
    validator: ExampleValidator's anomalies per split. baseline_classes: the
    latest blessed model's label vocabulary (None: there is none yet).
    """
    out: list[str] = []
    for split in SPLITS:
        labels = splits.get(split)
        if labels is None:
            out.append(f"{split}: the split is missing (no statistics for it)")
        elif labels.examples == 0:
            out.append(f"{split}: the split is empty (0 examples)")
        elif labels.invalid_utf8:
            out.append(f"{split}: {labels.invalid_utf8} {LABEL_KEY!r} values are not valid UTF-8 class names")
        if labels is not None:
            for key, most in sorted(labels.max_values.items()):
                if most > 1:
                    out.append(
                        f"{split}: some examples hold more than one {key!r} value (up to {most}); each "
                        "example must be one image and one label: write them again (e.g. `imgpipe ingest`)"
                    )
            out.extend(label_problems(labels))
    for split in sorted(validator):
        out.extend(validator_messages(split, validator[split]))

    train, evals = splits.get("train"), splits.get("eval")
    if train and evals and train.examples and evals.examples:
        for c in sorted(evals.labels - train.labels):
            out.append(
                f"eval has class {_q(c)} ({evals.counts[c]} examples) that train does not: "
                "the model cannot learn or predict it"
            )
        for c in sorted(train.labels - evals.labels):
            out.append(
                f"train has class {_q(c)} ({train.counts[c]} examples) with no eval example: "
                "the gate could not judge it"
            )
    seen = set().union(*(s.labels for s in splits.values() if s is not None), baseline_classes or ())
    out.extend(look_alike_labels(seen))
    if baseline_classes is not None and train and train.counts:
        change = label_set_change(baseline_classes, sorted(train.labels))
        if change:
            out.append(f"{LABEL_CHANGE}: {change}")
    return out
