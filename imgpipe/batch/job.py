"""predict_batch: score every image under a folder or glob with a model, as one Beam job.

    files --(CheckImages: read, ingest's check)--> images --BatchElements--> batches
          --(ScoreWithSavedModel | ScoreWithServer)--> scored --> OUT (.csv | .jsonl | .tfrecord)
    skipped (from both steps) --> OUT.report.json, with the counts: scored + skipped = files

The runner is the pipeline's own Beam configuration (pipeline/beam.py): direct,
multiprocess, dataflow, flink or spark. The list of files goes to the workers
as a file next to OUT (so remote workers can read it), is reshuffled so every
worker gets a share, and is removed at the end with the other scratch files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

from imgpipe.batch.inputs import NoInputs, list_images
from imgpipe.batch.outputs import PREDICT_IMAGES, output_format, read_predictions, write_transform
from imgpipe.batch.progress import ProgressBar
from imgpipe.batch.scoring import (
    SKIPPED,
    CheckImages,
    ScoreWithSavedModel,
    ScoreWithServer,
    VersionGone,
    load_signature,
)
from imgpipe.ingest.errors import tf_error_text
from imgpipe.ingest.report import display_path
from imgpipe.orchestration.lock import run_lock
from pipeline.beam import BeamConfig, beam_pipeline_args
from serving.model_files import ModelFilesError, check_model_files
from serving.version_names import version_number
from trainer import liveness
from trainer.features import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)

LOCAL_RUNNERS = ("direct", "multiprocess")  # workers share this machine's file system
VERSION_ATTEMPTS = 3  # a --target job whose version the server replaced starts again, at most this often
REPORT_SUFFIX = ".report.json"


class BatchError(ValueError):
    """Bad arguments or inputs of a batch prediction; the message names the flag or path."""


class ServerUnusable(RuntimeError):
    """--target cannot score: no server answers there, or it serves no such model (checked
    before the job reads any image)."""


@dataclasses.dataclass
class BatchResult:
    """What predict_batch did; `to_dict()` is the report (and the command's JSON result)."""

    files: int
    scored: int
    skipped: list[dict[str, str]]
    out: str
    report: str
    format: str
    source: dict[str, Any]  # {"model": dir, "version": n} or {"target": host:port, "model_name": name}

    def to_dict(self, with_skipped: bool = True) -> dict[str, Any]:
        result = {
            "files": self.files,
            "scored": self.scored,
            "num_skipped": len(self.skipped),
            "out": self.out,
            "format": self.format,
            "report": self.report,
            **self.source,
        }
        if with_skipped:
            result["skipped"] = list(self.skipped)
        return result


def resolve_model(path: str) -> tuple[str, int | None]:
    """(SavedModel dir, version or None): `path` itself, or its newest integer version dir.

    A TF Serving model base path (`SERVING_DIR/MODEL_NAME`, what the Pusher
    writes) resolves like TF Serving's default policy: the highest version.
    """
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow

    gfile = tf.io.gfile
    if gfile.exists(os.path.join(path, "saved_model.pb")):
        return path, version_number(os.path.basename(os.path.normpath(path)))
    if not gfile.isdir(path):
        if gfile.exists(path):
            raise BatchError(
                f"--model {path}: a file, not a directory (a SavedModel's, or a model base path)"
            )
        raise BatchError(f"--model {path}: no such directory")
    versions = {}  # version -> its folder's name (`007` is version 7)
    for entry in sorted(e.rstrip("/") for e in gfile.listdir(path)):
        v = version_number(entry)
        if v is not None and v not in versions and gfile.exists(os.path.join(path, entry, "saved_model.pb")):
            versions[v] = entry
    if not versions:
        raise BatchError(
            f"--model {path}: neither a SavedModel (no saved_model.pb) nor a model base path "
            "with integer version directories"
        )
    newest = max(versions)
    return os.path.join(path, versions[newest]), newest


def _check_out(out: str) -> None:
    """BatchError unless a local `out` is a file path that can be written: never a directory,
    which Beam's writer would delete (remote paths are left to their file system)."""
    if "://" in out:
        return
    if os.path.isdir(out):
        raise BatchError(
            f"--out {out} is a directory: give the output file's path (.csv, .jsonl or .tfrecord)"
        )
    if os.path.isdir(out + REPORT_SUFFIX):
        raise BatchError(
            f"--out {out}: its report's path {out}{REPORT_SUFFIX} is a directory; move it or choose another --out"
        )
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        what = "is not a directory" if os.path.exists(parent) else "does not exist"
        raise BatchError(f"--out {out}: its folder {parent} {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BatchError(f"--out {out}: its folder {parent} is not writable")
    try:  # what os.access cannot tell (a read-only or virtual file system): try the real thing
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=".imgpipe-out-check-", delete=True)
        probe.close()
    except OSError as exc:
        raise BatchError(f"--out {out}: cannot write in {parent}: {exc.strerror or exc}") from exc


def predict_batch(
    images: str,
    out: str,
    *,
    model_dir: str | None = None,
    target: str | None = None,
    model_name: str | None = None,
    batch_size: int = 32,
    top_k: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    beam: BeamConfig | None = None,
    progress: bool | None = None,
    timeout: float = 30.0,
    model_version: int | None = None,
    model_version_label: str | None = None,
) -> BatchResult:
    """Score every image of `images` (a directory, recursively, or a glob) into `out`.

    Exactly one of `model_dir` (a SavedModel or a model base path) and `target`
    (HOST:PORT of TF Serving or `imgpipe serve`, with `model_name`; every request asks for
    `model_version`, by default the newest version the server has available when the job
    starts, so every image is scored by one model version). Files that
    cannot be read, fail ingest's check (imgpipe/ingest/images.py, with
    `max_pixels`) or that the model refuses are listed with the reason in
    OUT.report.json. `progress`: draw a bar on stderr (None: when it is a
    terminal and the runner is local). Raises BatchError for bad arguments;
    a failing model or server fails the job (the runner's exception).
    """
    beam = beam or BeamConfig()
    if (model_dir is None) == (target is None):
        raise BatchError("give exactly one of --model DIR and --target HOST:PORT")
    if target is not None and not model_name:
        raise BatchError("--target needs --model-name (the name the server serves the model under)")
    if model_version is not None and target is None:
        raise BatchError("--model-version is for --target; with --model, name the version's directory")
    if model_version_label is not None and (target is None or model_version is not None):
        raise BatchError("--model-version-label is for --target, instead of --model-version")
    if model_version is not None and model_version < 1:
        raise BatchError(f"--model-version must be >= 1, got {model_version}")
    if batch_size < 1:
        raise BatchError(f"--batch-size must be >= 1, got {batch_size}")
    if top_k is not None and top_k < 1:
        raise BatchError(f"--top-k must be >= 1, got {top_k}")
    if max_pixels < 1:
        raise BatchError(f"--max-pixels must be >= 1, got {max_pixels}")
    try:
        _check_out(out)  # first: a directory named without an extension is a directory
        fmt = output_format(out)
        paths = _without_outputs(list_images(images), out, images)
    except (ValueError, NoInputs) as exc:
        raise BatchError(str(exc)) from exc
    args = beam_pipeline_args(beam)  # BeamConfigError (a ConfigError) names the flag

    keep_images = fmt == "tfrecord"
    if model_dir is not None:
        export_dir, version = resolve_model(model_dir)
        if beam.beam_runner == "direct":  # the job's scorer shares this process's loaded model
            check_loads(export_dir)
        else:  # each worker loads it: its files are checked here, without a load of its own
            check_files(export_dir)
        name = model_name or _model_name(export_dir)
        source: dict[str, Any] = {"model": export_dir, "version": version}
    else:
        name = model_name or ""
        source = {"target": target, "model_name": name}
    if target is not None:
        version = check_server(target, name, timeout, model_version, model_version_label)
        source["version"] = version
        if model_version_label is not None:
            source["version_label"] = model_version_label
    log.info("scoring %d files from %s with %s into %s", len(paths), images, source, out)

    # The job's own files, Beam's temporary folders included, are in one hidden folder beside
    # OUT named for this job (host, pid and a random part): a second job on the same OUT, here
    # or on another machine, never reads or removes them, and a job killed with SIGKILL leaves
    # one folder, which the next job on OUT removes (`_remove_dead_jobs`).
    head, tail = os.path.split(out)
    work = os.path.join(
        head, f"{JOB_FOLDER_PREFIX.format(tail)}{liveness.HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    )
    scratch = os.path.join(work, "inputs.jsonl")
    skipped_file = os.path.join(work, "skipped.jsonl")
    # The job writes beside OUT under another name (the same extension), renamed to OUT once
    # every file is accounted for: a failed job leaves an earlier OUT and its report as they were.
    partial = os.path.join(work, f"partial{os.path.splitext(tail)[1]}")
    partial_report = os.path.join(work, f"partial{REPORT_SUFFIX}")
    with _only_job_writing(out):
        _remove_dead_jobs(head, tail)
        _make_dirs(work)
        _write_lines(scratch, [json.dumps(p) for p in paths])
        try:
            local = beam.beam_runner in LOCAL_RUNNERS
            for attempt in range(1, VERSION_ATTEMPTS + 1):
                try:
                    with ProgressBar(len(paths), enabled=False if not local else progress) as bar:
                        if model_dir is not None:
                            scorer = ScoreWithSavedModel(
                                export_dir, name, version, top_k, keep_images, bar.directory
                            )
                        else:
                            scorer = ScoreWithServer(
                                target,
                                name,
                                top_k,
                                keep_images,
                                bar.directory,
                                timeout=timeout,
                                version=version,
                            )
                        _run(
                            args,
                            scratch,
                            partial,
                            fmt,
                            skipped_file,
                            CheckImages(max_pixels, bar.directory),
                            scorer,
                            batch_size,
                        )
                    break
                except Exception as exc:  # noqa: BLE001 - the runner wraps the step's exception
                    # The server replaced the version the job started with (a push or rollback
                    # while it ran): every image is scored again with the newest, so the output
                    # holds one version's answers. Not when the version was asked for by name.
                    if (
                        target is None
                        or model_version is not None
                        or attempt == VERSION_ATTEMPTS
                        or not _version_gone(exc)
                    ):
                        raise
                    gone, version = version, check_server(target, name, timeout, label=model_version_label)
                    source["version"] = version
                    log.warning(
                        "version %s of model %r was replaced by version %s while the job ran: scoring every "
                        "file again with version %s (attempt %d of %d)",
                        gone,
                        name,
                        version,
                        version,
                        attempt + 1,
                        VERSION_ATTEMPTS,
                    )
            skipped = [json.loads(line) for line in _read_lines(skipped_file)]
            skipped.sort(key=lambda s: s["path"])
            scored = len(read_predictions(partial))
            if scored + len(skipped) != len(paths):
                raise RuntimeError(
                    f"{len(paths)} files, but {scored} scored + {len(skipped)} skipped: "
                    f"{len(paths) - scored - len(skipped)} unaccounted for (a runner lost or duplicated work)"
                )
            result = BatchResult(len(paths), scored, skipped, out, f"{out}{REPORT_SUFFIX}", fmt, source)
            # The report beside OUT first, then both renamed: a report that cannot be written
            # leaves the earlier OUT and report as they were.
            _write_lines(partial_report, [json.dumps(result.to_dict(), indent=2, ensure_ascii=False)])
            _rename(partial, out)
            _rename(partial_report, result.report)
        finally:
            _remove_tree(work)
        log.info(
            "scored %d of %d files; %d skipped (reasons in %s)",
            scored,
            len(paths),
            len(skipped),
            result.report,
        )
        return result


def _version_gone(exc: BaseException) -> bool:
    """Whether a job failed because the server no longer serves the version it started with
    (scoring.VersionGone, as raised or as a runner's wrapper names it)."""
    return isinstance(exc, VersionGone) or f"{VersionGone.__name__}: " in str(exc)


def _run(
    args: list[str],
    inputs: str,
    out: str,
    fmt: str,
    skipped_file: str,
    check: CheckImages,
    scorer: ScoreWithSavedModel | ScoreWithServer,
    batch_size: int,
) -> None:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    one_file = {"num_shards": 1, "shard_name_template": ""}
    with beam.Pipeline(options=PipelineOptions(args)) as p:
        checked = (
            p
            | "Files" >> beam.io.ReadFromText(inputs)
            | "Paths" >> beam.Map(lambda line: os.fsencode(json.loads(line)))  # bytes: see scoring._as_text
            | "Spread" >> beam.Reshuffle()
            | "Check" >> beam.ParDo(check).with_outputs(SKIPPED, main="images")
        )
        scored = (
            checked.images
            | "Batch" >> beam.BatchElements(min_batch_size=batch_size, max_batch_size=batch_size)
            | "Score" >> beam.ParDo(scorer).with_outputs(SKIPPED, main="scored")
        )
        _ = scored.scored | "Write" >> write_transform(out, fmt)
        _ = (
            (checked[SKIPPED], scored[SKIPPED])
            | "Skipped" >> beam.Flatten()
            | "SkippedJSON" >> beam.Map(json.dumps)
            | "WriteSkipped" >> beam.io.WriteToText(skipped_file, **one_file)
        )


def check_loads(export_dir: str) -> None:
    """BatchError naming the model when it cannot be loaded (a version folder still being
    copied, a damaged file), before the job reads every image. Loaded as the direct runner's
    scorer loads it (scoring.load_signature), so the job does not load it again."""
    import tensorflow as tf

    try:
        with warnings.catch_warnings():  # other bytes as saved_model.pb: the parser's warning, then the error
            warnings.simplefilter("ignore", RuntimeWarning)
            load_signature(export_dir)
    except KeyError as exc:
        raise _no_signature(export_dir) from exc
    # IndexError: a data shard cut short. The bundle reader's OUT_OF_RANGE ("Read less bytes than
    # requested") reaches Python as IndexError, not as tf.errors.OutOfRangeError.
    except (tf.errors.OpError, OSError, ValueError, IndexError) as exc:
        raise _unloadable(export_dir, tf_error_text(exc)) from exc


def _no_signature(export_dir: str) -> BatchError:
    return BatchError(
        f"--model {export_dir} has no {PREDICT_IMAGES} signature: give a model imgpipe exported"
    )


def _unloadable(export_dir: str, why: str) -> BatchError:
    return BatchError(
        f"--model {export_dir} cannot be loaded (is the version complete, not still being copied?): {why}"
    )


def check_files(export_dir: str) -> None:
    """BatchError naming the model when its files show it cannot be loaded, without loading it
    (for runners whose workers load it themselves): serving.model_files.check_model_files."""
    try:
        check_model_files(export_dir, PREDICT_IMAGES)
    except ModelFilesError as exc:
        raise (
            _no_signature(export_dir) if exc.signature_missing else _unloadable(export_dir, str(exc))
        ) from exc


def check_server(
    target: str, model_name: str, timeout: float, version: int | None = None, label: str | None = None
) -> int | None:
    """The version the job will use (`version`, the one `label` names in the server's model
    config, or the newest the server has AVAILABLE; None when the server names none);
    ServerUnusable unless the server at `target` answers and serves `model_name` (that version)
    with the predict_images signature: found before the job reads every image, with what to check.

    Every request then asks for that version, so a version pushed while the job runs does not
    score the rest of its images: one output, one model."""
    import grpc

    from serving.client import ServingClient
    from serving.errors import ServingRpcError

    try:
        with ServingClient(target, timeout=min(timeout, 10.0), retries=3) as client:
            if label is not None:
                signatures, version = client.metadata_of(model_name, label)
                if version is None:
                    raise ServerUnusable(
                        f"--target {target}: the server named no version for label {label!r}"
                    )
            else:
                if version is None:
                    version = _newest_available(client, model_name)
                signatures = client.metadata(model_name, version)
    except ValueError as exc:  # a target the client cannot use
        raise BatchError(f"--target {target}: {exc}") from exc
    except ServingRpcError as exc:
        if exc.code == grpc.StatusCode.UNAVAILABLE:
            hint = f"is the model server running and listening at {target}?"
        elif label is not None and exc.code == grpc.StatusCode.INVALID_ARGUMENT:
            hint = f"does its model config give model {model_name!r} the version label {label!r} (--model-version-label)?"
        elif exc.code == grpc.StatusCode.NOT_FOUND and version is not None:
            hint = f"does it serve version {version} of model {model_name!r} (--model-name, --model-version)?"
        elif exc.code == grpc.StatusCode.NOT_FOUND:
            hint = f"does it serve a model named {model_name!r} (--model-name), with a version loaded?"
        else:
            hint = "the server refused to describe the model"
        raise ServerUnusable(f"--target {target}: {hint} ({exc.code.name}: {exc.details})") from exc
    if PREDICT_IMAGES not in signatures:
        raise ServerUnusable(
            f"--target {target}: model {model_name!r} has no {PREDICT_IMAGES} signature (it has "
            f"{', '.join(sorted(signatures)) or 'none'}): serve a model imgpipe exported"
        )
    return version


def _newest_available(client: Any, model_name: str) -> int | None:
    """The newest version of `model_name` the server reports AVAILABLE (GetModelStatus), or None
    when it reports none (the first request then names the one that answers)."""
    import grpc

    from serving.errors import ServingRpcError

    try:
        states = client.model_status(model_name)
    except ServingRpcError as exc:
        if exc.code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND):
            return None  # a server without the model service; NOT_FOUND: metadata says it better
        raise
    available = [v for v, state, _ in states if state == "AVAILABLE"]
    return max(available) if available else None


def _model_name(export_dir: str) -> str:
    """The served name a SavedModel's path implies: NAME of SERVING_DIR/NAME/VERSION, else its dir name."""
    path = os.path.normpath(export_dir)
    name = os.path.basename(path)
    if version_number(name) is not None:
        name = os.path.basename(os.path.dirname(path))
    return name or "model"


def _write_lines(path: str, lines: list[str]) -> None:
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow

    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write("".join(line + "\n" for line in lines))


def _read_lines(path: str) -> list[str]:
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow

    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path, "r") as handle:
        # Not splitlines: it also splits on U+2028 and the like, which a path may hold.
        return [line for line in handle.read().split("\n") if line.strip()]


def _rename(src: str, dst: str) -> None:
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow

    tf.io.gfile.rename(src, dst, overwrite=True)


def _without_outputs(paths: list[str], out: str, images: str) -> list[str]:
    """The listed files but OUT and its report: an earlier job's output inside the folder
    scored (or named as the images) is not an image, and would be replaced as it was read.
    NoInputs when nothing else is left."""
    if "://" in out:
        return paths
    ours = {os.path.realpath(out), os.path.realpath(f"{out}{REPORT_SUFFIX}")}
    kept = [p for p in paths if "://" in p or os.path.realpath(p) not in ours]
    if not kept:
        raise NoInputs(f"--images {images}: no files but the output --out {out} and its report")
    return kept


@contextlib.contextmanager
def _only_job_writing(out: str) -> Iterator[None]:
    """Refuse (LockBusy, exit 75) a second job writing the same local OUT while this one runs.

    Their outputs and reports would replace each other in any order. The lock file is in the
    temporary folder, named for OUT's real path, so OUT's folder gets nothing more, and is
    removed when the job ends (one killed leaves it: harmless, the kernel dropped its lock).
    """
    if "://" in out:  # a bucket: no lock to share; each job's own files are still apart
        yield
        return
    shown = display_path(os.path.realpath(out))
    with run_lock(
        lock_path(out),
        holder=f"predict-batch --out {shown}",
        refused=f"a second job writing {shown}",
        remove=True,
    ):
        yield


def lock_path(out: str) -> str:
    """The lock file of the jobs writing the local OUT: in the temporary folder, named for its real path."""
    digest = hashlib.sha256(os.fsencode(os.path.realpath(out))).hexdigest()[:20]
    return os.path.join(tempfile.gettempdir(), f"imgpipe-predict-batch-{digest}.lock")


JOB_FOLDER_PREFIX = ".{}.job-"  # then <host>-<pid>-<random>: a job's working folder beside OUT


def _remove_dead_jobs(head: str, tail: str) -> None:
    """Remove the working folders that jobs on OUT killed with SIGKILL left beside it (their
    process gone on this host; another host's untouched for a day). Called holding OUT's lock:
    no other job of this host is writing OUT."""
    if "://" in head:
        return  # a bucket: no process to ask; its folders are removed by age like the rest
    for path in liveness.remove_dead(head or ".", JOB_FOLDER_PREFIX.format(tail)):
        log.warning("removed %s: the working folder of a job on %s that did not finish", path, tail)


def _make_dirs(path: str) -> None:
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow

    tf.io.gfile.makedirs(path)


def _remove_tree(path: str) -> None:
    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow

    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)
