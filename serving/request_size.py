"""How many images one gRPC request may carry: under the client's message limit.

A client refuses to send a message over its limit (RESOURCE_EXHAUSTED "Sent message
larger than max"), so a batch of large photos must go in parts, and an image larger
than any request can carry is named instead of failing its whole batch. No heavy
imports: the Beam scorers and the CLI use it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

MB = 1024 * 1024
CLIENT_MESSAGE_MB = 64  # serving.client.ServingClient's send and receive limit by default
# The images travel as a string tensor (a few bytes of framing each; serving_default's
# tf.Examples a few more) beside the model spec: one MB of headroom under the limit.
HEADROOM_BYTES = MB

T = TypeVar("T")
# What a gRPC server (TF Serving's C++ one, or grpcio's) answers, with RESOURCE_EXHAUSTED, to a
# request over its own receive limit: "Received message larger than max (1929166 vs. 1048576)".
_SERVER_REFUSED_SIZE = re.compile(r"Received message larger than max \((\d+) vs\. (\d+)\)")
# What TF Serving with batching on (serving/deploy/batching_parameters.txt, and `imgpipe serve`'s
# --max-batch-size) answers, with INVALID_ARGUMENT, to a request of more images than a batch holds.
_SERVER_REFUSED_BATCH = re.compile(r"Task size (\d+) is larger than maximum input batch size (\d+)")


def image_budget(max_message_mb: int = CLIENT_MESSAGE_MB) -> int:
    """The image bytes one request may carry under a `max_message_mb` limit."""
    return max(max_message_mb * MB - HEADROOM_BYTES, MB // 2)


def request_parts(
    items: Sequence[tuple[T, bytes]], max_images: int | None, max_bytes: int
) -> Iterator[tuple[list[tuple[T, bytes]], bool]]:
    """Split (key, image bytes) items, in order, into requests of at most `max_images` images
    (None: no count limit) and `max_bytes` image bytes: yields (part, too_large). An item over
    `max_bytes` comes alone with too_large True: no request can carry it."""
    return _parts(items, lambda: (max_images, max_bytes))


def _parts(
    items: Sequence[tuple[T, bytes]], limits: Callable[[], tuple[int | None, int]]
) -> Iterator[tuple[list[tuple[T, bytes]], bool]]:
    """request_parts under the (max images, max bytes) that `limits()` gives as each item is
    placed: a limit learnt from a part's answer applies to every part after it."""
    part: list[tuple[T, bytes]] = []
    size = 0
    for key, data in items:
        max_images, max_bytes = limits()
        if part and (size + len(data) > max_bytes or (max_images is not None and len(part) >= max_images)):
            yield part, False
            part, size = [], 0
            max_images, max_bytes = limits()  # what the answer to that part taught
        if len(data) > max_bytes:
            yield [(key, data)], True
            continue
        part.append((key, data))
        size += len(data)
    if part:
        yield part, False


def too_large_reason(size: int, max_message_mb: int = CLIENT_MESSAGE_MB) -> str:
    return (
        f"{size / MB:.1f} MB: larger than one request to a model server can carry "
        f"({max_message_mb} MB, the gRPC message limit)"
    )


def server_receive_limit(code_name: str, details: str) -> int | None:
    """The receive limit, in bytes, a server named when it refused a request as too large (a
    server started with a smaller limit than the client's, or a proxy's), else None. Other
    RESOURCE_EXHAUSTED answers (too many requests at once) are not about size: None."""
    if code_name != "RESOURCE_EXHAUSTED":
        return None
    found = _SERVER_REFUSED_SIZE.search(details)
    return int(found.group(2)) if found else None


def server_batch_limit(code_name: str, details: str) -> int | None:
    """The most images a request may carry, as a server with batching named it when it refused a
    request of more ("Task size 64 is larger than maximum input batch size 32"), else None: the
    same INVALID_ARGUMENT code as a refused image, which is about one image, not the request."""
    if code_name != "INVALID_ARGUMENT":
        return None
    found = _SERVER_REFUSED_BATCH.search(details)
    return int(found.group(2)) if found else None


def budget_under(limit_bytes: int) -> int:
    """The image bytes one request may carry under a server's receive limit of `limit_bytes`:
    the framing of a request (its model spec, a few bytes per image) is far under 1% of it."""
    return max(limit_bytes - max(limit_bytes // 100, 16 * 1024), 1)


def server_too_large_reason(size: int, limit_bytes: int) -> str:
    return (
        f"{size / MB:.1f} MB: larger than one request to a model server can carry "
        f"(this server accepts {limit_bytes / MB:.1f} MB: its gRPC receive limit)"
    )


class RequestBudget:
    """What one request may carry: image bytes under the client's limit at first, then under the
    server's once it refuses a request as over its own (a server or proxy with a smaller one);
    and `images`, the most images, once a server with batching refuses more (None: no limit)."""

    def __init__(self, max_message_mb: int = CLIENT_MESSAGE_MB):
        self.bytes = image_budget(max_message_mb)
        self.client_mb = max_message_mb
        self.server_limit: int | None = None
        self.images: int | None = None

    def refused(self, code_name: str, details: str, sizes: Sequence[int]) -> bool:
        """Whether a failed request of images of `sizes` was refused as over the server's limit
        (bytes, or images per batch); if so, the budget is now under that limit and under the
        request's own size, so the request sent again in parts (`request_parts`) splits further
        each time."""
        batch = server_batch_limit(code_name, details)
        if batch is not None and len(sizes) > 1:  # one image refused so is no request to split
            self.fewer_images(batch, len(sizes))
            return True
        limit = server_receive_limit(code_name, details)
        if limit is None:
            return False
        self.shrink(limit, sizes)
        return True

    def fewer_images(self, limit: int, refused: int) -> None:
        """At most the server's batch size `limit`, and fewer than a refused request's `refused`."""
        self.images = max(1, min(limit, refused - 1, self.images or limit))

    def max_images(self, wanted: int | None) -> int | None:
        """The images per request: `wanted` (None: any), under what the server takes."""
        if self.images is None:
            return wanted
        return self.images if wanted is None else min(wanted, self.images)

    def shrink(self, limit: int, sizes: Sequence[int]) -> None:
        """Under the server's receive limit `limit` and under a refused request's own size."""
        self.server_limit = limit
        self.bytes = min(self.bytes, budget_under(limit), sum(sizes) - 1)

    def parts(
        self, items: Sequence[tuple[T, bytes]], wanted: int | None = None
    ) -> Iterator[tuple[list[tuple[T, bytes]], bool]]:
        """`items` in requests of at most `wanted` images (None: any) under this budget as it
        stands when each request starts (see request_parts): once a refusal has taught the
        budget a server's limit, every later request keeps under it, not only the refused one's
        parts."""
        return _parts(items, lambda: (self.max_images(wanted), self.bytes))

    def too_large_reason(self, size: int) -> str:
        if self.server_limit is not None:
            return server_too_large_reason(size, self.server_limit)
        return too_large_reason(size, self.client_mb)
