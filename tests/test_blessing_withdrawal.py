"""A blessed model that is not served loses its blessing, on any orchestrator's store.

`metadata.withdraw_unserved_blessings` follows each refused InfraBlessing to the
ModelBlessing its InfraValidator execution read, and finds blessings no Pusher
completed (a failed push, a run that ended before its Pusher). It is checked on the two
layouts a store holds: the one LocalDagRunner writes (`pipeline_run` and `node`
contexts, tests/mlmd_fixtures.py) and the one TFX's Airflow launcher writes,
written here by TFX's own legacy `Metadata` API (`run` and `component_run`
contexts), the code AirflowDagRunner's components register executions with.
The e2e tests check the same function after a real run (tests/e2e/test_pipeline_e2e.py).
"""

from __future__ import annotations

import json
import os

import pytest
from ml_metadata.proto import metadata_store_pb2

from components.prepush import REPORT_FILE
from imgpipe.orchestration import metadata
from tests.mlmd_fixtures import COMPLETE, FakeHome, cached_outputs, model_files

FAILED = metadata_store_pb2.Execution.FAILED

REASON = "server: signature 'predict_images' failed"


def _report(uri: str, blessed: bool, reason: str) -> None:
    os.makedirs(uri, exist_ok=True)
    with open(os.path.join(uri, REPORT_FILE), "w", encoding="utf-8") as f:
        json.dump({"summary": {"blessed": blessed, "validated": True, "reason": reason}}, f)


def _local_run(
    home: FakeHome,
    run: str,
    evaluator_blessed: int,
    prepush_blessed: int | None,
    pusher: int | None = COMPLETE,
):
    """Trainer -> Evaluator -> InfraValidator -> Pusher in `run`, as LocalDagRunner records them.

    prepush_blessed None: the run ended before its InfraValidator; pusher None: before its
    Pusher, else the Pusher's final state."""
    _, made = home.execute(run, "Trainer", outputs={"model": ("Model", {})})
    model = made["model"]
    _, made = home.execute(
        run,
        "Evaluator",
        inputs={"model": [model]},
        outputs={"blessing": ("ModelBlessing", {"blessed": evaluator_blessed, "current_model_id": model.id})},
    )
    blessing = made["blessing"]
    if prepush_blessed is None:
        return blessing, None, model
    _, made = home.execute(
        run,
        "InfraValidator",
        inputs={"model": [model], "model_blessing": [blessing]},
        outputs={"blessing": ("InfraBlessing", {"blessed": prepush_blessed})},
    )
    infra = made["blessing"]
    _report(infra.uri, bool(prepush_blessed), REASON if not prepush_blessed else "validated")
    if pusher is not None:
        _push(home, run, model, blessing, infra, pusher)
    return blessing, infra, model


def _push(home: FakeHome, run: str, model, blessing, infra, state=COMPLETE, reuse=None):
    pushed = int(state == COMPLETE and infra.custom_properties["blessed"].int_value == 1)
    _, made = home.execute(
        run,
        "Pusher",
        inputs={"model": [model], "model_blessing": [blessing], "infra_blessing": [infra]},
        outputs=None if reuse else {"pushed_model": ("PushedModel", {"pushed": pushed})},
        reuse={"pushed_model": [reuse]} if reuse else None,
        state=state,
    )
    return made.get("pushed_model")


def _blessed(store, artifact_id: int) -> int:
    [a] = store.get_artifacts_by_id([artifact_id])
    return a.custom_properties["blessed"].int_value


def test_local_layout_only_the_refused_blessing_is_withdrawn(tmp_path):
    home = FakeHome(str(tmp_path / "home"))
    served, _, _ = _local_run(home, "run-1", evaluator_blessed=1, prepush_blessed=1)
    refused, _, _ = _local_run(home, "run-2", evaluator_blessed=1, prepush_blessed=0)
    # Not blessed by the Evaluator: pre-push skipped it (InfraBlessing 0), nothing to withdraw.
    unblessed, _, _ = _local_run(home, "run-3", evaluator_blessed=0, prepush_blessed=0)

    [(blessing_id, reason)] = metadata.withdraw_unserved_blessings(home.store, home.root)

    assert blessing_id == refused.id
    assert reason == f"pre-push validation failed in run run-2: {REASON}"
    [after] = home.store.get_artifacts_by_id([refused.id])
    assert after.custom_properties["blessed"].int_value == 0
    assert after.custom_properties[metadata.EVALUATOR_BLESSED_KEY].int_value == 1
    assert after.custom_properties[metadata.WITHDRAWN_KEY].string_value == reason
    assert _blessed(home.store, served.id) == 1
    assert _blessed(home.store, unblessed.id) == 0
    assert metadata.EVALUATOR_BLESSED_KEY not in home.artifact(unblessed.id).custom_properties
    # Idempotent: a second pass (the next run's) changes nothing.
    assert metadata.withdraw_unserved_blessings(home.store, home.root) == []
    # The Evaluator's verdict, as the run summary reports it, is kept.
    [evaluator_id] = {
        ev.execution_id for ev in home.store.get_events_by_artifact_ids([refused.id]) if ev.type == ev.OUTPUT
    }
    [evaluator] = home.store.get_executions_by_id([evaluator_id])
    assert metadata.blessing(home.store, evaluator) is True


def test_blessed_models_that_never_reached_the_serving_dir_are_withdrawn(tmp_path):
    """A failed push (a full or read-only serving dir) or a run that ended before its Pusher:
    the model is not served, so it must not be the next runs' baseline."""
    home = FakeHome(str(tmp_path / "home"))
    served, _, _ = _local_run(home, "run-1", evaluator_blessed=1, prepush_blessed=1)
    push_failed, _, _ = _local_run(home, "run-2", evaluator_blessed=1, prepush_blessed=1, pusher=FAILED)
    died_in_prepush, _, _ = _local_run(home, "run-3", evaluator_blessed=1, prepush_blessed=None)
    died_before_push, _, _ = _local_run(home, "run-4", evaluator_blessed=1, prepush_blessed=1, pusher=None)
    # A push that failed once, then completed in a later run (its Evaluator and InfraValidator
    # from cache): the model is served.
    retried, infra, model = _local_run(home, "run-5", evaluator_blessed=1, prepush_blessed=1, pusher=FAILED)
    _push(home, "run-6", model, retried, infra, state=COMPLETE)

    # While a run is between its Evaluator and its Pusher (Airflow, after the InfraValidator):
    # nothing is judged unpushed.
    assert metadata.withdraw_unserved_blessings(home.store, home.root, runs_finished=False) == []
    withdrawn = dict(metadata.withdraw_unserved_blessings(home.store, home.root))

    assert withdrawn == {
        push_failed.id: "not pushed in run run-2: its push failed",
        died_in_prepush.id: "not pushed in run run-3: its run ended before the Pusher",
        died_before_push.id: "not pushed in run run-4: its run ended before the Pusher",
    }
    assert _blessed(home.store, served.id) == 1 and _blessed(home.store, retried.id) == 1
    assert metadata.withdraw_unserved_blessings(home.store, home.root) == []


def test_only_this_homes_blessings_are_judged(tmp_path):
    """A PostgreSQL store shared by homes: another home's run may be between Evaluator and Pusher."""
    mine = FakeHome(str(tmp_path / "home"))
    other_root = os.path.join(str(tmp_path), "other", "pipelines", "imgpipe")
    theirs, _, _ = _local_run(mine, "run-1", evaluator_blessed=1, prepush_blessed=None)
    assert metadata.withdraw_unserved_blessings(mine.store, other_root) == []
    assert _blessed(mine.store, theirs.id) == 1
    # A sibling folder whose name starts like the root is another root.
    assert metadata.withdraw_unserved_blessings(mine.store, mine.root[:-1]) == []
    assert [b for b, _ in metadata.withdraw_unserved_blessings(mine.store, mine.root)] == [theirs.id]


def test_airflow_layout_written_by_tfx_legacy_metadata(tmp_path):
    """TFX's Airflow launcher: `run` context PIPELINE.RUN_ID, `component_run` contexts, no `node`.

    Its cache (the legacy `Metadata.get_cached_outputs`, asked as its driver asks it) ignores
    the outputs' state: a withdrawn blessing and the record of a push whose version was deleted
    from the serving dir must still not be handed to the next run."""
    from tfx.orchestration import data_types
    from tfx.orchestration import metadata as tfx_metadata
    from tfx.types import standard_artifacts

    from components.pusher import IDENTICAL_VERSION_KEY
    from imgpipe.orchestration import recovery

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(tmp_path / "metadata.sqlite")
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    root = tmp_path / "root"
    base = tmp_path / "serving" / "digits"
    push_destination = {"push_destination": json.dumps({"filesystem": {"base_directory": str(base)}})}

    def infos(run_id, component_id):
        pipeline_info = data_types.PipelineInfo(
            pipeline_name="imgpipe", pipeline_root=str(root), run_id=run_id
        )
        component_info = data_types.ComponentInfo(
            component_type=f"tfx.components.{component_id}",
            component_id=component_id,
            pipeline_info=pipeline_info,
        )
        return pipeline_info, component_info

    def execute(m, run_id, component_id, inputs, outputs, exec_properties=None):
        pipeline_info, component_info = infos(run_id, component_id)
        contexts = m.register_pipeline_contexts_if_not_exists(pipeline_info)
        m.register_execution(pipeline_info, component_info, contexts, exec_properties or {}, inputs)
        for key, [artifact] in outputs.items():
            artifact.uri = str(root / component_id / key / run_id)
            os.makedirs(artifact.uri, exist_ok=True)
        m.publish_execution(component_info, outputs, exec_properties or {})

    def cached(m, component_id, inputs, exec_properties=None):
        """What the next run's driver would take from the cache (it registers its execution first)."""
        asked.append(component_id)
        pipeline_info, component_info = infos(f"manual__2026-12-03-{len(asked)}", component_id)
        contexts = m.register_pipeline_contexts_if_not_exists(pipeline_info)
        m.register_execution(pipeline_info, component_info, contexts, exec_properties or {}, inputs)
        return m.get_cached_outputs(inputs, exec_properties or {}, pipeline_info, component_info)

    runs, asked = {}, []
    with tfx_metadata.Metadata(config) as m:
        for run_id, prepush_blessed in (("manual__2026-12-01", 1), ("manual__2026-12-02", 0)):
            model, blessing, infra = (
                standard_artifacts.Model(),
                standard_artifacts.ModelBlessing(),
                standard_artifacts.InfraBlessing(),
            )
            execute(m, run_id, "Trainer", {}, {"model": [model]})
            blessing.set_int_custom_property("blessed", 1)
            blessing.set_int_custom_property("current_model_id", model.id)
            execute(m, run_id, "Evaluator", {"model": [model]}, {"blessing": [blessing]})
            infra.set_int_custom_property("blessed", prepush_blessed)
            execute(
                m,
                run_id,
                "InfraValidator",
                {"model": [model], "model_blessing": [blessing]},
                {"blessing": [infra]},
            )
            _report(infra.uri, bool(prepush_blessed), REASON if not prepush_blessed else "validated")
            pushed = standard_artifacts.PushedModel()
            pushed.set_int_custom_property("pushed", prepush_blessed)
            if prepush_blessed:
                folder = base / "1001"
                folder.mkdir(parents=True)
                (folder / "saved_model.pb").write_bytes(b"model")
                pushed.set_string_custom_property("pushed_destination", str(folder))
                pushed.set_string_custom_property("pushed_version", "1001")
            pusher_inputs = {"model": [model], "model_blessing": [blessing], "infra_blessing": [infra]}
            execute(m, run_id, "Pusher", pusher_inputs, {"pushed_model": [pushed]}, push_destination)
            runs[run_id] = {
                "model": model,
                "blessing": blessing.id,
                "pusher_inputs": pusher_inputs,
                "pushed": pushed.id,
            }
        store = m.store
        kinds = {t.name for t in store.get_context_types()}
        assert {"run", "component_run"} <= kinds and "pipeline_run" not in kinds and "node" not in kinds
        first, second = runs["manual__2026-12-01"], runs["manual__2026-12-02"]
        for run in (first, second):
            assert cached(m, "Evaluator", {"model": [run["model"]]}) is not None
        assert cached(m, "Pusher", first["pusher_inputs"], push_destination) is not None

        [(blessing_id, reason)] = metadata.withdraw_unserved_blessings(store, str(root))

        assert blessing_id == second["blessing"]
        assert reason == f"pre-push validation failed in run manual__2026-12-02: {REASON}"
        assert _blessed(store, second["blessing"]) == 0
        assert _blessed(store, first["blessing"]) == 1
        # The retry judges the refused model again; the blessed one is still taken from the cache.
        assert cached(m, "Evaluator", {"model": [second["model"]]}) is None
        assert cached(m, "Evaluator", {"model": [first["model"]]}) is not None

        # A re-run's Pusher found the model already served as version 1001 (its folder spelled
        # "01001" and "1001" here): a record that names only the version. The launcher keeps
        # push_destination as a typed execution property, where the base path is read from.
        identical = standard_artifacts.PushedModel()
        identical.set_int_custom_property("pushed", 0)
        identical.set_string_custom_property(IDENTICAL_VERSION_KEY, "1001")
        (base / "01001").mkdir()  # half-written: no saved_model.pb, so not what is served
        execute(
            m,
            "manual__2026-12-01b",
            "Pusher",
            first["pusher_inputs"],
            {"pushed_model": [identical]},
            push_destination,
        )
        [pusher] = [
            e for e in store.get_executions() if e.properties["run_id"].string_value == "manual__2026-12-01b"
        ]
        assert "push_destination" in pusher.properties and "push_destination" not in pusher.custom_properties
        assert recovery.forget_missing_pushes(store, str(root), found_by="test") == []
        assert cached(m, "Pusher", first["pusher_inputs"], push_destination) is not None

        # Version 1001 deleted by hand: the next run's Pusher pushes again.
        (base / "1001" / "saved_model.pb").unlink()
        (base / "1001").rmdir()
        gone = recovery.forget_missing_pushes(store, str(root), found_by="Airflow run manual__2026-12-03")
        assert [(g["id"], g["version"]) for g in gone] == [(first["pushed"], "1001"), (identical.id, "1001")]
        assert cached(m, "Pusher", first["pusher_inputs"], push_destination) is None
        assert cached(m, "Evaluator", {"model": [first["model"]]}) is not None


@pytest.mark.parametrize("report", [None, "{not json"])
def test_a_refusal_without_its_report_is_still_withdrawn(tmp_path, report):
    """The InfraBlessing's `blessed` 0 decides; a missing report only loses the reason."""
    home = FakeHome(str(tmp_path / "home"))
    refused, infra, _ = _local_run(home, "run-1", evaluator_blessed=1, prepush_blessed=0)
    path = os.path.join(infra.uri, REPORT_FILE)
    os.remove(path)
    if report is not None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(report)
    [(blessing_id, reason)] = metadata.withdraw_unserved_blessings(home.store, home.root)
    assert blessing_id == refused.id
    assert reason.startswith("pre-push validation failed in run run-1: ")


def test_a_model_served_without_a_push_record_keeps_its_blessing(tmp_path):
    """A run killed after its Pusher renamed the version into the serving dir, before TFX
    recorded the push: the Pusher never finished, but the model is the one being served, so
    it stays the baseline. A model that differs from the served version is still withdrawn."""
    import shutil

    from imgpipe.orchestration import summary
    from pipeline.config import PipelineConfig

    home = FakeHome(str(tmp_path / "home"))
    os.makedirs(tmp_path / "data")
    config = PipelineConfig(
        data_dir=str(tmp_path / "data"), home=home.home, serving_dir=str(tmp_path / "serving")
    )
    first, _, first_model = _local_run(home, "run-1", evaluator_blessed=1, prepush_blessed=1)
    model_files(first_model, b"model one")
    served = os.path.join(config.model_serving_dir, "1700000000")
    shutil.copytree(os.path.join(first_model.uri, "Format-Serving"), served)
    # Killed after the rename: the version is there, the Pusher is left RUNNING then failed.
    killed, _, killed_model = _local_run(home, "run-2", evaluator_blessed=1, prepush_blessed=1, pusher=FAILED)
    model_files(killed_model, b"model two")
    shutil.copytree(
        os.path.join(killed_model.uri, "Format-Serving"), os.path.join(config.model_serving_dir, "1700000001")
    )
    # Failed before the rename: its model is not in the serving dir.
    failed, _, failed_model = _local_run(home, "run-3", evaluator_blessed=1, prepush_blessed=1, pusher=FAILED)
    model_files(failed_model, b"model three")
    # Ended before its Pusher, its model missing (pruned): not shown to be served.
    gone, _, _ = _local_run(home, "run-4", evaluator_blessed=1, prepush_blessed=1, pusher=None)

    withdrawn = dict(summary.withdraw_unserved_blessings(config))

    assert withdrawn == {
        failed.id: "not pushed in run run-3: its push failed",
        gone.id: "not pushed in run run-4: its run ended before the Pusher",
    }
    assert _blessed(home.store, first.id) == 1 and _blessed(home.store, killed.id) == 1
    kept = home.artifact(killed.id).custom_properties
    assert kept[metadata.SERVED_UNRECORDED_KEY].string_value == "1700000001"
    # The run summary reads it: that run's model is served (was "pushed": null).
    [evaluator] = [
        e for e in home.store.get_executions()
        if any(ev.artifact_id == killed.id and ev.type == ev.OUTPUT
               for ev in home.store.get_events_by_execution_ids([e.id]))
    ]  # fmt: skip
    assert metadata.served_unrecorded(home.store, evaluator) == "1700000001"
    [first_evaluator] = [
        e for e in home.store.get_executions()
        if any(ev.artifact_id == first.id and ev.type == ev.OUTPUT
               for ev in home.store.get_events_by_execution_ids([e.id]))
    ]  # fmt: skip
    assert metadata.served_unrecorded(home.store, first_evaluator) is None
    # Judged once: a later push makes it an older version, and it is not withdrawn then.
    os.makedirs(os.path.join(config.model_serving_dir, "1700000002"))
    calls = []
    assert metadata.withdraw_unserved_blessings(home.store, home.root, served_as=calls.append) == []
    assert _blessed(home.store, killed.id) == 1
    # Asked only which blessed model the newest version holds (none of them: nothing withdrawn).
    assert calls == [killed_model.uri, first_model.uri]
    # A served version that differs in one file's bytes is another model.
    other, _, other_model = _local_run(home, "run-5", evaluator_blessed=1, prepush_blessed=1, pusher=FAILED)
    model_files(other_model, b"model two")
    with open(os.path.join(other_model.uri, "Format-Serving", "variables", "variables.index"), "wb") as f:
        f.write(b"index model 2")
    shutil.rmtree(os.path.join(config.model_serving_dir, "1700000002"))
    assert dict(summary.withdraw_unserved_blessings(config)) == {
        other.id: "not pushed in run run-5: its push failed"
    }


@pytest.mark.parametrize("how", ["refused", "push failed"])
def test_a_withdrawn_blessing_is_not_reused_from_the_cache(tmp_path, how):
    """A re-run with the same model (a retry after a failed push or pre-push check) must judge
    it again, not take the withdrawn blessing from TFX's cache and push nothing: a withdrawn
    blessing is ABANDONED once no run is in flight (TFX's cache takes LIVE outputs only)."""
    home = FakeHome(str(tmp_path / "home"))
    if how == "refused":
        blessing, _, _ = _local_run(home, "run-1", evaluator_blessed=1, prepush_blessed=0)
    else:
        blessing, _, _ = _local_run(home, "run-1", evaluator_blessed=1, prepush_blessed=1, pusher=FAILED)
    assert cached_outputs(home, blessing) is not None

    # Withdrawn while a run is in flight (Airflow, after its InfraValidator): its Pusher still
    # reads the blessing as its input, so it stays LIVE for now.
    in_flight = metadata.withdraw_unserved_blessings(home.store, home.root, runs_finished=False)
    if how == "refused":
        assert [b for b, _ in in_flight] == [blessing.id]
        assert home.artifact(blessing.id).state == metadata_store_pb2.Artifact.LIVE
        assert _blessed(home.store, blessing.id) == 0
    else:
        assert in_flight == []

    # The next pass with no run in flight (the end of a local run; the next Airflow run's start).
    withdrawn = metadata.withdraw_unserved_blessings(home.store, home.root)
    assert [b for b, _ in withdrawn] == ([] if how == "refused" else [blessing.id])
    after = home.artifact(blessing.id)
    assert after.state == metadata_store_pb2.Artifact.ABANDONED
    assert after.custom_properties["blessed"].int_value == 0
    assert cached_outputs(home, blessing) is None
    # The verdict and the reason stay readable (run summaries, the report).
    assert after.custom_properties[metadata.EVALUATOR_BLESSED_KEY].int_value == 1
    assert metadata.WITHDRAWN_KEY in after.custom_properties
    assert metadata.withdraw_unserved_blessings(home.store, home.root) == []


def test_blessings_withdrawn_before_the_evaluator_was_marked_are_marked_now(tmp_path):
    """A home whose blessings an earlier imgpipe withdrew (ABANDONED, its Evaluator execution
    not marked `outputs_retired`): TFX's Airflow cache would still hand them back, so the next
    pass marks those executions; once marked, none is written again."""
    home = FakeHome(str(tmp_path / "home"))
    blessing, _, _ = _local_run(home, "run-1", evaluator_blessed=1, prepush_blessed=0)
    metadata.withdraw_unserved_blessings(home.store, home.root)
    [maker] = {
        ev.execution_id for ev in home.store.get_events_by_artifact_ids([blessing.id]) if ev.type == ev.OUTPUT
    }

    def marked() -> str | None:
        [e] = home.store.get_executions_by_id([maker])
        key = metadata.RETIRED_OUTPUTS_KEY
        return e.custom_properties[key].string_value if key in e.custom_properties else None

    assert marked() == f"pre-push validation failed in run run-1: {REASON}"
    [e] = home.store.get_executions_by_id([maker])
    del e.custom_properties[metadata.RETIRED_OUTPUTS_KEY]  # as the earlier imgpipe left it
    home.store.put_executions([e])
    assert marked() is None and home.artifact(blessing.id).state == metadata_store_pb2.Artifact.ABANDONED

    assert metadata.withdraw_unserved_blessings(home.store, home.root) == []
    assert marked() == "blessing withdrawn"
    [before] = home.store.get_executions_by_id([maker])
    metadata.withdraw_unserved_blessings(home.store, home.root)
    [after] = home.store.get_executions_by_id([maker])
    assert after.last_update_time_since_epoch == before.last_update_time_since_epoch


def test_a_newer_model_is_no_baseline_once_an_older_one_is_pushed_after_it(tmp_path):
    """Model A served, then model C (a newer artifact) blessed and pushed, then A blessed again and
    pushed as the newest version (a re-run on earlier data with a looser gate, or a rollback by
    retraining): TFX's strategy takes the blessed model of the highest id, C, as the baseline,
    while A is served. The next run was compared with C, said it was "identical to" C's version,
    and pushed nothing. C's blessing is withdrawn; A's are kept."""
    import shutil

    from imgpipe.orchestration import summary
    from pipeline.config import PipelineConfig

    home = FakeHome(str(tmp_path / "home"))
    os.makedirs(tmp_path / "data")
    config = PipelineConfig(
        data_dir=str(tmp_path / "data"), home=home.home, serving_dir=str(tmp_path / "serving")
    )

    def push_version(model, version):
        shutil.copytree(
            os.path.join(model.uri, "Format-Serving"), os.path.join(config.model_serving_dir, version)
        )

    first_a, _, model_a = _local_run(home, "run-1", evaluator_blessed=1, prepush_blessed=1)
    model_files(model_a, b"model A")
    push_version(model_a, "1700000001")
    blessing_c, _, model_c = _local_run(home, "run-2", evaluator_blessed=1, prepush_blessed=1)
    model_files(model_c, b"model C")
    push_version(model_c, "1700000002")
    assert summary.withdraw_unserved_blessings(config) == []  # C is served: nothing to withdraw

    # Run 3: the Trainer cached (model A again), blessed and pushed as the newest version.
    _, made = home.execute(
        "run-3",
        "Evaluator",
        inputs={"model": [model_a]},
        outputs={"blessing": ("ModelBlessing", {"blessed": 1, "current_model_id": model_a.id})},
    )
    again_a = made["blessing"]
    _, made = home.execute(
        "run-3",
        "InfraValidator",
        inputs={"model": [model_a], "model_blessing": [again_a]},
        outputs={"blessing": ("InfraBlessing", {"blessed": 1})},
    )
    _report(made["blessing"].uri, True, "validated")
    _push(home, "run-3", model_a, again_a, made["blessing"])
    push_version(model_a, "1700000003")
    assert model_c.id > model_a.id

    withdrawn = dict(summary.withdraw_unserved_blessings(config))
    assert withdrawn == {
        blessing_c.id: f"superseded: the serving dir's newest version, 1700000003, holds model {model_a.id} "
        f"(blessed in run run-3), pushed after model {model_c.id}"
    }
    assert _blessed(home.store, blessing_c.id) == 0
    assert _blessed(home.store, first_a.id) == 1 and _blessed(home.store, again_a.id) == 1
    assert summary.withdraw_unserved_blessings(config) == []  # idempotent
    # A version copied in by hand holds no blessed model: nothing is known of it, nothing withdrawn.
    blessing_d, _, model_d = _local_run(home, "run-4", evaluator_blessed=1, prepush_blessed=1)
    model_files(model_d, b"model D")
    push_version(model_d, "1700000004")
    os.makedirs(os.path.join(config.model_serving_dir, "1700000005", "variables"))
    assert summary.withdraw_unserved_blessings(config) == []
    assert _blessed(home.store, blessing_d.id) == 1


def test_the_runs_log_says_a_skipped_comparison_once():
    """Not blessed for want of a comparison: the reason names the skip, and the run's log said it
    a second time ("no comparison with ..."); blessed without one (waived), it is said."""
    import logging

    from imgpipe.orchestration import local

    skipped = "the eval split's 5 examples are fewer than 20 to tell two models apart (one answer moves accuracy by 0.20)"
    refused = {
        "blessed": False,
        "reasons": [
            f"the latest blessed model could not be compared with: {skipped}. The served model stays"
        ],
        "baseline": {"skipped_reason": skipped, "comparison_waived": None},
    }
    waived = {
        "blessed": True,
        "reasons": [],
        "baseline": {"skipped_reason": skipped, "comparison_waived": "gate.bless_without_comparison"},
    }

    def said(gate) -> list[str]:
        """What _log_gate logs, read by a handler of its own (whatever an earlier command in this
        process did to imgpipe's loggers' propagation)."""
        records: list[logging.LogRecord] = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = records.append
        local.log.addHandler(handler)
        try:
            local._log_gate(gate)
        finally:
            local.log.removeHandler(handler)
        return [r.getMessage() for r in records]

    said_refused = said(refused)
    assert sum(skipped in m for m in said_refused) == 1 and said_refused[0].startswith("not blessed: ")
    assert said(waived) == [
        f"no comparison with the latest blessed model: {skipped}",
        "blessed on the floors alone, without that comparison: gate.bless_without_comparison",
    ]
