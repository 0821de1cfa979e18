"""stdout holds only the result; stderr loses exactly the known noise and nothing else.

Each check that involves file descriptors runs in a real child process, whose
descriptors 1 and 2 are pipes this test reads.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap

import pytest

from imgpipe import quiet_tensorflow
from imgpipe.cli import output

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")


def _python(code: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        timeout=timeout,
    )


def test_everything_written_to_stdout_inside_the_block_goes_to_stderr():
    proc = _python(
        """
        import ctypes, os, subprocess, sys
        from imgpipe.cli.output import emit, stdout_to_stderr
        libc = ctypes.CDLL(None)
        with stdout_to_stderr():
            print("python print")                                   # Keras' epoch lines
            os.write(1, b"fd write\\n")                              # C/C++ code writing to fd 1
            libc.printf(b"c stdio printf\\n")                        # buffered in libc, not yet written
            subprocess.run([sys.executable, "-c", "print('child process')"], check=True)  # Beam workers
        emit({"result": 1})
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == ['{"result": 1}']
    err = proc.stderr.decode()
    for line in ("python print", "fd write", "c stdio printf", "child process"):
        assert line in err


def test_the_result_reaches_stdout_when_nothing_is_redirected():
    """Control: without the block the same writes land on stdout (the test above can fail)."""
    proc = _python(
        """
        import os
        from imgpipe.cli.output import emit
        print("python print")
        os.write(1, b"fd write\\n")
        emit({"result": 1})
        """
    )
    assert proc.stdout.decode().splitlines() == ["python print", "fd write", '{"result": 1}']


def test_tensorflow_import_loses_only_the_plugin_registration_lines():
    probe = """
        import sys
        from imgpipe.quiet_tensorflow import filter_tensorflow_import_noise
        if sys.argv[1] == "filtered":
            filter_tensorflow_import_noise()
        import tensorflow
        print("imported", tensorflow.__version__, file=sys.stderr)
    """
    raw = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(probe), "raw"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        timeout=600,
    )
    if not quiet_tensorflow.TF_IMPORT_NOISE.search(raw.stderr):
        pytest.skip("this TensorFlow build prints no plugin-registration lines")
    filtered = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(probe), "filtered"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        timeout=600,
    )
    assert filtered.returncode == 0, filtered.stderr
    assert not quiet_tensorflow.TF_IMPORT_NOISE.search(filtered.stderr)
    assert b"imported" in filtered.stderr

    def lines(err: bytes) -> list[bytes]:  # without C++ log timestamps, which differ between processes
        return [re.sub(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ", b"", line) for line in err.splitlines()]

    kept_raw = [line for line in lines(raw.stderr) if not quiet_tensorflow.TF_IMPORT_NOISE.search(line)]
    assert lines(filtered.stderr) == kept_raw  # every other line printed at import is still there, in order


def test_stderr_filter_keeps_other_lines_written_at_c_level():
    proc = _python(
        """
        import os, re
        from imgpipe.quiet_tensorflow import TF_IMPORT_NOISE
        from trainer.stdio import stderr_without
        with stderr_without(TF_IMPORT_NOISE):
            os.write(2, b"E cuda_dnn.cc] Unable to register cuDNN factory: Attempting to register factory "
                        b"for plugin cuDNN when one has already been registered\\n")
            os.write(2, b"W real warning\\n")
        os.write(2, b"after\\n")
        """
    )
    assert proc.stderr.decode().splitlines() == ["W real warning", "after"]


class _Seen(logging.Handler):
    """The messages that reach the given loggers' handlers (what stderr would show)."""

    def __init__(self, *names: str):
        super().__init__()
        self.loggers = [logging.getLogger(n) for n in names]
        self.messages: list[str] = []

    def emit(self, record):
        try:
            self.messages.append(record.getMessage())
        except Exception:  # noqa: BLE001 - as logging's own handlers do: report it, go on
            self.handleError(record)

    def __enter__(self):
        for logger in self.loggers:
            logger.addHandler(self)
        return self.messages

    def __exit__(self, *exc):
        for logger in self.loggers:
            logger.removeHandler(self)


def test_absl_filter_drops_only_the_false_property_predicate_warning():
    output.setup_logging()
    absl = logging.getLogger("absl")
    with _Seen("absl") as seen:
        absl.warning("ArtifactQuery.property_predicate is not supported.")
        absl.warning("ContextQuery.property_predicate is not supported.")
        absl.warning("a real warning")
    assert seen == ["ContextQuery.property_predicate is not supported.", "a real warning"]


@pytest.mark.parametrize("verbose", [False, True])
def test_beams_log_of_a_failing_step_is_dropped_unless_verbose(verbose):
    """Beam logs a failing step's error with its traceback, then raises it as the component's error,
    which the run's message names: the traceback on stderr was noise, unless --verbose."""
    from apache_beam.runners import common

    # Compiled with Cython: its source is read from the .py file installed beside it.
    with open(os.path.join(os.path.dirname(common.__file__), "common.py"), encoding="utf-8") as f:
        source = f.read()
    assert "_LOGGER.exception(new_exn)" in source and "\" [while running '%s']\"" in source
    output.setup_logging(verbose=verbose)
    try:
        beam = logging.getLogger(common.__name__)
        with _Seen(beam.name) as seen:
            beam.error("INVALID_ARGUMENT: Feature had wrong type [while running 'TFXIORead[train]/Decode']")
            beam.error("something else Beam says")
    finally:
        output.setup_logging()
    assert seen[-1] == "something else Beam says"
    assert len(seen) == (2 if verbose else 1), seen


def test_beam_worker_filter_drops_only_the_two_start_up_warnings():
    """What Beam's local job service relays from its worker processes (--beam-runner multiprocess)."""

    def relayed(message: str) -> str:  # the job service's line: the worker's log entry as text
        return (
            "Worker: severity: WARN timestamp {   seconds: 1796376072   nanos: 532385110 } "
            f'message: "{message}" log_location: "sdk_worker_main.py:409" thread: "MainThread" '
        )

    output.setup_logging()
    workers = logging.getLogger("apache_beam.runners.portability.local_job_service")
    with _Seen(workers.name) as seen:
        workers.warning(relayed("No semi_persistent_directory found:  User registered objects ..."))
        # The direct runner's two options, in predict-batch's order and in imgpipe run's.
        for a, b in (
            ("pipeline_type_check", "direct_runner_use_stacked_bundle"),
            ("direct_runner_use_stacked_bundle", "pipeline_type_check"),
        ):
            workers.warning(relayed(f"Discarding unparseable args: [\\'--{a}\\', \\'--{b}\\']"))
        kept = [
            relayed("Discarding unparseable args: [\\'--pipeline_type_check\\', \\'--my_option\\']"),
            relayed("a real worker warning"),
        ]
        for message in kept:
            workers.warning(message)
    assert seen == kept


# TFX's and TFT's notices, as their code (tfx/components/transform/executor.py,
# tensorflow_transform/graph_tools.py) formats them on every run of the pipeline.
_IN_PLACE = (
    "Not using the in-place Transform because the following features require analyzing: ('image', 'label')"
)
_TABLES = (
    "Tables initialized inside a tf.function  will be re-initialized on every invocation of the function. "
    "This  re-initialization can have significant impact on performance. Consider lifting  them out of the "
    "graph context using  `tf.init_scope`.: {}"
)


def _library_notices(tmp_path, monkeypatch) -> tuple[list[str], list[str]]:
    """(dropped, kept): the libraries' notices about their own code, each raised for real where
    that is cheap (TensorFlow's deprecation, Keras's load), and near misses that must stay."""
    import tensorflow as tf
    import tf_keras
    from tensorflow.python.util import deprecation

    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def double(self, x):
            return x * 2.0

    saved = str(tmp_path / "saved_model")
    tf.saved_model.save(Doubler(), saved)
    records = str(tmp_path / "r.tfrecord")
    with tf.io.TFRecordWriter(records) as w:
        w.write(b"x")
    # A deprecated call from an installed package's code, then the same call from a user's file.
    callers = {}
    for where in ("site-packages/somelib/reader.py", "my_project/module_file.py"):
        code = compile(
            "def read(p):\n    return list(tf.compat.v1.python_io.tf_record_iterator(p))\n",
            str(tmp_path / where),
            "exec",
        )
        scope = {"tf": tf}
        exec(code, scope)
        callers[where] = scope["read"]

    absl, tf_logger = logging.getLogger("absl"), logging.getLogger("tensorflow")
    with _Seen("absl", "tensorflow") as seen:
        absl.warning(_IN_PLACE)
        absl.warning(
            _TABLES.format(
                "compute_and_apply_vocabulary/apply_vocab/text_file_init/InitializeTableFromTextFileV2"
            )
        )
        absl.error("Execution %d failed.", 6)  # TFX's launcher, as it re-raises a component's error
        tf_keras.models.load_model(saved)  # Keras's "saved prior to TF 2.5", logged by tf_keras (twice)
        monkeypatch.setattr(deprecation, "_PRINTED_WARNING", {})
        callers["site-packages/somelib/reader.py"](records)
        tf.lite.TFLiteConverter.from_concrete_functions([Doubler().double.get_concrete_function()])
        dropped = list(seen)
        del seen[:]
        absl.warning(
            _TABLES.format("my_table/table_init/InitializeTableFromTextFileV2")
        )  # not TFT's vocabulary
        absl.warning("Not using the in-place Transform: a different reason")  # not the pattern's text
        absl.error("Execution %d failed: %s", 6, "a different text")
        monkeypatch.setattr(deprecation, "_PRINTED_WARNING", {})
        callers["my_project/module_file.py"](records)
        tf_logger.warning("a real TensorFlow warning")
        kept = list(seen)
    return dropped, kept


@pytest.mark.parametrize("verbose", [False, True])
def test_library_notices_about_their_own_code_are_dropped_unless_verbose(tmp_path, monkeypatch, verbose):
    output.setup_logging(verbose=verbose)
    try:
        dropped, kept = _library_notices(tmp_path, monkeypatch)
    finally:
        output.setup_logging()
    # What each notice is, as the libraries logged it: checked first, so a library that words
    # a notice differently fails here, not by a silent pass of a pattern that no longer matches.
    joined = "\n".join(dropped)
    if verbose:
        assert joined.count("SavedModel saved prior to TF 2.5") >= 1, dropped
        assert "somelib/reader.py:2: tf_record_iterator (from " in joined and "is deprecated" in joined, (
            dropped
        )
        assert "Please consider providing the trackable_obj argument in the from_concrete_functions" in joined
        assert dropped[:3] == [
            _IN_PLACE,
            _TABLES.format(
                "compute_and_apply_vocabulary/apply_vocab/text_file_init/InitializeTableFromTextFileV2"
            ),
            "Execution 6 failed.",
        ]
    else:
        assert dropped == []
    assert len(kept) == 5, kept
    assert kept[0].endswith("my_table/table_init/InitializeTableFromTextFileV2")
    assert kept[1] == "Not using the in-place Transform: a different reason"
    assert kept[2] == "Execution 6 failed: a different text"
    assert "my_project/module_file.py:2: tf_record_iterator (from " in kept[3] and "is deprecated" in kept[3]
    assert kept[4] == "a real TensorFlow warning"


def test_tfx_launcher_still_logs_the_dropped_execution_failed_line():
    """The dropped line's text as TFX's launcher writes it (the pattern would silently stop matching)."""
    import inspect

    from tfx.orchestration.portable import launcher

    assert "logging.error('Execution %d failed.', execution_info.execution_id)" in inspect.getsource(launcher)


def test_the_pipeline_sets_no_property_predicate_so_the_dropped_warning_is_false():
    """TFX warns because `if artifact_query.property_predicate:` is true for an unset message."""
    from tfx.dsl.compiler import compiler

    from pipeline.config import PipelineConfig
    from pipeline.pipeline import create_pipeline

    ir = compiler.Compiler().compile(create_pipeline(PipelineConfig(data_dir="/d", home="/h")))
    queries = [
        channel.artifact_query
        for node in ir.nodes
        for spec in node.pipeline_node.inputs.inputs.values()
        for channel in spec.channels
    ]
    assert queries and not any(q.HasField("property_predicate") for q in queries)
    assert all(bool(q.property_predicate) for q in queries)  # TFX's check: true all the same


def test_emit_is_one_json_line(capsys):
    output.emit({"b": 1, "a": [1, 2]})
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1 and json.loads(out) == {"a": [1, 2], "b": 1}


@pytest.mark.parametrize(
    "logger", ["absl", "tensorflow", "apache_beam.runners.portability.local_job_service"]
)
def test_a_record_whose_arguments_do_not_fit_passes_the_filters_without_raising(logger, capsys, monkeypatch):
    """A library's log call with the wrong arguments must not raise through imgpipe's filters into
    that library's code: the record reaches the handlers, whose own error report it gets."""
    output.setup_logging()
    monkeypatch.setattr(logging.getLogger(logger), "propagate", False)  # pytest's handler would raise
    with _Seen(logger) as seen:
        logging.getLogger(logger).warning("Not using the in-place Transform %d", "not a number")
    assert seen == []  # the handler could not format it either, and reported it as logging's handlers do
    assert "Logging error" in capsys.readouterr().err
