"""One way to replace a third-party function for the length of a block.

imgpipe adjusts a few functions of TFX, TFMA and tfx_bsl around the calls that use them
(the Evaluator's model loaders and record batches, TFX's sdist for local Beam runners,
LocalDagRunner's launch for progress lines). Each replacement lasts for one block and is
undone when the block ends, also on an error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def replaced(owner: Any, name: str, make: Callable[[Any], Any]) -> Iterator[Any]:
    """Within the block `owner.<name>` is `make(original)`; the original is restored on leaving it.

    Yields the original.
    """
    original = getattr(owner, name)
    setattr(owner, name, make(original))
    try:
        yield original
    finally:
        setattr(owner, name, original)
