"""The data gate before training: the contract schema, label counts, each anomaly named, the override."""

from __future__ import annotations

import json
import os

import pytest
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from components.data_contract import (
    DataContractError,
    SplitLabels,
    apply_contract,
    find_anomalies,
    label_warnings,
    require_complete,
    split_labels,
    validator_messages,
)


def _stats(label_counts: dict[str, int] | None, examples: int | None = None, unique: int | None = None):
    """Statistics as TFDV writes them for one split: the label's rank histogram (and an image feature)."""
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    ds = stats.datasets.add()
    total = sum((label_counts or {}).values())
    ds.num_examples = total if examples is None else examples
    image = ds.features.add(type=statistics_pb2.FeatureNameStatistics.STRING)
    image.path.step.append("image")
    image.string_stats.common_stats.num_non_missing = ds.num_examples
    if label_counts is not None:
        label = ds.features.add(type=statistics_pb2.FeatureNameStatistics.STRING)
        label.path.step.append("label")
        label.string_stats.unique = len(label_counts) if unique is None else unique
        for name, n in sorted(label_counts.items(), key=lambda kv: -kv[1]):
            label.string_stats.rank_histogram.buckets.add(label=name, sample_count=n)
    return stats


def _labels(split, counts, **kw) -> SplitLabels:
    return split_labels(split, _stats(counts, **kw))


def _unexpected_label_anomaly(values: str) -> anomalies_pb2.Anomalies:
    a = anomalies_pb2.Anomalies()
    info = a.anomaly_info["label"]
    info.reason.add(
        type=anomalies_pb2.AnomalyInfo.ENUM_TYPE_UNEXPECTED_STRING_VALUES,
        short_description="Unexpected string values",
        description=f"Examples contain values missing from the schema: {values}.",
    )
    return a


# ------------------------------------------------------------------ label counts
def test_split_labels_reads_the_rank_histogram():
    got = _labels("train", {"5": 40, "6": 16})
    assert got.counts == {"5": 40, "6": 16} and got.examples == 56 and got.complete and got.is_string
    assert split_labels("eval", statistics_pb2.DatasetFeatureStatisticsList()).examples == 0
    no_label = split_labels("eval", _stats(None, examples=5))
    assert no_label.examples == 5 and no_label.counts == {} and not no_label.is_string


def test_truncated_label_statistics_are_an_error_not_a_smaller_label_set():
    truncated = _labels("train", {"a": 3, "b": 2}, unique=1500)
    assert not truncated.complete
    with pytest.raises(
        DataContractError, match="'label' has 1500 distinct values but the statistics list only 2"
    ):
        require_complete(truncated)


# ------------------------------------------------------------------ the schema
def _inferred(labels: list[str]) -> schema_pb2.Schema:
    import pyarrow as pa
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.statistics import stats_impl

    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(
                [[b"\x89PNG" + bytes([i % 256])] for i in range(len(labels))], type=pa.list_(pa.binary())
            ),
            pa.array([[v.encode()] for v in labels], type=pa.list_(pa.binary())),
        ],
        ["image", "label"],
    )
    stats = stats_impl.generate_statistics_in_memory(batch, tfdv.StatsOptions())
    return tfdv.infer_schema(stats, infer_feature_shape=True), stats


@pytest.mark.parametrize(
    "train_labels, tfdv_domain",
    [
        (["cat", "dog"] * 4, "domain"),  # few string classes: TFDV infers a string domain
        (["5", "6", "7"] * 4, "int_domain"),  # digit names: an open int_domain, any label passes
        ([f"c{i}" for i in range(150)], None),  # more than 100 classes: no domain at all
    ],
)
def test_contract_gives_the_label_exactly_the_train_classes(train_labels, tfdv_domain):
    import tensorflow_data_validation as tfdv

    schema, train_stats = _inferred(train_labels)
    label = next(f for f in schema.feature if f.name == "label")
    assert label.WhichOneof("domain_info") == tfdv_domain  # what TFDV does on its own

    contract = apply_contract(schema, sorted(set(train_labels)))
    label = next(f for f in contract.feature if f.name == "label")
    assert label.WhichOneof("domain_info") == "domain"
    [domain] = [d for d in contract.string_domain if d.name == label.domain]
    assert list(domain.value) == sorted(set(train_labels))
    for f in contract.feature:
        assert f.presence.min_fraction == 1.0 and [d.size for d in f.shape.dim] == [1]

    # The train split passes its own contract; an eval label train never had is an anomaly.
    assert not tfdv.validate_statistics(train_stats, contract).anomaly_info
    _, eval_stats = _inferred([train_labels[0], "unseen"])
    anomalies = tfdv.validate_statistics(eval_stats, contract)
    reasons = [r.type for r in anomalies.anomaly_info["label"].reason]
    assert anomalies_pb2.AnomalyInfo.ENUM_TYPE_UNEXPECTED_STRING_VALUES in reasons
    assert "unseen" in anomalies.anomaly_info["label"].description


def test_other_features_of_the_records_are_optional_and_unchecked():
    """Records made elsewhere often carry more (a file name, a source id). TFDV inferred them as
    required, one value each, the file names with a domain of train's values: eval's other
    names stopped the data gate, and the served model asked every request for them."""
    import pyarrow as pa
    import tensorflow as tf
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.statistics import stats_impl
    from tensorflow_transform.tf_metadata import schema_utils

    def stats(names: list[str], ids: list[int]):
        n = len(names)
        batch = pa.RecordBatch.from_arrays(
            [
                pa.array([[b"\x89PNG" + bytes([i])] for i in range(n)], type=pa.list_(pa.binary())),
                pa.array([[b"cat" if i % 2 else b"dog"] for i in range(n)], type=pa.list_(pa.binary())),
                pa.array([[v.encode()] for v in names], type=pa.list_(pa.binary())),
                pa.array([[v] for v in ids], type=pa.list_(pa.int64())),
            ],
            ["image", "label", "filename", "source_id"],
        )
        return stats_impl.generate_statistics_in_memory(batch, tfdv.StatsOptions())

    train = stats(["a.png", "b.png"] * 10, [1, 2] * 10)
    schema = tfdv.infer_schema(train, infer_feature_shape=True)
    inferred = {f.name: f for f in schema.feature}
    assert (
        inferred["filename"].WhichOneof("domain_info") and inferred["filename"].presence.min_fraction == 1.0
    )
    contract = apply_contract(schema, ["cat", "dog"])
    # Eval's file names are all new: no anomaly (before: "Unexpected string values").
    assert not tfdv.validate_statistics(
        stats([f"e{i}.png" for i in range(20)], [9] * 20), contract
    ).anomaly_info
    spec = schema_utils.schema_as_feature_spec(contract).feature_spec
    assert isinstance(spec["filename"], tf.io.VarLenFeature) and isinstance(
        spec["source_id"], tf.io.VarLenFeature
    )
    assert isinstance(spec["image"], tf.io.FixedLenFeature) and isinstance(
        spec["label"], tf.io.FixedLenFeature
    )
    # A record with the image and label only parses (the extra features are optional).
    only = tf.train.Example()
    only.features.feature["image"].bytes_list.value.append(b"x")
    only.features.feature["label"].bytes_list.value.append(b"cat")
    parsed = tf.io.parse_example([only.SerializeToString()], spec)
    assert parsed["filename"].values.shape == (0,)


def test_contract_adds_a_missing_required_feature():
    contract = apply_contract(schema_pb2.Schema(), ["a"])
    assert {f.name for f in contract.feature} == {"image", "label"}


# ------------------------------------------------------------------ the anomalies
def test_each_anomaly_is_named():
    splits = {
        "train": _labels("train", {"5": 40, "6": 16, "7": 8}),
        "eval": _labels("eval", {"5": 10, "6": 4, "9": 3}),
    }
    found = find_anomalies(
        splits, {"eval": _unexpected_label_anomaly("9 (~18%)")}, baseline_classes=["5", "6", "8"]
    )
    assert found == [
        "eval: feature 'label': Unexpected string values: "
        "Examples contain values missing from the schema: 9 (~18%).",
        "eval has class '9' (3 examples) that train does not: the model cannot learn or predict it",
        "train has class '7' (8 examples) with no eval example: the gate could not judge it",
        "label set changed against the latest blessed model: new class '7'; vanished class '8'",
    ]


def test_labels_in_two_unicode_forms_are_named_apart():
    """Records made elsewhere: train labels composed (NFC), eval's one as e + combining accent.
    Printed plainly the messages would say eval has class 'café' that train does not."""
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    splits = {
        "train": _labels("train", {composed: 10, "tea": 10}),
        "eval": _labels("eval", {decomposed: 3, composed: 2, "tea": 4}),
    }
    found = find_anomalies(splits, {})
    assert found == [
        f"eval has class {decomposed!r} (U+0063 U+0061 U+0066 U+0065 U+0301) (3 examples) that train does not: "
        "the model cannot learn or predict it",
        f"labels {decomposed!r} (U+0063 U+0061 U+0066 U+0065 U+0301) and {composed!r} (U+0063 U+0061 U+0066 "
        "U+00E9) are one text in different Unicode forms: they print alike but are 2 classes (normalise the "
        "labels to NFC; `imgpipe ingest` does)",
    ]
    # Against a blessed model's vocabulary too; composed labels alone are nothing to report.
    splits = {
        "train": _labels("train", {decomposed: 5, "tea": 5}),
        "eval": _labels("eval", {decomposed: 1, "tea": 1}),
    }
    assert any(
        "different Unicode forms" in a for a in find_anomalies(splits, {}, baseline_classes=[composed, "tea"])
    )
    assert find_anomalies(splits, {}, baseline_classes=[decomposed, "tea"]) == []


def test_labels_apart_only_in_spaces_or_invisible_characters_stop_the_run():
    """TFRecords made elsewhere: 'a' and 'a ' (a trailing space), 'big cat' and 'big<NBSP>cat', 'dog'
    and 'd<ZWSP>og' print alike and were trained as separate classes; ingest refuses such folder
    names, and the DataGate now applies the same rule to every label."""
    train = {"a": 5, "a ": 5, "big cat": 5, "big\u00a0cat": 5, "dog": 5, "d\u200bog": 5, "tab\tx": 5}
    splits = {"train": _labels("train", train), "eval": _labels("eval", {k: 1 for k in train})}
    found = find_anomalies(splits, {})
    problems = [a for a in found if "cannot be a class name" in a]
    assert problems == [
        f"{split}: label {name!r} ({code}, {n} examples) cannot be a class name: {why}; relabel those records "
        "(`imgpipe ingest` refuses such folder names)"
        for split, n in (("train", 5), ("eval", 1))
        for name, code, why in (
            ("a ", "U+0061 U+0020", "the name starts or ends with whitespace"),
            ("tab\tx", "U+0074 U+0061 U+0062 U+0009 U+0078", "the name holds a control character (U+0009)"),
        )
    ]
    alike = [a for a in found if "look the same" in a]
    assert [a.split(" look the same")[0] for a in alike] == [
        "labels 'a' (U+0061) and 'a ' (U+0061 U+0020)",
        f"labels 'big cat' (U+0062 U+0069 U+0067 U+0020 U+0063 U+0061 U+0074) and {'big' + chr(0xA0) + 'cat'!r} "
        "(U+0062 U+0069 U+0067 U+00A0 U+0063 U+0061 U+0074)",
        f"labels 'dog' (U+0064 U+006F U+0067) and {'d' + chr(0x200B) + 'og'!r} (U+0064 U+200B U+006F U+0067)",
    ]
    assert alike[0].endswith(
        "look the same ('a' once normalised: Unicode NFC, invisible format characters left out, each run "
        "of spaces one space): they print alike but are 2 classes; relabel them as one text (`imgpipe "
        "ingest` refuses such folder names)"
    )
    assert len(found) == len(problems) + len(alike)


def test_labels_that_print_almost_alike_are_warned_about_not_stopped():
    """Case, compatibility forms and mixed scripts may be meant: warnings (logged, in the report)."""
    train = {"Cat": 5, "cat": 5, "\uff43\uff41\uff54": 5, "c\u0430r": 5, "car": 5}
    splits = {"train": _labels("train", train), "eval": _labels("eval", {k: 1 for k in train})}
    assert find_anomalies(splits, {}) == []
    warnings = label_warnings(splits)
    assert warnings[0] == (
        "labels 'Cat', 'cat' differ only in letter case: they are 2 classes; if they are one, relabel them as one"
    )
    assert [w.split(" ")[0] for w in warnings] == ["labels", "labels", "label"]
    assert "mixes Cyrillic and Latin letters ('\u0430' U+0430)" in warnings[2]
    assert label_warnings({"train": _labels("train", {"cat": 1, "dog": 1}), "eval": None}) == []


def test_a_class_with_fewer_than_five_images_in_a_split_is_warned_about():
    """An audit's class of 1 train and 1 eval image was blessed, its recall 1.0 from one image (0.35
    on 40 new ones), without a word. Copies of one image count once: one image written 12 times
    is one image."""
    from components.data_contract import distinct_images, few_images_warning

    train_ids = [1, 2, 3, 4, 5] * 8 + [9] * 12 + [20, 21, 22, 23]
    train_labels = ["five"] * 40 + ["nine"] * 12 + ["six"] * 4
    eval_ids, eval_labels = (
        [30, 31, 32, 33, 34, 40, 40, 50, 51, 52, 53, 54],
        ["five"] * 5 + ["nine"] * 2 + ["six"] * 5,
    )
    distinct = {
        "train": distinct_images(train_ids, train_labels),
        "eval": distinct_images(eval_ids, eval_labels),
    }
    assert distinct["train"] == {"five": 5, "nine": 1, "six": 4}
    assert few_images_warning(distinct) == (
        "2 classes have fewer than 5 images in a split (copies of one image, and a set of near-copies, counted once): 'nine' (1 train, "
        "1 eval), 'six' (4 train, 5 eval). A model learns little of a class from so few pictures, and its "
        "recall on so few eval images says little (one image moves it by 1/n): the gate's numbers for them "
        "are weak evidence. Add pictures"
    )
    assert few_images_warning({"train": {"a": 5, "b": 9}, "eval": {"a": 5, "b": 5}}) is None
    assert few_images_warning({"train": {"a": 1}}) is None


def test_clean_data_has_no_anomaly():
    splits = {"train": _labels("train", {"a": 5, "b": 5}), "eval": _labels("eval", {"a": 1, "b": 2})}
    assert find_anomalies(splits, {"train": anomalies_pb2.Anomalies()}, baseline_classes=["b", "a"]) == []
    assert find_anomalies(splits, {}, baseline_classes=None) == []


def test_examples_with_more_than_one_image_or_label_are_named_in_imgpipes_words():
    """TFDV's own anomaly for a label with two values somewhere ("Feature shape dropped: ... its
    value lengths vary") does not say what is wrong with the data; the statistics' most values
    per example do. (The DataGate reaches its report: its image index takes an example's first
    value, trainer/image_ids.py.)"""
    stats = _stats({"a": 5, "b": 5})
    label = next(f for f in stats.datasets[0].features if f.path.step == ["label"])
    label.string_stats.common_stats.max_num_values = 2
    image = next(f for f in stats.datasets[0].features if f.path.step == ["image"])
    image.string_stats.common_stats.max_num_values = 1
    splits = {"train": split_labels("train", stats), "eval": _labels("eval", {"a": 1, "b": 2})}
    assert splits["train"].max_values == {"image": 1, "label": 2}
    assert find_anomalies(splits, {}) == [
        "train: some examples hold more than one 'label' value (up to 2); each example must be one "
        "image and one label: write them again (e.g. `imgpipe ingest`)"
    ]


def test_a_record_with_two_labels_does_not_stop_the_image_index(tmp_path):
    import tensorflow as tf

    from trainer import image_ids

    def example(images, labels):
        feature = {
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=images)),
            "label": tf.train.Feature(bytes_list=tf.train.BytesList(value=labels)),
        }
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

    path = str(tmp_path / "data.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for images, labels in (([b"x"], [b"a"]), ([b"y"], [b"b", b"c"]), ([], []), ([b"z", b"w"], [b"d"])):
            w.write(example(images, labels))
    ids, labels = image_ids.split_index(path)
    assert list(labels) == ["a", "b", "", "d"]  # an example's first value; none: ""
    assert list(ids) == [image_ids.fingerprint(x) for x in (b"x", b"y", b"", b"z")]
    # The record of two labels in a later batch: the batches before it are not given twice.
    got = [(list(i), list(lab)) for i, lab, _ in image_ids.batches(path, size=1)]
    assert [lab for _, lab in got] == [[b"a"], [b"b"], [b""], [b"d"]]
    assert [i for i, _ in got] == [[image_ids.fingerprint(x)] for x in (b"x", b"y", b"", b"z")]


def test_empty_and_missing_splits():
    found = find_anomalies({"train": _labels("train", {}, examples=0)}, {})
    assert found == [
        "train: the split is empty (0 examples)",
        "eval: the split is missing (no statistics for it)",
    ]


def test_validator_messages_cover_dataset_level_and_multiple_reasons():
    a = anomalies_pb2.Anomalies()
    info = a.anomaly_info["image"]
    info.reason.add(short_description="Column dropped", description="present in fewer examples than expected")
    info.reason.add(short_description="Feature shape dropped", description="value lengths vary")
    a.dataset_anomaly_info.reason.add(short_description="Low num examples", description="0 < 1")
    assert validator_messages("train", a) == [
        "train: feature 'image': Column dropped: present in fewer examples than expected",
        "train: feature 'image': Feature shape dropped: value lengths vary",
        "train: dataset: Low num examples: 0 < 1",
    ]


# ------------------------------------------------------------------ the executor
def _artifacts(tmp_path, train, evals, eval_anomalies=None, baseline_vocab=None):
    from tfx.types import artifact_utils, standard_artifacts

    stats = standard_artifacts.ExampleStatistics()
    stats.uri = str(tmp_path / "stats")
    stats.split_names = artifact_utils.encode_split_names(["train", "eval"])
    anomalies = standard_artifacts.ExampleAnomalies()
    anomalies.uri = str(tmp_path / "anomalies")
    anomalies.split_names = artifact_utils.encode_split_names(["train", "eval"])
    for split, counts in (("train", train), ("eval", evals)):
        os.makedirs(tmp_path / "stats" / f"Split-{split}")
        (tmp_path / "stats" / f"Split-{split}" / "FeatureStats.pb").write_bytes(
            _stats(counts).SerializeToString()
        )
        found = eval_anomalies if split == "eval" and eval_anomalies else anomalies_pb2.Anomalies()
        os.makedirs(tmp_path / "anomalies" / f"Split-{split}")
        (tmp_path / "anomalies" / f"Split-{split}" / "SchemaDiff.pb").write_bytes(found.SerializeToString())
    inputs = {"statistics": [stats], "anomalies": [anomalies], "baseline_model": []}
    if baseline_vocab is not None:
        model = standard_artifacts.Model()
        model.uri = str(tmp_path / "baseline")
        assets = tmp_path / "baseline" / "Format-Serving" / "assets"
        os.makedirs(assets)
        (assets / "label_vocab").write_text("\n".join(baseline_vocab) + "\n")
        inputs["baseline_model"] = [model]
    from components.artifacts import DataGateReport

    report = DataGateReport()
    report.uri = str(tmp_path / "report")
    return inputs, {"report": [report]}


def test_executor_fails_the_run_naming_every_anomaly(tmp_path):
    from components.data_gate import DataGateError, DataGateExecutor

    inputs, outputs = _artifacts(
        tmp_path,
        {"5": 40, "6": 16},
        {"5": 10, "6": 4, "9": 3},
        eval_anomalies=_unexpected_label_anomaly("9 (~18%)"),
        baseline_vocab=["5", "6"],
    )
    with pytest.raises(DataGateError) as e:
        DataGateExecutor().Do(inputs, outputs, {"allow_anomalies": 0})
    message = str(e.value)
    assert message.startswith("2 data anomalies stop the run before training")
    assert "--allow-anomalies" in message
    assert "\n  - eval: feature 'label': Unexpected string values" in message
    assert "\n  - eval has class '9' (3 examples) that train does not" in message
    assert not os.path.exists(tmp_path / "report" / "data_gate.json")


def test_executor_lets_a_person_override_and_records_it(tmp_path):
    from components.data_gate import DataGateExecutor

    inputs, outputs = _artifacts(
        tmp_path, {"5": 40, "6": 16, "8": 5}, {"5": 10, "6": 4, "8": 2}, baseline_vocab=["6", "5"]
    )
    DataGateExecutor().Do(inputs, outputs, {"allow_anomalies": 1})
    with open(tmp_path / "report" / "data_gate.json", encoding="utf-8") as f:
        report = json.load(f)
    assert report["anomalies_allowed"] == [
        "label set changed against the latest blessed model: new class '8'"
    ]
    assert report["splits"]["eval"] == {"examples": 16, "labels": {"5": 10, "6": 4, "8": 2}}
    assert report["baseline_classes"] == ["6", "5"]


def test_executor_passes_clean_data_silently(tmp_path):
    from components.artifacts import read_report
    from components.data_gate import DataGateExecutor

    inputs, outputs = _artifacts(tmp_path, {"a": 4, "b": 4}, {"a": 1, "b": 1})
    DataGateExecutor().Do(inputs, outputs, {"allow_anomalies": 0})
    report = read_report(outputs["report"])
    assert report.anomalies == [] and report.anomalies_allowed == [] and report.baseline_classes is None
    assert report.label_counts("eval") == {"a": 1, "b": 1}


def test_the_failure_message_counts_its_anomalies():
    from components.data_gate import failure_message

    assert failure_message(["eval: a"]).startswith("1 data anomaly stops the run before training")
    assert failure_message(["eval: a", "train: b"]).startswith(
        "2 data anomalies stop the run before training"
    )


def _with_train_examples(tmp_path, inputs, items, eval_items=None, where="examples") -> None:
    """An ExampleGen output whose train split holds `items` ((image bytes, label)) (and its eval
    split `eval_items`), gzipped as ExampleGen writes it, as the gate's `examples` input."""
    import tensorflow as tf
    from tfx.types import artifact_utils, standard_artifacts

    from tests.helpers import make_example

    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / where)
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    for name, records in (("train", items), ("eval", eval_items)):
        if records is None:
            continue
        split = tmp_path / where / f"Split-{name}"
        os.makedirs(split)
        options = tf.io.TFRecordOptions(compression_type="GZIP")
        with tf.io.TFRecordWriter(str(split / "data_tfrecord-00000-of-00001.gz"), options) as w:
            for image, label in records:
                w.write(make_example(image, label))
    inputs["examples"] = [examples]


def test_images_relabelled_since_the_served_model_trained_stop_the_run(tmp_path):
    """Two class folders' names swapped (or a class renamed): the label set is the same, so no
    anomaly; the gate leaves out the eval images the served model trained on, which are the
    ones that would show it. The model was blessed and pushed answering 'six' for fives. The
    served model's record of its train images' labels now names the moved images."""
    from components.data_gate import DataGateError, DataGateExecutor, failure_message
    from trainer import image_ids

    old = [(b"a1", "five"), (b"a2", "five"), (b"b1", "six"), (b"b2", "six"), (b"c1", "seven")]
    old += [(b"c2", "seven"), (b"c3", "seven")]
    inputs, outputs = _artifacts(
        tmp_path,
        {"five": 4, "six": 4, "seven": 4},
        {"five": 1, "six": 1, "seven": 1},
        baseline_vocab=["five", "seven", "six"],
    )
    _with_train_examples(tmp_path, inputs, old, where="old")
    assert image_ids.write(str(tmp_path / "baseline"), str(tmp_path / "old" / "Split-train" / "*")) == 7
    assert image_ids.read_labels(str(tmp_path / "baseline")) == {
        image_ids.fingerprint(image): label for image, label in old
    }
    # five and six swapped; one seven of three relabelled (a correction, not a rename).
    new_train = [(b"a1", "six"), (b"b1", "five"), (b"b2", "five"), (b"c1", "seven"), (b"c2", "seven")]
    new_train += [(b"c3", "six"), (b"d1", "six")]
    _with_train_examples(tmp_path, inputs, new_train, eval_items=[(b"a2", "six")])
    with pytest.raises(DataGateError) as e:
        DataGateExecutor().Do(inputs, outputs, {"allow_anomalies": 0})
    found = (
        "images relabelled since the latest blessed model trained on them: 2 of the 2 trained as 'five' "
        "now labelled 'six' (eval, train); 2 of the 2 trained as 'six' now labelled 'five' (train) (class "
        "folders renamed or swapped?"
    )
    assert f"\n  - {found}" in str(e.value), str(e.value)
    assert "seven" not in str(e.value)
    assert "pass --accept-label-change if the labels changed on purpose" in str(e.value)
    # On purpose: --accept-label-change lets it through, and the report keeps it; the correction
    # is a warning.
    DataGateExecutor().Do(inputs, outputs, {"allow_anomalies": 0, "accept_label_change": 1})
    with open(tmp_path / "report" / "data_gate.json", encoding="utf-8") as f:
        report = json.load(f)
    [allowed] = report["anomalies_allowed"]
    assert allowed.startswith(found)
    assert report["label_change_accepted"] is True  # the Evaluator's check of new images follows it
    few, correction = report["warnings"]  # a few images a class (this test's), and the correction
    assert few.startswith(
        "1 class has fewer than 5 images in a split (copies of one image, and a set of near-copies, counted once): 'six' (3 train, 1 eval)"
    )
    assert correction == (
        "1 of the 3 trained as 'seven' now labelled 'six' (train): label corrections? (the latest blessed "
        "model learned them the other way)"
    )
    # With another anomaly beside it, the message names both ways past.
    assert "--accept-label-change lets through the label changes alone, --allow-anomalies every" in (
        failure_message([allowed, "eval: feature 'label': Unexpected string values"])
    )
    # A model without the record (trained before it was kept): nothing to compare, no anomaly.
    os.remove(tmp_path / "baseline" / image_ids.LABELS_FILE)
    DataGateExecutor().Do(inputs, outputs, {"allow_anomalies": 0})


def test_a_train_split_much_smaller_than_the_served_models_is_warned_about(tmp_path):
    """New data of 6 images a class replaced a served model trained on 320 images: the gate
    can tell the two apart only on the eval split, so the shrink is said where it is seen."""
    from components.data_gate import DataGateExecutor, shrunk_warning
    from trainer import image_ids

    assert shrunk_warning(25, 320) == (
        "the train split has 25 distinct images, 8% of the 320 the latest blessed model trained on: a model "
        "trained on far fewer images is likely worse, and the gate can tell the two apart only on the eval "
        "split (is data missing? ingest the new images with the earlier ones)"
    )
    assert shrunk_warning(160, 320) is None and shrunk_warning(5, 0) is None
    old = [(f"o{i}".encode(), "ab"[i % 2]) for i in range(12)]
    inputs, outputs = _artifacts(tmp_path, {"a": 2, "b": 3}, {"a": 1, "b": 1}, baseline_vocab=["a", "b"])
    _with_train_examples(tmp_path, inputs, old, where="old")
    image_ids.write(str(tmp_path / "baseline"), str(tmp_path / "old" / "Split-train" / "*"))
    new = [(b"n1", "a"), (b"n2", "b"), (b"n3", "a"), (b"n4", "b"), (b"n4", "b")]  # 4 distinct
    _with_train_examples(tmp_path, inputs, new, eval_items=[(b"e1", "a"), (b"e2", "b")])
    DataGateExecutor().Do(inputs, outputs, {"allow_anomalies": 0})
    with open(tmp_path / "report" / "data_gate.json", encoding="utf-8") as f:
        report = json.load(f)
    assert shrunk_warning(4, 12) in report["warnings"]
    assert report["label_change_accepted"] is False


def test_an_image_that_keeps_its_label_somewhere_was_not_relabelled():
    """TFRecords made elsewhere with one image in train as 'zero' and in eval as 'one': the model
    trained on 'zero', and every later run on the same records stopped as if it had been
    relabelled (and every model recorded it again)."""
    import numpy as np

    from components.data_gate import relabelled
    from trainer import image_ids

    ids = np.array([image_ids.fingerprint(b"x"), image_ids.fingerprint(b"y")], np.uint64)
    trained = {int(ids[0]): "zero", int(ids[1]): "one"}
    same = {
        "train": (ids, np.array(["zero", "one"], dtype=object)),
        "eval": (ids[:1], np.array(["one"], dtype=object)),
    }
    assert relabelled(trained, same) == (None, [])


def test_a_class_is_renamed_by_its_share_moved_whatever_the_labels_it_went_to():
    """The rename rule is per class: all of 'a' split over three new labels is a rename (each
    pair alone was under half); one image of two is a correction; a lone image left of its
    class, moved, is that class moved. Each pair names the splits its images are in under its
    new label; warnings stop at a few pairs."""
    import numpy as np

    from components.data_gate import MAX_RELABELLED_SHOWN, relabelled
    from trainer import image_ids

    def split(*pairs):
        ids = np.array([image_ids.fingerprint(i.encode()) for i, _ in pairs], np.uint64)
        return ids, np.array([label for _, label in pairs], dtype=object)

    a = [f"a{i}" for i in range(6)]
    trained = {image_ids.fingerprint(i.encode()): "a" for i in a}
    trained |= {image_ids.fingerprint(b"b0"): "b", image_ids.fingerprint(b"b1"): "b"}
    trained[image_ids.fingerprint(b"c0")] = "c"
    train = split(("a0", "x"), ("a1", "x"), ("a2", "y"), ("a3", "y"), ("b0", "z"), ("b1", "b"))
    evals = split(("a4", "w"), ("a5", "w"), ("a3", "y"), ("c0", b"q".decode()))
    anomaly, warnings = relabelled(trained, {"train": train, "eval": evals})
    assert anomaly.startswith(
        "images relabelled since the latest blessed model trained on them: 2 of the 6 trained as 'a' now "
        "labelled 'w' (eval); 2 of the 6 trained as 'a' now labelled 'x' (train); 2 of the 6 trained as 'a' "
        "now labelled 'y' (eval, train); 1 of the 1 trained as 'c' now labelled 'q' (eval)"
    ), anomaly
    assert warnings == [
        "1 of the 2 trained as 'b' now labelled 'z' (train): label corrections? (the latest blessed model "
        "learned them the other way)"
    ]
    # Many corrections: a few named, the rest counted.
    many = {image_ids.fingerprint(f"m{i}".encode()): f"k{i}" for i in range(20)}
    many |= {image_ids.fingerprint(f"n{i}".encode()): f"k{i}" for i in range(20)}
    many |= {image_ids.fingerprint(f"o{i}".encode()): f"k{i}" for i in range(20)}
    now = split(*[(f"m{i}", f"j{i}") for i in range(20)], *[(f"n{i}", f"k{i}") for i in range(20)])
    now = (np.concatenate([now[0], split(*[(f"o{i}", f"k{i}") for i in range(20)])[0]]),
           np.concatenate([now[1], np.array([f"k{i}" for i in range(20)], dtype=object)]))  # fmt: skip
    anomaly, warnings = relabelled(many, {"train": now})
    assert anomaly is None and len(warnings) == MAX_RELABELLED_SHOWN + 1
    assert warnings[-1] == "and 15 more images under 15 more (old, new) label pairs"


def test_an_image_under_two_labels_in_train_stops_the_run_and_repeats_are_counted(tmp_path):
    """TFRecords made elsewhere can hold one picture under two labels (ingest leaves those out):
    the Trainer trained on them saying nothing, and the gate later named no cause."""
    from components.data_gate import DataGateError, DataGateExecutor

    items = [(b"img-a", "5"), (b"img-b", "6"), (b"img-a", "6"), (b"img-c", "5"), (b"img-c", "5")]
    items += [(b"img-d", "5"), (b"img-d", "7"), (b"img-d", "6")]
    inputs, outputs = _artifacts(tmp_path, {"5": 4, "6": 3, "7": 1}, {"5": 1, "6": 1, "7": 1})
    _with_train_examples(tmp_path, inputs, items)
    with pytest.raises(DataGateError) as e:
        DataGateExecutor().Do(inputs, outputs, {"allow_anomalies": 0})
    assert (
        "\n  - train: 2 images are under more than one label (5 records; e.g. '5' and '6'; '5' and '6' "
        "and '7'): one picture labelled two ways teaches the model noise" in str(e.value)
    ), str(e.value)
    DataGateExecutor().Do(inputs, outputs, {"allow_anomalies": 1})
    with open(tmp_path / "report" / "data_gate.json", encoding="utf-8") as f:
        copies = json.load(f)["copies"]["train"]
    assert {k: copies[k] for k in ("records", "repeats", "conflicting_images", "conflicting_records")} == {
        "records": 8,
        "repeats": 4,  # img-a once, img-c once, img-d twice
        "conflicting_images": 2,
        "conflicting_records": 5,
    }


def test_repeats_alone_are_counted_not_an_anomaly(tmp_path):
    from components.artifacts import read_report
    from components.data_gate import DataGateExecutor

    inputs, outputs = _artifacts(tmp_path, {"a": 4, "b": 4}, {"a": 1, "b": 1})
    _with_train_examples(tmp_path, inputs, [(b"x", "a"), (b"x", "a"), (b"y", "b")])
    DataGateExecutor().Do(inputs, outputs, {"allow_anomalies": 0})
    report = read_report(outputs["report"])
    assert report.anomalies == [] and report.copies["train"]["repeats"] == 1
    assert report.copies["train"]["conflicting_images"] == 0


def test_labels_with_hidden_characters_are_shown_with_their_code_points():
    """Reports and messages print 'a' and 'a ' (or 'dog' and 'd<ZWSP>og') differently."""
    from imgpipe.report.figures import _short
    from trainer.features import label_text

    assert (
        label_text("a") == "a"
        and label_text("big cat") == "big cat"
        and label_text("caf\u00e9") == "caf\u00e9"
    )
    assert label_text("a ") == "a  (U+0061 U+0020)"
    assert label_text("d\u200bog") == "d\u200bog (U+0064 U+200B U+006F U+0067)"
    assert label_text("big\u00a0cat").endswith("(U+0062 U+0069 U+0067 U+00A0 U+0063 U+0061 U+0074)")
    assert _short("a ") == "a  (hidden chars)" and _short("cafe\u0301") == "cafe\u0301 (not NFC)"
    assert _short("a") == "a"


@pytest.mark.parametrize(
    "names",
    [
        ["x-ray", "x\u2010ray"],  # a word processor's hyphen prints as "-"
        ["x-ray", "x\u2011ray", "x\u2013ray"],
        ["men's shoe", "men\u2019s shoe"],  # a curly apostrophe pasted beside a typed one
        ["a-b", "a\u2212b"],  # the minus sign
        ["big cat", "big_cat", "big-cat"],  # one name to a person, three folders
        ["big  cat", "big cat"],
    ],
)
def test_names_apart_only_by_dashes_quotes_or_separators_are_warned_about(names):
    from trainer.class_names import almost_alike

    warnings = almost_alike(names, "classes", "merge their folders")
    assert len(warnings) == 1
    assert "differ only in dashes, apostrophes, quotes or the separators between words" in warnings[0]
    assert f"they are {len(names)} classes" in warnings[0]


def test_names_that_differ_in_more_than_marks_are_not_warned_about():
    from trainer.class_names import almost_alike

    assert (
        almost_alike(["x-ray", "xray", "x-rays", "big cat", "bigcat", "cat's", "cats"], "classes", "merge")
        == []
    )
    # Case alone keeps its own warning, not this one as well.
    assert len(almost_alike(["Big-Cat", "big-cat"], "classes", "merge")) == 1


def test_a_sign_before_a_number_is_not_a_separator():
    from trainer.class_names import almost_alike

    assert almost_alike(["rot_-90", "rot_90", "-1", "1", "level-2", "level 2"], "classes", "merge") == [
        "classes 'level-2', 'level 2' differ only in dashes, apostrophes, quotes or the separators between "
        "words (space, '-', '_'): they are 2 classes; if they are one, merge"
    ]
    assert len(almost_alike(["-1", "\u22121"], "classes", "merge")) == 1  # the minus sign is still a dash


def test_near_copy_sets_are_read_from_an_ingest_report_and_group_their_records(tmp_path, caplog):
    """trainer/image_ids.near_copy_sets and groups: the sets' fingerprints from ingest's report;
    records of one set, and records repeating one image, share a group; no report, a damaged one
    or one without fingerprints (an older ingest) give no sets, the last two said in the log."""
    import numpy as np

    from trainer import image_ids

    a, b, c, d = (image_ids.fingerprint(x) for x in (b"a", b"b", b"c", b"d"))
    report = tmp_path / "ingest_report.json"
    entry = {"class": "x", "split": "train", "files": ["1.png", "2.png"]}
    report.write_text(json.dumps({"near_copies": [{**entry, "fingerprints": [f"{a:016x}", f"{b:016x}"]}]}))
    sets = image_ids.near_copy_sets(str(report))
    assert [s.tolist() for s in sets] == [[a, b]]
    ids = np.array([c, a, d, b, c, d, d], np.uint64)
    groups = image_ids.groups(ids, sets)
    assert groups[1] == groups[3] and groups[0] == groups[4] and groups[2] == groups[5] == groups[6]
    assert len(set(groups.tolist())) == 3
    assert (
        image_ids.near_copy_sets(None) == [] and image_ids.near_copy_sets(str(tmp_path / "none.json")) == []
    )
    report.write_text(json.dumps({"near_copies": [entry]}))
    assert image_ids.near_copy_sets(str(report)) == []
    assert "have no image fingerprints" in caplog.text
    report.write_text("{not json")
    assert image_ids.near_copy_sets(str(report)) == []
    assert "cannot be read" in caplog.text


def test_ingest_s_warnings_on_copies_in_both_splits_are_said_again_in_the_run(tmp_path):
    """An audit's clips split by ingest's pixel test, and a class that was one set, were warned
    about on ingest's stderr only; the run blessed random labels at 1.0 and 0.733 without a word.
    The data gate repeats ingest's `split_warnings` when the report is of these records."""
    import numpy as np

    from components.data_gate import ingest_split_warnings
    from trainer import image_ids

    report = tmp_path / "ingest_report.json"
    said = "3 folders inside class folders (a/c1, a/c2, b/c7) hold near-copies of one another and went to both splits"
    report.write_text(
        json.dumps(
            {"counts": {"a": {"train": 2, "eval": 1}, "b": {"train": 1, "eval": 0}}, "split_warnings": [said]}
        )
    )
    indexed = {
        "train": (np.array([1, 2, 3], np.uint64), np.array(["a", "b", "a"], dtype=object)),
        "eval": (np.array([4], np.uint64), np.array(["a"], dtype=object)),
    }
    read = image_ids.read_ingest_report
    assert ingest_split_warnings(read(str(report)), indexed) == [f"ingest: {said}"]
    other = dict(indexed, eval=(np.array([4, 5], np.uint64), np.array(["a", "b"], dtype=object)))
    assert ingest_split_warnings(read(str(report)), other) == []  # a report of other data: not said
    assert read(None) is None and read(str(tmp_path / "no")) is None  # no report: nothing to say
    assert ingest_split_warnings({}, indexed) == []
