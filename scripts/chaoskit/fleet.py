"""The `stageline serve` processes: started, killed with SIGKILL, stopped with SIGTERM.

Each daemon is named `dN` (N counts every daemon started, restarts included), logs its
JSON lines to `dN.log` (stderr to `dN.err`) in the work folder, and on PostgreSQL
connects under the application name `chaos-TAG-dN`. A daemon that exits by itself (the
crash-looping run kills whichever daemon runs it) is "crashed", and replaced like one
the script killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .app import APP
from .target import Target

ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass
class Proc:
    """One daemon process and what became of it."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    ready: bool = False
    ended: str | None = None
    """None while it runs; then "killed", "crashed" or "stopped"."""
    exit_code: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class Settings:
    """How every daemon is started."""

    lease_ttl: float = 1.0
    max_recoveries: int = 3
    stop_timeout: float = 5.0


@dataclass
class Fleet:
    target: Target
    folder: Path
    settings: Settings
    procs: list[Proc] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def env(self) -> dict[str, str]:
        paths = [str(ROOT), str(self.folder), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
        env.pop("STAGELINE_STORE", None)
        env["PYTHONUNBUFFERED"] = "1"  # a killed daemon's last lines are in its log
        return env

    def command(self, name: str) -> list[str]:
        s = self.settings
        return [
            sys.executable, "-m", "stageline", "serve", APP,
            "--store", self.target.url_for(name),
            "--lease-ttl", str(s.lease_ttl),
            "--max-recoveries", str(s.max_recoveries),
            "--stop-timeout", str(s.stop_timeout),
        ]  # fmt: skip

    def start(self) -> Proc:
        name = f"d{len(self.procs)}"
        log = self.folder / f"{name}.log"
        with open(log, "wb") as out, open(self.folder / f"{name}.err", "wb") as err:
            popen = subprocess.Popen(
                self.command(name), cwd=self.folder, env=self.env(), stdout=out, stderr=err
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        self.counts["started"] += 1
        return proc

    def live(self) -> list[Proc]:
        return [p for p in self.procs if p.ended is None]

    def is_ready(self, proc: Proc) -> bool:
        if not proc.ready and proc.log.exists():
            proc.ready = b'"daemon:ready"' in proc.log.read_bytes()
        return proc.ready

    def wait_ready(self, procs: list[Proc], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.reap()
            if all(p.ended is not None or self.is_ready(p) for p in procs):
                return True
            time.sleep(0.05)
        return False

    def reap(self) -> list[Proc]:
        """The daemons that exited by themselves since the last look (marked crashed)."""
        gone = [p for p in self.live() if p.popen.poll() is not None]
        for proc in gone:
            proc.ended, proc.exit_code = "crashed", proc.popen.returncode
            self.counts["crashed"] += 1
        return gone

    def kill(self, proc: Proc) -> None:
        proc.popen.send_signal(signal.SIGKILL)
        proc.exit_code = proc.popen.wait(timeout=30)
        proc.ended = "killed"
        self.counts["killed"] += 1

    def keep(self, count: int) -> list[Proc]:
        """Replace the daemons that died until `count` run; the new ones."""
        self.reap()
        return [self.start() for _ in range(count - len(self.live()))]

    def stop_all(self, timeout: float = 60.0) -> None:
        """SIGTERM every live daemon, then wait for each (killed if it does not stop)."""
        self.reap()
        live = self.live()
        for proc in live:
            proc.popen.send_signal(signal.SIGTERM)
        for proc in live:
            try:
                proc.exit_code = proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.exit_code = proc.popen.wait(timeout=30)
            proc.ended = "stopped"
            self.counts["stopped"] += 1

    def kill_all(self) -> None:
        """Last resort, on the way out after an error: no daemon outlives the script."""
        for proc in self.live():
            proc.popen.kill()
            proc.popen.wait(timeout=30)
            proc.ended = "killed"

    def by_pid(self) -> dict[int, Proc]:
        return {p.pid: p for p in self.procs}

    def of(self, name: str | None) -> Proc | None:
        """The daemon a lease owner or claimer name (host:pid:random) names, if ours."""
        parts = (name or "").split(":")
        pid = int(parts[1]) if len(parts) >= 3 and parts[1].isdigit() else -1
        return self.by_pid().get(pid)

    def died(self, name: str | None) -> bool:
        """Was the daemon named `name` killed, or did it crash?"""
        proc = self.of(name)
        return proc is not None and proc.ended in ("killed", "crashed")
