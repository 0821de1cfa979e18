"""Class folder names -> labels: the one normalisation (NFC), refused names, name conflicts."""

from __future__ import annotations

import io
import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgpipe.ingest import CLASSES_FILE, IngestError, ingest
from imgpipe.ingest.labels import assign_labels, label_problem, normalise

NFC_CAFE = unicodedata.normalize("NFC", "café")
NFD_CAFE = unicodedata.normalize("NFD", "café")

# Names ingest must carry unchanged, byte for byte, to the model.
ACCEPTED = [
    "cat",
    "Cat",
    "golden retriever",
    NFC_CAFE,
    "日本語",
    "🐱 emoji",
    "a,b;c",
    "quote'\"",
    "back\\slash",
    "-dash",
    "#hash",
    "percent%20",
    "mid\u00a0nbsp",  # a no-break space inside is kept
    "\U0001f468\u200d\U0001f469\u200d\U0001f467 family",  # an emoji joined by U+200D (Cf) inside
]
REFUSED = {
    "cat ": "whitespace",
    " cat": "whitespace",
    "\u00a0nbsp": "whitespace",
    "tab\there": "control character (U+0009)",
    "line\nbreak": "control character (U+000A)",
    "carriage\rreturn": "control character (U+000D)",
    "del\x7f": "control character (U+007F)",
    "nel\x85": "control character (U+0085)",
    "line\u2028sep": "line separator (U+2028)",
    "para\u2029sep": "paragraph separator (U+2029)",
    "cat\u200b": "invisible character (U+200B)",
    "\ufeffcat": "invisible character (U+FEFF)",
}


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted_names_are_their_own_label(name: str) -> None:
    assert label_problem(name) is None
    assert normalise(name) == name


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_names_say_why(name: str) -> None:
    problem = label_problem(name)
    assert problem is not None and REFUSED[name] in problem


def test_decomposed_names_become_nfc_and_collisions_are_conflicts() -> None:
    names = assign_labels(["a", NFD_CAFE, "b"])
    assert names.labels == {"a": "a", NFD_CAFE: NFC_CAFE, "b": "b"}
    assert names.normalised == [{"folder": NFD_CAFE, "class": NFC_CAFE}]

    names = assign_labels(["a", NFC_CAFE, NFD_CAFE, "cat ", "b"])
    assert names.labels == {"a": "a", "b": "b"}
    assert set(names.rejected) == {NFC_CAFE, NFD_CAFE, "cat "}
    assert names.conflicts == [{"class": NFC_CAFE, "folders": [NFC_CAFE, NFD_CAFE]}]
    assert "'cafe\\u0301'" in names.rejected[NFC_CAFE]  # the other folder, escaped so it shows
    assert "'caf\\xe9'" in names.rejected[NFD_CAFE]


def test_names_that_differ_only_in_invisible_characters_are_conflicts() -> None:
    names = assign_labels(["c\u200bat", "cat", "dog", "d\u2060og", "owl\u200d"])
    assert names.labels == {}
    assert set(names.rejected) == {"c\u200bat", "cat", "dog", "d\u2060og", "owl\u200d"}
    assert "invisible character (U+200D)" in names.rejected["owl\u200d"]
    assert names.conflicts == [
        {"class": "cat", "folders": ["c\u200bat", "cat"]},
        {"class": "dog", "folders": ["dog", "d\u2060og"]},
    ]
    assert "'c\\u200bat'" in names.rejected["cat"]


def test_names_that_differ_only_in_their_spaces_are_conflicts() -> None:
    """A no-break space, a thin space or two spaces look like one space on every page."""
    names = assign_labels(["big cat", "big\u00a0cat", "big  cat", "big\u2009cat", "dog", "mid\u00a0nbsp"])
    assert names.labels == {"dog": "dog", "mid\u00a0nbsp": "mid\u00a0nbsp"}  # alone, kept as named
    assert names.conflicts == [
        {"class": "big cat", "folders": ["big cat", "big\u00a0cat", "big  cat", "big\u2009cat"]}
    ]
    assert "'big\\xa0cat'" in names.rejected["big cat"] and "spaces as one" in names.rejected["big cat"]


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _labels_written(out: Path) -> set[str]:
    import tensorflow as tf

    labels = set()
    for split in ("train", "eval"):
        for path in sorted((out / split).iterdir()):
            for record in tf.data.TFRecordDataset(str(path)):
                example = tf.train.Example.FromString(record.numpy())
                labels.add(example.features.feature["label"].bytes_list.value[0].decode("utf-8"))
    return labels


def test_ingest_keeps_accepted_names_and_reports_refused_ones(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    seed = 0
    folders = {name: 2 for name in ACCEPTED} | {name: 1 for name in REFUSED}
    folders |= {NFD_CAFE: 2, "upper": 2}  # NFD_CAFE collides with NFC_CAFE
    for name, count in folders.items():
        (images / name).mkdir(parents=True)
        for i in range(count):
            seed += 1
            (images / name / f"{i}.png").write_bytes(_png(seed))

    with pytest.raises(IngestError, match=r"^14 class folders with files would be left out") as caught:
        ingest(str(images), str(out), eval_fraction=0.5, seed=1)
    assert {c["folder"] for c in caught.value.report["left_out_classes"]} == set(REFUSED) | {
        NFC_CAFE,
        NFD_CAFE,
    }
    assert not out.exists()
    report = ingest(str(images), str(out), eval_fraction=0.5, seed=1, allow_left_out_classes=True)

    used = [n for n in ACCEPTED if n != NFC_CAFE] + ["upper"]
    assert sorted(report.classes) == sorted(used)
    assert _labels_written(out) == set(used)  # byte for byte: str equality of decoded UTF-8
    assert sorted(json.loads((out / CLASSES_FILE).read_text(encoding="utf-8"))) == sorted(used)
    rejected = {r["folder"]: r["reason"] for r in report.rejected_class_folders}
    assert set(rejected) == set(REFUSED) | {NFC_CAFE, NFD_CAFE}
    # Folders are listed in name order: the decomposed name sorts first.
    assert report.class_name_conflicts == [{"class": NFC_CAFE, "folders": [NFD_CAFE, NFC_CAFE]}]
    # Every file of a folder that is not used is listed, with the folder's reason.
    refused_files = [s for s in report.skipped if "is not used" in s["reason"]]
    assert len(refused_files) == len(REFUSED) + 4
    assert report.files_scanned == sum(report.totals.values()) + len(report.skipped)
    saved = json.loads((out / "ingest_report.json").read_text(encoding="utf-8"))
    assert saved["class_name_conflicts"] == report.class_name_conflicts
    assert set(saved["classes"]) == set(used)


def test_a_decomposed_folder_name_is_stored_composed(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    for c, name in enumerate([NFD_CAFE, "tea"]):
        (images / name).mkdir(parents=True)
        for i in range(3):
            (images / name / f"{i}.png").write_bytes(_png(10 * c + i))
    report = ingest(str(images), str(out))
    assert sorted(report.classes) == sorted([NFC_CAFE, "tea"])
    assert report.normalised_classes == [{"folder": NFD_CAFE, "class": NFC_CAFE}]
    assert _labels_written(out) == {NFC_CAFE, "tea"}


def test_utf8_folder_names_are_their_text_under_an_ascii_locale(tmp_path) -> None:
    """Under LC_ALL=C with UTF-8 mode off, Python decodes file names as ASCII: 'café' arrives as
    'caf\\udcc3\\udca9'. It is still the class 'café'; a name whose bytes are not UTF-8 is not."""
    import os
    import subprocess
    import sys

    (tmp_path / "café").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LC_") and k != "LANG"}
    listed = subprocess.run(
        [sys.executable, "-X", "utf8=0", "-c", f"import os; print(ascii(os.listdir({str(tmp_path)!r})))"],
        env={**env, "LC_ALL": "C", "PYTHONUTF8": "0"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert listed == ascii(["caf\udcc3\udca9"])  # what such a process sees
    got = assign_labels(["caf\udcc3\udca9", "latin\udce9"])
    assert got.labels == {"caf\udcc3\udca9": "café"}
    assert "not valid UTF-8 (0xE9)" in got.rejected["latin\udce9"]
    assert label_problem("caf\udcc3\udca9") is None
