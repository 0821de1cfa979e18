"""`imgpipe report RUN_ID|latest`: show a run's report, writing it first when it is missing.

Like every command, stdout carries one JSON line: the report's path and its
numbers (report.json's content). The text view (gate decision, per-class table,
worst misclassifications) goes to stderr, where a person at a terminal reads it.
A run whose report is missing (or with --regenerate) gets it written now: that
loads TensorFlow and runs the run's model over its eval split once.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time

from imgpipe.cli.output import Command, UsageError, WorkFailed, emit, show
from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_ID|latest", help="a run id (as `imgpipe run` printed it) or 'latest'")
    p.add_argument(
        "--home",
        default=PipelineConfig.model_fields["home"].default,
        help="the pipeline home holding runs/ and ML Metadata (default %(default)s)",
    )
    p.add_argument("--regenerate", action="store_true", help="write the report again even if the run has one")
    p.add_argument(
        "--max-misclassified",
        type=int,
        default=None,
        help="cap on the misclassified images in the report (default 48); another cap than the "
        "written report's writes it again",
    )
    p.add_argument("--verbose", action="store_true", help="show the traceback when writing the report fails")


def _run_folder(home: str, run: str) -> str:
    from imgpipe.orchestration import runs  # ML Metadata's bindings load with it: only when used

    try:
        return runs.find_record(home, run)
    except LookupError as e:
        raise UsageError(str(e)) from e


def _regenerate(home: str, folder: str, summary: dict, max_misclassified: int | None) -> str:
    """Write the report of the run recorded in `folder` (its `summary`); record the outcome in it."""
    from imgpipe.orchestration import runs
    from imgpipe.report import build  # loads TensorFlow: only when a report is written

    config = PipelineConfig.from_yaml(os.path.join(folder, runs.CONFIG_FILE)).replace(home=home)
    kwargs = {} if max_misclassified is None else {"max_misclassified": max_misclassified}
    log.info("writing the report of run %s", summary["run_id"])
    started = time.perf_counter()
    try:
        path = build.build_report(config, summary, **kwargs)
    except Exception as e:  # noqa: BLE001 - recorded in the summary, then reported as a failure
        message = f"{type(e).__name__}: {e}"
        log.debug("report failed", exc_info=True)
        if build.load_report(folder) is not None:
            # --regenerate over a whole report: a failed write replaces nothing (write_report
            # stages the folder), so the record keeps pointing at the report that is there.
            raise WorkFailed(
                f"could not write the report of run {summary['run_id']} again: {message}; "
                f"the earlier report is kept ({build.report_dir(folder)})"
            ) from e
        runs.update_summary(folder, {"report": None, "report_error": message})
        raise WorkFailed(f"could not write the report of run {summary['run_id']}: {message}") from e
    runs.update_summary(folder, {"report": path, "report_error": None})
    log.info("report written in %.1fs", time.perf_counter() - started)
    return path


def _run(args: argparse.Namespace) -> int:
    from imgpipe.orchestration import runs
    from imgpipe.report import build, text
    from imgpipe.report.data import deployment_since

    if args.max_misclassified is not None and args.max_misclassified < 0:
        raise UsageError(f"--max-misclassified: must be 0 or more, got {args.max_misclassified}")
    home = os.path.abspath(os.path.expanduser(args.home))
    folder = _run_folder(home, args.run)
    try:
        recorded = runs.read_summary(folder)
    except runs.RecordError as e:
        raise WorkFailed(str(e)) from None
    if runs.failure(recorded):
        # The run named has no report to show: exit 2, as `latest` is when no run finished.
        raise UsageError(
            f"run {recorded.get('run_id')} failed, so it has no report: {runs.failure(recorded)}"
        )
    data = None if args.regenerate else build.load_report(folder)
    if data is not None and args.max_misclassified not in (None, data.max_misclassified):
        # Another cap than the written report's: written again (it was silently kept before).
        log.info(
            "the report holds at most %d misclassified images; writing it again with --max-misclassified %d",
            data.max_misclassified,
            args.max_misclassified,
        )
        data = None
    regenerated = data is None
    if regenerated:
        _regenerate(home, folder, recorded, args.max_misclassified)
        data = build.load_report(folder)
        if data is None:
            raise WorkFailed(f"the report in {build.report_dir(folder)} is incomplete")
    path = os.path.join(build.report_dir(folder), build.INDEX_FILE)
    # The JSON keeps report.json's `deployment` (what was true when it was written) and what
    # became of the version since beside it; the text says both in one line.
    since = deployment_since(home, recorded)
    shown = dataclasses.replace(data, deployment="; ".join(filter(None, [data.deployment, since])))
    show(text.render(shown, path))
    emit({"report": path, "regenerated": regenerated, **data.to_dict(), "deployment_since": since})
    return 0


COMMANDS = [
    Command(
        "report",
        "show a run's report (gate decision, per-class metrics, worst misclassifications); "
        "writes it when missing",
        _add,
        _run,
    )
]
