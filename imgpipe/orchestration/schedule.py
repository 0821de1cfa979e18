"""Recurring runs: cron and systemd for local runs, Vertex AI schedules and KFP recurring runs.

Local runs never overlap: the scheduled command is `imgpipe run --lock-file
PATH` (imgpipe/orchestration/lock.py). `local_schedule` writes the run's config beside the pipeline home and returns a
crontab line (and, on request, a systemd .service/.timer pair) that runs
`imgpipe run --config FILE --lock-file LOCK`. Vertex AI schedules and KFP
recurring runs are created from a compiled spec (`imgpipe compile`), each with
at most one run in flight.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Sequence
from typing import Any

from imgpipe.orchestration.lock import EXIT_LOCKED, home_lock_path
from imgpipe.orchestration.paths import write_all_atomically
from imgpipe.orchestration.weights import check_weights_file
from pipeline.beam import beam_pipeline_args
from pipeline.config import ConfigError, PipelineConfig, folder_problem, leaves
from pipeline.metadata_url import check_password_file, for_a_later_process, parse_metadata_url

log = logging.getLogger(__name__)


class ScheduleError(ValueError):
    """A schedule request is invalid; the message names the bad value."""


# --------------------------------------------------------------------------- cron
_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_ITEM = re.compile(r"^(\*|\d+(?:-\d+)?)(?:/(\d+))?$")


_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


def _numbers_for_names(value: str, names: tuple[str, ...], first: int) -> str:
    """A month or day-of-week field with its three-letter names (any case) as numbers."""
    return re.sub(
        r"[A-Za-z]+",
        lambda m: str(names.index(m.group().upper()) + first) if m.group().upper() in names else m.group(),
        value,
    )


def _has_control(text: str, allowed: str = "") -> bool:
    """Whether `text` holds a control character (C0 or DEL) other than those in `allowed`: a line
    break splits a crontab line or adds lines to a unit."""
    return any((ord(c) < 32 or ord(c) == 127) and c not in allowed for c in text)


def parse_cron(expr: str) -> list[str]:
    """The five fields of a standard cron expression (macros expanded, month and weekday names
    as numbers); ScheduleError if invalid.

    Supports numbers, '*', lists, ranges, steps, and JAN-DEC / SUN-SAT in their fields.
    """
    if _has_control(expr, allowed="\t"):
        raise ScheduleError(
            f"cron {expr!r}: holds a line break or another control character (a crontab line is one line)"
        )
    if expr.strip() == "@reboot":
        raise ScheduleError("cron '@reboot': runs at a machine's start, not on a schedule; give times")
    expr = _MACROS.get(expr.strip(), expr.strip())
    fields = expr.split()
    if len(fields) != 5:
        raise ScheduleError(
            f"cron {expr!r}: expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}"
        )
    fields[3] = _numbers_for_names(fields[3], _MONTHS, 1)
    fields[4] = _numbers_for_names(fields[4], _DAYS, 0)
    for value, (name, low, high) in zip(fields, _FIELDS, strict=True):
        for item in value.split(","):
            m = _ITEM.match(item)
            if not m:
                raise ScheduleError(
                    f"cron {expr!r}: {name} field {value!r} is not numbers, '*', ranges or steps"
                    + (" (names are three letters: JAN, MON)" if name in ("month", "day of week") else "")
                )
            if m.group(1) != "*":
                bounds = [int(x) for x in m.group(1).split("-")]
                if any(not low <= b <= high for b in bounds) or bounds[0] > bounds[-1]:
                    raise ScheduleError(f"cron {expr!r}: {name} {m.group(1)} is outside {low}-{high}")
            if m.group(2) is not None and int(m.group(2)) == 0:
                raise ScheduleError(f"cron {expr!r}: {name} step must be >= 1")
    _check_some_day(expr, fields)
    return fields


_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February as in a leap year


def _values(value: str, low: int, high: int) -> set[int]:
    """The numbers a validated cron field stands for."""
    out: set[int] = set()
    for item in value.split(","):
        m = _ITEM.match(item)
        assert m  # validated by the caller
        start, end = (low, high) if m.group(1) == "*" else [int(x) for x in (m.group(1).split("-") * 2)[:2]]
        out.update(range(start, end + 1, int(m.group(2) or 1)))
    return out


def _check_some_day(expr: str, fields: list[str]) -> None:
    """ScheduleError when the day-of-month and month fields name no real date (`0 3 31 2 *`, `0 3
    30 2 *`): cron would accept the line and never run it. With a day of week also set, cron runs
    on either, so the line still runs."""
    dom, month, dow = fields[2], fields[3], fields[4]
    if dow != "*":
        return
    days, months = _values(dom, 1, 31), _values(month, 1, 12)
    if not any(day <= _DAYS_IN_MONTH[m - 1] for m in months for day in days):
        raise ScheduleError(
            f"cron {expr!r}: day of month {dom} never falls in month {month}: the schedule would never run"
        )


_DOW = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


_SYSTEMD_WEEK = (1, 2, 3, 4, 5, 6, 0)  # cron's day numbers in systemd's week, Monday first


def _weekdays(value: str) -> str:
    """A cron day-of-week field as systemd's weekday list ("" for every day).

    Cron's days run 0-7, both ends Sunday, so `0-6`, `SUN-SAT` and `0-7` are every day and
    `0-2` is Sunday to Tuesday; systemd's week runs Monday to Sunday, and a range may not start
    on Sunday ("Sun..Sat" is refused, "Sun..Sun" is Sundays only). So the days are expanded
    and written again as Monday-first runs, Sunday last: `0-2` is "Mon..Tue,Sun".
    """
    days = {d % 7 for d in _values(value, 0, 7)}
    if len(days) == 7:
        return ""
    runs: list[list[int]] = []  # runs of consecutive days, as positions in systemd's week
    for position, day in enumerate(_SYSTEMD_WEEK):
        if day in days:
            if runs and runs[-1][-1] == position - 1:
                runs[-1].append(position)
            else:
                runs.append([position])
    parts = []
    for run in runs:
        first, last = _DOW[_SYSTEMD_WEEK[run[0]]], _DOW[_SYSTEMD_WEEK[run[-1]]]
        if len(run) == 1:
            parts.append(first)
        elif len(run) == 2:
            parts.append(f"{first},{last}")
        else:
            parts.append(f"{first}..{last}")
    return ",".join(parts)


def _calendar_field(value: str, first: str = "00") -> str:
    """One cron field as systemd writes it; `first` is where `*/N` starts (cron counts days of the
    month and months from 1, minutes and hours from 0)."""
    parts = []
    for item in value.split(","):
        m = _ITEM.match(item)
        assert m  # parse_cron validated it
        base, step = m.group(1), m.group(2)
        if base != "*":
            base = "..".join(f"{int(x):02d}" for x in base.split("-"))
        if step and ".." in base:  # a stepped range: its values listed (cron's 0-30/5 is 0,5,...,30)
            low, high = (int(x) for x in m.group(1).split("-"))
            parts.extend(f"{v:02d}" for v in range(low, high + 1, int(step)))
        elif step:
            parts.append(f"{first if base == '*' else base}/{step}")
        else:
            parts.append(base)
    return ",".join(parts)


def check_on_calendar(value: str) -> str:
    """`value` as a timer's OnCalendar=, checked: no control characters (a line break would add
    lines to the unit), and systemd's own parser accepts it when `systemd-analyze` is installed.
    ScheduleError naming the value otherwise."""
    if not value.strip() or _has_control(value):
        raise ScheduleError(f"--on-calendar {value!r}: empty, or holds a control character (a line break)")
    analyze = shutil.which("systemd-analyze")
    if analyze:
        try:
            done = subprocess.run(
                [analyze, "calendar", value], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return value  # systemd-analyze could not run here: the unit is written unchecked
        if done.returncode != 0:
            reason = (done.stderr or done.stdout).strip().splitlines()
            raise ScheduleError(
                f"OnCalendar {value!r} is not a calendar systemd accepts"
                + (f" ({reason[-1]})" if reason else "")
            )
    return value


def cron_to_on_calendar(expr: str) -> str:
    """A systemd OnCalendar= equivalent of a cron expression (ScheduleError where none exists)."""
    minute, hour, dom, month, dow = parse_cron(expr)
    if dom != "*" and dow != "*":
        raise ScheduleError(
            f"cron {expr!r}: with both day-of-month and day-of-week set cron runs on either, systemd "
            "only on both; pass --on-calendar explicitly"
        )
    weekday = "" if dow == "*" else _weekdays(dow)
    date = f"*-{_calendar_field(month, first='01')}-{_calendar_field(dom, first='01')}"
    time = f"{_calendar_field(hour)}:{_calendar_field(minute)}:00"
    return f"{weekday + ' ' if weekday else ''}{date} {time}"


# --------------------------------------------------------------------- local schedule
@dataclasses.dataclass
class LocalSchedule:
    cron: str
    command: list[str]
    cron_line: str
    config_path: str
    lock_file: str
    log_file: str
    systemd_files: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# How long a scheduled run waits for its home's lock (another pipeline of the home running):
# six hours, then it is skipped (exit 75) and says so in its log.
SCHEDULED_HOME_LOCK_WAIT = 6 * 3600.0


def default_imgpipe() -> list[str]:
    """How to invoke imgpipe from cron: the console script beside this Python, else `python -m`."""
    script = os.path.join(os.path.dirname(sys.executable), "imgpipe")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "imgpipe"]


# The environment cron gives a job (Debian's cron: PATH=/usr/bin:/bin, and HOME).
CRON_PATH = "/usr/bin:/bin"


def _check_is_imgpipe(program: Sequence[str]) -> None:
    """ScheduleError unless `PROGRAM --version` says imgpipe when run as cron runs it (its PATH,
    no venv activated): a wrong --imgpipe (another program, a script whose interpreter is gone)
    would otherwise fail at every scheduled run, in a log nobody reads."""
    _version_under_cron(tuple(program))


@functools.lru_cache(maxsize=8)
def _version_under_cron(program: tuple[str, ...]) -> str:
    env = {"PATH": CRON_PATH, "HOME": os.environ.get("HOME", "/"), "LANG": "C.UTF-8"}
    shown = shlex.join([*program, "--version"])
    try:
        done = subprocess.run(  # from "/": cron's `cd HOME` leaves no checkout on sys.path
            [*program, "--version"],
            env=env,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ScheduleError(f"--imgpipe: `{shown}` cannot run: {e}") from e
    said = (done.stdout or "").strip()
    if done.returncode != 0 or not said.startswith("imgpipe "):
        detail = (done.stderr or done.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise ScheduleError(
            f"--imgpipe: `{shown}` with cron's PATH={CRON_PATH} exited {done.returncode} "
            f"({detail[0][:200]}), not imgpipe's version: give the imgpipe executable of the "
            "environment imgpipe is installed in"
        )
    return said


def cron_line(cron: str, command: Sequence[str], workdir: str, log_file: str) -> str:
    """`cron` + `cd WORKDIR && COMMAND >> LOG 2>&1`, shell-quoted, with '%' escaped for cron."""
    parse_cron(cron)
    shell = f"cd {shlex.quote(workdir)} && {shlex.join(command)} >> {shlex.quote(log_file)} 2>&1"
    return f"{' '.join(cron.split())} {shell.replace('%', chr(92) + '%')}"


def local_schedule(
    config,
    cron: str,
    imgpipe: Sequence[str] | None = None,
    lock_file: str | None = None,
    log_file: str | None = None,
    systemd_dir: str | None = None,
    on_calendar: str | None = None,
    lock_wait: float = 0.0,
    verbose: bool = False,
    home_lock_wait: float = 0.0,
) -> LocalSchedule:
    """Save `config` beside its home and build the cron line (and systemd units) for it.

    lock_wait, home_lock_wait, verbose: passed on to each scheduled `imgpipe run` (--lock-wait,
    --home-lock-wait, --verbose). The schedule's own lock (`lock_file`) keeps a run from
    overlapping the one before it (skipped: exit 75); the home's lock is shared by every
    pipeline of the home, so a run that starts while another pipeline's runs waits for it up to
    `home_lock_wait` seconds (the CLI's default, SCHEDULED_HOME_LOCK_WAIT) instead of being
    skipped, which would skip the same pipeline every time two schedules fire together.

    Everything is checked before anything is written (ScheduleError, or pipeline.config's
    ConfigError naming the field): the cron expression and the timer's calendar, the config's
    paths as `imgpipe run` checks them, the executable, the log file's and the units' folders.
    A refused request leaves an existing schedule's config as it was.
    """
    parse_cron(cron)
    # What every scheduled run would fail on; the data may land after the schedule is set up.
    config = config.resolved().validate_paths(data_may_arrive=True)
    beam_pipeline_args(config.beam)  # each run would be refused for its Beam settings
    if config.metadata and config.metadata_password_file:  # each run would fail on it
        check_password_file(config.metadata_password_file, parse_metadata_url(config.metadata))
    password_file, warnings = for_a_later_process(
        config.metadata, config.metadata_password_file, os.environ, "a scheduled run"
    )
    for warning in warnings:
        log.warning("%s", warning)
    if password_file != config.metadata_password_file:
        log.info(
            "metadata_password_file: %s (this shell's PGPASSFILE), saved with the schedule", password_file
        )
        config = config.replace(metadata_password_file=password_file)
    if "://" not in config.data_dir and not os.path.lexists(config.data_dir):
        log.warning(
            "data_dir %s does not exist yet: each scheduled run fails (exit 2) until it does", config.data_dir
        )
    base, config_path = _schedule_config(config)
    lock_file = os.path.abspath(lock_file or os.path.join(base, f"{config.pipeline_name}.lock"))
    log_file = os.path.abspath(log_file or os.path.join(base, f"{config.pipeline_name}.log"))
    program = [*(imgpipe or default_imgpipe())]
    # cron's PATH is /usr/bin:/bin and the line runs after `cd HOME`: the command names the
    # executable by its absolute path, found now (a bare name on this shell's PATH, or a path
    # relative to the current directory).
    executable = shutil.which(program[0]) if os.sep not in program[0] else program[0]
    if not executable or not os.path.isfile(executable) or not os.access(executable, os.X_OK):
        raise ScheduleError(f"--imgpipe {program[0]}: not an executable file")
    program[0] = os.path.abspath(executable)
    _check_is_imgpipe(program)
    command = [*program, "run", "--config", config_path, "--lock-file", lock_file]
    command += ["--lock-wait", f"{lock_wait:g}"] if lock_wait else []
    command += ["--home-lock-wait", f"{home_lock_wait:g}"]
    command += ["--verbose"] if verbose else []
    for what, path in (("home", config.home), ("--log-file", log_file), ("--lock-file", lock_file),
                       ("--imgpipe", program[0])):  # fmt: skip
        if _has_control(path):
            raise ScheduleError(
                f"{what} {path!r}: holds a line break or another control character, which a crontab "
                "line or a systemd unit cannot carry"
            )
    if os.path.realpath(lock_file) == os.path.realpath(home_lock_path(config.home)):
        # `run` takes that lock anyway and drops it as an extra one: a firing would then wait
        # (--home-lock-wait) for its own previous run instead of being skipped.
        raise ScheduleError(
            f"--lock-file {lock_file} is the home's own lock, which every run holds; give another file "
            "(default HOME/schedule/NAME.lock)"
        )
    for flag, path in (("--log-file", log_file), ("--lock-file", lock_file)):
        if os.path.isdir(path):  # every scheduled run would fail on it: `>> DIR` or the lock's open
            raise ScheduleError(f"{flag} {path} is a directory: give a file name")
        _check_can_write_in(flag, os.path.dirname(path))
    calendar = None
    if systemd_dir:
        calendar = check_on_calendar(on_calendar or cron_to_on_calendar(cron))
        _check_can_write_in("--systemd", systemd_dir)
    check_weights_file(config)  # last: it loads the file into the backbone (seconds)
    workdir = config.home
    result = LocalSchedule(
        cron=" ".join(cron.split()),
        command=command,
        cron_line=cron_line(cron, command, workdir, log_file),
        config_path=config_path,
        lock_file=lock_file,
        log_file=log_file,
    )
    files = []
    if systemd_dir:
        files = systemd_units(systemd_dir, config.pipeline_name, command, workdir, calendar)
        _check_unit_is_ours(files[0][0], config_path)
        result.systemd_files = [path for path, _ in files]
        # Where the units went, for `schedule --remove` without --systemd (it left them running).
        files.append((_units_note(config_path), os.path.abspath(systemd_dir) + "\n"))
    from imgpipe.orchestration import preflight  # reads ML Metadata: loaded when a schedule is made

    # After every check: the serving dir taken over now (recorded in the home), not at every run.
    config = preflight.adopt_once(config, "the schedule's config")
    _say_what_changes(config_path, config)
    _say_who_shares_the_home(base, config.pipeline_name, home_lock_wait)
    # The units first and the config last, each written in full before any is moved in: a
    # failure to write leaves the installed schedule (its config and units) as it was.
    write_all_atomically([*files, (config_path, config.dumps(config_path))])
    return result


def _say_what_changes(config_path: str, config: PipelineConfig) -> None:
    """Warn, naming each setting, when an existing schedule config of this pipeline name is about
    to be replaced by another: every cron line or timer installed for it reads the new one from
    its next run (a second model scheduled in the same home under the default pipeline name
    silently retargeted the first one's schedule)."""
    if not os.path.isfile(config_path):
        return
    try:
        before = PipelineConfig.from_yaml(config_path).model_dump()
    except ConfigError as e:
        log.warning("replacing %s, which cannot be read (%s)", config_path, e)
        return
    after = config.model_dump()
    changes = []
    for section, name, _ in leaves():
        was, now = (before.get(section, {}), after.get(section, {})) if section else (before, after)
        if was.get(name) != now.get(name):
            changes.append(f"{name} {was.get(name)!r} -> {now.get(name)!r}")
    if changes:
        log.warning(
            "replacing the schedule config %s, which every schedule installed for pipeline %r reads "
            "at its next run: %s (give --pipeline-name to schedule another pipeline beside it)",
            config_path,
            config.pipeline_name,
            "; ".join(changes),
        )


def _schedule_config(config) -> tuple[str, str]:
    """(HOME/schedule, HOME/schedule/NAME.yaml) of a resolved config: where a local schedule's
    config is saved, which names the schedule."""
    base = os.path.join(config.home, "schedule")
    return base, os.path.join(base, f"{config.pipeline_name}.yaml")


def _scheduled_pipelines(base: str) -> list[str]:
    """The pipeline names with a schedule config in `base` (HOME/schedule), sorted; [] when none
    or the folder cannot be listed."""
    try:
        return sorted(e[: -len(".yaml")] for e in os.listdir(base) if e.endswith(".yaml"))
    except OSError:
        return []


def remove_local_schedule(config, systemd_dir: str | None = None) -> dict[str, Any]:
    """Take a local schedule out: its config (HOME/schedule/NAME.yaml) and, with `systemd_dir`,
    the two units `local_schedule` wrote there (only if they run this schedule). The crontab line
    is the user's to delete (imgpipe does not edit a crontab): the result says how. The log is
    kept. ScheduleError when there is no such schedule, or the units run another one."""
    config = config.resolved()
    base, config_path = _schedule_config(config)
    if not os.path.isfile(config_path):
        scheduled = ", ".join(repr(n) for n in _scheduled_pipelines(base)) or "none"
        raise ScheduleError(
            f"no schedule of pipeline {config.pipeline_name!r} in {config.home} ({config_path} does not exist; "
            f"scheduled there: {scheduled})"
        )
    note = _units_note(config_path)
    if not systemd_dir:
        try:
            with open(note, encoding="utf-8") as f:
                systemd_dir = f.read().strip() or None  # where `schedule --systemd` wrote its units
        except OSError:
            systemd_dir = None
    units = []
    if systemd_dir:
        name = unit_name(config.pipeline_name)
        units = [os.path.join(systemd_dir, name + suffix) for suffix in (".service", ".timer")]
        _check_unit_is_ours(units[0], config_path)
        units = [u for u in units if os.path.lexists(u)]
    for path in [*units, config_path]:
        os.remove(path)
    if os.path.lexists(note):
        os.remove(note)
    unit = os.path.basename(units[-1]) if units else None
    # The crontab line escapes '%' for cron (cron_line): the pattern must match it as written.
    pattern = ("--config " + shlex.quote(config_path) + " ").replace("%", chr(92) + "%")
    return {
        "removed": [*units, config_path],
        "crontab": f"crontab -l | grep -vF -- {shlex.quote(pattern)} | crontab -",
        "systemd": f"systemctl disable --now {unit} (then systemctl daemon-reload)" if unit else None,
    }


def _units_note(config_path: str) -> str:
    """The file beside a schedule's config naming the folder its systemd units were written to."""
    return config_path[: -len(".yaml")] + ".systemd"


def _check_unit_is_ours(service_path: str, config_path: str) -> None:
    """ScheduleError when the unit about to be written already runs another schedule: unit names
    keep only the characters systemd allows, so pipelines `a b` and `a_b` (or two homes'
    pipelines of one name) map to one unit, and the second silently took the first's over."""
    try:
        with open(service_path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return
    except OSError as e:
        raise ScheduleError(f"--systemd: {service_path} cannot be read: {e.strerror or e}") from e
    exec_start = next((line[10:] for line in text.splitlines() if line.startswith("ExecStart=")), "")
    try:
        words = shlex.split(exec_start.replace("%%", "%").replace("$$", "$"))
    except ValueError:
        words = []
    theirs = words[words.index("--config") + 1] if "--config" in words[:-1] else "another command"
    if theirs != config_path:
        raise ScheduleError(
            f"--systemd: {service_path} already runs another schedule ({theirs}); give another "
            "--pipeline-name, or remove that unit first"
        )


def _say_who_shares_the_home(base: str, pipeline_name: str, home_lock_wait: float) -> None:
    """Name the other pipelines scheduled in this home: their runs and this one's take turns on
    the home's lock, so one that fires while another runs waits for it, up to `home_lock_wait`."""
    others = [n for n in _scheduled_pipelines(base) if n != pipeline_name]
    if not others:
        return
    wait = (
        f"waits up to {home_lock_wait:g} s for it (--home-lock-wait), then is skipped (exit 75)"
        if home_lock_wait
        else "is skipped (exit 75; --home-lock-wait 0)"
    )
    log.warning(
        "this home also has schedules for %s: runs in one home take turns (HOME/run.lock), so a "
        "run that starts while another runs %s; give them different times, or homes",
        ", ".join(repr(n) for n in others),
        wait,
    )


def _check_can_write_in(flag: str, folder: str) -> None:
    """ScheduleError naming `flag` unless `folder` is a directory this user can write, or can be
    made (pipeline.config.folder_problem)."""
    problem = folder_problem(folder)
    if problem is None:
        return
    existing, kind = problem
    if kind == "file":
        raise ScheduleError(f"{flag} {folder}: {existing} is a file, not a directory")
    raise ScheduleError(f"{flag} {folder}: {existing} is not writable by this user")


def unit_name(pipeline_name: str) -> str:
    """imgpipe-NAME, with the characters systemd does not allow in a unit name as '_'."""
    return "imgpipe-" + re.sub(r"[^A-Za-z0-9:_.-]", "_", pipeline_name)


def systemd_units(
    directory: str, name: str, command: Sequence[str], workdir: str, on_calendar: str
) -> list[tuple[str, str]]:
    """(path, text) of imgpipe-NAME.service (oneshot) and imgpipe-NAME.timer in `directory`.

    Unit names keep only the characters systemd allows (`unit_name`); '%' in values is
    doubled, since systemd reads '%x' as a specifier.
    """
    unit = unit_name(name)

    def esc(value: str) -> str:
        return value.replace("%", "%%")

    def esc_command(value: str) -> str:  # ExecStart= also expands $NAME and ${NAME}
        return esc(value).replace("$", "$$")

    service = f"""[Unit]
Description=imgpipe pipeline run ({esc(name)})
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
WorkingDirectory={esc(workdir)}
ExecStart={esc_command(shlex.join(command))}
# {EXIT_LOCKED}: another run held the lock, so this one was skipped (not a failure).
SuccessExitStatus={EXIT_LOCKED}
"""
    timer = f"""[Unit]
Description=imgpipe pipeline schedule ({esc(name)})

[Timer]
OnCalendar={on_calendar}
Persistent=true
Unit={unit}.service

[Install]
WantedBy=timers.target
"""
    return [
        (os.path.join(directory, unit + suffix), text)
        for suffix, text in ((".service", service), (".timer", timer))
    ]


# -------------------------------------------------------------- Vertex and KFP
def vertex_schedule(
    spec_path: str,
    cron: str,
    project: str,
    region: str,
    parameters: Sequence[str] | None = None,
    display_name: str | None = None,
    service_account: str | None = None,
    time_zone: str | None = None,
) -> dict[str, Any]:
    """A Vertex AI PipelineJobSchedule for the compiled spec; at most one run in flight."""
    from imgpipe.orchestration import kubeflow

    portable = portable_cron(cron)
    if time_zone:
        check_time_zone(time_zone)
    job_spec = kubeflow.read_pipeline_job(spec_path)
    kubeflow.pipeline_spec_proto(job_spec)
    values = kubeflow.parse_parameters(job_spec, parameters)
    name = display_name or kubeflow.pipeline_name(job_spec)
    aiplatform = kubeflow._aiplatform(region)  # noqa: SLF001 - the module's import seam
    aiplatform.init(project=project, location=region)
    job = aiplatform.PipelineJob(
        display_name=name, template_path=spec_path, parameter_values=values, project=project, location=region
    )
    vertex_cron = f"TZ={time_zone} {portable}" if time_zone else portable
    schedule = job.create_schedule(
        cron=vertex_cron,
        display_name=f"{name}-schedule",
        max_concurrent_run_count=1,
        service_account=service_account,
    )
    return {"schedule": getattr(schedule, "resource_name", None), "cron": vertex_cron, "parameters": values}


def portable_cron(cron: str) -> str:
    """The 5 fields as every cron parser reads them: macros expanded, names as numbers, and
    Sunday as 0 only (KFP's scheduler and Vertex AI's refuse or misread cron's 7: `5-7` becomes
    `0,5,6`). Whitespace is normalised."""
    fields = parse_cron(cron)
    if re.search(r"(?<!\d)7(?!\d)", fields[4]):
        days = {day % 7 for day in _values(fields[4], 0, 7)}
        fields[4] = "*" if days == set(range(7)) else ",".join(str(d) for d in sorted(days))
    return " ".join(fields)


def kfp_cron(cron: str) -> str:
    """KFP's scheduler takes 6 fields (seconds first): a standard 5-field cron at second 0."""
    return "0 " + portable_cron(cron)


def check_time_zone(name: str) -> str:
    """`name` if it is an IANA time zone (Europe/Paris, UTC); ScheduleError otherwise."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        raise ScheduleError(f"--time-zone {name!r}: not an IANA time zone (e.g. UTC, Europe/Paris)") from None
    return name


def _kfp_client(host: str | None):
    """A KFP client, once `host` (when given) takes a connection: offline, the client retries
    and fails with several tracebacks (tests replace this function)."""
    if host:
        from imgpipe.orchestration.kubeflow import Unreachable
        from trainer.imagenet import connect_problem

        url = urllib.parse.urlsplit(host if "://" in host else f"http://{host}")
        port = url.port or (443 if url.scheme == "https" else 80)
        problem = connect_problem(url.hostname or host, port) if url.hostname else "no host name in it"
        if problem:
            raise Unreachable(f"KFP at {host}: {problem}; check --host")
    import kfp

    return kfp.Client(host=host)


def kfp_recurring_run(
    spec_path: str,
    cron: str,
    host: str | None = None,
    experiment: str = "imgpipe",
    parameters: Sequence[str] | None = None,
    job_name: str | None = None,
    service_account: str | None = None,
) -> dict[str, Any]:
    """A KFP recurring run (max_concurrency=1) of the compiled spec on a KFP 2.x backend."""
    import tempfile

    from imgpipe.orchestration import kubeflow

    job_spec = kubeflow.read_pipeline_job(spec_path)
    kubeflow.pipeline_spec_proto(job_spec)
    values = kubeflow.parse_parameters(job_spec, parameters)
    name = job_name or f"{kubeflow.pipeline_name(job_spec)}-recurring"
    client = _kfp_client(host)
    exp = client.create_experiment(experiment)  # returns the experiment if it exists
    # kfp.Client reads the bare PipelineSpec from a .yaml file (JSON is YAML).
    with tempfile.TemporaryDirectory() as tmp:
        package = os.path.join(tmp, "pipeline.yaml")
        kubeflow.write_json(job_spec["pipelineSpec"], package)
        run = client.create_recurring_run(
            experiment_id=exp.experiment_id,
            job_name=name,
            cron_expression=kfp_cron(cron),
            max_concurrency=1,
            no_catchup=True,
            params=values,
            pipeline_package_path=package,
            pipeline_root=job_spec.get("runtimeConfig", {}).get("gcsOutputDirectory"),
            service_account=service_account,
        )
    return {
        "recurring_run": getattr(run, "recurring_run_id", None),
        "cron": kfp_cron(cron),
        "parameters": values,
    }
