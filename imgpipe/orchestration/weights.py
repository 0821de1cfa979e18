"""A local weights file is loaded into the configured backbone before anything depends on it.

`imgpipe run` checks it before its first component, `schedule --runner local` before it
installs a schedule whose every run would fail on it.
"""

from __future__ import annotations

from pipeline.config import ConfigError, PipelineConfig, described_backbone


def check_weights_file(config: PipelineConfig) -> None:
    """ConfigError unless a local weights file loads into the configured backbone.

    A file `imgpipe pretrain-backbone` wrote for this backbone (its PATH.json says so) is
    trusted as it is; any other (Keras's own files, a user's `save_weights`) is loaded into the
    backbone here, as the Trainer would load it, so that a file for another backbone fails now
    and not after statistics and Transform. Builds a model, so TensorFlow initialises: a run
    calls it after splitting the CPU for its replicas.
    """
    training = config.training
    path = training.weights
    if training.weights_kind != "file" or "://" in path or described_backbone(path) == training.backbone:
        return
    from trainer.model import weights_file_problem

    problem = weights_file_problem(path, training.backbone, training.effective_image_size())
    if problem:
        raise ConfigError(
            f"weights: {path} does not load into {training.backbone} (include_top=False): {problem.rstrip('.')}. "
            "Pass the --backbone the file was saved from, or a file written by "
            "`imgpipe pretrain-backbone` for this backbone"
        )
