"""The Trainer's settings: the `training` part of the run's config schema.

Every run setting is declared once, as a field of a section model like this one.
The pipeline's tree (pipeline/config.py) nests the sections; the CLI flags, YAML
keys, Kubeflow runtime parameters and the Trainer's custom_config are derived
from the fields, not listed again. A field's `json_schema_extra` may carry:

    flag      the command-line flag when it is not --field-name
    runtime   True: a Kubeflow/Vertex pipeline runtime parameter
    cli       False: no command-line flag (YAML only)

`Settings` is the base of every section: unknown keys are errors, values are
type-checked and coerced (YAML strings such as "3" or "1e-3" parse; "ten",
32.5 for an int, or a bool for a number do not), and a model is immutable.

The Trainer parses its custom_config with `TrainingConfig.model_validate`
(strict: an unknown or mistyped key fails the Trainer with the key named).
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from trainer import backbones
from trainer.features import DEFAULT_MAX_PIXELS

# Names accepted for `weights` besides a path to a weights file.
WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_NONE = "none"
MAX_IMAGE_SIZE = 1024
# run_fn writes the training summary (replicas, history, notes) under this name in model_run.
SUMMARY_FILE = "training_summary.json"
# The custom_config key (beside the training settings, not one of them) of the data's
# ingest_report.json: its sets of near-copies are kept whole by the head's validation (run_fn).
INGEST_REPORT_CONFIG = "ingest_report"
# The custom_config key of the config's `replicas` (the CPU split into that many devices), when
# set: it changes the global batch, so it keys the Trainer's cache (run_fn checks the devices).
REPLICAS_CONFIG = "replicas"
# Classes count as imbalanced when the largest has more than this many times the examples of
# the smallest: then "auto" trains with balanced loss weights (trainer/head.py) and gates on
# balanced accuracy (components/gate_decision.py).
IMBALANCE_RATIO = 1.5


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


class Settings(BaseModel):
    """Base of every config section: strict keys, checked types, frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic would read True as 1; in a config file that is a mistake, not a number.
        # YAML 1.1 reads unquoted on/off/yes/no as booleans: a choice of words gets its word
        # back where that is unambiguous (on/off; false for an optional setting that None
        # turns off), anything else names the mix-up.
        if not isinstance(value, bool) or info.field_name is None:
            return value
        annotation = cls.model_fields[info.field_name].annotation
        kinds = _kinds(annotation)
        if bool in kinds:
            return value
        if kinds & {int, float}:
            raise ValueError(f"expected a number, got {value}")
        words = _literal_words(annotation)
        if {"on", "off"} <= words:
            return "on" if value else "off"
        if not value and type(None) in kinds:
            return None
        if words:
            raise ValueError(
                f"expected one of {', '.join(sorted(words))}, got the YAML boolean {str(value).lower()} "
                "(YAML reads unquoted yes/no/on/off/true/false as booleans: quote the word)"
            )
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _fits_in_64_bits(cls, value: Any) -> Any:
        # Settings become TFX runtime parameters and ML Metadata properties: 64-bit integers.
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise ValueError(f"{value} is too large: at most {2**63 - 1}")
        return value

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (tuples as lists)."""
        return self.model_dump(mode="json")


def _kinds(annotation: Any) -> set[Any]:
    """The plain types an annotation admits (unions opened; a Literal counts as its values' types)."""
    if get_origin(annotation) is Literal:
        return {type(v) for v in get_args(annotation)}
    args = get_args(annotation)
    if args:
        return set().union(*(_kinds(a) for a in args))
    return {annotation}


def _literal_words(annotation: Any) -> set[str]:
    """The string values of the Literals in an annotation."""
    if get_origin(annotation) is Literal:
        return {v for v in get_args(annotation) if isinstance(v, str)}
    return set().union(set(), *(_literal_words(a) for a in get_args(annotation)))


def field_extra(model: type[BaseModel], name: str, key: str, default: Any = None) -> Any:
    """One `json_schema_extra` entry of a field (see the module docstring)."""
    extra = model.model_fields[name].json_schema_extra
    return extra.get(key, default) if isinstance(extra, dict) else default


class TrainingConfig(Settings):
    """Model and training: the frozen backbone, the head, and how the head is trained."""

    backbone: str = Field(
        "MobileNetV2", description=f"tf.keras.applications backbone: {', '.join(backbones.names())}"
    )
    weights: str = Field(
        WEIGHTS_IMAGENET, description="imagenet | none | path to a Keras weights file (.h5) for the backbone"
    )
    image_size: int | None = Field(
        None, description="input size in pixels (default: the backbone's own, 224 or 299)"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the classification layer")
    batch_size: int = Field(32, ge=1, description="batch size per replica (global = this x replicas)")
    epochs: int = Field(
        200,
        ge=1,
        description="maximum epochs of head training: early stopping ends it sooner "
        "(exactly this many with --no-early-stopping)",
        json_schema_extra={"runtime": True},
    )
    steps_per_epoch: int | None = Field(None, ge=1, description="steps per epoch (default: one pass)")
    learning_rate: float = Field(
        1e-3,
        gt=0.0,
        description="learning rate (Adam) of head training",
        json_schema_extra={"runtime": True},
    )
    l2: float = Field(0.0, ge=0.0, description="L2 weight decay on the classification layer's kernel")
    standardize: bool = Field(
        True,
        description="standardise the backbone's features in the head (per-feature mean and variance "
        "of the train split, kept in the exported model)",
    )
    early_stopping: bool = Field(
        True,
        description="stop head training when the loss on a validation slice held out from the train "
        "split has not improved for `patience` epochs, and keep the best epoch's weights",
    )
    patience: int = Field(10, ge=1, description="epochs without improvement before early stopping")
    validation_fraction: float = Field(
        0.1,
        gt=0.0,
        le=0.5,
        description="fraction of each class of the train split held out to monitor early stopping "
        "and score --tune trials (never the eval split)",
    )
    cv_folds: int = Field(
        5,
        ge=0,
        description="when the validation slice holds fewer than 10 examples of some class, choose the "
        "head's epoch count by this many-fold cross-validation on the train split instead (the best "
        "pooled weighted accuracy, i.e. balanced accuracy under class weights; then a refit on the whole "
        "split); 0 or 1: always the slice; at most 50",
    )
    refit: bool = Field(
        True,
        description="after early stopping, train a new head on the whole train split for the best "
        "epoch count (else keep the best-epoch head trained without the validation slice)",
    )
    class_weights: Literal["auto", "none"] = Field(
        "auto",
        description="auto: balanced loss weights n/(k*n_c) when the largest class has more than 1.5x "
        "the examples of the smallest; none: unweighted",
    )
    tune_trials: int = Field(
        0,
        ge=0,
        description="search N head configurations (learning rate, dropout, l2) on the cached features, "
        "scored on the validation slice; needs the feature cache",
        json_schema_extra={"flag": "--tune"},
    )
    fine_tune_layers: int = Field(
        0, ge=0, description="unfreeze the top K backbone layers in a second phase (BatchNorm stays frozen)"
    )
    fine_tune_epochs: int = Field(0, ge=0, description="epochs of the fine-tuning phase")
    fine_tune_learning_rate: float = Field(1e-5, gt=0.0, description="learning rate of the fine-tuning phase")
    augment: bool = Field(False, description="random flip + small crop/zoom during training")
    feature_cache: bool = Field(
        True, description="train the head on backbone features computed once (where valid)"
    )
    feature_reuse: bool = Field(
        True,
        description="keep each image's backbone features for the next run (beside the Trainer's "
        "outputs, local pipeline roots): a retrain extracts only the images it has not seen, a "
        "sample of the others checked against the backbone",
    )
    seed: int = Field(
        42,
        ge=0,
        le=2**32 - 1,
        description="random seed of training (0 to 2**32 - 1, what NumPy's seeding takes)",
    )
    export_tflite: Literal["float16", "dynamic", "int8"] | None = Field(
        None,
        description="also write assets.extra/model.tflite (+ its input contract) in the pushed model: "
        "float16 | dynamic | int8 (int8 calibrated on train images); the Trainer fails when its top-1 "
        "agreement with the SavedModel on eval is below 0.98 (int8: 0.95); none = off",
    )
    max_image_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=1,
        description="images declaring more pixels (width x height, read from the header) fail "
        "before decoding, in Transform, training, evaluation and every serving signature",
    )

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        backbones.get(value)  # ValueError naming the choices
        return value

    @field_validator("export_tflite", mode="before")
    @classmethod
    def _tflite_none(cls, value: Any) -> Any:
        # "none" (a flag or YAML value) turns the export off, like `weights: none`. A YAML
        # boolean is Settings' to read (`no` is off, `yes` names the mix-up).
        if isinstance(value, str) and value.strip().lower() in ("none", "off", ""):
            return None
        if not isinstance(value, bool) and value not in (None, "float16", "dynamic", "int8"):
            raise ValueError(f"must be float16, dynamic, int8, or none or off (no export), got {value!r}")
        return value

    @field_validator("weights")
    @classmethod
    def _weights_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be 'imagenet', 'none' or a path to a weights file")
        return value.strip()

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfig:
        spec = backbones.get(self.backbone)
        if self.image_size is not None:
            if not spec.min_size <= self.image_size <= MAX_IMAGE_SIZE:
                raise ValueError(
                    f"image_size: {self.image_size} is out of range for {self.backbone} "
                    f"({spec.min_size}..{MAX_IMAGE_SIZE})"
                )
        if self.fine_tune_layers > 0 and self.fine_tune_epochs == 0:
            raise ValueError(
                f"fine_tune_epochs: must be >= 1 when fine_tune_layers > 0 (fine_tune_layers is {self.fine_tune_layers})"
            )
        if self.tune_trials > 0 and not self.feature_cache:
            raise ValueError("tune_trials: --tune trains heads on cached features; it needs feature_cache on")
        if self.tune_trials > 0 and self.augment:
            raise ValueError(
                "tune_trials: --tune trains heads on cached features, which augmentation bypasses; "
                "turn augment off"
            )
        return self

    @property
    def weights_kind(self) -> str:
        """'imagenet', 'none' or 'file'."""
        w = self.weights.lower()
        return w if w in (WEIGHTS_IMAGENET, WEIGHTS_NONE) else "file"

    def effective_image_size(self) -> int:
        """The configured size, or the backbone's default input size."""
        return self.image_size or backbones.get(self.backbone).default_size
