"""A local weights file is loaded into the configured backbone before anything depends on it.

`imgpipe run` checks it before its first component, `schedule --runner local` before it
installs a schedule whose every run would fail on it. Its sha256 keys the Trainer (TFX's
cache) in `imgpipe run` and in each task of an Airflow DAG (`local_weights_digest`).
"""

from __future__ import annotations

from pipeline.config import ConfigError, PipelineConfig, weights_description


def local_weights_digest(config: PipelineConfig) -> str | None:
    """The sha256 of a local weights file, which keys the Trainer: None for `imagenet`, `none`,
    a remote file, or a file that cannot be read (the Trainer names that problem when it loads it).

    No model is built: an Airflow task calls it each time it builds the pipeline (tens of
    milliseconds for a backbone's file), so a DAG run's Trainer is keyed by the bytes it trains on.
    """
    path = _local_file(config)
    if path is None:
        return None
    from trainer.model import weights_digest

    try:
        return weights_digest(path)
    except Exception:  # noqa: BLE001 - TensorFlow's file errors are not OSErrors
        return None


def _local_file(config: PipelineConfig) -> str | None:
    """The weights file's path when it is a local file, else None (`imagenet`, `none`, remote)."""
    training = config.training
    return training.weights if training.weights_kind == "file" and "://" not in training.weights else None


def check_weights_file(config: PipelineConfig) -> str | None:
    """ConfigError unless a local weights file loads into the configured backbone; its sha256
    (trainer.model.weights_digest: a run keys its Trainer with it), None for `imagenet`, `none`
    or a remote file.

    A file `imgpipe pretrain-backbone` wrote for this backbone (its PATH.json names the backbone
    and the file's sha256) is trusted while its bytes are the ones described; any other (Keras's
    own files, a user's `save_weights`, a described file cut short or replaced since) is loaded
    into the backbone here, as the Trainer would load it, so that a file for another backbone or
    a damaged one fails now and not after statistics and Transform. Builds a model, so
    TensorFlow initialises: a run calls it after splitting the CPU for its replicas.
    """
    training = config.training
    path = _local_file(config)
    if path is None:
        return None
    from trainer.model import weights_digest, weights_file_problem

    try:
        digest = weights_digest(path)
    except Exception as e:  # noqa: BLE001 - TensorFlow's file errors are not OSErrors
        raise ConfigError(f"weights: {path} cannot be read: {' '.join(str(e).split())}") from None
    described = weights_description(path)
    if described.get("backbone") == training.backbone and described.get("sha256") == digest:
        return digest
    problem = weights_file_problem(path, training.backbone, training.effective_image_size())
    if problem:
        raise ConfigError(
            f"weights: {path} does not load into {training.backbone} (include_top=False): {problem.rstrip('.')}. "
            "Pass the --backbone the file was saved from, or a file written by "
            "`imgpipe pretrain-backbone` for this backbone"
        )
    return digest
