"""Run records: HOME/runs/<run_id>/ holds each run's resolved config and its summary.

A run can be reproduced from its own record (`imgpipe run --config
HOME/runs/<run_id>/config.yaml`), and read back without ML Metadata.

A run writes its config and STARTED_FILE (its id, pid, host and start time) as it
starts, and its summary when it ends, finished or failed (removing STARTED_FILE). A
folder with STARTED_FILE and no summary is a run that is running, or one that died
without a word (kill -9, the OOM killer, a power cut): the next run of the home,
holding its lock, writes that run's record (local.record_dead_runs).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import socket

from imgpipe.orchestration.lock import home_held, home_lock_path
from imgpipe.orchestration.paths import write_all_atomically, write_atomically
from imgpipe.orchestration.summary import RunSummary
from pipeline.config import ConfigError, PipelineConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
STARTED_FILE = "started.json"  # a run that has not written its summary: {run_id, pid, host, started}


def run_dir(home: str, run_id: str) -> str:
    """HOME/runs/<run_id>, with the run id made safe as a folder name."""
    return os.path.join(home, "runs", re.sub(r"[^A-Za-z0-9_.-]", "_", run_id))


def write_record(config: PipelineConfig, summary: RunSummary) -> str:
    """Save the config and the summary of a finished run; return the run's folder (OSError when
    the disk refuses: `keep_record` says so in the summary instead)."""
    folder = run_dir(config.home, summary.run_id)
    config_path = os.path.join(folder, CONFIG_FILE)
    summary.run_dir = folder
    if summary.sequence is None:  # the number it was given as it started (else the next one)
        summary.sequence = _number(_marker(folder).get("sequence"))
        if summary.sequence is None and not os.path.isfile(os.path.join(folder, SUMMARY_FILE)):
            summary.sequence = next_sequence(config.home)
    # Both written in full before either is moved into place: a full disk leaves neither half written.
    write_all_atomically(
        [
            (config_path, config.dumps(config_path)),
            (os.path.join(folder, SUMMARY_FILE), _json(summary.to_dict())),
        ]
    )
    try:
        os.remove(os.path.join(folder, STARTED_FILE))
    except FileNotFoundError:
        pass
    return folder


def mark_started(config: PipelineConfig, run_id: str) -> None:
    """Write the config and STARTED_FILE of run `run_id` in its record folder as it starts, so a
    run that dies without writing its summary is known to the next run. Best effort: a disk that
    refuses is logged and the run goes on (its summary is written, or refused, at the end)."""
    folder = run_dir(config.home, run_id)
    config_path = os.path.join(folder, CONFIG_FILE)
    started = {
        "run_id": run_id,
        "sequence": next_sequence(config.home),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    try:
        write_all_atomically(
            [(config_path, config.dumps(config_path)), (os.path.join(folder, STARTED_FILE), _json(started))]
        )
    except OSError as e:
        log.warning("could not mark run %s as started in %s: %s", run_id, folder, e)


def next_sequence(home: str) -> int:
    """1 + the highest run number among the home's records and started runs (1 for the first)."""
    numbers = [
        _number(source.get("sequence"))
        for folder in _folders(home)
        for source in (_summary_or_empty(folder), _marker(folder))
    ]
    return max((n for n in numbers if n is not None), default=0) + 1


def _folders(home: str) -> list[str]:
    """Every entry of HOME/runs (record folders, started runs' folders, anything else)."""
    root = os.path.join(home, "runs")
    return [os.path.join(root, name) for name in (os.listdir(root) if os.path.isdir(root) else [])]


def _number(value: object) -> int | None:
    """A run number as a summary or STARTED_FILE holds it (an int, not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def json_object(path: str) -> dict:
    """The JSON object in file `path`, or {} (no file, unreadable, not an object)."""
    try:
        with open(path, encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _marker(folder: str) -> dict:
    """A record folder's STARTED_FILE, or {} (none, or unreadable)."""
    return json_object(os.path.join(folder, STARTED_FILE))


def run_ids(home: str) -> set[str]:
    """The ids of the runs this home recorded or started (their summaries and STARTED_FILEs)."""
    found = set()
    for folder in _folders(home):
        for source in (_marker(folder), _summary_or_empty(folder)):
            if isinstance(source.get("run_id"), str):
                found.add(source["run_id"])
    return found


def _summary_or_empty(folder: str) -> dict:
    """A record folder's summary, or {} (none, or unreadable: `read_summary` says why)."""
    return json_object(os.path.join(folder, SUMMARY_FILE))


def unfinished(home: str) -> list[tuple[str, dict]]:
    """(folder, its STARTED_FILE's content) of each run under HOME/runs that started and wrote no
    summary, newest first: running now, or dead. A marker that cannot be read counts as {}."""
    found = []
    for folder in _folders(home):
        if not os.path.isfile(os.path.join(folder, STARTED_FILE)) or os.path.isfile(
            os.path.join(folder, SUMMARY_FILE)
        ):
            continue
        found.append((folder, _marker(folder)))
    return sorted(found, key=lambda f: f[0], reverse=True)


def not_finished_message(folder: str, started: dict) -> str:
    """What a person is told of a run that started and wrote no record (`unfinished`): dead when
    the home's lock is free, else perhaps running."""
    who = ", ".join(
        f"{k} {started[k]}" for k in ("started", "pid", "host") if isinstance(started.get(k), (str, int))
    )
    # Every run holds its home's lock from start to end: free, the run is dead, whatever its
    # process id says now (a reused one may be alive).
    run_id = started.get("run_id") or os.path.basename(folder)
    home = os.path.dirname(os.path.dirname(folder))
    lock_path = home_lock_path(home)
    busy = home_held(home)
    if busy is False:
        state = "it died (kill -9, out of memory, the machine stopped): the next run of the home records it"
    elif busy and f"run {run_id}" in _lock_note(lock_path):
        state = "it is running (it holds the home's lock)"
    elif busy:
        state = "another run holds the home's lock: this one died, and that run records it"
    else:
        state = "it is running, or it died (kill -9, out of memory, the machine stopped) and the next run of the home records it"
    return f"run {run_id} has not written its record{f' ({who})' if who else ''}: {state}"


def _lock_note(path: str) -> str:
    """What the lock file says of its holder ('pid N since T, run R'), or ''."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(400)
    except OSError:
        return ""


def _write_summary(folder: str, summary: dict) -> None:
    """Write a record's summary.json to a temporary file, then rename it into place: a run killed
    or a disk filled while writing leaves the previous file (or none), never half of one."""
    write_atomically(os.path.join(folder, SUMMARY_FILE), _json(summary))


def _json(summary: dict) -> str:
    return json.dumps(summary, indent=2, sort_keys=True)


LATEST = "latest"  # names the newest run record wherever a run id is asked for


def records(home: str) -> list[str]:
    """Run record folders under HOME/runs, newest first: by their run number (`sequence`, given
    under the home's lock as each run starts; a record whose summary cannot be read comes first,
    so `latest` names it as it passes it by), then, for records from before numbers were given
    (all older than any numbered one), by when the run started, which its id says (`new_run_id`:
    the local time), or for a folder named otherwise by when its config was saved. Not by the
    clock alone: a run under another time zone (cron's and a shell's) or after the clock was set
    back made an older run `latest`; nor by file times: a home copied without them (`cp -r`), or
    a record's config opened and saved again to re-run it, did too."""
    folders = [
        folder
        for folder in _folders(home)
        if os.path.isfile(os.path.join(folder, CONFIG_FILE))
        and os.path.isfile(os.path.join(folder, SUMMARY_FILE))
    ]

    def newest_first(folder: str) -> tuple:
        summary = _summary_or_empty(folder)
        number = _number(summary.get("sequence"))
        if not summary:  # unreadable: first, so `latest` names it as it passes it by
            return (2, 0, _started(folder), folder)
        if number is not None:
            return (1, number, _started(folder), folder)
        return (0, 0, _started(folder), folder)

    return sorted(folders, key=newest_first, reverse=True)


_RUN_ID_TIME = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2})[:_](\d{2})[:_](\d{2})(\.\d+)?")


def _started(folder: str) -> float:
    """When the run of a record folder started (seconds since the epoch): from the local time its
    name begins with, else its config file's modification time."""
    m = _RUN_ID_TIME.match(os.path.basename(folder))
    if m:
        try:  # a naive datetime's timestamp() reads it as local time, as new_run_id wrote it
            when = datetime.datetime.strptime(
                f"{m.group(1)} {m.group(2)}:{m.group(3)}:{m.group(4)}", "%Y-%m-%d %H:%M:%S"
            )
            return when.timestamp() + float(m.group(5) or 0)
        except (ValueError, OverflowError, OSError):
            pass
    return os.path.getmtime(os.path.join(folder, CONFIG_FILE))


def newest_config(home: str) -> PipelineConfig | None:
    """The config of the newest run record of `home` that can be read (a damaged one is named in
    a warning and passed by), with `home` as its home; None when no record can be read."""
    for folder in records(home):
        path = os.path.join(folder, CONFIG_FILE)
        try:
            return PipelineConfig.from_yaml(path).replace(home=home)
        except Exception as e:  # noqa: BLE001 - a damaged record: an older one may do
            log.warning("run record %s cannot be read (%s): trying an older one", path, e)
    return None


def home_and_config(home: str | None, config_path: str | None) -> tuple[str, PipelineConfig | None]:
    """For a command that takes `--home DIR | --config FILE`: the home (`home`, else the config's;
    absolute) and the config read from `config_path` with that home (None without a file).
    ValueError when neither names a home or it is no directory; ConfigError, prefixed
    `--config:`, for a bad file."""
    config = None
    if config_path:
        try:
            config = PipelineConfig.from_yaml(config_path)
        except ConfigError as e:
            raise ConfigError(f"--config: {e}") from e
        home = home or config.home
    if not home:
        raise ValueError("home: give --home (a pipeline home) or --config (the pipeline's config file)")
    home = os.path.abspath(os.path.expanduser(home))
    if not os.path.isdir(home):
        raise ValueError(f"home: {home} is not a directory")
    return home, (config.replace(home=home) if config is not None else None)


def failure(summary: dict) -> str | None:
    """Why a recorded run failed (its summary's `error`), None for a run that finished."""
    return summary.get("error") or None


def find_record(home: str, run: str) -> str:
    """The folder of run `run` (a run id, its folder name, or `latest`: the newest run that
    finished, saying on stderr which newer runs failed); LookupError naming what exists."""
    folders = records(home)
    root = os.path.join(home, "runs")
    named = run_dir(home, run) if run != LATEST else None
    if named is not None and os.path.isdir(named) and named not in folders:
        for folder, started in unfinished(home):
            if folder == named:
                raise LookupError(not_finished_message(folder, started))
        missing = [f for f in (CONFIG_FILE, SUMMARY_FILE) if not os.path.isfile(os.path.join(named, f))]
        raise LookupError(f"{named} is not a run record: it has no {' and no '.join(missing)}")
    if not folders:
        raise LookupError(f"no run records in {root} (is --home right?)")
    if run == LATEST:
        for folder, started in unfinished(home):
            log.warning("%s", not_finished_message(folder, started))
        failed = []
        for folder in folders:
            try:
                summary = read_summary(folder)
            except RecordError as e:
                log.warning("%s: skipped", e)
                continue
            if failure(summary) is None:
                for newer in failed:
                    log.warning(
                        "run %s failed (%s): `latest` is the newest run that finished, %s",
                        newer.get("run_id"),
                        failure(newer),
                        summary.get("run_id"),
                    )
                return folder
            failed.append(summary)
        if not failed:
            raise LookupError(f"no readable run record in {root}")
        raise LookupError(
            f"no run in {root} finished: the newest, {failed[0].get('run_id')}, failed ({failure(failed[0])})"
        )
    wanted = run_dir(home, run)
    for folder in folders:
        if folder == wanted or os.path.basename(folder) == run:
            return folder
    newest = ", ".join(os.path.basename(f) for f in folders[:5])
    raise LookupError(f"no run {run!r} in {root} (newest: {newest})")


class RecordError(LookupError):
    """A run record that cannot be read; the message names its file and what is wrong."""


def read_summary(folder: str) -> dict:
    """The summary a run record holds (RecordError naming the file if it is missing or damaged)."""
    path = os.path.join(folder, SUMMARY_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError) as e:
        raise RecordError(f"run record {path} cannot be read: {type(e).__name__}: {e}") from None
    if not isinstance(summary, dict):
        raise RecordError(f"run record {path} cannot be read: not a JSON object")
    return summary


def update_summary(folder: str, changes: dict) -> dict:
    """Set `changes` in a run record's summary (`_write_summary`)."""
    summary = {**read_summary(folder), **changes}
    _write_summary(folder, summary)
    return summary


def keep_record(config: PipelineConfig, summary: RunSummary) -> None:
    """write_record, and when the disk refuses (full, read-only) the reason in the summary's
    `record_error` instead of an exception: the summary is still printed, and says the record
    was not saved."""
    try:
        write_record(config, summary)
    except OSError as e:
        summary.record_error = (
            f"the run's record was not saved in {run_dir(config.home, summary.run_id)}: {e}"
        )
        log.error("%s", summary.record_error)
