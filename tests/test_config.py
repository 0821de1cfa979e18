"""PipelineConfig: validation names the field, YAML round trip, flags override files."""

import pytest

from pipeline.config import ConfigError, PipelineConfig


def _data_dir(tmp_path):
    for split in ("train", "eval"):
        (tmp_path / "data" / split).mkdir(parents=True)
    return str(tmp_path / "data")


def test_defaults_validate_with_data(tmp_path):
    cfg = PipelineConfig(data_dir=_data_dir(tmp_path)).validate()
    assert cfg.effective_image_size() == 224
    assert cfg.weights == "imagenet"


@pytest.mark.parametrize(
    "change,field",
    [
        ({"backbone": "AlexNet"}, "backbone"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"min_accuracy": 1.5}, "min_accuracy"),
        ({"image_size": 8}, "image_size"),
        ({"weights": "/no/such/file.h5"}, "weights"),
        ({"dropout": 1.0}, "dropout"),
        ({"beam_runner": "yarn"}, "beam_runner"),
        ({"fine_tune_layers": 10}, "fine_tune_epochs"),
        ({"model_name": "a/b"}, "model_name"),
    ],
)
def test_invalid_values_name_the_field(tmp_path, change, field):
    cfg = PipelineConfig(data_dir=_data_dir(tmp_path)).replace(**change)
    with pytest.raises(ConfigError, match=f"^{field}:"):
        cfg.validate()


def test_data_dir_without_splits_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="no train/ subdirectory"):
        PipelineConfig(data_dir=str(tmp_path)).validate()


def test_yaml_round_trip_and_unknown_keys(tmp_path):
    cfg = PipelineConfig(data_dir="d", epochs=7, beam_args=("--a=1",))
    path = str(tmp_path / "c.yaml")
    cfg.save(path)
    assert PipelineConfig.from_yaml(path) == cfg
    (tmp_path / "bad.yaml").write_text("epochz: 3\n")
    with pytest.raises(ConfigError, match="unknown config key.*epochz"):
        PipelineConfig.from_yaml(str(tmp_path / "bad.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        PipelineConfig.from_yaml(str(tmp_path / "list.yaml"))


def test_replace_ignores_unset_flags_and_resolved_makes_paths_absolute():
    cfg = PipelineConfig(epochs=3).replace(epochs=None, batch_size=8)
    assert (cfg.epochs, cfg.batch_size) == (3, 8)
    r = PipelineConfig(data_dir="rel/data", home="h", serving_dir="gs://bucket/s").resolved()
    assert r.data_dir.startswith("/") and r.home.startswith("/")
    assert r.serving_dir == "gs://bucket/s"
    assert r.model_serving_dir == "gs://bucket/s/imgpipe"
