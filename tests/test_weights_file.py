"""A local weights file is loaded into the configured backbone before a run's data work.

A file `imgpipe pretrain-backbone` wrote records its backbone beside it (PATH.json), which the
config checks; Keras's own files and a user's `save_weights` carry no such record, so
`imgpipe run` loads them into the backbone as the Trainer would (trainer.model.weights_file_problem)
and refuses one that does not fit, before any component runs.
"""

from __future__ import annotations

import shutil

import pytest

from imgpipe.cli import main as cli
from imgpipe.orchestration import weights
from pipeline.config import ConfigError, PipelineConfig
from trainer import model


@pytest.fixture(scope="module")
def bare_weights(source_backbone, tmp_path_factory):
    """The session's MobileNetV2 (32 px) weights file, copied without its PATH.json."""
    path = tmp_path_factory.mktemp("bare") / "mobilenet_v2.h5"
    shutil.copyfile(source_backbone, path)
    return str(path)


def test_a_file_that_fits_loads(bare_weights):
    assert model.weights_file_problem(bare_weights, "MobileNetV2", 32) is None


def test_another_backbone_width_or_a_damaged_file_is_named(bare_weights, tmp_path):
    import tf_keras as keras

    problem = model.weights_file_problem(bare_weights, "MobileNetV3Small", 32)
    assert problem and "Layer count mismatch" in problem, problem
    narrow = str(tmp_path / "alpha_0.35.h5")  # MobileNetV2 too, at another width: same layers, other shapes
    keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35
    ).save_weights(narrow)
    problem = model.weights_file_problem(narrow, "MobileNetV2", 32)
    assert problem and "Shape mismatch" in problem, problem
    with open(bare_weights, "rb") as f:
        data = f.read()
    truncated = tmp_path / "truncated.h5"  # the HDF5 signature is there; the rest is not
    truncated.write_bytes(data[: len(data) // 2])
    problem = model.weights_file_problem(str(truncated), "MobileNetV2", 32)
    assert problem and "truncated file" in problem, problem


def _run(tmp_path, weights: str, backbone: str) -> int:
    for split in ("train", "eval"):
        (tmp_path / "data" / split).mkdir(parents=True, exist_ok=True)
    argv = ["run", "--data", str(tmp_path / "data"), "--home", str(tmp_path / "home")]
    argv += ["--serving-dir", str(tmp_path / "serving"), "--weights", weights, "--backbone", backbone]
    argv += ["--image-size", "32"]
    return cli.main(argv)


def test_run_with_a_file_for_another_backbone_stops_before_any_component(bare_weights, tmp_path, capsys):
    assert _run(tmp_path, bare_weights, "MobileNetV3Small") == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert f"weights: {bare_weights} does not load into MobileNetV3Small (include_top=False): " in err
    assert "Layer count mismatch" in err and "Pass the --backbone the file was saved from" in err
    home = tmp_path / "home"
    assert not (home / PipelineConfig.model_fields["pipeline_name"].default).exists()
    assert not (home / "metadata.sqlite").exists()


def test_schedule_with_a_file_for_another_backbone_installs_nothing(bare_weights, tmp_path, capsys):
    """Every scheduled run would fail on it: `schedule --runner local` refuses it and writes nothing."""
    home = tmp_path / "home"
    argv = ["schedule", "--runner", "local", "--cron", "0 3 * * *", "--data", str(tmp_path / "data")]
    argv += [
        "--home",
        str(home),
        "--weights",
        bare_weights,
        "--backbone",
        "MobileNetV3Small",
        "--image-size",
        "32",
    ]
    assert cli.main(argv) == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    assert f"weights: {bare_weights} does not load into MobileNetV3Small" in err and "Traceback" not in err
    assert not (home / "schedule").exists()


def test_a_file_described_for_this_backbone_is_not_loaded_again(source_backbone, tmp_path, monkeypatch):
    """pretrain-backbone's own files (PATH.json names the backbone) cost a run nothing here."""
    loaded = []
    monkeypatch.setattr(model, "weights_file_problem", lambda *a: loaded.append(a))
    config = PipelineConfig(data_dir=str(tmp_path), weights=source_backbone, image_size=32)
    weights.check_weights_file(config)
    assert loaded == []
    weights.check_weights_file(config.replace(weights="none"))
    assert loaded == []
    bare = tmp_path / "bare.h5"
    shutil.copyfile(source_backbone, bare)
    weights.check_weights_file(config.replace(weights=str(bare)))
    assert loaded == [(str(bare), "MobileNetV2", 32)]


def test_a_described_file_is_trusted_only_while_its_bytes_are_the_ones_described(
    source_backbone, tmp_path, monkeypatch
):
    """A weights file cut short (a copy interrupted) beside its PATH.json was trusted: the run failed
    at the Trainer, after the data components, naming neither the file nor `weights`. A file
    replaced at the same path was trusted too, and TFX's cache kept the model of the old bytes."""
    import json

    described = tmp_path / "source.h5"
    shutil.copyfile(source_backbone, described)
    shutil.copyfile(source_backbone + ".json", str(described) + ".json")
    assert json.loads((tmp_path / "source.h5.json").read_text())["sha256"] == model.weights_digest(
        source_backbone
    )
    config = PipelineConfig(data_dir=str(tmp_path), weights=str(described), image_size=32)
    assert weights.check_weights_file(config) == model.weights_digest(str(described))

    described.write_bytes(described.read_bytes()[:100_000])
    with pytest.raises(
        ConfigError, match=rf"weights: {described} does not load into MobileNetV2 .*truncated file"
    ):
        weights.check_weights_file(config)

    loaded = []
    monkeypatch.setattr(model, "weights_file_problem", lambda *a: loaded.append(a))
    described.write_bytes(b"other weights")  # replaced: loaded as any file would be
    assert weights.check_weights_file(config) == model.weights_digest(str(described))
    assert loaded == [(str(described), "MobileNetV2", 32)]


def test_the_trainer_is_keyed_by_the_weights_files_bytes_and_checks_them(tmp_path):
    from components.trainer import WEIGHTS_DIGEST_KEY, WeightsChanged, _check_weights
    from pipeline.pipeline import create_pipeline

    config = PipelineConfig(data_dir=str(tmp_path), weights=str(tmp_path / "w.h5"), image_size=32)
    (tmp_path / "w.h5").write_bytes(b"weights")
    digest = model.weights_digest(str(tmp_path / "w.h5"))
    [trainer] = [c for c in create_pipeline(config, weights_digest=digest).components if c.id == "Trainer"]
    assert trainer.exec_properties[WEIGHTS_DIGEST_KEY] == digest  # an execution property: TFX's cache key
    [plain] = [c for c in create_pipeline(config).components if c.id == "Trainer"]
    assert WEIGHTS_DIGEST_KEY not in plain.exec_properties
    _check_weights(str(tmp_path / "w.h5"), digest)
    (tmp_path / "w.h5").write_bytes(b"weights changed mid-run")
    with pytest.raises(WeightsChanged, match=r"weights: .*w\.h5 changed since this run started"):
        _check_weights(str(tmp_path / "w.h5"), digest)
