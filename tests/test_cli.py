"""The `imgpipe` command line: help everywhere, clear errors with the right exit codes."""

import json
import os
import subprocess
import sys

import pytest

from imgpipe.cli import main as cli


def _subcommands():
    parser = cli.build_parser()
    [sub] = [a for a in parser._actions if a.dest == "command"]  # noqa: SLF001
    return sorted(sub.choices)


def test_contract_commands_exist():
    assert {"ingest", "pretrain-backbone", "run", "demo", "serve", "predict"} <= set(_subcommands())


@pytest.mark.parametrize("command", _subcommands())
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: imgpipe " + command)


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    assert "ingest" in err and out == ""


def test_run_with_missing_data_dir_names_it(tmp_path, capsys):
    code = cli.main(["run", "--data", str(tmp_path / "nowhere"), "--home", str(tmp_path / "h")])
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "data_dir" in err and "nowhere" in err


def test_a_low_address_space_limit_is_warned_before_tensorflow_crashes_on_it(tmp_path):
    """Under `ulimit -v` 3 GB `serve` aborted in its model load and `predict-batch` crashed without a
    message: every command now says the limit first."""
    import resource

    assert cli.address_space_warning(16 << 30) is None
    said = cli.address_space_warning(3 << 30)
    assert said.startswith("the address-space limit (ulimit -v) is 3.0 GiB") and "ulimit -v unlimited" in said

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, resource.RLIM_INFINITY))

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "imgpipe",
            "run",
            "--data",
            str(tmp_path / "nowhere"),
            "--home",
            str(tmp_path / "h"),
        ],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=120,
    )
    assert done.returncode == cli.EXIT_USAGE, done.stderr[-2000:]
    assert "the address-space limit (ulimit -v) is 4.0 GiB" in done.stderr and "data_dir" in done.stderr


def test_run_with_unknown_backbone_names_the_choices(tmp_path, capsys):
    for split in ("train", "eval"):
        (tmp_path / split).mkdir()
    code = cli.main(["run", "--data", str(tmp_path), "--backbone", "VGG99", "--home", str(tmp_path / "h")])
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "backbone" in err and "MobileNetV2" in err


def test_run_with_bad_config_file(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 3\nbogus_key: 1\n")
    assert cli.main(["run", "--config", str(cfg)]) == cli.EXIT_USAGE
    assert "bogus_key" in capsys.readouterr().err


def test_a_bad_value_names_the_flag_that_gave_it_and_a_files_value_its_field(tmp_path, capsys):
    """A value from a flag is named as the flag the user typed and the config field it sets; a
    value from the config file by its field, where the file names it."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 0\n")
    assert cli.main(["run", "--config", str(cfg), "--min-accuracy", "0.5"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"error: epochs: Input should be greater than or equal to 1 (got 0) (in {cfg})" in err, err
    cfg.write_text("epochs: 3\n")
    assert (
        cli.main(["run", "--config", str(cfg), "--min-accuracy", "2", "--batch-size", "0"]) == cli.EXIT_USAGE
    )
    err = capsys.readouterr().err
    assert "--min-accuracy (min_accuracy): Input should be less than or equal to 1 (got '2')" in err, err
    assert "--batch-size (batch_size): Input should be greater than or equal to 1" in err, err
    assert cli.main(["run", "--image-size", "3", "--backbone", "MobileNetV2"]) == cli.EXIT_USAGE
    assert (
        "--image-size (image_size): 3 is out of range for MobileNetV2 (32..1024)" in capsys.readouterr().err
    )


def test_run_rejects_tfrecord_dir_without_examples(tmp_path, capsys):
    for split in ("train", "eval"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "data.tfrecord").write_bytes(b"this is not a TFRecord file")
    code = cli.main(["run", "--data", str(tmp_path), "--home", str(tmp_path / "h"), "--weights", "none"])
    assert code == cli.EXIT_USAGE
    assert "data.tfrecord" in capsys.readouterr().err


def test_ingest_prints_json_report(tmp_path, capsys):
    from imgpipe.demo import data as datasets

    datasets.write_digits_tree(str(tmp_path / "img"), digits=(1, 2), size=16, limit_per_class=5)
    (tmp_path / "img" / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert cli.main(["ingest", "--images", str(tmp_path / "img"), "--out", str(tmp_path / "out")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["num_skipped"] == 1
    assert report["totals"]["train"] + report["totals"]["eval"] == 10


def test_ingest_missing_dir_exit_code(tmp_path, capsys):
    code = cli.main(["ingest", "--images", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert code == cli.EXIT_USAGE
    assert "none" in capsys.readouterr().err


def test_console_script_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "imgpipe", "--help"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0
    assert "pretrain-backbone" in out.stdout


PRETRAIN = ["pretrain-backbone", "--data", "d", "--backbone", "MobileNetV2", "--out", "o.h5"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["serve", "--model-base-path", "m", "--model-name", "x", "--port", "-1"],
            "must be a port number 0..65535, got '-1'",
        ),
        (["serve", "--model-base-path", "m", "--model-name", "x", "--port", "70000"], "got '70000'"),
        (["demo", "--replicas", "0"], "--replicas: must be a whole number >= 1, got '0'"),
        # ingest names its flags, not the Python parameters behind them
        (["ingest", "--images", "i", "--out", "o", "--shards", "0"], "--shards: must be a whole number >= 1"),
        # gRPC would wrap a port over 65535 and take a missing one as 443, then say "refused"
        (
            ["predict", "--target", "localhost:99999", "--model", "m", "x.png"],
            "port must be a number 1..65535",
        ),
        (["predict", "--target", "localhost", "--model", "m", "x.png"], "must be HOST:PORT"),
        (["predict", "--target", "::1:8500", "--model", "m", "x.png"], "IPv6 address goes in brackets"),
        # gRPC took an http:// target and failed the first call, exit 1 ("Misformatted domain name")
        (
            ["predict", "--target", "http://localhost:8500", "--model", "m", "x.png"],
            "http:// is no gRPC target",
        ),
        (
            ["predict", "--model", "m", "--batch-size", "0", "x.png"],
            "--batch-size: must be a whole number >= 1",
        ),
        (
            ["predict", "--model", "m", "--top-k", "0", "x.png"],
            "--top-k: must be a whole number >= 1, got '0'",
        ),
        (
            ["predict-batch", "--target", "h:0", "--model-name", "m", "--images", "i", "--out", "o.csv"],
            "1..65535",
        ),
        (["compile", "--image", "bad image name", "--output", "o.json"], "not a container image reference"),
        (["compile", "--image", "reg/Upper:v1", "--output", "o.json"], "lower-case repository"),
        (PRETRAIN + ["--learning-rate", "nan"], "--learning-rate: must be a positive number, got 'nan'"),
        (PRETRAIN + ["--learning-rate", "-1"], "--learning-rate: must be a positive number"),
        (PRETRAIN + ["--epochs", "0"], "--epochs: must be a whole number >= 1"),
        (PRETRAIN + ["--batch-size", "0"], "--batch-size: must be a whole number >= 1"),
        (PRETRAIN + ["--image-size", "100000"], "--image-size: must be a whole number 1..1024"),
        (["ingest", "--images", "i", "--out", "o", "--max-pixels", "-5"], "--max-pixels: must be a whole"),
        (
            ["ingest", "--images", "i", "--out", "o", "--eval-fraction", "1"],
            "--eval-fraction: must be a number",
        ),
        (
            ["ingest", "--images", "i", "--out", "o", "--eval-fraction", "nan"],
            "between 0 and 1 (both excluded)",
        ),
    ],
)
def test_out_of_range_numbers_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["drift", "--logs", "l", "--run", "latest", "--max-images", "0"],
            "--max-images must be >= 1, got 0",
        ),
        (
            ["drift", "--logs", "l", "--run", "latest", "--min-images", "-2"],
            "--min-images must be >= 1, got -2",
        ),
        (["report", "latest", "--max-misclassified", "-1"], "--max-misclassified: must be 0 or more, got -1"),
    ],
)
def test_out_of_range_numbers_checked_by_the_command_name_the_value(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags,message",
    [
        (
            ["--max-message-mb", "5000"],
            "invalid server settings: --max-message-mb (max_message_mb) must be in 1..2047",
        ),
        (
            ["--threads", "0", "--num-versions", "0"],
            "--threads (threads) must be >= 1, got 0; --num-versions (num_versions) must be >= 1",
        ),
        (
            ["--batching-parameters-file", "b.txt"],
            "--batching-parameters-file (batching_parameters_file) must go with enable_batching",
        ),
        (
            ["--enable-batching", "--batching-parameters-file", "/nonexistent/b.txt"],
            "cannot read the batching parameters file /nonexistent/b.txt",
        ),
        (  # the file's field, not the flag of the same name (which takes 0)
            ["--enable-batching", "--batching-parameters-file", "{tmp}/zero.txt"],
            "zero.txt: max_batch_size must be >= 1, got 0",
        ),
        # gRPC's C core printed "host must not be empty" on stderr before the bind error
        (["--host", ""], "--host (host) must not be empty (0.0.0.0 or [::] for every interface"),
    ],
)
def test_serve_settings_errors_name_the_flag(flags, message, tmp_path, capsys):
    """serve's settings are checked together when it starts: each one named as the flag typed."""
    (tmp_path / "zero.txt").write_text("max_batch_size { value: 0 }\n")
    flags = [f.format(tmp=tmp_path) for f in flags]
    argv = ["serve", "--model-base-path", str(tmp_path), "--model-name", "x", "--port", "0", *flags]
    assert cli.main(argv) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_run_with_a_file_for_serving_dir_names_it(tmp_path, capsys):
    for split in ("train", "eval"):
        (tmp_path / "data" / split).mkdir(parents=True)
    (tmp_path / "serving").write_text("not a directory")
    argv = [
        "run",
        "--data",
        str(tmp_path / "data"),
        "--home",
        str(tmp_path / "h"),
        "--serving-dir",
        str(tmp_path / "serving"),
    ]
    assert cli.main(argv) == cli.EXIT_USAGE
    assert "serving_dir: " in capsys.readouterr().err


# A signal that arrives while Beam runs a step: Beam's runner catches the KeyboardInterrupt (or
# Terminated) raised in the step and raises a RuntimeError naming it. The command must still
# exit as stopped (130/143), not as failed (1). A real Beam job in a process of its own, whose
# step sends the signal to its own process.
STOPPED_IN_BEAM = """
import os, signal, sys, time
import apache_beam as beam
import imgpipe.batch
from imgpipe.cli import main as cli

signal.signal(signal.SIGINT, signal.default_int_handler)  # a suite started with SIGINT ignored (`&`)

class StopHere(beam.DoFn):
    def process(self, x):
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        time.sleep(60)
        yield x

def predict_batch(*args, **kwargs):
    with beam.Pipeline() as p:
        _ = p | beam.Create([1]) | beam.ParDo(StopHere())
    raise AssertionError("the job ran to its end")

imgpipe.batch.predict_batch = predict_batch
sys.exit(cli.main(["predict-batch", "--model", "m", "--images", "i", "--out", "o.jsonl"]))
"""


@pytest.mark.parametrize(
    ("signame", "code", "said"), [("SIGTERM", 143, "terminated (SIGTERM)"), ("SIGINT", 130, "interrupted")]
)
def test_a_signal_caught_and_wrapped_by_beam_still_exits_as_stopped(signame, code, said, tmp_path):
    import os

    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", STOPPED_IN_BEAM, signame],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == code, proc.stderr[-3000:]
    assert f"imgpipe: error: {said}" in proc.stderr and proc.stdout == ""


def test_a_reader_of_stdout_that_went_away_ends_the_command_quietly(monkeypatch, capsys):
    """`imgpipe predict ... | head -1`: the rest of the output has no reader; no traceback."""
    from imgpipe.cli import output

    class Gone:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(output.sys, "stdout", Gone())
    monkeypatch.setattr(
        cli, "commands", lambda: [output.Command("echo", "emits", lambda p: None, lambda a: output.emit({}))]
    )
    assert cli.main(["echo"]) == output.EXIT_BROKEN_PIPE
    assert capsys.readouterr().err == ""

    # A failure whose summary is printed first: the failure decides the exit, not the pipe.
    def failing(args):
        output.emit_failure({"failed": True})
        raise output.WorkFailed("no image was scored")

    monkeypatch.setattr(cli, "commands", lambda: [output.Command("fail", "fails", lambda p: None, failing)])
    assert cli.main(["fail"]) == output.EXIT_FAILED
    assert "no image was scored" in capsys.readouterr().err


def test_pretrain_backbone_names_data_that_is_not_there_or_not_tfrecords(tmp_path, capsys):
    argv = ["pretrain-backbone", "--backbone", "MobileNetV2", "--out", str(tmp_path / "w.h5"), "--data"]
    assert cli.main([*argv, str(tmp_path / "nowhere")]) == cli.EXIT_USAGE
    assert "nowhere does not exist" in capsys.readouterr().err
    for split in ("train", "eval"):
        (tmp_path / "text" / split).mkdir(parents=True)
        (tmp_path / "text" / split / "notes.txt").write_text("not a record")
    assert cli.main([*argv, str(tmp_path / "text")]) == cli.EXIT_USAGE
    assert "text/train" in capsys.readouterr().err
    assert not (tmp_path / "w.h5").exists()


def test_pretraining_that_diverges_writes_nothing_and_keeps_the_old_file(tmp_path):
    """A learning rate that sends the weights to NaN: refused after training, the file is as it was."""
    from tests import helpers
    from trainer.pretrain import PretrainDiverged, pretrain_backbone

    data = helpers.write_split_dataset(str(tmp_path / "data"), helpers.digit_images((0, 1), per_class=5))
    out = tmp_path / "w.h5"
    out.write_bytes(b"the weights of an earlier pre-training")
    with pytest.raises(
        PretrainDiverged, match=r"hold NaN or infinity .* is as it was\. Lower the learning rate"
    ):
        pretrain_backbone(data, "MobileNetV2", str(out), epochs=1, learning_rate=1e30, verbose=0)
    assert out.read_bytes() == b"the weights of an earlier pre-training"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "w.h5"]  # no partial file left


def _must_not_run(*args, **kwargs):
    raise AssertionError("reached the expensive step: the arguments were not checked first")


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--min-accuracy", "5"], "--min-accuracy: must be a number from 0 to 1, got '5'"),
        (["--min-accuracy", "nan"], "--min-accuracy: must be a number from 0 to 1, got 'nan'"),
        (["--epochs", "0"], "--epochs (epochs): Input should be greater than or equal to 1"),
        (["--backbone", "Foo"], "--backbone (backbone): unknown backbone 'Foo'; choose one of MobileNetV2"),
        (["--image-size", "0"], "--image-size (image_size): 0 is out of range for DenseNet121 (32..1024)"),
        (["--backbone", "MobileNetV2", "--image-size", "16"], "out of range for MobileNetV2"),
        (["--pretrain-epochs", "0"], "--pretrain-epochs: must be a whole number >= 1, got '0'"),
    ],
)
def test_demo_checks_every_argument_before_any_work(flags, message, tmp_path, monkeypatch, capsys):
    """Bad demo arguments: exit 2 naming the setting, before the digits are written and ingested
    or the backbone pre-trained (minutes of work), and nothing made on disk."""
    from imgpipe.cli import demo
    from imgpipe.demo import steps

    monkeypatch.setattr(steps, "prepare_data", _must_not_run)
    monkeypatch.setattr(steps, "pretrained_backbone", _must_not_run)
    monkeypatch.setattr(demo, "run_pipeline", _must_not_run)
    workdir = tmp_path / "demo_out"
    try:
        code = cli.main(["demo", "--workdir", str(workdir), *flags])
    except SystemExit as e:  # an argparse type's refusal
        code = e.code
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not workdir.exists()


def test_demo_runs_the_config_it_checked_on_what_its_steps_wrote(tmp_path, monkeypatch, caplog):
    """The config checked up front is the one run: its data dir and weights file are the paths
    the data and pre-training steps write. It says how to serve the model only when a version
    is there to serve (before, it did so after a run whose model the gate refused)."""
    from imgpipe.cli import demo
    from imgpipe.cli import main as cli_main
    from imgpipe.demo import steps

    # The command's log lines reach caplog: imgpipe's loggers keep propagating (the command's own
    # stderr handler would stop them, when this is the process's first command).
    monkeypatch.setattr(cli_main, "setup_logging", lambda verbose=False: None)
    caplog.set_level("INFO", logger="imgpipe")
    made, ran = {}, []

    def prepare_data(workdir, image_size):
        made["target"] = os.path.join(workdir, "tfrecords", "target")
        return os.path.join(workdir, "tfrecords", "source"), made["target"]

    def pretrained_backbone(workdir, source, backbone, image_size, epochs):
        made["weights"] = os.path.join(workdir, f"{backbone.lower()}_{image_size}px_source.h5")
        return made["weights"]

    monkeypatch.setattr(steps, "prepare_data", prepare_data)
    monkeypatch.setattr(steps, "pretrained_backbone", pretrained_backbone)
    monkeypatch.setattr(
        demo, "run_pipeline", lambda config, verbose: ran.append(config) or {"blessed": False}
    )
    argv = ["demo", "--workdir", str(tmp_path / "d"), "--backbone", "MobileNetV2", "--min-accuracy", "0.5"]
    assert cli.main(argv) == 0
    assert "imgpipe serve" not in caplog.text
    assert "nothing to serve: no model was pushed to" in caplog.text and "not blessed" in caplog.text
    [config] = ran
    os.makedirs(os.path.join(config.model_serving_dir, "17", "variables"))
    with open(os.path.join(config.model_serving_dir, "17", "saved_model.pb"), "wb") as f:
        f.write(b"x")
    caplog.clear()
    assert cli.main(argv) == 0
    assert f"serve it: imgpipe serve --model-base-path {config.model_serving_dir}" in caplog.text
    assert (config.data_dir, config.training.weights) == (made["target"], made["weights"])
    assert (config.training.backbone, config.gate.min_accuracy, config.training.image_size) == (
        "MobileNetV2",
        0.5,
        32,
    )


def test_a_demo_interrupted_in_its_steps_does_them_again(tmp_path, monkeypatch):
    """Killed while its ingest moved the splits in: `train/` alone was taken for a whole ingest and
    every later demo failed with a traceback. Killed between pre-training's weights file and its
    description: another run's weights were reused under the old description (an audit)."""
    import hashlib
    import json

    from imgpipe.demo import steps
    from trainer import pretrain

    records = tmp_path / "tfrecords" / "source"
    (records / "train").mkdir(parents=True)
    assert not steps.ingested(str(records))
    (records / "eval").mkdir()
    assert not steps.ingested(str(records))  # the report is moved in last
    (records / "ingest_report.json").write_text("{}")
    assert steps.ingested(str(records))

    out = steps.weights_path(str(tmp_path), "MobileNetV2", 32)
    with open(out, "wb") as f:
        f.write(b"weights of 3 epochs")
    described = {"epochs": 3, "image_size": 32, "source_eval_accuracy": 0.9}
    trained = []
    monkeypatch.setattr(
        pretrain,
        "pretrain_backbone",
        lambda *a, **k: trained.append(k["epochs"]) or {"source_eval_accuracy": 0.9, "seconds": 1},
    )
    sha = hashlib.sha256(b"weights of 3 epochs").hexdigest()
    with open(out + ".json", "w") as f:
        json.dump(dict(described, sha256=sha), f)
    assert steps.pretrained_backbone(str(tmp_path), "src", "MobileNetV2", 32, 3) == out and trained == []
    with open(out, "wb") as f:
        f.write(b"weights of 4 epochs, its description never written")
    steps.pretrained_backbone(str(tmp_path), "src", "MobileNetV2", 32, 3)
    assert trained == [3]


def test_demo_names_a_workdir_it_cannot_use(tmp_path, monkeypatch, capsys):
    from imgpipe.demo import steps

    monkeypatch.setattr(steps, "prepare_data", _must_not_run)
    (tmp_path / "a-file").write_text("x")
    assert cli.main(["demo", "--workdir", str(tmp_path / "a-file" / "out")]) == cli.EXIT_USAGE
    assert f"--workdir: {tmp_path / 'a-file' / 'out'} is under {tmp_path / 'a-file'}, which is a file" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "out,message",
    [
        ("a-file/w.h5", "a-file/w.h5 is under {tmp}/a-file, which is a file"),
        ("a-dir.h5", "--out: {tmp}/a-dir.h5 is a directory: give a file name"),
        ("w.txt", "--out: must be an .h5 file"),
        ("taken.h5", "--out: {tmp}/taken.h5.json, where the weights' description goes, is a directory"),
    ],
)
def test_pretrain_backbone_checks_out_before_training(out, message, tmp_path, monkeypatch, capsys):
    """An --out that cannot be written: exit 2 naming --out before training, not a traceback
    after it (the trained weights lost)."""
    import trainer.pretrain
    from imgpipe.cli import backbone

    monkeypatch.setattr(backbone, "validate_tfrecord_dir", lambda path: {})
    monkeypatch.setattr(trainer.pretrain, "pretrain_backbone", _must_not_run)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir.h5").mkdir()
    (tmp_path / "taken.h5.json").mkdir()
    argv = ["pretrain-backbone", "--data", "d", "--backbone", "MobileNetV2", "--out", str(tmp_path / out)]
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and "Traceback" not in err, err


def test_pretrain_backbone_makes_the_folders_of_out_before_training(tmp_path, monkeypatch):
    import trainer.pretrain
    from imgpipe.cli import backbone

    seen = []
    monkeypatch.setattr(backbone, "validate_tfrecord_dir", lambda path: {})
    monkeypatch.setattr(
        trainer.pretrain,
        "pretrain_backbone",
        lambda data, name, out, **kw: seen.append(os.path.isdir(os.path.dirname(out))) or {"weights": out},
    )
    out = tmp_path / "new" / "sub" / "w.h5"
    argv = ["pretrain-backbone", "--data", "d", "--backbone", "MobileNetV2", "--out", str(out)]
    assert cli.main(argv) == 0
    assert seen == [True]


def test_a_value_starting_with_a_dash_is_shown_how_to_give(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps the help at the terminal's width
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--beam-arg", "--direct_num_workers=2"])
    assert e.value.code == cli.EXIT_USAGE
    assert (
        "expected one argument (a value must follow it; if the value starts with '-', write --beam-arg=VALUE)"
        in (capsys.readouterr().err)
    )
    for command in ("run", "predict-batch"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert "--beam-arg=--direct_num_workers=2" in capsys.readouterr().out


@pytest.mark.parametrize(
    "command,shown",
    [
        ("predict", ["(default localhost:8500)", "(default 10.0)", "(default 3)", "(default 16)"]),
        ("serve", ["0 picks a free one (default 8500)"]),
        (
            "demo",
            ["(default demo_out)", "(default 32)", "(default 15)", "(default 0.9)", "show TFX's own logs"],
        ),
    ],
)
def test_help_gives_every_option_a_text_and_its_default(command, shown, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "400")
    parser = cli.build_parser()
    [sub] = [a for a in parser._actions if a.dest == "command"]  # noqa: SLF001
    for action in sub.choices[command]._actions:  # noqa: SLF001
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in shown:
        assert text in out, (text, out)


def test_a_commands_help_lists_only_the_config_flags_that_apply(tmp_path, monkeypatch, capsys):
    """compile listed --replicas and --metadata, airflow-dag --replicas and the Trainer machine's
    flags, all of which they refuse; run listed the Trainer machine's flags, which it ignored
    without a word. They are parsed still (refused by name) but not listed; run warns."""
    monkeypatch.setenv("COLUMNS", "400")
    unlisted = {
        "run": ["--trainer-machine-type", "--trainer-accelerator"],
        "compile": ["--replicas", "--metadata ", "--metadata-password-file"],
        "airflow-dag": ["--replicas", "--trainer-machine-type", "--trainer-accelerator"],
    }
    for command, flags in unlisted.items():
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        out = capsys.readouterr().out
        assert "--epochs" in out and "--min-accuracy" in out
        for flag in flags:
            assert flag not in out, (command, flag)
    assert "--trainer-machine-type" in _help_of("compile", capsys)
    assert "--replicas" in _help_of("run", capsys) and "--metadata " in _help_of("airflow-dag", capsys)
    compile_ = ["compile", "--image", "reg/img:v1", "--output", str(tmp_path / "p.json"), "--replicas", "2"]
    assert cli.main(compile_) == cli.EXIT_USAGE
    assert "--replicas does not apply to a compiled pipeline" in capsys.readouterr().err
    code = cli.main(
        ["run", "--data", str(tmp_path / "nowhere"), "--home", str(tmp_path / "h"), "--trainer-machine-type", "n1-standard-8"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert "trainer_machine_type / trainer_accelerator apply to Kubeflow / Vertex AI" in err


def _help_of(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    return capsys.readouterr().out


def test_the_runs_last_line_names_the_figure_the_gate_judged_by():
    """On a 95/5 split a model was blessed at accuracy 0.60 by its balanced accuracy 0.79: the
    line says which figure the gate used and its floor, beside the plain accuracy."""
    from imgpipe.cli.run import _judged

    gate = {"metric": "balanced_accuracy", "value": 0.7894736, "floor": 0.7807017}
    assert _judged(gate, 0.6) == "balanced_accuracy 0.7895 (floor 0.7807); accuracy 0.6000"
    assert (
        _judged({"metric": "accuracy", "value": 0.9, "floor": 0.5}, 0.9) == "accuracy 0.9000 (floor 0.5000)"
    )
    assert _judged(None, None) == "accuracy None"  # a run stopped before the gate


def test_a_usage_error_is_one_line_naming_the_command(capsys):
    """argparse printed the whole usage block (47 lines for `run`) before the error; an unknown
    flag was reported against `imgpipe`, not the command it was given to."""
    for argv, says in (
        (["run", "--lock-wait", "-3"], "imgpipe run: error: argument --lock-wait: "),
        (
            ["ingest", "--images", "x", "--out", "y", "--eval-fraction", "1.5"],
            "imgpipe ingest: error: argument",
        ),
        (
            ["run", "--bogus"],
            "imgpipe run: error: unrecognized arguments: --bogus (see `imgpipe run --help`)",
        ),
        (["nope"], "imgpipe: error: argument COMMAND: invalid choice: 'nope'"),
        # An abbreviation was taken for the flag it starts (`--epoch 3` as --epochs).
        (["run", "--epoch", "3"], "imgpipe run: error: unrecognized arguments: --epoch 3"),
        # A second config file silently replaced the first.
        (
            ["run", "--config", "a.yaml", "--config", "b.yaml"],
            "imgpipe run: error: argument --config: given twice",
        ),
    ):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(says), err
        assert err.count("\n") == 1 and "usage:" not in err, err


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == "imgpipe 0.1.0"


def test_a_flag_replacing_a_config_files_value_is_said(tmp_path, capsys, monkeypatch):
    config = tmp_path / "prod.yaml"
    config.write_text(f"epochs: 10\nbatch_size: 8\ndata_dir: {tmp_path / 'none'}\n")
    assert cli.main(["run", "--config", str(config), "--epochs", "30", "--batch-size", "8"]) == 2
    err = capsys.readouterr().err
    assert f"--epochs 30 replaces epochs: 10 of {config}" in err
    assert "batch_size" not in err  # the same value: nothing replaced
    # A value the file sets is replaced even when it is the default; a bad one too; a switch
    # turned off is shown as its flag.
    config.write_text(f"epochs: 200\naugment: true\nlearning_rate: ten\ndata_dir: {tmp_path / 'none'}\n")
    argv = ["run", "--config", str(config), "--epochs", "30", "--no-augment", "--learning-rate", "0.01"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"--epochs 30 replaces epochs: 200 of {config}" in err
    assert f"--no-augment replaces augment: True of {config}" in err
    assert f"--learning-rate 0.01 replaces learning_rate: ten of {config}" in err
    # The same values as the file's, written another way: nothing replaced, nothing said.
    monkeypatch.chdir(tmp_path)  # a relative path in the file: from the working directory
    config.write_text("learning_rate: 1.0e-3\nbackbone: DenseNet121\ndata_dir: none\n")
    argv = ["run", "--config", str(config), "--learning-rate", "0.001", "--backbone", "DenseNet121"]
    assert cli.main([*argv, "--data", str(tmp_path / "none")]) == 2
    assert "replaces" not in capsys.readouterr().err
    # ... also beside another bad value of the file, which a flag replaces.
    config.write_text("learning_rate: 1e-3\nbackbone: nosuch\ndata_dir: none\n")
    assert cli.main([*argv, "--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "--backbone DenseNet121 replaces backbone: nosuch" in err and "learning_rate" not in err
