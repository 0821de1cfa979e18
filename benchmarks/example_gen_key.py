"""What ExampleGen's content key costs a run: the SHA-256 of every record file, against TFX's key.

`components/example_gen.py` keys ExampleGen's cache on each file's name, size and the SHA-256
of its bytes; TFX's own key reads only the files' sizes and times. Both are made at every run's
start, cached or not. Variants, interleaved in one process on the same folders (train/ and
eval/ shards of random bytes, 8 and 2 files, as `imgpipe ingest` writes them): "tfx" (the
processor TFX's driver uses) and "content" (imgpipe's). The files are read once before the
rounds, so both measure a warm page cache, as on a re-run.

    python -m benchmarks.example_gen_key            # 5 rounds, 2 MB, 200 MB and 1 GB of records
    python -m benchmarks.example_gen_key --quick    # 1 round
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from benchmarks import common

SIZES_MB = (2, 200, 1000)
SHARDS = {"train": 8, "eval": 2}


def _folder(root: str, mb: int) -> str:
    base = os.path.join(root, f"{mb}mb")
    per_file = mb * (1 << 20) // sum(SHARDS.values())
    block = os.urandom(1 << 20)
    for split, n in SHARDS.items():
        os.makedirs(os.path.join(base, split))
        for i in range(n):
            with open(os.path.join(base, split, f"data-{i:05d}-of-{n:05d}.tfrecord"), "wb") as f:
                left = per_file
                while left > 0:
                    f.write(block[: min(left, len(block))])
                    left -= len(block)
    return base


def _key(processor_class, base: str) -> float:
    from tfx.proto import example_gen_pb2

    splits = [example_gen_pb2.Input.Split(name=s, pattern=f"{s}/*") for s in SHARDS]
    start = time.perf_counter()
    processor = processor_class(base, splits)
    span, version = processor.resolve_span_and_version()
    processor.get_input_fingerprint(span, version)
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    rounds = common.repeats(args, default=5)
    common.quiet()
    from tfx.components.example_gen import input_processor

    from components.example_gen import _ContentInputProcessor

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mb in SIZES_MB:
            base = _folder(tmp, mb)
            _key(_ContentInputProcessor, base)  # read once: a warm page cache for both
            got = common.interleaved(
                {
                    "tfx": lambda r, base=base: _key(input_processor.FileBasedInputProcessor, base),
                    "content": lambda r, base=base: _key(_ContentInputProcessor, base),
                },
                rounds,
                say=common.say,
            )
            tfx, content = common.median(got["tfx"]), common.median(got["content"])
            rows.append([f"{mb:,}", f"{tfx:.4f}", f"{content:.3f}", f"{mb / content:,.0f}"])
            common.say(f"[example_gen_key] {mb} MB: tfx {tfx:.4f}s, content {content:.3f}s")
    common.emit(common.header("ExampleGen's key: TFX's (sizes and times) and imgpipe's (content)"))
    common.emit(f"Medians of {rounds} interleaved round(s); 10 record files; page cache warm.\n")
    common.emit(common.table(["records MB", "tfx key s", "content key s", "content MB/s"], rows))
    common.emit("")
    return 0


if __name__ == "__main__":
    sys.exit(main())
