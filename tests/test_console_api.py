"""The console's HTTP API on every store: reading runs, steering them through the mailbox,
the event stream (order, resume after a drop, the end), and the guard (token, origin, size)."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from console_fixtures import Console, sse_frames

from stageline._cli_errors import UserError
from stageline._console.server import check_bind


@pytest.fixture
def console(store):
    served = Console(store)
    yield served
    served.close()


def test_health_and_stats(console):
    assert console.http.get("/api/health").json() == {"ok": True}
    stats = console.http.get("/api/stats").json()
    assert stats["mailbox"] == {"pending": 0, "claimed": 0}
    assert isinstance(stats["registry"], dict)
    assert [d["owner"] for d in stats["daemons"]] and stats["daemons"][0]["gone"] is False


def test_runs_are_listed_newest_first_and_paged_with_the_cursor(console):
    ids = [console.paused_run(f"r{i}") for i in range(5)]
    seen, cursor = [], None
    while True:
        page = console.http.get("/api/runs", params={"limit": 2, "before": cursor or ""}).json()
        seen += [run["run_id"] for run in page["runs"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    first = console.http.get("/api/runs").json()["runs"][0]
    assert first["status"] == "paused" and first["pipeline_id"] == "gate"
    assert first["created_at"].endswith("Z")


def test_runs_filter_by_status_and_pipeline(console):
    console.paused_run("p1")
    console.failed_run("f1")
    assert _ids(console, status="failed") == ["f1"]
    assert _ids(console, pipeline="gate") == ["p1"]
    assert _ids(console, status="failed", pipeline="gate") == []


def _ids(console, **params):
    return [run["run_id"] for run in console.http.get("/api/runs", params=params).json()["runs"]]


def test_a_paused_run_says_what_it_waits_for(console):
    run_id = console.paused_run()
    run = console.http.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "paused"
    assert run["checkpoint"]["resume_at"] == "ship"
    assert run["waiting"]["kind"] == "paused"
    assert "ship" in run["waiting"]["for"] and run["waiting"]["since"].endswith("Z")
    (bar,) = run["timeline"]
    assert bar["stage_id"] == "ask" and bar["outcome"] == "paused"
    assert bar["duration"] >= 0 and bar["run"] == 1 and not bar["retried"]
    assert run["state"]["asked"] is True


def test_a_failed_run_shows_its_traceback(console):
    run_id = console.failed_run()
    run = console.http.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "failed"
    assert "the card was declined" in run["error"]["message"]
    (trace,) = run["tracebacks"]
    assert trace["where"] == "step card" and "ValueError" in trace["text"]


def test_resume_with_a_patch_through_the_mailbox(console):
    run_id = console.paused_run()
    answer = console.http.post(f"/api/runs/{run_id}/resume?wait=true",
                               json={"patch": {"approved": True}})  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "done" and answer.json()["kind"] == "resume"
    run = _settled(console, run_id)
    assert run["status"] == "succeeded" and run["state"]["shipped"] is True
    assert [bar["stage_id"] for bar in run["timeline"]] == ["ask", "ship"]


def test_without_wait_the_request_is_accepted(console):
    run_id = console.paused_run()
    answer = console.http.post(f"/api/runs/{run_id}/resume", json={})
    assert answer.status_code == 202
    assert answer.json()["status"] == "pending" and answer.json()["request_id"]


def test_retry_with_a_patch(console):
    run_id = console.failed_run()
    answer = console.http.post(f"/api/runs/{run_id}/retry?wait=true",
                               json={"patch": {"fixed": True}})  # fmt: skip
    assert answer.json()["status"] == "done", answer.text
    assert _settled(console, run_id)["status"] == "succeeded"


def test_abort_with_a_reason(console):
    run_id = console.paused_run()
    answer = console.http.post(f"/api/runs/{run_id}/abort?wait=true", json={"reason": "no stock"})
    assert answer.json()["status"] == "done" and answer.json()["run_status"] == "aborted"
    run = console.http.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "aborted" and "no stock" in json.dumps(run["error"])


def test_start_a_run(console):
    answer = console.http.post("/api/runs?wait=true",
                               json={"pipeline": "gate", "run_id": "s1", "state": {"n": 1}})  # fmt: skip
    assert answer.json()["status"] == "done", answer.text
    assert _settled(console, "s1")["status"] == "paused"
    again = console.http.post("/api/runs", json={"pipeline": "gate", "run_id": "s1"})
    assert again.status_code == 409 and "already exists" in again.json()["error"]


def test_an_unknown_pipeline_is_the_daemons_answer(console):
    answer = console.http.post("/api/runs?wait=true", json={"pipeline": "nope"})
    assert answer.status_code == 200 and answer.json()["status"] == "failed"
    assert "nope" in answer.json()["answer"]


def _settled(console, run_id):
    """The run once the daemon has driven it to a stop (waits on its event stream)."""
    with console.http.stream("GET", f"/api/runs/{run_id}/events") as stream:
        for line in stream.iter_lines():
            if line == "event: end" or line.startswith("event: pipeline:paused"):
                break
    return console.http.get(f"/api/runs/{run_id}").json()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        ("GET", "/api/runs/nope", None, 404, "no run 'nope'"),
        ("GET", "/api/runs/nope/events", None, 404, "no run 'nope'"),
        ("POST", "/api/runs/nope/resume", {}, 404, "no run 'nope'"),
        ("GET", "/api/runs?status=happy", None, 400, "?status= must be one of"),
        ("GET", "/api/runs?limit=0", None, 400, "?limit= must be between 1 and 1000"),
        ("GET", "/api/runs?limit=ten", None, 400, "whole number"),
        ("GET", "/api/runs?before=garbage", None, 400, "cursor"),
        ("POST", "/api/runs", {"state": {}}, 400, '"pipeline"'),
        ("POST", "/api/runs", {"pipeline": "gate", "state": [1]}, 400, '"state" must be'),
        ("POST", "/api/runs", {"pipeline": "gate", "priority": "high"}, 400, '"priority"'),
        ("GET", "/api/nothing-here", None, 404, "Not Found"),
        ("DELETE", "/api/runs", None, 405, "Method Not Allowed"),
    ],
)
def test_bad_requests_get_one_line_reasons(console, method, path, body, status, words):
    answer = console.http.request(method, path, json=body)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]
    assert "\n" not in answer.json()["error"]


def test_a_resume_of_a_run_not_paused_is_a_conflict(console):
    run_id = console.failed_run()
    answer = console.http.post(f"/api/runs/{run_id}/resume", json={})
    assert answer.status_code == 409 and "is not paused" in answer.json()["error"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"patch": NaN}', "not a finite number"),
        (b'{"patch": 5}', '"patch" must be a JSON object'),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_json_is_400_with_a_reason(console, body, words):
    run_id = console.paused_run()
    answer = console.http.post(f"/api/runs/{run_id}/resume", content=body,
                               headers={"content-type": "application/json"})  # fmt: skip
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["error"]
    assert console.store.get_run(run_id).status == "paused"  # nothing was posted


def test_a_body_over_the_limit_is_refused(console):
    run_id = console.paused_run()
    big = json.dumps({"patch": {"blob": "x" * (1 << 20)}})
    answer = console.http.post(f"/api/runs/{run_id}/resume", content=big)
    assert answer.status_code == 413 and "limit" in answer.json()["error"]


def test_run_data_is_json_never_html(console):
    result = console.factories["gate"].prepare(run_id="x").run(timeout=30)
    assert result.status == "paused"
    console.http.post("/api/runs/x/resume?wait=true",
                      json={"patch": {"approved": "<script>alert(1)</script>"}})  # fmt: skip
    answer = console.http.get("/api/runs/x")
    assert answer.json()["state"]["approved"] == "<script>alert(1)</script>"
    assert answer.headers["content-type"].startswith("application/json")
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    assert answer.headers["x-content-type-options"] == "nosniff"


# --- the event stream -----------------------------------------------------------------------


def test_the_stream_sends_each_journal_event_once_in_order_then_ends(console):
    run_id = console.failed_run()
    frames = sse_frames(console.http.get(f"/api/runs/{run_id}/events").text)
    journal = console.store.read_events(run_id)
    assert [f["event"] for f in frames] == [e.name for e in journal] + ["end"]
    assert [int(f["id"]) for f in frames[:-1]] == [e.seq for e in journal]
    data = json.loads(frames[0]["data"])
    assert data["name"] == "pipeline:start" and data["run_id"] == run_id


@pytest.mark.parametrize("how", ["header", "query"])
def test_the_stream_resumes_exactly_after_the_last_event_id(console, how):
    run_id = console.failed_run()
    seqs = [e.seq for e in console.store.read_events(run_id)]
    middle = seqs[1]
    if how == "header":
        answer = console.http.get(f"/api/runs/{run_id}/events",
                                  headers={"Last-Event-ID": str(middle)})  # fmt: skip
    else:
        answer = console.http.get(f"/api/runs/{run_id}/events", params={"after": middle})
    ids = [int(f["id"]) for f in sse_frames(answer.text) if "id" in f]
    assert ids == [s for s in seqs if s > middle]


def test_a_bad_last_event_id_is_400(console):
    run_id = console.failed_run()
    answer = console.http.get(f"/api/runs/{run_id}/events", headers={"Last-Event-ID": "x"})
    assert answer.status_code == 400 and "Last-Event-ID" in answer.json()["error"]


def test_a_live_stream_goes_on_when_the_run_does_and_survives_a_drop(console):
    """Open the stream on a paused run, read what is there, drop the connection; resume the
    run; reconnect with Last-Event-ID: every event arrives once, in order, then the end."""
    run_id = console.paused_run()
    got: list[dict[str, str]] = []
    with console.http.stream("GET", f"/api/runs/{run_id}/events") as stream:
        lines = stream.iter_lines()
        _read_until(lines, got, lambda f: f.get("event") == "pipeline:paused")
    last = max(int(f["id"]) for f in got if "id" in f)  # the connection is dropped here
    resumed = threading.Event()

    def resume_soon():
        console.http.post(f"/api/runs/{run_id}/resume?wait=true", json={"patch": {"approved": 1}})
        resumed.set()

    with console.http.stream("GET", f"/api/runs/{run_id}/events",
                             headers={"Last-Event-ID": str(last)}) as stream:  # fmt: skip
        threading.Thread(target=resume_soon).start()
        _read_until(stream.iter_lines(), got, lambda f: f.get("event") == "end")
    assert resumed.wait(30)
    ids = [int(f["id"]) for f in got if "id" in f]
    assert ids == [e.seq for e in console.store.read_events(run_id)]
    assert [f["event"] for f in got if "id" in f][-1] == "pipeline:success"


def _read_until(lines, got, done) -> None:
    block: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "event" in block:
                got.append(block)
                if done(block):
                    return
            block = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        block[name] = value.lstrip(" ")
    raise AssertionError(f"the stream ended early after {got}")


# --- the guard ------------------------------------------------------------------------------


@pytest.fixture
def guarded():
    from stageline.stores import MemoryStore

    served = Console(MemoryStore(), token="s3cret-token", daemon=False)
    yield served
    served.close()


def test_a_token_guards_the_api_and_the_pages(guarded):
    refused = guarded.http.get("/api/runs")
    assert refused.status_code == 401 and "Bearer" in refused.json()["error"]
    assert refused.headers["www-authenticate"].startswith("Bearer")
    wrong = guarded.http.get("/api/runs", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    right = guarded.http.get("/api/runs", headers={"Authorization": "Bearer s3cret-token"})
    assert right.status_code == 200
    page = guarded.http.get("/runs/x", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/runs/x"
    assert guarded.http.get("/api/health").status_code == 200  # liveness needs no token


def test_the_login_form_sets_a_cookie_the_api_accepts(guarded):
    bad = guarded.http.post("/login", data={"token": "nope", "next": "/"}, follow_redirects=False)
    assert bad.status_code == 303 and bad.headers["location"].startswith("/login?error=1")
    assert "stageline_session" not in bad.cookies
    good = guarded.http.post("/login", data={"token": "s3cret-token", "next": "//evil.example/"},
                             follow_redirects=False)  # fmt: skip
    assert good.status_code == 303 and good.headers["location"] == "/"  # no open redirect
    cookie = good.cookies["stageline_session"]
    assert cookie != "s3cret-token"
    assert "httponly" in good.headers["set-cookie"].lower()
    assert "samesite=strict" in good.headers["set-cookie"].lower()
    with httpx.Client(base_url=guarded.url, cookies={"stageline_session": cookie}) as client:
        assert client.get("/api/runs").status_code == 200
        assert client.get("/").status_code == 200


def test_cross_origin_mutations_are_refused_even_with_the_token(guarded):
    headers = {"Authorization": "Bearer s3cret-token", "Origin": "https://evil.example"}
    answer = guarded.http.post("/api/runs", json={"pipeline": "gate"}, headers=headers)
    assert answer.status_code == 403 and "cross-origin" in answer.json()["error"]
    fetch_site = {"Authorization": "Bearer s3cret-token", "Sec-Fetch-Site": "cross-site"}
    assert guarded.http.post("/api/runs", json={}, headers=fetch_site).status_code == 403
    same = {"Authorization": "Bearer s3cret-token", "Origin": guarded.url}
    answer = guarded.http.post("/api/runs", json={"pipeline": "gate"}, headers=same)
    assert answer.status_code == 202


def test_only_loopback_may_serve_without_a_token():
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("localhost", None)
    with pytest.raises(UserError, match="--http-token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(UserError, match="too short"):
        check_bind("0.0.0.0", "abc")
    check_bind("0.0.0.0", "long-enough-token")
