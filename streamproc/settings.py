"""One frozen settings object, read from the environment once at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from streamproc.errors import ConfigError

UNKNOWN_SKU_POLICIES = ("create", "reject")
NOTIFICATION_CHANNELS = ("log", "email")


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is outside {low}..{high}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is outside {low}..{high}")
    return value


def _str(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(name, "").strip() or default


def _channels(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name, "").strip()
    if not raw:
        return ("log",)
    chosen = tuple(dict.fromkeys(c.strip().lower() for c in raw.split(",") if c.strip()))
    unknown = [c for c in chosen if c not in NOTIFICATION_CHANNELS]
    if unknown:
        raise ConfigError(f"{name}={raw!r}: channels are {', '.join(NOTIFICATION_CHANNELS)}")
    return chosen


@dataclass(frozen=True, slots=True)
class Settings:
    """Every tunable of streamproc; built by `Settings.from_env()` and passed down."""

    redis_url: str | None = None
    namespace: str = "sp"
    home_dir: Path = field(default_factory=lambda: Path(".streamproc"))
    default_currency: str = "USD"
    unknown_sku: str = "create"
    default_stock: int = 1000
    payment_seed: int = 0
    payment_success_rate: float = 0.9
    payment_latency_ms: int = 0
    claim_idle_ms: int = 15_000
    max_deliveries: int = 5
    shutdown_grace_s: float = 4.0
    # Messages per XREADGROUP and per script call. 500 rather than 200: 3% less server time per
    # order in a flood (each call's fixed cost is shared by more orders); 1,000 was slower again.
    batch_size: int = 500
    block_ms: int = 1_000
    notifications_log: Path | None = None
    analytics_dir: Path | None = None
    snapshot_interval_ms: int = 1_000
    snapshot_max_rows: int = 100_000
    # Bearer token for the API's write endpoints; None keeps them disabled. Never printed.
    api_token: str | None = field(default=None, repr=False)
    api_max_body_bytes: int = 65_536
    api_redis_deadline_ms: int = 500
    # Notifications (SPEC §6). The SMTP URL may carry a password: never printed.
    smtp_url: str | None = field(default=None, repr=False)
    smtp_from: str = "streamproc@localhost"
    notification_channels: tuple[str, ...] = ("log",)
    notification_max_attempts: int = 5
    notification_retry_base_ms: int = 2_000
    notification_retry_max_ms: int = 300_000
    notification_retention_days: int = 30

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every STREAMPROC_* variable, validating each one."""
        env = os.environ if env is None else env
        currency = _str(env, "STREAMPROC_DEFAULT_CURRENCY", "USD").upper()
        if len(currency) != 3 or not currency.isalpha() or not currency.isascii():
            raise ConfigError(f"STREAMPROC_DEFAULT_CURRENCY={currency!r} is not a 3-letter code")
        policy = _str(env, "STREAMPROC_UNKNOWN_SKU", "create").lower()
        if policy not in UNKNOWN_SKU_POLICIES:
            raise ConfigError(f"STREAMPROC_UNKNOWN_SKU={policy!r}: use create or reject")
        namespace = _str(env, "STREAMPROC_NAMESPACE", "sp")
        if not namespace.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"STREAMPROC_NAMESPACE={namespace!r}: use letters, digits, - or _")
        home = Path(_str(env, "STREAMPROC_HOME", ".streamproc"))
        log = env.get("STREAMPROC_NOTIFICATIONS_LOG", "").strip()
        analytics = env.get("STREAMPROC_ANALYTICS_DIR", "").strip()
        smtp_url = env.get("STREAMPROC_SMTP_URL", "").strip() or None
        if smtp_url is not None:
            from streamproc.mail import SmtpConfig

            SmtpConfig.from_url(smtp_url)  # a bad URL stops start-up, not the first email
        return cls(
            redis_url=env.get("STREAMPROC_REDIS_URL", "").strip() or None,
            namespace=namespace,
            home_dir=home,
            default_currency=currency,
            unknown_sku=policy,
            default_stock=_int(env, "STREAMPROC_DEFAULT_STOCK", 1000, 0, 10**12),
            payment_seed=_int(env, "STREAMPROC_PAYMENT_SEED", 0, -(2**63), 2**63 - 1),
            payment_success_rate=_float(env, "STREAMPROC_PAYMENT_SUCCESS_RATE", 0.9, 0.0, 1.0),
            payment_latency_ms=_int(env, "STREAMPROC_PAYMENT_LATENCY_MS", 0, 0, 600_000),
            claim_idle_ms=_int(env, "STREAMPROC_CLAIM_IDLE_MS", 15_000, 10, 86_400_000),
            max_deliveries=_int(env, "STREAMPROC_MAX_DELIVERIES", 5, 1, 1000),
            shutdown_grace_s=_float(env, "STREAMPROC_SHUTDOWN_GRACE_S", 4.0, 0.0, 3600.0),
            batch_size=_int(env, "STREAMPROC_BATCH_SIZE", 500, 1, 10_000),
            block_ms=_int(env, "STREAMPROC_BLOCK_MS", 1_000, 1, 60_000),
            notifications_log=Path(log) if log else None,
            analytics_dir=Path(analytics) if analytics else None,
            snapshot_interval_ms=_int(env, "STREAMPROC_SNAPSHOT_INTERVAL_MS", 1_000, 10, 3_600_000),
            snapshot_max_rows=_int(env, "STREAMPROC_SNAPSHOT_MAX_ROWS", 100_000, 1, 10_000_000),
            api_token=env.get("STREAMPROC_API_TOKEN", "").strip() or None,
            api_max_body_bytes=_int(env, "STREAMPROC_API_MAX_BODY_BYTES", 65_536, 1, 64 << 20),
            api_redis_deadline_ms=_int(env, "STREAMPROC_API_REDIS_DEADLINE_MS", 500, 50, 60_000),
            smtp_url=smtp_url,
            smtp_from=_str(env, "STREAMPROC_SMTP_FROM", "streamproc@localhost"),
            notification_channels=_channels(env, "STREAMPROC_NOTIFICATION_CHANNELS"),
            notification_max_attempts=_int(env, "STREAMPROC_NOTIFICATION_MAX_ATTEMPTS", 5, 1, 100),
            notification_retry_base_ms=_int(
                env, "STREAMPROC_NOTIFICATION_RETRY_BASE_MS", 2_000, 1, 86_400_000
            ),
            notification_retry_max_ms=_int(
                env, "STREAMPROC_NOTIFICATION_RETRY_MAX_MS", 300_000, 1, 86_400_000
            ),
            notification_retention_days=_int(
                env, "STREAMPROC_NOTIFICATION_RETENTION_DAYS", 30, 0, 36_500
            ),
        )

    @property
    def analytics_path(self) -> Path:
        """The snapshot store's directory (one per namespace)."""
        return self.analytics_dir or self.home_dir / "analytics" / self.namespace

    @property
    def notifications_log_path(self) -> Path:
        """Where the log channel appends its JSON lines."""
        return self.notifications_log or self.home_dir / "notifications.log"
