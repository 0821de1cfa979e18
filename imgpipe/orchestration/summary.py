"""What a pipeline run did, read back from ML Metadata: the JSON summary `imgpipe run` prints.

`summarize_latest_run(config, run_id)` reads run `run_id` of the config's pipeline
from its ML Metadata store (SQLite or PostgreSQL): each component's execution
state, the blessing, the pushed version, the TFMA accuracy (overall, per class
and the baseline's), the Trainer's replica count, and the Evaluator's decision
record (`gate`: gate.json, the contract in components/gate_decision.py; null
when the Evaluator did not run).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from imgpipe.orchestration import metadata
from pipeline.config import PipelineConfig


@dataclasses.dataclass
class RunSummary:
    run_id: str
    blessed: bool | None
    pushed: str | None
    accuracy: float | None
    replicas: int | None
    executions: dict[str, str]  # component id -> COMPLETE | CACHED | FAILED | ...
    run_dir: str = ""
    per_class_accuracy: dict[str, float] = dataclasses.field(default_factory=dict)
    baseline_accuracy: float | None = None
    gate: dict[str, Any] | None = None  # the Evaluator's gate.json: why it blessed or not
    # The run report (imgpipe/report): its index.html, or None with the reason it is missing.
    report: str | None = None
    report_error: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def summarize_latest_run(config: PipelineConfig, run_id: str | None = None) -> RunSummary:
    """Read run `run_id` (default: the newest) of config.pipeline_name back from config's ML Metadata."""
    pipeline_name = config.pipeline_name
    with metadata.open_store(config) as store:
        run = metadata.latest_run(store, pipeline_name, run_id)
        executions = metadata.run_executions(store, pipeline_name, run)
        blessed = metadata.blessing(store, executions.get("Evaluator"))
        pushed = metadata.pushed_path(store, executions.get("Pusher"))
        evaluation_uri = metadata.output_uri(store, executions.get("Evaluator"), "evaluation")
        model_run_uri = metadata.output_uri(store, executions.get("Trainer"), "model_run")
        states = {node: metadata.state_name(e) for node, e in executions.items()}
    accuracy, baseline, per_class = metadata.evaluation_accuracy(evaluation_uri)
    replicas = metadata.trainer_replicas(model_run_uri)
    gate = metadata.gate_record(evaluation_uri)
    return RunSummary(
        run_id=run.name,
        blessed=blessed,
        pushed=pushed,
        accuracy=accuracy,
        replicas=replicas,
        executions=states,
        per_class_accuracy=per_class,
        baseline_accuracy=baseline,
        gate=gate,
    )
