"""The per-file image check: which files ingest accepts, and reading them safely.

A file is accepted only when both decoders agree it is a whole image: Pillow
decodes it fully (``verify()`` alone misses truncation) and ``tf.io.decode_image``
(the decoder the pipeline itself uses, which rejects some files Pillow reads).
"""

from __future__ import annotations

import io
import os
import stat
import warnings

from PIL import Image

from imgpipe.ingest.errors import tf_error_text

# Pillow format name -> the format we report. MPO is the multi-picture JPEG
# many cameras write; its bytes start as a plain JPEG and TF decodes them so.
ACCEPTED_FORMATS = {
    "JPEG": "JPEG",
    "MPO": "JPEG",
    "PNG": "PNG",
    "GIF": "GIF",
    "BMP": "BMP",
}


def read_regular_file(path: str) -> bytes:
    """File bytes; raises OSError for non-regular files (FIFOs would block)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError("not a regular file")
    with open(path, "rb") as handle:
        return handle.read()


def check_image(data: bytes) -> str | None:
    """Return why ``data`` is not an acceptable image, or None when it is."""
    if not data:
        return "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # per-image Pillow chatter
            with Image.open(io.BytesIO(data)) as image:
                fmt = image.format
                if fmt not in ACCEPTED_FORMATS:
                    return f"unsupported image format {fmt}; accepted: JPEG, PNG, GIF, BMP"
                image.verify()
            # verify() checks structure only; a full decode catches truncation.
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                mode = image.mode
    except Image.UnidentifiedImageError:
        return "not a recognised image (cannot identify image file)"
    except Exception as exc:  # noqa: BLE001 -- Pillow raises many types on bad input; each is reported
        return f"cannot decode: {type(exc).__name__}: {exc}"
    if fmt == "BMP" and mode == "P":
        # tf.io.decode_bmp returns palette indices as grey levels: silent garbage.
        return "palette (indexed-colour) BMP: TensorFlow decodes it wrongly; convert it to PNG"

    import tensorflow as tf  # here, not at the top: `imgpipe --help` stays free of TensorFlow

    try:
        tf.io.decode_image(data, expand_animations=False)
    except tf.errors.OpError as exc:
        kind = ACCEPTED_FORMATS[fmt]
        return f"TensorFlow cannot decode this {kind}: {tf_error_text(exc)}"
    return None
