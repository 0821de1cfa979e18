"""ExampleGen's cache key holds the records' bytes, not only their sizes and modification times."""

import os

import pytest
from tfx.components.example_gen import input_processor
from tfx.proto import example_gen_pb2

from components.example_gen import ContentFingerprintDriver, ImageExampleGen, _ContentInputProcessor
from imgpipe.ingest.contract import example_bytes

SPLITS = [
    example_gen_pb2.Input.Split(name="train", pattern="train/*"),
    example_gen_pb2.Input.Split(name="eval", pattern="eval/*"),
]


def _write(path, labels):
    import tensorflow as tf

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as w:
        for i, label in enumerate(labels):
            w.write(example_bytes(bytes([i % 251]) * 40, label))


def _data(root):
    _write(os.path.join(root, "train", "data-00000-of-00001.tfrecord"), ["5", "6", "5", "6"])
    _write(os.path.join(root, "eval", "data-00000-of-00001.tfrecord"), ["5", "6"])
    return str(root)


def _fingerprint(processor_class, root):
    processor = processor_class(root, SPLITS)
    span, version = processor.resolve_span_and_version()
    return processor.get_input_fingerprint(span, version)


def _rewrite_keeping_size_and_time(path, labels):
    """Rewrite `path` with other labels of the same length, its modification time put back
    (as `cp -p`, `rsync -a` or a tarball's stored times leave a file)."""
    before = os.stat(path)
    _write(path, labels)
    assert os.path.getsize(path) == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _tfx(root):
    return _fingerprint(input_processor.FileBasedInputProcessor, root)


def _ours(root):
    return _fingerprint(_ContentInputProcessor, root)


def test_records_rewritten_with_their_sizes_and_times_are_new_input(tmp_path):
    root = _data(tmp_path / "data")
    tfx_before, ours_before = _tfx(root), _ours(root)
    _rewrite_keeping_size_and_time(os.path.join(root, "eval", "data-00000-of-00001.tfrecord"), ["6", "5"])
    assert _tfx(root) == tfx_before  # what TFX's own key misses
    assert _ours(root) != ours_before


def test_the_same_bytes_written_again_are_the_same_input(tmp_path):
    root = _data(tmp_path / "data")
    before = _ours(root)
    _write(os.path.join(root, "train", "data-00000-of-00001.tfrecord"), ["5", "6", "5", "6"])
    os.utime(os.path.join(root, "train", "data-00000-of-00001.tfrecord"), (1, 1))
    assert _ours(root) == before
    # ... at another folder too: the key is of paths under the input folder.
    assert _ours(_data(tmp_path / "copy")) == before


@pytest.mark.parametrize("change", ["rename", "move to the other split", "add a file"])
def test_files_named_otherwise_are_new_input(tmp_path, change):
    root = _data(tmp_path / "data")
    before = _ours(root)
    src = os.path.join(root, "eval", "data-00000-of-00001.tfrecord")
    if change == "rename":
        os.rename(src, os.path.join(root, "eval", "other.tfrecord"))
    elif change == "move to the other split":
        os.rename(src, os.path.join(root, "train", "data-eval.tfrecord"))
    else:
        _write(os.path.join(root, "eval", "more.tfrecord"), [])
    assert _ours(root) != before


def test_the_pipelines_example_gen_uses_the_content_key():
    from pipeline.config import PipelineConfig
    from pipeline.pipeline import create_pipeline

    config = PipelineConfig.from_dict({"data_dir": "/data", "home": "/home"}).resolved()
    [gen] = [c for c in create_pipeline(config).components if c.id == "ImportExampleGen"]
    assert isinstance(gen, ImageExampleGen) and gen.driver_class is ContentFingerprintDriver


def test_a_run_on_records_rewritten_with_their_sizes_and_times_is_not_taken_from_the_cache(tmp_path):
    """TFX's LocalDagRunner with ML Metadata's cache, as `imgpipe run` uses it."""
    from ml_metadata.proto import metadata_store_pb2
    from tfx.orchestration import metadata, pipeline
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    root = _data(tmp_path / "data")
    db = str(tmp_path / "metadata.sqlite")

    def run():
        gen = ImageExampleGen(input_base=root, input_config=example_gen_pb2.Input(splits=SPLITS)).with_id(
            "ImportExampleGen"
        )
        LocalDagRunner().run(
            pipeline.Pipeline(
                pipeline_name="example-gen-key",
                pipeline_root=str(tmp_path / "root"),
                components=[gen],
                enable_cache=True,
                metadata_connection_config=metadata.sqlite_metadata_connection_config(db),
            )
        )
        with metadata.Metadata(metadata.sqlite_metadata_connection_config(db)) as m:
            [execution] = sorted(m.store.get_executions(), key=lambda e: e.id)[-1:]
        return metadata_store_pb2.Execution.State.Name(execution.last_known_state)

    assert run() == "COMPLETE"
    assert run() == "CACHED"
    _rewrite_keeping_size_and_time(os.path.join(root, "eval", "data-00000-of-00001.tfrecord"), ["6", "5"])
    assert run() == "COMPLETE"
