"""State patches: merge semantics, merge_all, copy_state, check_patch, and merge properties."""

from __future__ import annotations

import copy
import datetime as dt
from collections import OrderedDict
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stageline.core.definition import DELETE
from stageline.core.errors import StagelineError, StepError
from stageline.core.patch import (
    PIPELINE_DATA_KEY,
    check_patch,
    copy_state,
    find_unstorable,
    leaf_paths,
    merge,
    merge_all,
    public_state,
)

pytestmark = pytest.mark.timeout(30)

UTC = dt.UTC
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- strategies

KEYS = st.sampled_from(["a", "b", "c", "d", "e"])
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**64, max_value=2**80)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.datetimes(timezones=st.just(UTC))
    | st.decimals(allow_nan=False, allow_infinity=False, places=3)
)
STATE_VALUES = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3),
    max_leaves=12,
)
STATES = st.dictionaries(KEYS, STATE_VALUES, max_size=5)


def patches(with_delete: bool) -> st.SearchStrategy[dict[str, Any]]:
    """Deep-partial patches; DELETE (if allowed) only as a dict value, where it means 'remove'."""
    values = st.lists(STATE_VALUES, max_size=3) | LEAVES
    if with_delete:
        values = values | st.just(DELETE)
    return st.recursive(
        st.dictionaries(KEYS, values, max_size=4),
        lambda children: st.dictionaries(KEYS, values | children, max_size=4),
        max_leaves=10,
    )


MISSING = object()


def read_path(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if type(tree) is not dict or key not in tree:
            return MISSING
        tree = tree[key]
    return tree


def walk(patch: dict[str, Any], prefix: tuple[str, ...] = ()):
    """(path, value) for every value in a patch, dicts included."""
    for key, value in patch.items():
        yield (*prefix, key), value
        if type(value) is dict:
            yield from walk(value, (*prefix, key))


def has_delete(tree: Any) -> bool:
    if tree is DELETE:
        return True
    if type(tree) is dict:
        return any(has_delete(v) for v in tree.values())
    if type(tree) is list:
        return any(has_delete(v) for v in tree)
    return False


# --------------------------------------------------------------------------- merge: examples


def test_dicts_merge_key_by_key():
    state = {"order": {"total": 120, "items": 3}, "user": "ann"}
    merged = merge(state, {"order": {"valid": True, "total": 130}})
    assert merged == {"order": {"total": 130, "items": 3, "valid": True}, "user": "ann"}


def test_nested_dicts_merge_at_every_depth():
    state = {"a": {"b": {"c": 1, "d": 2}, "e": 3}}
    assert merge(state, {"a": {"b": {"c": 10}}}) == {"a": {"b": {"c": 10, "d": 2}, "e": 3}}


def test_lists_replace():
    state = {"items": [1, 2, 3], "nested": {"tags": ["x", "y"]}}
    merged = merge(state, {"items": [4], "nested": {"tags": []}})
    assert merged == {"items": [4], "nested": {"tags": []}}


def test_lists_of_dicts_replace_not_merge():
    state = {"rows": [{"id": 1, "v": "a"}]}
    assert merge(state, {"rows": [{"id": 1}]}) == {"rows": [{"id": 1}]}


@pytest.mark.parametrize(
    "new", [5, "s", None, b"x", 1.5, Decimal("1.1"), dt.datetime(2024, 1, 1, tzinfo=UTC), [1]]
)
def test_non_dict_values_replace_a_subtree(new):
    assert merge({"a": {"b": 1}, "z": 0}, {"a": new}) == {"a": new, "z": 0}


def test_dict_replaces_a_scalar():
    assert merge({"a": 5}, {"a": {"b": 1}}) == {"a": {"b": 1}}


def test_none_is_a_value_not_a_delete():
    assert merge({"a": 1}, {"a": None}) == {"a": None}


def test_delete_removes_a_key():
    assert merge({"a": 1, "b": 2}, {"a": DELETE}) == {"b": 2}


def test_delete_removes_a_nested_key_and_a_subtree():
    state = {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    assert merge(state, {"a": {"b": DELETE}}) == {"a": {"c": {"d": 2}}, "e": 3}
    assert merge(state, {"a": {"c": DELETE}}) == {"a": {"b": 1}, "e": 3}
    assert merge(state, {"a": DELETE}) == {"e": 3}


def test_delete_of_a_missing_key_is_a_no_op():
    assert merge({"a": 1}, {"zz": DELETE}) == {"a": 1}
    assert merge({"a": 1}, {"zz": {"y": DELETE}}) == {"a": 1, "zz": {}}


def test_delete_inside_a_new_subtree_is_dropped():
    merged = merge({"a": 5}, {"a": {"b": DELETE, "c": 1}, "n": {"x": DELETE}})
    assert merged == {"a": {"c": 1}, "n": {}}
    assert not has_delete(merged)


def test_empty_patch_returns_an_equal_new_dict():
    state = {"a": {"b": 1}}
    merged = merge(state, {})
    assert merged == state
    assert merged is not state


def test_merge_never_mutates_its_inputs():
    state = {"a": {"b": 1, "c": [1, 2]}, "d": 4}
    patch = {"a": {"b": DELETE, "c": [3], "n": {"x": 1}}, "d": DELETE, "e": {"f": {"g": 1}}}
    before_state, before_patch = copy.deepcopy(state), copy.deepcopy(patch)
    merge(state, patch)
    assert state == before_state
    assert patch == before_patch


def test_untouched_subtrees_are_shared():
    untouched = {"deep": {"x": [1, 2]}}
    sibling = {"keep": 1}
    state = {"u": untouched, "a": {"s": sibling, "v": 1}}
    merged = merge(state, {"a": {"v": 2}})
    assert merged["u"] is untouched
    assert merged["a"]["s"] is sibling
    # the path that was written is a new dict: the original is untouched
    assert merged["a"] is not state["a"]
    assert state["a"]["v"] == 1


def test_merge_accepts_any_mapping_as_state_and_patch():
    state = MappingProxyType({"a": {"b": 1}})
    merged = merge(state, MappingProxyType({"c": 2}))
    assert merged == {"a": {"b": 1}, "c": 2}
    assert type(merged) is dict


# --------------------------------------------------------------------------- merge: properties


@FAST
@given(STATES)
def test_prop_merge_with_empty_patch_is_identity(state):
    assert merge(state, {}) == state


@FAST
@given(STATES, patches(with_delete=False))
def test_prop_every_written_leaf_reads_back(state, patch):
    merged = merge(state, patch)
    for path, value in walk(patch):
        got = read_path(merged, path)
        if type(value) is dict:
            assert type(got) is dict
        else:
            assert got == value
            assert type(got) is type(value)


@FAST
@given(STATES, patches(with_delete=True))
def test_prop_paths_the_patch_does_not_touch_are_kept(state, patch):
    merged = merge(state, patch)
    for key, value in state.items():
        if key not in patch:
            assert merged[key] is value


@FAST
@given(STATES, patches(with_delete=True))
def test_prop_deleted_keys_are_gone_and_no_delete_is_stored(state, patch):
    merged = merge(state, patch)
    for path, value in walk(patch):
        if value is DELETE:
            assert read_path(merged, path) is MISSING
    assert not has_delete(merged)
    assert find_unstorable(merged) is None


@FAST
@given(STATES, patches(with_delete=True))
def test_prop_merge_never_mutates_inputs(state, patch):
    before_state, before_patch = copy.deepcopy(state), copy.deepcopy(patch)
    merge(state, patch)
    assert state == before_state
    assert patch == before_patch


def dict_over_leaf(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True if `b` writes a dict where `a` wrote a non-dict (see the test below)."""
    for key, value in b.items():
        if key in a and type(value) is dict:
            if type(a[key]) is not dict:
                return True
            if dict_over_leaf(a[key], value):
                return True
    return False


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(STATES, patches(with_delete=False), patches(with_delete=False))
def test_prop_merge_is_associative_without_delete(state, a, b):
    assume(not dict_over_leaf(a, b))
    assert merge(merge(state, a), b) == merge(state, merge(a, b))


def test_merge_is_not_associative_when_a_dict_follows_a_leaf():
    """By design: merging `b` into the patch `a` is a state merge, not patch composition.

    `a` replaces the subtree with a scalar, so `b`'s dict then lands on nothing; merged
    together first, the combined dict merges into the state's existing subtree. The runtime
    only ever merges patches into state one at a time (merge_all), so this never shows.
    """
    state, a, b = {"k": {"old": 1}}, {"k": 5}, {"k": {"new": 2}}
    assert merge(merge(state, a), b) == {"k": {"new": 2}}
    assert merge(state, merge(a, b)) == {"k": {"old": 1, "new": 2}}


# --------------------------------------------------------------------------- merge_all


def test_merge_all_applies_in_the_given_order_later_wins():
    merged = merge_all(
        {"x": 0},
        [("first", {"a": 1, "b": {"c": 1}}), ("second", {"a": 2, "b": {"d": 2}})],
    )
    assert merged == {"x": 0, "a": 2, "b": {"c": 1, "d": 2}}
    reordered = merge_all({"x": 0}, [("second", {"a": 2}), ("first", {"a": 1})])
    assert reordered["a"] == 1


def test_merge_all_reports_each_conflicting_leaf():
    seen: list[tuple[str, str, str]] = []
    merged = merge_all(
        {},
        [
            ("label", {"a": {"b": 1, "c": 1}, "only_label": 1}),
            ("notify", {"a": {"b": 2}, "only_notify": 1}),
            ("third", {"a": {"b": 3, "c": 3}}),
        ],
        on_conflict=lambda *args: seen.append(args),
    )
    assert merged == {"a": {"b": 3, "c": 3}, "only_label": 1, "only_notify": 1}
    assert seen == [
        ("a.b", "label", "notify"),
        ("a.b", "notify", "third"),
        ("a.c", "label", "third"),
    ]


def test_merge_all_no_conflict_for_disjoint_patches():
    seen: list[tuple[str, str, str]] = []
    merge_all(
        {"a": {"b": 0}},
        [("s1", {"a": {"b": 1}}), ("s2", {"a": {"c": 2}}), ("s3", {"d": 3})],
        on_conflict=lambda *args: seen.append(args),
    )
    assert seen == []


def test_merge_all_skips_none_and_empty_patches():
    seen: list[tuple[str, str, str]] = []
    merged = merge_all(
        {"a": 1},
        [("s1", None), ("s2", {}), ("s3", {"b": 2})],
        on_conflict=lambda *args: seen.append(args),
    )
    assert merged == {"a": 1, "b": 2}
    assert seen == []


def test_merge_all_without_callback_and_with_no_patches():
    state = {"a": {"b": 1}}
    assert merge_all(state, []) == state
    assert merge_all(state, [("s", {"a": {"b": 2}}), ("t", {"a": {"b": 3}})]) == {"a": {"b": 3}}


def test_merge_all_does_not_mutate_inputs():
    state = {"a": {"b": 1}}
    patch_list = [("s1", {"a": {"b": DELETE}}), ("s2", {"a": {"c": [1]}})]
    before = copy.deepcopy((state, patch_list))
    merge_all(state, patch_list, on_conflict=lambda *a: None)
    assert (state, patch_list) == before


@pytest.mark.parametrize(
    ("earlier", "later"),
    [({"a": {"b": 1}}, {"a": DELETE}), ({"a": {"b": 1}}, {"a": 5}), ({"a": 5}, {"a": {"b": 1}})],
    ids=["delete-over-subtree", "scalar-over-subtree", "subtree-over-scalar"],
)
def test_merge_all_reports_overlapping_subtree_conflicts(earlier, later):
    seen: list[tuple[str, str, str]] = []
    merge_all({}, [("s1", earlier), ("s2", later)], on_conflict=lambda *a: seen.append(a))
    assert seen, "the overlap between s1 and s2 was not reported"


@FAST
@given(STATES, st.lists(st.tuples(st.sampled_from(["s1", "s2", "s3"]), patches(True)), max_size=4))
def test_prop_merge_all_equals_sequential_merges(state, patch_list):
    expected = state
    for _, patch in patch_list:
        expected = merge(expected, patch)
    assert merge_all(state, patch_list, on_conflict=lambda *a: None) == expected
    assert merge_all(state, patch_list) == expected


def test_leaf_paths():
    assert sorted(leaf_paths({"a": {"b": 1, "c": {"d": [1]}}, "e": DELETE, "f": {}})) == [
        "a.b",
        "a.c.d",
        "e",
        "f",
    ]


# --------------------------------------------------------------------------- copy_state


def test_copy_state_is_independent():
    blob = b"bytes"
    state = {"a": {"b": [1, {"c": 2}]}, "d": [[1], [2]], "e": blob}
    copied = copy_state(state)
    assert copied == state
    copied["a"]["b"][1]["c"] = 99
    copied["a"]["b"].append(3)
    copied["d"][0].append(5)
    copied["new"] = 1
    assert state == {"a": {"b": [1, {"c": 2}]}, "d": [[1], [2]], "e": blob}
    assert copied["e"] is blob  # immutable leaves are shared


@FAST
@given(STATES)
def test_prop_copy_state_equal_but_shares_no_container(state):
    copied = copy_state(state)
    assert copied == state

    def containers(tree: Any, out: list[Any]) -> list[Any]:
        if type(tree) in (dict, list):
            out.append(tree)
            for child in tree.values() if type(tree) is dict else tree:
                containers(child, out)
        return out

    original_ids = {id(c) for c in containers(state, [])}
    assert not original_ids & {id(c) for c in containers(copied, [])}


# --------------------------------------------------------------------------- public_state


def test_public_state_hides_the_reserved_key():
    state = {PIPELINE_DATA_KEY: {"runtime": 1}, "a": 1}
    assert public_state(state) == {"a": 1}
    assert PIPELINE_DATA_KEY in state  # not mutated
    plain = {"a": 1}
    assert public_state(plain) == plain
    assert public_state(plain) is not plain


# --------------------------------------------------------------------------- check_patch


def test_check_patch_accepts_none_and_storable_patches():
    assert check_patch(None, "w") is None
    patch = {
        "s": "x",
        "i": 2**100,
        "f": 1.5,
        "b": True,
        "n": None,
        "y": b"\x00",
        "t": dt.datetime(2024, 1, 1, tzinfo=UTC),
        "d": Decimal("1.10"),
        "l": [1, {"x": [2]}],
        "gone": DELETE,
        "nested": {"gone": DELETE},
    }
    assert check_patch(patch, "w") == patch


def test_check_patch_error_type():
    assert issubclass(StepError, StagelineError)


@pytest.mark.parametrize(
    ("patch", "path", "type_name"),
    [
        ({"a": {1, 2}}, "a", "set"),
        ({"a": {"b": {"c": object()}}}, "a.b.c", "object"),
        ({"a": [1, (2, 3)]}, "a[1]", "tuple"),
        ({"a": [{"b": [0, frozenset()]}]}, "a[0].b[1]", "frozenset"),
        ({"a": bytearray(b"x")}, "a", "bytearray"),
        ({"a": dt.date(2024, 1, 1)}, "a", "date"),
        ({"a": {"b": 1j}}, "a.b", "complex"),
        ({"a": OrderedDict(b=1)}, "a", "OrderedDict"),
        ({"a": {5: "int key"}}, "a.5", "int"),
    ],
)
def test_check_patch_names_key_path_and_type(patch, path, type_name):
    with pytest.raises(StepError) as info:
        check_patch(patch, "stage 'ship' step 'label'")
    message = str(info.value)
    assert message.startswith("stage 'ship' step 'label'")
    assert repr(path) in message
    assert type_name in message


def test_check_patch_naive_datetime():
    with pytest.raises(StepError) as info:
        check_patch({"order": {"when": dt.datetime(2024, 1, 1)}}, "step x")
    message = str(info.value)
    assert "'order.when'" in message
    assert "naive datetime" in message
    assert "tzinfo" in message


def test_check_patch_aware_datetime_any_offset():
    tz = dt.timezone(dt.timedelta(hours=-5))
    assert check_patch({"t": dt.datetime(2024, 1, 1, tzinfo=tz)}, "w") is not None


def test_check_patch_reserved_key():
    with pytest.raises(StepError) as info:
        check_patch({PIPELINE_DATA_KEY: {"x": 1}, "ok": 1}, "step x")
    message = str(info.value)
    assert "step x" in message
    assert repr(PIPELINE_DATA_KEY) in message
    assert "reserved" in message
    with pytest.raises(StepError):
        check_patch({PIPELINE_DATA_KEY: DELETE}, "step x")


def test_check_patch_reserved_key_only_at_top_level():
    assert check_patch({"user": {PIPELINE_DATA_KEY: 1}}, "w") is not None


@pytest.mark.parametrize("value", [[("a", 1)], "patch", 5, True, ("a",), DELETE])
def test_check_patch_non_mapping_return(value):
    with pytest.raises(StepError) as info:
        check_patch(value, "stage 's' step 'x'")
    message = str(info.value)
    assert "stage 's' step 'x'" in message
    assert type(value).__name__ in message
    assert "dict patch or None" in message


def test_check_patch_returns_a_plain_dict_for_a_dict():
    patch = {"a": 1}
    assert check_patch(patch, "w") is patch


@pytest.mark.parametrize(
    "patch", [MappingProxyType({"a": 1}), OrderedDict(a=1)], ids=["mappingproxy", "ordereddict"]
)
def test_check_patch_accepts_a_non_dict_mapping(patch):
    checked = check_patch(patch, "w")
    assert checked == {"a": 1}
    assert type(checked) is dict


@pytest.mark.parametrize("patch", [{"a": [DELETE]}, {"a": [{"b": DELETE}]}])
def test_check_patch_refuses_delete_inside_a_list(patch):
    try:
        check_patch(patch, "w")
    except StepError:
        return
    merged = merge({}, patch)
    assert not has_delete(merged), f"DELETE reached the state: {merged!r}"


def test_check_patch_deep_patch_fails_cleanly():
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(5000):
        deep = {"k": deep}
    # Either accept it or refuse it with a StepError; never crash with another exception.
    try:
        check_patch(deep, "w")
    except StepError:
        pass


def test_check_patch_refuses_unencodable_strings():
    try:
        check_patch({"a": {"b": "\ud800"}}, "w")
    except StepError as exc:
        assert "'a.b'" in str(exc)
    else:
        raise AssertionError("check_patch accepted a str cbor2 cannot encode")
