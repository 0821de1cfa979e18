"""serving/devserver/versions.py: which directories are versions, fingerprints, signature defs."""

from __future__ import annotations

import os

import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from serving.devserver import versions


def _touch(path, data: bytes = b"x") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _saved_model_pb(path, tags=("serve",), method="tensorflow/serving/predict") -> None:
    sm = saved_model_pb2.SavedModel()
    meta = sm.meta_graphs.add()
    meta.meta_info_def.tags.extend(tags)
    sig = meta.signature_def["serving_default"]
    sig.method_name = method
    sig.inputs["x"].name = "x:0"
    sig.inputs["x"].dtype = tf.string.as_datatype_enum
    _touch(os.path.join(path, "saved_model.pb"), sm.SerializeToString())


def test_list_versions_keeps_only_complete_integer_dirs(tmp_path):
    _touch(tmp_path / "1" / "saved_model.pb")
    _touch(tmp_path / "12" / "saved_model.pbtxt")
    os.makedirs(tmp_path / "7")  # push in progress: no saved_model.pb yet
    _touch(tmp_path / "tmp-push-3" / "saved_model.pb")  # not an integer
    _touch(tmp_path / "-4" / "saved_model.pb")
    _touch(tmp_path / "5")  # a file, not a directory
    _touch(tmp_path / "9223372036854775808" / "saved_model.pb")  # past int64: TF Serving reads no version
    _touch(tmp_path / "\u0663" / "saved_model.pb")  # an Arabic-Indic 3: str.isdigit(), not a version
    _touch(tmp_path / "9223372036854775807" / "saved_model.pb")  # int64's largest: a version
    found = versions.list_versions(str(tmp_path))
    assert found == {
        1: os.path.join(str(tmp_path), "1"),
        12: os.path.join(str(tmp_path), "12"),
        2**63 - 1: os.path.join(str(tmp_path), "9223372036854775807"),
    }


def test_list_versions_two_names_for_one_number_keeps_one(tmp_path):
    _touch(tmp_path / "3" / "saved_model.pb")
    _touch(tmp_path / "003" / "saved_model.pb")
    found = versions.list_versions(str(tmp_path))
    assert list(found) == [3]
    assert os.path.basename(found[3]) in ("3", "003")


def test_list_versions_of_a_missing_dir_raises(tmp_path):
    with pytest.raises(tf.errors.NotFoundError):
        versions.list_versions(str(tmp_path / "nowhere"))


def test_fingerprint_changes_when_files_do(tmp_path):
    _touch(tmp_path / "saved_model.pb", b"abc")
    _touch(tmp_path / "variables" / "variables.index", b"12")
    first = versions.fingerprint(str(tmp_path))
    assert first[:2] == (2, 5)
    assert versions.fingerprint(str(tmp_path)) == first
    _touch(tmp_path / "assets.extra" / "tf_serving_warmup_requests", b"w")
    assert versions.fingerprint(str(tmp_path))[:2] == (3, 6)


def test_read_signature_defs_of_the_serve_metagraph(tmp_path):
    _saved_model_pb(str(tmp_path))
    sigs = versions.read_signature_defs(str(tmp_path))
    assert list(sigs) == ["serving_default"]
    assert sigs["serving_default"].method_name == "tensorflow/serving/predict"
    assert sigs["serving_default"].inputs["x"].dtype == tf.string.as_datatype_enum


def test_read_signature_defs_errors_name_the_directory(tmp_path):
    _saved_model_pb(str(tmp_path / "train_only"), tags=("train",))
    with pytest.raises(ValueError, match=r"train_only: no MetaGraph tagged 'serve'"):
        versions.read_signature_defs(str(tmp_path / "train_only"))
    _touch(tmp_path / "garbage" / "saved_model.pb", b"this is not a SavedModel")
    with pytest.raises(ValueError, match=r"garbage: saved_model.pb holds no MetaGraph"):
        versions.read_signature_defs(str(tmp_path / "garbage"))
