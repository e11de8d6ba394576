"""What the CLI shows of admission (SPEC section 20): `stageline limits`, queued runs in
`runs` and `show`, and `start --priority` through the mailbox to the daemon.

Runs are driven in this process by a Registry on a SQLite file or a PostgreSQL schema;
the commands read the same store through their URL (click's CliRunner, in-process). A
threading.Event keeps the admitted runs inside their step, so the others stay queued;
the test waits on the store's statuses, never on a sleep.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from cli_helpers import store_url_of  # tests/ is on sys.path
from click.testing import CliRunner

from stageline import Limit, Pipeline, PipelineFactory, Registry, Stage, Step
from stageline._cli_limits import NO_LIMIT
from stageline.cli import main
from stageline.core.mailbox import DONE, FAILED, Request
from stageline.daemon import Daemon, bind_factories
from stageline.stores import MemoryStore, SqliteStore
from stageline.testing import wait_for_status

pytestmark = pytest.mark.timeout(60)

GATE = threading.Event()


def held(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
    GATE.wait(30)
    return {"done": True}


calls = Pipeline("calls", [Stage("call", 1, steps=[Step("call", held)])],
                 limits=[Limit("api", 1)])  # fmt: skip
keyed = Pipeline("keyed", [Stage("call", 1, steps=[Step("call", held)])],
                 limits=[Limit("partner", 1, key=lambda state: state["customer"])])  # fmt: skip


@pytest.fixture(params=["sqlite", "postgres"])
def sql(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[tuple[Any, str]]:
    """A SQL store and its URL (for the commands)."""
    if request.param == "sqlite":
        store: Any = SqliteStore(tmp_path / "runs.db")
    else:
        from conftest import empty_pg_store

        dsn, schema = request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_schema")
        store = empty_pg_store(dsn, schema)
    yield store, store_url_of(store)
    store.close()


def run_cli(url: str, *args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--store", url])
    assert result.exit_code == 0, result.output
    return result.output


def test_limits_runs_and_show_of_queued_runs(sql: tuple[Any, str]) -> None:
    store, url = sql
    assert run_cli(url, "limits").strip() == NO_LIMIT
    assert run_cli(url, "limits", "--json") == ""
    GATE.clear()
    with Registry() as registry:
        api = PipelineFactory(calls, store=store, registry=registry)
        partner = PipelineFactory(keyed, store=store, registry=registry)
        futures = [api.prepare(run_id="a1").start()]
        wait_for_status(store, "a1", "running")
        futures += [api.prepare(run_id="a2").start(), api.prepare(run_id="a3", priority=3).start()]
        for run_id, customer in (("k1", "acme"), ("k2", "zeta"), ("k3", "acme")):
            futures.append(partner.prepare(run_id=run_id, state={"customer": customer}).start())
            wait_for_status(store, run_id, "queued" if run_id == "k3" else "running")
        for run_id in ("a2", "a3"):
            wait_for_status(store, run_id, "queued")

        rows = [json.loads(line) for line in run_cli(url, "limits", "--json").splitlines()]
        assert rows == [
            {"limit": "api", "key": "", "running": 1, "queued": 2},
            {"limit": "partner", "key": "acme", "running": 1, "queued": 1},
            {"limit": "partner", "key": "zeta", "running": 1, "queued": 0},
        ]
        table = [line.split() for line in run_cli(url, "limits").splitlines()]
        assert table == [
            ["LIMIT", "KEY", "RUNNING", "QUEUED"],
            ["api", "-", "1", "2"],
            ["partner", "acme", "1", "1"],
            ["partner", "zeta", "1", "0"],
        ]

        queued = run_cli(url, "runs", "--status", "queued", "--json").splitlines()
        assert sorted(json.loads(line)["run_id"] for line in queued) == ["a2", "a3", "k3"]
        shown = run_cli(url, "show", "a3")
        assert "queued" in shown
        assert any(line.split()[:2] == ["priority", "3"] for line in shown.splitlines())
        assert "priority" in run_cli(url, "show", "a2")  # a queued run says it, even 0
        assert json.loads(run_cli(url, "show", "a3", "--json"))["priority"] == 3
        assert "priority" not in run_cli(url, "show", "k1")  # running, priority 0

        GATE.set()
        assert {future.result(30).status for future in futures} == {"succeeded"}
    assert run_cli(url, "limits").strip() == NO_LIMIT


def test_start_priority_goes_through_the_mailbox_to_prepare(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_cli(url, "start", "calls", "--run-id", "p7", "--priority", "7", "--no-wait")
    run_cli(url, "start", "calls", "--run-id", "p0", "--no-wait")
    store = SqliteStore(tmp_path / "runs.db")
    requests = {r.run_id: r for r in store.list_requests()}
    store.close()
    assert requests["p7"].args["priority"] == 7
    assert "priority" not in requests["p0"].args  # 0 is not sent: any daemon reads it
    result = CliRunner().invoke(main, ["start", "calls", "--priority", "high", "--store", url])
    assert result.exit_code == 2 and "--priority" in result.output


def test_the_daemon_prepares_a_started_run_with_its_priority() -> None:
    store = MemoryStore()
    GATE.clear()
    with Registry() as registry:
        factories = bind_factories([PipelineFactory(calls)], store, registry)
        daemon = Daemon(factories, store, registry)
        for run_id, priority in (("first", 0), ("low", 0), ("high", 5)):
            args: dict[str, Any] = {"entry": None, "state": None}
            if priority:
                args["priority"] = priority
            store.post_request(Request(f"r-{run_id}", "start", run_id, 0.0, "calls", args))
            assert daemon.poll_once() == 1
            assert store.get_request(f"r-{run_id}").status == DONE
        bad = {"entry": None, "state": None, "priority": "high"}
        store.post_request(Request("r-bad", "start", "bad", 0.0, "calls", bad))
        assert daemon.poll_once() == 1
        answered = store.get_request("r-bad")
        assert answered.status == FAILED and "priority must be an integer" in str(answered.answer)
        assert store.get_run("high").priority == 5
        assert store.get_run("low").priority == 0
        assert store.get_run("high").status == "queued"
        GATE.set()
        wait_for_status(store, "high", "succeeded")
        wait_for_status(store, "low", "succeeded")


def test_the_serve_banner_lists_each_pipelines_limits() -> None:
    from stageline._ops_banner import banner

    plain = Pipeline("plain", [Stage("call", 1, steps=[Step("call", held)])])
    mail = Pipeline("mail", [Stage("call", 1, steps=[Step("call", held)])],
                    limits=[Limit("gateway", 10, rate=(2, 1.0))])  # fmt: skip
    store = MemoryStore()
    with Registry() as registry:
        served = [PipelineFactory(p) for p in (calls, keyed, mail, plain)]
        daemon = Daemon(bind_factories(served, store, registry), store, registry)
        lines = banner("memory://", daemon).splitlines()
        bare = Daemon(bind_factories([PipelineFactory(plain)], store, registry), store, registry)
        assert not any(
            line.split()[0] == "limits" for line in banner("memory://", bare).split("\n")
        )
    [limits] = [line.strip() for line in lines if line.split()[0] == "limits"]
    assert limits == (
        "limits     calls: api 1; keyed: partner 1 per key; mail: gateway 10 (2 starts per 1 s)"
    )
