"""create_pipeline(config): the imgpipe TFX pipeline definition.

Pure: it reads no files and no environment, so the same definition runs on
LocalDagRunner, Kubeflow Pipelines and Vertex AI; only the runner changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

from components.runtime_params import RuntimeParamEvaluator, RuntimeParamTrainer, knob_values
from pipeline.beam import beam_pipeline_args
from pipeline.config import PipelineConfig
from trainer.features import LABEL_KEY, LABEL_XF

PREPROCESSING_FN = "trainer.preprocessing.preprocessing_fn"
RUN_FN = "trainer.task.run_fn"
RESOLVER_ID = "latest_blessed_model_resolver"
ACCURACY_METRIC = "sparse_categorical_accuracy"

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


def eval_config(config: PipelineConfig) -> tfma.EvalConfig:
    """Accuracy on the raw eval split, gated by an absolute floor and no regression.

    The model's `scores` output is per class for both head types (the sigmoid
    unit is expanded to [1-p, p]), so sparse categorical accuracy is the
    accuracy of either head. Slices: overall and per class (raw `label`).
    """
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name="serving_default",
                prediction_key="scores",
                label_key=LABEL_XF,
                preprocessing_function_names=["transform_features"],
            )
        ],
        slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[LABEL_KEY])],
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(class_name="ExampleCount"),
                    tfma.MetricConfig(
                        class_name="SparseCategoricalAccuracy",
                        # Gate on the overall slice only; per-class slices are reported.
                        per_slice_thresholds=[
                            tfma.PerSliceMetricThreshold(
                                slicing_specs=[tfma.SlicingSpec()],
                                threshold=tfma.MetricThreshold(
                                    value_threshold=tfma.GenericValueThreshold(
                                        lower_bound={"value": config.min_accuracy}
                                    ),
                                    change_threshold=tfma.GenericChangeThreshold(
                                        direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                                        # A tiny epsilon so an equal score is not a regression.
                                        absolute={"value": -config.max_regression - 1e-10},
                                    ),
                                ),
                            )
                        ],
                    ),
                ]
            )
        ],
    )


def trainer_custom_config(config: PipelineConfig) -> dict[str, Any]:
    """What run_fn needs, with the image size resolved for the backbone."""
    from trainer.train import TrainParams

    keys = {f for f in TrainParams.__dataclass_fields__}
    cfg = {k: v for k, v in config.to_dict().items() if k in keys}
    cfg["image_size"] = config.effective_image_size()
    return cfg


def create_pipeline(
    config: PipelineConfig,
    metadata_connection_config: Any | None = None,
    runtime_parameters: Mapping[str, tfx.dsl.experimental.RuntimeParameter] | None = None,
) -> tfx.dsl.Pipeline:
    """The pipeline for `config` (call config.validate() first).

    runtime_parameters: optional RuntimeParameters for epochs, learning_rate and
    min_accuracy (Kubeflow/Vertex; see pipeline/kubeflow.py); unset knobs take
    the config's values, as on LocalDagRunner.
    """
    knobs = knob_values(config, runtime_parameters)
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
        custom_config={"backbone": config.backbone, "image_size": image_size},
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
        epochs=knobs["epochs"],
        learning_rate=knobs["learning_rate"],
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
        eval_config=eval_config(config),
        example_splits=["eval"],
        min_accuracy=knobs["min_accuracy"],
    ).with_id("Evaluator")
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=config.model_serving_dir)
        ),
    )
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=[
            example_gen,
            statistics_gen,
            schema_gen,
            example_validator,
            transform,
            trainer,
            model_resolver,
            evaluator,
            pusher,
        ],
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args(config),
    )
