"""The console's API through Starlette's ASGI test client (no server, no sockets), on every
store: the same app `stageline console` serves, driven in-process."""

from __future__ import annotations

import pytest
from console_fixtures import GATE, sse_frames
from starlette.testclient import TestClient

from stageline import PipelineFactory, Registry
from stageline._console.app import build_app


@pytest.fixture
def client(store):
    with TestClient(build_app(store), base_url="http://127.0.0.1:8080") as asgi:
        yield asgi


@pytest.fixture
def paused(store):
    with Registry() as registry:
        result = PipelineFactory(GATE, store=store, registry=registry).prepare(run_id="p").run(
            timeout=30
        )
    assert result.status == "paused"
    return "p"


def test_health(client):
    assert client.get("/api/health").json() == {"ok": True}


def test_runs_and_a_run(client, paused):
    page = client.get("/api/runs?limit=1").json()
    assert [run["run_id"] for run in page["runs"]] == [paused] and page["next"] is None
    run = client.get(f"/api/runs/{paused}").json()
    assert run["status"] == "paused" and run["waiting"]["kind"] == "paused"


def test_a_request_is_posted_to_the_mailbox(client, store, paused):
    answer = client.post(f"/api/runs/{paused}/resume", json={"patch": {"approved": True}})
    assert answer.status_code == 202
    request = store.get_request(answer.json()["request_id"])
    assert request.kind == "resume" and request.args == {"patch": {"approved": True}}


def test_the_journal_of_a_paused_run_streams_from_after(client, store, paused):
    seqs = [event.seq for event in store.read_events(paused)]
    with client.stream("GET", f"/api/runs/{paused}/events?after={seqs[-2]}") as stream:
        lines = stream.iter_lines()
        text = "\n".join(next(lines) for _ in range(5))  # retry, blank, id, event, data
    assert [int(f["id"]) for f in sse_frames(text + "\n\n") if "id" in f] == [seqs[-1]]


def test_pages_are_served_and_guarded(store):
    with TestClient(build_app(store, token="s3cret-token")) as asgi:
        assert asgi.get("/", follow_redirects=False).status_code == 303
        assert "<form" in asgi.get("/login").text
        authorized = {"Authorization": "Bearer s3cret-token"}
        assert asgi.get("/", headers=authorized).headers["content-type"].startswith("text/html")
        assert asgi.get("/static/console.js").status_code == 200
