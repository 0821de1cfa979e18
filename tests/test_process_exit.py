"""A process that ran an imgpipe command leaves its objects to the process's end at exit."""

import os
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


def test_from_exit_on_only_teardown_errors_of_tensorflow_functions_are_dropped():
    """From exit on, a TensorFlow function's failing __del__ is dropped; any other is reported
    (every imgpipe command and Beam worker: after `imgpipe run` trained, two tracebacks under
    its summary)."""
    code = textwrap.dedent(
        """
        import gc
        from imgpipe import process_exit

        class AtomicFunction:  # what TensorFlow's function class is called
            def __del__(self):
                raise TypeError("'NoneType' object is not subscriptable")

        class Other:
            def __del__(self):
                raise TypeError("a real error")

        AtomicFunction(); Other()  # before exit: both reported
        gc.collect()
        process_exit._quiet_teardown()  # what freeze_at_exit's atexit hook does
        AtomicFunction(); Other()
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    reported = [line for line in done.stderr.splitlines() if line.startswith("Exception ignored in")]
    assert [r.split("function ")[1].split(" at")[0] for r in reported] == [
        "AtomicFunction.__del__",
        "Other.__del__",
        "Other.__del__",
    ], done.stderr
