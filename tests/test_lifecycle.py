"""The run lifecycle table: legal transitions, illegal ones, and terminal statuses."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stageline.core.errors import RunStateError, StagelineError
from stageline.core.lifecycle import (
    ABORTED,
    EVENTS,
    EXPIRED,
    FAILED,
    PAUSED,
    PENDING,
    RUNNING,
    STATUSES,
    SUCCEEDED,
    TERMINAL,
    TRANSITIONS,
    can,
    transition,
)

pytestmark = pytest.mark.timeout(30)

# The table as the SPEC and the module docstring describe it, written out independently so
# that a change to TRANSITIONS has to be made here too, on purpose.
EXPECTED = {
    ("pending", "start"): "running",
    ("pending", "abort"): "aborted",
    ("running", "commit"): "running",
    ("running", "recover"): "running",
    ("running", "succeed"): "succeeded",
    ("running", "fail"): "failed",
    ("running", "abort"): "aborted",
    ("running", "pause"): "paused",
    ("paused", "resume"): "running",
    ("paused", "expire"): "expired",
    ("paused", "abort_paused"): "aborted",
    ("failed", "retry"): "running",
    ("running", "crash"): "failed",
    ("running", "quarantine"): "quarantined",
    ("quarantined", "retry"): "running",
    ("running", "sleep"): "sleeping",
    ("sleeping", "wake"): "running",
    ("sleeping", "abort_paused"): "aborted",
    ("paused", "expire_on"): "running",
    ("pending", "queue"): "queued",
    ("paused", "queue"): "queued",
    ("sleeping", "queue"): "queued",
    ("failed", "queue"): "queued",
    ("quarantined", "queue"): "queued",
    ("running", "queue"): "queued",
    ("queued", "admit"): "running",
    ("queued", "abort"): "aborted",
    ("queued", "abort_paused"): "aborted",
}

ILLEGAL = [pair for pair in itertools.product(STATUSES, sorted(EVENTS)) if pair not in EXPECTED]


def test_status_constants():
    assert (PENDING, RUNNING, PAUSED, SUCCEEDED, FAILED, ABORTED, EXPIRED) == (
        "pending",
        "running",
        "paused",
        "succeeded",
        "failed",
        "aborted",
        "expired",
    )
    assert set(STATUSES) == {  # SPEC section 19: every status word, defined once
        "pending",
        "queued",
        "running",
        "paused",
        "sleeping",
        "succeeded",
        "failed",
        "aborted",
        "expired",
        "quarantined",
    }
    assert len(STATUSES) == len(set(STATUSES))


def test_run_result_statuses_are_statuses():
    # SPEC 4: RunResult.status is one of these; SPEC 7: "expired" for runs past checkpoint_ttl;
    # SPEC 15: "sleeping" when run() returns at a Sleep
    assert {"succeeded", "paused", "failed", "aborted", "expired", "sleeping"} <= set(STATUSES)


def test_table_is_exactly_the_documented_one():
    assert dict(TRANSITIONS) == EXPECTED


def test_events_are_the_table_events():
    assert set(EVENTS) == {event for _, event in EXPECTED}


def test_terminal_statuses():
    assert {SUCCEEDED, ABORTED, EXPIRED} == TERMINAL
    assert FAILED not in TERMINAL  # a failed run can be retried
    assert PAUSED not in TERMINAL


@pytest.mark.parametrize(("pair", "after"), sorted(EXPECTED.items()), ids=lambda v: str(v))
def test_every_listed_transition_works(pair, after):
    status, event = pair
    assert transition(status, event) == after
    assert can(status, event)


@pytest.mark.parametrize("pair", ILLEGAL, ids=lambda p: f"{p[0]}-{p[1]}")
def test_every_unlisted_pair_is_refused(pair):
    status, event = pair
    assert not can(status, event)
    with pytest.raises(RunStateError) as info:
        transition(status, event)
    message = str(info.value)
    assert repr(status) in message
    assert repr(event) in message


def test_illegal_pairs_cover_the_rest_of_the_product():
    assert len(ILLEGAL) + len(EXPECTED) == len(STATUSES) * len(EVENTS)


def test_refusal_tells_what_is_allowed():
    with pytest.raises(RunStateError) as info:
        transition(PAUSED, "commit")
    assert "abort_paused, expire, expire_on, queue, resume" in str(info.value)


@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_terminal_refusal_says_it_has_ended(status):
    with pytest.raises(RunStateError) as info:
        transition(status, "start")
    assert "ended" in str(info.value)


@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_terminal_statuses_have_no_way_out(status):
    assert not any(can(status, event) for event in EVENTS)


IN_USE = {status for (source, _), target in TRANSITIONS.items() for status in (source, target)}


def test_the_words_without_transitions_yet_are_those_part_two_adds():
    """Every status word has its transitions now (sleeping's came with SPEC 15, queued's
    with SPEC 20)."""
    assert set(STATUSES) - IN_USE == set()


@pytest.mark.parametrize("status", [s for s in STATUSES if s in IN_USE - TERMINAL])
def test_every_non_terminal_status_can_reach_a_terminal_one(status):
    seen, frontier = {status}, [status]
    while frontier:
        current = frontier.pop()
        for (source, _), target in TRANSITIONS.items():
            if source == current and target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen & TERMINAL


def test_every_status_is_reachable_from_pending():
    seen, frontier = {PENDING}, [PENDING]
    while frontier:
        current = frontier.pop()
        for (source, _), target in TRANSITIONS.items():
            if source == current and target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == IN_USE


@pytest.mark.parametrize(("status", "event"), [("bogus", "start"), (RUNNING, "explode"), ("", "")])
def test_unknown_status_or_event_is_refused(status, event):
    assert not can(status, event)
    with pytest.raises(RunStateError):
        transition(status, event)


def test_run_state_error_is_a_stageline_error():
    assert issubclass(RunStateError, StagelineError)
    assert RunStateError.kind == "run_state"


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(STATUSES),
    st.lists(st.sampled_from(sorted(EVENTS)), max_size=40),
)
def test_prop_random_event_sequences_never_leave_a_terminal_status(start, events):
    status = start
    ended = status in TERMINAL
    for event in events:
        if can(status, event):
            assert not ended, f"left terminal status {status!r} on {event!r}"
            status = transition(status, event)
            assert status in STATUSES
        else:
            before = status
            with pytest.raises(RunStateError):
                transition(status, event)
            assert status == before
        if status in TERMINAL:
            ended = True
    if ended:
        assert status in TERMINAL
