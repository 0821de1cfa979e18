"""The home's run lock between real processes: refuse at once naming the holder, or wait then take it.

(tests/e2e runs two real `imgpipe run`s on one home at once; test_schedule.py covers --lock-file.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from imgpipe.orchestration import lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")

_TAKE = textwrap.dedent(
    """
    import logging, sys
    from imgpipe.orchestration.lock import LockBusy, run_lock
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path, wait, holder = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    try:
        with run_lock(path, wait=wait, holder=holder):
            print("locked", flush=True)
            sys.stdin.readline()
    except LockBusy as e:
        print(e, file=sys.stderr)
        sys.exit(75)
    """
)


class Process:
    """Another process taking the lock at `path` (waiting up to `wait` s); holds it until release()."""

    def __init__(self, path: str, holder: str, wait: float = 0.0):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _TAKE, path, str(wait), holder],
            cwd=ROOT,
            env=ENV,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()


@pytest.fixture
def holder(tmp_path):
    p = Process(str(tmp_path / "home" / lock.HOME_LOCK_FILE), "run A")
    assert p.proc.stdout.readline().strip() == "locked"
    yield p
    p.release()
    p.proc.wait(timeout=60)


def test_a_second_process_is_refused_at_once_naming_the_holder(tmp_path, holder):
    second = Process(str(tmp_path / "home" / lock.HOME_LOCK_FILE), "run B")
    _, err = second.proc.communicate(timeout=120)
    assert second.proc.returncode == 75
    assert f"(pid {holder.proc.pid} since " in err and ", run A)" in err and "waiting" not in err


def test_a_waiting_process_takes_the_lock_when_the_holder_ends(tmp_path, holder):
    path = str(tmp_path / "home" / lock.HOME_LOCK_FILE)
    second = Process(path, "run B", wait=600)
    waiting = second.proc.stderr.readline()
    assert waiting.startswith("waiting up to 600s for the lock") and "run A" in waiting
    holder.release()
    assert holder.proc.wait(timeout=60) == 0
    assert second.proc.stdout.readline().strip() == "locked"  # it went on once the lock was free
    with open(path, encoding="utf-8") as f:
        content = f.read()
    assert content.startswith(f"pid {second.proc.pid} since ") and content.rstrip().endswith(", run B")
    second.release()
    assert second.proc.wait(timeout=60) == 0


def test_a_wait_that_runs_out_is_refused(tmp_path, holder):
    second = Process(str(tmp_path / "home" / lock.HOME_LOCK_FILE), "run B", wait=0.5)
    _, err = second.proc.communicate(timeout=120)
    assert second.proc.returncode == 75 and "after waiting 0.5s" in err and "run A" in err


def test_imgpipe_run_on_a_held_home_exits_75_and_touches_nothing(tmp_path, holder):
    from tests import helpers

    data = helpers.write_split_dataset(str(tmp_path / "data"), helpers.digit_images((0, 1), per_class=5))
    home = tmp_path / "home"
    loaded = tmp_path / "tensorflow_loaded"
    # `imgpipe run`, telling at exit whether it loaded TensorFlow: a refused run does not need it.
    cli = (
        "import atexit, sys; "
        "atexit.register(lambda: open(sys.argv[1], 'w').write(str('tensorflow' in sys.modules))); "
        "from imgpipe.cli.main import main; sys.exit(main(sys.argv[2:]))"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            cli,
            str(loaded),
            "run",
            "--data",
            data,
            "--home",
            str(home),
            "--weights",
            "none",
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == lock.EXIT_LOCKED, proc.stderr
    assert proc.stdout == ""
    assert f"holds the lock {home / lock.HOME_LOCK_FILE} (pid {holder.proc.pid} since" in proc.stderr
    assert ", run A)" in proc.stderr and "waiting" not in proc.stderr
    assert sorted(os.listdir(home)) == [lock.HOME_LOCK_FILE]  # no metadata, no artifacts, no scratch
    assert loaded.read_text() == "False"  # refused before reading the records with TensorFlow


@pytest.mark.parametrize("value", ["-1", "soon", "inf"])
def test_lock_wait_must_be_seconds(tmp_path, value, capsys):
    from imgpipe.cli import main as cli

    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--data", str(tmp_path), "--lock-wait", value])
    assert e.value.code == 2 and "--lock-wait: must be a number of seconds" in capsys.readouterr().err


def test_lock_file_naming_the_home_lock_is_not_taken_twice(tmp_path, monkeypatch, capsys):
    """`--lock-file HOME/run.lock` is the lock the run takes anyway: the run must not refuse itself."""
    from imgpipe.cli import main as cli
    from imgpipe.cli import run as run_cli

    home = tmp_path / "home"

    def fake_run_pipeline(config, verbose=False, lock_wait=0.0):  # what run_local does first
        with lock.run_lock(lock.home_lock_path(config.resolved().home), wait=lock_wait):
            return {"ran": True}

    monkeypatch.setattr(run_cli, "run_pipeline", fake_run_pipeline)
    for lock_file in (home / lock.HOME_LOCK_FILE, home / "sub" / ".." / lock.HOME_LOCK_FILE):
        code = cli.main(["run", "--data", str(tmp_path), "--home", str(home), "--lock-file", str(lock_file)])
        assert code == 0 and capsys.readouterr().out.strip() == '{"ran": true}'
    # Another lock file is held on top of the home's, for the whole run.
    other = tmp_path / "schedule.lock"

    def check_both_held(config, verbose=False, lock_wait=0.0):
        with pytest.raises(lock.LockBusy):
            with lock.run_lock(str(other)):
                pass
        return fake_run_pipeline(config, verbose, lock_wait)

    monkeypatch.setattr(run_cli, "run_pipeline", check_both_held)
    assert cli.main(["run", "--data", str(tmp_path), "--home", str(home), "--lock-file", str(other)]) == 0


def test_a_removed_lock_file_goes_with_its_holder_and_never_lets_two_in(tmp_path, monkeypatch):
    """remove=True (predict-batch's locks in the temporary folder) deletes the file as the block
    ends, also on an exception. A process that opened the file just before its holder removed it
    would lock the removed inode while a third locks the new file: it opens the path again."""
    path = str(tmp_path / "job.lock")
    with lock.run_lock(path, remove=True, holder="job A"):
        assert "job A" in open(path).read()
        with pytest.raises(lock.LockBusy, match="job A"):
            with lock.run_lock(path, remove=True):
                pass
    assert not os.path.exists(path)
    with pytest.raises(RuntimeError), lock.run_lock(path, remove=True):
        raise RuntimeError("the job failed")
    assert not os.path.exists(path)
    with lock.run_lock(path):  # by default the file stays (a home's run.lock)
        pass
    assert os.path.exists(path)

    # The race: the first open returns the file a holder then removes (before the flock).
    real_open, opened = lock._open_lock_file, []

    def open_then_removed(p):
        fd = real_open(p)
        if not opened:
            os.unlink(p)
        opened.append(fd)
        return fd

    monkeypatch.setattr(lock, "_open_lock_file", open_then_removed)
    with lock.run_lock(path, remove=True, holder="job B"):
        assert len(opened) == 2  # the stale inode was let go and the path opened again
        assert os.path.exists(path) and "job B" in open(path).read()
        monkeypatch.setattr(lock, "_open_lock_file", real_open)
        with pytest.raises(lock.LockBusy, match="job B"):  # the path's file is the one held
            with lock.run_lock(path, remove=True):
                pass
    assert not os.path.exists(path)


def test_a_full_disk_does_not_stop_the_lock(tmp_path, monkeypatch, caplog):
    """With 0 bytes free, writing the holder's line failed (ENOSPC) and run and prune (the command
    that would free the disk) ended in a traceback: the flock is the lock, the line best effort."""
    import errno

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lock.os, "pwrite", full)
    path = str(tmp_path / "run.lock")
    with lock.run_lock(path, holder="prune"):
        with pytest.raises(lock.LockBusy):  # still exclusive
            with lock.run_lock(path):
                pass
    assert "who holds it could not be written" in caplog.text and "No space left" in caplog.text


def test_a_home_lock_file_deleted_while_held_lets_no_one_in(tmp_path):
    """`rm HOME/run.lock` ("a stale lock") while a run held it let a prune in, which recovered the
    live run's Trainer as dead and deleted its outputs: the home folder is locked too."""
    home = str(tmp_path / "home")
    with lock.home_lock(home, holder="run live"):
        os.remove(lock.home_lock_path(home))
        assert lock.home_held(home) is True
        with pytest.raises(lock.LockBusy) as caught:
            with lock.home_lock(home, holder="prune"):
                pytest.fail("a second holder got in")
        assert str(caught.value).startswith(
            f"another imgpipe process holds the home {home}, although its lock file {home}/run.lock was "
            "deleted or replaced while it held it"
        )
        assert str(caught.value).endswith("not starting prune")
    assert lock.home_held(home) is False
    with lock.home_lock(home, holder="prune"):  # freed with its holder
        pass


def test_the_lock_file_is_made_as_the_umask_says(tmp_path):
    """A team's home under umask 002 got a 0644 lock file, which the group's other users could
    not open: every run of theirs exited 2 on it."""
    old = os.umask(0o002)
    try:
        with lock.home_lock(str(tmp_path / "home")):
            pass
    finally:
        os.umask(old)
    assert os.stat(lock.home_lock_path(str(tmp_path / "home"))).st_mode & 0o777 == 0o664


def test_a_lock_file_this_user_may_only_read_still_locks(tmp_path, monkeypatch, caplog):
    """Another user's lock file, readable but not writable (made under an earlier 0644 rule)."""
    path = str(tmp_path / "run.lock")
    open(path, "w").close()
    os.chmod(path, 0o444)  # its owner's, read-only (root writes it anyway: the refusal is made below)
    opened = os.open

    def not_writable(p, flags, *mode):
        if p == path and flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(13, "Permission denied", p)
        return opened(p, flags, *mode)

    monkeypatch.setattr(lock.os, "open", not_writable)
    with lock.run_lock(path, holder="run A"):
        with pytest.raises(lock.LockBusy):  # still exclusive
            with lock.run_lock(path):
                pass
    # Said as what it is (it was "could not be written into its file: Invalid argument").
    # (the suite runs as the file's owner: said as its own read-only file)
    assert (
        "who holds it is not written into its file: the file (mode 0444) is read-only to this user"
        in caplog.text
    )
    assert "Invalid argument" not in caplog.text
