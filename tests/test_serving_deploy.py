"""serving/deploy: TF Serving configs parse with the real protos; compose and k8s files agree.

tensorflow-serving-api 2.16.1 ships ModelServerConfig but not MonitoringConfig
or BatchingParameters (their *_pb2 modules are not in the wheel). For those two
the messages are built here from the upstream .proto definitions (field names,
numbers and types transcribed from tensorflow/serving), so a misspelt or
mistyped field still fails to parse exactly as it would in the server.
"""

from __future__ import annotations

import os
import re

import pytest
import yaml
from google.protobuf import text_format

DEPLOY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "serving", "deploy")
IMAGE = "tensorflow/serving:2.16.1"
MODEL_NAME = "imgpipe"  # pipeline.config.PipelineConfig.model_name default
CONFIG_FILES = ("models.config", "batching_parameters.txt", "monitoring.config")


def _read(name: str) -> str:
    with open(os.path.join(DEPLOY, name), encoding="utf-8") as f:
        return f.read()


def _yaml(name: str):
    with open(os.path.join(DEPLOY, name), encoding="utf-8") as f:
        return list(yaml.safe_load_all(f))


def _transcribed_messages() -> dict[str, type]:
    """MonitoringConfig as declared upstream (tensorflow_serving/config/monitoring_config.proto, 2.16)."""
    from serving.batching_config import transcribed_messages

    return transcribed_messages(
        "imgpipe_tests/tf_serving_configs.proto",
        {
            "PrometheusConfig": [("enable", 1, "bool"), ("path", 2, "string")],
            "MonitoringConfig": [("prometheus_config", 1, ".tensorflow.serving.PrometheusConfig")],
        },
    )


def _monitoring_config_class():
    try:
        from tensorflow_serving.config import monitoring_config_pb2

        return monitoring_config_pb2.MonitoringConfig
    except ImportError:
        return _transcribed_messages()["MonitoringConfig"]


def _batching_parameters_class():
    """TF Serving's BatchingParameters message (serving/batching_config.py: as `imgpipe serve` reads it)."""
    from serving.batching_config import batching_parameters_message

    return batching_parameters_message()


def test_models_config_parses_as_model_server_config():
    from tensorflow_serving.config import model_server_config_pb2

    cfg = text_format.Parse(_read("models.config"), model_server_config_pb2.ModelServerConfig())
    models = cfg.model_config_list.config
    assert len(models) == 1
    m = models[0]
    assert m.name == MODEL_NAME
    assert m.base_path == f"/models/{MODEL_NAME}"
    assert m.model_platform == "tensorflow"
    assert m.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert m.model_version_policy.latest.num_versions == 1


def test_monitoring_config_enables_prometheus():
    cfg = text_format.Parse(_read("monitoring.config"), _monitoring_config_class()())
    assert cfg.prometheus_config.enable is True
    assert cfg.prometheus_config.path == "/monitoring/prometheus/metrics"


def test_batching_parameters_parse_and_are_sane():
    params = text_format.Parse(_read("batching_parameters.txt"), _batching_parameters_class()())
    assert params.HasField("max_batch_size") and params.max_batch_size.value == 32
    from serving.config import DEPLOY_MAX_BATCH_SIZE, ServerConfig

    # The dev server refuses what the shipped config makes TF Serving refuse.
    assert ServerConfig("m", "n").max_batch_size == DEPLOY_MAX_BATCH_SIZE == params.max_batch_size.value
    assert 0 < params.batch_timeout_micros.value <= 100_000
    assert params.num_batch_threads.value >= 1
    assert params.max_enqueued_batches.value >= 1
    sizes = list(params.allowed_batch_sizes)
    if sizes:  # TF Serving: increasing, the last equal to max_batch_size
        assert sizes == sorted(sizes) and sizes[-1] == params.max_batch_size.value


def test_transcribed_protos_reject_unknown_fields():
    """The parse checks above can fail: a misspelt field is an error, not ignored."""
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_sise { value: 1 }", _batching_parameters_class()())
    with pytest.raises(text_format.ParseError):
        text_format.Parse("prometheus_config { enabled: true }", _monitoring_config_class()())


def _server_flags(args: list[str]) -> dict[str, str]:
    flags = {}
    for a in args:
        m = re.fullmatch(r"--([a-z_]+)=(.*)", a)
        assert m, f"unexpected argument {a!r}"
        flags[m.group(1)] = m.group(2)
    return flags


def _check_server_flags(flags: dict[str, str], config_files: set[str]) -> None:
    assert flags["port"] == "8500" and flags["rest_api_port"] == "8501"
    assert flags["enable_batching"] == "true"
    for flag, name in (
        ("model_config_file", "models.config"),
        ("batching_parameters_file", "batching_parameters.txt"),
        ("monitoring_config_file", "monitoring.config"),
    ):
        assert flags[flag] == f"/config/{name}"
        assert name in config_files, f"{flag} points at {name}, which is not provided"


def test_docker_compose_runs_tf_serving_on_the_pusher_dir():
    (compose,) = _yaml("docker-compose.yml")
    svc = compose["services"]["tfserving"]
    assert svc["image"] == IMAGE
    assert svc["entrypoint"] == ["/usr/bin/tensorflow_model_server"]
    assert {"8500:8500", "8501:8501"} <= set(svc["ports"])
    mounts = {v["target"]: v for v in svc["volumes"]}
    assert mounts["/models"]["read_only"] is True
    assert "SERVING_DIR" in mounts["/models"]["source"]
    config_dir = os.path.normpath(os.path.join(DEPLOY, mounts["/config"]["source"]))
    assert config_dir == os.path.normpath(DEPLOY)
    _check_server_flags(_server_flags(svc["command"]), set(os.listdir(config_dir)))
    assert f"/v1/models/{MODEL_NAME}" in " ".join(svc["healthcheck"]["test"])


def test_docker_compose_request_logger_forwards_to_tf_serving():
    """The optional request logger's command is one `imgpipe log-proxy` takes, aimed at the
    compose file's TF Serving gRPC port, logging to its mounted folder."""
    from imgpipe.cli.main import build_parser

    (compose,) = _yaml("docker-compose.yml")
    svc = compose["services"]["request-logger"]
    assert svc["profiles"] == ["logging"] and svc["entrypoint"] == ["imgpipe"]
    context = os.path.normpath(os.path.join(DEPLOY, svc["build"]["context"]))
    assert context == os.path.dirname(os.path.dirname(DEPLOY)) and os.path.isfile(
        os.path.join(context, "Dockerfile")
    )
    args = build_parser().parse_args(svc["command"])
    assert args.command == "log-proxy"
    tfserving = compose["services"]["tfserving"]
    grpc_port = next(f.split("=", 1)[1] for f in tfserving["command"] if f.startswith("--port="))
    assert args.target == f"tfserving:{grpc_port}" and args.host == "0.0.0.0"
    assert f"{args.port}:{args.port}" in svc["ports"]
    mounts = {v["target"]: v for v in svc["volumes"]}
    assert args.log_requests in mounts and "REQUEST_LOG_DIR" in mounts[args.log_requests]["source"]


def test_k8s_deployment_and_service():
    (deployment,) = _yaml("k8s/deployment.yaml")
    (service,) = _yaml("k8s/service.yaml")
    (configmap,) = _yaml("k8s/configmap.yaml")
    (claim,) = _yaml("k8s/pvc.yaml")
    assert deployment["kind"] == "Deployment" and deployment["apiVersion"] == "apps/v1"
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert container["image"] == IMAGE
    _check_server_flags(_server_flags(container["args"]), set(configmap["data"]))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    # `kubectl apply -f k8s/` makes the claim the pods mount: without it they stay Pending.
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert volumes[mounts["/models"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert volumes[mounts["/config"]]["configMap"]["name"] == configmap["metadata"]["name"]
    readiness = container["readinessProbe"]
    probe_text = yaml.safe_dump(readiness)
    assert f"/v1/models/{MODEL_NAME}" in probe_text and "AVAILABLE" in probe_text
    assert container["startupProbe"]["httpGet"]["path"] == f"/v1/models/{MODEL_NAME}"
    # The Service routes to these pods and ports.
    assert service["kind"] == "Service"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    targets = {p["targetPort"] for p in service["spec"]["ports"]}
    assert targets <= set(ports) | set(ports.values())
    assert {p["port"] for p in service["spec"]["ports"]} == {8500, 8501}


def test_k8s_configmap_matches_the_config_files():
    (configmap,) = _yaml("k8s/configmap.yaml")
    assert set(configmap["data"]) == set(CONFIG_FILES)
    for name in CONFIG_FILES:
        assert configmap["data"][name] == _read(name), f"k8s/configmap.yaml drifted from {name}"


# TF Serving's REST model status (GET /v1/models/NAME), as its handler writes it (JSON with
# whitespace, every field printed): one version serving, and one whose load failed.
_STATUS_SERVING = """{
 "model_version_status": [
  {
   "version": "3",
   "state": "AVAILABLE",
   "status": {
    "error_code": "OK",
    "error_message": ""
   }
  }
 ]
}"""
_STATUS_FAILED = (
    _STATUS_SERVING.replace('"AVAILABLE"', '"END"')
    .replace('"OK"', '"UNAVAILABLE"')
    .replace('"error_message": ""', '"error_message": "Could not find variables"')
)


def _probe_commands() -> list[str]:
    (compose,) = _yaml("docker-compose.yml")
    (deployment,) = _yaml("k8s/deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return [
        compose["services"]["tfserving"]["healthcheck"]["test"][-1],
        container["readinessProbe"]["exec"]["command"][-1],
    ]


@pytest.mark.parametrize(("body", "healthy"), [(_STATUS_SERVING, True), (_STATUS_FAILED, False)])
def test_the_health_probes_pass_only_while_a_version_is_available(body, healthy):
    """The compose healthcheck and the k8s readiness probe, run by bash against a server giving
    TF Serving's model status: a version whose load failed with UNAVAILABLE is not ready."""
    import http.server
    import subprocess
    import threading

    class Status(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            assert self.path == f"/v1/models/{MODEL_NAME}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for command in _probe_commands():
            assert "/dev/tcp/127.0.0.1/8501" in command
            local = command.replace("/dev/tcp/127.0.0.1/8501", f"/dev/tcp/127.0.0.1/{server.server_port}")
            done = subprocess.run(["bash", "-c", local], timeout=20, check=False)
            assert (done.returncode == 0) is healthy, command
    finally:
        server.shutdown()
        server.server_close()
