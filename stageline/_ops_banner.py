"""The block `stageline serve` prints at start on a console: what this daemon serves, and how.

One short block, before the log lines: the store (its URL with any password hidden), the
pipelines served, the lease (and so how often the daemon beats and recovers), the
schedules fired (their ids, or "none") and the daemon's id (its registry's owner id, as
`stageline status` lists it). JSON logs get no banner: their `daemon:ready` line says the same (and
`daemon:schedules` lists the schedules).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
        f"  lease ttl  {lease}",
        f"  schedules  {', '.join(s.id for s in daemon.schedules) or 'none'}",
    ]
    return "\n".join(lines)
