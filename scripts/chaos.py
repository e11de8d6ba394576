"""Chaos: real `stageline serve` daemons on one store, under kill -9, dropped connections,
damaged rows, poison requests and abort storms, while runs keep coming; then the checks.

    python scripts/chaos.py [--store postgres|sqlite|URL] [--seconds 60] [--daemons N]
                            [--seed 1] [--dsn DSN] [--keep]

For `--seconds`, while a steady stream of starts (five pipelines: short, approval,
flaky, slow and one crash-looping run), resumes of paused runs and retries of failed
runs is posted, it kills a random daemon with SIGKILL at random moments and starts
another (PostgreSQL: never fewer than 2 daemons; SQLite: never fewer than 1), terminates
the daemons' PostgreSQL backends (`pg_terminate_backend`, found by each daemon's
`application_name`), overwrites runs' state with garbage (those may end "corrupt", and
must not stop the others), inserts mailbox requests no store can read (they must be
answered "failed"), posts requests for unknown runs and pipelines, and storms running
and paused runs with aborts (through the mailbox and `stageline abort`). Then it lets
the runs settle (resuming or aborting the paused ones), stops the daemons with SIGTERM
and checks, from the store and the step log: every run ended, is paused, quarantined,
or damaged; tests/invariants.py holds for each; no committed stage ran again; every
request was answered (see scripts/chaoskit/verdict.py). It prints a summary; exit
status 1 on any violation.

`--store postgres` (the default) makes a fresh schema on the server at `--dsn`
($STAGELINE_TEST_PG_DSN, default postgresql://postgres@127.0.0.1:5432/test) and
`--store sqlite` a fresh file; both are removed at the end unless `--keep` or a
violation (then the work folder, with every daemon's log, is kept and named). A store
URL is used as it is and left in place. The same `--seed` gives the same plan of
actions (its digest is printed); what each action hits depends on the runs' timing.
The parts are in scripts/chaoskit/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # imported by path (the tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaoskit.actions import Chaos, Ledger
from chaoskit.app import write_app
from chaoskit.fleet import Fleet, Settings
from chaoskit.plan import Action, digest, make_plan
from chaoskit.report import details, summary
from chaoskit.settle import settle, stop
from chaoskit.target import DEFAULT_DSN, Raw, Target, drop, make_target
from chaoskit.verdict import judge

from stageline.stores.url import open_store


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--store", default="postgres", help="postgres, sqlite, or a store URL")
    add("--dsn", default=os.environ.get("STAGELINE_TEST_PG_DSN", DEFAULT_DSN))
    add("--seconds", type=float, default=60.0, help="how long the chaos lasts")
    add("--daemons", type=int, help="daemons kept running (default 3 on PostgreSQL, 2 on SQLite)")
    add("--seed", type=int, default=1)
    add("--lease-ttl", type=float, default=1.0, help="each daemon's --lease-ttl")
    add("--max-recoveries", type=int, default=3, help="each daemon's --max-recoveries")
    add("--crash-loops", type=int, default=1, help="runs whose step kills its daemon")
    add("--settle", type=float, default=90.0, help="at most this long to settle, seconds")
    add("--workdir", help="the work folder (default: a new temporary one)")
    add("--keep", action="store_true", help="keep the schema or file and the work folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = Path(args.workdir or tempfile.mkdtemp(prefix="stageline-chaos-")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    write_app(folder)
    target = make_target(args.store, args.dsn, folder, args.seed)
    count = args.daemons or (3 if target.postgres else 2)
    floor = min(count, 2 if target.postgres else 1)
    store = open_store(target.url_for("driver"))
    raw = Raw(target)
    fleet = Fleet(target, folder, Settings(args.lease_ttl, args.max_recoveries))
    chaos = Chaos(target, fleet, store, raw, Ledger(target.tag), count, floor)
    try:
        failed = run(chaos, args, count)
    finally:
        fleet.kill_all()
        store.close()
        raw.close()
    tidy(target, folder, keep=args.keep or failed, made=args.workdir is None)
    return 1 if failed else 0


def run(chaos: Chaos, args: argparse.Namespace, count: int) -> bool:
    """The chaos, the settling and the verdict; True if there was a violation."""
    plan = make_plan(args.seed, args.seconds, chaos.target.postgres, args.crash_loops)
    if not chaos.fleet.wait_ready([chaos.fleet.start() for _ in range(count)], timeout=60):
        print("chaos: the daemons did not get ready within 60 s", file=sys.stderr)
    chaos_seconds = unleash(chaos, plan, args.seconds)
    settled = settle(chaos, args.settle)
    stop(chaos, settled)
    verdict = judge(chaos, settled)
    facts = {"store": describe(chaos.target), "seed": args.seed, "plan": digest(plan),
             "actions": len(plan), "daemons": count, "chaos_seconds": chaos_seconds}  # fmt: skip
    for line in details(chaos, verdict) + summary(chaos, verdict, settled, facts):
        print(line)
    return bool(verdict.violations)


def unleash(chaos: Chaos, plan: list[Action], seconds: float) -> float:
    """Carry out the plan, each action at its time (late, if the machine is slow)."""
    began = time.monotonic()
    for action in plan:
        wait_until(chaos, began + action.at)
        chaos.do(action)
    wait_until(chaos, began + seconds)
    return time.monotonic() - began


def wait_until(chaos: Chaos, moment: float) -> None:
    """Until `moment`, replace daemons that died (the crash-looping run kills them)."""
    while (left := moment - time.monotonic()) > 0:
        chaos.keep_daemons()
        time.sleep(min(left, 0.1))


def describe(target: Target) -> str:
    if target.postgres:
        return f"PostgreSQL schema {target.schema}"
    return f"SQLite file {target.path}"


def tidy(target: Target, folder: Path, *, keep: bool, made: bool) -> None:
    if keep:
        print(f"kept: the work folder {folder} (daemon logs dN.log, steps.log) and "
              f"{describe(target)}")  # fmt: skip
        return
    drop(target)
    if made:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
