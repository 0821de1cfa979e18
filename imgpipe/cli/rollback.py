"""`imgpipe rollback`: serve an earlier pushed version again, and keep the pipeline from re-pushing
the one taken out.

The logic is imgpipe/orchestration/rollback.py; this prints its JSON result (the versions, the
model marked, the blessings withdrawn or given back, the next run's baseline) as one line on
stdout.
"""

from __future__ import annotations

import argparse
import logging

from imgpipe.cli.output import Command, UsageError, WorkFailed, emit
from imgpipe.cli.run import add_lock_wait_argument

log = logging.getLogger(__name__)


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--home",
        help="the pipeline home (`imgpipe run --home`) whose served model to roll back; its newest run "
        "record names the serving dir and ML Metadata",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="the pipeline's config file instead of the run records (a home whose runs keep none: Airflow); "
        "--home, if given too, is the home",
    )
    p.add_argument(
        "--to",
        metavar="VERSION",
        help="the version to serve again (a version folder of the serving dir; default: the newest older "
        "version holding another model than the served one, skipping models an earlier rollback took out)",
    )
    p.add_argument(
        "--reason",
        default="",
        help="why (kept with the rolled-back model in ML Metadata, in the gate's reason when a run meets it "
        "again, and in HOME/rollbacks.jsonl)",
    )
    p.add_argument(
        "--undo",
        action="store_true",
        help="the rollback being undone was a mistake: serve --to's model again and leave the model served "
        "now eligible (not marked as rolled back)",
    )
    p.add_argument("--dry-run", action="store_true", help="report what would change; change nothing")
    add_lock_wait_argument(p, locks="the home")


def _run(args: argparse.Namespace) -> int:
    from imgpipe.orchestration.rollback import (  # loads ML Metadata
        RollbackError,
        RollbackFailed,
        rollback_home,
    )

    try:
        result = rollback_home(
            args.home,
            to=args.to,
            reason=args.reason,
            dry_run=args.dry_run,
            lock_wait=args.lock_wait,
            config_path=args.config,
            undo=args.undo,
        )
    except RollbackError as e:
        raise UsageError(str(e)) from e
    except RollbackFailed as e:
        raise WorkFailed(str(e)) from e
    marked = [m["version"] for m in result.marked]
    log.info(
        "%s version %s's model as version %s in place of version %s%s%s",
        "would serve" if result.dry_run else "serving",
        result.to_version,
        result.new_version or "<next>",
        result.from_version,
        f"; the model(s) of version(s) {', '.join(marked)} marked rolled back (no run blesses or pushes them "
        "again)"
        if marked
        else "",
        " (dry run: nothing changed)" if result.dry_run else "",
    )
    emit(result.to_dict())
    return 0


COMMANDS = [
    Command(
        "rollback",
        "serve an earlier pushed version again; the model taken out is not blessed or pushed again",
        _add,
        _run,
    )
]
