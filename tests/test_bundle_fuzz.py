"""Fuzz the two decoders that read what a paused run left in the store (spec sections 7, 9).

`decode_bundle(data, run_id)` must return a valid artifacts table or raise BundleError;
`checkpoint_from_bytes(data, run_id)` must return a valid Checkpoint or raise
CheckpointCorrupt. Never any other exception, whatever the bytes: random bytes, mutations
(byte flips, truncations, insertions, deletions, duplications) of valid bundles and
checkpoints, hand-built CBOR with lying length headers, deep nesting and unknown tags.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stageline.core.checkpoint import (
    BUNDLE_FORMAT,
    Checkpoint,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
    decode_bundle,
    encode_bundle,
)
from stageline.core.codec import DEFAULT_MAX_BYTES
from stageline.core.errors import BundleError, CheckpointCorrupt
from stageline.core.patch import find_unstorable

pytestmark = pytest.mark.timeout(60)

RUN_ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HUGE = [2**31, 2**32 - 1, 2**32, 2**60, 2**63, 2**64 - 1]

# --------------------------------------------------------------------------- the oracles


def check_bundle(data: bytes, run_id: str = RUN_ID, **kwargs: Any) -> dict[str, Any] | None:
    """decode_bundle returns a valid artifacts table or raises BundleError; nothing else."""
    try:
        artifacts = decode_bundle(data, run_id, **kwargs)
    except BundleError as exc:
        assert str(exc), "a BundleError without a message"
        return None
    assert type(artifacts) is dict
    for namespace, table in artifacts.items():
        assert type(namespace) is str and type(table) is dict
        assert all(type(key) is str for key in table)
    assert find_unstorable(artifacts) is None
    return artifacts


def check_checkpoint(data: bytes, run_id: str = RUN_ID) -> Checkpoint | None:
    """checkpoint_from_bytes returns a valid Checkpoint or raises CheckpointCorrupt."""
    try:
        checkpoint = checkpoint_from_bytes(data, run_id)
    except CheckpointCorrupt as exc:
        assert str(exc), "a CheckpointCorrupt without a message"
        return None
    assert isinstance(checkpoint, Checkpoint)
    for name in (
        "run_id",
        "pipeline_id",
        "resume_at",
        "paused_at_stage_id",
        "paused_at_stage_label",
        "paused_on",
    ):
        assert type(getattr(checkpoint, name)) is str, name
    assert type(checkpoint.pipeline_version) is int
    assert type(checkpoint.children) is dict
    assert checkpoint.container_bundle is None or type(checkpoint.container_bundle) is bytes
    return checkpoint


# --------------------------------------------------------------------------- valid inputs

LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**100), max_value=2**100)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.datetimes(timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-5))]))
    | st.decimals(allow_nan=False, allow_infinity=False)
)
VALUES = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=12,
)
ARTIFACTS = st.dictionaries(
    st.sampled_from(["", "p", "p/child", "__results__"]),
    st.dictionaries(st.text(max_size=6), VALUES, max_size=3),
    max_size=3,
)
NAMES = st.text(min_size=1, max_size=10)
CHECKPOINTS = st.builds(
    Checkpoint,
    run_id=st.just(RUN_ID),
    pipeline_id=NAMES,
    pipeline_version=st.integers(min_value=0, max_value=2**40),
    resume_at=NAMES,
    paused_at_stage_id=NAMES,
    paused_at_stage_label=NAMES,
    paused_on=st.datetimes(timezones=st.just(dt.UTC)).map(lambda d: d.isoformat()),
    children=st.dictionaries(NAMES, VALUES, max_size=2),
    container_bundle=st.none() | st.binary(max_size=40),
)


def bundle_of(artifacts: dict[str, Any]) -> bytes:
    return encode_bundle(RUN_ID, artifacts)


def same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down (True is not 1)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is float and a == 0.0:
        return math.copysign(1.0, a) == math.copysign(1.0, b)
    if type(a) is dt.datetime:
        return a == b and a.utcoffset() == b.utcoffset()
    return bool(a == b)


# --------------------------------------------------------------------------- mutations


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` after 1-4 random edits."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "dup"]))
        at = draw(st.integers(0, max(len(buf) - 1, 0)))
        if kind == "flip" and buf:
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and buf:
            buf[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del buf[at:]
        elif kind == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=9))
        elif kind == "delete":
            del buf[at : at + draw(st.integers(1, 8))]
        elif kind == "dup":
            buf[at:at] = buf[at : at + draw(st.integers(1, 16))]
    return bytes(buf)


# --------------------------------------------------------------------------- raw CBOR


def head(major: int, arg: int) -> bytes:
    """A CBOR head: major type and argument (the length, count, tag or value)."""
    if arg < 24:
        return bytes([major << 5 | arg])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if arg < 1 << (8 * size):
            return bytes([major << 5 | info]) + arg.to_bytes(size, "big")
    raise ValueError(arg)


TAGS = st.sampled_from(
    [0, 1, 2, 3, 4, 5, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 32, 33, 34, 35, 36, 37, 52,
     54, 100, 256, 258, 259, 260, 261, 1004, 55799, 9999, 2**32, 2**64 - 1]
) | st.integers(0, 2**64 - 1)  # fmt: skip
ARGS = st.integers(0, 40) | st.sampled_from(HUGE)
SCALARS = st.one_of(
    st.builds(head, st.sampled_from([0, 1]), ARGS),  # integers
    st.builds(lambda b: head(2, len(b)) + b, st.binary(max_size=12)),
    st.builds(lambda t: head(3, len(t.encode())) + t.encode(), st.text(max_size=8)),
    st.builds(lambda b: head(3, len(b)) + b, st.binary(max_size=8)),  # maybe not UTF-8
    st.builds(lambda n, b: head(n, 2**60) + b, st.sampled_from([2, 3]), st.binary(max_size=8)),
    st.sampled_from([b"\xf4", b"\xf5", b"\xf6", b"\xf7", b"\xff", b"\xf8\x20", b"\xf0"]),
    st.sampled_from([b"\xf9\x7e\x00", b"\xf9\x7c\x00", b"\xfa\x7f\xc0\x00\x00"]),  # nan, inf
    st.builds(lambda b: b"\xfb" + b, st.binary(min_size=8, max_size=8)),
    st.builds(lambda b: b"\x5f" + b + b"\xff", st.binary(max_size=6)),  # indefinite, bad chunk
)


def _containers(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    items = st.lists(children, max_size=4)
    return st.one_of(
        st.builds(lambda xs: head(4, len(xs)) + b"".join(xs), items),
        st.builds(lambda xs, n: head(4, n) + b"".join(xs), items, st.sampled_from(HUGE)),
        st.builds(lambda xs: b"\x9f" + b"".join(xs) + b"\xff", items),
        st.builds(lambda xs: head(5, len(xs) // 2) + b"".join(xs), items),
        st.builds(lambda xs: b"\xbf" + b"".join(xs) + b"\xff", items),
        st.builds(lambda t, x: head(6, t) + x, TAGS, children),
        st.builds(lambda x: head(5, 1) + head(3, 1) + b"k" + x, children),
    )


RAW_CBOR = st.recursive(SCALARS, _containers, max_leaves=16)


def in_bundle(item: bytes, run_id: str = RUN_ID) -> bytes:
    """A well-formed bundle header whose only artifact value is the raw CBOR `item`."""
    return (
        head(5, 4)
        + cbor2.dumps("format")
        + cbor2.dumps(BUNDLE_FORMAT)
        + cbor2.dumps("version")
        + cbor2.dumps(1)
        + cbor2.dumps("run_id")
        + cbor2.dumps(run_id)
        + cbor2.dumps("artifacts")
        + head(5, 1)
        + cbor2.dumps("p")
        + head(5, 1)
        + cbor2.dumps("k")
        + item
    )


CHECKPOINT_FIELDS = [
    "v",
    "run_id",
    "pipeline_id",
    "pipeline_version",
    "resume_at",
    "paused_at_stage_id",
    "paused_at_stage_label",
    "paused_on",
    "children",
    "container_bundle",
]


def in_checkpoint(field: str, item: bytes) -> bytes:
    """A valid checkpoint record with `field`'s value replaced by the raw CBOR `item`."""
    record = cbor2.loads(
        checkpoint_to_bytes(
            Checkpoint(RUN_ID, "p", 1, "s3", "s1", "S1", "2024-09-17T12:00:00+00:00")
        )
    )
    record.setdefault("container_bundle", b"")
    parts = [head(5, len(record))]
    for key, value in record.items():
        parts.append(cbor2.dumps(key))
        parts.append(item if key == field else cbor2.dumps(value))
    return b"".join(parts)


# --------------------------------------------------------------------------- properties


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data):
    check_bundle(data)
    check_checkpoint(data)


@FUZZ
@given(ARTIFACTS)
def test_valid_bundles_round_trip(artifacts):
    assert same(check_bundle(bundle_of(artifacts)), artifacts)


@FUZZ
@given(CHECKPOINTS)
def test_valid_checkpoints_round_trip(checkpoint):
    decoded = check_checkpoint(checkpoint_to_bytes(checkpoint))
    assert decoded is not None
    assert decoded.with_bundle(None) == checkpoint.with_bundle(None)  # children: no float -0.0
    assert decoded.container_bundle == checkpoint.container_bundle


@FUZZ
@given(st.data(), ARTIFACTS)
def test_mutated_bundles(data, artifacts):
    check_bundle(data.draw(mutated(bundle_of(artifacts))))


@FUZZ
@given(st.data(), CHECKPOINTS)
def test_mutated_checkpoints(data, checkpoint):
    check_checkpoint(data.draw(mutated(checkpoint_to_bytes(checkpoint))))


@FUZZ
@given(st.data(), CHECKPOINTS, ARTIFACTS)
def test_mutated_bundle_inside_a_checkpoint(data, checkpoint, artifacts):
    """A checkpoint whose bundle bytes are damaged still decodes (the bundle is opaque);
    the bundle itself then fails cleanly."""
    bundle = data.draw(mutated(bundle_of(artifacts)))
    decoded = check_checkpoint(checkpoint_to_bytes(checkpoint.with_bundle(bundle)))
    assert decoded is not None and decoded.container_bundle == bundle
    check_bundle(decoded.container_bundle)


@FUZZ
@given(RAW_CBOR)
def test_raw_cbor_alone(item):
    check_bundle(item)
    check_checkpoint(item)


@FUZZ
@given(RAW_CBOR)
def test_raw_cbor_inside_a_bundle(item):
    check_bundle(in_bundle(item))


@FUZZ
@given(st.sampled_from(CHECKPOINT_FIELDS), RAW_CBOR)
def test_raw_cbor_inside_a_checkpoint(field, item):
    check_checkpoint(in_checkpoint(field, item))


# --------------------------------------------------------------------------- fixed cases


@pytest.mark.parametrize("major", [2, 3, 4, 5])
@pytest.mark.parametrize("length", HUGE)
def test_huge_declared_lengths(major, length):
    for data in (head(major, length), head(major, length) + b"abc", in_bundle(head(major, length))):
        assert check_bundle(data) is None
        assert check_checkpoint(data) is None
    for field in CHECKPOINT_FIELDS:
        assert check_checkpoint(in_checkpoint(field, head(major, length) + b"x")) is None


def test_huge_declared_chunk_in_an_indefinite_string():
    for data in (b"\x5f" + head(2, 2**60) + b"ab\xff", b"\x7f" + head(3, 2**62) + b"ab\xff"):
        assert check_bundle(in_bundle(data)) is None
        assert check_checkpoint(data) is None


def nest(depth: int, open_: bytes, leaf: bytes = b"\x00") -> bytes:
    return open_ * depth + leaf


@pytest.mark.parametrize(
    "opener",
    [
        pytest.param(b"\x81", id="arrays"),
        pytest.param(b"\xa1\x61k", id="maps"),
        pytest.param(b"\x9f", id="indefinite-arrays"),  # never closed: truncated as well
        pytest.param(b"\xc2", id="bignum-tags"),
        pytest.param(b"\xd9\x27\x0f", id="unknown-tags"),
        pytest.param(b"\x81\xa1\x61k", id="mixed"),
    ],
)
@pytest.mark.parametrize("depth", [140, 149, 150, 151, 199, 200, 201, 1_000, 100_000])
def test_deep_nesting(opener, depth):
    check_bundle(nest(depth, opener))
    check_bundle(in_bundle(nest(depth, opener)))
    check_checkpoint(nest(depth, opener))
    check_checkpoint(in_checkpoint("children", nest(depth, opener)))


@pytest.mark.parametrize("depth", [140, 147, 148, 149, 150, 151, 199, 200, 201])
def test_deep_valid_artifacts_decode_or_fail_cleanly(depth):
    value: Any = 0
    for _ in range(depth):
        value = {"k": value}
    try:
        data = bundle_of({"p": {"k": value}})
    except BundleError:
        return  # refused at encode time: fine, nothing unreadable was written
    assert same(check_bundle(data), {"p": {"k": value}})


@pytest.mark.parametrize(
    "tag", [5, 21, 24, 25, 28, 29, 30, 35, 36, 37, 52, 54, 256, 258, 259, 1004, 55799, 9999,
            2**32, 2**64 - 1]
)  # fmt: skip
def test_unknown_and_refused_tags(tag):
    for payload in (b"\x00", b"\x80", b"\xa0", b"\x41a", b"\x82\x01\x02"):
        item = head(6, tag) + payload
        with pytest.raises(BundleError, match=str(tag)):
            decode_bundle(in_bundle(item), RUN_ID)
        with pytest.raises(CheckpointCorrupt, match=str(tag)):
            checkpoint_from_bytes(in_checkpoint("children", item), RUN_ID)


def test_a_bundle_of_another_run_or_format():
    with pytest.raises(BundleError, match="another run"):
        decode_bundle(bundle_of({"p": {"k": 1}}), "some-other-run")
    with pytest.raises(BundleError, match="header"):
        decode_bundle(cbor2.dumps({"format": "x", "version": 1}), RUN_ID)
    with pytest.raises(BundleError, match="version"):
        decode_bundle(cbor2.dumps({"format": BUNDLE_FORMAT, "version": 2}), RUN_ID)
    with pytest.raises(BundleError, match="artifacts"):
        decode_bundle(
            cbor2.dumps(
                {"format": BUNDLE_FORMAT, "version": 1, "run_id": RUN_ID, "artifacts": {"p": 1}}
            ),
            RUN_ID,
        )


BIG = 10**5000  # a bignum with more digits than int -> str allows (sys.int_info)


@pytest.mark.parametrize(
    "record",
    [
        pytest.param({"format": BUNDLE_FORMAT, "version": BIG}, id="version"),
        pytest.param({"format": BUNDLE_FORMAT, "version": 1, "run_id": BIG}, id="run_id"),
        pytest.param({BIG: 1}, id="key"),
        pytest.param(
            {"format": BUNDLE_FORMAT, "version": 1, "run_id": RUN_ID, "artifacts": {"p": {BIG: 1}}},
            id="artifact-key",
        ),
    ],
)
def test_huge_integers_in_the_wrong_place(record):
    """Bignums are valid CBOR state (ints); where they do not belong the error message must
    still be built (repr of an int over 4300 digits raises ValueError)."""
    data = cbor2.dumps(record)
    assert check_bundle(data) is None
    assert check_checkpoint(data) is None


def test_huge_integer_as_checkpoint_version():
    assert check_checkpoint(cbor2.dumps({"v": BIG})) is None


def test_huge_integers_where_they_belong():
    assert check_bundle(bundle_of({"p": {"k": BIG, "l": [-BIG]}})) == {"p": {"k": BIG, "l": [-BIG]}}


def test_oversized_bundle_names_the_limit():
    data = bundle_of({"p": {"blob": b"x" * 4096}})
    limit = len(data) - 1
    with pytest.raises(BundleError, match=rf"\b{limit}\b") as info:
        decode_bundle(data, RUN_ID, max_bytes=limit)
    assert str(len(data)) in str(info.value) and "max_bundle_bytes" in str(info.value)
    assert check_bundle(data, max_bytes=len(data)) == {"p": {"blob": b"x" * 4096}}
    with pytest.raises(BundleError, match=rf"max_bundle_bytes={limit}\b"):
        encode_bundle(RUN_ID, {"p": {"blob": b"x" * 4096}}, max_bytes=limit)


def test_oversized_is_refused_before_decoding():
    """Over the limit, even garbage is refused for its size, not parsed."""
    data = b"\xff" * 2048
    with pytest.raises(BundleError, match="over the limit of 1024 bytes"):
        decode_bundle(data, RUN_ID, max_bytes=1024)
    assert DEFAULT_MAX_BYTES == 64 * 1024 * 1024


def test_non_bytes_input():
    for value in (None, "text", 12, [1], bytearray(bundle_of({})), memoryview(bundle_of({}))):
        check_bundle(value)  # type: ignore[arg-type]
        check_checkpoint(value)  # type: ignore[arg-type]


def test_unusual_but_valid_scalars_in_artifacts():
    """NaN, infinities, -0.0, aware datetimes and Decimals come back as the same types."""
    values = {
        "nan": float("nan"),
        "inf": float("inf"),
        "neg": -0.0,
        "when": dt.datetime(1, 1, 1, tzinfo=dt.UTC),
        "late": dt.datetime(9999, 12, 31, 23, 59, tzinfo=dt.timezone(dt.timedelta(hours=14))),
        "dec": Decimal("-1.000E-400"),
    }
    decoded = check_bundle(bundle_of({"p": values}))
    assert decoded is not None
    got = decoded["p"]
    assert math.isnan(got.pop("nan"))
    values.pop("nan")
    assert same(got, values)


# --------------------------------------------------------------------------- memory


HOSTILE = [
    *(head(major, n) + b"x" for major in (2, 3, 4, 5) for n in (2**28, 2**31, 2**40, 2**64 - 1)),
    b"\x9f" * 100_000,  # deep indefinite arrays, never closed
    b"\x81" * 100_000 + b"\x00",
    head(6, 4) + cbor2.dumps([2**63, 1]),  # Decimal with a huge exponent
    head(6, 2) + head(2, 2**40) + b"\xff" * 64,  # a bignum that lies about its length
    b"\x5f" + b"\x41a" * 10_000 + b"\xff",  # 10,000 one-byte chunks
]


@pytest.mark.parametrize("item", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_input_decodes_in_bounded_memory(item):
    """Declared lengths are never trusted: memory stays within a small multiple of the
    input (plus a fixed allowance), whatever the header claims."""
    import tracemalloc

    tracemalloc.start()
    try:
        for data in (item, in_bundle(item)):
            check_bundle(data)
            check_checkpoint(data)
            check_checkpoint(in_checkpoint("children", item))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * len(item) + (8 << 20), f"peak {peak} bytes for {len(item)} bytes of input"
