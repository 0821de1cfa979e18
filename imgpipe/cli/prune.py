"""`imgpipe prune`: free a pipeline home's disk, keeping the newest runs and the gate's baseline.

The logic is imgpipe/orchestration/prune.py; this prints its JSON result
(what was removed or would be, and the bytes freed) as one line on stdout.
"""

from __future__ import annotations

import argparse
import logging

from imgpipe.cli.output import Command, UsageError, emit
from imgpipe.cli.run import add_lock_wait_argument

log = logging.getLogger(__name__)


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--home",
        help="the pipeline home (`imgpipe run --home`) to prune: its metadata.sqlite, or the pipelines it runs "
        "in the PostgreSQL ML Metadata database its newest run record names",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="the pipeline's config file, for its home and ML Metadata database instead of the run records "
        "(a home whose runs keep none: Airflow's); --home, if given too, is the home",
    )
    p.add_argument(
        "--keep",
        type=int,
        required=True,
        metavar="N",
        help="keep the artifacts of the newest N runs (the latest blessed model, its blessing and the "
        "latest push record are always kept)",
    )
    p.add_argument(
        "--keep-versions",
        type=int,
        default=None,
        metavar="K",
        help="also delete the versions this home's runs pushed (as their records say) that are not among "
        "the newest K of their serving dir (default: the serving dirs are left alone; the newest version "
        "is the one a 'latest' policy serves: a version pinned with a 'specific' policy is not known "
        "here, keep enough for it)",
    )
    p.add_argument("--dry-run", action="store_true", help="report what would be removed; change nothing")
    add_lock_wait_argument(p, locks="the home")


def _run(args: argparse.Namespace) -> int:
    from imgpipe.orchestration.prune import PruneError, prune_home  # loads ML Metadata: only when it runs

    try:
        result = prune_home(
            args.home,
            args.keep,
            dry_run=args.dry_run,
            lock_wait=args.lock_wait,
            keep_versions=args.keep_versions,
            config_path=args.config,
        )
    except PruneError as e:
        raise UsageError(str(e)) from e
    removed = sum(len(p.removed) for p in result.pipelines.values())
    versions = f" and {len(result.versions_removed)} old served version(s)" if result.keep_versions else ""
    log.info(
        "%s %d artifact(s) of old runs%s, %d bytes%s",
        "would remove" if result.dry_run else "removed",
        removed,
        versions,
        result.bytes_freed,
        " (dry run: nothing changed)" if result.dry_run else "",
    )
    emit(result.to_dict())
    return 0


COMMANDS = [
    Command(
        "prune",
        "delete old runs' artifacts from a pipeline home (keeps the newest N runs and the gate's baseline)",
        _add,
        _run,
    )
]
