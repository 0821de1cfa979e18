"""One step of a compiled Kubeflow / Vertex AI pipeline: TFX's container entrypoint, and on a
failure, what its error does not say.

`imgpipe compile --target kubeflow` gives every executor container the command

    python -m imgpipe.orchestration.kfp_step --imgpipe-step NODE_ID --imgpipe-config JSON <TFX's args>

This runs TFX's own entrypoint (`tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor`)
with TFX's args, unchanged. When the executor fails, the step's log gets the lines `imgpipe run`
and the Airflow tasks add to such a failure (imgpipe/orchestration/diagnosis.py): the damaged
TFRecord files behind ImportExampleGen's error, the records whose image the model's decoder
refuses behind Transform's, the Trainer's or the Evaluator's. Then the executor's error is raised
as it came, so the step fails as it would have, with TFX's traceback.
"""

from __future__ import annotations

import json
import runpy
import sys
from collections.abc import Sequence

from imgpipe.process_exit import freeze_at_exit

TFX_ENTRYPOINT = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"
STEP_FLAG = "--imgpipe-step"
CONFIG_FLAG = "--imgpipe-config"


def step_args(node_id: str, config_json: str) -> list[str]:
    """The arguments this module reads, to put before TFX's in a container's args."""
    return [STEP_FLAG, node_id, CONFIG_FLAG, config_json]


def _own_flags(argv: Sequence[str]) -> tuple[str, str, list[str]]:
    """(node id, config JSON, TFX's args) from a container's args; SystemExit(2) naming what is
    missing (a spec compiled by hand, or by another imgpipe)."""
    argv = list(argv)
    values = {}
    for flag in (STEP_FLAG, CONFIG_FLAG):
        if len(argv) < 2 or argv[0] != flag:
            print(
                f"imgpipe kfp step: expected {flag} VALUE before TFX's arguments, got {argv[:1]}; "
                "compile the pipeline again with `imgpipe compile --target kubeflow`",
                file=sys.stderr,
            )
            raise SystemExit(2)
        values[flag], argv = argv[1], argv[2:]
    return values[STEP_FLAG], values[CONFIG_FLAG], argv


def main(argv: Sequence[str] | None = None) -> None:
    node_id, config_json, tfx_args = _own_flags(sys.argv[1:] if argv is None else argv)
    sys.argv = [TFX_ENTRYPOINT, *tfx_args]
    freeze_at_exit()  # the step's container ends when its work does, not a collection later
    try:
        runpy.run_module(TFX_ENTRYPOINT, run_name="__main__", alter_sys=True)
    except Exception as e:
        # Nothing here may replace the step's own error: the diagnosis is logged, then it is raised.
        from imgpipe.orchestration import diagnosis
        from pipeline.config import PipelineConfig

        diagnosis.log_failure(lambda: PipelineConfig.from_dict(json.loads(config_json)), node_id, e)
        raise


if __name__ == "__main__":
    main()
