"""Whole-pipeline fixtures shared by the e2e modules: one small digits task, made once per session."""

import math

import pytest

from imgpipe import ingest
from imgpipe.demo import data as datasets

CLASSES = (5, 6, 7)
SIZE = 32


def above_chance(examples: int, classes: int, p_value: float = 1e-3) -> float:
    """The least accuracy on `examples` that guessing among `classes` reaches with probability
    below `p_value` (binomial tail): what "far above chance" means for a model's accuracy.

    The e2e model's own accuracy depends on how well the tests' small pre-trained backbone
    transfers to CLASSES, which varies with the CPU's floating-point results (0.62-0.82 on the
    e2e eval split over eight pre-training variants on one CPU), so no fixed figure above
    chance holds for it on every machine; this does. 45 examples, 3 classes: 26/45 = 0.578.
    """
    p = 1.0 / classes
    for k in range(examples + 1):
        tail = sum(math.comb(examples, j) * p**j * (1 - p) ** (examples - j) for j in range(k, examples + 1))
        if tail < p_value:
            return k / examples
    return 1.0


@pytest.fixture(scope="session")
def digits_records(tmp_path_factory) -> str:
    """TFRecords (train/ and eval/) of 60 real 32 px digits per class 5, 6, 7, as `imgpipe ingest` writes them."""
    work = tmp_path_factory.mktemp("digits")
    images = str(work / "images")
    datasets.write_digits_tree(images, digits=CLASSES, size=SIZE, limit_per_class=60)
    records = str(work / "records")
    ingest.ingest(images, records, eval_fraction=0.25, seed=7)
    return records
