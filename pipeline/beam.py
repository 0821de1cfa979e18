"""Beam pipeline arguments for each supported runner."""

from __future__ import annotations

import os

from pipeline.config import PipelineConfig


def beam_pipeline_args(config: PipelineConfig) -> list[str]:
    """The `beam_pipeline_args` for config.beam_runner, then config.beam_args verbatim."""
    runner = config.beam_runner
    if runner == "direct":
        args = ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]
    elif runner == "multiprocess":
        workers = config.beam_workers or (os.cpu_count() or 1)
        args = [
            "--runner=DirectRunner",
            "--direct_running_mode=multi_processing",
            f"--direct_num_workers={workers}",
        ]
    elif runner == "dataflow":
        args = ["--runner=DataflowRunner"]
    elif runner == "flink":
        args = ["--runner=FlinkRunner"]
    elif runner == "spark":
        args = ["--runner=SparkRunner"]
    else:
        raise ValueError(f"unknown beam runner {runner!r}")
    return args + list(config.beam_args)
