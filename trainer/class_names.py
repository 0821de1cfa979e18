"""What makes text a usable class name, and which names print (almost) alike.

Shared by `imgpipe ingest` (folder names) and the DataGate (the labels of
TFRecords made anywhere), so both apply one rule: a label is NFC text with no
control character, line or paragraph separator, and no whitespace or invisible
format character (Unicode Cf) at either end; two labels that look the same once
normalised (`looks`) are one name given twice. Names that only print *almost*
alike (letter case, Unicode's compatibility forms, a look-alike letter of
another script) may be meant: they are warned about, not refused.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable

NORMAL_FORM = "NFC"
_FORBIDDEN_CATEGORIES = {"Cc": "a control character", "Zl": "a line separator", "Zp": "a paragraph separator"}
# Scripts whose letters look like Latin ones (a Cyrillic "а", a Greek "ο"): a name that mixes
# letters of two of them usually holds a look-alike typed or pasted by mistake.
_LOOK_ALIKE_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a class name ("the name holds ..."), or None when it can."""
    undecodable = [ord(c) - 0xDC00 for c in name if 0xDC80 <= ord(c) <= 0xDCFF]  # os.fsdecode's escapes
    if undecodable or any(unicodedata.category(c) == "Cs" for c in name):
        shown = " ".join(f"0x{b:02X}" for b in undecodable[:4]) or "a lone surrogate"
        return f"the name is not valid UTF-8 ({shown}); labels are stored as UTF-8 text"
    if not name:
        return "the name is empty"
    for char in name:
        kind = _FORBIDDEN_CATEGORIES.get(unicodedata.category(char))
        if kind:
            return f"the name holds {kind} (U+{ord(char):04X})"
    if name != name.strip():
        return "the name starts or ends with whitespace"
    for char in (name[0], name[-1]):
        if unicodedata.category(char) == "Cf":
            return f"the name starts or ends with an invisible character (U+{ord(char):04X})"
    return None


def normalise(name: str) -> str:
    """A class name's one normalisation: its Unicode NFC form."""
    return unicodedata.normalize(NORMAL_FORM, name)


def looks(name: str) -> str:
    """What a name looks like: its NFC form without invisible format characters (Unicode Cf), with
    each run of spaces of any kind (a no-break space U+00A0, U+2009, two spaces) one space."""
    visible = "".join(c for c in normalise(name) if unicodedata.category(c) != "Cf")
    return " ".join(visible.split())


def is_plain(name: str) -> bool:
    """Whether `name` prints as what it is: NFC, no character `name_problem` refuses, and no
    invisible format character or other kind of space inside (`looks` leaves it unchanged).
    Messages and reports show any other name with its code points."""
    return unicodedata.is_normalized(NORMAL_FORM, name) and name_problem(name) is None and looks(name) == name


def scripts(name: str) -> set[str]:
    """Which of Latin, Cyrillic and Greek the letters of `name` come from (by their Unicode names)."""
    found = set()
    for char in name:
        if char.isalpha():
            script = unicodedata.name(char, "").split(" ", 1)[0]
            if script in _LOOK_ALIKE_SCRIPTS:
                found.add(script)
    return found


_TRIMMED = ". \t"


def _folded(name: str) -> str:
    return unicodedata.normalize("NFKC", name).casefold()


# Marks that print alike or stand for one another in names: Unicode's dashes and minus signs
# (a hyphen typed by a word processor, U+2010, prints as "-"), apostrophes and quotes (a curly
# "’" pasted beside a typed "'"), and the separators between words ("big cat", "big_cat",
# "big-cat": one name to a person, three folders).
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"
_QUOTES = "\u2018\u2019\u201a\u201b\u02bc\u02b9\u2032\uff07\u0060"
_MARKS = str.maketrans({**dict.fromkeys(_DASHES, "-"), **dict.fromkeys(_QUOTES, "'")})
# A dash before a digit that does not follow a letter or digit is a sign ("-90" and "90",
# "rot_-90" and "rot_90" are other angles), not a separator ("level-2" is "level 2").
_SEPARATOR = re.compile(r"[\s_]+|(?<=[^\W_])-|-(?!\d)")


def _marks_folded(name: str) -> str:
    """The name with its dashes and quotes made one each, and separators between words (spaces,
    '_', a '-' not before a digit) one space."""
    return " ".join(_SEPARATOR.sub(" ", _folded(name.strip(_TRIMMED)).translate(_MARKS)).split())


def almost_alike(names: Iterable[str], what: str, remedy: str) -> list[str]:
    """Warnings for names that print almost alike but are other text: letter case only; the same
    name in Unicode's compatibility forms (fullwidth "ｃａｔ" and "cat", ligatures, superscripts:
    equal under NFKC, case aside); names apart only by dots or spaces at their ends ("cat." and
    "cat": one folder on Windows); names apart only by dashes, apostrophes or the separators
    between words ("x-ray" and "x‐ray", "men's" and "men’s", "big cat" and "big_cat"); and a
    name mixing Latin, Cyrillic or Greek letters (a Cyrillic "а" in "cаt"). `what`: the plural noun ("classes", "labels"); `remedy`: what to do if they are
    one. They stay the classes they are: only a person can say whether they are one."""
    names = list(names)
    out = []
    # Each level's groups of names equal under its key, warned about when the level before tells
    # them apart (so a pair is named once, at the first level that joins it).
    levels: list[tuple[Callable[[str], str], str]] = [
        # not casefold: it also folds "ﬁ" to "fi"
        (str.lower, "differ only in letter case: they are {n} classes"),
        (
            _folded,
            "are one name in Unicode's compatibility forms (fullwidth or other variants of the same "
            "letters): they print almost alike and are {n} classes",
        ),
        (
            lambda name: _folded(name.strip(_TRIMMED)),
            "differ only in dots or spaces at their ends (Windows and SMB shares drop trailing ones: "
            "one folder there): they are {n} classes",
        ),
        (
            _marks_folded,
            "differ only in dashes, apostrophes, quotes or the separators between words (space, '-', "
            "'_'): they are {n} classes",
        ),
    ]
    before: Callable[[str], str] = str
    for key, text in levels:
        groups: dict[str, list[str]] = {}
        for name in names:
            groups.setdefault(key(name), []).append(name)
        out.extend(
            f"{what} {', '.join(repr(n) for n in group)} {text.format(n=len(group))}; if they are one, {remedy}"
            for group in groups.values()
            if len(group) > 1 and len({before(n) for n in group}) > 1
        )
        before = key
    singular = what[:-2] if what.endswith("ses") else what[:-1]
    for name in names:
        found = scripts(name)
        if len(found) > 1:
            others = ", ".join(
                f"{c!r} U+{ord(c):04X}" for c in name if c.isalpha() and scripts(c) - {"LATIN"}
            )
            out.append(
                f"{singular} {name!r} mixes {' and '.join(s.title() for s in sorted(found))} letters ({others}): "
                "a look-alike letter typed by mistake makes it another class than the name it looks like"
            )
    return out
