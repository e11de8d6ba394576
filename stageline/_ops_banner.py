"""The block `stageline serve` prints at start on a console: what this daemon serves, and how.

One short block, before the log lines: the store (its URL with any password hidden), the
pipelines served, their limits (a line only when one has some: "calls: api 5; sync:
partner 2 per key"), the lease (and so how often the daemon beats and recovers), the
schedules fired (their ids, or "none") and the daemon's id (its registry's owner id, as
`stageline status` lists it). JSON logs get no banner: their `daemon:ready` line says the same (and
`daemon:schedules` lists the schedules).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stageline.stores.url import redacted

if TYPE_CHECKING:
    from stageline.daemon import Daemon


def banner(store_url: str, daemon: Daemon) -> str:
    """The start banner of `daemon`, serving the store at `store_url`."""
    pipelines = sorted(daemon.factories)
    lease = f"{daemon.registry.lease_ttl:g} s"
    beat = daemon.options.heartbeat_every
    if beat is not None:
        lease += f" (heartbeat every {beat:g} s)"
    lines = [
        f"stageline serve: daemon {daemon.name}",
        f"  store      {redacted(store_url)}",
        f"  pipelines  {', '.join(pipelines)}",
    ]
    limits = [(pid, daemon.factories[pid].pipeline.limits) for pid in pipelines]
    served = [f"{pid}: {', '.join(map(limit_text, own))}" for pid, own in limits if own]
    if served:
        lines.append(f"  limits     {'; '.join(served)}")
    lines += [
        f"  lease ttl  {lease}",
        f"  schedules  {', '.join(s.id for s in daemon.schedules) or 'none'}",
    ]
    return "\n".join(lines)


def limit_text(limit: Any) -> str:
    """A Limit for people: "api 5", "partner 2 per key", "mail 10 (2 starts per 1 s)"."""
    text = f"{limit.name} {limit.max_running}"
    if limit.key is not None:
        text += " per key"
    if limit.rate is not None:
        text += f" ({limit.rate[0]} starts per {limit.rate[1]:g} s)"
    return text
