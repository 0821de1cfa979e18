"""Which folder names under a model base path are versions, as TF Serving reads them.

TF Serving takes a child folder of a model base path as a version when its name
parses as a 64-bit integer: `7` and `007` are version 7. Any other name is not a
version and no server loads it: a staging folder (`.push-...`), a number too
large for int64 (`99999999999999999999`), digits outside ASCII (`²`, `٣`, which
Python's str.isdigit accepts). The Pusher, `imgpipe serve` and `predict-batch`
all read version folders through `version_number`, so they agree with the
server on what a version is. No heavy imports: the CLI and the Pusher use it.
"""

from __future__ import annotations

import re

INT64_MAX = 2**63 - 1
_ASCII_DIGITS = re.compile(r"[0-9]+")


def version_number(name: str) -> int | None:
    """The version a folder named `name` is (a trailing slash allowed), or None if it is none."""
    name = name.rstrip("/")
    if not _ASCII_DIGITS.fullmatch(name):
        return None
    value = int(name)
    return value if value <= INT64_MAX else None
