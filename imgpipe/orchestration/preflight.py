"""A home's pre-flight checks: made before a run's first component.

Each raises ConfigError naming what is wrong and how to put it right (a home pushing to a second
place is warned about, not refused); none changes anything but
the home's record of a serving dir it was told to take over (`adopt_serving_dir`) and, on a
shared database, the home's claim of its pipeline name (`metadata.claim_pipeline_name`).
`imgpipe run` makes them holding the home's lock (orchestration/local.py); an Airflow DAG's
first tasks (those that wait for none) make them before their components, with no home lock
(Airflow runs one DAG run at a time; orchestration/airflow.py).
"""

from __future__ import annotations

import json
import logging
import os

from imgpipe.orchestration import metadata, recovery, runs
from imgpipe.orchestration.paths import under, write_atomically
from pipeline.config import ConfigError, PipelineConfig

log = logging.getLogger(__name__)


def check_home(config: PipelineConfig, records_checked: bool = False) -> None:
    """Every pre-flight check of the home, in order: its run records' store is this run's
    (`check_records`, unless `records_checked`: made before connecting), its store knows it, it
    was not moved, its pipeline name is its own on a shared database, its serving dir's newest
    version is its own; then a warning when its pushes go to two places."""
    if not records_checked:
        check_records(config)
    check_store_knows_the_home(config)
    check_home_not_moved(config)
    check_pipeline_name_is_this_homes(config)
    check_serving_dir_is_this_homes(config)
    claim_pipeline_name(config)  # last: a home refused above claims nothing
    check_home_serves_from_one_place(config)


def check_records(config: PipelineConfig) -> None:
    """The checks that read the home's run records and no store, made before connecting to it
    (connecting makes a SQLite store that is not there): the served model is in this run's store
    (`check_served_model_is_in_this_store`), and a home whose runs record to another store than
    this run's, which has no store file yet (a forgotten --metadata), is told so (an audit: told
    its store "was emptied or replaced" and to restore a metadata.sqlite that never existed,
    which the refused run then left behind, empty)."""
    check_served_model_is_in_this_store(config)
    if config.metadata_target is not None or os.path.exists(config.metadata_path):
        return
    elsewhere = _newest_runs_store(config)
    if elsewhere is not None and not (
        config.gate.bless_without_comparison and elsewhere[1][1] != config.pipeline_name
    ):
        _refuse_other_store(config, *elsewhere)


def database_withheld(config: PipelineConfig) -> str | None:
    """Why a run must not create its PostgreSQL database when the server has none of that name,
    or None when it may: this home's newest run recorded to another database of the same server,
    which is a mistyped name far more often than a move (an audit's typo left a new database, ML
    Metadata's tables in it, on the shared server, before the run was refused). A new database on
    another server, or after the home's SQLite store, is made as before."""
    target = config.metadata_target
    if target is None:
        return None
    elsewhere = _newest_runs_store(config)
    if elsewhere is None or "://" not in elsewhere[1][0]:
        return None
    from pipeline.metadata_url import parse_metadata_url

    run_id, (location, _) = elsewhere
    try:
        before = parse_metadata_url(location)
    except ValueError:
        return None
    if (before.host.lower(), before.port) != (
        target.host.lower(),
        target.port,
    ) or before.dbname == target.dbname:
        return None
    return (
        f"this home's newest run ({run_id}) recorded to {location}, another database of this server, and a run "
        "creates no database of a new name there (a mistyped name would leave one behind): check the name in "
        "--metadata, or create the database first (createdb) to move the home to it"
    )


def _refuse_other_store(config: PipelineConfig, run_id: str, there: tuple[str, str]) -> None:
    location, name = there
    raise ConfigError(
        f"metadata: this home's runs record ML Metadata to {location} (as pipeline {name!r}; its newest run, "
        f"{run_id}, says so in its {runs.CONFIG_FILE}), and this run to {config.metadata_location}, which "
        f"holds none of them. Run with {_flags_for(location, name, config)} as those runs did (`metadata:` "
        "in a config file); or, to move the home to this store knowingly (its baseline and rollback history "
        "stay in the other), give a new --pipeline-name and --bless-without-comparison for its first run here"
    )


def check_store_knows_the_home(config: PipelineConfig) -> None:
    """ConfigError when ML Metadata has no execution of the pipeline while its root holds the
    artifacts of earlier executions: the store was emptied (metadata.sqlite truncated or deleted)
    or replaced. A run then finds no blessed model to compare with, pushes whatever passes the
    floor beside the served model, and numbers its executions from 1 again, into the earlier
    artifacts' folders."""
    earlier = _an_artifact_folder(config.pipeline_root)
    if earlier is None:
        return
    import ml_metadata as mlmd

    if config.metadata_target is None and not os.path.exists(config.metadata_path):
        known = False  # no store at all: not made here by opening it (the run is refused)
    else:
        with metadata.open_store(config) as store:
            pipeline = store.get_context_by_type_and_name("pipeline", config.pipeline_name)
            known = pipeline is not None and store.get_executions_by_context(
                pipeline.id, list_options=mlmd.ListOptions(limit=1)
            )
    if not known:
        elsewhere = _newest_runs_store(config)
        if elsewhere is not None:
            _refuse_other_store(config, *elsewhere)
        restore = (
            "Check the database name in --metadata (a name the server does not have is a new, empty "
            "database), or restore the database from a backup"
            if config.metadata_target is not None
            else "Restore the store (e.g. metadata.sqlite from a backup)"
        )
        raise ConfigError(
            f"metadata: {config.metadata_location} holds no execution of pipeline {config.pipeline_name!r}, "
            f"but {config.pipeline_root} holds earlier executions' artifacts (e.g. {earlier}): the store "
            "was emptied or replaced. A run now would not be compared with the served model and would "
            f"write into those folders. {restore}, or move {config.pipeline_root} away to start the "
            "pipeline afresh"
        )


def check_served_model_is_in_this_store(config: PipelineConfig) -> None:
    """ConfigError when the version served now was pushed by a run of this home that recorded to
    another ML Metadata store, or as another pipeline name, than this run: the gate compares a
    candidate with the latest blessed model of its own store and pipeline, which is then not
    the served one (an older model, or none: "no blessed model yet"), so a model worse than the
    one served could replace it unjudged. An audit moved a home from SQLite to PostgreSQL (under
    a new pipeline name, as the store check advised) and back: each switch compared with the
    wrong model or with nothing, without a word. With gate.bless_without_comparison, a warning
    (the switch made knowingly: judged on the floors, and against this store's own baseline)."""
    base = config.model_serving_dir
    if not base or "://" in base or "://" in config.home or not os.path.isdir(base):
        return
    from imgpipe.orchestration.rollback import whole_versions

    versions = whole_versions(base)
    if not versions:
        return
    number, folder = versions[-1]
    pusher = _record_that_pushed(config.home, folder)
    if pusher is None:
        return  # a rollback's copy, a version taken over or not this home's: the other checks
    run_id, there = pusher
    if there is None or (same_store(there[0], config.metadata_location) and there[1] == config.pipeline_name):
        return
    location, name = there
    what = (
        f"ML Metadata in {location} as pipeline {name!r}, and this run records to {config.metadata_location}"
        f"{'' if name == config.pipeline_name else f' as {config.pipeline_name!r}'}"
        if not same_store(location, config.metadata_location)
        else f"pipeline {name!r} in {location}, and this run is pipeline {config.pipeline_name!r}"
    )
    message = (
        f"serving_dir: version {number} of {base}, served now, was pushed by this home's run {run_id}, which "
        f"recorded {what}. The gate compares with the latest blessed model of this run's store and pipeline, "
        "which is not the model served (an older one, or none), so a worse model could replace it"
    )
    if config.gate.bless_without_comparison:
        log.warning("%s; gate.bless_without_comparison is set: going on", message)
        return
    raise ConfigError(
        f"{message}. Run with {_flags_for(location, name, config)} as that run did; or, to go on in this store "
        "knowingly (its history starts here: the served model is not compared), pass "
        "--bless-without-comparison for this run (with a new --pipeline-name when the home's folders hold "
        "the old store's pipeline)"
    )


def _record_that_pushed(home: str, folder: str) -> tuple[str, tuple[str, str] | None] | None:
    """(run id, (ML Metadata location, pipeline name) of its saved config, None if unreadable) of
    the run whose record says it pushed `folder`; None when no record does."""
    target = os.path.normpath(folder)
    for record in runs.records(home):
        try:
            summary = runs.read_summary(record)
        except runs.RecordError:
            continue
        pushed = summary.get("pushed")
        if isinstance(pushed, str) and os.path.isabs(pushed) and os.path.normpath(pushed) == target:
            return str(summary.get("run_id") or os.path.basename(record)), _store_of(record, home)
    return None


def _newest_runs_store(config: PipelineConfig) -> tuple[str, tuple[str, str]] | None:
    """(run id, (location, pipeline name)) of this home's newest run record when its saved config
    names another ML Metadata store than this run's; None otherwise (or no readable record)."""
    for record in runs.records(config.home):
        there = _store_of(record, config.home)
        if there is None:
            continue
        if same_store(there[0], config.metadata_location):
            return None
        return os.path.basename(record), there
    return None


def same_store(first: str, second: str) -> bool:
    """Whether two ML Metadata locations are one store: one PostgreSQL database (host, port and
    name; not the user or the SSL options: a cron service's user on the team's database is the
    same store), or one SQLite file (its real path)."""
    if ("://" in first) != ("://" in second):
        return False
    if "://" not in first:
        return os.path.realpath(first) == os.path.realpath(second)
    from pipeline.metadata_url import parse_metadata_url

    try:
        a, b = parse_metadata_url(first), parse_metadata_url(second)
    except ValueError:
        return first == second
    return (a.host.lower(), a.port, a.dbname) == (b.host.lower(), b.port, b.dbname)


def _store_of(record: str, home: str) -> tuple[str, str] | None:
    """(ML Metadata location, pipeline name) a run record's saved config names, read as this
    home's (a SQLite store is the home's own, wherever the home was then); None if unreadable."""
    try:
        saved = PipelineConfig.from_yaml(os.path.join(record, runs.CONFIG_FILE)).replace(home=home)
    except (ConfigError, OSError, ValueError):
        return None
    return saved.metadata_location, saved.pipeline_name


def _flags_for(location: str, name: str, config: PipelineConfig) -> str:
    """The flags that point a run at `location` as pipeline `name` (password never shown)."""
    flags = [f"--metadata {location}" if "://" in location else "no --metadata (the home's own SQLite store)"]
    # (a PostgreSQL location is its URL without the password: the password file is the user's)
    if location == config.metadata_location:
        flags = []
    if name != config.pipeline_name:
        flags.append(f"--pipeline-name {name}")
    return " and ".join(flags)


def check_home_not_moved(config: PipelineConfig) -> None:
    """ConfigError when the home's own store (SQLite, in the home) records this pipeline's live
    artifacts outside this home whose folders are gone: the home was moved (or renamed; or moved
    away and a new home made in its place, whose folders are others). ML Metadata keeps absolute
    paths, so the baseline the Resolver picks is a folder that no longer exists (or another
    home's), and every run failed at the DataGate with a missing label vocabulary, blaming the
    model. A copy (every such folder still there) is logged: its runs read the original's models."""
    if config.metadata_target is not None or "://" in config.pipeline_root:
        return
    if not os.path.exists(config.metadata_path):
        return
    from ml_metadata.proto import metadata_store_pb2

    with metadata.open_store(config) as store:
        pipeline = store.get_context_by_type_and_name("pipeline", config.pipeline_name)
        artifacts = [] if pipeline is None else store.get_artifacts_by_context(pipeline.id)
    gone, kept, others = set(), set(), set()
    outside: dict[str, list] = {}
    missing: dict[str, list] = {}  # home -> its artifacts whose folders are gone
    for a in artifacts:
        if a.state != metadata_store_pb2.Artifact.LIVE or not a.uri or "://" in a.uri:
            continue
        if under(a.uri, config.pipeline_root):
            continue
        # <home>/pipelines/<name>/<Component>/<output>/<execution id>
        home = os.path.normpath(a.uri)
        for _ in range(5):
            home = os.path.dirname(home)
        if os.path.exists(a.uri):
            outside.setdefault(home, []).append(a)
        else:
            gone.add(home)
            missing.setdefault(home, []).append(a)
    for home, found in outside.items():
        # There: the original of a copy (its own store records the same artifacts), or another home
        # made where this one was (its folders, numbered alike, hold other artifacts).
        (kept if _same_artifacts(config.replace(home=home), found) else others).add(home)
    here = os.path.abspath(config.home)
    if others and not gone:
        old = sorted(others)
        raise ConfigError(
            f"home: its ML Metadata ({config.metadata_path}) records artifacts of this pipeline under "
            f"{', '.join(old[:3])}, not under this home ({here}), and the home there now is another one (its "
            "store does not know them): this home was moved away and another made in its place. ML Metadata "
            "keeps absolute paths, so the baseline and the cache would be that home's. Move this home back "
            f"to {old[0]} (the other one elsewhere), or start a new home with --home"
        )
    if gone:
        old = sorted(gone)
        where = old[0] if len(old) == 1 else f"{', '.join(old[:3])}{' ...' if len(old) > 3 else ''}"
        live = [h for h in old if _same_artifacts(config.replace(home=h), missing[h])]
        if live:
            # A home is still there whose own store records those artifacts: this one is a copy of
            # it, and that home deleted (pruned) the folders since. Moving this one "back" would
            # overwrite it.
            raise ConfigError(
                f"home: its ML Metadata ({config.metadata_path}) records artifacts of this pipeline under "
                f"{live[0]}, a home that is still there with its own ML Metadata: this home ({here}) is a "
                "copy of it (copied with its store), and that home has deleted some of those folders since "
                "(`imgpipe prune`, or by hand). A copy's runs read the original's models, so this one's "
                f"baseline and cache point at folders that are gone. Do not move this home to {live[0]}: "
                "that is the other home. Start a new home with --home (a home copied without its "
                "metadata.sqlite starts anew too; the serving dir's versions stay served)"
            )
        raise ConfigError(
            f"home: its ML Metadata ({config.metadata_path}) records artifacts of this pipeline under {where}, "
            f"not under this home ({here}), and their folders are gone: the home was moved or renamed, or "
            "reached through a symlink since removed. ML Metadata keeps absolute paths, so the served "
            "model's record (the next run's baseline) and the cache point at folders that no longer hold "
            f"them. Move the home back to {old[0]} (a symlink there to {here} also works), or start a new "
            "home with --home (the serving dir's versions stay served)"
        )
    if kept:
        log.warning(
            "this home's ML Metadata records artifacts under %s, another home's folder: the home was "
            "copied with its store; its runs take that home's models as baselines and its outputs "
            "from that home's cache, and `imgpipe prune` there deletes them",
            ", ".join(sorted(kept)[:3]),
        )


def _same_artifacts(other: PipelineConfig, artifacts: list) -> bool:
    """Whether `other` home's own store records `artifacts` as they are (id, folder and creation
    time): the home this one was copied from. False when it has no store or records others."""
    if not os.path.isfile(other.metadata_path):
        return False
    try:
        with metadata.open_store(other) as store:
            theirs = {a.id: a for a in store.get_artifacts_by_id([a.id for a in artifacts])}
    except Exception:  # noqa: BLE001 - an unreadable store is no proof of a copy
        return False
    return all(
        a.id in theirs
        and theirs[a.id].uri == a.uri
        and theirs[a.id].create_time_since_epoch == a.create_time_since_epoch
        for a in artifacts
    )


def check_serving_dir_is_this_homes(config: PipelineConfig) -> None:
    """ConfigError when the model base path's newest version (SERVING_DIR/MODEL_NAME/<newest>, the
    one a "latest" policy serves) is not this home's: not pushed by its runs (their records in ML
    Metadata and in HOME/runs), not a copy its rollbacks served, not holding one of its models, not
    the one it took over. Another home's model (two homes with the default names in one folder,
    or a second home that took the folder over since), or one put there by hand. The run would
    replace it with this home's blessed model, compared with nothing, its classes perhaps others:
    an audit's second home pushed its classes over the first home's without a word, and clients
    got another label set. `adopt_serving_dir` takes the newest version over (remembered)."""
    base = config.model_serving_dir
    if not base or "://" in base or not os.path.isdir(base):
        if config.adopt_serving_dir and base and "://" not in base:
            _adopt(config.home, base, None)
        return
    from imgpipe.orchestration.prune import pushed_versions
    from imgpipe.orchestration.rollback import whole_versions

    versions = whole_versions(base)
    name = os.path.basename(versions[-1][1]) if versions else None
    if config.adopt_serving_dir:
        _adopt(config.home, base, name)  # later runs, without the flag, too
        return
    if name is None or _adopted(config.home, base) == name:
        return
    number, folder = versions[-1]
    if name in pushed_versions(config.home).get(os.path.normpath(base), set()):
        return
    with metadata.open_store(config) as store:
        pushed = recovery.pushes(store, config.pipeline_root)
        if pushed.pushed_version(folder) or recovery.holds_own_model(store, config.pipeline_root, folder):
            return
    ever = pushed.pushed_to(base)
    classes = _served_classes(folder)
    whose = (
        "this home pushed there before, but not this version"
        if ever
        else f"no run of this home ({config.home}) ever pushed there"
        + (
            "; it has no run records at all: if it is a home moved away, point the config at its new place "
            "rather than adopting"
            if not runs.records(config.home)
            else ""
        )
    )
    raise ConfigError(
        f"serving_dir: {base} serves version {number}{classes}, and it is not this home's ({whose}): another "
        "home's model (homes with the same --serving-dir and --model-name), or one put there by hand. This "
        "run would replace it with its blessed model, compared with nothing. Give this home its own "
        "--model-name or --serving-dir, or pass --adopt-serving-dir to take version "
        f"{number} over"
    )


def check_home_serves_from_one_place(config: PipelineConfig) -> None:
    """Warn when the run's model base path is not the one this home's newest push went to while
    that one still serves it (its newest version this home's push). The gate's baseline is one
    model, the home's latest blessed: a home pushing to two places alternately has its runs for
    one compared with the other's model, and the blessing of the model the other serves is taken
    back once this place serves an older one (an audit: data A to one serving dir, then B, then
    A to a second; the first's served model was no longer the baseline, and a re-run of its own
    data was refused as a label change). Not refused: a home moved to a new place does this once
    (tests and users point a home's run at a fresh serving dir)."""
    base = config.model_serving_dir
    if not base or "://" in base or "://" in config.home:
        return
    previous = _newest_push_base(config.home)
    if previous is None or os.path.realpath(previous) == os.path.realpath(base):
        return
    served = _served_version(config, previous)
    if served is None:
        return  # nothing of this home's is served there now: a move, nothing left ungated
    number, folder = served
    log.warning(
        "serving_dir: this home's newest push went to %s (version %s%s, still served there), and this run "
        "pushes to %s. A home gates each model against the one model it last blessed: pushing to two places, "
        "the runs for one are compared with the other's model, and the blessing of the model %s serves is "
        "taken back when this place serves another. Give each place its own --home (or push to one place)",
        previous,
        number,
        _served_classes(folder),
        base,
        previous,
    )


def _newest_push_base(home: str) -> str | None:
    """The model base path of the newest push this home's run records name (local), else None."""
    for folder in runs.records(home):
        try:
            pushed = runs.read_summary(folder).get("pushed")
        except runs.RecordError:
            continue
        if isinstance(pushed, str) and "://" not in pushed and os.path.isabs(pushed):
            return os.path.dirname(os.path.normpath(pushed))
    return None


def _served_version(config: PipelineConfig, base: str) -> tuple[int, str] | None:
    """(number, folder) of `base`'s newest whole version when this home pushed it (its records
    or ML Metadata's), took it over, or a rollback of it served it; None otherwise."""
    from imgpipe.orchestration.prune import pushed_versions
    from imgpipe.orchestration.rollback import whole_versions

    versions = whole_versions(base)
    if not versions:
        return None
    number, folder = versions[-1]
    name = os.path.basename(folder)
    if _adopted(config.home, base) == name or name in pushed_versions(config.home).get(
        os.path.normpath(base), set()
    ):
        return number, folder
    if not os.path.exists(config.metadata_path) and config.metadata_target is None:
        return None
    with metadata.open_store(config) as store:
        if recovery.pushes(store, config.pipeline_root).pushed_version(folder):
            return number, folder
    return None


def adopt_once(config: PipelineConfig, saved_for: str) -> PipelineConfig:
    """`config` to be saved for later runs (`saved_for`: "the DAG", "the schedule's config"), with its
    serving dir taken over now when it says `adopt_serving_dir`, and the flag dropped: saved, it
    would take over whatever version is newest at every run, another home's push included."""
    if not config.adopt_serving_dir:
        return config
    if "://" in config.home:
        raise ConfigError(
            f"adopt_serving_dir: {saved_for} takes the serving dir over as it is written, into the home's "
            f"record, and {config.home} is not a local folder: take it over with a run of this home "
            "(imgpipe run --adopt-serving-dir), then leave the flag out"
        )
    os.makedirs(config.home, exist_ok=True)
    check_serving_dir_is_this_homes(config)  # records the newest version as this home's
    adopted = _adopted(config.home, config.model_serving_dir) if config.model_serving_dir else None
    log.warning(
        "adopt_serving_dir: %s's newest version (%s) is this home's from now on; %s is saved without the "
        "flag, so its runs refuse a version another home pushes there later",
        config.model_serving_dir,
        adopted or "none yet",
        saved_for,
    )
    return config.replace(adopt_serving_dir=False)


ADOPTED_FILE = "adopted_serving_dirs.json"  # in the home: {base path: the newest version taken over}


def _adopted(home: str, base: str) -> str | None:
    """The version this home took over at `base` (None: none)."""
    version = runs.json_object(os.path.join(home, ADOPTED_FILE)).get(os.path.realpath(base))
    return version if isinstance(version, str) else None


def _adopt(home: str, base: str, version: str | None) -> None:
    """Remember that this home took `base`'s `version` over (atomically; a failure only warns)."""
    path = os.path.join(home, ADOPTED_FILE)
    adopted = runs.json_object(path)
    if adopted.get(os.path.realpath(base), False) == version:
        return
    adopted[os.path.realpath(base)] = version
    try:
        write_atomically(path, json.dumps(adopted, indent=1, sort_keys=True))
    except OSError as e:
        log.warning(
            "could not record that this home took over %s (%s): pass --adopt-serving-dir again", base, e
        )


def _served_classes(version_dir: str) -> str:
    """' (classes a, b, c)' from a served version's label vocabulary; '' when it has none."""
    from components.artifacts import saved_model_class_names  # loaded by the run already

    try:
        names = saved_model_class_names(version_dir)
    except (OSError, ValueError):  # no vocabulary, or not UTF-8
        return ""
    shown = ", ".join(repr(n) for n in names[:10]) + (
        f" and {len(names) - 10} more" if len(names) > 10 else ""
    )
    return f" (classes {shown})" if names else ""


def check_pipeline_name_is_this_homes(config: PipelineConfig) -> None:
    """ConfigError when a shared ML Metadata database (PostgreSQL) holds artifacts of the pipeline
    under another pipeline root than this home's: another home (a team that copied a config) runs
    a pipeline of the same name there. TFX's baseline and cache are found by pipeline name, so the
    two would take each other's models as baselines and outputs from each other's cache, and
    neither home's repairs reach the other's files."""
    _check_pipeline_name(config, claim=False)


def claim_pipeline_name(config: PipelineConfig) -> None:
    """On a shared database, claim the pipeline name for this home (metadata.claim_pipeline_name),
    once every other check passed (a home refused for another reason claims nothing); ConfigError
    as check_pipeline_name_is_this_homes when another home's claim came first."""
    _check_pipeline_name(config, claim=True)


def _check_pipeline_name(config: PipelineConfig, claim: bool) -> None:
    if config.metadata_target is None or "://" in config.pipeline_root:
        return
    with metadata.open_store(config, readonly=not claim) as store:
        _, elsewhere = metadata.pipeline_roots(store, config.pipeline_name, config.pipeline_root)
        claimed = None
        if not elsewhere:
            claimed = metadata.claim_pipeline_name(
                store, config.pipeline_name, config.pipeline_root, write=claim
            )
    if elsewhere or claimed:
        where = (
            f"artifacts under {', '.join(elsewhere[:3])}"
            if elsewhere
            else f"its name claimed by the home whose pipeline root is {claimed} (its first run started)"
        )
        raise ConfigError(
            f"pipeline_name: pipeline {config.pipeline_name!r} in {config.metadata_location} also has "
            f"{where}, not under this home's {config.pipeline_root}: "
            "another home runs a pipeline of this name on the database (or this home was moved). Its "
            "models would be this home's baselines and its outputs this home's cache. Give this home "
            "its own --pipeline-name (one pipeline name per home on a shared database)"
        )


def _an_artifact_folder(pipeline_root: str) -> str | None:
    """One `<Component>/<output>/<execution id>` folder under the pipeline root, or None."""
    if "://" in pipeline_root or not os.path.isdir(pipeline_root):
        return None
    for component in sorted(os.listdir(pipeline_root)):
        outputs = os.path.join(pipeline_root, component)
        for output in sorted(os.listdir(outputs)) if os.path.isdir(outputs) else []:
            folder = os.path.join(outputs, output)
            for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
                if name.isdigit() and os.path.isdir(os.path.join(folder, name)):
                    return os.path.join(folder, name)
    return None
