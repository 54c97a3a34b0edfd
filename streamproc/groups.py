"""Every stage's consumer groups, and creating them from a blocking client of either kind."""

from __future__ import annotations

from collections.abc import Callable

from streamproc.keys import STAGES, Keys


def group_specs(keys: Keys) -> list[tuple[str, str, str]]:
    """(stream, group, id to start from) of every stage's group on every stream it reads.

    A group created on another stage's stream starts at its end ("$"): the entries already there
    were written by earlier versions, which enqueued them on the stage's own stream as well.
    """
    return [
        (stream, keys.group(stage), "0" if stream == keys.stream(stage) else "$")
        for stage in STAGES
        for stream in keys.sources(stage)
    ]


def create_groups(execute: Callable[..., object], keys: Keys) -> None:
    """Create every stage stream and its group(s) when missing; `execute` runs one command
    (redis-py's `execute_command` or `Wire.call`) and raises on an error reply."""
    for stream, group, start in group_specs(keys):
        try:
            execute("XGROUP", "CREATE", stream, group, start, "MKSTREAM")
        except Exception as exc:  # either client's error reply: told apart by its text
            if "BUSYGROUP" not in str(exc):
                raise
