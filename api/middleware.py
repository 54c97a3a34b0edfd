"""Pure ASGI middleware: request ids, access logs, request metrics, the body-size limit and the
last-resort 500."""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import PayloadTooLarge
from api.responses import failure
from streamproc.metrics import OTHER, ApiMetrics

log = logging.getLogger("streamproc.api")

REQUEST_ID_HEADER = "x-request-id"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Ids unique across processes and restarts without a uuid per request: random prefix + counter.
_ID_PREFIX = secrets.token_hex(4) + "-"
_request_numbers = itertools.count(1)


class RequestContext:
    """Gives every request an id, logs and counts it once answered, and turns a crash into a
    clean 500."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, metrics: ApiMetrics | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run one request (HTTP only; lifespan passes through)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        if _declared_length(scope) > self.max_body_bytes:
            response = failure(413, _too_large(self.max_body_bytes))
            await response(scope, receive, send_with_id)
        else:
            try:
                await self.app(scope, self._limited(receive), send_with_id)
            except Exception:
                # The traceback goes to the log under the request id, never to the client.
                log.exception(
                    "request %s failed: %s %s", request_id, scope["method"], scope["path"]
                )
                if not response_started:
                    response = failure(500, "Internal server error.", request_id=request_id)
                    await response(scope, receive, send_with_id)
        elapsed_s = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.observe(_route(scope), scope["method"], status, elapsed_s)
        elapsed_ms = elapsed_s * 1000
        # The same facts as fields, for JSON logs (STREAMPROC_LOG_FORMAT=json).
        fields = {
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "duration_ms": round(elapsed_ms, 1),
            "request_id": request_id,
        }
        log.info(
            "%s %s %s %.1fms id=%s",
            scope["method"],
            scope["path"],
            status,
            elapsed_ms,
            request_id,
            extra=fields,
        )

    def _limited(self, receive: Receive) -> Receive:
        """A receive that stops a chunked body once it passes the limit."""
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise PayloadTooLarge(_too_large(self.max_body_bytes))
            return message

        return limited


def _route(scope: Scope) -> str:
    """The template of the route that answered (`/api/orders/{order_id}`), set on the scope by
    the router; `other` for a path no route matched (a label per raw path would be unbounded)."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else OTHER


def _too_large(limit: int) -> str:
    return f"The request body is larger than {limit} bytes."


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            given: str = value.decode("latin-1")
            if _SAFE_REQUEST_ID.match(given):
                return given
    return f"{_ID_PREFIX}{next(_request_numbers):x}"


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0
