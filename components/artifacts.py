"""What the gates read from and write to artifacts: the data gate's report, a model's label vocabulary.

- DataGateReport (artifact type `imgpipe.DataGateReport`): the data gate's
  findings as data_gate.json (splits with their label counts, the anomalies,
  which of them a person allowed). The Evaluator reads the eval label counts
  and the allowed anomalies from it.
- `model_class_names(uri)`: a Model artifact's label vocabulary, in class-index
  order: the Transform vocabulary file the exported SavedModel carries as an
  asset (trainer/features.py: LABEL_VOCAB), read without loading TensorFlow's
  model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import tensorflow as tf
from tfx import types
from tfx.types import artifact_utils
from tfx.utils import path_utils

from trainer.features import LABEL_VOCAB

REPORT_FILE = "data_gate.json"


class DataGateReport(types.Artifact):
    """The data gate's report: label counts per split and the anomalies it let through."""

    TYPE_NAME = "imgpipe.DataGateReport"


@dataclasses.dataclass(frozen=True)
class Report:
    splits: dict[str, dict[str, Any]]  # split -> {"examples": n, "labels": {class: count}}
    anomalies: list[str]
    anomalies_allowed: list[str]
    baseline_classes: list[str] | None
    # split -> {"records", "repeats", "conflicting_images", "conflicting_records"}: copies of one
    # image within the split (components/data_gate.py); {} in reports written before it.
    copies: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # Warnings that stop nothing: labels that print almost alike (data_contract.label_warnings),
    # label corrections since the latest blessed model, eval images unlike the train images
    # (components/split_shift.py); [] in reports written before.
    warnings: list[str] = dataclasses.field(default_factory=list)
    # A label change was let through in this run (--accept-label-change or --allow-anomalies):
    # the Evaluator does not refuse a model whose served model's answers show labels exchanged
    # (gate_decision.labels_moved); False in reports written before.
    label_change_accepted: bool = False
    # Each split's median [width, height] in pixels, of the sample the shift check measured
    # (components/split_shift.py); {} in reports written before, or when it could not run.
    image_sizes: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def label_counts(self, split: str) -> dict[str, int]:
        return dict(self.splits.get(split, {}).get("labels", {}))

    def examples(self, split: str) -> int | None:
        """The split's record count, or None when the report has no such split."""
        return self.splits.get(split, {}).get("examples")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def write_report(artifact: types.Artifact, report: Report) -> str:
    path = os.path.join(artifact.uri, REPORT_FILE)
    tf.io.gfile.makedirs(artifact.uri)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    return path


def read_report(artifacts: list[types.Artifact]) -> Report:
    uri = artifact_utils.get_single_uri(artifacts)
    path = os.path.join(uri, REPORT_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"the data gate's report is missing: {path}")
    with tf.io.gfile.GFile(path) as f:
        return Report(**json.loads(f.read()))


def saved_model_dir(model: types.Artifact) -> str:
    """The SavedModel folder inside a Model artifact (TFX's serving path for its layout)."""
    return path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))


def model_class_names(model_uri: str) -> list[str]:
    """The label vocabulary of the Model artifact at `model_uri`, in class-index order."""
    return saved_model_class_names(path_utils.serving_model_path(model_uri))


def saved_model_class_names(saved_model_dir: str) -> list[str]:
    """The label vocabulary of an exported SavedModel folder (a Model artifact's, a served
    version's), in class-index order; FileNotFoundError naming the file when it has none."""
    path = os.path.join(saved_model_dir, "assets", LABEL_VOCAB)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"the model has no label vocabulary at {path}")
    with tf.io.gfile.GFile(path, "rb") as f:
        return [line.decode("utf-8") for line in f.read().splitlines()]
