"""What a pipeline run did, read back from ML Metadata: the JSON summary `imgpipe run` prints.

`summarize_run(config, run_id)` reads one run of the config's pipeline (the
newest when run_id is None) from its ML Metadata store (SQLite or PostgreSQL):
each component's execution state, the blessing, the pushed version (or why
nothing was pushed), the TFMA accuracy (overall, per class and the baseline's),
the Trainer's replica count, and the Evaluator's decision record (`gate`:
gate.json, the contract in components/gate_decision.py; null when the Evaluator
did not run) and the pre-push validation's verdict (`prepush`: the InfraValidator's
report summary, components/prepush_checks.py; null when it did not run).

`pushed` is the version this run pushed, else null. `push_skipped` says why a
blessed model was not pushed: "identical to version N" (the Pusher found the
newest served version byte-identical) or "cached: ..." (the Pusher was served
from cache: an earlier run with the same inputs did the push). A model the
Evaluator blessed but pre-push validation refused is not pushed either; `prepush`
says why.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

from imgpipe.orchestration import metadata
from pipeline.config import PipelineConfig
from serving.model_fingerprint import rollback_copy_of

log = logging.getLogger(__name__)


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
    # When the models were compared on part of the eval split (images neither trained on, or the
    # classes both have): {"examples", "metric", "baseline", "candidate"}, both models' numbers on
    # those images, for `baseline_accuracy` is then the baseline's there while `accuracy` is the
    # candidate's on the split; None when compared on the whole split, or not compared.
    baseline_compared_on: dict[str, Any] | None = None
    # The Evaluator's baseline: {"run_id": the run that trained it, "pushed": its newest push's
    # path or None, and `served_as` or `copy_of` (_as_served_now)}; None when it had none
    # (metadata.baseline_model).
    baseline_model: dict[str, str | None] | None = None
    push_skipped: str | None = None  # why a blessed model was not pushed (see the module doc)
    # Set by `imgpipe run` when the serving dir holds no version after the run (local.nothing_served).
    nothing_served: str | None = None
    gate: dict[str, Any] | None = None  # the Evaluator's gate.json: why it blessed or not
    # The run report (imgpipe/report): its index.html, or None with the reason it is missing.
    report: str | None = None
    report_error: str | None = None
    prepush: dict | None = None  # the InfraValidator's verdict (components/prepush_checks.py summary)
    # A run that failed: the component that failed (or "the pipeline") and the error; else None.
    failed: str | None = None
    error: str | None = None
    # Class folders the data's ingest left out (`--allow-left-out-classes`; its ingest_report.json).
    left_out_classes: list[dict] = dataclasses.field(default_factory=list)
    # Why the run's record (HOME/runs/<run_id>/) could not be saved (a full disk); else None.
    record_error: str | None = None
    # The run's number in its home (1, 2, ...), given as it starts under the home's lock: records
    # are ordered by it, not by the clock (a time zone other than cron's, a clock set back).
    sequence: int | None = None
    # The Trainer's label check (trainer/label_check.py): its held-out answers against the train
    # labels, the doubted train images (each with its `file` where ingest's index names it) and a
    # warning; None when the Trainer made none.
    label_check: dict[str, Any] | None = None
    # The Trainer's flip check (trainer/flip_check.py; augment on): classes a left-right flip turns
    # into another or into none, and a warning; None with augment off.
    flip_check: dict[str, Any] | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def summarize_run(config: PipelineConfig, run_id: str | None) -> RunSummary:
    """Read run `run_id` (None: the newest run) of config.pipeline_name back from config's ML Metadata."""
    pipeline_name = config.pipeline_name
    with metadata.open_store(config) as store:
        if run_id is None:
            run = metadata.latest_run(store, pipeline_name)
        else:
            run = metadata.run_by_id(store, pipeline_name, run_id)
        executions = metadata.run_executions(store, pipeline_name, run)
        blessed = metadata.blessing(store, executions.get("Evaluator"))
        pushed = metadata.pushed_path(store, executions.get("Pusher"))
        evaluator = executions.get("Evaluator")
        push_skipped = _push_skipped(
            store,
            executions.get("Pusher"),
            pushed,
            lambda: served_version(config, metadata.evaluated_model_uri(store, evaluator and evaluator.id)),
        )
        if push_skipped and pushed:  # a cached Pusher: the push it reports is an earlier run's
            pushed = None
        unrecorded = None if pushed else metadata.served_unrecorded(store, executions.get("Evaluator"))
        if unrecorded:  # stopped after its Pusher put the version in place: the model is served
            pushed = os.path.join(config.resolved().model_serving_dir, unrecorded)
        evaluation_uri = metadata.output_uri(store, executions.get("Evaluator"), "evaluation")
        model_run_uri = metadata.output_uri(store, executions.get("Trainer"), "model_run")
        infra_blessing_uri = metadata.output_uri(store, executions.get("InfraValidator"), "blessing")
        withdrawn = metadata.withdrawn_reason(store, executions.get("Evaluator"))
        baseline_model = _as_pushed(config, metadata.baseline_model(store, executions.get("Evaluator")))
        baseline_model = _as_served_now(config.home, baseline_model)
        train_split = metadata.split_uri(store, executions.get("ImportExampleGen"), "examples", "train")
        states = {node: metadata.state_name(e) for node, e in executions.items()}
    accuracy, baseline, per_class = metadata.evaluation_accuracy(evaluation_uri)
    training = metadata.training_summary(model_run_uri)
    replicas = metadata.replicas_of(training)
    label_check = with_files((training or {}).get("label_check"), train_split, config.data_dir)
    gate = metadata.gate_record(evaluation_uri)
    if gate and isinstance(gate.get("judged_on"), dict):
        # The gate judged the candidate on part of the eval split (each image once, none it
        # trained on): its numbers are the run's; TFMA's whole-split ones stay in the record.
        accuracy, per_class, baseline = gate.get("accuracy"), gate.get("per_class_recall") or {}, None
    if baseline is None and gate:
        # A baseline identical to the candidate, or measured earlier, is compared without TFMA
        # evaluating it again: the gate record holds its value in the gated metric, which is
        # the plain accuracy this field reports only when accuracy was gated.
        compared = gate.get("baseline") or {}
        if compared.get("identical"):
            baseline = accuracy
        elif gate.get("metric", "accuracy") == "accuracy":
            baseline = compared.get("accuracy")
    compared_on = None
    subset = (gate or {}).get("baseline") or {}
    examples = subset.get("compared_examples")
    if subset.get("compared") and examples is not None and examples != gate.get("eval_examples"):
        compared_on = {
            "examples": subset["compared_examples"],
            "metric": gate.get("metric", "accuracy"),
            "baseline": subset.get("accuracy"),
            "candidate": subset.get("candidate_accuracy"),
        }
    prepush = metadata.prepush_summary(infra_blessing_uri)
    refused = prepush_refusal(prepush)
    if blessed and not pushed and not push_skipped and refused:
        push_skipped = refused
    elif blessed and not pushed and not push_skipped and withdrawn:
        # Its push failed, or (an Evaluator from cache, its blessing withdrawn while a run was in
        # flight: Airflow) pre-push validation skipped it as not blessed: nothing was pushed.
        push_skipped = f"blessing withdrawn: {withdrawn}"
    return RunSummary(
        run_id=run.name,
        blessed=blessed,
        pushed=pushed,
        accuracy=accuracy,
        replicas=replicas,
        executions=states,
        per_class_accuracy=per_class,
        baseline_accuracy=baseline,
        baseline_compared_on=compared_on,
        baseline_model=baseline_model,
        push_skipped=push_skipped,
        gate=gate,
        prepush=prepush,
        label_check=label_check,
        flip_check=(training or {}).get("flip_check"),
    )


def prepush_refusal(prepush: dict | None) -> str | None:
    """`push_skipped` of a blessed model that pre-push validation refused (its report's summary,
    metadata.prepush_summary), else None."""
    if prepush and prepush.get("validated") and prepush.get("blessed") is False:
        return f"pre-push validation failed: {prepush.get('reason')}"
    return None


def _as_pushed(config: PipelineConfig, baseline: dict | None) -> dict | None:
    """A baseline whose Pusher found it identical to a served version (not pushed again) named by
    that version's folder (`pushed`; `identical_to` stays): a run after such a retrain named its
    baseline "no push of it recorded", and a rollback's copy of it was not followed (an audit)."""
    identical = (baseline or {}).get("identical_to")
    if (baseline or {}).get("pushed") or not isinstance(identical, str) or not identical.isdigit():
        return baseline
    model_dir = config.resolved().model_serving_dir
    if not model_dir or "://" in model_dir:
        return baseline
    return {**baseline, "pushed": os.path.join(model_dir, identical)}


def _as_served_now(home: str, baseline: dict | None) -> dict | None:
    """The baseline's `pushed` as it is on disk now: a version pruned after a rollback served it
    again as a copy is named by that copy (`copy_of`: the pruned version), not by a folder gone;
    one still there beside such a copy keeps its name, and the copy, the version that serves it,
    is `served_as` (a report named only the old version, which a server no longer answers with)."""
    pushed = (baseline or {}).get("pushed")
    if not isinstance(pushed, str) or "://" in pushed:
        return baseline
    copy = rollback_copy_of(home, pushed)
    if copy is None:
        return baseline
    if os.path.isdir(pushed):
        return {**baseline, "served_as": copy}
    return {**baseline, "pushed": copy, "copy_of": os.path.basename(os.path.normpath(pushed))}


def with_files(
    check: dict[str, Any] | None, train_split: str | None, data_dir: str | None
) -> dict[str, Any] | None:
    """The label check's record with each listed train image's `file` (None: not known), found by
    its place in the train split and ingest's index of the data folder (contract.indexed_files);
    the record as it is when it lists none. Reading the split fails softly: a note says why."""
    if not check or not check.get("images"):
        return check
    import hashlib

    from imgpipe.ingest.contract import indexed_files
    from trainer import image_ids

    images = check["images"]
    positions = {img["position"] for img in images}
    last = max(positions)
    digests: dict[int, str] = {}
    notes: list[str] = []
    try:
        if train_split and os.path.isdir(train_split):
            for i, serialized in enumerate(image_ids.records(os.path.join(train_split, "*"))):
                if i in positions:
                    image, _ = image_ids.record_image(serialized)
                    if image is not None:
                        digests[i] = hashlib.sha256(image).hexdigest()
                if i >= last:
                    break
    except Exception as e:  # noqa: BLE001 - naming files must never fail the run's summary
        notes.append(
            f"the train split {train_split} could not be read to name the files ({type(e).__name__}: {e})"
        )
    found, more = indexed_files(data_dir, "train", set(digests.values()))
    named = [{**img, "file": found.get(digests.get(img["position"], ""))} for img in images]
    return {**check, "images": named, **({"files_notes": notes + more} if notes or more else {})}


def _push_skipped(
    store, pusher_execution, pushed: str | None, serving_now: Callable[[], str | None]
) -> str | None:
    """Why the run's Pusher pushed nothing, or None. `serving_now()`: the newest served version
    when it holds the run's model, else None."""
    if pusher_execution is None:
        return None
    identical = metadata.push_skipped_version(store, pusher_execution)
    cached = metadata.state_name(pusher_execution) == "CACHED"
    if identical is not None and cached:
        # The cached Pusher's record names the version it found then; a newer one may hold the
        # same model now (pushed again after a rollback to another): name what is served.
        return f"cached: identical to version {serving_now() or identical}"
    if identical is not None:
        return f"identical to version {identical}"
    if cached and pushed:
        return f"cached: version {pushed.rstrip('/').rsplit('/', 1)[-1]} was pushed by an earlier run"
    return None


def withdraw_unserved_blessings(config: PipelineConfig, runs_finished: bool = True) -> list[tuple[int, str]]:
    """Take back, in ML Metadata, the blessing of every model of this home that did not reach the
    serving dir (refused by pre-push validation; with `runs_finished`, also never pushed), so
    later runs are gated against the model being served (metadata.withdraw_unserved_blessings).
    [(ModelBlessing id, reason)] of those withdrawn now, each also logged as a warning."""
    with metadata.open_store(config, readonly=False) as store:
        withdrawn = metadata.withdraw_unserved_blessings(
            store, config.pipeline_root, runs_finished, served_as=lambda uri: served_version(config, uri)
        )
    for _, reason in withdrawn:
        log.warning("blessing withdrawn (%s): the next runs are gated against the model being served", reason)
    return withdrawn


def served_version(config: PipelineConfig, model_uri: str) -> str | None:
    """The newest version in the serving dir when it holds exactly the model of the Model artifact
    at `model_uri` (byte for byte), else None: that model is served, whatever metadata says."""
    from tfx.dsl.io import fileio
    from tfx.utils import path_utils

    from components import pusher

    if not model_uri:
        return None
    newest = pusher.newest_version(config.model_serving_dir)
    if newest is None:
        return None
    try:
        model_path = path_utils.serving_model_path(model_uri)
        if not fileio.exists(os.path.join(model_path, pusher.SAVED_MODEL)):  # pruned, or never written
            return None
        return str(newest[0]) if pusher.same_model(model_path, newest[1]) else None
    except Exception as e:  # noqa: BLE001 - unreadable: not shown to be served, so withdrawn
        log.warning("cannot compare the model %s with the served version %s: %s", model_uri, newest[1], e)
        return None
