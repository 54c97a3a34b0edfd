"""An import stops at a batch, also when the stopped batch could not write the stop marker.

Out of memory, a batch refused at its first write cannot write the import's stop marker either (a
SET is a write too), and the next batch, already sent, may find memory back under the limit (the
query buffer that held the refused batch is freed): it used to import, leaving a gap. Each batch
after an import's first now checks the previous batch's last order, a read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis

from streamproc.ingest import ingest_file
from streamproc.lua import script_source
from streamproc.models import Line, Order, encode_order
from streamproc.transport import ensure_groups_sync
from tests.support import KEYS, one_line, write_orders

STOPPED = "an earlier batch of this import stopped"


def run_batch(r: redis.Redis, ids: list[str], fence: str | None, marker: str) -> Any:
    """ingest.lua on `ids` as the ingest client sends a batch, after the batch ending at
    `fence` (None: the import's first batch)."""
    order_keys = [KEYS.order(i) for i in ids]
    payloads = [
        encode_order(
            Order(i, 1, "Fence", "USD", "2025-11-10T00:00:00Z", [Line("SKU-F", "", 1, 100)])
        )
        for i in ids
    ]
    keys = [
        KEYS.stream("reserve"),
        KEYS.state_counts,
        KEYS.day("2025-11-10"),
        marker,
        KEYS.ingest_rows,
        *order_keys,
        *([fence] if fence else []),
    ]
    args = [1, "0", len(ids), len(KEYS.order_prefix) + 1, 0, len(ids), ",".join("1" * len(ids))]
    return r.eval(script_source("ingest"), len(keys), *keys, *args, *payloads)


def test_a_batch_after_one_that_stopped_without_its_marker_imports_nothing(
    r: redis.Redis,
) -> None:
    marker = KEYS.ingest_stop_marker("fence-test")
    assert run_batch(r, ["F1", "F2"], None, marker) == "nn"
    # The next batch, as sent after a batch that stopped at its first order and could not
    # write the marker: that batch's last order does not exist.
    assert run_batch(r, ["F5", "F6"], KEYS.order("F4"), marker) == ["", STOPPED]
    assert not r.exists(KEYS.order("F5"), KEYS.order("F6"))
    assert r.xlen(KEYS.stream("reserve")) == 2
    assert r.hget(KEYS.state_counts, "pending") == "2"
    # After a batch that went through, the check passes.
    assert run_batch(r, ["F3", "F4"], KEYS.order("F2"), marker) == "nn"
    assert run_batch(r, ["F5", "F6"], KEYS.order("F4"), marker) == "nn"
    assert [f["o"] for _, f in r.xrange(KEYS.stream("reserve"))] == [f"F{n}" for n in range(1, 7)]


def test_each_batch_after_the_first_names_the_previous_batchs_last_order(
    r: redis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client sends the check: every batch but the first carries one more key, the last
    order of the batch before it."""
    sent: list[list[bytes]] = []
    connection_class = redis.Connection
    original = connection_class.send_packed_command

    def record(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(list(command))
        original(self, command, check_health)

    monkeypatch.setattr(connection_class, "send_packed_command", record)
    path = write_orders(tmp_path / "fence.csv", [one_line(f"G{n}", "SKU-F", 1) for n in range(5)])
    with redis.Redis.from_url(redis_url) as client:
        ensure_groups_sync(client, KEYS)
        result = ingest_file(client, KEYS, str(path), "USD", batch_size=2)
    assert result.imported == 5
    reader = hiredis.Reader()
    evals = []
    for command in sent:
        for chunk in command:
            reader.feed(chunk)
        parsed = reader.gets()
        if parsed and parsed[0] == b"EVAL":
            evals.append(parsed)
    assert len(evals) == 3
    for index, (expected, fence) in enumerate(
        [(["G0", "G1"], None), (["G2", "G3"], "G1"), (["G4"], "G3")]
    ):
        numkeys = int(evals[index][2])
        keys = [k.decode() for k in evals[index][3 : 3 + numkeys]]
        assert keys[5 : 5 + len(expected)] == [KEYS.order(i) for i in expected]
        assert keys[5 + len(expected) :] == ([KEYS.order(fence)] if fence else [])
