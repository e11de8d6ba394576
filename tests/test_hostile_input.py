"""Hostile input through every store (issue 9): quotes, NUL bytes, very long strings and
text that is not UTF-8 in run ids, pipeline ids and patches; oversized artifacts.

Whatever comes in is either stored and read back exactly, or refused up front with a
StagelineError naming what is wrong: never a raw driver exception, never a torn run.
"""

from __future__ import annotations

import uuid

import pytest

from stageline import (
    ArtifactError,
    DefinitionError,
    Pause,
    Pipeline,
    PipelineFactory,
    Registry,
    Stage,
    StagelineError,
    Step,
    StoreError,
)
from stageline.core.errors import RunNotFound

pytestmark = pytest.mark.timeout(60)

ODD_TEXT = [
    'it\'s "quoted"; DROP TABLE runs; --',
    "nul\x00inside",
    "x" * 100_000,
    "\u00e9\u4e2d\U0001f600",
    "\\'\\\"%_*?",
]
LONE_SURROGATE = "bad\udcffname"  # what os.fsdecode makes of bytes that are not UTF-8


def one_stage(pipeline_id: str = "p", action=lambda s, c: {"done": True}) -> Pipeline:
    return Pipeline(pipeline_id, [Stage("s", 1, steps=[Step("w", action)])])


def refused_by(store, text: str) -> bool:
    """PostgreSQL text holds no NUL, and its index keys are limited (documented limits)."""
    from stageline.stores import PostgresStore

    too_long = len(text.encode()) > 2048
    return isinstance(store, PostgresStore) and ("\x00" in text or too_long)


@pytest.mark.parametrize("run_id", [t for t in ODD_TEXT if "\x00" not in t])
def test_odd_run_ids_round_trip(store, run_id):
    if refused_by(store, run_id):
        with pytest.raises(StoreError, match="use a shorter id"):
            PipelineFactory(one_stage(), store=store).prepare(run_id=run_id)
        return
    result = PipelineFactory(one_stage(), store=store).prepare(run_id=run_id).run(timeout=10)
    assert result.ok and result.run_id == run_id
    assert store.get_run(run_id).status == "succeeded"
    assert [r.run_id for r in store.list_runs(pipeline_id="p")] == [run_id]
    assert [e.name for e in store.read_events(run_id)][-1] == "pipeline:success"


@pytest.mark.parametrize("run_id", ["nul\x00inside", LONE_SURROGATE, ""])
def test_run_ids_no_store_can_keep_are_refused_up_front(store, run_id):
    """Was (lone surrogates): SqliteStore raised a raw UnicodeEncodeError from prepare,
    get_run and list_runs, while MemoryStore accepted the run."""
    factory = PipelineFactory(one_stage(), store=store)
    with pytest.raises(StagelineError, match="run_id must be a non-empty string"):
        factory.prepare(run_id=run_id)
    assert store.list_runs() == []
    with pytest.raises(RunNotFound):
        store.get_run(run_id)
    with pytest.raises(RunNotFound):
        store.read_events(run_id)
    assert store.list_runs(status=run_id, pipeline_id=run_id) == []
    with pytest.raises(StagelineError):
        factory.resume(run_id)
    assert factory.prepare().run(timeout=10).ok  # the store is unharmed


@pytest.mark.parametrize("pipeline_id", ODD_TEXT)
def test_odd_pipeline_ids_round_trip(store, pipeline_id):
    if "\x00" in pipeline_id:  # no store can hold it everywhere: refused by the definition
        with pytest.raises(DefinitionError, match="without NUL"):
            one_stage(pipeline_id)
        return
    if refused_by(store, pipeline_id):
        with pytest.raises(StoreError, match=r"NUL|use a shorter id"):
            PipelineFactory(one_stage(pipeline_id), store=store).prepare()
        return
    result = PipelineFactory(one_stage(pipeline_id), store=store).prepare().run(timeout=10)
    assert result.ok
    [info] = store.list_runs(pipeline_id=pipeline_id)
    assert info.pipeline_id == pipeline_id and info.status == "succeeded"


def test_a_pipeline_id_that_is_not_utf8_is_a_definition_error():
    with pytest.raises(DefinitionError, match="valid UTF-8"):
        one_stage(LONE_SURROGATE)
    with pytest.raises(DefinitionError, match="valid UTF-8"):
        Pipeline("p", [Stage(LONE_SURROGATE, 1, steps=[Step("w", lambda s, c: None)])])


def test_odd_keys_and_values_in_patches_round_trip(store):
    patch = {text: {text: text, "b": text.encode("utf-8", "surrogatepass")} for text in ODD_TEXT}
    patch["raw"] = bytes(range(256))  # bytes are bytes: any content, not text

    pipeline = Pipeline(
        "p",
        [
            Stage(
                "s1",
                1,
                steps=[Step("w", lambda s, c: patch)],
                router=lambda s, r: Pause("s2", timeout=0),
            ),
            Stage("s2", 2, steps=[Step("v", lambda s, c: {"echo": dict(s)})]),
        ],
    )
    with Registry() as registry:
        factory = PipelineFactory(pipeline, store=store, registry=registry)
        paused = factory.prepare().run(timeout=10)
        assert paused.status == "paused" and store.get_run(paused.run_id).state == patch
        result = factory.resume(paused.run_id, patch={"resumed\x00'": "\x00"}).run(timeout=10)
    assert result.ok
    state = store.get_run(result.run_id).state
    assert state["echo"] == {**patch, "resumed\x00'": "\x00"}
    [success] = [
        e
        for e in store.read_events(result.run_id)
        if e.stage_id == "s1" and e.name == "stage:paused"
    ]
    assert success.results == {"w": patch}


@pytest.mark.parametrize(
    "bad",
    [{"k": LONE_SURROGATE}, {LONE_SURROGATE: 1}, {"k": [LONE_SURROGATE]}, {"k": {1: 2}}],
)
def test_patches_no_store_can_keep_fail_the_step_or_the_resume(store, bad):
    pipeline = Pipeline(
        "p",
        [
            Stage("s1", 1, steps=[Step("w", lambda s, c: None)], router=lambda s, r: Pause("s2")),
            Stage("s2", 2, steps=[Step("w", lambda s, c: bad)]),
        ],
    )
    factory = PipelineFactory(pipeline, store=store)
    paused = factory.prepare().run(timeout=10)
    with pytest.raises(StagelineError, match="cannot be stored at"):
        factory.resume(paused.run_id, patch=bad)
    assert store.get_run(paused.run_id).status == "paused"  # the refused resume left it
    result = factory.resume(paused.run_id).run(timeout=10)
    assert result.status == "failed" and "cannot be stored at" in str(result.error)
    assert store.get_run(paused.run_id).status == "failed"


def test_oversized_artifacts_are_refused_naming_the_configured_limit(store):
    def big(state, ctx):
        ctx.artifacts.put("blob", b"x" * 50_000)
        return None

    pipeline = Pipeline(
        "p",
        [
            Stage("s1", 1, steps=[Step("w", big)], router=lambda s, r: Pause("s2", persist=True)),
            Stage("s2", 2, steps=[Step("w", lambda s, c: None)]),
        ],
    )
    result = (
        PipelineFactory(pipeline, store=store, max_bundle_bytes=10_000).prepare().run(timeout=10)
    )
    assert result.status == "failed"
    assert "max_bundle_bytes=10000" in str(result.error)
    assert store.get_run(result.run_id).status == "failed"
    with pytest.raises(ArtifactError, match="cannot be bundled"):
        from stageline.actors.container import Container

        Container("r").view("p").put("k", object())


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_oversized_state_is_refused_naming_the_configured_limit(tmp_path, kind, request):
    """Was: SqliteStore committed a state of any size but read back at most 64 MiB, so a
    run with a bigger state "succeeded" and then made get_run, and list_runs of the whole
    store, raise BundleError. Now a commit over `max_state_bytes` writes nothing and fails
    the stage with the limit in the message; the store stays readable."""
    from invariants import check_run

    from stageline.core.errors import StateTooLarge
    from stageline.stores import SqliteStore

    if kind == "sqlite":
        store = SqliteStore(tmp_path / "limited.db", max_state_bytes=100_000)
    else:
        from conftest import drop_schema

        from stageline.stores import PostgresStore

        dsn, schema = request.getfixturevalue("pg_dsn"), f"limited_{uuid.uuid4().hex[:10]}"
        request.addfinalizer(lambda: drop_schema(dsn, schema))
        store = PostgresStore(dsn, schema=schema, max_state_bytes=100_000)
    big = b"x" * 200_000
    pipeline = Pipeline(
        "p",
        [
            Stage("s1", 1, steps=[Step("w", lambda s, c: {"small": True})]),
            Stage("s2", 2, steps=[Step("w", lambda s, c: {"big": big})]),
        ],
    )
    pausing = Pipeline(
        "q",
        [
            Stage(
                "s1",
                1,
                steps=[Step("w", lambda s, c: {"big": big})],
                router=lambda s, r: Pause("s2"),
            ),
            Stage("s2", 2, steps=[Step("w", lambda s, c: None)]),
        ],
    )
    for p in (pipeline, pausing):
        result = PipelineFactory(p, store=store).prepare().run(timeout=10)
        assert result.status == "failed", p.id
        assert "max_state_bytes=100000" in str(result.error)
        assert result.error.kind == "state_too_large"
        info = store.get_run(result.run_id)
        assert info.status == "failed" and "big" not in info.state
        check_run(store, result.run_id)
    with pytest.raises(StateTooLarge, match="max_state_bytes=100000"):
        PipelineFactory(pipeline, store=store, initial_state={"big": big}).prepare()
    assert len(store.list_runs()) == 2  # the store reads every run back
    assert PipelineFactory(one_stage(), store=store).prepare().run(timeout=10).ok
    store.close()


def test_seqs_of_a_refused_closing_commit_stay_taken(tmp_path):
    """A closing commit the store refuses (StateTooLarge) took its events' seqs: the
    stage:failure and pipeline:failure that follow are numbered after them, as they were
    before transitions moved into core (the journal's numbering never changes with how
    the runtime is built)."""
    from stageline.stores import SqliteStore

    store = SqliteStore(tmp_path / "limited.db", max_state_bytes=100_000)
    big = b"x" * 200_000
    pipeline = Pipeline(
        "p",
        [
            Stage("s1", 1, steps=[Step("w", lambda s, c: {"small": True})]),
            Stage("s2", 2, steps=[Step("w", lambda s, c: {"big": big})]),
        ],
    )
    result = PipelineFactory(pipeline, store=store).prepare().run(timeout=10)
    assert result.status == "failed"
    journal = [(e.seq, e.name) for e in store.read_events(result.run_id)]
    # 1 start; 2 s1 start, 3-4 its step events, 5 s1 success; 6 s2 start, 7-8 its step
    # events, 9 the refused stage:success, 10 the refused pipeline:success
    assert journal == [
        (1, "pipeline:start"),
        (2, "stage:start"),
        (5, "stage:success"),
        (6, "stage:start"),
        (11, "stage:failure"),
        (12, "pipeline:failure"),
    ]
    store.close()
