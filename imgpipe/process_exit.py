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
"""

from __future__ import annotations

import atexit
import gc

_registered = False


def freeze_at_exit() -> None:
    """From this process's exit on, leave every object to the process's end (once per process)."""
    global _registered
    if not _registered:
        atexit.register(gc.freeze)
        _registered = True
