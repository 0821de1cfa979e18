"""--replicas: MirroredStrategy over N logical CPUs trains the same model as one device.

split_cpu() must run before TensorFlow initialises, so the two-replica training
runs in a process of its own while the test's process, which has one CPU device,
trains with one replica. The backbone is the session's test backbone (MobileNetV2
pre-trained here on digits 0-4, conftest.source_backbone), so the frozen-backbone
classifier on digits 0-2 is well above chance, and feature_cache=False makes every
step go through the full model under the strategy, for exactly EPOCHS epochs (early
stopping off: this compares replicas, not convergence). The per-replica batch is
halved for 2 replicas, so both runs see the same global batch (global = per-replica
x replicas) and should agree within noise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOBAL_BATCH = 16
EPOCHS = 3

# The two-replica run: a process of its own, its CPU split before TensorFlow initialises.
TRAIN_SCRIPT = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
from trainer import distribution
distribution.split_cpu(int(sys.argv[2]))  # before any TensorFlow op
from tests.test_replicas import train_replicas
result = train_replicas(sys.argv[1], sys.argv[3], int(sys.argv[2]))
import tensorflow as tf
from trainer import data
read = data.for_replicas(tf.data.Dataset.range(3), distribution.make_strategy())
result["default_rewrites"] = read.options().experimental_optimization.apply_default_optimizations
print("RESULT " + json.dumps(result), flush=True)
"""


def train_replicas(workdir: str, weights: str, replicas: int) -> dict:
    """Train with `replicas` replicas (GLOBAL_BATCH split among them); what the test compares."""
    import tensorflow_transform as tft

    from trainer import train
    from trainer.config import SUMMARY_FILE, TrainingConfig

    params = TrainingConfig(
        backbone="MobileNetV2",
        weights=weights,
        image_size=32,
        dropout=0.0,
        batch_size=GLOBAL_BATCH // replicas,
        epochs=EPOCHS,
        learning_rate=1e-3,
        feature_cache=False,
        early_stopping=False,
        seed=7,
    )
    result = train.train(
        os.path.join(workdir, "data", "train"),
        os.path.join(workdir, "data", "eval"),
        tft.TFTransformOutput(os.path.join(workdir, "transform")),
        params,
        verbose=0,
    )
    run_dir = os.path.join(workdir, f"model_run_{result.replicas}")
    train.write_summary(result, os.path.join(run_dir, SUMMARY_FILE))
    return {
        "replicas": result.replicas,
        "global_batch_size": result.global_batch_size,
        "feature_cache_used": result.feature_cache_used,
        "eval_accuracy": result.eval_accuracy,
        "run_dir": run_dir,
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Digits 0-2 as TFRecords and their Transform output."""
    from tests.helpers import replicas_task

    return replicas_task(str(tmp_path_factory.mktemp("replicas")))


def _start_two_replicas(workdir: str, weights: str) -> subprocess.Popen:
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-c", TRAIN_SCRIPT, workdir, "2", weights]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> tuple[dict, str]:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :]), err  # the trainer logs to stderr


def test_two_replicas_train_the_same_model_as_one(workdir, source_backbone):
    import tensorflow as tf

    from imgpipe.orchestration import metadata as mlmd
    from trainer import data

    proc = _start_two_replicas(workdir, source_backbone)
    try:
        # One replica here, while the other process trains: this process has one CPU device.
        assert len(tf.config.list_logical_devices("CPU")) == 1
        one = train_replicas(workdir, source_backbone, 1)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    two, two_log = _result(proc)

    assert one["replicas"] == 1
    assert two["replicas"] == 2
    assert "MirroredStrategy: 2 replica(s) on" in two_log
    # What `imgpipe run` reports as the run's replicas is read from this summary file.
    assert mlmd.trainer_replicas(two["run_dir"]) == 2
    assert one["global_batch_size"] == two["global_batch_size"] == GLOBAL_BATCH
    assert not one["feature_cache_used"] and not two["feature_cache_used"]
    # Two replicas read their datasets without tf.data's default rewrites (each of their
    # multi-device iterators re-optimised the whole graph per device: data.for_replicas);
    # one replica keeps the dataset as it is.
    assert two["default_rewrites"] is False
    plain = tf.data.Dataset.range(3)
    assert data.for_replicas(plain, tf.distribute.get_strategy()) is plain

    # 30 eval images, 3 classes: chance is 1/3. Both learn, and agree within 3 images.
    assert one["eval_accuracy"] >= 0.6, one
    assert two["eval_accuracy"] >= 0.6, two
    assert abs(one["eval_accuracy"] - two["eval_accuracy"]) <= 0.1 + 1e-6, (one, two)


# `imgpipe run --replicas 2` in a process of its own: the run checks the records (a TensorFlow
# op) before the pipeline starts, so the CPU must be split before that check. The pipeline
# itself is replaced by a report of the devices it would train on.
RUN_SCRIPT = """
import json, sys
from imgpipe.orchestration import local
from pipeline.config import PipelineConfig

def report(config, run_id, progress, verbose, weights_digest=None):
    import tensorflow as tf
    print("DEVICES " + json.dumps(len(tf.config.list_logical_devices("CPU"))), flush=True)
    return None

local._run_holding_lock = report
config = PipelineConfig(data_dir=sys.argv[1], home=sys.argv[2], serving_dir=sys.argv[3], replicas=2, weights="none")
local.run_local(config, lock_wait=float(sys.argv[4]))
"""


@pytest.mark.parametrize("lock_wait", ["0", "5"])  # the records are read outside and under the lock
def test_run_splits_the_cpu_before_it_reads_the_records(workdir, tmp_path, lock_wait):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    data, home, serving = os.path.join(workdir, "data"), str(tmp_path / "home"), str(tmp_path / "serving")
    cmd = [sys.executable, "-c", RUN_SCRIPT, data, home, serving, lock_wait]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DEVICES 2" in proc.stdout.splitlines(), proc.stdout
