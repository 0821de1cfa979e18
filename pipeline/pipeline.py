"""create_pipeline(config): the imgpipe TFX pipeline definition.

Pure: it reads no files and no environment, so the same definition runs on
LocalDagRunner, Kubeflow Pipelines and Vertex AI; only the runner changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tfx import v1 as tfx

from components.evaluator import RuntimeParamEvaluator, eval_config
from components.runtime_params import knob_values
from components.trainer import RuntimeParamTrainer
from pipeline.beam import beam_pipeline_args
from pipeline.config import PipelineConfig

PREPROCESSING_FN = "trainer.preprocessing.preprocessing_fn"
RUN_FN = "trainer.task.run_fn"
RESOLVER_ID = "latest_blessed_model_resolver"

# Component ids in execution order (the Resolver runs before the Evaluator).
COMPONENT_IDS = (
    "ImportExampleGen",
    "StatisticsGen",
    "SchemaGen",
    "ExampleValidator",
    "Transform",
    "Trainer",
    RESOLVER_ID,
    "Evaluator",
    "Pusher",
)
# With `score_data` set: the unlabelled data and TFX's BulkInferrer, which scores it
# with the Trainer's model once the Evaluator has blessed it.
SCORING_IDS = ("ScoreExampleGen", "BulkInferrer")
SCORE_SPLIT = "unlabelled"


def trainer_custom_config(config: PipelineConfig) -> dict[str, Any]:
    """The training section, as run_fn parses it, with the image size resolved for the backbone."""
    return {**config.training.to_dict(), "image_size": config.effective_image_size()}


def create_pipeline(
    config: PipelineConfig,
    metadata_connection_config: Any | None = None,
    runtime_parameters: Mapping[str, tfx.dsl.experimental.RuntimeParameter] | None = None,
) -> tfx.dsl.Pipeline:
    """The pipeline for `config` (a validated PipelineConfig).

    runtime_parameters: optional RuntimeParameters for the knobs (Kubeflow/Vertex;
    see components/runtime_params.py); unset knobs take the config's values, as on
    LocalDagRunner.
    """
    knobs = knob_values((config.training, config.gate), runtime_parameters)
    image_size = config.effective_image_size()

    example_gen = tfx.components.ImportExampleGen(
        input_base=config.data_dir,
        input_config=tfx.proto.Input(
            splits=[
                tfx.proto.Input.Split(name="train", pattern="train/*"),
                tfx.proto.Input.Split(name="eval", pattern="eval/*"),
            ]
        ),
    )
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True
    )
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    # materialize=False: no float image tensors are written; the Trainer applies the
    # transform graph to the raw examples in its input function.
    # disable_statistics=True: Transform's own pre-/post-transform statistics would decode
    # and resize every image only to describe float pixels (2.5x the job's time per image,
    # BENCHMARKS.md); StatisticsGen already covers the raw data. The Beam job is then the
    # analysis the graph needs: the label vocabulary.
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config={
            "backbone": config.training.backbone,
            "image_size": image_size,
            "max_image_pixels": config.training.max_image_pixels,
        },
        materialize=False,
        disable_statistics=True,
    )
    trainer = RuntimeParamTrainer(
        run_fn=RUN_FN,
        examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config=trainer_custom_config(config),
        knobs=knobs,
    ).with_id("Trainer")
    model_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id(RESOLVER_ID)
    evaluator = RuntimeParamEvaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        eval_config=eval_config(config.gate),
        example_splits=["eval"],
        knobs=knobs,
    ).with_id("Evaluator")
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=config.model_serving_dir)
        ),
    )
    components = [
        example_gen,
        statistics_gen,
        schema_gen,
        example_validator,
        transform,
        trainer,
        model_resolver,
        evaluator,
        pusher,
    ]
    if config.score_data:
        components += bulk_inference(
            config.score_data, trainer.outputs["model"], evaluator.outputs["blessing"]
        )
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=components,
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args(config.beam),
    )


def bulk_inference(score_data: str, model: Any, blessing: Any) -> list[Any]:
    """ScoreExampleGen (the TFRecords in `score_data`, one split) and BulkInferrer on them.

    BulkInferrer scores with the serving_default signature (serialized
    tf.Examples with an `image`), only when `blessing` says the model passed
    the gate; its output is PredictionLogs (artifact `inference_result`).
    """
    examples = tfx.components.ImportExampleGen(
        input_base=score_data,
        input_config=tfx.proto.Input(splits=[tfx.proto.Input.Split(name=SCORE_SPLIT, pattern="*")]),
    ).with_id(SCORING_IDS[0])
    inferrer = tfx.components.BulkInferrer(
        examples=examples.outputs["examples"],
        model=model,
        model_blessing=blessing,
        data_spec=tfx.proto.DataSpec(example_splits=[SCORE_SPLIT]),
        model_spec=tfx.proto.ModelSpec(model_signature_name=["serving_default"]),
    ).with_id(SCORING_IDS[1])
    return [examples, inferrer]
