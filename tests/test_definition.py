"""Pipeline / Stage / Step / Pause: construction, defaults, ordering, frozenness, validation."""

from __future__ import annotations

import dataclasses

import pytest

from stageline.core.definition import DELETE, TERMINATE, Pause, Pipeline, Stage, Step
from stageline.core.errors import DefinitionError, StagelineError

pytestmark = pytest.mark.timeout(30)


def act(state, ctx):
    return None


async def async_act(state, ctx):
    return None


def route(state, results):
    return None


def one_stage(stage_id: str = "s", order: int = 1) -> Stage:
    return Stage(stage_id, order, steps=[Step("x", act)])


def problems_of(*args, **kwargs) -> tuple[str, ...]:
    with pytest.raises(DefinitionError) as info:
        Pipeline(*args, **kwargs)
    return info.value.problems


# --------------------------------------------------------------------------- construction


def test_step_defaults():
    step = Step("check", act)
    assert step.id == "check"
    assert step.action is act
    assert step.label == "check"
    assert step.timeout is None
    assert step.retries == 0
    assert step.retry_backoff == 0.0


def test_step_explicit_values():
    step = Step("check", async_act, label="Check it", timeout=5.0, retries=2, retry_backoff=0.5)
    assert (step.label, step.timeout, step.retries, step.retry_backoff) == (
        "Check it",
        5.0,
        2,
        0.5,
    )
    assert step.action is async_act


def test_step_knows_whether_its_action_is_async():
    assert Step("a", async_act).is_async is True
    assert Step("s", act).is_async is False


def test_step_arguments_after_action_are_keyword_only():
    with pytest.raises(TypeError):
        Step("check", act, "label")  # type: ignore[misc]


def test_stage_defaults_and_tuples():
    steps = [Step("a", act), Step("b", act)]
    stage = Stage("validate", 3, steps=steps)
    assert stage.label == "validate"
    assert stage.order == 3
    assert stage.steps == tuple(steps)
    assert isinstance(stage.steps, tuple)
    assert stage.pipelines == ()
    assert stage.router is None
    assert stage.timeout is None


def test_stage_accepts_any_iterable_of_steps():
    stage = Stage("s", 1, steps=(Step(i, act) for i in ("a", "b")))
    assert [s.id for s in stage.steps] == ["a", "b"]


def test_stage_explicit_label_and_router():
    stage = Stage("decide", 1, label="Decide", router=route, timeout=2.5)
    assert stage.label == "Decide"
    assert stage.router is route
    assert stage.timeout == 2.5


def test_stage_arguments_after_order_are_keyword_only():
    with pytest.raises(TypeError):
        Stage("s", 1, "label")  # type: ignore[misc]


def test_pipeline_defaults():
    pipeline = Pipeline("checkout", [one_stage()])
    assert pipeline.id == "checkout"
    assert pipeline.label == "checkout"
    assert pipeline.version == 1
    assert pipeline.max_stage_runs == 10_000
    assert isinstance(pipeline.stages, tuple)


def test_pipeline_explicit_values():
    pipeline = Pipeline("checkout", [one_stage()], label="Checkout", version=3, max_stage_runs=7)
    assert (pipeline.label, pipeline.version, pipeline.max_stage_runs) == ("Checkout", 3, 7)


def test_spec_example_constructs():
    checkout = Pipeline(
        "checkout",
        [
            Stage(
                "validate",
                order=1,
                steps=[Step("check", act, timeout=5.0, retries=2)],
                router=route,
            ),
            Stage("approve", order=2, steps=[Step("ask", act)]),
            Stage("ship", order=3, steps=[Step("label", act), Step("notify", async_act)]),
        ],
        version=1,
    )
    assert checkout.stage_ids == ("validate", "approve", "ship")
    assert checkout.first_stage.id == "validate"


def test_pure_decision_stage_needs_only_a_router():
    pipeline = Pipeline("p", [Stage("decide", 1, router=route)])
    assert pipeline.first_stage.steps == ()
    assert pipeline.first_stage.pipelines == ()


def test_stage_with_child_pipelines():
    child_a = Pipeline("billing", [one_stage()])
    child_b = Pipeline("shipping", [one_stage()])
    parent = Pipeline("parent", [Stage("fanout", 1, pipelines=[child_a, child_b])])
    assert parent.first_stage.pipelines == (child_a, child_b)


def test_stages_accept_a_generator():
    pipeline = Pipeline("p", (one_stage(i, n) for n, i in enumerate("cab")))
    assert pipeline.stage_ids == ("c", "a", "b")


# --------------------------------------------------------------------------- ordering


def test_stages_are_sorted_by_order_not_position():
    pipeline = Pipeline(
        "p",
        [one_stage("ship", 30), one_stage("validate", -5), one_stage("approve", 7)],
    )
    assert pipeline.stage_ids == ("validate", "approve", "ship")
    assert [s.order for s in pipeline.stages] == [-5, 7, 30]
    assert pipeline.first_stage.id == "validate"


def test_next_stage_follows_order_and_ends_with_none():
    pipeline = Pipeline("p", [one_stage("c", 3), one_stage("a", 1), one_stage("b", 2)])
    assert pipeline.next_stage_id("a") == "b"
    assert pipeline.next_stage_id("b") == "c"
    assert pipeline.next_stage_id("c") is None


def test_stage_lookup():
    pipeline = Pipeline("p", [one_stage("a", 1), one_stage("b", 2)])
    assert pipeline.stage("b").id == "b"
    assert pipeline.has_stage("a")
    assert not pipeline.has_stage("zz")
    assert not pipeline.has_stage(1)
    assert not pipeline.has_stage(None)
    with pytest.raises(KeyError):
        pipeline.stage("zz")


def test_steps_keep_definition_order():
    stage = Stage("s", 1, steps=[Step("z", act), Step("a", act), Step("m", act)])
    pipeline = Pipeline("p", [stage])
    assert [s.id for s in pipeline.first_stage.steps] == ["z", "a", "m"]


# --------------------------------------------------------------------------- frozen


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        (Step("x", act), "retries"),
        (Step("x", act), "id"),
        (one_stage(), "order"),
        (one_stage(), "steps"),
        (Pipeline("p", [one_stage()]), "id"),
        (Pipeline("p", [one_stage()]), "stages"),
        (Pause("s"), "resume_at"),
    ],
)
def test_definitions_are_frozen(obj, field):
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, field, getattr(obj, field))


def test_definitions_have_no_instance_dict():
    # slots=True: no stray attributes can be attached either
    for obj in (Step("x", act), one_stage(), Pipeline("p", [one_stage()]), Pause("s")):
        with pytest.raises((AttributeError, TypeError)):
            obj.extra = 1  # type: ignore[attr-defined]


def test_definitions_are_hashable_and_compare_by_value():
    a = Pipeline("p", [one_stage("a", 1), one_stage("b", 2)])
    b = Pipeline("p", [one_stage("b", 2), one_stage("a", 1)])
    assert a == b
    assert hash(a) == hash(b)
    assert Step("x", act) == Step("x", act)
    assert Step("x", act) != Step("x", act, retries=1)


def test_replace_on_stage():
    stage = dataclasses.replace(one_stage("s", 1), order=5)
    assert stage.order == 5
    assert stage.label == "s"


def test_replace_on_step():
    step = dataclasses.replace(Step("x", act), retries=3)
    assert step.retries == 3
    assert step.label == "x"


def test_replace_on_pipeline():
    pipeline = Pipeline("p", [one_stage()])
    bumped = dataclasses.replace(pipeline, version=2)
    assert bumped.version == 2
    assert bumped.stage_ids == pipeline.stage_ids


def test_pause_defaults():
    pause = Pause("ship")
    assert (pause.resume_at, pause.timeout, pause.persist) == ("ship", None, False)


def test_sentinels():
    assert repr(TERMINATE) == "TERMINATE"
    assert repr(DELETE) == "DELETE"
    assert TERMINATE is not DELETE


# --------------------------------------------------------------------------- validation


def test_definition_error_is_a_stageline_error():
    assert issubclass(DefinitionError, StagelineError)


@pytest.mark.parametrize("bad_id", ["", "   ", None, 5])
def test_bad_pipeline_id(bad_id):
    problems = problems_of(bad_id, [one_stage()])
    assert len(problems) == 1
    assert "pipeline id" in problems[0]
    assert repr(bad_id) in problems[0]


@pytest.mark.parametrize("stages", [[], None])
def test_pipeline_without_stages(stages):
    problems = problems_of("p", stages)
    assert problems == ("a pipeline needs at least one Stage",)


def test_non_stage_in_stages():
    problems = problems_of("p", [one_stage(), "nope"])
    assert len(problems) == 1
    assert "stages[1]" in problems[0]
    assert "str" in problems[0]


@pytest.mark.parametrize("bad_id", ["", "  ", None])
def test_empty_stage_id(bad_id):
    (problem,) = problems_of("p", [Stage(bad_id, 1, steps=[Step("x", act)])])
    assert "stages[0]" in problem
    assert "id must be a non-empty string" in problem


def test_duplicate_stage_id():
    (problem,) = problems_of("p", [one_stage("a", 1), one_stage("a", 2)])
    assert "'a'" in problem
    assert "duplicate stage id" in problem


def test_duplicate_order_names_both_stages():
    (problem,) = problems_of("p", [one_stage("a", 1), one_stage("b", 1)])
    assert "duplicate order 1" in problem
    assert "'a'" in problem
    assert "'b'" in problem


@pytest.mark.parametrize("order", [1.5, "1", None, True])
def test_order_must_be_an_int(order):
    (problem,) = problems_of("p", [one_stage("a", order)])
    assert "order must be an integer" in problem


def test_steps_and_pipelines_on_one_stage():
    child = Pipeline("child", [one_stage()])
    (problem,) = problems_of("p", [Stage("s", 1, steps=[Step("x", act)], pipelines=[child])])
    assert "'s'" in problem
    assert "both steps and pipelines" in problem


def test_stage_with_nothing_to_do():
    (problem,) = problems_of("p", [Stage("idle", 1)])
    assert "'idle'" in problem
    assert "nothing to do" in problem


def test_non_callable_router():
    (problem,) = problems_of("p", [Stage("s", 1, router="next")])
    assert "router must be callable" in problem
    assert "str" in problem


def test_non_callable_action():
    (problem,) = problems_of("p", [Stage("s", 1, steps=[Step("x", 42)])])
    assert "step 'x'" in problem
    assert "action must be callable" in problem
    assert "int" in problem


def test_step_id_problems():
    problems = problems_of(
        "p", [Stage("s", 1, steps=[Step("", act), Step("dup", act), Step("dup", act)])]
    )
    assert len(problems) == 2
    assert any("steps[0]" in p and "id must be a non-empty string" in p for p in problems)
    assert any("step 'dup'" in p and "duplicate step id" in p for p in problems)


def test_same_step_id_in_different_stages_is_fine():
    Pipeline("p", [one_stage("a", 1), one_stage("b", 2)])  # both have step "x"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"timeout": -1.0}, "timeout must be None or >= 0"),
        ({"timeout": float("nan")}, "timeout must be None or >= 0"),
        ({"timeout": "5"}, "timeout must be None or >= 0"),
        ({"retries": -1}, "retries must be an integer >= 0"),
        ({"retries": 1.5}, "retries must be an integer >= 0"),
        ({"retries": True}, "retries must be an integer >= 0"),
        ({"retry_backoff": -0.1}, "retry_backoff must be >= 0"),
        ({"retry_backoff": None}, "retry_backoff must be >= 0"),
    ],
)
def test_bad_step_numbers(kwargs, needle):
    (problem,) = problems_of("p", [Stage("s", 1, steps=[Step("x", act, **kwargs)])])
    assert "stage 's' step 'x'" in problem
    assert needle in problem
    assert repr(next(iter(kwargs.values()))) in problem


def test_zero_timeouts_and_backoff_are_allowed():
    Pipeline(
        "p",
        [Stage("s", 1, timeout=0, steps=[Step("x", act, timeout=0, retry_backoff=0, retries=0)])],
    )


def test_negative_stage_timeout():
    (problem,) = problems_of("p", [Stage("s", 1, steps=[Step("x", act)], timeout=-2)])
    assert "stage 's'" in problem
    assert "timeout must be None or >= 0" in problem


@pytest.mark.parametrize("version", [0, -1, 1.0, "1", True])
def test_bad_version(version):
    (problem,) = problems_of("p", [one_stage()], version=version)
    assert "version must be an integer >= 1" in problem


@pytest.mark.parametrize("runs", [0, -1, 2.5])
def test_bad_max_stage_runs(runs):
    (problem,) = problems_of("p", [one_stage()], max_stage_runs=runs)
    assert "max_stage_runs must be an integer >= 1" in problem


def test_non_step_in_steps_and_non_pipeline_in_pipelines():
    problems = problems_of(
        "p", [Stage("a", 1, steps=["step"]), Stage("b", 2, pipelines=[object()])]
    )
    assert len(problems) == 2
    assert any("steps[0] is str, expected a Step" in p for p in problems)
    assert any("pipelines[0] is object, expected a Pipeline" in p for p in problems)


def test_duplicate_child_pipeline_id():
    child = Pipeline("child", [one_stage()])
    (problem,) = problems_of("p", [Stage("fan", 1, pipelines=[child, child])])
    assert "duplicate child pipeline id 'child'" in problem


def test_pipeline_that_contains_itself_directly():
    impostor = Pipeline("outer", [one_stage()])
    (problem,) = problems_of("outer", [Stage("x", 1, pipelines=[impostor])])
    assert "contains itself" in problem
    assert "outer -> outer" in problem
    assert "'x'" in problem


def test_pipeline_that_contains_itself_deeply():
    innermost = Pipeline("outer", [one_stage()])
    middle = Pipeline("middle", [Stage("m", 1, pipelines=[innermost])])
    (problem,) = problems_of("outer", [Stage("x", 1, pipelines=[middle])])
    assert "contains itself" in problem
    assert "outer -> middle -> outer" in problem


def test_nested_children_with_other_ids_are_fine():
    leaf = Pipeline("leaf", [one_stage()])
    middle = Pipeline("middle", [Stage("m", 1, pipelines=[leaf])])
    Pipeline("outer", [Stage("x", 1, pipelines=[middle])])


def test_one_error_lists_every_problem():
    child = Pipeline("child", [one_stage()])
    self_child = Pipeline("bad", [one_stage()])
    stages = [
        Stage("", 1, steps=[Step("x", act)]),  # empty stage id
        Stage("dup", 2, steps=[Step("x", act)]),
        Stage("dup", 3, steps=[Step("x", act)]),  # duplicate id
        Stage("same_order", 2, steps=[Step("x", act)]),  # duplicate order
        Stage("both", 4, steps=[Step("x", act)], pipelines=[child]),  # steps and pipelines
        Stage("idle", 5),  # nothing to do
        Stage("bad_router", 6, router=123),  # non-callable router
        Stage("bad_action", 7, steps=[Step("x", "not callable")]),  # non-callable action
        Stage(
            "bad_numbers",
            8,
            timeout=-1,
            steps=[Step("y", act, timeout=-1, retries=-1, retry_backoff=-1)],
        ),
        Stage("loop", 9, pipelines=[self_child]),  # contains itself
    ]
    with pytest.raises(DefinitionError) as info:
        Pipeline("bad", stages, version=0)
    error = info.value
    problems = error.problems
    expected = [
        "version must be an integer >= 1",
        "stages[0]: id must be a non-empty string",
        "stage 'dup': duplicate stage id",
        "stage 'same_order': duplicate order 2 (also used by 'dup')",
        "stage 'both': has both steps and pipelines",
        "stage 'idle': has no steps, no pipelines and no router",
        "stage 'bad_router': router must be callable",
        "stage 'bad_action' step 'x': action must be callable",
        "stage 'bad_numbers': timeout must be None or >= 0",
        "stage 'bad_numbers' step 'y': timeout must be None or >= 0",
        "stage 'bad_numbers' step 'y': retries must be an integer >= 0",
        "stage 'bad_numbers' step 'y': retry_backoff must be >= 0",
        "stage 'loop': pipeline contains itself (bad -> bad)",
    ]
    assert len(problems) == len(expected)
    for needle in expected:
        assert sum(needle in p for p in problems) == 1, needle

    message = str(error)
    assert error.pipeline_id == "bad"
    assert message.startswith(f"pipeline 'bad' is invalid ({len(expected)} problem(s))")
    for problem in problems:
        assert f"  - {problem}" in message
    assert isinstance(problems, tuple)


def test_problems_follow_definition_order():
    problems = problems_of("p", [Stage("b", 1), Stage("a", 2)])
    assert ["'b'" in problems[0], "'a'" in problems[1]] == [True, True]
