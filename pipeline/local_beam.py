"""The Beam runner of `direct` and `multiprocess`: Beam's DirectRunner without its Prism attempt.

Beam 2.7x's DirectRunner first tries to run a pipeline on Prism, a separate Go
runner that it downloads from GitHub at run time, and falls back to its Python
runner (FnApiRunner, in memory or in worker processes) when that fails:

- offline (here, and in most production networks), every Beam job of a run
  pays the failed attempt: a worker-pool server started for nothing and the
  download tried (~0.2 s each; longer where DNS lookups time out);
- online, the job runs on a binary fetched at run time, a runner that none of
  imgpipe's tests exercise.

`DirectRunner` here always takes Beam's Python runner, with the same options
(`--direct_running_mode`, `--direct_num_workers`). Beam decides two things by
name, and this runner keeps both of Beam's own DirectRunner's answers:

- the `--runner` value's last part (`pipeline.local_beam.DirectRunner`) is in
  Beam's list of local runners (e.g. no submitting environment is recorded);
- the class is called `SwitchingDirectRunner`, the name `Pipeline.run` looks for
  before it skips its round trip of a batch pipeline through the runner API
  proto (every DoFn pickled and unpickled once more, only to be pickled again
  by the FnApiRunner). Under another class name every job of a run paid it:
  ~0.2-0.5 s per job for the small jobs of a pipeline run.
"""

from __future__ import annotations

import os

from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner as _BeamsSwitchingDirectRunner

from pipeline import beam_memo

# Set to 0 to run Beam without pipeline/beam_memo.py (benchmarks, or to rule it out), or to a
# comma-separated list of its parts (beam_memo.PARTS) to install only those.
MEMO_ENV = "IMGPIPE_BEAM_MEMO"


def memo_parts() -> tuple[str, ...]:
    """The parts of pipeline/beam_memo.py that MEMO_ENV asks for: all by default, none for 0."""
    value = os.environ.get(MEMO_ENV, "1").strip()
    if value == "1":
        return beam_memo.PARTS
    if value == "0":
        return ()
    parts = tuple(p.strip() for p in value.split(",") if p.strip())
    unknown = beam_memo.unknown_parts(parts)
    if unknown:
        raise ValueError(
            f"{MEMO_ENV}={value!r}: unknown part(s) {unknown}; use 1, 0 or a comma-separated list of "
            f"{', '.join(beam_memo.PARTS)}"
        )
    return parts


class SwitchingDirectRunner(_BeamsSwitchingDirectRunner):
    """Beam's DirectRunner that never tries Prism (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        # The pipeline creates its runner before any transform is applied: construction and
        # the bundles both find Beam's signature and type-check answers remembered.
        parts = memo_parts()
        if parts:
            beam_memo.install(parts)
        # SwitchingDirectRunner tries Prism unless the pipeline is interactive (Prism does not
        # support that mode); this flag is read for that decision only (Beam 2.74).
        self._is_interactive = True


# The name `--runner` gives (pipeline/beam.py LOCAL_RUNNER), as Beam's `DirectRunner` is its
# `SwitchingDirectRunner`.
DirectRunner = SwitchingDirectRunner
