"""The console's pages in a real browser: headless Chromium, and a shop to look at.

`browser()` launches Debian's Chromium through Playwright, or skips the test with a loud
reason (a failure with STAGELINE_REQUIRE_BROWSER=1). `ShopConsole` serves `build_app` on
a store with a daemon acting on its mailbox (as console_fixtures.Console does) for the
`shop` pipeline: stages that take visible time, a charge that fails until the card is
fixed, and an approval that pauses until a resume patch approves it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import Console

from stageline import Pause, Pipeline, Stage, Step

CHROMIUM = Path(os.environ.get("STAGELINE_CHROMIUM", "/usr/bin/chromium"))
REQUIRE_BROWSER = os.environ.get("STAGELINE_REQUIRE_BROWSER") == "1"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
VIEWPORT = {"width": 1280, "height": 800}
DOCS = Path(__file__).resolve().parent.parent / "docs"


def browser_problem() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium, or set STAGELINE_CHROMIUM)"
    return None


@contextmanager
def browser() -> Iterator[Any]:
    """A headless Chromium (Playwright's sync API), closed afterwards."""
    problem = browser_problem()
    if problem is not None:
        message = f"BROWSER TESTS NOT RUN: {problem}"
        if REQUIRE_BROWSER:
            pytest.fail(f"{message} (STAGELINE_REQUIRE_BROWSER=1 makes this a failure)",
                        pytrace=False)  # fmt: skip
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


# --- the shop ------------------------------------------------------------------------------


def _work(seconds: float, patch: dict[str, Any]) -> Any:
    def step(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        time.sleep(seconds)  # the stage's work: gives the timeline bars a length
        return patch

    return step


def _check(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
    time.sleep(0.025)
    if ctx.attempt == 1:  # the first call always times out: the timeline marks the retry
        raise TimeoutError("the fraud service did not answer")
    return {"valid": True}


def _charge(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
    time.sleep(0.08)
    if not state.get("card_ok"):
        raise ValueError(f"card declined for order {state.get('order')}")
    return {"charged": state.get("total", 0)}


def _approval(state: dict[str, Any], results: Any) -> Any:
    return None if state.get("approved") else Pause("ship")


SHOP = Pipeline(
    "shop",
    [
        Stage("validate", 1, steps=[Step("check", _check, retries=1)]),
        Stage("charge", 2, steps=[Step("card", _charge)]),
        Stage("approve", 3, steps=[Step("ask", _work(0.02, {"asked": True}))],
              router=_approval),
        Stage("ship", 4, steps=[Step("label", _work(0.25, {"shipped": True}))]),
        Stage("notify", 5, steps=[Step("mail", _work(0.04, {"mailed": True}))]),
    ],
)  # fmt: skip


class ShopConsole(Console):
    """The console over `store`, and a daemon serving its mailbox for SHOP."""

    def __init__(self, store: Any, *, token: str | None = None) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        super().__init__(store, token=token, pipelines=[SHOP], headers=headers)
        self.factory = self.factories[SHOP.id]

    def run(self, run_id: str, **state: Any) -> str:
        """Run an order in this process until it pauses, fails or succeeds; its status."""
        context = self.factory.prepare(run_id=run_id, state={"order": run_id, **state})
        return str(context.run(timeout=30).status)
