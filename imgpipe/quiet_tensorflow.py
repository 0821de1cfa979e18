"""TensorFlow's import without its plugin-registration lines on stderr.

TensorFlow 2.16's pip wheel logs three C++ errors when it is imported, on every machine, GPU or
not. `filter_tensorflow_import_noise` drops exactly those lines from the first import in a
process: the CLI installs it as it starts, and each worker process of a local multi-process
Beam job as it imports its plugin (imgpipe/beam_worker_plugin.py), before any step imports
TensorFlow.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import re
import sys

from trainer.stdio import stderr_without

# TensorFlow 2.16's pip wheel registers the CUDA FFT/DNN/BLAS plugins from two of its
# shared libraries; the second registration logs an error at import, on every machine,
# GPU or not. Only these lines are dropped; every other line printed at import stays.
TF_IMPORT_NOISE = re.compile(
    rb"Unable to register cu(FFT|DNN|BLAS) factory: Attempting to register factory for plugin "
    rb"cu(FFT|DNN|BLAS) when one has already been registered"
)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """On the first `import tensorflow`, capture stderr (descriptor 2) while the package
    initialises, then replay it without the plugin-registration lines."""

    def find_spec(self, name, path, target=None):  # noqa: ANN001 - the importlib protocol
        if name != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec_module(module) -> None:  # noqa: ANN001
            with stderr_without(TF_IMPORT_NOISE):
                exec_module(module)

        spec.loader.exec_module = quiet_exec_module  # this loader instance serves tensorflow only
        return spec


def filter_tensorflow_import_noise() -> None:
    """Drop TensorFlow's plugin-registration lines when it is first imported (no-op if it is loaded)."""
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlowImport())
