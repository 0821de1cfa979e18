"""The local gRPC server and client, over a real loopback channel with the stock stubs.

One real model (tests/serving_fixtures.py) is built per session. Each answer is
compared with the same SavedModel called in-process on the same batch.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from imgpipe.cli import main as cli
from serving import client as client_lib
from serving.config import DEPLOY_MAX_BATCH_SIZE, ServerConfig
from serving.devserver import lifecycle, versions
from serving.errors import ServerStartError, ServingRpcError
from tests import helpers, serving_fixtures
from tests.helpers import encode_image, make_example

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = serving_fixtures.MODEL_NAME
State = get_model_status_pb2.ModelVersionStatus.State


# ----------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="session")
def model(serving_model) -> serving_fixtures.ServingModel:
    return serving_model


@pytest.fixture(scope="module")
def reference(model):
    """The same SavedModel, loaded in-process: the ground truth for every served answer."""
    return tf.saved_model.load(model.export_dir).signatures


def _base_path(tmp_path_factory, model, versions=(1,)) -> str:
    base = tmp_path_factory.mktemp("models") / NAME
    for v in versions:
        shutil.copytree(model.export_dir, base / str(v))
    return str(base)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    base = _base_path(tmp_path_factory, model)
    os.makedirs(os.path.join(base, "7"))  # incomplete push: no saved_model.pb
    os.makedirs(os.path.join(base, "tmp-push-3"))  # not an integer
    with lifecycle.start_in_thread(base, NAME, poll_seconds=0.5, max_message_mb=4) as running:
        yield running


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(server.target)
    yield (
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
    )
    channel.close()


@pytest.fixture(scope="module")
def client(server):
    with client_lib.ServingClient(server.target, timeout=30.0) as c:
        yield c


def _strings(values) -> tf.Tensor:
    return tf.constant(list(values), dtype=tf.string)


def _predict_request(signature, key, values, version=None, name=NAME):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs[key].CopyFrom(tf.make_tensor_proto(list(values), dtype=tf.string))
    return request


def _assert_healthy(stubs, model) -> None:
    predict, _ = stubs
    request = _predict_request("predict_images", "images", [model.items[0][0]])
    response = predict.Predict(request, timeout=30)
    assert tf.make_ndarray(response.outputs["classes"]).shape == (1, 3)


def _assert_classified_as_in_process(rows, examples, reference) -> None:
    """Classification rows: one per example, the classes and scores the `classification`
    signature gives in process."""
    expected = reference["classification"](inputs=_strings(examples))
    assert len(rows) == len(examples)
    for row, classes, scores in zip(
        rows, expected["classes"].numpy(), expected["scores"].numpy(), strict=True
    ):
        assert [c.label.encode() for c in row.classes] == list(classes)
        _assert_close([c.score for c in row.classes], scores)


def _assert_close(a, b) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def _state(running, version) -> int | None:
    statuses = running.manager.statuses(version)
    return statuses[0].state if statuses else None


# ----------------------------------------------------------------------------------------
# The fixture is meaningful


def test_fixture_model_separates_images(model, reference):
    """Otherwise equal scores between paths would prove nothing."""
    out = reference["predict_images"](images=_strings(i for i, _ in model.items))
    top = [c.decode() for c in out["classes"].numpy()[:, 0]]
    assert np.mean([t == label for t, (_, label) in zip(top, model.items, strict=True)]) >= 0.9
    assert out["scores"].numpy()[:, 0].std() > 0.01


# ----------------------------------------------------------------------------------------
# Round trips with the stock stubs


def test_predict_serving_default_equals_in_process(stubs, model, reference):
    predict, _ = stubs
    examples = [make_example(img) for img, _ in model.items[::4]]
    response = predict.Predict(_predict_request("serving_default", "examples", examples), timeout=30)
    assert response.model_spec.name == NAME
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    expected = reference["serving_default"](examples=_strings(examples))
    assert set(response.outputs) == {"classes", "scores"}
    _assert_close(tf.make_ndarray(response.outputs["scores"]), expected["scores"])
    assert (tf.make_ndarray(response.outputs["classes"]) == expected["classes"].numpy()).all()


def test_predict_default_signature_and_output_filter(stubs, model, reference):
    predict, _ = stubs
    examples = [make_example(img) for img, _ in model.items[1::5]]
    request = _predict_request("", "examples", examples)
    request.output_filter.append("scores")
    response = predict.Predict(request, timeout=30)
    assert response.model_spec.signature_name == "serving_default"
    assert list(response.outputs) == ["scores"]
    expected = reference["serving_default"](examples=_strings(examples))["scores"]
    _assert_close(tf.make_ndarray(response.outputs["scores"]), expected)


def test_predict_images_equals_in_process(stubs, model, reference):
    predict, _ = stubs
    images = [img for img, _ in model.items[2::3]]
    response = predict.Predict(_predict_request("predict_images", "images", images), timeout=30)
    expected = reference["predict_images"](images=_strings(images))
    _assert_close(tf.make_ndarray(response.outputs["scores"]), expected["scores"])
    # Each value in its dtype's field, as TF Serving writes them: a client reading the scores
    # from `float_val` (not tf.make_ndarray) gets them from either server.
    scores = response.outputs["scores"]
    assert scores.tensor_content == b""
    _assert_close(np.reshape(scores.float_val, expected["scores"].shape), expected["scores"])
    assert list(response.outputs["classes"].string_val) == list(expected["classes"].numpy().ravel())
    assert (tf.make_ndarray(response.outputs["classes"]) == expected["classes"].numpy()).all()


def test_classify_equals_in_process(stubs, model, reference):
    predict, _ = stubs
    examples = [make_example(img) for img, _ in model.items[::6]]
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = NAME
    request.model_spec.signature_name = "classification"
    for e in examples:
        request.input.example_list.examples.add().ParseFromString(e)
    response = predict.Classify(request, timeout=30)
    assert response.model_spec.version.value == 1
    _assert_classified_as_in_process(response.result.classifications, examples, reference)


def test_classify_merges_context_into_each_example(stubs, model, reference):
    """example_list_with_context: the image in the context, empty examples."""
    predict, _ = stubs
    image = model.items[-1][0]
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = NAME
    request.model_spec.signature_name = "classification"
    ctx = request.input.example_list_with_context
    ctx.context.ParseFromString(make_example(image))
    ctx.examples.add()
    ctx.examples.add()
    response = predict.Classify(request, timeout=30)
    expected = reference["classification"](inputs=_strings([make_example(image)] * 2))
    for row, scores in zip(response.result.classifications, expected["scores"].numpy(), strict=True):
        _assert_close([c.score for c in row.classes], scores)


def test_get_model_metadata_returns_the_signature_defs(stubs, model):
    predict, _ = stubs
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = NAME
    response = predict.GetModelMetadata(request, timeout=30)
    assert response.model_spec.name == NAME and response.model_spec.version.value == 1
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    on_disk = versions.read_signature_defs(model.export_dir)
    assert dict(sig_map.signature_def) == on_disk
    sigs = sig_map.signature_def
    assert sigs["classification"].method_name == "tensorflow/serving/classify"
    assert sigs["serving_default"].method_name == "tensorflow/serving/predict"
    images = sigs["predict_images"].inputs["images"]
    assert images.dtype == tf.string.as_datatype_enum
    assert [d.size for d in images.tensor_shape.dim] == [-1]
    assert set(sigs["predict_images"].outputs) == {"classes", "scores"}


def test_get_model_status(stubs, server):
    _, models = stubs
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = NAME
    response = models.GetModelStatus(request, timeout=30)
    # Only version 1: dir 7 has no saved_model.pb and tmp-push-3 is not a version.
    assert [(s.version, s.state) for s in response.model_version_status] == [(1, State.AVAILABLE)]
    assert response.model_version_status[0].status.error_code == 0
    request.model_spec.version.value = 7
    with pytest.raises(grpc.RpcError) as e:
        models.GetModelStatus(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_warmup_requests_were_replayed_on_load(server):
    loaded = server.manager.get_loaded(1)
    assert loaded is not None
    assert loaded.warmup_summary == f"{serving_fixtures.WARMUP_REQUESTS} warmup requests"


# ----------------------------------------------------------------------------------------
# Real photos: predict_images and the tf.Example path agree


def test_photos_jpeg_and_png_same_classes_on_both_paths(client, model, reference):
    photos = serving_fixtures.sample_photos()
    images = [jpeg for _, jpeg, _ in photos] + [png for _, _, png in photos]
    images += [serving_fixtures.as_jpeg(img) for img, _ in model.items[::9]]
    by_image = client.predict_images(NAME, images)
    by_example = client.predict_examples(NAME, [make_example(i) for i in images])
    by_example_signature = client.predict_images(NAME, images, signature="serving_default")
    assert len(by_image) == len(images)
    for a, b, c in zip(by_image, by_example, by_example_signature, strict=True):
        assert a.classes == b.classes == c.classes
        _assert_close(a.scores, b.scores)
        assert a.version == b.version == 1
    expected = reference["predict_images"](images=_strings(images))
    for pred, classes in zip(by_image, expected["classes"].numpy(), strict=True):
        assert pred.classes == [c.decode() for c in classes]
    # The photos are not digits, but each still gets its own scores.
    assert len({tuple(p.scores) for p in by_image}) == len(images)


def test_client_top_k_and_classify(client, model, reference):
    examples = [make_example(img) for img, _ in model.items[:3]]
    preds = client.classify(NAME, examples, top_k=2)
    expected = reference["serving_default"](examples=_strings(examples))["scores"].numpy()
    for pred, scores in zip(preds, expected, strict=True):
        assert len(pred.classes) == 2
        _assert_close(pred.scores, np.sort(scores)[::-1][:2])
    one = client.predict_images(NAME, [model.items[0][0]], top_k=1)
    assert one[0].classes == [model.items[0][1]]


# ----------------------------------------------------------------------------------------
# Bad requests: the right status, a useful message, and the server keeps serving


def _palette_bmp(image: bytes) -> bytes:
    """`image` as an 8-bit indexed-colour BMP (Pillow's mode "P")."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(image)).convert("RGB").quantize(256).save(buffer, format="BMP")
    return buffer.getvalue()


def _bad_cases(image: bytes):
    def predict(signature, key, values, dtype=tf.string, version=None, name=NAME, shape=None):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        request.inputs[key].CopyFrom(tf.make_tensor_proto(values, dtype=dtype, shape=shape))
        return "Predict", request

    no_spec = predict_pb2.PredictRequest()
    no_spec.inputs["images"].CopyFrom(tf.make_tensor_proto([image]))
    label = predict_pb2.PredictRequest()
    label.model_spec.name = NAME
    label.model_spec.version_label = "stable"
    filtered = predict("predict_images", "images", [image])[1]
    filtered.output_filter.append("probabilities")
    classify_default = classification_pb2.ClassificationRequest()
    classify_default.model_spec.name = NAME
    classify_default.input.example_list.examples.add().ParseFromString(make_example(image))
    classify_empty = classification_pb2.ClassificationRequest()
    classify_empty.model_spec.name = NAME
    classify_empty.model_spec.signature_name = "classification"
    classify_unknown = classification_pb2.ClassificationRequest()
    classify_unknown.model_spec.name = NAME
    classify_unknown.model_spec.signature_name = "mystery"
    metadata_no_field = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata_no_field.model_spec.name = NAME
    metadata_bad_field = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["x"])
    metadata_bad_field.model_spec.name = NAME
    ia, nf = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    return {
        "wrong input name": (
            predict("predict_images", "image", [image]),
            ia,
            "input tensor alias not found in signature: image",
        ),
        "wrong dtype": (
            predict("predict_images", "images", [1.0], tf.float32),
            ia,
            "float",
        ),
        "undecodable image": (
            predict("predict_images", "images", [image, b"not an image"]),
            ia,
            "image file format",
        ),
        "truncated jpeg": (
            predict("predict_images", "images", [serving_fixtures.as_jpeg(image)[:60]]),
            ia,
            "predict_images",
        ),
        # The decoder would give its colour indices as grey levels: refused by the model's graph.
        "palette bmp": (predict("predict_images", "images", [_palette_bmp(image)]), ia, "palette"),
        "empty batch": (
            predict("predict_images", "images", [], shape=[0]),
            ia,
            "empty batch",
        ),
        "rank-2 input": (predict("predict_images", "images", [[image]]), ia, "shape"),
        "bad serialized example": (
            predict("serving_default", "examples", [b"\xff\xff\xff not a proto"]),
            ia,
            "serving_default",
        ),
        "example without image": (
            predict("serving_default", "examples", [tf.train.Example().SerializeToString()]),
            ia,
            "image",
        ),
        "unknown output": (("Predict", filtered), ia, "probabilities"),
        "unknown model": (
            predict("predict_images", "images", [image], name="nope"),
            nf,
            "nope",
        ),
        "unknown version": (
            predict("predict_images", "images", [image], version=9),
            nf,
            "9",
        ),
        "unknown signature": (
            predict("mystery", "images", [image]),
            grpc.StatusCode.FAILED_PRECONDITION,
            "mystery",
        ),
        "version label": (("Predict", label), ia, "stable"),
        "missing model spec": (("Predict", no_spec), ia, "ModelSpec"),
        "classify on a predict signature": (
            ("Classify", classify_default),
            ia,
            "method_name",
        ),
        "classify empty input": (("Classify", classify_empty), ia, "empty"),
        # TF Serving's classifier: INVALID_ARGUMENT, where Predict answers FAILED_PRECONDITION.
        "classify on an unknown signature": (
            ("Classify", classify_unknown),
            ia,
            "No signature was found with the name: mystery",
        ),
        "metadata without field": (
            ("GetModelMetadata", metadata_no_field),
            ia,
            "metadata_field",
        ),
        "metadata unknown field": (("GetModelMetadata", metadata_bad_field), ia, "x"),
    }


BAD_CASES = sorted(_bad_cases(encode_image(np.zeros((4, 4), np.uint8))))


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_request_status_and_server_stays_healthy(stubs, model, case):
    (method, request), code, fragment = _bad_cases(model.items[0][0])[case]
    predict, _ = stubs
    with pytest.raises(grpc.RpcError) as e:
        getattr(predict, method)(request, timeout=30)
    assert e.value.code() == code, e.value.details()
    assert fragment in e.value.details()
    assert "Traceback" not in e.value.details() and "[[{{node" not in e.value.details()
    _assert_healthy(stubs, model)


def test_regress_answers_as_tf_serving_does_for_a_model_without_regression(stubs, model):
    """Real TF Serving checks the signature's method: every signature imgpipe exports is a
    predict or classify one, so a Regress call is INVALID_ARGUMENT naming it (before: UNIMPLEMENTED,
    which a client tested here would have met as another code on the real server)."""
    predict, _ = stubs
    request = regression_pb2.RegressionRequest()
    with pytest.raises(grpc.RpcError) as e:
        predict.Regress(request, timeout=30)
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    request.model_spec.name = NAME
    for signature in ("", "predict_images"):
        request.model_spec.signature_name = signature
        with pytest.raises(grpc.RpcError) as e:
            predict.Regress(request, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details().startswith(
            "Expected regression signature method_name to be tensorflow/serving/regress. Was: tensorflow/serving/"
        )
    request.model_spec.signature_name = "__saved_model_init_op"
    with pytest.raises(grpc.RpcError) as e:
        predict.Regress(request, timeout=30)
    assert e.value.details().startswith("No signature was found with the name: __saved_model_init_op")
    assert "__saved_model_init_op" not in e.value.details().split("(", 1)[1]
    _assert_healthy(stubs, model)


def test_a_reload_without_a_config_list_is_refused_as_tf_serving_refuses_it(stubs, model):
    """TF Serving's HandleReloadConfigRequest answers INVALID_ARGUMENT for a config that is not a
    model_config_list, an empty one included, and changes nothing."""
    _, models = stubs
    with pytest.raises(grpc.RpcError) as e:
        models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), timeout=30)
    assert (e.value.code(), e.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is "
        "currently supported",
    )
    _assert_healthy(stubs, model)


CLASSIFY, REGRESS = "tensorflow/serving/classify", "tensorflow/serving/regress"


def _multi(images, *tasks, version=None) -> inference_pb2.MultiInferenceRequest:
    """A MultiInference request on tf.Examples of `images`; each task is (name, signature, method)."""
    request = inference_pb2.MultiInferenceRequest()
    for image in images:
        request.input.example_list.examples.add().ParseFromString(make_example(image))
    for name, signature, method in tasks:
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = name, signature
        if version is not None:
            task.model_spec.version.value = version
    return request


def test_multi_inference_classifies_as_classify_does(stubs, model, reference):
    """A classification task answers what Classify does on the same examples, and its result
    names the model, signature and version, as TF Serving's does."""
    predict, _ = stubs
    images = [img for img, _ in model.items[1::5]]
    response = predict.MultiInference(
        _multi(images, (NAME, "classification", CLASSIFY), version=1), timeout=30
    )
    assert len(response.results) == 1
    result = response.results[0]
    assert (result.model_spec.name, result.model_spec.signature_name) == (NAME, "classification")
    assert result.model_spec.version.value == 1
    _assert_classified_as_in_process(
        result.classification_result.classifications, [make_example(i) for i in images], reference
    )


@pytest.mark.parametrize(
    "tasks, code, message",
    [
        # No task: TF Serving looks the servable up by an empty model_spec, which has no name.
        ((), grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."),
        (
            (("", "classification", CLASSIFY),),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ModelSpec has no name specified.",
        ),
        (
            ((NAME, "classification", CLASSIFY), ("", "x", CLASSIFY)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Found ModelSpec with an empty model name.",
        ),
        (
            ((NAME, "classification", CLASSIFY), ("other", "x", CLASSIFY)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
        ),
        (
            ((NAME, "classification", CLASSIFY), (NAME, "classification", CLASSIFY)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Duplicate evaluation of signature: classification",
        ),
        (
            ((NAME, "nope", CLASSIFY),),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Requested signature not found in model graph: nope",
        ),
        (
            ((NAME, "", CLASSIFY),),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Expected classification signature method_name to be tensorflow/serving/classify. Was: ",
        ),
        (
            ((NAME, "classification", REGRESS),),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Expected regression signature method_name to be tensorflow/serving/regress. Was: ",
        ),
        (
            ((NAME, "classification", "tensorflow/serving/predict"),),
            grpc.StatusCode.UNIMPLEMENTED,
            "Unsupported signature method_name: tensorflow/serving/predict",
        ),
        (
            ((NAME, "classification", CLASSIFY), (NAME, "predict_images", CLASSIFY)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Expected classification signature method_name",
        ),
    ],
    ids=[
        "no-task",
        "first-task-unnamed",
        "empty-name",
        "two-names",
        "duplicate",
        "unknown-signature",
        "predict-signature",
        "regress",
        "predict-method",
        "second-task-bad",
    ],
)
def test_multi_inference_refuses_as_tf_serving_does(stubs, model, tasks, code, message):
    """TF Serving's checks of a MultiInference request, its codes and words, before anything runs."""
    predict, _ = stubs
    with pytest.raises(grpc.RpcError) as e:
        predict.MultiInference(_multi([model.items[0][0]], *tasks), timeout=30)
    assert (e.value.code(), e.value.details()[: len(message)]) == (code, message)
    _assert_healthy(stubs, model)


def test_multi_inference_warmup_records_are_replayed(model, tmp_path):
    """TF Serving replays MultiInference records of a warmup file too; a failing one fails the load."""
    from serving import warmup
    from serving.devserver.loaded import LoadedVersion

    export = tmp_path / "1"
    shutil.copytree(model.export_dir, export)
    good = _multi([model.items[0][0]], (NAME, "classification", CLASSIFY))
    bad = _multi([model.items[0][0]], (NAME, "predict_images", CLASSIFY))
    for requests, expected in (
        ([good, good], "2 warmup requests"),
        ([good, bad], "classification signature"),
    ):
        logs = [
            prediction_log_pb2.PredictionLog(
                multi_inference_log=prediction_log_pb2.MultiInferenceLog(request=r)
            )
            for r in requests
        ]
        warmup.write_warmup_logs(str(export), logs)
        loaded = LoadedVersion(NAME, 1, str(export))
        if expected.endswith("requests"):
            assert loaded.warm_up() == expected
        else:
            with pytest.raises(Exception, match=expected):
                loaded.warm_up()


def test_multi_inference_without_examples_or_of_an_unloaded_version(stubs, model):
    predict, _ = stubs
    # A Predict without a model name too: INVALID_ARGUMENT, as TF Serving (not NOT_FOUND, which
    # clients retry as a model still loading).
    with pytest.raises(grpc.RpcError) as e:
        predict.Predict(
            _predict_request("predict_images", "images", [model.items[0][0]], name=""), timeout=30
        )
    assert (e.value.code(), e.value.details()[:31]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "ModelSpec has no name specified",
    )
    with pytest.raises(grpc.RpcError) as e:
        predict.MultiInference(_multi([], (NAME, "classification", CLASSIFY)), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "Input is empty" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        predict.MultiInference(
            _multi([model.items[0][0]], (NAME, "classification", CLASSIFY), version=7), timeout=30
        )
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert e.value.details().startswith(f"Servable not found for request: Specific({NAME}, 7)")


def test_message_larger_than_the_limit_is_rejected(stubs, model):
    """The fixture server allows 4 MB messages; 5 MB is refused, then it serves again."""
    predict, _ = stubs
    request = _predict_request("predict_images", "images", [b"\xff\xd8\xff" + b"0" * (5 * 2**20)])
    with pytest.raises(grpc.RpcError) as e:
        predict.Predict(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    _assert_healthy(stubs, model)


def test_a_request_over_the_batch_size_is_refused_as_tf_serving_with_batching_refuses_it(
    stubs, server, model
):
    """One Predict of 20,000 images ran whole (the server grew by gigabytes and kept working after
    the client's deadline), where TF Serving with the shipped batching config refuses over 32."""
    predict, _ = stubs
    images = [img for img, _ in model.items] * 3
    assert len(images) > DEPLOY_MAX_BATCH_SIZE
    request = _predict_request("predict_images", "images", images[: DEPLOY_MAX_BATCH_SIZE + 1])
    with pytest.raises(grpc.RpcError) as e:
        predict.Predict(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        e.value.details()
        == f"Task size {DEPLOY_MAX_BATCH_SIZE + 1} is larger than maximum input batch size 32"
    )
    predict.Predict(_predict_request("predict_images", "images", images[:DEPLOY_MAX_BATCH_SIZE]), timeout=30)
    # The clients send such a batch again in requests the server takes, and score every image.
    from imgpipe.cli.serving import _predict_in_parts
    from serving.request_size import RequestBudget

    # Requests of 40 asked for: the first is refused and sent again as 32 + 8, and every later
    # request is of at most 32 (the limit learnt), not refused once more before it is split.
    images = images * 3
    args = argparse.Namespace(
        model=NAME, top_k=None, signature="predict_images", version=None, batch_size=DEPLOY_MAX_BATCH_SIZE + 8
    )
    assert len(images) > 2 * args.batch_size
    budget = RequestBudget()
    sent = []
    with client_lib.ServingClient(server.target, timeout=30.0) as c:
        real = c.predict_images
        c.predict_images = lambda model, batch, *a, **k: (
            sent.append(len(batch)) or real(model, batch, *a, **k)
        )
        done = list(_predict_in_parts(c, args, [(str(i), img) for i, img in enumerate(images)], budget))
    assert [path for path, _ in done] == [str(i) for i in range(len(images))]
    assert all(not isinstance(p, (str, ServingRpcError)) for _, p in done)
    assert budget.images == DEPLOY_MAX_BATCH_SIZE
    assert sent[:3] == [args.batch_size, DEPLOY_MAX_BATCH_SIZE, 8] and max(sent[3:]) == DEPLOY_MAX_BATCH_SIZE
    # One image refused in those words (a proxy's): no request to split, not sent again forever.
    assert not budget.refused(
        "INVALID_ARGUMENT", "Task size 1 is larger than maximum input batch size 0", [10]
    )


def test_deadline_is_enforced_and_not_retried(server, model):
    with (
        client_lib.ServingClient(server.target, timeout=0.001, retries=3) as c,
        pytest.raises(ServingRpcError) as e,
    ):
        c.predict_images(NAME, [img for img, _ in model.items][:DEPLOY_MAX_BATCH_SIZE])
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "attempts" not in str(e.value)


# ----------------------------------------------------------------------------------------
# Client retries (fake transport: counts attempts exactly)


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code, details=None):
        self._code = code
        self._details = details

    def code(self):
        return self._code

    def details(self):
        return self._details or f"fake {self._code.name}"


def _flaky(codes):
    calls = []

    def rpc(request, timeout):
        calls.append(timeout)
        if len(calls) <= len(codes):
            code = codes[len(calls) - 1]
            raise _FakeRpcError(*code) if isinstance(code, tuple) else _FakeRpcError(code)
        return "ok"

    return rpc, calls


def test_client_retries_unavailable_only():
    c = client_lib.ServingClient("127.0.0.1:1", timeout=2.5, retries=3, backoff=0.001)
    try:
        rpc, calls = _flaky([grpc.StatusCode.UNAVAILABLE] * 2)
        assert c._call("Predict", rpc, None, None) == "ok"
        assert calls == [2.5, 2.5, 2.5]  # each attempt has its own deadline
        rpc, calls = _flaky([grpc.StatusCode.UNAVAILABLE] * 10)
        with pytest.raises(ServingRpcError, match="after 4 attempts") as e:
            c._call("Predict", rpc, None, None)
        assert e.value.code == grpc.StatusCode.UNAVAILABLE and len(calls) == 4
        # TF Serving's answer while no version is loaded yet is retried like UNAVAILABLE...
        loading = (grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(digits)")
        rpc, calls = _flaky([loading, loading])
        assert c._call("Predict", rpc, None, None) == "ok" and len(calls) == 3
        # ...another NOT_FOUND (a version that does not exist) is not.
        rpc, calls = _flaky(
            [(grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(digits, 9)")]
        )
        with pytest.raises(ServingRpcError) as e:
            c._call("Predict", rpc, None, None)
        assert e.value.code == grpc.StatusCode.NOT_FOUND and len(calls) == 1
        for code in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ):
            rpc, calls = _flaky([code])
            with pytest.raises(ServingRpcError) as e:
                c._call("Predict", rpc, None, None)
            assert e.value.code == code and len(calls) == 1
    finally:
        c.close()


def test_a_one_image_refusal_is_asked_again_before_it_is_the_images(monkeypatch):
    """TF Serving with --enable_batching answers every request merged into a batch with the
    batch's error: one image refused INVALID_ARGUMENT may be a batch-mate's refusal. A request
    of one image is sent up to REFUSAL_ATTEMPTS times before the refusal is its own; a request
    of several (the callers split it) and other codes are not sent again."""
    monkeypatch.setattr(client_lib.time, "sleep", lambda s: None)
    refused = (grpc.StatusCode.INVALID_ARGUMENT, "assertion failed: [not a JPEG, PNG, GIF or BMP image]")
    c = client_lib.ServingClient("127.0.0.1:1", timeout=2.5, retries=3, backoff=0.001)
    c._input_keys = {(NAME, None, "predict_images"): "images"}
    answer = predict_pb2.PredictResponse()
    answer.model_spec.version.value = 3
    answer.outputs["classes"].CopyFrom(tf.make_tensor_proto([[b"a", b"b"]]))
    answer.outputs["scores"].CopyFrom(tf.make_tensor_proto([[0.75, 0.25]], dtype=tf.float32))

    def serve(codes):
        rpc, calls = _flaky(codes)
        c._predict = types.SimpleNamespace(Predict=lambda request, timeout: rpc(request, timeout) and answer)
        return calls

    try:
        calls = serve([refused, refused])  # a batch-mate's refusal twice, then answered
        [pred] = c.predict_images(NAME, [b"png"])
        assert (pred.classes, pred.version, len(calls)) == (["a", "b"], 3, 3)
        calls = serve([refused] * 5)  # the image's own: refused every time
        with pytest.raises(ServingRpcError) as e:
            c.predict_images(NAME, [b"png"])
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and len(calls) == client_lib.REFUSAL_ATTEMPTS
        assert e.value.details == refused[1]  # the model's words, as a caller parses them
        calls = serve([refused])
        with pytest.raises(ServingRpcError):
            c.predict_images(NAME, [b"png", b"jpg"])  # several: split by the caller instead
        assert len(calls) == 1
        calls = serve([(grpc.StatusCode.FAILED_PRECONDITION, "Serving signature name not found")])
        with pytest.raises(ServingRpcError):
            c.predict_images(NAME, [b"png"])
        assert len(calls) == 1
        c.refusal_attempts = 1
        calls = serve([refused])
        with pytest.raises(ServingRpcError):
            c.predict_images(NAME, [b"png"])
        assert len(calls) == 1
    finally:
        c.close()
    with pytest.raises(ValueError, match="refusal_attempts must be >= 1"):
        client_lib.ServingClient("127.0.0.1:1", refusal_attempts=0)


def test_with_batching_a_batch_mates_refusal_is_not_taken_as_the_images(model, reference, tmp_path_factory):
    """`imgpipe serve --enable-batching` merges concurrent requests as TF Serving does with the
    shipped deploy files: a good image sent beside one the model refuses gets the batch's
    INVALID_ARGUMENT. The client asks again before it calls an image refused, so the good image
    is scored and only the bad one is refused."""
    base = _base_path(tmp_path_factory, model)
    params = tmp_path_factory.mktemp("batching") / "batching_parameters.txt"
    # A long wait for a partial batch: the two requests below always meet in one.
    params.write_text("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 400000 }\n")
    good, bad = model.items[0][0], b"not an image"

    def side_by_side(c, other):
        """The good image sent by `c` and the bad one by `other`, at once."""
        results = [None, None]
        start = threading.Barrier(2)

        def one(i, sender, image):
            start.wait()
            try:
                results[i] = sender.predict_images(NAME, [image])
            except ServingRpcError as e:
                results[i] = e

        threads = [
            threading.Thread(target=one, args=(i, *a)) for i, a in enumerate([(c, good), (other, bad)])
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return results

    with lifecycle.start_in_thread(
        base, NAME, enable_batching=True, batching_parameters_file=str(params), run_warmup=False
    ) as running:
        # A client that takes the first refusal at its word (a team's own, sending the bad image).
        with (
            client_lib.ServingClient(running.target, timeout=30.0, refusal_attempts=1) as trusting,
            client_lib.ServingClient(running.target, timeout=30.0) as c,
        ):
            merged = side_by_side(trusting, trusting)
            assert all(isinstance(r, ServingRpcError) for r in merged), merged
            assert {r.code for r in merged} == {grpc.StatusCode.INVALID_ARGUMENT}
            answered, refused = side_by_side(c, trusting)
            assert isinstance(refused, ServingRpcError) and refused.code == grpc.StatusCode.INVALID_ARGUMENT
            expected = reference["predict_images"](images=_strings([good]))
            assert answered[0].classes == [v.decode() for v in expected["classes"].numpy()[0]]
            _assert_close(answered[0].scores, expected["scores"].numpy()[0])
            # Requests merged into one call each get their own rows.
            images = [img for img, _ in model.items[:6]]
            with ThreadPoolExecutor(max_workers=3) as pool:
                parts = list(pool.map(lambda i: c.predict_images(NAME, images[i : i + 2]), [0, 2, 4]))
            expected = reference["predict_images"](images=_strings(images))
            got = [p for part in parts for p in part]
            assert [p.classes for p in got] == [
                [v.decode() for v in row] for row in expected["classes"].numpy()
            ]


def test_client_against_a_closed_port_fails_unavailable():
    with pytest.raises(ServingRpcError) as e:
        client_lib.predict_images("127.0.0.1:1", NAME, [b"x"], timeout=2, retries=1)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert "127.0.0.1:1" in str(e.value)


# ----------------------------------------------------------------------------------------
# Concurrency


def test_concurrent_burst_all_succeed(server, model, reference):
    images = [img for img, _ in model.items]
    batches = [[images[i % len(images)], images[(i * 7 + 3) % len(images)]] for i in range(32)]
    with (
        client_lib.ServingClient(server.target, timeout=60.0) as c,
        ThreadPoolExecutor(max_workers=8) as pool,
    ):
        results = list(pool.map(lambda b: c.predict_images(NAME, b), batches))
    assert len(results) == 32
    for batch, preds in zip(batches, results, strict=True):
        expected = reference["predict_images"](images=_strings(batch))
        for pred, classes, scores in zip(
            preds, expected["classes"].numpy(), expected["scores"].numpy(), strict=True
        ):
            assert pred.classes == [c.decode() for c in classes]
            _assert_close(pred.scores, scores)


# ----------------------------------------------------------------------------------------
# Versions: hot swap, failed loads, removal


class _RequestLoop:
    """A background client sending requests until stopped.

    `max_seconds` only bounds a test that fails without stopping it: it exceeds the sum of
    the waits of the test using it (a count bound could end the loop on a fast server
    before a slow machine has loaded the next version).
    """

    def __init__(self, target: str, image: bytes, max_seconds: float = 600):
        self.versions: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._args = (target, image, max_seconds)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        target, image, max_seconds = self._args
        deadline = time.monotonic() + max_seconds
        with client_lib.ServingClient(target, timeout=30.0, retries=0) as c:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    self.versions.append(c.predict_images(NAME, [image])[0].version)
                except ServingRpcError as e:
                    self.errors.append(str(e))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=60)


def test_hot_swap_under_load(model, reference, tmp_path_factory):
    base = _base_path(tmp_path_factory, model, versions=(1,))
    image = model.items[5][0]
    with lifecycle.start_in_thread(base, NAME, poll_seconds=0.2) as running:
        with _RequestLoop(running.target, image) as loop:
            helpers.wait_for(lambda: len(loop.versions) >= 3, 60, "requests on version 1")
            # A request "in flight" on version 1: the swap must wait for it.
            with running.manager.acquire() as held:
                assert held.version == 1
                shutil.copytree(model.export_dir, os.path.join(base, "2"))  # not atomic
                helpers.wait_for(lambda: 2 in running.manager.serving_versions(), 90, "version 2")
                helpers.wait_for(lambda: _state(running, 1) == State.UNLOADING, 30, "v1 unloading")
                seen = len(loop.versions)
                helpers.wait_for(lambda: 2 in loop.versions[seen:], 30, "requests on version 2")
                # The held version still computes while it drains.
                out = held.run("predict_images", {"images": np.array([image], dtype=object)})
                assert out["classes"].shape == (1, 3)
            helpers.wait_for(lambda: _state(running, 1) == State.END, 30, "v1 unloaded")
            seen = len(loop.versions)
            helpers.wait_for(lambda: len(loop.versions) >= seen + 3, 30, "more requests")
        assert loop.errors == []
        assert loop.versions[0] == 1 and loop.versions[-1] == 2
        first_v2 = loop.versions.index(2)
        assert set(loop.versions[first_v2:]) == {2}, "went back to v1 after serving v2"
        assert running.manager.serving_versions() == [2]
        with client_lib.ServingClient(running.target) as c:
            with pytest.raises(ServingRpcError) as e:
                c.predict_images(NAME, [image], version=1)
            assert e.value.code == grpc.StatusCode.NOT_FOUND
            status = {v: s for v, s, _ in c.model_status(NAME)}
            assert status[2] == "AVAILABLE" and status[1] == "END"
            pred = c.predict_images(NAME, [image])[0]
        expected = reference["predict_images"](images=_strings([image]))
        _assert_close(pred.scores, expected["scores"].numpy()[0])


def test_failed_version_keeps_old_and_removed_version_rolls_back(model, tmp_path_factory, caplog):
    base = _base_path(tmp_path_factory, model, versions=(1, 3))
    image = model.items[0][0]
    with lifecycle.start_in_thread(base, NAME, poll_seconds=0.2) as running:
        # Only the newest version is loaded.
        assert running.manager.serving_versions() == [3]
        assert _state(running, 1) is None
        c = client_lib.ServingClient(running.target, timeout=30.0, retries=0)
        # Version 4 is broken: saved_model.pb is garbage. Version 3 keeps serving.
        os.makedirs(os.path.join(base, "4"))
        with open(os.path.join(base, "4", "saved_model.pb"), "wb") as f:
            f.write(b"this is not a SavedModel")
        helpers.wait_for(lambda: _state(running, 4) == State.END, 30, "v4 load failure")
        ((_, state, error),) = c.model_status(NAME, version=4)
        assert state == "END" and "MetaGraph" in error
        assert c.predict_images(NAME, [image])[0].version == 3
        time.sleep(1.0)  # five more polls: the unchanged broken dir is not retried
        failures = [r for r in caplog.records if "Failed to load" in r.getMessage()]
        assert len(failures) == 1 and "version 4" in failures[0].getMessage()
        assert running.manager.serving_versions() == [3]
        # Removing 4 and 3 from disk rolls back to 1, which is still there.
        shutil.rmtree(os.path.join(base, "4"))
        shutil.rmtree(os.path.join(base, "3"))
        helpers.wait_for(lambda: _state(running, 3) == State.END, 90, "rollback to 1")
        assert running.manager.serving_versions() == [1]
        assert c.predict_images(NAME, [image])[0].version == 1
        # Removing every version: TF Serving's NOT_FOUND "Latest(...)", not a crash.
        shutil.rmtree(os.path.join(base, "1"))
        helpers.wait_for(lambda: _state(running, 1) == State.END, 30, "nothing served")
        with pytest.raises(ServingRpcError) as e:
            c.predict_images(NAME, [image])
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        assert e.value.details.startswith(client_lib.NOT_LOADED_YET)
        c.close()


# ----------------------------------------------------------------------------------------
# Shutdown


def _hold_requests(loaded, monkeypatch) -> tuple[threading.Event, threading.Event]:
    """(started, release): each request on `loaded` sets `started`, then waits inside the model
    until `release` is set (at most 120 s), so a test sees it in flight."""
    started, release = threading.Event(), threading.Event()
    real_run = loaded.run

    def held_run(*args, **kwargs):
        started.set()
        release.wait(120)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(loaded, "run", held_run)
    return started, release


def test_stop_finishes_in_flight_requests(model, tmp_path_factory, monkeypatch):
    base = _base_path(tmp_path_factory, model)
    images = [img for img, _ in model.items] * 4
    running = lifecycle.start_server(
        ServerConfig(model_base_path=base, model_name=NAME, port=0, grace_seconds=30, max_batch_size=0)
    )
    # The request is held inside the model until stop() is seen waiting for it: a fast
    # model could otherwise answer before the test looks, or before stop() begins.
    loaded = running.manager.get_loaded(1)
    started, release = _hold_requests(loaded, monkeypatch)
    stopper = threading.Thread(target=running.stop)  # returns after in-flight RPCs finish
    try:
        channel = grpc.insecure_channel(running.target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        future = stub.Predict.future(_predict_request("predict_images", "images", images), timeout=60)
        assert started.wait(30), "the request never reached the model"
        assert loaded.in_flight == 1
        stopper.start()
        stopper.join(1.0)
        assert stopper.is_alive(), "stop() returned while a request was still running"
    finally:
        release.set()
        if stopper.ident is None:  # failed before stop() began
            running.stop()
        else:
            stopper.join(60)
    assert not stopper.is_alive()
    response = future.result(timeout=30)  # answered before stop() returned; 30 s for a stalled machine
    assert tf.make_ndarray(response.outputs["classes"]).shape == (len(images), 3)
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(_predict_request("predict_images", "images", images[:1]), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_a_second_signal_unloads_without_waiting_for_a_request_in_flight(
    model, tmp_path_factory, monkeypatch
):
    """A second SIGTERM cancels what is in flight and unloads at once: before, the unload still
    waited up to drain_seconds (30 s) for the request's TensorFlow call, so the process exited
    no sooner than after one signal."""
    base = _base_path(tmp_path_factory, model)
    running = lifecycle.start_server(
        ServerConfig(model_base_path=base, model_name=NAME, port=0, grace_seconds=0, drain_seconds=120)
    )
    loaded = running.manager.get_loaded(1)
    started, release = _hold_requests(loaded, monkeypatch)
    stopper = threading.Thread(target=running.stop)
    channel = grpc.insecure_channel(running.target)
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        future = stub.Predict.future(
            _predict_request("predict_images", "images", [model.items[0][0]]), timeout=120
        )
        assert started.wait(30), "the request never reached the model"
        stopper.start()
        stopper.join(1.0)
        assert stopper.is_alive(), "the unload did not wait for the request (drain_seconds 120)"
        running.manager.cut_drains()  # what the second signal does, with the server's stop(0)
        stopper.join(30)
        assert not stopper.is_alive(), "the unload still waited for the request"
        assert loaded.in_flight == 1 and running.manager.serving_versions() == []
        with pytest.raises(grpc.RpcError) as e:
            future.result(timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # cancelled by the server's stop
    finally:
        release.set()
        if stopper.is_alive() or stopper.ident is None:
            running.stop()
        channel.close()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return env


def test_sigterm_shuts_down_gracefully(tmp_path):
    """`imgpipe serve` exits 0 on SIGTERM.

    No version is pushed, so the process skips the model load (the in-process
    test above covers stopping with a model and a request in flight).
    """
    base = tmp_path / NAME
    base.mkdir()
    cmd = [sys.executable, "-m", "imgpipe", "serve", "--model-base-path", str(base)]
    cmd += ["--model-name", NAME, "--port", "0", "--grace-seconds", "5"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True)
    reader.start()
    log, port = [], None
    try:
        deadline = time.monotonic() + 180
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            log.append(line)
            m = re.search(r"Serving model .* on 127\.0\.0\.1:(\d+)", line)
            port = int(m.group(1)) if m else None
        assert port, "server did not start:\n" + "".join(log[-30:])
        with client_lib.ServingClient(f"127.0.0.1:{port}", retries=0) as c:
            with pytest.raises(ServingRpcError) as e:  # it answers: no version yet
                c.model_status(NAME)
            assert e.value.code == grpc.StatusCode.NOT_FOUND
            with pytest.raises(ServingRpcError) as e:  # what TF Serving answers here
                c.predict_images(NAME, [b"x"])
            assert e.value.code == grpc.StatusCode.NOT_FOUND
            assert e.value.details.startswith(f"{client_lib.NOT_LOADED_YET}{NAME})")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    while not lines.empty():
        log.append(lines.get())
    text = "".join(log)
    assert "SIGTERM received" in text and "Server stopped" in text
    with pytest.raises(ServingRpcError) as e:
        client_lib.predict_images(f"127.0.0.1:{port}", NAME, [b"x"], timeout=2, retries=0)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE


def _slow_loading_version(base, model) -> None:
    """Version 1 of `model` with its warm-up file grown to TF Serving's 1,000-record limit, so its
    load (the replay) lasts seconds: long enough to signal the server in the middle of it."""
    from serving import warmup

    version = base / "1"
    shutil.copytree(model.export_dir, version)
    logs = warmup.read_warmup_requests(str(version))
    repeated = [logs[i % len(logs)] for i in range(warmup.MAX_WARMUP_RECORDS)]
    warmup.write_warmup_logs(str(version), repeated)


@pytest.mark.parametrize("second", [False, True])
def test_a_signal_during_the_first_load_stops_without_serving(second, serving_model, tmp_path):
    """A stop signal while the first model loads: the server finished the load and warm-up,
    announced "Serving model ... on PORT", started answering, then stopped, and a second signal
    waited for the load as well (exit 0). Now it never announces or starts serving, and a second
    signal exits at once with 143."""
    base = tmp_path / NAME
    base.mkdir()
    _slow_loading_version(base, serving_model)
    cmd = [sys.executable, "-m", "imgpipe", "serve", "--model-base-path", str(base)]
    cmd += ["--model-name", NAME, "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stderr=subprocess.PIPE, text=True)
    log = []
    try:
        for line in proc.stderr:
            log.append(line)
            if "Loading model" in line:
                break
        assert any("Loading model" in line for line in log), "".join(log[-30:])
        proc.send_signal(signal.SIGTERM)
        if second:
            # Once the first is taken ("SIGTERM received"), again until it exits: two signals sent
            # before a process takes the first are one (POSIX does not queue them).
            for line in proc.stderr:
                log.append(line)
                if "SIGTERM received" in line:
                    break
            while proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.2)
        log.extend(proc.stderr)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(log)
    assert "Serving model" not in text, text[-3000:]
    if second:
        assert code == 143, text[-3000:]
        assert "second SIGTERM during the model load: exiting without waiting for it" in text
    else:
        assert code == 0, text[-3000:]
        assert "Stopped during the model load: nothing was served" in text


def test_start_server_with_its_stop_set_releases_the_port_unserved(serving_model, tmp_path):
    base = tmp_path / NAME
    shutil.copytree(serving_model.export_dir, base / "1")
    stop = threading.Event()
    stop.set()
    config = ServerConfig(str(base), NAME, port=0)
    with pytest.raises(lifecycle.StoppedBeforeServing):
        lifecycle.start_server(config, stop)
    # Nothing holds a port, and the same settings start a server that answers.
    with lifecycle.start_in_thread(str(base), NAME) as running:
        assert running.models.managers()[NAME].serving_versions() == [1]


def test_start_errors_are_clear(tmp_path):
    with pytest.raises(ServerStartError, match="base path not found"):
        lifecycle.start_server(ServerConfig(str(tmp_path / "missing"), NAME))
    with pytest.raises(ServerStartError, match="poll_seconds"):
        lifecycle.start_server(ServerConfig(str(tmp_path), NAME, poll_seconds=0))
    # NaN passed every comparison (a poller spinning a core); an infinity killed the poll thread.
    bad = dict(poll_seconds=float("nan"), grace_seconds=float("inf"), drain_seconds=float("nan"))
    with pytest.raises(ServerStartError) as e:
        lifecycle.start_server(ServerConfig(str(tmp_path), NAME, log_sample_rate=float("nan"), **bad))
    assert str(e.value) == (
        "invalid server settings: poll_seconds must be a finite number, got nan; drain_seconds must be a "
        "finite number, got nan; grace_seconds must be a finite number, got inf; log_sample_rate must be a "
        "finite number, got nan"
    )


def test_port_in_use_is_an_error(server, tmp_path):
    config = ServerConfig(str(tmp_path), NAME, port=server.port)
    with pytest.raises(ServerStartError, match="cannot bind"):
        lifecycle.start_server(config)


# ----------------------------------------------------------------------------------------
# The `imgpipe predict` CLI


def _predict_cli(target, *extra, model=NAME) -> int:
    try:
        return cli.main(["predict", "--target", target, "--model", model, *extra])
    except SystemExit as e:  # an argparse type's refusal (a flag that is no number, or out of range)
        return e.code


def test_cli_predict_prints_one_line_per_image(server, model, client, tmp_path, capsys):
    png = tmp_path / "digit.png"
    png.write_bytes(model.items[13][0])
    jpeg = tmp_path / "flower.jpg"
    jpeg.write_bytes(serving_fixtures.sample_photos()[1][1])
    # A name that is not UTF-8 (a Latin-1 é): shown as predict-batch and ingest show it, \xe9,
    # so the line is valid UTF-8 JSON (a lone surrogate before, which strict readers replace).
    latin = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")
    with open(latin, "wb") as f:
        f.write(model.items[13][0])
    code = _predict_cli(server.target, str(png), str(jpeg), os.fsdecode(latin))
    out, err = capsys.readouterr()
    assert code == 0, err
    out.encode("utf-8")  # no lone surrogate
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x["image"] for x in lines] == [str(png), str(jpeg), f"{tmp_path}/caf\\xe9.png"]
    expected = client.predict_images(NAME, [png.read_bytes(), jpeg.read_bytes(), png.read_bytes()])
    for line, pred in zip(lines, expected, strict=True):
        assert line["classes"] == pred.classes
        _assert_close(line["scores"], pred.scores)
    assert lines[0]["classes"][0] == model.items[13][1]


def test_cli_predict_reports_bad_files_and_keeps_going(server, model, tmp_path, capsys):
    good = tmp_path / "good.png"
    good.write_bytes(model.items[0][0])
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(serving_fixtures.as_jpeg(model.items[1][0])[:60])
    missing = tmp_path / "missing.png"
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    webp = tmp_path / "photo.webp"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(webp, "WEBP")
    code = _predict_cli(
        server.target, "--signature", "serving_default", "--top-k", "1",
        str(good), str(text), str(broken), str(missing), str(empty), str(webp),
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1
    # In ingest's words: an empty file, a format the decoder does not take (was "is not a JPEG, ...").
    assert f"{empty}: empty file (0 bytes)" in err
    assert f"{webp}: unsupported image format WEBP; accepted: JPEG, PNG, GIF, BMP" in err
    assert f"{text}: not a JPEG, PNG, GIF or BMP image" in err
    lines = [json.loads(x) for x in out.splitlines()]
    assert lines == [
        {
            "image": str(good),
            "classes": [model.items[0][1]],
            "scores": lines[0]["scores"],
            "version": lines[0]["version"],
        }
    ]
    assert isinstance(lines[0]["version"], int)  # the version that answered, as the server named it
    assert len(lines[0]["scores"]) == 1
    for path in (text, broken, missing):
        assert str(path) in err
    assert "INVALID_ARGUMENT" in err and "5 of 6 images failed" in err


def test_cli_predict_reads_files_and_pipes_not_devices_a_request_at_a_time(
    server, model, tmp_path, capsys, monkeypatch
):
    """`/dev/zero` named as an image was read until the kernel killed the command (18 GB); a named
    pipe no program writes to blocked it for good; 200 photos of 14 MB were all read (3.4 GB)
    before the first request. A device is refused by name, an unwritten pipe reads as empty, a
    pipe with a writer (`<(cat photo)`) is read, a file over what a request carries is named
    without being read, and each request's images are read when it is sent."""
    from imgpipe.cli import serving as serving_cli

    good = tmp_path / "good.png"
    good.write_bytes(model.items[0][0])
    device = tmp_path / "zero.png"
    device.symlink_to("/dev/zero")
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as w:
        w.write(model.items[1][0])  # smaller than the pipe's buffer: written at once
    piped = f"/proc/self/fd/{read_end}"
    late = tmp_path / "late.png"  # a named pipe whose writer opens it after predict does
    os.mkfifo(late)

    def write_late():
        time.sleep(0.5)
        with open(late, "wb") as w:
            w.write(model.items[3][0])

    writer = threading.Thread(target=write_late, daemon=True)
    writer.start()
    huge = tmp_path / "huge.png"
    huge.write_bytes(model.items[2][0] + b"\0" * (2 * 1024 * 1024))
    monkeypatch.setattr(serving_cli, "CLIENT_MESSAGE_MB", 1)  # a request carries about 1 MB
    events = []
    read_image, predict_chunk = serving_cli._read_image, serving_cli._predict_chunk

    def reading(path, budget, wait):
        events.append(("read", os.path.basename(path)))
        return read_image(path, budget, 1.0 if path == str(fifo) else wait)  # 30 s, shorter here

    def sending(client, args, chunk):
        events.append(("sent", [os.path.basename(p) for p, _ in chunk]))
        return predict_chunk(client, args, chunk)

    monkeypatch.setattr(serving_cli, "_read_image", reading)
    monkeypatch.setattr(serving_cli, "_predict_chunk", sending)
    try:
        code = _predict_cli(
            server.target, "--batch-size", "1", str(good), str(device), str(fifo), piped, str(late), str(huge)
        )
    finally:
        os.close(read_end)
    writer.join(timeout=10)
    out, err = capsys.readouterr()
    assert code == 1
    assert [json.loads(x)["image"] for x in out.splitlines()] == [str(good), piped, str(late)]
    assert f"cannot read image {device}: not a regular file or a pipe" in err
    assert f"{fifo}: nothing was written to the pipe within 1s" in err
    assert f"{huge}: " in err and "3 of 6 images failed" in err
    assert events[:3] == [("read", "good.png"), ("sent", ["good.png"]), ("read", "zero.png")]


def test_cli_predict_reads_one_image_from_standard_input(server, model, tmp_path, capsys, monkeypatch):
    """`cat photo.png | imgpipe predict -` was "cannot read image -: No such file or directory"."""
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as w:
        w.write(model.items[0][0])
    with os.fdopen(read_end, "rb") as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        assert _predict_cli(server.target, "-") == 0
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["image"] == "-" and json.loads(line)["classes"][0] == model.items[0][1]
    assert _predict_cli(server.target, "-", "-") == 2
    assert "- (standard input) is given more than once" in capsys.readouterr().err


def test_cli_predict_unknown_model_exits_nonzero(server, model, tmp_path, capsys):
    good = tmp_path / "good.png"
    good.write_bytes(model.items[0][0])
    assert _predict_cli(server.target, str(good), model="nope") == 1
    out, err = capsys.readouterr()
    assert out == "" and "NOT_FOUND" in err and "nope" in err


def test_cli_predict_stopped_by_the_server_says_how_many_were_scored(
    server, model, tmp_path, capsys, monkeypatch
):
    """An error for every image (the server gone, its model unloaded) mid-way: the images scored
    are on stdout, and the message counts them and the ones not scored."""
    from imgpipe.cli import serving as serving_cli

    paths = []
    for i in range(4):
        p = tmp_path / f"img{i}.png"
        p.write_bytes(model.items[i][0])
        paths.append(str(p))
    chunks = []
    predict_chunk = serving_cli._predict_chunk

    def second_request_finds_no_model(client, args, chunk):  # the server's real NOT_FOUND
        chunks.append(chunk)
        if len(chunks) == 2:
            args = argparse.Namespace(**{**vars(args), "model": "gone"})
        return predict_chunk(client, args, chunk)

    monkeypatch.setattr(serving_cli, "_predict_chunk", second_request_finds_no_model)
    assert _predict_cli(server.target, "--batch-size", "1", *paths) == 1
    out, err = capsys.readouterr()
    assert [json.loads(x)["image"] for x in out.splitlines()] == paths[:1]
    assert "NOT_FOUND" in err
    assert (
        f"stopped after 1 of 4 images were scored (0 failed before, 3 not scored, starting with {paths[1]})"
        in err
    )


def test_cli_predict_top_k_and_batches(server, model, tmp_path, capsys):
    paths = []
    for i in (0, 20, 30):
        p = tmp_path / f"img{i}.png"
        p.write_bytes(model.items[i][0])
        paths.append(str(p))
    assert _predict_cli(server.target, "--top-k", "2", "--batch-size", "2", *paths) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["image"] for x in lines] == paths
    assert [x["classes"][0] for x in lines] == [model.items[i][1] for i in (0, 20, 30)]
    assert all(len(x["classes"]) == len(x["scores"]) == 2 for x in lines)
    # More than the signature gives (its 5 best at most): what it gives, said once (an audit: 5
    # classes for --top-k 300 without a word).
    gives = min(5, len({label for _, label in model.items}))
    assert _predict_cli(server.target, "--top-k", "9", "--batch-size", "2", *paths) == 0
    captured = capsys.readouterr()
    assert all(len(json.loads(x)["classes"]) == gives for x in captured.out.splitlines())
    assert captured.err.count("--top-k 9: the model's predict_images signature answers with") == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--top-k", "0"], "--top-k"),
        (["--timeout", "0"], "--timeout: must be a positive number, got '0'"),
        (["--timeout", "nan"], "--timeout: must be a positive number, got 'nan'"),
    ],
)
def test_cli_predict_bad_arguments_exit_2(flags, message, tmp_path, capsys):
    image = tmp_path / "x.png"
    image.write_bytes(encode_image(np.zeros((4, 4), np.uint8)))
    assert _predict_cli("127.0.0.1:1", *flags, str(image)) == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == "" and message in err


def test_cli_serve_reports_start_errors(tmp_path, capsys):
    argv = ["serve", "--model-base-path", str(tmp_path / "missing"), "--model-name", NAME]
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "model base path not found" in err and str(tmp_path / "missing") in err
    (tmp_path / "a-file").write_text("x")
    assert cli.main(["serve", "--model-base-path", str(tmp_path / "a-file"), "--model-name", NAME]) == 2
    assert "model base path is a file, not a directory" in capsys.readouterr().err
    for flag, value in (
        ("--poll-seconds", "0"),
        ("--poll-seconds", "nan"),
        ("--poll-seconds", "inf"),
        ("--grace-seconds", "nan"),
    ):
        argv = ["serve", "--model-base-path", str(tmp_path), "--model-name", NAME, flag, value]
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == cli.EXIT_USAGE
        assert f"{flag}: must be" in capsys.readouterr().err


def test_cli_serve_freezes_the_start_up_objects_while_it_serves(tmp_path, monkeypatch):
    """`imgpipe serve` keeps what existed at its start out of the collector's walks while it
    serves (each unload runs a full collection), and gives them back when serve returns."""
    import gc

    seen = []

    def serve(config):
        seen.append((config.model_name, gc.get_freeze_count()))
        return 0

    monkeypatch.setattr(lifecycle, "serve", serve)
    argv = ["serve", "--model-base-path", str(tmp_path), "--model-name", NAME, "--port", "0"]
    # The test process froze what collection imported (tests/conftest.py): thawed here for a
    # process that froze nothing, and frozen again after.
    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        assert cli.main(argv) == 0
        # TensorFlow's import alone makes more than 10,000 objects.
        assert seen and seen[0][0] == NAME and seen[0][1] > 10_000, seen
        assert gc.get_freeze_count() == 0
        # A caller that froze its own objects first keeps them frozen after serve returns.
        gc.freeze()
        frozen = gc.get_freeze_count()
        assert cli.main(argv) == 0
        # (Frozen objects can still be freed by their reference count: a few fewer, not none.)
        assert frozen - 1000 < gc.get_freeze_count() <= seen[1][1] <= frozen
    finally:
        gc.collect()
        gc.freeze()


def test_a_serving_dir_given_for_the_model_base_path_is_pointed_out(tmp_path):
    from serving.devserver.lifecycle import _model_folders_hint

    (tmp_path / "digits" / "1700000000").mkdir(parents=True)
    (tmp_path / "notes").mkdir()
    assert _model_folders_hint(str(tmp_path)) == (
        f" (it holds model folders with versions: digits; give {tmp_path / 'digits'})"
    )
    assert _model_folders_hint(str(tmp_path / "digits")) == ""  # a model base path itself
    assert _model_folders_hint(str(tmp_path / "missing")) == ""
    # A version dir (a SavedModel) given instead of its parent, the model base path.
    version = tmp_path / "digits" / "1700000000"
    (version / "saved_model.pb").write_bytes(b"")
    assert _model_folders_hint(str(version)) == (
        f" (it is itself a SavedModel, one version's dir: give its parent, {tmp_path / 'digits'})"
    )
    assert _model_folders_hint(str(tmp_path / "digits")) == ""
