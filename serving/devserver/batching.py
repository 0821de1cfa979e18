"""Requests merged into one model call, as TF Serving does with `--enable_batching`.

TF Serving's batching session queues each request (a task) per signature; a batch thread takes
the open batch when it is full (`max_batch_size` rows) or when its first task has waited
`batch_timeout_micros`, runs the signature once on the tasks' inputs joined along the first
dimension, and gives each task its rows of the outputs. Every task of the batch gets the
batch's error: one client's image the model refuses fails every request merged with it, and a
client must not take such a refusal of its own request at its word (serving/client.py asks
again). A task arriving when `max_enqueued_batches` batches wait is refused UNAVAILABLE.

`imgpipe serve --enable-batching` runs this with the parameters of `--batching-parameters-file`
(serving/deploy/batching_parameters.txt is what production's TF Serving reads) or TF Serving's
defaults, so clients are tried against the behaviour they meet in production.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping

import grpc
import numpy as np

from serving.batching_config import BatchingParameters
from serving.errors import InvalidRequestError, ServingError

log = logging.getLogger(__name__)

Arrays = Mapping[str, np.ndarray]


@dataclasses.dataclass(eq=False)
class _Task:
    inputs: Arrays
    rows: int
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    outputs: dict[str, np.ndarray] | None = None
    error: BaseException | None = None


@dataclasses.dataclass(eq=False)
class _Queue:
    """One signature's tasks: the open batch, and the closed batches waiting for a thread."""

    open: list[_Task] = dataclasses.field(default_factory=list)
    open_rows: int = 0
    opened_at: float = 0.0
    closed: collections.deque = dataclasses.field(default_factory=collections.deque)

    def close_open(self) -> None:
        if self.open:
            self.closed.append(self.open)
            self.open, self.open_rows = [], 0

    def waiting(self) -> int:
        return len(self.closed) + (1 if self.open else 0)


class Batcher:
    """Merges the calls of one loaded version's signatures; `run` blocks until its batch ran.

    call(signature, inputs) runs a signature once on whole arrays and returns every output.
    """

    def __init__(self, call: Callable[[str, Arrays], dict[str, np.ndarray]], params: BatchingParameters):
        self._call = call
        self.params = params
        self._timeout = params.batch_timeout_micros / 1e6
        self._queues: dict[tuple[str, Hashable], _Queue] = collections.defaultdict(_Queue)
        self._cond = threading.Condition()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._work, name=f"serving-batch-{i}", daemon=True)
            for i in range(params.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, signature: str, inputs: Arrays, key: Hashable = None) -> dict[str, np.ndarray]:
        """The signature's outputs for these inputs, computed in a batch with other requests' of the
        same signature and `key` (TF Serving batches requests apart when they ask for other
        outputs: the request's output filter)."""
        rows = {a.shape[0] if a.ndim else None for a in inputs.values()}
        if None in rows:
            raise InvalidRequestError("Batching session Run() input tensors must have at least one dimension")
        if len(rows) != 1:
            raise InvalidRequestError(
                "Batching session Run() input tensors must have equal 0th-dimension size"
            )
        task = _Task(dict(inputs), rows.pop())
        with self._cond:
            if self._stopped:
                raise ServingError("the version is being unloaded", grpc.StatusCode.UNAVAILABLE)
            queue = self._queues[(signature, key)]
            fits = bool(queue.open) and queue.open_rows + task.rows <= self.params.max_batch_size
            # A task that needs a new batch while max_enqueued_batches wait is refused; the open
            # batch stays open for a later task that fits (TF Serving's queue).
            if not fits and queue.waiting() >= self.params.max_enqueued_batches:
                raise ServingError(
                    "The batch scheduling queue to which this task was submitted is full",
                    grpc.StatusCode.UNAVAILABLE,
                )
            if not fits:
                queue.close_open()
            if not queue.open:
                queue.opened_at = time.monotonic()
            queue.open.append(task)
            queue.open_rows += task.rows
            if queue.open_rows >= self.params.max_batch_size:
                queue.close_open()
            self._cond.notify_all()
        task.done.wait()
        if task.error is not None:  # the batch's error, raised anew in each of its requests
            error = task.error
            if isinstance(error, ServingError):
                raise type(error)(str(error), error.code) from error
            raise ServingError(f"{type(error).__name__}: {error}", grpc.StatusCode.INTERNAL) from error
        return task.outputs

    def stop(self) -> None:
        """Run what is queued, then end the batch threads (the version is unloaded)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # -- the batch threads -------------------------------------------------------------
    def _next(self) -> tuple[str, list[_Task]] | None:
        """A batch ready to run (under the lock), or None; a wait is then due."""
        now = time.monotonic()
        for (signature, _), queue in self._queues.items():
            if not queue.closed and queue.open and (self._stopped or now - queue.opened_at >= self._timeout):
                queue.close_open()
            if queue.closed:
                return signature, queue.closed.popleft()
        return None

    def _wait_time(self) -> float | None:
        """Seconds until the oldest open batch's timeout (None: no open batch)."""
        now = time.monotonic()
        due = [q.opened_at + self._timeout - now for q in self._queues.values() if q.open]
        return max(0.0, min(due)) if due else None

    def _work(self) -> None:
        while True:
            with self._cond:
                ready = self._next()
                while ready is None:
                    if self._stopped:
                        return
                    self._cond.wait(self._wait_time())
                    ready = self._next()
            signature, tasks = ready
            self._run_batch(signature, tasks)

    def _run_batch(self, signature: str, tasks: list[_Task]) -> None:
        try:
            joined, padded = self._joined(tasks)
            outputs = self._call(signature, joined)
            start = 0
            parts = []
            for task in tasks:
                parts.append(
                    {name: _rows(name, array, start, task.rows, padded) for name, array in outputs.items()}
                )
                start += task.rows
        except BaseException as e:  # noqa: BLE001 - every task of the batch gets the batch's error
            for task in tasks:
                task.error = e
                task.done.set()
            return
        for task, part in zip(tasks, parts, strict=True):
            task.outputs = part
            task.done.set()

    def _joined(self, tasks: list[_Task]) -> tuple[dict[str, np.ndarray], int]:
        """Each input of the tasks joined along the first dimension, padded (with the first row)
        up to the next of `allowed_batch_sizes`, and the rows that makes."""
        names = set(tasks[0].inputs)
        if any(set(t.inputs) != names for t in tasks):  # one signature's tasks, each checked
            raise ServingError("tasks of one batch have different inputs", grpc.StatusCode.INTERNAL)
        rows = sum(t.rows for t in tasks)
        padded = next((size for size in self.params.allowed_batch_sizes if size >= rows), rows)
        joined = {}
        for name in sorted(names):
            parts = [t.inputs[name] for t in tasks]
            if len({p.shape[1:] for p in parts}) > 1:
                raise InvalidRequestError(
                    f"Tensors with name '{name}' from different tasks have different shapes and padding "
                    "is turned off. Set pad_variable_length_inputs to true, or ensure that all tensors "
                    "with the same name have equal dimensions starting with the first dim."
                    + (" (imgpipe's server does not pad)" if self.params.pad_variable_length_inputs else "")
                )
            if padded > rows:
                parts.append(np.repeat(parts[0][:1], padded - rows, axis=0))
            joined[name] = np.concatenate(parts, axis=0)
        return joined, padded


def _rows(name: str, array: np.ndarray, start: int, count: int, total: int) -> np.ndarray:
    """A task's rows of a batch's output; INTERNAL when the output is not one row per input row."""
    if array.ndim == 0 or array.shape[0] != total:
        raise ServingError(
            f"Batched output tensor {name!r} has {array.shape[0] if array.ndim else 0} rows for a batch of "
            f"{total} inputs: its 0th dimension must equal the inputs'",
            grpc.StatusCode.INTERNAL,
        )
    return array[start : start + count]
