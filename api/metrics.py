"""`GET /metrics`: Prometheus metrics of the API and, read once per scrape, of Redis.

Not under /api, not enveloped, no auth (like every Prometheus target); the classic text format.
The Redis figures are read first, asynchronously and under the API's Redis deadline; when Redis
does not answer in time the scrape still succeeds, with `streamproc_redis_up 0`.
"""

from __future__ import annotations

import asyncio
import logging

import redis.exceptions
from starlette.requests import Request
from starlette.responses import Response

from api.endpoints import Services
from streamproc.metrics import CONTENT_TYPE, ApiMetrics
from streamproc.redis_collector import RedisCollector, RedisFigures, read_figures

log = logging.getLogger("streamproc.api")

UNAVAILABLE = (
    TimeoutError,
    OSError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


async def metrics(request: Request) -> Response:
    """The API's metrics (every worker's), then the Redis gauges of this scrape."""
    services: Services = request.app.state.services
    api_metrics: ApiMetrics = request.app.state.metrics
    figures: RedisFigures | None = None
    try:
        async with asyncio.timeout(services.settings.api_redis_deadline_ms / 1000):
            figures = await read_figures(services.redis, services.keys)
    except UNAVAILABLE as exc:
        log.warning("metrics: Redis unavailable (%s): streamproc_redis_up 0", type(exc).__name__)
    # Rendering reads the other workers' files in multiprocess mode: not on the event loop.
    body = await asyncio.to_thread(api_metrics.render, RedisCollector(figures))
    return Response(body, media_type=CONTENT_TYPE)
