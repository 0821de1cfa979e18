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
(`--direct_running_mode`, `--direct_num_workers`). Its name stays
`DirectRunner` because Beam checks the runner's class name against its list of
local runners (e.g. to skip recording the submitting environment).
"""

from __future__ import annotations

import os

from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner

from pipeline import beam_memo

# Set to 0 to run Beam without pipeline/beam_memo.py (benchmarks, or to rule it out).
MEMO_ENV = "IMGPIPE_BEAM_MEMO"


class DirectRunner(SwitchingDirectRunner):
    """Beam's DirectRunner that never tries Prism (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        # The pipeline creates its runner before any transform is applied: construction and
        # the bundles both find Beam's signature and type-check answers remembered.
        if os.environ.get(MEMO_ENV, "1") != "0":
            beam_memo.install()
        # SwitchingDirectRunner tries Prism unless the pipeline is interactive (Prism does not
        # support that mode); this flag is read for that decision only (Beam 2.74).
        self._is_interactive = True
