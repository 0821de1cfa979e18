"""Imported first in each worker process of a local multi-process Beam job.

pipeline/beam.py passes `--beam_plugin=imgpipe.beam_worker_plugin` with `--beam-runner
multiprocess`; Beam's worker imports its plugins before it unpickles any step. So this runs
before TFX's, TFT's or imgpipe's steps import TensorFlow: that import then prints no plugin-
registration errors (imgpipe/quiet_tensorflow.py), as in the `imgpipe` process itself.

It also keeps the worker's exit quiet (imgpipe/process_exit.py): the TensorFlow functions that
TFT's and TFMA's steps hold live until the interpreter tears the modules down, where each one's
`AtomicFunction.__del__` would print a traceback.
"""

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
freeze_at_exit()  # the worker's exit leaves TensorFlow's objects to the process's end, quietly
