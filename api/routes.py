"""Every endpoint of the API in one table; adding one is a handler plus a line here."""

from __future__ import annotations

from api.endpoints import Endpoint
from api.handlers import deadletters, kpis, leaderboards, orders, streams, system
from api.handlers import notifications as notes
from api.handlers import preferences as prefs
from streamproc.analytics.rebuild import RebuildReport

# DuckDB over millions of facts can outlast the default Redis deadline on a busy machine, and a
# rebuild reads the whole store (each Redis command still has the default's socket timeout).
KPI_DEADLINE_MS = 10_000
REBUILD_DEADLINE_MS = 120_000

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
    Endpoint("GET", "/api/kpis/daily", kpis.daily_kpis, "KPIs of one order day",
             kpis.DailyKpis, query=kpis.DailyQuery, tag="analytics", deadline_ms=KPI_DEADLINE_MS),
    Endpoint("GET", "/api/kpis/range", kpis.kpi_range, "KPIs of a range of order days, per day",
             kpis.RangeKpisView, query=kpis.RangeQuery, tag="analytics",
             deadline_ms=KPI_DEADLINE_MS),
    Endpoint("GET", "/api/kpis/realtime", kpis.realtime_kpis, "Live counters and today's rate",
             kpis.RealtimeKpis, query=kpis.CurrencyQuery, tag="analytics"),
    Endpoint("GET", "/api/customers/{id}", leaderboards.get_customer,
             "One customer's completed orders and rank", leaderboards.CustomerView,
             path_params=leaderboards.CustomerPath, query=kpis.CurrencyQuery, tag="leaderboards",
             errors=(404,)),
    Endpoint("GET", "/api/leaderboard/customers", leaderboards.customer_board,
             "Top customers by total spent", leaderboards.CustomerBoard,
             query=leaderboards.BoardQuery, tag="leaderboards"),
    Endpoint("GET", "/api/leaderboard/customers/{id}/rank", leaderboards.customer_rank,
             "One customer's rank by total spent", leaderboards.CustomerRank,
             path_params=leaderboards.CustomerPath, query=kpis.CurrencyQuery, tag="leaderboards",
             errors=(404,)),
    Endpoint("GET", "/api/leaderboard/products", leaderboards.product_board,
             "Top products by quantity sold", leaderboards.ProductBoard,
             query=leaderboards.BoardQuery, tag="leaderboards"),
    Endpoint("POST", "/api/leaderboard/rebuild", leaderboards.rebuild_leaderboards,
             "Recompute the leaderboards from the snapshot store", RebuildReport,
             auth=True, tag="leaderboards", errors=(409,), deadline_ms=REBUILD_DEADLINE_MS),
]  # fmt: skip

# Notifications and customer preferences (SPEC §6, issue 6).
ENDPOINTS += [
    Endpoint("GET", "/api/notifications", notes.list_notifications,
             "Notifications, filtered and paged", notes.NotificationPage,
             query=notes.NotificationQuery, tag="notifications"),
    Endpoint("GET", "/api/notifications/stats", notes.notification_stats,
             "Notification counts by type, status and channel", notes.NotificationStats,
             tag="notifications"),
    Endpoint("GET", "/api/notifications/recent", notes.recent_notifications,
             "The newest notifications", list[notes.NotificationView], query=notes.RecentQuery,
             tag="notifications"),
    Endpoint("GET", "/api/notifications/order/{order_id}", notes.order_notifications,
             "One order's notifications", list[notes.NotificationView],
             path_params=notes.OrderPath, tag="notifications", errors=(404,)),
    Endpoint("POST", "/api/notifications/{id}/resend", notes.resend_notification,
             "Give a failed notification one more attempt", notes.NotificationView,
             path_params=notes.NotificationPath, auth=True, status=202, tag="notifications",
             errors=(404, 409)),
    Endpoint("GET", "/api/customers/{id}/notification-preferences", prefs.get_preferences,
             "A customer's notification preferences", prefs.PreferencesView,
             path_params=leaderboards.CustomerPath, tag="notifications"),
    Endpoint("PUT", "/api/customers/{id}/notification-preferences", prefs.put_preferences,
             "Set a customer's notification preferences", prefs.PreferencesView,
             path_params=leaderboards.CustomerPath, body=prefs.PreferencesBody, auth=True,
             tag="notifications"),
]  # fmt: skip
