"""serving/devserver/manager.py and loaded.py on a tiny SavedModel: versions, swaps, failures.

The model is a few TensorFlow ops (no Keras, no Transform), so each test
loads versions in well under a second; the real exported model is covered
end to end over gRPC in test_serving.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import model_pb2

from serving import client as client_lib
from serving.devserver import manager as manager_lib
from serving.devserver.loaded import LoadedVersion
from serving.devserver.models import ServedModels
from serving.errors import InvalidRequestError, ModelNotFoundError
from serving.model_config import ModelEntry, VersionPolicy
from tests import helpers, serving_fixtures

NAME = "tiny"
State = manager_lib.State


_Tiny = serving_fixtures.Tiny


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> str:
    return serving_fixtures.tiny_export(str(tmp_path_factory.mktemp("tiny") / "export"))


def _push(base, export: str, version: int) -> None:
    shutil.copytree(export, os.path.join(base, str(version)))


def _spec(version: int | None = None, name: str = NAME) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name)
    if version is not None:
        spec.version.value = version
    return spec


def _state(manager, version):
    statuses = manager.statuses(version)
    return statuses[0].state if statuses else None


def test_loaded_version_runs_and_warms_up(tiny_export):
    loaded = LoadedVersion(NAME, 1, tiny_export)
    assert loaded.warm_up() == "a predict_images call"  # no warmup file: a generated PNG
    out = loaded.run("predict_images", {"images": np.array([b"ab", b"abcdefghij"], dtype=object)})
    np.testing.assert_allclose(out["scores"][:, 1], [2 / 12, 10 / 20], rtol=1e-6)
    with pytest.raises(InvalidRequestError, match="duplicate output tensor alias"):
        loaded.run("predict_images", {"images": np.array([b"a"], dtype=object)}, ["scores", "scores"])


class _TwoSignatures(_Tiny):
    """predict_images, and `short_only`, which refuses inputs longer than 4 bytes."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def short_only(self, images):
        n = tf.strings.length(images)
        with tf.control_dependencies([tf.debugging.assert_less(n, 5, message="too long for short_only")]):
            return {"lengths": tf.identity(n)}


def _predict_log(signature: str, *images: bytes):
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=NAME, signature_name=signature))
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.array(images, dtype=object)))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


@pytest.mark.parametrize(
    "long_input, expected", [(False, "4 warmup requests"), (True, "too long for short_only")]
)
def test_warmup_replays_every_signature_and_any_failure_fails_the_load(tmp_path, long_input, expected):
    """Signatures warm up side by side (one thread each); every record runs, one failure fails it all."""
    from serving import warmup

    path = str(tmp_path / "export")
    module = _TwoSignatures()
    signatures = {"predict_images": module.predict_images, "short_only": module.short_only}
    tf.saved_model.save(module, path, signatures=signatures)
    last = b"abcdefgh" if long_input else b"abc"
    logs = [
        _predict_log("predict_images", b"a"),
        _predict_log("short_only", b"ab"),
        _predict_log("short_only", last),
    ]
    warmup.write_warmup_logs(path, [*logs, _predict_log("predict_images", b"abcdef")])
    loaded = LoadedVersion(NAME, 1, path)
    if long_input:
        with pytest.raises(Exception, match=expected):
            loaded.warm_up()
    else:
        assert loaded.warm_up() == expected


def test_acquire_picks_the_version_and_counts_requests(tiny_export, tmp_path):
    _push(tmp_path, tiny_export, 1)
    _push(tmp_path, tiny_export, 2)
    manager = manager_lib.ModelManager(NAME, str(tmp_path), num_versions=2)
    manager.poll_once()
    assert manager.serving_versions() == [1, 2]
    with manager.acquire() as newest, manager.acquire(1) as first:
        assert (newest.version, first.version) == (2, 1)
        assert newest.in_flight == first.in_flight == 1
    assert newest.in_flight == first.in_flight == 0
    with pytest.raises(ModelNotFoundError, match=r"Specific\(tiny, 3\)"), manager.acquire(3):
        pass
    manager.stop()
    assert manager.serving_versions() == []
    assert [(s.version, s.state) for s in manager.statuses()] == [(2, State.END), (1, State.END)]
    # Nothing served: TF Serving's words, which clients retry as a model still loading.
    with pytest.raises(ModelNotFoundError) as e, manager.acquire():
        pass
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert str(e.value).startswith(client_lib.NOT_LOADED_YET + NAME + ")")


def test_served_models_find_the_model_and_version_a_request_names(tiny_export, tmp_path):
    """ServedModels (TF Serving's ServerCore): the model by name, the version by number or
    label; a wrong name or label in TF Serving's words, which a client treats as it would on
    the real server (a wrong name reads as a model not loaded yet, and is retried)."""
    for name in ("tiny", "other"):
        _push(tmp_path / name, tiny_export, 1)
        _push(tmp_path / name, tiny_export, 2)
    entries = [
        ModelEntry(name, str(tmp_path / name), VersionPolicy("all"), labels=(("stable", 1),))
        for name in ("tiny", "other")
    ]
    served = ServedModels(
        lambda e: manager_lib.ModelManager(e.name, e.base_path, policy=e.policy, run_warmup=False)
    )
    served.apply([dataclasses.replace(e, labels=()) for e in entries])
    served.apply(entries)  # the label once its version serves
    try:
        for spec, answered in (
            (_spec(), ("tiny", 2)),
            (_spec(1, name="other"), ("other", 1)),
            (model_pb2.ModelSpec(name=NAME, version_label="stable"), ("tiny", 1)),
        ):
            with served.acquire(spec) as loaded:
                assert (loaded.model_name, loaded.version) == answered
        for spec, error, fragment in (
            (
                _spec(name="third"),
                ModelNotFoundError,
                r"^Servable not found for request: Latest\(third\) \(this server serves 'other', 'tiny'\)$",
            ),
            (
                _spec(2, name="third"),
                ModelNotFoundError,
                r"^Servable not found for request: Specific\(third, 2\)",
            ),
            (_spec(name=""), InvalidRequestError, r"^ModelSpec has no name specified\."),
            (
                model_pb2.ModelSpec(name=NAME, version_label="beta"),
                InvalidRequestError,
                r"^Unrecognized servable version label: beta$",
            ),
        ):
            with pytest.raises(error, match=fragment), served.acquire(spec):
                pass
    finally:
        served.stop()


def test_new_version_loads_before_the_old_one_drains(tiny_export, tmp_path):
    _push(tmp_path, tiny_export, 1)
    manager = manager_lib.ModelManager(NAME, str(tmp_path), drain_seconds=60)
    manager.poll_once()
    _push(tmp_path, tiny_export, 2)
    with manager.acquire() as held:  # a request in flight on version 1
        poll = threading.Thread(target=manager.poll_once)
        poll.start()
        helpers.wait_for(lambda: _state(manager, 1) == State.UNLOADING, 30, "version 1 to drain")
        assert manager.serving_versions() == [2]  # version 2 already takes traffic
        with manager.acquire() as new:
            assert new.version == 2
        out = held.run("predict_images", {"images": np.array([b"x"], dtype=object)})
        assert out["scores"].shape == (1, 2)  # the draining version still answers
        assert poll.is_alive()
    poll.join(timeout=30)
    assert not poll.is_alive()
    assert _state(manager, 1) == State.END and _state(manager, 2) == State.AVAILABLE
    manager.stop()


def test_a_request_still_on_a_version_released_after_its_drain_still_answers(tiny_export, tmp_path):
    """The drain timed out (or a second shutdown signal cut it): the version is released with a
    request still on it. Closed, its signatures were gone: the request got FAILED_PRECONDITION
    "Serving signature key not found" (an audit, from the code). It answers; then it is freed."""
    import gc
    import weakref

    _push(tmp_path, tiny_export, 1)
    manager = manager_lib.ModelManager(NAME, str(tmp_path), drain_seconds=0.1)
    manager.poll_once()
    _push(tmp_path, tiny_export, 2)
    with manager.acquire() as held:
        manager.poll_once()  # version 2 in, version 1 released after 0.1 s with `held` on it
        assert _state(manager, 1) == State.END and manager.serving_versions() == [2]
        out = held.run("predict_images", {"images": np.array([b"x"], dtype=object)})
        assert out["scores"].shape == (1, 2)
        released = weakref.ref(held)
    del held
    gc.collect()
    assert released() is None  # nothing else keeps the released version
    manager.stop()


def test_failed_version_keeps_the_old_one_and_retries_only_when_files_change(
    tiny_export, tmp_path, monkeypatch
):
    _push(tmp_path, tiny_export, 1)
    manager = manager_lib.ModelManager(NAME, str(tmp_path))
    manager.poll_once()
    attempts = []
    real = manager_lib.LoadedVersion

    def counting(name, version, path, *settings):
        attempts.append(version)
        return real(name, version, path, *settings)

    monkeypatch.setattr(manager_lib, "LoadedVersion", counting)
    broken = tmp_path / "2"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    manager.poll_once()
    (status,) = manager.statuses(2)
    assert status.state == State.END and "SavedModel" in status.error_message
    assert manager.serving_versions() == [1]
    manager.poll_once()
    assert attempts == [2]  # unchanged files: not retried
    shutil.rmtree(broken)
    _push(tmp_path, tiny_export, 2)  # fixed in place
    manager.poll_once()
    assert attempts == [2, 2]
    assert manager.serving_versions() == [2]
    # The newest broken again and the served one's folder deleted: the served one stays loaded
    # (it was unloaded, and nothing was served), as TF Serving's availability-preserving policy.
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
    shutil.rmtree(tmp_path / "2")
    manager.poll_once()
    assert manager.serving_versions() == [2]
    shutil.rmtree(tmp_path / "3")  # version 1 is the newest on disk again: served
    manager.poll_once()
    assert manager.serving_versions() == [1]
    shutil.rmtree(tmp_path / "1")  # no version on disk at all: nothing is wanted
    manager.poll_once()
    assert manager.serving_versions() == []
    manager.stop()


def test_a_client_waiting_for_a_model_that_failed_to_load_is_told_why(tmp_path):
    """Only the server's log said why no version was loaded; the answer keeps TF Serving's
    "Latest(name)" words (clients retry on them) and adds the newest version's failure."""
    broken = tmp_path / "1"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    manager = manager_lib.ModelManager(NAME, str(tmp_path))
    manager.poll_once()
    with pytest.raises(ModelNotFoundError) as caught, manager.acquire():
        pass
    message = str(caught.value)
    assert message.startswith(client_lib.NOT_LOADED_YET), message
    assert "; version 1 failed to load: " in message and "SavedModel" in message
    manager.stop()


def test_a_base_path_that_cannot_be_listed_is_said_once_until_it_changes(tmp_path, caplog):
    """A missing base path was warned about at every poll (each second by default)."""
    base = tmp_path / "models"
    manager = manager_lib.ModelManager(NAME, str(base))
    with caplog.at_level(logging.DEBUG, logger=manager_lib.__name__):
        for _ in range(3):
            manager.poll_once()
        warned = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1 and f"cannot list model base path {base}" in warned[0].getMessage()
        base.mkdir()
        manager.poll_once()
        manager.poll_once()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned[1:] == [f"model base path {base} can be listed again"]


def _warnings_of_three_polls(manager, caplog) -> list[str]:
    with caplog.at_level(logging.DEBUG, logger=manager_lib.__name__):
        for _ in range(3):
            manager.poll_once()
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_version_folder_the_server_may_not_read_is_named_once(tiny_export, tmp_path, caplog, monkeypatch):
    """A version pushed by root under umask 077, served by another user: its files could not be
    seen, so it passed for a partial copy and the server said only "no loadable version yet".
    The folder is named now, with its owner and mode, once until that changes. (The suite runs
    as root, whom no mode stops: the denial is the operating system's answer made here.)"""
    from serving.devserver import versions

    base = tmp_path / "models"
    shutil.copytree(tiny_export, base / "5")
    (base / "5" / "saved_model.pb").rename(base / "5" / "saved_model.pb.hidden")  # unseen, as denied
    locked = str(base / "5")
    real_access = os.access
    monkeypatch.setattr(versions.os, "access", lambda p, mode: p != locked and real_access(p, mode))
    manager = manager_lib.ModelManager(NAME, str(base))
    [warned] = _warnings_of_three_polls(manager, caplog)
    assert f"this server may not read version folder(s) {locked} (the newest owned by uid " in warned
    assert "; this server runs as uid " in warned and "not served" in warned
    assert manager.serving_versions() == []
    manager.stop()


def test_a_folder_inside_a_version_the_server_may_not_read_is_said_once_and_told_to_clients(
    tiny_export, tmp_path, caplog, monkeypatch
):
    """The version's variables/ made by root under umask 077, served by another user: "cannot
    read version dir" was logged at every poll (58 times during one predict), and clients got
    only "no version is loaded yet". Said once now, with who may read the folder, and left on the
    version's status. (The suite runs as root: TensorFlow's refusal is made here, in its words.)"""
    base = tmp_path / "models"
    shutil.copytree(tiny_export, base / "4")
    variables = str(base / "4" / "variables")

    def denied(path):
        raise tf.errors.PermissionDeniedError(None, None, f"{variables}; Permission denied")

    monkeypatch.setattr(manager_lib, "fingerprint", denied)
    manager = manager_lib.ModelManager(NAME, str(base))
    [warned] = _warnings_of_three_polls(manager, caplog)
    assert f"cannot read version dir {base / '4'}: {variables}; Permission denied (owned by uid " in warned
    [status] = manager.statuses(4)
    assert status.state == manager_lib.State.END and status.error_code == grpc.StatusCode.PERMISSION_DENIED
    assert "Permission denied (owned by uid " in status.error_message
    manager.stop()


def test_a_load_that_finds_a_file_missing_says_so_without_tensorflows_dump():
    """A version copied in file by file: TensorFlow raised Python's FileNotFoundError around its
    graph dump, and the version's status was UNKNOWN with the dump as its message."""
    raw = FileNotFoundError(
        "Graph execution error:\n\nDetected at node text_file_init/InitializeTableFromTextFileV2 defined at "
        "(most recent call last):\n<stack traces unavailable>\n/models/m/7/assets/label_vocab; No such file "
        "or directory\n\t [[{{node text_file_init/InitializeTableFromTextFileV2}}]] [Op:__inference_x_1]"
    )
    code, message = manager_lib._load_failure(raw)
    assert code == grpc.StatusCode.NOT_FOUND
    assert message == "/models/m/7/assets/label_vocab; No such file or directory"


def test_a_version_whose_warm_up_fails_leaves_no_batch_threads(tmp_path):
    """With batching on, a loaded version runs batch threads that hold it: a version refused at
    warm-up is closed, so its threads end and its model is freed."""
    from serving import warmup
    from serving.batching_config import BatchingParameters

    path = str(tmp_path / "models" / "1")
    module = _TwoSignatures()
    tf.saved_model.save(
        module, path, signatures={"predict_images": module.predict_images, "short_only": module.short_only}
    )
    warmup.write_warmup_logs(path, [_predict_log("short_only", b"abcdefgh")])  # too long: refused

    def batch_threads():
        return {t for t in threading.enumerate() if t.name.startswith("serving-batch")}

    before = batch_threads()
    manager = manager_lib.ModelManager(
        NAME,
        str(tmp_path / "models"),
        poll_seconds=60,
        batching=BatchingParameters(num_batch_threads=3, batch_timeout_micros=0),
    )
    manager.poll_once()
    assert _state(manager, 1) == State.END
    helpers.wait_for(lambda: not (batch_threads() - before), 10, "the refused version's batch threads to end")
