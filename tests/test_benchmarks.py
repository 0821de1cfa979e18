"""The benchmarks' own data logic: the N-image copy of a task and the split both sides use."""

from __future__ import annotations

import hashlib
import os

import pytest

from benchmarks import common, plain_keras
from benchmarks import pipeline as bench_pipeline
from imgpipe.demo import data


@pytest.fixture(scope="module")
def digits_tree(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("digits") / "images")
    data.write_digits_tree(out, digits=(5, 6, 7), size=16, limit_per_class=4)
    return out


def _tree(root: str) -> dict[str, bytes]:
    files = {}
    for c in sorted(os.listdir(root)):
        for name in sorted(os.listdir(os.path.join(root, c))):
            with open(os.path.join(root, c, name), "rb") as f:
                files[f"{c}/{name}"] = f.read()
    return files


def test_replicate_images_makes_n_distinct_images_in_the_source_class_shares(digits_tree, tmp_path):
    out = str(tmp_path / "n30")
    counts = common.replicate_images(digits_tree, out, 30)
    files = _tree(out)
    assert len(files) == 30
    assert counts == {"5": 10, "6": 10, "7": 10}
    assert {name.split("/")[0] for name in files} == {"5", "6", "7"}
    # ingest drops identical bytes: every copy must differ from every other
    assert len({hashlib.sha256(b).hexdigest() for b in files.values()}) == 30
    # the first copy of each source image is that image, byte for byte
    source = _tree(digits_tree)
    for rel, raw in source.items():
        assert files[rel[: -len(".png")] + "_c000.png"] == raw


def test_replicate_images_is_deterministic_and_reuses_a_finished_tree(digits_tree, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    common.replicate_images(digits_tree, a, 17, seed=3)
    common.replicate_images(digits_tree, b, 17, seed=3)
    assert _tree(a) == _tree(b)
    stamp = os.path.getmtime(os.path.join(a, "5", "5_0005_c000.png"))
    common.replicate_images(digits_tree, a, 17, seed=3)  # same arguments: not rewritten
    assert os.path.getmtime(os.path.join(a, "5", "5_0005_c000.png")) == stamp
    common.replicate_images(digits_tree, a, 13, seed=3)  # other arguments: rewritten
    assert len(_tree(a)) == 13


def test_replicate_images_refuses_bad_input(digits_tree, tmp_path):
    with pytest.raises(ValueError, match="n must be >= 1"):
        common.replicate_images(digits_tree, str(tmp_path / "x"), 0)
    (tmp_path / "empty" / "5").mkdir(parents=True)
    with pytest.raises(ValueError, match="no PNG files"):
        common.replicate_images(str(tmp_path / "empty"), str(tmp_path / "y"), 3)


def test_plain_script_trains_and_scores_on_ingests_split(digits_tree, tmp_path):
    out = str(tmp_path / "n40")
    common.replicate_images(digits_tree, out, 40)
    split = bench_pipeline.ingest_split(out, str(tmp_path / "split.json"))
    assert sorted(split["train"] + split["eval"]) == sorted(_tree(out))  # no copy dropped as a duplicate
    classes, files = plain_keras.list_images(out)
    assert classes == ["5", "6", "7"]
    parts = plain_keras.split_files(files, str(tmp_path / "split.json"), 0.2, 42)
    assert parts == split
    assert {p.split("/")[0] for p in parts["eval"]} == {"5", "6", "7"}


def test_plain_script_own_split_is_seeded_per_class(digits_tree):
    _, files = plain_keras.list_images(digits_tree)
    a = plain_keras.split_files(files, None, 0.25, 7)
    assert a == plain_keras.split_files(files, None, 0.25, 7)
    assert sorted(a["train"] + a["eval"]) == sorted(f for fs in files.values() for f in fs)
    assert sorted(p.split("/")[0] for p in a["eval"]) == ["5", "6", "7"]  # 1 of 4 per class


_CPU_TESTS = """
import subprocess, sys, time

def test_busy_itself():
    end = time.process_time() + 0.4
    while time.process_time() < end:
        pass

def test_waits_for_a_busy_child():
    subprocess.run([sys.executable, "-c", "import time\\nend = time.process_time() + 0.4\\nwhile time.process_time() < end: pass"], check=True)
"""


def test_cpu_log_counts_each_tests_own_and_its_childrens_cpu(tmp_path):
    """`--cpu-log` (tests/conftest.py) on two tests, and benchmarks/suite_cpu.py's summary of it."""
    import subprocess
    import sys

    from benchmarks import suite_cpu

    (tmp_path / "test_cpu.py").write_text(_CPU_TESTS)
    log = tmp_path / "cpu.jsonl"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # Not an xdist worker, though started by one: its records name no worker.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider", "-p", "tests.conftest",
         str(tmp_path / "test_cpu.py"), f"--cpu-log={log}"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    records = {r["test"].split("::")[1]: r for r in suite_cpu.read_log(str(log))}
    assert set(records) == {"test_busy_itself", "test_waits_for_a_busy_child"}
    busy, waits = records["test_busy_itself"], records["test_waits_for_a_busy_child"]
    assert busy["cpu"] >= 0.35 and busy["children_cpu"] == 0, busy
    assert waits["children_cpu"] >= 0.35 and waits["cpu"] < 0.35, waits
    assert all(r["wall"] > 0 and r["worker"] == "" for r in records.values())
    text = suite_cpu.summarise(suite_cpu.read_log(str(log)), top=5)
    assert "2 tests in 1 file:" in text and "test_cpu.py::test_waits_for_a_busy_child" in text
    with pytest.raises(SystemExit, match="no tests"):
        suite_cpu.summarise([], top=5)
    idle = {
        "test": "t.py::test_idle",
        "worker": "",
        "start": 0.0,
        "wall": 0.0,
        "cpu": 0.0,
        "children_cpu": 0.0,
    }
    assert "| t.py | 1 | 0 | 0 | 0 | n/a |" in suite_cpu.summarise([idle], top=5)  # no CPU to share
    with open(log, "a", encoding="utf-8") as f:
        f.write('{"test": "x"}\n')
    with pytest.raises(ValueError, match=r"line 3: not a --cpu-log record \(no worker, start"):
        suite_cpu.read_log(str(log))
