"""Process logging: STREAMPROC_LOG_LEVEL and STREAMPROC_LOG_FORMAT (text, or one JSON object per
line), applied the same way by every streamproc process, uvicorn's loggers included."""

from __future__ import annotations

import json
import logging
import logging.config
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streamproc.errors import ConfigError

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The fields every JSON line starts with; `extra` fields never overwrite them.
CORE_FIELDS = ("ts", "level", "logger", "message")
# Attributes every LogRecord has: whatever else a record carries came from `extra=`.
_PLAIN_RECORD = logging.LogRecord("", logging.INFO, "", 0, "", None, None)
_RECORD_ATTRS = frozenset(vars(_PLAIN_RECORD)) | {"message", "asctime", "taskName"}
# uvicorn attaches an ANSI-coloured copy of its message for its own formatter; noise in JSON.
_DROPPED_EXTRAS = frozenset({"color_message"})
# uvicorn configures these itself unless given a config; here they go through the root handler.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


@dataclass(frozen=True, slots=True)
class LogConfig:
    """The log level name and the line format (text or json) of this process."""

    level: str = "INFO"
    format: str = "text"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LogConfig:
        """Read STREAMPROC_LOG_LEVEL and STREAMPROC_LOG_FORMAT, validating both."""
        env = os.environ if env is None else env
        level = env.get("STREAMPROC_LOG_LEVEL", "").strip().upper() or "INFO"
        if level not in logging.getLevelNamesMapping() or level == "NOTSET":
            raise ConfigError(
                f"STREAMPROC_LOG_LEVEL={level!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL"
            )
        fmt = env.get("STREAMPROC_LOG_FORMAT", "").strip().lower() or "text"
        if fmt not in LOG_FORMATS:
            raise ConfigError(f"STREAMPROC_LOG_FORMAT={fmt!r}: use text or json")
        return cls(level=level, format=fmt)

    @property
    def json(self) -> bool:
        """Whether lines are JSON objects."""
        return self.format == "json"


def utc_timestamp(created: float) -> str:
    """ISO 8601 UTC with milliseconds and a Z, e.g. 2025-11-10T08:30:00.123Z."""
    moment = datetime.fromtimestamp(created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def json_line(fields: Mapping[str, Any]) -> str:
    """One compact JSON object; values JSON cannot hold are written as their str()."""
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"), default=str)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: ts, level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (newlines inside values are escaped)."""
        fields: dict[str, Any] = {
            "ts": utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRS and name not in _DROPPED_EXTRAS and name not in fields:
                fields[name] = value
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            fields["exception"] = record.exc_text
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        return json_line(fields)


def dict_config(config: LogConfig) -> dict[str, Any]:
    """A logging.config.dictConfig mapping: one stderr handler on the root logger, in the chosen
    format, with uvicorn's loggers passing their records up to it (also given to uvicorn, whose
    worker processes apply it themselves)."""
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if config.json else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"streamproc": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "streamproc",
            }
        },
        "root": {"level": config.level, "handlers": ["stderr"]},
        "loggers": {
            name: {"level": config.level, "handlers": [], "propagate": True}
            for name in UVICORN_LOGGERS
        },
    }


def setup_logging(config: LogConfig) -> None:
    """Apply the configuration to this process."""
    logging.config.dictConfig(dict_config(config))


def json_enabled() -> bool:
    """Whether this process logs JSON (its root handler has the JSON formatter)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)
