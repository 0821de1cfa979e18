"""Transform's analysis outside TFX: preprocessing_fn's analyzers on in-memory examples.

`analyze_transform(items, out_dir)` runs the same preprocessing_fn the Transform
component runs (tft_beam on the pipeline's local Beam runner, in process) over (encoded image,
label) pairs and writes a TFTransformOutput: the label vocabulary and the
graph. The serving demo model, benchmarks and tests use it to get the pipeline's
exact preprocessing without running the pipeline.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable

import apache_beam as beam
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

from pipeline.beam import LOCAL_RUNNER
from trainer.features import DEFAULT_MAX_PIXELS, IMAGE_KEY, LABEL_KEY
from trainer.preprocessing import preprocessing_fn


def raw_feature_spec(fixed_shape: tuple[int, ...] = (1,)) -> dict[str, tf.io.FixedLenFeature]:
    """The raw tf.Example features as ingest writes them (image and label bytes)."""
    return {
        IMAGE_KEY: tf.io.FixedLenFeature(list(fixed_shape), tf.string),
        LABEL_KEY: tf.io.FixedLenFeature(list(fixed_shape), tf.string),
    }


def analyze_transform(
    items: Iterable[tuple[bytes, str]],
    out_dir: str,
    backbone: str = "MobileNetV2",
    image_size: int = 32,
    max_image_pixels: int = DEFAULT_MAX_PIXELS,
) -> tft.TFTransformOutput:
    """Analyze `items` with preprocessing_fn and write the transform output to `out_dir`.

    Labels are encoded as UTF-8 and passed on unchanged, as ingest writes them.
    """
    spec = raw_feature_spec()
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    rows = [{IMAGE_KEY: [img], LABEL_KEY: [lab.encode("utf-8")]} for img, lab in items]
    cfg = {"backbone": backbone, "image_size": image_size, "max_image_pixels": max_image_pixels}
    with tempfile.TemporaryDirectory(prefix="imgpipe-tft-") as temp_dir:
        # An explicit pipeline on the project's local runner: for a bare `(rows, metadata) | ...`
        # Beam makes one from sys.argv, the calling program's own arguments taken as its options.
        with beam.Pipeline(argv=[f"--runner={LOCAL_RUNNER}"]) as p:
            with tft_beam.Context(temp_dir=temp_dir, force_tf_compat_v1=False):
                examples = p | "Rows" >> beam.Create(rows)
                transform_fn = (examples, metadata) | tft_beam.AnalyzeDataset(
                    lambda inputs: preprocessing_fn(inputs, cfg)
                )
                _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
    metadata_io.write_metadata(metadata, os.path.join(out_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    return tft.TFTransformOutput(out_dir)
