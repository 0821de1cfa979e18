"""Lineage checks of one pipeline run in ML Metadata (SQLite or PostgreSQL): used by tests and benchmarks.

A run's lineage is right when its context holds one execution per component,
none of them belongs to another run, and the model the Trainer wrote is the one
the Evaluator judged and the Pusher pushed (with the Evaluator's blessing).
"""

from __future__ import annotations

from ml_metadata.proto import metadata_store_pb2

from imgpipe.orchestration import metadata
from pipeline.pipeline import COMPONENT_IDS

_INPUTS = (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT)
_OUTPUTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)


def artifact_ids(store, execution, key: str, types) -> set[int]:
    """Ids of the artifacts `execution` read (types=_INPUTS) or wrote (_OUTPUTS) under `key`."""
    if execution is None:
        return set()
    return {
        ev.artifact_id
        for ev in store.get_events_by_execution_ids([execution.id])
        if ev.type in types and any(s.HasField("key") and s.key == key for s in ev.path.steps)
    }


def problems(store, pipeline_name: str, run_id: str) -> list[str]:
    """What is wrong with the lineage of run `run_id` of `pipeline_name` ([] when nothing)."""
    out: list[str] = []
    run = metadata.run_by_id(store, pipeline_name, run_id)
    executions = metadata.run_executions(store, pipeline_name, run)
    missing = sorted(set(COMPONENT_IDS) - set(executions))
    if missing:
        out.append(f"no execution of {', '.join(missing)}")
    in_run = store.get_executions_by_context(run.id)
    if len(in_run) != len(COMPONENT_IDS):
        out.append(f"{len(in_run)} executions in the run context, expected {len(COMPONENT_IDS)}")
    run_type = store.get_context_type("pipeline_run").id
    for e in in_run:
        runs = [c.name for c in store.get_contexts_by_execution(e.id) if c.type_id == run_type]
        if runs != [run.name]:
            out.append(f"execution {e.id} belongs to runs {runs}")
    states = {node: metadata.state_name(e) for node, e in executions.items()}
    bad = {node: s for node, s in states.items() if s not in ("COMPLETE", "CACHED")}
    if bad:
        out.append(f"unfinished executions: {bad}")
    trained = artifact_ids(store, executions.get("Trainer"), "model", _OUTPUTS)
    if len(trained) != 1:
        out.append(f"Trainer wrote {len(trained)} models")
    for node in ("Evaluator", "InfraValidator", "Pusher"):
        used = artifact_ids(store, executions.get(node), "model", _INPUTS)
        if used != trained:
            out.append(f"{node} read model {sorted(used)}, the Trainer wrote {sorted(trained)}")
    blessing = artifact_ids(store, executions.get("Evaluator"), "blessing", _OUTPUTS)
    if artifact_ids(store, executions.get("Pusher"), "model_blessing", _INPUTS) != blessing or not blessing:
        out.append("Pusher did not read this run's blessing")
    infra = artifact_ids(store, executions.get("InfraValidator"), "blessing", _OUTPUTS)
    if artifact_ids(store, executions.get("Pusher"), "infra_blessing", _INPUTS) != infra or not infra:
        out.append("Pusher did not read this run's pre-push validation (InfraBlessing)")
    return out
