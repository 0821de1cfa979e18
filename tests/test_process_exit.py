"""A process that ran an imgpipe command leaves its objects to the process's end at exit."""

import subprocess
import sys
import textwrap

# Registered before the command, so it runs after imgpipe's own exit handler (atexit is LIFO).
CHILD = textwrap.dedent(
    """
    import atexit, gc, sys
    atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0, flush=True))
    from imgpipe.cli.main import main
    code = main(sys.argv[1:])
    print("exit code", code, "frozen before exit:", gc.get_freeze_count() > 0, flush=True)
    sys.exit(code)
    """
)


def _child(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, timeout=120)


def test_a_commands_objects_are_frozen_at_exit_not_before(tmp_path):
    # A command that fails (exit 2) exits the same way as one that succeeds.
    got = _child("report", "latest", "--home", str(tmp_path / "no-such-home"))
    assert "exit code 2 frozen before exit: False" in got.stdout, got.stdout + got.stderr
    assert "frozen at exit: True" in got.stdout, got.stdout + got.stderr
