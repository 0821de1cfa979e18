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
   - `undo` (with `to`): the rollback being undone was a mistake, so the model served
     now is not taken out; serving again a model taken out earlier clears its mark and
     gives back the blessing that rollback withdrew, undo or not.
4. The staged copy is renamed in as a new, newest version (the Pusher's own rename),
   so a server with a "latest" policy, `tensorflow_model_server` or `imgpipe serve`,
   swaps to it with no config change, and every version stays on disk. Should the
   rename fail after ML Metadata was written, the error names what was recorded and
   the command that completes it.
It holds the home's lock (a run in progress makes it exit 75, or wait) and refuses
while an Airflow run of the pipeline is unfinished. Each rollback is appended to
HOME/rollbacks.jsonl.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import os
import shlex
import shutil
from collections.abc import Callable

from ml_metadata.proto import metadata_store_pb2

from components.gate_decision import ROLLED_BACK_KEY
from imgpipe.orchestration import metadata, runs
from imgpipe.orchestration.lock import home_lock
from imgpipe.orchestration.paths import under
from imgpipe.orchestration.prune import airflow_run_in_progress
from pipeline.config import ConfigError, PipelineConfig
from serving import model_files
from serving.model_fingerprint import ROLLBACK_LOG, log_entries

log = logging.getLogger(__name__)

LOG_FILE = ROLLBACK_LOG
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
    # {id, uri} of the served model, marked; None: unknown to ML Metadata, or an undo.
    rolled_back_model: dict | None
    restored_model: dict | None  # {id, uri} of the target's model, None when not in ML Metadata
    # Every version newer than the target taken out, as the log records it: {version, id, uri,
    # fingerprint} (id and uri None for a model ML Metadata does not know).
    marked: list[dict]
    withdrawn: list[dict]  # {blessing, model, reason}
    restored: list[dict]  # {blessing, model}: blessings an earlier rollback withdrew, given back
    baseline: dict | None  # the next run's gate baseline, {id, uri}; None: no blessed model is left
    warnings: list[str]
    reason: str = ""
    undo: bool = False
    # When the two versions' label sets differ: {served, restored (the classes each answers),
    # added, removed (as clients will see them)}; None when the same or unknown.
    class_change: dict | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _config_of(home: str) -> PipelineConfig:
    """The pipeline config of the home's newest run record (its serving dir and ML Metadata)."""
    config = runs.newest_config(home)
    if config is None:
        raise RollbackError(
            f"home: {home} has no readable run record (HOME/runs/<run id>/config.yaml): rollback takes the "
            "serving dir and ML Metadata from the newest run's record (runs under Airflow keep none)"
        )
    return config


def whole_versions(serving_dir: str) -> list[tuple[int, str]]:
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


def unfinished_rollback(
    home: str, serving_dir: str, completing: tuple[str | None, bool] | None = None
) -> str | None:
    """What to tell when the home's last rollback recorded itself (its rollbacks.jsonl entry, and
    ML Metadata after it unless it was killed first) but never served its copy (killed, or its
    rename failed) while the version it took out is still the newest: the records say a model is
    out of serving that still answers. None otherwise (no log, completed, or the serving dir
    moved on since), and when `completing` ((to, undo) of the rollback being made) is the
    command that completes it: that one says so itself."""
    last, served = None, False
    for entry in log_entries(home) or []:
        if "to_version" in entry:
            last, served = entry, False
        elif "served" in entry:
            served = True
    if last is None or served:
        return None
    versions = whole_versions(serving_dir)
    if not versions or str(versions[-1][0]) != str(last.get("from_version")):
        return None
    to = str(last.get("to_version"))
    if completing is not None and completing[0] == to and completing[1] == bool(last.get("undo")):
        log.info("this rollback completes the last one, whose copy of version %s was never served", to)
        return None
    reason, config_path = last.get("reason"), last.get("config")
    command = _retry_command(
        home,
        to,
        bool(last.get("undo")),
        reason if isinstance(reason, str) else "",
        config_path if isinstance(config_path, str) else None,
    )
    return (
        f"the last rollback ({last.get('note') or f'version {to} to be served again'}) is recorded in "
        f"{LOG_FILE} (and in ML Metadata, unless it was killed before that), but its copy of version {to} "
        "was never served (it was killed, or its "
        f"rename failed): version {versions[-1][0]}, which it took out, is still the newest in {serving_dir}; "
        f"`{command}` completes it"
    )


def _pick(
    versions: list[tuple[int, str]],
    to: str | None,
    serving_dir: str,
    taken_out: Callable[[str], bool],
    same: Callable[[str, str], bool],
    damage: Callable[[str], str | None] = lambda path: None,
) -> tuple[tuple, tuple]:
    """(served, target) among `versions`: the newest, and `to` or the newest older one holding
    another model (`same`: byte for byte, or the same weights), not one an earlier rollback took
    out (`taken_out(version path)`): rolling back twice goes further back, not forward again to
    the model the first rollback removed. Never one whose files cannot be loaded (`damage`: why,
    or None): served again, it would leave the server serving nothing."""
    from serving.version_names import version_number

    names = ", ".join(str(n) for n, _ in versions) or "none"
    if not versions:
        raise RollbackError(f"serving dir {serving_dir} holds no version: there is nothing to roll back")
    served = versions[-1]
    if to is not None:
        number = version_number(to)
        match = [v for v in versions if v[0] == number]
        if number is None:
            raise RollbackError(f"--to {to}: not a version number (a version folder's name: {names})")
        if not match:
            raise RollbackError(f"--to {to}: no such version in {serving_dir} (its versions: {names})")
        target = match[-1]
        if target[0] == served[0]:
            raise RollbackError(
                f"--to {to}: version {to} is the one served now (the newest in {serving_dir})"
            )
        if same(target[1], served[1]):
            raise RollbackError(
                f"--to {to}: version {to} holds the same model (byte for byte, or the same weights) as the "
                f"served version {served[0]}"
            )
        why = damage(target[1])
        if why:
            raise RollbackError(f"--to {to}: version {to} cannot be loaded, so it cannot be served: {why}")
        return served, target
    skipped, damaged = [], []
    for candidate in reversed(versions[:-1]):
        if same(candidate[1], served[1]):
            continue
        if taken_out(candidate[1]):
            skipped.append(str(candidate[0]))
            continue
        why = damage(candidate[1])
        if why:
            log.warning("version %d is passed over: its files cannot be loaded (%s)", candidate[0], why)
            damaged.append(str(candidate[0]))
            continue
        return served, candidate
    also = ""
    if len(skipped) == 1:
        also = f"; version {skipped[0]} holds a model rolled back earlier (--to {skipped[0]} serves it again)"
    elif skipped:
        also = (
            f"; versions {', '.join(skipped)} hold models rolled back earlier (--to VERSION serves one again)"
        )
    if damaged:
        also += f"; {'version' if len(damaged) == 1 else 'versions'} {', '.join(damaged)} cannot be loaded"
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
    undo: bool = False,
) -> RollbackResult:
    """Serve the model of version `to` (default: the newest older version holding another model,
    not one taken out before) again, as a new version, and record that the versions after it were
    rolled back. `undo`: the rollback being undone was a mistake, so the model served now is not
    marked.

    The pipeline's serving dir and ML Metadata come from `config_path` when given (a home whose
    runs keep no record: Airflow), else from the home's newest run record; `home`, when given,
    is the home either way. Raises RollbackError for a home, config or version that does not
    allow it, RollbackFailed when the copy fails, lock.LockBusy while a run holds the home.
    """
    if undo and to is None:
        raise RollbackError("--undo: give --to VERSION, the version taken out that is to be served again")
    try:
        home, config = runs.home_and_config(home, config_path)
    except (ValueError, ConfigError) as e:
        raise RollbackError(str(e)) from e
    config = (config.replace(home=home) if config is not None else _config_of(home)).resolved()
    serving_dir = config.model_serving_dir
    if "://" in serving_dir:
        raise RollbackError(
            f"serving dir {serving_dir}: rollback works on a local (or mounted) serving dir; on an object "
            "store copy the version folder yourself"
        )
    if dry_run and not os.access(home, os.W_OK):  # a read-only home: nothing can run in it
        return _rollback_holding_lock(home, config, serving_dir, to, reason, dry_run, undo, config_path)
    with home_lock(home, wait=lock_wait, holder="rollback", refused="rollback"):
        return _rollback_holding_lock(home, config, serving_dir, to, reason, dry_run, undo, config_path)


def _fingerprint(version_path: str) -> str | None:
    from serving.model_fingerprint import weights_fingerprint

    try:
        return weights_fingerprint(version_path)
    except Exception as e:  # noqa: BLE001 - an unreadable version: no fingerprint, said once
        log.warning("cannot read the model of %s (%s): its weights are not recorded", version_path, e)
        return None


def _retry_command(home: str, to: str, undo: bool, reason: str, config_path: str | None) -> str:
    words = ["imgpipe", "rollback", "--home", home, "--to", to]
    if config_path:
        words += ["--config", config_path]
    if reason:
        words += ["--reason", reason]
    if undo:
        words.append("--undo")
    return shlex.join(words)


def _rollback_holding_lock(
    home: str,
    config: PipelineConfig,
    serving_dir: str,
    to: str | None,
    reason: str,
    dry_run: bool,
    undo: bool,
    config_path: str | None = None,
) -> RollbackResult:
    from components import pusher
    from serving.model_fingerprint import rolled_back_models

    warnings: list[str] = []
    unfinished = unfinished_rollback(home, serving_dir, completing=(to, undo))
    if unfinished:
        warnings.append(unfinished)
    refused = rolled_back_models(os.path.join(home, LOG_FILE))
    with metadata.open_store(config, readonly=dry_run, create_database=False) as store:
        busy = airflow_run_in_progress(store, config.pipeline_name, "roll back", before_pusher=True)
        if busy:
            raise RollbackError(busy)
        models = _models(store, config.pipeline_root)
        # Each version's model and weights, read once: the target's pick, the versions taken out
        # and the served one ask for the same folders.
        fingerprint = functools.cache(_fingerprint)
        holding = functools.cache(lambda version_path: _holding(models, version_path))

        def taken_out(version_path: str) -> bool:
            model = holding(version_path)
            if model is not None and ROLLED_BACK_KEY in model.custom_properties:
                return True
            return bool(refused) and fingerprint(version_path) in refused

        def same(a: str, b: str) -> bool:
            if pusher.same_model(a, b):
                return True
            fa = fingerprint(a)
            return fa is not None and fa == fingerprint(b)

        versions = whole_versions(serving_dir)
        served, target = _pick(versions, to, serving_dir, taken_out, same, model_files.damage)
        good = holding(target[1])
        # Every version newer than the target is taken out (an undo: the served one excepted).
        newer = [v for v in versions if v[0] > target[0] and not (undo and same(v[1], served[1]))]
        held = [(v, holding(v[1])) for v in newer]
        bad = holding(served[1])
        if bad is None and good is None:
            raise RollbackError(
                f"neither the served version {served[0]} nor version {target[0]} holds a model of pipeline "
                f"{config.pipeline_name!r} in {config.metadata_location}: is {home} the home whose runs push to "
                f"{serving_dir}?"
            )
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = f"rolled back on {when}: served version {served[0]} replaced by version {target[0]}'s model"
        if reason:
            text += f" ({reason})"
        target_fingerprint = fingerprint(target[1])
        marked, to_mark = [], {}
        for v, m in held:
            weights = fingerprint(v[1])
            if (m is not None and good is not None and m.id == good.id) or (
                weights is not None and weights == target_fingerprint
            ):
                continue  # the target's own model (an earlier copy of it): not taken out
            marked.append(
                {
                    "version": str(v[0]),
                    "id": m.id if m is not None else None,
                    "uri": m.uri if m is not None else None,
                    "fingerprint": weights,
                }
            )
            if m is not None:
                to_mark[m.id] = m
        if bad is None:
            warnings.append(
                f"the served version {served[0]} holds no model this home's ML Metadata knows (copied in by "
                "hand, or pruned): a candidate with its weights is refused by the rollback log only"
            )
        if good is None:
            warnings.append(
                f"version {target[0]} holds no model this home's ML Metadata knows (copied in by hand, or "
                "pruned): every blessing is withdrawn, so the next run's gate has no model to compare with "
                "(it judges on the floors alone)"
            )
        withdrawn, restored = _plan_blessings(store, config.pipeline_root, bad, good, undo, text)
        class_change = _class_change(served[1], target[1])
        if class_change is not None:
            warnings.append(_class_change_text(class_change, served[0], target[0]))
        if dry_run:
            warnings += _space_problems(target[1], serving_dir)
        staging = None
        if not dry_run:
            # The copy first: a full disk or a read-only serving dir fails here, with nothing changed.
            try:
                staging = pusher.stage_copy(target[1], serving_dir)
            except Exception as e:  # noqa: BLE001 - TensorFlow's file errors are not OSErrors
                raise RollbackFailed(
                    f"version {target[0]} could not be copied into {serving_dir}: {_short(e)}; nothing was changed"
                ) from e
            entry = {
                "from_version": str(served[0]),
                "to_version": str(target[0]),
                "undo": undo,
                "marked": marked,
                "restored_model": dict(_ref(good) or {}, fingerprint=target_fingerprint),
                "note": text,
                # What the command that completes it repeats, should it never serve its copy.
                "reason": reason,
                "config": os.path.abspath(config_path) if config_path else None,
            }
            try:
                # The log before ML Metadata: what refuses a model trained again to these weights.
                _append_log(home, entry)
            except OSError as e:
                shutil.rmtree(staging, ignore_errors=True)
                raise RollbackFailed(
                    f"{os.path.join(home, LOG_FILE)} could not be written: {e}; nothing was changed"
                ) from e
            try:
                _record(store, list(to_mark.values()), good, withdrawn, restored, text)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        baseline = _next_baseline(store, config.pipeline_root, withdrawn, restored)
    if good is not None and (baseline is None or baseline["id"] != good.id):
        warnings.append(
            f"version {target[0]}'s model ({good.id}) has no blessing left to give back: the next run's gate "
            + (f"compares with model {baseline['id']}" if baseline else "has no model to compare with")
        )
    unread = [m["version"] for m in marked if m["fingerprint"] is None]
    if unread:
        warnings.append(
            f"the weights of version(s) {', '.join(unread)} could not be read: a model trained again to them "
            "is not refused (a cached run still is)"
        )
    new_version = None
    if staging is not None:
        try:
            new_version, _ = pusher.rename_in(staging, serving_dir)
        except Exception as e:  # noqa: BLE001
            raise RollbackFailed(
                f"version {target[0]}'s copy could not be renamed into {serving_dir}: {_short(e)}. ML Metadata "
                f"and {LOG_FILE} already record the rollback ({_done_text(to_mark, restored, withdrawn)}); "
                f"`{_retry_command(home, str(target[0]), undo, reason, config_path)}` serves the copy"
            ) from e
        try:
            _append_log(
                home,
                {"served": {"serving_dir": serving_dir, "version": new_version, "copy_of": str(target[0])}},
            )
        except OSError as e:
            warnings.append(
                f"{LOG_FILE} could not record that version {new_version} is the copy ({e}): `prune "
                "--keep-versions` will not count it as this home's, `drift --run served` will not follow it"
            )
    result = RollbackResult(
        home=home,
        serving_dir=serving_dir,
        dry_run=dry_run,
        from_version=str(served[0]),
        to_version=str(target[0]),
        new_version=new_version,
        rolled_back_model=None if undo else _ref(bad),
        restored_model=_ref(good),
        marked=marked,
        withdrawn=[{"blessing": b.id, "model": m, "reason": r} for b, m, r in withdrawn],
        restored=[{"blessing": b.id, "model": m} for b, m in restored],
        baseline=baseline,
        warnings=warnings,
        reason=reason,
        undo=undo,
        class_change=class_change,
    )
    for w in warnings:
        log.warning("%s", w)
    return result


def _class_change(served_dir: str, target_dir: str) -> dict | None:
    """How the label set clients get changes when `target_dir`'s model replaces `served_dir`'s
    (see RollbackResult.class_change); None when it does not, or a vocabulary cannot be read."""
    from components.artifacts import saved_model_class_names

    try:
        served, restored = saved_model_class_names(served_dir), saved_model_class_names(target_dir)
    except Exception:  # noqa: BLE001 - no vocabulary (copied in by hand), not UTF-8, unreadable (TF's errors)
        return None
    if served == restored:
        return None
    return {
        "served": served,
        "restored": restored,
        "added": [c for c in restored if c not in served],
        "removed": [c for c in served if c not in restored],
    }


def _class_change_text(change: dict, served: int, target: int) -> str:
    def named(classes: list[str]) -> str:
        return ", ".join(repr(c) for c in classes[:10]) + (
            f" and {len(classes) - 10} more" if len(classes) > 10 else ""
        )

    parts = []
    if change["added"]:
        parts.append(f"answers {named(change['added'])}, which version {served} does not")
    if change["removed"]:
        parts.append(f"no longer answers {named(change['removed'])}")
    what = (
        "; ".join(parts)
        or "gives the same classes in another order (clients reading scores by index get others)"
    )
    return (
        f"the classes change: version {target}'s model ({named(change['restored'])}) replaces version "
        f"{served}'s ({named(change['served'])}): it {what}. Clients that know the served label set "
        "must be ready for it"
    )


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


def _done_text(to_mark: dict, restored: list, withdrawn: list) -> str:
    parts = []
    if to_mark:
        parts.append("marked model(s) " + ", ".join(str(i) for i in sorted(to_mark)))
    if restored:
        parts.append("gave back the blessing of model(s) " + ", ".join(str(m) for _, m in restored))
    if withdrawn:
        parts.append(f"withdrew {len(withdrawn)} blessing(s)")
    return "; ".join(parts) or "nothing to change there"


def _space_problems(target_path: str, serving_dir: str) -> list[str]:
    """Why the copy would fail, as a dry run can tell: a serving dir not writable, too little room."""
    from imgpipe.orchestration import scratch

    if not os.access(serving_dir, os.W_OK):
        return [f"the serving dir {serving_dir} is not writable: the copy would fail"]
    need = scratch.tree_bytes(target_path)
    free = shutil.disk_usage(serving_dir).free
    if free < need:
        return [f"the serving dir {serving_dir} has {free} bytes free; the copy needs {need}: it would fail"]
    return []


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


def _record(store, to_mark: list, good, withdrawn: list, restored: list, text: str) -> None:
    fresh = [m for m in to_mark if ROLLED_BACK_KEY not in m.custom_properties]  # the first note stays
    for model in fresh:
        model.custom_properties[ROLLED_BACK_KEY].string_value = text
    if fresh:
        store.put_artifacts(fresh)
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


def _append_log(home: str, entry: dict) -> None:
    """One JSON line appended to HOME/rollbacks.jsonl and flushed to disk (OSError when it cannot be)."""
    line = {"at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **entry}
    with open(os.path.join(home, LOG_FILE), "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())
