"""The drift check `imgpipe drift` runs: logged images against a run's training split.

`drift_report(...)` samples both sides (at most `max_images` each, a seeded
uniform sample), measures them with the same function, compares them with
TFDV and returns one JSON-ready dict: `drift` (true when any feature is above
its threshold), `drifted` (their names), each feature's distance, both sides'
counts (images measured, skipped by reason) and class distributions.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Sequence

from imgpipe.drift import (
    DEFAULT_CATEGORICAL_THRESHOLD,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MIN_IMAGES,
    DEFAULT_NUMERIC_THRESHOLD,
    DEFAULT_SIGNIFICANCE,
    sources,
)
from imgpipe.drift.compare import compare
from imgpipe.drift.features import CLASS, FeatureTable, class_distribution, reservoir_sample
from imgpipe.orchestration import runs

log = logging.getLogger(__name__)


class TooFewImages(Exception):
    """A side has fewer measurable images than the comparison needs.

    `counts` holds both sides' counts (as the report's `logged` and `training`) when
    drift_report raises it, so a caller can still say what was read.
    """

    def __init__(self, message: str, counts: dict | None = None):
        super().__init__(message)
        self.counts = counts or {}


def compare_tables(
    trained: FeatureTable,
    served: FeatureTable,
    categorical_threshold: float = DEFAULT_CATEGORICAL_THRESHOLD,
    numeric_threshold: float = DEFAULT_NUMERIC_THRESHOLD,
    min_images: int = DEFAULT_MIN_IMAGES,
    significance: float = DEFAULT_SIGNIFICANCE,
    trained_classes: set | None = None,
    ignore: Sequence[str] = (),
    seed: int = 0,
) -> dict:
    """The drift part of the report, from two measured tables; TooFewImages below `min_images`.
    `trained_classes`: every class of the training split, when `trained` is a sample of it.
    `ignore`: features measured and reported that do not make drift (say, `channels` and `format`
    when clients may change how they encode the same pictures)."""
    for side, table in (("training", trained), ("logged", served)):
        if len(table.rows) < min_images:
            raise TooFewImages(
                f"only {len(table.rows)} measurable {side} images (need {min_images}; "
                f"skipped: {dict(table.skipped) or 'none'})"
            )
    result = compare(
        trained, served, categorical_threshold, numeric_threshold, significance, trained_classes, seed
    )
    drifted = [name for name in result.drifted if name not in ignore]
    features = {name: f.to_dict() for name, f in result.features.items()}
    for name in ignore:
        if name in features:
            features[name]["ignored"] = True
    return {
        "drift": bool(drifted),
        "drifted": drifted,
        "significance": significance,
        "ignored": sorted(ignore),
        "features": features,
        "anomalies": result.anomalies,
        "classes": {
            "training": class_distribution([row[CLASS] for row in trained.rows]),
            "logged": class_distribution([row[CLASS] for row in served.rows]),
        },
    }


def _versions_from_elsewhere(home: str, versions: collections.Counter) -> list[str]:
    """The logged versions that no run of `home` pushed (nor a rollback there copied), when none
    of the logged versions is this home's; [] when any is (a pruned run's version among them
    is not a sign of another model) or when the logs name no version."""
    named = sorted(v for v in versions if v)
    if not named:
        return []
    try:
        pushed_by = sources.pushing_runs(home)  # the run records read once, not once per version
    except sources.SourceError:
        return []  # the records cannot be listed: nothing to tell the versions by
    return [] if any(pushed_by(v) for v in named) else named


def drift_report(
    log_dir: str,
    home: str,
    run: str,
    categorical_threshold: float = DEFAULT_CATEGORICAL_THRESHOLD,
    numeric_threshold: float = DEFAULT_NUMERIC_THRESHOLD,
    significance: float = DEFAULT_SIGNIFICANCE,
    ignore: Sequence[str] = (),
    max_images: int = DEFAULT_MAX_IMAGES,
    min_images: int = DEFAULT_MIN_IMAGES,
    seed: int = 0,
    model_name: str | None = None,
) -> dict:
    """Compare the images logged in `log_dir` with the training split of run `run` under `home`.

    `run` is a run id, `latest`, or `served`: the run that pushed the model version that
    answered most of the logged requests (the logs are read once more to find it). Only
    requests for `model_name` are read (default: the run's own model name). Raises
    sources.SourceError when either side cannot be found or the logs hold no request for that
    model, TooFewImages when a side has too little to compare.
    """
    served_version, chosen_by = (
        None,
        "latest: the newest run that finished" if run == runs.LATEST else "run id",
    )
    if run == sources.SERVED:
        scan = sources.served_versions(log_dir, model_name)
        answered = [(n, v) for v, n in scan.versions.items() if v]
        if not answered:
            names = ", ".join(repr(n) for n in scan.models) or "none"
            raise sources.SourceError(
                f"--run served: no logged request in {log_dir} names the model version that answered "
                f"it ({scan.records} records; models: {names}); give --run RUN_ID"
            )
        count, served_version = max(answered)
        folder = sources.pushing_run(home, served_version)
        try:  # the run's id as every other line says it, not its record folder's name
            run = str(runs.read_summary(folder).get("run_id") or os.path.basename(folder))
        except runs.RecordError:
            run = os.path.basename(folder)
        chosen_by = f"served: the run that pushed version {served_version}"
        log.info(
            "version %s answered %d of the %d logged requests read; run %s pushed it",
            served_version,
            count,
            sum(scan.versions.values()),
            run,
        )
    split = sources.training_split(home, run)
    logged = sources.LoggedImages(log_dir, model_name or split.model_name)
    log.info("reading request logs in %s", log_dir)
    served_items, served_total = reservoir_sample(sources.logged_images(log_dir, logged), max_images, seed)
    others = {name: n for name, n in logged.models.items() if name and name != logged.model_name}
    if others and not sum(logged.versions.values()):
        listed = ", ".join(f"{name!r} ({n} records)" for name, n in sorted(others.items()))
        if model_name:
            raise sources.SourceError(
                f"the request logs in {log_dir} hold requests for {listed} and none for {model_name!r} "
                f"(--model-name); run {split.run_id}'s model is {split.model_name!r}"
            )
        raise sources.SourceError(
            f"the request logs in {log_dir} hold requests for {listed} and none for "
            f"{logged.model_name!r}, the model of run {split.run_id}; give --model-name NAME if "
            "the server serves that run's model under another name"
        )
    if logged.problems:  # in the JSON too; said here for a scheduled job's log
        log.warning(
            "%d request log file(s) could not be read in full (the rest were): %s",
            len(logged.problems),
            "; ".join(logged.problems[:3]) + (" ..." if len(logged.problems) > 3 else ""),
        )
    foreign = [] if served_version is not None else _versions_from_elsewhere(home, logged.versions)
    if foreign:
        log.warning(
            "the logged requests were answered by model version(s) %s, which no run of %s pushed: "
            "another pipeline's model served under the name %r? (`--run served` finds the run that "
            "pushed a version; the comparison goes on against run %s)",
            ", ".join(foreign),
            home,
            logged.model_name,
            split.run_id,
        )
    log.info("reading the %s split of run %s (%d files)", split.split, split.run_id, len(split.files))
    train_skipped: collections.Counter[str] = collections.Counter()
    classes: set = set()  # of the whole split: a class the sample missed is still one it trained on

    def every_class(items):
        for image, label in items:
            classes.add(label)
            yield image, label

    trained_items, trained_total = reservoir_sample(
        every_class(sources.example_images(split.files, train_skipped)), max_images, seed
    )
    log.info("measuring %d logged and %d training images", len(served_items), len(trained_items))
    served, trained = FeatureTable.of(served_items), FeatureTable.of(trained_items)
    trained.skipped.update(train_skipped)
    counts = {
        "logged": {
            **logged.summary(),
            "images": served_total,
            "measured": len(served.rows),
            "skipped": dict(served.skipped),
        },
        "training": {
            **split.summary(),
            "chosen_by": chosen_by,
            "images": trained_total,
            "measured": len(trained.rows),
            "skipped": dict(trained.skipped),
        },
    }
    try:
        report = compare_tables(
            trained,
            served,
            categorical_threshold,
            numeric_threshold,
            min_images,
            significance,
            classes,
            ignore,
            seed,
        )
    except TooFewImages as e:
        message = str(e)
        if logged.problems:  # say why the logs held so little: the files that could not be read
            shown = "; ".join(logged.problems[:3]) + (
                f"; and {len(logged.problems) - 3} more" if len(logged.problems) > 3 else ""
            )
            message = f"{message}; log files that could not be read: {shown}"
        raise TooFewImages(message, counts) from e
    report.update(counts)
    return report
