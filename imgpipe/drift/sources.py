"""Both sides of a drift check, as (image bytes, class) pairs.

- Served: the PredictionLogs `imgpipe serve --log-requests DIR` wrote. Each
  logged Predict (predict_images, serving_default, classification) or Classify
  call gives its images and the top class the model answered for each.
- Trained: the train split of a pipeline run's ExampleGen output. The run is
  named by its id, `latest` (the newest run that finished) or `served` (the run
  whose push wrote the version the logged requests name); its record gives the
  pipeline's and the model's name, ML Metadata gives the ExampleGen output of
  that run.

Anything unreadable is counted or listed, never dropped silently.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf
from google.protobuf import message
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import prediction_log_pb2

from imgpipe.orchestration import metadata, runs
from pipeline.config import PipelineConfig
from serving.devserver.request_log import CorruptLogError, log_files, read_records
from serving.signatures import EXAMPLE_INPUTS, IMAGE_FEATURE, IMAGE_INPUTS, SERVING_DEFAULT
from trainer.features import IMAGE_KEY, LABEL_KEY

log = logging.getLogger(__name__)


EXAMPLE_GEN = "ImportExampleGen"
EXAMPLES_KEY = "examples"


class SourceError(Exception):
    """A side of the comparison cannot be found: no logs, no such run, no ExampleGen output."""


# -- the served side -------------------------------------------------------------------


@dataclasses.dataclass
class LoggedImages:
    """What the request logs held: readable files and records, and what could not be used.

    With `model_name`, only requests for that model are read; the others are counted in
    `skipped`. `models` counts the records of every model name found, `versions` the records
    read by the model version that answered them (from the records' metadata, as TF Serving and
    `imgpipe serve` write it; "" when a record names none).
    """

    directory: str
    model_name: str | None = None
    files: int = 0
    records: int = 0
    skipped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    problems: list[str] = dataclasses.field(default_factory=list)  # cut, corrupt or unreadable files
    models: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    versions: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    def summary(self) -> dict:
        return {
            "directory": self.directory,
            "model_name": self.model_name,
            "files": self.files,
            "records": self.records,
            "records_skipped": dict(self.skipped),
            "file_problems": self.problems,
            "models": dict(self.models),
            "versions": dict(self.versions),
        }


def log_paths(directory: str) -> list[str]:
    """The request log files in `directory`; SourceError when it is not a folder or holds none."""
    if os.path.isfile(directory):
        raise SourceError(
            f"request logs: {directory} is a file; give the directory that holds the "
            "prediction_log-*.tfrecord files (imgpipe serve --log-requests DIR)"
        )
    if not os.path.isdir(directory):
        raise SourceError(f"request log directory not found: {directory}")
    paths = log_files(directory)
    if not paths:
        raise SourceError(f"no request log files (prediction_log-*.tfrecord) in {directory}")
    return paths


def _entries(path: str, logged: LoggedImages) -> Iterator[prediction_log_pb2.PredictionLog]:
    """The PredictionLogs of one log file; what cannot be read is counted or listed in `logged`.

    A file that cannot be opened or read (gone since the folder was listed, a directory or a
    dangling link under a log file's name, no permission) is listed like a corrupt one.
    """
    try:
        for record in read_records(path, logged.problems):
            logged.records += 1
            try:
                entry = prediction_log_pb2.PredictionLog.FromString(record)
            except message.DecodeError:
                logged.skipped["not a PredictionLog"] += 1
                continue
            if entry.WhichOneof("log_type") is None:
                # Another record type that parses (a tf.Example reads as a PredictionLog whose
                # model is named after its first feature): no logged call in it.
                logged.skipped["not a PredictionLog (no logged call in it)"] += 1
                continue
            yield entry
    except CorruptLogError as e:
        logged.problems.append(f"{e}; the rest of the file was not read")
    except OSError as e:
        logged.problems.append(f"{path}: cannot be read ({e.strerror or type(e).__name__})")


def model_of(entry: prediction_log_pb2.PredictionLog) -> tuple[str, str]:
    """(model name, version) that a logged call was for and answered by; "" where not recorded."""
    spec = entry.log_metadata.model_spec
    kind = entry.WhichOneof("log_type")
    body = getattr(entry, kind) if kind else None
    if kind == "multi_inference_log":  # the request and response name the model per task
        tasks, results = body.request.tasks, body.response.results
        request_spec = tasks[0].model_spec if tasks else None
        response_spec = results[0].model_spec if results else None
    else:
        request_spec = body.request.model_spec if body is not None else None
        response_spec = body.response.model_spec if body is not None and hasattr(body, "response") else None
    name = spec.name or (request_spec.name if request_spec is not None else "")
    if spec.HasField("version"):
        return name, str(spec.version.value)
    if response_spec is not None and response_spec.HasField("version"):
        return name, str(response_spec.version.value)
    return name, ""


def logged_images(directory: str, logged: LoggedImages) -> Iterator[tuple[bytes, str | None]]:
    """(image bytes, predicted top class) of every image in the request logs of `directory`.

    Counts files and records into `logged`; records that carry no images, or are for
    another model than `logged.model_name`, are counted there by reason; cut, corrupt or
    unreadable files are listed. Raises SourceError when the directory holds no log files.
    """
    for path in log_paths(directory):
        logged.files += 1
        for entry in _entries(path, logged):
            name, version = model_of(entry)
            logged.models[name] += 1
            if logged.model_name and name and name != logged.model_name:
                logged.skipped[f"a request for another model ({name!r})"] += 1
                continue
            logged.versions[version] += 1
            yield from _pairs(entry, logged.skipped)


def served_versions(directory: str, model_name: str | None = None) -> LoggedImages:
    """The counts of the request logs in `directory` (which models and versions answered them),
    from a pass that reads every record and keeps no image."""
    logged = LoggedImages(directory, model_name)
    collections.deque(logged_images(directory, logged), maxlen=0)
    return logged


def _pairs(entry: prediction_log_pb2.PredictionLog, skipped: collections.Counter) -> list:
    kind = entry.WhichOneof("log_type")
    if kind == "predict_log":
        request, response = entry.predict_log.request, entry.predict_log.response
        signature = request.model_spec.signature_name or SERVING_DEFAULT
        if signature in IMAGE_INPUTS and IMAGE_INPUTS[signature] in request.inputs:
            images: list[bytes | None] = list(request.inputs[IMAGE_INPUTS[signature]].string_val)
        elif signature in EXAMPLE_INPUTS and EXAMPLE_INPUTS[signature] in request.inputs:
            serialized = request.inputs[EXAMPLE_INPUTS[signature]].string_val
            images = [_example_image(_parse_example(s)) for s in serialized]
        else:
            skipped[f"Predict on signature {signature!r}: no images"] += 1
            return []
        classes = _predicted_classes(response.outputs, len(images))
    elif kind in ("classify_log", "multi_inference_log"):
        body = getattr(entry, kind)
        images = [_example_image(e) for e in _examples(body.request.input)]
        if kind == "classify_log":
            rows = body.response.result.classifications
        else:  # the first classification task's answers (one input, several signatures)
            results = [r for r in body.response.results if r.HasField("classification_result")]
            rows = results[0].classification_result.classifications if results else []
        classes = [max(c.classes, key=lambda x: x.score).label if c.classes else None for c in rows]
        if len(classes) != len(images):
            classes = [None] * len(images)
    else:
        skipped[f"{kind} record: no images"] += 1
        return []
    pairs = []
    for image, label in zip(images, classes, strict=True):
        if image is None:
            skipped[f"not a tf.Example with an {IMAGE_FEATURE!r} feature"] += 1
        else:
            pairs.append((image, label))
    return pairs


def _examples(model_input) -> list[example_pb2.Example]:
    """The tf.Examples of a tensorflow.serving.Input, context merged in (as the server does)."""
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        return list(model_input.example_list.examples)
    if kind == "example_list_with_context":
        merged = []
        for e in model_input.example_list_with_context.examples:
            m = example_pb2.Example()
            m.CopyFrom(model_input.example_list_with_context.context)
            m.MergeFrom(e)
            merged.append(m)
        return merged
    return []


def _parse_example(serialized: bytes) -> example_pb2.Example | None:
    try:
        return example_pb2.Example.FromString(serialized)
    except message.DecodeError:
        return None


def _example_image(example: example_pb2.Example | None) -> bytes | None:
    if example is None:
        return None
    feature = example.features.feature.get(IMAGE_FEATURE)
    return feature.bytes_list.value[0] if feature is not None and feature.bytes_list.value else None


def _predicted_classes(outputs, batch: int) -> list[str | None]:
    """The top class per row from a Predict response's `classes` (and `scores`, when present)."""
    if "classes" not in outputs:
        return [None] * batch
    classes = tf.make_ndarray(outputs["classes"])
    if classes.ndim != 2 or classes.shape[0] != batch:
        return [None] * batch
    best = np.zeros(batch, dtype=int)
    if "scores" in outputs:
        scores = tf.make_ndarray(outputs["scores"])
        if scores.shape == classes.shape:
            best = scores.argmax(axis=1)
    return [classes[i, best[i]].decode("utf-8", errors="replace") for i in range(batch)]


# -- the training side -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainingSplit:
    """Where a run's training examples are."""

    run_id: str
    pipeline_name: str
    model_name: str
    examples_uri: str
    split: str
    files: list[str]

    def summary(self) -> dict:
        return {
            "run_id": self.run_id,
            "pipeline_name": self.pipeline_name,
            "model_name": self.model_name,
            "examples": self.examples_uri,
            "split": self.split,
            "files": len(self.files),
        }


SERVED = "served"  # names the run that pushed the model version answering most logged requests


def pushing_runs(home: str) -> Callable[[str], str | None]:
    """A lookup, built from one read of the home's run records and rollbacks: model version ->
    the run record folder of the newest run whose push wrote it (its summary's `pushed` ends in
    it), following a rollback's copy to the version it copied; None when no run did."""
    from serving.model_fingerprint import served_copies

    copies = {c["version"]: c["copy_of"] for c in served_copies(home)}
    try:
        folders = runs.records(home)
    except OSError as e:
        raise SourceError(f"cannot list the run records in {home}: {e}") from None
    pushed_by: dict[str, str] = {}
    for folder in folders:  # newest first: the first run to name a version is the newest
        try:
            pushed = runs.read_summary(folder).get("pushed")
        except runs.RecordError as e:
            log.warning("%s: skipped", e)
            continue
        if isinstance(pushed, str):
            pushed_by.setdefault(os.path.basename(os.path.normpath(pushed)), folder)

    def lookup(version: str) -> str | None:
        seen = {version}
        while version in copies and copies[version] not in seen:  # a copy of a copy, each once
            version = copies[version]
            seen.add(version)
        return pushed_by.get(version)

    return lookup


def pushing_run(home: str, version: str) -> str:
    """The run record folder of the newest run whose push wrote model version `version`
    (`pushing_runs`); SourceError naming the version when none did."""
    folder = pushing_runs(home)(version)
    if folder is not None:
        return folder
    raise SourceError(
        f"no run record in {os.path.join(home, 'runs')} pushed model version {version} (the version "
        "that answered most logged requests; its run may have been pruned, or pushed from another "
        "home): give --run RUN_ID"
    )


def find_run_record(home: str, run: str) -> tuple[str, dict]:
    """The (folder, summary) of run `run` (its id, folder name, or `latest`)."""
    try:
        folder = runs.find_record(home, run)
        return folder, runs.read_summary(folder)
    except LookupError as e:  # RecordError too: a damaged record, named
        raise SourceError(str(e)) from None


def training_split(home: str, run: str, split: str = "train") -> TrainingSplit:
    """The files of `split` of the ExampleGen output of run `run`, found through ML Metadata.

    The run record (HOME/runs/<run>/) gives the run id and the run's config (its
    pipeline name and ML Metadata store: HOME/metadata.sqlite or PostgreSQL);
    the store gives the ExampleGen execution of that run and its `examples`.
    """
    folder, summary = find_run_record(home, run)
    run_id = summary["run_id"]
    config = PipelineConfig.from_yaml(os.path.join(folder, runs.CONFIG_FILE)).replace(home=home)
    pipeline_name = config.pipeline_name
    try:
        with metadata.open_store(config) as store:
            context = metadata.run_by_id(store, pipeline_name, run_id)
            execution = metadata.run_executions(store, pipeline_name, context).get(EXAMPLE_GEN)
            uri = metadata.output_uri(store, execution, EXAMPLES_KEY)
    except (LookupError, metadata.MetadataUnavailable) as e:
        raise SourceError(str(e)) from None
    if not uri:
        raise SourceError(f"run {run_id!r} has no {EXAMPLE_GEN} output in {config.metadata_location}")
    split_dir = os.path.join(uri, f"Split-{split}")
    if "://" not in uri and not os.path.isdir(uri):
        raise SourceError(
            f"run {run_id!r}'s examples were deleted (by `imgpipe prune`, or by hand): no {uri}; "
            "compare with a run whose artifacts are kept (`--run latest`, or a newer run id)"
        )
    files = sorted(tf.io.gfile.glob(os.path.join(split_dir, "*")))
    if not files:
        raise SourceError(f"no {split} files in {split_dir} (run {run_id!r})")
    return TrainingSplit(run_id, pipeline_name, config.model_name, uri, split, files)


def example_images(files: list[str], skipped: collections.Counter) -> Iterator[tuple[bytes, str | None]]:
    """(image bytes, label) of the tf.Examples in TFRecord files (gzipped when named *.gz)."""
    for path in files:
        compression = "GZIP" if path.endswith(".gz") else ""
        for record in tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator():
            example = example_pb2.Example.FromString(record)
            feature = example.features.feature
            image = feature[IMAGE_KEY].bytes_list.value if IMAGE_KEY in feature else []
            if not image:
                skipped[f"example without an {IMAGE_KEY!r} feature"] += 1
                continue
            label = feature[LABEL_KEY].bytes_list.value if LABEL_KEY in feature else []
            yield image[0], label[0].decode("utf-8", errors="replace").strip() if label else None
