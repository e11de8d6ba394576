"""Decoding the SQL stores' rows one by one: one damaged row never stops the others.

A run row whose state (or another column a run cannot do without) cannot be decoded is
*damaged*: `load_run`/`get_run` of it raise StoreError naming the run, and `list_runs`
shows it with status `lifecycle.CORRUPT` (its error says what is damaged and what to do),
beside every healthy run. A damaged error record is read as a `{"kind": "corrupt"}` note
instead, so the run can still be loaded (and aborted). A mailbox request that cannot be
read is answered "failed" by the store that claims it, and skipped. Each is logged as a
warning on the `stageline` logger.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence
from typing import Any, Final

from stageline.core import lifecycle
from stageline.core.codec import DEFAULT_MAX_BYTES, decode
from stageline.core.errors import BundleError, StoreError
from stageline.core.mailbox import Request
from stageline.core.store import RunInfo, RunRecord

_log = logging.getLogger("stageline")
_log.addHandler(logging.NullHandler())  # a library never prints through logging's last resort

CORRUPT_KIND: Final = "corrupt"
_EPOCH: Final = _dt.datetime.fromtimestamp(0, _dt.UTC)

# The type each RUN_COLUMNS column must hold (None allowed where the column is nullable).
_TEXT, _INT, _NUMBER, _BYTES = (str,), (int,), (int, float), (bytes,)
_RUN_TYPES: Final[tuple[tuple[str, tuple[type, ...] | None, bool], ...]] = (
    ("run id", _TEXT, False),
    ("pipeline id", _TEXT, False),
    ("pipeline version", _INT, False),
    ("status", _TEXT, False),
    ("stage", _TEXT, True),
    ("state", _BYTES, False),
    ("checkpoint", _BYTES, True),
    ("error", None, True),  # decoded leniently: see lenient_error
    ("version", _INT, False),
    ("last seq", _INT, False),
    ("stage runs", _INT, False),
    ("creation time", _NUMBER, False),
    ("update time", _NUMBER, False),
    ("owner", _TEXT, True),
    ("lease time", _NUMBER, True),
    ("wake time", _NUMBER, True),
    ("trace", _TEXT, True),
    ("priority", _INT, False),
)


class Damaged(Exception):
    """A column of a run row cannot be decoded; the message says which and why."""


def _checked(row: Sequence[Any]) -> None:
    """Damaged naming the first column whose stored type is not the one it must hold."""
    for value, (what, types, nullable) in zip(row, _RUN_TYPES, strict=True):
        if types is None or (value is None and nullable):
            continue
        if isinstance(value, memoryview | bytearray) and types is _BYTES:
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            raise Damaged(f"its {what} holds {type(value).__name__}, not the expected type")


def _state(row: Sequence[Any], max_bytes: int) -> dict[str, Any]:
    try:
        state = decode(row[5], max_bytes=max_bytes, what="the state")
    except BundleError as exc:
        raise Damaged(f"its state cannot be decoded ({exc})") from exc
    if type(state) is not dict:
        raise Damaged(f"its state is a {type(state).__name__}, not a mapping")
    return state


def lenient_error(data: Any, run_id: Any) -> dict[str, Any] | None:
    """A run's stored error record; a note of kind "corrupt" when it cannot be decoded."""
    if data is None:
        return None
    try:
        record = decode(bytes(data), what="the error record")
        if type(record) is dict:
            return record
        problem = f"it is a {type(record).__name__}, not a mapping"
    except (BundleError, TypeError) as exc:
        problem = str(exc)
    message = (
        f"the error record of run {run_id!r} cannot be decoded ({problem}); the run's "
        "failure is unknown (its state and journal are intact)"
    )
    _log.warning("stageline store: %s", message)
    return {"kind": CORRUPT_KIND, "message": message}


def _record(row: Sequence[Any], max_bytes: int) -> RunRecord:
    _checked(row)
    return RunRecord(
        run_id=row[0],
        pipeline_id=row[1],
        pipeline_version=row[2],
        status=row[3],
        stage=row[4],
        state=_state(row, max_bytes),
        checkpoint=None if row[6] is None else bytes(row[6]),
        error=lenient_error(row[7], row[0]),
        version=row[8],
        last_seq=row[9],
        stage_runs=row[10],
        created_at=row[11],
        updated_at=row[12],
        owner=row[13],
        lease_until=row[14],
        wake_at=row[15],
        trace=row[16],
        priority=row[17],
    )


def _info(record: RunRecord) -> RunInfo:
    try:
        return record.info()
    except (ValueError, OverflowError, OSError, TypeError) as exc:
        raise Damaged(f"its times cannot be read ({exc})") from exc


def damaged_message(run_id: Any, problem: str) -> str:
    return (
        f"run {run_id!r} is damaged in this store: {problem}. Delete the run's row, or "
        "restore it from a backup; other runs are not affected"
    )


def record_from_row(row: Sequence[Any], max_bytes: int = DEFAULT_MAX_BYTES) -> RunRecord:
    """A RunRecord from a row of the SQL stores' RUN_COLUMNS, in order; StoreError naming
    the run if the row is damaged. `max_bytes` bounds the state's decoding."""
    try:
        return _record(row, max_bytes)
    except Damaged as exc:
        raise StoreError(damaged_message(row[0], str(exc))) from exc


def info_from_row(row: Sequence[Any], max_bytes: int = DEFAULT_MAX_BYTES) -> RunInfo:
    """The public view of a run row (`get_run`); StoreError naming the run if damaged."""
    try:
        return _info(_record(row, max_bytes))
    except Damaged as exc:
        raise StoreError(damaged_message(row[0], str(exc))) from exc


def listed_info(row: Sequence[Any], max_bytes: int = DEFAULT_MAX_BYTES) -> RunInfo:
    """The public view of a run row for `list_runs`: a damaged row is logged and listed
    with status CORRUPT, never raised."""
    try:
        return _info(_record(row, max_bytes))
    except Damaged as exc:
        message = damaged_message(row[0], str(exc))
    _log.warning("stageline store: %s", message)
    return corrupt_info(row, message)


def corrupt_info(row: Sequence[Any], message: str) -> RunInfo:
    """What can still be read of a damaged run row, with status CORRUPT."""
    run_id, pipeline_id, version, _, stage = row[:5]
    return RunInfo(
        run_id=run_id if isinstance(run_id, str) else repr(run_id),
        pipeline_id=pipeline_id if isinstance(pipeline_id, str) else "?",
        status=lifecycle.CORRUPT,
        state={},
        checkpoint=None,
        stage=stage if isinstance(stage, str) else None,
        updated_at=_time(row[12]),
        error={"kind": CORRUPT_KIND, "message": message},
        pipeline_version=version if type(version) is int else 1,
        owner=row[13] if isinstance(row[13], str) else None,
    )


def _time(value: Any) -> _dt.datetime:
    try:
        return _dt.datetime.fromtimestamp(value, _dt.UTC)
    except (ValueError, OverflowError, OSError, TypeError):
        return _EPOCH


# ----------------------------------------------------------------------------- requests

REQUEST_COLUMNS = (
    "request_id, kind, run_id, posted_at, pipeline_id, args, status, claimed_by, "
    "answered_at, answer"
)


def request_from_row(row: Sequence[Any], max_bytes: int = DEFAULT_MAX_BYTES) -> Request:
    """A mailbox Request from a row of REQUEST_COLUMNS, in their order; StoreError naming
    the request if it cannot be read."""
    try:
        return _request(row, max_bytes)
    except (BundleError, ValueError, TypeError) as exc:
        raise StoreError(unreadable_request(row[0], exc)) from exc


def _request(row: Sequence[Any], max_bytes: int) -> Request:
    args = decode(row[5], max_bytes=max_bytes, what="its arguments")
    if type(args) is not dict:
        raise TypeError(f"its arguments are a {type(args).__name__}, not a mapping")
    for what, value in (("id", row[0]), ("run id", row[2]), ("status", row[6])):
        if not isinstance(value, str):
            raise TypeError(f"its {what} holds {type(value).__name__}, not text")
    if not isinstance(row[3], int | float):
        raise TypeError(f"its posting time holds {type(row[3]).__name__}, not a number")
    return Request(
        request_id=row[0],
        kind=row[1],
        run_id=row[2],
        posted_at=row[3],
        pipeline_id=row[4],
        args=args,
        status=row[6],
        claimed_by=row[7],
        answered_at=row[8],
        answer=row[9],
    )


def unreadable_request(request_id: Any, exc: BaseException) -> str:
    return (
        f"mailbox request {request_id!r} could not be read ({exc}); it was not carried "
        "out: post it again"
    )


def claimed_requests(
    rows: Sequence[Sequence[Any]], max_bytes: int
) -> tuple[list[Request], list[tuple[Any, str]]]:
    """Claimed rows (`seq`, then REQUEST_COLUMNS) decoded one by one, in seq order: the
    requests read, and (seq, answer) for each that could not be (logged as a warning)."""
    readable: list[Request] = []
    unreadable: list[tuple[Any, str]] = []
    for seq, *row in sorted(rows, key=lambda row: row[0]):
        try:
            readable.append(_request(row, max_bytes))
        except (BundleError, ValueError, TypeError) as exc:
            answer = unreadable_request(row[0], exc)
            _log.warning("stageline store: %s", answer)
            unreadable.append((seq, answer))
    return readable, unreadable
