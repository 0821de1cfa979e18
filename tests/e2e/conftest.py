"""Whole-pipeline fixtures shared by the e2e modules: one small digits task, made once per session."""

import pytest

from imgpipe import ingest
from imgpipe.demo import data as datasets

CLASSES = (5, 6, 7)
SIZE = 32


@pytest.fixture(scope="session")
def digits_records(tmp_path_factory) -> str:
    """TFRecords (train/ and eval/) of 60 real 32 px digits per class 5, 6, 7, as `imgpipe ingest` writes them."""
    work = tmp_path_factory.mktemp("digits")
    images = str(work / "images")
    datasets.write_digits_tree(images, digits=CLASSES, size=SIZE, limit_per_class=60)
    records = str(work / "records")
    ingest.ingest(images, records, eval_fraction=0.25, seed=7)
    return records
