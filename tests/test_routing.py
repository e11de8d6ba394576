"""decide(): what a router's answer means; check_stage_budget(): runaway loops."""

from __future__ import annotations

import pytest

from stageline.core.definition import DELETE, TERMINATE, Pause, Pipeline, Stage, Step
from stageline.core.errors import RoutingError, StagelineError
from stageline.core.routing import Decision, check_stage_budget, decide

pytestmark = pytest.mark.timeout(30)


def act(state, ctx):
    return None


def route(state, results):
    return None


@pytest.fixture
def pipeline() -> Pipeline:
    # defined out of order on purpose: routing follows `order`
    return Pipeline(
        "checkout",
        [
            Stage("ship", 30, steps=[Step("label", act)]),
            Stage("validate", 10, steps=[Step("check", act)], router=route),
            Stage("approve", 20, router=route),
        ],
        max_stage_runs=5,
    )


def assert_routing_error(info, *needles: str) -> None:
    message = str(info.value)
    for needle in needles:
        assert needle in message, (needle, message)


# --------------------------------------------------------------------------- advance / end


def test_none_advances_by_order(pipeline):
    assert decide(pipeline, "validate", None) == Decision("next", "approve")
    assert decide(pipeline, "approve", None) == Decision("next", "ship")


def test_none_past_the_last_stage_ends(pipeline):
    decision = decide(pipeline, "ship", None)
    assert decision == Decision("end")
    assert decision.ends_run
    assert decision.next_stage is None
    assert decision.routing == "end"


def test_next_decision_properties(pipeline):
    decision = decide(pipeline, "validate", None)
    assert not decision.ends_run
    assert decision.routing == "approve"
    assert decision.pause is None


def test_single_stage_pipeline_ends():
    single = Pipeline("p", [Stage("only", 1, router=route)])
    assert decide(single, "only", None).kind == "end"


# --------------------------------------------------------------------------- jump


@pytest.mark.parametrize(("source", "target"), [("ship", "validate"), ("validate", "ship")])
def test_jump_backward_and_forward(pipeline, source, target):
    decision = decide(pipeline, source, target)
    assert decision == Decision("jump", target)
    assert decision.routing == target
    assert not decision.ends_run


def test_jump_to_itself_is_a_loop(pipeline):
    assert decide(pipeline, "approve", "approve") == Decision("jump", "approve")


@pytest.mark.parametrize("bad", ["nope", "", "Validate", " validate"])
def test_unknown_jump_target(pipeline, bad):
    with pytest.raises(RoutingError) as info:
        decide(pipeline, "approve", bad)
    assert_routing_error(
        info, "stage 'approve'", "'checkout'", repr(bad), "known stages: validate, approve, ship"
    )


# --------------------------------------------------------------------------- terminate


def test_terminate(pipeline):
    decision = decide(pipeline, "validate", TERMINATE)
    assert decision == Decision("terminate")
    assert decision.ends_run
    assert decision.routing == "terminate"


def test_terminate_on_the_last_stage(pipeline):
    assert decide(pipeline, "ship", TERMINATE).kind == "terminate"


# --------------------------------------------------------------------------- pause


def test_pause(pipeline):
    pause = Pause("ship", timeout=30.0, persist=True)
    decision = decide(pipeline, "approve", pause)
    assert decision.kind == "pause"
    assert decision.next_stage == "ship"
    assert decision.pause is pause
    assert decision.routing == "pause"
    assert not decision.ends_run


def test_pause_can_resume_at_the_same_or_an_earlier_stage(pipeline):
    assert decide(pipeline, "approve", Pause("approve")).next_stage == "approve"
    assert decide(pipeline, "ship", Pause("validate")).next_stage == "validate"


@pytest.mark.parametrize("bad", ["nope", "", 3, None])
def test_pause_at_an_unknown_stage(pipeline, bad):
    with pytest.raises(RoutingError) as info:
        decide(pipeline, "validate", Pause(bad))
    assert_routing_error(
        info,
        "stage 'validate'",
        "'checkout'",
        "resume_at",
        repr(bad),
        "known stages: validate, approve, ship",
    )


# --------------------------------------------------------------------------- bad answers


@pytest.mark.parametrize(
    "answer",
    [
        5,
        True,
        False,
        ["ship"],
        ("ship",),
        {"stage": "ship"},
        b"ship",
        Pause,  # the class, not an instance
        DELETE,
        Decision("jump", "ship"),
        object(),
    ],
    ids=lambda a: type(a).__name__,
)
def test_bad_return_type(pipeline, answer):
    with pytest.raises(RoutingError) as info:
        decide(pipeline, "approve", answer)
    assert_routing_error(
        info, "stage 'approve'", "'checkout'", type(answer).__name__, "TERMINATE", "Pause"
    )


def test_routing_error_is_a_stageline_error():
    assert issubclass(RoutingError, StagelineError)
    assert RoutingError.kind == "routing"


def test_decision_is_frozen():
    decision = Decision("end")
    with pytest.raises(AttributeError):
        decision.kind = "next"  # type: ignore[misc]


# --------------------------------------------------------------------------- stage budget


@pytest.mark.parametrize("runs", [0, 1, 4, 5])
def test_stage_budget_within_limit(pipeline, runs):
    check_stage_budget(pipeline, runs, "approve")


@pytest.mark.parametrize("runs", [6, 7, 10_000])
def test_stage_budget_exceeded(pipeline, runs):
    with pytest.raises(RoutingError) as info:
        check_stage_budget(pipeline, runs, "approve")
    assert_routing_error(
        info, "'checkout'", str(runs), "'approve'", "max_stage_runs=5", "runaway loop"
    )


def test_default_stage_budget():
    default = Pipeline("p", [Stage("s", 1, router=route)])
    check_stage_budget(default, 10_000, "s")
    with pytest.raises(RoutingError):
        check_stage_budget(default, 10_001, "s")
