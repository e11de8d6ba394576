"""Running the console under uvicorn: in a thread beside a daemon, or in the foreground.

uvicorn is told not to configure logging (`log_config=None`) and not to log each request:
the console's process decides what is logged. Open event streams get a second to close
when it stops.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from collections.abc import Callable, Iterator
from typing import Any

from stageline._cli_errors import UserError

START_TIMEOUT = 10.0


def parse_bind(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:8080` for IPv6) as (host, port); a clear error otherwise."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UserError(f"--http must be HOST:PORT, like 127.0.0.1:8080; got {text!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Only a loopback address may serve without a token."""
    if token is None and not is_loopback(host):
        raise UserError(
            f"--http {host} is reachable from other machines: give --http-token TOKEN "
            "(every request must then carry it), or bind 127.0.0.1"
        )
    if token is not None and len(token) < 8:
        raise UserError("--http-token is too short to guard anything: use 8 characters or more")


def _server(app: Any, host: str, port: int) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, minus its signal handling: it would raise SIGTERM again once
        stopped (exit status -15), where a stopped console exits 0 like `serve`."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                            lifespan="on", timeout_graceful_shutdown=1)  # fmt: skip
    return Server(config)


def serve_in_thread(
    app: Any, host: str = "127.0.0.1", port: int = 0
) -> tuple[str, Callable[[], None]]:
    """Serve `app` on a thread; (its base URL, a function that stops it). Port 0: any."""
    server = _server(app, host, port)
    thread = threading.Thread(target=server.run, name="console-http", daemon=True)
    thread.start()
    deadline = threading.Event()
    for _ in range(int(START_TIMEOUT / 0.01)):
        if server.started or not thread.is_alive():
            break
        deadline.wait(0.01)
    if not server.started:
        server.should_exit = True
        raise UserError(f"the console could not listen on {host}:{port} (is the port taken?)")
    bound = server.servers[0].sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host

    def stop() -> None:
        _stopping(app, server)
        thread.join(timeout=5)

    return f"http://{shown}:{bound}", stop


def serve_forever(app: Any, host: str, port: int) -> None:
    """Serve `app` until SIGINT or SIGTERM (then exit 0)."""
    import signal

    server = _server(app, host, port)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: _stopping(app, server))
    server.run()


def _stopping(app: Any, server: Any) -> None:
    """Stop the server, ending open event streams first (their clients reconnect, with
    Last-Event-ID, to whichever console serves the store next)."""
    watch = getattr(getattr(app, "state", None), "watch", None)
    if watch is not None:
        watch.close_streams()
    server.should_exit = True
