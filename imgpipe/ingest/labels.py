"""Class names: which folder names become labels, and the one normalisation applied.

A class folder's label is its name in Unicode NFC, and nothing else changes:
case, inner spaces, punctuation and every script are kept, so for a name
already in NFC (what Linux, Windows and APFS usually hold) the label is the
folder name byte for byte, all the way to the served model's class names.
NFC is the form text usually arrives in; macOS HFS+ and some archives store
decomposed (NFD) names, and "café" typed on two machines must be one class.

A folder is not used, with the reason in the report, when its name

- is not valid UTF-8 (bytes the file system holds that decode to no text):
  labels are stored as UTF-8 text;
- holds a control character (Unicode Cc: tab, CR, LF, DEL, C1) or a line or
  paragraph separator (Zl, Zp): TFT's label vocabulary is a text file of one
  name per line and silently drops names holding CR or LF (their examples
  would become class -1); the rest break one-line logs, CSV and reports;
- starts or ends with whitespace or an invisible format character (Unicode
  Cf: a zero-width space, a byte-order mark, ...): invisible in every report,
  so "cat" and "cat " would look like one class while being two;
- looks the same as another folder's name: the same label once normalised
  (e.g. "café" stored once composed and once decomposed), or the same once
  the invisible format characters inside are left out ("cat" and "c<U+200B>at")
  and each run of spaces of any kind is one space ("big cat", "big<U+00A0>cat",
  "big  cat": a page shows all three as "big cat").
  That is a class-name conflict; none of those folders is used, since which
  one is meant cannot be known. (A format character inside a name that looks
  like no other is kept: emoji sequences are joined with one, U+200D.)

(Empty names cannot occur: a folder always has a name.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from imgpipe.ingest.report import display_path
from trainer.class_names import NORMAL_FORM, looks, name_problem, normalise

__all__ = ["NORMAL_FORM", "ClassNames", "assign_labels", "label_problem", "looks", "normalise"]


def folder_text(name: str) -> str:
    """A folder name as text: its bytes read as UTF-8 (a byte that is not stays escaped).

    Python decodes file names with the locale's encoding: under `LC_ALL=C` with UTF-8 mode off
    (`PYTHONUTF8=0`) that is ASCII, and a valid UTF-8 name such as 'café' arrives as
    'caf\\udcc3\\udca9'. Labels are UTF-8 text whatever the locale."""
    return os.fsencode(name).decode("utf-8", "surrogateescape")


def label_problem(name: str) -> str | None:
    """Why folder `name` cannot be a class name, or None when it can (before conflicts)."""
    problem = name_problem(folder_text(name))
    return None if problem is None else f"{problem}; rename the folder"


@dataclass
class ClassNames:
    """Folder names -> labels, and the folders that are not used, with reasons."""

    labels: dict[str, str] = field(default_factory=dict)  # folder name -> label, in folder order
    rejected: dict[str, str] = field(default_factory=dict)  # folder name -> reason
    conflicts: list[dict[str, object]] = field(default_factory=list)  # [{"class", "folders"}]

    @property
    def normalised(self) -> list[dict[str, str]]:
        """Folders whose label differs from their name (report entries)."""
        return [
            {"folder": display_path(name), "class": label}
            for name, label in self.labels.items()
            if label != folder_text(name)
        ]


def assign_labels(folders: list[str]) -> ClassNames:
    """Labels for `folders` (names in order): the NFC form, or a reason the folder is not used."""
    result = ClassNames()
    by_label: dict[str, list[str]] = {}
    seen: dict[str, str] = {}  # what each usable name looks like
    for name in folders:
        problem = label_problem(name)
        if problem:
            result.rejected[name] = problem
        else:
            seen[name] = looks(folder_text(name))
            by_label.setdefault(seen[name], []).append(name)
    for name in folders:
        if name in result.rejected:
            continue
        label = normalise(folder_text(name))
        group = by_label[seen[name]]
        if len(group) == 1:
            result.labels[name] = label
            continue
        others = [ascii(other) for other in group if other != name]
        result.rejected[name] = (
            f"the name is the same class name as folder {', '.join(others)} once normalised "
            f"(Unicode {NORMAL_FORM}, invisible format characters left out, spaces as one: "
            f"{seen[name]!r}); merge or rename them"
        )
        if name == group[0]:
            result.conflicts.append({"class": seen[name], "folders": [display_path(f) for f in group]})
    return result
