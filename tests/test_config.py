"""PipelineConfig: one schema; values type-checked with the field named; YAML round trip; flags over files."""

import os

import pytest

from pipeline.config import ConfigError, PipelineConfig


def _data_dir(tmp_path):
    for split in ("train", "eval"):
        (tmp_path / "data" / split).mkdir(parents=True)
    return str(tmp_path / "data")


def test_defaults_validate_with_data(tmp_path):
    cfg = PipelineConfig(data_dir=_data_dir(tmp_path)).validate_paths()
    assert cfg.effective_image_size() == 224
    assert cfg.training.weights == "imagenet"


@pytest.mark.parametrize(
    "change,field",
    [
        ({"backbone": "AlexNet"}, "backbone"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"min_accuracy": 1.5}, "min_accuracy"),
        ({"image_size": 8}, "image_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"beam_runner": "yarn"}, "beam_runner"),
        ({"fine_tune_layers": 10}, "fine_tune_epochs"),
        ({"model_name": "a/b"}, "model_name"),
        ({"pipeline_name": ""}, "pipeline_name"),
        # Types: each key gets its own type or an error naming it, never a traceback.
        ({"epochs": "ten"}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"min_accuracy": "high"}, "min_accuracy"),
        ({"image_size": 32.5}, "image_size"),
        ({"augment": "maybe"}, "augment"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"beam_args": "--a=1"}, "beam_args"),
        ({"replicas": 0}, "replicas"),
        ({"min_class_recall": -0.1}, "min_class_recall"),
        ({"majority_margin": 2}, "majority_margin"),
        ({"allow_anomalies": "perhaps"}, "allow_anomalies"),
        # Names are one folder of the serving dir and the pipeline root.
        ({"model_name": ".."}, "model_name"),
        ({"model_name": "."}, "model_name"),
        ({"model_name": "a\\b"}, "model_name"),
        ({"pipeline_name": "x\n"}, "pipeline_name"),
        ({"model_name": " pets"}, "model_name"),
        # Names a client types and a command line takes: printable as they are, not an option.
        ({"model_name": "-h"}, "model_name"),
        ({"model_name": "pets\u202e"}, "model_name"),
        ({"model_name": "pe\u200bts"}, "model_name"),
        ({"pipeline_name": "a\u2066b"}, "pipeline_name"),
        # TFX's limit on pipeline names; a model name leaves room in a 255-byte file name.
        ({"pipeline_name": "p" * 64}, "pipeline_name"),
        ({"model_name": "m" * 129}, "model_name"),
        ({"model_name": "\u00fc" * 65}, "model_name"),  # 130 bytes in UTF-8
        # Integers become TFX runtime parameters and ML Metadata properties: 64 bits.
        ({"epochs": 10**23}, "epochs"),
        ({"batch_size": 2**63}, "batch_size"),
        # A YAML boolean where a word is expected names the mix-up.
        ({"export_tflite": True}, "export_tflite"),
        ({"beam_runner": False}, "beam_runner"),
        # NumPy and TensorFlow seeds: 0 .. 2**32 - 1 (else the Trainer fails, late).
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
    ],
)
def test_invalid_values_name_the_field(tmp_path, change, field):
    cfg = PipelineConfig(data_dir=_data_dir(tmp_path))
    with pytest.raises(ConfigError, match=f"^{field}:"):
        cfg.replace(**change)


def test_names_people_type_stay_valid():
    """A zero-width non-joiner (typed in Persian words), an emoji's joiner, an NFD name (macOS's
    file names) and a pipeline name starting with '-' were valid and stay so: a home's recorded
    configs must load."""
    cfg = PipelineConfig()
    for name in (
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
        "\U0001f9d1\u200d\U0001f52c",
        "cafe\u0301",
    ):
        assert cfg.replace(model_name=name).model_name == name
    assert cfg.replace(pipeline_name="-p").pipeline_name == "-p"


@pytest.mark.parametrize(
    "change,section,field,value",
    [
        ({"epochs": "3"}, "training", "epochs", 3),  # a YAML string that is a number
        ({"learning_rate": "1e-3"}, "training", "learning_rate", 1e-3),  # PyYAML reads 1e-3 as text
        ({"image_size": 32.0}, "training", "image_size", 32),
        ({"augment": "no"}, "training", "augment", False),  # not "a non-empty string, so true"
        ({"augment": "yes"}, "training", "augment", True),
        ({"min_accuracy": "0.75"}, "gate", "min_accuracy", 0.75),
        ({"allow_anomalies": "yes"}, "gate", "allow_anomalies", True),
        ({"min_class_recall": "0"}, "gate", "min_class_recall", 0.0),
    ],
)
def test_values_are_coerced_to_the_field_type(change, section, field, value):
    cfg = PipelineConfig().replace(**change)
    got = getattr(getattr(cfg, section), field)
    assert got == value and type(got) is type(value)


def test_disk_checks_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="^data_dir: .*no train/ subdirectory"):
        PipelineConfig(data_dir=str(tmp_path)).validate_paths()
    with pytest.raises(ConfigError, match=f"^data_dir: {tmp_path / 'nope'} does not exist: give the folder"):
        PipelineConfig(data_dir=str(tmp_path / "nope")).validate_paths()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=f"^data_dir: {tmp_path / 'file'} is not a directory"):
        PipelineConfig(data_dir=str(tmp_path / "file")).validate_paths()
    with pytest.raises(ConfigError, match="^weights:"):
        PipelineConfig(data_dir=_data_dir(tmp_path), weights="/no/such/file.h5").validate_paths()
    with pytest.raises(ConfigError, match="^data_dir: required"):
        PipelineConfig().validate_paths()


def test_a_weights_file_that_cannot_be_the_backbones_is_named_before_the_run(tmp_path):
    """Found by the Trainer after the data components had run, as 'Unable to synchronously open
    file' or a layer count mismatch; now by validate_paths, from the file's first bytes and the
    description pretrain-backbone writes beside it."""
    data = _data_dir(tmp_path)
    text = tmp_path / "notes.h5"
    text.write_text("not weights")
    with pytest.raises(
        ConfigError, match=r"^weights: .*notes\.h5 is not a Keras weights file \(\.h5: no HDF5"
    ):
        PipelineConfig(data_dir=data, weights=str(text)).validate_paths()
    h5 = tmp_path / "w.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    PipelineConfig(data_dir=data, weights=str(h5)).validate_paths()  # no description: the Trainer decides
    (tmp_path / "w.h5.json").write_text('{"backbone": "DenseNet121", "image_size": 32}')
    with pytest.raises(
        ConfigError, match=r"holds DenseNet121 weights .* not MobileNetV2's: pass --backbone DenseNet121"
    ):
        PipelineConfig(data_dir=data, weights=str(h5)).validate_paths()
    PipelineConfig(data_dir=data, weights=str(h5), backbone="DenseNet121").validate_paths()
    with_block = tmp_path / "user_block.h5"  # HDF5 after a 512-byte user block
    with_block.write_bytes(bytes(512) + b"\x89HDF\r\n\x1a\n" + bytes(100))
    PipelineConfig(data_dir=data, weights=str(with_block)).validate_paths()


@pytest.mark.parametrize("field", ["home", "serving_dir"])
def test_a_file_where_a_folder_goes_is_named_before_the_run(tmp_path, field):
    """home (the lock, ML Metadata, the records) and serving_dir (the Pusher writes there at the
    end of the run): a file in the way fails the run at its start, naming the field, not the lock
    file's "File exists" or the Pusher's error; a folder not there yet, under one, is created."""
    data = _data_dir(tmp_path)
    (tmp_path / "file").write_text("x")
    others = {"home": str(tmp_path / "home"), "serving_dir": str(tmp_path / "serving")}
    for path, what in [
        (tmp_path / "file", "is a file, not a directory"),
        (tmp_path / "file" / "below", "is under .*file, which is a file"),
    ]:
        with pytest.raises(ConfigError, match=f"^{field}: .*{what}"):
            PipelineConfig(data_dir=data, **{**others, field: str(path)}).validate_paths()
    PipelineConfig(data_dir=data, **{**others, field: str(tmp_path / "new" / field)}).validate_paths()


def test_a_file_where_the_models_versions_go_is_named_before_the_run(tmp_path):
    data = _data_dir(tmp_path)
    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "digits").write_text("x")  # where the model's versions go
    with pytest.raises(ConfigError, match="^serving_dir: .*digits is a file"):
        PipelineConfig(
            data_dir=data, serving_dir=str(tmp_path / "serving"), model_name="digits"
        ).validate_paths()


def test_yaml_round_trip_flat_and_nested_keys(tmp_path):
    cfg = PipelineConfig(data_dir="d", epochs=7, beam_args=("--a=1",))
    path = str(tmp_path / "c.yaml")
    cfg.save(path)
    assert PipelineConfig.from_yaml(path) == cfg
    (tmp_path / "flat.yaml").write_text("epochs: 7\nmin_accuracy: 0.8\ndata_dir: d\n")
    (tmp_path / "nested.yaml").write_text("data_dir: d\ntraining: {epochs: 7}\ngate:\n  min_accuracy: 0.8\n")
    flat = PipelineConfig.from_yaml(str(tmp_path / "flat.yaml"))
    assert flat == PipelineConfig.from_yaml(str(tmp_path / "nested.yaml"))
    assert (flat.training.epochs, flat.gate.min_accuracy) == (7, 0.8)
    (tmp_path / "both.yaml").write_text("epochs: 7\ntraining: {epochs: 8}\n")
    with pytest.raises(ConfigError, match="epochs: given both"):
        PipelineConfig.from_yaml(str(tmp_path / "both.yaml"))


def test_yaml_booleans_for_words_read_as_the_words_where_unambiguous(tmp_path):
    # YAML 1.1 reads unquoted off/on/no as booleans; the README writes `eval_graph_optimization: off`.
    (tmp_path / "c.yaml").write_text("eval_graph_optimization: off\nexport_tflite: no\n")
    cfg = PipelineConfig.from_yaml(str(tmp_path / "c.yaml"))
    assert cfg.gate.eval_graph_optimization == "off" and cfg.training.export_tflite is None
    (tmp_path / "on.yaml").write_text("eval_graph_optimization: on\n")
    assert PipelineConfig.from_yaml(str(tmp_path / "on.yaml")).gate.eval_graph_optimization == "on"
    for text in ("export_tflite: 'off'\n", "export_tflite: none\n"):  # as the error says
        (tmp_path / "off.yaml").write_text(text)
        assert PipelineConfig.from_yaml(str(tmp_path / "off.yaml")).training.export_tflite is None
    (tmp_path / "yes.yaml").write_text("export_tflite: yes\n")
    with pytest.raises(
        ConfigError, match="^export_tflite: expected one of dynamic, float16, int8, got the YAML boolean true"
    ):
        PipelineConfig.from_yaml(str(tmp_path / "yes.yaml"))


def test_yaml_numbers_are_read_as_yaml_1_2_reads_them(tmp_path):
    """PyYAML reads YAML 1.1: `epochs: 010` was 8 (octal) and `epochs: 1:30` 90 (base 60), with no
    word said. Read as YAML 1.2's core schema: 010 is 10, 1:30 is text (an error naming the key)."""
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 010\nbatch_size: 0x20\nlearning_rate: 1e-3\nseed: 0o17\n")
    cfg = PipelineConfig.from_yaml(str(path))
    assert (cfg.training.epochs, cfg.training.batch_size, cfg.training.learning_rate, cfg.training.seed) == (
        10,
        32,
        0.001,
        15,
    )
    path.write_text("epochs: 1:30\n")
    with pytest.raises(ConfigError, match="^epochs: "):
        PipelineConfig.from_yaml(str(path))
    import yaml

    assert yaml.safe_load("a: 010") == {"a": 8}  # PyYAML's own loader is left as it is
    # What a config is saved as loads back as it was, by this loader and by YAML 1.1's: text that
    # either reads as a number is quoted ('1e3' is text to 1.1, a number to 1.2).
    for name in ("1e3", "2e5", "0o17", "010", "1:30", "+.5", "yes", "2024-05-01"):
        saved = PipelineConfig(model_name=name)
        saved.save(str(path))
        assert PipelineConfig.from_yaml(str(path)).model_name == name
        assert yaml.safe_load(path.read_text())["model_name"] == name
    # An explicit tag is read as PyYAML reads it.
    path.write_text("epochs: !!int 0b11\n")
    assert PipelineConfig.from_yaml(str(path)).training.epochs == 3


@pytest.mark.parametrize(
    "text,message",
    [
        ("epochz: 3\n", "unknown config key 'epochz' \\(did you mean 'epochs'\\?\\)"),
        ("training: {epochz: 3}\n", "unknown config key 'epochz'"),
        # The nearest key, a flag's spelling, and the sections, which the list of keys left out.
        ("trainig: {epochs: 3}\n", "'trainig' \\(did you mean 'training'\\?\\).*; sections: training, "),
        ("batch-size: 8\n", "'batch-size' \\(did you mean 'batch_size'\\?\\)"),
        ("cache: false\n", "'cache' \\(did you mean 'enable_cache'\\?\\)"),
        ("data: d\n", "'data' \\(did you mean 'data_dir'\\?\\)"),
        ("zzzz: 1\n", "unknown config key 'zzzz'; known keys"),
        # A known key in another section: where it goes, not "unknown ... known keys: epochs".
        ("gate: {epochs: 3}\n", "^gate: 'epochs' is not a key of gate:; it goes under training: "),
        ("training: {home: x}\n", "'home' is not a key of training:; it goes at the top level"),
        ("- 1\n", "mapping"),
        ("epochs: [3\n", "not valid YAML"),
        ("epochs: ten\n", "^epochs: .*'ten'.* \\(in "),
        (
            "model_name: 2024\n",
            "model_name: Input should be a valid string \\(got 2024; YAML reads 2024 as a number: write it in quotes, '2024'\\)",
        ),
        ("training: 3\n", "training"),
        (
            "epochs: 3\nbatch_size: 8\nepochs: 5\n",
            "not valid YAML: .*key 'epochs' is given twice \\(line 1 and line 3\\)",
        ),
        ("gate: {min_accuracy: 0.5, min_accuracy: 0.9}\n", "key 'min_accuracy' is given twice"),
        # A list as a key (YAML's `?`): was a TypeError from the duplicate-key check.
        ("? [a, b]\n: 3\n", "not valid YAML: a key must be a name, not a sequence \\(line 1\\)"),
        # `yes:` is YAML's true, `3:` a number: "Keys should be strings", naming neither.
        ("epochs: 3\nyes: 1\n", "key 'yes' \\(line 2\\) reads as bool True in YAML, not a name: quote it"),
        ("gate: {3: x}\n", "key '3' \\(line 1\\) reads as int 3 in YAML"),
        # An empty home or serving dir: os.path took it as the current directory, silently.
        ("home: ''\n", "^home: must not be empty"),
        ("serving_dir: ' '\n", "^serving_dir: must not be empty"),
    ],
)
def test_bad_files_are_config_errors(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        PipelineConfig.from_yaml(str(tmp_path / "bad.yaml"))


@pytest.mark.parametrize(
    "encoding, said",
    [
        ("utf-16", ': it is UTF-16 \\(an editor\'s "Unicode" encoding\\)'),
        ("utf-32", ": it is UTF-32"),
        ("latin-1", " \\("),
    ],
)
def test_a_file_not_in_utf8_is_named_with_its_encoding(tmp_path, encoding, said):
    """A config saved as UTF-16 (Windows Notepad's "Unicode") was refused with a bare codec error."""
    (tmp_path / "c.yaml").write_bytes("epochs: 3\nmodel_name: café\n".encode(encoding))
    with pytest.raises(
        ConfigError, match=f"^config file .*c.yaml is not UTF-8 text{said}.*: save it as UTF-8$"
    ):
        PipelineConfig.from_yaml(str(tmp_path / "c.yaml"))


def test_overrides_apply_over_the_file(tmp_path):
    (tmp_path / "c.yaml").write_text("epochs: 7\nbatch_size: 8\n")
    cfg = PipelineConfig.from_yaml(str(tmp_path / "c.yaml"), {"epochs": "9"})
    assert (cfg.training.epochs, cfg.training.batch_size) == (9, 8)


def test_a_flag_replaces_a_bad_value_of_the_file(tmp_path):
    """Flags override the file, a bad value too: it was refused, and blamed on the flag."""
    (tmp_path / "c.yaml").write_text("home: ''\ntraining: {epochs: ten, batch_size: 8}\n")
    cfg = PipelineConfig.from_yaml(str(tmp_path / "c.yaml"), {"epochs": "3", "home": str(tmp_path)})
    assert (cfg.training.epochs, cfg.training.batch_size, cfg.home) == (3, 8, str(tmp_path))
    # A bad value no flag replaces is still the file's error.
    with pytest.raises(ConfigError, match=r"^epochs: .*'ten'.* \(in "):
        PipelineConfig.from_yaml(str(tmp_path / "c.yaml"), {"home": str(tmp_path), "batch_size": "4"})


def test_a_file_valid_with_its_flags_is_taken(tmp_path):
    """A rule across settings was checked on the file alone: a password file in the file and the
    postgresql:// store given as a flag was refused, though the two together are valid."""
    password = tmp_path / "pgpass"
    password.write_text("h:5432:db:u:secret\n")
    password.chmod(0o600)
    (tmp_path / "c.yaml").write_text(f"metadata_password_file: {password}\n")
    url = "postgresql://u@h:5432/db"
    cfg = PipelineConfig.from_yaml(str(tmp_path / "c.yaml"), {"metadata": url})
    assert (cfg.metadata, cfg.metadata_password_file) == (url, str(password))
    # A rule within a section too: fine-tuning layers in the file, their epochs as a flag.
    (tmp_path / "f.yaml").write_text("training:\n  fine_tune_layers: 5\n")
    cfg = PipelineConfig.from_yaml(str(tmp_path / "f.yaml"), {"home": str(tmp_path), "fine_tune_epochs": 3})
    assert (cfg.training.fine_tune_layers, cfg.training.fine_tune_epochs) == (5, 3)
    # Without the flag (or with one that does not make it valid) the file's own error stands.
    for flags in ({}, {"epochs": "3"}):
        with pytest.raises(ConfigError, match=r"^metadata_password_file: applies to a postgresql:// .*\(in "):
            PipelineConfig.from_yaml(str(tmp_path / "c.yaml"), flags)


def test_yaml_merge_keys_work_and_repeats_are_still_refused(tmp_path):
    """`<<: *anchor` was refused with "could not determine a constructor for the tag ...merge"."""
    (tmp_path / "m.yaml").write_text("training:\n  <<: {epochs: 7, batch_size: 8}\n  epochs: 9\n")
    cfg = PipelineConfig.from_yaml(str(tmp_path / "m.yaml"))
    assert (cfg.training.epochs, cfg.training.batch_size) == (9, 8)  # the mapping's own key wins
    (tmp_path / "d.yaml").write_text("training:\n  <<: {epochs: 7}\n  batch_size: 8\n  batch_size: 9\n")
    with pytest.raises(ConfigError, match="key 'batch_size' is given twice"):
        PipelineConfig.from_yaml(str(tmp_path / "d.yaml"))
    # The usual way to hold an anchor: a top-level x- key (was "unknown config key 'x-base'").
    (tmp_path / "x.yaml").write_text(
        "x-base: &base {epochs: 30, learning_rate: 1.0e-4}\ntraining: {<<: *base, batch_size: 64}\n"
    )
    cfg = PipelineConfig.from_yaml(str(tmp_path / "x.yaml"))
    assert (cfg.training.epochs, cfg.training.learning_rate, cfg.training.batch_size) == (30, 1e-4, 64)
    (tmp_path / "y.yaml").write_text("base: {epochs: 30}\n")  # without the prefix: still unknown
    with pytest.raises(ConfigError, match="unknown config key 'base'"):
        PipelineConfig.from_yaml(str(tmp_path / "y.yaml"))


def test_replace_ignores_unset_flags_and_resolved_makes_paths_absolute():
    cfg = PipelineConfig(epochs=3).replace(epochs=None, batch_size=8)
    assert (cfg.training.epochs, cfg.training.batch_size) == (3, 8)
    r = PipelineConfig(data_dir="rel/data", home="h", serving_dir="gs://bucket/s", weights="w.h5").resolved()
    assert r.data_dir.startswith("/") and r.home.startswith("/") and r.training.weights.startswith("/")
    assert r.serving_dir == "gs://bucket/s"
    assert r.model_serving_dir == "gs://bucket/s/imgpipe"


def test_the_trainer_parses_its_part_strictly():
    from trainer.config import TrainingConfig
    from trainer.task import parse_custom_config

    cfg = PipelineConfig(epochs=4, image_size=64)
    assert parse_custom_config(cfg.training.to_dict()) == cfg.training
    with pytest.raises(ValueError, match="unknown_key"):
        parse_custom_config({**cfg.training.to_dict(), "unknown_key": 1})
    with pytest.raises(ValueError, match="epochs"):
        parse_custom_config({"epochs": "ten"})
    assert TrainingConfig.model_validate({}) == TrainingConfig()
    with pytest.raises(ValueError, match="tune_trials"):
        parse_custom_config({"tune_trials": 3, "feature_cache": False})


def test_replicas_key_the_trainer_and_are_checked_where_it_trains():
    """`--replicas N` changes the global batch (batch size x N), so a model trained on another
    count is another model: set, it is in the Trainer's custom_config (which keys TFX's cache: a
    run with --replicas 64 reused a model trained on one device); unset, the config is as before
    (a home keeps its cached Trainer). run_fn fails when its process has another device count."""
    from pipeline.pipeline import trainer_custom_config
    from trainer.config import REPLICAS_CONFIG, ConfigError
    from trainer.task import _check_replicas

    plain = trainer_custom_config(PipelineConfig())
    assert REPLICAS_CONFIG not in plain
    assert trainer_custom_config(PipelineConfig(replicas=2)) == {**plain, REPLICAS_CONFIG: 2}
    _check_replicas(None)
    _check_replicas(1)  # this process: one CPU device
    with pytest.raises(ConfigError, match="replicas: 2 requested, but the Trainer would train on 1 replica"):
        _check_replicas(2)


def test_gate_flags_come_from_the_schema():
    import argparse

    from imgpipe.cli.flags import add_config_flags, config_from_args

    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    args = parser.parse_args(["--allow-anomalies", "--min-class-recall", "0", "--majority-margin", "0.1"])
    gate = config_from_args(args).gate
    assert (gate.allow_anomalies, gate.min_class_recall, gate.majority_margin) == (True, 0.0, 0.1)
    assert config_from_args(parser.parse_args([])).gate.allow_anomalies is False
    assert config_from_args(parser.parse_args(["--gate-metric", "balanced_accuracy"])).gate.metric == (
        "balanced_accuracy"
    )
    assert config_from_args(parser.parse_args([])).gate.metric == "auto"
    with pytest.raises(ConfigError, match="metric"):
        config_from_args(parser.parse_args(["--gate-metric", "f1"]))


def test_a_huge_value_is_named_not_echoed(tmp_path):
    """YAML aliases made a 1.4 KB file a value of 72 MB, all of it written to stderr. Then the
    message was cut, but only after the value's whole repr was built: nested ten wide, a
    529-byte file's took 10 s and 0.8 GB at eight levels, ~8 GB at nine. A container is shown a
    few levels deep now, with its size."""
    lines = ['x-a0: &a0 ["' + "a" * 80 + '"]']
    lines += [f"x-a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    (tmp_path / "big.yaml").write_text("\n".join([*lines, "beam_args: *a6", ""]))
    with pytest.raises(ConfigError) as e:
        PipelineConfig.from_yaml(str(tmp_path / "big.yaml"))
    message = str(e.value)
    assert message.startswith("beam_args: Input should be a valid string (got [[[[")
    shown = message.split("; ")[0]  # the unknown keys x-a0.. are named after it
    assert "(a list of 10 items)" in shown and len(shown) < 500, shown


@pytest.mark.parametrize(
    "field,value",
    [
        ("home", "proj [v2]/home"),
        ("serving_dir", "serving*"),
        ("data_dir", "data?"),
        ("score_data", "score[1]"),
        ("pipeline_name", "p[1]"),
        ("model_name", "m*"),
    ],
)
def test_a_path_tfx_would_read_as_a_glob_pattern_is_refused_before_a_run(tmp_path, monkeypatch, field, value):
    """A home like 'proj [v2]/home' failed in ImportExampleGen with Beam's 'src and dst files do
    not exist', one like 'star*home' in the DataGate; now refused at once, naming the field."""
    monkeypatch.chdir(tmp_path)
    config = PipelineConfig(data_dir=_data_dir(tmp_path)).replace(**{field: value}).resolved()
    with pytest.raises(
        ConfigError, match=rf"^{field}: .* holds '[\*\?\[]', which TFX and Beam read as a glob"
    ):
        config.validate_paths()
    # Nothing was made on the way.
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_a_symbolic_link_without_the_characters_is_accepted(tmp_path):
    real = tmp_path / "proj [v2]"
    real.mkdir()
    (tmp_path / "proj").symlink_to(real)
    PipelineConfig(
        data_dir=_data_dir(tmp_path), home=str(tmp_path / "proj" / "home")
    ).resolved().validate_paths()


def test_more_than_50_folds_are_refused_as_a_run_starts_but_read_from_a_record(tmp_path):
    """cv_folds 1000 ran 240 folds (139 s against 13 s with the slice); a recorded config with 100
    (valid before the limit) must still load for report, rollback and prune."""
    data = _data_dir(tmp_path)
    config = PipelineConfig.from_dict({"data_dir": data, "cv_folds": 100})
    assert config.training.cv_folds == 100
    with pytest.raises(ConfigError, match="^cv_folds: at most 50 folds, got 100"):
        config.validate_paths()
    PipelineConfig.from_dict({"data_dir": data, "cv_folds": 50}).validate_paths()


def test_an_unmatched_bracket_is_no_glob_pattern(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    PipelineConfig(data_dir=_data_dir(tmp_path), home="run[1", serving_dir="a]b[").resolved().validate_paths()


def test_an_empty_section_with_a_flag_of_it_is_empty_and_a_list_is_named(tmp_path):
    """`training:` with every key commented out, and a flag of that section, was a TypeError
    traceback (exit 1) from the merge of the flags into a section that was None."""
    (tmp_path / "c.yaml").write_text("training:\n#  epochs: 3\ngate:\n")
    cfg = PipelineConfig.from_yaml(str(tmp_path / "c.yaml"), {"epochs": 2, "min_accuracy": 0.8})
    assert (cfg.training.epochs, cfg.gate.min_accuracy) == (2, 0.8)
    (tmp_path / "l.yaml").write_text("training: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"^training: must be a mapping of its keys, got \[1, 2\]"):
        PipelineConfig.from_yaml(str(tmp_path / "l.yaml"), {"epochs": 2})
    (tmp_path / "n.yaml").write_text("training:\n  training:\n    epochs: 3\n")
    with pytest.raises(
        ConfigError, match="'training' is a section of the top level, not a key inside training:"
    ):
        PipelineConfig.from_yaml(str(tmp_path / "n.yaml"))
    (tmp_path / "t.toml").write_text("a = 1\n")
    with pytest.raises(ConfigError, match=r"must hold a mapping of keys to values \(YAML or JSON; got str\)"):
        PipelineConfig.from_yaml(str(tmp_path / "t.toml"))
