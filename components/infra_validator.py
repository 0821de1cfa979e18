"""The InfraValidator node: serve the candidate model in a real server and check it before the Pusher.

TFX's own InfraValidator starts TF Serving in Docker or Kubernetes; this one
runs the server as a subprocess of the component (components/model_server.py:
`tensorflow_model_server` when installed, else `imgpipe serve`), so it works
the same on LocalDagRunner and inside a Kubeflow/Vertex step's container.

Inputs: the Trainer's model, the examples (N of the eval split are sent) and
the Evaluator's blessing (an unblessed model is not served: nothing to push).
Output: an `InfraBlessing` artifact with TFX's `blessed` custom property (1 or
0), which the Pusher's `infra_blessing` input reads, plus the full report
(components/prepush.py REPORT_FILE) and the server's output beside it.

Fails closed: any failed check, a server that does not start or load the
model in time, or an error of the validation itself leaves `blessed` = 0 and
the report's `reason` names the signature, request and status. Only
`prepush_validation: false` blesses without serving (the report says so).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence

import tensorflow as tf
from tfx import types
from tfx.components.util import model_utils
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import io_utils, json_utils

from components import artifacts, loaded_models, pusher
from components.model_server import (
    ModelServer,
    ModelServerError,
    stage_model,
    started_server,
    take_standby,
)
from components.prepush import REPORT_FILE, SERVER_LOG_FILE, PrepushConfig
from components.prepush_checks import (
    Failure,
    PrepushReport,
    check_served_model,
    reference_answers,
)
from serving.client import IMAGE_FEATURE, ServingClient, make_image_example
from serving.devserver.versions import read_signature_defs
from serving.signatures import SERVING_DEFAULT
from serving.warmup import read_warmup_requests
from trainer.data import raw_examples

log = logging.getLogger(__name__)

BLESSED_KEY = "blessed"  # TFX's InfraBlessing property, read by the Pusher
BLESSED_FILE = "INFRA_BLESSED"  # marker files, as TFX's InfraValidator writes them
NOT_BLESSED_FILE = "INFRA_NOT_BLESSED"
EVAL_SPLIT = "eval"
RPC_TIMEOUT_SECONDS = 60.0
_MIN_WAIT_SECONDS = 1.0  # a last status poll even when the in-process work used up the timeout


class GracefulShutdown(Exception):
    """SIGTERM arrived while validating: unwind so the server is stopped."""


def read_inputs(example_files: str, count: int) -> tuple[list[bytes], list[bytes]]:
    """Up to `count` examples of the split: (serialized tf.Examples holding only the image, image bytes).

    The requests carry what a client sends (the image, no label). A record
    without image bytes is an error naming it.
    """
    examples, images = [], []
    for i, record in enumerate(raw_examples(example_files).take(count).as_numpy_iterator()):
        parsed = tf.train.Example.FromString(record)
        values = parsed.features.feature[IMAGE_FEATURE].bytes_list.value
        if not values or not values[0]:
            raise ValueError(f"eval record {i} in {example_files} has no {IMAGE_FEATURE!r} bytes")
        images.append(values[0])
        examples.append(make_image_example(values[0]))
    if not examples:
        raise ValueError(f"no eval examples in {example_files}")
    return examples, images


def validate_model(
    saved_model_dir: str,
    examples: Sequence[bytes],
    images: Sequence[bytes],
    model_name: str,
    config: PrepushConfig,
    workdir: str,
    log_path: str,
) -> PrepushReport:
    """Serve `saved_model_dir` in a model server subprocess and run every check against it.

    Never raises for a failed check or a broken server: the report holds the
    failures (`blessed` False, `reason` the first of them).
    """
    report = PrepushReport(
        model_name=model_name, examples=len(examples), max_latency_ms=config.max_latency_ms
    )
    started = time.monotonic()
    standby = take_standby(model_name)
    if standby is not None and not _same_path(standby.staged_from, saved_model_dir):
        log.warning("pre-push validation: the early server has another model (%s)", standby.staged_from)
        standby.stop(graceful=False)
        standby = None
    if standby is None:
        try:
            base_path = stage_model(saved_model_dir, os.path.join(workdir, "models"), model_name)
        except Exception as e:  # noqa: BLE001 - fail closed: the report names the error
            log.exception("pre-push validation: the model cannot be staged for serving")
            report.fail(Failure("reference", f"the SavedModel cannot be staged: {type(e).__name__}: {e}"))
            return report.conclude()
    if standby is not None:
        log.info("pre-push validation: %s was started during the Evaluator", standby.command.kind)
        report.server_started_early = True
        server_block = _taken_over(standby, log_path)
    else:
        # Killed, not asked to stop, when done: by then no request is in flight and a
        # validation server has no request log to flush.
        server_block = started_server(base_path, model_name, log_path, graceful=False)
    try:
        with server_block as server:
            # The server imports TensorFlow and loads the model in its own process meanwhile,
            # so the in-process answers overlap its start-up instead of preceding it.
            # The candidate as the Evaluator loaded and ran it, when this local run kept it.
            evaluated = loaded_models.get(saved_model_dir)
            if evaluated is not None and SERVING_DEFAULT not in getattr(evaluated, "signatures", {}):
                evaluated = None
            report.reference_from_evaluator = evaluated is not None
            try:
                reference = reference_answers(saved_model_dir, examples, evaluated)
                saved_signatures = read_signature_defs(saved_model_dir)
                warmup_logs = read_warmup_requests(saved_model_dir)
            except Exception as e:  # noqa: BLE001 - fail closed: the report names the error
                log.exception("pre-push validation: the model does not run in-process")
                report.fail(Failure("reference", f"the SavedModel fails in-process: {type(e).__name__}: {e}"))
                return report.conclude()
            report.seconds["reference"] = round(time.monotonic() - started, 1)
            remaining = config.prepush_timeout_seconds - (time.monotonic() - started)
            server.wait_ready(max(remaining, _MIN_WAIT_SECONDS))
            report.server = server.command.kind
            report.version = server.version
            report.seconds["server_ready"] = round(time.monotonic() - started, 1)
            started = time.monotonic()
            log.info(
                "pre-push validation: %s serves %r on %s", server.command.kind, model_name, server.target
            )
            with ServingClient(server.target, timeout=RPC_TIMEOUT_SECONDS, retries=0) as client:
                check_served_model(
                    client,
                    model_name,
                    server.version,
                    reference,
                    examples,
                    images,
                    warmup_logs,
                    saved_signatures,
                    config.prepush_score_tolerance,
                    config.max_latency_ms,
                    report,
                )
            report.seconds["checks"] = round(time.monotonic() - started, 1)
            if server.process is not None and server.process.poll() is not None:
                report.fail(
                    Failure("server", f"exited with code {server.process.returncode} during validation")
                )
    except ModelServerError as e:
        report.fail(Failure("server", str(e)))
    except GracefulShutdown:
        raise
    except Exception as e:  # noqa: BLE001 - fail closed: the report names the error
        log.exception("pre-push validation failed unexpectedly")
        report.fail(Failure("server", f"validation error: {type(e).__name__}: {e}"))
    return report.conclude()


def _same_path(a: str, b: str) -> bool:
    return os.path.normpath(a) == os.path.normpath(b)


@contextlib.contextmanager
def _taken_over(server: ModelServer, log_path: str) -> Iterator[ModelServer]:
    """A standby server for the block: killed when it exits, its output copied to `log_path`."""
    try:
        yield server
    finally:
        server.stop(graceful=False)
        with contextlib.suppress(OSError):
            shutil.copyfile(server.log_path, log_path)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """On the main thread, turn SIGTERM into GracefulShutdown so `finally` stops the server."""
    if threading.current_thread() is not threading.main_thread():
        yield  # the server still dies with this process (model_server: parent-death signal)
        return

    def handler(signum: int, _frame: object) -> None:
        raise GracefulShutdown(f"got signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_config(value: str | None) -> PrepushConfig:
    """The `prepush` section from the execution property (JSON), parsed strictly."""
    return PrepushConfig.model_validate(json_utils.loads(value or "{}") or {})


class InfraValidatorExecutor(base_executor.BaseExecutor):
    """Validates the model in a server subprocess and writes the InfraBlessing."""

    def Do(self, input_dict, output_dict, exec_properties):  # noqa: N802 - TFX's name
        config = parse_config(exec_properties.get("prepush_config"))
        model_name = exec_properties["model_name"]
        blessing = artifact_utils.get_single_instance(output_dict["blessing"])
        model = artifact_utils.get_single_instance(input_dict["model"])
        model_dir = artifacts.saved_model_dir(model)
        model_blessing = artifact_utils.get_single_instance(input_dict["model_blessing"])

        if not config.prepush_validation:
            report = PrepushReport(
                blessed=True,
                model_name=model_name,
                reason="pre-push validation is off (prepush_validation: false)",
            )
        elif not model_utils.is_model_blessed(model_blessing):
            report = PrepushReport(
                model_name=model_name, reason="skipped: the Evaluator did not bless the model"
            )
        elif identical := identical_served_version(model_dir, exec_properties.get("serving_model_dir") or ""):
            report = PrepushReport(
                blessed=True,
                model_name=model_name,
                reason=f"skipped: identical to the served version {identical}, which the Pusher "
                "keeps (nothing new would be served)",
            )
        else:
            split_uri = artifact_utils.get_split_uri(input_dict["examples"], EVAL_SPLIT)
            with tempfile.TemporaryDirectory(prefix="imgpipe-prepush-") as workdir, _sigterm_raises():
                log_path = os.path.join(workdir, SERVER_LOG_FILE)
                try:
                    examples, images = read_inputs(os.path.join(split_uri, "*"), config.prepush_examples)
                except ValueError as e:
                    report = PrepushReport(model_name=model_name)
                    report.fail(Failure("reference", str(e)))
                    report.conclude()
                else:
                    report = validate_model(
                        model_dir, examples, images, model_name, config, workdir, log_path
                    )
                if os.path.exists(log_path):
                    io_utils.copy_file(log_path, os.path.join(blessing.uri, SERVER_LOG_FILE), overwrite=True)
        write_blessing(blessing, report)


def identical_served_version(saved_model_dir: str, serving_model_dir: str) -> int | None:
    """The newest served version when it is byte-identical to the candidate, else None.

    The Pusher pushes nothing for such a candidate (components/pusher.py), so serving
    it for validation would change nothing; a re-run with a cached Trainer saves the
    server's start-up.
    """
    newest = pusher.newest_version(serving_model_dir) if serving_model_dir else None
    if newest and pusher.same_model(saved_model_dir, newest[1]):
        return newest[0]
    return None


def write_blessing(blessing: types.Artifact, report: PrepushReport) -> None:
    """Record the verdict as TFX does (property + marker file) and the report beside it."""
    tf.io.gfile.makedirs(blessing.uri)
    io_utils.write_string_file(
        os.path.join(blessing.uri, BLESSED_FILE if report.blessed else NOT_BLESSED_FILE), ""
    )
    io_utils.write_string_file(
        os.path.join(blessing.uri, REPORT_FILE), json.dumps(report.to_dict(), indent=2, sort_keys=True)
    )
    blessing.set_int_custom_property(BLESSED_KEY, int(report.blessed))
    if report.blessed:
        log.info(
            "pre-push validation: blessed%s",
            "" if report.validated else f" without validation ({report.reason})",
        )
    elif report.validated:
        log.warning("pre-push validation failed: %s", report.reason)
    else:
        log.info("pre-push validation: %s", report.reason)


class InfraValidatorSpec(ComponentSpec):
    PARAMETERS = {
        "prepush_config": ExecutionParameter(type=str),
        "model_name": ExecutionParameter(type=str),
        # The Pusher's TF Serving base path: a candidate byte-identical to its newest
        # version is not pushed, so it is not served for validation either.
        "serving_model_dir": ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "model_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
    }
    OUTPUTS = {"blessing": ChannelParameter(type=standard_artifacts.InfraBlessing)}


class InfraValidator(base_component.BaseComponent):
    """Pre-push validation: the candidate served by a real model server answers like it does in-process."""

    SPEC_CLASS = InfraValidatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(InfraValidatorExecutor)

    def __init__(
        self,
        model: types.BaseChannel,
        examples: types.BaseChannel,
        model_blessing: types.BaseChannel,
        model_name: str,
        config: PrepushConfig,
        serving_model_dir: str = "",
    ):
        spec = InfraValidatorSpec(
            serving_model_dir=serving_model_dir,
            model=model,
            examples=examples,
            model_blessing=model_blessing,
            model_name=model_name,
            prepush_config=json_utils.dumps(config.to_dict()),
            blessing=types.Channel(type=standard_artifacts.InfraBlessing),
        )
        super().__init__(spec=spec)
