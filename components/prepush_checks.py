"""The checks of pre-push validation: a served model answers like the same model in-process.

`check_served_model` talks to a running server (TF Serving or `imgpipe serve`)
over gRPC with the stock client and records every problem as a `Failure`
naming the check, the signature, the request and the server's status:

- status: GetModelStatus reports the version AVAILABLE (before and after the traffic);
- metadata: GetModelMetadata lists serving_default, classification and
  predict_images with the exporter's inputs and method names, equal to the
  SignatureDefs in saved_model.pb;
- warmup: every request of assets.extra/tf_serving_warmup_requests answers OK;
- answers: each eval example through serving_default (Predict), classification
  (the Classify RPC) and predict_images (the raw image bytes), one per request,
  then all of them in one batch per signature: OK, the output dtypes and
  shapes of the signature's contract, every returned score within `tolerance`
  of the in-process model's score for that class, and the same top-1 class;
- latency: each signature's p99 over the one-example requests (client side)
  at most `max_latency_ms`.

The reference is the candidate SavedModel loaded in this process and called
through serving_default: the signature the Evaluator gated on.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import prediction_log_pb2

from serving.client import Prediction, ServingClient
from serving.errors import ServingRpcError
from serving.signatures import (
    CLASSIFICATION,
    CLASSIFY_METHOD,
    INPUT_KEYS,
    PREDICT_IMAGES,
    PREDICT_METHOD,
    SERVING_DEFAULT,
)

# The signatures every pushed model must serve, with their RPC method names.
SIGNATURE_METHODS = {
    SERVING_DEFAULT: PREDICT_METHOD,
    CLASSIFICATION: CLASSIFY_METHOD,
    PREDICT_IMAGES: PREDICT_METHOD,
}
OUTPUTS = ("classes", "scores")
_MAX_SHOWN = 20  # failures kept in the run summary (all are in the report file)


@dataclasses.dataclass(frozen=True)
class Failure:
    """One failed check: what was checked, on which signature and request, and what came back."""

    check: str  # server | reference | status | metadata | warmup | answer | latency
    message: str
    signature: str | None = None
    request: str | None = None  # e.g. "eval example 3", "batch of 16 eval examples", "warmup record 0"
    status: str | None = None  # the gRPC status code name, when the server answered with an error

    def describe(self) -> str:
        where = ", ".join(x for x in (self.signature, self.request) if x)
        status = f"{self.status}: " if self.status else ""
        return f"{self.check}{f' ({where})' if where else ''}: {status}{self.message}"


@dataclasses.dataclass
class PrepushReport:
    """What pre-push validation did and found; `blessed` is the verdict the Pusher follows."""

    blessed: bool = False
    validated: bool = False  # False: validation was off, or skipped (model not blessed)
    reason: str = ""  # why not blessed / not validated; "" when validated and blessed
    server: str = ""  # tensorflow_model_server | imgpipe serve
    # True: the server was started while the Evaluator ran (a local run's standby), so its
    # start-up is not in `seconds`
    server_started_early: bool = False
    # True: the reference answers came from the model object the Evaluator loaded and ran
    # (a local run, components/loaded_models.py), not from a second load of the SavedModel
    reference_from_evaluator: bool = False
    model_name: str = ""
    version: int | None = None
    examples: int = 0
    warmup_requests: int = 0
    requests: int = 0
    latency_ms: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    max_latency_ms: float | None = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # server start+load, checks
    failures: list[Failure] = dataclasses.field(default_factory=list)

    def fail(self, failure: Failure) -> None:
        self.failures.append(failure)

    def conclude(self) -> PrepushReport:
        """Set `blessed` and `reason` from the failures of a validation that ran."""
        self.validated = True
        self.blessed = not self.failures
        if self.failures:
            more = len(self.failures) - 1
            self.reason = self.failures[0].describe() + (f" (and {more} more failures)" if more else "")
        else:
            self.reason = ""
        return self

    def summary(self) -> dict[str, Any]:
        """The part of the report the run summary shows."""
        return {
            "blessed": self.blessed,
            "validated": self.validated,
            "reason": self.reason,
            "server": self.server,
            "server_started_early": self.server_started_early,
            "reference_from_evaluator": self.reference_from_evaluator,
            "examples": self.examples,
            "requests": self.requests,
            "p99_ms": {sig: lat["p99"] for sig, lat in self.latency_ms.items()},
            "max_latency_ms": self.max_latency_ms,
            "seconds": self.seconds,
            "failures": [f.describe() for f in self.failures[:_MAX_SHOWN]],
        }

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "summary": self.summary()}


@dataclasses.dataclass(frozen=True)
class Reference:
    """The in-process model's serving_default answers: [N, C] scores over `class_names`."""

    class_names: list[str]
    scores: np.ndarray

    def top1(self, i: int) -> str:
        return self.class_names[int(np.argmax(self.scores[i]))]


def reference_answers(saved_model_dir: str, examples: Sequence[bytes], model: Any = None) -> Reference:
    """Run the SavedModel's serving_default here on `examples` (serialized tf.Examples).

    `model`: that SavedModel already loaded (the object the Evaluator ran); None loads it.
    """
    if model is None:
        model = tf.saved_model.load(saved_model_dir)
    if SERVING_DEFAULT not in model.signatures:
        raise ValueError(f"{saved_model_dir} has no {SERVING_DEFAULT} signature")
    out = model.signatures[SERVING_DEFAULT](**{INPUT_KEYS[SERVING_DEFAULT]: tf.constant(list(examples))})
    scores = out["scores"].numpy()
    classes = out["classes"].numpy()
    if scores.shape != (len(examples), classes.shape[1]) or classes.shape[0] != len(examples):
        raise ValueError(
            f"in-process {SERVING_DEFAULT} returned scores {list(scores.shape)} and classes "
            f"{list(classes.shape)} for {len(examples)} examples"
        )
    names = [c.decode("utf-8") for c in classes[0]]
    return Reference(names, scores.astype(np.float64))


def latency_stats(millis: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max of request latencies in milliseconds."""
    a = np.asarray(millis, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(a, 50)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "max": round(float(a.max()), 3),
    }


class _Checker:
    """One validation pass against a server: sends the requests, collects failures and latencies."""

    def __init__(
        self,
        client: ServingClient,
        model_name: str,
        reference: Reference,
        tolerance: float,
        report: PrepushReport,
    ):
        self.client = client
        self.model_name = model_name
        self.reference = reference
        self.tolerance = tolerance
        self.report = report
        self.latencies: dict[str, list[float]] = {}

    # -- transport ---------------------------------------------------------------------
    def call(self, check: str, signature: str, request: str, rpc: Callable[[], Any], timed: bool) -> Any:
        """Run one RPC; a failed call becomes a Failure (returns None)."""
        self.report.requests += 1
        start = time.perf_counter()
        try:
            result = rpc()
        except ServingRpcError as e:
            self.report.fail(Failure(check, e.details, signature, request, e.code.name))
            return None
        except ValueError as e:  # the client could not read the answer
            self.report.fail(Failure(check, str(e), signature, request))
            return None
        if timed:
            self.latencies.setdefault(signature, []).append((time.perf_counter() - start) * 1000.0)
        return result

    # -- status and metadata -----------------------------------------------------------
    def check_status(self, version: int | None, when: str) -> None:
        self.report.requests += 1
        try:
            statuses = self.client.model_status(self.model_name)
        except ServingRpcError as e:
            self.report.fail(
                Failure("status", e.details, request=f"GetModelStatus {when}", status=e.code.name)
            )
            return
        states = {v: (state, message) for v, state, message in statuses}
        wanted = version if version is not None else (max(states) if states else None)
        state, message = states.get(wanted, ("missing", ""))
        if state != "AVAILABLE":
            self.report.fail(
                Failure(
                    "status",
                    f"version {wanted} is {state}{f': {message}' if message else ''} (all: {statuses})",
                    request=f"GetModelStatus {when}",
                )
            )

    def check_metadata(self, saved: Mapping[str, meta_graph_pb2.SignatureDef]) -> None:
        self.report.requests += 1
        try:
            served = self.client.metadata(self.model_name)
        except ServingRpcError as e:
            self.report.fail(Failure("metadata", e.details, request="GetModelMetadata", status=e.code.name))
            return
        for name, method in SIGNATURE_METHODS.items():
            sig = served.get(name)
            if sig is None:
                self.report.fail(
                    Failure(
                        "metadata",
                        f"not served (the server lists {sorted(served)})",
                        name,
                        "GetModelMetadata",
                    )
                )
                continue
            problems = []
            if list(sig.inputs) != [INPUT_KEYS[name]]:
                problems.append(f"inputs {sorted(sig.inputs)}, expected [{INPUT_KEYS[name]!r}]")
            if sig.method_name != method:
                problems.append(f"method_name {sig.method_name!r}, expected {method!r}")
            missing = [o for o in OUTPUTS if o not in sig.outputs]
            if missing:
                problems.append(f"no outputs {missing} (has {sorted(sig.outputs)})")
            if name in saved and sig != saved[name]:
                problems.append("differs from the SignatureDef in saved_model.pb")
            for p in problems:
                self.report.fail(Failure("metadata", p, name, "GetModelMetadata"))

    # -- warmup ------------------------------------------------------------------------
    def replay_warmup(self, logs: Sequence[prediction_log_pb2.PredictionLog]) -> None:
        for i, entry in enumerate(logs):
            kind = entry.WhichOneof("log_type")
            request = f"warmup record {i}"
            if kind == "predict_log":
                req = entry.predict_log.request
                signature = req.model_spec.signature_name or SERVING_DEFAULT
                self.call(
                    "warmup",
                    signature,
                    request,
                    lambda req=req, signature=signature: self.client.predict(
                        self.model_name, dict(req.inputs), signature, output_filter=list(req.output_filter)
                    ),
                    timed=False,
                )
            elif kind == "classify_log":
                req = entry.classify_log.request
                signature = req.model_spec.signature_name or SERVING_DEFAULT
                examples = [e.SerializeToString() for e in req.input.example_list.examples]
                self.call(
                    "warmup",
                    signature,
                    request,
                    lambda examples=examples, signature=signature: self.client.classify(
                        self.model_name, examples, signature=signature
                    ),
                    timed=False,
                )
            else:
                self.report.fail(
                    Failure(
                        "warmup", f"a {kind} record, which pre-push validation cannot replay", request=request
                    )
                )
                continue
            self.report.warmup_requests += 1

    # -- answers -----------------------------------------------------------------------
    def _rows_from_outputs(
        self, signature: str, request: str, outputs: Mapping[str, np.ndarray], batch: int
    ) -> list[list[tuple[str, float]]] | None:
        """A Predict answer -> per example [(class, score)] as served; None (and a Failure) if malformed."""
        num_classes = len(self.reference.class_names)
        problems = []
        for name in OUTPUTS:
            if name not in outputs:
                problems.append(f"no {name!r} output (got {sorted(outputs)})")
        if problems:
            self._answer_failures(signature, request, problems)
            return None
        scores, classes = outputs["scores"], outputs["classes"]
        if scores.dtype != np.float32:
            problems.append(f"scores have dtype {scores.dtype}, expected float32")
        if classes.dtype != object:
            problems.append(f"classes have dtype {classes.dtype}, expected string")
        if scores.ndim != 2 or scores.shape[0] != batch:
            problems.append(f"scores have shape {list(scores.shape)}, expected [{batch}, k]")
        elif classes.shape != scores.shape:
            problems.append(f"classes have shape {list(classes.shape)}, scores {list(scores.shape)}")
        elif signature == PREDICT_IMAGES and not 1 <= scores.shape[1] <= num_classes:
            problems.append(f"{scores.shape[1]} classes per example, expected 1..{num_classes}")
        elif signature != PREDICT_IMAGES and scores.shape[1] != num_classes:
            problems.append(f"{scores.shape[1]} classes per example, expected all {num_classes}")
        elif signature == PREDICT_IMAGES and np.any(np.diff(scores, axis=1) > 0):
            problems.append("classes are not ranked by score (best first)")
        if problems:
            self._answer_failures(signature, request, problems)
            return None
        return [
            [(c.decode("utf-8", errors="replace"), float(s)) for c, s in zip(crow, srow, strict=True)]
            for crow, srow in zip(classes, scores, strict=True)
        ]

    def _rows_from_predictions(
        self, signature: str, request: str, preds: Sequence[Prediction], batch: int
    ) -> list[list[tuple[str, float]]] | None:
        """A Classify answer -> per example [(class, score)]; None (and a Failure) if malformed."""
        num_classes = len(self.reference.class_names)
        if len(preds) != batch:
            self._answer_failures(signature, request, [f"{len(preds)} results for {batch} examples"])
            return None
        bad = [len(p.classes) for p in preds if len(p.classes) != num_classes]
        if bad:
            self._answer_failures(
                signature, request, [f"{bad[0]} classes in a result, expected {num_classes}"]
            )
            return None
        return [list(zip(p.classes, p.scores, strict=True)) for p in preds]

    def _answer_failures(self, signature: str, request: str, problems: Sequence[str]) -> None:
        for p in problems:
            self.report.fail(Failure("answer", p, signature, request))

    def compare(
        self, signature: str, request: str, rows: Sequence[list[tuple[str, float]]], first: int
    ) -> None:
        """Served rows for reference examples first..first+len(rows): scores and top-1 must agree."""
        ref = self.reference
        index = {name: j for j, name in enumerate(ref.class_names)}
        for offset, row in enumerate(rows):
            i = first + offset
            where = request if len(rows) == 1 else f"{request}, example {i}"
            unknown = [c for c, _ in row if c not in index]
            if unknown:
                self.report.fail(
                    Failure(
                        "answer",
                        f"unknown classes {unknown} (model classes: {ref.class_names})",
                        signature,
                        where,
                    )
                )
                continue
            diffs = [abs(s - ref.scores[i, index[c]]) for c, s in row]
            worst = int(np.argmax(diffs))
            if diffs[worst] > self.tolerance:
                c, s = row[worst]
                self.report.fail(
                    Failure(
                        "answer",
                        f"score of {c!r} is {s:.6g}, in-process {ref.scores[i, index[c]]:.6g} "
                        f"(difference {diffs[worst]:.3g} > tolerance {self.tolerance:g})",
                        signature,
                        where,
                    )
                )
                continue
            served_top = max(row, key=lambda cs: cs[1])[0]
            # A tie within tolerance may rank either class first.
            if ref.scores[i, index[served_top]] < ref.scores[i].max() - self.tolerance:
                self.report.fail(
                    Failure(
                        "answer",
                        f"top-1 class {served_top!r}, in-process {ref.top1(i)!r}",
                        signature,
                        where,
                    )
                )

    def predict_answers(self, signature: str, inputs: Sequence[bytes], first: int, request: str) -> None:
        key = INPUT_KEYS[signature]
        batch = np.array(list(inputs), dtype=object)
        answer = self.call(
            "answer",
            signature,
            request,
            lambda: self.client.predict(self.model_name, {key: batch}, signature),
            timed=len(inputs) == 1,
        )
        if answer is None:
            return
        rows = self._rows_from_outputs(signature, request, answer[0], len(inputs))
        if rows is not None:
            self.compare(signature, request, rows, first)

    def classify_answers(self, inputs: Sequence[bytes], first: int, request: str) -> None:
        preds = self.call(
            "answer",
            CLASSIFICATION,
            request,
            lambda: self.client.classify(self.model_name, list(inputs), signature=CLASSIFICATION),
            timed=len(inputs) == 1,
        )
        if preds is None:
            return
        rows = self._rows_from_predictions(CLASSIFICATION, request, preds, len(inputs))
        if rows is not None:
            self.compare(CLASSIFICATION, request, rows, first)


def check_served_model(
    client: ServingClient,
    model_name: str,
    version: int | None,
    reference: Reference,
    examples: Sequence[bytes],
    images: Sequence[bytes],
    warmup_logs: Sequence[prediction_log_pb2.PredictionLog],
    saved_signatures: Mapping[str, meta_graph_pb2.SignatureDef],
    tolerance: float,
    max_latency_ms: float | None,
    report: PrepushReport,
) -> PrepushReport:
    """Run every check against the server behind `client`; failures and latencies go into `report`.

    examples[i] (a serialized tf.Example holding images[i]) and images[i] (the
    encoded bytes) are the same input; reference.scores[i] is its in-process answer.
    """
    if not (len(examples) == len(images) == reference.scores.shape[0]):
        raise ValueError(
            f"{len(examples)} examples, {len(images)} images and {reference.scores.shape[0]} reference rows"
        )
    checker = _Checker(client, model_name, reference, tolerance, report)
    report.examples = len(examples)
    report.max_latency_ms = max_latency_ms
    checker.check_status(version, "before the requests")
    checker.check_metadata(saved_signatures)
    checker.replay_warmup(warmup_logs)
    for i, (example, image) in enumerate(zip(examples, images, strict=True)):
        request = f"eval example {i}"
        checker.predict_answers(SERVING_DEFAULT, [example], i, request)
        checker.classify_answers([example], i, request)
        checker.predict_answers(PREDICT_IMAGES, [image], i, request)
    if len(examples) > 1:
        request = f"batch of {len(examples)} eval examples"
        checker.predict_answers(SERVING_DEFAULT, examples, 0, request)
        checker.classify_answers(examples, 0, request)
        checker.predict_answers(PREDICT_IMAGES, images, 0, request)
    checker.check_status(version, "after the requests")
    report.latency_ms = {sig: latency_stats(ms) for sig, ms in checker.latencies.items()}
    if max_latency_ms is not None:
        for sig, stats in report.latency_ms.items():
            if stats["p99"] > max_latency_ms:
                report.fail(
                    Failure(
                        "latency",
                        f"p99 {stats['p99']:.1f} ms over {len(checker.latencies[sig])} one-example "
                        f"requests > max_latency_ms {max_latency_ms:g}",
                        sig,
                    )
                )
    return report
