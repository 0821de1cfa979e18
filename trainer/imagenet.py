"""Can `weights: imagenet` be had here? Checked before a local run starts, not at the Trainer.

Keras downloads an application's ImageNet weights on first use, from Google's storage, into
its cache (`~/.keras/models`; `/tmp/.keras/models` when `~/.keras` is not writable, as
tf_keras's `get_file` decides). Offline and with nothing cached, that download fails inside the Trainer, after
ingest, statistics and Transform have run. `check_imagenet_weights` finds out in
milliseconds: a cached no-top weights file for the backbone, or a TCP connection to the
download host (or to the HTTPS proxy urllib would use).

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import os
import re
import socket
import urllib.parse
import urllib.request

DOWNLOAD_HOST = "storage.googleapis.com"  # every tf_keras application's weights are there
CONNECT_TIMEOUT_S = 5.0


class WeightsUnavailable(Exception):
    """The ImageNet weights are neither cached nor downloadable from here."""


def keras_cache_dir() -> str:
    """Where tf_keras's get_file keeps the applications' weights (`cache_subdir="models"`):
    under ~/.keras, which importing tf_keras creates, unless it cannot be written."""
    base = os.path.join(os.path.expanduser("~"), ".keras")
    usable = os.access(base, os.W_OK) if os.path.exists(base) else os.access(os.path.dirname(base), os.W_OK)
    return os.path.join(base if usable else os.path.join("/tmp", ".keras"), "models")


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def is_notop_file_of(backbone: str, file_name: str) -> bool:
    """Whether `file_name` looks like Keras's no-top ImageNet weights of `backbone`: both
    names squashed to lower-case letters and digits, the backbone's is in it (not followed by
    a later version, "v2"), with "notop".

    E.g. DenseNet121 -> densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5,
    EfficientNetV2B0 -> efficientnetv2-b0_notop.h5, MobileNetV3Small ->
    weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5; ResNet50 is not
    resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5.
    """
    squashed = _squash(file_name)
    own = re.search(re.escape(_squash(backbone)) + r"(?!v\d)", squashed)
    return file_name.endswith(".h5") and "notop" in squashed and own is not None


def cached_weights(backbone: str) -> str | None:
    """A cached no-top ImageNet weights file of `backbone`, or None."""
    folder = keras_cache_dir()
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    for name in names:
        path = os.path.join(folder, name)
        if is_notop_file_of(backbone, name) and os.path.isfile(path) and os.path.getsize(path) > 0:
            return path
    return None


def _endpoint(host: str, port: int) -> tuple[str, int, str]:
    """(host, port, what) an HTTPS request to `host` connects to first: an HTTPS proxy when
    urllib would use one for it, else the host itself."""
    proxy = urllib.request.getproxies().get("https")
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parsed.hostname:
            return parsed.hostname, parsed.port or 8080, f"the HTTPS proxy {parsed.hostname}"
    return host, port, host


def connect_problem(host: str, port: int = 443, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why a TCP connection to `host`:`port` (or to the HTTPS proxy in the way) cannot be made,
    as "WHAT cannot be reached (REASON)"; None when it can."""
    address, port, what = _endpoint(host, port)
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{what} cannot be reached ({exc.strerror or str(exc) or type(exc).__name__})"


def check_imagenet_weights(
    backbone: str, host: str | None = None, port: int = 443, timeout: float = CONNECT_TIMEOUT_S
) -> str:
    """How the Trainer will get `backbone`'s ImageNet weights ("cached at PATH" or "download
    from HOST"); WeightsUnavailable naming what to do when neither is possible. `host` is
    DOWNLOAD_HOST unless given."""
    host = host or DOWNLOAD_HOST
    cached = cached_weights(backbone)
    if cached:
        return f"cached at {cached}"
    problem = connect_problem(host, port, timeout)
    if problem:
        raise WeightsUnavailable(
            f"imagenet: {backbone}'s ImageNet weights are not in Keras's cache "
            f"({keras_cache_dir()}) and {problem.replace(' (', ' to download them (', 1)}. "
            "Without internet, give a weights file (`imgpipe pretrain-backbone` makes one from "
            "your own images) or `none`, or copy Keras's no-top weights file for the backbone "
            "into that folder"
        )
    return f"download from {host}"
