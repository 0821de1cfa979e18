"""Read pipeline runs back from ML Metadata: executions, blessing, push, evaluation."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.gate import ACCURACY_KEY
from components.prepush import REPORT_FILE as PREPUSH_REPORT_FILE
from trainer.config import SUMMARY_FILE


@contextlib.contextmanager
def open_store(sqlite_path: str) -> Iterator[metadata_store.MetadataStore]:
    if not os.path.exists(sqlite_path):
        raise FileNotFoundError(f"no ML Metadata database at {sqlite_path}")
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = sqlite_path
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    yield metadata_store.MetadataStore(cfg)


def pipeline_runs(store, pipeline_name: str) -> list[metadata_store_pb2.Context]:
    """Pipeline run contexts of `pipeline_name`, oldest first."""
    pipeline_ctx = store.get_context_by_type_and_name("pipeline", pipeline_name)
    runs = store.get_contexts_by_type("pipeline_run")
    if pipeline_ctx is not None:
        mine = {c.id for c in store.get_children_contexts_by_context(pipeline_ctx.id)}
        if mine:
            runs = [r for r in runs if r.id in mine]
    return sorted(runs, key=lambda c: (c.create_time_since_epoch, c.id))


def latest_run(store, pipeline_name: str) -> metadata_store_pb2.Context:
    runs = pipeline_runs(store, pipeline_name)
    if not runs:
        raise LookupError(f"no runs of pipeline {pipeline_name!r} in ML Metadata")
    return runs[-1]


def run_executions(
    store, pipeline_name: str, run: metadata_store_pb2.Context
) -> dict[str, metadata_store_pb2.Execution]:
    """Node id -> the execution of that node in `run` (the last one if retried)."""
    out: dict[str, metadata_store_pb2.Execution] = {}
    prefix = f"{pipeline_name}."
    for e in sorted(store.get_executions_by_context(run.id), key=lambda e: e.id):
        for ctx in store.get_contexts_by_execution(e.id):
            if ctx.name.startswith(prefix) and store.get_context_types_by_id([ctx.type_id])[0].name == "node":
                out[ctx.name[len(prefix) :]] = e
    return out


def state_name(execution: metadata_store_pb2.Execution) -> str:
    return metadata_store_pb2.Execution.State.Name(execution.last_known_state)


def output_artifacts(store, execution, key: str) -> list[metadata_store_pb2.Artifact]:
    if execution is None:
        return []
    ids = []
    for ev in store.get_events_by_execution_ids([execution.id]):
        if ev.type not in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT):
            continue
        if any(step.HasField("key") and step.key == key for step in ev.path.steps):
            ids.append(ev.artifact_id)
    return list(store.get_artifacts_by_id(ids)) if ids else []


def output_uri(store, execution, key: str) -> str | None:
    arts = output_artifacts(store, execution, key)
    return arts[-1].uri if arts else None


def _int_prop(artifact, name: str) -> int | None:
    if name in artifact.custom_properties:
        return int(artifact.custom_properties[name].int_value)
    return None


def blessing(store, evaluator_execution) -> bool | None:
    arts = output_artifacts(store, evaluator_execution, "blessing")
    if not arts:
        return None
    return bool(_int_prop(arts[-1], "blessed"))


def pushed_path(store, pusher_execution) -> str | None:
    arts = output_artifacts(store, pusher_execution, "pushed_model")
    if not arts or not _int_prop(arts[-1], "pushed"):
        return None
    dest = arts[-1].custom_properties.get("pushed_destination")
    return dest.string_value if dest is not None else None


def evaluation_accuracy(evaluation_uri: str | None) -> tuple[float | None, float | None, dict[str, float]]:
    """(candidate accuracy, baseline accuracy, per-class accuracy) from the TFMA output."""
    if not evaluation_uri or not os.path.isdir(evaluation_uri):
        return None, None, {}
    import tensorflow_model_analysis as tfma

    overall: float | None = None
    baseline: float | None = None
    per_class: dict[str, float] = {}
    for mfs in tfma.load_metrics(evaluation_uri):
        keys = list(mfs.slice_key.single_slice_keys)
        for kv in mfs.metric_keys_and_values:
            if kv.key.name != ACCURACY_KEY or kv.key.is_diff:
                continue
            value = kv.value.double_value.value
            is_baseline = kv.key.model_name == "baseline"
            if not keys:
                if is_baseline:
                    baseline = value
                else:
                    overall = value
            elif not is_baseline and len(keys) == 1:
                k = keys[0]
                name = (
                    k.bytes_value.decode("utf-8")
                    if k.HasField("bytes_value")
                    else str(k.int64_value if k.HasField("int64_value") else k.float_value)
                )
                per_class[name] = value
    return overall, baseline, dict(sorted(per_class.items()))


def trainer_replicas(model_run_uri: str | None) -> int | None:
    if not model_run_uri:
        return None
    path = os.path.join(model_run_uri, SUMMARY_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return int(json.load(f)["replicas"])


def prepush_summary(infra_blessing_uri: str | None) -> dict | None:
    """The InfraValidator's verdict (blessed, reason, latencies...) from its report; None if absent."""
    if not infra_blessing_uri:
        return None
    path = os.path.join(infra_blessing_uri, PREPUSH_REPORT_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)["summary"]
