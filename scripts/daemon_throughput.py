"""Throughput of short runs served by 1, 2, 4... `stageline serve` processes on one PostgreSQL.

    python scripts/daemon_throughput.py [--runs 300] [--daemons 1,2,4] [--stages 2]
                                        [--reps 3] [--dsn URL]

For each daemon count, in a fresh schema: starts that many daemons (`stageline serve`,
JSON logs at info, as in production), waits until each logged `daemon:ready`, warms them
up with a few runs, then posts --runs start requests into the mailbox in one burst (as
`stageline start --no-wait` posts them, without a process per request) and reads from the
store when each run succeeded. Time: from the first request posted to the last run's
final commit (`updated_at`), so the polling of this script does not count. Prints runs/s
(median of --reps) and how the requests were shared between the daemons. Each run has
--stages stages of one trivial step, every stage committed before the next.

The DSN defaults to $STAGELINE_BENCH_PG_DSN or postgresql://postgres@127.0.0.1:5432/test;
the schemas it makes are dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DSN = os.environ.get("STAGELINE_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
WARM_UP = 10

APP = """
from stageline import Pipeline, Stage, Step

STAGES = {stages}
short = Pipeline("short", [
    Stage(f"s{{k}}", order=k, steps=[Step("a", lambda s, c, k=k: {{f"s{{k}}": True}})])
    for k in range(1, STAGES + 1)
])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--daemons", default="1,2,4", help="comma-separated daemon counts")
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dsn", default=DSN)
    args = parser.parse_args()
    counts = [int(n) for n in args.daemons.split(",")]
    print(f"{args.runs} runs of {args.stages} stage(s), {os.cpu_count()} CPUs, {args.dsn}")
    print(f"{'daemons':>7}  {'runs/s':>8}  {'all reps':<24}  requests per daemon (last rep)")
    for n in counts:
        rates, shares = [], []
        for _ in range(args.reps):
            rate, share = measure(args.dsn, n, args.runs, args.stages)
            rates.append(rate)
            shares = share
        reps = ", ".join(f"{r:.0f}" for r in rates)
        print(f"{n:>7}  {statistics.median(rates):>8.0f}  {reps:<24}  {shares}")


def measure(dsn: str, daemons: int, runs: int, stages: int) -> tuple[float, list[int]]:
    """Runs per second with `daemons` daemons, and the requests each one claimed."""
    from stageline.stores import PostgresStore

    schema = f"stageline_tp_{uuid.uuid4().hex[:10]}"
    url = f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"
    store = PostgresStore(dsn, schema=schema)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "throughput_app.py").write_text(APP.format(stages=stages))
        procs = [serve(url, Path(folder)) for _ in range(daemons)]
        try:
            finish(store, post_burst(store, "warm", WARM_UP))
            first = time.time()
            ids = post_burst(store, "run", runs)
            last = finish(store, ids)
            claimed = Counter(store.get_request(r).claimed_by for r in ids)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=60)
            store.close()
            drop(dsn, schema)
    return runs / (last - first), sorted(claimed.values(), reverse=True)


def serve(url: str, folder: Path) -> subprocess.Popen[str]:
    """A `stageline serve` process, once it logged daemon:ready; its output is drained."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(folder)])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stageline", "serve", "throughput_app:short", "--store", url],
        env=env, cwd=folder, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line).get("event") == "daemon:ready":
            break
    else:
        raise SystemExit(f"the daemon exited with {proc.wait()} before it was ready")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe flowing
    return proc


def post_burst(store, prefix: str, runs: int) -> list[str]:
    from stageline.core.mailbox import Request

    ids = []
    for n in range(runs):
        request_id = str(uuid.uuid4())
        store.post_request(Request(request_id, "start", f"{prefix}-{n}", time.time(),
                                   pipeline_id="short"))  # fmt: skip
        ids.append(request_id)
    return ids


def finish(store, request_ids: list[str], timeout: float = 300.0) -> float:
    """When the last of these requests' runs committed its end (wall-clock seconds)."""
    run_ids = {store.get_request(r).run_id for r in request_ids}
    deadline = time.monotonic() + timeout
    while True:
        done = [i for i in store.list_runs(status="succeeded") if i.run_id in run_ids]
        if len(done) == len(run_ids):
            return max(i.updated_at.timestamp() for i in done)
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(done)} of {len(run_ids)} runs succeeded in {timeout}s")
        time.sleep(0.05)  # the figure is read from the store's timestamps, not from here


def drop(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("DROP SCHEMA {} CASCADE").format(psycopg.sql.Identifier(schema))
        )


if __name__ == "__main__":
    main()
