"""Ingest: a class-per-folder image tree -> checked, de-duplicated, split TFRecords (the TFRecord contract)."""

from imgpipe.ingest.core import (
    ACCEPTED_FORMATS,
    CLASSES_FILE,
    REPORT_FILE,
    SPLITS,
    IngestError,
    IngestReport,
    ingest,
    validate_tfrecord_dir,
)

__all__ = [
    "ACCEPTED_FORMATS",
    "CLASSES_FILE",
    "REPORT_FILE",
    "SPLITS",
    "IngestError",
    "IngestReport",
    "ingest",
    "validate_tfrecord_dir",
]
