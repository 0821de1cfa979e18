"""A served version whose files were changed by hand is treated like a deleted one.

A re-run with nothing changed takes its Pusher from TFX's cache, which hands back the record
of an earlier push ("version N", or "identical to version N") without looking at version N.
With N's files replaced by another model, or its saved_model.pb cut short, that record is
false: the run reported "cached: identical to version N" while the server loaded something
else. A run's start (recovery.forget_missing_pushes) compares each version a LIVE record
stands for with the Model its Pusher read, as the Pusher compares them, and retires the
records of a version that no longer holds it, so the Pusher runs and pushes a new version.

ML Metadata is written as TFX writes it (tests/mlmd_fixtures.py); files are real.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from ml_metadata.proto import metadata_store_pb2 as pb

from imgpipe.orchestration import recovery
from pipeline.config import PipelineConfig
from tests.mlmd_fixtures import FakeHome, cached_outputs

LIVE, DELETED = pb.Artifact.LIVE, pb.Artifact.DELETED


def _saved_model(path: str, graph: bytes, weights: bytes) -> str:
    """A stand-in SavedModel: the files a server loads and the Pusher compares."""
    os.makedirs(os.path.join(path, "variables"), exist_ok=True)
    os.makedirs(os.path.join(path, "assets"), exist_ok=True)
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(graph)
    with open(os.path.join(path, "variables", "variables.data-00000-of-00001"), "wb") as f:
        f.write(weights)
    with open(os.path.join(path, "variables", "variables.index"), "wb") as f:
        f.write(b"index")
    with open(os.path.join(path, "assets", "labels.txt"), "wb") as f:
        f.write(b"cat\ndog\n")
    return path


class _History:
    """Run 1 trains a model and pushes it as version 1001; run 2 (Trainer cached) finds it
    identical to version 1001: the two LIVE records a third identical run's cache would hand back."""

    def __init__(self, tmp_path, version_name: str = "1001"):
        self.home = FakeHome(str(tmp_path / "home"))
        self.base = str(tmp_path / "serving" / "m")
        destination = {"push_destination": json.dumps({"filesystem": {"base_directory": self.base}})}
        # As TFX records a Model: its tfx_version puts the SavedModel under Format-Serving.
        _, made = self.home.execute(
            "run-1", "Trainer", outputs={"model": ("Model", {"tfx_version": "1.16.0"})}
        )
        self.model = made["model"]
        self.model_dir = _saved_model(
            os.path.join(self.model.uri, "Format-Serving"), b"graph-A" * 100, b"weights-A" * 1000
        )
        self.folder = os.path.join(self.base, version_name)
        shutil.copytree(self.model_dir, self.folder)
        _, made = self.home.execute(
            "run-1",
            "Pusher",
            inputs={"model": [self.model]},
            outputs={
                "pushed_model": (
                    "PushedModel",
                    {"pushed": 1, "pushed_destination": self.folder, "pushed_version": "1001"},
                )
            },
            exec_properties=destination,
        )
        self.pushed = made["pushed_model"]
        _, made = self.home.execute(
            "run-2",
            "Pusher",
            inputs={"model": [self.model]},
            outputs={"pushed_model": ("PushedModel", {"pushed": 0, "identical_to_version": "1001"})},
            exec_properties=destination,
        )
        self.identical = made["pushed_model"]
        self.records = (self.pushed, self.identical)


def _replace_with_another_model(folder: str) -> None:
    shutil.rmtree(folder)
    _saved_model(folder, b"graph-B" * 100, b"weights-B" * 1000)


def _truncate_graph(folder: str) -> None:
    with open(os.path.join(folder, "saved_model.pb"), "r+b") as f:
        f.truncate(10)


def _overwrite_weights_same_size(folder: str) -> None:
    path = os.path.join(folder, "variables", "variables.data-00000-of-00001")
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(b"z" * size)


@pytest.mark.parametrize(
    "change",
    [_replace_with_another_model, _truncate_graph, _overwrite_weights_same_size],
    ids=["another-model", "truncated-saved_model.pb", "weights-overwritten"],
)
def test_a_served_version_changed_by_hand_is_not_taken_from_the_cache(tmp_path, caplog, change):
    h = _History(tmp_path)
    assert recovery.forget_missing_pushes(h.home.store, h.home.root, found_by="test") == []
    assert all(cached_outputs(h.home, a) is not None for a in h.records)

    change(h.folder)
    assert os.path.isfile(os.path.join(h.folder, "saved_model.pb"))  # still "served": only its bytes differ
    dry = recovery.forget_missing_pushes(h.home.store, h.home.root, found_by="test", dry_run=True)
    assert dry == [
        {
            "id": h.pushed.id,
            "version": "1001",
            "folder": h.folder,
            "model_dir_gone": False,
            "changed": "pushed in run run-1",
        },
        {
            "id": h.identical.id,
            "version": "1001",
            "folder": h.folder,
            "model_dir_gone": False,
            "changed": "found served there by run run-2",
        },
    ]
    assert all(h.home.artifact(a.id).state == LIVE for a in h.records)

    from imgpipe.orchestration.local import _abandon_dead_executions

    with caplog.at_level("WARNING"):
        _abandon_dead_executions(PipelineConfig(home=h.home.home), "run-3")
    for a in h.records:
        after = h.home.artifact(a.id)
        assert after.state == DELETED and cached_outputs(h.home, a) is None
        assert "no longer held the model" in after.custom_properties[recovery.MISSING_KEY].string_value
    assert h.home.artifact(h.pushed.id).custom_properties[recovery.MISSING_KEY].string_value == (
        "serving version 1001 no longer held the model pushed in run run-1 when run run-3 started "
        "(changed by hand?)"
    )
    assert (
        f"serving version 1001 ({h.folder}) differs from the model pushed in run run-1 and "
        "found served there by run run-2 (changed by hand?): the 2 records of its push "
        f"(artifacts {h.pushed.id}, {h.identical.id}) are marked DELETED, so this run's Pusher "
        "pushes the blessed model again as a new version"
    ) in caplog.text
    assert "is gone" not in caplog.text
    # Retired once: the next start finds nothing more to do.
    assert recovery.forget_missing_pushes(h.home.store, h.home.root, found_by="test") == []


def test_an_unchanged_version_is_compared_once_and_kept(tmp_path, monkeypatch):
    """Left alone: a version that still holds its model (spelled "01001" here, as a server may
    name it), and a record whose Model's files are gone (nothing to compare with; judged on
    the version's presence). The two records of one version and one model cost one comparison,
    as the Pusher makes it (components.pusher.same_model)."""
    from components import pusher

    h = _History(tmp_path, version_name="01001")
    calls = []
    same_model = pusher.same_model
    monkeypatch.setattr(pusher, "same_model", lambda a, b: calls.append((a, b)) or same_model(a, b))

    assert recovery.forget_missing_pushes(h.home.store, h.home.root, found_by="test") == []
    assert calls == [(h.model_dir, h.folder)]
    assert all(h.home.artifact(a.id).state == LIVE for a in h.records)

    # Version changed, but the Model's own files are gone (a lost disk): nothing to tell it by.
    _replace_with_another_model(h.folder)
    shutil.rmtree(h.model_dir)
    calls.clear()
    assert recovery.forget_missing_pushes(h.home.store, h.home.root, found_by="test") == []
    assert calls == []
    assert all(h.home.artifact(a.id).state == LIVE for a in h.records)


def test_the_pusher_run_again_pushes_a_new_version_not_identical(tmp_path):
    """What the retired record makes room for: imgpipe's Pusher, given the same model, compares
    it with the changed newest version, finds it different and pushes a new version (never
    "identical to version 1001")."""
    from tfx.types import standard_artifacts

    from components.pusher import IDENTICAL_VERSION_KEY, ServingPusherExecutor, same_model

    h = _History(tmp_path)
    _truncate_graph(h.folder)
    model = standard_artifacts.Model()
    model.uri = h.model.uri
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "blessing")
    blessing.set_int_custom_property("blessed", 1)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed")
    ServingPusherExecutor().Do(
        {"model": [model], "model_blessing": [blessing]},
        {"pushed_model": [pushed]},
        {"push_destination": json.dumps({"filesystem": {"base_directory": h.base}})},
    )
    assert pushed.get_int_custom_property("pushed") == 1
    assert not pushed.has_custom_property(IDENTICAL_VERSION_KEY)
    new = pushed.get_string_custom_property("pushed_version")
    assert int(new) > 1001
    assert same_model(h.model_dir, os.path.join(h.base, new))


def test_a_cached_pushs_note_names_the_version_that_serves_its_model_now(tmp_path):
    """A cached Pusher's record says "identical to version 1001"; the newest version, 1002, holds
    the same model now (pushed again after a rollback): the note named 1001, which may be gone."""
    from imgpipe.orchestration.summary import summarize_run

    h = _History(tmp_path)
    shutil.copytree(h.model_dir, os.path.join(h.base, "1002"))
    h.home.execute("run-3", "Evaluator", inputs={"model": [h.model]})
    h.home.execute(
        "run-3",
        "Pusher",
        inputs={"model": [h.model]},
        reuse={"pushed_model": [h.identical]},
        state=pb.Execution.CACHED,
    )
    config = PipelineConfig(home=h.home.home, serving_dir=str(tmp_path / "serving"), model_name="m")
    assert summarize_run(config, "run-3").push_skipped == "cached: identical to version 1002"
    # Another model in the newest version: the record's own words.
    _replace_with_another_model(os.path.join(h.base, "1002"))
    assert summarize_run(config, "run-3").push_skipped == "cached: identical to version 1001"


def test_a_run_that_leaves_nothing_served_says_so_and_how_to_serve_the_blessed_model_again(tmp_path):
    """The serving dir's model folder deleted (or its volume not mounted), then a run whose model
    the gate refused: it said at its start "this run pushes its model there", pushed nothing, and
    ended with exit 0 while the server had no version to serve."""
    from imgpipe.orchestration import runs
    from imgpipe.orchestration.local import nothing_served
    from imgpipe.orchestration.summary import RunSummary

    home, serving = tmp_path / "home", tmp_path / "serving"
    config = PipelineConfig.from_dict(
        {"home": str(home), "data_dir": str(tmp_path), "serving_dir": str(serving), "model_name": "m"}
    )
    earlier = "2026-12-07T10:00:00.000001-abc"
    saved = runs.run_dir(str(home), earlier)
    os.makedirs(saved)
    with open(os.path.join(saved, runs.CONFIG_FILE), "w") as f:
        f.write("epochs: 3\n")
    summary = RunSummary("r2", False, None, 0.5, 1, {}, baseline_model={"run_id": earlier, "pushed": None})
    said = nothing_served(config, summary)
    assert said.startswith(f"nothing is served: the serving dir {serving / 'm'} holds no version")
    assert "its model was not blessed" in said
    assert f"`imgpipe run --config {os.path.join(saved, runs.CONFIG_FILE)}` pushes it again" in said
    # A whole version there (or a push by this run): nothing to say.
    _saved_model(str(serving / "m" / "7"), b"graph", b"weights")
    assert nothing_served(config, summary) is None
    shutil.rmtree(serving)
    summary.pushed = str(serving / "m" / "8")
    assert nothing_served(config, summary) is None
    # A failed run (the DataGate refused the data) leaves nothing served just as well.
    summary.pushed, summary.failed = None, "DataGate"
    assert "this run pushed none: it failed (DataGate)" in nothing_served(config, summary)
    # A new home whose first model the gate refused: nothing was ever pushed, no disk to blame.
    summary.failed, summary.baseline_model = None, None
    said = nothing_served(config, summary)
    assert said.startswith("nothing is served yet: ") and "no run of this home has pushed one" in said
    assert "mounted" not in said and "imgpipe run --config" not in said
