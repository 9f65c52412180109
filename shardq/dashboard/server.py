"""The dashboard's web server: a read-only JSON API and the static app, on Starlette + uvicorn.

Why these: Starlette is a small, well-kept ASGI toolkit (routing, static files, trusted-host
checks) and uvicorn its usual server; both are pure Python wheels. The app only answers GET:
there is no route that writes, so nothing can change a job from the browser.

Why a trusted-host check on loopback: a page on another site can point a name it controls at
127.0.0.1 (DNS rebinding) and read a loopback server as same-origin; refusing any Host header
but the loopback names closes that. Served on another interface (``--host``, opted in by the
user), any Host is accepted.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.responses import JSONResponse as _StarletteJSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from shardq.core.artifacts import dumps_standard
from shardq.core.jobstore import JobNotFound
from shardq.dashboard.data import KINDS, STATUSES, DashboardData

STATIC = Path(__file__).resolve().parent / "static"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# The app loads only its own files: no CDN, no inline script, nothing framed.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class JSONResponse(_StarletteJSONResponse):
    """Starlette's JSON response, with non-finite numbers as "nan"/"inf"/"-inf": its own encoder
    refuses NaN (a diverged trial's metrics made the job page answer 500)."""

    def render(self, content: Any) -> bytes:
        """Standard JSON of ``content`` (``shardq.core.artifacts.standard``)."""
        return dumps_standard(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def is_loopback(host: str) -> bool:
    """True for the loopback names and addresses the dashboard binds by default."""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


class SecurityHeaders:
    """ASGI middleware: every response carries ``SECURITY_HEADERS``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Add the headers to the response start message."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(
    data: DashboardData, *, host: str = "127.0.0.1", refresh_s: float = 2.0, source: str = ""
) -> Starlette:
    """The dashboard app over ``data``.

    Parameters
    ----------
    data:
        Read access to the job table, bucket and queues.
    host:
        The interface served; on loopback only loopback Host headers are accepted.
    refresh_s:
        How often the page polls while a job runs.
    source:
        Where the data comes from (shown in the page header), e.g. the endpoint URL.
    """

    def config(request: Request) -> Response:
        return JSONResponse({"refresh_s": refresh_s, "read_only": True, "source": source})

    def jobs(request: Request) -> Response:
        status = request.query_params.get("status") or None
        kind = request.query_params.get("kind") or None
        if status and status not in STATUSES:
            return _error(400, f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        if kind and kind not in KINDS:
            return _error(400, f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        raw_limit = request.query_params.get("limit", "50")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 500:
            return _error(400, f"limit must be an integer from 1 to 500, got {raw_limit!r}")
        return JSONResponse(data.jobs(status=status, kind=kind, limit=int(raw_limit)))

    def job(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            return JSONResponse(data.job(job_id))
        except JobNotFound:
            return _error(404, f"no job '{job_id}' in table {data.store.table}")

    def manifest(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            found = data.manifest(job_id)
        except JobNotFound:
            return _error(404, f"no job '{job_id}' in table {data.store.table}")
        if found is None:
            return _error(404, f"job '{job_id}' has no result manifest yet")
        return JSONResponse(found)

    def queues(request: Request) -> Response:
        return JSONResponse(data.queue_depths())

    def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    allowed = ["127.0.0.1", "localhost", "[::1]", "::1"] if is_loopback(host) else ["*"]
    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/config", config),
            Route("/api/jobs", jobs),
            Route("/api/jobs/{job_id:str}", job),
            Route("/api/jobs/{job_id:str}/manifest", manifest),
            Route("/api/queues", queues),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[Middleware(SecurityHeaders), Middleware(TrustedHostMiddleware, allowed_hosts=allowed)],
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one); OSError when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """The http URL of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


@dataclass
class Running:
    """A dashboard served from a background thread (the demo, tests)."""

    url: str
    server: Any
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(timeout)


def serve(app: Starlette, *, log_level: str = "warning") -> Any:
    """A uvicorn server for ``app`` (not started: ``run(sockets=[sock])`` serves a bound socket)."""
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off")
    return uvicorn.Server(config)


def start_in_background(
    data: DashboardData,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    refresh_s: float = 2.0,
    source: str = "",
    ready_timeout: float = 10.0,
    on_error: Callable[[BaseException], None] | None = None,
) -> Running:
    """Serve the dashboard from a daemon thread; returns once it accepts connections."""
    sock = bind(host, port)
    server = serve(create_app(data, host=host, refresh_s=refresh_s, source=source))

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # a thread's exception would vanish: hand it on
            if on_error:
                on_error(exc)
            raise
        finally:
            sock.close()

    thread = threading.Thread(target=run, name="shardq-dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        server.should_exit = True
        raise RuntimeError(f"the dashboard did not start on {url_of(sock)} within {ready_timeout:.0f} s")
    return Running(url=url_of(sock), server=server, thread=thread)
