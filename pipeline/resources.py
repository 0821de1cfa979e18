"""The Trainer's machine on Kubeflow Pipelines / Vertex AI: the `resources` part of the config.

    trainer_machine_type   a Compute Engine machine type, e.g. n1-standard-8
    trainer_accelerator    TYPE:COUNT, e.g. NVIDIA_TESLA_T4:2

`imgpipe compile` turns them into the Trainer step's container resources in the
pipeline spec (cpuLimit and memoryLimit from the machine type's shape, and
accelerator {type, count}); see imgpipe/orchestration/kubeflow.py. A local run
has no use for them: the Trainer uses whatever devices the machine has.

Checked here, before anything is compiled: the machine type is a known shape,
the accelerator a known type with a count that type is offered in, and the
pair fits (T4/V100/P100/P4 attach to N1 machines; A100 come built into A2
machines, L4 into G2, H100 into A3, in a fixed number per machine).
"""

from __future__ import annotations

import dataclasses
import re

from pydantic import Field, field_validator, model_validator

from trainer.config import Settings

# family -> (vCPU counts offered, GB of memory per vCPU)
_FAMILIES: dict[str, tuple[tuple[int, ...], float]] = {
    "n1-standard": ((1, 2, 4, 8, 16, 32, 64, 96), 3.75),
    "n1-highmem": ((2, 4, 8, 16, 32, 64, 96), 6.5),
    "n1-highcpu": ((2, 4, 8, 16, 32, 64, 96), 0.9),
    "n2-standard": ((2, 4, 8, 16, 32, 48, 64, 80, 96, 128), 4.0),
    "n2-highmem": ((2, 4, 8, 16, 32, 48, 64, 80, 96, 128), 8.0),
    "n2-highcpu": ((2, 4, 8, 16, 32, 48, 64, 80, 96), 1.0),
    "e2-standard": ((2, 4, 8, 16, 32), 4.0),
    "e2-highmem": ((2, 4, 8, 16), 8.0),
    "e2-highcpu": ((2, 4, 8, 16, 32), 1.0),
    "c2-standard": ((4, 8, 16, 30, 60), 4.0),
}


@dataclasses.dataclass(frozen=True)
class MachineShape:
    """What a machine type offers: vCPUs, memory in GB, and the GPUs built into it (if any)."""

    cpus: int
    memory_gb: float
    gpu_type: str | None = None
    gpus: int = 0


# Machine types that come with their GPUs: name -> shape.
_GPU_MACHINES: dict[str, MachineShape] = {
    **{f"a2-highgpu-{k}g": MachineShape(12 * k, 85.0 * k, "NVIDIA_TESLA_A100", k) for k in (1, 2, 4, 8)},
    "a2-megagpu-16g": MachineShape(96, 1360.0, "NVIDIA_TESLA_A100", 16),
    **{f"a2-ultragpu-{k}g": MachineShape(12 * k, 170.0 * k, "NVIDIA_A100_80GB", k) for k in (1, 2, 4, 8)},
    **{
        f"g2-standard-{n}": MachineShape(n, 4.0 * n, "NVIDIA_L4", gpus)
        for n, gpus in ((4, 1), (8, 1), (12, 1), (16, 1), (24, 2), (32, 1), (48, 4), (96, 8))
    },
    "a3-highgpu-8g": MachineShape(208, 1872.0, "NVIDIA_H100_80GB", 8),
}

# GPUs attached to N1 machines: type -> counts offered.
_N1_GPUS: dict[str, tuple[int, ...]] = {
    "NVIDIA_TESLA_T4": (1, 2, 4),
    "NVIDIA_TESLA_P4": (1, 2, 4),
    "NVIDIA_TESLA_P100": (1, 2, 4),
    "NVIDIA_TESLA_V100": (1, 2, 4, 8),
}
_BUILT_IN_GPUS = sorted({s.gpu_type for s in _GPU_MACHINES.values() if s.gpu_type})
ACCELERATOR_TYPES: tuple[str, ...] = tuple(sorted(_N1_GPUS)) + tuple(_BUILT_IN_GPUS)
_ACCELERATOR = re.compile(r"^([A-Za-z0-9_]+):([0-9]+)$")


def machine_shape(machine_type: str) -> MachineShape:
    """The vCPUs, memory and built-in GPUs of a machine type; ValueError naming the known ones."""
    if machine_type in _GPU_MACHINES:
        return _GPU_MACHINES[machine_type]
    family, _, size = machine_type.rpartition("-")
    if family in _FAMILIES and size.isdigit():
        sizes, gb_per_cpu = _FAMILIES[family]
        if int(size) in sizes:
            return MachineShape(int(size), round(gb_per_cpu * int(size), 2))
        raise ValueError(
            f"{family} comes in {', '.join(f'{family}-{n}' for n in sizes)}; got {machine_type!r}"
        )
    known = ", ".join([f"{f}-N" for f in _FAMILIES] + sorted(_GPU_MACHINES))
    raise ValueError(f"unknown machine type {machine_type!r}; known: {known}")


def parse_accelerator(value: str) -> tuple[str, int]:
    """'NVIDIA_TESLA_T4:2' (any case) -> ('NVIDIA_TESLA_T4', 2); ValueError naming the known types.

    Errors quote the type as it was written, not as it was upper-cased for the lookup.
    """
    m = _ACCELERATOR.match(value.strip())
    if not m:
        raise ValueError(f"expected TYPE:COUNT such as NVIDIA_TESLA_T4:2, got {value!r}")
    kind, count = m.group(1).upper(), int(m.group(2))
    if kind not in ACCELERATOR_TYPES:
        raise ValueError(f"unknown accelerator type {m.group(1)!r}; known: {', '.join(ACCELERATOR_TYPES)}")
    if count < 1:
        raise ValueError(f"the accelerator count must be at least 1, got {count}")
    if kind in _N1_GPUS and count not in _N1_GPUS[kind]:
        raise ValueError(f"{kind} is offered in counts {', '.join(map(str, _N1_GPUS[kind]))}; got {count}")
    return kind, count


class ResourcesConfig(Settings):
    """The Trainer step's machine when the pipeline is compiled for Kubeflow / Vertex AI."""

    trainer_machine_type: str = Field(
        "",
        description="Kubeflow/Vertex: machine type of the Trainer step, e.g. n1-standard-8 "
        "(sets its CPU and memory limits; default: the cluster's default)",
    )
    trainer_accelerator: str = Field(
        "",
        description="Kubeflow/Vertex: GPUs of the Trainer step as TYPE:COUNT, e.g. NVIDIA_TESLA_T4:2 "
        f"(types: {', '.join(ACCELERATOR_TYPES)})",
    )

    @field_validator("trainer_machine_type")
    @classmethod
    def _known_machine(cls, value: str) -> str:
        value = value.strip().lower()
        if value:
            machine_shape(value)
        return value

    @field_validator("trainer_accelerator")
    @classmethod
    def _known_accelerator(cls, value: str) -> str:
        value = value.strip()
        if value:
            kind, count = parse_accelerator(value)  # errors quote the value as given
            value = f"{kind}:{count}"
        return value

    @model_validator(mode="after")
    def _machine_fits_accelerator(self) -> ResourcesConfig:
        machine, accelerator = self.trainer_machine_type, self.trainer_accelerator
        kind, count = parse_accelerator(accelerator) if accelerator else (None, 0)
        if kind in _BUILT_IN_GPUS and not machine:
            raise ValueError(
                f"trainer_accelerator: {kind} comes built into its machine types; "
                f"set trainer_machine_type too (one of {', '.join(_machines_with(kind))})"
            )
        if not machine:
            return self
        shape = machine_shape(machine)
        if shape.gpu_type:
            if kind != shape.gpu_type or count != shape.gpus:
                raise ValueError(
                    f"trainer_accelerator: {machine} comes with {shape.gpus} {shape.gpu_type}; "
                    f"set trainer_accelerator {shape.gpu_type}:{shape.gpus}"
                )
        elif kind in _BUILT_IN_GPUS:
            raise ValueError(
                f"trainer_accelerator: {kind} needs one of the machine types "
                f"{', '.join(_machines_with(kind))}, not {machine}"
            )
        elif kind and not machine.startswith("n1-"):
            raise ValueError(
                f"trainer_accelerator: {kind} attaches to N1 machine types (n1-*), not {machine}"
            )
        return self

    @property
    def is_set(self) -> bool:
        return bool(self.trainer_machine_type or self.trainer_accelerator)

    def trainer_limits(self) -> dict[str, float | int | str]:
        """The Trainer step's resource limits: cpu_limit, memory_limit (GB), accelerator_type/count.

        Only what was asked for: an empty config gives {} (the cluster's defaults).
        """
        limits: dict[str, float | int | str] = {}
        if self.trainer_machine_type:
            shape = machine_shape(self.trainer_machine_type)
            limits.update(cpu_limit=float(shape.cpus), memory_limit=shape.memory_gb)
        if self.trainer_accelerator:
            kind, count = parse_accelerator(self.trainer_accelerator)
            limits.update(accelerator_type=kind, accelerator_count=count)
        return limits


def _machines_with(gpu_type: str) -> list[str]:
    return [name for name, shape in _GPU_MACHINES.items() if shape.gpu_type == gpu_type]
