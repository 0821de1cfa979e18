"""TFX's cache, read by artifact id: a cached component's outputs under their own keys on any store.

When a component is served from TFX's cache, the launcher reads the outputs of an
earlier execution with the same cache key: its OUTPUT events, then their
artifacts and the artifacts' types. TFX 1.16 (`cache_utils._get_outputs_of_execution`,
and the Airflow launcher's `Metadata._get_outputs_of_events`) pairs the events with
the artifacts, and the artifacts with their types, by position, trusting ML Metadata
to return them in the order asked. SQLite does; PostgreSQL returns artifacts grouped
by type id. On PostgreSQL a component with two outputs (Transform: transform_graph
and updated_analyzer_cache; Trainer: model and model_run; Evaluator: evaluation and
blessing) was then cached with its outputs under each other's keys, about one
execution in two: the next component failed ("expected str ... not NoneType",
"expected list length of one but got 0"), and the CACHED execution recorded that
mapping, so every later re-run found it again.

`by_artifact_id()` replaces both readers for a block: events, artifacts and types
are matched by id, and a recorded execution whose event names an artifact under
another key than the execution that made it used (such a recorded mapping) is no
cache hit: TFX takes the next candidate of the cache key (the producing execution's own
outputs, while they exist), or runs the component.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Iterable, Iterator

from ml_metadata.proto import metadata_store_pb2

from components import patching

log = logging.getLogger(__name__)

_OUTPUT = metadata_store_pb2.Event.OUTPUT


def _key(event: metadata_store_pb2.Event) -> str:
    return event.path.steps[0].key


def _index(event: metadata_store_pb2.Event) -> int:
    steps = event.path.steps
    return steps[1].index if len(steps) > 1 and steps[1].HasField("index") else 0


def outputs_of_events(store, events: Iterable[metadata_store_pb2.Event]) -> dict[str, list] | None:
    """{output key: [TFX artifact]} of the OUTPUT events among `events` (one execution's), each
    artifact under its own event's key; None when one is missing or not LIVE (a partial or
    removed output), or when an event names an artifact under another key than the execution
    that produced it (a cached execution recorded by a reader that paired them by position)."""
    from tfx.types import artifact_utils

    # In the events' own order (each key's artifacts by their index): the keys come out in the
    # order the producer recorded them, which the CACHED execution then records in turn.
    outputs = sorted((e for e in events if e.type == _OUTPUT), key=_index)
    ids = sorted({e.artifact_id for e in outputs})
    artifacts = {a.id: a for a in store.get_artifacts_by_id(ids)} if ids else {}
    if len(artifacts) != len(ids):
        return None
    if any(a.state != metadata_store_pb2.Artifact.LIVE for a in artifacts.values()):
        return None
    made_as: dict[int, tuple[int, str]] = {}  # artifact id -> (producer execution id, its key)
    for event in store.get_events_by_artifact_ids(ids) if ids else []:
        if event.type == _OUTPUT and (
            event.artifact_id not in made_as or event.execution_id < made_as[event.artifact_id][0]
        ):
            made_as[event.artifact_id] = (event.execution_id, _key(event))
    for event in outputs:
        producer, key = made_as.get(event.artifact_id, (None, _key(event)))
        if key != _key(event):
            log.warning(
                "execution %d holds artifact %d as %r, which execution %s made as %r: not taken from "
                "the cache",
                event.execution_id,
                event.artifact_id,
                _key(event),
                producer,
                key,
            )
            return None
    types = {t.id: t for t in store.get_artifact_types_by_id(sorted({a.type_id for a in artifacts.values()}))}
    result: dict[str, list] = collections.defaultdict(list)
    for event in outputs:
        artifact = artifacts[event.artifact_id]
        result[_key(event)].append(artifact_utils.deserialize_artifact(types[artifact.type_id], artifact))
    return result


def outputs_of_execution(metadata_handle, execution_id: int) -> dict[str, list] | None:
    """`outputs_of_events` of one execution: TFX's portable cache reader, by id."""
    store = metadata_handle.store
    return outputs_of_events(store, store.get_events_by_execution_ids([execution_id]))


@contextlib.contextmanager
def by_artifact_id() -> Iterator[None]:
    """Within the block, TFX's cache readers (LocalDagRunner's and the Airflow launcher's) are
    `outputs_of_execution` and `outputs_of_events`."""
    from tfx.orchestration import metadata as tfx_metadata
    from tfx.orchestration.portable import cache_utils

    with (
        patching.replaced(cache_utils, "_get_outputs_of_execution", lambda _original: outputs_of_execution),
        patching.replaced(
            tfx_metadata.Metadata,
            "_get_outputs_of_events",
            lambda _original: lambda self, events: outputs_of_events(self.store, events),
        ),
    ):
        yield
