"""run_fn: the TFX Trainer's entry point, a thin adapter from FnArgs to trainer.train."""

from __future__ import annotations

import logging
import os

import tensorflow_transform as tft
from pydantic import ValidationError
from tfx.components.trainer.fn_args_utils import FnArgs

from trainer import data, distribution, export, feature_store, image_ids, tflite, train
from trainer.config import INGEST_REPORT_CONFIG, REPLICAS_CONFIG, SUMMARY_FILE, ConfigError, TrainingConfig

WARMUP_RECORDS = 4

log = logging.getLogger(__name__)


def parse_custom_config(custom_config: dict | None) -> TrainingConfig:
    """The Trainer's settings, parsed strictly: an unknown or mistyped key is an error naming it."""
    try:
        return TrainingConfig.model_validate(custom_config or {})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'training'}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"Trainer custom_config is invalid: {problems}") from None


def _check_replicas(requested: int | None) -> None:
    """A run keyed by `replicas` (pipeline.trainer_custom_config) trains on that many, or fails
    saying so: its model is cached as one trained on them."""
    if requested is None:
        return
    have = distribution.replica_count()
    if have != requested:
        raise ConfigError(
            f"replicas: {requested} requested, but the Trainer would train on {have} replica(s): every local "
            "GPU, else the logical CPUs `imgpipe run --replicas` splits the CPU into before TensorFlow starts "
            "(on a machine with GPUs, leave --replicas out)"
        )


def run_fn(fn_args: FnArgs) -> None:
    """Train on the raw examples through the Transform graph; export the full serving model."""
    settings = dict(fn_args.custom_config or {})
    near_copies = image_ids.near_copy_sets(settings.pop(INGEST_REPORT_CONFIG, None))
    _check_replicas(settings.pop(REPLICAS_CONFIG, None))
    params = parse_custom_config(settings)
    tfo = tft.TFTransformOutput(fn_args.transform_graph_path)
    with data.explain_unmapped_labels():  # a label with no class fails the Trainer, by name
        result = train.train(
            fn_args.train_files,
            fn_args.eval_files,
            tfo,
            params,
            log_dir=os.path.join(fn_args.model_run_dir, "logs"),
            cache_dir=os.path.join(fn_args.model_run_dir, "feature_cache"),
            feature_store_dir=feature_store.store_dir(fn_args.model_run_dir)
            if params.feature_reuse
            else None,
            near_copies=near_copies,
        )
    warmup = [r.numpy() for r in data.raw_examples(fn_args.eval_files).take(WARMUP_RECORDS)]
    export.export_serving_model(
        result.model, tfo, result.class_names, fn_args.serving_model_dir, warmup_examples=warmup
    )
    lite = tflite.export_for_config(
        params,
        result.model,
        result.class_names,
        fn_args.serving_model_dir,
        fn_args.train_files,
        fn_args.eval_files,
    )
    # Which images it trained on, beside (not inside) the served folder: a later Evaluator
    # compares against this model only on eval images it did not see (trainer/image_ids.py).
    model_uri = image_ids.model_uri(fn_args.serving_model_dir)
    log.info(
        "recorded %d train image fingerprints for the Evaluator",
        image_ids.write(model_uri, fn_args.train_files),
    )
    extra = {"tflite": lite.to_dict()} if lite else None
    train.write_summary(result, os.path.join(fn_args.model_run_dir, SUMMARY_FILE), extra)
    if lite:
        lite.check()  # after the summary, so a failed run still records the agreement
