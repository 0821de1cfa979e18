"""Near-copies among a class's images, so that ingest keeps each set of them in one split.

A picture saved again at another JPEG quality, resized, or made a little brighter is another
file with other pixels, so the image key (``images.image_key``) does not join it with its
original; to a model it is the same picture. One in train and one in eval lets the eval split
score what the model memorised: a model trained on random labels, with each image stored three
ways, was judged at 0.62 accuracy on five classes (chance 0.2) and blessed.

The scan reduces each image to a standardised grey thumbnail (``images.thumbnail``); two images
whose thumbnails correlate at ``NEAR_COPY_CORRELATION`` or more are near-copies. So are two
whose grey grids (GRID_SIDE a side, from the same decode) correlate that much once one is moved
a pixel of the grid (1/32 of the picture) in any of eight directions, compared on the 15 x 15
blocks of 2 x 2 grid pixels both cover: a picture cropped or shifted by a pixel or two. So are
two whose thumbnails correlate that much once one is turned or mirrored (``_TURNS``, the seven
other orientations of a square: offline augmentation's copies); each orientation is the
thumbnail's values in another order, so no picture is decoded again. Saved
three times at 1-pixel offsets, each of 400 digits (32 px) had copies correlating 0.94-0.97 in
the thumbnail, and with random labels a model scored 0.47 on three classes (0.33 by chance);
aligned, the copies correlate 1.0 and the most alike different digits 0.9956. Pictures
joined by a chain of near-copies (the frames of a burst, each a near-copy of the next) form one
set, written whole to one split: two near-copies are never in two splits. A class that is one
such set is split by image instead, with a warning. The search compares every
pair in a class, in blocks of bounded memory: n^2 / 2 dot products of 256 values, eight more of
225 for the shifts and seven of 256 for the turns (BENCHMARKS.md, "Near-copies at ingest").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

# Two pictures are near-copies when their thumbnails' dot product (correlation) is at least this.
# Measured (BENCHMARKS.md, "Near-copies at ingest"): copies of photos and digits at JPEG quality
# 50-90, at half size, 3 levels brighter or 10% darker, 0.997 or more (the lowest: a 64 px crop of
# fine texture at half size); of scikit-learn's 1,797 hand-drawn digits, the most alike pictures
# shipped, one pair of different digits reaches it in the thumbnails (0.996), and one more in the
# grids compared shifted. A picture of almost one colour (a crop
# of clear sky) is mostly noise at this size: its copies are not found.
NEAR_COPY_CORRELATION = 0.995
_THUMB_SCALE = 127 / 0.25  # int8 steps per unit of a thumbnail value (|value| <= 0.25 kept whole)
THUMBNAIL_SIDE = 16  # the thumbnail's side (images.thumbnail)
GRID_SIDE = 32  # the grey grid's side, kept beside the thumbnail for the shifted comparisons
_BASE = THUMBNAIL_SIDE**2
_BLOCKS = GRID_SIDE // 2 - 1  # 2 x 2 blocks a side of a window moved by at most one grid pixel
# The shifted comparisons: (window offset of the earlier picture, of the later one), (x, y) in
# grid pixels; each pair's difference is one of the eight one-pixel moves.
_SHIFTS = (
    ((0, 0), (1, 0)),
    ((1, 0), (0, 0)),
    ((0, 0), (0, 1)),
    ((0, 1), (0, 0)),
    ((0, 0), (1, 1)),
    ((1, 1), (0, 0)),
    ((0, 1), (1, 0)),
    ((1, 0), (0, 1)),
)
_OFFSETS = ((0, 0), (1, 0), (0, 1), (1, 1))


def _turn(turns: int, mirrored: bool) -> np.ndarray:
    """The order of a thumbnail's values once the picture is turned `turns` quarter turns
    (counter-clockwise) and, if `mirrored`, mirrored left to right first: the thumbnail of a
    picture so turned is (up to resizing) the thumbnail's values in this order."""
    grid = np.arange(_BASE).reshape(THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    return np.rot90(grid[:, ::-1] if mirrored else grid, turns).reshape(-1).copy()


# The seven other orientations of a square (mirrors left-right and top-bottom, the three turns,
# the two diagonal mirrors): a copy stored turned or mirrored, as offline augmentation stores
# them, is compared in each. The set holds each one's inverse, so comparing the later picture's
# orientations with the earlier one finds a copy whichever of the two was turned.
_TURNS = {
    f"{'mirrored, ' if mirrored else ''}turned {90 * turns}": _turn(turns, mirrored)
    for mirrored in (False, True)
    for turns in range(4)
    if turns or mirrored
}
_GRID_CHUNK = 2048
# A window whose block means spread less than this (their norm once centred; 4 grey levels of
# standard deviation over 225 blocks) is not compared shifted: crops of hazy sky joined across
# offsets of a quarter of their side.
_FLAT_GRID = 4.0 * _BLOCKS
# Similarities computed at once: rows x columns of one block (64 MB of float64, three arrays).
_BLOCK_VALUES = 8 * 1024 * 1024


def _as_int8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values * _THUMB_SCALE), -127, 127).astype(np.int8)


def quantized(thumb: np.ndarray) -> bytes:
    """``images.thumbnail``'s values as the scan keeps them: the thumbnail as signed bytes, then
    the grey grid (if there) as unsigned ones."""
    thumb = np.asarray(thumb)
    grid = np.clip(np.rint(thumb[_BASE:]), 0, 255).astype(np.uint8)
    return _as_int8(thumb[:_BASE]).tobytes() + grid.tobytes()


def thumbnails(packed: Sequence[bytes]) -> np.ndarray:
    """The thumbnails of ``quantized`` signatures as a float32 matrix, one unit-norm row each."""
    rows = np.stack([np.frombuffer(p[:_BASE], np.int8) for p in packed]).astype(np.float32)
    return _unit(rows, np.einsum("ij,ij->i", rows, rows, dtype=np.float64))


def _unit(rows: np.ndarray, squared: np.ndarray) -> np.ndarray:
    """Rows of int8 values (as float32) scaled to unit length, given their squared lengths; a
    row of zeros stays zeros (any other such row is at least 1 long)."""
    return rows / np.sqrt(np.maximum(squared, 1.0))[:, None].astype(np.float32)


def _windows(packed: Sequence[bytes]) -> dict[tuple[int, int], np.ndarray]:
    """For each window offset: every signature's grid over that window in 2 x 2 block means,
    standardised and quantized like a thumbnail (float32 rows of int8 values; zeros: a signature
    without a grid, or a window of one grey)."""
    n, span = len(packed), 2 * _BLOCKS
    out = {offset: np.zeros((n, _BLOCKS * _BLOCKS), np.float32) for offset in _OFFSETS}
    for first in range(0, n, _GRID_CHUNK):  # grids of a few thousand pictures at a time
        chunk = packed[first : first + _GRID_CHUNK]
        grids = np.zeros((len(chunk), GRID_SIDE, GRID_SIDE), np.float32)
        for i, p in enumerate(chunk):
            if len(p) == _BASE + GRID_SIDE**2:
                grids[i] = np.frombuffer(p[_BASE:], np.uint8).reshape(GRID_SIDE, GRID_SIDE)
        for ox, oy in _OFFSETS:
            blocks = grids[:, oy : oy + span, ox : ox + span].reshape(len(chunk), _BLOCKS, 2, _BLOCKS, 2)
            rows = blocks.mean(axis=(2, 4)).reshape(len(chunk), -1).astype(np.float64)
            rows -= rows.mean(axis=1, keepdims=True)
            norms = np.linalg.norm(rows, axis=1, keepdims=True)
            # A window of almost one grey (hazy sky) is noise once standardised: left out.
            rows = np.where(norms > _FLAT_GRID, rows / np.maximum(norms, 1e-6), 0.0)
            out[(ox, oy)][first : first + len(chunk)] = _as_int8(rows)
    return out


# Pairs whose float32 correlation (any comparison) is within this of the threshold are checked
# exactly; float32 rounding moves a correlation by ~1e-6.
_MARGIN = 1e-4
_EXACT_CHUNK = 65536  # candidate pairs checked exactly at once


def _similar_pairs(
    packed: Sequence[bytes], threshold: float, turned: bool = True
) -> Iterator[tuple[int, int]]:
    """(later, earlier) positions of the signatures that are near-copies: their thumbnails, or
    their grids moved a pixel apart, or (`turned`) the later thumbnail turned or mirrored
    (``_TURNS``) and the earlier one, correlate at `threshold` or more.

    Every pair's correlations are first taken in float32 from unit rows, the largest kept;
    pairs near or over the threshold are then decided exactly: the int8 values' dot products
    are whole numbers, summed in float64, and
    dot >= threshold * |a| * |b| is compared squared in float64, so the sets are the same on
    every machine (the float32 pass only picks the pairs to check: its error, under 1e-5, is
    well inside the margin)."""
    rows = np.stack([np.frombuffer(p[:_BASE], np.int8) for p in packed]).astype(np.float32)
    matrices = {"base": rows}
    comparisons = [("base", "base")]
    # The later pictures' thumbnails in the other orientations, against the earlier ones as they
    # are (each orientation's inverse is one of them: which of two copies was turned is alike).
    # Taken block by block from the thumbnails (`_rows`), not kept: seven more matrices of n rows.
    turns = _TURNS if turned else {}
    comparisons += [(name, "base") for name in turns]
    if any(len(p) > _BASE for p in packed):  # signatures with grey grids: the shifted pairs too
        matrices.update(_windows(packed))
        comparisons += list(_SHIFTS)
    squared = {key: np.einsum("ij,ij->i", m, m, dtype=np.float64) for key, m in matrices.items()}
    squared.update({name: squared["base"] for name in turns})  # a turn keeps a thumbnail's length
    unit = {key: _unit(m, squared[key]) for key, m in matrices.items()}

    def _rows(source: dict[str, np.ndarray], key: str, index) -> np.ndarray:
        if key in turns:
            return source["base"][index][:, turns[key]]
        return source[key][index]

    n = len(packed)
    block = max(1, _BLOCK_VALUES // n)
    for start in range(0, n, block):
        stop = min(start + block, n)
        best = None
        for a, b in comparisons:  # each row against the rows before it
            product = _rows(unit, a, slice(start, stop)) @ _rows(unit, b, slice(0, stop)).T
            best = product if best is None else np.maximum(best, product, out=best)
        offsets, columns = np.nonzero(np.tril(best >= threshold - _MARGIN, k=start - 1))
        for first in range(0, len(offsets), _EXACT_CHUNK):
            i = start + offsets[first : first + _EXACT_CHUNK]
            j = columns[first : first + _EXACT_CHUNK]
            near = np.zeros(len(i), bool)
            for a, b in comparisons:
                dots = np.einsum("ij,ij->i", _rows(matrices, a, i), _rows(matrices, b, j), dtype=np.float64)
                near |= (dots > 0) & (dots * dots >= threshold * threshold * squared[a][i] * squared[b][j])
            yield from zip(i[near].tolist(), j[near].tolist(), strict=True)


def shifted_correlation(first: bytes, second: bytes) -> float:
    """The largest correlation of two ``quantized`` signatures' grids moved a grid pixel apart
    (any of the eight moves; their thumbnails' own correlation is not included): what the search
    compares with NEAR_COPY_CORRELATION besides the thumbnails'. 0.0 without grids."""
    windows = _windows([first, second])
    best = 0.0
    for a, b in _SHIFTS:
        x, y = windows[a][0].astype(np.float64), windows[b][1].astype(np.float64)
        norms = float(np.sqrt((x @ x) * (y @ y)))
        if norms > 0:
            best = max(best, float(x @ y) / norms)
    return best


def near_copy_sets(
    thumbs: Sequence[bytes], threshold: float = NEAR_COPY_CORRELATION, turned: bool = True
) -> list[list[int]]:
    """The positions of `thumbs` (quantized thumbnails in the plan's order; b"" for none) in
    near-copy sets: pictures joined by a chain of near-copies (a burst's frames, each a near-copy
    of the next) are one set, so no two near-copies are ever in two sets. Each set in order, the
    sets in the order of their first positions; an image without a thumbnail is a set of its own.
    `turned`: a picture turned or mirrored is a near-copy too (``_TURNS``)."""
    n = len(thumbs)
    known = [i for i in range(n) if thumbs[i]]
    pairs = []
    if len(known) > 1:
        packed = [thumbs[i] for i in known]
        pairs = [(known[i], known[j]) for i, j in _similar_pairs(packed, threshold, turned)]
    return joined(n, pairs)


def joined(n: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Positions 0..n-1 joined by `pairs` (and by chains of them) into sets: each set in order,
    the sets in the order of their first positions; a position in no pair is a set of its own."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        mine_root, their_root = root(a), root(b)
        if mine_root != their_root:  # a set is named by its first position
            parent[max(mine_root, their_root)] = min(mine_root, their_root)
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
