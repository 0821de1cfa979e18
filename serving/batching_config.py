"""TF Serving's batching parameters (`--enable_batching`, `--batching_parameters_file`), read as
TF Serving reads them, for `imgpipe serve` (serving/devserver/batching.py) and the deploy checks.

The file is a text `tensorflow.serving.BatchingParameters` (TF Serving's
servables/tensorflow/session_bundle_config.proto). The tensorflow-serving-api wheel does not ship
that proto, so its fields are declared here as TF Serving 2.16 declares them: a file TF Serving
would refuse (a misspelt field, a wrong type) is refused here too, naming the problem. Unset
fields take TF Serving's defaults (its batch scheduler's queue options).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

from serving.errors import ServerStartError

# TF Serving's defaults for fields a parameters file leaves unset (SharedBatchScheduler's
# QueueOptions; the batch threads: one per core).
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_BATCH_TIMEOUT_MICROS = 0
DEFAULT_MAX_ENQUEUED_BATCHES = 10


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """How requests are merged into one model call (the fields imgpipe's server acts on)."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE  # images per batch, and per request
    batch_timeout_micros: int = DEFAULT_BATCH_TIMEOUT_MICROS  # how long a partial batch waits
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES  # beyond: UNAVAILABLE, queue full
    num_batch_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()  # a batch is padded up to the next of these
    pad_variable_length_inputs: bool = False

    def problems(self) -> list[str]:
        """What TF Serving would refuse to start with, in words naming the field."""
        out = []
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            out.append(f"batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}")
        sizes = self.allowed_batch_sizes
        if sizes and (list(sizes) != sorted(set(sizes)) or sizes[0] < 1):
            out.append(f"allowed_batch_sizes must be positive and increasing, got {list(sizes)}")
        elif sizes and sizes[-1] != self.max_batch_size:
            out.append(
                f"the last entry of allowed_batch_sizes must match max_batch_size; last entry was "
                f"{sizes[-1]}, max_batch_size is {self.max_batch_size}"
            )
        return out


_SCALARS = {"bool": "TYPE_BOOL", "string": "TYPE_STRING", "int64": "TYPE_INT64"}


def transcribed_messages(
    file_name: str, messages: Mapping[str, Sequence[tuple[str, int, str]]]
) -> dict[str, type]:
    """Protobuf classes of package tensorflow.serving declared here, for TF Serving's config
    protos the tensorflow-serving-api wheel does not ship. `messages`: each message's fields as
    (name, number, type), type a scalar ("bool", "string", "int64", "repeated int64") or a
    message's full name (".google.protobuf.Int64Value", or one declared before it)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    fdp = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
    f = descriptor_pb2.FileDescriptorProto(
        name=file_name,
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    for message_name, fields in messages.items():
        message = f.message_type.add(name=message_name)
        for name, number, kind in fields:
            repeated, _, scalar = kind.rpartition(" ")
            field = message.field.add(
                name=name, number=number, label=fdp.LABEL_REPEATED if repeated else fdp.LABEL_OPTIONAL
            )
            if scalar in _SCALARS:
                field.type = getattr(fdp, _SCALARS[scalar])
            else:
                field.type, field.type_name = fdp.TYPE_MESSAGE, scalar
    pool.Add(f)
    factory = message_factory.MessageFactory(pool)
    return {
        name: factory.GetPrototype(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
        for name in messages
    }


@functools.lru_cache(maxsize=1)
def batching_parameters_message() -> type:
    """The BatchingParameters protobuf class: TF Serving's own when installed, else this
    transcription of its fields (1-9)."""
    try:
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2

        return session_bundle_config_pb2.BatchingParameters
    except ImportError:
        pass
    int64, text, flag = (
        ".google.protobuf.Int64Value",
        ".google.protobuf.StringValue",
        ".google.protobuf.BoolValue",
    )
    fields = [
        ("max_batch_size", 1, int64),
        ("batch_timeout_micros", 2, int64),
        ("max_enqueued_batches", 3, int64),
        ("num_batch_threads", 4, int64),
        ("thread_pool_name", 5, text),
        ("allowed_batch_sizes", 6, "repeated int64"),
        ("pad_variable_length_inputs", 7, "bool"),
        ("enable_large_batch_splitting", 8, flag),
        ("max_execution_batch_size", 9, int64),
    ]
    return transcribed_messages(
        "imgpipe/tf_serving_batching_parameters.proto", {"BatchingParameters": fields}
    )["BatchingParameters"]


def parse_batching_parameters(text: str, source: str = "batching parameters") -> BatchingParameters:
    """BatchingParameters from a text proto; ServerStartError naming `source` and the problem."""
    from google.protobuf import text_format

    try:
        proto = text_format.Parse(text, batching_parameters_message()())
    except text_format.ParseError as e:
        raise ServerStartError(f"{source} is not a TF Serving BatchingParameters text proto: {e}") from None
    return _from_proto(proto, source)


def read_batching_parameters(path: str | None) -> BatchingParameters:
    """The parameters of `path` (TF Serving's --batching_parameters_file), or TF Serving's
    defaults when None."""
    if not path:
        return BatchingParameters()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ServerStartError(f"cannot read the batching parameters file {path}: {e}") from None
    return parse_batching_parameters(text, f"the batching parameters file {path}")


def _from_proto(proto: Any, source: str) -> BatchingParameters:
    if proto.HasField("enable_large_batch_splitting") and proto.enable_large_batch_splitting.value:
        raise ServerStartError(
            f"{source}: enable_large_batch_splitting is not implemented by imgpipe's server (TF Serving "
            "splits a request across batches with it); remove it to run this server"
        )
    defaults = BatchingParameters()

    def value(name: str) -> int:
        return getattr(proto, name).value if proto.HasField(name) else getattr(defaults, name)

    params = BatchingParameters(
        max_batch_size=value("max_batch_size"),
        batch_timeout_micros=value("batch_timeout_micros"),
        max_enqueued_batches=value("max_enqueued_batches"),
        num_batch_threads=value("num_batch_threads"),
        allowed_batch_sizes=tuple(proto.allowed_batch_sizes),
        pad_variable_length_inputs=proto.pad_variable_length_inputs,
    )
    problems = params.problems()
    if problems:
        raise ServerStartError(f"{source}: {'; '.join(problems)}")
    return params
