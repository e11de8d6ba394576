"""How fast a resume sent with the CLI reaches a daemon's run (spec section 13).

    python scripts/mailbox_latency.py [--runs 20] [--poll-interval 0.01] [--store URL]
                                      [--daemons N]

Starts `stageline serve` (--daemons of them) on a temporary SQLite file (or on --store,
e.g. `postgresql://postgres@127.0.0.1/test?schema=latency`; PostgreSQL daemons block on
LISTEN/NOTIFY, --poll-interval is for SQLite), pauses --runs runs, then resumes each
with `stageline resume RUN --json` and reads from the store: when the CLI posted the
request (`posted_at`), when the daemon answered it (`answered_at`), and the timestamp of
the run's resumed `pipeline:start` event (written in the resume's claim commit). Prints
min / median / max of each delay and of the whole CLI process. With several daemons, it
also counts the resumes handled by another daemon than the one that paused the run
(those take the store path: the checkpoint is read and claimed with compare-and-set).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

APP = """
from stageline import Pause, Pipeline, Stage, Step

approval = Pipeline("approval", [
    Stage("ask", order=1, steps=[Step("ask", lambda s, c: {"asked": True})],
          router=lambda s, r: None if s.get("ok") else Pause("done", timeout=600)),
    Stage("done", order=2, steps=[Step("done", lambda s, c: {"done": True})]),
])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--poll-interval", type=float, default=0.01)
    parser.add_argument("--store", default=None, help="a store URL (default: a temporary SQLite)")
    parser.add_argument("--daemons", type=int, default=1, help="how many daemons serve the store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        measure(Path(folder), args.runs, args.poll_interval, args.store, args.daemons)


STAGELINE = [sys.executable, "-m", "stageline"]


def measure(
    folder: Path, runs: int, poll_interval: float, url: str | None = None, daemons: int = 1
) -> None:
    from stageline.stores.url import open_store

    (folder / "latency_app.py").write_text(APP)
    url = url or f"sqlite:///{folder / 'runs.db'}"
    env = {**os.environ, "STAGELINE_STORE": url,
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(folder)])}  # fmt: skip
    serve = [*STAGELINE, "serve", "latency_app:approval", "--poll-interval", str(poll_interval)]
    procs = [
        subprocess.Popen(serve, env=env, cwd=folder, stdout=subprocess.DEVNULL)
        for _ in range(daemons)
    ]
    store = open_store(url)
    try:
        ids = [f"r{i}" for i in range(runs)]
        started_by = {run_id: start_run(store, run_id, env, folder) for run_id in ids}
        wait_until(lambda: all(store.get_run(r).status == "paused" for r in ids))
        resume_all(store, started_by, env, folder, daemons)
    finally:
        for daemon in procs:
            daemon.terminate()
        for daemon in procs:
            daemon.wait(timeout=30)
        store.close()


def cli_json(args: list[str], env: dict[str, str], folder: Path) -> dict:
    """The JSON line a `stageline ... --json` command printed."""
    out = subprocess.run([*STAGELINE, *args, "--json"], env=env, cwd=folder, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out)


def start_run(store, run_id: str, env: dict[str, str], folder: Path) -> str:
    """Start `run_id` with the CLI; the daemon that claimed the start request."""
    request_id = cli_json(["start", "approval", "--run-id", run_id], env, folder)["request_id"]
    return store.get_request(request_id).claimed_by


def resume_all(
    store, started_by: dict[str, str], env: dict[str, str], folder: Path, daemons: int
) -> None:
    """Resume each paused run with the CLI, then print the delays measured."""
    to_run, to_answer, whole, elsewhere = [], [], [], 0
    for run_id, starter in started_by.items():
        began = time.monotonic()
        request_id = cli_json(["resume", run_id], env, folder)["request_id"]
        whole.append(time.monotonic() - began)
        request = store.get_request(request_id)
        resumed = [e for e in store.read_events(run_id) if e.resumed]
        to_run.append(resumed[0].ts - request.posted_at)
        to_answer.append(request.answered_at - request.posted_at)
        elsewhere += request.claimed_by != starter
    report("posted -> run resumed (claim commit)", to_run)
    report("posted -> daemon's answer stored", to_answer)
    report("whole `stageline resume` process", whole)
    if daemons > 1:
        print(f"resumed by another daemon than the one that paused the run: {elsewhere}")


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("runs did not pause in time")
        time.sleep(0.05)


def report(what: str, seconds: list[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    print(f"{what:<40} min {ms[0]:7.1f} ms  median {statistics.median(ms):7.1f} ms  "
          f"max {ms[-1]:7.1f} ms  (n={len(ms)})")  # fmt: skip


if __name__ == "__main__":
    main()
