"""Settings of the dev server (serving/devserver), typed and validated, without heavy imports.

`imgpipe serve` builds a ServerConfig from its flags (imgpipe/cli/serving.py);
TensorFlow loads only inside `validate()`, so `imgpipe --help` stays quick.
"""

from __future__ import annotations

import dataclasses

from serving.errors import ServerStartError


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Settings of one server process; `validate()` raises ServerStartError naming the field."""

    model_base_path: str
    model_name: str
    host: str = "127.0.0.1"
    port: int = 8500
    poll_seconds: float = 2.0
    max_message_mb: int = 64
    threads: int = 16
    max_concurrent_rpcs: int = 0  # 0: unlimited; beyond it gRPC answers RESOURCE_EXHAUSTED
    grace_seconds: float = 10.0
    num_versions: int = 1  # serve the newest N versions (TF Serving's `latest` policy)
    run_warmup: bool = True
    drain_seconds: float = 30.0  # how long an unload waits for in-flight requests

    def validate(self) -> ServerConfig:
        """Check every field (all problems in one message), then that the base path exists."""
        problems = []
        if not self.model_name or not self.model_name.strip():
            problems.append("model_name must not be empty")
        if not self.model_base_path:
            problems.append("model_base_path must not be empty")
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be in 0..65535, got {self.port}")
        if self.poll_seconds <= 0:
            problems.append(f"poll_seconds must be > 0, got {self.poll_seconds}")
        if self.max_message_mb < 1:
            problems.append(f"max_message_mb must be >= 1, got {self.max_message_mb}")
        if self.threads < 1:
            problems.append(f"threads must be >= 1, got {self.threads}")
        if self.max_concurrent_rpcs < 0:
            problems.append(f"max_concurrent_rpcs must be >= 0, got {self.max_concurrent_rpcs}")
        if self.grace_seconds < 0:
            problems.append(f"grace_seconds must be >= 0, got {self.grace_seconds}")
        if self.num_versions < 1:
            problems.append(f"num_versions must be >= 1, got {self.num_versions}")
        if self.drain_seconds < 0:
            problems.append(f"drain_seconds must be >= 0, got {self.drain_seconds}")
        if problems:
            raise ServerStartError("invalid server settings: " + "; ".join(problems))
        import tensorflow as tf  # deferred: `imgpipe --help` must not load TensorFlow

        if not tf.io.gfile.isdir(self.model_base_path):
            raise ServerStartError(
                f"model base path not found: {self.model_base_path} (expected "
                f"<serving_dir>/<model_name> holding integer version directories)"
            )
        return self
