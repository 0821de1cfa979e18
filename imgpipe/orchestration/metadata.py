"""ML Metadata: where it lives (connection configs) and reading pipeline runs back from it.

Every opening of the store goes through `connection_config(config)`: SQLite at
HOME/metadata.sqlite when `config.metadata` is empty, else the PostgreSQL server
of its postgresql:// URL. The pipeline's runner (LocalDagRunner, the Airflow
DAG), the run summary, progress lines and the Resolver's search for the latest
blessed model all read and write through it, so both back ends behave the same.

Passwords. The connection config never holds one: TFX logs the whole config at
INFO (LocalDagRunner: "Using connection config"), and the Airflow DAG embeds it.
libpq, inside ML Metadata, finds the password itself, in this order: PGPASSWORD
in the environment, then a password file (lines HOST:PORT:DB:USER:PASSWORD):
`config.metadata_password_file` (passed as libpq's `passfile`), else PGPASSFILE,
else ~/.pgpass. So a password appears in no config, log line or error message
of imgpipe's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
from collections.abc import Callable, Iterator

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.gate import ACCURACY_KEY
from components.gate_decision import GATE_FILE, ROLLED_BACK_KEY
from components.prepush import REPORT_FILE as PREPUSH_REPORT_FILE
from imgpipe.orchestration.paths import under
from pipeline.config import ConfigError, PipelineConfig
from pipeline.metadata_url import check_password_file
from trainer.config import SUMMARY_FILE

log = logging.getLogger(__name__)


class MetadataUnavailable(ConfigError):
    """The configured ML Metadata store cannot be opened; the message says where and why."""


# ------------------------------------------------------------------------ connecting
def connection_config(
    config: PipelineConfig, readonly: bool = False, create_database: bool = True
) -> metadata_store_pb2.ConnectionConfig:
    """The ML Metadata connection for `config`: SQLite in its home, or its PostgreSQL server.

    readonly: SQLite opened read-only; on PostgreSQL (whose grants govern access) a database
    that does not exist is not created. create_database False: not created either. ML Metadata
    creates a missing database through the server's `postgres` database, which it connects to
    first, so a connection that may create needs a password for that database too.
    Raises ConfigError naming metadata_password_file when that file is unusable.
    """
    cfg = metadata_store_pb2.ConnectionConfig()
    target = config.metadata_target
    if target is None:
        cfg.sqlite.filename_uri = config.metadata_path
        cfg.sqlite.connection_mode = (
            metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
            if readonly
            else metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
        )
        return cfg
    pg = cfg.postgresql
    pg.host = target.host.strip("[]")
    pg.port = str(target.port)
    pg.user = target.user
    pg.dbname = target.dbname
    pg.skip_db_creation = readonly or not create_database
    for key, value in target.ssl:
        setattr(pg.ssloption, key, value)
    if config.metadata_password_file:
        check_password_file(config.metadata_password_file, target)
        pg.passfile = config.metadata_password_file
    return cfg


def connect(
    config: PipelineConfig, readonly: bool = False, create_database: bool | None = None
) -> metadata_store.MetadataStore:
    """A MetadataStore for `config`; MetadataUnavailable (naming the store, never a password) if it fails.

    On PostgreSQL the database is connected to directly (a password file needs a line for it
    alone); only when that fails and `create_database` (default: not `readonly`) allows, ML
    Metadata is asked again, to create the database first.
    """
    if (
        config.metadata_target is None
        and (readonly or create_database is False)
        and not os.path.exists(config.metadata_path)
    ):
        raise MetadataUnavailable(f"metadata: no ML Metadata database at {config.metadata_path}")
    if config.metadata_target is None:
        path = config.metadata_path
        if not readonly and os.path.exists(path) and not os.access(path, os.W_OK):
            st = os.stat(path)
            fix = (
                "Make it writable (chmod u+w; chattr -i if immutable; a read-write mount)"
                if st.st_uid == os.geteuid()
                else "Run as the home's owner (one home per user or service account)"
            )
            raise MetadataUnavailable(
                f"metadata: {path} cannot be written by this user (uid {os.geteuid()}; the file's owner is "
                f"uid {st.st_uid}, mode {st.st_mode & 0o7777:04o}; or it is immutable, or on a read-only "
                f"filesystem): every run, prune and rollback records its steps in it; nothing was changed. {fix}"
            )
        try:
            return metadata_store.MetadataStore(connection_config(config, readonly=readonly))
        except RuntimeError as e:  # ML Metadata reports a refused connection as RuntimeError
            raise MetadataUnavailable(_sqlite_problem(path, e)) from None
    create = not readonly if create_database is None else create_database
    why = (
        "the server down or unreachable, the password refused, or no database of that name and no "
        "right to create it (CREATEDB)"
        if create
        else "the server down or unreachable, the password refused, or no database of that name (none "
        "is created here: check the name in --metadata)"
    )
    try:
        return metadata_store.MetadataStore(connection_config(config, create_database=False))
    except RuntimeError:
        if not create:
            raise MetadataUnavailable(_unreachable(config, why)) from None
    try:
        store = metadata_store.MetadataStore(connection_config(config, create_database=True))
    except RuntimeError:
        raise MetadataUnavailable(
            _unreachable(config, why)
            + "; a database that does not exist yet is created through the server's `postgres` database, "
            "so a password file needs a line for that database too (or * for the database)"
        ) from None
    # Said: on a shared server a mistyped name in a new home's --metadata made a database of its
    # own, and the only line about it was PostgreSQL's "does not exist" above (an audit). Only
    # for an empty store: a first try that failed for another reason (the server restarting)
    # reaches an existing database here, which must not be called new (nor its drop advised).
    if store.get_context_types():
        return store
    log.warning(
        "metadata: database %r was not on %s:%s (PostgreSQL's line above); ML Metadata made it and this "
        "home records there. If the home should share an existing database, its name in --metadata is "
        "mistyped: fix it, and drop the new one (dropdb %s)",
        config.metadata_target.dbname,
        config.metadata_target.host,
        config.metadata_target.port,
        config.metadata_target.dbname,
    )
    return store


def _sqlite_problem(path: str, error: RuntimeError) -> str:
    """What to tell of an SQLite store ML Metadata cannot open: its words are about retrying
    ("a subset of tables ... may be due to concurrent connection") when the file is damaged."""
    words = " ".join(str(error).split())
    lowered = words.lower()
    if "malformed" in lowered or "not a database" in lowered:
        return (
            f"metadata: {path} is damaged (SQLite: {'database disk image is malformed' if 'malformed' in lowered else 'file is not a database'}): "
            "restore it from a backup, or recover what SQLite can read (`sqlite3 FILE .recover | sqlite3 NEW`) "
            "and put NEW in its place; nothing was changed"
        )
    if "locked" in lowered or "concurrent writes aborted" in lowered:
        return (
            f"metadata: {path} is locked by another process (an sqlite3 shell, a backup holding a write "
            "transaction, a process outside imgpipe): ML Metadata gave up waiting; nothing was changed"
        )
    return f"metadata: cannot open {path}: {words}"


def _unreachable(config: PipelineConfig, why: str) -> str:
    return (
        f"metadata: cannot connect to ML Metadata at {config.metadata_location} (PostgreSQL's own "
        f"message is logged above: {why}; the password comes from PGPASSWORD or a libpq password "
        "file: metadata_password_file, PGPASSFILE or ~/.pgpass)"
    )


@contextlib.contextmanager
def open_store(
    config: PipelineConfig, readonly: bool = True, create_database: bool | None = None
) -> Iterator[metadata_store.MetadataStore]:
    """The ML Metadata store of `config` (read-only for SQLite unless asked; on PostgreSQL a
    missing database is created only by a store opened to write, unless `create_database` says)."""
    yield connect(config, readonly=readonly, create_database=create_database)


# TFX's Airflow launcher records each run as a context of this type (properties pipeline_name
# and run_id) instead of LocalDagRunner's and Kubeflow's `pipeline_run`, and takes no home lock.
AIRFLOW_RUN = "run"


def pipeline_runs(store, pipeline_name: str) -> list[metadata_store_pb2.Context]:
    """Run contexts of `pipeline_name`, oldest first: `pipeline_run` (LocalDagRunner, Kubeflow)
    and the Airflow launcher's `run` contexts."""
    pipeline_ctx = store.get_context_by_type_and_name("pipeline", pipeline_name)
    runs = store.get_contexts_by_type("pipeline_run")
    airflow = [
        c
        for c in store.get_contexts_by_type(AIRFLOW_RUN)
        if "pipeline_name" in c.properties and c.properties["pipeline_name"].string_value == pipeline_name
    ]
    if pipeline_ctx is not None:
        mine = {c.id for c in store.get_children_contexts_by_context(pipeline_ctx.id)}
        if mine or airflow:
            runs = [r for r in runs if r.id in mine]
    return sorted(runs + airflow, key=lambda c: (c.create_time_since_epoch, c.id))


def pipeline_roots(store, pipeline_name: str, pipeline_root: str) -> tuple[bool, list[str]]:
    """(whether `store` holds local artifacts of `pipeline_name` under `pipeline_root`, the other
    pipeline roots that hold some): each artifact folder is `<root>/<Component>/<output>/<execution
    id>`. On a shared database, another root is another home that runs a pipeline of the same
    name (or this home, moved)."""
    pipeline = store.get_context_by_type_and_name("pipeline", pipeline_name)
    artifacts = [] if pipeline is None else store.get_artifacts_by_context(pipeline.id)
    here, elsewhere = False, set()
    for a in artifacts:
        if not a.uri or "://" in a.uri:
            continue
        if under(a.uri, pipeline_root):
            here = True
        else:
            elsewhere.add(os.path.dirname(os.path.dirname(os.path.dirname(os.path.normpath(a.uri)))))
    return here, sorted(elsewhere)


# On a shared database, a context of this type per pipeline name holds the pipeline root of the
# home that runs it (`claim_pipeline_name`).
PIPELINE_HOME = "imgpipe_pipeline_home"


def claim_pipeline_name(store, pipeline_name: str, pipeline_root: str, write: bool = True) -> str | None:
    """Claim `pipeline_name` for the home whose pipeline root is `pipeline_root` (its real path):
    None when the claim is that home's (made now, or before), else the pipeline root that holds
    it. Atomic: a context's (type, name) is unique in ML Metadata, so of two homes starting
    together one wins. Looking at the artifacts alone, two homes of one name starting within the
    ~10 s before either recorded an artifact both went on, and each was refused for good after
    (an audit's two cron jobs copied from one config). The claim makes the pipeline root and
    names its host: a claim of this host whose pipeline root is gone and holds none of the
    pipeline's artifacts (a home deleted before its first artifact) is taken over; another
    host's, whose folders this host cannot see, never. `write` False: only read (None when
    nothing is claimed)."""
    import socket

    from ml_metadata import errors

    host = socket.gethostname()
    if write:
        os.makedirs(pipeline_root, exist_ok=True)  # a live claimant's root exists from its claim on
    pipeline_root = os.path.realpath(pipeline_root)
    for attempt in range(3):
        try:
            held = store.get_context_by_type_and_name(PIPELINE_HOME, pipeline_name)
            if held is None and not write:
                return None
            if held is None:
                type_id = store.put_context_type(
                    metadata_store_pb2.ContextType(
                        name=PIPELINE_HOME,
                        properties={
                            "pipeline_root": metadata_store_pb2.STRING,
                            "host": metadata_store_pb2.STRING,
                        },
                    )
                )
                claim = metadata_store_pb2.Context(type_id=type_id, name=pipeline_name)
                claim.properties["pipeline_root"].string_value = pipeline_root
                claim.properties["host"].string_value = host
                store.put_contexts([claim])
                return None
        except errors.AlreadyExistsError:  # another home's claim (or the type) came first: read it
            if attempt == 2:
                raise
            continue
        root = held.properties["pipeline_root"].string_value
        if os.path.realpath(root) == pipeline_root:
            return None
        here, _ = pipeline_roots(store, pipeline_name, root)
        claimant = held.properties["host"].string_value if "host" in held.properties else ""
        if os.path.exists(root) or here or claimant != host:
            return root
        if write:  # this host's claimant's folder is gone, none of its artifacts recorded: abandoned
            held.properties["pipeline_root"].string_value = pipeline_root
            store.put_contexts([held])
            log.info("pipeline %r: the claim of %s (gone, no artifact) taken over", pipeline_name, root)
        return None
    return None


def run_id(run: metadata_store_pb2.Context) -> str:
    """A run context's run id: its name, or an Airflow `run` context's `run_id` property."""
    if "run_id" in run.properties:
        return run.properties["run_id"].string_value
    return run.name


def is_airflow_run(store, run: metadata_store_pb2.Context) -> bool:
    """Whether `run` is a context of TFX's Airflow launcher's run type."""
    return store.get_context_types_by_id([run.type_id])[0].name == AIRFLOW_RUN


def latest_run(store, pipeline_name: str) -> metadata_store_pb2.Context:
    """The newest run of `pipeline_name` (LookupError when it has none)."""
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
            kind = store.get_context_types_by_id([ctx.type_id])[0].name
            if kind == "node" and ctx.name.startswith(prefix):
                out[ctx.name[len(prefix) :]] = e
            elif kind == "component_run" and "component_id" in ctx.properties:  # an Airflow run's
                out[ctx.properties["component_id"].string_value] = e
    return out


# An execution that ended well: it ran to the end, or its outputs came from the cache.
FINISHED_STATES = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)


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


def int_prop(artifact, name: str) -> int | None:
    if name in artifact.custom_properties:
        return int(artifact.custom_properties[name].int_value)
    return None


# A blessing taken back after the run (`withdraw_unserved_blessings`): the Evaluator's own verdict and why.
EVALUATOR_BLESSED_KEY = "evaluator_blessed"
WITHDRAWN_KEY = "blessing_withdrawn"
# A blessing kept although no Pusher finished: the model is the newest served version (a run
# killed after the Pusher's rename, before TFX recorded the push). The value names the version.
SERVED_UNRECORDED_KEY = "served_without_push_record"


# On the execution that made an output imgpipe took back (a withdrawn blessing, the record of a
# push whose version is gone): why. See `retire_from_cache`.
RETIRED_OUTPUTS_KEY = "outputs_retired"


def retire_from_cache(store, artifacts: list[metadata_store_pb2.Artifact], state: int, reason: str) -> None:
    """Put `artifacts` in `state` (ABANDONED, DELETED) and keep every TFX cache from handing them
    to a later run. LocalDagRunner's cache takes only outputs that are all LIVE. TFX's Airflow
    launcher's (the legacy `Metadata.get_cached_outputs`) ignores the outputs' state: it takes the
    latest COMPLETE execution equal, properties and all, to the one it would record. So the
    executions that made them are marked too (`outputs_retired`): no longer equal, they are not
    taken. A run that misses the cache executes the component again.
    """
    if not artifacts:
        return
    for a in artifacts:
        a.state = state
    store.put_artifacts(artifacts)
    _mark_makers(store, [a.id for a in artifacts], reason)


def _mark_makers(store, artifact_ids: list[int], reason: str) -> None:
    """Mark the executions that output `artifact_ids` `outputs_retired` (those not marked yet)."""
    makers = sorted(
        {
            ev.execution_id
            for ev in (store.get_events_by_artifact_ids(artifact_ids) if artifact_ids else [])
            if ev.type == metadata_store_pb2.Event.OUTPUT
        }
    )
    executions = [
        e
        for e in (store.get_executions_by_id(makers) if makers else [])
        if RETIRED_OUTPUTS_KEY not in e.custom_properties
    ]
    for e in executions:
        e.custom_properties[RETIRED_OUTPUTS_KEY].string_value = reason
    if executions:
        store.put_executions(executions)


def blessing(store, evaluator_execution) -> bool | None:
    """The Evaluator's verdict on the run's model (as it gave it, even when withdrawn since)."""
    arts = output_artifacts(store, evaluator_execution, "blessing")
    if not arts:
        return None
    verdict = int_prop(arts[-1], EVALUATOR_BLESSED_KEY)
    return bool(verdict if verdict is not None else int_prop(arts[-1], "blessed"))


def served_unrecorded(store, evaluator_execution) -> str | None:
    """The serving dir's version that holds the run's blessed model although no push of it was
    recorded (a run stopped between its Pusher's rename and TFX's record of the push), or None."""
    arts = output_artifacts(store, evaluator_execution, "blessing")
    prop = arts[-1].custom_properties.get(SERVED_UNRECORDED_KEY) if arts else None
    return prop.string_value if prop is not None and prop.string_value else None


def withdraw_unserved_blessings(
    store,
    pipeline_root: str,
    runs_finished: bool = True,
    served_as: Callable[[str], str | None] | None = None,
) -> list[tuple[int, str]]:
    """Take back every Evaluator blessing of a model that did not reach the serving dir.

    The next run's gate compares with the latest model whose blessing says `blessed` 1 (TFX's
    LatestBlessedModelStrategy, also for the DataGate's label set): that must be the model
    being served. Two kinds of blessed model are not:
    - refused by pre-push validation: an InfraBlessing with `blessed` 0 leads, through its
      InfraValidator execution's inputs, to the ModelBlessing it refused;
    - never pushed (with `runs_finished`: only when no run of this home is between its
      Evaluator and its Pusher): no Pusher that read the blessing completed, because the
      push failed (a full or read-only serving dir) or the run died or failed before it.
      Unless `served_as(model URI)` names the serving dir's version that holds the blessed
      model: a run killed after its Pusher's rename but before TFX recorded the push, whose
      model is served. Such a blessing is kept, with the version in `served_without_push_record`.
    A withdrawn blessing keeps the Evaluator's verdict in `evaluator_blessed` and the reason
    in `blessing_withdrawn`. With `runs_finished` it is also no longer LIVE (ABANDONED, as is
    any blessing withdrawn while a run was in flight) and out of TFX's caches
    (`retire_from_cache`, LocalDagRunner's and Airflow's), so a re-run with the same model
    evaluates it again, and the new blessing is pushed (a retry after a failed push or
    pre-push check works), instead of taking the withdrawn one from the cache and pushing
    nothing. Only blessings under `pipeline_root` are judged (a shared PostgreSQL store may
    hold other homes' runs, live ones included). Reads no run context, so it works on any
    orchestrator's store (LocalDagRunner's `pipeline_run` contexts, TFX's Airflow launcher's
    `run` contexts). Idempotent; a constant number of queries plus a few per blessing withdrawn.
    Returns [(ModelBlessing id, reason)] of those withdrawn now.
    """
    ours = [a for a in store.get_artifacts_by_type("ModelBlessing") if under(a.uri, pipeline_root)]
    live = [a for a in ours if a.state == metadata_store_pb2.Artifact.LIVE]
    # Withdrawn and ABANDONED by an imgpipe that did not yet mark the Evaluator execution too:
    # TFX's Airflow cache would still hand the blessing back (retire_from_cache).
    _mark_makers(
        store,
        [
            a.id
            for a in ours
            if a.state == metadata_store_pb2.Artifact.ABANDONED and WITHDRAWN_KEY in a.custom_properties
        ],
        "blessing withdrawn",
    )
    if runs_finished:
        # Withdrawn while a run was between its Evaluator and Pusher (that Pusher read it LIVE).
        retire = [a for a in live if WITHDRAWN_KEY in a.custom_properties]
        for a in retire:
            retire_from_cache(
                store,
                [a],
                metadata_store_pb2.Artifact.ABANDONED,
                a.custom_properties[WITHDRAWN_KEY].string_value,
            )
    blessed = {a.id: a for a in live if int_prop(a, "blessed") == 1}
    if not blessed:
        return []
    # Who read each blessing (InfraValidator, Pusher, a later run's cached ones) and who made it.
    readers: dict[int, set[int]] = {b: set() for b in blessed}
    maker: dict[int, int] = {}
    for ev in store.get_events_by_artifact_ids(list(blessed)):
        if ev.type == metadata_store_pb2.Event.INPUT:
            readers[ev.artifact_id].add(ev.execution_id)
        elif ev.type == metadata_store_pb2.Event.OUTPUT:
            maker[ev.artifact_id] = ev.execution_id
    reader_ids = sorted(set().union(*readers.values()))
    states = {e.id: e.last_known_state for e in store.get_executions_by_id(reader_ids)} if reader_ids else {}
    outputs: dict[int, dict[str, int]] = {}  # execution -> output key -> artifact id
    inputs: dict[int, set[str]] = {}  # execution -> its input keys
    for ev in store.get_events_by_execution_ids(reader_ids) if reader_ids else []:
        keys = [step.key for step in ev.path.steps if step.HasField("key")]
        if ev.type == metadata_store_pb2.Event.OUTPUT:
            for key in keys:
                outputs.setdefault(ev.execution_id, {})[key] = ev.artifact_id
        elif ev.type == metadata_store_pb2.Event.INPUT:
            inputs.setdefault(ev.execution_id, set()).update(keys)
    infra_ids = sorted({o["blessing"] for o in outputs.values() if "blessing" in o})
    infra = {a.id: a for a in store.get_artifacts_by_id(infra_ids)} if infra_ids else {}
    # Pushes a Pusher refused because `imgpipe rollback` marked the model after its Evaluator
    # blessed it: the model is not served, so its blessing goes.
    push_ids = sorted({o["pushed_model"] for o in outputs.values() if "pushed_model" in o})
    refused_pushes = {
        a.id: a.custom_properties[ROLLED_BACK_KEY].string_value
        for a in (store.get_artifacts_by_id(push_ids) if push_ids else [])
        if ROLLED_BACK_KEY in a.custom_properties
    }

    withdrawn = []
    for blessing_id, blessing in sorted(blessed.items()):
        # The Pusher: the reader that also reads the InfraValidator's verdict (a failed one has
        # no output event) or that wrote a pushed_model.
        pushers = [
            e
            for e in readers[blessing_id]
            if "infra_blessing" in inputs.get(e, ()) or "pushed_model" in outputs.get(e, {})
        ]
        refused = [
            infra[outputs[e]["blessing"]]
            for e in readers[blessing_id]
            if outputs.get(e, {}).get("blessing") in infra
            and int_prop(infra[outputs[e]["blessing"]], "blessed") == 0
        ]
        rolled_back = [
            refused_pushes[outputs[e]["pushed_model"]]
            for e in pushers
            if outputs.get(e, {}).get("pushed_model") in refused_pushes
        ]
        # The run that blessed it, asked of ML Metadata only for a blessing that goes.
        run = functools.partial(_run_of, store, maker.get(blessing_id))
        if rolled_back:
            reason = f"not pushed in run {run()}: the model was {rolled_back[-1]}"
        elif refused:
            try:  # the report only gives the reason: `blessed` 0 decides
                report = prepush_summary(refused[-1].uri) or {}
            except (OSError, ValueError, KeyError, TypeError):
                report = {}
            reason = (
                f"pre-push validation failed in run {run()}: {report.get('reason') or 'no reason recorded'}"
            )
        elif (
            runs_finished
            and not any(states.get(e) in FINISHED_STATES for e in pushers)
            and SERVED_UNRECORDED_KEY not in blessing.custom_properties
        ):
            version = served_as(evaluated_model_uri(store, maker.get(blessing_id))) if served_as else None
            if version is not None:
                blessing.custom_properties[SERVED_UNRECORDED_KEY].string_value = version
                store.put_artifacts([blessing])
                continue
            how = "its push failed" if pushers else "its run ended before the Pusher"
            reason = f"not pushed in run {run()}: {how}"
        else:
            continue
        withdraw(store, blessing, reason, runs_finished)
        withdrawn.append((blessing_id, reason))
    if runs_finished and served_as is not None:
        gone = {b for b, _ in withdrawn}
        for blessing, reason in _superseded(
            store, [b for i, b in sorted(blessed.items()) if i not in gone], maker, served_as
        ):
            withdraw(store, blessing, reason, runs_finished)
            withdrawn.append((blessing.id, reason))
    return withdrawn


def withdraw(store, blessing, reason: str, runs_finished: bool) -> None:
    """Set a blessing's `blessed` to 0, keeping the Evaluator's verdict and the reason."""
    blessing.custom_properties[EVALUATOR_BLESSED_KEY].int_value = 1
    blessing.custom_properties["blessed"].int_value = 0
    blessing.custom_properties[WITHDRAWN_KEY].string_value = reason
    if runs_finished:  # no run in flight reads it: out of TFX's cache (see withdraw_unserved_blessings)
        retire_from_cache(store, [blessing], metadata_store_pb2.Artifact.ABANDONED, reason)
    else:
        store.put_artifacts([blessing])


def _superseded(
    store, blessed: list, maker: dict[int, int], served_as: Callable[[str], str | None]
) -> list[tuple[metadata_store_pb2.Artifact, str]]:
    """The blessings of models newer (by artifact id) than the model the serving dir's newest
    version holds, with the reason: TFX's LatestBlessedModelStrategy takes the blessed model of
    the highest id as the baseline, so an older model blessed again and pushed (a re-run on
    earlier data, a rollback by retraining) was served while the newer one stayed the gate's
    baseline: the next run was compared with a model not served, called itself "identical to"
    a version no longer served, and pushed nothing. Empty when no blessed model is the one
    served (a version copied in by hand: nothing is known of it)."""
    by_model = sorted(
        ((int_prop(b, "current_model_id"), b) for b in blessed if int_prop(b, "current_model_id")),
        key=lambda mb: (mb[0], mb[1].id),
        reverse=True,
    )
    if not by_model:
        return []
    models = {a.id: a for a in store.get_artifacts_by_id(sorted({m for m, _ in by_model}))}
    newer = []
    served: dict[int, str | None] = {}  # model id -> the version holding it: one comparison per model
    for model_id, blessing in by_model:
        if model_id not in served:
            model = models.get(model_id)
            served[model_id] = served_as(model.uri) if model is not None else None
        version = served[model_id]
        if version is None:
            newer.append((model_id, blessing))
            continue
        run = _run_of(store, maker.get(blessing.id))
        return [
            (
                b,
                f"superseded: the serving dir's newest version, {version}, holds model {model_id} (blessed "
                f"in run {run}), pushed after model {m}",
            )
            for m, b in newer
            if m != model_id
        ]
    return []


def _input_ids(store, execution_id: int, key: str) -> list[int]:
    """The ids of the artifacts an execution took as its input `key`."""
    return [
        ev.artifact_id
        for ev in store.get_events_by_execution_ids([execution_id])
        if ev.type == metadata_store_pb2.Event.INPUT and any(s.key == key for s in ev.path.steps)
    ]


def evaluated_model_uri(store, evaluator_execution_id: int | None) -> str:
    """The URI of the Model the Evaluator judged ('' when unknown)."""
    if evaluator_execution_id is None:
        return ""
    ids = _input_ids(store, evaluator_execution_id, "model")
    arts = store.get_artifacts_by_id(ids) if ids else []
    return arts[-1].uri if arts else ""


def baseline_model(store, evaluator_execution) -> dict[str, str | None] | None:
    """The model the Evaluator had as its baseline (the latest blessed model when it ran): the run
    that trained it (`run_id`) and where its newest recorded push put it (`pushed`, None when no
    push of it is recorded); when none is but a Pusher found it identical to a served version
    (a retrain to the same weights: not pushed again), that version's number (`identical_to`).
    None: the Evaluator had no baseline, or is unknown."""
    if evaluator_execution is None:
        return None
    ids = _input_ids(store, evaluator_execution.id, "baseline_model")
    if not ids:
        return None
    events = store.get_events_by_artifact_ids([ids[-1]])
    # The first execution that output it trained it; later ones are runs whose Trainer was cached.
    trained_by = min(
        (ev.execution_id for ev in events if ev.type == metadata_store_pb2.Event.OUTPUT), default=None
    )
    consumers = {ev.execution_id for ev in events if ev.type == metadata_store_pb2.Event.INPUT}
    # The newest push of it: only a Pusher has a pushed_model output.
    executions = sorted(store.get_executions_by_id(list(consumers)) if consumers else [], key=lambda e: -e.id)
    pushed = next(filter(None, (pushed_path(store, e) for e in executions)), None)
    out = {"run_id": _run_of(store, trained_by), "pushed": pushed}
    if pushed is None:
        identical = next(filter(None, (push_skipped_version(store, e) for e in executions)), None)
        if identical is not None:
            out["identical_to"] = identical
    return out


def withdrawn_reason(store, evaluator_execution) -> str | None:
    """Why the Evaluator's blessing of the run's model was withdrawn since, else None."""
    arts = output_artifacts(store, evaluator_execution, "blessing")
    if not arts or WITHDRAWN_KEY not in arts[-1].custom_properties:
        return None
    return arts[-1].custom_properties[WITHDRAWN_KEY].string_value


def _run_of(store, execution_id: int | None) -> str:
    """run_name_of_execution, or "?" for an execution that is not known."""
    return "?" if execution_id is None else run_name_of_execution(store, execution_id)


def run_name_of_execution(store, execution_id: int) -> str:
    """The run id an execution belongs to (its `pipeline_run` context, or the `run_id` of TFX's
    Airflow launcher's `run` context); `execution <id>` when it has neither."""
    for ctx in store.get_contexts_by_execution(execution_id):
        kind = store.get_context_types_by_id([ctx.type_id])[0].name
        if kind == "pipeline_run":
            return ctx.name
        if kind == "run" and "run_id" in ctx.properties:
            return ctx.properties["run_id"].string_value
    return f"execution {execution_id}"


def pushed_path(store, pusher_execution) -> str | None:
    arts = output_artifacts(store, pusher_execution, "pushed_model")
    if not arts or not int_prop(arts[-1], "pushed"):
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
    return replicas_of(training_summary(model_run_uri))


def replicas_of(summary: dict | None) -> int | None:
    """The replicas a training summary (training_summary.json) says the Trainer used."""
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
    data_gate: str | None = None  # DataGate `report` (data_gate.json)


def split_uri(store, execution, key: str, split: str) -> str | None:
    """The folder of one split of an Examples output (`<uri>/Split-<split>`)."""
    uri = output_uri(store, execution, key)
    return os.path.join(uri, f"Split-{split}") if uri else None


def run_artifacts(config: PipelineConfig, run_id: str) -> RunArtifacts:
    """Look up run `run_id`'s eval examples, trained model, training summary and evaluation."""
    pipeline_name = config.pipeline_name
    with open_store(config) as store:
        run = run_by_id(store, pipeline_name, run_id)
        executions = run_executions(store, pipeline_name, run)
        model = output_uri(store, executions.get("Trainer"), "model")
        return RunArtifacts(
            run_id=run.name,
            states={node: state_name(e) for node, e in executions.items()},
            eval_examples=split_uri(store, executions.get("ImportExampleGen"), "examples", "eval"),
            serving_model=os.path.join(model, SERVING_MODEL_DIR) if model else None,
            model_run=output_uri(store, executions.get("Trainer"), "model_run"),
            evaluation=output_uri(store, executions.get("Evaluator"), "evaluation"),
            data_gate=output_uri(store, executions.get(DATA_GATE_NODE), "report"),
        )


def _json_file(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def training_summary(model_run_uri: str | None) -> dict | None:
    """The Trainer's training_summary.json (replicas, history, notes), or None when absent."""
    return _json_file(os.path.join(model_run_uri, SUMMARY_FILE)) if model_run_uri else None


# The data gate's node id and report file (pipeline.pipeline.DATA_GATE_ID and
# components.artifacts.REPORT_FILE, which load TFX; tests/test_report.py checks they agree).
DATA_GATE_NODE = "DataGate"
DATA_GATE_FILE = "data_gate.json"


def data_gate_report(report_uri: str | None) -> dict | None:
    """The DataGate's data_gate.json (its warnings: labels corrected since the served model's
    training, near-alike names), or None when absent or unreadable."""
    try:
        return _json_file(os.path.join(report_uri, DATA_GATE_FILE)) if report_uri else None
    except (OSError, ValueError):
        return None


def gate_record(evaluation_uri: str | None) -> dict | None:
    """The Evaluator's gate.json, or None (runs from before the record existed)."""
    return _json_file(os.path.join(evaluation_uri, GATE_FILE)) if evaluation_uri else None


def prepush_summary(infra_blessing_uri: str | None) -> dict | None:
    """The InfraValidator's verdict (blessed, reason, latencies...) from its report; None if absent."""
    report = _json_file(os.path.join(infra_blessing_uri, PREPUSH_REPORT_FILE)) if infra_blessing_uri else None
    return report["summary"] if report is not None else None


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
