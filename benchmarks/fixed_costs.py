"""Fixed costs of the Trainer and the Evaluator on the demo task, step by step, code A vs code B.

The demo's target task (digits 5-9, 32px, DenseNet121 pre-trained here on digits
0-4, the Trainer's default head training) is run once through the whole pipeline
(`imgpipe run`) to make the components' inputs. Then each round runs, each in a
fresh process (as a first `imgpipe run` pays them) and interleaved:

- the Trainer's executor (RuntimeParamTrainerExecutor.Do, exactly as the pipeline
  calls it) of each code version, timed per step: model build with weight load,
  feature extraction, head training, the rest of train(), export (of which
  `tf.saved_model.save`), warmup requests, and the whole Do;
- the Evaluator's executor (GateEvaluatorExecutor.Do) of each code version on the
  model that version's Trainer just wrote, without a baseline (a first run) and with
  one (every later run: the latest blessed model), timed as a whole.

Fixed cost = the Trainer's Do minus (feature extraction + head training). Code A
is a git revision (`--before`, default `arch`; extracted with `git archive`), B
this checkout. Both run with this checkout's virtualenv. The gate records
(gate.json) of A and B on the same model are compared field by field.

    python -m benchmarks.fixed_costs                 # 3 rounds (~15 min here)
    python -m benchmarks.fixed_costs --quick         # 1 round
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKBONE = "DenseNet121"
SIZE = 32
PRETRAIN_EPOCHS = 15  # the demo's default


# ------------------------------------------------------------------ the child processes
def timer(times: dict[str, float], name: str, fn):
    """fn wrapped to add its wall seconds to times[name] (re-entrant calls counted once).

    Here, not in benchmarks/common.py: the children run this file against code A's tree, whose
    own `benchmarks` package may predate any helper added there."""
    depth = [0]

    def wrapped(*a, **kw):
        depth[0] += 1
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                times[name] = times.get(name, 0.0) + time.perf_counter() - t0

    return wrapped


def _context(out: str, beam_args: list[str] | None = None):
    from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor

    return BaseBeamExecutor.Context(
        beam_pipeline_args=beam_args or [], tmp_dir=os.path.join(out, "tmp"), unique_id="1"
    )


def _artifact(cls, uri: str, artifact_id: int | None = None, **props):
    a = cls()
    a.uri = uri
    if artifact_id is not None:
        a.id = artifact_id
    for k, v in props.items():
        setattr(a, k, v)
    return a


def _exec_properties(component) -> dict:
    from google.protobuf import message
    from tfx.utils import proto_utils

    return {
        k: proto_utils.proto_to_json(v) if isinstance(v, message.Message) else v
        for k, v in component.exec_properties.items()
        if v is not None
    }


def _components(setup: dict) -> dict:
    from imgpipe.demo import steps as demo
    from pipeline.pipeline import create_pipeline

    config = demo.target_config(
        setup["workdir"], setup["target"], BACKBONE, setup["weights"], SIZE, None, 0.9
    )
    p = create_pipeline(config)
    return {c.id: c for c in p.components}, p.beam_pipeline_args


def child_trainer(setup: dict, out: str) -> dict:
    """Run the Trainer's executor once; seconds per step."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    import tensorflow as tf
    from tfx.types import standard_artifacts

    import trainer.data
    import trainer.export
    import trainer.model
    import trainer.train
    from components.trainer import RuntimeParamTrainerExecutor

    times["imports"] = time.perf_counter() - t0
    comps, _ = _components(setup)
    trainer.model.build_backbone = timer(times, "build_backbone", trainer.model.build_backbone)
    trainer.train.train = timer(times, "train()", trainer.train.train)
    trainer.export.export_serving_model = timer(times, "export", trainer.export.export_serving_model)
    tf.saved_model.save = timer(times, "saved_model.save", tf.saved_model.save)
    try:
        import serving.warmup

        serving.warmup.write_warmup_requests = timer(times, "warmup", serving.warmup.write_warmup_requests)
    except ImportError:
        pass
    ex = _artifact(standard_artifacts.Examples, setup["examples"], split_names='["train", "eval"]')
    inputs = {
        "examples": [ex],
        "transform_graph": [_artifact(standard_artifacts.TransformGraph, setup["transform_graph"])],
        "schema": [_artifact(standard_artifacts.Schema, setup["schema"])],
    }
    model = _artifact(standard_artifacts.Model, os.path.join(out, "model"))
    run = _artifact(standard_artifacts.ModelRun, os.path.join(out, "model_run"))
    for a in (model, run):
        os.makedirs(a.uri, exist_ok=True)
    t0 = time.perf_counter()
    RuntimeParamTrainerExecutor(_context(out)).Do(
        inputs, {"model": [model], "model_run": [run]}, _exec_properties(comps["Trainer"])
    )
    times["Do"] = time.perf_counter() - t0
    with open(os.path.join(run.uri, "training_summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    for k, v in summary["seconds"].items():
        times[f"train.{k}"] = v
    times["eval_accuracy"] = summary["eval_accuracy"]
    return times


def child_evaluator(setup: dict, out: str, model_uri: str, baseline_uri: str | None) -> dict:
    """Run the Evaluator's executor once on model_uri (against baseline_uri); seconds and gate.json."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    from tfx.types import standard_artifacts

    from components.artifacts import DataGateReport
    from components.evaluator import GateEvaluatorExecutor

    times["imports"] = time.perf_counter() - t0
    comps, beam_args = _components(setup)
    inputs = {
        "examples": [
            _artifact(standard_artifacts.Examples, setup["examples"], split_names='["train", "eval"]')
        ],
        "model": [_artifact(standard_artifacts.Model, model_uri, 1001)],
        "data_report": [_artifact(DataGateReport, setup["data_report"])],
        "baseline_model": []
        if not baseline_uri
        else [_artifact(standard_artifacts.Model, baseline_uri, 1000)],
    }
    evaluation = _artifact(standard_artifacts.ModelEvaluation, os.path.join(out, "evaluation"))
    blessing = _artifact(standard_artifacts.ModelBlessing, os.path.join(out, "blessing"))
    for a in (evaluation, blessing):
        os.makedirs(a.uri, exist_ok=True)
    t0 = time.perf_counter()
    GateEvaluatorExecutor(_context(out, beam_args)).Do(
        inputs, {"evaluation": [evaluation], "blessing": [blessing]}, _exec_properties(comps["Evaluator"])
    )
    times["Do"] = time.perf_counter() - t0
    with open(os.path.join(evaluation.uri, "gate.json"), encoding="utf-8") as f:
        times["gate"] = json.load(f)
    return times


def _child_main(argv: list[str]) -> int:
    kind, src, setup_json, out = argv[:4]
    sys.path.insert(0, src)
    from benchmarks import common

    common.quiet()
    setup = json.loads(setup_json)
    import trainer

    if os.path.dirname(os.path.dirname(os.path.abspath(trainer.__file__))) != os.path.abspath(src):
        raise SystemExit(f"child imported trainer from {trainer.__file__}, not {src}")
    if kind == "trainer":
        result = child_trainer(setup, out)
    else:
        result = child_evaluator(setup, out, argv[4], argv[5] if len(argv) > 5 and argv[5] != "-" else None)
    with open(os.path.join(out, "result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


# ------------------------------------------------------------------ the parent
def _setup(workdir: str) -> dict:
    """Data, backbone, and one pipeline run (this checkout) whose artifacts feed the children."""
    from benchmarks import common
    from imgpipe.demo import steps as demo
    from imgpipe.orchestration import metadata as mlmd
    from imgpipe.orchestration.local import run_local

    _, target = common.demo_tasks(workdir, SIZE)
    weights = common.source_backbone(workdir, BACKBONE, SIZE, PRETRAIN_EPOCHS)
    base = os.path.join(workdir, "fixed_costs")
    config = demo.target_config(os.path.join(base, "pipeline"), target, BACKBONE, weights, SIZE, None, 0.9)
    if not os.path.exists(config.metadata_path):
        common.say("[bench] one pipeline run to make the Trainer's and Evaluator's inputs")
        run_local(config.resolved(), progress=common.say)
    config = config.resolved()
    with mlmd.open_store(config) as store:
        run = mlmd.latest_run(store, config.pipeline_name)
        ex = mlmd.run_executions(store, config.pipeline_name, run)
        return {
            "workdir": os.path.join(base, "pipeline"),
            "target": target,
            "weights": weights,
            "examples": mlmd.output_uri(store, ex["ImportExampleGen"], "examples"),
            "transform_graph": mlmd.output_uri(store, ex["Transform"], "transform_graph"),
            "schema": mlmd.output_uri(store, ex["SchemaGen"], "schema"),
            "data_report": mlmd.output_uri(store, ex["DataGate"], "report"),
        }


def _source_tree(workdir: str, rev: str) -> str:
    """`rev` of this repository extracted (git archive) under workdir; its path."""
    sha = subprocess.run(
        ["git", "-C", HERE, "rev-parse", "--short", rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    dest = os.path.join(workdir, "fixed_costs", f"src-{sha}")
    if not os.path.isdir(dest):
        os.makedirs(dest)
        archive = subprocess.run(["git", "-C", HERE, "archive", sha], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return dest


def _run_child(args: list[str], out: str) -> dict:
    from benchmarks import common

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "stderr.log"), "w", encoding="utf-8") as err:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", *args[:1], *args[1:]],
            stderr=err,
            stdout=err,
            check=False,
        )
    if proc.returncode != 0:
        common.say(f"[bench] child failed ({proc.returncode}); see {out}/stderr.log")
        raise SystemExit(1)
    with open(os.path.join(out, "result.json"), encoding="utf-8") as f:
        return json.load(f)


TRAINER_ROWS = [
    ("Do (whole executor)", lambda t: t["Do"]),
    ("model build + weight load", lambda t: t.get("build_backbone", 0.0)),
    ("feature extraction", lambda t: t.get("train.feature_extraction", 0.0)),
    ("head training", lambda t: t.get("train.train", 0.0)),
    (
        "rest of train()",
        lambda t: (
            t["train()"]
            - t.get("build_backbone", 0.0)
            - t.get("train.feature_extraction", 0.0)
            - t.get("train.train", 0.0)
        ),
    ),
    ("export (whole)", lambda t: t.get("export", 0.0)),
    ("  of which saved_model.save", lambda t: t.get("saved_model.save", 0.0)),
    ("  of which warmup requests", lambda t: t.get("warmup", 0.0)),
    ("rest of Do (TFX, run_fn set-up, summary)", lambda t: t["Do"] - t["train()"] - t.get("export", 0.0)),
    (
        "fixed cost = Do - (extraction + head training)",
        lambda t: t["Do"] - t.get("train.feature_extraction", 0.0) - t.get("train.train", 0.0),
    ),
    ("process imports (TF, TFX; paid once per pipeline)", lambda t: t["imports"]),
]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child_main(argv[1:])
    from benchmarks import common

    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--before", default="arch", help="git revision for code A (default arch)")
    p.add_argument("--no-evaluator", action="store_true")
    args = p.parse_args(argv)
    common.quiet()
    rounds = common.repeats(args)
    head = common.header(
        f"Fixed costs: Trainer and Evaluator executors, {BACKBONE} {SIZE}px, A = {args.before}, B = this checkout"
    )
    setup = _setup(args.workdir)
    trees = {"A": _source_tree(args.workdir, args.before), "B": HERE}
    runs_dir = tempfile.mkdtemp(prefix="fixed-costs-", dir=os.path.join(args.workdir, "fixed_costs"))
    setup_json = json.dumps(setup)
    results: dict[str, dict[str, list]] = {v: {"trainer": [], "eval": [], "eval_baseline": []} for v in trees}

    for r in range(rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for v in order:
            out = os.path.join(runs_dir, f"r{r}-{v}")
            t = _run_child(
                ["trainer", trees[v], setup_json, os.path.join(out, "trainer")], os.path.join(out, "trainer")
            )
            results[v]["trainer"].append(t)
            common.say(f"[bench] round {r + 1}/{rounds} {v} trainer: Do {t['Do']:.1f}s")
        if args.no_evaluator:
            continue
        for kind, baseline in (("eval", False), ("eval_baseline", True)):
            for v in order:
                out = os.path.join(runs_dir, f"r{r}-{v}")
                model = os.path.join(out, "trainer", "model")
                e = _run_child(
                    [
                        "evaluator",
                        trees[v],
                        setup_json,
                        os.path.join(out, kind),
                        model,
                        model if baseline else "-",
                    ],
                    os.path.join(out, kind),
                )
                results[v][kind].append(e)
                common.say(f"[bench] round {r + 1}/{rounds} {v} {kind}: Do {e['Do']:.1f}s")
        if r == 0:
            # The gate's numbers on one fixed model (B's), by A's and by B's Evaluator.
            out = os.path.join(runs_dir, "r0-A-on-B-model")
            model = os.path.join(runs_dir, "r0-B", "trainer", "model")
            same_model_gate = _run_child(["evaluator", trees["A"], setup_json, out, model, "-"], out)["gate"]

    common.emit(head)
    common.emit(
        f"Medians of {rounds} interleaved round(s), each executor in a fresh process; "
        f"B/A per round, then the median of those ratios.\n"
    )
    rows = []
    for name, f in TRAINER_ROWS:
        a = [f(t) for t in results["A"]["trainer"]]
        b = [f(t) for t in results["B"]["trainer"]]
        ratio = (
            common.median([y / x for x, y in zip(a, b, strict=True) if x > 0.05])
            if any(x > 0.05 for x in a)
            else float("nan")
        )
        rows.append([name, common.median(a), common.median(b), ratio])
    acc = [[t["eval_accuracy"] for t in results[v]["trainer"]] for v in trees]
    rows.append(["eval accuracy (Trainer's)", common.median(acc[0]), common.median(acc[1]), float("nan")])
    common.emit("Trainer (RuntimeParamTrainerExecutor.Do), seconds:\n")
    common.emit(common.table(["step", "A s", "B s", "B/A"], rows))
    common.emit()
    if not args.no_evaluator:
        rows = []
        for kind, label in (("eval", "no baseline (first run)"), ("eval_baseline", "with a baseline model")):
            a = [e["Do"] for e in results["A"][kind]]
            b = [e["Do"] for e in results["B"][kind]]
            rows.append(
                [
                    label,
                    common.median(a),
                    common.median(b),
                    common.median([y / x for x, y in zip(a, b, strict=True)]),
                ]
            )
        common.emit(
            "Evaluator (GateEvaluatorExecutor.Do on the model the same code's Trainer wrote), seconds:\n"
        )
        common.emit(common.table(["Evaluator", "A s", "B s", "B/A"], rows))
        common.emit()
        ga, gb = same_model_gate, results["B"]["eval"][0]["gate"]
        diff = sorted(k for k in set(ga) | set(gb) if ga.get(k) != gb.get(k))
        common.emit(
            f"gate.json of A's and B's Evaluator on one model (B's, round 1): "
            f"{'identical' if not diff else 'differ in ' + ', '.join(diff)} "
            f"(accuracy {gb.get('accuracy')}, blessed {gb.get('blessed')})."
        )
        common.emit()
    with open(os.path.join(runs_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    common.say(f"[bench] raw results: {runs_dir}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
