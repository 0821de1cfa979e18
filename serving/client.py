"""gRPC client for TF Serving's PredictionService (`imgpipe predict` is built on it).

Uses only the stock protos and `prediction_service_pb2_grpc.PredictionServiceStub`,
so it works unchanged against a real `tensorflow_model_server` and against the
local server (serving/devserver). Requests have the shape TF Serving expects:
inputs keyed by the signature's input name, a [N] DT_STRING tensor.

Every call has a deadline (`timeout`) and is retried with exponential backoff
only when the server is UNAVAILABLE (down, restarting) or answers as TF Serving (and the
dev server) do while no version of the model is loaded yet (NOT_FOUND "Servable not
found for request: Latest(...)"); any other failure
raises `ServingRpcError` at once, with the status code and the server's message.

    with ServingClient("localhost:8500") as c:
        preds = c.predict_images("imgpipe", [open("cat.jpg", "rb").read()])
        preds[0].classes, preds[0].scores
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import message
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.config import MAX_MESSAGE_MB
from serving.errors import ServingRpcError
from serving.request_size import CLIENT_MESSAGE_MB
from serving.signatures import CLASSIFICATION, IMAGE_FEATURE, INPUT_KEYS, PREDICT_IMAGES, SERVING_DEFAULT

MB = 1024 * 1024

# Which version a call asks for: None for the newest the server serves, an int for that version,
# a str for the version a label of the server's model config names (model_spec.version_label,
# e.g. "stable" or "canary"); the answers carry the version that answered.
Version = int | str | None


def make_image_example(image: bytes) -> bytes:
    """A serialized tf.Example holding the image bytes, as serving_default expects."""
    feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))
    example = tf.train.Example(features=tf.train.Features(feature={IMAGE_FEATURE: feature}))
    return example.SerializeToString()


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Classes ranked by score (best first) for one input, and the model version that answered."""

    classes: list[str]
    scores: list[float]
    version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"classes": self.classes, "scores": self.scores, "version": self.version}


def _ranked(classes: np.ndarray, scores: np.ndarray, top_k: int | None) -> list[Prediction]:
    """Rows of [B, N] classes/scores -> Predictions sorted by score (ties: lower index first)."""
    if classes.shape != scores.shape or classes.ndim != 2:
        raise ValueError(
            f"expected classes and scores of the same shape [batch, N], got "
            f"{list(classes.shape)} and {list(scores.shape)}"
        )
    out = []
    for row_classes, row_scores in zip(classes, scores, strict=True):
        order = np.argsort(-row_scores, kind="stable")
        if top_k is not None:
            order = order[:top_k]
        out.append(
            Prediction(
                classes=[_text(row_classes[i]) for i in order],
                scores=[float(row_scores[i]) for i in order],
            )
        )
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


# TF Serving's answer while no version of the model is loaded yet (and for a model name it does
# not serve: the two read the same, so a wrong name fails after the retries, not at once).
NOT_LOADED_YET = "Servable not found for request: Latest("


# TF Serving with --enable_batching (as serving/deploy starts it) runs requests from several
# clients as one batch and answers every request of the batch with its error: another client's
# image that the model refuses fails this client's good one with INVALID_ARGUMENT. A request of
# one input refused so is asked again, after random pauses growing each time (up to 0.1, 0.2,
# 0.4 s) that seldom meet the same batch, before the refusal is taken as the input's own (an
# input the model refuses is refused every time: it costs ~0.35 s more). A stream of refused
# requests from other clients can still outlast it (a tester's: at 100 a second, 2 of 40 good
# images refused; at 600 a second, most), on TF Serving as on `imgpipe serve --enable-batching`.
REFUSAL_ATTEMPTS = 4


def _worth_retrying(code: grpc.StatusCode, details: str | None) -> bool:
    return code == grpc.StatusCode.UNAVAILABLE or (
        code == grpc.StatusCode.NOT_FOUND and (details or "").startswith(NOT_LOADED_YET)
    )


class ServingClient:
    """A channel to one TF Serving (or local) server, with deadlines and retries.

    retries: how many times an UNAVAILABLE (or not-loaded-yet) call is retried (so up to
    retries + 1 attempts), sleeping backoff * 2**attempt (capped at
    max_backoff, with jitter) in between. timeout: the deadline of each attempt.
    refusal_attempts: how many times in all a Predict or Classify request of one input is sent
    while the server refuses it as INVALID_ARGUMENT (REFUSAL_ATTEMPTS: a batching server's
    refusal can be another request's); 1 takes the first refusal as the input's. Each attempt
    has its own deadline.
    """

    def __init__(
        self,
        target: str,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        max_message_mb: int = CLIENT_MESSAGE_MB,
        channel: grpc.Channel | None = None,
        refusal_attempts: int = REFUSAL_ATTEMPTS,
    ):
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if refusal_attempts < 1:
            raise ValueError(f"refusal_attempts must be >= 1, got {refusal_attempts}")
        if not 1 <= max_message_mb <= MAX_MESSAGE_MB:
            raise ValueError(
                f"max_message_mb must be in 1..{MAX_MESSAGE_MB} (gRPC's limit), got {max_message_mb}"
            )
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.refusal_attempts = refusal_attempts
        size = max_message_mb * MB
        self._own_channel = channel is None
        self.channel = channel or grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", size),
                ("grpc.max_receive_message_length", size),
            ],
        )
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self._input_keys: dict[tuple[str, int | None, str], str] = {}

    def close(self) -> None:
        if self._own_channel:
            self.channel.close()

    def __enter__(self) -> ServingClient:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------
    def _call(self, method: str, rpc: Callable[..., Any], request: Any, timeout: float | None):
        deadline = self.timeout if timeout is None else timeout
        attempt = 0
        while True:
            try:
                return rpc(request, timeout=deadline)
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
                details = e.details() if hasattr(e, "details") else str(e)
                if _worth_retrying(code, details) and attempt < self.retries:
                    delay = min(self.max_backoff, self.backoff * 2**attempt)
                    time.sleep(delay * (0.5 + random.random() / 2))
                    attempt += 1
                    continue
                if _worth_retrying(code, details) and attempt:
                    details = f"{details} (after {attempt + 1} attempts)"
                raise ServingRpcError(method, self.target, code, details or "") from None

    @staticmethod
    def _spec(model: str, signature: str | None, version: Version) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=model)
        if signature:
            spec.signature_name = signature
        if isinstance(version, str):
            spec.version_label = version  # one of the model config's version_labels
        elif version is not None:
            spec.version.value = int(version)
        return spec

    # -- raw RPCs ----------------------------------------------------------------------
    def predict(
        self,
        model: str,
        inputs: Mapping[str, Any],
        signature: str = SERVING_DEFAULT,
        version: Version = None,
        output_filter: Sequence[str] = (),
        timeout: float | None = None,
    ) -> tuple[dict[str, np.ndarray], int | None]:
        """Predict with `inputs` {name: array-like}; returns ({output: ndarray}, version)."""
        request = predict_pb2.PredictRequest(model_spec=self._spec(model, signature, version))
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        request.output_filter.extend(output_filter)
        response = self._call("Predict", self._predict.Predict, request, timeout)
        outputs = {name: tf.make_ndarray(t) for name, t in response.outputs.items()}
        served = response.model_spec.version.value if response.model_spec.HasField("version") else None
        return outputs, served

    def metadata(self, model: str, version: Version = None, timeout: float | None = None) -> dict[str, Any]:
        """GetModelMetadata: {signature name: SignatureDef}."""
        return self.metadata_of(model, version, timeout)[0]

    def metadata_of(
        self, model: str, version: Version = None, timeout: float | None = None
    ) -> tuple[dict[str, Any], int | None]:
        """GetModelMetadata: ({signature name: SignatureDef}, the version that answered: a
        label's, or the newest's; None when the server names none)."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=self._spec(model, None, version),
            metadata_field=["signature_def"],
        )
        response = self._call("GetModelMetadata", self._predict.GetModelMetadata, request, timeout)
        served = response.model_spec.version.value if response.model_spec.HasField("version") else None
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        if not response.metadata["signature_def"].Unpack(sig_map):
            raise ServingRpcError(
                "GetModelMetadata",
                self.target,
                grpc.StatusCode.INTERNAL,
                "metadata['signature_def'] is not a SignatureDefMap",
            )
        return dict(sig_map.signature_def), served

    def model_status(
        self, model: str, version: Version = None, timeout: float | None = None
    ) -> list[tuple[int, str, str]]:
        """GetModelStatus: [(version, state name, error message)], newest first."""
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=self._spec(model, None, version))
        response = self._call("GetModelStatus", self._models.GetModelStatus, request, timeout)
        state = get_model_status_pb2.ModelVersionStatus.State
        return sorted(
            ((s.version, state.Name(s.state), s.status.error_message) for s in response.model_version_status),
            reverse=True,
        )

    def input_key(self, model: str, signature: str, version: Version = None) -> str:
        """The single input name of `signature` (known names, else from GetModelMetadata)."""
        if signature in INPUT_KEYS:  # the exporter's signatures; others via metadata
            return INPUT_KEYS[signature]
        key = (model, version, signature)
        if key not in self._input_keys:
            sigs = self.metadata(model, version)
            if signature not in sigs:
                raise ValueError(f"model {model!r} has no signature {signature!r}; it has {sorted(sigs)}")
            names = list(sigs[signature].inputs)
            if len(names) != 1:
                raise ValueError(f"signature {signature!r} has inputs {names}; expected one")
            self._input_keys[key] = names[0]
        return self._input_keys[key]

    # -- image classification ----------------------------------------------------------
    def _predict_strings(
        self,
        model: str,
        values: Sequence[bytes],
        signature: str,
        version: Version,
        top_k: int | None,
        timeout: float | None,
    ) -> list[Prediction]:
        if not values:
            raise ValueError("no inputs given: pass at least one")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        key = self.input_key(model, signature, version)
        batch = np.array(list(values), dtype=object)
        outputs, served = self._refused_alone(
            len(values),
            lambda: self.predict(model, {key: batch}, signature, version, ("classes", "scores"), timeout),
        )
        preds = _ranked(outputs["classes"], outputs["scores"], top_k)
        if len(preds) != len(values):
            raise ServingRpcError(
                "Predict",
                self.target,
                grpc.StatusCode.INTERNAL,
                f"sent {len(values)} inputs, got {len(preds)} predictions",
            )
        return [dataclasses.replace(p, version=served) for p in preds]

    def _refused_alone(self, inputs: int, ask: Callable[[], Any]) -> Any:
        """ask(), asked again while a request of one input is refused as INVALID_ARGUMENT, up to
        refusal_attempts times in all (REFUSAL_ATTEMPTS: the refusal may be a batch-mate's)."""
        attempt = 1
        while True:
            try:
                return ask()
            except ServingRpcError as e:
                if (
                    e.code != grpc.StatusCode.INVALID_ARGUMENT
                    or e.unknown_label  # the request's, not its input's: the same answer again
                    or inputs != 1
                    or attempt >= self.refusal_attempts
                ):
                    raise
            time.sleep(
                0.1 * 2 ** (attempt - 1) * random.random()
            )  # full jitter: two clients asking again part
            attempt += 1

    def predict_images(
        self,
        model: str,
        images: Sequence[bytes],
        top_k: int | None = None,
        signature: str = PREDICT_IMAGES,
        version: Version = None,
        timeout: float | None = None,
    ) -> list[Prediction]:
        """Encoded JPEG/PNG/GIF/BMP images -> ranked Predictions, one per image.

        With signature='serving_default' each image is wrapped in a tf.Example.
        """
        values = list(images)
        if signature == SERVING_DEFAULT:
            values = [make_image_example(v) for v in values]
        return self._predict_strings(model, values, signature, version, top_k, timeout)

    def predict_examples(
        self,
        model: str,
        examples: Sequence[bytes],
        top_k: int | None = None,
        signature: str = SERVING_DEFAULT,
        version: Version = None,
        timeout: float | None = None,
    ) -> list[Prediction]:
        """Serialized tf.Examples -> ranked Predictions via serving_default."""
        return self._predict_strings(model, list(examples), signature, version, top_k, timeout)

    def classify(
        self,
        model: str,
        examples: Sequence[bytes],
        top_k: int | None = None,
        signature: str = CLASSIFICATION,
        version: Version = None,
        timeout: float | None = None,
    ) -> list[Prediction]:
        """The Classify RPC on serialized tf.Examples -> ranked Predictions.

        TF Serving's Classify defaults to serving_default, which is a Predict
        signature here, so the classification signature is named explicitly.
        """
        if not examples:
            raise ValueError("no examples given: pass at least one")
        request = classification_pb2.ClassificationRequest(model_spec=self._spec(model, signature, version))
        for i, serialized in enumerate(examples):
            try:
                request.input.example_list.examples.add().ParseFromString(serialized)
            except message.DecodeError as e:
                raise ValueError(f"example {i} is not a serialized tf.Example: {e}") from e
        response = self._refused_alone(
            len(examples), lambda: self._call("Classify", self._predict.Classify, request, timeout)
        )
        served = response.model_spec.version.value if response.model_spec.HasField("version") else None
        preds = []
        for row in response.result.classifications:
            classes = np.array([[c.label for c in row.classes]], dtype=object)
            scores = np.array([[c.score for c in row.classes]], dtype=np.float32)
            preds.append(dataclasses.replace(_ranked(classes, scores, top_k)[0], version=served))
        return preds


# -- one-shot helper -------------------------------------------------------------------


def predict_images(
    target: str,
    model: str,
    images: Sequence[bytes],
    top_k: int | None = None,
    signature: str = PREDICT_IMAGES,
    version: Version = None,
    timeout: float = 10.0,
    retries: int = 3,
) -> list[Prediction]:
    """Open a channel, predict a batch of encoded images, close it."""
    with ServingClient(target, timeout=timeout, retries=retries) as client:
        return client.predict_images(model, images, top_k, signature, version)
