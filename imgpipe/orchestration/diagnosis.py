"""What a failed component's error does not say: the records or files behind it.

A component that fails on the data names no record: ExampleGen on a damaged TFRecord file
gives a hex dump, Transform, the Trainer or the Evaluator on an image its decoder refuses
give TensorFlow's text. ``explain`` looks for the culprits (damaged files; records whose
image the model's own decoder refuses, at most ``MAX_NAMED``) and lists them, for
`imgpipe run` (orchestration/local.py), the Airflow DAG's tasks (orchestration/airflow.py) and
the steps of a compiled Kubeflow / Vertex AI pipeline (orchestration/kfp_step.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from imgpipe.ingest import SPLITS
from imgpipe.ingest.contract import damaged_tfrecord_files, records_off_contract, undecodable_images
from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)


def explain(config: PipelineConfig, component: str | None, error: str) -> str:
    """Lines to add to the message of `component`'s failure with text `error` ("" when there is
    nothing to add): each heading on a line of its own, then what it lists, indented."""
    from pipeline.pipeline import SCORING_IDS  # loaded by the run (or the task) already

    message = ""
    lowered = error.lower()
    metadata_lost = any(marker in lowered for marker in _METADATA_LOST)
    if metadata_lost and config.metadata_target is None and not os.path.isdir(config.home):
        # Its SQLite store went with it: the store was not "unreachable", and no next run repairs it.
        message += (
            f"\nthe home {config.home} was deleted while {component or 'the pipeline'} ran, its ML Metadata "
            "store and every artifact with it: nothing of this run or the earlier ones is left there. The "
            "next run starts a new home (the serving dir's versions stay)"
        )
    elif metadata_lost:
        # TFX's text names neither the store nor what it means for the run.
        message += (
            f"\nML Metadata at {config.metadata_location} could not be reached while "
            f"{component or 'the pipeline'} ran (its server stopped or restarted, the network failed, "
            "or its disk is full): what the component did was not recorded. The next run marks it FAILED "
            "and runs it again"
        )
    inputs = {"ImportExampleGen": (config.data_dir, SPLITS), SCORING_IDS[0]: (config.score_data, ("",))}
    if component in inputs and inputs[component][0]:
        message += _explained(
            lambda: damaged_tfrecord_files(*inputs[component]),
            "damaged TFRecord files (write them again, e.g. `imgpipe ingest`)",
        )
    if (
        config.data_dir
        and component not in SCORING_IDS
        and any(marker in lowered for marker in _PARSE_MARKERS)
    ):
        # A record further in than the first (the one a run checks) with two labels, a label of
        # numbers, no image: TensorFlow's or Beam's text names the feature, not the record.
        log.info(
            "looking for the records that are not an Example of one image and one label (reads every record)"
        )
        message += _explained(
            lambda: records_off_contract(config.data_dir, limit=MAX_NAMED),
            "records that are not an Example of one 'image' and one 'label' (bytes each; write them "
            "again, e.g. `imgpipe ingest`)",
        )
    if component in _DECODING and config.data_dir and any(m in lowered for m in _DECODE_MARKERS):
        found = _explained(
            lambda: _undecodable_records(config, ("eval",) if component == "Evaluator" else SPLITS),
            "records whose image the model cannot decode (remove or re-encode them; `imgpipe ingest` "
            "decodes every image before writing it)",
        )
        message += found
        if _OVER_LIMIT in found:
            limit = config.training.max_image_pixels
            message += (
                f"\nimages over max_image_pixels ({limit}) are among them: if they are whole images (`imgpipe "
                f"ingest --max-pixels` above {limit} took them), pass --max-image-pixels with a higher limit"
            )
    if component == SCORING_IDS[1] and config.score_data:
        message += _explained(
            lambda: undecodable_images(config.score_data),
            "records of score_data the model cannot read (remove or re-encode them; scoring runs "
            "after the Pusher, so they do not hold back a push)",
        )
    return message


# ML Metadata's texts when its connection is gone (PostgreSQL through libpq, or SQLite's file).
_METADATA_LOST = (
    "failed to establish connection to metadata storage",
    "unable to open database file",  # SQLite's, its file gone (with the home)
    "connection pointer is null",
    "server closed the connection unexpectedly",
    "could not connect to server",
)


def log_failure(config: Callable[[], PipelineConfig], component: str, error: BaseException) -> str:
    """Log what `explain` finds behind `component`'s failure `error`, as one error record
    ("<component> failed: <type>" and the lines), for a task or step whose own error is raised
    after it; returns those lines. The config is built by `config` only now. Nothing here raises:
    a failure of the diagnosis itself is logged as a warning (the task's error stays the one
    that is raised)."""
    try:
        found = explain(config(), component, f"{type(error).__name__}: {error}")
    except Exception as lookup:  # noqa: BLE001
        log.warning("%s: no diagnosis (%s)", component, lookup)
        return ""
    if found:
        log.error("%s failed: %s%s", component, type(error).__name__, found)
    return found


# Components that decode the data's images, and what their errors say when one cannot be
# decoded (TensorFlow's decoders, and trainer/preprocessing.py's checks before decoding).
_DECODING = ("Transform", "Trainer", "Evaluator")
_DECODE_MARKERS = (
    "decodeimage",
    "decode_image",
    "decode_jpeg",
    "decode_png",
    "decode_gif",
    "decode_bmp",
    "max_image_pixels",
    "bmp_palette",
    "unknown image file format",
    "image header says",
    "palette (indexed-colour) bmp",
)
MAX_NAMED = 10
_OVER_LIMIT = "(max_image_pixels)"  # in the graph's refusal of an image over the pixel limit
# What TensorFlow's parser and TFX-BSL's decoder say of a record with a feature of the wrong kind
# or count (any component that reads the examples).
_PARSE_MARKERS = (
    "can't parse serialized example",
    "feature had wrong type",
    "expected bytes_list",
    "key: image",
    "key: label",
    "is required but could not be found",  # a record without the feature (TensorFlow's ParseExample)
    "error parsing message with type 'tensorflow.example'",  # not a tf.Example (ExampleGen's protobuf)
)


def _undecodable_records(config: PipelineConfig, splits: tuple[str, ...]) -> list[str]:
    """The records of the data's `splits` whose image the model's own decoder refuses, at most
    MAX_NAMED: TFRecords made elsewhere are checked only by their first records before a run."""
    from trainer.preprocessing import traced_decoder

    decode = traced_decoder(config.effective_image_size(), config.training.max_image_pixels)
    found: list[str] = []
    for split in splits:
        log.info("looking for the records of %s whose image cannot be decoded (reads every record)", split)
        found += undecodable_images(
            os.path.join(config.data_dir, split),
            MAX_NAMED - len(found),
            decode,
            progress=lambda n, split=split: log.info("  %s: %d records read", split, n),
        )
        if len(found) >= MAX_NAMED:
            break
    return found


def _explained(find: Callable[[], list[str]], heading: str) -> str:
    """ "\n<heading>:" and what `find` lists, one per line; "" when it finds nothing or fails
    (an explanation must not replace the run's error)."""
    try:
        found = find()
    except Exception as e:  # noqa: BLE001
        log.debug("could not look for %s: %s", heading, e)
        return ""
    return f"\n{heading}:\n  " + "\n  ".join(found) if found else ""
