"""`bench.py --console`: the operator console's speed (spec section 17), stageline only.

    python scripts/bench.py --console [--runs N] [--streams N] [--stores sqlite,postgres]
                                      [--json FILE]

No peer serves these pages, so each figure is printed beside its target. The console is a
`stageline console` subprocess, measured over real HTTP on loopback, as an operator's
browser meets it.

- `GET /api/runs?limit=50` over `--runs` (default 100,000) runs, newest first: the first
  page, a page filtered by status, one by pipeline, and a page 100 pages deep (its
  `before` cursor); the median of 200 requests each. Target: under 20 ms.
- event stream latency: `--streams` (default 100) streams open on as many paused runs;
  the runs are resumed one after another (every 20 ms), and each journal event's latency
  is the time from its `ts` (taken just before its stage's commit, so the figure includes
  the commit) to its arrival at the client. Median and p95. Target: median under 100 ms.
  SQLite: the console's bounded poll; PostgreSQL: LISTEN/NOTIFY.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stageline import Pause, Pipeline, PipelineFactory, Registry, Stage, Step
from stageline.core.codec import encode

from .time_cases import (
    PG_DSN,
    PLACES,
    Figure,
    Place,
    add_place_args,
    p95,
    parsed_places,
    run_figures,
)

FLAG = "--console"
PAGE_TARGET_MS = 20.0
STREAM_TARGET_MS = 100.0
STATUSES = ("succeeded", "failed", "aborted", "expired")
RUN_COLUMNS = (
    "run_id, pipeline_id, pipeline_version, status, stage, state, checkpoint, error, "
    "version, last_seq, stage_runs, created_at, updated_at, owner, lease_until"
)


def gate() -> Pipeline:
    return Pipeline("gate", [
        Stage("ask", 1, steps=[Step("ask", lambda s, c: {"asked": True})],
              router=lambda s, r: Pause("ship")),
        Stage("ship", 2, steps=[Step("ship", lambda s, c: {"shipped": True})]),
    ])  # fmt: skip


# --- filling the store ----------------------------------------------------------------------


def rows(count: int) -> Iterator[tuple[Any, ...]]:
    state = encode({"order": "x" * 100, "lines": list(range(20))})
    start = time.time() - count
    for i in range(count):
        at = start + i
        yield (f"run-{i:06d}", f"p{i % 10}", 1, STATUSES[i % 4], "s1", state, None, None,
               3, 2, 1, at, at, None, None)  # fmt: skip


def fill(place: Place, count: int) -> None:
    """`count` finished runs, one a second, over ten pipelines, written with raw SQL."""
    store = place.open()  # creates the tables
    try:
        if place.name == "sqlite":
            import sqlite3

            db = sqlite3.connect(str(store.path), isolation_level=None)
            db.execute("BEGIN")
            db.executemany(f"INSERT INTO runs ({RUN_COLUMNS}) VALUES ({', '.join('?' * 15)})",
                           rows(count))  # fmt: skip
            db.execute("COMMIT")
            db.execute("ANALYZE")
            db.close()
        else:
            import psycopg

            with psycopg.connect(PG_DSN, autocommit=True) as conn, conn.cursor() as cursor:
                table = f'"{store.schema}".runs'
                with cursor.copy(f"COPY {table} ({RUN_COLUMNS}) FROM STDIN") as copy:
                    for row in rows(count):
                        copy.write_row(row)
                cursor.execute(f"ANALYZE {table}")
    finally:
        store.close()


# --- the console, a subprocess --------------------------------------------------------------


@contextmanager
def console(place: Place) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "stageline", "console", "--store", place.url,
               "--http", f"127.0.0.1:{port}"]  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(400):
            try:
                httpx.get(f"{url}/api/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.025)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- (a) a page of runs ---------------------------------------------------------------------


def page_times(url: str, reps: int = 200) -> list[tuple[str, float]]:
    import httpx

    with httpx.Client(base_url=url, timeout=30) as http:
        cursor = None
        for _ in range(100):  # the cursor of page 101
            cursor = http.get(
                "/api/runs", params={"limit": 50, **({"before": cursor} if cursor else {})}
            ).json()["next"]
        queries = {
            "first page": {"limit": 50},
            "status filter": {"limit": 50, "status": "failed"},
            "pipeline filter": {"limit": 50, "pipeline": "p3"},
            "page 101": {"limit": 50, "before": cursor},
        }
        found = []
        for what, params in queries.items():
            samples = []
            for _ in range(reps):
                started = time.perf_counter()
                answer = http.get("/api/runs", params=params)
                samples.append(time.perf_counter() - started)
                assert answer.status_code == 200 and len(answer.json()["runs"]) == 50, answer.text
            found.append((what, statistics.median(samples) * 1000))
        return found


# --- (b) the event stream -------------------------------------------------------------------


def stream_latencies(place: Place, url: str, streams: int) -> list[float]:
    """Milliseconds from each journal event's ts to its arrival, over `streams` streams."""
    store = place.open()
    arrivals: list[float] = []
    try:
        with Registry() as registry:
            factory = PipelineFactory(gate(), store=store, registry=registry)
            ids = [factory.prepare().run(timeout=30).run_id for _ in range(streams)]
            ready = threading.Barrier(2)
            reader = threading.Thread(target=lambda: asyncio.run(
                read_streams(url, ids, arrivals, ready)))  # fmt: skip
            reader.start()
            ready.wait(timeout=120)
            for run_id in ids:
                factory.resume(run_id, patch={"go": True}).start()
                time.sleep(0.02)  # spaced: one commit's latency, not a burst's
            reader.join(timeout=120)
    finally:
        store.close()
    return arrivals


async def read_streams(url: str, ids: list[str], arrivals: list[float], ready: Any) -> None:
    import httpx

    limits = httpx.Limits(max_connections=len(ids) + 10)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        opened = [asyncio.Event() for _ in ids]
        tasks = [asyncio.create_task(read_one(http, run_id, arrivals, event))
                 for run_id, event in zip(ids, opened, strict=True)]  # fmt: skip
        await asyncio.gather(*(event.wait() for event in opened))
        await asyncio.to_thread(ready.wait, 120)
        await asyncio.gather(*tasks)


async def read_one(http: Any, run_id: str, arrivals: list[float], opened: asyncio.Event) -> None:
    seen = 0
    async with http.stream("GET", f"/api/runs/{run_id}/events") as stream:
        async for line in stream.aiter_lines():
            if line.startswith("retry:"):
                opened.set()
            if line.startswith("data: ") and line != "data: {}":
                event = json.loads(line[6:])
                seen += 1
                if seen > 4:  # past the events of the first segment, read at once
                    ts = datetime.datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))
                    arrivals.append((time.time() - ts.timestamp()) * 1000)
            if line == "event: end":
                return


# --- the mode -------------------------------------------------------------------------------


def measure_place(name: str, args: argparse.Namespace, tmp: Path) -> list[Figure]:
    figures = []
    with PLACES[name](tmp, "console") as place:
        print(f"  {name}: filling {args.runs:,} runs", file=sys.stderr, flush=True)
        fill(place, args.runs)
        with console(place) as url:
            for what, ms in page_times(url):
                figures.append(Figure(name, f"GET /api/runs?limit=50, {what}", ms, "ms",
                                      PAGE_TARGET_MS))  # fmt: skip
            latencies = stream_latencies(place, url, args.streams)
    figures.append(Figure(name, f"stream latency, median ({args.streams} streams)",
                          statistics.median(latencies), "ms", STREAM_TARGET_MS))  # fmt: skip
    figures.append(Figure(name, "stream latency, p95", p95(latencies), "ms"))
    return figures


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.py --console", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="runs in the store")
    parser.add_argument("--streams", type=int, default=100, help="event streams open at once")
    add_place_args(parser)
    args = parsed_places(parser, argv)
    if args.runs < 1000 or args.streams < 1:
        parser.error("--runs must be >= 1000 and --streams >= 1")
    return args


def main(argv: Sequence[str]) -> int:
    return run_figures(parse_args(argv), "console", "serves these pages", measure_place)
