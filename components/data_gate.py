"""DataGate: stops the run before Transform and the Trainer when the data breaks its contract.

Inputs: StatisticsGen's statistics, ExampleValidator's anomalies (against the
contract schema, components/schema_gen.py), the latest blessed model (the
Resolver's output, also the Evaluator's baseline) and ExampleGen's examples,
whose train split is read for copies of one image: one under two labels is an
anomaly (ingest leaves such images out; TFRecords made elsewhere may hold them),
repeats are counted in the report. The label checks themselves are plain
functions in components/data_contract.py; each anomaly is one sentence.

Why compare the label set with the latest blessed model rather than with the
previous run's schema: the blessed model is what is served and what the
Evaluator compares against, and its vocabulary is exactly what it can predict.
The previous run may have failed or been rejected, so its data says nothing
about what clients get; and a Resolver for the "latest" Schema in the same run
could return this run's own schema.

With `allow_anomalies` the run goes on and the report lists each anomaly as
allowed (the Evaluator copies them into gate.json); without it the executor
raises DataGateError naming every anomaly, so nothing downstream runs.
`accept_label_change` lets through only the label changes against the latest blessed
model: its label set's (a class added or removed on purpose; the Evaluator then
compares the two models on the eval examples of the classes both have), and images
it trained on that now carry another label (relabelled on purpose). That second check
reads the model's record of its train images' labels (trainer/image_ids.py): two class
folders' names swapped, or a class renamed, keep the label set or change it by one
name, and were trained, blessed and pushed as if nothing had happened.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import types
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import io_utils

from components import class_apart, split_shift
from components.artifacts import DataGateReport, Report, model_class_names, write_report
from components.data_contract import (
    LABEL_CHANGES,
    RELABELLED,
    SPLITS,
    SplitLabels,
    distinct_images,
    few_images_warning,
    find_anomalies,
    label_warnings,
    require_complete,
    split_labels,
)
from components.gate_decision import quoted
from trainer import image_ids

# The data's ingest_report.json (its sets of near-copies: the shift check counts a set once).
INGEST_REPORT_KEY = image_ids.INGEST_REPORT_KEY

log = logging.getLogger(__name__)

STATISTICS_KEY = "statistics"
ANOMALIES_KEY = "anomalies"
BASELINE_MODEL_KEY = "baseline_model"
EXAMPLES_KEY = "examples"  # ExampleGen's output: the train split's image copies are counted
REPORT_KEY = "report"
ALLOW_KEY = "allow_anomalies"
ACCEPT_CHANGE_KEY = "accept_label_change"
ANOMALIES_FILE = "SchemaDiff.pb"  # ExampleValidator's per-split output


class DataGateError(RuntimeError):
    """The data has anomalies and nobody allowed them; the message lists each one."""


def failure_message(anomalies: list[str]) -> str:
    """The error a person reads: how many, what to do, then one anomaly per line."""
    lines = "\n".join(f"  - {a}" for a in anomalies)
    noun = "anomaly stops" if len(anomalies) == 1 else "anomalies stop"
    changes = [a for a in anomalies if a.startswith(LABEL_CHANGES)]
    if not changes:
        way = "fix the data, or pass --allow-anomalies to continue knowingly"
    elif len(changes) == len(anomalies):
        way = "fix the data, or pass --accept-label-change if the labels changed on purpose"
    else:
        way = (
            "fix the data; --accept-label-change lets through the label changes alone, --allow-anomalies "
            "every anomaly"
        )
    return f"{len(anomalies)} data {noun} the run before training ({way}):\n{lines}"


MAX_RELABELLED_SHOWN = 5  # label pairs named in the anomaly


# A share of one class's images (of those the latest blessed model trained on, found in this
# run's data) that now carry other labels, from which the move is a class renamed or two
# swapped (an anomaly) rather than a few labels corrected (warnings). One image alone is a
# correction unless it is all of its class that is left.
RENAMED_SHARE = 0.5


def relabelled(
    trained: dict[int, str], splits: dict[str, tuple[np.ndarray, np.ndarray]]
) -> tuple[str | None, list[str]]:
    """(the anomaly, the warnings) of images the latest blessed model trained on whose label it
    learned is no longer among the labels they carry now. trained: {fingerprint: label} of its
    train images; splits: this run's (fingerprints, labels) per split.

    An image that keeps its old label somewhere (a copy in eval under another label: TFRecords
    made elsewhere) did not move. A class of which at least RENAMED_SHARE of the images found
    here moved (to one label or several) was renamed or swapped: the anomaly, naming each
    (old, new) pair. Fewer are label corrections: warnings, the run goes on."""
    now: dict[int, set[str]] = {}
    where: dict[tuple[int, str], set[str]] = {}  # (image, label) -> the splits it is there
    for split, (ids, labels) in splits.items():
        for image, label in zip(ids.tolist(), labels, strict=True):
            if image in trained:
                label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
                now.setdefault(image, set()).add(label)
                where.setdefault((image, label), set()).add(split)
    found: dict[str, int] = {}  # old label -> its images found here
    moved_from: dict[str, set[int]] = {}  # old label -> its images that moved
    moved: dict[tuple[str, str], set[int]] = {}
    for image, labels in now.items():
        before = trained[image]
        found[before] = found.get(before, 0) + 1
        if before not in labels:
            moved_from.setdefault(before, set()).add(image)
            for after in labels:
                moved.setdefault((before, after), set()).add(image)
    if not moved:
        return None, []

    def text(pair: tuple[str, str]) -> str:
        images = moved[pair]
        in_splits = sorted(set().union(*(where[(i, pair[1])] for i in images)))
        return (
            f"{len(images)} of the {found[pair[0]]} trained as {quoted(pair[0])} now labelled {quoted(pair[1])} "
            f"({', '.join(in_splits)})"
        )

    def renamed(old: str) -> bool:
        n = len(moved_from[old])
        return n >= RENAMED_SHARE * found[old] and (n >= 2 or n == found[old])

    pairs = sorted(moved, key=lambda pair: (-len(moved[pair]), pair))
    anomaly_pairs = [pair for pair in pairs if renamed(pair[0])]
    corrections = [pair for pair in pairs if not renamed(pair[0])]
    warnings = [
        f"{text(pair)}: label corrections? (the latest blessed model learned them the other way)"
        for pair in corrections[:MAX_RELABELLED_SHOWN]
    ]
    if len(corrections) > MAX_RELABELLED_SHOWN:
        rest = sum(len(moved[pair]) for pair in corrections[MAX_RELABELLED_SHOWN:])
        warnings.append(
            f"and {rest} more images under {len(corrections) - MAX_RELABELLED_SHOWN} more (old, new) label pairs"
        )
    if not anomaly_pairs:
        return None, warnings
    shown = "; ".join(text(pair) for pair in anomaly_pairs[:MAX_RELABELLED_SHOWN])
    more = (
        f"; and {len(anomaly_pairs) - MAX_RELABELLED_SHOWN} more pairs"
        if len(anomaly_pairs) > MAX_RELABELLED_SHOWN
        else ""
    )
    return (
        f"{RELABELLED}: {shown}{more} (class folders renamed or swapped? the gate's comparison leaves out "
        "the images the served model trained on, so it would not see this)",
        warnings,
    )


# A train split with fewer distinct images than this share of those the latest blessed model
# trained on is warned about: trained on far less, the candidate is likely worse, and the gate's
# comparison sees only the eval split.
SHRUNK_SHARE = 0.5


def shrunk_warning(images: int, trained: int) -> str | None:
    """The warning for a train split of `images` distinct images when the latest blessed model
    trained on `trained`, or None when it is not much smaller."""
    if trained <= 0 or images >= SHRUNK_SHARE * trained:
        return None
    return (
        f"the train split has {images} distinct images, {images / trained:.0%} of the {trained} the latest "
        "blessed model trained on: a model trained on far fewer images is likely worse, and the gate can "
        "tell the two apart only on the eval split (is data missing? ingest the new images with the "
        "earlier ones)"
    )


def _read_anomalies(artifact: types.Artifact, split: str) -> anomalies_pb2.Anomalies:
    path = os.path.join(artifact_utils.get_split_uri([artifact], split), ANOMALIES_FILE)
    return anomalies_pb2.Anomalies.FromString(io_utils.read_bytes_file(path))


def split_copies(ids: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Copies of one image among a split's records (`ids`: their image fingerprints,
    trainer/image_ids.py): how many records repeat an earlier one's image, and the images under
    more than one label, with the labels of the first few (in file order)."""
    labels_of = image_ids.labels_by_image(ids, labels)
    conflicting = [image for image, found in labels_of.items() if len(found) > 1]  # in file order
    in_conflict = np.isin(ids, np.fromiter(conflicting, np.uint64, len(conflicting))) if conflicting else None
    return {
        "records": int(len(ids)),
        "repeats": int(image_ids.repeats(ids).sum()),
        "conflicting_images": len(conflicting),
        "conflicting_records": int(in_conflict.sum()) if in_conflict is not None else 0,
        "conflict_examples": [sorted(labels_of[i]) for i in conflicting[:3]],
    }


def conflict_anomaly(split: str, copies: dict[str, Any]) -> str | None:
    """The anomaly a split's label conflicts are (None without any): the same image under two
    labels teaches the model that they cannot be told apart, and ingest never writes one."""
    n = copies["conflicting_images"]
    if not n:
        return None
    shown = "; ".join(" and ".join(repr(label) for label in found) for found in copies["conflict_examples"])
    return (
        f"{split}: {n} {'image is' if n == 1 else 'images are'} under more than one label "
        f"({copies['conflicting_records']} records; e.g. {shown}): one picture labelled two ways "
        "teaches the model noise; remove or relabel those records (ingest leaves such images out)"
    )


class DataGateExecutor(base_executor.BaseExecutor):
    """Checks the data, writes the report, raises DataGateError unless anomalies are allowed."""

    def Do(self, input_dict, output_dict, exec_properties):  # noqa: N802 - TFX's name
        stats_artifact = artifact_utils.get_single_instance(input_dict[STATISTICS_KEY])
        anomalies_artifact = artifact_utils.get_single_instance(input_dict[ANOMALIES_KEY])
        stat_splits = set(artifact_utils.decode_split_names(stats_artifact.split_names))
        anomaly_splits = set(artifact_utils.decode_split_names(anomalies_artifact.split_names))

        splits: dict[str, SplitLabels] = {}
        for split in SPLITS:
            if split in stat_splits:
                stats = stats_artifact_utils.load_statistics(stats_artifact, split).proto()
                splits[split] = split_labels(split, stats)
                require_complete(splits[split])
        validator = {s: _read_anomalies(anomalies_artifact, s) for s in SPLITS if s in anomaly_splits}

        baselines = input_dict.get(BASELINE_MODEL_KEY) or []
        baseline_classes = model_class_names(baselines[0].uri) if baselines else None

        anomalies = find_anomalies(splits, validator, baseline_classes)
        trained = _trained_labels(baselines[0].uri) if baselines else None
        relabel_warnings: list[str] = []
        copies = {}
        shift_warnings: list[str] = []
        few_warnings: list[str] = []
        image_sizes: dict[str, list[float]] = {}
        for examples in input_dict.get(EXAMPLES_KEY) or []:  # the train split's copies of one image
            train = os.path.join(artifact_utils.get_split_uri([examples], "train"), "*")
            eval_files = os.path.join(artifact_utils.get_split_uri([examples], "eval"), "*")
            indexed = {"train": image_ids.split_index(train)}
            copies["train"] = split_copies(*indexed["train"])
            found = conflict_anomaly("train", copies["train"])
            anomalies += [found] if found else []
            if copies["train"]["repeats"]:
                log.info("train: %d records repeat an earlier record's image", copies["train"]["repeats"])
            has_eval = bool(tf.io.gfile.glob(eval_files))
            if has_eval:
                indexed["eval"] = image_ids.split_index(eval_files)
            # Pictures: a set of near-copies (ingest's report: a clip's frames) counts once, as
            # copies of one image do.
            where = exec_properties.get(INGEST_REPORT_KEY)
            ingested = image_ids.read_ingest_report(where) or {}
            sets = image_ids.near_copy_sets_in(ingested, where or "")
            few_warnings += ingest_split_warnings(ingested, indexed)
            pictures = {s: image_ids.groups(ids, sets) for s, (ids, _) in indexed.items()}
            found = few_images_warning({s: distinct_images(pictures[s], indexed[s][1]) for s in indexed})
            few_warnings += [found] if found else []
            if trained:
                found, corrections = relabelled(trained, indexed)
                anomalies += [found] if found else []
                relabel_warnings += corrections
                shrunk = shrunk_warning(len(indexed["train"][0]) - copies["train"]["repeats"], len(trained))
                relabel_warnings += [shrunk] if shrunk else []
            if tf.io.gfile.glob(train):  # eval images unlike the train images; a class apart
                # Each picture once: a set of near-copies (a clip's frames: ingest's report) or
                # a repeated image counted once, so a split of 25 clips is not 284 samples (an
                # audit's clip data read a brightness "shift" at p = 7e-5 by frame, 0.45 by clip).
                once = {split: ~image_ids.repeats(grouped) for split, grouped in pictures.items()}
                shift_warnings += split_shift.gate_warnings(
                    itertools.compress(image_ids.records(train), once["train"]),
                    itertools.compress(image_ids.records(eval_files), once["eval"]) if has_eval else [],
                    image_sizes,
                    set(class_apart.class_sample(list(indexed["train"][1][once["train"]])).tolist()),
                )
        warnings = label_warnings(splits) + few_warnings + relabel_warnings + shift_warnings
        for w in warnings:
            log.warning("data gate: %s", w)
        allow = bool(exec_properties.get(ALLOW_KEY))
        # accept_label_change lets the label set's change alone through (a class added on purpose).
        accepted = (
            [a for a in anomalies if a.startswith(LABEL_CHANGES)]
            if exec_properties.get(ACCEPT_CHANGE_KEY)
            else []
        )
        stopping = [a for a in anomalies if a not in accepted]
        if stopping and not allow:
            raise DataGateError(failure_message(stopping))
        for a in accepted:
            log.warning("label change accepted (--accept-label-change): %s", a)
        for a in stopping if allow else []:
            log.warning("data anomaly allowed (--allow-anomalies): %s", a)
        report = Report(
            splits={s: {"examples": v.examples, "labels": v.counts} for s, v in splits.items()},
            anomalies=anomalies,
            anomalies_allowed=anomalies if allow else accepted,
            baseline_classes=baseline_classes,
            copies=copies,
            warnings=warnings,
            label_change_accepted=allow or bool(exec_properties.get(ACCEPT_CHANGE_KEY)),
            image_sizes=image_sizes,
        )
        write_report(artifact_utils.get_single_instance(output_dict[REPORT_KEY]), report)


def _trained_labels(model_uri: str) -> dict[int, str] | None:
    """The latest blessed model's {fingerprint: label} of its train images; None, logged, when it
    keeps no readable record (a model trained before imgpipe kept one)."""
    try:
        found = image_ids.read_labels(model_uri)
    except ValueError as e:
        log.warning("the latest blessed model's record of its train images' labels is unreadable: %s", e)
        return None
    if found is None:
        log.info(
            "the latest blessed model keeps no record of its train images' labels (trained by an earlier "
            "imgpipe): images relabelled since are not looked for"
        )
    return found


def ingest_split_warnings(ingested: dict, indexed: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
    """The data's ingest report's `split_warnings` (a class that is one set of near-copies, clips
    the pixel test split, what --sets-by-folder left undone), said again in the run: they were on
    ingest's stderr only, and a run on such data blessed models of random labels without a word.
    [] without such a report, or when its counts are not these records' (a report of other data)."""
    said = ingested.get("split_warnings")
    if not isinstance(said, list) or not said:
        return []
    for split, (_, labels) in indexed.items():
        if not image_ids.ingest_counts_match(ingested, split, collections.Counter(str(x) for x in labels)):
            return []
    return [f"ingest: {w}" for w in said if isinstance(w, str)]


class DataGateSpec(ComponentSpec):
    PARAMETERS = {
        ALLOW_KEY: ExecutionParameter(type=int),
        ACCEPT_CHANGE_KEY: ExecutionParameter(type=int, optional=True),
        INGEST_REPORT_KEY: ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        STATISTICS_KEY: ChannelParameter(type=standard_artifacts.ExampleStatistics),
        ANOMALIES_KEY: ChannelParameter(type=standard_artifacts.ExampleAnomalies),
        BASELINE_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True),
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {REPORT_KEY: ChannelParameter(type=DataGateReport)}


class DataGate(base_component.BaseComponent):
    """Fails the run, naming each anomaly, unless the data keeps its contract or anomalies are allowed."""

    SPEC_CLASS = DataGateSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(DataGateExecutor)

    def __init__(
        self,
        statistics: types.BaseChannel,
        anomalies: types.BaseChannel,
        baseline_model: types.BaseChannel,
        allow_anomalies: bool,
        examples: types.BaseChannel | None = None,
        accept_label_change: bool = False,
        ingest_report: str | None = None,
    ):
        spec = DataGateSpec(
            statistics=statistics,
            anomalies=anomalies,
            baseline_model=baseline_model,
            examples=examples,
            allow_anomalies=int(allow_anomalies),
            accept_label_change=int(accept_label_change),
            report=types.Channel(type=DataGateReport),
            **({INGEST_REPORT_KEY: ingest_report} if ingest_report else {}),
        )
        super().__init__(spec=spec)
