"""Plain-HTTP endpoints answered on the websocket port.

Load balancers and orchestrators probe `/healthz` (the process runs) and `/readyz`
(it can serve: the database answers). They are answered in the websocket
handshake hook, so one port serves both and a probe never becomes a connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from prometheus_client import CONTENT_TYPE_LATEST
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

logger = logging.getLogger(__name__)

# (the problem, or None when ready; detail lines shown either way)
ReadinessCheck = Callable[[], Awaitable[tuple[str | None, list[str]]]]
READINESS_TIMEOUT_SECONDS = 2.0


def text_response(status: HTTPStatus, body: str) -> Response:
    data = body.encode()
    headers = Headers(
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(status.value, status.phrase, headers, data)


def metrics_response(body: bytes) -> Response:
    headers = Headers(
        [
            ("Content-Type", CONTENT_TYPE_LATEST),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)


async def readiness(check: ReadinessCheck) -> Response:
    """200 when the check reports no problem in time, else 503 with the reason."""
    try:
        problem, details = await asyncio.wait_for(check(), READINESS_TIMEOUT_SECONDS)
    except TimeoutError:
        problem, details = "readiness check timed out", []
    detail = "".join(f"{line}\n" for line in details)
    if problem is None:
        return text_response(HTTPStatus.OK, f"ready\n{detail}")
    return text_response(HTTPStatus.SERVICE_UNAVAILABLE, f"not ready: {problem}\n{detail}")


def http_router(
    check: ReadinessCheck, render_metrics: Callable[[], bytes] | None = None
) -> Callable[[ServerConnection, Request], Awaitable[Response | None]]:
    """The `process_request` hook: HTTP paths get a response, `/` upgrades to websocket."""

    async def route(connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return text_response(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            return await readiness(check)
        if path == "/metrics" and render_metrics is not None:
            return metrics_response(render_metrics())
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return text_response(
                HTTPStatus.NOT_FOUND, "sitebuilder-realtime: connect a websocket to /\n"
            )
        return None

    return route
