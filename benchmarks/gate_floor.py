"""The balanced-accuracy floor's chance bound: the search, and Hoeffding's inequality in front of it.

With `gate.metric balanced_accuracy` (or `auto` on a skewed split) and a significance, the
Evaluator plans its floor from the eval split's class sizes: the least balanced accuracy that
answers ignoring the image reach with probability at most the significance, searched for over
the frequencies such answers use (components/gate_decision.py). On large splits that search
costs seconds to half a minute (a seeded simulation per frequency tried) for a bound below
1/k + margin, which is the floor anyway. `chance_cannot_reach` shows that with Hoeffding's
inequality first and skips the search.

Variants, interleaved in one process: "hoeffding" (imgpipe's code) and "search" (the same
with `chance_cannot_reach` answering no, so the search always runs). Per split: the median
seconds of `balanced_floor` over the rounds, their ratio, and the floor (value, source) of
each variant, which must be the same.

    python -m benchmarks.gate_floor            # 3 rounds
    python -m benchmarks.gate_floor --quick    # 1 round
"""

from __future__ import annotations

import sys
import time

from benchmarks import common

# (what the split is, class sizes): the demo's, large balanced and skewed ones, many classes.
SPLITS = (
    ("the demo's eval split (5 x 36)", [36] * 5),
    ("2 classes, 950 : 50", [950, 50]),
    ("5 x 600", [600] * 5),
    ("3 classes, 3000 : 3000 : 600", [3000, 3000, 600]),
    ("10 x 6000", [6000] * 10),
    ("100 classes, 1000 : 20 alternating", [1000, 20] * 50),
    ("300 x 200", [200] * 300),
    ("1000 x 30", [30] * 1000),
)
MARGIN = SIGNIFICANCE = 0.05


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    rounds = common.repeats(args)
    common.quiet()
    from components import gate_decision

    shipped = gate_decision.chance_cannot_reach

    def floor(sizes, skip: bool):
        gate_decision.chance_cannot_reach = shipped if skip else (lambda *a: False)
        try:
            counts = {f"c{i:04d}": n for i, n in enumerate(sizes)}
            start = time.perf_counter()
            f = gate_decision.balanced_floor(0.0, counts, MARGIN, SIGNIFICANCE)
            return time.perf_counter() - start, f
        finally:
            gate_decision.chance_cannot_reach = shipped

    rows = []
    for name, sizes in SPLITS:
        common.say(f"[gate_floor] {name}")
        got = common.interleaved(
            {"hoeffding": lambda r, s=sizes: floor(s, True), "search": lambda r, s=sizes: floor(s, False)},
            rounds,
            say=common.say,
        )
        fast = common.median([t for t, _ in got["hoeffding"]])
        slow = common.median([t for t, _ in got["search"]])
        f_fast, f_slow = got["hoeffding"][0][1], got["search"][0][1]
        same = (round(f_fast.value, 12), f_fast.source) == (round(f_slow.value, 12), f_slow.source)
        rows.append(
            [
                name,
                f_fast.chance_method,
                slow,
                fast,
                fast / slow,
                f"{f_slow.value:.4f} ({f_slow.source})",
                "same" if same else f"{f_fast.value:.4f} ({f_fast.source})",
            ]
        )
    common.emit(common.header("Balanced accuracy's floor: the chance bound's search vs Hoeffding first"))
    common.emit(
        f"`balanced_floor(min_accuracy 0, margin {MARGIN}, significance {SIGNIFICANCE})`, medians of "
        f"{rounds} interleaved round(s); seconds per call.\n"
    )
    common.emit(
        common.table(
            [
                "split",
                "method (imgpipe)",
                "search s",
                "Hoeffding first s",
                "ratio",
                "floor (search)",
                "floor (Hoeffding first)",
            ],
            rows,
        )
    )
    common.emit("")
    return 0


if __name__ == "__main__":
    sys.exit(main())
