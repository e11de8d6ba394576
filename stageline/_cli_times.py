"""How the `stageline` commands write times: one ISO-8601 UTC form for scripts, local for people.

JSON output writes every time as `2026-12-04T19:55:00.123456Z` (UTC, always microseconds,
always `Z`), never an epoch float. People get the local time with its zone, how long ago
it was ("3 min ago"), and durations ("2 min 5 s").
"""

from __future__ import annotations

import datetime as dt
import time

Moment = dt.datetime | float | int | None
"""A time as the store gives it: an aware datetime, or seconds since the epoch."""


def as_datetime(value: Moment) -> dt.datetime | None:
    """`value` as an aware datetime (a naive one is taken to be UTC)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(float(value), dt.UTC)


def iso(value: Moment) -> str | None:
    """The JSON form of a time: ISO-8601 in UTC, microseconds and `Z` (None stays None)."""
    moment = as_datetime(value)
    if moment is None:
        return None
    text = moment.astimezone(dt.UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


def local(value: Moment, *, fraction: bool = False) -> str:
    """The local date, time and zone: `2026-12-04 20:55:00 CET` ("-" for no time)."""
    moment = as_datetime(value)
    if moment is None:
        return "-"
    here = moment.astimezone()
    seconds = here.strftime("%S.%f")[:6] if fraction else here.strftime("%S")
    return f"{here.strftime('%Y-%m-%d %H:%M:')}{seconds} {here.strftime('%Z')}"


def ago(value: Moment, now: float | None = None) -> str:
    """How long ago `value` was ("3 min ago"), or how soon it comes ("in 20 s")."""
    moment = as_datetime(value)
    if moment is None:
        return "-"
    delta = (time.time() if now is None else now) - moment.timestamp()
    if abs(delta) < 1:
        return "just now"
    text = duration(abs(delta), coarse=True)
    return f"{text} ago" if delta > 0 else f"in {text}"


def human(value: Moment, now: float | None = None) -> str:
    """The local time and how long ago: `2026-12-04 20:55:00 CET (3 min ago)`."""
    return "-" if value is None else f"{local(value)} ({ago(value, now)})"


_UNITS = (("d", 86_400), ("h", 3600), ("min", 60), ("s", 1))


def duration(seconds: float, *, coarse: bool = False) -> str:
    """A duration for people: `850 ms`, `4.2 s`, `2 min 5 s`, `3 h 10 min`, `2 d 4 h`.

    `coarse`: the largest unit only (`3 min`), for "ago"."""
    if seconds < 1 and not coarse:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10 and not coarse:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    parts: list[str] = []
    for name, size in _UNITS:
        if whole >= size or (name == "s" and not parts):
            parts.append(f"{whole // size} {name}")
            whole %= size
    return parts[0] if coarse else " ".join(parts[:2])


def run_duration(created: Moment, updated: Moment, ended: bool, now: float | None = None) -> str:
    """How long a run took (`updated - created` once it ended) or has taken so far."""
    start, end = as_datetime(created), as_datetime(updated)
    if start is None:
        return "-"
    if ended:
        stop = end.timestamp() if end is not None else start.timestamp()
        return duration(max(0.0, stop - start.timestamp()))
    so_far = (time.time() if now is None else now) - start.timestamp()
    return f"{duration(max(0.0, so_far))} so far"
