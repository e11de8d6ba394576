"""The console's pages in headless Chromium, against the real server, store and daemon.

What an operator does: open the runs table, find a paused run, open it, type a patch,
press Resume, and watch the run succeed and its journal grow without reloading. Also:
run data is shown as text (never run as HTML), the status filter, a failed run's
traceback, the patch editor refusing bad JSON, and the login form guarding a console
with a token. Nothing here sleeps to wait: Playwright's `expect` waits for the page.

STAGELINE_SCREENSHOTS=1 also saves the two pages' screenshots into docs/ (console.md
shows them); otherwise they go to the test's tmp_path.
"""

from __future__ import annotations

import os
import re

import pytest
from console_helpers import DOCS, VIEWPORT, ShopConsole, browser  # tests/ is on sys.path

from stageline.stores import SqliteStore

pytestmark = pytest.mark.timeout(120)

TOKEN = "pages-test-token-0123"
XSS = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=alert(2)>"
LONG = 15_000  # ms: generous for a loaded CI machine; expect() returns as soon as it holds


@pytest.fixture
def shop(tmp_path):
    console = ShopConsole(SqliteStore(tmp_path / "runs.db"))
    yield console
    console.close()


@pytest.fixture
def page():
    """A fresh page; any dialog (an alert() a value smuggled in) fails the test."""
    with browser() as chromium:
        context = chromium.new_context(viewport=VIEWPORT)
        tab = context.new_page()
        dialogs: list[str] = []
        errors: list[str] = []
        tab.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        tab.on("pageerror", lambda error: errors.append(str(error)))
        yield tab
        context.close()
        assert dialogs == [], f"a dialog opened: {dialogs}"
        assert errors == [], f"the page's scripts raised: {errors}"


def shots_dir(tmp_path):
    return DOCS if os.environ.get("STAGELINE_SCREENSHOTS") == "1" else tmp_path


def test_resume_a_paused_run_and_watch_it_succeed(shop, page, tmp_path):
    from playwright.sync_api import expect

    assert shop.run("order-1039", card_ok=True, approved=True, total=25) == "succeeded"
    assert shop.run("order-1040", card_ok=True, approved=True, total=3) == "succeeded"
    assert shop.run("order-1041", card_ok=True, approved=True, total=12) == "succeeded"
    assert shop.run("order-1042", total=40) == "failed"
    assert shop.run("order-1043", card_ok=True, total=99) == "paused"
    # order-1044's charge fails first, then succeeds when retried with the card fixed
    assert shop.run("order-1044", total=7) == "failed"
    retried = shop.http.post("/api/runs/order-1044/retry?wait=true",
                             json={"patch": {"card_ok": True}})  # fmt: skip
    assert retried.json()["status"] == "done", retried.text

    page.goto(shop.url + "/")
    row = page.locator("#runs-body tr[data-run-id='order-1044']")
    expect(row.locator(".badge")).to_have_text("paused", timeout=LONG)  # live: no reload
    expect(page.locator("#runs-body tr[data-run-id='order-1042'] .badge")).to_have_text("failed")
    expect(page.locator("#runs-body tr")).to_have_count(6)
    ids = page.locator("#runs-body tr").evaluate_all("rows => rows.map(r => r.dataset.runId)")
    assert ids == [f"order-{n}" for n in range(1044, 1038, -1)]  # newest first
    expect(row.locator("td.created time")).to_have_attribute("title", re.compile(r"\d{4}"))
    expect(page.locator("#runs-body tr.flash")).to_have_count(0)  # a changed row's flash ends
    page.screenshot(path=str(shots_dir(tmp_path) / "console-runs.png"))

    row.locator("a").click()
    expect(page).to_have_url(shop.url + "/runs/order-1044")
    expect(page.locator("#status")).to_have_text("paused")
    expect(page.locator("#waiting")).to_contain_text("waits for a resume")
    expect(page.locator("#waiting")).to_contain_text("stage ship")
    expect(page.locator("#waiting")).to_contain_text("since")
    expect(page.locator("#timeline .tl-row")).to_have_count(4)
    expect(page.locator("#timeline .tl-row.retried")).to_contain_text("↻ run 2")
    expect(page.locator("#resume-button")).to_be_enabled()
    expect(page.locator("#retry-button")).to_be_disabled()
    journaled = page.locator("#journal-body tr:not(.live)")
    expect(journaled.last).to_have_attribute("data-name", "pipeline:paused")
    before = journaled.count()
    page.fill("#resume-patch", '{\n  "approved": true,\n  "note": "ok by ops"\n}')
    page.screenshot(path=str(shots_dir(tmp_path) / "console-run.png"), full_page=True)

    page.click("#resume-button")
    expect(page.locator("#status")).to_have_text("succeeded", timeout=LONG)
    expect(page.locator("#resume-result")).to_contain_text("Done")
    expect(journaled.last).to_have_attribute("data-name", "pipeline:success", timeout=LONG)
    assert journaled.count() > before
    expect(page.locator("#journal-body tr[data-name='stage:success']").last).to_contain_text(
        "notify"
    )
    expect(page.locator("#timeline .tl-row[data-stage='ship']")).to_have_attribute(
        "data-outcome", "succeeded"
    )
    expect(page.locator("#state")).to_contain_text('"note": "ok by ops"')
    expect(page.locator("#resume-button")).to_be_disabled()
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # no reload
    if os.environ.get("STAGELINE_SCREENSHOTS") == "1":
        page.screenshot(path=str(tmp_path / "console-run-done.png"), full_page=True)


def test_run_data_is_shown_as_text(shop, page):
    from playwright.sync_api import expect

    shop.run("order-x", card_ok=True, note=XSS, **{XSS_IMG: XSS_IMG})
    page.goto(shop.url + "/runs/order-x")
    expect(page.locator("#status")).to_have_text("paused", timeout=LONG)
    expect(page.locator("#state")).to_contain_text(XSS)
    expect(page.locator("#state")).to_contain_text(XSS_IMG)
    assert page.locator("#state script, #state img, main img").count() == 0
    page.goto(shop.url + "/runs/" + "%3Cimg%20src%3Dx%20onerror%3Dalert(3)%3E")
    expect(page.locator("#notice")).to_contain_text("no run")
    expect(page.locator("#run-id")).to_have_text("<img src=x onerror=alert(3)>")
    odd = "x'\"<b>&%s{s}\\ ü?#"  # quotes, markup, percent, backslash, query and fragment
    shop.run(odd, card_ok=True)
    page.goto(shop.url + "/")
    link = page.locator("#runs-body td.run-id a", has_text="<b>")
    expect(link).to_have_text(odd)
    link.click()
    expect(page.locator("#run-id")).to_have_text(odd)
    expect(page.locator("#status")).to_have_text("paused", timeout=LONG)
    expect(page.locator("#journal-body tr").first).to_have_attribute("data-name", "pipeline:start")
    # the `page` fixture fails the test if any dialog opened


def test_the_runs_table_filters_by_status_in_the_url(shop, page):
    from playwright.sync_api import expect

    shop.run("order-ok", card_ok=True, approved=True)
    shop.run("order-bad")
    shop.run("order-wait", card_ok=True)
    page.goto(shop.url + "/?status=failed")
    expect(page.locator("#status-filter")).to_have_value("failed")
    expect(page.locator("#runs-body tr[data-run-id]")).to_have_count(1)
    expect(page.locator("#runs-body tr[data-run-id='order-bad']")).to_be_visible()

    page.select_option("#status-filter", "paused")
    expect(page).to_have_url(re.compile(r"\?status=paused$"))
    expect(page.locator("#runs-body tr[data-run-id]")).to_have_count(1)
    expect(page.locator("#runs-body tr[data-run-id='order-wait']")).to_be_visible()

    page.fill("#pipeline-filter", "nothing-like-it")
    page.press("#pipeline-filter", "Enter")
    expect(page).to_have_url(re.compile(r"pipeline=nothing-like-it"))
    expect(page.locator("#runs-body")).to_contain_text("No runs match")

    page.click("#clear-filters")
    expect(page.locator("#runs-body tr[data-run-id]")).to_have_count(3)
    shop.run("order-new", card_ok=True, approved=True)  # the table follows, no reload
    expect(page.locator("#runs-body tr[data-run-id]").first).to_have_attribute(
        "data-run-id", "order-new"
    )
    expect(page.locator("#runs-body tr[data-run-id='order-new'] .badge")).to_have_text("succeeded")


def test_a_failed_run_shows_its_traceback_and_retries_with_a_patch(shop, page):
    from playwright.sync_api import expect

    assert shop.run("order-fail", total=5) == "failed"
    page.goto(shop.url + "/runs/order-fail")
    expect(page.locator("#status")).to_have_text("failed", timeout=LONG)
    expect(page.locator("#error .error-line")).to_contain_text("card declined for order")
    expect(page.locator("#error pre.trace").first).to_contain_text("Traceback")
    expect(page.locator("#error pre.trace").first).to_contain_text("ValueError")
    expect(page.locator("#timeline .tl-row[data-stage='charge']")).to_have_attribute(
        "data-outcome", "failed"
    )
    expect(page.locator("#resume-button")).to_be_disabled()
    expect(page.locator("#retry-button")).to_be_enabled()

    page.fill("#retry-patch", "{card_ok: true}")  # not JSON: refused here, nothing sent
    page.click("#retry-button")
    expect(page.locator("#retry-result")).to_contain_text("Not JSON")
    expect(page.locator("#status")).to_have_text("failed")

    page.fill("#retry-patch", '{"card_ok": true}')
    page.click("#retry-button")
    expect(page.locator("#status")).to_have_text("paused", timeout=LONG)  # at the approval
    expect(page.locator("#error-panel")).to_be_hidden()
    expect(page.locator("#abort-button")).to_be_enabled()
    page.fill("#abort-reason", "customer cancelled")
    page.click("#abort-button")
    expect(page.locator("#status")).to_have_text("aborted", timeout=LONG)
    expect(page.locator("#abort-result")).to_contain_text("Done")


def test_the_login_form_guards_a_console_with_a_token(tmp_path, page):
    from playwright.sync_api import expect

    console = ShopConsole(SqliteStore(tmp_path / "runs.db"), token=TOKEN)
    try:
        console.run("order-guarded", card_ok=True)
        page.goto(console.url + "/runs/order-guarded")
        expect(page).to_have_url(re.compile(r"/login\?next=/runs/order-guarded$"))
        page.fill("#token", "not-the-token")
        page.click("#login-button")
        expect(page).to_have_url(re.compile(r"/login\?error=1"))
        expect(page.locator("#login-error")).to_be_visible()
        assert page.context.cookies() == []

        page.fill("#token", TOKEN)
        page.click("#login-button")
        expect(page).to_have_url(console.url + "/runs/order-guarded")
        expect(page.locator("#status")).to_have_text("paused", timeout=LONG)
        expect(page.locator("#journal-body tr").first).to_be_visible()
        page.goto(console.url + "/")
        expect(page.locator("#runs-body tr[data-run-id='order-guarded']")).to_be_visible()
        page.context.clear_cookies()  # logged out: the next poll's 401 leads to the form
        expect(page).to_have_url(re.compile(r"/login\?next=%2F$"), timeout=LONG)
    finally:
        console.close()
