"""The Starlette application: the endpoint table, error envelopes, middleware and Redis lifespan.

Run with `streamproc api`, or any ASGI server as the factory `api.app:create_app`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.dashboard import dashboard_route
from api.endpoints import Services, build_routes
from api.errors import ApiError
from api.metrics import metrics
from api.middleware import RequestContext
from api.openapi import build_openapi
from api.responses import JSON, failure
from api.routes import ENDPOINTS
from streamproc import __version__
from streamproc.address import resolve_redis_url
from streamproc.connection import async_client
from streamproc.keys import Keys
from streamproc.logs import LogConfig, setup_logging
from streamproc.lua import AsyncScripts
from streamproc.metrics import ApiMetrics, multiprocess_dir
from streamproc.settings import Settings

log = logging.getLogger("streamproc.api")

# Enough for many concurrent requests on one worker; the pool queues beyond it.
REDIS_POOL_SIZE = 64
_HTTP_MESSAGES = {
    404: "Not found.",
    405: "Method not allowed.",
}


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return failure(exc.status, exc.message, exc.errors, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = _HTTP_MESSAGES.get(exc.status_code, "The request could not be handled.")
    return failure(exc.status_code, message, headers=exc.headers)


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the app (uvicorn factory); settings come from the environment unless given."""
    settings = settings or Settings.from_env()
    if not logging.getLogger().handlers and not log.handlers:
        setup_logging(LogConfig.from_env())  # run by another ASGI server, not `streamproc api`
    openapi = JSON(build_openapi(ENDPOINTS, "streamproc", __version__))

    async def openapi_json(_: Request) -> Response:
        return openapi

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        url, description = resolve_redis_url(settings)
        log.info("API using %s", description)
        deadline_s = settings.api_redis_deadline_ms / 1000
        client = async_client(
            url,
            max_connections=REDIS_POOL_SIZE,
            client_name="streamproc-api",
            socket_timeout_s=deadline_s,
            connect_timeout_s=deadline_s,
            retries=0,  # a request has one deadline; retrying inside it only hides the outage
        )
        app.state.services = Services(
            settings, Keys(settings.namespace), client, AsyncScripts.register(client)
        )
        if not settings.api_token:
            log.warning("STREAMPROC_API_TOKEN is not set: write endpoints answer 403")
        try:
            yield
        finally:
            await client.aclose()

    routes = build_routes(ENDPOINTS)
    routes.append(Route("/openapi.json", openapi_json, methods=["GET"], include_in_schema=False))
    routes.append(Route("/metrics", metrics, methods=["GET"], include_in_schema=False))
    routes.append(dashboard_route())
    api_metrics = ApiMetrics(multiprocess_dir())
    app = Starlette(
        debug=False,
        routes=routes,
        middleware=[
            Middleware(
                RequestContext, max_body_bytes=settings.api_max_body_bytes, metrics=api_metrics
            )
        ],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.metrics = api_metrics
    # A redirect has no JSON body; an API client is better served by a plain enveloped 404.
    app.router.redirect_slashes = False
    return app
