"""TF Serving's gRPC services over a ModelManager, with errors mapped to gRPC statuses.

- PredictionService: Predict (any signature, `output_filter`), Classify
  (classification signatures), MultiInference (classification tasks on one
  input, TF Serving's checks), GetModelMetadata (`signature_def`). Regress, and
  a regression task, answer as TF Serving does for a model without regression
  signatures (INVALID_ARGUMENT naming the signature's method).
- ModelService: GetModelStatus; HandleReloadConfigRequest, which serves the request's
  ModelServerConfig from then on (serving/devserver/models.py, TF Serving's ReloadConfig).

Every RPC body runs through `_serve_rpc`: a ServingError answers with its
code, a TensorFlow error with its code and a cleaned message, anything else
with INTERNAL; none of them takes the server down. Each method the services
declare is defined here: the generated base class answers an undefined one by
raising, which gRPC logs as an ERROR with a traceback.

Successful Predict, Classify and MultiInference calls are offered to the request log
(serving/devserver/request_log.py), which samples them and never blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from serving.devserver.manager import VersionStatus
from serving.devserver.models import ServedModels
from serving.devserver.request_log import RequestLog
from serving.errors import (
    InvalidRequestError,
    ServingError,
    clean_tf_message,
    status_code_from_int,
)
from serving.model_config import RELOAD_TYPE_REFUSED, entries_from_proto
from serving.signatures import SERVING_DEFAULT

log = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"


def _serve_rpc(context: grpc.ServicerContext, method: str, fn: Callable[[], Any]) -> Any:
    """Run one RPC body, answering errors with the right status instead of crashing."""
    try:
        return fn()
    except ServingError as e:
        code, message = e.code, str(e)
    except tf.errors.OpError as e:
        code, message = status_code_from_int(e.error_code), clean_tf_message(e.message)
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


def _status_proto(status: VersionStatus, out: get_model_status_pb2.ModelVersionStatus) -> None:
    out.version = status.version
    out.state = status.state
    out.status.error_code = status.error_code.value[0]
    out.status.error_message = status.error_message


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify and GetModelMetadata over the served models; `request_log` samples them."""

    def __init__(self, models: ServedModels, request_log: RequestLog | None = None):
        self._models = models
        self._request_log = request_log

    def Predict(self, request, context):
        def body():
            with self._models.acquire(_require_spec(request)) as loaded:
                response = loaded.predict(request)
            if self._request_log is not None:
                self._request_log.offer_predict(request, response)
            return response

        return _serve_rpc(context, "Predict", body)

    def Classify(self, request, context):
        def body():
            with self._models.acquire(_require_spec(request)) as loaded:
                response = loaded.classify(request)
            if self._request_log is not None:
                self._request_log.offer_classify(request, response)
            return response

        return _serve_rpc(context, "Classify", body)

    def Regress(self, request, context):
        def body():
            with self._models.acquire(_require_spec(request)) as loaded:
                loaded.check_regression(request.model_spec.signature_name or SERVING_DEFAULT)

        return _serve_rpc(context, "Regress", body)

    def MultiInference(self, request, context):
        def body():
            # TF Serving selects the version by the first task's model_spec (an empty one when
            # there is no task: INVALID_ARGUMENT, it has no name).
            spec = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
            with self._models.acquire(spec) as loaded:
                response = loaded.multi_inference(request)
            if self._request_log is not None:
                self._request_log.offer_multi_inference(request, response)
            return response

        return _serve_rpc(context, "MultiInference", body)

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
            with self._models.acquire(spec) as loaded:
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                loaded.fill_model_spec(response.model_spec)
                sig_map = get_model_metadata_pb2.SignatureDefMap()
                for name, sig in loaded.signature_defs.items():
                    sig_map.signature_def[name].CopyFrom(sig)
                response.metadata[SIGNATURE_DEF_FIELD].Pack(sig_map)
                return response

        return _serve_rpc(context, "GetModelMetadata", body)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus and HandleReloadConfigRequest over the served models."""

    def __init__(self, models: ServedModels):
        self._models = models

    def GetModelStatus(self, request, context):
        def body():
            response = get_model_status_pb2.GetModelStatusResponse()
            for s in self._models.statuses(_require_spec(request)):
                _status_proto(s, response.model_version_status.add())
            return response

        return _serve_rpc(context, "GetModelStatus", body)

    def HandleReloadConfigRequest(self, request, context):
        def body():
            if request.config.WhichOneof("config") != "model_config_list":  # TF Serving's check
                raise InvalidRequestError(RELOAD_TYPE_REFUSED)
            self._models.apply(entries_from_proto(request.config))
            log.info("reloaded the model config: serving %s", self._models.names())
            return model_management_pb2.ReloadConfigResponse()  # status OK

        return _serve_rpc(context, "HandleReloadConfigRequest", body)
