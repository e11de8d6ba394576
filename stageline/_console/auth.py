"""Who may use the console: the token, the login cookie, same-origin mutations, body size.

An ASGI middleware in front of every route, so the event stream is guarded like the rest:
- Without a token (only allowed on a loopback bind, checked by the CLI) anyone who can
  reach the port may read and steer, as with the CLI on the same machine.
- With a token, every request needs `Authorization: Bearer TOKEN`, or the cookie the
  login form sets (an HMAC of the token, so the cookie is not the token itself). Pages
  without it are sent to `/login`; the API answers 401.
- Without a token, a request whose `Host` is not a loopback name (127.0.0.1, localhost,
  [::1]) is refused 403: a page of another site whose DNS name was rebound to 127.0.0.1
  sends its own name (DNS rebinding), so it can neither read nor steer.
- A mutation (any POST) whose `Origin` is not this server, or that a browser marks
  `Sec-Fetch-Site: cross-site`, is refused 403 whatever its credentials: a page on
  another site cannot steer runs through a logged-in operator's browser (nor through a
  console on loopback that needs no token).
- Every answer carries a strict Content-Security-Policy: scripts and styles only from
  this server, so a value that slipped past escaping still could not run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "stageline_session"
OPEN_PATHS = frozenset({"/login", "/api/health", "/static/console.css", "/static/console.js"})
"""Served without credentials: the login form (and its style), and liveness."""
SECURITY_HEADERS = (
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; "
     b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
)  # fmt: skip


def session_value(token: str) -> str:
    """What the login cookie holds: proof of the token, not the token."""
    return hmac.new(token.encode(), b"stageline console session", hashlib.sha256).hexdigest()


class Guard:
    """The middleware: credentials, same-origin mutations, security headers."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token
        self.session = None if token is None else session_value(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        if self.token is None and not loopback_host(headers.get("host", "")):
            await _refuse(send, 403, "this console has no token, so it answers only to "
                          "127.0.0.1, localhost or [::1] in the address; give it --http-token "
                          "to be reached under another name")  # fmt: skip
            return
        if scope["method"] == "POST" and cross_origin(scope, headers):
            await _refuse(send, 403, "cross-origin requests may not change runs")
            return
        if not self._allowed(scope["path"], headers):
            await self._challenge(scope, send)
            return
        await self.app(scope, receive, _with_headers(send))

    def _allowed(self, path: str, headers: dict[str, str]) -> bool:
        if self.token is None or path in OPEN_PATHS:
            return True
        bearer = headers.get("authorization", "")
        if bearer.lower().startswith("bearer ") and _same(bearer[7:].strip(), self.token):
            return True
        cookie = cookies(headers.get("cookie", "")).get(COOKIE)
        return cookie is not None and self.session is not None and _same(cookie, self.session)

    async def _challenge(self, scope: Scope, send: Send) -> None:
        path = scope["path"]
        if path.startswith("/api/"):
            await _refuse(send, 401, "this console needs a token: send 'Authorization: "
                          "Bearer TOKEN' (the --http-token it was started with)",
                          extra=((b"www-authenticate", b'Bearer realm="stageline"'),))  # fmt: skip
            return
        query = scope.get("query_string", b"").decode("latin-1")
        target = "/login?next=" + quote(path + (f"?{query}" if query else ""), safe="/")
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", target.encode()), *SECURITY_HEADERS]})  # fmt: skip
        await send({"type": "http.response.body", "body": b""})


def cross_origin(scope: Scope, headers: dict[str, str]) -> bool:
    """Did a browser send this from a page of another origin?"""
    if headers.get("sec-fetch-site") == "cross-site":
        return True
    origin = headers.get("origin")
    if origin is None:
        return False  # not a browser's cross-origin request (curl, a script)
    host = _without_default_port(headers.get("host", ""))
    return _without_default_port(origin) not in {f"http://{host}", f"https://{host}"}


def _without_default_port(text: str) -> str:
    for port in (":80", ":443"):
        if text.endswith(port):
            return text[: -len(port)]
    return text


def loopback_host(host: str) -> bool:
    """Does the Host header name this machine's loopback? A console without a token
    refuses any other name: a page whose DNS name was rebound to 127.0.0.1 sends its own."""
    if host.startswith("["):
        name = host[1 : host.find("]")]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name.lower() in {"localhost", "::1"} or name.startswith("127.")


def cookies(header: str) -> dict[str, str]:
    found = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            found[name] = value
    return found


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _with_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
        await send(message)

    return sending


async def _refuse(
    send: Send, status: int, reason: str, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    body = json.dumps({"error": reason}).encode()
    headers = [(b"content-type", b"application/json"), *extra, *SECURITY_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
