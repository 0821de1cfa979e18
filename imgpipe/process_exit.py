"""A process's exit without the interpreter's last walk over every object it holds.

A process that imported TensorFlow (and TFX, Beam, TFMA) holds a few million objects. When it
exits, the interpreter runs the garbage collector over all of them as it tears its modules
down: 0.8-1.9 s of one core after `import tensorflow` on this machine, paid by every `imgpipe`
command and every worker of a multi-process Beam job, and after the work is done (the server's
"Server stopped" to the process's end, a run's summary to the shell's prompt).

`freeze_at_exit()` makes the exit freeze what exists instead (`gc.freeze`, from an atexit
handler): the collector leaves those objects alone, and the memory goes back with the process.
Objects the teardown would have reached only through a module's globals (a module's dict is in
a cycle) are then not finalized either; nothing this code depends on is finalized that way:
files, record writers, logs, the request log and ML Metadata connections are closed where they
are used, temporary folders by `with` blocks or weakref finalizers (which run at exit anyway),
and logging's own atexit handler still runs (registered earlier, it runs after this one).
BENCHMARKS.md, "A process's exit".

The exit is also kept quiet. The objects that a module's globals do hold are released as the
interpreter clears the modules, in no order: a TensorFlow function released after its own module
was cleared fails in `AtomicFunction.__del__` ("Exception ignored in ... TypeError: 'NoneType'
object is not subscriptable", once per function; after `imgpipe run` trained a model, two such
tracebacks under its summary). From the exit on, only those are dropped; any other unraisable
exception is reported as before.
"""

from __future__ import annotations

import atexit
import gc
import sys

_registered = False


def freeze_at_exit() -> None:
    """From this process's exit on, leave every object to the process's end, and drop the
    tracebacks of TensorFlow functions released in the modules' teardown (once per process)."""
    global _registered
    if not _registered:
        atexit.register(gc.freeze)
        atexit.register(_quiet_teardown)
        _registered = True


def _quiet_teardown() -> None:
    report = sys.unraisablehook

    def hook(unraisable) -> None:  # noqa: ANN001 - sys.UnraisableHookArgs
        if getattr(unraisable.object, "__qualname__", "") == "AtomicFunction.__del__" and isinstance(
            unraisable.exc_value, (TypeError, AttributeError)
        ):
            return
        report(unraisable)

    sys.unraisablehook = hook
