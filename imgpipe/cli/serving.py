"""`imgpipe serve` and `imgpipe predict`: the dev/test model server and its command-line client.

`serve` runs serving/devserver until SIGTERM/SIGINT (exit 0; exit 2 when it
cannot start: bad settings, missing base path, port in use, unwritable
request log directory). A taken port is found before TensorFlow loads. `predict` prints
one JSON line per image on stdout; exit 0 when every image was classified,
1 when any failed (each named on stderr), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import re
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc

from imgpipe.cli.flags import fraction, host_port, non_negative_number, positive_number, whole_number
from imgpipe.cli.output import EXIT_OK, Command, UsageError, WorkFailed, emit, error
from imgpipe.ingest.report import display_path
from serving.config import INVALID_SETTINGS, ServerConfig
from serving.errors import ServerStartError, ServingRpcError
from serving.image_header import image_format
from serving.log_proxy import INVALID_PROXY_SETTINGS, ProxyConfig
from serving.request_size import CLIENT_MESSAGE_MB, RequestBudget, server_batch_limit
from serving.signatures import PREDICT_IMAGES, SERVING_DEFAULT

if TYPE_CHECKING:  # the client loads TensorFlow: imported only when `predict` runs
    from serving.client import Prediction, ServingClient

log = logging.getLogger(__name__)


# -- imgpipe serve ---------------------------------------------------------------------


def _add_serve(parser: argparse.ArgumentParser) -> None:
    d = ServerConfig()
    parser.add_argument(
        "--model-base-path",
        default="",
        help="directory of integer version dirs, i.e. <serving_dir>/<model_name> (with --model-name; "
        "or give --model-config-file)",
    )
    parser.add_argument("--model-name", default="", help="name clients put in model_spec")
    parser.add_argument(
        "--model-config-file",
        metavar="FILE",
        default="",
        help="TF Serving ModelServerConfig text proto, e.g. serving/deploy/models.config with its "
        "base_path pointed at your serving dir: the models to serve, each with its "
        "model_version_policy (latest N, all, specific versions) and version_labels, instead of "
        "--model-base-path and --model-name (TF Serving's --model_config_file)",
    )
    parser.add_argument(
        "--model-config-file-poll-wait-seconds",
        metavar="SECONDS",
        type=non_negative_number,
        default=d.model_config_file_poll_wait_seconds,
        help="read --model-config-file again this often and serve what it then says (models added "
        "or removed, policies, labels); a file that is refused is logged and changes nothing; "
        "0 = read it once (default %(default)s)",
    )
    parser.add_argument(
        "--allow-version-labels-for-unavailable-models",
        action="store_true",
        help="let a config give a new label to a version not loaded yet, e.g. in the config the "
        "server starts with (TF Serving's flag of that name; without it a label must name a "
        "version already serving)",
    )
    _add_listener_flags(parser, d)
    parser.add_argument(
        "--poll-seconds",
        type=positive_number,
        default=d.poll_seconds,
        help="how often to look for new or removed versions (default %(default)s)",
    )
    parser.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=d.max_concurrent_rpcs,
        help="reject RPCs beyond this many with RESOURCE_EXHAUSTED; 0 = unlimited (default %(default)s)",
    )
    parser.add_argument(
        "--num-versions",
        type=int,
        default=d.num_versions,
        help="serve the newest N versions, with --model-base-path (a config file's models have "
        "their own model_version_policy) (default %(default)s)",
    )
    parser.add_argument(
        "--no-warmup",
        dest="run_warmup",
        action="store_false",
        help="do not replay assets.extra/tf_serving_warmup_requests",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=d.max_pixels,
        help="refuse (INVALID_ARGUMENT) any image whose header declares more pixels than this, "
        "before decoding it; 0 = no check by the server (an imgpipe model still applies its own "
        "limit, the run's max_image_pixels) (default %(default)s)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=whole_number(0, None, "a whole number >= 0"),
        default=d.max_batch_size,
        help="refuse (INVALID_ARGUMENT, in TF Serving's words) a request of more images than this, as "
        "TF Serving with the shipped batching config (serving/deploy/batching_parameters.txt) does; "
        "0 = no limit, as TF Serving without --enable_batching (default %(default)s); with "
        "--enable-batching the batching parameters' max_batch_size applies instead",
    )
    parser.add_argument(
        "--enable-batching",
        action="store_true",
        help="merge concurrent requests of a signature into one model call, as TF Serving's "
        "--enable_batching does (every request of a batch gets the batch's error)",
    )
    parser.add_argument(
        "--batching-parameters-file",
        metavar="FILE",
        default=d.batching_parameters_file,
        help="TF Serving BatchingParameters text proto for --enable-batching, e.g. "
        "serving/deploy/batching_parameters.txt as production reads it (default: TF Serving's "
        "defaults: up to 1000 images a batch, no wait, one batch thread per core)",
    )
    _add_log_flags(parser, d)


def _add_listener_flags(parser: argparse.ArgumentParser, d: ServerConfig | ProxyConfig) -> None:
    """Where and how `serve` and `log-proxy` take calls (their defaults from `d`)."""
    parser.add_argument(
        "--host",
        default=d.host,
        help="bind address; 0.0.0.0 for every interface, as in a container (default %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=whole_number(0, 65535, "a port number 0..65535"),
        default=d.port,
        help="gRPC port 0..65535; 0 picks a free one (default %(default)s)",
    )
    parser.add_argument(
        "--threads", type=int, default=d.threads, help="calls served at once (default %(default)s)"
    )
    parser.add_argument(
        "--max-message-mb",
        type=int,
        default=d.max_message_mb,
        help="max gRPC message size in MiB, send and receive: 1..2047 (default %(default)s, as TF Serving)",
    )
    parser.add_argument(
        "--grace-seconds",
        type=non_negative_number,
        default=d.grace_seconds,
        help="on SIGTERM or Ctrl-C, how long calls in flight may take (default %(default)s)",
    )


def _add_log_flags(parser: argparse.ArgumentParser, d: ServerConfig | ProxyConfig) -> None:
    """The request log's flags, shared by `serve` and `log-proxy` (their defaults from `d`)."""
    required = isinstance(d, ProxyConfig)  # the proxy is there to log
    group = parser.add_argument_group("request logging (TF Serving PredictionLog TFRecords)")
    group.add_argument(
        "--log-requests",
        metavar="DIR",
        default=d.log_requests,
        required=required,
        help="write sampled Predict/Classify/MultiInference requests and responses to DIR (read by "
        "`imgpipe drift`)" + ("" if required else "; default: off"),
    )
    group.add_argument(
        "--log-sample-rate",
        type=fraction,
        default=d.log_sample_rate,
        help="fraction of successful requests logged, 0..1 (default %(default)s)",
    )
    group.add_argument(
        "--log-max-file-mb",
        type=int,
        default=d.log_max_file_mb,
        help="start a new log file when the current one reaches this size (default %(default)s)",
    )
    group.add_argument(
        "--log-queue-size",
        type=int,
        default=d.log_queue_size,
        help="records waiting for the writer; beyond it (or --log-queue-mb) records are dropped "
        "and counted, never the request (default %(default)s)",
    )
    group.add_argument(
        "--log-queue-mb",
        type=int,
        default=d.log_queue_mb,
        help="bytes waiting for the writer, in MB (default %(default)s)",
    )


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig of parsed `imgpipe serve` flags (validated when the server starts)."""
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
        max_pixels=args.max_pixels,
        max_batch_size=args.max_batch_size,
        enable_batching=args.enable_batching,
        batching_parameters_file=args.batching_parameters_file,
        log_requests=args.log_requests,
        log_sample_rate=args.log_sample_rate,
        log_max_file_mb=args.log_max_file_mb,
        log_queue_size=args.log_queue_size,
        log_queue_mb=args.log_queue_mb,
        model_config_file=args.model_config_file,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
    )


def _serve(args: argparse.Namespace) -> int:
    config = server_config(args)
    try:
        config.check_port()  # a taken port fails now, not after TensorFlow and the model load
        from serving.devserver import lifecycle  # loads TensorFlow: only when the command runs

        # What exists now (mostly the imports' objects) outlives the server: keep it out of the
        # garbage collector's walks while serving, among them the full collection each model
        # unload runs while other versions take requests (0.54 -> 0.21 s for the demo's model;
        # BENCHMARKS.md, "Iterators left to the garbage collector, and the dev server's
        # unload"). Undone on return, for in-process callers; left to a caller that froze first.
        freeze = gc.get_freeze_count() == 0
        if freeze:
            gc.collect()  # garbage from before is freed, not frozen
            gc.freeze()
        try:
            code = lifecycle.serve(config)
        finally:
            if freeze:
                gc.unfreeze()
        if code != EXIT_OK:
            # A second signal: the server is stopped and the model unloaded, but a request's
            # TensorFlow call may still run in a gRPC worker thread, which Python's exit would
            # wait for. The user asked twice: exit now.
            logging.shutdown()
            sys.stderr.flush()
            os._exit(code)
        return code
    except ServerStartError as e:
        raise UsageError(_as_flags(str(e))) from e


def _as_flags(message: str, settings: type = ServerConfig, prefix: str = INVALID_SETTINGS) -> str:
    """A settings error in the flags the user typed: "log_sample_rate must be ..." becomes
    "--log-sample-rate (log_sample_rate) must be ..." for every setting of `settings` (`imgpipe
    serve`'s, or `log-proxy`'s with its `prefix`) that has a flag.
    Only the settings' own errors: a file's (the batching parameters, the model config) name the
    file's fields, which may share a flag's name (max_batch_size) but not its meaning."""
    if not message.startswith(prefix):
        return message
    for field in dataclasses.fields(settings):
        if field.name == "run_warmup":
            continue  # --no-warmup turns it off: no value to name
        flag = f"--{field.name.replace('_', '-')}"
        message = re.sub(rf"(?<![\w-]){field.name} must", f"{flag} ({field.name}) must", message)
    return message


# -- imgpipe log-proxy -----------------------------------------------------------------


def _add_log_proxy(parser: argparse.ArgumentParser) -> None:
    d = ProxyConfig()
    parser.add_argument(
        "--target",
        type=host_port,
        required=True,
        help="HOST:PORT of the model server the calls go to (TF Serving's gRPC port, e.g. tfserving:8500)",
    )
    _add_listener_flags(parser, d)
    parser.add_argument(
        "--connect-seconds",
        type=non_negative_number,
        default=d.connect_seconds,
        help="at start, how long to wait for the model server before warning that it does not "
        "answer (the proxy starts anyway) (default %(default)s)",
    )
    _add_log_flags(parser, d)


def _log_proxy(args: argparse.Namespace) -> int:
    from serving import log_proxy

    config = ProxyConfig(
        target=args.target,
        host=args.host,
        port=args.port,
        threads=args.threads,
        max_message_mb=args.max_message_mb,
        grace_seconds=args.grace_seconds,
        connect_seconds=args.connect_seconds,
        log_requests=args.log_requests,
        log_sample_rate=args.log_sample_rate,
        log_max_file_mb=args.log_max_file_mb,
        log_queue_size=args.log_queue_size,
        log_queue_mb=args.log_queue_mb,
    )
    try:
        code = log_proxy.serve(config)
    except ServerStartError as e:
        raise UsageError(_as_flags(str(e), ProxyConfig, INVALID_PROXY_SETTINGS)) from e
    if code != EXIT_OK:  # a second signal: calls in flight were cancelled; exit now
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)
    return code


# -- imgpipe predict -------------------------------------------------------------------


def _add_predict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        type=host_port,
        default="localhost:8500",
        help="HOST:PORT of the server (default %(default)s)",
    )
    parser.add_argument("--model", required=True, help="model name (model_spec.name)")
    parser.add_argument(
        "--signature",
        default=PREDICT_IMAGES,
        choices=[PREDICT_IMAGES, SERVING_DEFAULT],
        help="predict_images sends the bytes; serving_default wraps them in tf.Examples (default %(default)s)",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--version",
        type=int,
        default=None,
        help="a specific model version (default: the newest the server serves)",
    )
    which.add_argument(
        "--version-label",
        metavar="LABEL",
        default=None,
        help="the version a label of the server's model config names (version_labels in "
        "models.config, e.g. stable or canary)",
    )
    parser.add_argument(
        "--top-k",
        type=whole_number(1, None, "a whole number >= 1"),
        default=None,
        help="keep the K best classes (default: all the model gives; an imgpipe model's predict_images "
        "gives its 5 best, warned about when K is more)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_number,
        default=10.0,
        help="deadline per RPC, seconds (default %(default)s)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries when the server is UNAVAILABLE or has no version loaded yet (default %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=whole_number(1, None, "a whole number >= 1"),
        default=16,
        help="images per RPC (default %(default)s)",
    )
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="JPEG/PNG/GIF/BMP files; - reads one image from standard input (./- names a file called -)",
    )


def _predict_chunk(
    client: ServingClient, args: argparse.Namespace, chunk: list[tuple[str, bytes]]
) -> list[tuple[str, Prediction | ServingRpcError]]:
    """Predict a chunk; if the server rejects it as INVALID_ARGUMENT, find the bad images.

    Other errors (unknown model or version label, server down, deadline) concern every image
    and are raised.
    """
    images = [data for _, data in chunk]
    try:
        preds = client.predict_images(args.model, images, args.top_k, args.signature, args.version)
        return list(zip([path for path, _ in chunk], preds, strict=True))
    except ServingRpcError as e:
        too_many = len(chunk) > 1 and server_batch_limit(e.code.name, e.details)
        if e.code != grpc.StatusCode.INVALID_ARGUMENT or too_many or e.unknown_label:
            # About every image (a label the server does not give the model), or about the
            # request's size (_predict_in_parts splits it).
            raise
        if len(chunk) == 1:
            return [(chunk[0][0], e)]
    results: list[tuple[str, Prediction | ServingRpcError]] = []
    for item in chunk:
        results.extend(_predict_chunk(client, args, [item]))
    return results


class _StoppedAt(Exception):
    """An RPC failure that concerns every image (server down, unknown model), and the image
    whose request it stopped at."""

    def __init__(self, error: ServingRpcError, path: str):
        super().__init__(str(error))
        self.error, self.path = error, path


def _predict_in_parts(
    client: ServingClient, args: argparse.Namespace, items: list[tuple[str, bytes]], budget: RequestBudget
) -> Iterator[tuple[str, Prediction | ServingRpcError | str]]:
    """(path, its prediction, the server's refusal, or why no request can carry it), in order.

    Requests of --batch-size images, fewer when they are large. A request the server refuses
    as over its receive limit is sent again in parts under that limit, and so are the later
    ones; an image over it is named instead. Other failures raise _StoppedAt.
    """
    for chunk, too_large in budget.parts(items, args.batch_size):
        if too_large:
            yield chunk[0][0], budget.too_large_reason(len(chunk[0][1]))
            continue
        try:
            results = _predict_chunk(client, args, chunk)
        except ServingRpcError as e:
            if not budget.refused(e.code.name, e.details, [len(data) for _, data in chunk]):
                raise _StoppedAt(e, chunk[0][0]) from e
            yield from _predict_in_parts(client, args, chunk, budget)
            continue
        yield from results


def _read_image(path: str, budget: RequestBudget, wait: float = 30.0) -> bytes | str:
    """A file's bytes, or why it is not sent (too large for a request, a pipe no program wrote
    to). A regular file, or a pipe (`<(cat photo.jpg)`, a named pipe a program writes to within
    `wait` seconds); a device or socket raises OSError: `/dev/zero` was read until the kernel
    killed the command (18 GB), and a named pipe no program writes to blocked it for good (`wait`:
    its own, not the RPC's --timeout, which a fast RPC sets low). A pipe
    is read up to one byte over what a request may carry. `-` is standard input (a pipe or a
    redirected file; a terminal is refused)."""
    import select
    import stat

    if path == "-":
        if sys.stdin is None:  # started with standard input closed (`<&-`)
            raise OSError("standard input is closed")
        fd = os.dup(sys.stdin.fileno())
    else:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO with no writer opens at once
    try:
        found = os.fstat(fd)
        if stat.S_ISREG(found.st_mode):
            if found.st_size > budget.bytes:
                return budget.too_large_reason(found.st_size)
        elif stat.S_ISFIFO(found.st_mode):
            # Waits for a writer's first bytes (or its end): a program that opens the pipe after
            # this one is read, where a read at once found nothing and stranded it.
            poll = select.poll()
            poll.register(fd, select.POLLIN | select.POLLHUP)
            if not poll.poll(wait * 1000):
                return f"nothing was written to the pipe within {wait:g}s"
            os.set_blocking(fd, True)
        elif path == "-":
            raise OSError("standard input is not a pipe or a file: pipe an image into it (cat photo.jpg |)")
        else:
            raise OSError("not a regular file or a pipe")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(budget.bytes + 1)
    finally:
        os.close(fd)
    if len(data) > budget.bytes:
        return f"more than {budget.too_large_reason(len(data) - 1)}"
    return data


def _read_images(
    paths: list[str], budget: RequestBudget, failures: list[str], wait: float = 30.0
) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of each readable JPEG/PNG/GIF/BMP file as it is read (memory is a request's
    images, not every file named: 200 photos of 14 MB took 3.4 GB before the first request);
    each that is not is named on stderr as it comes and appended to `failures`."""
    for path in paths:
        try:
            data = _read_image(path, budget, wait)
        except OSError as e:
            error(f"cannot read image {display_path(path)}: {e.strerror or e}")
            failures.append(path)
            continue
        if isinstance(data, str):
            error(f"{display_path(path)}: {data}")
            failures.append(path)
            continue
        if image_format(data) is None:
            error(f"{display_path(path)}: {_not_an_image(data)}")
            failures.append(path)
            continue
        yield path, data


def _not_an_image(data: bytes) -> str:
    """Why bytes that are no JPEG, PNG, GIF or BMP are not sent, in ingest's words where it has
    them (an empty file, a format Pillow knows that the model's decoder does not)."""
    import io
    import warnings

    from PIL import Image

    from imgpipe.ingest.images import EMPTY_FILE, unsupported_format  # here: Pillow only when needed

    if not data:
        return EMPTY_FILE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:  # the header only
                found = image.format
    except Exception:  # noqa: BLE001 - anything Pillow cannot identify is simply no image
        found = None
    return unsupported_format(found) if found else "not a JPEG, PNG, GIF or BMP image"


def _in_groups(items: Iterator[tuple[str, bytes]], size: int) -> Iterator[list[tuple[str, bytes]]]:
    group: list[tuple[str, bytes]] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _predict(args: argparse.Namespace) -> int:
    """One JSON line per image; unreadable or rejected images are named and the rest still run.

    A batch rejected as INVALID_ARGUMENT is retried image by image so the bad
    file is named; any other RPC failure stops the command (exit 1).
    """
    from serving.client import ServingClient  # loads TensorFlow: only when the command runs

    if getattr(args, "version_label", None) is not None:
        args.version = args.version_label  # the client takes a label where it takes a version
    if args.images.count("-") > 1:
        raise UsageError("- (standard input) is given more than once: it holds one image")
    try:
        client = ServingClient(args.target, timeout=args.timeout, retries=args.retries)
    except ValueError as e:
        raise UsageError(str(e)) from e
    scored = 0
    unread: list[str] = []  # named on stderr as they are read
    budget = RequestBudget(CLIENT_MESSAGE_MB)
    short = False  # said that the model answers with fewer classes than --top-k

    def answered() -> Iterator[tuple[str, Prediction | ServingRpcError | str]]:
        for group in _in_groups(_read_images(args.images, budget, unread), args.batch_size):
            yield from _predict_in_parts(client, args, group, budget)

    failed = 0  # images the server refused or no request could carry
    with client:
        try:
            for path, result in answered():
                if isinstance(result, (ServingRpcError, str)):
                    why = result if isinstance(result, str) else f"{result.code.name}: {result.details}"
                    error(f"{display_path(path)}: {why}")
                    failed += 1
                    continue
                if args.top_k and len(result.classes) < args.top_k and not short:
                    short = True
                    log.warning(
                        "--top-k %d: the model's %s signature answers with %d classes; those are shown",
                        args.top_k,
                        args.signature,
                        len(result.classes),
                    )
                # As predict-batch and ingest show names: a byte that is not UTF-8 as \xNN, so
                # the JSON is valid UTF-8 and no two files print as one name.
                # `version`: the model version that answered (after a push or a rollback, the one
                # the server swapped to), as the server named it; null when it did not.
                emit(
                    {
                        "image": display_path(path),
                        "classes": result.classes,
                        "scores": result.scores,
                        "version": result.version,
                    }
                )
                scored += 1
        except _StoppedAt as e:
            # The lines on stdout so far are the images scored; say how many were not.
            failed += len(unread)
            left = len(args.images) - scored - failed
            hint = (
                f" (does the server's model config give model {args.model!r} the version label "
                f"{getattr(args, 'version_label', None)!r}? --version-label)"
                if e.error.unknown_label
                else ""
            )
            raise WorkFailed(
                f"{e.error}{hint}; stopped after {scored} of {len(args.images)} images were scored "
                f"({failed} failed before, {left} not scored, starting with {display_path(e.path)})"
            ) from e.error
    failed += len(unread)
    if failed:
        raise WorkFailed(f"{failed} of {len(args.images)} images failed")
    return EXIT_OK


COMMANDS = [
    Command(
        "serve",
        "serve pushed models over TF Serving's gRPC API (dev/test server)",
        _add_serve,
        _serve,
    ),
    Command(
        "log-proxy",
        "log the requests to a model server (TF Serving) for `imgpipe drift`: a gRPC proxy",
        _add_log_proxy,
        _log_proxy,
    ),
    Command(
        "predict",
        "query a TF Serving (or `imgpipe serve`) endpoint with images",
        _add_predict,
        _predict,
    ),
]
