"""Run the pipeline locally: TFX LocalDagRunner with ML Metadata in SQLite (default) or PostgreSQL.

`run_local(config)` runs every component in-process (Beam DirectRunner for the
data work), logs a progress line per component, and returns the run's
RunSummary (orchestration/summary.py), also saved with the run's config under
HOME/runs/<run_id>/ (orchestration/runs.py) beside the run's report (imgpipe/report).

A run holds its home's lock from start to end (orchestration/lock.py: a second
run on the same home waits up to `lock_wait` seconds, then gets LockBusy), and
gives itself a unique run id (the TFX pipeline run id, set here instead of
LocalDagRunner's timestamp), so its summary and record are its own. Holding
the lock, it first marks executions a dead run left RUNNING as FAILED
(orchestration/recovery.py) and writes the record of a run that died without
writing its own (record_dead_runs); it keeps its temp files in HOME/tmp/<run_id>/,
deleted when it ends (orchestration/scratch.py).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import time
import uuid
from collections.abc import Callable

from components import loaded_models
from components.data_contract import LABEL_CHANGES
from components.gate_decision import NO_BASELINE
from imgpipe.ingest import REPORT_FILE as INGEST_REPORT_FILE
from imgpipe.ingest import IngestError, left_out_files, validate_tfrecord_dir
from imgpipe.orchestration import (
    cache_outputs,
    diagnosis,
    execution_results,
    metadata,
    preflight,
    recovery,
    runs,
    scratch,
)
from imgpipe.orchestration.lock import LockBusy, home_lock
from imgpipe.orchestration.summary import (
    RunSummary,
    prepush_refusal,
    summarize_run,
    withdraw_unserved_blessings,
)
from imgpipe.orchestration.weights import check_weights_file
from imgpipe.report.build import attach_report
from imgpipe.stop_signals import stopped_by
from pipeline.beam import beam_pipeline_args
from pipeline.config import ConfigError, PipelineConfig
from trainer.imagenet import WeightsUnavailable, check_imagenet_weights

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


class PipelineRunError(RuntimeError):
    """The run failed; the message names the component that failed.

    `summary`: the failed run's summary (`failed`, `error`, each component's state), also
    saved as its record in HOME/runs/<run_id>/; None if even that could not be written.
    """

    def __init__(self, message: str, summary: RunSummary | None = None):
        super().__init__(message)
        self.summary = summary


class _ComponentProgress:
    """Prints one line as each component starts and ends, with cached/done and time.

    LocalDagRunner runs nodes one by one through Launcher.launch; wrapping that
    method for the duration of a run is the one hook it offers for per-component
    progress. Whether a node was served from cache is read from ML Metadata.
    """

    def __init__(self, progress: Progress, total: int, config: PipelineConfig):
        self.progress = progress
        self.total = total
        self.config = config
        self.current: str | None = None
        self.done = 0
        self.states: dict[str, str] = {}  # node id -> "cached" | "done", as each one ends
        self.results: dict[str, object] = {}  # node id -> what Launcher.launch returned (ExecutionInfo)
        # (node id, output key) -> the folder of that output as the node ended, for KEPT_OUTPUTS:
        # a failed run whose ML Metadata cannot be read then still finds them (_as_this_process_saw).
        self.outputs: dict[tuple[str, str], str] = {}
        self.before_launch: Callable[[str, _ComponentProgress], None] | None = None

    # The outputs whose folders a failed run's record reads when ML Metadata cannot be.
    KEPT_OUTPUTS = (("Evaluator", "evaluation"), ("InfraValidator", "blessing"))

    def _state(self, node_id: str, result) -> str:
        """ "cached" or "done"; the node's KEPT_OUTPUTS folders noted on the way (a cached node's
        from ML Metadata: the launcher's result names the folders it would have written)."""
        execution_id = getattr(result, "execution_id", None)
        kept = [key for node, key in self.KEPT_OUTPUTS if node == node_id]
        for key in kept:
            given = (getattr(result, "output_dict", None) or {}).get(key) or []
            if given:
                self.outputs[(node_id, key)] = given[-1].uri
        if execution_id is None:
            return "done"
        try:
            with metadata.open_store(self.config) as store:
                [execution] = store.get_executions_by_id([execution_id])
                cached = metadata.state_name(execution) == "CACHED"
                for key in kept if cached else ():
                    uri = metadata.output_uri(store, execution, key)
                    if uri:
                        self.outputs[(node_id, key)] = uri
            return "cached" if cached else "done"
        except Exception:  # noqa: BLE001 - progress output must never fail a run
            return "done"

    @contextlib.contextmanager
    def installed(self):
        from tfx.orchestration.portable import launcher

        from components import patching

        tracker = self

        def reporting(original):
            def launch(launcher_self, *args, **kwargs):
                node_id = launcher_self._pipeline_node.node_info.id  # noqa: SLF001
                tracker.current = node_id
                tracker.progress(f"[{tracker.done + 1}/{tracker.total}] {node_id} ...")
                if tracker.before_launch is not None:
                    tracker.before_launch(node_id, tracker)
                started = time.perf_counter()
                result = original(launcher_self, *args, **kwargs)
                tracker.done += 1
                how = tracker._state(node_id, result)
                tracker.states[node_id] = how
                tracker.results[node_id] = result
                secs = time.perf_counter() - started
                tracker.progress(f"[{tracker.done}/{tracker.total}] {node_id} {how} in {secs:.1f}s")
                tracker.current = None
                return result

            return launch

        with patching.replaced(launcher.Launcher, "launch", reporting):
            yield self


class _PrepushStandby:
    """Starts pre-push validation's model server before it is needed; the InfraValidator takes it over.

    The server's start-up is a fresh process importing TensorFlow (~3-5 s of CPU), then
    loading the Trainer's model and replaying its warmup requests. It runs beside the
    components before the InfraValidator instead of after them (components/model_server.py:
    standby_server), in two steps:

    - the process starts, with no model, as the Trainer starts, when this run's Transform
      executed (so the Trainer will train: its inputs are new). It imports TensorFlow
      during the Trainer and not during the Evaluator, where the import had slowed a
      two-model evaluation the most. On 2 cores the demo's Trainer takes ~1.2 s longer
      for it, its Evaluator with a baseline on new data ~2.4 s less, and the whole run
      the same (BENCHMARKS.md "The standby server's start");
    - the Trainer's model is staged into it as the Evaluator starts, or, when the Trainer
      trained although Transform came from the cache, the server is started then, with it.

    Only when pre-push validation is on. A Trainer that came from the cache has its server
    stopped at once (its model is most likely the one already served, which needs no
    server). The InfraValidator takes the server only for the model it validates. A standby
    nobody took (the model was not blessed) is killed when the run ends; one that cannot
    start is left out: the InfraValidator then starts its own.
    """

    EARLY_START = True  # start the process as the Trainer starts (False: as the Evaluator starts)

    def __init__(self, config: PipelineConfig, scratch_dir: str, stack: contextlib.ExitStack):
        self.config = config
        self.root = os.path.join(scratch_dir, "prepush")
        self.stack = stack
        self.server = None  # the standby ModelServer, once started
        self._own = contextlib.ExitStack()  # the server's block: closed early when not needed
        self.started = False

    def _start(self, saved_model_dir: str | None) -> None:
        from components import model_server

        self.started = True
        self.stack.enter_context(self._own)
        self.server = self._own.enter_context(
            model_server.standby_server(
                self.root, self.config.model_name, os.path.join(self.root, "server.log"), saved_model_dir
            )
        )

    def before_launch(self, node_id: str, tracker: _ComponentProgress) -> None:
        if not self.config.prepush.prepush_validation:
            return
        try:
            if node_id == "Trainer" and self.EARLY_START and tracker.states.get("Transform") == "done":
                self._start(None)
            elif node_id == "Evaluator":
                self._at_evaluator(tracker)
        except Exception:  # noqa: BLE001 - an optimisation: never fail the run for it
            log.warning("could not start the pre-push model server early", exc_info=True)
            self._stop()

    def _stop(self) -> None:
        """Stop the standby server, if one runs: it failed to start or is not needed."""
        self._own.close()
        self.server = None

    def _at_evaluator(self, tracker: _ComponentProgress) -> None:
        from components import model_server
        from components.artifacts import saved_model_dir

        if tracker.states.get("Trainer") != "done":
            self._stop()  # a cached (or failed) Trainer: no server needed
            return
        [model] = tracker.results["Trainer"].output_dict["model"]
        if self.server is not None:
            model_server.stage_standby(self.server, saved_model_dir(model))
        elif not self.started:
            self._start(saved_model_dir(model))


def new_run_id() -> str:
    """A run id no other run shares: the start time (sortable, as LocalDagRunner's) plus a random suffix."""
    return f"{datetime.datetime.now().isoformat()}-{uuid.uuid4().hex[:8]}"


def run_local(
    config: PipelineConfig, progress: Progress = log.info, verbose: bool = False, lock_wait: float = 0.0
) -> RunSummary:
    """Check `config`'s paths, run the pipeline with LocalDagRunner holding the home's lock, summarise it.

    lock_wait: seconds to wait while another run holds the home (then LockBusy).
    """
    config = config.resolved().validate_paths()
    beam_pipeline_args(config.beam)  # BeamConfigError naming the flag, before the home is made
    # weights: imagenet offline with nothing cached is refused now, not at the Trainer.
    if config.training.weights_kind == "imagenet":
        try:
            log.debug("ImageNet weights: %s", check_imagenet_weights(config.training.backbone))
        except WeightsUnavailable as e:
            raise ConfigError(f"weights: {e}") from e
    split_cpu_for(config)  # before the data check below: reading a record initialises TensorFlow
    weights_digest = check_weights_file(config)  # builds a model: after the CPU split
    wider = pixel_limit_mismatch(config)
    if wider:
        log.warning("%s", wider)
    if lock_wait > 0:
        check_data_dir(config.data_dir)  # unusable records fail now, not after the wait
    run_id = new_run_id()
    with home_lock(config.home, wait=lock_wait, holder=f"run {run_id}"):
        if lock_wait <= 0:
            # Read under the lock: reading the records loads TensorFlow (~3 s), which a run
            # refused at once because another holds the home does not need.
            check_data_dir(config.data_dir)
        return _run_holding_lock(config, run_id, progress, verbose, weights_digest)


def _abandon_unfinished(store, config: PipelineConfig, found_by: str) -> list:
    """recovery.abandon_dead_executions for this home (only its own folders on a shared store)."""
    return recovery.abandon_dead_executions(
        store,
        config.pipeline_name,
        config.pipeline_root,
        found_by=found_by,
        shared_store=config.metadata_target is not None,
        # Read only where it is used: a home's own store holds no other home's executions.
        own_runs=runs.run_ids(config.home) if config.metadata_target is not None else (),
    )


def _abandon_dead_executions(config: PipelineConfig, run_id: str) -> None:
    """Mark what a dead run of this home left RUNNING as FAILED (we hold the home's lock), each
    model whose folder is gone DELETED (recovery.forget_missing_models), each record of a push
    whose serving version is gone DELETED (recovery.forget_missing_pushes), and withdraw the
    blessing of a model such a run (SIGKILL, power) blessed but did not push, before this run's
    Resolver picks its baseline.

    On a shared store (PostgreSQL) other homes may be running the same pipeline:
    only executions with output folders under this home's pipeline root are touched.
    """
    if config.metadata_target is None and not os.path.exists(config.metadata_path):
        return
    with metadata.open_store(config, readonly=False) as store:
        found = _abandon_unfinished(store, config, found_by=f"run {run_id}")
        for failed_run in sorted({a.run_id for a in found}):
            _record_states(config, store, failed_run)
        gone = recovery.forget_missing_models(store, config.pipeline_root, found_by=f"run {run_id}")
        unserved = recovery.forget_missing_pushes(store, config.pipeline_root, found_by=f"run {run_id}")
    for a in found:
        log.warning(
            "%s (execution %d of run %s) was left %s by %s: marked FAILED, %d partial output folder(s) removed",
            a.node,
            a.execution_id,
            a.run_id,
            a.state,
            _how_it_ended(config.home, a.run_id),
            len(a.removed),
        )
    recovery.log_missing(gone, unserved)
    withdraw_unserved_blessings(config)


def _refuse_beside_an_airflow_run(config: PipelineConfig) -> None:
    """LockBusy (exit 75, as for a held home) while an Airflow run of this pipeline is in progress:
    Airflow's tasks take no home lock, and the two runs judged their models against the same
    baseline and pushed over each other (an audit's DAG run beside `imgpipe run`). An unfinished
    execution not updated for liveness.STALE_SECONDS is a dead task's, not a run in progress.
    Only a task running now counts (not a run between two tasks, as for a rollback): a run that
    failed before TFX recorded an execution would otherwise pass for one between tasks for a day."""
    from imgpipe.orchestration.prune import airflow_run_in_progress
    from trainer import liveness

    with metadata.open_store(config) as store:
        busy = airflow_run_in_progress(store, config.pipeline_name, "run", stale_after=liveness.STALE_SECONDS)
    if busy:
        raise LockBusy(f"not starting: {busy}")


def _record_states(config: PipelineConfig, store, run_id: str) -> None:
    """Write ML Metadata's component states into the record of `run_id` when it holds none: a
    run that failed with its store out of reach wrote `"executions": {}` and kept it for good,
    though the next run marked its executions FAILED. Never fails the run: logged."""
    try:
        folder = runs.find_record(config.home, run_id)
        if runs.read_summary(folder).get("executions"):
            return
        run = metadata.run_by_id(store, config.pipeline_name, run_id)
        states = {
            node: metadata.state_name(e)
            for node, e in metadata.run_executions(store, config.pipeline_name, run).items()
        }
        if states:
            runs.update_summary(folder, {"executions": states})
    except (LookupError, runs.RecordError, OSError, ValueError) as e:
        log.debug("the record of run %s keeps its states: %s", run_id, e)


def _how_it_ended(home: str, run_id: str) -> str:
    """How the run that left an execution unfinished ended, for the warning: its record's failure
    (ML Metadata out of reach when it failed: an audit's database stopped mid-run was said to be
    "a run that died"), else that it died (no record of a failure: kill -9, a power cut)."""
    try:
        failed = runs.failure(runs.read_summary(runs.find_record(home, run_id)))
    except (LookupError, runs.RecordError):
        failed = None
    if not failed:
        return "a run that died"
    text = " ".join(str(failed).split())
    return f"its run, which failed ({text[:160]}{'...' if len(text) > 160 else ''}) before it could mark it"


def record_dead_runs(config: PipelineConfig, run_id: str) -> list[RunSummary]:
    """Write the record of each run of this home that started and wrote none (runs.unfinished):
    run `run_id` holds the home's lock, so such a run died without a word (kill -9, the OOM
    killer, a power cut). Its record says what ML Metadata knows it did (the execution it was in
    is FAILED by now: _abandon_dead_executions) and that it died there. The lock says so, not the
    process id: a reused one may be alive."""
    recorded = []
    for folder, started in runs.unfinished(config.home):
        dead_id = started.get("run_id") if isinstance(started.get("run_id"), str) else None
        if dead_id == run_id:
            continue
        summary = _dead_run_summary(config, folder, dead_id or os.path.basename(folder), started, run_id)
        recorded.append(summary)
        log.warning("run %s %s", summary.run_id, summary.error)
    return recorded


def _dead_run_summary(
    config: PipelineConfig, folder: str, dead_id: str, started: dict, found_by: str
) -> RunSummary:
    """The record of the dead run in `folder` (written), with its own config where it is readable."""
    try:
        dead_config = PipelineConfig.from_yaml(os.path.join(folder, runs.CONFIG_FILE)).replace(
            home=config.home
        )
    except Exception as e:  # noqa: BLE001 - a damaged config: the record is still written
        log.warning("%s: %s; recorded with this run's config", folder, e)
        dead_config = config
    summary = _read_back(dead_config, dead_id)
    failed = [node for node, state in summary.executions.items() if state == "FAILED"]
    if failed:
        where = ", ".join(failed)
    elif summary.executions:
        where = "after its last recorded component"
    else:
        where = "before its first component"
    when = f"started {started['started']}, " if isinstance(started.get("started"), str) else ""
    pid = f"pid {started['pid']}" if isinstance(started.get("pid"), int) else "its process"
    summary.failed = failed[0] if failed else "the pipeline"
    summary.error = (
        f"{where}: the run ended without writing its record ({when}{pid}: killed with SIGKILL, out of "
        f"memory, the machine stopped, or its disk was full); recorded by run {found_by}"
    )
    runs.keep_record(dead_config, summary)
    return summary


def split_cpu_for(config: PipelineConfig) -> None:
    """Split this process's CPU into `config.replicas` logical devices (the Trainer runs in this
    process under LocalDagRunner). Must come before anything runs a TensorFlow op: the data
    check, a demo's data preparation or pre-training.
    """
    if config.replicas:
        from trainer import distribution  # on use: the CLI stays free of TensorFlow until it runs

        distribution.split_cpu(config.replicas)


def _run_holding_lock(
    config: PipelineConfig, run_id: str, progress: Progress, verbose: bool, weights_digest: str | None = None
) -> RunSummary:
    from tfx.dsl.compiler import compiler, constants
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.orchestration.portable import runtime_parameter_utils

    from pipeline.pipeline import create_pipeline

    os.makedirs(config.home, exist_ok=True)
    preflight.check_records(config)  # before connecting, which makes a SQLite store
    # Fail here, naming the store, not inside the first component.
    withheld = preflight.database_withheld(config)
    try:
        metadata.connect(config, create_database=withheld is None)
    except metadata.MetadataUnavailable as e:
        raise (metadata.MetadataUnavailable(f"{e}; {withheld}") if withheld else e) from None
    preflight.check_home(config, records_checked=True)
    _refuse_beside_an_airflow_run(config)
    _abandon_dead_executions(config, run_id)
    record_dead_runs(config, run_id)
    if config.model_serving_dir and "://" not in config.model_serving_dir:
        from imgpipe.orchestration.rollback import unfinished_rollback

        unfinished = unfinished_rollback(config.home, config.model_serving_dir)
        if unfinished:
            log.warning("%s", unfinished)
    # The database exists now (connect made it): TFX connects to it directly, so a password file
    # with a line for it alone works.
    pipeline = create_pipeline(
        config, metadata.connection_config(config, create_database=False), weights_digest=weights_digest
    )
    # LocalDagRunner.run() names the run by the clock; two runs in one microsecond (or on two
    # machines sharing ML Metadata) would share a run. Compile here and bind our own run id.
    # (imgpipe references user code by dotted name, so there are no pip dependencies to resolve.)
    ir = compiler.Compiler().compile(pipeline)
    runtime_parameter_utils.substitute_runtime_parameter(
        ir, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: run_id}
    )

    tracker = _ComponentProgress(progress, len(pipeline.components), config)
    import absl.logging

    if verbose:
        # TFX, Beam and TensorFlow log at INFO through absl, which prints nothing below WARNING
        # unless its handler is installed (absl's app.run would do it; the CLI does not use it).
        absl.logging.use_absl_handler()
        absl.logging.set_verbosity(absl.logging.INFO)
    else:
        # Keep the terminal to progress lines.
        absl.logging.set_verbosity(absl.logging.WARNING)
    progress(
        f"pipeline {config.pipeline_name} run {run_id}: data {config.data_dir}, home {config.home}, "
        f"ML Metadata {config.metadata_location}"
    )
    with (
        scratch.run_scratch(config.home, run_id) as tmp,  # the report's temp files too
        # The Evaluator's candidate, for pre-push validation and the report: when TFMA runs
        # in this process (components/loaded_models.py).
        loaded_models.sharing() if config.beam.beam_runner == "direct" else contextlib.nullcontext(),
    ):
        runs.mark_started(config, run_id)  # from here on, the run always has a record
        try:
            with (
                scratch.no_tfx_package_for_local_beam(config.beam.beam_runner),
                cache_outputs.by_artifact_id(),  # a cached component's outputs under their own keys
                execution_results.storable(config.metadata_target is not None),  # errors PostgreSQL can store
                tracker.installed(),
                contextlib.ExitStack() as servers,
            ):
                tracker.before_launch = _PrepushStandby(config, tmp, servers).before_launch
                LocalDagRunner().run_with_ir(ir)
        except Exception as e:  # noqa: BLE001 - re-raised with the failing component named
            stopped = stopped_by()
            if stopped is None:
                message = _failure_message(config, tracker.current, e)
                # An error before a component's executor (its driver, TFX's launcher: a folder
                # it may not write) leaves the execution RUNNING, and the next run took this
                # run for one that died. Marked FAILED now, before the record is written.
                _stop_interrupted_executions(config, run_id, "left RUNNING as the run failed")
                summary = _record_failed_run(config, run_id, tracker.current, message, tracker)
                raise PipelineRunError(message, summary) from e
            # A Ctrl-C or SIGTERM that a component's Beam job turned into its own error: the
            # run was stopped, and is recorded and cleaned up as such.
            interrupt = stopped()
            _stop(config, run_id, tracker.current, interrupt, tracker=tracker)
            raise interrupt from e
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (the CLI raises it as a KeyboardInterrupt)
            _stop(config, run_id, tracker.current, e, tracker=tracker)
            raise

        summary = _summarise_finished(config, run_id)
    summary.left_out_classes = left_out_classes(config.data_dir)
    summary.nothing_served = nothing_served(config, summary)
    runs.keep_record(config, summary)
    _log_gate(summary.gate)
    for folder in summary.left_out_classes:
        log.warning(
            "class folder %r (%s) is not in this model: ingest left it out (%s)",
            folder.get("folder"),
            left_out_files(folder),
            folder.get("reason"),
        )
    if summary.nothing_served:
        log.warning("%s", summary.nothing_served)
    return summary


def _pushed_before(home: str) -> bool:
    """Whether a run record of the home says it pushed a version."""
    return any(
        runs.json_object(os.path.join(folder, runs.SUMMARY_FILE)).get("pushed")
        for folder in runs.records(home)
    )


def nothing_served(config: PipelineConfig, summary: RunSummary) -> str | None:
    """What to say when the serving dir holds no version of the model after a run that pushed
    none (its folder deleted, or a volume not mounted, and this run's model not blessed): the
    model server then serves nothing, where an audit's run said only, before it started, that it
    would push its model there, and ended with exit 0. None when a version is served (or the
    serving dir is remote: not read here)."""
    from imgpipe.orchestration.rollback import whole_versions

    base = config.resolved().model_serving_dir
    if not base or "://" in base or summary.pushed or whole_versions(base):
        return None
    if summary.failed:
        why = f"it failed ({summary.failed})"
    else:
        why = "its model was not blessed" if summary.blessed is False else "it pushed no model"
    trained_by = (summary.baseline_model or {}).get("run_id")
    if not trained_by and not _pushed_before(config.home):
        return (
            f"nothing is served yet: the serving dir {base} holds no version of the model: no run of "
            f"this home has pushed one, and this run pushed none: {why}"
        )
    text = (
        f"nothing is served: the serving dir {base} holds no version of the model (deleted, or a "
        f"volume that is not mounted?), and this run pushed none: {why}"
    )
    saved = runs.run_dir(config.home, trained_by) if trained_by else None
    if saved and os.path.isfile(os.path.join(saved, runs.CONFIG_FILE)):
        text += (
            f". The latest blessed model was trained by run {trained_by}: `imgpipe run --config "
            f"{os.path.join(saved, runs.CONFIG_FILE)}` pushes it again from the cache (while its data "
            "is unchanged); or mount the volume"
        )
    return text


def _summarise_finished(config: PipelineConfig, run_id: str) -> RunSummary:
    """A finished run's summary and report; stopped while writing them (Ctrl-C, SIGTERM), the
    run is recorded and printed as stopped, with what it did (a push included)."""
    try:
        withdraw_unserved_blessings(config)
        summary = summarize_run(config, run_id)
        # Never raises: a failed report is recorded in the summary.
        attach_report(config, summary, loaded_model=loaded_models.get)
    except KeyboardInterrupt as e:
        _stop(config, run_id, None, e, when="after every component finished")
        raise
    return summary


def _ingest_report(data_dir: str) -> dict:
    """The data's ingest_report.json, or {} (records made another way, or unreadable)."""
    return runs.json_object(os.path.join(data_dir, INGEST_REPORT_FILE))


def pixel_limit_mismatch(config: PipelineConfig) -> str | None:
    """What to say when the data's ingest took images up to more pixels than the run's graph
    accepts (its ingest_report.json's max_pixels over max_image_pixels): such an image stops the
    run in Transform. None: the same limit or a lower one, or no report (records made another way)."""
    taken = _ingest_report(config.data_dir).get("max_pixels")
    limit = config.training.max_image_pixels
    if not isinstance(taken, int) or isinstance(taken, bool) or not limit or taken <= limit:
        return None
    return (
        f"the data was ingested with --max-pixels {taken}, over this run's max_image_pixels {limit}: an image "
        f"over {limit} pixels in it stops the run in Transform; pass --max-image-pixels {taken} to take them"
    )


def left_out_classes(data_dir: str) -> list[dict]:
    """The class folders holding files that the data's ingest left out (its ingest_report.json,
    written with --allow-left-out-classes), or [] (no report: records made another way)."""
    left = _ingest_report(data_dir).get("left_out_classes")
    if not isinstance(left, list):
        return []
    # files: how many it held, None when they could not be counted (a link to nothing, no permission).
    return [c for c in left if isinstance(c, dict) and "files" in c and (c["files"] is None or c["files"])]


def _stop(
    config: PipelineConfig,
    run_id: str,
    current: str | None,
    interrupt: KeyboardInterrupt,
    when: str = "",
    tracker: _ComponentProgress | None = None,
) -> None:
    """A run stopped by Ctrl-C or SIGTERM: its running executions marked, its record written
    (on `interrupt.summary`, which the CLI prints). `when`: where it stopped, when not in a
    component (e.g. writing the report after every component finished)."""
    how = getattr(interrupt, "how", "interrupted (SIGINT)")
    _stop_interrupted_executions(config, run_id, how)
    where = current or when or "the pipeline"
    interrupt.summary = _record_failed_run(config, run_id, current, f"{where}: the run was {how}", tracker)


def _stop_interrupted_executions(config: PipelineConfig, run_id: str, how: str) -> None:
    """Mark what this run left RUNNING as FAILED now (it holds the home's lock: they are its own),
    removing their partial outputs, instead of leaving that to the next run: a stopped run's, or
    a failed run's whose error came before TFX could mark its execution."""
    try:
        with metadata.open_store(config, readonly=False) as store:
            found = _abandon_unfinished(store, config, found_by=f"run {run_id}, {how}")
    except Exception as e:  # noqa: BLE001 - the next run's recovery does it then
        log.error("could not mark the interrupted executions FAILED: %s: %s", type(e).__name__, e)
        return
    for a in found:
        log.warning(
            "%s (execution %d) %s: marked FAILED, its partial outputs removed", a.node, a.execution_id, how
        )


MAX_ERROR_LINE = 600  # characters of one line of an error shown (a hex dump of a record is 100k)


_HEX_DUMP = re.compile(r"b'([0-9a-fA-F]{64,})'")


def _failure_message(config: PipelineConfig, component: str | None, error: BaseException) -> str:
    """The message of a failed run: `<component> failed: <error>`, each line cut to MAX_ERROR_LINE;
    when an ExampleGen failed, the damaged TFRecord files of its input named (its error names none)."""
    lines = []
    for line in f"{type(error).__name__}: {error}".splitlines() or [""]:
        # A record's bytes as hex (Beam's "Not a valid TFRecord ... b'0adc04...'"): its head is enough.
        line = _HEX_DUMP.sub(lambda m: f"b'{m.group(1)[:32]}...' ({len(m.group(1)) // 2} bytes)", line)
        if len(line) > MAX_ERROR_LINE:
            # Head and tail: a library's message often ends with its cause (ML Metadata's
            # "database or disk is full" after 2,000 characters of the execution it could not write).
            cut = len(line) - MAX_ERROR_LINE
            line = f"{line[: MAX_ERROR_LINE - 200]} ... ({cut} characters) ... {line[-200:]}"
        lines.append(line)
    message = f"{component or 'the pipeline'} failed: " + "\n".join(lines)
    return message + diagnosis.explain(config, component, message)


def _record_failed_run(
    config: PipelineConfig,
    run_id: str,
    component: str | None,
    message: str,
    tracker: _ComponentProgress | None = None,
) -> RunSummary:
    """Save what a failed run did (each component's state, where and why it failed) as its run
    record, as a finished run's, and return its summary (which the CLI prints). When ML Metadata
    cannot be read (a full disk, its server gone), the summary holds what this process saw of
    its components (`tracker`: their states and the Evaluator's decision) beside the failure;
    when the record cannot be written, its `record_error` says why (the run's own error is the
    one reported)."""
    try:
        withdraw_unserved_blessings(config)  # this run's blessed model, if any
    except Exception as e:  # noqa: BLE001 - must not hide the run's own error
        log.error("the failed run's components could not be read back: %s: %s", type(e).__name__, e)
        summary = _read_back(config, run_id, store_readable=False)
    else:
        summary = _read_back(config, run_id)
    if not summary.executions and tracker is not None and tracker.states:  # ML Metadata unread
        _as_this_process_saw(summary, tracker, component)
    summary.failed = component or "the pipeline"
    summary.error = message
    try:
        summary.nothing_served = nothing_served(config, summary)
    except Exception as e:  # noqa: BLE001 - must not hide the run's own error
        log.debug("nothing_served: %s", e)
    if summary.nothing_served:
        log.warning("%s", summary.nothing_served)
    runs.keep_record(config, summary)
    return summary


def _as_this_process_saw(summary: RunSummary, tracker: _ComponentProgress, failed: str | None) -> None:
    """Fill a failed run's summary that ML Metadata could not give (its server stopped as the
    Pusher ran: `"blessed": null, "accuracy": null, "executions": {}` though the Evaluator had
    blessed the model; an audit) from what this process's launches returned: each finished
    component's state, and the Evaluator's gate.json from its output folder."""
    states = {node: "CACHED" if how == "cached" else "COMPLETE" for node, how in tracker.states.items()}
    if failed and failed not in states:
        states[failed] = "FAILED"
    summary.executions = states
    try:
        gate = metadata.gate_record(tracker.outputs.get(("Evaluator", "evaluation")))
        prepush = metadata.prepush_summary(tracker.outputs.get(("InfraValidator", "blessing")))
    except Exception as e:  # noqa: BLE001 - the record says what is known
        log.debug("the Evaluator's gate.json or the pre-push report: %s", e)
        gate = prepush = None
    if gate:
        summary.gate = gate
        summary.blessed = gate.get("blessed")
        summary.accuracy = gate.get("accuracy")
        summary.per_class_accuracy = gate.get("per_class_recall") or {}
    if prepush:
        summary.prepush = prepush
        if summary.blessed:
            summary.push_skipped = prepush_refusal(prepush) or summary.push_skipped
    log.warning(
        "ML Metadata could not be read: the failed run's record holds what this process saw of its components%s",
        " (the Evaluator's decision from its gate.json)" if gate else "",
    )


def _read_back(config: PipelineConfig, run_id: str, store_readable: bool = True) -> RunSummary:
    """What ML Metadata knows run `run_id` did (summarize_run), for the record of a run that
    failed or died; a summary with no execution when the store has no such run, or cannot be
    read (logged: the run's own failure is the one reported; `store_readable` False: it was not)."""
    if store_readable and (config.metadata_target is not None or os.path.exists(config.metadata_path)):
        try:
            return summarize_run(config, run_id)
        except LookupError:  # no component registered an execution: ML Metadata has no such run
            pass
        except Exception as e:  # noqa: BLE001 - the record says what is known
            log.error("run %s's components could not be read back: %s: %s", run_id, type(e).__name__, e)
    return RunSummary(run_id=run_id, blessed=None, pushed=None, accuracy=None, replicas=None, executions={})


def _log_gate(gate: dict | None) -> None:
    """Say on stderr what a person overrode and why a model was not blessed (also in the summary)."""
    if not gate:
        return
    for anomaly in gate.get("anomalies_allowed") or []:
        if anomaly.startswith(LABEL_CHANGES):
            log.warning("data anomaly let through (--accept-label-change or --allow-anomalies): %s", anomaly)
        else:
            log.warning("data anomaly allowed (--allow-anomalies): %s", anomaly)
    reasons = gate.get("reasons") or []
    for reason in reasons:
        log.warning("not blessed: %s", reason)
    skipped = (gate.get("baseline") or {}).get("skipped_reason")
    waived = (gate.get("baseline") or {}).get("comparison_waived")
    if skipped and skipped != NO_BASELINE and not any(skipped in reason for reason in reasons):
        log.warning("no comparison with the latest blessed model: %s", skipped)  # not said above
    if waived and gate.get("blessed"):
        log.warning("blessed on the floors alone, without that comparison: %s", waived)


def check_data_dir(data_dir: str) -> None:
    """Fail before any component runs when the TFRecord dir is unusable (ConfigError)."""
    try:
        validate_tfrecord_dir(data_dir)
    except IngestError as e:
        raise ConfigError(f"data_dir: {e}") from e
