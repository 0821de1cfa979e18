"""ImportExampleGen whose cache key holds the bytes of the TFRecord files it reads.

TFX's ExampleGen keys its execution cache on a fingerprint of each split's files made of their
count, their total size and their modification times cut to whole seconds
(`tfx.utils.io_utils.generate_fingerprint`): no file name, no content. Records rewritten with
the same sizes and their times put back (`cp -p`, `rsync -a`, a tarball's stored times, a
build tool's fixed times, two writes in one second) read as unchanged, and a run reuses the
earlier examples, statistics, model and verdict: a model judged on labels that are no longer
the data's was blessed that way. `ImageExampleGen`'s fingerprint is of the content instead:
each file's path under the input folder, its size and the SHA-256 of its bytes. Any change to
what the records hold is a new execution; the same bytes written again (records put back as
they were, a copy with new times) match the cache.

Reading every byte costs one pass over the records per run (benchmarks/example_gen_key.py,
BENCHMARKS.md "The data's content in ExampleGen's key"). The driver runs where the run
starts (LocalDagRunner, each Airflow task); on Kubeflow Pipelines / Vertex AI, TFX's own
ExampleGen driver step computes the fingerprint and the platform's cache keys on it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

from tfx.components import ImportExampleGen
from tfx.components.example_gen import driver, input_processor
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2, range_config_pb2

from trainer.same_files import sha256


def content_fingerprint(input_base: str, patterns: Iterable[tuple[str, str]]) -> str:
    """One line naming every file the (split name, glob pattern under `input_base`) pairs match,
    by its path under `input_base`, its size and the SHA-256 of its bytes."""
    whole = hashlib.sha256()
    files = total = 0
    for split, pattern in patterns:
        for path in sorted(fileio.glob(os.path.join(input_base, pattern))):
            digest, size = sha256(path, fileio.open)
            if "://" in path:  # the same name with or without a slash after input_base
                name = path[len(input_base.rstrip("/")) :].lstrip("/")
            else:
                name = os.path.relpath(path, input_base)
            whole.update(f"{split}\0{name}\0{size}\0{digest}\n".encode("utf-8", "surrogateescape"))
            files += 1
            total += size
    return f"content:files:{files},bytes:{total},sha256:{whole.hexdigest()}"


class _ContentInputProcessor(input_processor.FileBasedInputProcessor):
    def get_input_fingerprint(self, span: int, version: int | None) -> str | None:
        patterns = [
            (s.name, self.get_pattern_for_span_version(s.pattern, span, version)) for s in self._splits
        ]
        return content_fingerprint(self._input_base_uri, patterns)


class ContentFingerprintDriver(driver.FileBasedDriver):
    """TFX's file-based ExampleGen driver, its input fingerprint of the files' bytes."""

    def get_input_processor(
        self,
        splits: Iterable[example_gen_pb2.Input.Split],
        range_config: range_config_pb2.RangeConfig | None = None,
        input_base_uri: str | None = None,
    ) -> input_processor.InputProcessor:
        if not input_base_uri:
            raise ValueError("ImportExampleGen needs input_base")
        return _ContentInputProcessor(input_base_uri, splits, range_config)


class ImageExampleGen(ImportExampleGen):
    """ImportExampleGen keyed on its input's content (give it the id "ImportExampleGen")."""

    DRIVER_CLASS = ContentFingerprintDriver
