"""Beam runner arguments, and Transform on the multiprocess runner equals the in-memory run."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from pipeline.beam import (
    BeamConfig,
    BeamConfigError,
    BeamSettings,
    beam_pipeline_args,
    flag_value,
    with_container_image,
)
from pipeline.config import ConfigError

IMAGE = "us-docker.pkg.dev/proj/repo/imgpipe:1"


def _config(runner: str, *args: str, workers: int = 0) -> BeamConfig:
    return BeamConfig.model_construct(beam_runner=runner, beam_workers=workers, beam_args=args)


# ------------------------------------------------------------------------ mapping
def test_direct_runs_in_memory_with_one_worker():
    assert beam_pipeline_args(_config("direct")) == [
        "--runner=pipeline.local_beam.DirectRunner",
        "--direct_running_mode=in_memory",
        "--direct_num_workers=1",
    ]


def test_multiprocess_uses_worker_processes():
    args = beam_pipeline_args(_config("multiprocess", workers=3))
    assert args == [
        "--runner=pipeline.local_beam.DirectRunner",
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=3",
        "--beam_plugin=imgpipe.beam_worker_plugin",
    ]
    default = beam_pipeline_args(_config("multiprocess"))
    assert f"--direct_num_workers={os.cpu_count()}" in default


def _run_logged(args: list[str], caplog) -> list[int]:
    """Run a small Beam job with `args`; its output, with the direct runner's log in caplog."""
    import logging

    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    caplog.set_level(logging.INFO, logger="apache_beam.runners.direct.direct_runner")
    with beam.Pipeline(argv=args) as p:
        out = p | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * x)
        assert_that(out, equal_to([1, 4, 9]))
    return [r.getMessage() for r in caplog.records if "Prism" in r.getMessage()]


def test_the_local_runner_never_tries_prism(caplog):
    """Beam's own DirectRunner tries Prism first (a binary it downloads at run time); ours does not."""
    ours = _run_logged(beam_pipeline_args(_config("direct")), caplog)
    assert ours == []
    caplog.clear()
    # A Prism path that does not exist: the attempt fails at once, with or without a network.
    theirs = _run_logged(["--runner=DirectRunner", "--prism_location=/nonexistent/prism"], caplog)
    assert any("PrismRunner" in m for m in theirs), theirs


def test_the_demo_analysis_does_not_read_the_programs_arguments(monkeypatch, tmp_path):
    """analyze_transform (the serving demo model's, the benchmarks' and tests' Transform analysis)
    builds its own pipeline on the local runner. TFT's bare `(rows, metadata) | ...` makes one from
    `sys.argv`: the calling program's own arguments were read as Beam options (a script read from
    stdin, `-`, failed; `--runner=...` of another tool would have chosen the runner)."""
    from imgpipe.demo.analyze import analyze_transform
    from imgpipe.demo.data import digit_images
    from trainer import data

    monkeypatch.setattr(sys, "argv", ["a-notebook-or-script", "-", "--runner=NoSuchRunner", "-f", "k.json"])
    tfo = analyze_transform(digit_images((3, 5), per_class=3, size=16), str(tmp_path / "tft"), image_size=16)
    assert sorted(data.class_names(tfo)) == ["3", "5"]


@pytest.mark.parametrize("mode", ["direct", "multiprocess"])
def test_the_local_runner_skips_the_runner_api_round_trip(mode, monkeypatch):
    """A batch job goes to the FnApiRunner as built: like Beam's own DirectRunner, ours does not
    first rebuild the pipeline from its runner API proto (every DoFn pickled and unpickled)."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    rebuilt = []
    from_proto = beam.Pipeline.from_runner_api

    def counted(*args, **kwargs):
        rebuilt.append(1)
        return from_proto(*args, **kwargs)

    monkeypatch.setattr(beam.Pipeline, "from_runner_api", staticmethod(counted))
    args = beam_pipeline_args(_config(mode, workers=1))
    with beam.Pipeline(argv=args) as p:
        out = p | beam.Create([1, 2, 3]) | beam.Map(lambda x: x + 1)
        assert_that(out, equal_to([2, 3, 4]))
    assert rebuilt == []
    # The check is live: a runner under another class name pays the round trip.
    with beam.Pipeline(argv=["--runner=BundleBasedDirectRunner"]) as p:
        assert_that(p | beam.Create([1]), equal_to([1]))
    assert rebuilt == [1]


DATAFLOW = ("--project=proj-1", "--region=europe-west4", "--temp_location=gs://b/tmp")


@pytest.mark.parametrize("missing", ["project", "region", "temp_location"])
def test_dataflow_names_the_missing_flag(missing):
    args = tuple(a for a in DATAFLOW if not a.startswith(f"--{missing}="))
    with pytest.raises(BeamConfigError, match=f"needs --{missing} "):
        beam_pipeline_args(_config("dataflow", *args))


def test_dataflow_args_and_worker_image():
    config = with_container_image(_config("dataflow", *DATAFLOW, workers=8), IMAGE)
    args = beam_pipeline_args(config)
    assert args[0] == "--runner=DataflowRunner"
    assert "--max_num_workers=8" in args
    for a in DATAFLOW:
        assert a in args
    assert flag_value(args, "sdk_container_image") == IMAGE
    # A user-chosen worker image wins over the pipeline image.
    own = with_container_image(_config("dataflow", *DATAFLOW, "--sdk_container_image=mine:2"), IMAGE)
    assert flag_value(beam_pipeline_args(own), "sdk_container_image") == "mine:2"
    assert beam_pipeline_args(own).count("--sdk_container_image=mine:2") == 1


def test_dataflow_needs_a_gcs_temp_location():
    with pytest.raises(BeamConfigError, match="gs://"):
        beam_pipeline_args(
            _config("dataflow", "--project=proj-1", "--region=us-central1", "--temp_location=/tmp/x")
        )


@pytest.mark.parametrize("runner", ["flink", "spark"])
def test_portable_runners(runner):
    with pytest.raises(BeamConfigError, match="needs --job_endpoint"):
        beam_pipeline_args(_config(runner, "--environment_type=LOOPBACK"))
    with pytest.raises(BeamConfigError, match="needs --environment_type"):
        beam_pipeline_args(_config(runner, "--job_endpoint=localhost:8099"))
    with pytest.raises(BeamConfigError, match="--environment_config=IMAGE"):
        beam_pipeline_args(_config(runner, "--job_endpoint=h:8099", "--environment_type=DOCKER"))
    loopback = beam_pipeline_args(_config(runner, "--job_endpoint=h:8099", "--environment_type=LOOPBACK"))
    assert loopback == ["--runner=PortableRunner", "--job_endpoint=h:8099", "--environment_type=LOOPBACK"]
    # Compiled pipelines run the SDK harness in the pipeline image.
    docker = beam_pipeline_args(with_container_image(_config(runner, "--job_endpoint", "jobs:8099"), IMAGE))
    assert docker[0] == "--runner=PortableRunner"
    assert BeamSettings.from_args(docker) == BeamSettings(
        job_endpoint="jobs:8099", environment_type="DOCKER", environment_config=IMAGE
    )


def test_runner_flag_in_beam_args_is_refused():
    with pytest.raises(BeamConfigError, match="--beam-runner"):
        beam_pipeline_args(_config("direct", "--runner=DataflowRunner"))
    with pytest.raises(BeamConfigError, match="--project has no value"):
        beam_pipeline_args(_config("dataflow", "--project"))
    assert issubclass(BeamConfigError, ConfigError)  # the CLI reports it as a usage error (exit 2)


@pytest.mark.parametrize(
    "runner,bad,reason",
    [
        ("direct", "--direct_num_workers=abc", "--direct_num_workers: invalid int value: 'abc'"),
        ("multiprocess", "--direct_running_mode=bogus", "--direct_running_mode: invalid choice: 'bogus'"),
        ("dataflow", "--max_num_workers=many", "--max_num_workers: invalid int value: 'many'"),
        ("direct", "--save_main_session=yes", "--save_main_session: ignored explicit argument 'yes'"),
    ],
)
def test_a_beam_arg_beam_cannot_parse_is_refused_when_the_pipeline_is_built(runner, bad, reason, capfd):
    """Not mid-run, where the first Beam job's parser exits the process with its usage text."""
    extra = (
        ("--project=my-project", "--region=us-central1", "--temp_location=gs://b/tmp")
        if runner == "dataflow"
        else ()
    )
    with pytest.raises(BeamConfigError, match="^beam_args: argument " + re.escape(reason)):
        beam_pipeline_args(_config(runner, *extra, bad))
    assert capfd.readouterr().err == ""  # Beam's usage text is not printed
    # Flags Beam does not know pass, as they do in a job; so do good values of the same flags.
    args = beam_pipeline_args(_config("direct", "--my_own_flag=3", "--experiments=x"))
    assert args[-2:] == ["--my_own_flag=3", "--experiments=x"]


def test_unknown_runner_is_refused():
    with pytest.raises(BeamConfigError, match="unknown beam runner"):
        beam_pipeline_args(_config("local"))


# ------------------------------------------------------------- multiprocess == in memory
def _transform(items, runner: str, workdir: str):
    """Analyze + transform `items` with preprocessing_fn on `runner`; return (vocab, rows by id)."""
    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    from trainer.features import IMAGE_KEY, IMAGE_XF, LABEL_KEY, LABEL_VOCAB, LABEL_XF
    from trainer.preprocessing import preprocessing_fn

    spec = {
        "id": tf.io.FixedLenFeature([1], tf.int64),
        IMAGE_KEY: tf.io.FixedLenFeature([1], tf.string),
        LABEL_KEY: tf.io.FixedLenFeature([1], tf.string),
    }
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    rows = [{"id": [i], IMAGE_KEY: [img], LABEL_KEY: [lab.encode()]} for i, (img, lab) in enumerate(items)]
    custom = {"backbone": "MobileNetV2", "image_size": 32}

    def fn(inputs):
        out = preprocessing_fn({IMAGE_KEY: inputs[IMAGE_KEY], LABEL_KEY: inputs[LABEL_KEY]}, custom)
        out["id"] = inputs["id"]
        return out

    transform_dir = os.path.join(workdir, "transform")
    rows_prefix = os.path.join(workdir, "rows", "part")
    options = PipelineOptions(beam_pipeline_args(_config(runner, workers=2)))
    with beam.Pipeline(options=options) as p:
        with tft_beam.Context(temp_dir=os.path.join(workdir, "tmp"), force_tf_compat_v1=False):
            raw = p | "Rows" >> beam.Create(rows)
            (transformed, _), transform_fn = (raw, metadata) | tft_beam.AnalyzeAndTransformDataset(fn)
            _ = transform_fn | tft_beam.WriteTransformFn(transform_dir)
            _ = (
                transformed
                | "ToJson"
                >> beam.Map(
                    lambda r: json.dumps(
                        {
                            "id": int(np.ravel(r["id"])[0]),
                            "label": int(np.ravel(r[LABEL_XF])[0]),
                            "image": np.asarray(r[IMAGE_XF], np.float64).ravel().tolist(),
                        }
                    )
                )
                | beam.io.WriteToText(rows_prefix)
            )
    vocab = tft.TFTransformOutput(transform_dir).vocabulary_by_name(LABEL_VOCAB)
    by_id = {}
    for path in glob.glob(rows_prefix + "*"):
        with open(path, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                by_id[r["id"]] = (r["label"], np.array(r["image"], np.float32))
    return list(vocab), by_id


def test_multiprocess_transform_equals_in_memory(tmp_path, capfd):
    import tensorflow  # noqa: F401 - this process's own first import, before the capture below

    from tests.helpers import digit_images

    capfd.readouterr()

    # Classes of distinct counts; the vocabulary is ordered by each name's SHA-1, not by them.
    items = [
        it for d, n in ((0, 4), (1, 3), (2, 2), (7, 1)) for it in digit_images((d,), per_class=n, size=16)
    ]
    vocab_mem, rows_mem = _transform(items, "direct", str(tmp_path / "mem"))
    vocab_mp, rows_mp = _transform(items, "multiprocess", str(tmp_path / "mp"))

    assert vocab_mem == sorted([b"0", b"1", b"2", b"7"], key=lambda name: hashlib.sha1(name).digest())
    assert vocab_mp == vocab_mem
    assert sorted(rows_mem) == sorted(rows_mp) == list(range(len(items)))
    for i, (label, image) in rows_mem.items():
        label_mp, image_mp = rows_mp[i]
        assert label_mp == label == vocab_mem.index(items[i][1].encode())
        assert image.shape == image_mp.shape == (32 * 32 * 3,)
        np.testing.assert_allclose(image_mp, image, rtol=0, atol=1e-6)
    # Different images really do give different tensors (the comparison is not vacuous).
    assert not np.allclose(rows_mem[0][1], rows_mem[len(items) - 1][1])
    # The workers imported TensorFlow (TFT's steps) after the worker plugin, without its
    # plugin-registration errors on the stderr they share with this process, and exited
    # without a traceback for each TensorFlow function still held at their teardown.
    err = capfd.readouterr().err
    assert "Unable to register cu" not in err, err[-2000:]
    assert "Exception ignored in" not in err, err[-2000:]


def test_a_worker_started_in_a_project_with_a_trainer_package_imports_imgpipes(tmp_path):
    """Beam starts its workers with `python -m` in the run's working directory, which Python puts
    first on the import path: the plugin takes it off before a step imports imgpipe's packages."""
    project = tmp_path / "project"
    (project / "trainer").mkdir(parents=True)
    (project / "trainer" / "__init__.py").write_text('raise ImportError("the project\'s own trainer")\n')
    # A module run with -m from the working directory, as Beam's worker main is run.
    (project / "worker_probe.py").write_text(
        "import imgpipe.beam_worker_plugin\nimport trainer.features\nprint(trainer.features.__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "worker_probe"], cwd=project, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert not done.stdout.strip().startswith(str(project)), done.stdout
