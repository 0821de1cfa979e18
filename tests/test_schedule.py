"""Schedules: the run lock, the cron line and systemd units it generates, Vertex and KFP schedules."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import types

import pytest

from imgpipe.orchestration import lock as locking
from imgpipe.orchestration import schedule
from pipeline.config import PipelineConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")


# --------------------------------------------------------------------------- lock
def test_lock_refuses_a_second_holder_and_is_released(tmp_path):
    path = str(tmp_path / "locks" / "run.lock")
    with locking.run_lock(path):
        with open(path, encoding="utf-8") as f:
            assert f.read().startswith(f"pid {os.getpid()} since ")
        # flock is per open file, so a second open in this process contends like another run.
        with pytest.raises(locking.LockBusy, match=f"holds the lock {path} \\(pid {os.getpid()} since"):
            with locking.run_lock(path):
                pass
    with locking.run_lock(path):  # released: taken again
        pass


def test_a_lock_file_that_cannot_be_created_is_a_usage_error(tmp_path, capsys):
    from imgpipe.cli import main as cli

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(locking.LockError, match="cannot create or open"):
        with locking.run_lock(str(blocker / "run.lock")):
            pass
    code = cli.main(["run", "--data", str(tmp_path), "--lock-file", str(blocker / "run.lock")])
    assert code == 2 and "lock file" in capsys.readouterr().err


class LockHolder:
    """Another process holding the run lock until closed."""

    def __init__(self, path: str):
        code = (
            "import sys\nfrom imgpipe.orchestration.lock import run_lock\n"
            "with run_lock(sys.argv[1]):\n    print('locked', flush=True)\n    sys.stdin.read()\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, path],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout.readline().strip() == "locked"

    def close(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0


# --------------------------------------------------------------------------- cron
@pytest.mark.parametrize(
    "expr",
    [
        "0 3 * * *",
        "*/15 * * * *",
        "30 2 1,15 * *",
        "0 0 * * 1-5",
        "@daily",
        "59 23 31 12 7",
        "0 3 1 jan,Jul *",
    ],
)
def test_valid_cron(expr):
    assert len(schedule.parse_cron(expr)) == 5


def test_month_and_weekday_names_are_their_numbers():
    assert schedule.parse_cron("0 3 * * MON-FRI") == ["0", "3", "*", "*", "1-5"]
    assert schedule.parse_cron("0 3 1 jan,Jul sun") == ["0", "3", "1", "1,7", "0"]
    assert schedule.cron_to_on_calendar("15 2 * * mon-fri") == "Mon..Fri *-*-* 02:15:00"
    assert schedule.kfp_cron("0 3 * DEC SAT") == "0 0 3 * 12 6"
    # KFP's and Vertex AI's parsers count Sunday as 0 only (cron also takes 7).
    assert schedule.kfp_cron("0 3 * * 7") == "0 0 3 * * 0"
    assert schedule.kfp_cron("0 3 * * 5-7") == "0 0 3 * * 0,5,6"
    assert schedule.kfp_cron("0 3 * * 0-7") == "0 0 3 * * *"
    assert schedule.portable_cron("  @daily ") == "0 0 * * *"
    assert schedule.portable_cron("0 3 * * 1-5") == "0 3 * * 1-5"


@pytest.mark.parametrize(
    "expr, message",
    [
        ("0 3 * *", "expected 5 fields"),
        ("60 3 * * *", "minute 60 is outside 0-59"),
        ("0 24 * * *", "hour 24 is outside 0-23"),
        ("0 3 0 * *", "day of month 0 is outside 1-31"),
        ("0 3 * * MONDAY", "day of week field 'MONDAY'"),
        ("@reboot", "runs at a machine's start, not on a schedule"),
        ("*/0 * * * *", "step must be >= 1"),
        ("0 5-2 * * *", "hour 5-2"),
        ("0 3 31 2 *", "day of month 31 never falls in month 2"),  # accepted by cron, never run
        ("0 3 30,31 2 *", "day of month 30,31 never falls in month 2"),
        # A line break split the crontab line in two while the timer said 03:00 daily.
        ("0\n3 * * *", "holds a line break or another control character"),
    ],
)
def test_invalid_cron(expr, message):
    with pytest.raises(schedule.ScheduleError, match=message.replace("(", r"\(")):
        schedule.parse_cron(expr)


def _systemd_analyze() -> bool:
    """Whether systemd's calendar parser (`systemd-analyze`) is here. In CI it must be: .ci/run
    installs it (Debian's systemd package) where it is missing."""
    if shutil.which("systemd-analyze"):
        return True
    if os.environ.get("CI"):
        pytest.fail("systemd-analyze is missing (.ci/run installs it: apt-get install systemd)")
    return False


@pytest.mark.parametrize(
    "expr, calendar",
    [
        ("0 3 * * *", "*-*-* 03:00:00"),
        ("*/15 * * * *", "*-*-* *:00/15:00"),
        ("15 2 * * 1-5", "Mon..Fri *-*-* 02:15:00"),
        ("0 6 1 1,7 *", "*-01,07-01 06:00:00"),
        ("0 4 * * 0,7", "Sun *-*-* 04:00:00"),
        # Cron's week is 0-7, Sunday at both ends; systemd's runs Monday to Sunday and refuses a
        # range starting on Sunday ("Sun..Sat"), and "Sun..Sun" is Sundays only: every day was
        # written as Sundays, and 0-6 refused with a calendar the user never wrote.
        ("0 3 * * 0-7", "*-*-* 03:00:00"),
        ("0 3 * * SUN-SAT", "*-*-* 03:00:00"),
        ("0 3 * * 0-2", "Mon,Tue,Sun *-*-* 03:00:00"),
        ("0 3 * * 5-7", "Fri..Sun *-*-* 03:00:00"),
        ("0 3 * * */2", "Tue,Thu,Sat,Sun *-*-* 03:00:00"),
        # Steps over days and months start at 1, as cron's do (systemd refuses "00/2" there).
        ("30 2 */2 * *", "*-*-01/2 02:30:00"),
        ("0 0 1 */3 *", "*-01/3-01 00:00:00"),
        ("0 */5 * * *", "*-*-* 00/5:00:00"),
        # A stepped range, its values listed (refused before, though cron and the README take it).
        ("0-30/5 * * * *", "*-*-* *:00,05,10,15,20,25,30:00"),
        ("0 3 1-31/10 * *", "*-*-01,11,21,31 03:00:00"),
        ("0 8-18/4,20 * * *", "*-*-* 08,12,16,20:00:00"),
    ],
)
def test_cron_to_systemd_calendar(expr, calendar):
    assert schedule.cron_to_on_calendar(expr) == calendar
    if _systemd_analyze():  # and systemd's own parser takes it
        assert schedule.check_on_calendar(calendar) == calendar


@pytest.mark.parametrize("value", ["garbage", "daily\nExecStartPre=/bin/evil", " "])
def test_a_calendar_systemd_would_refuse_is_refused(value):
    if value == "garbage" and not _systemd_analyze():
        pytest.skip("only systemd-analyze can tell a calendar it refuses")
    with pytest.raises(schedule.ScheduleError, match="OnCalendar|control character"):
        schedule.check_on_calendar(value)


def test_a_refused_schedule_leaves_the_existing_one_as_it_was(tmp_path, capsys):
    """Every check runs before the config that the installed cron line reads is rewritten."""
    from imgpipe.cli import main as cli

    home, units = tmp_path / "home", tmp_path / "units"
    base = ["schedule", "--runner", "local", "--data", str(tmp_path / "data"), "--home", str(home)]
    assert cli.main([*base, "--cron", "0 3 * * *", "--epochs", "3"]) == 0
    saved = home / "schedule" / "imgpipe.yaml"
    before = saved.read_text()
    (tmp_path / "a-file").write_text("x")
    refused = {
        "--systemd over a file": ["--cron", "0 3 * * *", "--systemd", str(tmp_path / "a-file" / "units")],
        "not imgpipe": ["--cron", "0 3 * * *", "--imgpipe", "/bin/true"],
        "a line break in the cron": ["--cron", "0 3 * *\n*", "--systemd", str(units)],
        "a log file that is a directory": ["--cron", "0 3 * * *", "--log-file", str(tmp_path)],
        "a lock file that is a directory": ["--cron", "0 3 * * *", "--lock-file", str(tmp_path)],
        "both days set": ["--cron", "0 3 1 * 1", "--systemd", str(units)],
        "a bad --on-calendar": ["--cron", "0 3 * * *", "--systemd", str(units), "--on-calendar", "a\nb"],
        "a missing weights file": ["--cron", "0 3 * * *", "--weights", str(tmp_path / "nope.h5")],
        "no such executable": ["--cron", "0 3 * * *", "--imgpipe", str(tmp_path / "nope" / "imgpipe")],
        "a log file under a file": ["--cron", "0 3 * * *", "--log-file", str(tmp_path / "a-file" / "x.log")],
        "never runs": ["--cron", "0 3 31 2 *"],
        "the home's own lock": ["--cron", "0 3 * * *", "--lock-file", str(home / "run.lock")],
    }
    for what, argv in refused.items():
        assert cli.main([*base, *argv, "--epochs", "7"]) == 2, what
        err = capsys.readouterr().err
        assert "imgpipe: error:" in err and "Traceback" not in err, (what, err)
        assert saved.read_text() == before, what
    assert not units.exists()


def test_replacing_a_schedule_config_names_what_changes(tmp_path, capsys):
    """A second model scheduled in the same home under the default pipeline name rewrote the
    config the first one's installed cron line reads, without a word."""
    from imgpipe.cli import main as cli

    base = ["schedule", "--runner", "local", "--data", str(tmp_path / "data"), "--home", str(tmp_path / "h")]
    assert cli.main([*base, "--cron", "0 3 * * *", "--epochs", "3"]) == 0
    assert "replacing the schedule config" not in capsys.readouterr().err
    assert cli.main([*base, "--cron", "0 3 * * *", "--epochs", "3"]) == 0  # the same: no warning
    assert "replacing the schedule config" not in capsys.readouterr().err
    assert cli.main([*base, "--cron", "0 4 * * *", "--epochs", "7", "--model-name", "letters"]) == 0
    err = capsys.readouterr().err
    assert "replacing the schedule config" in err and "pipeline 'imgpipe'" in err
    assert "model_name 'imgpipe' -> 'letters'; epochs 3 -> 7" in err and "--pipeline-name" in err
    # --on-calendar is for a systemd timer: without --systemd it was silently ignored.
    assert cli.main([*base, "--cron", "0 3 * * *", "--on-calendar", "daily"]) == 2
    assert "--on-calendar applies with --systemd DIR only" in capsys.readouterr().err
    # An empty path was taken as "not given": the default place, silently.
    for flag in ("--systemd", "--log-file", "--lock-file", "--imgpipe", "--config"):
        assert cli.main([*base, "--cron", "0 3 * * *", flag, ""]) == 2, flag
        assert f"{flag} is empty" in capsys.readouterr().err, flag


def test_a_schedule_that_cannot_be_written_leaves_the_existing_one_as_it_was(tmp_path, capsys):
    """Every check passed, but a unit cannot be written: nothing of the installed schedule changes.

    The config the installed cron line reads is written last, and only once every file of the
    request was written in full beside its place (a directory where the timer goes, here).
    """
    from imgpipe.cli import main as cli

    home, units = tmp_path / "home", tmp_path / "units"
    base = ["schedule", "--runner", "local", "--data", str(tmp_path / "data"), "--home", str(home)]
    assert cli.main([*base, "--cron", "0 3 * * *", "--epochs", "3"]) == 0
    capsys.readouterr()
    saved = home / "schedule" / "imgpipe.yaml"
    before = saved.read_text()
    (units / "imgpipe-imgpipe.timer").mkdir(parents=True)
    code = cli.main(
        [*base, "--cron", "0 4 * * *", "--systemd", str(units), "--epochs", "7", "--min-accuracy", "0"]
    )
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert "cannot write the schedule" in captured.err and "imgpipe-imgpipe.timer" in captured.err, (
        captured.err
    )
    assert saved.read_text() == before
    assert sorted(os.listdir(units)) == ["imgpipe-imgpipe.timer"]  # no service, no temporary file
    assert sorted(os.listdir(home / "schedule")) == ["imgpipe.yaml"]


def test_cron_with_day_of_month_and_week_has_no_systemd_equivalent():
    with pytest.raises(schedule.ScheduleError, match="--on-calendar"):
        schedule.cron_to_on_calendar("0 3 1 * 1")


def test_kfp_cron_has_a_seconds_field():
    assert schedule.kfp_cron("15 2 * * 1-5") == "0 15 2 * * 1-5"
    assert schedule.kfp_cron("@hourly") == "0 0 * * * *"


# ------------------------------------------------------------ the generated cron line
def test_cron_line_runs_imgpipe_run_under_the_lock(tmp_path, capsys):
    from imgpipe.cli import main as cli

    home, data, units = tmp_path / "my home", tmp_path / "no-data-yet", tmp_path / "units"
    # A '%' in a path must survive cron (where it means newline) and systemd (a specifier).
    code = cli.main(["schedule", "--runner", "local", "--cron", "15 2 * * 1-5", "--data", str(data),
                     "--home", str(home), "--epochs", "3", "--pipeline-name", "nightly-%run",
                     "--systemd", str(units)])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    line = result["cron_line"]

    # Schedule fields, then the command: cd HOME && IMGPIPE run --config CFG --lock-file LOCK >> LOG 2>&1
    fields = line.split(None, 5)
    assert fields[:5] == ["15", "2", "*", "*", "1-5"]
    assert "\\%" in fields[5] and "%" not in fields[5].replace("\\%", "")  # cron treats a bare % as newline
    shell = fields[5].replace("\\%", "%")
    tokens = shlex.split(shell)
    cfg_path = str(home / "schedule" / "nightly-%run.yaml")
    lock = str(home / "schedule" / "nightly-%run.lock")
    log = str(home / "schedule" / "nightly-%run.log")
    assert tokens[:3] == ["cd", str(home), "&&"]
    wait = ["--home-lock-wait", "21600"]  # another pipeline's run of the home: waited for, 6 h
    assert tokens[4:] == ["run", "--config", cfg_path, "--lock-file", lock, *wait, ">>", log, "2>&1"]
    assert os.access(tokens[3], os.X_OK) and os.path.basename(tokens[3]) == "imgpipe"
    assert result["command"] == tokens[3:11]

    saved = PipelineConfig.from_yaml(cfg_path)
    assert (saved.data_dir, saved.home, saved.training.epochs) == (str(data), str(home), 3)

    # systemd: the same command, the converted calendar, a refused run is not a failure.
    assert [os.path.basename(p) for p in result["systemd_files"]] == [
        "imgpipe-nightly-_run.service",  # '%' is not allowed in unit names
        "imgpipe-nightly-_run.timer",
    ]
    service = (units / "imgpipe-nightly-_run.service").read_text()
    timer = (units / "imgpipe-nightly-_run.timer").read_text()
    exec_start = next(x for x in service.splitlines() if x.startswith("ExecStart="))
    assert "%%run" in exec_start and "%run" not in exec_start.replace("%%", "")
    assert shlex.split(exec_start[len("ExecStart=") :].replace("%%", "%")) == tokens[3:11]
    assert f"WorkingDirectory={str(home).replace('%', '%%')}" in service and "SuccessExitStatus=75" in service
    assert "OnCalendar=Mon..Fri *-*-* 02:15:00" in timer and "Unit=imgpipe-nightly-_run.service" in timer

    # Run the line's command as cron would while another run holds the lock: refused, exit 75.
    holder = LockHolder(lock)
    try:
        refused = subprocess.run(["/bin/sh", "-c", shell], env=ENV, timeout=300)
    finally:
        holder.close()
    assert refused.returncode == locking.EXIT_LOCKED
    assert f"holds the lock {lock} (pid {holder.proc.pid} since" in open(log, encoding="utf-8").read()

    # Lock free: the very same line starts the run, which stops on the missing data (exit 2).
    started = subprocess.run(["/bin/sh", "-c", shell], env=ENV, timeout=300)
    assert started.returncode == 2
    assert f"data_dir: {data} does not exist" in open(log, encoding="utf-8").read()
    with locking.run_lock(lock):  # and the run released the lock when it ended
        pass


def test_run_refuses_while_another_process_holds_the_lock(tmp_path):
    lock = str(tmp_path / "run.lock")
    holder = LockHolder(lock)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "imgpipe", "run", "--data", str(tmp_path), "--lock-file", lock],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        holder.close()
    assert proc.returncode == 75, proc.stderr[-2000:]
    assert f"another imgpipe process holds the lock {lock} (pid {holder.proc.pid}" in proc.stderr
    assert proc.stdout == ""


_VERTEX = ["--runner", "vertex", "--cron", "0 3 * * *", "--spec", "s.json", "--project", "p", "--region", "r"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--runner", "local", "--cron", "0 3 * *"], "expected 5 fields"),
        (
            ["--runner", "local", "--cron", "0 3 * * *", "--spec", "x.json"],
            "--spec applies to --runner vertex|kfp",
        ),
        (["--runner", "vertex", "--cron", "0 3 * * *", "--project", "p", "--region", "r"], "needs --spec"),
        (["--runner", "vertex", "--cron", "0 3 * * *", "--spec", "s.json"], "needs --project and --region"),
        (
            ["--runner", "kfp", "--cron", "0 3 * * *", "--spec", "s.json", "--epochs", "3"],
            "run flags (epochs)",
        ),
        (
            ["--runner", "kfp", "--cron", "0 3 * * *", "--spec", "s.json", "--systemd", "d"],
            "--systemd applies",
        ),
        # The KFP flags were taken and dropped for a Vertex (or local) schedule.
        ([*_VERTEX, "--host", "http://kfp:8888"], "--host applies to --runner kfp only"),
        ([*_VERTEX, "--experiment", "nightly"], "--experiment applies to --runner kfp only"),
        (
            ["--runner", "local", "--cron", "0 3 * * *", "--experiment", "nightly"],
            "--experiment applies to --runner kfp",
        ),
    ],
)
def test_schedule_flag_errors(argv, message, capsys):
    from imgpipe.cli import main as cli

    assert cli.main(["schedule", *argv]) == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------ Vertex and KFP
def _spec_file(tmp_path) -> str:
    number = {"parameterType": "NUMBER_DOUBLE"}
    spec = {
        "pipelineSpec": {
            "pipelineInfo": {"name": "imgpipe"},
            "root": {
                "inputDefinitions": {
                    "parameters": {
                        "epochs": {"parameterType": "NUMBER_INTEGER"},
                        "learning_rate": number,
                        "min_accuracy": number,
                    }
                },
                "dag": {"tasks": {}},
            },
            "deploymentSpec": {},
            "schemaVersion": "2.1.0",
            "sdkVersion": "tfx-1.16.0",
        },
        "runtimeConfig": {"gcsOutputDirectory": "gs://bucket/root"},
    }
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(spec))
    return str(path)


def test_vertex_schedule(tmp_path, monkeypatch, capsys):
    from imgpipe.cli import main as cli
    from imgpipe.orchestration import kubeflow

    calls = []

    class PipelineJob:
        def __init__(self, **kwargs):
            calls.append(("PipelineJob", kwargs))

        def create_schedule(self, **kwargs):
            calls.append(("create_schedule", kwargs))
            return types.SimpleNamespace(resource_name="projects/p/locations/r/schedules/42")

    fake = types.SimpleNamespace(PipelineJob=PipelineJob, init=lambda **kw: calls.append(("init", kw)))
    monkeypatch.setattr(kubeflow, "_aiplatform", lambda region=None: fake)
    spec = _spec_file(tmp_path)
    code = cli.main(["schedule", "--runner", "vertex", "--cron", "0 3 * * *", "--spec", spec, "--project", "p",
                     "--region", "r", "--parameter", "min_accuracy=0.7", "--time-zone", "Europe/Berlin",
                     "--service-account", "sa@p"])  # fmt: skip
    assert code == 0
    assert calls[0] == ("init", {"project": "p", "location": "r"})
    assert calls[1][1]["template_path"] == spec and calls[1][1]["parameter_values"] == {"min_accuracy": 0.7}
    assert calls[2] == (
        "create_schedule",
        {
            "cron": "TZ=Europe/Berlin 0 3 * * *",
            "display_name": "imgpipe-schedule",
            "max_concurrent_run_count": 1,
            "service_account": "sa@p",
        },
    )
    assert json.loads(capsys.readouterr().out)["schedule"] == "projects/p/locations/r/schedules/42"


def test_kfp_recurring_run(tmp_path, monkeypatch, capsys):
    from imgpipe.cli import main as cli

    seen = {}

    class Client:
        def create_experiment(self, name):
            seen["experiment"] = name
            return types.SimpleNamespace(experiment_id="exp-1")

        def create_recurring_run(self, **kwargs):
            with open(kwargs["pipeline_package_path"], encoding="utf-8") as f:
                seen["package"] = json.load(f)
            seen["package_path"] = kwargs.pop("pipeline_package_path")
            seen["run"] = kwargs
            return types.SimpleNamespace(recurring_run_id="rr-1")

    monkeypatch.setattr(schedule, "_kfp_client", lambda host: seen.update(host=host) or Client())
    code = cli.main(["schedule", "--runner", "kfp", "--cron", "15 2 * * 1-5", "--spec", _spec_file(tmp_path),
                     "--host", "http://kfp:8888", "--parameter", "epochs=4"])  # fmt: skip
    assert code == 0
    assert seen["host"] == "http://kfp:8888" and seen["experiment"] == "imgpipe"
    assert seen["package_path"].endswith(".yaml")
    assert "root" in seen["package"] and "pipelineSpec" not in seen["package"]  # the bare PipelineSpec
    assert seen["run"] == {
        "experiment_id": "exp-1",
        "job_name": "imgpipe-recurring",
        "cron_expression": "0 15 2 * * 1-5",
        "max_concurrency": 1,
        "no_catchup": True,
        "params": {"epochs": 4},
        "pipeline_root": "gs://bucket/root",
        "service_account": None,
    }
    assert json.loads(capsys.readouterr().out)["recurring_run"] == "rr-1"


def test_remote_schedules_refuse_a_bad_time_zone_and_an_unreachable_host(tmp_path, capsys):
    """Were tracebacks (the time zone was never checked; KFP's client retried, then raised)."""
    import socket

    from imgpipe.cli import main as cli

    spec = _spec_file(tmp_path)
    vertex = ["schedule", "--runner", "vertex", "--cron", "0 3 * * *", "--spec", spec, "--project", "p"]
    assert cli.main([*vertex, "--region", "us-central1", "--time-zone", "Mars/Olympus"]) == 2
    assert "--time-zone 'Mars/Olympus': not an IANA time zone" in capsys.readouterr().err
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    host = f"http://127.0.0.1:{port}"
    assert (
        cli.main(["schedule", "--runner", "kfp", "--cron", "0 3 * * *", "--spec", spec, "--host", host]) == 1
    )
    err = capsys.readouterr().err
    assert f"kfp schedule not created: KFP at {host}: 127.0.0.1 cannot be reached (Connection refused)" in err
    assert "Traceback" not in err


def test_lock_wait_and_verbose_reach_the_scheduled_run(tmp_path, capsys):
    """They were listed in `schedule --help` and dropped: scheduled runs exited 75 at once."""
    from imgpipe.cli import main as cli

    base = ["schedule", "--runner", "local", "--cron", "@daily", "--data", str(tmp_path / "d"), "--home"]
    assert cli.main([*base, str(tmp_path / "h1"), "--lock-wait", "90", "--verbose"]) == 0
    command = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["command"]
    assert command[-5:] == ["--lock-wait", "90", "--home-lock-wait", "21600", "--verbose"]
    assert cli.main([*base, str(tmp_path / "h2"), "--home-lock-wait", "0"]) == 0
    command = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["command"]
    assert "--lock-wait" not in command and "--verbose" not in command
    assert command[-2:] == ["--home-lock-wait", "0"]
    # Remote runners and compiled pipelines have no lock to wait for: refused, not ignored.
    code = cli.main(
        ["schedule", "--runner", "kfp", "--cron", "@daily", "--spec", "s.json", "--lock-wait", "5"]
    )
    assert code == 2 and "run flags (lock_wait) apply to --runner local only" in capsys.readouterr().err
    code = cli.main(
        ["schedule", "--runner", "kfp", "--cron", "@daily", "--spec", "s.json", "--home-lock-wait", "0"]
    )
    assert code == 2 and "run flags (home_lock_wait) apply to --runner local only" in capsys.readouterr().err
    for command in (
        ["compile", "--image", "img:1", "--output", str(tmp_path / "p.json")],
        ["airflow-dag", "--schedule", "@daily", "--output", str(tmp_path / "d.py")],
    ):
        assert cli.main([*command, "--data", str(tmp_path), "--lock-wait", "5"]) == 2
        assert "--lock-wait does not apply" in capsys.readouterr().err
        assert cli.main([*command, "--data", str(tmp_path), "--home-lock-wait", "5"]) == 2
        assert "--home-lock-wait does not apply" in capsys.readouterr().err
        # Parsed, to be refused by name, but not offered in the command's help.
        with pytest.raises(SystemExit):
            cli.main([command[0], "--help"])
        shown = capsys.readouterr().out
        assert "--lock-wait" not in shown and "--lock-file" not in shown and "--home-lock-wait" not in shown


def test_the_home_lock_waits_apart_from_the_schedule_lock(tmp_path, monkeypatch, capsys):
    """`run --home-lock-wait` is the wait for the home's lock alone; --lock-wait stays the wait
    for --lock-file (a scheduled run skips when its own previous run still runs, and waits when
    another pipeline of the home runs)."""
    from imgpipe.cli import main as cli
    from imgpipe.cli import run as run_cli

    waits = []
    monkeypatch.setattr(
        run_cli, "run_pipeline", lambda config, verbose, lock_wait: waits.append(lock_wait) or {}
    )
    base = ["run", "--data", str(tmp_path), "--home", str(tmp_path / "h")]
    assert cli.main([*base, "--lock-file", str(tmp_path / "l"), "--home-lock-wait", "30"]) == 0
    assert cli.main([*base, "--lock-wait", "7"]) == 0
    assert waits == [30.0, 7.0]
    with pytest.raises(SystemExit) as e:
        cli.main([*base, "--home-lock-wait", "-1"])
    assert e.value.code == 2
    assert "--home-lock-wait: must be a number of seconds >= 0" in capsys.readouterr().err


def test_a_second_pipeline_scheduled_in_a_home_is_told_they_take_turns(tmp_path, capsys):
    from imgpipe.cli import main as cli

    base = ["schedule", "--runner", "local", "--cron", "0 3 * * *", "--data", str(tmp_path / "d")]
    base += ["--home", str(tmp_path / "h")]
    assert cli.main(base) == 0
    assert "also has schedules" not in capsys.readouterr().err
    assert cli.main([*base, "--pipeline-name", "second", "--model-name", "m2"]) == 0
    err = capsys.readouterr().err
    assert "this home also has schedules for 'imgpipe'" in err
    assert "waits up to 21600 s for it (--home-lock-wait)" in err


def test_the_scheduled_executable_is_absolute_and_runs_under_cron(tmp_path, monkeypatch, capsys):
    """cron runs the line with PATH=/usr/bin:/bin after `cd HOME`: a bare name found on this shell's
    PATH, or a path relative to here, is written as the absolute path; a program that is not
    imgpipe there is refused before anything is written."""
    from imgpipe.cli import main as cli

    venv_bin = os.path.dirname(sys.executable)
    monkeypatch.setenv("PATH", venv_bin + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.chdir(venv_bin)
    base = ["schedule", "--runner", "local", "--cron", "0 3 * * *", "--data", str(tmp_path / "d")]
    for given in ("imgpipe", "./imgpipe"):
        assert cli.main([*base, "--home", str(tmp_path / "h"), "--imgpipe", given]) == 0
        command = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["command"]
        assert command[0] == os.path.join(venv_bin, "imgpipe")
    for program in ("/bin/false", "/bin/true"):
        assert cli.main([*base, "--home", str(tmp_path / "h2"), "--imgpipe", program]) == 2
        err = capsys.readouterr().err
        assert f"--imgpipe: `{program} --version` with cron's PATH=/usr/bin:/bin exited" in err
        assert "not imgpipe's version" in err
    assert not (tmp_path / "h2" / "schedule").exists()


def test_a_remote_home_is_refused_for_a_local_schedule_and_run(tmp_path, monkeypatch, capsys):
    """os.path made gs://b/h a folder `gs:` of the current directory: the lock, SQLite and records
    there, the artifacts in the bucket."""
    from imgpipe.cli import main as cli

    monkeypatch.chdir(tmp_path)
    for command in (["schedule", "--runner", "local", "--cron", "0 3 * * *"], ["run"]):
        assert cli.main([*command, "--data", str(tmp_path), "--home", "gs://b/h"]) == 2
        assert "home: gs://b/h is a remote URI" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_a_password_only_in_this_shells_environment_is_not_lost_by_the_schedule(
    tmp_path, monkeypatch, capsys
):
    """cron and systemd start runs without this shell's environment: a usable PGPASSFILE is saved
    with the schedule's config; PGPASSWORD, and a PGPASSFILE that would not serve, are warned
    about; a configured password file that would not serve is refused now, not at 03:00."""
    from imgpipe.cli import main as cli

    base = ["schedule", "--runner", "local", "--cron", "0 3 * * *", "--data", str(tmp_path / "d")]
    base += ["--metadata", "postgresql://mlmd@db.internal:5432/imgpipe_mlmd"]
    passfile = tmp_path / "pgpass"
    passfile.write_text("db.internal:5432:imgpipe_mlmd:mlmd:secret\n")
    passfile.chmod(0o600)

    def schedule_in(home: str, *extra: str) -> tuple[str, str]:
        """(the saved config's password file, stderr)"""
        assert cli.main([*base, "--home", str(tmp_path / home), *extra]) == 0
        out, err = capsys.readouterr()
        config = json.loads(out.strip().splitlines()[-1])["config_path"]
        return PipelineConfig.from_yaml(config).metadata_password_file, err

    monkeypatch.delenv("PGPASSFILE", raising=False)
    monkeypatch.setenv("PGPASSWORD", "secret")
    saved, err = schedule_in("h1")
    assert "a password is in PGPASSWORD, which a scheduled run will not see" in err
    assert "secret" not in err and saved == ""
    # PGPASSWORD beside a PGPASSFILE that would not serve (libpq prefers the variable): that
    # file is not saved, and both are said.
    monkeypatch.setenv("PGPASSFILE", os.devnull)
    saved, err = schedule_in("h2")
    assert (
        f"PGPASSFILE is not saved for a scheduled run: metadata_password_file: {os.devnull} is not a file"
        in err
    )
    assert "PGPASSWORD" in err and saved == ""
    monkeypatch.delenv("PGPASSWORD")
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    saved, err = schedule_in("h3")
    assert "PGPASSWORD" not in err and "not saved" not in err and saved == str(passfile)
    # A configured file without a line for the database: every run would fail on it.
    other = tmp_path / "other"
    other.write_text("elsewhere:5432:*:*:x\n")
    other.chmod(0o600)
    argv = [*base, "--home", str(tmp_path / "h4"), "--metadata-password-file", str(other)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"metadata_password_file: {other} has no line for db.internal:5432:imgpipe_mlmd:mlmd" in err
    assert not (tmp_path / "h4" / "schedule").exists()


def test_paths_a_crontab_line_or_unit_cannot_carry_are_refused_and_dollars_escaped(tmp_path, capsys):
    """A line break in the home split the cron line and the unit's lines; systemd expands $NAME in
    ExecStart=, so a '$' in a path is written as '$$'."""
    from imgpipe.cli import main as cli

    base = ["schedule", "--runner", "local", "--cron", "0 3 * * *", "--data", str(tmp_path / "d")]
    assert cli.main([*base, "--home", str(tmp_path / "a\nb")]) == 2
    assert "holds a line break or another control character" in capsys.readouterr().err
    assert not (tmp_path / "a\nb").exists()
    home, units = tmp_path / "$USER home", tmp_path / "units"
    assert cli.main([*base, "--home", str(home), "--systemd", str(units)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    service = (units / "imgpipe-imgpipe.service").read_text()
    exec_start = next(x for x in service.splitlines() if x.startswith("ExecStart="))
    assert (
        "$$USER home" in exec_start and shlex.split(exec_start[10:].replace("$$", "$")) == result["command"]
    )
    assert f"WorkingDirectory={home}" in service  # not expanded there
    assert "Wants=network-online.target" in service


def test_a_unit_name_two_pipelines_share_is_not_taken_over(tmp_path, capsys):
    """Unit names keep only systemd's characters: pipelines 'a b' and 'a_b' are one unit, and the
    second silently replaced the first's."""
    from imgpipe.cli import main as cli

    units = tmp_path / "units"
    base = ["schedule", "--runner", "local", "--cron", "0 3 * * *", "--data", str(tmp_path / "d")]
    base += ["--home", str(tmp_path / "h"), "--systemd", str(units)]
    assert cli.main([*base, "--pipeline-name", "a b"]) == 0
    before = (units / "imgpipe-a_b.service").read_text()
    assert cli.main([*base, "--pipeline-name", "a b", "--epochs", "4"]) == 0  # its own: replaced
    capsys.readouterr()
    assert cli.main([*base, "--pipeline-name", "a_b"]) == 2
    err = capsys.readouterr().err
    assert "imgpipe-a_b.service already runs another schedule" in err and "a b.yaml" in err
    assert (units / "imgpipe-a_b.service").read_text() == before
    assert not (tmp_path / "h" / "schedule" / "a_b.yaml").exists()


def test_a_local_schedule_is_removed_with_its_units_and_told_how_to_drop_its_cron_line(tmp_path, capsys):
    from imgpipe.cli import main as cli

    home, units = tmp_path / "h", tmp_path / "units"
    where = ["--home", str(home), "--systemd", str(units)]
    base = ["schedule", "--runner", "local"]
    assert cli.main([*base, "--cron", "0 3 * * *", "--data", str(tmp_path / "d"), *where]) == 0
    cron_line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["cron_line"]
    assert (
        cli.main(
            [*base, "--cron", "0 4 * * *", "--data", str(tmp_path / "d"), *where, "--pipeline-name", "b"]
        )
        == 0
    )
    capsys.readouterr()
    assert cli.main([*base, "--remove", *where]) == 0
    out = json.loads(capsys.readouterr().out)
    config = str(home / "schedule" / "imgpipe.yaml")
    assert out["removed"] == [
        str(units / "imgpipe-imgpipe.service"),
        str(units / "imgpipe-imgpipe.timer"),
        config,
    ]
    assert out["systemd"].startswith("systemctl disable --now imgpipe-imgpipe.timer")
    assert not os.path.exists(config) and (home / "schedule" / "b.yaml").exists()
    assert sorted(os.listdir(units)) == ["imgpipe-b.service", "imgpipe-b.timer"]
    # The printed command drops this schedule's crontab line and keeps the others.
    other = "0 4 * * * cd /x && imgpipe run --config /x/schedule/b.yaml --lock-file /x/b.lock"
    kept = subprocess.run(
        ["/bin/sh", "-c", out["crontab"].replace("crontab -l", "cat").replace(" | crontab -", "")],
        input=f"{cron_line}\n{other}\n", capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert kept == f"{other}\n"
    # Nothing left to remove: said, with what is scheduled there.
    assert cli.main([*base, "--remove", *where]) == 2
    assert "no schedule of pipeline 'imgpipe'" in capsys.readouterr().err
    assert cli.main([*base, "--remove", "--cron", "@daily", "--home", str(home), "--pipeline-name", "b"]) == 2
    assert "--remove takes no --cron" in capsys.readouterr().err
    assert cli.main([*base, "--home", str(home)]) == 2
    assert "--cron is required (or --remove)" in capsys.readouterr().err
    # Removed without --systemd: the units written with it are found (they were left to fail
    # every day, their config gone).
    assert cli.main([*base, "--remove", "--home", str(home), "--pipeline-name", "b"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["removed"][:2] == [str(units / "imgpipe-b.service"), str(units / "imgpipe-b.timer")]
    assert os.listdir(units) == [] and os.listdir(home / "schedule") == []


def test_the_printed_cron_removal_drops_a_line_whose_path_has_a_percent_sign(tmp_path, capsys):
    """cron reads '%' as a line break, so the line escapes it (\\%); the printed grep looked for the
    path unescaped and kept the line, which then failed at every firing, its config gone."""
    from imgpipe.cli import main as cli

    home = tmp_path / "50% off 'q'"
    base = ["schedule", "--runner", "local", "--home", str(home)]
    assert cli.main([*base, "--cron", "0 3 * * *", "--data", str(tmp_path / "d")]) == 0
    cron_line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["cron_line"]
    assert "\\%" in cron_line
    assert cli.main([*base, "--remove"]) == 0
    command = json.loads(capsys.readouterr().out)["crontab"]
    kept = subprocess.run(
        ["/bin/sh", "-c", command.replace("crontab -l", "cat").replace(" | crontab -", "")],
        input=f"{cron_line}\n# another line\n", capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert kept == "# another line\n"


@pytest.mark.parametrize(
    "beam, said",
    [
        (["--beam-runner", "dataflow"], "beam_runner dataflow needs --project"),
        (
            ["--beam-arg=--direct_num_workers=abc"],
            "beam_args: argument --direct_num_workers: invalid int value",
        ),
    ],
)
def test_beam_settings_every_run_would_refuse_are_refused_before_anything_is_written(
    tmp_path, monkeypatch, capsys, beam, said
):
    """`schedule --runner local` wrote its config and crontab line for Beam settings that each
    scheduled run then refused (exit 2, every night); `run` refused them after making the home
    (its store and lock file left behind for a mistyped flag)."""
    from imgpipe.cli import main as cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "eval").mkdir()
    for command in (["schedule", "--runner", "local", "--cron", "0 3 * * *"], ["run"]):
        code = cli.main([*command, "--data", str(tmp_path / "data"), "--home", str(tmp_path / "home"), *beam])
        out, err = capsys.readouterr()
        assert code == 2 and said in err and out == "", (command, err)
        assert not (tmp_path / "home").exists(), command
