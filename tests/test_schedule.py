"""Schedule, the pure part: validation, fire-time math (every and cron, UTC), run ids,
the catch-up rule and the overlap decision. No threads, no clock: times are arguments."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

import stageline
from stageline import PIPELINE_DATA_KEY, DefinitionError, Schedule
from stageline.core.schedule import (
    ScheduleError,
    due_fire_times,
    overlap_action,
    schedule_run_id,
)

pytestmark = pytest.mark.timeout(120)


def utc(*args: int) -> float:
    return dt.datetime(*args, tzinfo=dt.UTC).timestamp()


T0 = utc(2026, 1, 1)  # a Thursday, 00:00 UTC


# --- validation ---------------------------------------------------------------------------


def test_schedule_is_exported_and_a_frozen_value():
    assert stageline.Schedule is Schedule and "Schedule" in stageline.__all__
    a = Schedule("nightly", "report", cron="0 2 * * *", state={"k": [1]})
    assert a == Schedule("nightly", "report", cron="0 2 * * *", state={"k": [1]})
    assert hash(a) == hash(Schedule("nightly", "report", cron="0 2 * * *"))
    with pytest.raises(AttributeError):
        a.cron = "* * * * *"  # type: ignore[misc]


def test_state_is_copied_at_construction():
    state = {"k": [1]}
    schedule = Schedule("s", "p", every=60, state=state)
    state["k"].append(2)
    assert schedule.state == {"k": [1]}


def test_every_problem_is_listed_in_one_error():
    with pytest.raises(DefinitionError) as caught:
        Schedule("", "", every=-1, overlap="queue", catchup_window=-5, state={"x": object()})
    error = caught.value
    assert isinstance(error, ScheduleError) and isinstance(error, stageline.StagelineError)
    assert len(error.problems) == 6, error.problems
    text = str(error)
    for words in ("id must be", "pipeline_id must be", "every must be a whole number",
                  "overlap must be one of 'skip', 'allow', 'buffer_one'",
                  "catchup_window must be seconds >= 0", "state cannot be stored"):  # fmt: skip
        assert words in text, text
    assert text.startswith("schedule '' is invalid (6 problem(s))")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({}, "exactly one of cron"),
        ({"cron": "* * * * *", "every": 60}, "exactly one of cron"),
        ({"cron": "0 9 * *"}, "five fields"),
        ({"cron": "0 0 9 * * 1"}, "five fields"),
        ({"cron": "@daily"}, "five fields"),
        ({"cron": "61 * * * *"}, "not a valid cron expression"),
        ({"cron": "a b c d e"}, "not a valid cron expression"),
        ({"cron": "0 0 30 2 *"}, "never fires"),
        ({"every": 0}, "whole number of seconds >= 1"),
        ({"every": 0.5}, "whole number of seconds >= 1"),
        ({"every": 90.5}, "whole number of seconds >= 1"),
        ({"every": True}, "whole number of seconds >= 1"),
        ({"every": "60"}, "whole number of seconds >= 1"),
        ({"every": float("inf")}, "whole number of seconds >= 1"),
        ({"every": 60, "catchup_window": float("nan")}, "catchup_window"),
        ({"every": 60, "state": [1]}, "state must be a dict"),
        ({"every": 60, "state": {PIPELINE_DATA_KEY: 1}}, "reserved key"),
    ],
)
def test_one_clear_problem(kwargs, words):
    with pytest.raises(ScheduleError) as caught:
        Schedule("s", "p", **kwargs)
    assert len(caught.value.problems) == 1, caught.value.problems
    assert words in caught.value.problems[0]


def test_valid_schedules_and_their_spec():
    assert Schedule("s", "p", cron="0  9 * * 1-5").spec == "cron 0 9 * * 1-5"
    assert Schedule("s", "p", every=60).spec == "every 60s"
    assert Schedule("s", "p", every=3600.0, overlap="buffer_one", catchup_window=600).every == 3600


# --- fire times ---------------------------------------------------------------------------


def test_every_fires_at_multiples_of_its_period_since_the_epoch():
    schedule = Schedule("s", "p", every=90)
    assert schedule.next_fire(0.0) == 90.0
    assert schedule.next_fire(T0) == T0 + 90  # T0 is a multiple of 90 s
    assert schedule.next_fire(T0 + 1) == T0 + 90
    assert schedule.next_fire(180.0) == 270.0  # strictly after
    assert schedule.next_fire(179.999) == 180.0
    hourly = Schedule("s", "p", every=3600)
    assert hourly.fire_times(T0, T0 + 3 * 3600) == [T0 + h * 3600 for h in range(4)]


def test_cron_reads_utc_across_month_and_year_boundaries():
    monthly = Schedule("s", "p", cron="0 0 1 * *")
    assert monthly.next_fire(utc(2026, 1, 31, 23, 59)) == utc(2026, 2, 1)
    assert monthly.next_fire(utc(2026, 12, 15)) == utc(2027, 1, 1)
    last_day = Schedule("s", "p", cron="30 12 31 * *")  # months without a 31st are skipped
    assert last_day.next_fire(utc(2026, 1, 31, 13)) == utc(2026, 3, 31, 12, 30)
    leap = Schedule("s", "p", cron="0 6 29 2 *")
    assert leap.next_fire(utc(2026, 1, 1)) == utc(2028, 2, 29, 6)


def test_cron_has_no_daylight_saving_time():
    # 2026-03-29 is when Europe moves its clocks; 2026-03-08 the USA: UTC does not care.
    daily = Schedule("s", "p", cron="30 1 * * *")
    times = daily.fire_times(utc(2026, 3, 7), utc(2026, 3, 31))
    assert len(times) == 24
    assert all(b - a == 86_400 for a, b in itertools.pairwise(times))
    assert times[0] == utc(2026, 3, 7, 1, 30)


def test_cron_weekdays_and_steps():
    weekdays = Schedule("s", "p", cron="0 9 * * 1-5")
    friday_night = utc(2026, 1, 2, 20)  # Friday
    assert weekdays.next_fire(friday_night) == utc(2026, 1, 5, 9)  # Monday
    quarter = Schedule("s", "p", cron="*/15 * * * *")
    assert quarter.fire_times(T0, T0 + 3600) == [T0 + m * 60 for m in (0, 15, 30, 45, 60)]
    assert quarter.next_fire(T0 + 0.5) == T0 + 900  # a fraction of a second after one


def test_fire_times_include_both_ends():
    schedule = Schedule("s", "p", every=60)
    assert schedule.fire_times(T0, T0 + 120) == [T0, T0 + 60, T0 + 120]
    assert schedule.fire_times(T0 + 1, T0 + 119) == [T0 + 60]
    assert schedule.fire_times(T0 + 1, T0 + 59) == []


def test_run_ids_name_the_fire_time_in_utc():
    schedule = Schedule("nightly", "report", every=60)
    assert schedule.run_id(T0) == "nightly@20260101T000000Z"
    assert schedule.run_id(utc(2026, 12, 31, 23, 59, 59)) == "nightly@20261231T235959Z"
    fire = dt.datetime(2026, 7, 4, 9, 30, tzinfo=dt.UTC)
    assert schedule_run_id("a b", fire.timestamp()) == f"a b@{fire:%Y%m%dT%H%M%SZ}"


# --- the catch-up rule --------------------------------------------------------------------


def test_on_time_fire_time_is_due():
    schedule = Schedule("s", "p", every=60)
    assert due_fire_times(schedule, T0 - 60, T0) == [T0]
    assert due_fire_times(schedule, T0, T0) == []  # fired already
    assert due_fire_times(schedule, T0 - 60, T0 - 1) == []


def test_a_new_schedule_never_back_fills():
    schedule = Schedule("s", "p", every=60, catchup_window=3600)
    assert due_fire_times(schedule, None, T0) == [T0]
    assert due_fire_times(schedule, None, T0 + 30) == []
    assert due_fire_times(schedule, None, T0 + 3, grace=5) == [T0]


def test_an_hour_down_catches_up_the_last_ten_minutes_only():
    schedule = Schedule("s", "p", every=60, catchup_window=600)
    last = T0
    now = T0 + 3600 + 60  # down for an hour: 60 fire times missed, then one on time
    due = due_fire_times(schedule, last, now)
    assert due == [now - 600 + 60 * i for i in range(11)]  # 10 missed + the one now
    assert due_fire_times(schedule, last, now - 30) == [now - 600 + 60 * i for i in range(10)]


def test_without_a_window_missed_fire_times_are_skipped():
    schedule = Schedule("s", "p", every=60)
    assert due_fire_times(schedule, T0, T0 + 3600) == [T0 + 3600]
    assert due_fire_times(schedule, T0, T0 + 3630) == []
    assert due_fire_times(schedule, T0, T0 + 3603, grace=5) == [T0 + 3600]


def test_the_window_never_starts_a_fire_time_twice():
    schedule = Schedule("s", "p", every=60, catchup_window=600)
    assert due_fire_times(schedule, T0 + 3300, T0 + 3600) == [T0 + 3360 + 60 * i for i in range(5)]


def test_cron_catch_up():
    schedule = Schedule("s", "p", cron="0 * * * *", catchup_window=3 * 3600)
    now = T0 + 10 * 3600 + 5
    assert due_fire_times(schedule, T0, now) == [T0 + h * 3600 for h in (8, 9, 10)]


# --- overlap --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overlap", "busy", "action"),
    [
        ("skip", False, "start"),
        ("skip", True, "skip"),
        ("allow", False, "start"),
        ("allow", True, "start"),
        ("buffer_one", False, "start"),
        ("buffer_one", True, "buffer"),
    ],
)
def test_overlap_action(overlap, busy, action):
    assert overlap_action(overlap, busy) == action
