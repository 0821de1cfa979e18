"""Settings and command-line flags of the serving tools, without heavy imports.

`imgpipe --help` builds every subcommand's parser; importing TensorFlow (which
tensorflow-serving-api does) would make that take seconds, so the flags and
the server's settings live here and serving/server.py and serving/client.py
load only when a command runs.
"""

from __future__ import annotations

import argparse
import dataclasses

from serving.errors import ServerStartError

PREDICT_IMAGES = "predict_images"
SERVING_DEFAULT = "serving_default"


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
        if problems:
            raise ServerStartError("invalid server settings: " + "; ".join(problems))
        import tensorflow as tf  # deferred: `imgpipe --help` must not load TensorFlow

        if not tf.io.gfile.isdir(self.model_base_path):
            raise ServerStartError(
                f"model base path not found: {self.model_base_path} (expected "
                f"<serving_dir>/<model_name> holding integer version directories)"
            )
        return self


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `imgpipe serve` flags."""
    d = ServerConfig("", "")
    parser.add_argument(
        "--model-base-path",
        required=True,
        help="directory of integer version dirs, i.e. <serving_dir>/<model_name>",
    )
    parser.add_argument("--model-name", required=True, help="name clients put in model_spec")
    parser.add_argument("--host", default=d.host, help="bind address (default %(default)s)")
    parser.add_argument("--port", type=int, default=d.port, help="gRPC port; 0 picks a free one")
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=d.poll_seconds,
        help="how often to look for new or removed versions (default %(default)s)",
    )
    parser.add_argument(
        "--max-message-mb",
        type=int,
        default=d.max_message_mb,
        help="max gRPC message size, send and receive (default %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="RPC worker threads (default %(default)s)",
    )
    parser.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=d.max_concurrent_rpcs,
        help="reject RPCs beyond this many with RESOURCE_EXHAUSTED; 0 = unlimited",
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=d.grace_seconds,
        help="on SIGTERM, how long in-flight requests may run (default %(default)s)",
    )
    parser.add_argument(
        "--num-versions",
        type=int,
        default=d.num_versions,
        help="serve the newest N versions (default %(default)s)",
    )
    parser.add_argument(
        "--no-warmup",
        dest="run_warmup",
        action="store_false",
        help="do not replay assets.extra/tf_serving_warmup_requests",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        model_base_path=args.model_base_path,
        model_name=args.model_name,
        host=args.host,
        port=args.port,
        poll_seconds=args.poll_seconds,
        max_message_mb=args.max_message_mb,
        threads=args.threads,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        grace_seconds=args.grace_seconds,
        num_versions=args.num_versions,
        run_warmup=args.run_warmup,
    )


def add_predict_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `imgpipe predict` flags."""
    parser.add_argument("--target", default="localhost:8500", help="HOST:PORT of the server")
    parser.add_argument("--model", required=True, help="model name (model_spec.name)")
    parser.add_argument(
        "--signature",
        default=PREDICT_IMAGES,
        choices=[PREDICT_IMAGES, SERVING_DEFAULT],
        help="predict_images sends the bytes; serving_default wraps them in tf.Examples",
    )
    parser.add_argument("--version", type=int, default=None, help="a specific model version")
    parser.add_argument("--top-k", type=int, default=None, help="keep the K best classes")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline per RPC, seconds")
    parser.add_argument("--retries", type=int, default=3, help="retries when UNAVAILABLE")
    parser.add_argument("--batch-size", type=int, default=16, help="images per RPC")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG/PNG/GIF/BMP files")
    return parser
