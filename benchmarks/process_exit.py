"""A process's exit after its work: the interpreter's last collection, and imgpipe's freeze instead.

Each child imports what a command holds when its work is done, notes the time, and exits:
"tensorflow" (what `imgpipe predict`, `serve` and a Beam worker load) and "a run's libraries"
(TensorFlow, TFX, TFMA, TFT, Beam: what `imgpipe run` loads). Variants: "collected" (the
interpreter's usual exit) and "frozen" (`imgpipe.process_exit.freeze_at_exit()`, as every
`imgpipe` command, Beam worker, Kubeflow step and Airflow task now does). Per child: the
seconds from the noted time to the child's end as its parent sees it (`os.wait4`), and the
CPU seconds of the whole child (user + system, from the same call); medians of interleaved
rounds and the ratio frozen / collected.

    python -m benchmarks.process_exit            # 5 rounds
    python -m benchmarks.process_exit --quick    # 1 round
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from benchmarks import common

IMPORTS = {
    "tensorflow": "import tensorflow",
    "a run's libraries": (
        "import tensorflow, tfx.v1, tensorflow_model_analysis, tensorflow_transform, apache_beam"
    ),
}

CHILD = """
import sys, time
{imports}
if {frozen}:
    from imgpipe.process_exit import freeze_at_exit
    freeze_at_exit()
with open(sys.argv[1], "w") as f:
    f.write(repr(time.time()))
"""


def _child(imports: str, frozen: bool, stamp: str) -> tuple[float, float]:
    """(seconds from the child's noted time to its end, its CPU seconds)."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [common.REPO, env.get("PYTHONPATH")]))
    code = CHILD.format(imports=imports, frozen=frozen)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, stamp],
        env=env,
        cwd=common.REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    ended = time.time()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"the child ({imports}; frozen={frozen}) exited {proc.returncode}")
    with open(stamp) as f:
        noted = float(f.read())
    return ended - noted, usage.ru_utime + usage.ru_stime


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    rounds = common.repeats(args, default=5)
    common.quiet()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stamp = os.path.join(tmp, "noted")
        for what, imports in IMPORTS.items():
            got = common.interleaved(
                {
                    "collected": lambda r, imports=imports: _child(imports, False, stamp),
                    "frozen": lambda r, imports=imports: _child(imports, True, stamp),
                },
                rounds,
                say=common.say,
            )
            exit_c, exit_f = (common.median([x[0] for x in got[k]]) for k in ("collected", "frozen"))
            cpu_c, cpu_f = (common.median([x[1] for x in got[k]]) for k in ("collected", "frozen"))
            rows.append(
                [
                    what,
                    f"{exit_c:.2f}",
                    f"{exit_f:.2f}",
                    f"{cpu_c:.2f}",
                    f"{cpu_f:.2f}",
                    f"{cpu_f / cpu_c:.2f}x",
                ]
            )
    common.emit(common.header("A process's exit: the interpreter's collection, and a freeze instead"))
    common.emit(f"Medians of {rounds} interleaved round(s), each a fresh child process.\n")
    common.emit(
        common.table(
            [
                "child imports",
                "exit s, collected",
                "exit s, frozen",
                "child CPU s, collected",
                "child CPU s, frozen",
                "CPU frozen / collected",
            ],
            rows,
        )
    )
    common.emit("")
    return 0


if __name__ == "__main__":
    sys.exit(main())
