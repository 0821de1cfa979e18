"""Pipeline runtime parameters ("knobs"): the config fields users retune per run without recompiling.

A knob is any field of a config section marked `json_schema_extra={"runtime": True}`
(trainer/config.py, components/gate.py); nothing here lists them again.

TFX 1.16's KubeflowV2DagRunner turns a RuntimeParameter into a pipeline
parameter only when it is a component's *whole* execution property. One nested
inside Trainer.custom_config or the Evaluator's eval_config is serialised as
its description and never substituted. So the Trainer and Evaluator nodes
(components/trainer.py, components/evaluator.py) carry each knob as its own
execution property; their executors merge it back before the stock executor
runs. On LocalDagRunner the same nodes run with plain values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError
from tfx.orchestration import data_types

from components.gate import GateConfig
from trainer.config import Settings, TrainingConfig, field_extra

RuntimeParameter = data_types.RuntimeParameter
Knob = int | float | RuntimeParameter

# The sections whose runtime fields are knobs, by the component that reads them.
TRAINER_SECTION: type[Settings] = TrainingConfig
EVALUATOR_SECTION: type[Settings] = GateConfig


@dataclasses.dataclass(frozen=True)
class KnobSpec:
    name: str
    section: type[Settings]
    ptype: type  # int or float: what RuntimeParameter and the KFP spec need
    description: str


def _knobs(section: type[Settings]) -> dict[str, KnobSpec]:
    out = {}
    for name, info in section.model_fields.items():
        if field_extra(section, name, "runtime"):
            if info.annotation not in (int, float):
                raise TypeError(f"runtime parameter {name} must be an int or float field")
            out[name] = KnobSpec(name, section, info.annotation, info.description or name)
    return out


TRAINER_KNOBS: dict[str, KnobSpec] = _knobs(TRAINER_SECTION)
EVALUATOR_KNOBS: dict[str, KnobSpec] = _knobs(EVALUATOR_SECTION)
KNOBS: dict[str, KnobSpec] = {**TRAINER_KNOBS, **EVALUATOR_KNOBS}


def check_knob(name: str, value: Any) -> int | float:
    """`value` checked and converted as the config field `name` would be; ValueError naming it."""
    if name not in KNOBS:
        raise ValueError(f"unknown runtime parameter {name!r}; known: {', '.join(KNOBS)}")
    spec = KNOBS[name]
    if isinstance(value, bool):
        raise ValueError(f"runtime parameter {name}: expected a number, got {value}")
    info = spec.section.model_fields[name]
    adapter = TypeAdapter(Annotated[(spec.ptype, *info.metadata)])
    if spec.ptype is int and isinstance(value, float) and value.is_integer():
        value = int(value)  # KFP hands integer parameters over as floats
    try:
        checked = adapter.validate_python(value)
    except ValidationError as e:
        problem = e.errors()[0]
        raise ValueError(f"runtime parameter {name}: {value!r}: {problem['msg']}") from None
    # The config's own rules (trainer.config.Settings: allow_inf_nan=False, _fits_in_64_bits),
    # which a bare TypeAdapter does not apply: learning_rate=inf passed here and failed the
    # Trainer's parse of its config six components into the run.
    if isinstance(checked, float) and not math.isfinite(checked):
        raise ValueError(f"runtime parameter {name}: {value!r}: Input should be a finite number")
    if isinstance(checked, int) and not -(2**63) <= checked < 2**63:
        raise ValueError(f"runtime parameter {name}: {value!r} is too large: at most {2**63 - 1}")
    return checked


def runtime_parameters(sections: Sequence[Settings]) -> dict[str, RuntimeParameter]:
    """One RuntimeParameter per knob, defaulting to its value in `sections` (the config's)."""
    values = {name: getattr(s, name) for s in sections for name in type(s).model_fields if name in KNOBS}
    return {
        name: RuntimeParameter(
            name=name, ptype=spec.ptype, default=spec.ptype(values[name]), description=spec.description
        )
        for name, spec in KNOBS.items()
    }


def knob_values(
    sections: Sequence[Settings], runtime_params: Mapping[str, RuntimeParameter] | None = None
) -> dict[str, Knob]:
    """Each knob's value for create_pipeline: the RuntimeParameter if given, else the config's value."""
    runtime_params = dict(runtime_params or {})
    unknown = sorted(set(runtime_params) - set(KNOBS))
    if unknown:
        raise ValueError(
            f"no runtime parameter support for {', '.join(unknown)}; supported: {', '.join(KNOBS)}"
        )
    config_values = {name: getattr(s, name) for s in sections for name in type(s).model_fields}
    out: dict[str, Knob] = {}
    for name, spec in KNOBS.items():
        param = runtime_params.get(name)
        if param is None:
            out[name] = spec.ptype(config_values[name])
        elif not isinstance(param, RuntimeParameter) or param.ptype is not spec.ptype:
            raise TypeError(
                f"runtime parameter {name} must be a RuntimeParameter with ptype={spec.ptype.__name__}"
            )
        else:
            out[name] = param
    return out
