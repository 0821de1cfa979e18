"""The one typed configuration object for an imgpipe run.

A `PipelineConfig` is frozen, validated once (`validate()`), and saved beside
every run (`save()`), so a run can always be reproduced from its own record.
Values come from defaults, then a YAML file, then command-line flags; nothing
here reads the environment.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import yaml

# Names accepted for `weights` besides a path to a weights file.
WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_NONE = "none"

BEAM_RUNNERS = ("direct", "multiprocess", "dataflow", "flink", "spark")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything a pipeline run needs. Paths are stored as given; use `resolved()`."""

    # Data: a TFRecord directory with train/ and eval/ subdirectories (from `imgpipe ingest`).
    data_dir: str = ""
    pipeline_name: str = "imgpipe"
    # Pipeline home: artifacts under <home>/pipelines/<name>, ML Metadata at <home>/metadata.sqlite.
    home: str = "imgpipe_home"

    # Model.
    backbone: str = "MobileNetV2"
    weights: str = WEIGHTS_IMAGENET
    image_size: int | None = None  # None: the backbone's default input size
    dropout: float = 0.2

    # Training. batch_size is per replica; the global batch is batch_size * replicas.
    batch_size: int = 32
    epochs: int = 5
    steps_per_epoch: int | None = None  # None: one pass over the training split
    learning_rate: float = 1e-3
    fine_tune_layers: int = 0  # >0: second phase unfreezes the top K backbone layers
    fine_tune_epochs: int = 0
    fine_tune_learning_rate: float = 1e-5
    augment: bool = False
    feature_cache: bool = True  # cache frozen backbone features where valid (see trainer/data.py)
    seed: int = 42

    # Evaluation gate.
    min_accuracy: float = 0.5  # absolute floor
    max_regression: float = 0.0  # allowed accuracy drop vs the latest blessed model

    # Serving.
    model_name: str = "imgpipe"
    serving_dir: str = "serving_models"

    # Execution.
    beam_runner: str = "direct"
    beam_workers: int = 0  # 0: one per CPU (multiprocess runner)
    beam_args: tuple[str, ...] = ()
    replicas: int | None = None  # testing aid: split the CPU into N logical devices
    enable_cache: bool = True

    # ----------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PipelineConfig:
        """Build from a mapping; unknown keys are an error (typos must not pass silently)."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"unknown config key(s): {', '.join(unknown)}; known keys: {', '.join(cls.field_names())}"
            )
        kwargs = dict(values)
        if "beam_args" in kwargs and kwargs["beam_args"] is not None:
            kwargs["beam_args"] = tuple(str(a) for a in kwargs["beam_args"])
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str) -> PipelineConfig:
        try:
            with open(path, encoding="utf-8") as f:
                values = yaml.safe_load(f) or {}
        except FileNotFoundError as e:
            raise ConfigError(f"config file not found: {path}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> PipelineConfig:
        """A copy with `changes` applied; None values are ignored (unset CLI flags)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["beam_args"] = list(self.beam_args)
        return d

    # ----------------------------------------------------------------------------------
    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.home, "pipelines", self.pipeline_name)

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.home, "metadata.sqlite")

    @property
    def model_serving_dir(self) -> str:
        """TF Serving's model base path: versions are pushed below it as <version>/."""
        return os.path.join(self.serving_dir, self.model_name)

    def resolved(self) -> PipelineConfig:
        """Local paths made absolute (remote URIs such as gs:// are kept)."""

        def absolute(p: str) -> str:
            return p if (not p or "://" in p) else os.path.abspath(os.path.expanduser(p))

        weights = self.weights
        if weights.lower() not in (WEIGHTS_IMAGENET, WEIGHTS_NONE):
            weights = absolute(weights)
        return dataclasses.replace(
            self,
            data_dir=absolute(self.data_dir),
            home=absolute(self.home),
            serving_dir=absolute(self.serving_dir),
            weights=weights,
        )

    def effective_image_size(self) -> int:
        """The configured size, or the backbone's default input size."""
        from trainer import backbones  # light module: no TensorFlow import at load

        return self.image_size or backbones.get(self.backbone).default_size

    def validate(self, check_paths: bool = True) -> PipelineConfig:
        """Raise ConfigError naming the first invalid field; return self for chaining."""
        from trainer import backbones

        def need(cond: bool, field: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{field}: {msg}")

        need(bool(self.data_dir), "data_dir", "required (a TFRecord dir from `imgpipe ingest`)")
        need(
            bool(self.pipeline_name) and "/" not in self.pipeline_name,
            "pipeline_name",
            "must be a non-empty name without '/'",
        )
        need(
            bool(self.model_name) and "/" not in self.model_name,
            "model_name",
            "must be a non-empty name without '/'",
        )
        need(
            self.backbone in backbones.names(),
            "backbone",
            f"unknown {self.backbone!r}; choose one of {', '.join(backbones.names())}",
        )
        spec = backbones.get(self.backbone)
        if self.image_size is not None:
            need(
                spec.min_size <= self.image_size <= 1024,
                "image_size",
                f"{self.image_size} is out of range for {self.backbone} ({spec.min_size}..1024)",
            )
        w = self.weights.lower()
        if w not in (WEIGHTS_IMAGENET, WEIGHTS_NONE) and check_paths and "://" not in self.weights:
            need(
                os.path.isfile(self.weights),
                "weights",
                f"not 'imagenet', 'none' or an existing file: {self.weights}",
            )
        if w == WEIGHTS_IMAGENET and self.image_size is not None:
            need(
                self.image_size >= 32,
                "image_size",
                "ImageNet weights need an input of at least 32x32",
            )
        need(0.0 <= self.dropout < 1.0, "dropout", f"{self.dropout} is not in [0, 1)")
        need(self.batch_size >= 1, "batch_size", f"{self.batch_size} must be >= 1")
        need(self.epochs >= 1, "epochs", f"{self.epochs} must be >= 1")
        need(
            self.steps_per_epoch is None or self.steps_per_epoch >= 1,
            "steps_per_epoch",
            "must be >= 1 when set",
        )
        need(self.learning_rate > 0, "learning_rate", f"{self.learning_rate} must be > 0")
        need(self.fine_tune_layers >= 0, "fine_tune_layers", "must be >= 0")
        need(self.fine_tune_epochs >= 0, "fine_tune_epochs", "must be >= 0")
        need(
            not (self.fine_tune_layers > 0 and self.fine_tune_epochs == 0),
            "fine_tune_epochs",
            "must be >= 1 when fine_tune_layers > 0",
        )
        need(self.fine_tune_learning_rate > 0, "fine_tune_learning_rate", "must be > 0")
        need(0.0 <= self.min_accuracy <= 1.0, "min_accuracy", f"{self.min_accuracy} is not in [0, 1]")
        need(0.0 <= self.max_regression <= 1.0, "max_regression", f"{self.max_regression} is not in [0, 1]")
        need(
            self.beam_runner in BEAM_RUNNERS,
            "beam_runner",
            f"{self.beam_runner!r}; choose one of {', '.join(BEAM_RUNNERS)}",
        )
        need(self.beam_workers >= 0, "beam_workers", "must be >= 0")
        need(self.replicas is None or self.replicas >= 1, "replicas", "must be >= 1 when set")
        if check_paths and "://" not in self.data_dir:
            for split in ("train", "eval"):
                need(
                    os.path.isdir(os.path.join(self.data_dir, split)),
                    "data_dir",
                    f"{self.data_dir} has no {split}/ subdirectory (run `imgpipe ingest` first)",
                )
        return self

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            if path.endswith(".json"):
                json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            else:
                yaml.safe_dump(self.to_dict(), f, sort_keys=True)
