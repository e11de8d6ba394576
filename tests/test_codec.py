"""The cbor2 codec: round trips of every state type, an allow-list decoder, size limits, fuzz."""

from __future__ import annotations

import datetime as dt
import fractions
import math
import uuid
from decimal import Decimal
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stageline.core.codec import DEFAULT_MAX_BYTES, MAX_DEPTH, decode, encode
from stageline.core.definition import DELETE
from stageline.core.errors import BundleError, StagelineError
from stageline.core.patch import find_unstorable

pytestmark = pytest.mark.timeout(30)

UTC = dt.UTC
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (True is not 1, a list is not a tuple)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is float and math.isnan(a):
        return math.isnan(b)
    if type(a) is float and a == 0.0:
        return math.copysign(1.0, a) == math.copysign(1.0, b)
    if type(a) is dt.datetime:
        return a == b and a.utcoffset() == b.utcoffset()
    return bool(a == b)


def round_trip(value: Any) -> Any:
    return decode(encode(value))


def nested_lists(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


# --------------------------------------------------------------------------- round trips

ROUND_TRIP_VALUES = [
    pytest.param({}, id="empty-dict"),
    pytest.param([], id="empty-list"),
    pytest.param({"a": {"b": {"c": [1, [2, [3]]]}}}, id="nested"),
    pytest.param("", id="empty-str"),
    pytest.param("héllo wörld ✓ \U0001f600", id="unicode"),
    pytest.param("x" * 100_000, id="long-str"),
    pytest.param(0, id="zero"),
    pytest.param(-1, id="minus-one"),
    pytest.param(2**63 - 1, id="int64-max"),
    pytest.param(2**64 - 1, id="uint64-max"),
    pytest.param(2**64, id="bignum-positive"),
    pytest.param(-(2**64) - 1, id="bignum-negative"),
    pytest.param(2**521 - 1, id="huge-positive"),
    pytest.param(-(3**400), id="huge-negative"),
    pytest.param(1.5, id="float"),
    pytest.param(0.1, id="float-inexact"),
    pytest.param(-0.0, id="negative-zero"),
    pytest.param(5e-324, id="float-subnormal"),
    pytest.param(1.7976931348623157e308, id="float-max"),
    pytest.param(math.inf, id="inf"),
    pytest.param(-math.inf, id="minus-inf"),
    pytest.param(math.nan, id="nan"),
    pytest.param(True, id="true"),
    pytest.param(False, id="false"),
    pytest.param(None, id="none"),
    pytest.param(b"", id="empty-bytes"),
    pytest.param(bytes(range(256)), id="bytes"),
    pytest.param(dt.datetime(2024, 2, 29, 12, 30, 15, 123456, tzinfo=UTC), id="datetime-utc"),
    pytest.param(
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        id="datetime-plus-0530",
    ),
    pytest.param(
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-8))), id="datetime-minus-8"
    ),
    pytest.param(dt.datetime.min.replace(tzinfo=UTC), id="datetime-min"),
    pytest.param(dt.datetime.max.replace(tzinfo=UTC), id="datetime-max"),
    pytest.param(Decimal("1.10"), id="decimal-keeps-exponent"),
    pytest.param(Decimal("-1E+30"), id="decimal-big-exponent"),
    pytest.param(Decimal("0.000001"), id="decimal-small"),
    pytest.param(Decimal("123456789012345678901234567890.123"), id="decimal-long"),
    pytest.param(Decimal(0), id="decimal-zero"),
]


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES)
def test_round_trip(value):
    back = round_trip(value)
    assert same(back, value), (back, value)


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES)
def test_round_trip_inside_a_state_tree(value):
    state = {"order": {"value": value, "list": [value, {"again": value}]}}
    back = round_trip(state)
    assert same(back, state)


def test_decimal_keeps_its_exact_digits():
    assert str(round_trip(Decimal("1.10"))) == "1.10"
    assert str(round_trip(Decimal("-1E+30"))) == "-1E+30"


def test_datetime_keeps_its_offset():
    tz = dt.timezone(dt.timedelta(hours=-3, minutes=-30))
    back = round_trip(dt.datetime(2024, 6, 1, 8, 0, tzinfo=tz))
    assert back.utcoffset() == dt.timedelta(hours=-3, minutes=-30)


def test_zoneinfo_datetime_round_trips_to_the_same_instant():
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        paris = zoneinfo.ZoneInfo("Europe/Paris")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no tz database")
    value = dt.datetime(2024, 6, 1, 12, 0, tzinfo=paris)
    back = round_trip(value)
    assert back == value
    assert back.utcoffset() == value.utcoffset()


def test_accepts_bytearray_and_memoryview_input():
    data = encode({"a": [1, b"x"]})
    assert decode(bytearray(data)) == {"a": [1, b"x"]}
    assert decode(memoryview(data)) == {"a": [1, b"x"]}


def test_encode_returns_bytes():
    assert type(encode({"a": 1})) is bytes


def test_epoch_datetime_tag_is_accepted_and_aware():
    back = decode(cbor2.dumps(cbor2.CBORTag(1, 0)))
    assert back == dt.datetime(1970, 1, 1, tzinfo=UTC)
    assert back.tzinfo is not None


def test_delete_round_trips_only_as_a_patch():
    data = encode({"a": DELETE, "b": {"c": DELETE}, "d": 1})
    assert decode(data, patches=True) == {"a": DELETE, "b": {"c": DELETE}, "d": 1}
    assert decode(data, patches=True)["a"] is DELETE
    with pytest.raises(BundleError):
        decode(data)


# hypothesis: random state trees

LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats()
    | st.text()
    | st.binary()
    | st.datetimes(
        timezones=st.sampled_from(
            [UTC, dt.timezone(dt.timedelta(hours=9)), dt.timezone(dt.timedelta(minutes=-150))]
        )
    )
    | st.decimals(allow_nan=False, allow_infinity=False)
)
STATE_VALUES = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STATE_VALUES)
def test_prop_round_trip(value):
    assert same(round_trip(value), value)


# --------------------------------------------------------------------------- refusals: decode


@pytest.mark.parametrize(
    ("tag", "value"),
    [
        (258, [1, 2]),  # set
        (258, []),
        (36, "From: a@example.com\n\nhello"),  # MIME message
        (37, b"\x00" * 16),  # UUID
        (9999, 1),  # unknown
        (9999, {"a": 1}),
        (30, [1, 3]),  # Fraction
        (5, [1, 3]),  # bigfloat
        (35, "a+"),  # regex
        (52, b"\x7f\x00\x00\x01"),  # IPv4
        (54, b"\x00" * 16),  # IPv6
        (32, "http://example.com"),  # URI
        (28, [1]),  # shareable
        (29, 0),  # shared reference
        (100, 1),  # date (not a datetime)
        (1004, "2024-01-01"),  # date string
        (259, {1: 2}),  # immutable map
        (256, [1]),  # string references
        (2**32, 1),
    ],
)
def test_decode_refuses_tags(tag, value):
    data = cbor2.dumps(cbor2.CBORTag(tag, value))
    with pytest.raises(BundleError) as info:
        decode(data)
    assert str(tag) in str(info.value)


@pytest.mark.parametrize("tag", [258, 36, 37, 9999])
def test_decode_refuses_tags_deep_inside_a_tree(tag):
    data = cbor2.dumps({"a": [1, {"b": cbor2.CBORTag(tag, [])}]})
    with pytest.raises(BundleError):
        decode(data)


def test_decode_refuses_a_set_built_by_cbor2():
    with pytest.raises(BundleError):
        decode(cbor2.dumps({1, 2, 3}))
    with pytest.raises(BundleError):
        decode(cbor2.dumps({"a": frozenset({"x"})}))


@pytest.mark.parametrize(
    ("data", "type_name"),
    [
        (cbor2.dumps({1: "int key"}), "int"),
        (cbor2.dumps({"a": {b"k": 1}}), "bytes"),
        (b"\xa1\x80\x01", "tuple"),  # {[]: 1} - cbor2 makes the key a tuple
        (cbor2.dumps(cbor2.undefined), "Undefined"),
        (b"\xf0", "CBORSimpleValue"),  # simple(16)
        (cbor2.dumps(cbor2.CBORTag(0, "2024-01-01T00:00:00")), ""),  # naive datetime
    ],
    ids=["int-key", "bytes-key", "array-key", "undefined", "simple", "naive-datetime"],
)
def test_decode_refuses_non_state_values(data, type_name):
    with pytest.raises(BundleError) as info:
        decode(data)
    assert type_name in str(info.value)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff", b"\x62\xff\xfe", b"\x81", b"\x9f\x01", b"\x1c", b"\x5b" + b"\xff" * 8],
    ids=["empty", "break", "bad-utf8", "truncated-array", "unterminated", "reserved-ai", "huge"],
)
def test_decode_refuses_malformed_cbor(data):
    with pytest.raises(BundleError):
        decode(data)


def test_decode_refuses_deep_nesting():
    with pytest.raises(BundleError):
        decode(b"\x81" * (MAX_DEPTH + 50) + b"\x00")


def test_decode_accepts_nesting_below_the_limit():
    from stageline.core.patch import MAX_DEPTH as STATE_DEPTH

    value = nested_lists(STATE_DEPTH - 10)
    assert decode(encode(value)) == value


@pytest.mark.parametrize("data", ["text", None, 5, [1, 2]])
def test_decode_refuses_non_bytes(data):
    with pytest.raises(BundleError) as info:
        decode(data)
    assert type(data).__name__ in str(info.value)


def test_bundle_error_is_a_stageline_error():
    assert issubclass(BundleError, StagelineError)
    assert BundleError.kind == "bundle"


# --------------------------------------------------------------------------- size limit


def test_default_limit_is_64_mib():
    assert DEFAULT_MAX_BYTES == 64 * 1024 * 1024


def test_over_max_bytes_names_the_limit():
    data = encode({"blob": b"x" * 1000})
    with pytest.raises(BundleError) as info:
        decode(data, max_bytes=500, what="bundle")
    message = str(info.value)
    assert "500" in message
    assert str(len(data)) in message
    assert message.startswith("bundle")
    assert "max_bundle_bytes" in message


def test_exactly_max_bytes_is_accepted():
    data = encode({"blob": b"x" * 1000})
    assert decode(data, max_bytes=len(data)) == {"blob": b"x" * 1000}
    with pytest.raises(BundleError):
        decode(data, max_bytes=len(data) - 1)


def test_size_is_checked_before_decoding():
    # garbage that is also too big: the size is what gets reported
    with pytest.raises(BundleError) as info:
        decode(b"\xff" * 100, max_bytes=10)
    assert "10" in str(info.value)
    assert "not valid" not in str(info.value)


def test_what_names_the_data_in_errors():
    with pytest.raises(BundleError) as info:
        decode(b"\xff", what="checkpoint of run r1")
    assert str(info.value).startswith("checkpoint of run r1")


# --------------------------------------------------------------------------- refusals: encode


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (object(), "object"),
        ({"a": {"b": object()}}, "'a.b'"),
        ({"when": dt.datetime(2024, 1, 1)}, "'when'"),
        ({"a": [1, lambda: None]}, "'a[1]'"),
        ({"a": "\ud800"}, ""),
    ],
    ids=["object", "nested-object", "naive-datetime", "function-in-list", "lone-surrogate"],
)
def test_encode_refuses_unencodable_values(value, needle):
    with pytest.raises(BundleError) as info:
        encode(value)
    assert needle in str(info.value)


def refused_or_round_trips(value: Any) -> None:
    """What encode accepts, decode must give back unchanged (SPEC 9: refuse others at once)."""
    try:
        data = encode(value)
    except BundleError:
        return
    try:
        back = decode(data)
    except BundleError as exc:
        raise AssertionError(f"encode accepted {value!r} but decode refuses it: {exc}") from exc
    assert same(back, value), f"{value!r} came back as {back!r}"


@pytest.mark.parametrize(
    "value",
    [
        {1, 2},
        {"a": frozenset({"x"})},
        {"a": (1, 2)},
        {1: "int key"},
        {"a": bytearray(b"x")},
        {"a": uuid.UUID(int=1)},
        {"a": fractions.Fraction(1, 3)},
    ],
    ids=["set", "frozenset", "tuple", "int-key", "bytearray", "uuid", "fraction"],
)
def test_encode_refuses_non_state_types(value):
    refused_or_round_trips(value)


def test_encode_refuses_what_decode_would_refuse_deep_nesting():
    refused_or_round_trips({"a": nested_lists(MAX_DEPTH + 5)})


@pytest.mark.parametrize(
    "offset",
    [dt.timedelta(seconds=30), dt.timedelta(seconds=1, microseconds=500)],
    ids=["+00:00:30", "+00:00:01.0005"],
)
def test_datetime_with_odd_offset_round_trips_or_is_refused(offset):
    refused_or_round_trips({"t": dt.datetime(2024, 1, 1, tzinfo=dt.timezone(offset))})


@pytest.mark.parametrize(
    "offset",
    [dt.timedelta(minutes=19, seconds=32), dt.timedelta(seconds=-30)],
    ids=["+00:19:32", "-00:00:30"],
)
def test_datetime_with_offset_seconds_is_refused_with_a_clear_error(offset):
    """docs/concepts.md: datetimes in state have a whole-minute UTC offset. One with
    seconds in its offset (Amsterdam's 1900 LMT, +00:19:32) is refused by encode, and by
    decode when another writer stored it, each naming where it is and what to do."""
    value = {"t": dt.datetime(1900, 1, 1, tzinfo=dt.timezone(offset))}
    with pytest.raises(BundleError) as refused:
        encode(value)
    message = str(refused.value)
    assert "'t'" in message and "UTC offset is not whole minutes" in message, message
    assert "convert it to UTC" in message and "\n" not in message, message

    data = cbor2.dumps(value)  # what a writer without stageline's check makes of it
    with pytest.raises(BundleError, match=r"at 't'.*UTC offset is not whole minutes"):
        decode(data)

    # the same instant in UTC, and a whole-minute offset, round-trip (same() checks offsets)
    for tz in (UTC, dt.timezone(dt.timedelta(minutes=19))):
        ok = {"t": value["t"].astimezone(tz)}
        assert same(decode(encode(ok)), ok), ok


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_special_decimals_round_trip_or_are_refused(text):
    refused_or_round_trips({"d": Decimal(text)})


# --------------------------------------------------------------------------- fuzz


def check_decode_outcome(data: bytes, patches: bool = False) -> None:
    """decode either returns a storable value or raises BundleError; nothing else."""
    try:
        value = decode(data, patches=patches)
    except BundleError:
        return
    assert find_unstorable(value, allow_delete=patches) is None


@FUZZ
@given(st.binary(max_size=64))
def test_fuzz_random_bytes(data):
    check_decode_outcome(data)


@FUZZ
@given(st.binary(max_size=64))
def test_fuzz_random_bytes_as_patch(data):
    check_decode_outcome(data, patches=True)


@FUZZ
@given(st.sampled_from([0xC0 + n for n in range(24)] + [0xD8, 0xD9, 0xDA]), st.binary(max_size=32))
def test_fuzz_random_tag_headers(head, rest):
    check_decode_outcome(bytes([head]) + rest)


MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 4)),
)


def mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    buffer = bytearray(data)
    for kind, position, arg in mutations:
        if not buffer:
            buffer.append(arg & 0xFF)
            continue
        index = position % len(buffer)
        if kind == "flip":
            buffer[index] ^= arg
        elif kind == "set":
            buffer[index] = arg
        elif kind == "truncate":
            del buffer[index:]
        elif kind == "insert":
            buffer.insert(index, arg)
        else:
            del buffer[index : index + arg]
    return bytes(buffer)


@FUZZ
@given(STATE_VALUES, st.lists(MUTATION, min_size=1, max_size=4))
def test_fuzz_mutated_valid_encodings(value, mutations):
    check_decode_outcome(mutate(encode(value), mutations))


@FUZZ
@given(STATE_VALUES, st.lists(MUTATION, min_size=1, max_size=4))
def test_fuzz_mutated_valid_encodings_as_patch(value, mutations):
    check_decode_outcome(mutate(encode(value), mutations), patches=True)


ALLOWED_TAGS = {0, 1, 2, 3, 4}
SIMPLE = st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.binary(max_size=8)
TAGGED = st.recursive(
    SIMPLE,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=3), children, max_size=3)
        | st.builds(
            cbor2.CBORTag, st.integers(0, 2**20) | st.sampled_from(sorted(ALLOWED_TAGS)), children
        )
    ),
    max_leaves=8,
)


def tags_in(value: Any) -> set[int]:
    if isinstance(value, cbor2.CBORTag):
        return {value.tag} | tags_in(value.value)
    if isinstance(value, list):
        return set().union(*(tags_in(v) for v in value))
    if isinstance(value, dict):
        return set().union(*(tags_in(v) for v in value.values()))
    return set()


@FUZZ
@given(TAGGED)
def test_fuzz_arbitrary_tags_are_refused_unless_allowed(value):
    data = cbor2.dumps(value)
    check_decode_outcome(data)
    if tags_in(value) - ALLOWED_TAGS:
        with pytest.raises(BundleError):
            decode(data)
