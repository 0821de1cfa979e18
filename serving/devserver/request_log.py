"""Sampled request logging: Predict and Classify calls as PredictionLog records in TFRecord files.

The format is TF Serving's own request log (`tensorflow_serving.apis.
prediction_log_pb2.PredictionLog`, one per record, with the model spec that
answered, the sampling rate and a timestamp), so anything that reads TF
Serving's logs reads these; `imgpipe drift` turns them into statistics.

Logging never blocks or fails a request. `offer_predict` / `offer_classify`
decide sampling and hand the request and response to a bounded queue (a
record count and a byte budget); a background thread builds, frames and
writes the records. When the queue is full, or the disk is full or the
directory unwritable, records are dropped and counted by reason; after a
write error the writer waits `retry_seconds` before opening a new file. The
counts go to the log at shutdown and to DIR/request_log_stats-<UTC start>-<pid>-<6 hex>.json
(rewritten every few seconds while they change, and at shutdown): one per server, so servers
logging to one DIR (replicas on a shared volume) each keep their own counts (a single shared
file held the last writer's alone).

Files are DIR/prediction_log-<UTC start>-<pid>-<seq>.tfrecord; a file is
closed and the next one started when it reaches `max_file_bytes`. Each
record is flushed when written, so files can be read while the server runs.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import random
import secrets
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import google_crc32c
from google.protobuf import message
from tensorflow_serving.apis import prediction_log_pb2

from serving.errors import ServerStartError

log = logging.getLogger(__name__)

MB = 1024 * 1024
FILE_PREFIX = "prediction_log-"
FILE_SUFFIX = ".tfrecord"
STATS_PREFIX = "request_log_stats-"  # DIR/request_log_stats-<UTC start>-<pid>-<6 hex>.json, one per server
SERVE_TAG = "serve"


@dataclasses.dataclass
class RequestLogStats:
    """What happened to the successful requests the server offered to the log."""

    requests: int = 0  # successful Predict/Classify calls seen
    sampled: int = 0  # chosen by the sampling rate
    written: int = 0
    dropped_queue_full: int = 0  # the writer could not keep up
    dropped_write_error: int = 0  # disk full, directory gone or unwritable
    dropped_at_shutdown: int = 0  # still queued when the writer's time ran out
    dropped_unparseable: int = 0  # a forwarded call's bytes that are no request/response (log-proxy)
    files: int = 0
    bytes_written: int = 0
    last_error: str = ""

    @property
    def dropped(self) -> int:
        return (
            self.dropped_queue_full
            + self.dropped_write_error
            + self.dropped_at_shutdown
            + self.dropped_unparseable
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "dropped": self.dropped}


# The PredictionLog fields of the calls a log holds: Predict, Classify, MultiInference.
KINDS = ("predict_log", "classify_log", "multi_inference_log")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, bytes) else value.ByteSize()


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def tfrecord_frame(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC-32C of the length, the data, masked CRC-32C of the data."""
    length = struct.pack("<Q", len(data))
    return length + _masked_crc(length) + data + _masked_crc(data)


class CorruptLogError(ValueError):
    """A log file holds a record whose checksum does not match: the file's rest is unreadable."""


def read_records(path: str, truncated: list[str] | None = None) -> Iterator[bytes]:
    """The records of one TFRecord file, checksums verified.

    A record cut short at the end of the file (the writer was stopped mid-record,
    or is writing it right now) ends the file; its path and offset are appended
    to `truncated` when given. A checksum mismatch raises CorruptLogError
    naming the file, the record's index and its byte offset.
    """
    with open(path, "rb") as f:
        index = 0
        while True:
            offset = f.tell()
            head = f.read(12)
            if not head:
                return
            length = struct.unpack("<Q", head[:8])[0] if len(head) == 12 else 0
            if len(head) == 12 and head[8:12] != _masked_crc(head[:8]):
                raise CorruptLogError(f"{path}: record {index} at byte {offset} has a corrupt length")
            body = f.read(length + 4) if len(head) == 12 else b""
            if len(body) < length + 4:
                if truncated is not None:
                    what = f"record {index} at byte {offset} is cut short"
                    if offset == 0:  # the file's first bytes are no whole record
                        size = len(head) + len(body)
                        what = (
                            f"holds no whole record ({size} bytes: not a TFRecord file, "
                            "or its first record is still being written)"
                        )
                    truncated.append(f"{path}: {what}")
                return
            data = body[:-4]
            if body[-4:] != _masked_crc(data):
                raise CorruptLogError(f"{path}: record {index} at byte {offset} fails its checksum")
            yield data
            index += 1


def _open_file(path: str) -> Any:
    """Open a new log file for writing (a seam: tests point it at /dev/full)."""
    return open(path, "xb")  # noqa: SIM115 - kept open across records, closed on rotation


def stats_files(directory: str) -> list[str]:
    """The servers' stats files in `directory` (one per server that logged there), oldest first."""
    return _named(directory, STATS_PREFIX, ".json")


def log_files(directory: str) -> list[str]:
    """The request log files in `directory`, oldest first (their names sort by start time)."""
    return _named(directory, FILE_PREFIX, FILE_SUFFIX)


def _named(directory: str, prefix: str, suffix: str) -> list[str]:
    names = [n for n in os.listdir(directory) if n.startswith(prefix) and n.endswith(suffix)]
    return [os.path.join(directory, n) for n in sorted(names)]


class RequestLog:
    """Samples requests into a bounded queue; a writer thread appends them to rotating TFRecords.

    `start()` creates the directory (raises OSError when it cannot) and the
    writer; `close()` writes what is queued (for up to `timeout` s), logs the
    counts and returns them.
    """

    def __init__(
        self,
        directory: str,
        sample_rate: float = 1.0,
        max_file_bytes: int = 64 * MB,
        max_queue_records: int = 1000,
        max_queue_bytes: int = 64 * MB,
        retry_seconds: float = 5.0,
        stats_seconds: float = 5.0,
        seed: int | None = None,
    ):
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
        self.directory = directory
        self.sample_rate = sample_rate
        self.max_file_bytes = max_file_bytes
        self.max_queue_records = max_queue_records
        self.max_queue_bytes = max_queue_bytes
        self.retry_seconds = retry_seconds
        self.stats_seconds = stats_seconds
        self._rng = random.Random(seed)
        self._cond = threading.Condition()  # guards the queue, the stats and _closing
        self._queue: collections.deque[tuple[str, Any, Any, float, int]] = collections.deque()
        self._queued_bytes = 0
        self._stats = RequestLogStats()
        self._closing = False
        self._closed = False
        self._thread: threading.Thread | None = None
        # Writer-thread state.
        self._file: Any = None
        self._file_path = ""
        self._file_bytes = 0
        self._seq = 0
        self._stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        unique = f"{self._stamp}-{os.getpid()}-{secrets.token_hex(3)}"  # two logs in a process too
        self.stats_path = os.path.join(directory, f"{STATS_PREFIX}{unique}.json")
        self._retry_at = 0.0
        self._failing = False
        self._stats_written: dict[str, Any] | None = None

    # -- the request side: never blocks on I/O -------------------------------------------
    def offer_predict(self, request: Any, response: Any) -> None:
        """Log a successful Predict call, if sampled and the queue has room."""
        self._offer("predict_log", request, response)

    def offer_classify(self, request: Any, response: Any) -> None:
        """Log a successful Classify call, if sampled and the queue has room."""
        self._offer("classify_log", request, response)

    def offer_multi_inference(self, request: Any, response: Any) -> None:
        """Log a successful MultiInference call, if sampled and the queue has room."""
        self._offer("multi_inference_log", request, response)

    def offer_serialized(self, kind: str, request: bytes, response: bytes) -> None:
        """Log a successful call given as its wire bytes (`kind`: one of KINDS), if sampled and
        the queue has room: a proxy's forwarded call (serving/log_proxy.py), parsed by the writer."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self._offer(kind, request, response)

    def _offer(self, kind: str, request: Any, response: Any) -> None:
        with self._cond:
            self._stats.requests += 1
            if self._closing or self._rng.random() >= self.sample_rate:
                return
            self._stats.sampled += 1
        size = _size(request) + _size(response)
        with self._cond:
            full = len(self._queue) >= self.max_queue_records or (
                self._queue and self._queued_bytes + size > self.max_queue_bytes
            )
            if full:
                self._stats.dropped_queue_full += 1
                return
            self._queue.append((kind, request, response, time.time(), size))
            self._queued_bytes += size
            self._cond.notify()

    def stats(self) -> RequestLogStats:
        """A copy of the counts so far."""
        with self._cond:
            return dataclasses.replace(self._stats)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> RequestLog:
        """Create the directory, write a first stats file (proves it is writable), start the writer."""
        os.makedirs(self.directory, exist_ok=True)
        self._write_stats(self.stats(), raise_errors=True)
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> RequestLogStats:
        """Write what is queued (up to `timeout` s), close the file, log and return the counts.

        Closing again returns the same counts.
        """
        with self._cond:
            if self._closed:
                return dataclasses.replace(self._stats)
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("request log writer did not finish within %.0fs", timeout)
        with self._cond:
            self._stats.dropped_at_shutdown += len(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
        if self._thread is None or not self._thread.is_alive():
            self._close_file()
        with self._cond:
            self._closed = True
        final = self.stats()
        self._write_stats(final)
        (log.warning if final.dropped else log.info)(
            "request log %s: %d of %d requests sampled, %d written in %d files (%.1f MB); dropped %d "
            "(queue full %d, write errors %d, at shutdown %d, unparseable %d)",
            self.directory,
            final.sampled,
            final.requests,
            final.written,
            final.files,
            final.bytes_written / MB,
            final.dropped,
            final.dropped_queue_full,
            final.dropped_write_error,
            final.dropped_at_shutdown,
            final.dropped_unparseable,
        )
        return final

    # -- the writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        next_stats = time.monotonic() + self.stats_seconds
        while True:
            with self._cond:
                if not self._queue and not self._closing:
                    self._cond.wait(timeout=max(0.0, next_stats - time.monotonic()))
                if not self._queue and self._closing:
                    return
                item = self._queue.popleft() if self._queue else None
                if item is not None:
                    self._queued_bytes -= item[4]
            if item is not None:
                try:
                    self._write(item)
                except Exception as e:  # noqa: BLE001 - the writer must outlive any one record
                    log.exception("request log: cannot log a record")
                    self._count_write_error(f"{type(e).__name__}: {e}")
            if time.monotonic() >= next_stats:
                self._write_stats(self.stats())
                next_stats = time.monotonic() + self.stats_seconds

    def _record(self, kind: str, request: Any, response: Any, timestamp: float) -> bytes:
        entry = prediction_log_pb2.PredictionLog()
        body = getattr(entry, kind)
        for field, value in ((body.request, request), (body.response, response)):
            if isinstance(value, bytes):
                field.ParseFromString(value)  # a forwarded call's wire bytes
            else:
                field.CopyFrom(value)
        meta = entry.log_metadata
        # The model and version that answered, as the response names them (a MultiInference
        # response in each result: one model and version).
        if kind != "multi_inference_log":
            meta.model_spec.CopyFrom(body.response.model_spec)
        elif body.response.results:
            meta.model_spec.CopyFrom(body.response.results[0].model_spec)
        meta.sampling_config.sampling_rate = self.sample_rate
        meta.saved_model_tags.append(SERVE_TAG)
        meta.timestamp_secs = int(timestamp)
        return tfrecord_frame(entry.SerializeToString())

    def _write(self, item: tuple[str, Any, Any, float, int]) -> None:
        kind, request, response, timestamp, _ = item
        if self._file is None and time.monotonic() < self._retry_at:
            self._count_write_error("")  # still backing off after an error
            return
        try:
            record = self._record(kind, request, response, timestamp)
        except message.DecodeError as e:  # wire bytes (a proxy's) that parse as no such message
            with self._cond:
                self._stats.dropped_unparseable += 1
                first = self._stats.dropped_unparseable == 1
            if first:
                log.warning(
                    "request log: a %s call's request or response is not one (%s): not logged; such "
                    "calls are counted in dropped_unparseable, not said again",
                    kind.removesuffix("_log"),
                    e,
                )
            return

        if self._file is None:
            self._seq += 1
            path = os.path.join(
                self.directory, f"{FILE_PREFIX}{self._stamp}-{os.getpid()}-{self._seq:05d}{FILE_SUFFIX}"
            )
            try:
                self._file = _open_file(path)
            except OSError as e:
                self._write_failed(f"cannot open {path}: {e.strerror or e}")
                return
            self._file_path, self._file_bytes = path, 0
        try:
            self._file.write(record)
            self._file.flush()
        except OSError as e:
            self._undo_partial_record()
            self._write_failed(f"cannot write {self._file_path}: {e.strerror or e}")
            return
        with self._cond:
            if self._file_bytes == 0:
                self._stats.files += 1  # counted once it holds a record
            self._stats.written += 1
            self._stats.bytes_written += len(record)
        self._file_bytes += len(record)
        if self._failing:
            self._failing = False
            log.info("request log: writing again to %s", self._file_path)
        if self._file_bytes >= self.max_file_bytes:
            self._close_file()

    def _undo_partial_record(self) -> None:
        """Cut a half-written record off the file so its earlier records stay readable.

        A file left empty is removed, so a full disk does not leave a trail of
        empty files behind the retries.
        """
        path, empty = self._file_path, self._file_bytes == 0
        self._close_file(quiet=True)
        try:
            if empty:
                os.remove(path)
            else:
                os.truncate(path, self._file_bytes)
        except OSError:
            pass  # the directory is gone or read-only: nothing to repair

    def _write_failed(self, reason: str) -> None:
        self._retry_at = time.monotonic() + self.retry_seconds
        if not self._failing:
            log.warning(
                "request log: %s; dropping records (counted) and retrying in %.0fs",
                reason,
                self.retry_seconds,
            )
        self._failing = True
        self._count_write_error(reason)

    def _count_write_error(self, reason: str) -> None:
        with self._cond:
            self._stats.dropped_write_error += 1
            if reason:
                self._stats.last_error = reason

    def _close_file(self, quiet: bool = False) -> None:
        if self._file is None:
            return
        try:
            self._file.close()  # every record was flushed: nothing is lost here
        except OSError as e:
            if not quiet:
                log.warning("request log: closing %s: %s", self._file_path, e.strerror or e)
        self._file = None

    def _write_stats(self, stats: RequestLogStats, raise_errors: bool = False) -> None:
        """Replace this server's stats file when the counts changed (atomically)."""
        data = stats.to_dict()
        if data == self._stats_written:
            return
        path = self.stats_path
        data["directory"] = os.path.abspath(self.directory)
        data["sample_rate"] = self.sample_rate
        try:
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, sort_keys=True)
            os.replace(path + ".tmp", path)
        except OSError:
            if raise_errors:
                raise
            return  # the counts are kept in memory and logged at shutdown
        self._stats_written = stats.to_dict()


def start_request_log(config: Any) -> RequestLog | None:
    """The started request log of a listener's settings (`log_requests`, `log_sample_rate`,
    `log_max_file_mb`, `log_queue_size`, `log_queue_mb`: `imgpipe serve`'s ServerConfig and
    `imgpipe log-proxy`'s ProxyConfig), or None when `log_requests` is empty. ServerStartError
    when the directory is a file or cannot be written."""
    if not config.log_requests:
        return None
    request_log = RequestLog(
        config.log_requests,
        sample_rate=config.log_sample_rate,
        max_file_bytes=config.log_max_file_mb * MB,
        max_queue_records=config.log_queue_size,
        max_queue_bytes=config.log_queue_mb * MB,
    )
    if os.path.exists(config.log_requests) and not os.path.isdir(config.log_requests):
        raise ServerStartError(f"--log-requests {config.log_requests} is a file: give a directory")
    try:
        request_log.start()
    except OSError as e:
        raise ServerStartError(
            f"cannot write request logs to {config.log_requests}: {e.strerror or e}"
        ) from e
    log.info(
        "Logging %s to %s (new file every %d MB)",
        "every successful request"
        if config.log_sample_rate >= 1
        else f"{config.log_sample_rate * 100:g}% of successful requests",
        config.log_requests,
        config.log_max_file_mb,
    )
    return request_log
