"""ML Metadata on SQLite (default) or PostgreSQL: the `metadata` setting, connection configs, passwords.

The PostgreSQL tests use a real throwaway server (tests/postgres.py) that asks
TCP clients for a password, so PGPASSWORD and password files are exercised
against libpq itself. No password may appear in a config, a saved config, a
connection config (TFX logs it), or an error message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from ml_metadata.proto import metadata_store_pb2

from imgpipe.orchestration import metadata
from pipeline.config import ConfigError, PipelineConfig
from pipeline.metadata_url import PostgresTarget, parse_metadata_url
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "Pa55-w0rd-never-shown"


# ------------------------------------------------------------------ the URL setting
def test_url_parts_and_defaults():
    assert parse_metadata_url("postgresql://ml@db.internal:6543/mlmd") == PostgresTarget(
        user="ml", host="db.internal", port=6543, dbname="mlmd"
    )
    target = parse_metadata_url("postgres://ml@10.1.2.3/mlmd?sslmode=verify-full&sslrootcert=/etc/ca.pem")
    assert (target.port, target.host) == (5432, "10.1.2.3")
    assert target.ssl == (("sslmode", "verify-full"), ("sslrootcert", "/etc/ca.pem"))
    assert target.url == "postgresql://ml@10.1.2.3:5432/mlmd?sslmode=verify-full&sslrootcert=/etc/ca.pem"
    assert parse_metadata_url("postgresql://ml@[::1]:5433/m").host == "[::1]"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mysql://ml@h/db", "scheme 'mysql'"),
        ("db.internal/mlmd", "scheme 'none'"),
        ("postgresql://h:5432/db", "needs a user"),
        ("postgresql://ml@:5432/db", "needs a host"),
        ("postgresql://ml@h:5432/", "database name"),
        ("postgresql://ml@h:5432/a/b", "database name"),
        ("postgresql://ml@h:port/db", "port must be a number"),
        ("postgresql://ml@h:99999/db", "port must be a number"),
        ("postgresql://ml@h/db?sslmode=maybe", "sslmode 'maybe'"),
        ("postgresql://ml@h/db?application_name=x", "unknown URL option 'application_name'"),
        ("postgresql://m;l@h/db", "user may hold only"),
    ],
)
def test_bad_urls_are_named(url, match):
    with pytest.raises(ValueError, match=match):
        parse_metadata_url(url)
    with pytest.raises(ConfigError, match="^metadata: "):
        PipelineConfig(data_dir="d").replace(metadata=url)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://ml:{SECRET}@h:5432/db",
        f"postgresql://ml:{SECRET}@h:notaport/db",
        f"postgresql://ml:{SECRET}@/db",
    ],
)
def test_a_password_in_the_url_is_refused_without_echoing_it(url, tmp_path):
    with pytest.raises(ConfigError) as e:
        PipelineConfig.from_dict({"metadata": url})
    assert "metadata" in str(e.value) and SECRET not in str(e.value)
    # The same through the CLI, before anything runs: exit 2, the password on neither stream.
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"metadata: {url}\n")
    done = subprocess.run(
        [sys.executable, "-m", "imgpipe", "run", "--config", str(cfg), "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "metadata" in done.stderr
    assert SECRET not in done.stderr + done.stdout


def test_password_file_needs_a_postgres_store():
    with pytest.raises(ConfigError, match="metadata_password_file: applies to a postgresql"):
        PipelineConfig.from_dict({"metadata_password_file": "/x/pgpass"})


def test_saved_config_keeps_the_url_and_file_path(tmp_path):
    url = "postgresql://ml@db:5432/mlmd"
    cfg = PipelineConfig(data_dir="d", metadata=url, metadata_password_file="secrets/pgpass").resolved()
    assert cfg.metadata_password_file == os.path.abspath("secrets/pgpass")
    cfg.save(str(tmp_path / "config.yaml"))
    again = PipelineConfig.from_yaml(str(tmp_path / "config.yaml"))
    assert again.metadata == url and again.metadata_location == url
    assert again.metadata_password_file == cfg.metadata_password_file


# ------------------------------------------------------------------ connection configs
def test_sqlite_is_the_default(tmp_path):
    cfg = PipelineConfig(home=str(tmp_path / "home"))
    conn = metadata.connection_config(cfg)
    assert conn.WhichOneof("config") == "sqlite"
    assert conn.sqlite.filename_uri == cfg.metadata_path == cfg.metadata_location
    assert conn.sqlite.connection_mode == metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    ro = metadata.connection_config(cfg, readonly=True)
    assert ro.sqlite.connection_mode == metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    with pytest.raises(metadata.MetadataUnavailable, match="no ML Metadata database at"):
        metadata.connect(cfg, readonly=True)


def test_postgres_config_has_no_password_even_with_pgpassword_set(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", SECRET)
    cfg = PipelineConfig(metadata="postgresql://ml@db.internal:6543/mlmd?sslmode=require")
    conn = metadata.connection_config(cfg)
    pg = conn.postgresql
    assert (pg.host, pg.port, pg.user, pg.dbname) == ("db.internal", "6543", "ml", "mlmd")
    assert pg.ssloption.sslmode == "require"
    assert not pg.password and not pg.passfile
    assert SECRET not in str(conn)


def _passfile(tmp_path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / "pgpass"
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_password_file_checks(tmp_path):
    url = "postgresql://ml@db:5432/mlmd"

    def conn(path):
        return metadata.connection_config(PipelineConfig(metadata=url, metadata_password_file=path))

    good = _passfile(tmp_path, f"# comment\nother:5432:mlmd:ml:x\ndb:*:mlmd:ml:{SECRET}\n")
    assert conn(good).postgresql.passfile == good
    assert not conn(good).postgresql.password
    with pytest.raises(ConfigError, match="does not exist"):
        conn(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="readable by others .*chmod 600") as e:
        conn(_passfile(tmp_path, f"*:*:*:*:{SECRET}\n", mode=0o644))
    assert SECRET not in str(e.value)
    with pytest.raises(ConfigError, match="no line for db:5432:mlmd:ml") as e:
        conn(_passfile(tmp_path, f"db:5432:mlmd:someone_else:{SECRET}\n"))
    assert SECRET not in str(e.value)
    # libpq's escapes: a backslash-escaped ':' belongs to the field.
    from pipeline import metadata_url

    assert metadata_url._passfile_fields(r"h\:x:5432:db:u:p:w") == ["h:x", "5432", "db", "u", "p:w"]


# ------------------------------------------------------------------ a real server
def test_pgpassword_reaches_the_server(postgres_server, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", postgres_server.password)
    cfg = PipelineConfig(metadata=postgres_server.url("mlmd_unit_env"))
    store = metadata.connect(cfg)
    [ctx_type] = [metadata_store_pb2.ContextType(name="probe")]
    type_id = store.put_context_type(ctx_type)
    assert store.get_context_type("probe").id == type_id
    assert "mlmd_unit_env" in postgres_server.databases()  # ML Metadata created the database


def test_password_file_reaches_the_server(postgres_server, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))  # not ~/.pgpass either
    s = postgres_server
    path = _passfile(tmp_path, f"{s.host}:{s.port}:*:{s.user}:{s.password}\n")
    cfg = PipelineConfig(metadata=s.url("mlmd_unit_file"), metadata_password_file=path)
    # Reading creates no database: a name the server does not have is said to be missing.
    with pytest.raises(metadata.MetadataUnavailable, match="no database of that name"):
        metadata.connect(cfg, readonly=True)
    assert "mlmd_unit_file" not in s.databases()
    caplog.clear()
    with metadata.open_store(cfg, readonly=False) as store:  # a run's first opening creates it
        assert store.get_artifacts() == []
    assert "mlmd_unit_file" in s.databases()
    # ... and says so: on a shared server a mistyped name makes a database of its own.
    [made] = [r.getMessage() for r in caplog.records if "ML Metadata made it" in r.getMessage()]
    assert made.startswith(f"metadata: database 'mlmd_unit_file' was not on {s.host}:{s.port}"), made
    assert "dropdb mlmd_unit_file" in made
    caplog.clear()
    with metadata.open_store(cfg, readonly=False):  # there now: nothing said
        pass
    assert not [r for r in caplog.records if "ML Metadata made it" in r.getMessage()]
    # A first try refused for another reason (the server restarting) reaches a database in use
    # on the second: it is not called new, nor is its drop advised.
    from ml_metadata.metadata_store import metadata_store

    with metadata.open_store(cfg, readonly=False) as store:
        store.put_context_type(metadata_store_pb2.ContextType(name="in_use"))
    real, tries = metadata_store.MetadataStore, []

    def restarting(config, *args, **kwargs):
        tries.append(config)
        if len(tries) == 1:
            raise RuntimeError("the database system is starting up")
        return real(config, *args, **kwargs)

    monkeypatch.setattr(metadata_store, "MetadataStore", restarting)
    caplog.clear()
    with metadata.open_store(cfg, readonly=False):
        pass
    assert len(tries) == 2 and not [r for r in caplog.records if "ML Metadata made it" in r.getMessage()]
    monkeypatch.setattr(metadata_store, "MetadataStore", real)
    # A line for the database alone (the documented HOST:PORT:DB:USER:PASSWORD) reaches it, for
    # reading and writing, as it does for TFX's own connection.
    only = _passfile(tmp_path, f"{s.host}:{s.port}:mlmd_unit_file:{s.user}:{s.password}\n")
    cfg = PipelineConfig(metadata=s.url("mlmd_unit_file"), metadata_password_file=only)
    for readonly in (True, False):
        with metadata.open_store(cfg, readonly=readonly) as store:
            assert store.get_artifacts() == []
    from ml_metadata.metadata_store import metadata_store

    direct = metadata.connection_config(cfg, create_database=False)
    assert metadata_store.MetadataStore(direct).get_artifacts() == []
    # A new database with that file: ML Metadata creates it through `postgres`, for which the
    # file has no line: said so.
    new = PipelineConfig(metadata=s.url("mlmd_unit_new"), metadata_password_file=only)
    with pytest.raises(ConfigError, match="no line for"):
        metadata.connect(new)
    line = f"{s.host}:{s.port}:mlmd_unit_new:{s.user}:{s.password}\n"
    new = PipelineConfig(metadata=s.url("mlmd_unit_new"), metadata_password_file=_passfile(tmp_path, line))
    with pytest.raises(
        metadata.MetadataUnavailable, match="created through the server's `postgres` database"
    ):
        metadata.connect(new)


def test_wrong_or_missing_password_is_a_clear_error_without_it(postgres_server, monkeypatch):
    cfg = PipelineConfig(metadata=postgres_server.url("mlmd_unit_denied"))
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")
    monkeypatch.setenv("PGPASSWORD", SECRET)  # wrong
    with pytest.raises(metadata.MetadataUnavailable) as e:
        metadata.connect(cfg)
    message = str(e.value)
    assert message.startswith(f"metadata: cannot connect to ML Metadata at {cfg.metadata_location}")
    assert "PGPASSWORD" in message and SECRET not in message
    monkeypatch.delenv("PGPASSWORD")
    with pytest.raises(metadata.MetadataUnavailable):
        metadata.connect(cfg)
    assert "mlmd_unit_denied" not in postgres_server.databases()


# ------------------------------------------------------------------ reading one run back
def test_a_run_is_read_back_by_its_id_not_as_the_newest(tmp_path):
    """Two overlapping runs of one pipeline: the first to finish must summarise itself, not the newer one."""
    cfg = PipelineConfig(home=str(tmp_path))
    store = metadata.connect(cfg)
    pipeline_type = store.put_context_type(metadata_store_pb2.ContextType(name="pipeline"))
    run_type = store.put_context_type(metadata_store_pb2.ContextType(name="pipeline_run"))
    [pipeline] = store.put_contexts([metadata_store_pb2.Context(type_id=pipeline_type, name="imgpipe")])
    older, newer = store.put_contexts(
        [metadata_store_pb2.Context(type_id=run_type, name=n) for n in ("run-1", "run-2")]
    )
    store.put_parent_contexts(
        [metadata_store_pb2.ParentContext(child_id=c, parent_id=pipeline) for c in (older, newer)]
    )
    with metadata.open_store(cfg) as reader:  # read-only, as the summary opens it
        assert metadata.latest_run(reader, "imgpipe").name == "run-2"
        assert metadata.run_by_id(reader, "imgpipe", "run-1").name == "run-1"
        with pytest.raises(LookupError, match="run 'run-9' of pipeline 'imgpipe'"):
            metadata.run_by_id(reader, "imgpipe", "run-9")


def test_an_emptied_store_beside_earlier_artifacts_is_refused(tmp_path):
    """metadata.sqlite truncated or deleted while HOME/pipelines held earlier runs' artifacts: the
    next run found no blessed model (no comparison with the served one), pushed whatever passed
    the floor, and numbered its executions from 1 into the old folders. Now refused, naming both."""
    import ml_metadata as mlmd

    from imgpipe.orchestration.preflight import check_store_knows_the_home

    config = PipelineConfig(data_dir=str(tmp_path / "data"), home=str(tmp_path / "home")).resolved()
    os.makedirs(config.home)
    check_store_knows_the_home(config)  # a fresh home: nothing to compare
    os.makedirs(os.path.join(config.pipeline_root, "Trainer", "model", "not-an-execution"))
    check_store_knows_the_home(config)  # no execution folder yet
    earlier = os.path.join(config.pipeline_root, "Trainer", "model", "7")
    os.makedirs(earlier)
    metadata.connect(config, readonly=False)  # an empty store, as a truncated file opens
    with pytest.raises(ConfigError) as e:
        check_store_knows_the_home(config)
    assert str(e.value).startswith(
        f"metadata: {config.metadata_location} holds no execution of pipeline 'imgpipe', but "
        f"{config.pipeline_root} holds earlier executions' artifacts (e.g. {earlier}): the store was emptied"
    )
    # A store that knows the pipeline's executions is the home's own.
    with metadata.open_store(config, readonly=False) as store:
        context_type = metadata_store_pb2.ContextType(name="pipeline")
        context = metadata_store_pb2.Context(type_id=store.put_context_type(context_type), name="imgpipe")
        [context_id] = store.put_contexts([context])
        execution_type = store.put_execution_type(metadata_store_pb2.ExecutionType(name="Trainer"))
        [execution_id] = store.put_executions([metadata_store_pb2.Execution(type_id=execution_type)])
        store.put_attributions_and_associations(
            [], [metadata_store_pb2.Association(context_id=context_id, execution_id=execution_id)]
        )
        assert store.get_executions_by_context(context_id, list_options=mlmd.ListOptions(limit=1))
    check_store_knows_the_home(config)


def test_a_moved_home_is_refused_naming_where_it_was(tmp_path):
    """A home moved (mv) kept ML Metadata's absolute paths: the baseline the Resolver picked was a
    folder gone, and every later run failed at the DataGate blaming the model's vocabulary. Now
    refused before the run, naming the old place; a symlink there makes it whole again, and a
    copy (the original still there) is logged."""

    from imgpipe.orchestration.preflight import check_home_not_moved

    first = PipelineConfig(home=str(tmp_path / "first")).resolved()
    model = os.path.join(first.pipeline_root, "Trainer", "model", "7")
    os.makedirs(model)
    pb = metadata_store_pb2
    with metadata.open_store(first, readonly=False) as store:
        [context_id] = store.put_contexts(
            [pb.Context(type_id=store.put_context_type(pb.ContextType(name="pipeline")), name="imgpipe")]
        )
        model_type = store.put_artifact_type(pb.ArtifactType(name="Model"))
        [artifact_id] = store.put_artifacts(
            [pb.Artifact(type_id=model_type, uri=model, state=pb.Artifact.LIVE)]
        )
        store.put_attributions_and_associations(
            [pb.Attribution(context_id=context_id, artifact_id=artifact_id)], []
        )
    check_home_not_moved(first)  # its own artifacts
    moved = PipelineConfig(home=str(tmp_path / "moved")).resolved()
    os.rename(first.home, moved.home)
    with pytest.raises(ConfigError) as e:
        check_home_not_moved(moved)
    message = str(e.value)
    assert message.startswith(
        f"home: its ML Metadata ({moved.metadata_path}) records artifacts of this pipeline under {first.home}"
    )
    assert "the home was moved or renamed" in message and f"Move the home back to {first.home}" in message
    os.symlink(moved.home, first.home)  # the old path leads to the home again
    check_home_not_moved(moved)
    # A copy of the home, store and all: runs there would read the original's models.
    os.remove(first.home)
    shutil.copytree(moved.home, first.home)
    with helpers.logged("imgpipe.orchestration.preflight") as seen:
        check_home_not_moved(moved)
    assert any("the home was copied with its store" in m and first.home in m for m in seen), seen
    # The original then deleted the folder (a prune there): the copy is refused, and told not to
    # go "back" over the original (the audit's message said to move it there).
    shutil.rmtree(os.path.join(first.pipeline_root, "Trainer", "model", "7"))
    with pytest.raises(ConfigError) as e:
        check_home_not_moved(moved)
    message = str(e.value)
    assert f"{first.home}, a home that is still there with its own ML Metadata" in message
    assert "is a copy of it" in message and f"Do not move this home to {first.home}" in message
    assert "Move the home back" not in message
    # A shared database is checked by pipeline name instead (check_pipeline_name_is_this_homes).

    # Moved away and a new home made in its place: the old path exists again, but the folders the
    # store records (execution 8's) are not there; execution 7's is the new home's own model.
    shutil.rmtree(first.home)
    os.makedirs(os.path.join(first.pipeline_root, "Trainer", "model", "8"))
    with metadata.open_store(moved, readonly=False) as store:
        [context] = store.get_contexts_by_type("pipeline")
        model_type = store.get_artifact_type("Model")
        other = os.path.join(first.pipeline_root, "Trainer", "model", "9")
        [artifact_id] = store.put_artifacts(
            [pb.Artifact(type_id=model_type.id, uri=other, state=pb.Artifact.LIVE)]
        )
        store.put_attributions_and_associations(
            [pb.Attribution(context_id=context.id, artifact_id=artifact_id)], []
        )
    with pytest.raises(ConfigError, match="their folders are gone: the home was moved or renamed"):
        check_home_not_moved(moved)


def test_a_home_moved_away_with_another_made_in_its_place_is_refused(tmp_path):
    """mv home home2, a new home made at `home` (its executions numbered from 1 again, so its
    folders have the recorded names), then a run in home2: its store's records name folders
    that exist but hold the new home's artifacts. It was taken for a copy (a warning), and the run
    went on with the other home's baseline and cache."""
    import time

    from imgpipe.orchestration.preflight import check_home_not_moved

    pb = metadata_store_pb2

    def home_with_model(config: PipelineConfig) -> None:
        os.makedirs(os.path.join(config.pipeline_root, "Trainer", "model", "1"))
        with metadata.open_store(config, readonly=False) as store:
            [context_id] = store.put_contexts(
                [pb.Context(type_id=store.put_context_type(pb.ContextType(name="pipeline")), name="imgpipe")]
            )
            model_type = store.put_artifact_type(pb.ArtifactType(name="Model"))
            uri = os.path.join(config.pipeline_root, "Trainer", "model", "1")
            [artifact_id] = store.put_artifacts(
                [pb.Artifact(type_id=model_type, uri=uri, state=pb.Artifact.LIVE)]
            )
            store.put_attributions_and_associations(
                [pb.Attribution(context_id=context_id, artifact_id=artifact_id)], []
            )

    first = PipelineConfig(home=str(tmp_path / "home")).resolved()
    home_with_model(first)
    moved = first.replace(home=str(tmp_path / "home2"))
    os.rename(first.home, moved.home)
    time.sleep(0.01)  # the new home's artifact is made later
    home_with_model(first)
    with pytest.raises(
        ConfigError, match="the home there now is another one .*moved away and another made in its place"
    ):
        check_home_not_moved(moved)
    check_home_not_moved(first)  # the new home is its own


def test_a_serving_dir_another_home_pushed_to_is_refused_until_adopted(tmp_path):
    """A second home with the default names pushed its classes over the first home's served model
    without a word (its first run had no baseline). Now a run refuses a model base path that serves
    versions no run of its home pushed, naming the served version and its classes; a home that
    pushed there before, or `adopt_serving_dir`, goes on."""
    from imgpipe.orchestration.preflight import check_serving_dir_is_this_homes

    serving = tmp_path / "serving_models"
    config = PipelineConfig(home=str(tmp_path / "second"), serving_dir=str(serving)).resolved()
    os.makedirs(config.home)
    metadata.connect(config, readonly=False)
    check_serving_dir_is_this_homes(config)  # no serving dir yet
    version = serving / "imgpipe" / "3"
    (version / "assets").mkdir(parents=True)
    (version / "assets" / "label_vocab").write_text("5\n6\n7\n")
    check_serving_dir_is_this_homes(config)  # a version folder without its saved_model.pb: not served
    (version / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ConfigError) as e:
        check_serving_dir_is_this_homes(config)
    message = str(e.value)
    assert message.startswith(
        f"serving_dir: {serving / 'imgpipe'} serves version 3 (classes '5', '6', '7'), and it is not this "
        f"home's (no run of this home ({config.home}) ever pushed there; it has no run records at all: if it "
        "is a home moved away, point the config at its new place rather than adopting)"
    )
    assert "--adopt-serving-dir" in message
    check_serving_dir_is_this_homes(config.replace(model_name="other"))  # its own base path
    # Taken over once, by the flag: the home remembers it (a scheduled run repeats no flag).
    third = config.replace(home=str(tmp_path / "third"))
    os.makedirs(third.home)
    metadata.connect(third, readonly=False)
    with pytest.raises(ConfigError):
        check_serving_dir_is_this_homes(third)
    check_serving_dir_is_this_homes(third.replace(adopt_serving_dir=True))
    check_serving_dir_is_this_homes(third)
    # A config saved for later runs (an Airflow DAG, a schedule) with the flag took over whatever
    # was newest at every run: the serving dir is taken over as it is saved, the flag dropped.
    from imgpipe.orchestration.preflight import adopt_once

    fourth = config.replace(home=str(tmp_path / "fourth"), adopt_serving_dir=True)
    saved = adopt_once(fourth, "the DAG")
    assert saved.adopt_serving_dir is False and saved == fourth.replace(adopt_serving_dir=False)
    check_serving_dir_is_this_homes(saved)  # version 3 is its own now
    later = serving / "imgpipe" / "4"  # another home's push after the DAG was written
    later.mkdir()
    (later / "saved_model.pb").write_bytes(b"")
    metadata.connect(saved, readonly=False)
    with pytest.raises(ConfigError, match="serves version 4"):
        check_serving_dir_is_this_homes(saved)
    shutil.rmtree(later)
    with pytest.raises(ConfigError, match="is not a local folder"):
        adopt_once(fourth.replace(home="gs://bucket/home"), "the DAG")
    pb = metadata_store_pb2
    # A version holding one of this home's models, its push's record never written (the run was
    # killed between the version's rename and TFX's record): its own.

    trained = os.path.join(config.pipeline_root, "Trainer", "model", "4")
    shutil.copytree(version, os.path.join(trained, "Format-Serving"))
    with metadata.open_store(config, readonly=False) as store:
        model_type = store.put_artifact_type(pb.ArtifactType(name="Model"))
        [model_id] = store.put_artifacts(
            [pb.Artifact(type_id=model_type, uri=trained, state=pb.Artifact.LIVE)]
        )
    check_serving_dir_is_this_homes(config)
    with metadata.open_store(config, readonly=False) as store:
        [model] = store.get_artifacts_by_id([model_id])
        model.state = pb.Artifact.DELETED
        store.put_artifacts([model])
    with pytest.raises(ConfigError):
        check_serving_dir_is_this_homes(config)

    # A push of this home's to that base path, an older version: the newest is still another's.
    def pushed(folder) -> None:
        with metadata.open_store(config, readonly=False) as store:
            pushed_type = store.put_artifact_type(pb.ArtifactType(name="PushedModel"))
            record = pb.Artifact(
                type_id=pushed_type, uri=os.path.join(config.pipeline_root, "Pusher", "pushed_model", "9")
            )
            record.custom_properties["pushed"].int_value = 1
            record.custom_properties["pushed_destination"].string_value = str(folder)
            store.put_artifacts([record])

    pushed(serving / "imgpipe" / "2")
    with pytest.raises(ConfigError, match="this home pushed there before, but not this version"):
        check_serving_dir_is_this_homes(config)
    pushed(version)  # the newest is its own push
    check_serving_dir_is_this_homes(config)
    # A version put there since, by hand or by another home (even one this home's adoption saw
    # before): refused again, in this home and in the one that took version 3 over.
    later = serving / "imgpipe" / "5"
    shutil.copytree(version, later)
    (later / "assets" / "label_vocab").write_text("cat\ndog\n")
    with pytest.raises(ConfigError, match="serves version 5 \\(classes 'cat', 'dog'\\)"):
        check_serving_dir_is_this_homes(config)
    with pytest.raises(ConfigError, match="serves version 5"):
        check_serving_dir_is_this_homes(third)


def test_a_home_pushing_to_a_second_place_is_warned_about(tmp_path):
    """An audit's home pushed data A to one serving dir, then B, then A to a second: the first's
    served model stopped being the gate's baseline and its blessing was taken back. A run to
    another place while the home's newest push is still served where it went is warned about."""
    from imgpipe.orchestration import runs
    from imgpipe.orchestration.preflight import check_home_serves_from_one_place
    from imgpipe.orchestration.summary import RunSummary

    config = PipelineConfig(home=str(tmp_path / "home"), serving_dir=str(tmp_path / "first"), model_name="m")
    config = config.resolved()
    os.makedirs(config.home)
    metadata.connect(config, readonly=False)
    pushed = os.path.join(config.model_serving_dir, "100")
    os.makedirs(pushed)
    open(os.path.join(pushed, "saved_model.pb"), "wb").close()
    runs.write_record(config, RunSummary("r1", True, pushed, 0.9, 1, {}))
    second = config.replace(serving_dir=str(tmp_path / "second"))
    with helpers.logged("imgpipe.orchestration.preflight") as said:
        check_home_serves_from_one_place(config)  # where its newest push went
        assert said == []
        check_home_serves_from_one_place(second)
    [warning] = said
    assert warning.startswith(
        f"serving_dir: this home's newest push went to {config.model_serving_dir} (version 100, still served "
        f"there), and this run pushes to {second.model_serving_dir}"
    )
    assert "Give each place its own --home" in warning
    # A version put there since (by hand, another home): nothing of this home's is served there.
    later = os.path.join(config.model_serving_dir, "200")
    os.makedirs(later)
    open(os.path.join(later, "saved_model.pb"), "wb").close()
    with helpers.logged("imgpipe.orchestration.preflight") as said:
        check_home_serves_from_one_place(second)
    assert said == []


def test_a_served_model_recorded_in_another_store_or_pipeline_is_refused(tmp_path):
    """An audit moved a home from SQLite to PostgreSQL (a new pipeline name, as the store check
    advised) and back: the first switch pushed over the served model as "no blessed model yet",
    the second compared with an older model, not the one served, without a word. A run whose
    served version was pushed by a run recorded elsewhere is refused (warned with
    bless_without_comparison); a forgotten --metadata is named as that, before any SQLite store
    is made."""
    from imgpipe.orchestration import runs
    from imgpipe.orchestration.preflight import check_records
    from imgpipe.orchestration.summary import RunSummary

    config = PipelineConfig(
        home=str(tmp_path / "home"), serving_dir=str(tmp_path / "serving"), model_name="m"
    )
    config = config.resolved()
    os.makedirs(config.home)

    def push(cfg, run_id, version):
        folder = os.path.join(cfg.model_serving_dir, str(version))
        os.makedirs(folder)
        open(os.path.join(folder, "saved_model.pb"), "wb").close()
        runs.write_record(cfg, RunSummary(run_id, True, folder, 0.9, 1, {}))

    push(config, "r1", 100)
    check_records(config)
    url = "postgresql://mlmd@127.0.0.1:5/mlmd"
    pg = config.replace(metadata=url)
    with pytest.raises(ConfigError) as e:
        check_records(pg)
    message = str(e.value)
    assert message.startswith(
        f"serving_dir: version 100 of {config.model_serving_dir}, served now, was pushed by this home's run r1, "
        f"which recorded ML Metadata in {config.metadata_path} as pipeline 'imgpipe', and this run records to {url}"
    )
    assert "Run with no --metadata (the home's own SQLite store) as that run did" in message
    assert "--bless-without-comparison" in message
    with pytest.raises(
        ConfigError,
        match="pipeline 'imgpipe' in .*, and this run is pipeline 'other'.*--pipeline-name imgpipe",
    ):
        check_records(config.replace(pipeline_name="other"))
    with helpers.logged("imgpipe.orchestration.preflight") as said:
        check_records(pg.replace(bless_without_comparison=True))
    assert len(said) == 1 and "gate.bless_without_comparison is set: going on" in said[0]
    # The home now on PostgreSQL: a run without --metadata is told to pass it.
    push(pg, "r2", 200)
    check_records(pg)
    # The same database as another user (a cron service's) or with SSL asked for: the same store.
    check_records(pg.replace(metadata="postgresql://cron@127.0.0.1:5/mlmd?sslmode=require"))
    with pytest.raises(ConfigError, match=f"Run with --metadata {url} as that run did"):
        check_records(config)
    # Nothing served (taken away): a forgotten --metadata is named so, and no SQLite store is made.
    shutil.rmtree(config.model_serving_dir)
    with pytest.raises(ConfigError) as e:
        check_records(config)
    assert str(e.value).startswith(
        f"metadata: this home's runs record ML Metadata to {url} (as pipeline 'imgpipe'"
    )
    assert f"Run with --metadata {url} as those runs did" in str(e.value)
    assert not os.path.exists(config.metadata_path)
    check_records(pg)
    # Moved to SQLite knowingly: a new pipeline name and --bless-without-comparison.
    with pytest.raises(ConfigError, match="give a new --pipeline-name and --bless-without-comparison"):
        check_records(config.replace(bless_without_comparison=True))
    check_records(config.replace(bless_without_comparison=True, pipeline_name="after-the-move"))


def test_a_run_creates_no_database_of_a_new_name_beside_its_homes_own(tmp_path):
    """A mistyped database name in --metadata (`mlmd_typo` for `mlmd`) made a new database, ML
    Metadata's tables in it, on the shared server before the run was refused. A run whose home's
    newest run recorded to another database of the same server creates none (the error says why);
    on another server, after the home's SQLite store, or for the same database, as before."""
    from imgpipe.orchestration import runs
    from imgpipe.orchestration.preflight import database_withheld
    from imgpipe.orchestration.summary import RunSummary

    home = str(tmp_path / "home")
    os.makedirs(home)
    first = PipelineConfig(home=home, metadata="postgresql://mlmd@db.internal:5432/mlmd").resolved()
    assert database_withheld(first) is None  # a fresh home
    runs.write_record(first, RunSummary("r1", True, None, 0.9, 1, {}))
    assert database_withheld(first) is None  # its own database
    assert (
        database_withheld(first.replace(metadata="postgresql://cron@DB.internal:5432/mlmd")) is None
    )  # as another user
    typo = first.replace(metadata="postgresql://mlmd@db.internal:5432/mlmd_typo")
    said = database_withheld(typo)
    assert said.startswith(
        "this home's newest run (r1) recorded to postgresql://mlmd@db.internal:5432/mlmd, another database of "
        "this server, and a run creates no database of a new name there"
    )
    assert "createdb" in said
    assert database_withheld(first.replace(metadata="postgresql://mlmd@db2.internal:5432/mlmd")) is None
    assert database_withheld(PipelineConfig(home=home).resolved()) is None  # SQLite: nothing to create
    sqlite_home = str(tmp_path / "sqlite")
    os.makedirs(sqlite_home)
    runs.write_record(PipelineConfig(home=sqlite_home).resolved(), RunSummary("r1", True, None, 0.9, 1, {}))
    assert database_withheld(typo.replace(home=sqlite_home)) is None  # a move from SQLite


# ------------------------------------------------------------------ TFX's cache, read by id
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_cached_components_outputs_keep_their_keys(backend, postgres_server, tmp_path, monkeypatch):
    """TFX's cache reader paired a cached execution's OUTPUT events with its artifacts by position;
    PostgreSQL returns artifacts grouped by type id, so Transform's transform_graph and
    updated_analyzer_cache (Trainer's model and model_run, ...) came back under each other's keys
    and the next component failed; the CACHED execution then recorded that mapping. Read by id,
    each output keeps its key, and a recorded swapped mapping is no cache hit."""
    import types

    from tfx.orchestration import metadata as tfx_metadata
    from tfx.orchestration.portable import cache_utils

    from imgpipe.orchestration import cache_outputs

    if backend == "sqlite":
        cfg = PipelineConfig(home=str(tmp_path))
    else:
        monkeypatch.setenv("PGPASSWORD", postgres_server.password)
        cfg = PipelineConfig(metadata=postgres_server.url("mlmd_unit_cache_order"))
    store = metadata.connect(cfg)
    pb = metadata_store_pb2
    cache_type = store.put_artifact_type(pb.ArtifactType(name="TransformCache"))  # the lower type id
    graph_type = store.put_artifact_type(pb.ArtifactType(name="TransformGraph"))
    uris = [str(tmp_path / name) for name in ("graph", "cache")]  # TFX's cache checks they exist
    for uri in uris:
        os.makedirs(uri)
    graph, cache = store.put_artifacts(
        [pb.Artifact(type_id=graph_type, uri=uris[0], state=pb.Artifact.LIVE),
         pb.Artifact(type_id=cache_type, uri=uris[1], state=pb.Artifact.LIVE)]
    )  # fmt: skip
    exec_type = store.put_execution_type(pb.ExecutionType(name="Transform"))
    ctx_type = store.put_context_type(pb.ContextType(name="execution_cache"))
    [context_id] = store.put_contexts([pb.Context(type_id=ctx_type, name=f"key-{backend}")])
    [context] = store.get_contexts_by_id([context_id])

    def execution(state, outputs):
        [eid] = store.put_executions([pb.Execution(type_id=exec_type, last_known_state=state)])
        events = []
        for key, artifact in outputs:
            e = pb.Event(artifact_id=artifact, execution_id=eid, type=pb.Event.OUTPUT)
            e.path.steps.add().key = key
            e.path.steps.add().index = 0
            events.append(e)
        store.put_events(events)
        store.put_attributions_and_associations([], [pb.Association(context_id=context.id, execution_id=eid)])
        return eid

    made = execution(pb.Execution.COMPLETE, [("transform_graph", graph), ("updated_analyzer_cache", cache)])
    handle = types.SimpleNamespace(store=store)

    def ids(outputs):
        return None if outputs is None else {k: [a.id for a in v] for k, v in outputs.items()}

    right = {"transform_graph": [graph], "updated_analyzer_cache": [cache]}
    swapped = {"transform_graph": [cache], "updated_analyzer_cache": [graph]}
    # The fault as it was: TFX's own reader, in the order each store returns the artifacts.
    assert ids(cache_utils._get_outputs_of_execution(handle, made)) == (
        right if backend == "sqlite" else swapped
    )
    with cache_outputs.by_artifact_id():
        assert ids(cache_utils._get_outputs_of_execution(handle, made)) == right
        events = store.get_events_by_execution_ids([made])
        assert ids(tfx_metadata.Metadata._get_outputs_of_events(handle, events)) == right  # Airflow's
        # A later execution recorded with the swap is passed over: the cache gives the maker's outputs.
        time.sleep(0.01)  # newer by its creation time, which orders the cache's candidates
        execution(pb.Execution.CACHED, [("transform_graph", cache), ("updated_analyzer_cache", graph)])
        assert ids(cache_utils.get_cached_outputs(handle, context)) == right
    assert cache_utils._get_outputs_of_execution.__module__ == cache_utils.__name__  # restored


def test_a_database_lost_during_a_component_is_said_plainly():
    """The database stopped during the Trainer: the run's error was TFX's "connection pointer is
    NULL", naming neither the store nor what happened to the Trainer's work."""
    from imgpipe.orchestration.local import _failure_message

    cfg = PipelineConfig(metadata="postgresql://ml@db.internal:5432/mlmd")
    lost = RuntimeError(
        "Failed to establish connection to Metadata storage with error: PostgreSQL metadata source "
        "error: connection pointer is NULL"
    )
    head, explained = _failure_message(cfg, "Trainer", lost).split("\n", 1)
    assert head.startswith("Trainer failed: RuntimeError: Failed to establish connection")
    assert explained == (
        "ML Metadata at postgresql://ml@db.internal:5432/mlmd could not be reached while Trainer ran (its "
        "server stopped or restarted, the network failed, or its disk is full): what the component did was "
        "not recorded. The next run marks it FAILED and runs it again"
    )
    assert "\n" not in _failure_message(cfg, "Trainer", ValueError("no images"))


def test_a_home_deleted_during_a_component_is_said_plainly(tmp_path):
    """`rm -rf` of the home during the Trainer: the run blamed ML Metadata's server or disk and
    promised that the next run would repair it, after ~500 lines of TFX's execution info. Now it
    says the home was deleted, and the execution info is cut to its first sentence."""
    import logging

    from imgpipe.cli.output import setup_logging
    from imgpipe.orchestration.local import _failure_message

    cfg = PipelineConfig(home=str(tmp_path / "gone")).resolved()
    lost = RuntimeError(
        "Failed to establish connection to Metadata storage with error: unable to open database file"
    )
    head, explained = _failure_message(cfg, "Trainer", lost).split("\n", 1)
    assert explained.startswith(f"the home {cfg.home} was deleted while Trainer ran, its ML Metadata store")
    assert "could not be reached" not in explained and "marks it FAILED" not in explained
    os.makedirs(cfg.home)  # a home still there: the store itself was lost
    assert "could not be reached while Trainer ran" in _failure_message(cfg, "Trainer", lost)

    with helpers.logged("absl") as seen:
        setup_logging()
        logging.getLogger("absl").warning(
            "execution_info.tmp_dir %s is not found, it is likely that it has been deleted by the executor. "
            "This is the full execution_info: %s",
            "/h/pipelines/imgpipe/Trainer/.system/executor_execution/8/.temp/",
            'execution_properties {\n  key: "x"\n}\n' * 50,
        )
    assert seen == [
        "execution_info.tmp_dir /h/pipelines/imgpipe/Trainer/.system/executor_execution/8/.temp/ is not found "
        "(deleted while the component ran; --verbose shows the execution info)"
    ]


def test_a_pipeline_name_another_home_uses_on_the_database_is_refused(postgres_server, tmp_path, monkeypatch):
    """Two homes with one pipeline name on one database (a team copying a config) took each
    other's models as baselines and outputs from each other's cache, and neither's repairs
    reached the other's files: a run now refuses, naming where the other home's artifacts are."""
    from imgpipe.orchestration.preflight import check_pipeline_name_is_this_homes, claim_pipeline_name

    monkeypatch.setenv("PGPASSWORD", postgres_server.password)
    url = postgres_server.url("mlmd_unit_two_homes")
    ours = PipelineConfig(home=str(tmp_path / "ours"), metadata=url).resolved()
    store = metadata.connect(ours)  # a run's first opening creates the database
    check_pipeline_name_is_this_homes(ours)  # an empty database
    claim_pipeline_name(ours)  # the name claimed for this home, once its checks passed
    assert os.path.isdir(ours.pipeline_root)  # made by the claim: a live claimant's root exists
    claim_pipeline_name(ours)  # its own claim
    # The same home reached through a link (a moved home linked back, as the README advises).
    linked = tmp_path / "linked"
    linked.symlink_to(tmp_path / "ours")
    check_pipeline_name_is_this_homes(ours.replace(home=str(linked)))
    claim_pipeline_name(ours.replace(home=str(linked)))
    # A second home of the name starting before the first recorded any artifact (two cron jobs of
    # one config, the same minute) went on too, and both were refused for good after: the claim,
    # unique in the database, refuses it at once.
    twin = ours.replace(home=str(tmp_path / "twin"))
    for check in (check_pipeline_name_is_this_homes, claim_pipeline_name):
        with pytest.raises(ConfigError) as e:
            check(twin)
        assert (
            f"its name claimed by the home whose pipeline root is {os.path.realpath(ours.pipeline_root)} (its "
            "first run started)" in str(e.value)
        )
        assert "Give this home its own --pipeline-name" in str(e.value)
    # A claim whose home is gone before any artifact (refused, or deleted): taken over.
    gone = ours.replace(home=str(tmp_path / "gone"), pipeline_name="short-lived")
    claim_pipeline_name(gone)
    shutil.rmtree(gone.home)
    taker = twin.replace(pipeline_name="short-lived")
    claim_pipeline_name(taker)
    with pytest.raises(ConfigError, match="its name claimed"):
        claim_pipeline_name(ours.replace(pipeline_name="short-lived"))
    # Another host's claim: its folders cannot be seen from here, so it is never taken over.
    far = ours.replace(home=str(tmp_path / "far"), pipeline_name="far-away")
    claim_pipeline_name(far)
    held = store.get_context_by_type_and_name(metadata.PIPELINE_HOME, "far-away")
    held.properties["host"].string_value = "another-host"
    store.put_contexts([held])
    shutil.rmtree(far.home)
    with pytest.raises(ConfigError, match="its name claimed"):
        claim_pipeline_name(twin.replace(pipeline_name="far-away"))
    pb = metadata_store_pb2
    [context_id] = store.put_contexts(
        [pb.Context(type_id=store.put_context_type(pb.ContextType(name="pipeline")), name=ours.pipeline_name)]
    )
    model_type = store.put_artifact_type(pb.ArtifactType(name="Model"))

    def made(root: str) -> None:
        [artifact_id] = store.put_artifacts([pb.Artifact(type_id=model_type, uri=f"{root}/Trainer/model/7")])
        store.put_attributions_and_associations(
            [pb.Attribution(context_id=context_id, artifact_id=artifact_id)], []
        )

    made(ours.pipeline_root)
    check_pipeline_name_is_this_homes(ours)  # its own artifacts only
    other = str(tmp_path / "theirs" / "pipelines" / ours.pipeline_name)
    made(other)
    with pytest.raises(ConfigError) as e:
        check_pipeline_name_is_this_homes(ours)
    message = str(e.value)
    assert message.startswith(
        f"pipeline_name: pipeline {ours.pipeline_name!r} in {ours.metadata_location} also"
    )
    assert f"artifacts under {other}, not under this home's {ours.pipeline_root}" in message
    assert "Give this home its own --pipeline-name" in message
    # Another pipeline name on the same database is its own.
    check_pipeline_name_is_this_homes(ours.replace(pipeline_name="team-b"))
    # A home's own SQLite store holds nothing of another home's: not looked at.
    check_pipeline_name_is_this_homes(PipelineConfig(home=str(tmp_path / "sqlite")).resolved())


def test_a_failed_components_error_is_stored_on_postgresql(postgres_server, monkeypatch):
    """TFX records a failed execution's error as JSON, whose escapes (line breaks, quotes in a
    traceback) ML Metadata 1.16's PostgreSQL backend writes as broken SQL: the write failed,
    the real error ("got 0 artifacts") was replaced by a syntax error, and the execution stayed
    RUNNING. The message is now written without escapes, and TFX reads it back."""
    from tfx.orchestration.portable.mlmd import execution_lib
    from tfx.proto.orchestration import execution_result_pb2

    from imgpipe.orchestration import execution_results

    monkeypatch.setenv("PGPASSWORD", postgres_server.password)
    store = metadata.connect(PipelineConfig(metadata=postgres_server.url("mlmd_unit_results")))
    type_id = store.put_execution_type(metadata_store_pb2.ExecutionType(name="InfraValidator"))
    message = 'Traceback (most recent call last):\n  File "launcher.py"\nInsufficientInputError: inputs[model_blessing] \\ got 0'
    result = execution_result_pb2.ExecutionResult(code=9, result_message=message)

    def store_result() -> metadata_store_pb2.Execution:
        execution = metadata_store_pb2.Execution(
            type_id=type_id, last_known_state=metadata_store_pb2.Execution.FAILED
        )
        execution_lib.set_execution_result(result, execution)
        [eid] = store.put_executions([execution])
        return store.get_executions_by_id([eid])[0]

    with pytest.raises(Exception, match="syntax error"):  # the fault, as TFX writes it
        store_result()
    with execution_results.storable(shared_store=True):
        stored = store_result()
    back = execution_lib.get_execution_result(stored)  # as TFX reads it
    assert back.code == 9
    assert back.result_message == (
        "Traceback (most recent call last): |   File 'launcher.py' | InsufficientInputError: "
        "inputs[model_blessing] / got 0"
    )
    assert "\\" not in stored.custom_properties["__execution_result__"].string_value
    with execution_results.storable(shared_store=False):  # SQLite stores TFX's own text
        assert execution_lib.set_execution_result.__module__ == execution_lib.__name__


def test_a_damaged_or_unwritable_sqlite_store_is_named_for_what_it_is(tmp_path):
    """A damaged metadata.sqlite was "a subset of tables ... please retry the connection"; an
    immutable one passed every check and failed the first component, blamed on it."""
    cfg = PipelineConfig(home=str(tmp_path / "home"))
    os.makedirs(cfg.home)
    store = metadata.connect(cfg)
    kind = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="Examples"))
    store.put_artifacts([metadata_store_pb2.Artifact(type_id=kind, uri=f"/x/{i}" * 20) for i in range(400)])
    del store
    data = bytearray(open(cfg.metadata_path, "rb").read())
    assert len(data) > 6 * 4096
    data[4096 : 6 * 4096] = bytes((i * 7 + 3) % 256 for i in range(5 * 4096))  # other bytes over 5 pages
    with open(cfg.metadata_path, "wb") as f:
        f.write(data)
    with pytest.raises(metadata.MetadataUnavailable) as caught:
        metadata.connect(cfg)
    assert str(caught.value).startswith(f"metadata: {cfg.metadata_path} is damaged (SQLite: ")
    assert "`sqlite3 FILE .recover | sqlite3 NEW`" in str(caught.value)

    os.remove(cfg.metadata_path)
    metadata.connect(cfg)
    done = subprocess.run(["chattr", "+i", cfg.metadata_path], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this filesystem keeps no immutable flag: {done.stderr.strip()}")
    try:
        with pytest.raises(metadata.MetadataUnavailable) as refused:
            metadata.connect(cfg)
        # Who may write it said too (another user's file read as "a read-only or immutable file").
        assert f"cannot be written by this user (uid {os.geteuid()}; the file's owner is uid " in str(
            refused.value
        )
        assert "or it is immutable" in str(refused.value)
        metadata.connect(cfg, readonly=True)  # reading it is fine
    finally:
        subprocess.run(["chattr", "-i", cfg.metadata_path], check=True)


def test_an_execution_left_running_by_a_failed_run_is_not_said_to_be_a_dead_runs(tmp_path):
    """The database stopped during a run's Trainer: the run failed, said so and wrote its record,
    but could not mark the execution; the next run warned it was "left RUNNING by a run that
    died". A run with a record of its failure is named with it; one without is said to have died."""
    from imgpipe.orchestration import runs
    from imgpipe.orchestration.local import _how_it_ended
    from imgpipe.orchestration.summary import RunSummary

    config = PipelineConfig(home=str(tmp_path / "home")).resolved()
    os.makedirs(config.home)
    error = "Trainer: ML Metadata at postgresql://mlmd@db:5432/mlmd could not be reached while Trainer ran"
    runs.write_record(config, RunSummary("r1", None, None, None, None, {}, failed="Trainer", error=error))
    assert _how_it_ended(config.home, "r1") == f"its run, which failed ({error}) before it could mark it"
    assert _how_it_ended(config.home, "r2") == "a run that died"  # no record
    runs.write_record(config, RunSummary("r3", True, None, 0.9, 1, {}))
    assert _how_it_ended(config.home, "r3") == "a run that died"  # a record without a failure


def test_a_failed_runs_record_gets_the_states_the_next_run_marked(tmp_path):
    """The database stopped during a run's Trainer: its record said `"executions": {}` for good,
    though the next run marked the Trainer FAILED. The next run writes the states it finds into
    such a record; a record that has states keeps them."""
    from imgpipe.orchestration import runs
    from imgpipe.orchestration.local import _abandon_dead_executions
    from imgpipe.orchestration.summary import RunSummary
    from tests.mlmd_fixtures import RUNNING, FakeHome

    fake = FakeHome(str(tmp_path / "home"))
    fake.execute("r1", "ImportExampleGen", outputs={"examples": ("Examples", {})})
    fake.execute("r1", "Trainer", state=RUNNING)
    config = PipelineConfig(home=fake.home).resolved()
    error = "Trainer: ML Metadata could not be reached while Trainer ran"
    runs.write_record(config, RunSummary("r1", None, None, None, None, {}, failed="Trainer", error=error))
    _abandon_dead_executions(config, "r2")
    folder = runs.find_record(config.home, "r1")
    assert runs.read_summary(folder)["executions"] == {"ImportExampleGen": "COMPLETE", "Trainer": "FAILED"}
    runs.update_summary(folder, {"executions": {"Trainer": "kept"}})
    fake.execute("r1", "Evaluator", state=RUNNING)
    _abandon_dead_executions(config, "r3")
    assert runs.read_summary(folder)["executions"] == {"Trainer": "kept"}
