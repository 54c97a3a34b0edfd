"""One Endpoint per route: its typed inputs and output, auth, and the wrapper that runs it.

An endpoint is a declaration (method, path, summary, path/query/body structs, response type) plus
an async handler taking a `Call`. The same declaration builds the Starlette route and its OpenAPI
operation, so what the schema promises is what the code parses.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec
import redis.asyncio
import redis.exceptions
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from api.errors import ApiError, Forbidden, Unauthorized, Unavailable
from api.params import parse_body, parse_values
from api.responses import failure, success
from streamproc.keys import Keys
from streamproc.lua import AsyncScripts
from streamproc.settings import Settings

# Credentials in a URL end up in access logs and browser history: refuse them outright.
URL_TOKEN_PARAMS = frozenset({"token", "access_token", "api_token", "api_key", "apikey"})
WRITES_DISABLED = (
    "Write endpoints are disabled: set STREAMPROC_API_TOKEN on the API process and send "
    "'Authorization: Bearer <token>'."
)

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

P = TypeVar("P")
Q = TypeVar("Q")
B = TypeVar("B")


@dataclass(frozen=True, slots=True)
class Services:
    """What handlers share for the life of the app: settings, key builder and Redis pool."""

    settings: Settings
    keys: Keys
    redis: redis.asyncio.Redis
    scripts: AsyncScripts


@dataclass(frozen=True, slots=True)
class Call(Generic[P, Q, B]):
    """One request as a handler sees it: parsed inputs and the shared services."""

    request: Request
    services: Services
    path: P
    query: Q
    body: B


Handler = Callable[[Call[Any, Any, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A route: what it takes, what it returns, and who may call it."""

    method: str
    path: str
    handler: Handler
    summary: str
    response: Any
    path_params: type[msgspec.Struct] | None = None
    query: type[msgspec.Struct] | None = None
    body: type[msgspec.Struct] | None = None
    auth: bool = False
    status: int = 200
    uses_redis: bool = True
    tag: str = "system"
    errors: tuple[int, ...] = field(default=())
    # Work that legitimately outlasts the per-request Redis deadline (DuckDB scans, a rebuild)
    # gets a longer one; each Redis command still times out on its own, so an outage is a fast
    # 503 whatever this says.
    deadline_ms: int | None = None

    @property
    def name(self) -> str:
        """operationId: the handler's name."""
        return getattr(self.handler, "__name__", self.path)

    def deadline_s(self, settings: Settings) -> float:
        """Seconds the handler may take before a 503: the endpoint's deadline or the setting's."""
        return max(self.deadline_ms or 0, settings.api_redis_deadline_ms) / 1000

    def error_statuses(self) -> list[int]:
        """Every error status this endpoint can answer with (documented in OpenAPI)."""
        statuses = set(self.errors)
        if self.path_params or self.query or self.body:
            statuses.add(422)
        if self.auth:
            statuses |= {401, 403}
        if self.body:
            statuses.add(413)
        if self.uses_redis:
            statuses.add(503)
        statuses.add(403)  # a token in the query string is refused on every route
        return sorted(statuses)

    def route(self) -> Route:
        """The Starlette route running this endpoint."""
        return Route(self.path, self.asgi_app(), methods=[self.method], name=self.name)

    def asgi_app(self) -> _AsgiApp:
        """The ASGI app running this endpoint (any method; the route checks it)."""

        async def run(request: Request) -> Response:
            services: Services = request.app.state.services
            if URL_TOKEN_PARAMS.intersection(request.query_params.keys()):
                raise Forbidden(
                    "Tokens are not accepted in the URL; send 'Authorization: Bearer <token>'."
                )
            if self.auth:
                authorize(request, services.settings.api_token)
            path = parse_values(request.path_params, self.path_params) if self.path_params else None
            query = parse_values(request.query_params, self.query) if self.query else None
            # Read any body, even one the endpoint ignores: a chunked body has no Content-Length,
            # so reading it is what enforces STREAMPROC_API_MAX_BODY_BYTES (413).
            raw = await request.body() if self.method in BODY_METHODS else b""
            body = parse_body(raw, self.body) if self.body else None
            call: Call[Any, Any, Any] = Call(request, services, path, query, body)
            if self.uses_redis:
                try:
                    async with asyncio.timeout(self.deadline_s(services.settings)):
                        result = await self.handler(call)
                except (
                    TimeoutError,
                    redis.exceptions.ConnectionError,
                    redis.exceptions.TimeoutError,
                ) as exc:
                    raise Unavailable("The data store is unavailable; try again shortly.") from exc
            else:
                result = await self.handler(call)
            return result if isinstance(result, Response) else success(result, self.status)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            # A plain ASGI endpoint: Starlette's per-request wrapper layers cost more than the
            # work here, and an ApiError maps to its envelope right where it is raised.
            try:
                response = await run(Request(scope, receive))
            except ApiError as exc:
                response = failure(exc.status, exc.message, exc.errors, headers=exc.headers)
            await response(scope, receive, send)

        return _AsgiApp(app)


def build_routes(endpoints: Sequence[Endpoint]) -> list[Route]:
    """One Starlette route per path. A path with several methods (GET and PUT) dispatches on the
    method, so a wrong one gets a 405 whose Allow header names all of them."""
    by_path: dict[str, list[Endpoint]] = {}
    for ep in endpoints:
        by_path.setdefault(ep.path, []).append(ep)
    routes = []
    for path, group in by_path.items():
        if len(group) == 1:
            routes.append(group[0].route())
            continue
        apps = {ep.method: ep.asgi_app() for ep in group}

        async def dispatch(
            scope: Scope, receive: Receive, send: Send, apps: dict[str, _AsgiApp] = apps
        ) -> None:
            method = scope["method"]
            await apps["GET" if method == "HEAD" else method](scope, receive, send)

        routes.append(Route(path, _AsgiApp(dispatch), methods=list(apps), name=group[0].name))
    return routes


@dataclass(frozen=True, slots=True)
class _AsgiApp:
    """Marks a function as a raw ASGI app (Starlette wraps plain functions as request handlers)."""

    app: Callable[[Scope, Receive, Send], Awaitable[None]]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the wrapped app."""
        await self.app(scope, receive, send)


def authorize(request: Request, token: str | None) -> None:
    """Check `Authorization: Bearer <token>` in constant time; raise 401/403 otherwise."""
    if not token:
        raise Forbidden(WRITES_DISABLED)
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("Authentication required: send 'Authorization: Bearer <token>'.")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("The bearer token is not valid.")
