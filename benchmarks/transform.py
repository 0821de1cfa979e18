"""Transform throughput and storage: the Transform component's Beam job vs a plain tf.data loop.

Input: scikit-learn's digits as PNGs, ingested (`imgpipe ingest`) and read by
ImportExampleGen -> StatisticsGen -> SchemaGen in a small LocalDagRunner pipeline
(made once and re-used). Then, interleaved on the same images and the same cores:

- tf.data: decode + resize + backbone preprocess_input in a plain map (AUTOTUNE),
  iterated to the end: the work a plain Keras input pipeline does.
- TFX Transform executor as the pipeline configures it (materialize=False,
  disable_statistics=True, DirectRunner in memory, 1 worker): the component's
  real job, the analysis the graph needs (label vocabulary); no pixel work.
- the same executor with statistics on (TFX's default, and this project's
  setting before): pre- and post-transform statistics make it transform every
  image only to describe float pixels.
- tft_beam AnalyzeAndTransformDataset over TFXIO with the project's
  preprocessing_fn: analysis + transform of every image, output counted, not
  written (what materialize=True would do, minus the write).
- imgpipe's input function (trainer.data.make_dataset: raw examples through the
  exported Transform graph in tf.data), iterated to the end: where the pipeline
  does the per-image work now, once per epoch (or once per run with the
  feature cache).

Each job runs on the images once and on their files copied 16x, so the table gives
Each job runs on the images once and on their files copied 4x, so the table gives
whole-job images/s (Beam start-up included), the marginal images/s between the two
sizes, and the fixed start-up seconds that follow from them. A second table gives bytes per image: what ImportExampleGen stores (encoded
images) vs what materialised float32 images would take (S*S*3*4 bytes).

    python -m benchmarks.transform             # 64px output, 3 rounds
    python -m benchmarks.transform --quick
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import sys
import time

from benchmarks import common

BACKBONE = "MobileNetV2"


# ---------------------------------------------------------------------------------------
# Data: an ingested image tree and ImportExampleGen's output for it


def ingested(workdir: str, name: str, write_images) -> str:
    """Ingest a class-per-folder tree made by `write_images(dir)` once; return the TFRecord dir."""
    from imgpipe import ingest

    records = os.path.join(workdir, name, "records")
    if not os.path.isdir(os.path.join(records, "train")):
        images = os.path.join(workdir, name, "images")
        write_images(images)
        ingest.ingest(images, records, eval_fraction=0.2, seed=42, overwrite=True)
    return records


def example_gen(records: str, home: str) -> tuple[str, str]:
    """Run ImportExampleGen -> StatisticsGen -> SchemaGen once; (examples uri, schema uri)."""
    done = os.path.join(home, "outputs.json")
    if os.path.exists(done):
        with open(done, encoding="utf-8") as f:
            out = json.load(f)
        return out["examples"], out["schema"]
    from tfx import v1 as tfx

    gen = tfx.components.ImportExampleGen(
        input_base=records,
        input_config=tfx.proto.Input(
            splits=[
                tfx.proto.Input.Split(name="train", pattern="train/*"),
                tfx.proto.Input.Split(name="eval", pattern="eval/*"),
            ]
        ),
    )
    stats = tfx.components.StatisticsGen(examples=gen.outputs["examples"])
    schema = tfx.components.SchemaGen(statistics=stats.outputs["statistics"], infer_feature_shape=True)
    root = os.path.join(home, "root")
    tfx.orchestration.LocalDagRunner().run(
        tfx.dsl.Pipeline(
            pipeline_name="bench_examplegen",
            pipeline_root=root,
            components=[gen, stats, schema],
            metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
                os.path.join(home, "metadata.sqlite")
            ),
            enable_cache=False,
        )
    )
    [examples] = glob.glob(os.path.join(root, "ImportExampleGen", "examples", "*"))
    [schema_uri] = glob.glob(os.path.join(root, "SchemaGen", "schema", "*"))
    with open(done, "w", encoding="utf-8") as f:
        json.dump({"examples": examples, "schema": schema_uri}, f)
    return examples, schema_uri


def examples_files(examples_uri: str) -> list[str]:
    return sorted(glob.glob(os.path.join(examples_uri, "Split-*", "*")))


def replicated(examples_uri: str, copies: int) -> str:
    """An Examples directory holding every split file of `examples_uri` `copies` times."""
    out = f"{examples_uri}_x{copies}"
    if not os.path.isdir(out):
        for f in examples_files(examples_uri):
            split_dir = os.path.join(out, os.path.basename(os.path.dirname(f)))
            os.makedirs(split_dir, exist_ok=True)
            for c in range(copies):
                shutil.copyfile(f, os.path.join(split_dir, f"copy{c}-{os.path.basename(f)}"))
    return out


def count_records(files) -> int:
    from trainer import data

    return data.count_examples(list(files))


# ---------------------------------------------------------------------------------------
# The variants


def tf_data_loop(files, image_size: int, batch: int = 32) -> float:
    """Decode + resize + preprocess_input every image with tf.data; wall seconds."""
    import tensorflow as tf

    from trainer import backbones

    preprocess = backbones.get(BACKBONE).preprocess_input
    spec = {"image": tf.io.FixedLenFeature([], tf.string)}

    def one(record):
        raw = tf.io.parse_single_example(record, spec)["image"]
        image = tf.io.decode_image(raw, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        image = tf.image.resize(tf.cast(image, tf.float32), [image_size] * 2, antialias=True)
        return preprocess(image)

    t0 = time.perf_counter()
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
    ds = ds.map(one, num_parallel_calls=tf.data.AUTOTUNE).batch(batch)
    for _ in ds.prefetch(tf.data.AUTOTUNE):
        pass
    return time.perf_counter() - t0


def tft_output(graph_dir: str):
    import tensorflow_transform as tft

    return tft.TFTransformOutput(graph_dir)


def input_fn_loop(files, tfo, batch: int = 32) -> float:
    """imgpipe's input function over every image (parse, Transform graph, batch); wall seconds."""
    from trainer import data

    t0 = time.perf_counter()
    spec = data.InputSpec(batch_size=batch, num_classes=len(data.class_names(tfo)))
    for _ in data.make_dataset(list(files), tfo, spec):
        pass
    return time.perf_counter() - t0


def beam_args() -> list[str]:
    """The pipeline's own Beam arguments for its default (direct) runner."""
    from pipeline.beam import BeamConfig, beam_pipeline_args

    return beam_pipeline_args(BeamConfig())


def transform_executor(
    examples_uri: str, schema_uri: str, out: str, image_size: int, statistics: bool
) -> float:
    """TFX's Transform executor with the pipeline's settings (materialize=False); wall seconds."""
    from tfx.components.transform import executor as tx
    from tfx.dsl.components.base import base_beam_executor
    from tfx.types import artifact_utils, standard_artifacts
    from tfx.types import standard_component_specs as sc

    from pipeline.pipeline import PREPROCESSING_FN

    shutil.rmtree(out, ignore_errors=True)
    examples = standard_artifacts.Examples()
    examples.uri = examples_uri
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    schema = standard_artifacts.Schema()
    schema.uri = schema_uri

    def art(cls, name):
        a = cls()
        a.uri = os.path.join(out, name)
        os.makedirs(a.uri, exist_ok=True)
        return a

    outputs = {
        sc.TRANSFORM_GRAPH_KEY: [art(standard_artifacts.TransformGraph, "graph")],
        sc.UPDATED_ANALYZER_CACHE_KEY: [art(standard_artifacts.TransformCache, "cache")],
    }
    if statistics:
        outputs.update(
            {
                sc.PRE_TRANSFORM_SCHEMA_KEY: [art(standard_artifacts.Schema, "pre_schema")],
                sc.PRE_TRANSFORM_STATS_KEY: [art(standard_artifacts.ExampleStatistics, "pre_stats")],
                sc.POST_TRANSFORM_SCHEMA_KEY: [art(standard_artifacts.Schema, "post_schema")],
                sc.POST_TRANSFORM_STATS_KEY: [art(standard_artifacts.ExampleStatistics, "post_stats")],
                sc.POST_TRANSFORM_ANOMALIES_KEY: [art(standard_artifacts.ExampleAnomalies, "post_anomalies")],
            }
        )
    props = {
        sc.PREPROCESSING_FN_KEY: PREPROCESSING_FN,
        sc.CUSTOM_CONFIG_KEY: json.dumps({"backbone": BACKBONE, "image_size": image_size}),
        sc.SPLITS_CONFIG_KEY: None,
        sc.FORCE_TF_COMPAT_V1_KEY: 0,
        sc.DISABLE_STATISTICS_KEY: int(not statistics),
    }
    context = base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=beam_args(),
        tmp_dir=os.path.join(out, "beam_tmp"),
        unique_id="bench",
    )
    t0 = time.perf_counter()
    tx.Executor(context).Do({sc.EXAMPLES_KEY: [examples], sc.SCHEMA_KEY: [schema]}, outputs, props)
    return time.perf_counter() - t0


def analyze_and_transform(files, schema_uri: str, image_size: int, tmp: str) -> tuple[float, int]:
    """tft_beam.AnalyzeAndTransformDataset over TFXIO; (wall seconds, images transformed)."""
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx.utils import io_utils
    from tfx_bsl.public import tfxio

    from trainer.preprocessing import preprocessing_fn

    schema = io_utils.parse_pbtxt_file(os.path.join(schema_uri, "schema.pbtxt"), schema_pb2.Schema())
    source = tfxio.TFExampleRecord(file_pattern=list(files), schema=schema)
    cfg = {"backbone": BACKBONE, "image_size": image_size}
    shutil.rmtree(tmp, ignore_errors=True)
    counted = os.path.join(tmp, "count")
    t0 = time.perf_counter()
    context = tft_beam.Context(temp_dir=os.path.join(tmp, "tft"), force_tf_compat_v1=False)
    with beam.Pipeline(options=PipelineOptions(beam_args())) as p, context:
        raw = p | "Read" >> source.BeamSource()
        (transformed, _), _ = (
            raw,
            source.TensorAdapterConfig(),
        ) | tft_beam.AnalyzeAndTransformDataset(
            lambda inputs: preprocessing_fn(inputs, cfg), output_record_batches=True
        )
        _ = (
            transformed
            | "Rows" >> beam.Map(lambda batch_and_keys: batch_and_keys[0].num_rows)
            | "Sum" >> beam.CombineGlobally(sum)
            | "Write" >> beam.io.WriteToText(counted, shard_name_template="")
        )
    seconds = time.perf_counter() - t0
    with open(counted, encoding="utf-8") as f:
        n = int(f.read().strip())
    return seconds, n


# ---------------------------------------------------------------------------------------
# Bytes per image


def storage_rows(workdir: str, quick: bool) -> list[list]:
    """Bytes per example as ImportExampleGen stores them vs materialised float32 images."""
    from imgpipe.demo import data as datasets

    def photo_crops(out_dir: str, size: int = 224, per_photo: int = 24) -> None:
        """Random 224px JPEG crops of scikit-learn's two photos: camera-like images."""
        import numpy as np
        from PIL import Image
        from sklearn.datasets import load_sample_images

        rng = np.random.RandomState(0)
        for photo, pixels in zip(("china", "flower"), load_sample_images().images, strict=True):
            os.makedirs(os.path.join(out_dir, photo), exist_ok=True)
            h, w, _ = pixels.shape
            for i in range(per_photo):
                y, x = rng.randint(0, h - size), rng.randint(0, w - size)
                Image.fromarray(pixels[y : y + size, x : x + size]).save(
                    os.path.join(out_dir, photo, f"{photo}_{i:03d}.jpg"), quality=90
                )

    limit = 20 if quick else 60
    cases = [
        (
            "digits PNG",
            32,
            lambda d: datasets.write_digits_tree(d, size=32, limit_per_class=limit),
        ),
        (
            "digits PNG",
            224,
            lambda d: datasets.write_digits_tree(d, size=224, limit_per_class=limit),
        ),
        ("photo crops JPEG q90", 224, photo_crops),
    ]
    rows = []
    for label, size, writer in cases:
        name = f"storage_{label.split()[0]}_{size}_{limit}"
        records = ingested(workdir, name, writer)
        examples, _ = example_gen(records, os.path.join(workdir, name, "home"))
        files = examples_files(examples)
        n = count_records(files)
        stored = sum(os.path.getsize(f) for f in files) / n
        encoded = _mean_encoded_bytes(files)
        floats = size * size * 3 * 4
        rows.append([label, size, n, encoded, stored, floats, f"{floats / stored:.0f}x"])
    return rows


def _mean_encoded_bytes(files) -> float:
    import tensorflow as tf

    spec = {"image": tf.io.FixedLenFeature([], tf.string)}
    sizes = [
        len(tf.io.parse_single_example(r, spec)["image"].numpy())
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP")
    ]
    return sum(sizes) / len(sizes)


# ---------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=64, help="Transform's output size")
    p.add_argument("--per-class", type=int, default=None, help="images per digit (default all)")
    p.add_argument("--copies", type=int, default=None, help="larger size = this many copies (16)")
    args = p.parse_args(argv)
    common.quiet()
    runs = common.repeats(args)
    size = args.image_size
    per_class = args.per_class or (40 if args.quick else None)
    head = common.header(f"Transform: images/s, {BACKBONE} preprocessing to {size}px")

    from imgpipe.demo import data as datasets

    name = f"transform_digits64_{per_class or 'all'}"
    records = ingested(
        args.workdir,
        name,
        lambda d: datasets.write_digits_tree(d, size=64, limit_per_class=per_class),
    )
    examples, schema = example_gen(records, os.path.join(args.workdir, name, "home"))
    copies = args.copies or (2 if args.quick else 16)
    sizes = {1: examples, copies: replicated(examples, copies)}
    n = {k: count_records(examples_files(uri)) for k, uri in sizes.items()}
    common.say(f"[bench] {n} images in {sizes}")
    scratch = os.path.join(args.workdir, name, "scratch")

    def at(uri: str, k: int) -> float:
        seconds, count = analyze_and_transform(examples_files(uri), schema, size, os.path.join(scratch, "at"))
        assert count == n[k], (count, n[k])
        return seconds

    # The Transform graph the input-function row applies (made once, untimed).
    graph_out = os.path.join(scratch, "graph_for_input")
    transform_executor(examples, schema, graph_out, size, False)
    tfo = tft_output(os.path.join(graph_out, "graph"))

    jobs = {
        "tf.data decode+resize+preprocess loop": lambda uri, k: tf_data_loop(examples_files(uri), size),
        "TFX Transform executor, as configured (materialize=False, disable_statistics=True)": (
            lambda uri, k: transform_executor(uri, schema, os.path.join(scratch, "tx"), size, False)
        ),
        "TFX Transform executor with statistics on (TFX default)": (
            lambda uri, k: transform_executor(uri, schema, os.path.join(scratch, "tx"), size, True)
        ),
        "tft_beam AnalyzeAndTransformDataset over TFXIO (every image transformed)": at,
        "imgpipe input function: Transform graph in tf.data (per epoch)": (
            lambda uri, k: input_fn_loop(examples_files(uri), tfo)
        ),
    }
    variants = {
        (job, k): (lambda r, f=f, uri=uri, k=k: f(uri, k))
        for job, f in jobs.items()
        for k, uri in sizes.items()
    }
    res = common.interleaved(variants, runs, say=common.say)
    secs = {key: common.median(v) for key, v in res.items()}
    big = max(sizes)
    dn = n[big] - n[1]

    def marginal(job: str) -> float:
        """Images/s between the two sizes; NaN when the job did not measurably grow (< 5%)."""
        grew = secs[(job, big)] - secs[(job, 1)]
        return dn / grew if grew > 0.05 * secs[(job, 1)] else float("nan")

    base_job = next(iter(jobs))
    base_total, base_marginal = n[big] / secs[(base_job, big)], marginal(base_job)
    rows = []
    for job in jobs:
        total_rate, m = n[big] / secs[(job, big)], marginal(job)
        fixed = secs[(job, 1)] if math.isnan(m) else max(0.0, secs[(job, 1)] - n[1] / m)
        rows.append(
            [
                job,
                secs[(job, 1)],
                secs[(job, big)],
                total_rate,
                f"{total_rate / base_total:.2f}x",
                m,
                "n/a" if math.isnan(m) else f"{m / base_marginal:.2f}x",
                fixed,
            ]
        )
    common.emit(head)
    common.emit(
        f"Digit PNGs (64px source images, train + eval splits as ImportExampleGen wrote them) -> "
        f"float32 {size}x{size}x3. Two sizes: the {n[1]} images once, and their split files "
        f"copied {big}x ({n[big]} images), so Beam's fixed start-up cost separates from the "
        f"per-image rate: marginal images/s = {dn} / (t_{big}x - t_1x); fixed s = t_1x - "
        f"{n[1]} / marginal (n/a: the job took no measurably longer at {big}x). Beam: {' '.join(beam_args())} (the pipeline's default runner). "
        f"Median of {runs} interleaved round(s).\n"
    )
    common.emit(
        common.table(
            [
                "job",
                f"s at {n[1]}",
                f"s at {n[big]}",
                f"images/s at {n[big]}",
                "vs tf.data",
                "marginal images/s",
                "vs tf.data",
                "fixed s",
            ],
            rows,
        )
    )
    common.emit()
    common.emit("Bytes per image: ImportExampleGen output vs materialised float32 images\n")
    common.emit(
        common.table(
            [
                "images",
                "S (px)",
                "examples",
                "encoded image bytes/example",
                "ImportExampleGen bytes/example (gzip TFRecord)",
                "float32 S*S*3*4 bytes",
                "float32 / stored",
            ],
            storage_rows(args.workdir, args.quick),
        )
    )
    common.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
