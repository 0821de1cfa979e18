"""What ordering run records by their number costs: `runs.records` on homes of many records.

Records are ordered newest first by the number each run is given as it starts (its summary's
`sequence`), so `records` reads every record's summary; before, it ordered by the time in the
run id and read none. `report latest`, `drift --run latest` and a run's start (the next
number) call it once. Variants, interleaved in one process on the same home: "by number"
(imgpipe's code) and "by run id" (the earlier ordering: the folders' names and the config
files' times only). Per home size: the median milliseconds of one call, and the ratio.

    python -m benchmarks.run_records            # 5 rounds
    python -m benchmarks.run_records --quick    # 1 round
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from benchmarks import common

SIZES = (30, 365, 1000, 3000)  # a month, a year of daily runs, ...


def _by_run_id(home: str) -> list[str]:
    """The earlier ordering: record folders by the time their name starts with."""
    from imgpipe.orchestration import runs

    root = os.path.join(home, "runs")
    folders = [
        os.path.join(root, name)
        for name in os.listdir(root)
        if os.path.isfile(os.path.join(root, name, runs.CONFIG_FILE))
        and os.path.isfile(os.path.join(root, name, runs.SUMMARY_FILE))
    ]
    return sorted(folders, key=lambda f: (runs._started(f), f), reverse=True)


def _home(parent: str, n: int) -> str:
    from imgpipe.orchestration import runs
    from imgpipe.orchestration.summary import RunSummary
    from pipeline.config import PipelineConfig

    home = os.path.join(parent, f"home-{n}")
    config = PipelineConfig(home=home).resolved()
    for i in range(n):
        day, second = divmod(i, 86400)
        run_id = f"2026-{1 + day // 28:02d}-{1 + day % 28:02d}T{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}.000001-{i:06x}"
        summary = RunSummary(run_id, True, None, 0.9, 1, {"Trainer": "COMPLETE"}, sequence=i + 1)
        runs.write_record(config, summary)
    return home


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    rounds = common.repeats(args, default=5)
    common.quiet()
    from imgpipe.orchestration import runs

    rows = []
    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-records-") as parent:
        for n in SIZES:
            common.say(f"[run_records] {n} records")
            home = _home(parent, n)

            def timed(order, h=home):
                start = time.perf_counter()
                found = order(h)
                return time.perf_counter() - start, found[0]

            got = common.interleaved(
                {"by number": lambda r: timed(runs.records), "by run id": lambda r: timed(_by_run_id)},
                rounds,
                say=common.say,
            )
            new = common.median([t for t, _ in got["by number"]])
            old = common.median([t for t, _ in got["by run id"]])
            same = got["by number"][0][1] == got["by run id"][0][1]
            rows.append(
                [
                    n,
                    f"{old * 1000:.1f}",
                    f"{new * 1000:.1f}",
                    f"{new / old:.2f}x",
                    "same" if same else "DIFFERENT",
                ]
            )
    common.emit(common.header("Run records ordered by their number: `runs.records` on many records"))
    common.emit(f"Medians of {rounds} interleaved round(s), one call each, files in the page cache.\n")
    common.emit(common.table(["records", "by run id ms", "by number ms", "ratio", "newest"], rows))
    common.emit("")
    return 0


if __name__ == "__main__":
    sys.exit(main())
