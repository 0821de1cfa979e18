"""A pipeline home with ML Metadata written the way TFX's LocalDagRunner writes it, without running TFX.

Contexts `pipeline` (the pipeline name), `pipeline_run` (the run id) and `node`
("<pipeline>.<NodeId>") are attached to every execution; outputs live at
PIPELINE_ROOT/<node>/<output key>/<execution id>/ and are linked by OUTPUT
events; a cached execution links the earlier outputs it reuses. Tests of
prune, recovery and the run summary use it to build exact histories quickly;
the e2e tests check the same code against real runs.
"""

from __future__ import annotations

import os

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2 as pb

COMPLETE, CACHED, RUNNING = pb.Execution.COMPLETE, pb.Execution.CACHED, pb.Execution.RUNNING


class FakeHome:
    """airflow=True: runs recorded as TFX's Airflow launcher records them, a `run` context
    ("<pipeline>.<run id>", properties pipeline_name and run_id) and a `component_run` one.
    connection: another store than HOME/metadata.sqlite (a shared PostgreSQL database)."""

    def __init__(
        self,
        home: str,
        pipeline: str = "imgpipe",
        airflow: bool = False,
        connection: pb.ConnectionConfig | None = None,
    ):
        self.home = home
        self.pipeline = pipeline
        self.airflow = airflow
        self.root = os.path.join(home, "pipelines", pipeline)
        self.metadata_path = os.path.join(home, "metadata.sqlite")
        os.makedirs(home, exist_ok=True)
        if connection is None:
            connection = pb.ConnectionConfig()
            connection.sqlite.filename_uri = self.metadata_path
        self.store = metadata_store.MetadataStore(connection)
        self._ctx_types = {
            n: self.store.put_context_type(pb.ContextType(name=n))
            for n in ("pipeline", "pipeline_run", "node")
        }
        self._ctx_types["run"] = self.store.put_context_type(
            pb.ContextType(name="run", properties={"pipeline_name": pb.STRING, "run_id": pb.STRING})
        )
        self._ctx_types["component_run"] = self.store.put_context_type(
            pb.ContextType(
                name="component_run",
                properties={"pipeline_name": pb.STRING, "run_id": pb.STRING, "component_id": pb.STRING},
            )
        )
        self._contexts: dict[tuple[str, str], pb.Context] = {}
        self.pipeline_ctx = self._context("pipeline", pipeline)

    def _context(self, kind: str, name: str) -> pb.Context:
        key = (kind, name)
        if key not in self._contexts:
            ctx = pb.Context(type_id=self._ctx_types[kind], name=name)
            if kind == "run":
                ctx.name = f"{self.pipeline}.{name}"
                ctx.properties["pipeline_name"].string_value = self.pipeline
                ctx.properties["run_id"].string_value = name
            elif kind == "component_run":  # name: "<run id>/<component id>" here
                run_id, component = name.split("/")
                ctx.name = f"{self.pipeline}.{run_id}.{component}"
                ctx.properties["pipeline_name"].string_value = self.pipeline
                ctx.properties["run_id"].string_value = run_id
                ctx.properties["component_id"].string_value = component
            existing = self.store.get_context_by_type_and_name(kind, ctx.name)
            if existing is not None:  # a database another FakeHome wrote the context into
                self._contexts[key] = existing
                return existing
            [cid] = self.store.put_contexts([ctx])
            if kind == "pipeline_run":  # as TFX links them: a run is a child of its pipeline
                self.store.put_parent_contexts(
                    [pb.ParentContext(child_id=cid, parent_id=self.pipeline_ctx.id)]
                )
            self._contexts[key] = self.store.get_contexts_by_id([cid])[0]
        return self._contexts[key]

    def _artifact_type(self, name: str) -> int:
        return self.store.put_artifact_type(pb.ArtifactType(name=name))

    def execute(
        self,
        run: str,
        node: str,
        inputs: dict[str, list[pb.Artifact]] | None = None,
        outputs: dict[str, tuple[str, dict]] | None = None,
        reuse: dict[str, list[pb.Artifact]] | None = None,
        state: int = COMPLETE,
        size: int = 1000,
        exec_properties: dict[str, str] | None = None,
    ) -> tuple[pb.Execution, dict[str, pb.Artifact]]:
        """One execution of `node` in `run`; outputs: key -> (artifact type, custom properties).

        New outputs get a folder with a `size`-byte file; `reuse` links earlier outputs (a cache hit).
        `exec_properties` are kept as TFX keeps a component's (string custom properties).
        """
        type_id = self.store.put_execution_type(pb.ExecutionType(name=f"tfx.components.{node}"))
        execution = pb.Execution(type_id=type_id, last_known_state=state)
        for name, value in (exec_properties or {}).items():
            execution.custom_properties[name].string_value = value
        [eid] = self.store.put_executions([execution])
        execution = self.store.get_executions_by_id([eid])[0]
        pairs, made = [], {}
        for key, arts in (inputs or {}).items():
            for a in arts:
                pairs.append((a, _event(pb.Event.INPUT, key)))
        n_inputs = len(pairs)
        for key, (type_name, props) in (outputs or {}).items():
            uri = os.path.join(self.root, node, key, str(eid))
            os.makedirs(uri, exist_ok=True)
            with open(os.path.join(uri, "data"), "wb") as f:
                f.write(b"x" * size)
            a = pb.Artifact(type_id=self._artifact_type(type_name), uri=uri, state=pb.Artifact.LIVE)
            for name, value in props.items():
                if isinstance(value, int):
                    a.custom_properties[name].int_value = value
                else:
                    a.custom_properties[name].string_value = value
            pairs.append((a, _event(pb.Event.OUTPUT, key)))
        new = [False] * n_inputs + [True] * (len(pairs) - n_inputs)
        for key, arts in (reuse or {}).items():
            for a in arts:
                pairs.append((a, _event(pb.Event.OUTPUT, key)))
                new.append(False)
        os.makedirs(os.path.join(self.root, node, ".system", "executor_execution", str(eid)), exist_ok=True)
        contexts = [
            self.pipeline_ctx,
            self._context("run" if self.airflow else "pipeline_run", run),
            self._context("component_run", f"{run}/{node}")
            if self.airflow
            else self._context("node", f"{self.pipeline}.{node}"),
        ]
        _, artifact_ids, _ = self.store.put_execution(
            execution, pairs, contexts, reuse_context_if_already_exist=True
        )
        by_id = {a.id: a for a in self.store.get_artifacts_by_id(artifact_ids)}
        for (_, ev), aid, is_new in zip(pairs, artifact_ids, new, strict=True):
            if is_new:
                made[ev.path.steps[0].key] = by_id[aid]
        return self.store.get_executions_by_id([eid])[0], made

    def artifact(self, artifact_id: int) -> pb.Artifact:
        return self.store.get_artifacts_by_id([artifact_id])[0]


def cached_outputs(home: FakeHome, artifact: pb.Artifact) -> dict | None:
    """What TFX's cache would hand a re-run of the execution that made `artifact` (the outputs
    of its executions in the cache context, as LocalDagRunner's launcher looks them up)."""
    import types

    from tfx.orchestration.portable import cache_utils

    [maker] = {
        ev.execution_id for ev in home.store.get_events_by_artifact_ids([artifact.id]) if ev.type == ev.OUTPUT
    }
    type_id = home.store.put_context_type(pb.ContextType(name="execution_cache"))
    ctx = home.store.get_context_by_type_and_name("execution_cache", f"cache-{maker}")
    if ctx is None:
        [ctx_id] = home.store.put_contexts([pb.Context(type_id=type_id, name=f"cache-{maker}")])
        home.store.put_attributions_and_associations(
            [], [pb.Association(context_id=ctx_id, execution_id=maker)]
        )
        [ctx] = home.store.get_contexts_by_id([ctx_id])
    return cache_utils.get_cached_outputs(types.SimpleNamespace(store=home.store), ctx)


def model_files(model: pb.Artifact, content: bytes, loadable: bool = False) -> None:
    """A Model artifact's Format-Serving folder holding a stand-in SavedModel. loadable: one whose
    files pass serving.model_files.check_model_files (a SavedModel proto with the predict_images
    signature and `content` in its meta graph, and a variables bundle holding `content`), for a
    command run in another process; else two files holding `content`."""
    path = os.path.join(model.uri, "Format-Serving")
    os.makedirs(os.path.join(path, "variables"), exist_ok=True)
    if loadable:
        loadable_files(path, content)
        return
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(content)
    with open(os.path.join(path, "variables", "variables.index"), "wb") as f:
        f.write(b"index " + content)


def loadable_files(path: str, content: bytes) -> None:
    """Files at `path` that check_model_files takes for a whole model, without building one."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    meta = saved.meta_graphs.add()
    meta.meta_info_def.meta_graph_version = content.decode("latin-1")
    meta.signature_def["predict_images"].method_name = "tensorflow/serving/predict"
    os.makedirs(os.path.join(path, "variables"), exist_ok=True)
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(saved.SerializeToString())
    tf.raw_ops.SaveV2(
        prefix=os.path.join(path, "variables", "variables"),
        tensor_names=["content"],
        shape_and_slices=[""],
        tensors=[tf.constant(content)],
    )


def _event(kind: int, key: str) -> pb.Event:
    ev = pb.Event(type=kind)
    ev.path.steps.add().key = key
    ev.path.steps.add().index = 0
    return ev


def training_history(
    home: FakeHome, runs: int = 3, blessed_runs: tuple[int, ...] = (1,), prefix: str = ""
) -> list[dict]:
    """`runs` runs: ExampleGen computed once then cached, a new model per run, blessed and pushed
    only in `blessed_runs` (1-based). Returns each run's {id, examples, model, blessing, pushed}.
    prefix: before each run id (run ids are unique in a database several homes share)."""
    out = []
    examples = None
    for i in range(1, runs + 1):
        run = f"{prefix}2026-01-0{i}T00:00:00-run{i}"
        if examples is None:
            _, made = home.execute(run, "ImportExampleGen", outputs={"examples": ("Examples", {})})
            examples = made["examples"]
        else:
            home.execute(run, "ImportExampleGen", reuse={"examples": [examples]}, state=CACHED)
        _, made = home.execute(
            run, "Trainer", inputs={"examples": [examples]}, outputs={"model": ("Model", {})}, size=5000
        )
        model = made["model"]
        blessed = int(i in blessed_runs)
        _, made = home.execute(
            run,
            "Evaluator",
            inputs={"model": [model]},
            outputs={"blessing": ("ModelBlessing", {"blessed": blessed, "current_model_id": model.id})},
        )
        blessing = made["blessing"]
        props = {"pushed": blessed}
        if blessed:
            props["pushed_destination"] = f"/serving/m/{1000 + i}"
        _, made = home.execute(
            run,
            "Pusher",
            inputs={"model": [model], "model_blessing": [blessing]},
            outputs={"pushed_model": ("PushedModel", props)},
            size=5000 if blessed else 0,
        )
        out.append(
            {
                "id": run,
                "examples": examples,
                "model": model,
                "blessing": blessing,
                "pushed": made["pushed_model"],
            }
        )
    return out
