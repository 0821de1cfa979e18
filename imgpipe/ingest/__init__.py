"""Ingest: a class-per-folder image tree -> checked, de-duplicated, split TFRecords.

One job per module, run in this order by ``ingest`` (run.py):

- ``scan``: list the tree, turn folder names into class names (``labels``:
  Unicode NFC; names that cannot be labels, or collide, are refused), read
  and check every file (``images``: both decoders, the pixel limit, EXIF
  orientation) -> candidates (path, class, SHA-256, size) and skipped files
  with reasons;
- ``plan``: pure; group copies of one image (identical bytes or pixels), drop label conflicts and copies,
  split each class deterministically, plan the shards;
- ``write``: re-read and re-hash each kept file, write the shards through a
  staging dir, move them into place with ``classes.json`` and the report.

``contract`` is the TFRecord layout ingest writes and ``imgpipe run`` accepts
(``validate_tfrecord_dir``); ``report`` is the IngestReport. Nothing is dropped
silently: each file that is not written is in the report with a reason.
"""

from imgpipe.ingest.contract import CLASSES_FILE, REPORT_FILE, SPLITS, validate_tfrecord_dir
from imgpipe.ingest.errors import IngestError, IngestWriteError
from imgpipe.ingest.images import ACCEPTED_FORMATS
from imgpipe.ingest.report import IngestReport, left_out_files
from imgpipe.ingest.run import ingest

__all__ = [
    "ACCEPTED_FORMATS",
    "CLASSES_FILE",
    "REPORT_FILE",
    "SPLITS",
    "IngestError",
    "IngestWriteError",
    "IngestReport",
    "ingest",
    "left_out_files",
    "validate_tfrecord_dir",
]
