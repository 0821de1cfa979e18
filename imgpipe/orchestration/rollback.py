"""Roll a pipeline home's served model back to an earlier pushed version, and keep it back.

A pushed model can pass every check and still misbehave in production (inputs the
eval split did not hold, a downstream consumer it breaks). `rollback_home` puts an
earlier version back in front of TF Serving and makes the pipeline agree:

1. The served version is the newest version folder of the model's serving dir (the
   "latest" policy of serving/deploy/models.config). The target is `to` or, by
   default, the newest older version holding a different model.
2. The target's files are copied into a staging folder of the serving dir (no server
   loads it). A full disk fails here, with nothing changed.
3. ML Metadata (the home's store, or its PostgreSQL one):
   - the Model artifact being served is marked `rolled_back` (why, when, from which
     version to which). The Evaluator refuses to bless a model so marked and the
     Pusher refuses to push it, so a later run whose Trainer is served from TFX's
     cache (same data, same settings) does not push it again; a model trained anew
     is judged as usual;
   - every blessing of a model newer than the target's (the rolled-back one's
     included) is withdrawn, so the next run's gate compares with the model served
     (TFX's LatestBlessedModelStrategy takes the blessed model of the highest id);
     every blessing, when ML Metadata does not know the target's model;
   - serving again a model an earlier rollback took out undoes that rollback: its
     mark is cleared and the blessing that rollback withdrew is given back, and the
     model served until then is not marked (it did not misbehave).
4. The staged copy is renamed in as a new, newest version (the Pusher's own rename),
   so a server with a "latest" policy, `tensorflow_model_server` or `imgpipe serve`,
   swaps to it with no config change, and every version stays on disk. Should the
   rename fail after ML Metadata was written, the error says so and the same command
   run again completes the rollback.
It holds the home's lock (a run in progress makes it exit 75, or wait) and refuses
while an Airflow run of the pipeline is unfinished. Each rollback is appended to
HOME/rollbacks.jsonl.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
from collections.abc import Callable

from ml_metadata.proto import metadata_store_pb2

from components.gate_decision import ROLLED_BACK_KEY
from imgpipe.orchestration import metadata, runs
from imgpipe.orchestration.lock import home_lock_path, run_lock
from imgpipe.orchestration.paths import under
from imgpipe.orchestration.prune import airflow_run_in_progress
from pipeline.config import ConfigError, PipelineConfig

log = logging.getLogger(__name__)

LOG_FILE = "rollbacks.jsonl"
_LIVE = metadata_store_pb2.Artifact.LIVE


class RollbackError(ValueError):
    """The home cannot be rolled back as asked (no record, no earlier version, a bad --to)."""


class RollbackFailed(RuntimeError):
    """The rollback was attempted and failed (the copy); the message says what was changed."""


@dataclasses.dataclass
class RollbackResult:
    home: str
    serving_dir: str
    dry_run: bool
    from_version: str  # the version served before
    to_version: str  # the version whose model is served again
    new_version: str | None  # the version the target was pushed again as (None in a dry run)
    rolled_back_model: dict | None  # {id, uri}: the model marked, None when ML Metadata has no record of it
    restored_model: dict | None  # {id, uri} of the target's model, None when not in ML Metadata
    withdrawn: list[dict]  # {blessing, model, reason}
    restored: list[dict]  # {blessing, model}: blessings an earlier rollback withdrew, given back
    baseline: dict | None  # the next run's gate baseline, {id, uri}; None: no blessed model is left
    warnings: list[str]
    reason: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _config_of(home: str) -> PipelineConfig:
    """The pipeline config of the home's newest run record (its serving dir and ML Metadata)."""
    for folder in runs.records(home):
        path = os.path.join(folder, runs.CONFIG_FILE)
        try:
            return PipelineConfig.from_yaml(path).replace(home=home)
        except Exception as e:  # noqa: BLE001 - a damaged record: an older one may do
            log.warning("run record %s cannot be read (%s): trying an older one", path, e)
    raise RollbackError(
        f"home: {home} has no readable run record (HOME/runs/<run id>/config.yaml): rollback takes the "
        "serving dir and ML Metadata from the newest run's record (runs under Airflow keep none)"
    )


def _versions(serving_dir: str) -> list[tuple[int, str]]:
    """(number, path) of each whole version folder (its saved_model.pb is there), oldest first."""
    from components import pusher
    from serving.version_names import version_number

    if not os.path.isdir(serving_dir):
        return []
    out = []
    for name in os.listdir(serving_dir):
        number = version_number(name)
        path = os.path.join(serving_dir, name)
        if number is not None and os.path.isfile(os.path.join(path, pusher.SAVED_MODEL)):
            out.append((number, path))
    return sorted(out)


def _pick(
    versions: list[tuple[int, str]], to: str | None, serving_dir: str, taken_out: Callable[[str], bool]
) -> tuple[tuple, tuple]:
    """(served, target) among `versions`: the newest, and `to` or the newest older one holding
    another model, not one an earlier rollback took out (`taken_out(version path)`): rolling back
    twice goes further back, not forward again to the model the first rollback removed."""
    from components import pusher
    from serving.version_names import version_number

    names = ", ".join(str(n) for n, _ in versions) or "none"
    if not versions:
        raise RollbackError(f"serving dir {serving_dir} holds no version: there is nothing to roll back")
    served = versions[-1]
    if to is not None:
        number = version_number(to)
        match = [v for v in versions if v[0] == number]
        if number is None or not match:
            raise RollbackError(f"--to {to}: no such version in {serving_dir} (its versions: {names})")
        target = match[-1]
        if target[0] == served[0]:
            raise RollbackError(
                f"--to {to}: version {to} is the one served now (the newest in {serving_dir})"
            )
        if pusher.same_model(target[1], served[1]):
            raise RollbackError(
                f"--to {to}: version {to} holds the same model, byte for byte, as the served version {served[0]}"
            )
        return served, target
    skipped = []
    for candidate in reversed(versions[:-1]):
        if pusher.same_model(candidate[1], served[1]):
            continue
        if taken_out(candidate[1]):
            skipped.append(str(candidate[0]))
            continue
        return served, candidate
    also = (
        f"; versions {', '.join(skipped)} hold models rolled back earlier (--to VERSION serves one again)"
        if skipped
        else ""
    )
    raise RollbackError(
        f"serving dir {serving_dir}: no earlier version holds another model than the served version "
        f"{served[0]} (its versions: {names}){also}; nothing to roll back to"
    )


def _models(store, pipeline_root: str) -> list[metadata_store_pb2.Artifact]:
    """This pipeline's LIVE Model artifacts whose serving files exist, newest first."""
    from tfx.utils import path_utils

    from components import pusher

    found = []
    for a in store.get_artifacts_by_type("Model"):
        if a.state != _LIVE or not under(a.uri, pipeline_root):
            continue
        if os.path.isfile(os.path.join(path_utils.serving_model_path(a.uri), pusher.SAVED_MODEL)):
            found.append(a)
    return sorted(found, key=lambda a: a.id, reverse=True)


def _holding(models: list, version_path: str):
    """The newest Model artifact whose serving files are byte-identical to `version_path`, or None."""
    from tfx.utils import path_utils

    from components import pusher

    for m in models:
        if pusher.same_model(path_utils.serving_model_path(m.uri), version_path):
            return m
    return None


def _ref(model) -> dict | None:
    return None if model is None else {"id": model.id, "uri": model.uri}


def rollback_home(
    home: str | None,
    to: str | None = None,
    reason: str = "",
    dry_run: bool = False,
    lock_wait: float = 0.0,
    config_path: str | None = None,
) -> RollbackResult:
    """Serve the model of version `to` (default: the newest older version holding another model)
    again, as a new version, and record in ML Metadata that the served one was rolled back.

    The pipeline's serving dir and ML Metadata come from `config_path` when given (a home whose
    runs keep no record: Airflow), else from the home's newest run record; `home`, when given,
    is the home either way. Raises RollbackError for a home, config or version that does not
    allow it, lock.LockBusy while a run holds the home.
    """
    if config_path:
        try:
            config = PipelineConfig.from_yaml(config_path)
        except ConfigError as e:
            raise RollbackError(f"--config: {e}") from e
        if home:
            config = config.replace(home=home)
        home = config.home
    if not home:
        raise RollbackError("home: give --home (a pipeline home) or --config (the pipeline's config file)")
    home = os.path.abspath(os.path.expanduser(home))
    if not os.path.isdir(home):
        raise RollbackError(f"home: {home} is not a directory")
    config = (config.replace(home=home) if config_path else _config_of(home)).resolved()
    serving_dir = config.model_serving_dir
    if "://" in serving_dir:
        raise RollbackError(
            f"serving dir {serving_dir}: rollback works on a local (or mounted) serving dir; on an object "
            "store copy the version folder yourself"
        )
    with run_lock(home_lock_path(home), wait=lock_wait, holder="rollback", refused="rollback"):
        return _rollback_holding_lock(home, config, serving_dir, to, reason, dry_run)


def _rollback_holding_lock(
    home: str, config: PipelineConfig, serving_dir: str, to: str | None, reason: str, dry_run: bool
) -> RollbackResult:
    from components import pusher

    warnings: list[str] = []
    with metadata.open_store(config, readonly=dry_run) as store:
        busy = airflow_run_in_progress(store, config.pipeline_name, "roll back", before_pusher=True)
        if busy:
            raise RollbackError(busy)
        models = _models(store, config.pipeline_root)

        def taken_out(version_path: str) -> bool:
            model = _holding(models, version_path)
            return model is not None and ROLLED_BACK_KEY in model.custom_properties

        served, target = _pick(_versions(serving_dir), to, serving_dir, taken_out)
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = f"rolled back on {when}: served version {served[0]} replaced by version {target[0]}'s model"
        if reason:
            text += f" ({reason})"
        bad = _holding(models, served[1])
        good = _holding(models, target[1])
        # Serving again a model an earlier rollback took out undoes that rollback: the model it
        # replaced did not misbehave, so it is not marked (its blessings go if newer).
        undo = good is not None and ROLLED_BACK_KEY in good.custom_properties
        marked = None if undo else bad
        if bad is None:
            warnings.append(
                f"the served version {served[0]} holds no model this home's ML Metadata knows (copied in by "
                "hand, or pruned): nothing stops a later run from pushing that model again"
            )
        if good is None:
            warnings.append(
                f"version {target[0]} holds no model this home's ML Metadata knows (copied in by hand, or "
                "pruned): every blessing is withdrawn, so the next run's gate has no model to compare with "
                "(it judges on the floors alone)"
            )
        withdrawn, restored = _plan_blessings(store, config.pipeline_root, bad, good, undo, text)
        staging = None
        if not dry_run:
            # The copy first: a full disk fails here, before anything is changed.
            try:
                staging = pusher.stage_copy(target[1], serving_dir)
            except OSError as e:
                raise RollbackFailed(
                    f"version {target[0]} could not be copied into {serving_dir}: {e}; nothing was changed"
                ) from e
            try:
                _record(store, marked, good, withdrawn, restored, text)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        baseline = _next_baseline(store, config.pipeline_root, withdrawn, restored)
    if good is not None and (baseline is None or baseline["id"] != good.id):
        warnings.append(
            f"version {target[0]}'s model ({good.id}) has no blessing left to give back: the next run's gate "
            + (f"compares with model {baseline['id']}" if baseline else "has no model to compare with")
        )
    new_version = None
    if staging is not None:
        try:
            new_version, _ = pusher.rename_in(staging, serving_dir)
        except OSError as e:
            raise RollbackFailed(
                f"version {target[0]}'s copy could not be renamed into {serving_dir}: {e}. ML Metadata already "
                f"records the rollback (version {served[0]}'s model refused); run the same command again to "
                "serve the copy"
            ) from e
        _append_log(home, served, target, new_version, marked, good, text)
    result = RollbackResult(
        home=home,
        serving_dir=serving_dir,
        dry_run=dry_run,
        from_version=str(served[0]),
        to_version=str(target[0]),
        new_version=new_version,
        rolled_back_model=_ref(marked),
        restored_model=_ref(good),
        withdrawn=[{"blessing": b.id, "model": m, "reason": r} for b, m, r in withdrawn],
        restored=[{"blessing": b.id, "model": m} for b, m in restored],
        baseline=baseline,
        warnings=warnings,
        reason=reason,
    )
    for w in warnings:
        log.warning("%s", w)
    return result


def _model_id(blessing) -> int | None:
    prop = blessing.custom_properties.get("current_model_id")
    return int(prop.int_value) if prop is not None and prop.int_value else None


def _plan_blessings(store, pipeline_root: str, bad, good, undo: bool, text: str) -> tuple[list, list]:
    """([(blessing, model id, reason)] to withdraw, [(blessing, model id)] to give back).

    Withdrawn, so that the blessed model of the highest id (the next baseline) is the target's:
    every blessed blessing of a model newer than the target's, and the served model's unless the
    rollback undoes an earlier one; every blessing when the target's model is unknown (nothing
    blessed is served). Given back: the target model's newest blessing that an earlier rollback
    withdrew, when no blessing of it still stands.
    """
    blessings = [a for a in store.get_artifacts_by_type("ModelBlessing") if under(a.uri, pipeline_root)]
    live_blessed = [a for a in blessings if a.state == _LIVE and metadata.int_prop(a, "blessed") == 1]
    withdraw = []
    for b in live_blessed:
        model = _model_id(b)
        if model is None or (good is not None and model == good.id):
            continue
        if bad is not None and model == bad.id and not undo:
            withdraw.append((b, model, text))
        elif good is None or model > good.id:
            withdraw.append((b, model, f"superseded: {text}"))
    restore = []
    if good is not None and not any(_model_id(b) == good.id for b in live_blessed):
        earlier = [
            b
            for b in blessings
            if _model_id(b) == good.id
            and metadata.int_prop(b, metadata.EVALUATOR_BLESSED_KEY) == 1
            and metadata.WITHDRAWN_KEY in b.custom_properties
            and b.custom_properties[metadata.WITHDRAWN_KEY].string_value.startswith(
                ("rolled back", "superseded")
            )
        ]
        if earlier:
            newest = max(earlier, key=lambda b: b.id)
            restore.append((newest, good.id))
    return withdraw, restore


def _record(store, marked, good, withdrawn: list, restored: list, text: str) -> None:
    if marked is not None:
        marked.custom_properties[ROLLED_BACK_KEY].string_value = text
        store.put_artifacts([marked])
    if good is not None and ROLLED_BACK_KEY in good.custom_properties:
        del good.custom_properties[ROLLED_BACK_KEY]  # chosen again: no longer refused
        store.put_artifacts([good])
        # The refusals of it while it was marked: out of TFX's cache, so the next run with the
        # same inputs judges it again instead of reusing "not blessed: rolled back".
        refusals = [
            b
            for b in store.get_artifacts_by_type("ModelBlessing")
            if _model_id(b) == good.id and b.state == _LIVE and metadata.int_prop(b, "blessed") == 0
        ]
        metadata.retire_from_cache(store, refusals, metadata_store_pb2.Artifact.ABANDONED, "rolled forward")
    for blessing, _, why in withdrawn:
        metadata.withdraw(store, blessing, why, runs_finished=True)
    for blessing, _ in restored:
        blessing.state = _LIVE
        blessing.custom_properties["blessed"].int_value = 1
        del blessing.custom_properties[metadata.WITHDRAWN_KEY]
        store.put_artifacts([blessing])


def _next_baseline(store, pipeline_root: str, withdrawn: list, restored: list) -> dict | None:
    """The model the next run's gate compares with (TFX's LatestBlessedModelStrategy: the LIVE
    model of the highest id with a LIVE blessing saying blessed), as it will be once `withdrawn`
    and `restored` are applied."""
    gone = {b.id for b, _, _ in withdrawn}
    back = {b.id for b, _ in restored}
    ids = {
        _model_id(b)
        for b in store.get_artifacts_by_type("ModelBlessing")
        if under(b.uri, pipeline_root)
        and b.id not in gone
        and (b.id in back or (b.state == _LIVE and metadata.int_prop(b, "blessed") == 1))
    }
    ids.discard(None)
    live = [m for m in (store.get_artifacts_by_id(sorted(ids)) if ids else []) if m.state == _LIVE]
    return _ref(max(live, key=lambda m: m.id)) if live else None


def _append_log(home: str, served, target, new_version: str, bad, good, text: str) -> None:
    line = {
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "from_version": str(served[0]),
        "to_version": str(target[0]),
        "new_version": new_version,
        "rolled_back_model": _ref(bad),
        "restored_model": _ref(good),
        "note": text,
    }
    try:
        with open(os.path.join(home, LOG_FILE), "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
    except OSError as e:  # the rollback is done and recorded in ML Metadata; only the log line is lost
        log.warning("could not append to %s: %s", os.path.join(home, LOG_FILE), e)
