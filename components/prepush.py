"""Pre-push validation settings: the `prepush` part of the run's config (no TensorFlow import).

Between the Evaluator and the Pusher, the InfraValidator node
(components/infra_validator.py) loads the candidate model in a real model
server process, sends it the model's warmup requests and real eval examples
through every serving signature over gRPC, and blesses it only when every
answer is OK, agrees with the model run in-process, and is fast enough. The
Pusher pushes only a model both the Evaluator and the InfraValidator blessed.

Its own section (not the gate's): the gate judges what the model predicts
(TFMA metrics on the eval split), this judges whether a server can serve it.
"""

from __future__ import annotations

from pydantic import Field

from trainer.config import Settings

# Written into the InfraBlessing artifact's directory: what was checked and why it failed.
REPORT_FILE = "prepush_report.json"
SERVER_LOG_FILE = "model_server.log"


class PrepushConfig(Settings):
    """What the InfraValidator checks before a blessed model may be pushed."""

    prepush_validation: bool = Field(
        True,
        description="serve the candidate model in a model server subprocess and check every "
        "signature over gRPC before pushing (off: push on the Evaluator's blessing alone)",
    )
    prepush_examples: int = Field(
        16, ge=1, le=1000, description="eval examples sent through each signature by pre-push validation"
    )
    max_latency_ms: float | None = Field(
        None,
        gt=0.0,
        description="pre-push validation fails when a signature's p99 latency (one example per "
        "request, client side) exceeds this (default: no latency limit)",
    )
    prepush_score_tolerance: float = Field(
        1e-4,
        gt=0.0,
        le=1.0,
        description="largest allowed difference between a served score and the in-process model's",
    )
    prepush_timeout_seconds: float = Field(
        300.0, gt=0.0, description="how long the model server may take to start and load the model"
    )
