"""`imgpipe serve --model-config-file`: TF Serving's model server config, served as TF Serving
serves it (serving/model_config.py, serving/devserver/models.py): several models, version
policies, version labels, HandleReloadConfigRequest and the config file read again."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from imgpipe.cli.main import main
from serving import client as client_lib
from serving import model_config
from serving.config import ServerConfig
from serving.devserver import lifecycle
from serving.errors import ServerStartError, ServingRpcError
from tests import serving_fixtures
from tests.serving_fixtures import sample_photos

DEPLOY = Path(__file__).resolve().parents[1] / "serving" / "deploy"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A few TensorFlow ops with predict_images (tests/serving_fixtures.py): the versions here
    are about which one answers, not what it answers."""
    return serving_fixtures.tiny_export(str(tmp_path_factory.mktemp("tiny") / "export"))


@pytest.fixture(scope="module")
def image():
    return sample_photos(48)[0][1]


def _versions(model: str, base: Path, versions) -> str:
    for v in versions:
        shutil.copytree(model, base / str(v))
    return str(base)


def _config(*models: tuple[str, str, str], labels: dict[str, dict[str, int]] | None = None) -> str:
    """A ModelServerConfig text of (name, base_path, policy text) models, with their labels."""
    out = ["model_config_list {"]
    for name, base, policy in models:
        out += [
            "  config {",
            f'    name: "{name}"',
            f'    base_path: "{base}"',
            '    model_platform: "tensorflow"',
        ]
        if policy:
            out.append(f"    model_version_policy {{ {policy} }}")
        for label, version in (labels or {}).get(name, {}).items():
            out.append(f'    version_labels {{ key: "{label}" value: {version} }}')
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def _predict(stub, name: str, image: bytes, version=None, label=None) -> int:
    """The version that answered a predict_images call."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = name, "predict_images"
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs["images"].string_val.append(image)
    request.inputs["images"].tensor_shape.dim.add(size=1)
    request.inputs["images"].dtype = 7  # DT_STRING
    return stub.Predict(request, timeout=30).model_spec.version.value


def _reload(models_stub, text: str):
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    return models_stub.HandleReloadConfigRequest(request, timeout=120)


@contextlib.contextmanager
def _served(path: Path, **settings):
    """A server of the config file at `path` (no warm-up), its PredictionService and ModelService stubs."""
    with lifecycle.start_in_thread(
        "", "", model_config_file=str(path), run_warmup=False, **settings
    ) as server:
        channel = grpc.insecure_channel(server.target)
        try:
            yield (
                server,
                prediction_service_pb2_grpc.PredictionServiceStub(channel),
                model_service_pb2_grpc.ModelServiceStub(channel),
            )
        finally:
            channel.close()


def _wait(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# -- reading and checking a config (no server) -------------------------------------------------


def test_the_shipped_models_config_reads_as_one_model_at_its_newest_version():
    [entry] = model_config.read_model_config(str(DEPLOY / "models.config"))
    assert (entry.name, entry.base_path, entry.labels) == ("imgpipe", "/models/imgpipe", ())
    assert entry.policy == model_config.VersionPolicy("latest", num_versions=1)


def test_version_policies_choose_as_tf_serving_does():
    on_disk = [3, 1, 7, 5]
    [latest, latest0, everything, specific] = model_config.parse_model_config(
        _config(
            ("a", "/m/a", "latest { num_versions: 2 }"),
            ("b", "/m/b", ""),
            ("c", "/m/c", "all {}"),
            ("d", "/m/d", "specific { versions: 5 versions: 1 versions: 9 }"),
        )
    )
    assert latest.policy.aspired(on_disk) == [7, 5]
    assert latest0.policy.aspired(on_disk) == [7]  # unset: TF Serving's default, the newest one
    assert everything.policy.aspired(on_disk) == [7, 5, 3, 1]
    assert specific.policy.aspired(on_disk) == [5, 1]  # 9 is not on disk


@pytest.mark.parametrize(
    "text, words",
    [
        (
            _config(("a", "/m/a", ""), ("a", "/m/b", "")),
            "Illegal to list model a multiple times in config list",
        ),
        (
            _config(("a", "models/a", "")),
            "Expected model a to have an absolute path or URI; got base_path()=models/a",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/m/a" } }',
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            "ModelServerConfig::model_platform, model name is a",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/m/a" model_platform: "tflite" } }',
            "model a: model_platform 'tflite' is not one this server serves",
        ),
        ('model_config_list { config { nmae: "a" } }', 'has no field named "nmae"'),
        (
            'custom_model_config { type_url: "x" }',
            "a custom_model_config is not served: only a model_config_list",
        ),
    ],
    ids=["listed-twice", "relative-path", "no-platform", "other-platform", "misspelt-field", "custom-config"],
)
def test_a_config_tf_serving_refuses_is_refused_naming_the_file_and_why(tmp_path, text, words):
    path = tmp_path / "models.config"
    path.write_text(text)
    with pytest.raises(model_config.ModelConfigError) as e:
        model_config.read_model_config(str(path))
    assert str(e.value).startswith(f"the model config file {path}")
    assert words in str(e.value)


def test_an_empty_config_is_none_and_a_gs_uri_is_a_base_path(tmp_path):
    assert model_config.parse_model_config("") is None
    [entry] = model_config.parse_model_config(_config(("a", "gs://bucket/models/a", "")))
    assert entry.base_path == "gs://bucket/models/a"


def test_a_label_must_name_a_version_available_unless_allowed_and_not_moved():
    [entry] = model_config.parse_model_config(_config(("a", "/m/a", "all {}"), labels={"a": {"stable": 2}}))
    refusal = (
        "Request to assign label to version 2 of model a, which is not currently available for inference"
    )
    assert model_config.label_problems([entry], {"a": [1]}, {}) == refusal
    assert model_config.label_problems([entry], {"a": [1, 2]}, {}) is None
    # --allow_version_labels_for_unavailable_models: a new label, or one left where it is, may
    # name a version not loaded; a label moved to another version may not.
    assert model_config.label_problems([entry], {"a": [1]}, {}, allow_unavailable=True) is None
    assert (
        model_config.label_problems([entry], {"a": [1]}, {"a": {"stable": 2}}, allow_unavailable=True) is None
    )
    assert (
        model_config.label_problems([entry], {"a": [1]}, {"a": {"stable": 1}}, allow_unavailable=True)
        == refusal
    )


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"model_name": "x"}, "model_name must not be given with model_config_file"),
        ({"model_base_path": "/x"}, "model_base_path must not be given with model_config_file"),
        ({"num_versions": 2}, "num_versions must not be given with model_config_file"),
    ],
)
def test_a_config_file_goes_without_the_one_model_flags(tmp_path, settings, words):
    path = tmp_path / "models.config"
    path.write_text(_config(("a", str(tmp_path), "")))
    with pytest.raises(ServerStartError, match=words):
        ServerConfig(model_config_file=str(path), **settings).validate()
    with pytest.raises(ServerStartError, match="model_config_file_poll_wait_seconds must go with"):
        ServerConfig("/x", "m", model_config_file_poll_wait_seconds=5).validate()


def test_imgpipe_serve_refuses_a_bad_config_file_before_loading_anything(tmp_path, capsys):
    path = tmp_path / "models.config"
    path.write_text(_config(("a", "relative/a", "")))
    assert main(["serve", "--model-config-file", str(path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "Expected model a to have an absolute path or URI" in err and str(path) in err
    assert main(["serve", "--model-config-file", str(path), "--model-name", "a", "--port", "0"]) == 2
    assert "--model-name (model_name) must not be given with model_config_file" in capsys.readouterr().err


# -- served -----------------------------------------------------------------------------------


def test_the_shipped_config_serves_its_model_and_a_specific_policy_pins_a_version(model, image, tmp_path):
    """serving/deploy/models.config, its base_path pointed here, serves model "imgpipe" at its
    newest version; beside it a second model pinned to version 2 of three serves version 2 and
    no other, and a model name the server does not serve is NOT_FOUND naming both."""
    shipped = (DEPLOY / "models.config").read_text()
    imgpipe_base = _versions(model, tmp_path / "imgpipe", (1, 2))
    pinned_base = _versions(model, tmp_path / "pinned", (1, 2, 3))
    config = shipped.replace('"/models/imgpipe"', f'"{imgpipe_base}"')
    config = config.rstrip().removesuffix("}") + (
        f'  config {{ name: "pinned" base_path: "{pinned_base}" model_platform: "tensorflow" '
        "model_version_policy { specific { versions: 2 } } }\n}\n"
    )
    path = tmp_path / "models.config"
    path.write_text(config)
    with _served(path) as (server, stub, _):
        assert _predict(stub, "imgpipe", image) == 2
        assert _predict(stub, "pinned", image) == 2
        assert server.models.managers()["pinned"].serving_versions() == [2]
        with pytest.raises(grpc.RpcError) as e:
            _predict(stub, "pinned", image, version=3)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as e:
            _predict(stub, "other", image)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert "Servable not found for request: Latest(other)" in e.value.details()
        assert "'imgpipe', 'pinned'" in e.value.details()


def test_labels_in_the_first_config_need_the_flag_as_in_tf_serving(model, image, tmp_path, capsys):
    base = _versions(model, tmp_path / "a", (1, 2))
    path = tmp_path / "models.config"
    path.write_text(_config(("a", base, "all {}"), labels={"a": {"stable": 1, "canary": 2}}))
    with pytest.raises(ServerStartError) as e:
        lifecycle.start_server(ServerConfig(model_config_file=str(path), port=0, run_warmup=False))
    # The labels in name order: canary's version is the first found not to be available.
    assert "Request to assign label to version 2 of model a, which is not currently available" in str(e.value)
    assert "--allow-version-labels-for-unavailable-models" in str(e.value)
    with _served(path, allow_version_labels_for_unavailable_models=True) as (server, stub, _):
        assert _predict(stub, "a", image, label="stable") == 1
        assert _predict(stub, "a", image, label="canary") == 2
        assert _predict(stub, "a", image) == 2
        with pytest.raises(grpc.RpcError) as e:
            _predict(stub, "a", image, label="beta")
        assert (e.value.code(), e.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: beta",
        )
        # The project's client and command line take a label as TF Serving's clients do.
        with client_lib.ServingClient(server.target, timeout=30) as c:
            assert c.predict_images("a", [image], version="stable")[0].version == 1
            with pytest.raises(ServingRpcError, match="Unrecognized servable version label: beta"):
                c.predict_images("a", [image], version="beta")
        photo = tmp_path / "photo.jpg"
        photo.write_bytes(image)
        capsys.readouterr()
        assert (
            main(
                [
                    "predict",
                    "--target",
                    server.target,
                    "--model",
                    "a",
                    "--version-label",
                    "stable",
                    str(photo),
                ]
            )
            == 0
        )
        assert json.loads(capsys.readouterr().out)["version"] == 1


def test_reloads_move_labels_change_policies_add_and_remove_models(model, image, tmp_path, caplog):
    """HandleReloadConfigRequest as TF Serving's ReloadConfig: a label goes to a loaded version
    only; a policy change loads the new version before the old one goes; a model added is
    served when the reload returns; a model taken out answers NOT_FOUND and keeps its states."""
    a = _versions(model, tmp_path / "a", (1, 2))
    b = _versions(model, tmp_path / "b", (5,))
    path = tmp_path / "models.config"
    path.write_text(_config(("a", a, "specific { versions: 1 }")))
    with _served(path, poll_seconds=30) as (server, stub, models):
        assert _predict(stub, "a", image) == 1
        # A label on version 2, which does not serve: refused, nothing changes.
        with pytest.raises(grpc.RpcError) as e:
            _reload(models, _config(("a", a, "all {}"), labels={"a": {"stable": 2}}))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "Request to assign label to version 2 of model a" in e.value.details()
        assert server.models.managers()["a"].serving_versions() == [1]
        # The policy moves to version 2 (loaded at once, not at the next 30 s poll), and model b comes in.
        assert (
            _reload(models, _config(("a", a, "specific { versions: 2 }"), ("b", b, ""))).status.error_code
            == 0
        )
        assert _predict(stub, "b", image) == 5
        _wait(lambda: server.models.managers()["a"].serving_versions() == [2], 30)
        assert _predict(stub, "a", image) == 2
        # Now version 2 serves: the label may name it.
        _reload(
            models, _config(("a", a, "specific { versions: 2 }"), ("b", b, ""), labels={"a": {"stable": 2}})
        )
        assert _predict(stub, "a", image, label="stable") == 2
        # b taken out: NOT_FOUND for requests, its versions END in GetModelStatus (TF Serving's monitor).
        _reload(models, _config(("a", a, "specific { versions: 2 }"), labels={"a": {"stable": 2}}))
        with pytest.raises(grpc.RpcError) as e:
            _predict(stub, "b", image)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        status = models.GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name="b")), timeout=30
        )
        end = get_model_status_pb2.ModelVersionStatus.State.END
        assert [(s.version, s.state) for s in status.model_version_status] == [(5, end)]
        # A model whose base path does not exist is refused, in TF Serving's words.
        with pytest.raises(grpc.RpcError) as e:
            _reload(models, _config(("a", a, ""), ("c", str(tmp_path / "nowhere"), "")))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"Could not find base path {tmp_path / 'nowhere'} for servable c" in e.value.details()
        assert sorted(server.models.managers()) == ["a"]


def test_the_config_file_is_read_again_and_a_bad_one_changes_nothing(model, image, tmp_path, caplog):
    a = _versions(model, tmp_path / "a", (1, 2))
    path = tmp_path / "models.config"
    path.write_text(_config(("a", a, "")))
    with _served(path, model_config_file_poll_wait_seconds=0.2) as (server, stub, _):
        assert _predict(stub, "a", image) == 2
        with caplog.at_level(logging.ERROR, logger="serving.devserver.lifecycle"):
            path.write_text("model_config_list { config { name: 'a' base_path: ")  # cut short while written
            _wait(lambda: any("was not reloaded" in r.getMessage() for r in caplog.records), 20)
            time.sleep(0.6)  # a few polls more: said once
        assert sum("was not reloaded" in r.getMessage() for r in caplog.records) == 1
        assert _predict(stub, "a", image) == 2
        # The file whole again, now pinning version 1 and labelling it: served as it says.
        path.write_text(_config(("a", a, "specific { versions: 1 }")))
        _wait(lambda: server.models.managers()["a"].serving_versions() == [1], 30)
        path.write_text(_config(("a", a, "specific { versions: 1 }"), labels={"a": {"stable": 1}}))
        _wait(lambda: server.models.labels() == {"a": {"stable": 1}}, 30)
        assert _predict(stub, "a", image, label="stable") == 1


def test_imgpipe_predict_takes_a_version_label_or_a_version_not_both(capsys):
    with pytest.raises(SystemExit) as e:
        main(["predict", "--model", "a", "--version", "1", "--version-label", "stable", "x.jpg"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_file_is_applied_every_poll_and_a_new_base_path_that_loads_nothing_changes_nothing(
    model, image, tmp_path
):
    """As TF Serving's poller, every poll applies the file: a model added by
    HandleReloadConfigRequest goes again at the next. A model moved to a base path whose versions
    all fail to load keeps serving from its earlier one, and the reload says so (UNKNOWN)."""
    a = _versions(model, tmp_path / "a", (1,))
    b = _versions(model, tmp_path / "b", (2,))
    broken = _versions(model, tmp_path / "broken", (3,))
    (Path(broken) / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
    path = tmp_path / "models.config"
    path.write_text(_config(("a", a, "")))
    with _served(path, model_config_file_poll_wait_seconds=0.3) as (server, stub, models):
        server.config_poller.stop()  # no poll while the reloads below are checked
        _reload(models, _config(("a", a, ""), ("b", b, "")))
        assert _predict(stub, "b", image) == 2
        with pytest.raises(grpc.RpcError) as e:
            _reload(models, _config(("a", broken, ""), ("b", b, "")))
        assert e.value.code() == grpc.StatusCode.UNKNOWN
        assert "1 model(s) did not become available: {{name: a version: 3} due to error:" in e.value.details()
        assert _predict(stub, "a", image) == 1  # still from its earlier base path
        assert server.models.managers()["a"].base_path == a
        server.config_poller.poll_once()  # the file again: b goes
        assert sorted(server.models.managers()) == ["a"]


class _Loads(logging.Handler):
    """The versions the dev server's managers start loading, as their log says."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        if record.getMessage().startswith("Loading model"):
            self.lines.append(record.getMessage())


def test_a_move_that_loaded_nothing_is_not_loaded_again_until_its_files_change(model, image, tmp_path):
    """TF Serving does not load a failed version again at every poll: a model moved to a base path
    whose versions all fail keeps serving from its earlier one, and the same config (every poll of
    the file, or a reload) reports the failure again without loading; once the version's files
    change, it is loaded and the model moves."""
    a = _versions(model, tmp_path / "a", (1,))
    broken = _versions(model, tmp_path / "broken", (3,))
    pb = Path(broken) / "3" / "saved_model.pb"
    good = pb.read_bytes()
    pb.write_bytes(b"not a SavedModel")
    path = tmp_path / "models.config"
    path.write_text(_config(("a", a, "")))
    loads, logger = _Loads(), logging.getLogger("serving.devserver.manager")
    level = logger.level
    logger.addHandler(loads)
    logger.setLevel(logging.INFO)
    try:
        with _served(path, model_config_file_poll_wait_seconds=0.3) as (server, stub, models):
            server.config_poller.stop()  # the polls below are made by hand
            moved = _config(("a", broken, ""))
            path.write_text(moved)
            for _ in range(3):
                server.config_poller.poll_once()
                with pytest.raises(grpc.RpcError) as e:
                    _reload(models, moved)
                assert e.value.code() == grpc.StatusCode.UNKNOWN
                assert "{name: a version: 3} due to error:" in e.value.details()
                assert _predict(stub, "a", image) == 1
            assert [line for line in loads.lines if "version 3" in line] == [
                f"Loading model 'a' version 3 from {broken}/3"
            ]
            pb.write_bytes(good)  # the version mended: the next poll loads it
            server.config_poller.poll_once()
            assert server.models.managers()["a"].base_path == broken
            assert _predict(stub, "a", image) == 3
            # Moved back: version 1 loads again from its own base path.
            _reload(models, _config(("a", a, "")))
            assert _predict(stub, "a", image) == 1
    finally:
        logger.removeHandler(loads)
        logger.setLevel(level)


def test_imgpipe_predict_stops_at_a_version_label_the_server_does_not_give(model, image, tmp_path, capsys):
    """An unknown label is the request's fault, not an image's: one request, one error naming the
    label, not every image refused one by one (each asked again as a possible batch-mate's fault)."""
    base = _versions(model, tmp_path / "a", (1,))
    path = tmp_path / "models.config"
    path.write_text(_config(("a", base, ""), labels={"a": {"stable": 1}}))
    photos = []
    for i in range(8):
        photos.append(tmp_path / f"p{i}.jpg")
        photos[-1].write_bytes(image)
    requests = []
    with _served(path, allow_version_labels_for_unavailable_models=True) as (server, _, _):
        real = server.models.acquire

        def counted(spec, *args, **kwargs):
            requests.append(spec.version_label)
            return real(spec, *args, **kwargs)

        server.models.acquire = counted
        capsys.readouterr()
        code = main(
            [
                "predict",
                "--target",
                server.target,
                "--model",
                "a",
                "--version-label",
                "bogus",
                "--batch-size",
                "4",
            ]
            + [str(p) for p in photos]
        )
        out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert requests == ["bogus"]
    assert "Unrecognized servable version label: bogus" in err
    assert "does the server's model config give model 'a' the version label 'bogus'" in err
    assert "stopped after 0 of 8 images were scored" in err and err.count("Unrecognized") == 1
