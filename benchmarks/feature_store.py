"""A retrain with the feature store against one without: the Trainer's time when the folder grew
by a few percent, in paired fresh processes.

With the backbone frozen, the Trainer runs it once over each split (the feature cache) and
trains the head on the features. A scheduled retrain on a folder that grew by 5% ran it over
every image again; with the feature store (trainer/feature_store.py, on by default) it runs over
the new images and a check sample of up to 8 stored images per split, and takes the rest from
the store the earlier run left.

Workload: the demo's target task (digits 5-9) replicated to `--images` pictures at
`--image-size` px (`common.replicate_images`: small seeded affine changes), MobileNetV2
pre-trained here on digits 0-4 at that size. `earlier` is the first `--images` of them, split
4 to 1; `grown` adds `--grow` (5%) new pictures and is split anew. A store is made once by
`train()` on `earlier`; each round copies it and runs `train()` on `grown` in a fresh process:

- without: `feature_reuse` off (`feature_store_dir` None), every image extracted;
- with: the copied store.

Reported (medians): `train()`'s whole time, its feature extraction (with the store: the reading
of the records' fingerprints, the extraction of the new images and the sample, and the store's
write), the head's training; per round, the images reused and extracted, the eval accuracy, and
whether the two heads' weights are equal (they should be, bit for bit, on a CPU).

    python -m benchmarks.feature_store              # 3 rounds, 4,000 images at 96 px
    python -m benchmarks.feature_store --quick      # 1 round
"""

from __future__ import annotations

import os
import shutil

from benchmarks import common

BACKBONE = "MobileNetV2"
PRETRAIN_EPOCHS = 8

CHILD = r"""
import hashlib, json, sys, time
import tensorflow_transform as tft
from trainer import data, train
from trainer.config import TrainingConfig

records, transform, weights, size, store = sys.argv[1:6]
params = TrainingConfig(backbone="MobileNetV2", weights=weights, image_size=int(size))
t = time.perf_counter()
result = train.train(
    data.list_files(records + "/train"), data.list_files(records + "/eval"),
    tft.TFTransformOutput(transform), params, verbose=0, feature_store_dir=store or None,
)
whole = time.perf_counter() - t
head = hashlib.sha256(b"".join(w.tobytes() for w in result.model.get_weights()[-4:])).hexdigest()
stored = result.feature_store or {"reused": 0, "extracted": "all"}
print(json.dumps({
    "train": whole, "extraction": result.seconds["feature_extraction"], "head": result.seconds.get("train", 0.0),
    "reused": stored["reused"], "extracted": stored["extracted"], "accuracy": result.eval_accuracy,
    "head_sha256": head,
}))
"""

VARIANTS = ("without", "with")
TIMES = (("train", "train() s"), ("extraction", "feature extraction s"), ("head", "head training s"))


def _datasets(workdir: str, images: int, grow: int, size: int) -> tuple[str, str]:
    """(earlier, grown) TFRecord dirs: `images` replicated pictures, and `images + grow` (the same
    first `images`: replicate_images is deterministic), each split 4 to 1 in an order set by the
    pictures' bytes, so the retrain's split is drawn anew."""
    import hashlib

    from tests import helpers

    common.demo_tasks(workdir, size)
    source = os.path.join(workdir, f"digits{size}", "images", "target")
    out = []
    for name, n in (("earlier", images), ("grown", images + grow)):
        tree = os.path.join(workdir, f"store_images_{n}_{size}")
        common.replicate_images(source, tree, n)
        root = os.path.join(workdir, f"store_{name}_{n}_{size}")
        if not os.path.isdir(os.path.join(root, "eval")):
            pairs = []
            for label in sorted(os.listdir(tree)):
                for file in sorted(os.listdir(os.path.join(tree, label))):
                    with open(os.path.join(tree, label, file), "rb") as f:
                        pairs.append((f.read(), label))
            pairs.sort(key=lambda p: hashlib.sha256(p[0]).hexdigest())
            helpers.write_split_dataset(root, pairs, eval_every=5)
        out.append(root)
    return out[0], out[1]


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4000, help="pictures of the earlier run (default 4000)")
    p.add_argument("--grow", type=int, default=None, help="new pictures of the retrain (default 5%%)")
    p.add_argument("--image-size", type=int, default=96, help="pixels a side (default 96)")
    args = p.parse_args(argv)
    common.quiet()
    runs = common.repeats(args)
    grow = args.grow if args.grow is not None else max(1, args.images // 20)
    size = args.image_size
    earlier, grown = _datasets(args.workdir, args.images, grow, size)
    weights = common.source_backbone(args.workdir, BACKBONE, size, PRETRAIN_EPOCHS)
    transform = os.path.join(args.workdir, f"store_transform_{size}")
    common.analyze(grown, transform, BACKBONE, size)
    kept = os.path.join(args.workdir, f"store_kept_{args.images}_{grow}_{size}")
    if not os.path.isdir(kept) or not os.listdir(kept):
        common.say(f"the earlier run: {args.images} pictures, filling the store")
        common.python_child(CHILD, [earlier, transform, weights, str(size), kept], "the earlier run")
    store = os.path.join(args.workdir, "store_round")

    def measure(variant: str) -> dict:
        shutil.rmtree(store, ignore_errors=True)
        if variant == "with":
            shutil.copytree(kept, store)
        return common.python_child(
            CHILD,
            [grown, transform, weights, str(size), store if variant == "with" else ""],
            f"retrain ({variant})",
        )

    res = common.interleaved({v: (lambda r, v=v: measure(v)) for v in VARIANTS}, runs, say=common.say)
    meds = {v: {k: common.median([r[k] for r in res[v]]) for k, _ in TIMES} for v in VARIANTS}
    same = [a["head_sha256"] == b["head_sha256"] for a, b in zip(res["without"], res["with"], strict=True)]
    rows = [
        [
            v,
            *(meds[v][k] for k, _ in TIMES),
            ", ".join(f"{r['reused']}/{r['extracted']}" for r in res[v]),
            ", ".join(f"{r['accuracy']:.4f}" for r in res[v]),
        ]
        for v in VARIANTS
    ]
    title = f"A retrain with the feature store: {args.images} + {grow} pictures, {BACKBONE} {size}px"
    common.emit(common.header(title))
    common.emit(
        f"Medians over {runs} fresh process(es) per variant, interleaved (order alternating). The "
        f"earlier run trained on {args.images} pictures; the retrain on those and {grow} new ones, "
        "split anew. The Trainer's defaults (to convergence, the feature cache on).\n"
    )
    common.emit(
        common.table(
            [
                "variant",
                *(label for _, label in TIMES),
                "reused/extracted (per round)",
                "eval accuracy (per round)",
            ],
            rows,
        )
    )
    w, s = meds["without"], meds["with"]
    common.emit(
        f"\nRatios without / with: train() {w['train'] / s['train']:.2f}x, feature extraction "
        f"{w['extraction'] / s['extraction']:.2f}x. The heads' weights equal in every round: "
        f"{all(same)} ({', '.join(map(str, same))})."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
