"""What a pipeline run did, read back from ML Metadata: the JSON summary `imgpipe run` prints.

`summarize_latest_run(metadata_path, pipeline_name)` finds the newest run of the
pipeline and reads each component's execution state, the blessing, the pushed
version, the TFMA accuracy (overall, per class and the baseline's), the
Trainer's replica count and the pre-push validation's verdict.
"""

from __future__ import annotations

import dataclasses

from imgpipe.orchestration import metadata


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
    prepush: dict | None = None  # the InfraValidator's verdict (components/prepush_checks.py summary)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def summarize_latest_run(metadata_path: str, pipeline_name: str) -> RunSummary:
    """Read the newest run of `pipeline_name` back from the ML Metadata store at `metadata_path`."""
    with metadata.open_store(metadata_path) as store:
        run = metadata.latest_run(store, pipeline_name)
        executions = metadata.run_executions(store, pipeline_name, run)
        blessed = metadata.blessing(store, executions.get("Evaluator"))
        pushed = metadata.pushed_path(store, executions.get("Pusher"))
        evaluation_uri = metadata.output_uri(store, executions.get("Evaluator"), "evaluation")
        model_run_uri = metadata.output_uri(store, executions.get("Trainer"), "model_run")
        infra_blessing_uri = metadata.output_uri(store, executions.get("InfraValidator"), "blessing")
        states = {node: metadata.state_name(e) for node, e in executions.items()}
    accuracy, baseline, per_class = metadata.evaluation_accuracy(evaluation_uri)
    replicas = metadata.trainer_replicas(model_run_uri)
    return RunSummary(
        run_id=run.name,
        blessed=blessed,
        pushed=pushed,
        accuracy=accuracy,
        replicas=replicas,
        executions=states,
        per_class_accuracy=per_class,
        baseline_accuracy=baseline,
        prepush=metadata.prepush_summary(infra_blessing_uri),
    )
