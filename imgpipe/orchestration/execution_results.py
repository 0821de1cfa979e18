"""A failed execution's result, written so ML Metadata's PostgreSQL backend can store it.

When a component fails before or in its executor, TFX's launcher records the error on
the execution (`__execution_result__`: the ExecutionResult proto as JSON). Its message
holds a traceback: JSON writes its line breaks and quotes with backslashes, and ML
Metadata 1.16's PostgreSQL backend builds that string into broken SQL ("syntax error at
or near ..."). The write fails, the component's real error (e.g. "inputs[model_blessing]
... got 0 artifacts") is replaced by ML Metadata's, and the execution stays RUNNING.

`storable()` replaces TFX's `set_execution_result` for a block: the message keeps its
words, with line breaks, quotes and backslashes written without escapes, so the JSON has
no backslash. SQLite stores either; the replacement is used with PostgreSQL only.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator

from components import patching

_EXECUTION_RESULT = "__execution_result__"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def plain(message: str) -> str:
    """`message` with nothing JSON would escape: quotes become ', backslashes /, each run of
    line breaks and other control characters ' | '."""
    return _CONTROL.sub(" | ", message.replace("\\", "/").replace('"', "'")).strip(" |")


def set_plain_result(execution_result, execution) -> None:
    """TFX's set_execution_result, its JSON free of backslashes (`plain` message, code kept)."""
    text = {"code": int(execution_result.code)} if execution_result.code else {}
    if execution_result.result_message:
        text["resultMessage"] = plain(execution_result.result_message)
    execution.custom_properties[_EXECUTION_RESULT].string_value = json.dumps(
        text, ensure_ascii=False, indent=2
    )


@contextlib.contextmanager
def storable(shared_store: bool) -> Iterator[None]:
    """Within the block, with `shared_store` (PostgreSQL), TFX records execution results with
    `set_plain_result`; otherwise as it does."""
    if not shared_store:
        yield
        return
    from tfx.orchestration.portable.mlmd import execution_lib

    with patching.replaced(execution_lib, "set_execution_result", lambda _original: set_plain_result):
        yield
