"""Imported first in each worker process of a local multi-process Beam job.

pipeline/beam.py passes `--beam_plugin=imgpipe.beam_worker_plugin` with `--beam-runner
multiprocess`; Beam's worker imports its plugins before it unpickles any step. So this runs
before TFX's, TFT's or imgpipe's steps import TensorFlow: that import then prints no plugin-
registration errors (imgpipe/quiet_tensorflow.py), as in the `imgpipe` process itself.

It also keeps the worker's exit quiet. The TensorFlow functions that TFT's and TFMA's steps hold
live until the interpreter tears the modules down, and TensorFlow's `AtomicFunction.__del__`
then fails on its own module's cleared globals ("Exception ignored in ... TypeError: 'NoneType'
object is not subscriptable"), once per function. From the worker's exit on (atexit), only those
are dropped; any other unraisable exception is reported as before.
"""

import atexit
import os
import sys

# Beam starts its workers with `python -m`, which puts the working directory first on the import
# path: a project folder with its own trainer/ or pipeline/ package would shadow imgpipe's when a
# step imports them. That first entry goes (a PYTHONPATH entry naming the same folder stays).
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from imgpipe.process_exit import freeze_at_exit  # noqa: E402 - after the import path is fixed
from imgpipe.quiet_tensorflow import filter_tensorflow_import_noise  # noqa: E402

filter_tensorflow_import_noise()
freeze_at_exit()  # the worker's exit leaves TensorFlow's objects to the process's end


def _quiet_teardown() -> None:
    report = sys.unraisablehook

    def hook(unraisable) -> None:  # noqa: ANN001 - sys.UnraisableHookArgs
        if getattr(unraisable.object, "__qualname__", "") == "AtomicFunction.__del__" and isinstance(
            unraisable.exc_value, (TypeError, AttributeError)
        ):
            return
        report(unraisable)

    sys.unraisablehook = hook


atexit.register(_quiet_teardown)
