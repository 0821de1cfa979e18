"""Command-line flags derived from the run's config schema (pipeline/config.py).

Every leaf of the PipelineConfig tree becomes a flag: `--field-name` (or its
`flag` extra), help from the field's description and default, one argument
group per section. Values are read as text and checked by the schema itself,
so a flag and a YAML key are validated the same way (exit 2 naming the field).
Booleans get --x / --no-x; tuples are repeatable.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, get_origin

from pipeline.config import ConfigError, PipelineConfig, leaves, read_config_file
from trainer.config import Settings, field_extra

log = logging.getLogger(__name__)

_GROUP_TITLES = {
    None: "data and locations",
    "training": "model and training",
    "gate": "gate",
    "beam": "beam",
    "resources": "Trainer machine on Kubeflow / Vertex AI (imgpipe compile)",
    "prepush": "pre-push validation",
}


def whole_number(low: int, high: int | None, what: str) -> Callable[[str], int]:
    """An argparse type: an integer in low..high (no upper limit when None); else the usage
    error "must be <what>, got '<text>'"."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


_IMAGE_REFERENCE = re.compile(
    r"(?:[A-Za-z0-9.-]+(?::\d+)?/)?"  # a registry host (gcr.io, localhost:5000), or the first path part
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"  # the repository
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"  # :tag
    r"(?:@sha256:[a-f0-9]{64})?"  # @digest
)


def container_image(text: str) -> str:
    """An argparse type: a container image reference as Docker and Kubernetes read it
    (REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST], the repository in lower case)."""
    if not _IMAGE_REFERENCE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"not a container image reference (REGISTRY/REPOSITORY[:TAG], lower-case repository, "
            f"no spaces), got {text!r}"
        )
    return text


# The name resolvers gRPC's C core knows (a target "SCHEME://..."); any other (http://, grpc://)
# failed at the first call with "Misformatted domain name", exit 1.
_GRPC_SCHEMES = ("dns", "unix", "unix-abstract", "ipv4", "ipv6", "vsock", "xds", "google-c2p")


def host_port(text: str) -> str:
    """An argparse type: a gRPC target HOST:PORT ([IPV6]:PORT) with a port 1..65535, or a gRPC
    URI kept as written (dns:///host:port, unix:/path, ipv4:...). gRPC itself would take a port
    over 65535 modulo 65536 and a missing one as 443, and say only "connection refused"."""
    scheme, sep, _ = text.partition("://")
    if sep and scheme not in _GRPC_SCHEMES:
        raise argparse.ArgumentTypeError(
            f"{scheme}:// is no gRPC target: give HOST:PORT (e.g. localhost:8500) or a gRPC URI "
            f"(dns:///host:port, unix:///path), got {text!r}"
        )
    if sep or text.startswith(tuple(f"{s}:" for s in _GRPC_SCHEMES)):  # unix:path, ipv4:addr:port, ...
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host or host in ("[", "[]"):
        raise argparse.ArgumentTypeError(f"must be HOST:PORT (e.g. localhost:8500), got {text!r}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"port must be a number 1..65535, got {port!r} in {text!r}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise argparse.ArgumentTypeError(f"an IPv6 address goes in brackets ([::1]:8500), got {text!r}")
    return text


def real_number(ok: Callable[[float], bool], what: str) -> Callable[[str], float]:
    """An argparse type: a number for which `ok` holds (NaN and infinities never do); else the
    usage error "must be <what>, got '<text>'"."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


positive_number = real_number(lambda v: v > 0, "a positive number")
open_fraction = real_number(lambda v: 0 < v < 1, "a number between 0 and 1 (both excluded)")
non_negative_number = real_number(lambda v: v >= 0, "a number >= 0")
fraction = real_number(lambda v: 0 <= v <= 1, "a number from 0 to 1")


def flag_name(model: type[Settings], name: str) -> str:
    return field_extra(model, name, "flag") or "--" + name.replace("_", "-")


def _help(model: type[Settings], name: str) -> str:
    info = model.model_fields[name]
    text = info.description or ""
    default = info.get_default(call_default_factory=True)
    if default not in (None, "", ()):
        shown = "on" if default is True else "off" if default is False else default
        text += f" (default {shown})"
    return text.replace("%", "%%")


def add_config_flags(parser: argparse.ArgumentParser, unlisted: Collection[str] = ()) -> None:
    """One flag per config leaf, grouped by section; unset flags stay None (the file or default wins).

    `unlisted`: fields that do not apply to the command (it refuses or ignores them by name): their
    flags are parsed but left out of its help, and a section left empty gets no heading.
    """
    groups: dict[str | None, argparse._ArgumentGroup] = {}
    for section, name, model in leaves():
        if field_extra(model, name, "cli", True) is False:
            continue
        listed = name not in unlisted
        group = groups.get(section) if listed else parser
        if group is None:
            group = groups[section] = parser.add_argument_group(_GROUP_TITLES.get(section, section))
        annotation = model.model_fields[name].annotation
        help_text = _help(model, name) if listed else argparse.SUPPRESS
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(annotation) is tuple:
            kwargs.update(action="append", metavar="ARG")
        else:
            kwargs["metavar"] = name.upper()
        group.add_argument(flag_name(model, name), **kwargs)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config leaves given on the command line (flat names)."""
    return {name: getattr(args, name) for _, name, _ in leaves() if getattr(args, name, None) is not None}


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Defaults, then `--config FILE`, then flags; ConfigError naming the field when invalid,
    and the flag too when the value came from one ("--min-accuracy (min_accuracy): ...")."""
    given = overrides(args)
    try:
        if getattr(args, "config", None):
            config = PipelineConfig.from_yaml(args.config, given)
            _say_what_flags_override(args.config, given, config)
            return config
        return PipelineConfig.from_dict(given)
    except ConfigError as e:
        flags = {name: flag_name(model, name) for _, name, model in leaves() if name in given}
        raise ConfigError(naming_flags(str(e), flags)) from None


def _say_what_flags_override(path: str, given: Mapping[str, Any], config: PipelineConfig) -> None:
    """Log each flag that replaces a value the config file sets, so a run's log shows which
    value it used ("--epochs 30 replaces epochs: 10 of prod.yaml"): a value the file sets is
    replaced whether or not it is the default, and a bad one the flag replaces is said too."""
    if not given:
        return
    in_file = _file_values(path)
    for section, name, model in leaves():
        if name not in given or name not in in_file:
            continue
        now = getattr(getattr(config, section) if section else config, name)
        was = _as_validated(section, name, in_file[name])
        if was != now and not _same_path(was, now):
            flag = flag_name(model, name)
            if isinstance(now, bool):
                shown = flag if now else f"--no-{flag.removeprefix('--')}"
            else:
                shown = f"{flag} {_short(given[name])}"
            log.info("%s replaces %s: %s of %s", shown, name, _short(in_file[name]), path)


def _as_validated(section: str | None, name: str, value: Any) -> Any:
    """A file's value of one setting as the config validates it (the string "1e-3" as 0.001), each
    setting on its own, so another bad value in the file does not leave this one raw; the value as
    written when it is not valid alone."""
    try:
        checked = PipelineConfig().replace(**{name: value})
    except (ConfigError, TypeError, ValueError):
        return value
    return getattr(getattr(checked, section) if section else checked, name)


def _file_values(path: str) -> dict[str, Any]:
    """{leaf name: value as written} of what the config file sets, at the top level or under its
    section ({} when it cannot be read: its errors are named elsewhere)."""
    try:
        values = read_config_file(path)
    except ConfigError:
        return {}
    found: dict[str, Any] = {}
    for section, name, _ in leaves():
        inner = values.get(section) if section else None
        if isinstance(inner, dict) and name in inner:
            found[name] = inner[name]
        elif name in values:
            found[name] = values[name]
    return found


def _same_path(a: Any, b: Any) -> bool:
    """Whether two path settings name one file (a file's relative path and a flag's absolute one)."""
    if not (isinstance(a, str) and isinstance(b, str)) or not a or not b or "://" in a + b:
        return False
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def _short(value: Any, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def naming_flags(message: str, flags: Mapping[str, str]) -> str:
    """A ConfigError's `message` (its problems joined by "; ", each led by "field: ") with each
    field in `flags` shown as the flag that set it: "--min-accuracy (min_accuracy): ...". A user
    who typed the flag finds it; the field's name stays for the config file."""
    parts = []
    for part in message.split("; "):
        field, sep, rest = part.partition(": ")
        parts.append(f"{flags[field]} ({field}): {rest}" if sep and field in flags else part)
    return "; ".join(parts)


__all__ = ["add_config_flags", "config_from_args", "flag_name", "naming_flags", "overrides"]
