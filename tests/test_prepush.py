"""Pre-push validation: the checks against a real server, the server subprocess, the settings.

The model is the serving tests' small digits classifier (tests/serving_fixtures.py,
built once per session). Broken variants of it are re-exported here with one
signature changed. The checks run against the dev server in this process
(fast); the whole validation (subprocess server, TF Serving's command line)
runs once against a stand-in `tensorflow_model_server` on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from components import infra_validator, loaded_models, model_server
from components.model_server import ModelServerError, ServerCommand
from components.prepush import REPORT_FILE, PrepushConfig
from components.prepush_checks import PrepushReport, Reference, check_served_model, reference_answers
from pipeline.config import ConfigError, PipelineConfig
from serving import warmup
from serving.client import ServingClient, make_image_example
from serving.devserver import lifecycle
from serving.devserver.versions import read_signature_defs
from serving.signatures import CLASSIFICATION, CLASSIFY_METHOD, PREDICT_IMAGES, SERVING_DEFAULT
from tests import serving_fixtures
from trainer.export import TRANSFORM_FEATURES, set_method_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = serving_fixtures.MODEL_NAME
N = 6  # eval examples per check


@pytest.fixture(scope="session")
def model(serving_model) -> serving_fixtures.ServingModel:
    return serving_model


@pytest.fixture(scope="module")
def inputs(model):
    images = [img for img, _ in model.items[::4][:N]]
    return [make_image_example(img) for img in images], images


@pytest.fixture(scope="module")
def reference(model, inputs) -> Reference:
    """The fixture model's in-process answers (serving_default: the broken variants keep it)."""
    return reference_answers(model.export_dir, inputs[0])


@pytest.fixture(scope="module")
def loaded(model):
    return tf.saved_model.load(model.export_dir)


@pytest.fixture(scope="module")
def good_server(model, tmp_path_factory):
    """The dev server, in this process, serving the fixture model as version 1."""
    base = tmp_path_factory.mktemp("good") / NAME
    shutil.copytree(model.export_dir, base / "1")
    with lifecycle.start_in_thread(str(base), NAME) as running:
        yield running


def _rewrite(model, loaded, out_dir: str, predict_images) -> str:
    """The fixture model re-exported with `predict_images(images, original)` as that signature."""
    original = loaded.signatures[PREDICT_IMAGES]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def replaced(images):
        return predict_images(images, original)

    signatures = {
        name: loaded.signatures[name] for name in (SERVING_DEFAULT, CLASSIFICATION, TRANSFORM_FEATURES)
    }
    tf.saved_model.save(loaded, out_dir, signatures={**signatures, PREDICT_IMAGES: replaced})
    set_method_name(out_dir, CLASSIFICATION, CLASSIFY_METHOD)
    # The fixture's warmup without its predict_images requests: a server refuses to load a
    # model whose warmup fails, and these tests are about the answers of a loaded one.
    kept = [
        log
        for log in warmup.read_warmup_requests(model.export_dir)
        if getattr(log, log.WhichOneof("log_type")).request.model_spec.signature_name != PREDICT_IMAGES
    ]
    warmup.write_warmup_logs(out_dir, kept)
    return out_dir


def _raises(images, original):
    tf.debugging.assert_equal(tf.size(images), -1, message="predict_images broken on purpose")
    return original(images=images)


def _float64_scores(images, original):
    out = original(images=images)
    return {"scores": tf.cast(out["scores"], tf.float64), "classes": out["classes"]}


def _top1_only(images, original):
    out = original(images=images)
    return {"scores": out["scores"][:, 0], "classes": out["classes"][:, 0]}


def _check(target, export_dir, inputs, reference, max_latency_ms=None) -> PrepushReport:
    """check_served_model against the server at `target` serving `export_dir` as version 1."""
    examples, images = inputs
    report = PrepushReport(model_name=NAME)
    with ServingClient(target, retries=0) as c:
        check_served_model(
            c,
            NAME,
            1,
            reference,
            examples,
            images,
            warmup.read_warmup_requests(export_dir),
            read_signature_defs(export_dir),
            tolerance=1e-4,
            max_latency_ms=max_latency_ms,
            report=report,
        )
    return report.conclude()


# ------------------------------------------------------------------------- the checks
def test_a_good_model_passes_every_check(model, inputs, reference, good_server):
    report = _check(good_server.target, model.export_dir, inputs, reference)
    assert report.failures == [] and report.blessed and report.reason == ""
    assert report.warmup_requests == serving_fixtures.WARMUP_REQUESTS
    # status x2 + metadata + warmup + 3 signatures x (N single + 1 batch)
    assert report.requests == 3 + serving_fixtures.WARMUP_REQUESTS + 3 * (N + 1)
    assert set(report.latency_ms) == {SERVING_DEFAULT, CLASSIFICATION, PREDICT_IMAGES}
    for stats in report.latency_ms.values():
        assert 0 < stats["p50"] <= stats["p99"] <= stats["max"]


@pytest.mark.parametrize(
    "broken, check, status, message",
    [
        (_raises, "answer", "INVALID_ARGUMENT", "predict_images broken on purpose"),
        (_float64_scores, "answer", None, "scores have dtype float64, expected float32"),
        (_top1_only, "answer", None, "scores have shape [1], expected [1, k]"),
    ],
)
def test_a_broken_predict_images_signature_fails(
    model, loaded, inputs, reference, tmp_path, broken, check, status, message
):
    export_dir = _rewrite(model, loaded, str(tmp_path / "models" / NAME / "1"), broken)
    with lifecycle.start_in_thread(str(tmp_path / "models" / NAME), NAME) as running:
        report = _check(running.target, export_dir, inputs, reference)
    assert not report.blessed
    first = report.failures[0]
    assert (first.check, first.signature, first.request, first.status) == (
        check,
        PREDICT_IMAGES,
        "eval example 0",
        status,
    )
    assert message in first.message
    # Only predict_images is broken: the other signatures answered correctly.
    assert {f.signature for f in report.failures} == {PREDICT_IMAGES}
    assert report.reason.startswith(f"answer ({PREDICT_IMAGES}, eval example 0): ")
    assert message in report.reason


def test_answers_that_differ_from_the_in_process_model_fail(model, inputs, reference, good_server):
    # A reference whose classes are in reverse order: the same scores now name other classes.
    flipped = Reference(reference.class_names[::-1], reference.scores)
    report = _check(good_server.target, model.export_dir, inputs, flipped)
    assert not report.blessed
    assert {f.signature for f in report.failures} == {SERVING_DEFAULT, CLASSIFICATION, PREDICT_IMAGES}
    assert any("in-process" in f.message and f.request == "eval example 0" for f in report.failures)


def test_a_latency_limit_nothing_can_meet_fails_naming_the_signature(model, inputs, reference, good_server):
    report = _check(good_server.target, model.export_dir, inputs, reference, max_latency_ms=1e-6)
    assert [f.check for f in report.failures] == ["latency"] * 3
    assert {f.signature for f in report.failures} == {SERVING_DEFAULT, CLASSIFICATION, PREDICT_IMAGES}
    assert "p99" in report.failures[0].message and "max_latency_ms 1e-06" in report.failures[0].message


# -------------------------------------------------------------- the whole validation
FAKE_TF_SERVING = """\
#!{python}
# A stand-in for tensorflow_model_server: checks TF Serving's flags and version layout,
# then serves the same directory with `imgpipe serve`.
import os, sys
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:])
assert set(flags) == {{"port", "model_name", "model_base_path", "max_num_load_retries"}}, sys.argv
versions = [d for d in os.listdir(flags["model_base_path"]) if d.isdigit()]
assert versions and all(
    os.path.exists(os.path.join(flags["model_base_path"], v, "saved_model.pb")) for v in versions
), versions
with open({record!r}, "w") as f:
    f.write(" ".join(sys.argv[1:]))
os.execv(sys.executable, [sys.executable, "-m", "imgpipe", "serve", "--model-base-path",
         flags["model_base_path"], "--model-name", flags["model_name"], "--port", flags["port"]])
"""


def test_validation_serves_with_tensorflow_model_server_flags_when_on_path(
    model, inputs, tmp_path, monkeypatch
):
    """TF Serving is used when on PATH; the whole validation passes through its command line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv.txt"
    fake = bin_dir / model_server.TF_SERVING_BINARY
    fake.write_text(FAKE_TF_SERVING.format(python=sys.executable, record=str(record)))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", REPO)
    examples, images = inputs
    log_path = str(tmp_path / "server.log")
    report = infra_validator.validate_model(
        model.export_dir, examples, images, NAME, PrepushConfig(), str(tmp_path / "work"), log_path
    )
    assert report.failures == [] and report.blessed, report.reason
    assert report.server == model_server.TF_SERVING_BINARY
    assert report.version == model_server.STAGED_VERSION
    argv = record.read_text().split()
    assert argv[1:] == [
        f"--model_name={NAME}",
        f"--model_base_path={tmp_path / 'work' / 'models' / NAME}",
        "--max_num_load_retries=0",
    ]
    assert argv[0].startswith("--port=")


def test_server_command_without_tf_serving_runs_imgpipe_serve(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no tensorflow_model_server here
    cmd = model_server.server_command("/m/digits", "digits", 8123)
    assert cmd.kind == model_server.IMGPIPE_SERVER
    assert cmd.argv == (
        sys.executable, "-m", "imgpipe", "serve", "--model-base-path=/m/digits",
        "--model-name=digits", "--host", "127.0.0.1", "--port", "8123",
        "--max-batch-size", "0",  # pre-push sends its examples in one request; its TF Serving has no limit
    )  # fmt: skip
    tfs = model_server.server_command("/m/digits", "digits", 8123, tf_serving_binary="/opt/tfs")
    assert tfs.argv == (
        "/opt/tfs", "--port=8123", "--model_name=digits", "--model_base_path=/m/digits",
        "--max_num_load_retries=0",
    )  # fmt: skip
    # A standby server polls its empty base path often: in whole seconds for TF Serving.
    assert model_server.server_command("/m/d", "d", 1, poll_seconds=0.2).argv[-2:] == (
        "--poll-seconds",
        "0.2",
    )
    polled = model_server.server_command("/m/d", "d", 1, tf_serving_binary="/opt/tfs", poll_seconds=0.2)
    assert polled.argv[-1] == "--file_system_poll_wait_seconds=1"


def test_the_server_starts_outside_a_working_directory_with_packages_named_like_imgpipes(
    monkeypatch, tmp_path
):
    """`python -m imgpipe serve` puts its working directory first on the import path; a run
    started from a project with its own trainer/ or serving/ package (Vertex AI's layout has
    trainer/) must not start the pre-push server on those."""
    project = tmp_path / "project"
    for package in ("trainer", "serving", "pipeline", "components"):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text(f"raise ImportError('the project's own {package}')\n")
    # A PYTHONPATH entry relative to where the run started still names that folder.
    (project / "libs").mkdir()
    marker = tmp_path / "libs-imported"
    (project / "libs" / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.setenv("PYTHONPATH", "libs")
    monkeypatch.chdir(project)
    monkeypatch.setenv("PATH", str(tmp_path))  # no tensorflow_model_server: imgpipe's own server
    command = model_server.server_command("no-such-base-path", "digits", 8123)
    server = model_server.ModelServer(command, "digits", 8123, "server.log")
    server.start()
    assert server.process.wait(timeout=120) == 2
    log = (project / "server.log").read_text()
    # imgpipe's packages loaded, and the base path is the one relative to where the run started.
    assert f"model base path not found: {project / 'no-such-base-path'}" in log, log
    assert "the project's own" not in log, log
    assert marker.exists()


def test_stage_model_makes_the_version_layout(model, tmp_path):
    base = model_server.stage_model(model.export_dir, str(tmp_path), NAME)
    assert base == str(tmp_path / NAME)
    assert sorted(os.listdir(base)) == ["1"]
    assert read_signature_defs(os.path.join(base, "1")) == read_signature_defs(model.export_dir)
    assert os.path.exists(warmup.warmup_path(os.path.join(base, "1")))


def test_a_model_the_server_cannot_load_fails_with_its_status(model, inputs, tmp_path):
    """The server's own load error (here: warmup requests that fail) is the reason."""
    export_dir = str(tmp_path / "bad_warmup")
    shutil.copytree(model.export_dir, export_dir)
    warmup.write_warmup_requests(export_dir, [b"not a tf.Example"])
    examples, images = inputs
    report = infra_validator.validate_model(
        export_dir, examples, images, NAME, PrepushConfig(), str(tmp_path / "w"), str(tmp_path / "s.log")
    )
    assert not report.blessed and report.validated
    assert report.failures[0].check == "server"
    assert f"failed to load model '{NAME}' version 1" in report.reason


# ---------------------------------------------------- a server started before its model
@pytest.mark.parametrize("staged", ["this model", "another model"])
def test_a_standby_server_is_taken_over_and_serves_the_staged_model(model, loaded, inputs, tmp_path, staged):
    """A local run starts the server during the Evaluator; validation takes it for its own model only.

    this model: staged at the start, so the server has loaded it meanwhile; another model:
    killed, and a server of its own runs. The same goes for the model object the run's
    Evaluator loaded (components/loaded_models.py): used for the reference answers only when
    it is the validated model's.
    """
    examples, images = inputs
    root, log_path = str(tmp_path / "standby"), str(tmp_path / "server.log")
    early = {"this model": model.export_dir, "another model": str(tmp_path / "other")}[staged]
    if staged == "another model":
        shutil.copytree(model.export_dir, early)
    served = loaded.signatures[SERVING_DEFAULT]
    calls = []

    class Evaluated:  # the model object as TFMA loaded it, counting its calls
        signatures = {SERVING_DEFAULT: lambda **kw: calls.append(1) or served(**kw)}

    with loaded_models.sharing():
        assert loaded_models.offer(early + os.sep, Evaluated())
        with model_server.standby_server(root, NAME, str(tmp_path / "standby.log"), early) as standby:
            assert standby.staged_from == early
            assert os.listdir(standby.base_path) == ["1"]
            report = infra_validator.validate_model(
                model.export_dir, examples, images, NAME, PrepushConfig(), str(tmp_path / "work"), log_path
            )
            assert standby.process.poll() is not None  # the validation killed it when done (or at once)
            assert model_server.take_standby(NAME) is None  # taken once
        # Kept for the run's report when it was the validated model's; dropped otherwise.
        assert loaded_models.held() == ([os.path.realpath(early)] if staged == "this model" else [])
    assert loaded_models.held() == []  # and dropped at the run's end
    assert report.failures == [] and report.blessed, report.reason
    assert report.server == model_server.IMGPIPE_SERVER and report.version == model_server.STAGED_VERSION
    assert report.server_started_early is (staged != "another model")
    assert report.reference_from_evaluator is (staged != "another model")
    assert len(calls) == (staged != "another model")  # its answers were the reference
    assert report.summary()["reference_from_evaluator"] is report.reference_from_evaluator
    own = os.path.join(tmp_path, "work", "models", NAME)
    served = own if staged == "another model" else standby.base_path
    assert os.path.exists(own) is (staged == "another model")
    assert read_signature_defs(os.path.join(served, "1")) == read_signature_defs(model.export_dir)
    with open(log_path, encoding="utf-8") as f:
        assert served in f.read()  # the output of the server that answered, kept as the log


def test_take_standby_only_takes_a_running_server_of_that_model(monkeypatch, tmp_path):
    sleeper = (sys.executable, "-c", "import time; time.sleep(120)")
    monkeypatch.setattr(model_server, "server_command", lambda *a, **k: ServerCommand("sleeper", sleeper))
    saved = tmp_path / "saved_model"  # staged, never loaded: the "server" only sleeps
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")
    with model_server.standby_server(
        str(tmp_path / "a"), "other", str(tmp_path / "a.log"), str(saved)
    ) as other:
        assert model_server.take_standby(NAME) is None
        with model_server.standby_server(
            str(tmp_path / "b"), NAME, str(tmp_path / "b.log"), str(saved)
        ) as mine:
            mine.process.kill()
            mine.process.wait()
            assert model_server.take_standby(NAME) is None  # dead: the validator starts its own
        assert model_server.take_standby("other") is other
        other.stop(graceful=False)
    assert other.process.poll() is not None and mine.process.poll() is not None


@pytest.mark.parametrize(
    ("transform", "trainer", "started_at", "staged"),
    [
        ("done", "done", "Trainer", True),  # new data: started empty as the Trainer starts, model later
        ("cached", "done", "Evaluator", True),  # only the training changed: started with its model
        ("done", "cached", "Trainer", False),  # cannot happen (new inputs retrain); stopped if it did
        ("cached", "cached", None, False),  # a re-run: no server at all
    ],
)
def test_a_local_run_starts_the_standby_as_early_as_its_model_is_sure(
    monkeypatch, tmp_path, transform, trainer, started_at, staged
):
    import contextlib
    import types

    from tfx.types import standard_artifacts

    from imgpipe.orchestration.local import _PrepushStandby

    sleeper = (sys.executable, "-c", "import time; time.sleep(120)")
    monkeypatch.setattr(model_server, "server_command", lambda *a, **k: ServerCommand("sleeper", sleeper))
    trained = tmp_path / "model"
    (trained / "Format-Serving").mkdir(parents=True)
    (trained / "Format-Serving" / "saved_model.pb").write_bytes(b"")
    config = PipelineConfig(data_dir=str(tmp_path), model_name=NAME).resolved()
    tracker = types.SimpleNamespace(states={}, results={})
    with contextlib.ExitStack() as stack:
        standby = _PrepushStandby(config, str(tmp_path / "scratch"), stack)
        seen = {}
        for node, state in (("Transform", transform), ("Trainer", trainer), ("Evaluator", None)):
            standby.before_launch(node, tracker)
            seen[node] = standby.server
            if state is not None:
                tracker.states[node] = state
                artifact = standard_artifacts.Model()
                artifact.uri = str(trained)
                tracker.results[node] = types.SimpleNamespace(output_dict={"model": [artifact]})
        first = next((node for node, server in seen.items() if server is not None), None)
        server = seen["Trainer"] or seen["Evaluator"]
        assert first == started_at  # the launch at which the server was started
        if started_at is None:
            assert server is None and not standby.started
        else:
            assert standby.started and server is not None
        if staged:
            assert model_server.take_standby(NAME) is server and server.process.poll() is None
            assert server.staged_from == str(trained / "Format-Serving")
            assert os.listdir(server.base_path) == ["1"]  # staged by rename, complete
            if started_at == "Trainer":
                assert seen["Trainer"] is server  # running before the Trainer ran
            server.stop(graceful=False)
        elif server is not None:
            # Started as the Trainer started; the Trainer came from the cache: stopped at once.
            assert standby.server is None and server.process.poll() is not None
            assert model_server.take_standby(NAME) is None
    assert server is None or server.process.poll() is not None  # nothing outlives the run


def test_no_standby_without_pre_push_validation(monkeypatch, tmp_path):
    import contextlib
    import types

    from imgpipe.orchestration.local import _PrepushStandby

    started = []
    monkeypatch.setattr(model_server, "standby_server", lambda *a, **k: started.append(a))
    config = PipelineConfig(data_dir=str(tmp_path), prepush_validation=False).resolved()
    tracker = types.SimpleNamespace(states={"Transform": "done", "Trainer": "done"}, results={})
    with contextlib.ExitStack() as stack:
        standby = _PrepushStandby(config, str(tmp_path), stack)
        standby.before_launch("Trainer", tracker)
        standby.before_launch("Evaluator", tracker)
    assert started == [] and standby.server is None


def test_stage_into_adds_a_complete_version_by_rename(model, tmp_path):
    base = tmp_path / "served" / NAME
    base.mkdir(parents=True)
    target = model_server.stage_into(model.export_dir, str(base))
    assert target == str(base / "1") and sorted(os.listdir(base)) == ["1"]
    assert read_signature_defs(target) == read_signature_defs(model.export_dir)
    assert os.listdir(tmp_path / "served" / f".staging-{NAME}" / NAME) == []  # nothing left half-copied


# ------------------------------------------------------------------ no leaked servers
HANGING_SERVER = """\
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL stops it
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(sys.argv[1], "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
print("pretending to load a model", flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie is dead: it only waits to be reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _gone(pids: list[int], seconds: float = 10.0) -> bool:
    """Whether every pid has died within `seconds` (SIGKILL is delivered, not instantaneous)."""
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _pids(path, seconds: float = 120.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return [int(p) for p in path.read_text().split()]
        time.sleep(0.05)
    raise AssertionError(f"the test server never wrote {path}")


def _hanging(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(HANGING_SERVER)
    pids = tmp_path / "pids.txt"
    return pids, lambda *_: ServerCommand("hanging server", (sys.executable, str(script), str(pids)))


def test_a_server_that_never_serves_is_killed_with_its_children_on_timeout(tmp_path):
    pids_file, command = _hanging(tmp_path)
    with pytest.raises(ModelServerError, match=r"did not serve model 'digits' within 3s") as e:
        with model_server.serve_model("/nowhere", "digits", str(tmp_path / "log"), 3, command, grace=0.5):
            pytest.fail("must not become ready")
    assert "pretending to load a model" in str(e.value)  # the server's output is in the error
    pids = _pids(pids_file)
    assert len(pids) == 2 and _gone(pids)


def test_a_failure_inside_the_block_stops_the_server(tmp_path):
    pids_file, command = _hanging(tmp_path)
    server = model_server.ModelServer(command(), "digits", model_server.free_port(), str(tmp_path / "log"))
    with pytest.raises(RuntimeError, match="a check blew up"):
        try:
            server.start()
            _pids(pids_file)
            raise RuntimeError("a check blew up")
        finally:
            server.stop(grace=0.5)
    assert _gone(_pids(pids_file))


SLOW_SERVER = """\
import sys, time
from concurrent import futures
import grpc

def slow_status(request, context):
    time.sleep(30)  # busy: far past the caller's deadline
    return b""

handler = grpc.method_handlers_generic_handler(
    "tensorflow.serving.ModelService", {"GetModelStatus": grpc.unary_unary_rpc_method_handler(slow_status)}
)
server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[handler])
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
print("listening, answering nothing in time", flush=True)
server.wait_for_termination()
"""


def test_a_server_too_busy_to_answer_is_waited_for_until_the_timeout(tmp_path):
    """Calls that time out (a server busy loading, listening already) mean "not ready yet", not failure."""
    script = tmp_path / "slow.py"
    script.write_text(SLOW_SERVER)

    def command(_base: str, _name: str, port: int) -> ServerCommand:
        return ServerCommand("slow server", (sys.executable, str(script), str(port)))

    with pytest.raises(ModelServerError, match=r"did not serve model 'digits' within 6s") as e:
        with model_server.serve_model("/nowhere", "digits", str(tmp_path / "log"), 6, command, grace=0.5):
            pytest.fail("must not become ready")
    assert "listening, answering nothing in time" in str(e.value)


TERM_RECORDING_SERVER = """\
import signal, sys, time
def on_term(*_):
    with open(sys.argv[1], "a") as f:
        f.write("TERM")
signal.signal(signal.SIGTERM, on_term)  # recorded, then ignored
print("serving nothing", flush=True)
time.sleep(600)
"""


def test_a_server_not_stopped_gracefully_is_killed_without_a_sigterm(tmp_path):
    """graceful=False (the InfraValidator's choice): SIGKILL at once, no grace period waited out."""
    script, record = tmp_path / "term.py", tmp_path / "signals.txt"
    script.write_text(TERM_RECORDING_SERVER)
    argv = (sys.executable, str(script), str(record))
    command = lambda *_: ServerCommand("t", argv)  # noqa: E731
    with model_server.started_server("/x", "digits", str(tmp_path / "log"), command, 600, False) as server:
        deadline = time.monotonic() + 60
        while "serving nothing" not in server.log_tail() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert server.process.returncode == -signal.SIGKILL
    assert not record.exists()  # never asked to stop: a 600 s grace would have been waited out


def test_a_server_that_exits_early_is_reported_with_its_output(tmp_path):
    argv = (sys.executable, "-c", "import sys; print('cannot bind 127.0.0.1:1: in use'); sys.exit(3)")
    with pytest.raises(ModelServerError, match=r"(?s)exited with code 3 .*cannot bind"):
        with model_server.serve_model(
            "/x", "digits", str(tmp_path / "log"), 60, lambda *_: ServerCommand("t", argv)
        ):
            pytest.fail("must not become ready")


def test_the_server_dies_with_the_process_that_started_it(tmp_path):
    """Even a SIGKILLed validator leaves no server behind (Linux parent-death signal)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signal is Linux only")
    pids_file, _ = _hanging(tmp_path)
    parent = textwrap.dedent(f"""
        import sys, time
        from components.model_server import ModelServer, ServerCommand
        cmd = ServerCommand("hanging", (sys.executable, {str(tmp_path / "hang.py")!r}, {str(pids_file)!r}))
        ModelServer(cmd, "digits", 1, {str(tmp_path / "log")!r}).start()
        time.sleep(600)
    """)
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=REPO, env=env)
    try:
        server_pid, _child = _pids(pids_file)
        assert _alive(server_pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert _gone([server_pid])
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _pids(pids_file):  # a failed run must not leak either
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------- settings
def test_prepush_settings_are_a_section_with_flat_keys_and_checks():
    cfg = PipelineConfig.from_dict(
        {"prepush_examples": "8", "max_latency_ms": 250, "prepush_validation": "no"}
    )
    assert cfg.prepush == PrepushConfig(prepush_examples=8, max_latency_ms=250.0, prepush_validation=False)
    assert PipelineConfig().prepush.max_latency_ms is None
    with pytest.raises(ConfigError, match="prepush_examples"):
        PipelineConfig.from_dict({"prepush_examples": 0})
    with pytest.raises(ConfigError, match="max_latency_ms"):
        PipelineConfig.from_dict({"max_latency_ms": -1})
    parsed = infra_validator.parse_config(json.dumps(cfg.prepush.to_dict()))
    assert parsed == cfg.prepush


def test_the_blessing_records_the_verdict_and_the_report(tmp_path):
    from tfx.types import standard_artifacts

    for blessed in (True, False):
        artifact = standard_artifacts.InfraBlessing()
        artifact.uri = str(tmp_path / str(blessed))
        report = PrepushReport(model_name=NAME, examples=3)
        if not blessed:
            from components.prepush_checks import Failure

            report.fail(Failure("answer", "boom", PREDICT_IMAGES, "eval example 2", "INTERNAL"))
        infra_validator.write_blessing(artifact, report.conclude())
        assert artifact.get_int_custom_property("blessed") == int(blessed)
        marker = infra_validator.BLESSED_FILE if blessed else infra_validator.NOT_BLESSED_FILE
        assert os.path.exists(os.path.join(artifact.uri, marker))
        with open(os.path.join(artifact.uri, REPORT_FILE), encoding="utf-8") as f:
            summary = json.load(f)["summary"]
        assert summary["blessed"] is blessed
        if not blessed:
            assert summary["reason"] == "answer (predict_images, eval example 2): INTERNAL: boom"


def test_reference_answers_match_the_saved_model(model, loaded, inputs, reference):
    assert reference.class_names == model.class_names
    direct = loaded.signatures[SERVING_DEFAULT](examples=tf.constant(inputs[0]))
    np.testing.assert_allclose(reference.scores, direct["scores"].numpy(), rtol=1e-6)
    assert reference.scores.std(axis=0).max() > 1e-3  # the answers depend on the image


def test_a_model_identical_to_the_newest_served_version_is_not_served_again(tmp_path):
    from components.infra_validator import identical_served_version

    candidate = tmp_path / "candidate"
    (candidate / "variables").mkdir(parents=True)
    (candidate / "saved_model.pb").write_bytes(b"graph")
    (candidate / "variables" / "v.data").write_bytes(b"weights")
    base = tmp_path / "serving" / NAME
    assert identical_served_version(str(candidate), str(base)) is None  # nothing served yet
    assert identical_served_version(str(candidate), "") is None  # no serving dir given
    shutil.copytree(candidate, base / "7")
    assert identical_served_version(str(candidate), str(base)) == 7
    # Only the newest version counts, as for the Pusher; one byte apart is another model.
    shutil.copytree(candidate, base / "9")
    (base / "9" / "variables" / "v.data").write_bytes(b"weightz")
    assert identical_served_version(str(candidate), str(base)) is None
