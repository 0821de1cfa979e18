"""create_pipeline(config): the imgpipe TFX pipeline definition.

Pure: it reads no files and no environment, so the same definition runs on
LocalDagRunner, Kubeflow Pipelines and Vertex AI; only the runner changes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

# TFX's modules directly, not `tfx.v1`: that package also imports its Google Cloud extensions
# (google-cloud-aiplatform), a third of a fresh process's import time (BENCHMARKS.md).
from tfx.components import BulkInferrer, ExampleValidator, StatisticsGen, Transform
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
from tfx.orchestration.data_types import RuntimeParameter
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import bulk_inferrer_pb2, example_gen_pb2, pusher_pb2, trainer_pb2
from tfx.types import Channel, standard_artifacts

from components.data_gate import DataGate
from components.evaluator import GateEvaluator
from components.example_gen import ImageExampleGen
from components.infra_validator import InfraValidator
from components.pusher import ServingPusher
from components.runtime_params import knob_values
from components.schema_gen import ContractSchemaGen
from components.trainer import RuntimeParamTrainer
from pipeline.beam import beam_pipeline_args
from pipeline.config import PipelineConfig
from serving.model_fingerprint import ROLLBACK_LOG
from trainer.config import REPLICAS_CONFIG
from trainer.features import DECODER_VERSION, LABEL_ORDER
from trainer.image_ids import INGEST_REPORT_FILE

PREPROCESSING_FN = "trainer.preprocessing.preprocessing_fn"
RUN_FN = "trainer.task.run_fn"
RESOLVER_ID = "latest_blessed_model_resolver"
DATA_GATE_ID = "DataGate"

# Component ids in execution order (the Resolver runs before the DataGate and the Evaluator).
COMPONENT_IDS = (
    "ImportExampleGen",
    "StatisticsGen",
    "SchemaGen",
    "ExampleValidator",
    RESOLVER_ID,
    DATA_GATE_ID,
    "Transform",
    "Trainer",
    "Evaluator",
    "InfraValidator",
    "Pusher",
)
# With `score_data` set: the unlabelled data and TFX's BulkInferrer, which scores it
# with the Trainer's model once the Evaluator has blessed it.
SCORING_IDS = ("ScoreExampleGen", "BulkInferrer")
SCORE_SPLIT = "unlabelled"


def trainer_custom_config(config: PipelineConfig) -> dict[str, Any]:
    """The training section, as run_fn parses it, with the image size resolved for the backbone.

    `feature_reuse` on (the default) is left out: features taken from the store are the ones the
    backbone gives (checked), so it does not change the model, and a home made before the setting
    existed keeps its cached Trainer. Off, it is passed (and keys the cache, as every setting).

    `replicas`, when set, is passed too (trainer.config.REPLICAS_CONFIG): the global batch is the
    batch size times the replicas, so a model trained on another count is another model; a run
    with `--replicas 2` after one without reused the cached model, trained on one."""
    settings = {**config.training.to_dict(), "image_size": config.effective_image_size()}
    if settings.get("feature_reuse") is True:
        del settings["feature_reuse"]
    if config.replicas:
        settings[REPLICAS_CONFIG] = config.replicas
    return settings


def create_pipeline(
    config: PipelineConfig,
    metadata_connection_config: Any | None = None,
    runtime_parameters: Mapping[str, RuntimeParameter] | None = None,
    weights_digest: str | None = None,
) -> Pipeline:
    """The pipeline for `config` (a validated PipelineConfig).

    weights_digest: the sha256 of a local weights file (imgpipe.orchestration.weights computes
    it): the Trainer is keyed by it, so a file changed at the same path is trained on again.

    runtime_parameters: optional RuntimeParameters for the knobs (Kubeflow/Vertex;
    see components/runtime_params.py); unset knobs take the config's values, as on
    LocalDagRunner.
    """
    knobs = knob_values((config.training, config.gate), runtime_parameters)
    image_size = config.effective_image_size()

    # The records' bytes are in the cache key, not only their sizes and times (components/example_gen.py).
    example_gen = ImageExampleGen(
        input_base=config.data_dir,
        input_config=example_gen_pb2.Input(
            splits=[
                example_gen_pb2.Input.Split(name="train", pattern="train/*"),
                example_gen_pb2.Input.Split(name="eval", pattern="eval/*"),
            ]
        ),
    ).with_id("ImportExampleGen")
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    # The schema is inferred from train only and states the data contract (the label's
    # domain is exactly the train classes), so ExampleValidator flags an eval class
    # train never saw (components/schema_gen.py).
    schema_gen = ContractSchemaGen(
        statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True, exclude_splits=["eval"]
    ).with_id("SchemaGen")
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    model_resolver = Resolver(
        strategy_class=LatestBlessedModelStrategy,
        model=Channel(type=standard_artifacts.Model),
        model_blessing=Channel(type=standard_artifacts.ModelBlessing),
    ).with_id(RESOLVER_ID)
    # Anomalies, an eval/train class mismatch, an empty split or a label set other than the
    # latest blessed model's fail the run here unless allow_anomalies; Transform and the
    # Trainer wait for it (components/data_gate.py).
    data_gate = DataGate(
        statistics=statistics_gen.outputs["statistics"],
        anomalies=example_validator.outputs["anomalies"],
        baseline_model=model_resolver.outputs["model"],
        allow_anomalies=config.gate.allow_anomalies,
        examples=example_gen.outputs["examples"],
        accept_label_change=config.gate.accept_label_change,
        ingest_report=os.path.join(config.data_dir, INGEST_REPORT_FILE),
    ).with_id(DATA_GATE_ID)
    # materialize=False: no float image tensors are written; the Trainer applies the
    # transform graph to the raw examples in its input function.
    # disable_statistics=True: Transform's own pre-/post-transform statistics would decode
    # and resize every image only to describe float pixels (2.5x the job's time per image,
    # BENCHMARKS.md); StatisticsGen already covers the raw data. The Beam job is then the
    # analysis the graph needs: the label vocabulary.
    transform = Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config={
            "backbone": config.training.backbone,
            "image_size": image_size,
            "max_image_pixels": config.training.max_image_pixels,
            "decoder": DECODER_VERSION,
            "label_order": LABEL_ORDER,
        },
        materialize=False,
        disable_statistics=True,
    )
    transform.add_upstream_node(data_gate)
    trainer = RuntimeParamTrainer(
        run_fn=RUN_FN,
        examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=trainer_pb2.TrainArgs(splits=["train"]),
        eval_args=trainer_pb2.EvalArgs(splits=["eval"]),
        custom_config=trainer_custom_config(config),
        knobs=knobs,
        weights_digest=weights_digest,
        ingest_report=os.path.join(config.data_dir, INGEST_REPORT_FILE),
    ).with_id("Trainer")
    trainer.add_upstream_node(data_gate)
    evaluator = GateEvaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        data_report=data_gate.outputs["report"],
        gate=config.gate,
        example_splits=["eval"],
        knobs=knobs,
        rollback_log=os.path.join(config.home, ROLLBACK_LOG),
        image_size=image_size,
        ingest_report=os.path.join(config.data_dir, INGEST_REPORT_FILE),
    ).with_id("Evaluator")
    # Pre-push validation: the blessed candidate, served by a real model server, must answer
    # every signature like it does in-process (components/infra_validator.py).
    infra_validator = InfraValidator(
        model=trainer.outputs["model"],
        examples=example_gen.outputs["examples"],
        model_blessing=evaluator.outputs["blessing"],
        model_name=config.model_name,
        config=config.prepush,
        serving_model_dir=config.model_serving_dir,
    ).with_id("InfraValidator")
    # Skips a model byte-identical to the newest served version (components/pusher.py).
    pusher = ServingPusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        infra_blessing=infra_validator.outputs["blessing"],
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=config.model_serving_dir)
        ),
    ).with_id("Pusher")
    components = [
        example_gen,
        statistics_gen,
        schema_gen,
        example_validator,
        model_resolver,
        data_gate,
        transform,
        trainer,
        evaluator,
        infra_validator,
        pusher,
    ]
    if config.score_data:
        components += bulk_inference(
            config.score_data, trainer.outputs["model"], evaluator.outputs["blessing"], after=pusher
        )
    return Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=components,
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args(config.beam),
    )


def bulk_inference(score_data: str, model: Any, blessing: Any, after: Any = None) -> list[Any]:
    """ScoreExampleGen (the TFRecords in `score_data`, one split) and BulkInferrer on them.

    BulkInferrer scores with the serving_default signature (serialized
    tf.Examples with an `image`), only when `blessing` says the model passed
    the gate; its output is PredictionLogs (artifact `inference_result`).
    It runs after `after` (the Pusher): scoring data that fails (an undecodable
    image) fails the run after the model is pushed, not before.
    """
    # One input split would be hashed into train/eval (2:1) by default; one bucket keeps every
    # example in the one split BulkInferrer reads.
    examples = ImageExampleGen(
        input_base=score_data,
        input_config=example_gen_pb2.Input(
            splits=[example_gen_pb2.Input.Split(name=SCORE_SPLIT, pattern="*")]
        ),
        output_config=example_gen_pb2.Output(
            split_config=example_gen_pb2.SplitConfig(
                splits=[example_gen_pb2.SplitConfig.Split(name=SCORE_SPLIT, hash_buckets=1)]
            )
        ),
    ).with_id(SCORING_IDS[0])
    inferrer = BulkInferrer(
        examples=examples.outputs["examples"],
        model=model,
        model_blessing=blessing,
        data_spec=bulk_inferrer_pb2.DataSpec(example_splits=[SCORE_SPLIT]),
        model_spec=bulk_inferrer_pb2.ModelSpec(model_signature_name=["serving_default"]),
    ).with_id(SCORING_IDS[1])
    if after is not None:
        inferrer.add_upstream_node(after)
    return [examples, inferrer]
