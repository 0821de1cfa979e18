"""Prune a pipeline home: delete the artifacts of old runs, keep what the next run needs.

Each run adds its outputs under HOME/pipelines/<pipeline>/<node>/<output>/<execution id>/:
a new trained model (the Trainer's `model`), a copy of it when pushed (the
Pusher's `pushed_model` record), and the smaller statistics, schema, transform
graph and evaluation folders. Cached components add nothing. Nothing is ever
deleted, so a home grows with every run that trains.

`prune_home(home, keep)` keeps, for each pipeline in the home:
  - every artifact that one of the newest `keep` runs that finished read or
    wrote, and every run newer than those (failed ones: a run stopped by SIGTERM
    or a full disk must not cost the last good run's cache). Cached executions
    point at the outputs of the run that computed them, so those stay too, and
    the next identical run is still served from cache;
  - the latest blessed model and its blessing(s): what the Resolver hands the
    Evaluator as the gate's baseline (LatestBlessedModelStrategy: the newest
    LIVE Model with a LIVE ModelBlessing whose `blessed` is 1);
  - the latest record of a push (the newest PushedModel with `pushed` 1).
Every other artifact under the pipeline root is marked DELETED in ML Metadata
first, then its folder is removed. TFX's Resolver and cache only consider LIVE
artifacts, so neither can point a run at a deleted folder; a deleted artifact
whose folder is still there (prune interrupted) is removed by the next prune.
The executor folders (.system/executor_execution/<id>) of pruned runs go too.

The store is the home's own SQLite file, or the PostgreSQL database its runs record to (the
newest run record's, or a given config's), where only the pipelines whose artifacts are under
HOME/pipelines are this home's; a home with both has both pruned. A database that does not
exist is not created (a mistyped name is an error, not an empty prune).

Prune holds the home's lock (a run in progress makes it exit 75, or wait), so
it also does what a starting run does: marks executions a dead run left
RUNNING as FAILED and deletes dead runs' scratch folders. Run records
(HOME/runs/<run_id>/: config and summary, a few KB each) are kept. Pushed
versions in the serving dir are not touched: what TF Serving serves and keeps
is its model version policy's business.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time

from ml_metadata.proto import metadata_store_pb2

from components.gate_decision import ROLLED_BACK_KEY
from imgpipe.orchestration import metadata, recovery, runs, scratch
from imgpipe.orchestration.lock import home_lock
from imgpipe.orchestration.paths import under
from pipeline.config import ConfigError, PipelineConfig
from serving import model_files
from serving.model_fingerprint import served_copies, versions_taken_out
from serving.version_names import version_number
from trainer import liveness

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.sqlite"
PIPELINES_DIR = "pipelines"
_LIVE = metadata_store_pb2.Artifact.LIVE
_DELETED = metadata_store_pb2.Artifact.DELETED


class PruneError(ValueError):
    """The home cannot be pruned as asked (not a pipeline home, a bad --keep)."""


@dataclasses.dataclass
class PipelinePrune:
    runs_kept: list[str]
    runs_pruned: list[str]
    protected: list[dict]  # {id, type, uri, why}
    removed: list[dict]  # {id, type, uri, bytes, run}
    execution_dirs_removed: list[dict]  # {path, bytes}


@dataclasses.dataclass
class PruneResult:
    home: str
    keep: int
    dry_run: bool
    pipelines: dict[str, PipelinePrune]
    scratch_removed: list[dict]  # {path, bytes}: dead runs' scratch folders
    abandoned_executions: list[dict]  # executions dead runs left RUNNING (recovery.AbandonedExecution)
    bytes_freed: int = 0
    # LIVE models whose folder was gone: marked DELETED, so none is kept as the baseline ({id, uri}).
    missing_models: list[dict] = dataclasses.field(default_factory=list)
    # With keep_versions: the served versions kept ({path}) and removed ({path, bytes}), per
    # model serving dir named in the home's run records.
    keep_versions: int | None = None
    versions_kept: list[str] = dataclasses.field(default_factory=list)
    versions_removed: list[dict] = dataclasses.field(default_factory=list)
    # Newest versions whose files cannot be loaded ({path, error}): kept, not counted among K.
    # Leftovers of dead pushes and prunes in those serving dirs ({path, bytes, what}), removed.
    # A serving dir this prune leaves without a version `imgpipe rollback` could serve: {path, warning}.
    versions_no_way_back: list[dict] = dataclasses.field(default_factory=list)
    serving_leftovers_removed: list[dict] = dataclasses.field(default_factory=list)
    versions_unloadable: list[dict] = dataclasses.field(default_factory=list)
    # Folders under HOME/pipelines that no store pruned records (left alone, with a warning).
    unknown_pipelines: list[str] = dataclasses.field(default_factory=list)
    # What could not be deleted in full ({path, bytes left, error}): not counted in bytes_freed.
    not_removed: list[dict] = dataclasses.field(default_factory=list)

    def removed(self, done: scratch.Removal, warn: bool = True) -> int:
        """Note one deletion's failure, if any (warned about, unless its deleter warned already);
        the bytes it freed."""
        if not done.complete:
            if warn:
                log.warning(
                    "%s could not be deleted in full (%d bytes left): %s", done.path, done.left, done.error
                )
            self.not_removed.append({"path": done.path, "bytes": done.left, "error": done.error})
        return done.freed

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _type_names(store, artifacts) -> dict[int, str]:
    ids = sorted({a.type_id for a in artifacts})
    return {t.id: t.name for t in store.get_artifact_types_by_id(ids)} if ids else {}


def _int_prop(artifact, name: str) -> int | None:
    value = artifact.custom_properties.get(name)
    return int(value.int_value) if value is not None else None


def protected_artifacts(artifacts, type_names: dict[int, str]) -> dict[int, str]:
    """Artifact id -> why it is kept whatever its age: the gate's baseline, the latest push and
    the models `imgpipe rollback` took out of serving."""
    live = [a for a in artifacts if a.state == _LIVE]
    models = {a.id for a in live if type_names[a.type_id] == "Model"}
    blessings: dict[int, list] = {}
    for a in live:
        if type_names[a.type_id] == "ModelBlessing" and _int_prop(a, "blessed") == 1:
            blessings.setdefault(_int_prop(a, "current_model_id"), []).append(a)
    out: dict[int, str] = {}
    blessed_models = sorted(m for m in models if m in blessings)
    if blessed_models:
        latest = blessed_models[-1]
        out[latest] = "latest blessed model: the gate's baseline"
        for b in blessings[latest]:
            out[b.id] = f"blessing of the latest blessed model {latest}"
    pushes = [a.id for a in live if type_names[a.type_id] == "PushedModel" and _int_prop(a, "pushed") == 1]
    if pushes:
        out.setdefault(max(pushes), "record of the latest push")
    for a in live:
        if type_names[a.type_id] == "Model" and ROLLED_BACK_KEY in a.custom_properties:
            # `imgpipe rollback` took it out of serving: kept, so a later rollback knows its version
            # for one taken out, and a run whose Trainer is cached on it refuses it.
            out.setdefault(a.id, "a model rolled back (imgpipe rollback): kept as the record of it")
    return out


def airflow_run_in_progress(
    store,
    name: str,
    what: str = "prune",
    before_pusher: bool = False,
    now: float | None = None,
    stale_after: float | None = None,
) -> str | None:
    """Why `name` cannot be pruned (or `what`) now: an Airflow run of it has an unfinished
    execution. Airflow's tasks take no home lock, so the run may be alive, and its later tasks
    read outputs that pruning would delete (and recovery would mark its running execution FAILED).
    With `before_pusher` (a rollback: the run's Resolver may have picked the baseline a rollback
    withdraws, and its Pusher would push over the rollback), also a run between two tasks: none
    failed, no Pusher yet, an execution updated within liveness.STALE_SECONDS. `stale_after`:
    an unfinished execution not updated for that many seconds is taken for a dead task's."""
    now = time.time() if now is None else now
    for run in metadata.pipeline_runs(store, name):
        if not metadata.is_airflow_run(store, run):
            continue
        executions = store.get_executions_by_context(run.id)
        for e in executions:
            if e.last_known_state in recovery.UNFINISHED:
                if stale_after is not None and now - e.last_update_time_since_epoch / 1000 > stale_after:
                    continue
                return (
                    f"pipeline {name!r} has an Airflow run in progress (run {metadata.run_id(run)}: execution "
                    f"{e.id} is {metadata.state_name(e)}); Airflow's tasks take no home lock, so {what} "
                    "after the run ends (or mark that execution FAILED if its task is dead)"
                )
        if before_pusher and executions and _between_tasks(store, executions, now):
            return (
                f"pipeline {name!r} has an Airflow run between two tasks (run {metadata.run_id(run)}: no "
                f"execution failed and its Pusher has not run yet); Airflow's tasks take no home lock, so "
                f"{what} after the run ends"
            )
    return None


def _between_tasks(store, executions: list, now: float) -> bool:
    # A failed attempt that a later attempt of the same component followed (Airflow's retries)
    # does not end the run; any other failure does.
    last = {}
    for e in sorted(executions, key=lambda e: e.id):
        last[recovery.execution_property(e, "component_id") or e.id] = e
    if any(e.last_known_state == metadata_store_pb2.Execution.FAILED for e in last.values()):
        return False
    if now - max(e.last_update_time_since_epoch for e in executions) / 1000 > liveness.STALE_SECONDS:
        return False  # a run whose scheduler stopped long ago
    types = {t.id: t.name for t in store.get_execution_types_by_id(sorted({e.type_id for e in executions}))}
    return not any("Pusher" in types.get(e.type_id, "") for e in executions)


def _first_kept(store, runs: list, keep: int) -> int:
    """Index in `runs` (oldest first) of the oldest run kept: the keep-th newest run that finished
    (every execution COMPLETE or CACHED), so a failed run (SIGTERM, a full disk) does not cost the
    last good run's cache; runs newer than it, failed ones too, are kept as well. With fewer
    finished runs than `keep`, the newest `keep` runs."""
    finished = 0
    for i in range(len(runs) - 1, -1, -1):
        states = {e.last_known_state for e in store.get_executions_by_context(runs[i].id)}
        if states and states <= set(metadata.FINISHED_STATES):
            finished += 1
            if finished == keep:
                return i
    return max(0, len(runs) - keep)


def _plan_pipeline(
    store, name: str, root: str, keep: int, gone: set[int] = frozenset()
) -> tuple[PipelinePrune, list, list[str]]:
    """What to prune in one pipeline: (report, artifacts to delete, execution folders to delete).
    `gone`: ids of models taken as DELETED (a dry run's missing models, not marked in the store)."""
    pipeline_ctx = store.get_context_by_type_and_name("pipeline", name)
    runs = metadata.pipeline_runs(store, name)
    executions = store.get_executions_by_context(pipeline_ctx.id)
    kept_runs = runs[_first_kept(store, runs, keep) :] if keep else []
    pruned_runs = runs[: len(runs) - len(kept_runs)]
    kept_executions = {e.id for run in kept_runs for e in store.get_executions_by_context(run.id)}
    events = store.get_events_by_execution_ids([e.id for e in executions]) if executions else []
    used_by_kept = {ev.artifact_id for ev in events if ev.execution_id in kept_executions}
    producer: dict[int, int] = {}
    for ev in events:
        if ev.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.PENDING_OUTPUT):
            producer.setdefault(ev.artifact_id, ev.execution_id)
    ids = sorted({ev.artifact_id for ev in events})
    artifacts = list(store.get_artifacts_by_id(ids)) if ids else []
    for a in artifacts:
        if a.id in gone:
            a.state = _DELETED
    type_names = _type_names(store, artifacts)
    protected = protected_artifacts(artifacts, type_names)
    run_of = {}
    for run in pruned_runs:
        for e in store.get_executions_by_context(run.id):
            run_of[e.id] = metadata.run_id(run)

    doomed, removed, outside = [], [], []
    for a in artifacts:
        if a.id in used_by_kept or a.id in protected or not a.uri:
            continue
        if a.state == _DELETED and not os.path.exists(a.uri):
            continue  # pruned before
        if not under(a.uri, root):
            outside.append(a)
            continue
        doomed.append(a)
        removed.append(
            {
                "id": a.id,
                "type": type_names[a.type_id],
                "uri": a.uri,
                "bytes": scratch.tree_bytes(a.uri),
                "run": run_of.get(producer.get(a.id, -1)),
            }
        )
    if outside:  # one line, not one per artifact: a copied home's store names them all
        shown = ", ".join(f"{a.id} ({a.uri})" for a in outside[:3])
        log.warning(
            "%d artifact(s) outside the pipeline root %s left alone (a copied or moved home's store "
            "names another home's folders): %s%s",
            len(outside),
            root,
            shown,
            f" and {len(outside) - 3} more" if len(outside) > 3 else "",
        )
    folders = []
    node_of = _nodes_of_executions(store, name)
    for e in executions:
        if e.id in kept_executions:
            continue
        node = node_of.get(e.id)
        folder = os.path.join(root, node or "", ".system", "executor_execution", str(e.id))
        if node and os.path.isdir(folder):
            folders.append(folder)
    report = PipelinePrune(
        runs_kept=[metadata.run_id(r) for r in kept_runs],
        runs_pruned=[metadata.run_id(r) for r in pruned_runs],
        protected=[
            {"id": a.id, "type": type_names[a.type_id], "uri": a.uri, "why": protected[a.id]}
            for a in artifacts
            if a.id in protected
        ],
        removed=removed,
        execution_dirs_removed=[{"path": f, "bytes": scratch.tree_bytes(f)} for f in folders],
    )
    return report, doomed, folders


def _nodes_of_executions(store, name: str) -> dict[int, str]:
    """Execution id -> its node's id, from the `node` contexts ("<pipeline>.<node id>") of
    pipeline `name`: one query per node, not one per execution (a home of 600 runs holds about
    7,000). Runs under Airflow have none (their executions have no executor folder here)."""
    out: dict[int, str] = {}
    for ctx in store.get_contexts_by_type("node"):
        if ctx.name.startswith(f"{name}."):
            for e in store.get_executions_by_context(ctx.id):
                out.setdefault(e.id, ctx.name[len(name) + 1 :])
    return out


def prune_home(
    home: str | None,
    keep: int,
    dry_run: bool = False,
    lock_wait: float = 0.0,
    keep_versions: int | None = None,
    config_path: str | None = None,
) -> PruneResult:
    """Prune every pipeline of `home`, keeping its newest `keep` runs and the gate's lineage.

    The stores pruned: the home's own SQLite store (HOME/metadata.sqlite), and the PostgreSQL
    database its newest run record (or `config_path`: a home whose runs keep none, Airflow's)
    names, where only this home's pipelines are touched (those whose artifacts are under
    HOME/pipelines; one whose artifacts are also under another home's folders is refused).
    dry_run: report what would be removed and change nothing. keep_versions: also remove the
    versions this home's runs pushed (as their records say) that are not among the newest
    `keep_versions` of their serving dir (None: the serving dirs are left alone). Raises
    PruneError for a bad home, config, keep or keep_versions, metadata.MetadataUnavailable when
    a store cannot be opened, lock.LockBusy while a run holds the home.
    """
    if keep < 0:
        raise PruneError(f"keep: must be 0 or more runs, got {keep}")
    if keep_versions is not None and keep_versions < 1:
        raise PruneError(
            f"keep_versions: must be 1 or more (the newest version is the one served), got {keep_versions}"
        )
    try:
        home, config = runs.home_and_config(home, config_path)
    except (ValueError, ConfigError) as e:
        raise PruneError(str(e)) from e
    if config is None:
        config = runs.newest_config(home)
    shared = (
        config.replace(home=home).resolved()
        if config is not None and config.metadata_target is not None
        else None
    )
    metadata_path = os.path.join(home, METADATA_FILE)
    stores = [PipelineConfig(home=home)] if os.path.isfile(metadata_path) else []
    if stores and os.path.getsize(metadata_path) == 0:
        if shared is None:  # a dry run failed on it, a prune wrote a schema into it
            raise PruneError(f"home: {metadata_path} is empty: no ML Metadata store to prune")
        stores = []  # the home's runs record to PostgreSQL: the empty file is no store of theirs
    if shared is not None:
        stores.append(shared)
    if not stores:
        raise PruneError(
            f"home: {home} is not a pipeline home (no {METADATA_FILE} in it, and no run record naming a "
            "PostgreSQL ML Metadata database: give --config for a home whose runs keep none)"
        )
    if dry_run and not os.access(home, os.W_OK):
        # A read-only home (a snapshot, a read-only mount): no run can change it, and the lock
        # file cannot be opened; a dry run only reads.
        return _with_versions(_prune_holding_lock(home, stores, keep, dry_run), keep_versions)
    with home_lock(home, wait=lock_wait, holder="prune"):
        return _with_versions(_prune_holding_lock(home, stores, keep, dry_run), keep_versions)


def _with_versions(result: PruneResult, keep_versions: int | None) -> PruneResult:
    """`result` with the old served versions this home pushed removed (or, in a dry run, listed),
    their bytes counted."""
    if keep_versions is None:
        return result
    result.keep_versions = keep_versions
    pushed = pushed_versions(result.home)
    if not pushed:
        log.warning(
            "--keep-versions: no run record of %s names a version it pushed to a local serving dir (runs "
            "under Airflow keep no records): no version removed",
            result.home,
        )
    from components import pusher  # loads TFX's Pusher: only with --keep-versions

    taken_out = versions_taken_out(result.home)
    for serving_dir in sorted(pushed):
        # A prune or push killed part-way left a hidden folder (a whole model, for a prune).
        for path, what in pusher.dead_leftovers(serving_dir) if os.path.isdir(serving_dir) else []:
            if result.dry_run:
                size = scratch.tree_bytes(path)
            else:
                size = result.removed(scratch.remove_path(path))
                log.warning("removed %s: %s", path, what)
            result.serving_leftovers_removed.append({"path": path, "bytes": size, "what": what})
    for serving_dir, ours in sorted(pushed.items()):
        versions = sorted(
            (number, name)
            for name in (os.listdir(serving_dir) if os.path.isdir(serving_dir) else [])
            if (number := version_number(name)) is not None and os.path.isdir(os.path.join(serving_dir, name))
        )
        # The newest keep_versions versions that can be loaded, and any newer that cannot (kept:
        # counted, a version the server cannot load would leave the older ones only in name).
        kept, loadable = 0, 0
        for _, name in reversed(versions):
            if loadable == keep_versions:
                break
            kept += 1
            path = os.path.join(serving_dir, name)
            why = model_files.damage(path)
            if why:
                log.warning(
                    "served version %s cannot be loaded (%s): kept, and not counted among the %d kept",
                    path,
                    why,
                    keep_versions,
                )
                result.versions_unloadable.append({"path": path, "error": why})
            else:
                loadable += 1
        # Which versions `imgpipe rollback` could serve again, judged before any is removed.
        way_back = _ways_back(serving_dir, [name for _, name in versions], taken_out, pusher.same_model)
        for _, name in versions[len(versions) - kept :]:
            result.versions_kept.append(os.path.join(serving_dir, name))
        for _, name in versions[: len(versions) - kept]:
            path = os.path.join(serving_dir, name)
            if name not in ours:  # another home's, or copied in by hand: not this prune's
                result.versions_kept.append(path)
                continue
            if name in taken_out:  # `rollback --to NAME --undo` serves it again: not this prune's either
                log.info(
                    "served version %s was taken out by a rollback: kept, so the rollback can be undone", path
                )
                result.versions_kept.append(path)
                continue
            if result.dry_run:
                size = scratch.tree_bytes(path)
            else:
                done = _remove_version(path)
                if done is None:
                    result.versions_kept.append(path)
                    continue
                size = result.removed(done)
            result.versions_removed.append({"path": path, "bytes": size})
        gone = {
            os.path.basename(v["path"])
            for v in result.versions_removed
            if os.path.dirname(v["path"]) == serving_dir
        }
        left = _no_way_back(serving_dir, way_back, gone, result.dry_run)
        if left:
            log.warning("%s", left)
            result.versions_no_way_back.append({"path": serving_dir, "warning": left})
    result.bytes_freed += sum(v["bytes"] for v in result.versions_removed)
    result.bytes_freed += sum(v["bytes"] for v in result.serving_leftovers_removed)
    return result


def _ways_back(serving_dir: str, names: list[str], taken_out: set[str], same) -> set[str]:
    """The versions among `names` (oldest first) that `imgpipe rollback` could serve again: those
    that load, are not taken out by a rollback and hold another model than the newest (`same`:
    the Pusher's byte comparison)."""
    if not names:
        return set()
    newest = os.path.join(serving_dir, names[-1])
    return {
        name
        for name in names[:-1]
        if name not in taken_out
        and not model_files.damage(path := os.path.join(serving_dir, name))
        and not same(path, newest)
    }


def _no_way_back(serving_dir: str, way_back: set[str], gone: set[str], dry_run: bool = False) -> str | None:
    """What to say when removing `gone` leaves none of the versions `_ways_back` found (though there
    was one). An audit's --keep-versions 2 kept a rollback's copy and the version it took out, and
    removed the only other model: `rollback` then had nothing to roll back to."""
    if not way_back or way_back - gone:
        return None
    would = "would keep" if dry_run else "keeps"
    return (
        f"--keep-versions: after this prune {serving_dir} {would} no version `imgpipe rollback` could serve "
        "again (those kept hold the served model, or models a rollback took out), and the versions it "
        "removes held other models: keep more versions (a larger --keep-versions) to keep a way back"
    )


def _remove_version(path: str) -> scratch.Removal | None:
    """Delete a served version: renamed first to a name no server loads (a rename is whole or
    nothing), then removed. None, logged, when it cannot be renamed (it stays whole)."""
    from components import pusher  # loads TFX's Pusher: only with --keep-versions

    # Named as the Pusher's staging folders are: a prune killed before the removal leaves a
    # folder the next push or `prune --keep-versions` removes (pusher.dead_leftovers).
    hidden = os.path.join(
        os.path.dirname(path), f"{pusher.PRUNED_PREFIX}{liveness.HOST}-{os.getpid()}-{os.path.basename(path)}"
    )
    try:
        os.rename(path, hidden)
    except OSError as e:
        log.warning("served version %s could not be deleted (%s): left as it is", path, e)
        return None
    with contextlib.suppress(OSError):
        # A rename keeps the version's time: one pushed days ago would read as a dead prune's
        # leftover (untouched a day) to a push or prune sharing the serving dir, at once.
        os.utime(hidden)
    # A server with a "latest" policy serves the newest only; the next run's recovery retires
    # the push records of versions gone (recovery.forget_missing_pushes).
    return scratch.remove_path(hidden)


def pushed_versions(home: str) -> dict[str, set[str]]:
    """{model serving dir: the version folder names this home's runs pushed there}, as their
    records say (`pushed`: the version's local path), and the copies its rollbacks served. Not
    the serving dir a record's config names: a run that failed or pushed nothing may name
    another home's."""
    found: dict[str, set[str]] = {}
    for folder in runs.records(home):
        try:
            pushed = runs.read_summary(folder).get("pushed")
        except runs.RecordError:
            continue
        if not isinstance(pushed, str) or "://" in pushed or not os.path.isabs(pushed):
            continue
        path = os.path.normpath(pushed)
        if version_number(os.path.basename(path)) is not None:
            found.setdefault(os.path.dirname(path), set()).add(os.path.basename(path))
    # The copies `imgpipe rollback` served are this home's versions too.
    for copy in served_copies(home):
        serving_dir, version = copy["serving_dir"], copy["version"]
        if (
            isinstance(serving_dir, str)
            and os.path.isabs(serving_dir)
            and version_number(version) is not None
        ):
            found.setdefault(os.path.normpath(serving_dir), set()).add(version)
    return found


def _own_pipelines(store, store_config: PipelineConfig, home: str) -> list[str]:
    """The pipelines of `store` to prune for `home`: all of its own SQLite store's; in a shared
    database, those whose artifacts are under HOME/pipelines/<name> (a pipeline of that name
    with none there is another home's, or this home's own SQLite store's). PruneError for one
    whose artifacts are also under another home's folders: which runs are whose cannot be told
    apart, so neither is pruned."""
    names = sorted(c.name for c in store.get_contexts_by_type("pipeline"))
    if store_config.metadata_target is None:
        return names
    own = []
    for name in names:
        root = os.path.join(home, PIPELINES_DIR, name)
        if not os.path.isdir(root):
            continue
        here, elsewhere = metadata.pipeline_roots(store, name, root)
        if not here:
            continue
        if elsewhere:
            raise PruneError(
                f"pipeline {name!r} in {store_config.metadata_location} also has artifacts under "
                f"{', '.join(elsewhere[:3])}, not under this home's {root}: another home runs a pipeline "
                "of this name on the database (or this home was moved), and their runs cannot be told "
                "apart; nothing was pruned"
            )
        own.append(name)
    return own


def _prune_holding_lock(home: str, stores: list[PipelineConfig], keep: int, dry_run: bool) -> PruneResult:
    result = PruneResult(home, keep, dry_run, {}, [], [])
    with contextlib.ExitStack() as stack:
        opened = []
        for store_config in stores:
            # Never a new database: one that does not exist has nothing to prune (a mistyped name).
            store = stack.enter_context(
                metadata.open_store(store_config, readonly=dry_run, create_database=False)
            )
            names = _own_pipelines(store, store_config, home)
            for name in names:  # before anything is changed, the scratch folders included
                busy = airflow_run_in_progress(store, name)
                if busy:
                    raise PruneError(busy)
            for name in names:
                for _, earlier, earlier_names in opened:
                    if name in earlier_names:
                        raise PruneError(
                            f"pipeline {name!r} is in both {earlier.metadata_location} and {store_config.metadata_location}, with "
                            f"folders under {os.path.join(home, PIPELINES_DIR, name)}: the stores may name the "
                            "same folders (a database that numbered its executions from 1 again), so neither "
                            "is pruned; prune one with --config after moving the other's folders away"
                        )
            opened.append((store, store_config, names))
        result.unknown_pipelines = _unknown_pipelines(
            home, {n for _, _, names in opened for n in names}, stores
        )
        if dry_run:
            root = scratch.scratch_root(home)
            stale = sorted(os.listdir(root)) if os.path.isdir(root) else []
            result.scratch_removed = [
                {"path": os.path.join(root, n), "bytes": scratch.tree_bytes(os.path.join(root, n))}
                for n in stale
            ]
        else:
            # remove_stale warned of a folder it could not delete in full.
            result.scratch_removed = [
                {"path": done.path, "bytes": result.removed(done, warn=False)}
                for done in scratch.remove_stale(home)
            ]
        own_runs = runs.run_ids(home)
        for store, store_config, names in opened:
            shared = store_config.metadata_target is not None
            _prune_pipelines(store, home, names, keep, dry_run, result, shared, own_runs)
    result.bytes_freed = (
        sum(d["bytes"] for d in result.scratch_removed)
        + sum(
            sum(r["bytes"] for r in p.removed) + sum(f["bytes"] for f in p.execution_dirs_removed)
            for p in result.pipelines.values()
        )
        + sum(a["bytes"] for a in result.abandoned_executions)
    )
    return result


def _unknown_pipelines(home: str, found: set[str], stores: list[PipelineConfig]) -> list[str]:
    """The folders under HOME/pipelines of no pipeline the stores pruned hold, each warned
    about: runs recorded elsewhere (a database an older run record names, before the home moved
    to another store), or a pipeline whose runs were refused."""
    root = os.path.join(home, PIPELINES_DIR)
    names = sorted(os.listdir(root)) if os.path.isdir(root) else []
    unknown = [
        os.path.join(root, n) for n in names if n not in found and os.path.isdir(os.path.join(root, n))
    ]
    where = " and ".join(c.metadata_location for c in stores)
    for folder in unknown:
        log.warning(
            "%s: no run of this pipeline is recorded in %s, so it is not pruned (were its runs recorded to "
            "another ML Metadata store? prune it with --config naming that store)",
            folder,
            where,
        )
    return unknown


def _prune_pipelines(
    store,
    home: str,
    names: list[str],
    keep: int,
    dry_run: bool,
    result: PruneResult,
    shared: bool,
    own_runs,
) -> None:
    """Prune `names` in `store` (a shared one: only this home's executions are recovered)."""
    for name in names:
        root = os.path.join(home, PIPELINES_DIR, name)
        found = recovery.abandon_dead_executions(
            store, name, root, found_by="prune", shared_store=shared, dry_run=dry_run, own_runs=own_runs
        )
        result.abandoned_executions += [a.to_dict() for a in found]
        missing = recovery.forget_missing_models(store, root, found_by="prune", dry_run=dry_run)
        result.missing_models += missing
        # A dry run plans as the prune would, after marking those models DELETED.
        report, doomed, folders = _plan_pipeline(store, name, root, keep, {m["id"] for m in missing})
        result.pipelines[name] = report
        if dry_run:
            continue
        # ML Metadata first: from here on neither the Resolver nor the cache can pick them.
        for a in doomed:
            a.state = _DELETED
        if doomed:
            store.put_artifacts(doomed)
        freed = {}
        for path in [a.uri for a in doomed] + folders:
            freed[path] = result.removed(scratch.remove_path(path))
        # Each entry counts the bytes its deletion freed: all of them but a folder's left part.
        for entry in report.removed:
            entry["bytes"] = freed.get(entry["uri"], entry["bytes"])
        for entry in report.execution_dirs_removed:
            entry["bytes"] = freed.get(entry["path"], entry["bytes"])
