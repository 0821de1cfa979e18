"""Distribution strategy: MirroredStrategy over every local GPU, or over logical CPUs.

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


def make_strategy() -> tf.distribute.MirroredStrategy:
    """MirroredStrategy over all local GPUs; else over all logical CPUs (one by default)."""
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
    print(
        f"[trainer] MirroredStrategy: {strategy.num_replicas_in_sync} replica(s) on {', '.join(devices)}",
        flush=True,
    )
    return strategy
