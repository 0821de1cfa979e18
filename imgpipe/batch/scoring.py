"""The Beam steps of a batch prediction: check each file, then score images in batches.

`CheckImages` reads a file and runs ingest's check on it (imgpipe/ingest/images.py:
the decoders and the pixel limit the model itself applies). Scorers take a batch
of (path, bytes) and call the model once for it: `ScoreWithSavedModel` loads the
SavedModel once per worker (DoFn.setup), `ScoreWithServer` calls a TF Serving
endpoint with the stock gRPC client (serving/client.py). When the model refuses
a batch as invalid input, the batch is retried image by image so only the bad
file is skipped, with the model's reason. Skipped files leave through the
SKIPPED tagged output; nothing is dropped.
"""

from __future__ import annotations

import atexit
import gc
import os
import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam

from imgpipe.batch.inputs import read_image_file
from imgpipe.batch.outputs import PREDICT_IMAGES, ScoredImage
from imgpipe.ingest.errors import tf_error_text
from imgpipe.ingest.images import check_image
from imgpipe.ingest.report import display_path
from serving.request_size import (
    CLIENT_MESSAGE_MB,
    RequestBudget,
    server_batch_limit,
    server_receive_limit,
)

SKIPPED = "skipped"


class InvalidInput(Exception):
    """The model refused its input (INVALID_ARGUMENT): a property of the images, not of the model."""


class OverServerLimit(Exception):
    """The server refused a request as larger than its receive limit (`limit`, bytes), or, with
    `images`, as more images than its batches hold (`limit` images)."""

    def __init__(self, limit: int, images: bool = False):
        super().__init__(f"the server accepts requests of at most {limit} {'images' if images else 'bytes'}")
        self.limit = limit
        self.images = images


class _Counted(beam.DoFn):
    """Adds processed-file counts to a progress directory (local runners; None: off)."""

    def __init__(self, progress_dir: str | None):
        self.progress_dir = progress_dir
        self._progress_file: str | None = None

    def tick(self, n: int) -> None:
        if not self.progress_dir or not n:
            return
        if self._progress_file is None:
            self._progress_file = os.path.join(self.progress_dir, f"{os.getpid()}-{uuid.uuid4().hex}")
        try:
            with open(self._progress_file, "a", encoding="ascii") as handle:
                handle.write(f"{n}\n")
        except OSError:
            self.progress_dir = None  # progress is a display aid: never fail the work for it


def skipped(path: str | bytes, reason: str) -> beam.pvalue.TaggedOutput:
    return beam.pvalue.TaggedOutput(SKIPPED, {"path": display_path(_as_text(path)), "reason": reason})


def _as_text(path: str | bytes) -> str:
    """A path as the file system's text (undecodable bytes kept as surrogate escapes).

    Paths travel through Beam as bytes (os.fsencode): its coder for text is UTF-8, which a
    file name that is not UTF-8 (kept by Python as surrogate escapes) cannot be, and one
    such name would fail the whole job.
    """
    return os.fsdecode(path) if isinstance(path, bytes) else path


class CheckImages(_Counted):
    """path -> (path, bytes) when ingest would accept the image; else a SKIPPED entry with why."""

    def __init__(self, max_pixels: int, progress_dir: str | None = None):
        super().__init__(progress_dir)
        self.max_pixels = max_pixels

    def process(self, path: str | bytes) -> Iterator[Any]:
        try:
            data = read_image_file(_as_text(path))
        except OSError as exc:
            self.tick(1)
            yield skipped(path, f"cannot read: {exc.strerror or exc}")
            return
        reason = check_image(data, self.max_pixels)
        if reason is not None:
            self.tick(1)
            yield skipped(path, reason)
            return
        yield path, data


class _Scorer(_Counted):
    """A batch of (path, bytes) -> one ScoredImage per image, or SKIPPED for images the model refuses."""

    def __init__(self, model_name: str, top_k: int | None, keep_images: bool, progress_dir: str | None):
        super().__init__(progress_dir)
        self.model_name = model_name
        self.top_k = top_k
        self.keep_images = keep_images

    def predict(self, images: list[bytes]) -> tuple[list[list[str]], list[list[float]], int | None]:
        """(classes, scores) per image, best first, and the model version; InvalidInput when refused."""
        raise NotImplementedError

    def process(self, batch: Sequence[tuple[str, bytes]]) -> Iterator[Any]:
        yield from self._score(list(batch))

    def _score(self, batch: list[tuple[str, bytes]]) -> Iterator[Any]:
        try:
            classes, scores, version = self.predict([data for _, data in batch])
        except InvalidInput as exc:
            if len(batch) == 1:
                self.tick(1)
                yield skipped(batch[0][0], f"the model refused it: {exc}")
                return
            for item in batch:  # find the image(s) the model refuses
                yield from self._score([item])
            return
        k = self.top_k
        for (path, data), names, values in zip(batch, classes, scores, strict=True):
            yield ScoredImage(
                path=display_path(_as_text(path)),
                classes=names[:k] if k else names,
                scores=values[:k] if k else values,
                model_name=self.model_name,
                version=version,
                image=data if self.keep_images else b"",
            )
        self.tick(len(batch))


class ScoreWithSavedModel(_Scorer):
    """Calls the SavedModel's predict_images signature, loaded once per worker."""

    def __init__(
        self,
        export_dir: str,
        model_name: str,
        version: int | None = None,
        top_k: int | None = None,
        keep_images: bool = False,
        progress_dir: str | None = None,
    ):
        super().__init__(model_name, top_k, keep_images, progress_dir)
        self.export_dir = export_dir
        self.version = version
        self._signature: Any = None

    def setup(self) -> None:
        self._signature = load_signature(self.export_dir)

    def predict(self, images: list[bytes]) -> tuple[list[list[str]], list[list[float]], int | None]:
        import tensorflow as tf

        try:
            out = self._signature(images=tf.constant(images, dtype=tf.string))
        except tf.errors.InvalidArgumentError as exc:
            raise InvalidInput(_first_line(exc.message)) from exc
        classes = [[c.decode("utf-8") for c in row] for row in out["classes"].numpy()]
        scores = [[float(s) for s in row] for row in out["scores"].numpy()]
        return classes, scores, self.version


_LOADED: dict[tuple[str, float, int], Any] = {}
_LOADING = threading.Lock()


def load_signature(export_dir: str) -> Any:
    """predict_images of the SavedModel, loaded once per worker process and shared by its DoFns.

    Keyed by the saved_model.pb's modification time and size, so a model replaced
    in place is loaded again.
    """
    import tensorflow as tf  # loaded in the worker

    stat = tf.io.gfile.stat(os.path.join(export_dir, "saved_model.pb"))
    key = (export_dir, stat.mtime_nsec, stat.length)
    with _LOADING:
        if key not in _LOADED:
            if not _LOADED:
                # Freed before the interpreter tears TensorFlow's modules down: a model freed
                # after that prints "Exception ignored in AtomicFunction.__del__" tracebacks.
                atexit.register(_release_loaded)
            _LOADED.clear()  # one model per process at a time
            _LOADED[key] = tf.saved_model.load(export_dir)
        return _LOADED[key].signatures[PREDICT_IMAGES]


def _release_loaded() -> None:
    with _LOADING:
        _LOADED.clear()
    gc.collect()


class VersionGone(RuntimeError):
    """The model version a job started with is no longer served: the job fails, not mixes versions."""


class ScoreWithServer(_Scorer):
    """Calls a TF Serving (or `imgpipe serve`) endpoint's predict_images over gRPC."""

    def __init__(
        self,
        target: str,
        model_name: str,
        top_k: int | None = None,
        keep_images: bool = False,
        progress_dir: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        version: int | None = None,
    ):
        super().__init__(model_name, top_k, keep_images, progress_dir)
        self.target = target
        self.version = version  # every request asks for it (None: whichever the server picks)
        self.timeout = timeout
        self.retries = retries
        self._client: Any = None
        self._budget = RequestBudget(CLIENT_MESSAGE_MB)

    def setup(self) -> None:
        from serving.client import ServingClient

        self._client = ServingClient(
            self.target, timeout=self.timeout, retries=self.retries, max_message_mb=CLIENT_MESSAGE_MB
        )

    def process(self, batch: Sequence[tuple[str, bytes]]) -> Iterator[Any]:
        """Requests under the gRPC message limit: a batch of large photos is sent in parts, and
        an image too large for any request is skipped with why (the others are still scored).

        The limit is the client's (64 MB) until the server refuses a request as over its own
        (a server or proxy started with a smaller one): from then on, this worker's requests
        stay under the server's, and the refused part is sent again in smaller parts.
        """
        yield from self._in_parts(list(batch))

    def _in_parts(self, items: list[tuple[str, bytes]]) -> Iterator[Any]:
        for part, too_large in self._budget.parts(items):
            if too_large:
                self.tick(1)
                [(path, data)] = part
                yield skipped(path, f"{self._budget.too_large_reason(len(data))}; score it with --model")
                continue
            try:
                results = list(self._score(part))
            except OverServerLimit as exc:
                if exc.images:
                    self._budget.fewer_images(exc.limit, len(part))
                else:
                    self._budget.shrink(exc.limit, [len(data) for _, data in part])
                yield from self._in_parts(part)
                continue
            yield from results

    def teardown(self) -> None:
        if self._client is not None:
            self._client.close()

    def predict(self, images: list[bytes]) -> tuple[list[list[str]], list[list[float]], int | None]:
        import grpc

        from serving.errors import ServingRpcError

        try:
            predictions = self._client.predict_images(
                self.model_name, images, signature=PREDICT_IMAGES, version=self.version
            )
        except ServingRpcError as exc:
            batch = server_batch_limit(exc.code.name, exc.details)
            if batch is not None and len(images) > 1:  # one image refused so: the image's answer
                raise OverServerLimit(batch, images=True) from exc
            if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidInput(_first_line(exc.details)) from exc
            if exc.code == grpc.StatusCode.NOT_FOUND and self.version is not None:
                raise VersionGone(
                    f"version {self.version} of model {self.model_name!r} is no longer served at "
                    f"{self.target} (a newer version replaced it while the job ran?): the job scores "
                    f"every image with one version ({exc.details})"
                ) from exc
            limit = server_receive_limit(exc.code.name, exc.details)
            if limit is not None:
                raise OverServerLimit(limit) from exc
            raise
        version = predictions[0].version if predictions else None
        return [p.classes for p in predictions], [p.scores for p in predictions], version


def _first_line(message: str) -> str:
    """The model's reason from a TensorFlow error: the failed check's text, without stack noise."""
    failed = re.search(r"assertion failed: \[(.*?)\]\s*$", message, flags=re.MULTILINE)
    if failed:
        return failed.group(1)
    lines = [
        line
        for line in message.splitlines()
        if line.strip() and not line.startswith((" ", "\t")) and not line.startswith(_NOISE)
    ]
    return tf_error_text(ValueError(lines[-1] if lines else message))


_NOISE = ("Graph execution error", "Detected at node")
