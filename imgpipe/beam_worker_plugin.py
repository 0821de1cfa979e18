"""Imported first in each worker process of a local multi-process Beam job.

pipeline/beam.py passes `--beam_plugin=imgpipe.beam_worker_plugin` with `--beam-runner
multiprocess`; Beam's worker imports its plugins before it unpickles any step, so this runs
before TFX's, TFT's or imgpipe's steps import TensorFlow: that import then prints no plugin-
registration errors (imgpipe/quiet_tensorflow.py), as in the `imgpipe` process itself.
"""

from imgpipe.quiet_tensorflow import filter_tensorflow_import_noise

filter_tensorflow_import_noise()
