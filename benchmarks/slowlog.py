"""The server's slow log as a per-call profile: which script each call was, and what it ran.

Redis 7.0 keeps no statistics per script (INFO commandstats has one `evalsha` line), but its slow
log records, for every command above `slowlog-log-slower-than` µs, the server-measured duration and
the first 31 arguments; EVALSHA's digest names the script, EVAL's source does (its first line is
`-- <name>.lua: …`). At threshold 0 it also logs every command a script runs (client `?:0`), just
before the script's own entry, so each script call's redis.call()s can be counted by name.

Logging costs the server ~0.8 µs per logged command, and for the commands a script runs that time
falls inside the script's own duration. So durations of scripts are taken at a threshold that
script calls pass and the commands inside them do not (benchmarks/scripts.py runs twice); the
durations of the logged commands themselves are measured before they are logged.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from streamproc.lua import script_names, script_source
from streamproc.workflow import outputs_of

BENCH_CLIENT = "sp-bench"  # the name of our own connections: their commands are not counted
LUA_CLIENT = b"?:0"  # the address the slow log gives a command run by a script
SCRIPT_COMMANDS = frozenset({"eval", "evalsha"})
WITH_SUBCOMMAND = frozenset({"client", "config", "script", "slowlog", "xgroup", "xinfo", "memory"})
_EVAL_NAME = re.compile(rb"^--\s*([a-z_]+)\.lua")
_MORE = re.compile(rb"^\.\.\. \((\d+) more arguments\)$")

# Items (orders, records, ids) per call, from the call's argv: numkeys, the argument count and
# the arguments themselves (the first 31 only), as each script's header comment lays them out.
Items = Callable[[list[bytes], int, int], int]
ITEMS: dict[str, Items] = {
    "ingest": lambda argv, numkeys, argc: numkeys - 5,
    "notify_claim": lambda argv, numkeys, argc: numkeys - 3,
    "notify_settle": lambda argv, numkeys, argc: (argc - 3 - numkeys - 3) // 5,
    "snapshot_register": lambda argv, numkeys, argc: argc - 3 - numkeys - 5,
    # Board rows (customers and SKUs of a file), not orders.
    "lb_apply": lambda argv, numkeys, argc: (argc - 3 - numkeys - 4) // 9,
}


# Scripts called once per message of their stage, whose item count the log cannot show: their
# batch's bucket keys come before it and fill the 31 arguments kept. A call counts none here;
# benchmarks.scripts sets their items to the stage's messages.
PER_MESSAGE = frozenset({"stock_reserve", "stock_settle", "gateway_charge"})


def digests() -> dict[str, str]:
    """SHA1 hex digest → name of every script the package ships (what EVALSHA sends)."""
    return {
        hashlib.sha1(script_source(name).encode(), usedforsecurity=False).hexdigest(): name
        for name in script_names()
    }


def command_name(argv: list[bytes]) -> str:
    """`xreadgroup`, `xinfo|groups`: the name INFO commandstats uses."""
    name = argv[0].decode("ascii", "replace").lower()
    if name in WITH_SUBCOMMAND and len(argv) > 1:
        name += "|" + argv[1].decode("ascii", "replace").lower()
    return name


def argument_count(argv: list[bytes]) -> int:
    """The call's real argument count (the log keeps 31 and says how many more there were)."""
    if len(argv) == 32 and (more := _MORE.match(argv[31])):
        return 31 + int(more.group(1))
    return len(argv)


@dataclass
class Figures:
    """Calls and server µs of one command or script, and (scripts) the items and what they ran."""

    calls: int = 0
    usec: int = 0
    items: int = 0
    inner_calls: Counter[str] = field(default_factory=Counter)
    inner_usec: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able figures."""
        return {
            "calls": self.calls,
            "usec": self.usec,
            "items": self.items,
            "inner_calls": dict(self.inner_calls),
            "inner_usec": dict(self.inner_usec),
        }


@dataclass
class Profile:
    """What one stretch of the slow log holds: per script label and per plain command."""

    scripts: dict[str, Figures] = field(default_factory=dict)
    commands: dict[str, Figures] = field(default_factory=dict)
    # Commands run by scripts whose script entry was not seen (should stay 0).
    orphans: int = 0


class SlowLog:
    """Reads and clears the slow log (atomically, MULTI/EXEC), optionally from a thread while a
    stage runs so the log never overflows; turns the entries into a Profile."""

    def __init__(self, url: str, threshold_us: int, max_len: int = 200_000) -> None:
        self._client = redis.Redis.from_url(url, client_name=BENCH_CLIENT)
        self._max_len = max_len
        self._client.config_set("slowlog-max-len", max_len)
        self._client.config_set("slowlog-log-slower-than", threshold_us)
        self._names = digests()
        self._entries: list[list[Any]] = []
        self.overflowed = 0  # reads that found the log full: older entries may have been lost
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, period_s: float = 0.1) -> None:
        """Read the log every `period_s` until stop()."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, args=(period_s,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the reading thread (the log is read once more by take())."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _poll(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            self.read()

    def read(self) -> None:
        """Move the log's entries here, oldest first."""
        pipe = self._client.pipeline(transaction=True)
        pipe.execute_command("SLOWLOG", "GET", "-1")
        pipe.execute_command("SLOWLOG", "RESET")
        entries = list(reversed(pipe.execute()[0]))
        with self._lock:
            self.overflowed += len(entries) >= self._max_len
            self._entries += entries

    def take(self) -> Profile:
        """Everything logged since the last take(), as a Profile; the log starts afresh."""
        self.read()
        with self._lock:
            entries, self._entries = self._entries, []
        return self._profile(entries)

    def close(self) -> None:
        """Stop reading and close the connection."""
        self.stop()
        self._client.close()

    def _profile(self, entries: list[list[Any]]) -> Profile:
        profile = Profile()
        inner: list[tuple[str, int]] = []  # commands run by the script whose entry comes next
        for _id, _at, usec, argv, address, client_name in entries:
            if client_name == BENCH_CLIENT.encode():
                continue
            name = command_name(argv)
            if address == LUA_CLIENT:
                inner.append((name, int(usec)))
                continue
            if name not in SCRIPT_COMMANDS:
                profile.orphans += len(inner)
                inner.clear()
                figures = profile.commands.setdefault(name, Figures())
                figures.calls += 1
                figures.usec += int(usec)
                continue
            label, items = self._script_call(argv)
            figures = profile.scripts.setdefault(label, Figures())
            figures.calls += 1
            figures.usec += int(usec)
            figures.items += items
            for command, took in inner:
                figures.inner_calls[command] += 1
                figures.inner_usec[command] += took
            inner.clear()
        profile.orphans += len(inner)
        return profile

    def _script_call(self, argv: list[bytes]) -> tuple[str, int]:
        """(label, items) of one EVAL/EVALSHA: commit's label names the stage it commits."""
        if argv[0].lower() == b"evalsha":
            name = self._names.get(argv[1].decode().lower(), "evalsha:" + argv[1][:8].decode())
        else:
            found = _EVAL_NAME.match(argv[1])
            name = found.group(1).decode() if found else "eval:?"
        numkeys, argc = int(argv[2]), argument_count(argv)
        if name == "commit":
            stage = argv[3].decode().rsplit(":", 1)[-1]  # KEYS[1]: the stage's stream
            return f"commit:{stage}", numkeys - 4 - len(outputs_of(stage))
        if name in PER_MESSAGE:
            return name, 0
        count = ITEMS.get(name)
        return name, count(argv, numkeys, argc) if count else 1
