"""Plain-HTTP endpoints answered on the websocket port.

Load balancers and orchestrators probe `/healthz` (the process runs) and `/readyz`
(it can serve: the database answers). They are answered in the websocket
handshake hook, so one port serves both and a probe never becomes a connection.
What only operators should see, `/metrics` and the details of `/readyz`, is shown to
requests from loopback or with `Authorization: Bearer <SITEBUILDER_METRICS_TOKEN>`;
anyone else gets 403 and the bare status.
The same hook serves the browser client (`/sitebuilder-client.js` and its `.d.ts`),
and, in demo mode only, the demo editor at `/` and its `/demo/*` routes.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from gateway.app.demo import Demo, DemoReply
from gateway.presence.sessions import client_address

logger = logging.getLogger(__name__)

# (the problem, or None when ready; detail lines shown either way)
ReadinessCheck = Callable[[], Awaitable[tuple[str | None, list[str]]]]
READINESS_TIMEOUT_SECONDS = 2.0
METRICS_REFUSED = (
    "metrics are for operators: ask from loopback, or with "
    "Authorization: Bearer <SITEBUILDER_METRICS_TOKEN>\n"
)

STATIC_DIR = Path(__file__).parent / "static"
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".ts": "text/plain; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# Files anyone may fetch: the client, for any front end to import.
CLIENT_FILES = {
    "/sitebuilder-client.js": "sitebuilder-client.js",
    "/sitebuilder-client.d.ts": "sitebuilder-client.d.ts",
}
# The demo editor's files, served only in demo mode.
DEMO_FILES = {"/": "index.html", "/demo.js": "demo.js", "/demo.css": "demo.css"}


# websockets closes the connection after any answer but a websocket upgrade: say so,
# or an HTTP client (Node's fetch, browsers) may send its next request on the closed
# connection and wait for an answer that never comes.
CLOSE = ("Connection", "close")


def text_response(status: HTTPStatus, body: str) -> Response:
    data = body.encode()
    headers = Headers(
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
            CLOSE,
        ]
    )
    return Response(status.value, status.phrase, headers, data)


def static_response(name: str) -> Response:
    """A file of gateway/app/static, read on each request (small, and edits show at once)."""
    path = STATIC_DIR / name
    data = path.read_bytes()
    headers = Headers(
        [
            ("Content-Type", CONTENT_TYPES[path.suffix]),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-cache"),
            CLOSE,
        ]
    )
    return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, data)


def json_response(reply: DemoReply) -> Response:
    status = HTTPStatus(reply.status)
    headers = Headers(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(reply.body))),
            ("Cache-Control", "no-store"),
            CLOSE,
        ]
    )
    return Response(status.value, status.phrase, headers, reply.body)


def metrics_response(body: bytes) -> Response:
    headers = Headers(
        [
            ("Content-Type", CONTENT_TYPE_LATEST),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            CLOSE,
        ]
    )
    return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)


async def readiness(check: ReadinessCheck, *, details_shown: bool) -> Response:
    """200 when the check reports no problem in time, else 503 with the reason (and
    the details, for operators)."""
    try:
        problem, details = await asyncio.wait_for(check(), READINESS_TIMEOUT_SECONDS)
    except TimeoutError:
        problem, details = "readiness check timed out", []
    detail = "".join(f"{line}\n" for line in details) if details_shown else ""
    if problem is None:
        return text_response(HTTPStatus.OK, f"ready\n{detail}")
    return text_response(HTTPStatus.SERVICE_UNAVAILABLE, f"not ready: {problem}\n{detail}")


OperatorCheck = Callable[[ServerConnection, Request], bool]


def operator_check(token: str | None, *, trust_proxy: bool) -> OperatorCheck:
    """Whether a request is an operator's: from loopback (behind a trusted proxy: the
    client's address), or bearing `token` when one is set."""
    expected = f"Bearer {token}".encode() if token else None

    def is_operator(connection: ServerConnection, request: Request) -> bool:
        if expected is not None:
            given = request.headers.get("Authorization", "").encode()
            if hmac.compare_digest(given, expected):
                return True
        address = client_address(connection, trust_proxy=trust_proxy, headers=request.headers)
        return address is not None and ipaddress.ip_address(address).is_loopback

    return is_operator


def http_router(
    check: ReadinessCheck,
    is_operator: OperatorCheck,
    render_metrics: Callable[[], bytes] | None = None,
    demo: Demo | None = None,
) -> Callable[[ServerConnection, Request], Awaitable[Response | None]]:
    """The `process_request` hook: HTTP paths get a response, `/` upgrades to websocket.

    Without `demo`, the demo's paths are 404 like any unknown path."""

    async def route(connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return text_response(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            return await readiness(check, details_shown=is_operator(connection, request))
        if path == "/metrics" and render_metrics is not None:
            if not is_operator(connection, request):
                return text_response(HTTPStatus.FORBIDDEN, METRICS_REFUSED)
            return metrics_response(render_metrics())
        if path in CLIENT_FILES:
            return static_response(CLIENT_FILES[path])
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        if demo is not None:
            if path in DEMO_FILES:
                return static_response(DEMO_FILES[path])
            if path == "/demo/users":
                return json_response(demo.users())
            if path == "/demo/token":
                return json_response(demo.token(request.path))
        return text_response(
            HTTPStatus.NOT_FOUND, "sitebuilder-realtime: connect a websocket to /\n"
        )

    return route
