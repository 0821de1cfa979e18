"""The project's local model server: TF Serving's gRPC API over the Pusher's model dir.

For development and tests, where no `tensorflow_model_server` binary exists.
It implements the stock generated services of `tensorflow_serving.apis`, so the
same client code talks to it and to a real TF Serving:

- PredictionService: Predict (any signature, `output_filter`), Classify
  (classification signatures), GetModelMetadata (`signature_def`).
  Regress and MultiInference answer UNIMPLEMENTED.
- ModelService: GetModelStatus. HandleReloadConfigRequest answers UNIMPLEMENTED.

Versions follow TF Serving's model base path layout, `<base>/<version>/saved_model.pb`:
the newest `num_versions` integer directories are served (others, and
directories without saved_model.pb, are ignored); the base path is polled, a
new version is loaded and warmed up (its `assets.extra/tf_serving_warmup_requests`
replayed) before it takes traffic, and versions that are no longer wanted are
unloaded once the requests running on them have finished. A version that
fails to load leaves the previous one serving and is retried only when its
files change.

Run it with `imgpipe serve --model-base-path DIR --model-name NAME` or
`python -m serving.server ...`; tests use `start_in_thread(...)`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import gc
import logging
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import warmup
from serving.config import ServerConfig, add_serve_arguments, config_from_args
from serving.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    ModelUnavailableError,
    ServerStartError,
    ServingError,
    status_code_from_int,
)

log = logging.getLogger("imgpipe.serving.server")

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
CLASSIFY_INPUTS = "inputs"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"
SIGNATURE_DEF_FIELD = "signature_def"
SERVE_TAG = "serve"
MB = 1024 * 1024

State = get_model_status_pb2.ModelVersionStatus.State
_VERSION_DIR = re.compile(r"[0-9]{1,18}")
_MAX_REMEMBERED_STATES = 32


# ----------------------------------------------------------------------------------------
# Configuration


# ----------------------------------------------------------------------------------------
# Version directories


def list_versions(base_path: str) -> dict[int, str]:
    """Complete version directories under base_path: {version: path}.

    A version is a directory named by an integer holding saved_model.pb (or
    .pbtxt); anything else (temp dirs, partial copies) is ignored.
    """
    found: dict[int, str] = {}
    for name in tf.io.gfile.listdir(base_path):
        name = name.rstrip("/")
        if not _VERSION_DIR.fullmatch(name):
            continue
        path = os.path.join(base_path, name)
        if not tf.io.gfile.isdir(path) or not _has_saved_model(path):
            continue
        version = int(name)
        if version in found:
            log.warning(
                "ignoring %s: version %d is already at %s",
                path,
                version,
                found[version],
            )
            continue
        found[version] = path
    return found


def _has_saved_model(path: str) -> bool:
    return any(tf.io.gfile.exists(os.path.join(path, f)) for f in ("saved_model.pb", "saved_model.pbtxt"))


def _fingerprint(path: str) -> tuple[int, int, float]:
    """(file count, total bytes, newest mtime) of a directory tree: changes when files do."""
    count, size, newest = 0, 0, 0.0
    for root, _, files in tf.io.gfile.walk(path):
        for f in files:
            stat = tf.io.gfile.stat(os.path.join(root, f))
            count += 1
            size += stat.length
            newest = max(newest, stat.mtime_nsec / 1e9)
    return count, size, newest


def read_signature_defs(export_dir: str) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs of the `serve` MetaGraph, as TF Serving reads them."""
    pb = os.path.join(export_dir, "saved_model.pb")
    sm = saved_model_pb2.SavedModel()
    if tf.io.gfile.exists(pb):
        with tf.io.gfile.GFile(pb, "rb") as f, warnings.catch_warnings():
            # protobuf only warns on some garbage; the MetaGraph checks below catch it
            warnings.simplefilter("ignore", RuntimeWarning)
            sm.ParseFromString(f.read())
    else:
        with tf.io.gfile.GFile(os.path.join(export_dir, "saved_model.pbtxt")) as f:
            text_format.Parse(f.read(), sm)
    if not sm.meta_graphs:
        raise ValueError(f"{export_dir}: saved_model.pb holds no MetaGraph (not a SavedModel?)")
    for meta_graph in sm.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"{export_dir}: no MetaGraph tagged {SERVE_TAG!r}")


# ----------------------------------------------------------------------------------------
# One loaded version


def _clean_tf_message(message: str) -> str:
    """The useful line(s) of a TensorFlow runtime error, without node dumps and stacks."""
    lines = []
    for line in message.splitlines():
        s = line.strip()
        if not s or s.startswith(("[[", "Graph execution error", "Detected at node", "File ")):
            continue
        if line.startswith((" ", "\t")):  # source lines of the "defined at" stack
            continue
        s = s.replace("<stack traces unavailable>", "")
        lines.append(re.sub(r"\s*\[\[\{\{node .*$|\s*\[Op:[^\]]*\]$", "", s).strip())
    text = " ".join(x for x in lines if x)
    return text or message.strip().splitlines()[0]


def _tensor_to_array(alias: str, proto: Any, spec: tf.TensorSpec, signature: str) -> np.ndarray:
    """A request TensorProto -> numpy, checked against the signature's TensorSpec."""
    expected = spec.dtype.as_datatype_enum
    if proto.dtype != expected:
        got = tf.dtypes.as_dtype(proto.dtype).name if proto.dtype else "DT_INVALID"
        raise InvalidRequestError(
            f"input {alias!r} has dtype {got} but signature {signature!r} expects {spec.dtype.name}"
        )
    try:
        array = tf.make_ndarray(proto)
    except (ValueError, TypeError) as e:
        raise InvalidRequestError(f"tensor parsing error: {alias}: {e}") from e
    if not spec.shape.is_compatible_with(array.shape):
        raise InvalidRequestError(
            f"input {alias!r} has shape {list(array.shape)} but signature {signature!r} expects {spec.shape}"
        )
    if array.ndim >= 1 and spec.shape.rank and spec.shape[0] is None and array.shape[0] == 0:
        raise InvalidRequestError(f"input {alias!r} is an empty batch: send at least one element")
    return array


class LoadedVersion:
    """A loaded SavedModel version plus a count of the requests running on it."""

    def __init__(self, model_name: str, version: int, path: str):
        self.model_name = model_name
        self.version = version
        self.path = path
        self.signature_defs = read_signature_defs(path)
        self._model = tf.saved_model.load(path, tags=[SERVE_TAG])
        self._functions = {name: self._model.signatures[name] for name in self._model.signatures}
        # `__saved_model_init_op` is listed as a signature but is not callable.
        missing = sorted(s for s in set(self.signature_defs) - set(self._functions) if s[:2] != "__")
        if missing:
            raise ValueError(f"{path}: signatures {missing} in saved_model.pb are not loadable")
        self._inputs = {name: dict(fn.structured_input_signature[1]) for name, fn in self._functions.items()}
        self.warmup_summary = "not run"
        self._in_flight = 0
        self._cond = threading.Condition()

    # -- reference counting ------------------------------------------------------------
    def acquire(self) -> None:
        with self._cond:
            self._in_flight += 1

    def release(self) -> None:
        with self._cond:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._cond.notify_all()

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    def drain(self, timeout: float) -> bool:
        """Wait until no request runs on this version; False if `timeout` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._in_flight == 0, timeout=timeout)

    def close(self) -> None:
        """Drop the TensorFlow objects; memory is freed once no request holds them."""
        self._functions = {}
        self._model = None

    # -- inference ---------------------------------------------------------------------
    def _signature(self, name: str) -> meta_graph_pb2.SignatureDef:
        if name not in self.signature_defs or name not in self._functions:
            raise ServingError(
                f'Serving signature key "{name}" not found. Signatures of model '
                f"{self.model_name!r} version {self.version}: "
                f"{', '.join(sorted(self.signature_defs))}",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        return self.signature_defs[name]

    def run(
        self,
        signature: str,
        inputs: Mapping[str, Any],
        output_filter: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        """Run a signature on TensorProto (or numpy) inputs; return the named outputs."""
        sig = self._signature(signature)
        if sig.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
            raise ServingError(
                f"signature {signature!r} has unsupported method_name {sig.method_name!r}",
                grpc.StatusCode.INTERNAL,
            )
        specs = self._inputs[signature]
        if set(inputs) != set(specs):
            sent, wanted = sorted(inputs), sorted(specs)
            raise InvalidRequestError(
                f"input size does not match signature {signature!r}: "
                f"{len(sent)}!={len(wanted)} len({{{','.join(sent)}}}) != "
                f"len({{{','.join(wanted)}}}). "
                f"Sent extra: {{{','.join(sorted(set(sent) - set(wanted)))}}}. "
                f"Missing but required: {{{','.join(sorted(set(wanted) - set(sent)))}}}."
            )
        seen: set[str] = set()
        for alias in output_filter:
            if alias not in sig.outputs:
                raise InvalidRequestError(
                    f"output tensor alias not found in signature: {alias} Outputs expected "
                    f"to be in the set {{{','.join(sorted(sig.outputs))}}}."
                )
            if alias in seen:
                raise InvalidRequestError(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        arrays = {}
        for alias, value in inputs.items():
            spec = specs[alias]
            if isinstance(value, np.ndarray):
                arrays[alias] = value
            else:
                arrays[alias] = _tensor_to_array(alias, value, spec, signature)
        batch_sizes = {a.shape[0] for a in arrays.values() if a.ndim >= 1}
        try:
            tensors = {alias: tf.constant(array, dtype=specs[alias].dtype) for alias, array in arrays.items()}
            outputs = self._functions[signature](**tensors)
        except tf.errors.OpError as e:
            code = status_code_from_int(e.error_code)
            raise ServingError(
                f"signature {signature!r} failed on the request"
                + (f" (batch of {batch_sizes.pop()})" if len(batch_sizes) == 1 else "")
                + f": {_clean_tf_message(e.message)}",
                code,
            ) from e
        except (TypeError, ValueError) as e:
            raise InvalidRequestError(f"signature {signature!r} rejected the inputs: {e}") from e
        names = list(output_filter) or list(sig.outputs)
        return {name: outputs[name].numpy() for name in names}

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        outputs = self.run(signature, dict(request.inputs), list(request.output_filter))
        response = predict_pb2.PredictResponse()
        self.fill_model_spec(response.model_spec, signature)
        for name, array in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(array))
        return response

    def classify(
        self, request: classification_pb2.ClassificationRequest
    ) -> classification_pb2.ClassificationResponse:
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        sig = self._signature(signature)
        if sig.method_name != CLASSIFY_METHOD:
            raise InvalidRequestError(
                f"Expected classification signature method_name to be {CLASSIFY_METHOD}. "
                f"Was: {sig.method_name} (signature {signature!r}; pass the classification "
                f"signature's name in model_spec.signature_name)"
            )
        if set(sig.inputs) != {CLASSIFY_INPUTS}:
            raise ServingError(
                f"classification signature {signature!r} must have one input "
                f"{CLASSIFY_INPUTS!r}, has {sorted(sig.inputs)}",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        if not ({CLASSIFY_CLASSES, CLASSIFY_SCORES} & set(sig.outputs)):
            raise ServingError(
                f"classification signature {signature!r} has neither "
                f"{CLASSIFY_CLASSES!r} nor {CLASSIFY_SCORES!r} outputs",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        examples = serialized_examples(request.input)
        outputs = self.run(signature, {CLASSIFY_INPUTS: np.array(examples, dtype=object)})
        classes = outputs.get(CLASSIFY_CLASSES)
        scores = outputs.get(CLASSIFY_SCORES)
        for name, array in ((CLASSIFY_CLASSES, classes), (CLASSIFY_SCORES, scores)):
            if array is not None and (array.ndim != 2 or array.shape[0] != len(examples)):
                raise ServingError(
                    f"Expected {name} Tensor of shape [batch_size num_classes] with "
                    f"batch_size {len(examples)}, got {list(array.shape)}",
                    grpc.StatusCode.INTERNAL,
                )
        if classes is not None and scores is not None and classes.shape != scores.shape:
            raise ServingError(
                f"classes shape {list(classes.shape)} != scores shape {list(scores.shape)}",
                grpc.StatusCode.INTERNAL,
            )
        response = classification_pb2.ClassificationResponse()
        self.fill_model_spec(response.model_spec, signature)
        width = (classes if classes is not None else scores).shape[1]
        for i in range(len(examples)):
            row = response.result.classifications.add()
            for j in range(width):
                c = row.classes.add()
                if classes is not None:
                    c.label = classes[i, j].decode("utf-8", errors="replace")
                if scores is not None:
                    c.score = float(scores[i, j])
        return response

    def fill_model_spec(self, spec: model_pb2.ModelSpec, signature: str | None = None) -> None:
        spec.name = self.model_name
        spec.version.value = self.version
        if signature is not None:
            spec.signature_name = signature

    def warm_up(self, run_warmup_file: bool = True) -> str:
        """Run the version once before it takes traffic; return what was run, for the log.

        Replays assets.extra/tf_serving_warmup_requests when present (as TF
        Serving does); otherwise calls `predict_images` (or serving_default
        via a tf.Example) on a tiny generated PNG, so graph initialisation is
        not paid by the first request. Any failure fails the load.
        """
        logs = warmup.read_warmup_requests(self.path) if run_warmup_file else []
        if logs:
            replayed = 0
            for entry in logs:
                kind = entry.WhichOneof("log_type")
                if kind == "predict_log":
                    self.predict(entry.predict_log.request)
                elif kind == "classify_log":
                    self.classify(entry.classify_log.request)
                else:
                    log.warning("%s: skipping warmup record of type %s", self.path, kind)
                    continue
                replayed += 1
            return f"{replayed} warmup requests"
        png = tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8)).numpy()
        if list(self._inputs.get("predict_images", {})) == ["images"]:
            self.run("predict_images", {"images": np.array([png], dtype=object)})
            return "a predict_images call"
        if list(self._inputs.get(DEFAULT_SIGNATURE, {})) == ["examples"]:
            feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[png]))
            example = tf.train.Example(features=tf.train.Features(feature={"image": feature}))
            self.run(DEFAULT_SIGNATURE, {"examples": np.array([example.SerializeToString()])})
            return "a serving_default call"
        return "nothing (no warmup file and no image signature)"


def serialized_examples(model_input: Any) -> list[bytes]:
    """tensorflow.serving.Input -> serialized tf.Examples (context merged into each)."""
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in model_input.example_list.examples]
    elif kind == "example_list_with_context":
        lists = model_input.example_list_with_context
        examples = []
        for e in lists.examples:
            merged = tf.train.Example()
            merged.CopyFrom(lists.context)
            for key, feature in e.features.feature.items():
                merged.features.feature[key].CopyFrom(feature)
            examples.append(merged.SerializeToString())
    else:
        raise InvalidRequestError("Input is empty.")
    if not examples:
        raise InvalidRequestError("Input is empty: the example list holds no examples.")
    return examples


# ----------------------------------------------------------------------------------------
# The version manager


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    version: int
    state: int  # ModelVersionStatus.State
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


class ModelManager:
    """Keeps the newest `num_versions` versions of one model loaded, polling the base path.

    Requests take a version with `acquire()`, which holds a reference: a
    version being unloaded waits for those requests before it is released.
    """

    def __init__(
        self,
        model_name: str,
        base_path: str,
        poll_seconds: float = 2.0,
        num_versions: int = 1,
        run_warmup: bool = True,
        drain_seconds: float = 30.0,
    ):
        self.model_name = model_name
        self.base_path = base_path
        self.poll_seconds = poll_seconds
        self.num_versions = num_versions
        self.run_warmup = run_warmup
        self.drain_seconds = drain_seconds
        self._lock = threading.Condition()  # guards _serving and _states
        self._serving: dict[int, LoadedVersion] = {}
        self._states: dict[int, VersionStatus] = {}
        self._failed: dict[int, tuple[int, int, float]] = {}  # version -> files at failure
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Load what is on disk now (blocking), then poll in a background thread."""
        self.poll_once()
        self._thread = threading.Thread(target=self._poll_loop, name="serving-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and unload every version (waiting for their requests)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(60.0, self.drain_seconds + 30.0))
        with self._poll_lock:
            for version in sorted(self.serving_versions()):
                self._unload(version)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # the poller must outlive any one bad poll
                log.exception("polling %s failed; will retry", self.base_path)

    def poll_once(self) -> None:
        """One reconciliation of loaded versions with the directories on disk."""
        with self._poll_lock:
            if self._stop.is_set() and self._thread is not None:
                return
            try:
                on_disk = list_versions(self.base_path)
            except (tf.errors.OpError, OSError) as e:
                log.warning("cannot list model base path %s: %s", self.base_path, e)
                return
            aspired = sorted(on_disk, reverse=True)[: self.num_versions]
            for version in aspired:  # newest first: it takes traffic as soon as it is ready
                if version not in self.serving_versions():
                    self._load(version, on_disk[version])
            loaded = set(self.serving_versions())
            keep = {v for v in aspired if v in loaded}
            if not keep:
                # No wanted version could load: keep serving the newest one still on disk.
                still_there = [v for v in loaded if v in on_disk]
                keep = {max(still_there)} if still_there else set()
            for version in sorted(loaded - keep):
                self._unload(version)
            for version in list(self._failed):
                if version not in on_disk:
                    del self._failed[version]

    def _set_state(self, status: VersionStatus) -> None:
        with self._lock:
            self._states[status.version] = status
            for old in sorted(self._states)[: max(0, len(self._states) - _MAX_REMEMBERED_STATES)]:
                if old not in self._serving:
                    del self._states[old]
            self._lock.notify_all()

    def _load(self, version: int, path: str) -> None:
        try:
            files = _fingerprint(path)
        except (tf.errors.OpError, OSError) as e:
            log.warning("cannot read version dir %s: %s", path, e)
            return
        if self._failed.get(version) == files:
            return  # failed before and unchanged since: do not retry every poll
        self._set_state(VersionStatus(version, State.LOADING))
        log.info("Loading model %r version %d from %s", self.model_name, version, path)
        start = time.monotonic()
        try:
            loaded = LoadedVersion(self.model_name, version, path)
            loaded.warmup_summary = loaded.warm_up(self.run_warmup)
        except Exception as e:  # noqa: BLE001 - any load/warm-up failure keeps the old version
            self._failed[version] = files
            message = str(e) if isinstance(e, ServingError) else f"{type(e).__name__}: {e}"
            code = e.code if isinstance(e, ServingError) else grpc.StatusCode.UNKNOWN
            if isinstance(e, tf.errors.OpError):
                code, message = (
                    status_code_from_int(e.error_code),
                    _clean_tf_message(e.message),
                )
            self._set_state(VersionStatus(version, State.END, code, message))
            log.error(
                "Failed to load model %r version %d from %s: %s (still serving %s)",
                self.model_name,
                version,
                path,
                message,
                self.serving_versions() or "nothing",
            )
            return
        self._failed.pop(version, None)
        with self._lock:
            self._serving[version] = loaded
            self._states[version] = VersionStatus(version, State.AVAILABLE)
            self._lock.notify_all()
        log.info(
            "Loaded model %r version %d in %.1fs (warm-up: %s); serving versions %s",
            self.model_name,
            version,
            time.monotonic() - start,
            loaded.warmup_summary,
            self.serving_versions(),
        )

    def _unload(self, version: int) -> None:
        with self._lock:
            loaded = self._serving.pop(version, None)
            if loaded is None:
                return
            self._states[version] = VersionStatus(version, State.UNLOADING)
        log.info(
            "Unloading model %r version %d (%d requests in flight)",
            self.model_name,
            version,
            loaded.in_flight,
        )
        if not loaded.drain(self.drain_seconds):
            log.warning(
                "version %d still has %d requests after %.0fs; releasing it (they keep their own reference)",
                version,
                loaded.in_flight,
                self.drain_seconds,
            )
        loaded.close()
        del loaded
        gc.collect()
        self._set_state(VersionStatus(version, State.END))
        log.info("Unloaded model %r version %d", self.model_name, version)

    # -- queries -----------------------------------------------------------------------
    def serving_versions(self) -> list[int]:
        with self._lock:
            return sorted(self._serving)

    def get_loaded(self, version: int) -> LoadedVersion | None:
        """The loaded version object (for diagnostics), or None."""
        with self._lock:
            return self._serving.get(version)

    def wait_until_available(self, timeout: float, version: int | None = None) -> bool:
        """Block until some version (or `version`) serves; False on timeout."""
        with self._lock:
            return self._lock.wait_for(
                lambda: (version in self._serving) if version is not None else bool(self._serving),
                timeout=timeout,
            )

    def statuses(self, version: int | None = None) -> list[VersionStatus]:
        with self._lock:
            if version is not None:
                return [self._states[version]] if version in self._states else []
            return [self._states[v] for v in sorted(self._states, reverse=True)]

    def check_model_name(self, spec: model_pb2.ModelSpec) -> None:
        if spec.name != self.model_name:
            raise ModelNotFoundError(
                f"Servable not found for request: model {spec.name!r} is not served "
                f"(this server serves {self.model_name!r})"
            )

    @contextlib.contextmanager
    def acquire(self, spec: model_pb2.ModelSpec) -> Iterator[LoadedVersion]:
        """The version a request asks for (newest by default), held until the block ends."""
        self.check_model_name(spec)
        if spec.HasField("version_label"):
            raise InvalidRequestError(
                f"Unrecognized servable version label: {spec.version_label} (this server "
                f"assigns no labels; select a version with model_spec.version)"
            )
        with self._lock:
            if spec.HasField("version"):
                loaded = self._serving.get(spec.version.value)
                if loaded is None:
                    raise ModelNotFoundError(
                        f"Servable not found for request: Specific({self.model_name}, "
                        f"{spec.version.value}); loaded versions: {sorted(self._serving)}"
                    )
            elif self._serving:
                loaded = self._serving[max(self._serving)]
            else:
                raise ModelUnavailableError(
                    f"no version of model {self.model_name!r} is loaded yet (base path {self.base_path})"
                )
            loaded.acquire()
        try:
            yield loaded
        finally:
            loaded.release()


# ----------------------------------------------------------------------------------------
# gRPC services


def _serve_rpc(context: grpc.ServicerContext, method: str, fn: Callable[[], Any]) -> Any:
    """Run one RPC body, answering errors with the right status instead of crashing."""
    try:
        return fn()
    except ServingError as e:
        code, message = e.code, str(e)
    except tf.errors.OpError as e:
        code, message = status_code_from_int(e.error_code), _clean_tf_message(e.message)
    except Exception as e:  # an RPC must never take the server down
        log.exception("%s failed unexpectedly", method)
        code, message = (
            grpc.StatusCode.INTERNAL,
            f"internal error: {type(e).__name__}: {e}",
        )
    if code != grpc.StatusCode.INTERNAL:
        log.debug("%s -> %s: %s", method, code.name, message)
    context.abort(code, message)


def _require_spec(request: Any) -> model_pb2.ModelSpec:
    if not request.HasField("model_spec"):
        raise InvalidRequestError("Missing ModelSpec")
    return request.model_spec


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify and GetModelMetadata over a ModelManager."""

    def __init__(self, manager: ModelManager):
        self._manager = manager

    def Predict(self, request, context):
        def body():
            with self._manager.acquire(_require_spec(request)) as loaded:
                return loaded.predict(request)

        return _serve_rpc(context, "Predict", body)

    def Classify(self, request, context):
        def body():
            with self._manager.acquire(_require_spec(request)) as loaded:
                return loaded.classify(request)

        return _serve_rpc(context, "Classify", body)

    def GetModelMetadata(self, request, context):
        def body():
            spec = _require_spec(request)
            fields = list(request.metadata_field)
            if not fields:
                raise InvalidRequestError("GetModelMetadataRequest must specify at least one metadata_field")
            for field in fields:
                if field != SIGNATURE_DEF_FIELD:
                    raise InvalidRequestError(
                        f"Metadata field {field} is not supported (supported: {SIGNATURE_DEF_FIELD})"
                    )
            with self._manager.acquire(spec) as loaded:
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                loaded.fill_model_spec(response.model_spec)
                sig_map = get_model_metadata_pb2.SignatureDefMap()
                for name, sig in loaded.signature_defs.items():
                    sig_map.signature_def[name].CopyFrom(sig)
                response.metadata[SIGNATURE_DEF_FIELD].Pack(sig_map)
                return response

        return _serve_rpc(context, "GetModelMetadata", body)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus over a ModelManager."""

    def __init__(self, manager: ModelManager):
        self._manager = manager

    def GetModelStatus(self, request, context):
        def body():
            spec = _require_spec(request)
            self._manager.check_model_name(spec)
            version = spec.version.value if spec.HasField("version") else None
            statuses = self._manager.statuses(version)
            if not statuses:
                what = f"version {version}" if version is not None else "any versions"
                raise ModelNotFoundError(f"Could not find {what} of model {self._manager.model_name}")
            response = get_model_status_pb2.GetModelStatusResponse()
            for s in statuses:
                out = response.model_version_status.add()
                out.version = s.version
                out.state = s.state
                out.status.error_code = s.error_code.value[0]
                out.status.error_message = s.error_message
            return response

        return _serve_rpc(context, "GetModelStatus", body)


# ----------------------------------------------------------------------------------------
# Server lifecycle


class RunningServer:
    """A started server: its bound port, the version manager, and stop()."""

    def __init__(
        self,
        server: grpc.Server,
        manager: ModelManager,
        config: ServerConfig,
        port: int,
    ):
        self.server = server
        self.manager = manager
        self.config = config
        self.port = port
        self._stopped = False

    @property
    def target(self) -> str:
        return f"{_host_for_target(self.config.host)}:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting RPCs, let in-flight ones finish (up to `grace` s), unload models."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.grace_seconds if grace is None else grace
        self.server.stop(grace).wait()
        self.manager.stop()


def _host_for_target(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def start_server(config: ServerConfig) -> RunningServer:
    """Load the model and start the gRPC server; returns once it accepts requests."""
    config.validate()
    manager = ModelManager(
        config.model_name,
        config.model_base_path,
        poll_seconds=config.poll_seconds,
        num_versions=config.num_versions,
        run_warmup=config.run_warmup,
        drain_seconds=config.drain_seconds,
    )
    manager.start()
    if not manager.serving_versions():
        log.warning(
            "no loadable version under %s yet; answering UNAVAILABLE until one appears",
            config.model_base_path,
        )
    size = config.max_message_mb * MB
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="serving-rpc"),
        options=[
            ("grpc.max_send_message_length", size),
            ("grpc.max_receive_message_length", size),
            ("grpc.so_reuseport", 0),  # a port already in use must fail, not be shared
        ],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs or None,
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(manager), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager), server)
    address = f"{_host_for_target(config.host)}:{config.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as e:
        port = 0
        reason = str(e)
    else:
        reason = "address in use or not available"
    if not port:
        manager.stop()
        raise ServerStartError(f"cannot bind {address}: {reason}")
    server.start()
    log.info(
        "Serving model %r (versions %s) on %s:%d",
        config.model_name,
        manager.serving_versions(),
        config.host,
        port,
    )
    return RunningServer(server, manager, config, port)


@contextlib.contextmanager
def start_in_thread(
    model_base_path: str,
    model_name: str,
    host: str = "127.0.0.1",
    port: int = 0,
    **settings: Any,
) -> Iterator[RunningServer]:
    """A server on a free port (port=0) for tests and benchmarks; stopped on exit.

    Yields the RunningServer; `.port` is the bound port, `.target` the address.
    """
    config = ServerConfig(
        model_base_path=model_base_path,
        model_name=model_name,
        host=host,
        port=port,
        **settings,
    )
    running = start_server(config)
    try:
        yield running
    finally:
        running.stop()


def serve(config: ServerConfig, stop_event: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop_event`), then shut down gracefully; returns 0.

    Shutdown stops accepting RPCs, lets in-flight ones finish for up to
    `grace_seconds`, then unloads the model. A second signal cuts the grace short.
    A signal during the initial model load stops the server right after it.
    """
    stop = stop_event or threading.Event()
    holder: dict[str, RunningServer] = {}
    previous: dict[int, Any] = {}

    def on_signal(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.is_set() and "server" in holder:
            log.warning("second %s: cancelling in-flight requests", name)
            holder["server"].server.stop(0)
            return
        log.info("%s received: shutting down", name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        holder["server"] = running = start_server(config)
        try:
            while not stop.wait(0.5):
                pass
        finally:
            log.info(
                "Stopping: finishing in-flight requests (grace %.1fs)",
                config.grace_seconds,
            )
            running.stop()
            log.info("Server stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


# ----------------------------------------------------------------------------------------
# CLI


def run_serve(args: argparse.Namespace) -> int:
    """Entry point for a parsed `imgpipe serve` command; returns the exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return serve(config_from_args(args))
    except ServerStartError as e:
        print(f"imgpipe serve: error: {e}", file=sys.stderr)
        return 2


def run_server(argv: Sequence[str] | argparse.Namespace | None = None) -> int:
    """`python -m serving.server ...`: parse argv (or take parsed args) and serve."""
    if isinstance(argv, argparse.Namespace):
        return run_serve(argv)
    parser = argparse.ArgumentParser(
        prog="imgpipe serve", description="Serve a model over TF Serving's gRPC API."
    )
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


add_arguments = add_serve_arguments

if __name__ == "__main__":
    sys.exit(run_server())
