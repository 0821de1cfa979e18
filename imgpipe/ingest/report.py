"""IngestReport: what ingest wrote and everything it did not write, with reasons.

Its ``to_dict()`` is the JSON of ``ingest_report.json`` and of ``imgpipe ingest``'s
stdout; the key order is fixed so the file is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imgpipe.ingest.contract import SPLITS
from trainer.features import counted


def display_path(path: str) -> str:
    """A file name as report text that JSON can hold and no other name shares.

    Each byte of the name that is not UTF-8 is shown as ``\\xNN`` and a backslash as two (as
    ``ls --escape`` shows names), so ``caf\\xe9.png`` (a Latin-1 name) and a name that holds
    that text (shown ``caf\\\\xe9.png``) stay two paths.
    """
    doubled = path.replace("\\", "\\\\")
    try:  # the name's own bytes: Python lists an undecodable byte as a surrogate escape
        raw = doubled.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no listed name holds
        return doubled.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def display_text(text: str) -> str:
    """A message as report text JSON can hold: undecodable file-name bytes in it shown as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class IngestReport:
    """What ``ingest`` wrote and everything it did not write, with reasons.

    ``counts``: class -> {"train": n, "eval": n} records written. ``shards``:
    split -> shard file names. ``files_scanned``: every entry looked at (a
    hidden or unfollowed folder is one entry, its files are not listed); it
    equals records written + skipped + duplicates + label-conflict files.
    ``skipped``: [{"path", "reason"}] (paths relative to images_dir).
    ``duplicates``: one entry per set of copies of one image in a class, naming the
    copy ``kept`` (written to ``split``) and the ``duplicates`` not written;
    ``same`` is "bytes" (identical files) or "image" (one picture stored in files that
    differ: ``images.image_key``), ``sha256`` the kept file's.
    ``label_conflicts``: one image under several classes, none written (``same`` and
    ``sha256``, the first file's, as for duplicates).
    ``near_copies``: [{"class", "split", "files"}]: sets of near-copies in a class (one
    picture saved again, resized, brighter or darker: ``near_copies.py``), every file written,
    each set to one ``split`` ("both" when a class is one such set, warned), with its files'
    image ``fingerprints`` (trainer.features.image_fingerprint, 16 hex digits each). With
    ``sets_by_folder`` (--sets-by-folder), the images under each folder inside a class folder
    are a set too, joined with any near-copies they share; such a set names its ``folders``.
    ``split_warnings``: the ``warnings`` on copies of one picture in both splits (a class that is
    one set, clips the pixel test split, what --sets-by-folder left undone); the data gate
    repeats them in the run.
    ``empty_classes``: class folders with no usable image (left out).
    ``left_out_classes``: [{"folder", "files", "reason"}]: every class folder that is not a
    class in the output (a refused name, a name conflict, no usable image), with the files
    found under it. Ingest refuses a tree where one holding files would be left out, unless
    ``allow_left_out_classes``.
    ``max_pixels``: the pixel limit files were checked against.
    ``rejected_class_folders``: [{"folder", "reason"}]: folders not used as classes
    (a name that cannot be a label, or a name conflict); their files are in ``skipped``.
    ``class_name_conflicts``: [{"class", "folders"}]: folders whose names are one
    class name once normalised (Unicode NFC); none of them is used.
    ``normalised_classes``: [{"folder", "class"}]: folders whose label is their
    name's NFC form, which differs from the name as stored.
    ``rotated``: [{"path", "orientation"}]: accepted files with an EXIF orientation
    other than 1; the preprocessing graph turns them upright, in training and serving.
    """

    images_dir: str
    out_dir: str
    seed: int
    eval_fraction: float
    classes: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    shards: dict[str, list[str]] = field(default_factory=dict)
    files_scanned: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    label_conflicts: list[dict[str, Any]] = field(default_factory=list)
    near_copies: list[dict[str, Any]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    max_pixels: int = 0
    rejected_class_folders: list[dict[str, str]] = field(default_factory=list)
    class_name_conflicts: list[dict[str, Any]] = field(default_factory=list)
    normalised_classes: list[dict[str, str]] = field(default_factory=list)
    rotated: list[dict[str, Any]] = field(default_factory=list)
    left_out_classes: list[dict[str, Any]] = field(default_factory=list)
    allow_left_out_classes: bool = False
    sets_by_folder: bool = False
    split_warnings: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        """Records written per split."""
        return {s: sum(c.get(s, 0) for c in self.counts.values()) for s in SPLITS}

    @property
    def num_duplicates(self) -> int:
        """Files not written because a copy of their image in the same class was."""
        return sum(len(d["duplicates"]) for d in self.duplicates)

    @property
    def num_conflicting_files(self) -> int:
        """Files not written because their image sits under several classes."""
        return sum(len(c["files"]) for c in self.label_conflicts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; key order is fixed so the JSON file is reproducible."""
        return {
            "images_dir": self.images_dir,
            "out_dir": self.out_dir,
            "seed": self.seed,
            "eval_fraction": self.eval_fraction,
            "max_pixels": self.max_pixels,
            "classes": list(self.classes),
            "counts": {c: dict(v) for c, v in self.counts.items()},
            "totals": self.totals,
            "shards": {s: list(v) for s, v in self.shards.items()},
            "files_scanned": self.files_scanned,
            "num_skipped": len(self.skipped),
            "skipped": [dict(s) for s in self.skipped],
            "num_duplicates": self.num_duplicates,
            "duplicates": [dict(d) for d in self.duplicates],
            "num_label_conflict_files": self.num_conflicting_files,
            "label_conflicts": [dict(c) for c in self.label_conflicts],
            "num_near_copy_files": sum(len(n["files"]) for n in self.near_copies),
            "near_copies": [dict(n) for n in self.near_copies],
            "empty_classes": list(self.empty_classes),
            "left_out_classes": [dict(c) for c in self.left_out_classes],
            "allow_left_out_classes": self.allow_left_out_classes,
            "sets_by_folder": self.sets_by_folder,
            "split_warnings": list(self.split_warnings),
            "rejected_class_folders": [dict(r) for r in self.rejected_class_folders],
            "class_name_conflicts": [dict(c) for c in self.class_name_conflicts],
            "normalised_classes": [dict(n) for n in self.normalised_classes],
            "num_rotated": len(self.rotated),
            "rotated": [dict(r) for r in self.rotated],
            "warnings": list(self.warnings),
        }


def left_out_files(left_out: dict[str, Any]) -> str:
    """'3 files' for an entry of ``left_out_classes``; its files are None when the folder could
    not be listed (a link to nothing, no permission)."""
    files = left_out.get("files")
    return "its files could not be counted" if files is None else counted(files, "file")
