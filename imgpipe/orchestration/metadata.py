"""Read pipeline runs back from ML Metadata: executions, blessing, push, evaluation."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.gate import ACCURACY_KEY
from components.gate_decision import GATE_FILE
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
    summary = training_summary(model_run_uri)
    return int(summary["replicas"]) if summary is not None else None


# ---------------------------------------------------------------- one run's artifacts (the report)
SERVING_MODEL_DIR = "Format-Serving"  # TFX's serving model folder inside a Model artifact


@dataclasses.dataclass(frozen=True)
class RunArtifacts:
    """Where one pipeline run's outputs are (None: that component made none in this run)."""

    run_id: str
    states: dict[str, str]  # node id -> COMPLETE | CACHED | FAILED | ...
    eval_examples: str | None  # ExampleGen `examples`, Split-eval folder
    serving_model: str | None  # Trainer `model`, its Format-Serving SavedModel
    model_run: str | None  # Trainer `model_run` (training_summary.json)
    evaluation: str | None  # Evaluator `evaluation` (TFMA output, gate.json)


def find_run(store, pipeline_name: str, run_id: str) -> metadata_store_pb2.Context:
    """The pipeline_run context named `run_id` (LookupError when ML Metadata has no such run)."""
    for run in pipeline_runs(store, pipeline_name):
        if run.name == run_id:
            return run
    raise LookupError(f"no run {run_id!r} of pipeline {pipeline_name!r} in ML Metadata")


def split_uri(store, execution, key: str, split: str) -> str | None:
    """The folder of one split of an Examples output (`<uri>/Split-<split>`)."""
    uri = output_uri(store, execution, key)
    return os.path.join(uri, f"Split-{split}") if uri else None


def run_artifacts(metadata_path: str, pipeline_name: str, run_id: str) -> RunArtifacts:
    """Look up run `run_id`'s eval examples, trained model, training summary and evaluation."""
    with open_store(metadata_path) as store:
        run = find_run(store, pipeline_name, run_id)
        executions = run_executions(store, pipeline_name, run)
        model = output_uri(store, executions.get("Trainer"), "model")
        return RunArtifacts(
            run_id=run.name,
            states={node: state_name(e) for node, e in executions.items()},
            eval_examples=split_uri(store, executions.get("ImportExampleGen"), "examples", "eval"),
            serving_model=os.path.join(model, SERVING_MODEL_DIR) if model else None,
            model_run=output_uri(store, executions.get("Trainer"), "model_run"),
            evaluation=output_uri(store, executions.get("Evaluator"), "evaluation"),
        )


def _json_file(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def training_summary(model_run_uri: str | None) -> dict | None:
    """The Trainer's training_summary.json (replicas, history, notes), or None when absent."""
    return _json_file(os.path.join(model_run_uri, SUMMARY_FILE)) if model_run_uri else None


def gate_record(evaluation_uri: str | None) -> dict | None:
    """The Evaluator's gate.json, or None (runs from before the record existed)."""
    return _json_file(os.path.join(evaluation_uri, GATE_FILE)) if evaluation_uri else None


# ---------------------------------------------------------------------- one run, push skips, updates
def run_by_id(store, pipeline_name: str, run_id: str) -> metadata_store_pb2.Context:
    """The pipeline_run context named `run_id` (LookupError if ML Metadata has no such run)."""
    run = store.get_context_by_type_and_name("pipeline_run", run_id)
    if run is None:
        raise LookupError(f"no run {run_id!r} of pipeline {pipeline_name!r} in ML Metadata")
    return run


def push_skipped_version(store, pusher_execution) -> str | None:
    """The serving version a Pusher found identical to its model (so it pushed nothing), else None."""
    from components.pusher import IDENTICAL_VERSION_KEY  # loads TFX's Pusher: only when asked

    arts = output_artifacts(store, pusher_execution, "pushed_model")
    if not arts or IDENTICAL_VERSION_KEY not in arts[-1].custom_properties:
        return None
    return arts[-1].custom_properties[IDENTICAL_VERSION_KEY].string_value


@contextlib.contextmanager
def open_store_for_update(sqlite_path: str) -> Iterator[metadata_store.MetadataStore]:
    """The home's ML Metadata store, writable: for run recovery and prune, which hold the home's lock."""
    if not os.path.exists(sqlite_path):
        raise FileNotFoundError(f"no ML Metadata database at {sqlite_path}")
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = sqlite_path
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE
    yield metadata_store.MetadataStore(cfg)
