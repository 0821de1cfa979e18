"""The Pusher: no byte-identical re-push, always a new version, never a half-written version dir."""

from __future__ import annotations

import os

import pytest
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components.pusher import (
    IDENTICAL_VERSION_KEY,
    ServingPusherExecutor,
    push_new_version,
    same_model,
    served_versions,
)

SERVING = "Format-Serving"  # where a Trainer's Model artifact keeps its SavedModel


def _model_dir(root, weights: bytes = b"w1") -> str:
    os.makedirs(os.path.join(root, "variables"), exist_ok=True)
    os.makedirs(os.path.join(root, "assets"), exist_ok=True)
    with open(os.path.join(root, "saved_model.pb"), "wb") as f:
        f.write(b"graph")
    with open(os.path.join(root, "variables", "variables.data-00000-of-00001"), "wb") as f:
        f.write(weights)
    with open(os.path.join(root, "assets", "label_vocab"), "w") as f:
        f.write("5\n6\n")
    return root


def _push(tmp_path, model_root: str, base: str, blessed: int = 1, rolled_back: str = ""):
    model = standard_artifacts.Model()
    model.uri = os.path.dirname(model_root)
    if rolled_back:
        model.set_string_custom_property("rolled_back", rolled_back)
    blessing = standard_artifacts.ModelBlessing()
    blessing.set_int_custom_property("blessed", blessed)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / f"pushed_model_{len(os.listdir(tmp_path))}")
    destination = pusher_pb2.PushDestination(
        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=base)
    )
    ServingPusherExecutor().Do(
        {"model": [model], "model_blessing": [blessing]},
        {"pushed_model": [pushed]},
        {"push_destination": proto_utils.proto_to_json(destination), "custom_config": "null"},
    )
    return pushed


def test_an_identical_model_is_not_pushed_again(tmp_path):
    base = str(tmp_path / "serving" / "m")
    model = _model_dir(str(tmp_path / "model" / SERVING))
    first = _push(tmp_path, model, base)
    assert first.get_int_custom_property("pushed") == 1
    [version] = served_versions(base)
    assert first.get_string_custom_property("pushed_destination") == os.path.join(base, str(version))
    assert same_model(model, os.path.join(base, str(version)))

    again = _push(tmp_path, model, base)
    assert again.get_int_custom_property("pushed") == 0
    assert again.get_string_custom_property(IDENTICAL_VERSION_KEY) == str(version)
    assert served_versions(base) == [version]
    assert not os.path.exists(again.uri) or os.listdir(again.uri) == []  # no archive copy either


def test_a_changed_model_is_pushed_as_a_newer_version_even_within_the_same_second(tmp_path):
    base = str(tmp_path / "serving" / "m")
    model = _model_dir(str(tmp_path / "model" / SERVING))
    _push(tmp_path, model, base)
    _model_dir(model, weights=b"w2")  # one byte differs
    second = _push(tmp_path, model, base)
    versions = served_versions(base)
    assert second.get_int_custom_property("pushed") == 1 and len(versions) == 2
    assert versions[1] > versions[0]  # TFX's Pusher reused the second's name and claimed a push
    newest = os.path.join(base, str(versions[1]))
    assert second.get_string_custom_property("pushed_destination") == newest
    assert same_model(model, newest)
    assert sorted(os.listdir(base)) == sorted(str(v) for v in versions)  # no staging folder left


def test_a_model_identical_to_an_older_version_only_is_pushed(tmp_path):
    """Rolling back to an earlier model is a real change for the server: push it."""
    base = str(tmp_path / "serving" / "m")
    a = _model_dir(str(tmp_path / "a" / SERVING), weights=b"A")
    b = _model_dir(str(tmp_path / "b" / SERVING), weights=b"B")
    _push(tmp_path, a, base)
    _push(tmp_path, b, base)
    back = _push(tmp_path, a, base)
    assert back.get_int_custom_property("pushed") == 1 and len(served_versions(base)) == 3


def test_an_unblessed_model_is_not_pushed(tmp_path):
    base = str(tmp_path / "serving" / "m")
    model = _model_dir(str(tmp_path / "model" / SERVING))
    result = _push(tmp_path, model, base, blessed=0)
    assert result.get_int_custom_property("pushed") == 0 and served_versions(base) == []
    assert not result.has_custom_property(IDENTICAL_VERSION_KEY)


def test_a_model_rolled_back_after_its_blessing_is_not_pushed(tmp_path):
    """`imgpipe rollback` marked the model while its run was between the Evaluator and the Pusher
    (an Airflow run: no home lock): the blessing stands, the push does not happen."""
    base = str(tmp_path / "serving" / "m")
    model = _model_dir(str(tmp_path / "model" / SERVING))
    note = "rolled back on 2026-12-06T10:00:00Z: served version 2 replaced by version 1's model"
    result = _push(tmp_path, model, base, rolled_back=note)
    assert result.get_int_custom_property("pushed") == 0 and served_versions(base) == []
    assert result.get_string_custom_property("rolled_back") == note
    assert _push(tmp_path, model, base).get_int_custom_property("pushed") == 1  # unmarked: pushed


def test_versions_never_go_back_or_collide(tmp_path):
    base = str(tmp_path / "m")
    model = _model_dir(str(tmp_path / "model"))
    os.makedirs(os.path.join(base, "2000"))
    open(os.path.join(base, "2000", "saved_model.pb"), "wb").close()
    assert served_versions(base) == [2000]
    version, path = push_new_version(model, base, now=1000.0)  # a clock behind the newest version
    assert version == "2001" and os.path.isfile(os.path.join(path, "saved_model.pb"))
    os.makedirs(os.path.join(base, "3000"))  # a version a crashed copy left unfinished
    os.makedirs(os.path.join(base, ".push-abc"))  # and a staging folder: not a version
    assert served_versions(base) == [2000, 2001, 3000]
    version, _ = push_new_version(model, base, now=2999.5)
    assert version == "3001"  # newer than every version a server may see, never written into one


def test_folders_no_server_reads_as_versions_do_not_set_the_next_version(tmp_path):
    """A number past int64 or digits outside ASCII are no version to TF Serving: a push after them
    must land on a version servers load, not on 10**20 + 1."""
    base = str(tmp_path / "m")
    model = _model_dir(str(tmp_path / "model"))
    for name in ("99999999999999999999", "\u0663\u0663", "\u00b2"):
        os.makedirs(os.path.join(base, name))
        open(os.path.join(base, name, "saved_model.pb"), "wb").close()
    assert served_versions(base) == []
    version, _ = push_new_version(model, base, now=1000.0)
    assert version == "1000"
    assert served_versions(base) == [1000]


def test_no_push_past_the_largest_version_a_server_reads(tmp_path):
    base = str(tmp_path / "m")
    os.makedirs(os.path.join(base, str(2**63 - 1)))
    with pytest.raises(ValueError, match=r"version 9223372036854775807 is the largest a server can read"):
        push_new_version(_model_dir(str(tmp_path / "model")), base, now=1000.0)
    assert os.listdir(base) == [str(2**63 - 1)]  # no staging folder left


def test_a_push_killed_mid_copy_leaves_staging_that_the_next_push_removes(tmp_path):
    import subprocess
    import sys
    import time

    from components import pusher

    base = tmp_path / "m"
    model = _model_dir(str(tmp_path / "model"))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    leftover = base / f"{pusher.STAGING_PREFIX}{pusher._HOST}-{dead.stdout.strip()}-abc"  # noqa: SLF001
    live = base / f"{pusher.STAGING_PREFIX}{pusher._HOST}-{os.getpid()}-def"  # noqa: SLF001 - a push in progress
    elsewhere = base / f"{pusher.STAGING_PREFIX}otherhost-12-fff"  # another host's, on a shared dir
    old_elsewhere = base / f"{pusher.STAGING_PREFIX}otherhost-13-eee"
    for d in (leftover, live, elsewhere, old_elsewhere):
        os.makedirs(d / "variables")
    day_ago = time.time() - pusher.STALE_STAGING_SECONDS - 60
    os.utime(old_elsewhere, (day_ago, day_ago))

    version, _ = push_new_version(model, str(base), now=1000.0)

    assert version == "1000"
    assert sorted(os.listdir(base)) == sorted(["1000", live.name, elsewhere.name])


def test_same_model_compares_content_and_file_sets(tmp_path):
    a = _model_dir(str(tmp_path / "a"))
    b = _model_dir(str(tmp_path / "b"))
    assert same_model(a, b)
    with open(os.path.join(b, "extra"), "w") as f:
        f.write("")
    assert not same_model(a, b)
    os.remove(os.path.join(b, "extra"))
    _model_dir(b, weights=b"w9")
    assert not same_model(a, b)


def test_the_pipeline_uses_this_pusher_under_the_pusher_id():
    from pipeline.config import PipelineConfig
    from pipeline.pipeline import create_pipeline

    [pusher] = [c for c in create_pipeline(PipelineConfig(data_dir="/d")).components if c.id == "Pusher"]
    assert pusher.executor_spec.executor_class is ServingPusherExecutor


def test_only_filesystem_destinations(tmp_path):
    model = standard_artifacts.Model()
    model.uri = os.path.dirname(_model_dir(str(tmp_path / "model" / SERVING)))
    blessing = standard_artifacts.ModelBlessing()
    blessing.set_int_custom_property("blessed", 1)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "p")
    with pytest.raises(ValueError, match="filesystem base_directory only"):
        ServingPusherExecutor().Do(
            {"model": [model], "model_blessing": [blessing]},
            {"pushed_model": [pushed]},
            {"push_destination": "{}", "custom_config": "null"},
        )


def test_a_push_whose_record_cannot_be_written_serves_no_new_version(tmp_path, monkeypatch):
    """A full disk while copying the pushed model's record: the Pusher fails and nothing new is
    served (a version served by a failed Pusher would have its blessing withdrawn later)."""
    from tfx.utils import io_utils

    base = str(tmp_path / "serving" / "m")
    _push(tmp_path, _model_dir(str(tmp_path / "model" / SERVING)), base)
    before = served_versions(base)

    def disk_full(src, dst):
        raise OSError(28, "No space left on device", dst)

    monkeypatch.setattr(io_utils, "copy_dir", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _push(tmp_path, _model_dir(str(tmp_path / "model2" / SERVING), weights=b"w2"), base)
    assert served_versions(base) == before


def test_a_version_folder_with_leading_zeros_is_found_where_it_is(tmp_path):
    """'007' is version 7 to a server; the identical-model check must read that folder, not base/7."""
    import shutil

    from components.infra_validator import identical_served_version
    from components.pusher import newest_version

    base = tmp_path / "serving" / "m"
    model = _model_dir(str(tmp_path / "model" / SERVING))
    shutil.copytree(model, base / "007")
    assert newest_version(str(base)) == (7, str(base / "007"))
    assert identical_served_version(model, str(base)) == 7
    again = _push(tmp_path, model, str(base))
    assert again.get_int_custom_property("pushed") == 0
    assert again.get_string_custom_property(IDENTICAL_VERSION_KEY) == "7"
    assert served_versions(str(base)) == [7]
    assert newest_version(str(tmp_path / "nothing")) is None
