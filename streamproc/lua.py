"""Loads the package's Lua scripts once and exposes them as callables on a client."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `ingest` reads its script's source here without importing redis-py
    import redis
    import redis.asyncio as aredis
    from redis.commands.core import AsyncScript, Script


def script_names() -> tuple[str, ...]:
    """Every lua/<name>.lua shipped in the package."""
    folder = resources.files("streamproc").joinpath("lua")
    return tuple(sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".lua")))


INCLUDE = "-- include: "


@cache
def script_source(name: str) -> str:
    """The text of lua/<name>.lua, each `-- include: X` line replaced by lua/lib/X.lua.

    Redis scripts cannot load one another, so helpers shared by several scripts are spliced in.
    """
    folder = resources.files("streamproc").joinpath("lua")
    lines = folder.joinpath(f"{name}.lua").read_text("utf-8").splitlines(keepends=True)
    return "".join(
        folder.joinpath("lib", f"{line[len(INCLUDE) :].strip()}.lua").read_text("utf-8")
        if line.startswith(INCLUDE)
        else line
        for line in lines
    )


@dataclass(frozen=True, slots=True)
class AsyncScripts:
    """Every script registered on one asyncio client (EVALSHA, loading on NOSCRIPT)."""

    by_name: dict[str, AsyncScript]

    @classmethod
    def register(cls, client: aredis.Redis) -> AsyncScripts:
        """Register all scripts on `client`."""
        return cls({name: client.register_script(script_source(name)) for name in script_names()})

    async def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run script `name` with KEYS and ARGV."""
        return await self.by_name[name](keys=keys, args=args)


@dataclass(frozen=True, slots=True)
class SyncScripts:
    """Every script registered on one blocking client (used by the CLI)."""

    by_name: dict[str, Script]

    @classmethod
    def register(cls, client: redis.Redis) -> SyncScripts:
        """Register all scripts on `client`."""
        return cls({name: client.register_script(script_source(name)) for name in script_names()})

    def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run script `name` with KEYS and ARGV."""
        return self.by_name[name](keys=keys, args=args)
