"""Executions left RUNNING by a run that died are marked FAILED when the next run (or prune) starts.

TFX registers an execution as RUNNING in ML Metadata before its executor runs
and publishes COMPLETE or FAILED after. A run killed in between (kill -9, a
power cut, the OOM killer) never publishes, and the execution stays RUNNING
forever: `imgpipe` status, lineage queries and dashboards show a Trainer still
training. Its partial outputs stay on disk under the pipeline root.

Whoever holds the home's lock (orchestration/lock.py) knows that no other run
of this home is alive, so a NEW or RUNNING execution of the home's pipeline is
from a dead process. `abandon_dead_executions` marks each one FAILED, with the
reason in its `abandoned` custom property, marks any output artifact it had
registered ABANDONED, and removes its partial output folders
(PIPELINE_ROOT/<node>/<output>/<execution id> and its .system folder).

Scope: with the home's own SQLite store (the local default) every execution in
it belongs to this home. A metadata server shared by several homes could hold
a live run of another home under the same pipeline name; pass
`shared_store=True` and only executions whose folders exist under THIS home's
pipeline root (the launcher creates .system/executor_execution/<id> before the
executor starts) are touched.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
from collections.abc import Collection

from ml_metadata import ListOptions
from ml_metadata.proto import metadata_store_pb2

from imgpipe.orchestration.metadata import is_airflow_run, retire_from_cache, run_name_of_execution
from imgpipe.orchestration.paths import under
from imgpipe.orchestration.scratch import remove_path, tree_bytes
from serving.version_names import version_number

log = logging.getLogger(__name__)

UNFINISHED = (metadata_store_pb2.Execution.NEW, metadata_store_pb2.Execution.RUNNING)
_UNFINISHED_QUERY = "last_known_state = NEW OR last_known_state = RUNNING"
ABANDONED_KEY = "abandoned"  # execution property: why imgpipe marked it FAILED
_OUTPUT_EVENTS = (
    metadata_store_pb2.Event.OUTPUT,
    metadata_store_pb2.Event.DECLARED_OUTPUT,
    metadata_store_pb2.Event.PENDING_OUTPUT,
)


@dataclasses.dataclass
class AbandonedExecution:
    execution_id: int
    node: str
    run_id: str
    state: str  # what it was left in: NEW or RUNNING
    removed: list[str]  # partial output folders deleted
    bytes: int  # the bytes deleted
    # Folders that could not be deleted in full ({path, bytes left, error}), warned about.
    not_removed: list[dict] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _contexts(store, execution_id: int, pipeline_name: str) -> tuple[str, str]:
    node, run = "?", "?"
    for ctx in store.get_contexts_by_execution(execution_id):
        kind = store.get_context_types_by_id([ctx.type_id])[0].name
        if kind == "node" and ctx.name.startswith(f"{pipeline_name}."):
            node = ctx.name[len(pipeline_name) + 1 :]
        elif kind == "pipeline_run":
            run = ctx.name
    return node, run


def execution_folders(pipeline_root: str, node: str, execution_id: int) -> list[str]:
    """The folders an execution writes under the pipeline root: its outputs and its .system folder."""
    node_dir = os.path.join(pipeline_root, node)
    found = glob.glob(os.path.join(glob.escape(node_dir), "*", str(execution_id)))
    system = os.path.join(node_dir, ".system", "executor_execution", str(execution_id))
    if os.path.isdir(system):
        found.append(system)
    return sorted(p for p in found if os.path.isdir(p))


def _unfinished(store, pipeline_name: str) -> list:
    """The executions of `pipeline_name` left NEW or RUNNING; [] when the store has no such
    pipeline. ML Metadata selects them (a query, not a read of every execution it ever ran)."""
    pipeline_ctx = store.get_context_by_type_and_name("pipeline", pipeline_name)
    if pipeline_ctx is None:
        return []
    found = store.get_executions_by_context(
        pipeline_ctx.id, list_options=ListOptions(filter_query=_UNFINISHED_QUERY)
    )
    return [e for e in found if e.last_known_state in UNFINISHED]


def abandon_dead_executions(
    store,
    pipeline_name: str,
    pipeline_root: str,
    found_by: str,
    shared_store: bool = False,
    dry_run: bool = False,
    own_runs: Collection[str] = (),
) -> list[AbandonedExecution]:
    """Mark the unfinished executions of `pipeline_name` FAILED; call it holding the home's lock.

    found_by: who found them (e.g. "run <id>"), recorded in the reason.
    dry_run: only report them.
    own_runs: on a shared store, the ids of this home's runs (its run records and started
    runs): an execution of one of them is this home's though it has no folder (it failed
    before its executor started, e.g. in input resolution), and would stay RUNNING for good.
    """
    out = []
    for execution in _unfinished(store, pipeline_name):
        node, run = _contexts(store, execution.id, pipeline_name)
        if any(is_airflow_run(store, c) for c in store.get_contexts_by_execution(execution.id)):
            # Airflow's tasks take no home lock: its task may be running now. Left to Airflow.
            log.info("execution %d (%s) of an Airflow run is unfinished: left alone", execution.id, node)
            continue
        folders = execution_folders(pipeline_root, node, execution.id)
        if shared_store and not folders and run not in own_runs:
            log.info("execution %d (%s) is unfinished but not from this home: left alone", execution.id, node)
            continue
        state = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
        found = AbandonedExecution(
            execution.id, node, run, state, list(folders), sum(map(tree_bytes, folders))
        )
        out.append(found)
        if dry_run:
            continue
        _mark_failed(
            store,
            execution,
            f"left {state} by run {run}, which ended without recording it (its process died, or it lost ML "
            f"Metadata); found by {found_by} holding the home's lock",
        )
        for folder in folders:
            done = remove_path(folder)
            if not done.complete:
                log.warning(
                    "%s, execution %d's partial output, could not be deleted in full (%d bytes left): %s",
                    folder,
                    execution.id,
                    done.left,
                    done.error,
                )
                found.removed.remove(folder)
                found.bytes -= done.left
                found.not_removed.append({"path": folder, "bytes": done.left, "error": done.error})
    return out


def _mark_failed(store, execution, why: str) -> None:
    """`execution` FAILED, `why` recorded, its pending outputs ABANDONED."""
    execution.last_known_state = metadata_store_pb2.Execution.FAILED
    execution.custom_properties[ABANDONED_KEY].string_value = why
    store.put_executions([execution])
    outputs = [
        ev.artifact_id
        for ev in store.get_events_by_execution_ids([execution.id])
        if ev.type in _OUTPUT_EVENTS
    ]
    pending = [
        a
        for a in (store.get_artifacts_by_id(outputs) if outputs else [])
        if a.state in (metadata_store_pb2.Artifact.PENDING, metadata_store_pb2.Artifact.UNKNOWN)
    ]
    for artifact in pending:
        artifact.state = metadata_store_pb2.Artifact.ABANDONED
    if pending:
        store.put_artifacts(pending)


def fail_airflow_executions(
    store, pipeline_name: str, why: str, run_id: str, component_id: str | None = None, others: bool = False
) -> list[int]:
    """Mark FAILED the unfinished executions of Airflow run `run_id` of `pipeline_name` (only the
    component `component_id`'s, when given), or with `others` those of every other Airflow run:
    the ids marked. TFX's Airflow launcher leaves a task's execution RUNNING when the task fails,
    and `rollback` and `prune` refuse while an Airflow run has one (its task may be alive): an
    audit's one failed task refused both for good, through later runs that succeeded. A failed
    task marks its own; a DAG run's first tasks mark the earlier runs' (a DAG runs one at a time)."""
    marked = []
    for execution in _unfinished(store, pipeline_name):
        if not any(is_airflow_run(store, c) for c in store.get_contexts_by_execution(execution.id)):
            continue
        its_run = execution_property(execution, "run_id")
        if (its_run == run_id) == others:
            continue
        if component_id is not None and execution_property(execution, "component_id") != component_id:
            continue
        _mark_failed(store, execution, why)
        marked.append(execution.id)
    return marked


MISSING_KEY = "missing"  # artifact property: why imgpipe marked a LIVE model DELETED


def forget_missing_models(store, pipeline_root: str, found_by: str, dry_run: bool = False) -> list[dict]:
    """Mark DELETED each LIVE Model of this pipeline root whose folder is gone (deleted by hand, a
    lost disk); [{"id", "uri"}] of those found.

    TFX's Resolver hands the latest blessed LIVE model to the DataGate and the Evaluator as
    the baseline: one whose files are gone would fail every later run (its label vocabulary
    cannot be read). Marked DELETED, as `imgpipe prune` marks what it removes, it is passed
    over and the next blessed model that exists is the baseline. Remote URIs are not checked.
    """
    missing = [
        a
        for a in store.get_artifacts_by_type("Model")
        if a.state == metadata_store_pb2.Artifact.LIVE
        and "://" not in a.uri
        and under(a.uri, pipeline_root)
        and not os.path.isdir(a.uri)
    ]
    for a in missing:
        a.state = metadata_store_pb2.Artifact.DELETED
        a.custom_properties[MISSING_KEY].string_value = f"its folder was gone when {found_by} started"
    if missing and not dry_run:
        store.put_artifacts(missing)
    return [{"id": a.id, "uri": a.uri} for a in missing]


def execution_property(execution, name: str) -> str | None:
    """An execution's string property as TFX stores exec properties (typed or custom)."""
    for props in (execution.properties, execution.custom_properties):
        if name in props and props[name].HasField("string_value"):
            return props[name].string_value
    return None


def _push_base_directory(execution) -> str | None:
    """The serving dir's model base path a Pusher execution pushed to (its push_destination,
    read as the Pusher reads it), or None."""
    from google.protobuf import json_format
    from tfx.proto import pusher_pb2
    from tfx.utils import proto_utils

    text = execution_property(execution, "push_destination")
    if not text:
        return None
    destination = pusher_pb2.PushDestination()
    try:
        proto_utils.json_to_proto(text, destination)
    except json_format.ParseError:
        return None
    return destination.filesystem.base_directory or None


def _version_folders(base_directory: str) -> dict[int, list[str]]:
    """The folders under a model base path by version number ("7" and "007" are both version 7):
    listed once per base path by a caller that looks up many versions."""
    if not os.path.isdir(base_directory):
        return {}
    out: dict[int, list[str]] = {}
    for name in sorted(os.listdir(base_directory)):
        number = version_number(name)
        if number is not None:
            out.setdefault(number, []).append(os.path.join(base_directory, name))
    return out


def _served(folder: str) -> bool:
    """A complete version folder: a server loads a version only once its saved_model.pb is there."""
    return os.path.isfile(os.path.join(folder, "saved_model.pb"))


def _pushed_models(store, pusher_ids: list[int]) -> dict[int, str]:
    """Pusher execution id -> the SavedModel folder of the Model it read (what it pushed, or
    found identical to a served version: TFX's Pusher.GetModelPath, artifacts.saved_model_dir)."""
    from components.artifacts import saved_model_dir  # loads TFX: only when asked

    readers: dict[int, list[int]] = {}  # Model artifact id -> the Pushers that read it
    for ev in store.get_events_by_execution_ids(pusher_ids) if pusher_ids else []:
        keys = [step.key for step in ev.path.steps if step.HasField("key")]
        if ev.type == metadata_store_pb2.Event.INPUT and "model" in keys:
            readers.setdefault(ev.artifact_id, []).append(ev.execution_id)
    if not readers:
        return {}
    model_type = store.get_artifact_type("Model")
    out = {}
    for a in store.get_artifacts_by_id(sorted(readers)):
        if a.type_id == model_type.id and a.uri and "://" not in a.uri:
            path = saved_model_dir(_as_tfx_model(a))
            out.update(dict.fromkeys(readers[a.id], path))
    return out


def _as_tfx_model(a: metadata_store_pb2.Artifact):
    from tfx.types import standard_artifacts

    model = standard_artifacts.Model()
    model.set_mlmd_artifact(a)
    return model


def _holds(folder: str, model_dir: str) -> bool | None:
    """Whether a served version folder holds exactly the model at `model_dir`, compared as the
    Pusher compares a model with the newest version before it reports it "identical"
    (components.pusher.same_model: the same relative file names, every file byte for byte but
    the warmup requests, or a re-export of the same weights);
    None when that cannot be told (the model's own files are gone, or unreadable).

    Cost: a listing of both folders and, when the names agree, one read of every file of both
    (saved_model.pb, variables/, assets/): about twice the model's size per version checked
    (2 x 28 MB for a DenseNet121 at 32 px: 0.015 s from the page cache), stopping at the first
    file that differs. Each (version folder, model) pair is compared once per run start, and
    only for LIVE push records whose version is still there (prune retires old records)."""
    from components import pusher  # loads TFX: only when asked

    if not os.path.isfile(os.path.join(model_dir, pusher.SAVED_MODEL)):
        return None  # no model to compare with (pruned, or a record without one)
    try:
        return pusher.same_model(model_dir, folder)
    except Exception as e:  # noqa: BLE001 - an unreadable file: not judged changed on a guess
        log.warning("cannot compare the served version %s with the model %s: %s", folder, model_dir, e)
        return None


@dataclasses.dataclass(frozen=True)
class Pushes:
    """This pipeline root's pushes, pruned records included: the version folders its Pushers
    pushed (resolved), and (base path, version) of those that found their model already served."""

    folders: frozenset[str]
    identical: frozenset[tuple[str, str]]

    def pushed_version(self, version_dir: str) -> bool:
        """Whether `version_dir` is one of them (pushed, or found holding the model pushed)."""
        target = os.path.realpath(version_dir)
        return target in self.folders or (os.path.dirname(target), os.path.basename(target)) in self.identical

    def pushed_to(self, base_directory: str) -> bool:
        """Whether any of them is a version of `base_directory`."""
        target = os.path.realpath(base_directory)
        return any(os.path.dirname(f) == target for f in self.folders) or any(
            base == target for base, _ in self.identical
        )


def pushes(store, pipeline_root: str) -> Pushes:
    """This pipeline root's push records (Pushes), read from `store` once."""
    from components.pusher import IDENTICAL_VERSION_KEY  # loads TFX's Pusher: only when asked

    pushed, identical = [], {}
    for a in store.get_artifacts_by_type("PushedModel"):
        if not under(a.uri, pipeline_root):
            continue
        props = a.custom_properties
        if "pushed" in props and props["pushed"].int_value == 1 and "pushed_destination" in props:
            folder = props["pushed_destination"].string_value.rstrip("/")
            if "://" not in folder:
                pushed.append(os.path.realpath(folder))
        elif IDENTICAL_VERSION_KEY in props:
            identical[a.id] = props[IDENTICAL_VERSION_KEY].string_value
    found = []
    if identical:
        producers: dict[int, list[int]] = {}
        for ev in store.get_events_by_artifact_ids(list(identical)):
            if ev.type == metadata_store_pb2.Event.OUTPUT:
                producers.setdefault(ev.execution_id, []).append(ev.artifact_id)
        for e in store.get_executions_by_id(sorted(producers)):
            base = _push_base_directory(e)
            if base and "://" not in base:
                found += [(os.path.realpath(base), identical[i]) for i in producers[e.id]]
    return Pushes(frozenset(pushed), frozenset(found))


def holds_own_model(store, pipeline_root: str, version_dir: str, newest: int = 20) -> bool:
    """Whether serving version `version_dir` holds one of this pipeline root's `newest` live Models
    (compared as the Pusher compares them): a push whose record was never written (the run killed
    between the version's rename and TFX's publishing of it) is still this home's."""
    from components.pusher import same_model  # loads TFX's Pusher: only when asked

    models = sorted(
        (
            a
            for a in store.get_artifacts_by_type("Model")
            if a.state == metadata_store_pb2.Artifact.LIVE and under(a.uri, pipeline_root)
        ),
        key=lambda a: a.id,
        reverse=True,
    )[:newest]
    for a in models:
        saved = os.path.join(a.uri, "Format-Serving")
        try:
            if os.path.isdir(saved) and same_model(saved, version_dir):
                return True
        except Exception:  # noqa: BLE001 - an unreadable model is no match
            continue
    return False


def forget_missing_pushes(store, pipeline_root: str, found_by: str, dry_run: bool = False) -> list[dict]:
    """Mark DELETED each LIVE PushedModel of this pipeline root whose serving version is gone
    from the serving dir (deleted by hand, a lost disk) or no longer holds the model pushed
    (changed by hand: other files copied in, a damaged saved_model.pb); [{"id", "version",
    "folder", "model_dir_gone"}] of those, with "changed" (the record's own account, e.g.
    "pushed in run R") on those of a changed version.

    A re-run with an unchanged model takes its Pusher from TFX's cache, which hands back the
    record of an earlier push ("version N", or "identical to version N" when that Pusher found
    the model already served) and copies nothing. TFX's caches check that an output's own
    folder still exists (the record's does), not the version it stands for: with version N's
    folder gone, or holding another model, the record is false and the blessed model is not
    served. Marked DELETED and retired from TFX's caches (metadata.retire_from_cache:
    LocalDagRunner's and Airflow's), the record is passed over, the Pusher runs again and
    serves the model as a new version (or finds it identical to a version that still holds
    it). So deleting or overwriting a version folder does not retire a model: the next run
    with nothing changed serves it again. A version is compared with the Model its Pusher read
    as the Pusher compares them (`_holds`, which says what that costs); a record whose Model's
    files are gone is judged on the version's presence only. Remote serving dirs ("gs://...")
    are not checked.
    """
    from components.pusher import IDENTICAL_VERSION_KEY  # loads TFX's Pusher: only when asked

    pushes = [
        a
        for a in store.get_artifacts_by_type("PushedModel")
        if a.state == metadata_store_pb2.Artifact.LIVE and under(a.uri, pipeline_root)
    ]
    producers: dict[int, int] = {}  # PushedModel id -> its Pusher execution
    if pushes:
        for ev in store.get_events_by_artifact_ids([a.id for a in pushes]):
            if ev.type == metadata_store_pb2.Event.OUTPUT:
                producers[ev.artifact_id] = ev.execution_id
    pusher_ids = sorted(set(producers.values()))
    executions = {e.id: e for e in store.get_executions_by_id(pusher_ids)} if pusher_ids else {}
    models: dict[int, str] | None = None  # Pusher execution -> its Model's SavedModel folder
    compared: dict[tuple[str, str], bool | None] = {}  # (version folder, model folder) -> _holds
    listed: dict[str, dict[int, list[str]]] = {}  # base path -> its version folders, listed once
    missing = []
    for a in pushes:
        props = a.custom_properties
        if "pushed" in props and props["pushed"].int_value == 1 and "pushed_destination" in props:
            folder = props["pushed_destination"].string_value.rstrip("/")
            base = os.path.dirname(folder)
            version = props["pushed_version"].string_value if "pushed_version" in props else ""
            version = version or os.path.basename(folder)
            how = "pushed in run {run}"
        elif IDENTICAL_VERSION_KEY in props and producers.get(a.id) in executions:  # already served
            version = props[IDENTICAL_VERSION_KEY].string_value
            base = _push_base_directory(executions[producers[a.id]]) or ""
            folder = os.path.join(base, version) if base else ""
            how = "found served there by run {run}"
        else:
            continue  # not blessed: no version it stands for
        if not folder or "://" in folder:
            continue
        # However the version's folder is spelled ("7", "007"), one a server loads is served.
        if base not in listed:
            listed[base] = _version_folders(base)
        same_number = listed[base].get(version_number(version), [])  # no number: no key
        served = [f for f in dict.fromkeys([folder, *same_number]) if _served(f)]
        if not served:
            missing.append((a, version, folder, not os.path.isdir(base), None))
            continue
        if models is None:  # only once some version is there to compare
            models = _pushed_models(store, pusher_ids)
        model_dir = models.get(producers.get(a.id, -1))
        if model_dir is None:
            continue  # no Model to compare with: present is all that can be told
        for f in served:
            if (f, model_dir) not in compared:
                compared[(f, model_dir)] = _holds(f, model_dir)
        held = [compared[(f, model_dir)] for f in served]
        if all(h is False for h in held):  # none holds it (None: could not tell, left alone)
            run = run_name_of_execution(store, producers[a.id])
            missing.append((a, version, folder, False, how.format(run=run)))
    out = []
    for a, version, folder, model_dir_gone, changed in missing:
        if changed is None:
            why = f"serving version {version} was gone when {found_by} started"
        else:
            why = (
                f"serving version {version} no longer held the model {changed} when {found_by} "
                "started (changed by hand?)"
            )
        a.custom_properties[MISSING_KEY].string_value = why
        if not dry_run:
            retire_from_cache(store, [a], metadata_store_pb2.Artifact.DELETED, why)
        entry = {"id": a.id, "version": version, "folder": folder, "model_dir_gone": model_dir_gone}
        if changed is not None:
            entry["changed"] = changed
        out.append(entry)
    return out


def log_missing(models: list[dict], pushes: list[dict]) -> None:
    """One warning per model `forget_missing_models` found gone, per serving model folder gone
    altogether, and per serving version `forget_missing_pushes` found gone or changed (naming
    its records)."""
    for m in models:
        log.warning(
            "model %s (artifact %d) is gone from disk: marked DELETED in ML Metadata, so the gate's "
            "baseline is the latest blessed model that still exists",
            m["uri"],
            m["id"],
        )
    for model_dir in sorted({os.path.dirname(p["folder"]) for p in pushes if p["model_dir_gone"]}):
        log.warning(
            "the serving dir's model folder %s is gone altogether: if it is a volume that is not "
            "mounted, mount it; this run pushes its model there if the gate blesses it (else nothing "
            "is served: the run's end says how to serve the latest blessed model again)",
            model_dir,
        )
    by_version: dict[tuple[str, str], list[dict]] = {}
    for p in pushes:
        by_version.setdefault((p["version"], p["folder"]), []).append(p)
    for (version, folder), found in by_version.items():
        ids = [p["id"] for p in found]
        records = (
            f"the record of its push (artifact {ids[0]}) is"
            if len(ids) == 1
            else f"the {len(ids)} records of its push (artifacts {', '.join(map(str, ids))}) are"
        )
        changed = list(dict.fromkeys(p["changed"] for p in found if p.get("changed")))
        if changed:
            log.warning(
                "serving version %s (%s) differs from the model %s (changed by hand?): %s marked "
                "DELETED, so this run's Pusher pushes the blessed model again as a new version "
                "instead of reporting it served from cache",
                version,
                folder,
                " and ".join(changed),
                records,
            )
            continue
        log.warning(
            "serving version %s (%s) is gone: %s marked DELETED, so this run's Pusher pushes its "
            "model again instead of reporting it served from cache",
            version,
            folder,
            records,
        )
