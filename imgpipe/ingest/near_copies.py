"""Near-copies among a class's images, so that ingest keeps each set of them in one split.

A picture saved again at another JPEG quality, resized, or made a little brighter is another
file with other pixels, so the image key (``images.image_key``) does not join it with its
original; to a model it is the same picture. One in train and one in eval lets the eval split
score what the model memorised: a model trained on random labels, with each image stored three
ways, was judged at 0.62 accuracy on five classes (chance 0.2) and blessed.

The scan reduces each image to a standardised grey thumbnail (``images.thumbnail``); two images
whose thumbnails correlate at ``NEAR_COPY_CORRELATION`` or more are near-copies, and pictures
joined by a chain of near-copies (the frames of a burst, each a near-copy of the next) form one
set, written whole to one split: two near-copies are never in two splits. A class that is one
such set is split by image instead, with a warning. The search compares every
pair in a class, in blocks of bounded memory: n^2 / 2 dot products of 256 values (1.2-1.3 s for
a class of 15,000 images here; BENCHMARKS.md, "Near-copies at ingest").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Two pictures are near-copies when their thumbnails' dot product (correlation) is at least this.
# Measured (BENCHMARKS.md, "Near-copies at ingest"): copies of photos and digits at JPEG quality
# 50-90, at half size, 3 levels brighter or 10% darker, 0.997 or more (the lowest: a 64 px crop of
# fine texture at half size); of scikit-learn's 1,797 hand-drawn digits, the most alike pictures
# shipped, one pair of different digits reaches it (0.996). A picture of almost one colour (a crop
# of clear sky) is mostly noise at this size: its copies are not found.
NEAR_COPY_CORRELATION = 0.995
_THUMB_SCALE = 127 / 0.25  # int8 steps per unit of a thumbnail value (|value| <= 0.25 kept whole)
# Similarities computed at once: rows x columns of one block (64 MB of float64, three arrays).
_BLOCK_VALUES = 8 * 1024 * 1024


def quantized(thumb: np.ndarray) -> bytes:
    """A thumbnail (``images.thumbnail``'s values) as signed bytes, as the scan keeps it."""
    return np.clip(np.rint(np.asarray(thumb) * _THUMB_SCALE), -127, 127).astype(np.int8).tobytes()


def thumbnails(packed: Sequence[bytes]) -> np.ndarray:
    """``quantized`` thumbnails as a float32 matrix, one unit-norm row each."""
    rows = np.frombuffer(b"".join(packed), np.int8).reshape(len(packed), -1).astype(np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-6)


def near_copy_sets(thumbs: Sequence[bytes], threshold: float = NEAR_COPY_CORRELATION) -> list[list[int]]:
    """The positions of `thumbs` (quantized thumbnails in the plan's order; b"" for none) in
    near-copy sets: pictures joined by a chain of near-copies (a burst's frames, each a near-copy
    of the next) are one set, so no two near-copies are ever in two sets. Each set in order, the
    sets in the order of their first positions; an image without a thumbnail is a set of its own."""
    n = len(thumbs)
    known = [i for i in range(n) if thumbs[i]]
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if len(known) > 1:
        # The thumbnails' int8 values, as float64: every dot product is a whole number well
        # below 2**53, computed exactly whatever the BLAS, so the sets are the same on every
        # machine. Near-copies: dot >= threshold * |a| * |b|, compared squared.
        rows = np.frombuffer(b"".join(thumbs[i] for i in known), np.int8).reshape(len(known), -1)
        rows = rows.astype(np.float64)
        squared = np.einsum("ij,ij->i", rows, rows)
        block = max(1, _BLOCK_VALUES // len(known))
        for start in range(0, len(known), block):
            stop = min(start + block, len(known))
            dots = rows[start:stop] @ rows[:stop].T  # each row against the rows before it
            bound = threshold * threshold * np.outer(squared[start:stop], squared[:stop])
            similar = np.tril((dots > 0) & (dots * dots >= bound), k=start - 1)
            for offset, j in zip(*np.nonzero(similar), strict=True):
                a, b = root(known[start + int(offset)]), root(known[int(j)])
                if a != b:
                    parent[max(a, b)] = min(a, b)  # a set is named by its first position
    sets: dict[int, list[int]] = {}
    for position in range(n):
        sets.setdefault(root(position), []).append(position)
    return list(sets.values())


def eval_sets(sets: Sequence[Sequence[int]], n_eval: int) -> list[int] | None:
    """Which sets go to the eval split (indices into `sets`, in order): in order, each set that
    still fits in `n_eval` images; when none fits, the first of the smallest. None when the sets
    cannot fill both splits (a single set): the caller splits its images instead."""
    if len(sets) < 2:
        return None
    chosen, taken = [], 0
    for index, members in enumerate(sets):
        if taken + len(members) <= n_eval:
            chosen.append(index)
            taken += len(members)
    if not chosen:
        smallest = min(len(members) for members in sets)
        chosen = [next(i for i, members in enumerate(sets) if len(members) == smallest)]
    return chosen
