"""Errors shared by the local server and the client, each tied to a gRPC status code.

The server maps these to the status of the RPC; the client raises
`ServingRpcError` for a failed call, carrying the code and the server's
message so callers can tell bad input (INVALID_ARGUMENT) from a missing model
(NOT_FOUND) or a server that is down (UNAVAILABLE).
"""

from __future__ import annotations

import re

import grpc


class ServingError(Exception):
    """Base class; `code` is the gRPC status the server answers with."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidRequestError(ServingError):
    """The request is malformed: wrong input name, dtype or shape, bad bytes, empty batch."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFoundError(ServingError):
    """Unknown model name, version, version label or signature."""

    code = grpc.StatusCode.NOT_FOUND


class ServerStartError(ServingError):
    """The server could not start: bad base path, port in use, invalid settings."""

    code = grpc.StatusCode.FAILED_PRECONDITION


# TF Serving's words (with INVALID_ARGUMENT, the code of a refused input) for a ModelSpec naming a
# version label its model config does not give the model: about the request, not its inputs.
UNKNOWN_LABEL = "Unrecognized servable version label"


class ServingRpcError(ServingError):
    """A client call failed; `code` and `details` are the server's status."""

    def __init__(self, method: str, target: str, code: grpc.StatusCode, details: str):
        self.method = method
        self.target = target
        self.code = code
        self.details = details
        super().__init__(f"{method} to {target} failed: {code.name}: {details}", code)

    @property
    def unknown_label(self) -> bool:
        """The server does not know the request's version label: no input of it is at fault,
        and sending it again, alone or in parts, gets the same answer."""
        return self.code == grpc.StatusCode.INVALID_ARGUMENT and self.details.startswith(UNKNOWN_LABEL)


_CODES_BY_VALUE = {c.value[0]: c for c in grpc.StatusCode}


def status_code_from_int(value: int) -> grpc.StatusCode:
    """A gRPC StatusCode from its number (TensorFlow's error codes use the same numbers)."""
    return _CODES_BY_VALUE.get(int(value), grpc.StatusCode.UNKNOWN)


def clean_tf_message(message: str) -> str:
    """The useful line(s) of a TensorFlow runtime error, without node dumps and stacks.

    What a client sees as the status message: the cause, not the graph.
    """
    lines = []
    for line in message.splitlines():
        s = line.strip()
        if not s or s.startswith(("[[", "Graph execution error", "Detected at node", "File ")):
            continue
        if line.startswith((" ", "\t")):  # source lines of the "defined at" stack
            continue
        s = s.replace("<stack traces unavailable>", "")
        lines.append(re.sub(r"\s*\[\[\{\{node .*$|\s*\[Op:[^\]]*\]$", "", s).strip())
    text = " ".join(x for x in lines if x)
    return text or next(iter(message.strip().splitlines()), "") or "(TensorFlow gave no message)"
