"""TF Serving's model server config (`--model_config_file`, HandleReloadConfigRequest), read and
checked as TF Serving 2.16 checks it, for `imgpipe serve --model-config-file` and the deploy checks.

The file is a text `tensorflow.serving.ModelServerConfig` (serving/deploy/models.config is one):
a `model_config_list` of models, each a `name`, a `base_path` of integer version directories,
`model_platform: "tensorflow"`, a `model_version_policy` (`latest { num_versions }`, the default
with 1; `all {}`; `specific { versions: ... }`) and `version_labels` (a label a client can put in
`model_spec.version_label` instead of a version number). A config TF Serving refuses is refused
here with its reason (a model listed twice, a relative base path, no platform, a config that is
not a model_config_list); the messages begin with TF Serving's words. No TensorFlow import: the
protos come from the tensorflow-serving-api wheel.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from serving.errors import ServingError

log = logging.getLogger(__name__)

TENSORFLOW_PLATFORM = "tensorflow"
# TF Serving's answer (INVALID_ARGUMENT) to a HandleReloadConfigRequest whose config is not a
# model_config_list, an empty one included.
RELOAD_TYPE_REFUSED = "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is currently supported"


class ModelConfigError(ServingError):
    """A model server config TF Serving would refuse; `code` is the status its reload answers."""

    code = grpc.StatusCode.INVALID_ARGUMENT


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Which of a base path's versions are served: TF Serving's ServableVersionPolicy."""

    kind: str = "latest"  # "latest" | "all" | "specific"
    num_versions: int = 1  # latest: the newest N
    versions: tuple[int, ...] = ()  # specific: these, where they are on disk

    def aspired(self, on_disk: Iterable[int]) -> list[int]:
        """The versions to serve of those on disk, newest first."""
        newest_first = sorted(set(on_disk), reverse=True)
        if self.kind == "all":
            return newest_first
        if self.kind == "specific":
            return [v for v in newest_first if v in self.versions]
        return newest_first[: self.num_versions]

    def describe(self) -> str:
        if self.kind == "all":
            return "all versions"
        if self.kind == "specific":
            return f"versions {', '.join(map(str, sorted(self.versions))) or '(none)'}"
        return "the newest version" if self.num_versions == 1 else f"the newest {self.num_versions} versions"


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One model of the config: its name, base path, version policy and version labels."""

    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy()
    labels: tuple[tuple[str, int], ...] = ()  # (label, version), sorted by label

    @property
    def label_map(self) -> dict[str, int]:
        return dict(self.labels)


def _absolute_or_uri(path: str) -> bool:
    """TF Serving's test: a base path must be absolute or a URI with a scheme (gs://, s3://)."""
    return path.startswith("/") or bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path))


def _policy(config: Any) -> VersionPolicy:
    choice = config.model_version_policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        versions = tuple(sorted(set(config.model_version_policy.specific.versions)))
        if not versions:
            # TF Serving logs "No specific versions requested" and serves none of the model.
            log.warning(
                "model %r: its specific version policy lists no versions: none is served", config.name
            )
        return VersionPolicy("specific", versions=versions)
    # num_versions 0 (unset) is TF Serving's default, 1.
    return VersionPolicy("latest", num_versions=max(1, config.model_version_policy.latest.num_versions))


def entries_from_proto(proto: Any) -> tuple[ModelEntry, ...] | None:
    """The models of a ModelServerConfig proto, checked as TF Serving checks them; None for an
    empty config (no model_config_list: TF Serving takes no action for it). ModelConfigError names
    what is wrong."""
    choice = proto.WhichOneof("config")
    if choice is None:
        return None
    if choice != "model_config_list":
        raise ModelConfigError(
            f"a {choice} is not served: only a model_config_list (TF Serving serves other configs "
            "only through code linked into its server)"
        )
    from tensorflow_serving.config import model_server_config_pb2

    entries: list[ModelEntry] = []
    seen: set[str] = set()
    for config in proto.model_config_list.config:
        if config.name in seen:
            raise ModelConfigError(f"Illegal to list model {config.name} multiple times in config list")
        seen.add(config.name)
        if not config.name:
            raise ModelConfigError(
                f"a model in the config list has no name (base_path {config.base_path!r}): a client "
                "names the model it asks for in model_spec.name"
            )
        if not _absolute_or_uri(config.base_path):
            raise ModelConfigError(
                f"Expected model {config.name} to have an absolute path or URI; got "
                f"base_path()={config.base_path}"
            )
        platform = config.model_platform
        if config.model_type != model_server_config_pb2.MODEL_TYPE_UNSPECIFIED:
            if platform:
                raise ModelConfigError(
                    "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                    f"ModelServerConfig::model_platform, model name is {config.name}"
                )
            if config.model_type != model_server_config_pb2.TENSORFLOW:
                raise ModelConfigError(
                    f"ModelServerConfig::model_type choice {config.model_type} not supported."
                )
            platform = TENSORFLOW_PLATFORM
        if not platform:
            raise ModelConfigError(
                "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                f"ModelServerConfig::model_platform, model name is {config.name}"
            )
        if platform != TENSORFLOW_PLATFORM:
            raise ModelConfigError(
                f"model {config.name}: model_platform {platform!r} is not one this server serves "
                f"(it serves {TENSORFLOW_PLATFORM!r} SavedModels, as the Pusher writes them)"
            )
        if config.HasField("logging_config"):
            log.warning(
                "model %r: logging_config is not read by this server (it logs requests with "
                "`imgpipe serve --log-requests DIR`)",
                config.name,
            )
        entries.append(
            ModelEntry(
                name=config.name,
                base_path=config.base_path,
                policy=_policy(config),
                labels=tuple(sorted(config.version_labels.items())),
            )
        )
    return tuple(entries)


def parse_model_config(text: str, source: str = "model config") -> tuple[ModelEntry, ...] | None:
    """The models of a text ModelServerConfig; ModelConfigError naming `source` and the problem."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    try:
        proto = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as e:
        raise ModelConfigError(f"{source} is not a TF Serving ModelServerConfig text proto: {e}") from None
    try:
        return entries_from_proto(proto)
    except ModelConfigError as e:
        raise ModelConfigError(f"{source}: {e}", e.code) from None


def read_model_config(path: str) -> tuple[ModelEntry, ...] | None:
    """The models of the config file `path` (TF Serving's --model_config_file)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ModelConfigError(f"cannot read the model config file {path}: {e}") from None
    return parse_model_config(text, f"the model config file {path}")


def single_model(name: str, base_path: str, num_versions: int = 1) -> tuple[ModelEntry, ...]:
    """The config of `--model-name NAME --model-base-path DIR` (TF Serving's flags of the same
    meaning): one model, its newest `num_versions` versions."""
    return (ModelEntry(name, base_path, VersionPolicy("latest", num_versions=num_versions)),)


def label_problems(
    entries: Iterable[ModelEntry],
    available: Mapping[str, Iterable[int]],
    current: Mapping[str, Mapping[str, int]],
    allow_unavailable: bool = False,
) -> str | None:
    """TF Serving's refusal of a label on a version not available for inference, or None.

    `available`: the loaded versions of each model; `current`: the labels in force. With
    `allow_unavailable` (TF Serving's --allow_version_labels_for_unavailable_models) a new label,
    or one left on its version, may name a version not loaded yet; a label moved to another
    version must still name a loaded one, so clients never follow it to a version that cannot
    answer."""
    for entry in entries:
        loaded = set(available.get(entry.name, ()))
        for label, version in entry.labels:
            moved = current.get(entry.name, {}).get(label, version) != version
            if version not in loaded and (moved or not allow_unavailable):
                return (
                    f"Request to assign label to version {version} of model {entry.name}, which is "
                    "not currently available for inference"
                )
    return None
