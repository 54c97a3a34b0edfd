"""Every endpoint of the API in one table; adding one is a handler plus a line here."""

from __future__ import annotations

from api.endpoints import Endpoint
from api.handlers import deadletters, orders, streams, system

ENDPOINTS: list[Endpoint] = [
    Endpoint("GET", "/api/health", system.health, "Health of Redis, groups and lag",
             system.Health, uses_redis=False, errors=(503,)),
    Endpoint("GET", "/api/stats", system.stats, "Order counts and today's figures",
             system.Stats, query=system.StatsQuery),
    Endpoint("GET", "/api/orders/{order_id}", orders.get_order, "One order with its timeline",
             orders.OrderView, path_params=orders.OrderPath, tag="orders", errors=(404,)),
    Endpoint("GET", "/api/streams", streams.streams, "Stage streams, groups and consumers",
             streams.StreamsView, tag="streams"),
    Endpoint("GET", "/api/dlq", deadletters.list_dead_letters, "Dead letters, paged",
             deadletters.DeadLetterPage, query=deadletters.DeadLetterQuery, tag="dead letters"),
    Endpoint("POST", "/api/dlq/{id}/retry", deadletters.retry_dead_letter,
             "Send a dead letter back to its stage", deadletters.RetryResult,
             path_params=deadletters.DeadLetterPath, auth=True, status=202, tag="dead letters",
             errors=(404, 409)),
]  # fmt: skip
