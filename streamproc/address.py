"""Where Redis is: the URL to use, how to show it, and readable errors for failing to reach it.

No redis-py here: `streamproc ingest` resolves its server without importing it (streamproc.wire).
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from streamproc.errors import ServerError
from streamproc.settings import Settings

DEFAULT_PORT = 6379
CONNECT_TIMEOUT_S = 2.0
# Must exceed the longest XREADGROUP BLOCK a caller issues; a hung server still surfaces.
SOCKET_TIMEOUT_S = 10.0


def resolve_redis_url(settings: Settings) -> tuple[str, str]:
    """The URL to use and a one-line description of it (password masked)."""
    if settings.redis_url:
        return settings.redis_url, f"{_masked(settings.redis_url)} from STREAMPROC_REDIS_URL"
    from streamproc.embedded import ensure_embedded  # imports redis-py: only when needed

    server = ensure_embedded(settings.home_dir)
    return server.url, f"embedded valkey at {server.url} (data in {server.home_dir})"


def describe_connection_error(url: str, exc: Exception) -> ServerError:
    """A one-line ServerError naming host:port and the reason, never the password."""
    reason = _reason(exc)
    password = urlsplit(url).password
    if password:
        reason = reason.replace(password, "***")
    error = ServerError(f"cannot reach Redis at {_address(url)}: {reason}")
    error.__cause__ = exc
    return error


def _reason(exc: BaseException) -> str:
    # redis-py wraps the socket error; the OS's own words ("Connection refused") read best.
    seen: BaseException | None = exc
    visited: set[int] = set()  # a chain may loop (`raise exc from exc`): walk it once
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        if isinstance(seen, OSError) and (seen.errno or seen.strerror):
            # asyncio's strerror is "Connect call failed (...)"; the errno text is the same as sync.
            if isinstance(seen.errno, int) and seen.errno > 0:
                return os.strerror(seen.errno)
            return str(seen.strerror)
        seen = seen.__cause__ or seen.__context__
    # redis-py's TimeoutError is not the builtin one; matched by name, so as not to import it.
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "TimeoutError":
        return "timed out"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.rstrip(".")


def _address(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        return host
    return f"{host}:{port}"


def _masked(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        db = f"?{parts.query}" if parts.query else ""
        return f"unix://{parts.path}{db}"
    user = parts.username or ""
    credentials = f"{user}:***@" if parts.password else (f"{user}@" if user else "")
    db = parts.path.strip("/") or "0"
    return f"{parts.scheme}://{credentials}{_address(url)}/{db}"
