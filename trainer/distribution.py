"""Distribution strategy: MirroredStrategy over every local GPU, or over logical CPUs.

With no GPU and one (unsplit) CPU the Trainer uses TensorFlow's default strategy.

`split_cpu(n)` must run before TensorFlow initialises its devices (before the
first op); it lets MirroredStrategy be exercised with n replicas on a machine
without GPUs.
"""

from __future__ import annotations

import logging

import tensorflow as tf

log = logging.getLogger(__name__)


def split_cpu(replicas: int) -> None:
    """Split the first physical CPU into `replicas` logical devices (a testing aid)."""
    if replicas <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    existing = tf.config.get_logical_device_configuration(cpus[0])
    if existing and len(existing) == replicas:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        )
    except RuntimeError as e:
        raise RuntimeError(
            f"cannot split the CPU into {replicas} devices: TensorFlow is already "
            "initialised in this process (set replicas before any TensorFlow op runs)"
        ) from e


def mirrored() -> tf.distribute.MirroredStrategy:
    """MirroredStrategy over all local GPUs; else over all logical CPUs (one unless split)."""
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        devices = [d.name for d in gpus]
        strategy = tf.distribute.MirroredStrategy(devices)
    else:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(
            devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    log.info("MirroredStrategy: %d replica(s) on %s", strategy.num_replicas_in_sync, ", ".join(devices))
    return strategy


def replica_count() -> int:
    """The replicas make_strategy's strategy has: every local GPU, else every logical CPU."""
    return len(tf.config.list_logical_devices("GPU")) or len(tf.config.list_logical_devices("CPU"))


def make_strategy() -> tf.distribute.Strategy:
    """The Trainer's strategy: MirroredStrategy over every local GPU (or over the logical
    CPUs of split_cpu); with no GPU and one CPU device, TensorFlow's default strategy.

    There is nothing to mirror over a single CPU, and MirroredStrategy's per-step
    machinery cost 13-25% per epoch there (BENCHMARKS.md, `benchmarks.train --attribute`).
    The default strategy has the same API (scope, run, experimental_distribute_dataset,
    num_replicas_in_sync == 1), so the training code is the same either way.
    """
    if not tf.config.list_logical_devices("GPU") and len(tf.config.list_logical_devices("CPU")) == 1:
        strategy = tf.distribute.get_strategy()
        log.info("no GPU and one CPU device: default strategy, 1 replica")
        return strategy
    return mirrored()
