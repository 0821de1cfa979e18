"""One loaded model version: its SavedModel, its signatures and the requests running on it.

`LoadedVersion` answers Predict and Classify the way TF Serving does (same
checks, same status codes, messages that name the input or signature), warms
itself up before it takes traffic, and counts the requests in flight so an
unload can wait for them (`drain`).
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    model_pb2,
    predict_pb2,
    prediction_log_pb2,
)

from serving import warmup
from serving.batching_config import BatchingParameters
from serving.config import DEFAULT_MAX_PIXELS
from serving.devserver.batching import Batcher
from serving.devserver.inputs import check_inputs
from serving.devserver.tensors import (
    array_to_proto,
    check_input_names,
    classification_result,
    input_arrays,
    serialized_examples,
)
from serving.devserver.versions import SERVE_TAG, read_signature_defs
from serving.errors import InvalidRequestError, ServingError, clean_tf_message, status_code_from_int
from serving.signatures import (
    CLASSIFY_METHOD,
    PREDICT_IMAGES,
    PREDICT_METHOD,
    REGRESS_METHOD,
    SERVING_DEFAULT,
)

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = SERVING_DEFAULT  # what an empty model_spec.signature_name means
# The Classify RPC's contract with a classification signature.
MAX_WARMUP_THREADS = 4  # signatures warmed up side by side
CLASSIFY_INPUTS = "inputs"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"


class LoadedVersion:
    """A loaded SavedModel version plus a count of the requests running on it.

    Raises (from the constructor) when the directory is not a loadable
    SavedModel or a signature listed in saved_model.pb cannot be called.
    Requests with an image above `max_pixels` (0: no limit) are refused
    before the model runs (serving/devserver/inputs.py), and so are requests of more than
    `max_batch_size` images (0: no limit), in TF Serving's words with batching on. With
    `batching` (TF Serving's --enable_batching), concurrent requests of a signature run as one
    call (serving/devserver/batching.py), up to its max_batch_size images per request and batch.
    """

    def __init__(
        self,
        model_name: str,
        version: int,
        path: str,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_batch_size: int = 0,
        batching: BatchingParameters | None = None,
    ):
        self.model_name = model_name
        self.version = version
        self.path = path
        self.max_pixels = max_pixels
        self.max_batch_size = max_batch_size
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
        self._drain_cut = False  # a second shutdown signal: unload without waiting
        self._close_when_idle = False  # released with requests on it: the last one closes it
        # TF Serving's --enable_batching: concurrent requests of a signature run as one call.
        self._batcher = Batcher(self._call, batching) if batching is not None else None

    # -- reference counting ------------------------------------------------------------
    def acquire(self) -> None:
        """Count one more request running on this version."""
        with self._cond:
            self._in_flight += 1

    def release(self) -> None:
        """Count one request finished; wakes `drain` when none is left. The last request off a
        version released undrained (`close_when_idle`) closes it and frees its memory."""
        with self._cond:
            self._in_flight -= 1
            last = self._in_flight == 0
            if last:
                self._cond.notify_all()
            close = last and self._close_when_idle
        if close:
            self.close()
            gc.collect()  # the model's objects hold reference cycles: freed now, not at a later pass

    def close_when_idle(self) -> bool:
        """Close now if no request runs on it (True), else when the last one ends (False)."""
        with self._cond:
            if self._in_flight:
                self._close_when_idle = True
                return False
        self.close()
        return True

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    def drain(self, timeout: float) -> bool:
        """Wait until no request runs on this version; False if `timeout` passed first, or the
        wait was cut short (`cut_drain`)."""
        with self._cond:
            self._cond.wait_for(lambda: self._in_flight == 0 or self._drain_cut, timeout=timeout)
            return self._in_flight == 0

    def cut_drain(self) -> None:
        """End a `drain` now, and any later one at once."""
        with self._cond:
            self._drain_cut = True
            self._cond.notify_all()

    def close(self) -> None:
        """Drop the TensorFlow objects; memory is freed once no request holds them."""
        if self._batcher is not None:
            self._batcher.stop()
        self._functions = {}
        self._model = None

    # -- inference ---------------------------------------------------------------------
    def _signature(self, name: str) -> meta_graph_pb2.SignatureDef:
        if name not in self.signature_defs or name not in self._functions:
            raise ServingError(
                f'Serving signature key "{name}" not found. Signatures of model '
                f"{self.model_name!r} version {self.version}: "
                f"{self.signature_names()}",
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
        check_input_names(inputs, specs, signature)
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
        arrays = input_arrays(inputs, specs, signature)
        batch_sizes = {a.shape[0] for a in arrays.values() if a.ndim >= 1}
        limit = self._batcher.params.max_batch_size if self._batcher else self.max_batch_size
        if limit and batch_sizes and max(batch_sizes) > limit:
            # TF Serving's batching queue, before the model runs: one request is one task.
            raise InvalidRequestError(
                f"Task size {max(batch_sizes)} is larger than maximum input batch size {limit}"
            )
        check_inputs(signature, arrays, self.max_pixels)
        if self._batcher:
            outputs = self._batcher.run(signature, arrays, key=tuple(output_filter))
        else:
            outputs = self._call(signature, arrays)
        return {name: outputs[name] for name in list(output_filter) or list(sig.outputs)}

    def _call(self, signature: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The signature run once on checked input arrays: every output, as numpy."""
        specs = self._inputs[signature]
        batch_sizes = {a.shape[0] for a in arrays.values() if a.ndim >= 1}
        try:
            tensors = {alias: tf.constant(array, dtype=specs[alias].dtype) for alias, array in arrays.items()}
            outputs = self._functions[signature](**tensors)
        except tf.errors.OpError as e:
            raise ServingError(
                f"signature {signature!r} failed on the request"
                + (f" (batch of {batch_sizes.pop()})" if len(batch_sizes) == 1 else "")
                + f": {clean_tf_message(e.message)}",
                status_code_from_int(e.error_code),
            ) from e
        except (TypeError, ValueError) as e:
            raise InvalidRequestError(f"signature {signature!r} rejected the inputs: {e}") from e
        return {name: value.numpy() for name, value in outputs.items()}

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        """The Predict RPC: run the named (or default) signature on the request's tensors."""
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        outputs = self.run(signature, dict(request.inputs), list(request.output_filter))
        response = predict_pb2.PredictResponse()
        self.fill_model_spec(response.model_spec, signature)
        for name, array in outputs.items():
            response.outputs[name].CopyFrom(array_to_proto(array))
        return response

    def signature_names(self) -> str:
        """The signatures a request may name (not `__saved_model_init_op`), for messages."""
        return ", ".join(sorted(s for s in self.signature_defs if s[:2] != "__"))

    def _not_found(self, said: str, signature: str) -> InvalidRequestError:
        """INVALID_ARGUMENT in TF Serving's words (`said`), then this version's signatures."""
        return InvalidRequestError(
            f"{said}: {signature} (signatures of model {self.model_name!r} version {self.version}: "
            f"{self.signature_names()})"
        )

    def check_regression(self, signature: str) -> None:
        """A Regress request's checks, in TF Serving's words: INVALID_ARGUMENT for a signature the
        model lacks or one that is no regression signature (every signature imgpipe exports),
        else UNIMPLEMENTED: this server runs no regression signature."""
        if signature not in self.signature_defs or signature[:2] == "__":
            raise self._not_found("No signature was found with the name", signature)
        method = self.signature_defs[signature].method_name
        if method != REGRESS_METHOD:
            raise InvalidRequestError(
                f"Expected regression signature method_name to be {REGRESS_METHOD}. Was: {method} "
                f"(signature {signature!r}: imgpipe's models classify; use Classify or Predict)"
            )
        raise ServingError(
            f"regression signature {signature!r}: imgpipe's dev server runs no regression signature",
            grpc.StatusCode.UNIMPLEMENTED,
        )

    def _classification_signature(self, signature: str) -> meta_graph_pb2.SignatureDef:
        """The checks TF Serving's classifier makes of a signature before it runs: INVALID_ARGUMENT
        for an unknown signature (Predict: FAILED_PRECONDITION), another method, or one input too
        many or few; FAILED_PRECONDITION for a single input not named `inputs` and for outputs
        without classes or scores."""
        if signature not in self.signature_defs or signature not in self._functions:
            raise self._not_found("No signature was found with the name", signature)
        sig = self._signature(signature)
        if sig.method_name != CLASSIFY_METHOD:
            raise InvalidRequestError(
                f"Expected classification signature method_name to be {CLASSIFY_METHOD}. "
                f"Was: {sig.method_name} (signature {signature!r}; pass the classification "
                f"signature's name in model_spec.signature_name)"
            )
        if len(sig.inputs) != 1:
            raise InvalidRequestError(
                f"Expected one input Tensor: classification signature {signature!r} has {sorted(sig.inputs)}"
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
        return sig

    def _classification_result(
        self, signature: str, examples: list[bytes]
    ) -> classification_pb2.ClassificationResult:
        outputs = self.run(signature, {CLASSIFY_INPUTS: np.array(examples, dtype=object)})
        return classification_result(
            outputs.get(CLASSIFY_CLASSES), outputs.get(CLASSIFY_SCORES), len(examples)
        )

    def classify(
        self, request: classification_pb2.ClassificationRequest
    ) -> classification_pb2.ClassificationResponse:
        """The Classify RPC: a classification signature on the request's tf.Examples."""
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        self._classification_signature(signature)
        examples = serialized_examples(request.input)
        response = classification_pb2.ClassificationResponse()
        response.result.CopyFrom(self._classification_result(signature, examples))
        self.fill_model_spec(response.model_spec, signature)
        return response

    def multi_inference(
        self, request: inference_pb2.MultiInferenceRequest
    ) -> inference_pb2.MultiInferenceResponse:
        """The MultiInference RPC: several classification (or regression) signatures on one input.

        TF Serving's checks, in its order and words, all before anything runs: every task names
        the model (one name for all), no signature twice, each signature exists and suits the
        task's method (classify or regress; another method is UNIMPLEMENTED), and all read the
        same input tensor. The version is the one the first task's model_spec selected
        (`ModelManager.acquire`); each result names the model, signature and version.
        """
        model_name = ""
        input_tensor = ""
        seen: set[str] = set()
        for task in request.tasks:
            spec = task.model_spec
            if not spec.name:
                raise InvalidRequestError("Found ModelSpec with an empty model name.")
            if model_name and spec.name != model_name:
                raise InvalidRequestError(
                    "All ModelSpecs in a MultiInferenceRequest must access the same model name."
                )
            model_name = spec.name
            signature = spec.signature_name or DEFAULT_SIGNATURE
            if signature in seen:
                raise InvalidRequestError(f"Duplicate evaluation of signature: {signature}")
            seen.add(signature)
            if signature not in self.signature_defs:
                raise self._not_found("Requested signature not found in model graph", signature)
            if task.method_name == CLASSIFY_METHOD:
                sig = self._classification_signature(signature)
            elif task.method_name == REGRESS_METHOD:
                self.check_regression(signature)  # raises: this server runs no regression
                continue
            else:
                raise ServingError(
                    f"Unsupported signature method_name: {task.method_name} (a task's method_name is "
                    f"{CLASSIFY_METHOD} or {REGRESS_METHOD})",
                    grpc.StatusCode.UNIMPLEMENTED,
                )
            name = sig.inputs[CLASSIFY_INPUTS].name
            if input_tensor and name != input_tensor:
                raise InvalidRequestError("Input tensor must be the same for all Signatures.")
            input_tensor = name
        examples = serialized_examples(request.input)
        response = inference_pb2.MultiInferenceResponse()
        for task in request.tasks:
            signature = task.model_spec.signature_name or DEFAULT_SIGNATURE
            result = response.results.add()
            result.classification_result.CopyFrom(self._classification_result(signature, examples))
            self.fill_model_spec(result.model_spec, signature)
        return response

    def _replay(self, logs: Sequence[prediction_log_pb2.PredictionLog]) -> int:
        """Replay warmup records, one thread per signature; return how many ran.

        Each signature's first call initialises its own copy of the graph (for a
        DenseNet121, ~1 s each, mostly in TensorFlow's runtime outside the GIL),
        so the signatures warm up side by side, as TF Serving does with
        `num_model_warmup_threads`. Records of one signature keep their order;
        the first failure (in file order of the signatures) fails the load.
        """
        by_signature: dict[str, list] = {}
        for entry in logs:
            kind = entry.WhichOneof("log_type")
            if kind == "predict_log":
                request, call = entry.predict_log.request, self.predict
                spec = request.model_spec
            elif kind == "classify_log":
                request, call = entry.classify_log.request, self.classify
                spec = request.model_spec
            elif kind == "multi_inference_log":  # grouped by its first task's signature
                request, call = entry.multi_inference_log.request, self.multi_inference
                spec = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
            else:
                log.warning("%s: skipping warmup record of type %s", self.path, kind)
                continue
            signature = spec.signature_name or DEFAULT_SIGNATURE
            by_signature.setdefault(signature, []).append((call, request))

        def replay(calls: list) -> int:
            for call, request in calls:
                call(request)
            return len(calls)

        groups = list(by_signature.values())
        if len(groups) <= 1:
            return sum(replay(calls) for calls in groups)
        with futures.ThreadPoolExecutor(min(len(groups), MAX_WARMUP_THREADS), "warmup") as pool:
            done = [pool.submit(replay, calls) for calls in groups]
        return sum(f.result() for f in done)  # re-raises the first failure

    def fill_model_spec(self, spec: model_pb2.ModelSpec, signature: str | None = None) -> None:
        """Name this version (and the signature that answered) in a response's model_spec."""
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
            return f"{self._replay(logs)} warmup requests"
        png = tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8)).numpy()
        if list(self._inputs.get(PREDICT_IMAGES, {})) == ["images"]:
            self.run(PREDICT_IMAGES, {"images": np.array([png], dtype=object)})
            return "a predict_images call"
        if list(self._inputs.get(DEFAULT_SIGNATURE, {})) == ["examples"]:
            feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[png]))
            example = tf.train.Example(features=tf.train.Features(feature={"image": feature}))
            self.run(DEFAULT_SIGNATURE, {"examples": np.array([example.SerializeToString()])})
            return "a serving_default call"
        return "nothing (no warmup file and no image signature)"
