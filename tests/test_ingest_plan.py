"""The ingest plan on hand-made candidates: no files, no TensorFlow, no I/O."""

from __future__ import annotations

import random

import pytest

from imgpipe.ingest.contract import SPLITS
from imgpipe.ingest.plan import TARGET_SHARD_BYTES, Candidate, Plan, eval_count, make_plan


def _cand(rel: str, content: str, size: int = 100) -> Candidate:
    """A candidate whose 'hash' is a readable content tag (the plan never re-hashes)."""
    return Candidate(rel, rel.split("/")[0], f"sha-{content}", size)


def _tree(sizes: dict[str, int]) -> list[Candidate]:
    """n distinct images per class, named <class>/<i>.png."""
    return [_cand(f"{name}/{i}.png", f"{name}{i}") for name, n in sizes.items() for i in range(n)]


def _plan(candidates: list[Candidate], folders: list[str] | None = None, **kwargs: object) -> Plan:
    kwargs.setdefault("seed", 42)
    kwargs.setdefault("eval_fraction", 0.2)
    folders = folders if folders is not None else sorted({c.label for c in candidates})
    return make_plan(folders, candidates, **kwargs)


def _split_of(plan: Plan) -> dict[str, str]:
    """rel -> split of every record the plan writes."""
    return {c.rel: split for split in SPLITS for c in plan.records(split)}


# ------------------------------------------------------------ split sizes


@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    [
        (0, 0.2, 0),
        (1, 0.5, 0),
        (2, 0.01, 1),
        (2, 0.99, 1),
        (5, 0.3, 2),
        (10, 0.25, 3),
        (10, 0.3, 3),
        (7, 0.5, 4),
    ],
)
def test_eval_count_rounds_half_up_and_keeps_both_splits(n: int, fraction: float, expected: int) -> None:
    assert eval_count(n, fraction) == expected


def test_each_class_is_split_on_its_own_and_counts_match_records() -> None:
    plan = _plan(_tree({"big": 10, "mid": 5, "pair": 2, "solo": 1}), eval_fraction=0.3)

    assert plan.classes == ["big", "mid", "pair", "solo"]
    assert plan.counts == {
        "big": {"train": 7, "eval": 3},
        "mid": {"train": 3, "eval": 2},
        "pair": {"train": 1, "eval": 1},
        "solo": {"train": 1, "eval": 0},
    }
    for split in SPLITS:
        labels = [c.label for c in plan.records(split)]
        assert {name: labels.count(name) for name in plan.classes} == {
            name: plan.counts[name][split] for name in plan.classes
        }
    # A class with one unique image cannot be judged: the run's data gate would refuse every run.
    assert plan.warnings == []
    assert plan.refusal("imgs") == (
        "class 'solo' in imgs has a single unique image (copies of one image count once), so it cannot be "
        "in both the train and the eval split, and a run's data gate refuses a class the eval split lacks; "
        "add images to it, or remove the folder"
    )
    two = _plan(_tree({"big": 10, "solo": 1, "alone": 1}), eval_fraction=0.3)
    assert two.refusal("imgs").startswith("classes 'alone', 'solo' in imgs have a single unique image")
    assert _plan(_tree({"big": 10, "pair": 2}), eval_fraction=0.3).refusal("imgs") is None


def test_class_folders_without_candidates_are_left_out() -> None:
    """The plan leaves them out; ingest (imgpipe/ingest/run.py) refuses the tree or warns."""
    plan = _plan(_tree({"a": 3, "c": 3}), folders=["a", "b", "c"])
    assert plan.classes == ["a", "c"]
    assert plan.empty_classes == ["b"]
    assert plan.warnings == []
    assert "b" not in plan.counts


def test_a_candidate_outside_the_class_folders_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match=r"x/0\.png.*'x'"):
        _plan(_tree({"a": 2, "x": 1}), folders=["a"])


# ------------------------------------------------- duplicates, conflicts


def test_copies_are_written_once_and_label_conflicts_not_at_all() -> None:
    candidates = _tree({"a": 4, "b": 4}) + [
        _cand("a/x.png", "copy"),
        _cand("a/copy1.png", "copy"),
        _cand("a/nested/copy2.png", "copy"),
        _cand("b/clash_too.png", "clash"),
        _cand("a/clash.png", "clash"),
    ]
    plan = _plan(candidates)

    written = [c.rel for split in SPLITS for c in plan.records(split)]
    assert "a/copy1.png" in written  # first path by name is kept
    assert not {"a/x.png", "a/nested/copy2.png", "a/clash.png", "b/clash_too.png"} & set(written)
    assert plan.duplicates == [
        {
            "class": "a",
            "sha256": "sha-copy",
            "same": "bytes",
            "split": _split_of(plan)["a/copy1.png"],
            "kept": "a/copy1.png",
            "duplicates": ["a/nested/copy2.png", "a/x.png"],
        }
    ]
    assert plan.label_conflicts == [
        {
            "sha256": "sha-clash",
            "same": "bytes",
            "files": [{"path": "a/clash.png", "class": "a"}, {"path": "b/clash_too.png", "class": "b"}],
        }
    ]
    assert plan.counts == {"a": {"train": 4, "eval": 1}, "b": {"train": 3, "eval": 1}}
    # Every candidate is accounted for: written, a dropped copy, or in a conflict.
    dropped = sum(len(d["duplicates"]) for d in plan.duplicates)
    conflicting = sum(len(c["files"]) for c in plan.label_conflicts)
    assert len(written) + dropped + conflicting == len(candidates)


def test_a_class_made_only_of_conflicting_files_is_empty() -> None:
    candidates = _tree({"a": 3, "b": 3}) + [_cand("c/1.png", "a0")]  # same bytes as a/0.png
    plan = _plan(candidates)
    assert plan.empty_classes == ["c"]
    assert plan.classes == ["a", "b"]
    assert plan.counts["a"] == {"train": 1, "eval": 1}  # a/0.png conflicts too
    assert [c["files"] for c in plan.label_conflicts] == [
        [{"path": "a/0.png", "class": "a"}, {"path": "c/1.png", "class": "c"}]
    ]


# ------------------------------------------------------------ determinism


def test_plan_ignores_candidate_order_and_file_names() -> None:
    candidates = _tree({"a": 12, "b": 12})
    shuffled = candidates[:]
    random.Random(3).shuffle(shuffled)
    renamed = [c._replace(rel=f"{c.label}/renamed_{i}.png") for i, c in enumerate(reversed(candidates))]

    first, second, third = _plan(candidates), _plan(shuffled), _plan(renamed)
    assert first == second
    by_content = [{split: [c.sha256 for c in p.records(split)] for split in SPLITS} for p in (first, third)]
    assert by_content[0] == by_content[1]


def test_seed_changes_the_split_and_records_are_interleaved() -> None:
    candidates = _tree({"a": 20, "b": 20, "c": 20})
    one, other = _plan(candidates, seed=1), _plan(candidates, seed=2)
    assert {c.rel for c in one.records("eval")} != {c.rel for c in other.records("eval")}
    assert one.counts == other.counts
    labels = [c.label for c in one.records("train")]
    assert labels != sorted(labels), "classes must be interleaved, not written one after another"


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_identical_bytes_never_straddle_splits(seed: int) -> None:
    candidates = [
        _cand(f"{c}/g{group}_{k}.png", f"{c}{group}") for c in "ab" for group in range(6) for k in range(3)
    ]
    plan = _plan(candidates, seed=seed, eval_fraction=0.5)
    train = {c.sha256 for c in plan.records("train")}
    evals = [c.sha256 for c in plan.records("eval")]
    assert train.isdisjoint(evals) and len(train) + len(evals) == 12
    for dup in plan.duplicates:
        assert _split_of(plan)[dup["kept"]] == dup["split"]


# ------------------------------------------------------------------ shards


def test_requested_shards_are_contiguous_near_equal_and_capped() -> None:
    plan = _plan(_tree({"a": 10, "b": 10}), num_shards=3)
    assert [len(s.records) for s in plan.shards["train"]] == [5, 5, 6]
    assert plan.shard_names()["train"] == [
        "data-00000-of-00003.tfrecord",
        "data-00001-of-00003.tfrecord",
        "data-00002-of-00003.tfrecord",
    ]
    # eval holds 4 records, so 3 shards stay 3; with 50 requested each split is capped.
    capped = _plan(_tree({"a": 10, "b": 10}), num_shards=50)
    assert [len(capped.shards[s]) for s in SPLITS] == [16, 4]
    assert all(len(s.records) == 1 for split in SPLITS for s in capped.shards[split])
    # Cutting into shards keeps the one record order.
    assert plan.records("train") == capped.records("train")


def test_automatic_shard_count_follows_total_size() -> None:
    big = TARGET_SHARD_BYTES // 4
    candidates = [Candidate(f"{c}/{i}.png", c, f"sha-{c}{i}", big) for c in "ab" for i in range(10)]
    plan = _plan(candidates)  # train: 16 x 1/4 target -> 4 shards; eval: 4 x 1/4 -> 1
    assert [len(plan.shards[s]) for s in SPLITS] == [4, 1]
    small = _plan(_tree({"a": 10, "b": 10}))
    assert [len(small.shards[s]) for s in SPLITS] == [1, 1]


# ----------------------------------------------------------------- refusal


def test_refusal_when_fewer_than_two_classes_are_usable() -> None:
    plan = _plan(_tree({"only": 5}), folders=["empty", "only"])
    message = plan.refusal("imgs", num_skipped=3)
    assert message == (
        "imgs has 1 class(es) with usable images (['only']); a classifier needs at least 2"
        "; class folders with no usable image: ['empty']; 3 files skipped"
    )


def test_refusal_names_label_conflicts_when_they_leave_too_few_classes() -> None:
    same = [_cand("a/1.png", "x"), _cand("b/1.png", "x"), _cand("a/2.png", "y"), _cand("b/2.png", "y")]
    plan = _plan(same, folders=["a", "b"])
    assert plan.classes == [] and len(plan.label_conflicts) == 2
    assert plan.refusal("imgs") == (
        "imgs has 0 class(es) with usable images ([]); a classifier needs at least 2"
        "; class folders with no usable image: ['a', 'b']"
        "; 4 files are label conflicts (the same image under several classes: none of them is used)"
    )


def test_refusal_when_eval_would_be_empty() -> None:
    plan = _plan(_tree({"a": 1, "b": 1}))
    assert plan.records("eval") == []
    assert "have a single unique image" in plan.refusal("imgs")


# -------------------------------------------------------- undecodable names


def test_paths_with_undecodable_bytes_are_escaped_in_report_fields_only() -> None:
    raw = "a/caf\udce9.png"  # how Python lists a Latin-1 file name on a UTF-8 system
    candidates = _tree({"a": 3, "b": 3}) + [_cand(raw, "copy"), _cand("a/z.png", "copy")]
    plan = _plan(candidates)
    (dup,) = plan.duplicates
    assert dup["kept"] == "a/caf\\xe9.png" and dup["duplicates"] == ["a/z.png"]
    written = {c.rel for split in SPLITS for c in plan.records(split)}
    assert raw in written, "the writer needs the on-disk name to read the file again"


def test_classes_that_differ_only_in_case_are_kept_apart_with_a_warning() -> None:
    plan = _plan(_tree({"Cat": 4, "cat": 4, "dog": 4, "DOG": 4, "bird": 4}))
    assert plan.classes == ["Cat", "DOG", "bird", "cat", "dog"]  # five classes, as the folders are
    assert plan.warnings == [
        "classes 'Cat', 'cat' differ only in letter case: they are 2 classes; if they are one, merge their folders",
        "classes 'DOG', 'dog' differ only in letter case: they are 2 classes; if they are one, merge their folders",
    ]
    assert _plan(_tree({"cat": 4, "dog": 4})).warnings == []


def test_class_names_that_print_almost_alike_are_kept_apart_with_a_warning() -> None:
    """Fullwidth letters or a ligature (one name under NFKC), or a Cyrillic letter inside a Latin
    name, print almost as the name they look like: two classes, said once each."""
    plan = _plan(
        _tree({"cat": 4, "\uff43\uff41\uff54": 4, "\ufb01sh": 4, "fish": 4, "c\u0430r": 4, "Cat": 4})
    )
    assert len(plan.classes) == 6
    assert plan.warnings == [
        "classes 'Cat', 'cat' differ only in letter case: they are 2 classes; if they are one, merge their folders",
        "classes 'Cat', 'cat', '\uff43\uff41\uff54' are one name in Unicode's compatibility forms (fullwidth "
        "or other variants of the same letters): they print almost alike and are 3 classes; if they are one, "
        "merge their folders",
        "classes 'fish', '\ufb01sh' are one name in Unicode's compatibility forms (fullwidth or other "
        "variants of the same letters): they print almost alike and are 2 classes; if they are one, merge "
        "their folders",
        "class 'c\u0430r' mixes Cyrillic and Latin letters ('\u0430' U+0430): a look-alike letter typed by "
        "mistake makes it another class than the name it looks like",
    ]
    # Apart only by dots or spaces at their ends: one folder on Windows or an SMB share.
    assert _plan(_tree({"cat": 4, "Cat.": 4, "dog": 4, "dog..": 4, "b.c": 4, "bc": 4})).warnings == [
        "classes 'Cat.', 'cat' differ only in dots or spaces at their ends (Windows and SMB shares drop "
        "trailing ones: one folder there): they are 2 classes; if they are one, merge their folders",
        "classes 'dog', 'dog..' differ only in dots or spaces at their ends (Windows and SMB shares drop "
        "trailing ones: one folder there): they are 2 classes; if they are one, merge their folders",
    ]
    # Names in one script each, or in scripts that do not look like Latin, are no warning.
    assert (
        _plan(
            _tree({"\u732b": 4, "\u043a\u043e\u0442": 4, "\u03b3\u03ac\u03c4\u03b1": 4, "caf\u00e9": 4})
        ).warnings
        == []
    )


def test_more_classes_than_run_takes_are_written_with_a_warning() -> None:
    plan = _plan(_tree({f"c{i:04d}": 2 for i in range(1001)}))
    assert len(plan.classes) == 1001
    assert plan.warnings == [
        "1001 classes: `imgpipe run` takes at most 1,000 (TFDV's statistics list at most 1,000 label values, "
        "so the data gate cannot check more); the records are written, but a run on them stops at SchemaGen"
    ]
    assert _plan(_tree({f"c{i:04d}": 2 for i in range(1000)})).warnings == []


# ------------------------------------------------- copies stored as different files


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_files_holding_one_image_are_copies_that_never_straddle_splits(seed: int) -> None:
    """Files with other bytes but one image key (a PNG saved again, a JPEG without its EXIF)
    group as byte copies do: one is written, never one in each split; across classes, a conflict."""
    candidates = [
        Candidate(f"{c}/g{group}_{k}.png", c, f"sha-{c}{group}-{k}", 100, f"img-{c}{group}")
        for c in "ab"
        for group in range(6)
        for k in range(3)
    ]
    candidates += [
        Candidate("a/stolen.png", "a", "sha-x1", 100, "img-x"),
        Candidate("b/x.png", "b", "sha-x2", 100, "img-x"),
    ]
    plan = _plan(candidates, seed=seed, eval_fraction=0.5)

    written = [c for split in SPLITS for c in plan.records(split)]
    assert len(written) == 12 and len({c.image for c in written}) == 12
    assert {c.image for c in plan.records("train")}.isdisjoint(c.image for c in plan.records("eval"))
    assert all(d["same"] == "image" and len(d["duplicates"]) == 2 for d in plan.duplicates)
    for dup in plan.duplicates:  # the first path by name is kept, and the group is named by its SHA-256
        kept = next(c for c in written if c.rel == dup["kept"])
        assert dup["kept"].endswith("_0.png") and dup["sha256"] == kept.sha256
    assert plan.label_conflicts == [
        {
            "sha256": "sha-x1",
            "same": "image",
            "files": [{"path": "a/stolen.png", "class": "a"}, {"path": "b/x.png", "class": "b"}],
        }
    ]


def test_files_saved_again_keep_their_split() -> None:
    """The split is decided by the image key, not the file's bytes: a tree whose files lost their
    metadata (other SHA-256s, the same images) splits the same way, so a model trained on the
    first tree's train split finds none of its images in the second tree's eval split."""
    candidates = [c._replace(image=f"img-{c.sha256}") for c in _tree({"a": 15, "b": 15})]
    stripped = [c._replace(sha256=c.sha256 + "-stripped", size=c.size - 10) for c in candidates]
    first, second = _plan(candidates), _plan(stripped)
    for split in SPLITS:
        assert [c.rel for c in first.records(split)] == [c.rel for c in second.records(split)]
