"""Settings of the dev server (serving/devserver), typed and validated, without heavy imports.

`imgpipe serve` builds a ServerConfig from its flags (imgpipe/cli/serving.py);
TensorFlow loads only inside `validate()`, so `imgpipe --help` stays quick.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import socket
from typing import Any

from serving.batching_config import BatchingParameters, read_batching_parameters
from serving.errors import ServerStartError
from serving.model_config import ModelConfigError, ModelEntry, read_model_config, single_model

# gRPC's message size options are 32-bit signed byte counts: 2047 MiB is the most they hold.
MAX_MESSAGE_MB = 2047

# Per image, read from its header before decoding: 40 MP is a 7300 x 5500 photo (a large
# camera's full frame); decoded to RGB it is 120 MB, to float32 480 MB.
DEFAULT_MAX_PIXELS = 40_000_000

# The max_batch_size of serving/deploy/batching_parameters.txt: TF Serving started with it refuses
# a request of more images ("Task size 64 is larger than maximum input batch size 32"), and the
# dev server does the same by default (tests/test_serving_deploy.py checks the two agree).
DEPLOY_MAX_BATCH_SIZE = 32

# How ServerConfig.validate's refusal begins (`imgpipe serve` names the flags in it).
INVALID_SETTINGS = "invalid server settings: "


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Settings of one server process; `validate()` raises ServerStartError naming the field."""

    model_base_path: str = ""
    model_name: str = ""
    host: str = "127.0.0.1"
    port: int = 8500
    poll_seconds: float = 2.0
    # TF Serving sets its gRPC message limit to the most a 32-bit count holds (server.cc), well
    # above gRPC's 4 MB default: a request a client can send to it is not refused here either.
    max_message_mb: int = MAX_MESSAGE_MB
    threads: int = 16
    max_concurrent_rpcs: int = 0  # 0: unlimited; beyond it gRPC answers RESOURCE_EXHAUSTED
    grace_seconds: float = 10.0
    num_versions: int = 1  # serve the newest N versions (TF Serving's `latest` policy)
    run_warmup: bool = True
    drain_seconds: float = 30.0  # how long an unload waits for in-flight requests
    max_pixels: int = DEFAULT_MAX_PIXELS  # per image, from its header; 0: no limit
    # Images (the inputs' first dimension) one request may carry, as TF Serving with the shipped
    # batching config refuses more (serving/deploy/batching_parameters.txt); 0: no limit.
    max_batch_size: int = DEPLOY_MAX_BATCH_SIZE
    # TF Serving's --enable_batching: concurrent requests of a signature run as one model call
    # (serving/devserver/batching.py), with the parameters of batching_parameters_file (TF
    # Serving's --batching_parameters_file) or TF Serving's defaults; its max_batch_size then
    # replaces the field above.
    enable_batching: bool = False
    batching_parameters_file: str = ""
    # Request logging (serving/devserver/request_log.py); off when log_requests is empty.
    log_requests: str = ""  # directory of PredictionLog TFRecords
    log_sample_rate: float = 1.0
    log_max_file_mb: int = 64  # rotate to a new file at this size
    log_queue_size: int = 1000  # records waiting for the writer; beyond it they are dropped
    log_queue_mb: int = 128  # bytes waiting for the writer; beyond it they are dropped
    # TF Serving's --model_config_file: the models to serve, their version policies and labels
    # (serving/model_config.py), instead of model_base_path and model_name; re-read every
    # model_config_file_poll_wait_seconds (0: read once, TF Serving's default).
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: float = 0.0
    # TF Serving's --allow_version_labels_for_unavailable_models.
    allow_version_labels_for_unavailable_models: bool = False

    def validate(self) -> ServerConfig:
        """Check every field (all problems in one message), then that the base path exists."""
        problems = [
            f"{name} must be a finite number, got {value}"
            for name in ("poll_seconds", "drain_seconds")
            if not math.isfinite(value := getattr(self, name))
        ]
        problems += listener_problems(self)
        if self.model_config_file:
            problems.extend(
                f"{name} must not be given with model_config_file (its models have their own names "
                "and base paths; TF Serving ignores the flag beside a config file, which hides a mistake)"
                for name in ("model_base_path", "model_name")
                if getattr(self, name)
            )
            if self.num_versions != 1:
                problems.append(
                    "num_versions must not be given with model_config_file (each model's "
                    "model_version_policy says which versions it serves)"
                )
        else:
            if not self.model_name or not self.model_name.strip():
                problems.append("model_name must not be empty (or give model_config_file)")
            if not self.model_base_path:
                problems.append("model_base_path must not be empty (or give model_config_file)")
        if (
            not math.isfinite(self.model_config_file_poll_wait_seconds)
            or self.model_config_file_poll_wait_seconds < 0
        ):
            problems.append(
                f"model_config_file_poll_wait_seconds must be >= 0 (0: read once), got "
                f"{self.model_config_file_poll_wait_seconds}"
            )
        elif self.model_config_file_poll_wait_seconds and not self.model_config_file:
            problems.append("model_config_file_poll_wait_seconds must go with model_config_file")
        if self.poll_seconds <= 0 and math.isfinite(self.poll_seconds):
            problems.append(f"poll_seconds must be > 0, got {self.poll_seconds}")
        if self.max_concurrent_rpcs < 0:
            problems.append(f"max_concurrent_rpcs must be >= 0, got {self.max_concurrent_rpcs}")
        if self.num_versions < 1:
            problems.append(f"num_versions must be >= 1, got {self.num_versions}")
        if self.drain_seconds < 0 and math.isfinite(self.drain_seconds):
            problems.append(f"drain_seconds must be >= 0, got {self.drain_seconds}")
        if self.max_pixels < 0:
            problems.append(f"max_pixels must be >= 0 (0: no limit), got {self.max_pixels}")
        if self.max_batch_size < 0:
            problems.append(f"max_batch_size must be >= 0 (0: no limit), got {self.max_batch_size}")
        if self.batching_parameters_file and not self.enable_batching:
            problems.append(
                "batching_parameters_file must go with enable_batching (TF Serving refuses a batching "
                "parameters file without it)"
            )
        if problems:
            raise ServerStartError(INVALID_SETTINGS + "; ".join(problems))
        self.batching()  # a batching parameters file that cannot be used fails now
        if self.model_config_file:
            self.models()  # a config file TF Serving would refuse fails now, before TensorFlow loads
            return self  # its models' base paths are checked as they are added
        import tensorflow as tf  # deferred: `imgpipe --help` must not load TensorFlow

        if not tf.io.gfile.isdir(self.model_base_path):
            what = "is a file, not a directory" if tf.io.gfile.exists(self.model_base_path) else "not found"
            raise ServerStartError(
                f"model base path {what}: {self.model_base_path} (expected "
                f"<serving_dir>/<model_name> holding integer version directories)"
            )
        return self

    def batching(self) -> BatchingParameters | None:
        """The batching parameters when batching is on (ServerStartError naming a bad file)."""
        if not self.enable_batching:
            return None
        return read_batching_parameters(self.batching_parameters_file or None)

    def models(self) -> tuple[ModelEntry, ...] | None:
        """The models to serve: those of model_config_file (None when it is empty), else the one
        of model_name and model_base_path. ServerStartError naming a config file TF Serving
        would refuse."""
        if not self.model_config_file:
            return single_model(self.model_name, self.model_base_path, self.num_versions)
        try:
            return read_model_config(self.model_config_file)
        except ModelConfigError as e:
            raise ServerStartError(str(e)) from None

    def check_port(self) -> None:
        """Fail at once (ServerStartError) when host:port cannot be bound (`check_bind`).

        `imgpipe serve` calls this before it imports TensorFlow and loads the
        model, so a taken port is reported in a second, not after the load.
        start_server binds the real socket before loading too; this check is
        the early answer, not the guarantee.
        """
        check_bind(self.host, self.port)


def listener_problems(config: object) -> list[str]:
    """What is wrong with the settings a gRPC listener with a request log has: those `imgpipe
    serve` (ServerConfig) and `imgpipe log-proxy` (serving/log_proxy.ProxyConfig) share, named
    by field (host, port, max_message_mb, threads, grace_seconds, log_*)."""
    c: Any = config
    problems = [
        f"{name} must be a finite number, got {value}"
        for name in ("grace_seconds", "log_sample_rate")
        if not math.isfinite(value := getattr(c, name))
    ]
    if not 0 <= c.port <= 65535:
        problems.append(f"port must be in 0..65535, got {c.port}")
    if not c.host.strip("[] "):
        # gRPC's C core printed "host must not be empty" on stderr, then a bind error.
        problems.append(
            f"host must not be empty (0.0.0.0 or [::] for every interface, 127.0.0.1 for this machine), got {c.host!r}"
        )
    if not 1 <= c.max_message_mb <= MAX_MESSAGE_MB:
        problems.append(
            f"max_message_mb must be in 1..{MAX_MESSAGE_MB} (gRPC's limit is a 32-bit byte count), "
            f"got {c.max_message_mb}"
        )
    if c.threads < 1:
        problems.append(f"threads must be >= 1, got {c.threads}")
    if c.grace_seconds < 0 and math.isfinite(c.grace_seconds):
        problems.append(f"grace_seconds must be >= 0, got {c.grace_seconds}")
    if math.isfinite(c.log_sample_rate) and not 0.0 <= c.log_sample_rate <= 1.0:
        problems.append(f"log_sample_rate must be in [0, 1], got {c.log_sample_rate}")
    if c.log_max_file_mb < 1:
        problems.append(f"log_max_file_mb must be >= 1, got {c.log_max_file_mb}")
    if c.log_queue_size < 1:
        problems.append(f"log_queue_size must be >= 1, got {c.log_queue_size}")
    if c.log_queue_mb < 1:
        problems.append(f"log_queue_mb must be >= 1, got {c.log_queue_mb}")
    return problems


def check_bind(host: str, port: int) -> None:
    """Fail at once (ServerStartError) when host:port cannot be bound, e.g. another server has
    it. Port 0 (any free port) always passes."""
    if port == 0:
        return
    bare = host.strip("[]")
    where = f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            bare or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise ServerStartError(f"cannot bind {where}: unknown host {bare!r} ({e.strerror})") from e
    with socket.socket(family, kind, proto) as probe:
        # As gRPC does: a port left in TIME_WAIT by a stopped server is free to take.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            raise ServerStartError(
                f"cannot bind {where}: {e.strerror or e}"
                + (
                    " (another server is listening there? stop it or pick another --port)"
                    if e.errno == errno.EADDRINUSE
                    else ""
                )
            ) from e


def host_for_target(host: str) -> str:
    """A bind address as a client's target writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
