"""Write a run's report folder, HOME/runs/<run_id>/report/: index.html, PNG figures, thumbnails, report.json.

`attach_report()` is the pipeline run's hook: it never raises, so a report that
cannot be written never fails a run that succeeded; the summary then says why
(`report: null`, `report_error`). `build_report()` (re)generates the report of
any recorded run, e.g. for `imgpipe report`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from imgpipe.orchestration import metadata, runs
from imgpipe.orchestration.metadata import RunArtifacts
from imgpipe.orchestration.summary import RunSummary
from imgpipe.report import html
from imgpipe.report.data import DEFAULT_MAX_MISCLASSIFIED, ReportData, gather, reusable
from pipeline.config import PipelineConfig
from trainer.features import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)

REPORT_DIR = "report"
INDEX_FILE = "index.html"
DATA_FILE = "report.json"  # the numbers behind the page, for `imgpipe report` and other tools


def report_dir(run_folder: str) -> str:
    return os.path.join(run_folder, REPORT_DIR)


def write_report(
    folder: str,
    data: ReportData,
    summary_link: str | None = None,
    thumbnails_from: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> str:
    """Draw the figures and write the page and report.json into `folder` (replaced whole); return the page.

    `thumbnails_from`: the report folder whose thumbnails a misclassified entry
    without image bytes (predictions reused from that report) names. `max_pixels`: the run's
    pixel limit (max_image_pixels); thumbnails are what the pipeline's decoder makes of the
    images under it.
    """
    from imgpipe.report import figures  # matplotlib takes seconds to import: only when drawing

    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".report-", dir=parent)
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private: as any folder the user makes
        written: dict[str, str] = {}
        for name, normalised in (("confusion_counts", False), ("confusion_normalised", True)):
            written[name] = f"{name}.png"
            figures.confusion_matrix(
                data.rows, data.class_names, data.confusion, os.path.join(staging, written[name]), normalised
            )
        if figures.has_curves(data.history):
            written["training_curves"] = "training_curves.png"
            figures.training_curves(
                data.history, os.path.join(staging, written["training_curves"]), data.selection_folds
            )
        _thumbnails(data, staging, thumbnails_from, max_pixels)
        with open(os.path.join(staging, DATA_FILE), "w", encoding="utf-8") as f:
            json.dump(data.to_dict(), f, indent=2)
        with open(os.path.join(staging, INDEX_FILE), "w", encoding="utf-8") as f:
            f.write(html.render(data, written, summary_link))
        _swap_in(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return os.path.join(folder, INDEX_FILE)


def _thumbnails(
    data: ReportData, staging: str, thumbnails_from: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> None:
    if not data.misclassified:
        return
    import tensorflow as tf  # the thumbnails are the pipeline's decode (figures.thumbnail)

    from imgpipe.report import figures

    os.makedirs(os.path.join(staging, "thumbs"))
    undecodable = []
    for m in data.misclassified:
        name = f"thumbs/record-{m.record}.png"
        if m.image is None and m.thumbnail and thumbnails_from:
            shutil.copyfile(os.path.join(thumbnails_from, m.thumbnail), os.path.join(staging, name))
            m.thumbnail = name
            continue
        try:
            figures.thumbnail(m.image or b"", os.path.join(staging, name), max_pixels=max_pixels)
        except (tf.errors.OpError, OSError, ValueError) as e:  # the decoder refuses it: no thumbnail
            undecodable.append(f"{m.record} ({type(e).__name__})")
            continue
        m.thumbnail = name
    if undecodable:
        data.notes.append(f"eval records whose image could not be decoded: {', '.join(undecodable)}")


def _swap_in(staging: str, folder: str) -> None:
    """Replace `folder` by `staging`: a reader sees the old report or the new one, never half of one."""
    old = None
    if os.path.exists(folder):
        old = folder + f".old-{os.getpid()}"
        os.replace(folder, old)
    os.replace(staging, folder)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def build_report(
    config: PipelineConfig,
    summary: dict[str, Any],
    max_misclassified: int = DEFAULT_MAX_MISCLASSIFIED,
    loaded_model: Callable[[str], Any] | None = None,
) -> str:
    """Gather the run `summary['run_id']`'s numbers (the model runs once) and write its report; return the page.

    loaded_model(path): the SavedModel at `path` if this process has it loaded already, else
    None (a local run: components/loaded_models.py's `get`).
    """
    run_id = summary["run_id"]
    artifacts = metadata.run_artifacts(config, run_id)
    check_artifacts_kept(artifacts)
    folder = report_dir(runs.run_dir(config.home, run_id))
    previous, previous_folder = earlier_report(config.home, folder, artifacts, max_misclassified)
    data = gather(
        artifacts,
        summary,
        metadata.training_summary(artifacts.model_run),
        metadata.gate_record(artifacts.evaluation),
        min_accuracy=config.gate.min_accuracy,
        max_regression=config.gate.max_regression,
        max_misclassified=max_misclassified,
        previous=previous,
        data_gate=metadata.data_gate_report(artifacts.data_gate),
        loaded=loaded_model(artifacts.serving_model) if loaded_model and artifacts.serving_model else None,
        image_size=config.effective_image_size(),
    )
    name_files(data, config.data_dir)
    return write_report(
        folder,
        data,
        summary_link=f"../{runs.SUMMARY_FILE}",
        thumbnails_from=previous_folder,
        max_pixels=config.training.max_image_pixels,
    )


class ArtifactsGone(RuntimeError):
    """The run's artifacts the report is made from were deleted (pruned, or by hand)."""


def check_artifacts_kept(artifacts: RunArtifacts) -> None:
    """ArtifactsGone naming the folders of the run's eval split, model, training record and
    evaluation that ML Metadata lists but the disk no longer has: a report made without them
    would lack its curves or fail minutes in (`imgpipe prune` deletes old runs' artifacts and
    keeps their records, so a pruned run's report can be shown, not written again)."""
    wanted = {
        "eval split": artifacts.eval_examples,
        "model": artifacts.serving_model,
        "training record": artifacts.model_run,
        "evaluation": artifacts.evaluation,
    }
    gone = [
        f"{what} {path}"
        for what, path in wanted.items()
        if path and "://" not in path and not os.path.isdir(path)
    ]
    if gone:
        raise ArtifactsGone(
            f"run {artifacts.run_id}'s artifacts were deleted (by `imgpipe prune`, or by hand): no "
            f"{'; no '.join(gone)}. Its report cannot be written again"
        )


def name_files(data: ReportData, data_dir: str | None) -> None:
    """Name each misclassified image's file, from the index `imgpipe ingest` writes beside its
    records (contract.indexed_files), matched by the image bytes' SHA-256: the record's place in
    the eval split is ExampleGen's, not the files'. Records made elsewhere (no index) keep their
    record number only; an unreadable index, or lines of it that are not an entry, are a note."""
    from imgpipe.ingest.contract import indexed_files

    wanted = {hashlib.sha256(m.image).hexdigest(): m for m in data.misclassified if m.image}
    found, notes = indexed_files(data_dir, "eval", set(wanted))
    for digest, path in found.items():
        wanted[digest].file = path
    data.notes.extend(notes)


def earlier_report(
    home: str, folder: str, artifacts: RunArtifacts, max_misclassified: int
) -> tuple[ReportData | None, str | None]:
    """The newest earlier report (and its folder) that scored this run's model on its eval split, complete
    with its thumbnails; (None, None) when there is none.

    Only a run whose Trainer came from the cache can share its model with an earlier run: for one
    that trained, the earlier reports are not read at all.
    """
    if artifacts.states.get("Trainer") != "CACHED":
        return None, None
    for record in runs.records(home):
        other = report_dir(record)
        if os.path.abspath(other) == os.path.abspath(folder):
            continue
        data = load_report(record)
        if data is None or not reusable(data, artifacts, max_misclassified):
            continue
        if all(os.path.isfile(os.path.join(other, m.thumbnail)) for m in data.misclassified if m.thumbnail):
            return data, other
    return None, None


def attach_report(
    config: PipelineConfig, summary: RunSummary, loaded_model: Callable[[str], Any] | None = None
) -> None:
    """Write the run's report and link it from `summary`; on any error log it and record why instead."""
    started = time.perf_counter()
    try:
        summary.report = build_report(config, summary.to_dict(), loaded_model=loaded_model)
        summary.report_error = None
    except Exception as e:  # noqa: BLE001 - the report must never fail a run that succeeded
        summary.report = None
        summary.report_error = f"{type(e).__name__}: {e}"
        log.error(
            "the run report was not written: %s",
            summary.report_error,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        return
    log.info("run report %s (%.1fs)", summary.report, time.perf_counter() - started)


def load_report(run_folder: str) -> ReportData | None:
    """The numbers of a written report (None when the run has no complete, readable report)."""
    path = os.path.join(report_dir(run_folder), DATA_FILE)
    if not os.path.isfile(os.path.join(report_dir(run_folder), INDEX_FILE)) or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return ReportData.from_dict(json.load(f))
    except (ValueError, KeyError, TypeError) as e:  # damaged, or written by another version
        log.warning("ignoring %s: %s: %s", path, type(e).__name__, e)
        return None


def _umask() -> int:
    """The process's umask: from /proc (Linux), else read by setting it and setting it back (a
    file another thread makes in between would get 022)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
