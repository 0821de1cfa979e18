"""`weights: imagenet` offline: refused before the run starts, not at the Trainer."""

from __future__ import annotations

import socket
import threading

import pytest

from imgpipe.cli import main as cli
from pipeline.config import PipelineConfig
from trainer import backbones, imagenet
from trainer.imagenet import WeightsUnavailable, check_imagenet_weights, is_notop_file_of

# The no-top weights files tf_keras 2.16's applications fetch for the registered backbones
# (read from tf_keras/src/applications/*.py); MobileNetV2's is also taken from Keras itself below.
KERAS_NOTOP_FILES = {
    "MobileNetV2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    "MobileNetV3Small": "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
    "MobileNetV3Large": "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
    "EfficientNetB0": "efficientnetb0_notop.h5",
    "EfficientNetV2B0": "efficientnetv2-b0_notop.h5",
    "ResNet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "ResNet50V2": "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "Xception": "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "InceptionV3": "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "DenseNet121": "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
}


def test_every_registered_backbone_knows_its_keras_file():
    assert set(KERAS_NOTOP_FILES) == set(backbones.names())
    for backbone, name in KERAS_NOTOP_FILES.items():
        assert is_notop_file_of(backbone, name), (backbone, name)
        others = [b for b in KERAS_NOTOP_FILES if b != backbone]
        assert not any(is_notop_file_of(other, name) for other in others), (backbone, name)
    # With-top files and other files are not the no-top weights
    assert not is_notop_file_of("DenseNet121", "densenet121_weights_tf_dim_ordering_tf_kernels.h5")
    assert not is_notop_file_of("DenseNet121", "densenet121_notop.h5.partial")


def test_the_file_keras_asks_for_is_recognised(monkeypatch):
    """MobileNetV2 built with weights='imagenet': the name tf_keras's get_file is given."""
    import tf_keras
    from tf_keras.src.utils import data_utils

    asked = []

    class Asked(Exception):
        pass

    def get_file(fname, *args, **kwargs):
        asked.append(fname)
        raise Asked

    monkeypatch.setattr(data_utils, "get_file", get_file)
    with pytest.raises(Asked):
        tf_keras.applications.MobileNetV2(include_top=False, weights="imagenet", input_shape=(32, 32, 3))
    assert len(asked) == 1 and is_notop_file_of("MobileNetV2", asked[0]), asked


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    """HOME with an empty Keras cache, and no proxy."""
    home = tmp_path / "home"
    (home / ".keras" / "models").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return home


def test_a_cached_file_is_enough(empty_home):
    cached = empty_home / ".keras" / "models" / KERAS_NOTOP_FILES["DenseNet121"]
    cached.write_bytes(b"\x89HDF")
    assert check_imagenet_weights("DenseNet121", host="weights.invalid") == f"cached at {cached}"
    with pytest.raises(WeightsUnavailable, match="ResNet50's ImageNet weights"):
        check_imagenet_weights("ResNet50", host="weights.invalid")
    cached.write_bytes(b"")  # an empty file (a download cut at its start) is not the weights
    with pytest.raises(WeightsUnavailable):
        check_imagenet_weights("DenseNet121", host="weights.invalid")


def test_a_reachable_host_is_enough(empty_home):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        accepted = threading.Thread(target=lambda: server.accept()[0].close(), daemon=True)
        accepted.start()
        port = server.getsockname()[1]
        assert check_imagenet_weights("MobileNetV2", host="127.0.0.1", port=port) == "download from 127.0.0.1"
        accepted.join(5)


def test_unreachable_host_or_proxy_is_named(empty_home, monkeypatch):
    with pytest.raises(WeightsUnavailable) as e:
        check_imagenet_weights("DenseNet121", host="weights.invalid")
    message = str(e.value)
    assert "weights.invalid cannot be reached" in message
    assert str(empty_home / ".keras" / "models") in message and "pretrain-backbone" in message
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
    with pytest.raises(WeightsUnavailable, match=r"the HTTPS proxy 127\.0\.0\.1 cannot be reached"):
        check_imagenet_weights("DenseNet121", host="weights.invalid")


def test_run_with_imagenet_weights_offline_stops_before_any_component(
    empty_home, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(imagenet, "DOWNLOAD_HOST", "weights.invalid")
    for split in ("train", "eval"):
        (tmp_path / "data" / split).mkdir(parents=True)
    home = tmp_path / "pipeline_home"
    argv = ["run", "--data", str(tmp_path / "data"), "--home", str(home), "--weights", "imagenet"]
    argv += ["--serving-dir", str(tmp_path / "serving")]
    assert cli.main(argv) == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert "weights: imagenet: MobileNetV2's ImageNet weights are not in Keras's cache" in err
    assert not (home / PipelineConfig.model_fields["pipeline_name"].default).exists()
    assert not (home / "metadata.sqlite").exists()
