"""The console's edge cases: a run that ends without a journal event, a damaged row, DNS
rebinding on a console without a token, waits that must not hold worker threads, odd
Last-Event-IDs, a login that keeps the page's query."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import httpx
import pytest
from console_fixtures import Console

from stageline.core import transitions
from stageline.stores import MemoryStore, SqliteStore


@pytest.fixture
def quiet():
    """A console without a daemon (requests stay pending) on a MemoryStore."""
    served = Console(MemoryStore(), daemon=False)
    yield served
    served.close()


def test_a_run_that_expires_without_an_event_ends_its_stream_while_others_commit(quiet):
    run_id = quiet.paused_run("p1")
    opened, ended = threading.Event(), threading.Event()
    names: list[str] = []

    def read() -> None:
        with quiet.http.stream("GET", f"/api/runs/{run_id}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    names.append(line[7:])
                    if line == "event: pipeline:paused":
                        opened.set()
                    if line == "event: end":
                        ended.set()
                        return

    reader = threading.Thread(target=read)
    reader.start()
    assert opened.wait(30)
    quiet.store.commit(transitions.expire(quiet.store.load_run(run_id), time.time()))
    started = time.monotonic()
    for n in range(3):  # other runs commit meanwhile: the stream still sees its run ended
        quiet.paused_run(f"other-{n}")
    assert ended.wait(30)
    assert time.monotonic() - started < 10  # the status is read at each wake, every 2 s at most
    reader.join(timeout=30)
    assert names[-1] == "end"


def test_a_damaged_row_is_shown_as_corrupt_not_a_500(tmp_path):
    store = SqliteStore(tmp_path / "runs.db")
    console = Console(store, daemon=False)
    try:
        run_id = console.paused_run("broken")
        import sqlite3

        raw = sqlite3.connect(store.path)
        raw.execute("UPDATE runs SET state = x'ff00' WHERE run_id = ?", (run_id,))
        raw.commit()
        raw.close()
        run = console.http.get(f"/api/runs/{run_id}")
        assert run.status_code == 200, run.text
        assert run.json()["status"] == "corrupt" and run.json()["error"]["message"]
        stream = console.http.get(f"/api/runs/{run_id}/events")
        assert stream.text.rstrip().endswith("event: end\ndata: {}")
        refused = console.http.post(f"/api/runs/{run_id}/resume", json={})
        assert refused.status_code == 409 and "corrupt" in refused.json()["error"]
    finally:
        console.close()
        store.close()


def test_without_a_token_only_loopback_names_are_answered(quiet):
    port = quiet.url.rsplit(":", 1)[1]
    rebound = {"Host": f"rebind.attacker.example:{port}",
               "Origin": f"http://rebind.attacker.example:{port}"}  # fmt: skip
    assert quiet.http.get("/api/runs", headers=rebound).status_code == 403
    answer = quiet.http.post("/api/runs", json={"pipeline": "gate"}, headers=rebound)
    assert answer.status_code == 403 and "--http-token" in answer.json()["error"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert quiet.http.get("/api/runs", headers={"Host": host}).status_code == 200


def test_an_origin_with_its_default_port_is_the_same_origin(quiet):
    same = {"Host": "127.0.0.1", "Origin": "http://127.0.0.1:80"}
    answer = quiet.http.post("/api/runs", json={"pipeline": "gate"}, headers=same)
    assert answer.status_code == 202, answer.text


def test_waiting_requests_do_not_hold_the_worker_threads(quiet):
    """50 requests waiting for a daemon that never answers (more than the 40 worker
    threads): the console still answers reads at once."""
    run_id = quiet.paused_run()

    async def main() -> float:
        async with httpx.AsyncClient(base_url=quiet.url, timeout=60) as http:
            waits = [asyncio.ensure_future(http.post(f"/api/runs/{run_id}/abort?wait=true&timeout=5",
                                                     json={})) for _ in range(50)]  # fmt: skip
            while len(quiet.store.list_requests("pending")) < 50:  # all posted, all waiting
                await asyncio.sleep(0.01)
            started = time.monotonic()
            await http.get("/api/runs")
            took = time.monotonic() - started
            answers = await asyncio.gather(*waits)
            assert all(a.status_code == 202 for a in answers)
            return took

    assert asyncio.run(main()) < 2.0


@pytest.mark.parametrize("value", ["²", "-1", "1.5", " 3"])
def test_an_odd_last_event_id_is_400(quiet, value):
    run_id = quiet.paused_run()
    answer = quiet.http.get(f"/api/runs/{run_id}/events", params={"after": value})
    assert answer.status_code == 400 and "whole number" in answer.json()["error"]


def test_the_login_redirect_keeps_the_query():
    console = Console(MemoryStore(), token="s3cret-token", daemon=False)
    try:
        page = console.http.get("/?status=paused&pipeline=gate", follow_redirects=False)
        assert page.headers["location"] == "/login?next=/%3Fstatus%3Dpaused%26pipeline%3Dgate"
    finally:
        console.close()


def test_stopping_the_server_ends_open_streams(caplog):
    """A stream open on a paused run ends when the console stops (its client would
    reconnect elsewhere with Last-Event-ID), and the stop does not wait for it."""
    console = Console(MemoryStore(), daemon=False)
    run_id = console.paused_run()
    opened, ended = threading.Event(), threading.Event()

    def read() -> None:
        with (
            httpx.Client(base_url=console.url, timeout=30) as http,
            http.stream("GET", f"/api/runs/{run_id}/events") as stream,
        ):
            for line in stream.iter_lines():
                if line == "event: pipeline:paused":
                    opened.set()
        ended.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert opened.wait(30)
    started = time.monotonic()
    console.close()
    assert ended.wait(30)
    assert time.monotonic() - started < 5
    reader.join(timeout=30)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []  # not cancelled mid-response: it ended by itself


def test_the_timeline_marks_a_stage_whose_step_was_retried():
    from stageline import Pipeline, Stage, Step

    def flaky(state, ctx):
        if ctx.attempt < 3:
            raise ValueError("the partner timed out")
        return {"synced": True}

    pipeline = Pipeline("flaky", [
        Stage("plain", 1, steps=[Step("ok", lambda s, c: {"ok": True})]),
        Stage("sync", 2, steps=[Step("call", flaky, retries=2)]),
    ])  # fmt: skip
    console = Console(MemoryStore(), daemon=False, pipelines=[pipeline])
    try:
        assert console.factories["flaky"].prepare(run_id="f").run(timeout=30).status == "succeeded"
        bars = console.http.get("/api/runs/f").json()["timeline"]
        assert [(b["stage_id"], b["attempts"]) for b in bars] == [("plain", 1), ("sync", 3)]
    finally:
        console.close()
