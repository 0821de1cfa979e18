"""The scan: list a class-per-folder image tree, read and check every file.

Input is the layout of Keras ``image_dataset_from_directory``::

    images_dir/<class_name>/**/<image files>

Each class folder's name becomes its label (``labels``: Unicode NFC; names
that cannot be labels, or that collide once normalised, are refused with the
reason). Each non-hidden file under a used class folder is read once and
checked (``images.inspect_image``, with the pixel limit); a good one becomes a
``Candidate`` (path, class, SHA-256, size and the image key that tells copies
stored as different files: no pixel data is kept, so memory stays bounded), anything else a ``skipped`` entry with its reason. Entries that
are not walked (hidden entries, files directly in ``images_dir``, unlistable
directories, directory links that are not followed) and the files of refused
class folders are skipped entries too: nothing is dropped silently. Nothing is
written.

Directory links (at any depth, class folders included) are followed only when
they lead outside the image tree, to a folder not scanned yet and not an
ancestor of the link itself. A link into the tree is not followed: the files
it leads to are scanned where they are, under their own class folder, so an
image's class is always the folder it sits in, never the place a link is. The
same holds for links to files, and of two class folder links to one folder
only the first (by name) is used. A file over ``images.SNIFF_OVER`` bytes that
does not start as an accepted format is skipped without being read.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from imgpipe.ingest.errors import IngestError
from imgpipe.ingest.images import inspect_image, large_non_image, read_regular_file
from imgpipe.ingest.labels import ClassNames, assign_labels
from imgpipe.ingest.plan import Candidate
from imgpipe.ingest.report import display_path, display_text
from trainer.features import DEFAULT_MAX_PIXELS

# The pipeline resizes every image to a square, no crop: one whose long side is more than this
# many times its short side (a 2 x 300 strip) is squeezed out of shape, which ingest warns about.
MAX_ASPECT = 4

log = logging.getLogger(__name__)

NOT_IN_CLASS_FOLDER = "not in a class folder (files directly in images_dir are ignored)"
HIDDEN = "hidden (the name starts with '.'): not scanned"
# Folders that file managers and NAS boxes write beside a user's pictures: their thumbnails and
# resource forks are other versions of the pictures (a leak across the splits), not more of them.
SYSTEM_FOLDERS = {
    "@eaDir": "a Synology NAS's thumbnail folder (@eaDir): not scanned",
    "__MACOSX": "macOS resource forks from a zip archive (__MACOSX): not scanned",
    "#recycle": "a NAS's recycle bin (#recycle): not scanned",
    "$RECYCLE.BIN": "the Windows recycle bin: not scanned",
}
LINK_SCANNED = "directory link not followed: it leads to a class folder or to a folder scanned already"
LINK_LOOP = "directory link not followed: it leads to an ancestor of itself or of the image tree (a loop)"
SCANNED_THROUGH_LINK = "folder not scanned again: a directory link outside its class already led to it"
FILE_LINK_IN_TREE = "file link into the image tree not followed: the file is scanned (or skipped) where it is"
SAME_CLASS_FOLDER = "class folder link not followed: it leads to the same folder as class folder {first!r}"


class Listing(NamedTuple):
    """The tree as listed: labels of the used class folders, their files, and the naming."""

    classes: list[str]  # labels of the used class folders, in folder order
    files: list[tuple[str, str, str]]  # (rel, abs, label)
    names: ClassNames  # folder -> label, refused folders and name conflicts
    folder_files: dict[str, int]  # class folder name -> files found under it (used or not)
    # Entries of the image directory meant as class folders whose files could not be counted
    # (a link to nothing, a folder it may not list): name -> why.
    unlisted: dict[str, str]


@dataclass
class Scan:
    """What a scan found: class folders, usable files, and everything skipped."""

    folders: list[str]  # labels of the used class folders, in folder order
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # [{"path", "reason"}]
    files_scanned: int = 0  # every entry looked at (a hidden or unfollowed folder counts once)
    names: ClassNames = field(default_factory=ClassNames)
    rotated: list[dict[str, Any]] = field(default_factory=list)  # [{"path", "orientation"}]
    # Images whose long side is over MAX_ASPECT times the short one: [{"path", "width", "height"}]
    stretched: list[dict[str, Any]] = field(default_factory=list)
    folder_files: dict[str, int] = field(default_factory=dict)  # class folder name -> files under it
    unlisted: dict[str, str] = field(default_factory=dict)  # Listing.unlisted

    def nothing_usable(self, images_dir: str) -> str | None:
        """Why there is nothing to plan (no decodable image at all), or None."""
        if self.candidates:
            return None
        if not self.skipped:
            return f"no image files in any class folder of {images_dir}"
        first = self.skipped[0]
        return (
            f"no usable images in {images_dir} ({len(self.skipped)} files skipped, "
            f"e.g. {first['path']}: {first['reason']})"
        )


def check_images_dir(images_dir: str) -> None:
    """Raise IngestError unless ``images_dir`` is an existing directory."""
    if not os.path.exists(images_dir):
        raise IngestError(f"the image directory {images_dir} does not exist")
    if not os.path.isdir(images_dir):
        raise IngestError(f"the image directory {images_dir} is not a directory")


def scan_tree(
    images_dir: str,
    *,
    progress: Callable[[str], None] | None = None,
    progress_every: int = 1000,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Scan:
    """List ``images_dir`` and check every file in its class folders.

    ``progress`` gets a line every ``progress_every`` files (default: this
    module's logger). Files over ``max_pixels`` (width x height, from the
    header) are skipped undecoded. Raises IngestError when the tree cannot be
    listed or has no class folder.
    """
    say = progress or log.info
    skipped: list[dict[str, str]] = []
    try:
        folders, listed, names, folder_files, unlisted = list_tree(images_dir, skipped)
    except OSError as exc:
        raise IngestError(f"cannot list the image directory {images_dir}: {exc}") from exc
    not_walked = len(skipped)
    if not folders and not names.rejected and not unlisted:
        raise IngestError(
            f"no class subfolders in {images_dir}: "
            f"expected {images_dir}/<class_name>/<images>"
            + (f" ({not_walked} files found directly in it are ignored)" if not_walked else "")
        )

    scan = Scan(
        folders,
        skipped=skipped,
        files_scanned=len(listed) + not_walked,
        names=names,
        folder_files=folder_files,
        unlisted=unlisted,
    )
    total = len(listed)
    for done, (rel, path, label) in enumerate(listed, start=1):
        try:
            unread = large_non_image(path)
            data = None if unread else read_regular_file(path)
        except OSError as exc:
            unread = display_text(f"cannot read: {exc.strerror or exc}")
            data = None
        if unread:
            skipped.append({"path": display_path(rel), "reason": unread})
        if data is not None:
            check = inspect_image(data, max_pixels)  # its header's size too: read once
            if check.reason is None:
                digest = hashlib.sha256(data).hexdigest()
                scan.candidates.append(Candidate(rel, label, digest, len(data), check.image, check.thumb))
                if max(check.width, check.height) > MAX_ASPECT * min(check.width, check.height):
                    scan.stretched.append(
                        {"path": display_path(rel), "width": check.width, "height": check.height}
                    )
                if check.orientation != 1:
                    scan.rotated.append({"path": display_path(rel), "orientation": check.orientation})
            else:
                skipped.append({"path": display_path(rel), "reason": check.reason})
        if done % progress_every == 0 and done < total:
            say(f"checked {done}/{total} files")
        del data  # one file's bytes at a time
    return scan


def list_tree(root: str, skipped: list[dict[str, str]]) -> Listing:
    """The used classes, (rel, abs, label) of every non-hidden file under them, and the naming.

    ``rel`` is '/'-separated and relative to ``root``; like ``abs`` it keeps
    undecodable file-name bytes as they are (``display_path`` makes them text).

    Entries that are not walked (files directly in ``root``, unlistable or
    unfollowed directories) and every file of a class folder whose name is
    refused (``labels.assign_labels``) are appended to ``skipped``. Entries of
    ``root`` meant as class folders that cannot be listed (a link to nothing: an
    unmounted share; a link that cannot be followed; no permission) are also in ``unlisted``,
    so ingest can refuse a tree that would lose a class (a link to a folder scanned anyway, or
    to an ancestor, is only skipped: nothing of it is lost). Raises OSError when
    ``root`` itself cannot be listed.
    """
    with os.scandir(root) as entries:
        ordered = sorted(entries, key=lambda e: e.name)
    tree = os.path.realpath(root)
    class_dirs: list[os.DirEntry[str]] = []
    class_reals: dict[str, str] = {}  # real path -> the first class folder name that leads to it
    unlisted: dict[str, str] = {}  # class folders whose files cannot be counted: lost, not skipped

    def not_a_class(name: str, rel: str, reason: str) -> None:
        skipped.append({"path": rel, "reason": reason})
        unlisted[name] = reason

    for entry in ordered:
        rel = display_path(_rel(root, entry.path))
        if reason := _not_scanned(entry.name):
            skipped.append({"path": rel, "reason": reason})
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError as exc:  # a link loop, or a link into a folder it may not enter
            not_a_class(entry.name, rel, display_text(f"cannot follow the link: {exc.strerror or exc}"))
            continue
        if not is_dir and _dangling_folder_link(entry):
            target = display_text(os.readlink(entry.path))
            not_a_class(entry.name, rel, f"a link to {target}, which does not exist (a share not mounted?)")
            continue
        # Links to folders scanned anyway (into the tree, a second name for a class folder) or to
        # an ancestor: skipped, their files are not lost.
        problem = _link_problem(tree, entry.path, tree) if is_dir and entry.is_symlink() else None
        if problem:
            skipped.append({"path": rel, "reason": problem})
            continue
        if is_dir:
            real = os.path.realpath(entry.path)
            if real in class_reals:  # two class links to one folder: each image under two labels
                skipped.append({"path": rel, "reason": SAME_CLASS_FOLDER.format(first=class_reals[real])})
                continue
            class_reals[real] = entry.name
            class_dirs.append(entry)
        else:
            skipped.append({"path": rel, "reason": NOT_IN_CLASS_FOLDER})
    names = assign_labels([e.name for e in class_dirs])
    seen = {os.path.realpath(e.path) for e in class_dirs}
    files: list[tuple[str, str, str]] = []
    folder_files: dict[str, int] = {}
    for entry in class_dirs:
        walked, unlistable = _walk_class(root, tree, entry.path, seen, skipped)
        folder_files[entry.name] = len(walked)
        if unlistable:
            unlisted[entry.name] = unlistable
        if entry.name in names.labels:
            files += [(rel, path, names.labels[entry.name]) for rel, path in walked]
            continue
        reason = f"class folder {entry.name!r} is not used: {names.rejected[entry.name]}"
        skipped += [{"path": display_path(rel), "reason": reason} for rel, _ in walked]
    return Listing(list(names.labels.values()), files, names, folder_files, unlisted)


def _dangling_folder_link(entry: os.DirEntry[str]) -> bool:
    """A link in the image directory to nothing, named like a folder (no file extension): a
    class folder on a share that is not mounted, not a stray file link."""
    return entry.is_symlink() and not os.path.exists(entry.path) and not os.path.splitext(entry.name)[1]


def _walk_class(
    root: str, tree: str, class_dir: str, seen: set[str], skipped: list[dict[str, str]]
) -> tuple[list[tuple[str, str]], str | None]:
    """All non-hidden files under ``class_dir`` (recursively, sorted) as (rel, abs), and why
    ``class_dir`` itself could not be listed (None when it could).

    ``tree`` is the real path of ``root``. Directory links are followed only
    as the module docstring says (``_link_problem``); ``seen`` holds the real
    folders scanned so far, so nothing is scanned twice. Every entry not walked
    is reported in ``skipped``, so a loop or a link to ``/`` cannot run away.
    """
    files: list[tuple[str, str]] = []
    unlistable: list[str] = []

    def on_error(exc: OSError) -> None:
        where = exc.filename or class_dir
        reason = display_text(f"cannot list directory: {exc.strerror or exc}")
        skipped.append({"path": display_path(_rel(root, where)), "reason": reason})
        if where == class_dir:
            unlistable.append(reason)

    def skip(path: str, reason: str) -> None:
        skipped.append({"path": display_path(_rel(root, path)), "reason": reason})

    for dirpath, dirnames, filenames in os.walk(class_dir, onerror=on_error, followlinks=True):
        keep = []
        for name in sorted(dirnames):
            path = os.path.join(dirpath, name)
            if reason := _not_scanned(name):
                skip(path, reason)
                continue
            real = os.path.realpath(path)
            if os.path.islink(path):
                problem = _link_problem(tree, path, os.path.realpath(dirpath))
                if problem or real in seen:
                    skip(path, problem or LINK_SCANNED)
                    continue
            elif real in seen:
                skip(path, SCANNED_THROUGH_LINK)
                continue
            seen.add(real)
            keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if name.startswith("."):
                skip(path, HIDDEN)
            elif os.path.islink(path) and _is_within(os.path.realpath(path), tree):
                skip(path, FILE_LINK_IN_TREE)  # else its bytes would sit under two classes
            else:
                files.append((_rel(root, path), path))
    return files, (unlistable[0] if unlistable else None)


def _not_scanned(name: str) -> str | None:
    """Why a folder (or an entry of the image directory) named `name` is not scanned: hidden, or
    one of SYSTEM_FOLDERS; None when it is scanned."""
    return HIDDEN if name.startswith(".") else SYSTEM_FOLDERS.get(name)


def _link_problem(tree: str, link: str, parent: str) -> str | None:
    """Why directory link ``link`` (in real folder ``parent``) is not followed, or None.

    ``tree`` is the real path of the image tree. Not followed: a link
    to an ancestor of the tree or of its own folder (a loop), and a link into
    the tree (its files are scanned where they are).
    """
    real = os.path.realpath(link)
    if _is_within(tree, real) or _is_within(parent, real):
        return LINK_LOOP
    if _is_within(real, tree):
        where = display_path(_rel(tree, real))
        return (
            f"directory link into the image tree ({where}) not followed: the files there "
            "are scanned where they are, under their own class folder"
        )
    return None


def _is_within(path: str, parent: str) -> bool:
    return os.path.commonpath([path, parent]) == parent


def _rel(root: str, path: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")
