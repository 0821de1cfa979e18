"""pytest set-up: Keras 2 for TFT/TFMA, quiet TensorFlow, the `e2e` marker."""

import fcntl
import gc
import os
import pickle
import sys
import warnings

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_addoption(parser):
    parser.addoption(
        "--cpu-log",
        metavar="FILE",
        default=None,
        help="append one JSON line per test to FILE: its wall time and the CPU seconds of the "
        "test process and of the child processes it waited for (benchmarks/suite_cpu.py reads it)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: whole-pipeline runs (minutes)")
    # Each worker ends holding TensorFlow's objects: exit as an imgpipe command does, without
    # the interpreter's last collection over them (imgpipe/process_exit.py).
    from imgpipe.process_exit import freeze_at_exit

    freeze_at_exit()


import pytest  # noqa: E402


def _cpu_seconds() -> tuple[float, float]:
    """User + system CPU seconds of this process, and of its children it has waited for."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With --cpu-log: each test's set-up, call and teardown, measured together.

    A child process counts for the test during which it was waited for (subprocess.run,
    Popen.wait or communicate); one left running is counted when it is reaped, or not at all.
    """
    path = item.config.getoption("--cpu-log")
    if not path:
        yield
        return
    import json
    import time

    own, children = _cpu_seconds()
    start = time.time()
    yield
    own2, children2 = _cpu_seconds()
    line = {
        "test": item.nodeid,
        "worker": os.environ.get("PYTEST_XDIST_WORKER", ""),
        "start": round(start, 3),
        "wall": round(time.time() - start, 3),
        "cpu": round(own2 - own, 3),
        "children_cpu": round(children2 - children, 3),
    }
    with open(path, "a", encoding="utf-8") as f:  # one short appended line per write: workers share it
        f.write(json.dumps(line) + "\n")


def _made_once(tmp_path_factory, name: str, make):
    """make(folder) once per test session; with pytest-xdist the workers share the result.

    The first worker to take the lock makes it under the workers' common temp parent and
    pickles what `make` returned; the others wait and read that. In one process: no sharing.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return make(str(tmp_path_factory.mktemp(name)))
    shared = tmp_path_factory.getbasetemp().parent / name  # the workers' common parent
    shared.mkdir(exist_ok=True)
    done = shared / "made.pickle"
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            made = make(str(shared))
            done.write_bytes(pickle.dumps(made))
        return pickle.loads(done.read_bytes())


@pytest.fixture(scope="session")
def source_backbone(tmp_path_factory):
    """MobileNetV2 (32px) pre-trained here on digits 0-4: the tests' offline 'ImageNet' (a weights file)."""
    from tests import helpers

    return _made_once(
        tmp_path_factory, "shared_backbone", lambda d: helpers.pretrained_weights(d, epochs=8, per_class=120)
    )


@pytest.fixture(scope="session")
def serving_model(tmp_path_factory):
    """The serving tests' small exported classifier (tests/serving_fixtures.py), read-only."""
    from tests import serving_fixtures

    return _made_once(tmp_path_factory, "shared_serving_model", serving_fixtures.serving_model)


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server (tests/postgres.py) for the session; stopped and removed after.

    Without the server binaries the tests that need it are skipped on a developer
    machine and fail in CI (CI=true), where .ci/run installs them.
    """
    from tests import postgres

    try:
        server = postgres.start()
    except postgres.Unavailable as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))
    try:
        yield server
    finally:
        server.stop()


# The test files by their measured time, longest first (`.ci/run` prints --durations; the
# Makefile keeps this order with --no-loadscope-reorder). pytest-xdist hands whole files to
# its workers in this order, each taking the next when it is nearly done, so a long file
# never starts last and runs alone at the end. The second file needs no test backbone: its
# worker runs it while the first worker pre-trains the shared one (source_backbone).
LONGEST_FIRST = (
    "tests/e2e/test_pipeline_e2e.py",
    "tests/test_prepush.py",
    "tests/e2e/test_airflow_e2e.py",
    "tests/test_train_convergence.py",
    "tests/e2e/test_metadata_postgres_e2e.py",
    "tests/test_feature_cache.py",
    "tests/test_export.py",
    "tests/test_replicas.py",
    "tests/test_serving.py",
    "tests/test_batch.py",
    "tests/test_tflite.py",
    "tests/test_tracing.py",
    "tests/test_beam.py",
    "tests/test_preprocessing.py",
    "tests/test_model.py",
    "tests/test_kubeflow.py",
    "tests/test_image_contract.py",
    "tests/test_layout.py",
    "tests/test_drift.py",
    "tests/test_output.py",
)


def pytest_collection_finish(session):
    """Keep what collecting made (the imported stack: ~675,000 objects) out of the collector.

    A worker's full collections walk every tracked object: ~0.74 s each over the ~1.1 million a
    worker holds by the end, and the project, Keras's fits and the tests run dozens of them
    (model unloads, fits on tf.data, the iterator checks). Frozen after collection, they walk
    only what came since: the workers' full collections took 42.5 s instead of 68.8 s over a
    suite run (BENCHMARKS.md, "The collector in the test workers"). Nothing frozen is garbage
    (collected first), and what is frozen, the modules and the collected tests, lives until the
    worker exits anyway.
    """
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
