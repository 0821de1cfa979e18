"""serving/devserver/batching.py and serving/batching_config.py: requests merged as TF Serving's
--enable_batching merges them, with its parameters file read as TF Serving reads it."""

from __future__ import annotations

import os
import threading
import time

import grpc
import numpy as np
import pytest

from serving.batching_config import (
    DEFAULT_MAX_BATCH_SIZE,
    BatchingParameters,
    parse_batching_parameters,
    read_batching_parameters,
)
from serving.config import ServerConfig
from serving.devserver.batching import Batcher
from serving.errors import InvalidRequestError, ServerStartError, ServingError

DEPLOY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "serving", "deploy")


class _Model:
    """A signature that doubles numbers and refuses a batch holding a negative one (as a model
    refuses an image it cannot decode); records each call's rows."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[int] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, signature: str, inputs):
        x = inputs["x"]
        with self.lock:
            self.calls.append(len(x))
        time.sleep(self.delay)
        if (x < 0).any():
            raise InvalidRequestError(f"signature {signature!r} failed on the request: negative input")
        return {"y": x * 2, "rows": np.arange(len(x))}


def _together(batcher: Batcher, requests: list[np.ndarray], signature: str = "sig"):
    """Run the requests from concurrent threads; each one's outputs or error, in order."""
    results: list = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def one(i):
        start.wait()
        try:
            results[i] = batcher.run(signature, {"x": requests[i]})
        except ServingError as e:
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def _params(**fields) -> BatchingParameters:
    return BatchingParameters(**{"batch_timeout_micros": 300_000, "num_batch_threads": 1, **fields})


def test_concurrent_requests_run_as_one_call_and_each_gets_its_rows():
    model = _Model()
    batcher = Batcher(model, _params(max_batch_size=32))
    try:
        requests = [np.array([10 * i + j for j in range(i + 1)], np.int64) for i in range(4)]
        results = _together(batcher, requests)
    finally:
        batcher.stop()
    assert model.calls == [10]  # 1 + 2 + 3 + 4 rows, one call
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], request * 2)
        assert len(result["rows"]) == len(request)


def test_every_request_of_a_batch_gets_the_batchs_error():
    """TF Serving's batching session gives each task the batch's status: a good request merged
    with one the model refuses is refused too, with the model's words."""
    model = _Model()
    batcher = Batcher(model, _params(max_batch_size=32))
    try:
        good, bad = np.array([1, 2], np.int64), np.array([-1], np.int64)
        results = _together(batcher, [good, bad])
        assert model.calls == [3]
        for result in results:
            assert isinstance(result, InvalidRequestError)
            assert result.code == grpc.StatusCode.INVALID_ARGUMENT and "negative input" in str(result)
        assert results[0] is not results[1]  # each request raises its own exception
        # Alone, the good request is answered.
        np.testing.assert_array_equal(batcher.run("sig", {"x": good})["y"], good * 2)
    finally:
        batcher.stop()


def test_a_batch_holds_at_most_max_batch_size_rows_and_signatures_do_not_mix():
    model = _Model()
    batcher = Batcher(model, _params(max_batch_size=4))
    try:
        requests = [np.array([i, i], np.int64) for i in range(4)]  # 8 rows: two full batches
        results = _together(batcher, requests)
        assert sorted(model.calls) == [4, 4]
        for request, result in zip(requests, results, strict=True):
            np.testing.assert_array_equal(result["y"], request * 2)
        model.calls.clear()
        threads = [
            threading.Thread(target=batcher.run, args=(name, {"x": np.array([1], np.int64)}))
            for name in ("a", "b")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert model.calls == [1, 1]  # one batch per signature
    finally:
        batcher.stop()


def test_a_partial_batch_waits_at_most_the_timeout():
    model = _Model()
    batcher = Batcher(model, _params(batch_timeout_micros=50_000))
    try:
        started = time.monotonic()
        out = batcher.run("sig", {"x": np.array([3], np.int64)})
        assert time.monotonic() - started >= 0.045
        np.testing.assert_array_equal(out["y"], [6])
    finally:
        batcher.stop()


def test_a_batch_is_padded_up_to_an_allowed_size():
    model = _Model()
    batcher = Batcher(model, _params(max_batch_size=8, allowed_batch_sizes=(2, 4, 8), batch_timeout_micros=0))
    try:
        out = batcher.run("sig", {"x": np.array([5, 6, 7], np.int64)})
    finally:
        batcher.stop()
    assert model.calls == [4]  # 3 rows padded to 4
    np.testing.assert_array_equal(out["y"], [10, 12, 14])


def test_a_full_queue_is_unavailable():
    model = _Model(delay=0.5)
    batcher = Batcher(model, _params(max_batch_size=1, max_enqueued_batches=1, batch_timeout_micros=0))
    try:
        results = _together(batcher, [np.array([i], np.int64) for i in range(4)])
    finally:
        batcher.stop()
    refused = [r for r in results if isinstance(r, ServingError)]
    assert refused and all(r.code == grpc.StatusCode.UNAVAILABLE for r in refused)
    assert "queue to which this task was submitted is full" in str(refused[0])
    assert len(model.calls) == 4 - len(refused)


def test_inputs_without_a_batch_dimension_are_refused():
    batcher = Batcher(_Model(), _params())
    try:
        with pytest.raises(InvalidRequestError, match="at least one dimension"):
            batcher.run("sig", {"x": np.array(3)})
    finally:
        batcher.stop()


# ----------------------------------------------------------------------------------------
# The parameters file


def test_the_shipped_parameters_file_is_read_as_tf_serving_reads_it():
    params = read_batching_parameters(os.path.join(DEPLOY, "batching_parameters.txt"))
    assert (params.max_batch_size, params.batch_timeout_micros, params.num_batch_threads) == (32, 2000, 4)
    assert params.max_enqueued_batches == 100 and params.allowed_batch_sizes == ()


def test_unset_fields_take_tf_serving_defaults():
    params = parse_batching_parameters("batch_timeout_micros { value: 5 }")
    assert params.max_batch_size == DEFAULT_MAX_BATCH_SIZE and params.batch_timeout_micros == 5
    assert params.num_batch_threads == (os.cpu_count() or 1)
    assert read_batching_parameters(None) == BatchingParameters()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch_sise { value: 1 }", "max_batch_sise"),
        ("max_batch_size: 4", "max_batch_size"),  # a wrapper message, not a number
        ("num_batch_threads { value: 0 }", "num_batch_threads must be >= 1, got 0"),
        (
            "max_batch_size { value: 8 } allowed_batch_sizes: 2 allowed_batch_sizes: 4",
            "last entry of allowed_batch_sizes must match max_batch_size",
        ),
        ("allowed_batch_sizes: 4 allowed_batch_sizes: 2", "positive and increasing"),
        ("enable_large_batch_splitting { value: true }", "enable_large_batch_splitting is not implemented"),
    ],
)
def test_a_file_tf_serving_would_refuse_is_refused_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "batching.txt"
    path.write_text(text)
    with pytest.raises(ServerStartError, match=message) as e:
        read_batching_parameters(str(path))
    assert str(path) in str(e.value)


def test_the_server_config_reads_the_file_when_it_starts(tmp_path):
    base = tmp_path / "models"
    base.mkdir()
    with pytest.raises(ServerStartError, match="must go with enable_batching"):
        ServerConfig(str(base), "m", batching_parameters_file="x.txt").validate()
    with pytest.raises(ServerStartError, match="cannot read the batching parameters file"):
        ServerConfig(
            str(base), "m", enable_batching=True, batching_parameters_file=str(tmp_path / "no")
        ).validate()
    assert ServerConfig(str(base), "m").batching() is None
    assert ServerConfig(str(base), "m", enable_batching=True).validate().batching() == BatchingParameters()


def test_a_task_refused_for_a_full_queue_leaves_the_open_batch_open():
    """TF Serving's queue: a task that needs a new batch while max_enqueued_batches wait is
    refused, and a later task that fits the open batch still joins it."""
    model = _Model()
    batcher = Batcher(model, _params(max_batch_size=4, max_enqueued_batches=1, batch_timeout_micros=400_000))
    results = {}

    def send(name, rows):
        try:
            results[name] = batcher.run("sig", {"x": np.arange(rows, dtype=np.int64)})
        except ServingError as e:
            results[name] = e

    try:
        first = threading.Thread(target=send, args=("a", 3))
        first.start()
        time.sleep(0.1)  # a opened the batch: 3 of 4 rows
        send("b", 2)  # needs a second batch: refused at once
        last = threading.Thread(target=send, args=("c", 1))  # fits: joins a's batch
        last.start()
        first.join(10)
        last.join(10)
    finally:
        batcher.stop()
    assert isinstance(results["b"], ServingError) and results["b"].code == grpc.StatusCode.UNAVAILABLE
    assert model.calls == [4]
    np.testing.assert_array_equal(results["c"]["y"], [0])


def test_requests_asking_for_other_outputs_are_batched_apart():
    model = _Model()
    batcher = Batcher(model, _params())
    try:
        threads = [
            threading.Thread(
                target=batcher.run, args=("sig", {"x": np.array([1], np.int64)}), kwargs={"key": key}
            )
            for key in [("y",), ("rows",), ("y",)]
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        batcher.stop()
    assert sorted(model.calls) == [1, 2]
