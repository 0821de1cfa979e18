"""The plan: which checked files become which records in which shard. Pure: no I/O.

Given the class folders and the candidates a scan found, decide everything
the writer needs and the report records:

- copies of one image are one group: files with identical bytes (same SHA-256),
  and files that differ only in how the same picture is stored (the scan's image
  key, ``images.image_key``: a PNG saved again, a JPEG without its metadata); a
  group under several classes is a label conflict and none of its files is written;
- copies inside one class are written once (the first path by name is kept);
- each class's unique images are split deterministically: a group's split is
  decided by hashing (seed, class, its image key), never by file order, names or
  metadata, so copies never straddle train and eval and a re-run gives the same
  split, also after the files were saved again;
- near-copies in a class (one picture saved again, resized, made brighter:
  ``near_copies.py``) are written, each set to one split, so neither split holds a
  near-copy of the other's images (unless the class is one such set: warned);
- classes without a usable image are left out (and warned about);
- records are interleaved across classes in a seeded order, then each split is
  cut into contiguous shards.

``Plan.refusal`` says why a plan cannot make a training set (fewer than two
classes, or a class with a single unique image, which cannot be in both splits).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from imgpipe.ingest.contract import MAX_RUN_CLASSES, SPLITS, shard_names
from imgpipe.ingest.near_copies import eval_sets, joined, near_copy_sets
from imgpipe.ingest.report import display_path
from trainer.class_names import almost_alike
from trainer.features import counted

# Auto sharding aims for ~128 MiB shards: big enough for efficient sequential
# reads, small enough to parallelise Beam / tf.data reading.
TARGET_SHARD_BYTES = 128 * 1024 * 1024


class Candidate(NamedTuple):
    """One decodable image found by the scan (no pixel data kept)."""

    rel: str  # path relative to images_dir, '/'-separated, as on disk (see display_path)
    label: str  # its class folder
    sha256: str  # hex digest of the file's bytes
    size: int  # bytes
    image: str = ""  # which picture it holds (images.image_key); "": known by its bytes only
    thumb: bytes = b""  # its quantized thumbnail (images.thumbnail): near-copies; b"": none

    @property
    def key(self) -> str:
        """What makes two files copies: the image key, or the bytes when there is none."""
        return self.image or "file:" + self.sha256


class Shard(NamedTuple):
    """One TFRecord file to write: its name and its records in order."""

    name: str
    records: tuple[Candidate, ...]


@dataclass(frozen=True)
class Plan:
    """Everything decided before writing; the fields mirror IngestReport's."""

    classes: list[str]  # classes with usable images, in folder order
    counts: dict[str, dict[str, int]]  # class -> {"train": n, "eval": n}
    duplicates: list[dict[str, Any]]
    label_conflicts: list[dict[str, Any]]
    empty_classes: list[str]
    warnings: list[str]
    shards: dict[str, list[Shard]]  # split -> shards in file-name order
    # Why the tree looks laid out by split (train/<class>/...), which ingest does not read
    # as such: a refusal (None: it does not).
    split_layout: str | None = None
    # Sets of near-copies in a class ({"class", "split", "files"}), each written to one split.
    near_copies: list[dict[str, Any]] = field(default_factory=list)
    # The warnings (also in `warnings`) on copies of one picture that sit in both splits: the data
    # gate repeats them in the run (a class that is one set, clips split, --sets-by-folder's notes).
    split_warnings: list[str] = field(default_factory=list)

    def records(self, split: str) -> list[Candidate]:
        """Every record of ``split`` in the order it is written."""
        return [c for shard in self.shards[split] for c in shard.records]

    def _one_class_hint(self, images_dir: str) -> str:
        """For a tree of one class folder whose images sit in its subfolders: the likely fix."""
        if len(self.classes) != 1:
            return ""
        inner = subfolders(c for split in SPLITS for c in self.records(split)).get(self.classes[0], set())
        if len(inner) < 2:
            return ""
        names = ", ".join(repr(n) for n in sorted(inner)[:10]) + (" ..." if len(inner) > 10 else "")
        return (
            f"; its images sit in subfolders ({names}): if those are the classes, pass "
            f"{images_dir}/{self.classes[0]} as the image directory"
        )

    def shard_names(self) -> dict[str, list[str]]:
        """split -> shard file names (the report's ``shards``)."""
        return {s: [shard.name for shard in self.shards[s]] for s in SPLITS}

    def refusal(self, images_dir: str, num_skipped: int = 0) -> str | None:
        """Why this plan cannot make a training set, or None when it can."""
        conflicting = sum(len(c["files"]) for c in self.label_conflicts)
        if len(self.classes) < 2:
            return (
                f"{images_dir} has {len(self.classes)} class(es) with usable images "
                f"({self.classes}); a classifier needs at least 2"
                + (
                    f"; class folders with no usable image: {self.empty_classes}"
                    if self.empty_classes
                    else ""
                )
                + (
                    f"; {conflicting} files are label conflicts (the same image under several "
                    "classes: none of them is used)"
                    if conflicting
                    else ""
                )
                + (f"; {num_skipped} files skipped" if num_skipped else "")
                + self._one_class_hint(images_dir)
            )
        if self.split_layout:
            return self.split_layout
        solo = [name for name in self.classes if self.counts[name]["eval"] == 0]
        if solo:
            which = ", ".join(repr(name) for name in solo)
            return (
                f"{'class' if len(solo) == 1 else 'classes'} {which} in {images_dir} "
                f"{'has' if len(solo) == 1 else 'have'} a single unique image (copies of one image count "
                "once"
                + (
                    f"; {conflicting} files are label conflicts, the same image under several classes, "
                    "and none of them is used: see label_conflicts"
                    if conflicting
                    else ""
                )
                + "), so it cannot be in both the train and the eval split, and a run's data gate "
                "refuses a class the eval split lacks; add images to it, or remove the folder"
            )
        return None


def make_plan(
    folders: Iterable[str],
    candidates: Iterable[Candidate],
    *,
    seed: int,
    eval_fraction: float,
    num_shards: int | None = None,
    sets_by_folder: bool = False,
) -> Plan:
    """Group, de-duplicate, split and shard ``candidates`` (see the module docstring).

    ``folders`` are all class folder names in order (including ones with no
    candidate); every candidate's label must be one of them. ``eval_fraction``
    in (0, 1); ``num_shards`` per split (capped at its record count), None for
    ~128 MiB shards. ``sets_by_folder``: the images under each folder inside a class folder
    are one set (a clip's frames, one object's photos), kept in one split like near-copies.
    """
    folders = list(folders)
    known = set(folders)
    by_image: dict[str, list[Candidate]] = {}
    for cand in candidates:
        if cand.label not in known:
            raise ValueError(f"candidate {cand.rel} has class {cand.label!r}, not one of {folders}")
        by_image.setdefault(cand.key, []).append(cand)

    # Group by image: one picture under two classes is a label conflict. A group is named by
    # its first file's SHA-256 (by class, then path) and split by its image key, so a tree
    # whose files lost or gained metadata (EXIF stripped, PNGs saved again) splits as before.
    label_conflicts: list[dict[str, Any]] = []
    groups: dict[str, dict[str, list[Candidate]]] = {name: {} for name in folders}
    for key in sorted(by_image):
        members = sorted(by_image[key], key=lambda c: (c.label, display_path(c.rel)))
        digest = members[0].sha256
        if len({c.label for c in members}) > 1:
            label_conflicts.append(
                {
                    "sha256": digest,
                    "same": _same(members),
                    "files": [{"path": display_path(c.rel), "class": c.label} for c in members],
                }
            )
            continue
        groups[members[0].label][digest] = members

    # Split each class's unique images; rank by (seed, class, content).
    classes: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    duplicates: list[dict[str, Any]] = []
    empty_classes: list[str] = []
    warnings: list[str] = []
    chosen: dict[str, list[Candidate]] = {s: [] for s in SPLITS}
    near_copies: list[dict[str, Any]] = []
    clip_like: list[str] = []  # folders whose near-copies went to both splits (_split_clips)
    split_warnings: list[str] = []  # Plan.split_warnings

    def say_split(warning: str) -> None:
        warnings.append(warning)
        split_warnings.append(warning)

    for name in folders:
        digests = sorted(groups[name], key=lambda d, n=name: _rank(seed, "split", n, groups[n][d][0].key))
        if not digests:
            empty_classes.append(name)
            continue
        n_eval = eval_count(len(digests), eval_fraction)
        classes.append(name)
        kept_files = [groups[name][d][0] for d in digests]
        splits, found, straddle, pictures, unlinked = _split_near_copies(kept_files, n_eval, sets_by_folder)
        if unlinked:
            say_split(
                f"class {name!r}: near-copies across its folders would have made it one set (a picture "
                "shared by its clips, say), split by image; each folder (--sets-by-folder) is kept in one "
                "split instead, and those near-copies may sit in both splits"
            )
        if not sets_by_folder and not straddle:
            clip_like += _split_clips(name, kept_files, splits, found)
        few = few_pictures_warning(name, {s: splits.count(s) for s in SPLITS}, pictures)
        warnings += [few] if few and not straddle else []
        if straddle and sets_by_folder and len({_inner_folder(c.rel) for c in kept_files}) == 1:
            say_split(
                f"class {name!r}: its {len(digests)} images are in one folder, one set with "
                "--sets-by-folder, so it is split by image: its eval images share that folder's clip, "
                "object or session with its train images; add pictures of it from other folders"
            )
        elif straddle:
            say_split(
                f"class {name!r}: its {len(digests)} images are one set of near-copies (one picture saved "
                "again, resized or made brighter or darker, or a burst's frames), so its eval images are "
                "near-copies of its train images and the eval split scores what a model memorised; add "
                "other pictures of it"
            )
        near_copies += [{"class": name, **entry} for entry in found]
        counts[name] = {"train": splits.count("train"), "eval": splits.count("eval")}
        for digest, split in zip(digests, splits, strict=True):
            kept, *copies = groups[name][digest]
            chosen[split].append(kept)
            if copies:
                duplicates.append(
                    {
                        "class": name,
                        "sha256": digest,
                        "same": _same(groups[name][digest]),
                        "split": split,
                        "kept": display_path(kept.rel),
                        "duplicates": [display_path(c.rel) for c in copies],
                    }
                )
    duplicates.sort(key=lambda d: (d["class"], d["kept"]))
    near_copies.sort(key=lambda d: (d["class"], d["files"][0]))
    warnings += almost_alike(classes, "classes", "merge their folders")
    split_layout, misfiled = _split_layout(
        classes, subfolders(c for members in groups.values() for g in members.values() for c in g)
    )
    warnings += misfiled
    if not sets_by_folder:
        hint = _sets_by_folder_hint(clip_like)
        for said in [hint] if hint else []:
            say_split(said)
    else:
        for said in _sets_by_folder_notes(
            c for members in groups.values() for g in members.values() for c in g[:1]
        ):
            say_split(said)
    if len(classes) > MAX_RUN_CLASSES:
        warnings.append(
            f"{len(classes)} classes: `imgpipe run` takes at most {MAX_RUN_CLASSES:,} (TFDV's statistics "
            f"list at most {MAX_RUN_CLASSES:,} label values, so the data gate cannot check more); the records "
            "are written, but a run on them stops at SchemaGen"
        )

    # Interleave classes in a seeded order, so a reader's shuffle buffer sees
    # every class early, then cut each split into contiguous shards.
    shards: dict[str, list[Shard]] = {}
    for split in SPLITS:
        records = sorted(chosen[split], key=lambda c, s=split: _rank(seed, "order", s, c.label, c.key))
        wanted = num_shards or math.ceil(sum(c.size for c in records) / TARGET_SHARD_BYTES)
        count = max(1, min(wanted, len(records)))
        shards[split] = [
            Shard(name, tuple(records[start:stop]))
            for name, (start, stop) in zip(
                shard_names(count), _shard_ranges(len(records), count), strict=True
            )
        ]
    return Plan(
        classes,
        counts,
        duplicates,
        label_conflicts,
        empty_classes,
        warnings,
        shards,
        split_layout,
        near_copies,
        split_warnings,
    )


def _split_near_copies(
    ranked: list[Candidate], n_eval: int, sets_by_folder: bool = False
) -> tuple[list[str], list[dict[str, Any]], bool, dict[str, int], bool]:
    """Each of a class's unique images' split, in `ranked` (the seeded) order: near-copies
    (imgpipe/ingest/near_copies.py) go to one split together, the sets filling eval in order up
    to `n_eval` images; without near-copies, the first `n_eval` images. Also the sets of more
    than one image ({"split", "files"}), whether the class is a single set, split by its
    images instead (its eval images then near-copies of its train images), and the pictures in
    each split ({split: sets}, an image without near-copies a set of its own). With
    `sets_by_folder`, the images in one folder below the class folder are one set too (a set that
    holds such a folder's images names it: ``folders``), joined with near-copies they share, unless
    that joining makes the class one set: then near-copies across folders are left unjoined (the
    last value returned says so)."""
    sets = near_copy_sets([c.thumb for c in ranked])
    unlinked = False  # near-copies across folders left unjoined (they made the class one set)
    if sets_by_folder:
        where = [_inner_folder(c.rel) for c in ranked]
        merged = _with_folders(sets, where)
        if len(merged) == 1 and len(ranked) > 1:
            # One set (a frame shared by every clip, or a class in one folder): split by image,
            # it would scatter every clip over both splits. Each folder stays one set, joined
            # only with near-copies among its own images and the class folder's loose ones.
            within = [part for members in sets for part in _by_folder(members, where)]
            alone = _with_folders(within, where)
            if len(alone) > 1:
                merged, unlinked = alone, True
        sets = merged
    to_eval = eval_sets(sets, n_eval)
    if to_eval is None:
        splits = ["eval" if i < n_eval else "train" for i in range(len(ranked))]
        straddle = len(ranked) > 1 and len(sets) == 1
    else:
        splits = ["train"] * len(ranked)
        for index in to_eval:
            for position in sets[index]:
                splits[position] = "eval"
        straddle = False
    found = []
    for members in sets:
        if len(members) < 2:
            continue
        entry = {
            "split": splits[members[0]] if not straddle else "both",
            "files": [display_path(ranked[p].rel) for p in members],
        }
        inner = sorted({f for f in (_inner_folder(ranked[p].rel) for p in members) if f is not None})
        if sets_by_folder and inner:
            entry["folders"] = [display_path(f) for f in inner]
        found.append(entry)
    pictures = {s: sum(1 for members in sets if splits[members[0]] == s) for s in SPLITS}
    return splits, found, straddle, pictures, unlinked


def _by_folder(members: list[int], where: list[str | None]) -> list[list[int]]:
    """A near-copy set's positions cut by the folder each sits in (loose files together)."""
    parts: dict[str | None, list[int]] = {}
    for p in members:
        parts.setdefault(where[p], []).append(p)
    return list(parts.values())


def _split_clips(
    name: str, kept: list[Candidate], splits: list[str], found: list[dict[str, Any]]
) -> list[str]:
    """The folders inside class folder `name` that look like clips the pixel test split: a set of
    near-copies with two or more of its images in the folder, and the folder's images in both
    splits (a clip's frames are joined only while each is a near-copy of the next)."""
    split_of = {display_path(c.rel): split for c, split in zip(kept, splits, strict=True)}
    folder_of = {display_path(c.rel): _inner_folder(c.rel) for c in kept}
    in_both: dict[str, set[str]] = {}
    for path, folder in folder_of.items():
        if folder is not None:
            in_both.setdefault(folder, set()).add(split_of[path])
    copies_within = set()
    for entry in found:
        seen: set[str] = set()
        for folder in (folder_of.get(path) for path in entry["files"]):
            if folder is None:
                continue
            if folder in seen:
                copies_within.add(folder)
            seen.add(folder)
    return [f"{name}/{folder}" for folder in sorted(copies_within) if len(in_both[folder]) > 1]


def _sets_by_folder_notes(kept: Iterable[Candidate]) -> list[str]:
    """What --sets-by-folder did not do: no folder inside any class folder (the flag changed
    nothing), or images right in class folders beside such folders (compared by their pixels, as
    without the flag: frames of a clip there can go to both splits)."""
    loose: dict[str, int] = {}
    foldered: set[str] = set()
    for cand in kept:
        if _inner_folder(cand.rel) is None:
            loose[cand.label] = loose.get(cand.label, 0) + 1
        else:
            foldered.add(cand.label)
    if not foldered:
        return [
            "--sets-by-folder: no class folder holds folders, so no set was made by folder: the "
            "split is the one without the flag (a clip's frames kept together only while each is a "
            "near-copy of the next); put each clip in a folder of its own inside its class folder"
        ]
    beside = sorted(name for name in foldered if loose.get(name, 0) > 1)
    if not beside:
        return []
    shown = ", ".join(f"{name!r} ({loose[name]})" for name in beside[:5])
    return [
        f"--sets-by-folder: {counted(len(beside), 'class folder')} also "
        f"{'holds images right inside it, beside its' if len(beside) == 1 else 'hold images right inside them, beside their'} "
        f"folders ({shown}{', ...' if len(beside) > 5 else ''}): those are "
        "compared by their pixels only, so frames of one clip among them can go to both splits; "
        "move each clip's frames into a folder of its own"
    ]


def _sets_by_folder_hint(split_clips: list[str]) -> str | None:
    """A hint when folders inside class folders hold near-copies and went to both splits: if each
    folder is one clip, burst or object, only --sets-by-folder keeps it in one split for sure."""
    if not split_clips:
        return None
    shown = ", ".join(display_path(f) for f in split_clips[:3])
    return (
        f"{counted(len(split_clips), 'folder')} inside class folders ({shown}"
        f"{', ...' if len(split_clips) > 3 else ''}) {'holds' if len(split_clips) == 1 else 'hold'} "
        "near-copies of one another and went to both "
        "splits: if each folder holds one clip, burst or object's pictures, ingest again with "
        "--sets-by-folder to keep each in one split (the pixel test joins a clip's frames only while "
        "each is a near-copy of the next)"
    )


def _inner_folder(rel: str) -> str | None:
    """The folder that holds the file, below its class folder ('clip7', 'videos/clip7'; None: the
    class folder itself). The file's own folder, not the first level: a tree of
    <class>/videos/<clip>/ made each class one set."""
    parts = rel.split("/")
    return "/".join(parts[1:-1]) if len(parts) > 2 else None


def _with_folders(sets: list[list[int]], folders: list[str | None]) -> list[list[int]]:
    """`sets` (positions) joined with the sets of positions sharing a folder: a set and a folder
    that share an image are one set. In the order of each set's first position."""
    first: dict[str, int] = {}
    by_folder = ((first.setdefault(folder, p), p) for p, folder in enumerate(folders) if folder is not None)
    return joined(len(folders), itertools.chain(((m[0], p) for m in sets for p in m[1:]), by_folder))


# A split with fewer pictures than this (a set of near-copies counted once) gives weak evidence;
# components/data_contract.FEW_IMAGES is the data gate's same rule for copies of one image.
FEW_PICTURES = 5


def few_pictures_warning(name: str, images: Mapping[str, int], pictures: Mapping[str, int]) -> str | None:
    """A warning when a class's split holds fewer than FEW_PICTURES pictures once its near-copies
    (a clip's frames, one picture saved several ways) count as one, though more images: its
    numbers count images that are not independent. An audit's two classes of three 25-frame clips
    each (labels unrelated to the pictures) had one clip each in eval: 25 eval images of one
    picture, and a model that had learned nothing was blessed at 1.0 on one seed of four."""
    weak = [s for s in SPLITS if pictures.get(s, 0) < FEW_PICTURES and images.get(s, 0) > pictures.get(s, 0)]
    if not weak:
        return None
    listed = " and its ".join(
        f"{images[s]} {s} images are {pictures[s]} picture{'s' if pictures[s] != 1 else ''}" for s in weak
    )
    return (
        f"class {name!r}: its {listed}, with their near-copies (frames of a clip or burst, one picture "
        "saved again): each set is kept in one split, so a model cannot score what it memorised, and the "
        "gate's significance floor counts each set once, but its recall and the run's accuracy rest on "
        "that few independent pictures. Add pictures of it (other clips, other scenes)"
    )


def _same(members: list[Candidate]) -> str:
    """How a group's files are copies: "bytes" (every file identical) or "image" (one picture
    stored in files that differ: re-saved, or with other metadata)."""
    return "bytes" if len({c.sha256 for c in members}) == 1 else "image"


# Folder names that name a split of the data rather than a class.
SPLIT_NAMES = frozenset(
    {"train", "training", "val", "valid", "validation", "eval", "evaluation", "test", "testing", "dev"}
)


def subfolders(candidates: Iterable[Candidate]) -> dict[str, set[str]]:
    """Class -> the names of the folders right under it that hold its images (none for images
    that sit in the class folder itself)."""
    found: dict[str, set[str]] = {}
    for c in candidates:
        parts = c.rel.split("/")
        if len(parts) > 2:
            found.setdefault(c.label, set()).add(parts[1])
    return found


def _split_layout(classes: list[str], inner: Mapping[str, set[str]]) -> tuple[str | None, list[str]]:
    """(a refusal, warnings) for class folders holding subfolders named like classes.

    Ingest labels an image by the folder right under images_dir. A class folder named like a
    split ('train', 'test', ...) holding subfolders named like other classes, or like another
    such folder's subfolders, is a tree laid out by split: it would train 'test' as a class of
    its own (refused). Another class folder holding a subfolder named like another class
    (cat/dog/...) is warned about: those images are labelled by the outer folder.
    """
    folded = {name.casefold(): name for name in classes}
    split_like = [name for name in classes if name.casefold() in SPLIT_NAMES]
    laid_out: list[str] = []
    warnings: list[str] = []
    for name in classes:
        like = sorted(n for n in inner.get(name, set()) if folded.get(n.casefold(), name) != name)
        if name in split_like:
            like += sorted(
                n
                for n in inner.get(name, set()) - set(like)
                if any(n in inner.get(other, set()) for other in split_like if other != name)
            )
            if like:
                laid_out.append(f"{name!r} (holding {_names(like)})")
        elif like:
            warnings.append(
                f"class folder {name!r} holds {'a subfolder' if len(like) == 1 else 'subfolders'} named like "
                f"{'another class' if len(like) == 1 else 'other classes'} ({_names(like)}): their images are "
                f"labelled {name!r}, the folder right under the image directory; move them to their "
                "class folder if that is what they show"
            )
    if not laid_out:
        return None, warnings
    return (
        f"the tree looks laid out by split: class {'folder' if len(laid_out) == 1 else 'folders'} "
        f"{', '.join(laid_out)} {'is' if len(laid_out) == 1 else 'are'} named like "
        f"{'a split and holds' if len(laid_out) == 1 else 'splits and hold'} subfolders named like classes. An image's class is the folder right under the image "
        "directory, so this would train a split's name as a class. Lay the tree out as "
        "<images>/<class>/<images> (ingest makes the eval split itself: merge the splits' class "
        "folders), or ingest one split's folder as the image directory",
        warnings,
    )


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names[:10]) + (" ..." if len(names) > 10 else "")


def eval_count(n: int, eval_fraction: float) -> int:
    """round(eval_fraction * n), half up; >= 1 eval and >= 1 train when n >= 2."""
    if n < 2:
        return 0
    return min(max(math.floor(eval_fraction * n + 0.5), 1), n - 1)


def _rank(*parts: object) -> str:
    """A seeded, content-derived sort key (stable across runs and machines)."""
    return hashlib.sha256("\0".join(str(p) for p in parts).encode("utf-8")).hexdigest()


def _shard_ranges(n: int, num_shards: int) -> list[tuple[int, int]]:
    """[start, stop) of each of ``num_shards`` contiguous, near-equal slices of n."""
    return [(i * n // num_shards, (i + 1) * n // num_shards) for i in range(num_shards)]
