"""Schedules served: the Scheduler on a registry's ManualClock, over every store, and
`stageline serve` / `stageline schedules` with a Schedule in the APP.

Time never passes on its own here: each test advances a ManualClock and waits until the
scheduler's passes are done (`Scheduler.wait_idle`), and waits for runs on their contexts.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Daemon, cli, cli_env, cli_ok  # tests/ is on sys.path
from conftest import empty_pg_store

from stageline import ManualClock, Pipeline, PipelineFactory, Registry, Schedule, Stage, Step
from stageline.actors.scheduler import Scheduler
from stageline.core.errors import StagelineError
from stageline.stores import MemoryStore, PostgresStore, SqliteStore

pytestmark = pytest.mark.timeout(120)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
DAY = 86_400


def tick_pipeline(gate: threading.Event | None = None) -> Pipeline:
    def step(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        if gate is not None:
            assert gate.wait(60), "the test never opened the gate"
        return {"ticked": True}

    return Pipeline("tick", [Stage("tick", 1, steps=[Step("tick", step)])])


def other_handle(store: Any, request: pytest.FixtureRequest) -> Any:
    """A second store object on the same runs (as a second daemon would open it)."""
    if isinstance(store, SqliteStore):
        return SqliteStore(store.path)
    if isinstance(store, PostgresStore):
        dsn, schema = request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_schema")
        return PostgresStore(dsn, schema=schema)
    return store


def run_ids(store: Any) -> list[str]:
    return sorted(info.run_id for info in store.list_runs(pipeline_id="tick"))


def rid(fire_time: float, schedule_id: str = "tick") -> str:
    return f"{schedule_id}@{dt.datetime.fromtimestamp(fire_time, dt.UTC):%Y%m%dT%H%M%SZ}"


class Served:
    """A registry, a factory on `store` and a Scheduler of `schedules`, on `clock`."""

    def __init__(self, clock: ManualClock, store: Any, pipeline: Pipeline, *schedules: Schedule):
        self.registry = Registry(clock=clock)
        self.factory = PipelineFactory(pipeline, store=store, registry=self.registry)
        self.started: list[Any] = []
        self.scheduler = Scheduler(
            self.registry, [self.factory], schedules, on_start=self.started.append
        )

    def stop(self) -> None:
        self.scheduler.stop()
        for context in list(self.started):
            context.wait(timeout=30)
        self.registry.stop()


def advance(clock: ManualClock, seconds: float, *served: Served) -> None:
    clock.advance(seconds)
    for one in served:
        assert one.scheduler.wait_idle(), "the scheduler did not settle"


# --- one fire time, one run -----------------------------------------------------------------


def test_two_schedulers_on_one_store_start_each_fire_time_once_for_a_day(store, request):
    clock = ManualClock(wall_start=T0 + 30)
    schedule = Schedule("tick", "tick", every=60, overlap="allow")
    second = other_handle(store, request)
    a = Served(clock, store, tick_pipeline(), schedule)
    b = Served(clock, second, tick_pipeline(), schedule)
    try:
        a.scheduler.start()
        b.scheduler.start()
        assert run_ids(store) == []  # T0 + 30 is no fire time
        advance(clock, 30, a, b)  # onto the first one: a pass sees the clock's time
        for _ in range(DAY // 60 - 1):
            advance(clock, 60, a, b)
        expected = sorted(rid(T0 + 60 * i) for i in range(1, DAY // 60 + 1))
        assert len(expected) == 1440
        assert run_ids(store) == expected
        assert len(a.started) + len(b.started) == 1440  # every firing started by one of them
        (row,) = store.list_schedules()
        assert row["last_fire"] == T0 + DAY and row["next_fire"] == T0 + DAY + 60
    finally:
        a.stop()
        b.stop()
        if second is not store:
            second.close()


def test_a_daemon_down_for_an_hour_catches_up_the_last_ten_fire_times(store):
    clock = ManualClock(wall_start=T0)
    schedule = Schedule("tick", "tick", every=60, overlap="allow", catchup_window=600)
    first = Served(clock, store, tick_pipeline(), schedule)
    first.scheduler.start()  # T0 is on time
    advance(clock, 60, first)
    first.stop()
    assert run_ids(store) == [rid(T0), rid(T0 + 60)]

    clock.advance(3600)  # nobody serves the schedule for an hour
    now = T0 + 3660
    again = Served(clock, store, tick_pipeline(), schedule)
    try:
        again.scheduler.start()
        caught_up = [rid(now - 60 * i) for i in range(10, 0, -1)]
        assert run_ids(store) == sorted([rid(T0), rid(T0 + 60), *caught_up, rid(now)])
        advance(clock, 60, again)
        assert rid(now + 60) in run_ids(store) and len(run_ids(store)) == 14
    finally:
        again.stop()


def test_a_new_schedule_does_not_back_fill(store):
    clock = ManualClock(wall_start=T0 + 30)
    served = Served(clock, store, tick_pipeline(), Schedule("tick", "tick", every=60,
                                                            catchup_window=DAY))  # fmt: skip
    try:
        served.scheduler.start()
        assert run_ids(store) == []
        advance(clock, 30, served)
        assert run_ids(store) == [rid(T0 + 60)]
    finally:
        served.stop()


def test_a_cron_schedule_fires_at_its_utc_times_with_its_state(store):
    clock = ManualClock(wall_start=T0)  # a Thursday
    schedule = Schedule(
        "weekday", "tick", cron="0 9 * * 1-5", state={"who": "cron"}, overlap="allow"
    )
    served = Served(clock, store, tick_pipeline(), schedule)
    try:
        served.scheduler.start()
        for _ in range(7 * 24):
            advance(clock, 3600, served)
        days = [1, 2, 5, 6, 7]  # Thu 1st, Fri 2nd, Mon 5th to Wed 7th of January 2026
        expected = [rid(T0 + (d - 1) * DAY + 9 * 3600, "weekday") for d in days]
        assert run_ids(store) == expected
        served.started[0].wait(timeout=30)
        assert store.get_run(expected[0]).state["who"] == "cron"
    finally:
        served.stop()


# --- overlap --------------------------------------------------------------------------------


def overlapping(clock: ManualClock, store: Any, overlap: str) -> tuple[Served, threading.Event]:
    gate = threading.Event()
    schedule = Schedule("tick", "tick", every=60, overlap=overlap)
    served = Served(clock, store, tick_pipeline(gate), schedule)
    served.scheduler.start()
    assert run_ids(store) == [rid(T0)]
    return served, gate


def test_skip_starts_no_second_run_while_the_first_runs(store):
    clock = ManualClock(wall_start=T0)
    served, gate = overlapping(clock, store, "skip")
    try:
        for _ in range(3):
            advance(clock, 60, served)
        assert run_ids(store) == [rid(T0)]
        assert store.list_schedules()[0]["last_fire"] == T0 + 180  # skipped, not pending
        gate.set()
        served.started[0].wait(timeout=30)
        advance(clock, 60, served)
        assert run_ids(store) == [rid(T0), rid(T0 + 240)]
    finally:
        gate.set()
        served.stop()


def test_allow_starts_overlapping_runs(store):
    clock = ManualClock(wall_start=T0)
    served, gate = overlapping(clock, store, "allow")
    try:
        for _ in range(2):
            advance(clock, 60, served)
        assert run_ids(store) == [rid(T0), rid(T0 + 60), rid(T0 + 120)]
        assert {store.get_run(r).status for r in run_ids(store)} <= {"pending", "running"}
    finally:
        gate.set()
        served.stop()
    assert {store.get_run(r).status for r in run_ids(store)} == {"succeeded"}


def test_buffer_one_keeps_the_newest_fire_time_until_the_run_ends(store):
    clock = ManualClock(wall_start=T0)
    served, gate = overlapping(clock, store, "buffer_one")
    try:
        for _ in range(3):
            advance(clock, 60, served)
        assert run_ids(store) == [rid(T0)]
        gate.set()
        served.started[0].wait(timeout=30)
        served.scheduler.check_now()  # (the run's end asks for one too)
        assert run_ids(store) == [rid(T0), rid(T0 + 180)]  # the newest waiting one only
        served.started[1].wait(timeout=30)
        advance(clock, 60, served)
        assert run_ids(store) == [rid(T0), rid(T0 + 180), rid(T0 + 240)]
    finally:
        gate.set()
        served.stop()


# --- set-up errors and the store's rows -------------------------------------------------------


def test_a_schedule_of_an_unserved_pipeline_is_refused():
    with Registry(clock=ManualClock()) as registry:
        factory = PipelineFactory(tick_pipeline(), store=MemoryStore(), registry=registry)
        with pytest.raises(StagelineError, match="'nope', which no factory serves"):
            Scheduler(registry, [factory], [Schedule("s", "nope", every=60)])
        with pytest.raises(StagelineError, match="two schedules have the id 's'"):
            Scheduler(registry, {"tick": factory}, [Schedule("s", "tick", every=60)] * 2)


def test_the_store_keeps_last_fire_forward_only(store):
    entry = {"schedule_id": "s", "pipeline_id": "p", "spec": "every 60s", "overlap": "skip",
             "catchup_window": 0.0}  # fmt: skip
    assert store.mark_fired("s", 60.0, "r", 120.0) is False  # never saved
    store.save_schedule(entry)
    assert store.mark_fired("s", 60.0, "s@60", 120.0) is True
    assert store.mark_fired("s", 30.0, None, 60.0) is False
    assert store.mark_fired("s", 120.0, None, 180.0) is True  # skipped: the last run stays
    (row,) = store.list_schedules()
    assert row["last_fire"] == 120.0 and row["last_run_id"] == "s@60"
    # a fire time started late (a buffer_one run whose turn came): last_fire stays, but it
    # is the last run now, so every daemon's overlap check sees it
    assert store.mark_fired("s", 60.0, "s@60-buffered", 120.0) is False
    store.save_schedule({**entry, "overlap": "allow", "spec": "every 30s"})
    (row,) = store.list_schedules()
    assert row["last_fire"] == 120.0 and row["last_run_id"] == "s@60-buffered"
    assert row["next_fire"] == 180.0 and row["overlap"] == "allow" and row["spec"] == "every 30s"
    assert set(row) == {"schedule_id", "pipeline_id", "spec", "overlap", "catchup_window",
                        "last_fire", "last_run_id", "next_fire", "updated_at"}  # fmt: skip
    with pytest.raises(ValueError, match="a schedule needs overlap"):
        store.save_schedule({"schedule_id": "x", "pipeline_id": "p", "spec": "every 1s",
                             "catchup_window": 0})  # fmt: skip


def test_many_schedulers_racing_on_one_pg_fire_time(pg_dsn, pg_schema):
    store = empty_pg_store(pg_dsn, pg_schema)
    clock = ManualClock(wall_start=T0 - 30)
    schedule = Schedule("tick", "tick", every=60, overlap="allow")
    handles = [PostgresStore(pg_dsn, schema=pg_schema) for _ in range(4)]
    served = [Served(clock, h, tick_pipeline(), schedule) for h in handles]
    try:
        for one in served:
            one.scheduler.start()
        advance(clock, 30, *served)
        assert run_ids(store) == [rid(T0)]
        assert sum(len(one.started) for one in served) == 1
    finally:
        for one in served:
            one.stop()
        for h in handles:
            h.close()
        store.close()


# --- the daemon and the CLI -----------------------------------------------------------------

APP = """
from stageline import Pipeline, Schedule, Stage, Step

tick = Pipeline("tick", [Stage("tick", 1, steps=[Step("tick", lambda s, c: {"t": 1})])])
app = [tick, Schedule("often", "tick", every=1, overlap="allow"),
       Schedule("nightly", "tick", cron="0 2 * * *", catchup_window=3600)]
bad = [tick, Schedule("lost", "nope", every=60)]
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "ticks.py").write_text(APP)
    return tmp_path


def test_serve_fires_the_apps_schedules_and_schedules_lists_them(folder):
    env = cli_env(f"sqlite:///{folder / 'runs.db'}", folder)
    daemon = Daemon("ticks:app", env, folder, "--log-format", "json")
    try:
        daemon.expect("daemon:schedules", schedules=["often", "nightly"])
        fired = daemon.expect("schedule:fired", schedule_id="often")
        assert fired["run_id"].startswith("often@")
        lines = cli_ok("schedules", "--json", env=env, cwd=folder).splitlines()
        rows = {row["schedule_id"]: row for row in map(json.loads, lines)}
        assert set(rows) == {"often", "nightly"}
        assert rows["often"]["spec"] == "every 1s" and rows["often"]["overlap"] == "allow"
        assert rows["often"]["last_fire"].endswith("Z") and rows["often"]["last_run_id"]
        assert rows["nightly"]["spec"] == "cron 0 2 * * *"
        assert rows["nightly"]["last_fire"] is None
        assert rows["nightly"]["next_fire"].endswith("T02:00:00.000000Z")
        table = cli_ok("schedules", env={**env, "NO_COLOR": "1"}, cwd=folder).splitlines()
        assert table[0].split() == ["SCHEDULE", "PIPELINE", "SPEC", "OVERLAP", "LAST", "FIRE",
                                    "LAST", "RUN", "NEXT", "FIRE"]  # fmt: skip
        assert [line.split()[0] for line in table[1:]] == ["nightly", "often"]
        assert "cron 0 2 * * *" in table[1] and "(in " in table[1]  # next: "(in 3 h)"
    finally:
        assert daemon.signal() == 0


def test_serve_refuses_a_schedule_of_an_unserved_pipeline(folder):
    env = cli_env(f"sqlite:///{folder / 'runs.db'}", folder)
    result = cli("serve", "ticks:bad", env=env, cwd=folder)
    assert result.returncode != 0
    assert "schedule 'lost' starts pipeline 'nope', which no factory serves" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_schedules_on_an_empty_store(folder):
    env = cli_env(f"sqlite:///{folder / 'runs.db'}", folder)
    SqliteStore(folder / "runs.db").close()
    assert "no schedule is recorded" in cli_ok("schedules", env=env, cwd=folder)
    assert cli_ok("schedules", "--json", env=env, cwd=folder) == ""


def test_the_serve_banner_lists_the_schedules(tmp_path):
    from stageline._ops_banner import banner
    from stageline.daemon import Daemon as Loop

    store = SqliteStore(tmp_path / "runs.db")
    with Registry(clock=ManualClock()) as registry:
        factory = PipelineFactory(tick_pipeline(), store=store, registry=registry)
        loop = Loop({"tick": factory}, store, registry)
        assert banner("sqlite:///x.db", loop).splitlines()[-1].split() == ["schedules", "none"]
        loop.schedules = (Schedule("a", "tick", every=60), Schedule("b", "tick", every=9))
        assert banner("sqlite:///x.db", loop).splitlines()[-1].split() == ["schedules", "a,", "b"]
    store.close()
