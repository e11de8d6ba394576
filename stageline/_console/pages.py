"""The pages: static HTML shells whose scripts read the API, and the login form's POST.

The pages hold no run data: their scripts fetch it and put it in the page as text (never
as HTML), so every value a run carries is shown escaped. Assets ship in the wheel.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response

from .auth import COOKIE, session_value

STATIC = Path(__file__).parent / "static"
LOGIN_BODY_LIMIT = 4096


class Pages:
    """The page routes; `token` is the console's --http-token (None: no login)."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    async def runs(self, request: Request) -> Response:
        return _page("runs.html")

    async def run(self, request: Request) -> Response:
        return _page("run.html")

    async def login_form(self, request: Request) -> Response:
        return _page("login.html")

    async def login(self, request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > LOGIN_BODY_LIMIT:
                return Response("login form too large", status_code=413)
        form = parse_qs(body.decode("utf-8", "replace"))
        target = local_path(form.get("next", ["/"])[0])
        given = form.get("token", [""])[0]
        if self.token is None or not secrets.compare_digest(given.encode(), self.token.encode()):
            again = f"/login?error=1&next={quote(target, safe='/')}"
            return RedirectResponse(again, status_code=303)
        answer = RedirectResponse(target, status_code=303)
        answer.set_cookie(COOKIE, session_value(self.token), httponly=True, samesite="strict",
                          path="/")  # fmt: skip
        return answer


def local_path(target: str) -> str:
    """`next` if it is a path on this server, else "/" (no redirect to another site)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _page(name: str) -> Response:
    headers = {"cache-control": "no-store"}
    return FileResponse(STATIC / name, media_type="text/html", headers=headers)
