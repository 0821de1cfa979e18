"""Near-copies (one picture saved again, resized, brighter) kept in one split by ingest:
imgpipe/ingest/near_copies.py, the scan's thumbnails, and the plan."""

from __future__ import annotations

import functools
import io
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images

from imgpipe.ingest.images import inspect_image
from imgpipe.ingest.near_copies import NEAR_COPY_CORRELATION, eval_sets, near_copy_sets, quantized, thumbnails
from imgpipe.ingest.plan import Candidate, make_plan


def _encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _thumb(data: bytes) -> bytes:
    check = inspect_image(data)
    assert check.reason is None, check.reason
    return check.thumb


def _versions(picture: Image.Image) -> dict[str, bytes]:
    """One picture stored as users store copies of it."""
    brighter = Image.fromarray(np.clip(np.asarray(picture).astype(int) + 3, 0, 255).astype(np.uint8))
    half = picture.resize((max(1, picture.width // 2), max(1, picture.height // 2)), Image.BILINEAR)
    return {
        "png": _encode(picture),
        "jpeg90": _encode(picture, "JPEG", quality=90),
        "jpeg50": _encode(picture, "JPEG", quality=50),
        "brighter": _encode(brighter),
        "half": _encode(half),
    }


@functools.cache
def _digits() -> np.ndarray:
    return load_digits().images


def _digit(i: int, side: int = 32) -> Image.Image:
    pixels = (_digits()[i] * 16).clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels).resize((side, side), Image.BILINEAR).convert("RGB")


@functools.cache
def _every_digit() -> list[bytes]:
    """The signatures of all 1,797 digits at 32 px."""
    return [_thumb(_encode(_digit(i))) for i in range(1797)]


def _photo_crops() -> list[Image.Image]:
    china, flower = load_sample_images().images
    return [
        Image.fromarray(a[y : y + 200, x : x + 300]) for a in (china, flower) for y, x in ((0, 0), (200, 300))
    ]


@pytest.mark.parametrize("kind", ["digit", "photo"])
def test_copies_of_a_picture_are_one_set_and_other_pictures_are_not(kind):
    pictures = [_digit(i) for i in (0, 1, 11)] if kind == "digit" else _photo_crops()[:3]
    thumbs, owner = [], []
    for p, picture in enumerate(pictures):
        for data in _versions(picture).values():
            thumbs.append(_thumb(data))
            owner.append(p)
    sets = near_copy_sets(thumbs)
    assert sorted(sorted(owner[i] for i in s) for s in sets) == [[p] * 5 for p in range(len(pictures))]


def test_different_hand_drawn_digits_are_near_copies_twice_in_1797():
    """The threshold's other side: scikit-learn's digits are the most alike pictures shipped (small
    strokes on black); of all 1,797, two pairs of different digits are taken for near-copies (one
    of them once shifted by a pixel of the grid)."""
    thumbs = _every_digit()
    grouped = [s for s in near_copy_sets(thumbs) if len(s) > 1]
    assert len(grouped) <= 2 and all(len(s) == 2 for s in grouped)


def _shifted(picture: Image.Image, dx: int, dy: int, pad: int) -> Image.Image:
    """`picture` cut `pad` pixels in from each side, moved by (dx, dy)."""
    w, h = picture.size
    return picture.crop((pad + dx, pad + dy, w - pad + dx, h - pad + dy))


@pytest.mark.parametrize("kind", ["digit", "photo"])
def test_copies_shifted_by_a_pixel_or_two_are_one_set(kind):
    """Each picture saved three times, cut a pixel to the left or right (a digit of 34 px cut to
    32; a photo crop of 300 x 200 moved by 1/32 of its side, 9 or 6 px): in the thumbnail the
    digits' copies correlated 0.94-0.97, under the threshold, and with random labels a model
    scored 0.47 on three classes, chance 0.33. Compared shifted by a pixel of the 32 x 32 grid,
    each picture's copies are one set, and the pictures stay apart. (Moves between two grid
    pixels, 2% or 4.5% of the side, correlate 0.983-0.997 either way: not always joined.)"""
    if kind == "digit":
        pictures = [_digit(i, side=34) for i in (0, 1, 11, 21)]
        moves, pad = [(0, 0), (-1, 0), (1, 1)], 1
    else:
        pictures = _photo_crops()
        moves, pad = [(0, 0), (-9, 0), (0, 6)], 10  # a pixel of the grid: 1/32 of 300 and of 200
    thumbs, owner = [], []
    for p, picture in enumerate(pictures):
        for dx, dy in moves:
            thumbs.append(_thumb(_encode(_shifted(picture, dx, dy, pad))))
            owner.append(p)
    base = thumbnails(thumbs)
    if kind == "digit":  # the thumbnails alone would not join them
        assert min(float(base[0] @ base[i]) for i in (1, 2)) < NEAR_COPY_CORRELATION
    sets = near_copy_sets(thumbs)
    assert sorted(sorted(owner[i] for i in s) for s in sets) == [[p] * 3 for p in range(len(pictures))]


def test_grey_copies_of_colour_photos_are_one_set():
    """A grey copy made as Pillow's "L" and most tools make one (luma: 0.299 red, 0.587 green,
    0.114 blue), of 60 tiles of the two photos shipped: each joined with its photo. With the
    thumbnail's grey a plain mean of the channels, 18 of 60 were not (0.94 at the lowest)."""
    rng = np.random.default_rng(0)
    joined = 0
    for array in load_sample_images().images:
        for _ in range(30):
            y, x = rng.integers(0, array.shape[0] - 96), rng.integers(0, array.shape[1] - 96)
            tile = Image.fromarray(array[y : y + 96, x : x + 96])
            grey = _encode(tile.convert("L").convert("RGB"), "JPEG", quality=90)
            joined += len(near_copy_sets([_thumb(_encode(tile)), _thumb(grey)])) == 1
    assert joined == 60


_TURNED = {
    "mirrored": Image.Transpose.FLIP_LEFT_RIGHT,
    "upside down": Image.Transpose.FLIP_TOP_BOTTOM,
    "turned 90": Image.Transpose.ROTATE_90,
    "turned 180": Image.Transpose.ROTATE_180,
    "turned 270": Image.Transpose.ROTATE_270,
    "transposed": Image.Transpose.TRANSPOSE,
    "transversed": Image.Transpose.TRANSVERSE,
}


@pytest.mark.parametrize("kind", ["digit", "photo"])
def test_copies_turned_or_mirrored_are_one_set(kind):
    """Offline augmentation stores a picture again mirrored or turned by quarter turns: the same
    picture to a model (a frozen backbone's pooled features hardly change), unmatched by the
    thumbnails as stored. Each picture, stored as drawn and in the seven other orientations of a
    square (as JPEGs; a photo crop of 300 x 200 turned is 200 x 300), is one set; the pictures stay
    apart; without the turned comparison only the symmetric ones could join."""
    pictures = [_digit(i) for i in (0, 1, 11, 21)] if kind == "digit" else _photo_crops()
    thumbs, owner = [], []
    for p, picture in enumerate(pictures):
        thumbs.append(_thumb(_encode(picture)))
        owner.append(p)
        for method in _TURNED.values():
            thumbs.append(_thumb(_encode(picture.transpose(method), "JPEG", quality=90)))
            owner.append(p)
    sets = near_copy_sets(thumbs)
    assert sorted(sorted(owner[i] for i in s) for s in sets) == [[p] * 8 for p in range(len(pictures))]
    unturned = near_copy_sets(thumbs, turned=False)
    assert len(unturned) > 2 * len(pictures)


def test_different_digits_are_not_joined_in_other_orientations():
    """Comparing each picture turned and mirrored too adds no pair of different digits of the
    1,797 to the two the other comparisons take (each orientation of a thumbnail is its values in
    another order: a permutation, compared exactly as the thumbnails are)."""
    thumbs = _every_digit()
    grouped = {tuple(s) for s in near_copy_sets(thumbs) if len(s) > 1}
    assert grouped == {tuple(s) for s in near_copy_sets(thumbs, turned=False) if len(s) > 1}


def test_a_chain_of_near_copies_is_one_set():
    """a~b and b~c, though a is not a near-copy of c (a burst's frames): one set, so no two
    near-copies are ever in two splits. An image without a thumbnail stays alone."""
    rng = np.random.default_rng(0)
    u, w = np.linalg.qr(rng.normal(size=(256, 2)))[0].T  # two orthonormal directions
    far = np.linalg.qr(rng.normal(size=(256, 3)))[0].T[2]
    unit = [np.cos(t) * u + np.sin(t) * w for t in (0.0, 0.08, 0.16)]  # 0.9968 apart, 0.987 end to end
    assert unit[0] @ unit[1] >= NEAR_COPY_CORRELATION and unit[1] @ unit[2] >= NEAR_COPY_CORRELATION
    assert unit[0] @ unit[2] < NEAR_COPY_CORRELATION
    thumbs = [quantized(unit[2]), quantized(far), quantized(unit[0]), quantized(unit[1])]
    assert near_copy_sets(thumbs) == [[0, 2, 3], [1]]
    assert near_copy_sets([thumbs[0], b"", thumbs[0]]) == [[0, 2], [1]]


def test_a_burst_of_frames_goes_to_one_split():
    """Frames of one photo crop turned 0.5 degrees at a time: each a near-copy of the next, none
    of the first and last. Before, sets formed around leaders and split the burst across train
    and eval."""
    from PIL import Image

    photo = Image.fromarray(load_sample_images().images[0])
    frames = [photo.rotate(0.5 * k, center=(320, 213)).crop((220, 113, 420, 313)) for k in range(9)]
    thumbs = [_thumb(_encode(frame)) for frame in frames]
    rows = thumbnails(thumbs)
    assert rows[0] @ rows[8] < NEAR_COPY_CORRELATION  # the ends are not near-copies
    assert near_copy_sets(thumbs) == [list(range(9))]


@pytest.mark.parametrize(
    ("sizes", "n_eval", "expected"),
    [
        ([1, 1, 1, 1], 2, [0, 1]),  # no near-copies: the first n_eval, as before
        ([3, 1, 1, 1], 2, [1, 2]),  # a set larger than what is left waits for train
        ([3, 3], 1, [0]),  # none fits: the first of the smallest
        ([2, 5, 1], 1, [2]),
        ([4], 1, None),  # one set cannot fill both splits
    ],
)
def test_eval_sets(sizes, n_eval, expected):
    sets, start = [], 0
    for size in sizes:
        sets.append(list(range(start, start + size)))
        start += size
    assert eval_sets(sets, n_eval) == expected


def _candidates(pictures: dict[str, list[Image.Image]]) -> list[Candidate]:
    out = []
    for label, images in pictures.items():
        for i, picture in enumerate(images):
            for name, data in _versions(picture).items():
                check = inspect_image(data)
                out.append(
                    Candidate(
                        f"{label}/{i}_{name}",
                        label,
                        f"sha-{label}{i}{name}",
                        len(data),
                        check.image,
                        check.thumb,
                    )
                )
    return out


def test_the_plan_keeps_each_set_of_near_copies_in_one_split():
    candidates = _candidates(
        {"a": [_digit(i) for i in range(0, 10)], "b": [_digit(i) for i in range(10, 20)]}
    )
    plan = make_plan(["a", "b"], candidates, seed=3, eval_fraction=0.3)
    split_of = {c.rel: split for split in ("train", "eval") for c in plan.records(split)}
    assert len(split_of) == len(candidates)  # every file written: they are not copies
    for label in "ab":
        for i in range(10):
            assert len({split_of[f"{label}/{i}_{name}"] for name in _versions(_digit(0))}) == 1
        assert plan.counts[label] == {"train": 35, "eval": 15}  # 3 of the 10 pictures, 5 files each
    assert len(plan.near_copies) == 20
    entry = plan.near_copies[0]
    assert entry["class"] == "a" and entry["split"] in ("train", "eval") and len(entry["files"]) == 5
    # 15 eval images of 3 pictures each: as weak as 3 images, and said (35 of 7 in train are enough).
    assert plan.warnings == [
        f"class {label!r}: its 15 eval images are 3 pictures, with their near-copies (frames of a clip or burst, "
        "one picture saved again): each set is kept in one split, so a model cannot score what it memorised, "
        "and the gate's significance floor counts each set once, but its recall and the run's accuracy "
        "rest on that few independent pictures. Add pictures of it (other clips, other scenes)"
        for label in "ab"
    ]


def test_a_class_of_a_few_clips_is_named_as_that_few_pictures():
    """An audit's classes of three 25-frame clips (a digit and noise): one clip each in eval, 25
    images of one picture; a model that learned nothing was blessed at 1.0. Pictures without
    near-copies, however few, are the data gate's to count (as images)."""
    rng = np.random.default_rng(0)

    def clip(i: int, frames: int = 12) -> list[Image.Image]:
        base = np.asarray(_digit(i)).astype(float)
        return [
            Image.fromarray(np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8))
            for _ in range(frames)
        ]

    candidates = []
    for label, digits in (("a", (0, 1, 2)), ("b", (3, 4, 5))):
        for c, i in enumerate(digits):
            for f, frame in enumerate(clip(i)):
                data = _encode(frame)
                check = inspect_image(data)
                candidates.append(
                    Candidate(
                        f"{label}/{c}_{f}.png",
                        label,
                        f"sha-{label}{c}{f}",
                        len(data),
                        check.image,
                        check.thumb,
                    )
                )
    plan = make_plan(["a", "b"], candidates, seed=3, eval_fraction=0.3)
    assert sorted(len(n["files"]) for n in plan.near_copies) == [12] * 6  # each clip is one set
    for label in "ab":
        assert plan.counts[label] == {"train": 24, "eval": 12}
        [said] = [w for w in plan.warnings if w.startswith(f"class {label!r}")]
        assert (
            "its 24 train images are 2 pictures and its 12 eval images are 1 picture, with their near-copies"
            in said
        )
    singles = _candidates({"a": [_digit(i) for i in range(3)], "b": [_digit(i) for i in range(3, 6)]})
    plain = make_plan(["a", "b"], [c for c in singles if c.rel.endswith("_png")], seed=3, eval_fraction=0.3)
    assert plain.warnings == []


def test_a_class_of_one_pictures_copies_is_split_with_a_warning():
    candidates = _candidates({"a": [_digit(5)], "b": [_digit(i) for i in range(10, 15)]})
    plan = make_plan(["a", "b"], candidates, seed=3, eval_fraction=0.3)
    assert plan.counts["a"]["eval"] >= 1 and plan.counts["a"]["train"] >= 1
    assert any("class 'a': its 5 images are one set of near-copies" in w for w in plan.warnings)
    assert [n["split"] for n in plan.near_copies if n["class"] == "a"] == ["both"]


def test_ingest_reports_near_copies_and_no_eval_image_has_one_in_train(tmp_path):
    """The audit's case: pictures stored three ways in their class folder (PNG, JPEG, brighter)
    with labels that mean nothing. Before, 261 of 270 eval records had a near-copy in train and a
    model of those random labels scored three times chance."""
    from imgpipe.ingest.run import ingest

    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    for i in range(30):
        label = f"c{rng.integers(3)}"
        folder = images / label
        folder.mkdir(parents=True, exist_ok=True)
        picture = _digit(i)
        versions = _versions(picture)
        for name in ("png", "jpeg90", "brighter"):
            (folder / f"{i}_{name}.{'jpg' if name.startswith('jpeg') else 'png'}").write_bytes(versions[name])
    report = ingest(str(images), str(tmp_path / "out"), seed=1, eval_fraction=0.3)
    written = json.loads((tmp_path / "out" / "ingest_report.json").read_text())
    assert written["num_near_copy_files"] == 90 and len(written["near_copies"]) == 30
    for entry in written["near_copies"]:
        assert entry["split"] in ("train", "eval") and len(entry["files"]) == 3
    assert report.totals["train"] + report.totals["eval"] == 90
    assert report.totals["eval"] % 3 == 0 and report.totals["eval"] > 0
    # Each set names its files' image fingerprints: the Trainer finds the set's records by them
    # and keeps the set whole in its validation slice and folds (trainer/image_ids.py).
    from trainer import image_ids
    from trainer.features import image_fingerprint

    for entry in written["near_copies"]:
        files = [(images / path).read_bytes() for path in entry["files"]]
        assert entry["fingerprints"] == [f"{image_fingerprint(b):016x}" for b in files]
    assert report.near_copies[0]["fingerprints"] == written["near_copies"][0]["fingerprints"]
    sets = image_ids.near_copy_sets(str(tmp_path / "out" / "ingest_report.json"))
    train_ids = image_ids.split_ids(str(tmp_path / "out" / "train" / "*"))
    groups = image_ids.groups(train_ids, sets)
    assert len(sets) == 30 and len(train_ids) == report.totals["train"]
    assert np.bincount(groups).tolist() == [3] * (len(train_ids) // 3)  # each train picture's 3 files


def _png(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, "PNG")
    return out.getvalue()


def test_sets_by_folder_keep_each_clip_folder_in_one_split(tmp_path):
    """An audit's clips of 64 px frames, a pixel of drift and a little noise between frames:
    ingest's pixel test joined half of them only in part (frames correlating 0.964-0.99 under its
    0.995), a clip's frames went to both splits, and a model of labels unrelated to the pictures
    was blessed at 1.0. A user who keeps each clip in its own folder (IMAGES/<class>/<clip>/)
    declares the sets with --sets-by-folder: each folder's images go to one split, and the report
    names the set, its folder and its fingerprints (which the gate and the Trainer read)."""
    from imgpipe.ingest.run import ingest

    picks = iter(np.random.default_rng(3).choice(1797, 24 * 2 + 1, replace=False).tolist())
    images = tmp_path / "images"
    clips = {}
    for clip in range(24):
        label = f"c{clip % 3}"
        folder = images / label / f"clip{clip:02d}"
        folder.mkdir(parents=True)
        # Two pictures a clip, each in five near-copies: the pixel test joins each picture's
        # five, not the clip's two pictures; only the folder does.
        for shot in range(2):
            for version, data in _versions(_digit(next(picks), 48)).items():
                (folder / f"s{shot}_{version}.{'jpg' if version.startswith('jpeg') else 'png'}").write_bytes(
                    data
                )
        clips[f"{label}/clip{clip:02d}"] = label
    (images / "c0" / "loose.png").write_bytes(_png(_digit(next(picks), 48)))  # in the class folder itself

    def splits_of(report):
        where: dict[str, set[str]] = {}
        lines = (tmp_path / report / "image_files.jsonl").read_text().splitlines()
        for line in map(json.loads, lines):
            clip = "/".join(line["path"].split("/")[:2])
            where.setdefault(clip, set()).add(line["split"])
        return where

    plain = ingest(str(images), str(tmp_path / "plain"), seed=1, eval_fraction=0.3)
    assert not plain.sets_by_folder
    split_clips = sorted(c for c, where in splits_of("plain").items() if c in clips and len(where) == 2)
    [hint] = [w for w in plain.warnings if "--sets-by-folder" in w]  # said where it may be meant
    assert plain.split_warnings == [hint]  # the data gate says it again in the run
    assert json.loads((tmp_path / "plain" / "ingest_report.json").read_text())["split_warnings"] == [hint]
    assert hint.startswith(
        f"{len(split_clips)} folders inside class folders ({', '.join(split_clips[:3])}, ...)"
    )
    assert any(len(s) == 2 for clip, s in splits_of("plain").items() if clip in clips)  # clips split
    report = ingest(str(images), str(tmp_path / "out"), seed=1, eval_fraction=0.3, sets_by_folder=True)
    where = splits_of("out")
    assert all(len(where[clip]) == 1 for clip in clips), where
    written = json.loads((tmp_path / "out" / "ingest_report.json").read_text())
    assert written["sets_by_folder"] is True and len(written["near_copies"]) == 24
    for entry in written["near_copies"]:
        assert len(entry["folders"]) == 1 and len(entry["files"]) == len(entry["fingerprints"]) == 10
        assert all(f.startswith(entry["class"] + "/" + entry["folders"][0] + "/") for f in entry["files"])
    assert report.totals["eval"] % 10 in (0, 1)
    assert not [w for w in report.warnings if "--sets-by-folder" in w]


def test_sets_by_folder_take_each_file_s_own_folder_and_are_not_joined_into_one_class_set(tmp_path):
    """A review: clips under <class>/videos/<clip>/ made each class one set (the first folder level
    was the set), split by image, so 11 of 16 clips went to both splits, worse than without the
    flag; a frame every clip shares (a camera's empty background) joined all clips into one set
    the same way. Each file's own folder is the set; near-copies across folders that would make
    the class one set are left unjoined (warned); the hint names only folders holding near-copies
    of their own images."""
    from imgpipe.ingest.run import ingest

    picks = iter(np.random.default_rng(4).choice(1797, 2 * 8 * 3, replace=False).tolist())
    background = _digit(1000, 48)
    images = tmp_path / "images"
    clips = []
    for label in ("x", "y"):
        for clip in range(8):
            folder = images / label / "videos" / f"clip{clip}"
            folder.mkdir(parents=True)
            for shot in range(3):
                (folder / f"s{shot}.png").write_bytes(_png(_digit(next(picks), 48)))
            shade = np.clip(np.asarray(background).astype(int) + 2 * clip + (label == "y"), 0, 255).astype(
                np.uint8
            )
            (folder / "empty.png").write_bytes(_png(Image.fromarray(shade)))  # one scene in every clip
            clips.append(f"{label}/videos/clip{clip}")

    def split_clips(out):
        where: dict[str, set[str]] = {}
        for line in map(json.loads, (tmp_path / out / "image_files.jsonl").read_text().splitlines()):
            where.setdefault(line["path"].rsplit("/", 1)[0], set()).add(line["split"])
        return sorted(c for c in clips if len(where[c]) > 1)

    plain = ingest(str(images), str(tmp_path / "plain"), seed=2, eval_fraction=0.25)
    assert not [w for w in plain.warnings if "--sets-by-folder" in w]  # no folder holds its own copies
    report = ingest(str(images), str(tmp_path / "out"), seed=2, eval_fraction=0.25, sets_by_folder=True)
    assert split_clips("out") == []
    unlinked = [
        w for w in report.warnings if "near-copies across its folders would have made it one set" in w
    ]
    assert len(unlinked) == 2 and not [w for w in report.warnings if "one set of near-copies" in w]
    folders = sorted(f for entry in report.near_copies for f in entry["folders"])
    assert folders == sorted(f"videos/clip{i}" for i in range(8) for _ in ("x", "y"))  # each clip a set


def test_sets_by_folder_says_what_it_did_not_do(tmp_path):
    """An audit: the flag on a tree without folders inside class folders changed nothing and said
    nothing (the split that blessed random labels at 1.0); frames loose in a class folder beside
    clip folders were compared by pixels and went to both splits, silently."""
    from imgpipe.ingest.plan import _sets_by_folder_notes

    def cand(rel, label):
        return Candidate(rel, label, rel, 1)

    flat = [cand(f"{c}/{i}.png", c) for c in "ab" for i in range(4)]
    [said] = _sets_by_folder_notes(flat)
    assert said.startswith("--sets-by-folder: no class folder holds folders, so no set was made by folder")
    mixed = flat + [cand(f"a/clip{j}/{i}.png", "a") for j in range(2) for i in range(3)]
    [said] = _sets_by_folder_notes(mixed)
    assert "1 class folder also holds images right inside it, beside its folders ('a' (4))" in said
    assert _sets_by_folder_notes([cand(f"a/clip{j}/{i}.png", "a") for j in range(2) for i in range(3)]) == []
