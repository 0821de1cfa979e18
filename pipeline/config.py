"""The run's config tree: one typed, validated schema for every setting of a pipeline run.

    PipelineConfig                 where data, artifacts and pushed models live
      training: TrainingConfig     trainer/config.py   (the Trainer parses it strictly)
      gate:     GateConfig         components/gate.py  (the Evaluator's blessing gate)
      prepush:  PrepushConfig      components/prepush.py (pre-push validation in a model server)
      beam:     BeamConfig         pipeline/beam.py    (the runner of the data work)
      resources: ResourcesConfig   pipeline/resources.py (the Trainer's machine on Kubeflow/Vertex)

`metadata` says where ML Metadata lives (pipeline/metadata_url.py): empty for
SQLite in the home, or a postgresql:// URL without a password.

Each section sits beside the code that reads it; this module nests them. The
CLI flags (`imgpipe run --help`), the YAML keys, the Kubeflow runtime
parameters and the Trainer's custom_config are all derived from these fields.

Values come from defaults, then a YAML file, then command-line flags; nothing
here reads the environment. A YAML file may nest keys under their section
(`training: {epochs: 3}`) or give them flat (`epochs: 3`): every leaf name is
unique in the tree. Invalid values raise ConfigError naming the field. A config
is saved beside every run (`save()`), so a run can be reproduced from its record.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import reprlib
import unicodedata
from collections.abc import Hashable, Iterator, Mapping
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from components.gate import GateConfig
from components.prepush import PrepushConfig
from pipeline.beam import BeamConfig
from pipeline.metadata_url import PostgresTarget, parse_metadata_url
from pipeline.resources import ResourcesConfig
from trainer.config import WEIGHTS_IMAGENET, WEIGHTS_NONE, ConfigError, Settings, TrainingConfig, field_extra

__all__ = ["ConfigError", "PipelineConfig", "WEIGHTS_IMAGENET", "WEIGHTS_NONE"]

# Section name -> its model, in the order `--help` and saved files show them.
SECTIONS: dict[str, type[Settings]] = {
    "training": TrainingConfig,
    "gate": GateConfig,
    "prepush": PrepushConfig,
    "beam": BeamConfig,
    "resources": ResourcesConfig,
}


MAX_PIPELINE_NAME = 63
MAX_CV_FOLDS = 50
MAX_MODEL_NAME_BYTES = 128


# Bidirectional controls, the zero-width space, the word joiner and the byte order mark.
_UNTYPABLE = frozenset(
    "\u061c\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2066\u2067\u2068\u2069\ufeff"
)


def _glob_characters(value: str) -> list[str]:
    """The characters glob reads as a pattern in `value`: '*', '?', and a '[' a ']' follows (a
    character set; an unmatched '[' is a literal)."""
    start = value.find("[")
    bracket = start >= 0 and "]" in value[start + 2 :]
    return sorted({c for c in value if c in "*?"} | ({"["} if bracket else set()))


def _name(value: str) -> str:
    # A name is a folder of the serving dir and the pipeline root: one path component.
    if not value or value in (".", "..") or any(c in value for c in "/\\\0"):
        raise ValueError(
            f"must be a name usable as one folder (not '.' or '..', no '/', '\\' or NUL), got {value!r}"
        )
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value) or value != value.strip():
        raise ValueError(f"must not hold control characters or start or end with whitespace, got {value!r}")
    hidden = [c for c in value if c in _UNTYPABLE]
    if hidden:
        # A client types the name it sees: one holding a bidirectional control (it prints reordered,
        # as another name) or a zero-width space is a name nobody types. (A zero-width non-joiner,
        # typed in Persian, and an emoji's joiner are allowed.)
        raise ValueError(
            f"must not hold an invisible control character (U+{ord(hidden[0]):04X}), got {value!r}"
        )
    return value


def _encoding_hint(path: str) -> str:
    """': it is UTF-16 (...)' when the file starts with a UTF-16 or UTF-32 byte-order mark (an
    editor's "Unicode" save, Windows Notepad's among them); '' otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return ""
    for mark, name in (
        (b"\xff\xfe\x00\x00", "UTF-32"),
        (b"\x00\x00\xfe\xff", "UTF-32"),
        (b"\xff\xfe", "UTF-16"),
        (b"\xfe\xff", "UTF-16"),
    ):
        if head.startswith(mark):
            return f': it is {name} (an editor\'s "Unicode" encoding)'
    return ""


class PipelineConfig(Settings):
    """Everything a pipeline run needs. Paths are stored as given; use `resolved()`."""

    data_dir: str = Field(
        "",
        description="TFRecord dir with train/ and eval/ (from `imgpipe ingest`)",
        json_schema_extra={"flag": "--data"},
    )
    home: str = Field(
        "imgpipe_home", description="pipeline home: artifacts, ML Metadata (SQLite) and run records"
    )
    metadata: str = Field(
        "",
        description="ML Metadata store: empty for SQLite at HOME/metadata.sqlite, or "
        "postgresql://USER@HOST:PORT/DB (no password in the URL: PGPASSWORD or --metadata-password-file)",
    )
    metadata_password_file: str = Field(
        "",
        description="libpq password file (lines HOST:PORT:DB:USER:PASSWORD, mode 0600) for a "
        "postgresql:// metadata store (default: PGPASSWORD, PGPASSFILE or ~/.pgpass)",
    )
    pipeline_name: str = Field("imgpipe", description="pipeline name in ML Metadata")
    model_name: str = Field("imgpipe", description="TF Serving model name")
    serving_dir: str = Field(
        "serving_models",
        description="TF Serving model base dir root: pushes go to SERVING_DIR/MODEL_NAME/<version>",
    )
    adopt_serving_dir: bool = Field(
        False,
        description="push to SERVING_DIR/MODEL_NAME although no run of this home pushed there before "
        "(its served version another home's, or put there by hand): this home takes it over",
    )
    score_data: str = Field(
        "",
        description="TFRecord dir of unlabelled tf.Examples (an `image` feature) that TFX's "
        "BulkInferrer scores with the model once the gate blesses it (empty: no scoring)",
    )
    replicas: int | None = Field(
        None, ge=1, description="testing aid: split the CPU into N logical devices for MirroredStrategy"
    )
    enable_cache: bool = Field(
        True, description="reuse cached component outputs", json_schema_extra={"flag": "--cache"}
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    prepush: PrepushConfig = Field(default_factory=PrepushConfig)
    beam: BeamConfig = Field(default_factory=BeamConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

    # ---------------------------------------------------------------------- building
    @model_validator(mode="before")
    @classmethod
    def _route_flat_keys(cls, data: Any) -> Any:
        """Move flat leaf keys (`epochs: 3`) into their section (`training: {epochs: 3}`)."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        for section, model in SECTIONS.items():
            flat = {k: data.pop(k) for k in list(data) if k in model.model_fields}
            if not flat:
                continue
            nested = data.get(section)
            if isinstance(nested, Settings):
                nested = nested.model_dump()
            elif nested is None:
                nested = {}
            elif not isinstance(nested, Mapping):
                continue  # pydantic reports the section's own type error
            both = sorted(set(flat) & set(nested))
            if both:
                raise ValueError(f"{', '.join(both)}: given both flat and under '{section}:'")
            data[section] = {**nested, **flat}
        return data

    @field_validator("pipeline_name", "model_name")
    @classmethod
    def _names(cls, value: str) -> str:
        return _name(value)

    @field_validator("model_name")
    @classmethod
    def _not_an_option(cls, value: str) -> str:
        # Pre-push validation starts a model server with it: a name read as an option there was
        # blessed by every run and never pushed.
        if value.startswith("-"):
            raise ValueError(f"must not start with '-' (command lines read it as an option), got {value!r}")
        return value

    @field_validator("home", "serving_dir")
    @classmethod
    def _a_directory(cls, value: str) -> str:
        if not value.strip():  # os.path would take it as the current directory, silently
            raise ValueError("must not be empty: give a directory (./NAME for one in the current directory)")
        return value

    @field_validator("pipeline_name")
    @classmethod
    def _pipeline_name_length(cls, value: str) -> str:
        if len(value) > MAX_PIPELINE_NAME:  # TFX's limit (Argo's workflow names), on every runner
            raise ValueError(f"must be at most {MAX_PIPELINE_NAME} characters, got {len(value)}")
        return value

    @field_validator("model_name")
    @classmethod
    def _model_name_length(cls, value: str) -> str:
        # A folder of the serving dir, and the start of the names staging and pre-push give
        # their copies: room is kept under the 255 bytes a file name may have.
        if len(value.encode("utf-8")) > MAX_MODEL_NAME_BYTES:
            raise ValueError(
                f"must be at most {MAX_MODEL_NAME_BYTES} bytes in UTF-8, got {len(value.encode('utf-8'))}"
            )
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_url(cls, value: str) -> str:
        value = value.strip()
        if value:
            parse_metadata_url(value)  # ValueError naming the part; never echoes the URL
        return value

    @model_validator(mode="after")
    def _password_file_needs_postgres(self) -> PipelineConfig:
        if self.metadata_password_file and not self.metadata:
            raise ValueError(
                "metadata_password_file: applies to a postgresql:// metadata store; "
                "the default (SQLite in the home) has no password"
            )
        return self

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PipelineConfig:
        """Build from a (flat or nested) mapping; ConfigError naming the field when invalid."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as e:
            raise ConfigError(describe(e)) from None

    @classmethod
    def from_yaml(cls, path: str, overrides: Mapping[str, Any] | None = None) -> PipelineConfig:
        """The file's values, then `overrides` (flat leaf names, e.g. from flags) on top."""
        values = read_config_file(path)
        given = {k for k, v in (overrides or {}).items() if v is not None}
        try:
            base = cls.model_validate(values)
        except ValidationError as e:
            # Flags override the file: a bad value in the file that a flag replaces is not an
            # error (it was, and was blamed on the flag).
            replaced = {str(err["loc"][-1]) for err in e.errors() if err.get("loc")} & given
            if given:
                # A rule across settings (a password file needs a postgresql:// store; fine-tuning
                # layers need fine-tuning epochs): the file alone may break it where the file and
                # the flags together do not.
                try:
                    return cls.model_validate(merge(values, {k: overrides[k] for k in given}))
                except ValidationError:
                    pass  # the file's own error is the one to name
            if not replaced:
                raise ConfigError(f"{describe(e)} (in {path})") from None
            try:
                base = cls.model_validate(_without_keys(values, replaced))
            except ValidationError as again:
                raise ConfigError(f"{describe(again)} (in {path})") from None
        return base.replace(**(overrides or {}))

    def replace(self, **changes: Any) -> PipelineConfig:
        """A copy with `changes` (flat leaf names or whole sections) applied and validated.

        None values are ignored (unset command-line flags).
        """
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        return self.from_dict(merge(self.model_dump(), changes))

    # ---------------------------------------------------------------------- derived
    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.home, "pipelines", self.pipeline_name)

    @property
    def metadata_path(self) -> str:
        """The SQLite ML Metadata file (used when `metadata` is empty)."""
        return os.path.join(self.home, "metadata.sqlite")

    @property
    def metadata_target(self) -> PostgresTarget | None:
        """The PostgreSQL server of ML Metadata, or None for SQLite in the home."""
        return parse_metadata_url(self.metadata) if self.metadata else None

    @property
    def metadata_location(self) -> str:
        """Where ML Metadata lives, safe to log (the URL has no password)."""
        target = self.metadata_target
        return target.url if target else self.metadata_path

    @property
    def model_serving_dir(self) -> str:
        """TF Serving's model base path: versions are pushed below it as <version>/."""
        return os.path.join(self.serving_dir, self.model_name)

    def effective_image_size(self) -> int:
        return self.training.effective_image_size()

    def resolved(self) -> PipelineConfig:
        """Local paths made absolute (remote URIs such as gs:// are kept)."""

        def absolute(p: str) -> str:
            return p if (not p or "://" in p) else os.path.abspath(os.path.expanduser(p))

        changes: dict[str, Any] = {
            "data_dir": absolute(self.data_dir),
            "score_data": absolute(self.score_data),
            "home": absolute(self.home),
            "serving_dir": absolute(self.serving_dir),
            "metadata_password_file": absolute(self.metadata_password_file),
        }
        if self.training.weights_kind == "file":
            changes["weights"] = absolute(self.training.weights)
        if self.beam.temp_location:  # a local Beam temp dir: a scheduled run starts in HOME
            changes["temp_location"] = absolute(self.beam.temp_location)
        return self.replace(**changes)

    def _check_glob_characters(self) -> None:
        """TFX, Beam and TensorFlow find the files under these paths with glob patterns built on
        them (a split's shards, Beam's temporary files, a model's variables): a '*', '?' or '['
        in one is read as a pattern, and a run failed late with an error of Beam's."""
        for field, value, what in (
            ("home", self.home, "folder"),
            ("data_dir", self.data_dir, "folder"),
            ("score_data", self.score_data, "folder"),
            ("serving_dir", self.serving_dir, "folder"),
            ("pipeline_name", self.pipeline_name, "name"),
            ("model_name", self.model_name, "name"),
        ):
            found = _glob_characters(value)
            if found:
                fix = (
                    "give a path without it (a symbolic link to the folder will do)"
                    if what == "folder"
                    else "choose a name without it"
                )
                raise ConfigError(
                    f"{field}: {value} holds {' and '.join(repr(c) for c in found)}, which TFX and Beam "
                    f"read as a glob pattern in the paths they look up under it; {fix}"
                )

    def validate_paths(self, data_may_arrive: bool = False, remote_home: bool = False) -> PipelineConfig:
        """The checks that read the disk: data_dir has its splits, a weights file exists.

        Values were checked when the config was built; this is for a local run.
        Raises ConfigError naming the field; returns self for chaining. With
        `data_may_arrive` (a schedule set up before its first data lands), a data_dir
        that does not exist yet is not an error; one that exists must still hold its splits.
        `remote_home`: a home in a bucket is accepted (an Airflow DAG's, whose ML Metadata is on
        PostgreSQL: its artifacts go there); a local run's home must be a local directory.
        """
        if "://" in self.home and not remote_home:
            # os.path would make "gs:/bucket/..." a folder of the current directory: the run's
            # lock, SQLite and records there, its artifacts in the bucket.
            raise ConfigError(
                f"home: {self.home} is a remote URI; a local run's home (its lock, ML Metadata, run "
                "records and artifacts) is a local directory. A pipeline root in a bucket is "
                "`imgpipe compile`'s (Kubeflow Pipelines / Vertex AI)"
            )
        if not self.data_dir:
            raise ConfigError("data_dir: required (a TFRecord dir from `imgpipe ingest`)")
        self._check_glob_characters()
        if self.training.cv_folds > MAX_CV_FOLDS:
            # Checked as a run starts, not in the schema: configs recorded by earlier runs stay readable.
            raise ConfigError(
                f"cv_folds: at most {MAX_CV_FOLDS} folds, got {self.training.cv_folds} (cross-validation runs "
                "only when a class has fewer than 10 validation examples: a fold a handful of examples)"
            )
        weights = self.training.weights
        if self.training.weights_kind == "file" and "://" not in weights:
            if not os.path.isfile(weights):
                raise ConfigError(f"weights: not 'imagenet', 'none' or an existing file: {weights}")
            problem = _weights_file_problem(weights, self.training.backbone)
            if problem:
                raise ConfigError(f"weights: {weights} {problem}")
        if "://" not in self.data_dir and not (data_may_arrive and not os.path.lexists(self.data_dir)):
            if not os.path.isdir(self.data_dir):
                what = "is not a directory" if os.path.lexists(self.data_dir) else "does not exist"
                raise ConfigError(
                    f"data_dir: {self.data_dir} {what}: give the folder `imgpipe ingest --out` wrote "
                    "(train/ and eval/ TFRecords)"
                )
            for split in ("train", "eval"):
                if not os.path.isdir(os.path.join(self.data_dir, split)):
                    raise ConfigError(
                        f"data_dir: {self.data_dir} has no {split}/ subdirectory (run `imgpipe ingest` first)"
                    )
        if self.score_data and "://" not in self.score_data:
            entries = os.listdir(self.score_data) if os.path.isdir(self.score_data) else []
            if not any(os.path.isfile(os.path.join(self.score_data, e)) for e in entries):
                raise ConfigError(
                    f"score_data: {self.score_data} is not a directory holding TFRecord files "
                    "(tf.Examples with an `image` feature; BulkInferrer reads every file in it)"
                )
        if "://" not in self.home:
            check_writable_dir(
                "home", self.home, "the runs' lock, ML Metadata, artifacts and records go there"
            )
        if "://" not in self.serving_dir:
            check_writable_dir(
                "serving_dir", self.serving_dir, "the Pusher writes SERVING_DIR/MODEL_NAME/<version>"
            )
            check_writable_dir(
                "serving_dir",
                os.path.join(self.serving_dir, self.model_name),
                "the model's versions go there",
            )
        return self

    def dumps(self, path: str) -> str:
        """The config as the text `save(path)` writes: JSON for a .json path, else YAML."""
        values = self.to_dict()
        if path.endswith(".json"):
            return json.dumps(values, indent=2, sort_keys=True)
        return yaml.dump(values, Dumper=_Dumper, sort_keys=False)

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.dumps(path))


def _without_keys(values: dict, keys: set[str]) -> dict:
    """The file's values without `keys`, at the top level and inside each section."""
    return {
        k: (_without_keys(v, keys) if isinstance(v, dict) else v) for k, v in values.items() if k not in keys
    }


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last).

    Merge keys (`<<: *defaults`) work as in YAML: the mapping's own keys are checked for
    repeats, then the merged ones are added, the mapping's own winning over them.
    """

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        own = [pair for pair in node.value if pair[0].tag != "tag:yaml.org,2002:merge"]
        for key_node, _ in own:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # `? [a, b]`: a list or mapping as a key
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"a key must be a name, not a {key_node.id} (line {key_node.start_mark.line + 1})",
                    key_node.start_mark,
                )
            if not isinstance(key, str):  # `yes:` is true and `3:` is 3 in YAML: no config key
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key_node.value!r} (line {key_node.start_mark.line + 1}) reads as "
                    f"{type(key).__name__} {key!r} in YAML, not a name: quote it",
                    key_node.start_mark,
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice (line {seen[key] + 1} and line {key_node.start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# Numbers as YAML 1.2 reads them (its core schema), not 1.1 (PyYAML's): `epochs: 010` is 10, not
# octal 8, and `1:30` is text, not 90 in base 60 (a config error naming the key, not a number
# nobody wrote). 0o17 and 0x1f stay octal and hex; 1e-3 is a number, as 1.2 has it.
_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YAML12_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_UniqueKeyLoader.add_implicit_resolver(_INT, _YAML12_INT, list("-+0123456789"))
_UniqueKeyLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _yaml12_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if not _YAML12_INT.match(text):  # an explicit `!!int 0b11`: as PyYAML reads it
        return loader.construct_yaml_int(node)
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text)


_UniqueKeyLoader.add_constructor(_INT, _yaml12_int)


class _Dumper(yaml.SafeDumper):
    """YAML's safe dumper, quoting any text that YAML 1.1 (PyYAML's default) or the config loader's
    1.2 numbers would read as something else: a model named `1e3` is written '1e3' and read back
    as text, by either."""


for _first, _resolvers in _UniqueKeyLoader.yaml_implicit_resolvers.items():
    for _tag, _regexp in _resolvers:
        _Dumper.add_implicit_resolver(_tag, _regexp, [_first])

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _weights_file_problem(path: str, backbone: str) -> str | None:
    """Why `path` cannot be `backbone`'s weights, read from the file's first bytes and the
    description `imgpipe pretrain-backbone` writes beside it (PATH.json); None when no reason
    is seen. The Trainer would otherwise find out after the data components have run."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            offset = 512  # HDF5 puts its signature at 0, 512, 1024, 2048, ... (after a user block)
            while head != _HDF5_SIGNATURE and offset < os.path.getsize(path):
                f.seek(offset)
                head, offset = f.read(8), offset * 2
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    if head != _HDF5_SIGNATURE:
        return "is not a Keras weights file (.h5: no HDF5 signature)"
    made_for = described_backbone(path)
    if made_for is not None and made_for != backbone:
        return f"holds {made_for} weights ({path}.json), not {backbone}'s: pass --backbone {made_for}"
    return None


def described_backbone(path: str) -> str | None:
    """The backbone that `imgpipe pretrain-backbone` recorded beside the weights file `path`
    (PATH.json), or None: no description (Keras's own files have none) or an unreadable one."""
    made_for = weights_description(path).get("backbone")
    return made_for if isinstance(made_for, str) else None


def weights_description(path: str) -> dict[str, Any]:
    """What `imgpipe pretrain-backbone` recorded beside the weights file `path` (PATH.json: its
    backbone, the file's sha256, ...), or {}: none, or unreadable."""
    try:
        with open(path + ".json", encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def folder_problem(path: str) -> tuple[str, str] | None:
    """Whether `path` can be a directory this process writes: None when it is one, or when it
    can be made (its nearest existing ancestor is a writable directory); else (that nearest
    existing path, "file" when it is not a directory or "unwritable")."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return existing, "file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return existing, "unwritable"
    return None


def check_writable_dir(field: str, path: str, why: str) -> None:
    """ConfigError naming `field` unless `path` is a directory this process can write, or one it
    can create (folder_problem)."""
    problem = folder_problem(path)
    if problem is None:
        return
    existing, kind = problem
    if kind == "file":
        what = "is a file" if existing == os.path.abspath(path) else f"is under {existing}, which is a file"
        raise ConfigError(f"{field}: {path} {what}, not a directory ({why})")
    raise ConfigError(f"{field}: {existing} is not writable by this user ({why})")


# -------------------------------------------------------------------------- the tree
def leaves(model: type[Settings] = PipelineConfig) -> Iterator[tuple[str | None, str, type[Settings]]]:
    """(section or None, field name, owning model) for every leaf of the tree, in order."""
    for name in model.model_fields:
        if name in SECTIONS:
            continue
        yield None, name, model
    for section, sub in SECTIONS.items():
        for name in sub.model_fields:
            yield section, name, sub


def read_config_file(path: str) -> dict[str, Any]:
    """A config file's keys and values as written (YAML or JSON; a key given twice refused; an
    empty section as {}; the file's own `x-` keys left out); ConfigError naming what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.load(f, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {path} is not UTF-8 text{_encoding_hint(path)} ({e}): save it as UTF-8"
        ) from e
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys to values (YAML or JSON; "
            f"got {type(values).__name__})"
        )
    # A section whose keys are all commented out (`training:` alone) is YAML's null: empty.
    values = {k: ({} if v is None and k in SECTIONS else v) for k, v in values.items()}
    # Top-level keys starting with "x-" are the file's own (anchors to merge elsewhere, as
    # Compose files use them): not settings.
    return {k: v for k, v in values.items() if not (isinstance(k, str) and k.startswith("x-"))}


def merge(values: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Nested `values` with flat or nested `changes` applied (changes win)."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in values.items()}
    for key, value in changes.items():
        section = (
            key if key in SECTIONS else next((s for s, m in SECTIONS.items() if key in m.model_fields), None)
        )
        if section is None:
            out[key] = value
        elif not isinstance(out.get(section, {}), Mapping):
            continue  # the file's section is no mapping: left for validation to name
        elif key == section:
            update = value.model_dump() if isinstance(value, Settings) else dict(value)
            out[section] = {**out.get(section, {}), **update}
        else:
            out.setdefault(section, {})[key] = value
    return out


def describe(error: ValidationError) -> str:
    """One line per problem, each starting with the leaf field (or section) it is about."""
    lines = []
    for problem in error.errors():
        loc = [str(p) for p in problem["loc"] if not isinstance(p, int)]
        msg = problem["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if problem["type"] == "extra_forbidden":
            home = {name: section for section, name, _ in leaves()}
            key, where = loc[-1], loc[-2] if len(loc) > 1 else None
            if key in home:  # a known key in another section than its own
                own = f"under {home[key]}:" if home[key] else "at the top level"
                lines.append(
                    f"{where + ': ' if where else ''}{key!r} is not a key of "
                    f"{where + ':' if where else 'the top level'}; it goes {own} (or at the top level, "
                    "where every key may be given)"
                )
                continue
            if key in SECTIONS and where:  # a section inside a section: `training: {training: ...}`
                lines.append(f"{where}: {key!r} is a section of the top level, not a key inside {where}:")
                continue
            near = nearest_keys(str(key))
            hint = f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""
            lines.append(
                f"unknown config key {_shown(key)}{hint}; known keys: {', '.join(home)}; "
                f"sections: {', '.join(SECTIONS)}"
            )
            continue
        if loc and loc[-1] in SECTIONS and problem["type"] != "value_error":
            lines.append(f"{loc[-1]}: must be a mapping of its keys, got {_shown(problem.get('input'))}")
            continue
        field = loc[-1] if loc and loc[-1] not in SECTIONS else None
        if field is None or msg.startswith(f"{field}:"):
            lines.append(msg)  # a model-level check whose message already names its field
        elif problem["type"] == "value_error":
            lines.append(f"{field}: {msg}")  # imgpipe's own check: the message shows the value
        else:
            given = problem.get("input")
            quote = (
                f"; YAML reads {given!r} as a number: write it in quotes, '{given}'"
                if problem["type"] == "string_type"
                and isinstance(given, (int, float))
                and not isinstance(given, bool)
                else ""
            )
            lines.append(f"{field}: {msg} (got {_shown(given)}{quote})")
    shown = [line if len(line) <= MAX_PROBLEM_CHARS else _cut(line) for line in lines[:MAX_PROBLEMS]]
    if len(lines) > MAX_PROBLEMS:
        shown.append(f"and {len(lines) - MAX_PROBLEMS} more problems")
    return "; ".join(shown)


# An error names what was wrong, not all of it: a YAML alias can make a value of megabytes.
MAX_SHOWN_CHARS = 200
MAX_PROBLEM_CHARS = 2000
MAX_PROBLEMS = 10


# A container is shown a few levels and items deep: its whole repr can be exponential in the
# file's size (YAML aliases nested ten wide: 529 bytes made a value whose repr is 7 GB).
_CONTAINER_REPR = reprlib.Repr()
_CONTAINER_REPR.maxlevel = 3
_CONTAINER_REPR.maxstring = _CONTAINER_REPR.maxother = MAX_SHOWN_CHARS


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple | dict | set | frozenset):
        text = _CONTAINER_REPR.repr(value)
        size = f"a {type(value).__name__} of {len(value):,} items"
        return f"{text[:MAX_SHOWN_CHARS]}{'...' if len(text) > MAX_SHOWN_CHARS else ''} ({size})"
    text = repr(value)
    if len(text) <= MAX_SHOWN_CHARS:
        return text
    return f"{text[:MAX_SHOWN_CHARS]}... ({len(text):,} characters)"


def _cut(line: str) -> str:
    return f"{line[:MAX_PROBLEM_CHARS]}... ({len(line):,} characters)"


def nearest_keys(key: str) -> list[str]:
    """The config keys a misspelt `key` most likely meant: a flag's spelling (`batch-size`,
    `data`, `--cache`) gives its key; else the closest names (keys and sections) by spelling."""
    names = [name for _, name, _ in leaves()]
    spelled = key.strip().lstrip("-")
    for _, name, model in leaves():
        flag = (field_extra(model, name, "flag") or "--" + name.replace("_", "-")).lstrip("-")
        if spelled in (flag, flag.replace("-", "_")) or spelled.replace("-", "_") == name:
            return [name]
    return difflib.get_close_matches(spelled, [*names, *SECTIONS], n=3, cutoff=0.75)
