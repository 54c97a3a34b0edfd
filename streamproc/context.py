"""What a stage handler may use: settings and the effect services, built once per process."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aredis

from streamproc.gateway import PaymentGateway
from streamproc.keys import Keys
from streamproc.lua import AsyncScripts
from streamproc.metrics import ConsumerMetrics
from streamproc.settings import Settings
from streamproc.stock import StockLedger


@dataclass(frozen=True, slots=True)
class StageContext:
    """Collaborators handed to every handler; handlers never touch streams or acks."""

    settings: Settings
    client: aredis.Redis
    scripts: AsyncScripts
    keys: Keys
    stock: StockLedger
    gateway: PaymentGateway
    metrics: ConsumerMetrics

    @classmethod
    def build(
        cls, settings: Settings, client: aredis.Redis, metrics: ConsumerMetrics | None = None
    ) -> StageContext:
        """Wire the services for one process (metrics: the process's, else private ones)."""
        keys = Keys(settings.namespace)
        scripts = AsyncScripts.register(client)
        metrics = metrics or ConsumerMetrics()
        return cls(
            settings=settings,
            client=client,
            scripts=scripts,
            keys=keys,
            stock=StockLedger(scripts, keys, settings.unknown_sku, settings.default_stock),
            gateway=PaymentGateway(
                scripts,
                keys,
                settings.payment_seed,
                settings.payment_success_rate,
                settings.payment_latency_ms,
                metrics,
            ),
            metrics=metrics,
        )
