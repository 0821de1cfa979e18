"""`imgpipe serve` and `imgpipe predict`: the dev/test model server and its command-line client."""

from __future__ import annotations

import argparse

from imgpipe.cli.output import Command
from serving import config as serving_config


def _serve(args: argparse.Namespace) -> int:
    from serving import server  # loads TensorFlow: only when the command runs

    return server.run_serve(args)


def _predict(args: argparse.Namespace) -> int:
    from serving import client

    return client.run_predict(args)


COMMANDS = [
    Command(
        "serve",
        "serve pushed models over TF Serving's gRPC API (dev/test server)",
        serving_config.add_serve_arguments,
        _serve,
    ),
    Command(
        "predict",
        "query a TF Serving (or `imgpipe serve`) endpoint with images",
        serving_config.add_predict_arguments,
        _predict,
    ),
]
