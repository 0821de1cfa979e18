"""Batch prediction: every image under a folder (or a glob) scored by a model, as a Beam job.

``predict_batch`` (job.py) lists the images (inputs.py), checks each with
ingest's own check (imgpipe/ingest/images.py), scores them in batches with a
SavedModel loaded once per worker or through a TF Serving endpoint
(scoring.py), and writes CSV, JSON lines or PredictionLog TFRecords chosen by
the output's extension (outputs.py). Files that cannot be scored are listed
with the reason in a side report; scored + skipped = files.
"""

from imgpipe.batch.job import BatchError, BatchResult, ServerUnusable, predict_batch
from imgpipe.batch.outputs import OUTPUT_FORMATS

__all__ = ["OUTPUT_FORMATS", "BatchError", "BatchResult", "ServerUnusable", "predict_batch"]
