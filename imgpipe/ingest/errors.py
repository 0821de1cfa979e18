"""IngestError, the one error ingest raises, and the TF error text it quotes.

Kept apart from the report and the contract so both can raise it without
importing each other.
"""

from __future__ import annotations

import re
from typing import Any


class IngestError(ValueError):
    """Bad ingest input or output location; the message names the path at fault.

    ``report`` holds the partial report (as a dict) when the failure was found
    after scanning, so callers can show which files were skipped and why.
    """

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report


class IngestWriteError(Exception):
    """The outputs could not be written (a full disk, a folder made read-only meanwhile): the
    input was fine, the work failed. Nothing of the attempt is left in out_dir."""


def tf_error_text(exc: Exception) -> str:
    """TF op error text without the '{{function_node ...}}' / '[Op:...]' noise."""
    text = getattr(exc, "message", None) or str(exc)
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\].*", "", text, flags=re.DOTALL)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Graph execution error"):
        # A tf.function's error: the node and a Python trace, then the op's own message.
        ops = [
            line
            for line in lines[1:]
            if not line.startswith(("Detected at node", "File ", "[["))
            and not line.endswith("(most recent call last):")
        ]
        lines = ops[-1:] or lines
    return lines[0] if lines else type(exc).__name__
