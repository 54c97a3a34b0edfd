"""The order workflow on Celery 5, for benchmarks/compare_celery.py (a benchmark-only baseline).

    pip install -e '.[bench]'
    export CW_BROKER_URL=redis://127.0.0.1:6379/1 CW_DATA_URL=redis://127.0.0.1:6379/2
    celery -A benchmarks.celery_workflow worker -c 2 --pool prefork &
    python -m benchmarks.celery_workflow enqueue orders.csv

compare_celery.py starts both itself, on its private server. Each order is one chain,
reserve → payment → notify, where payment settles the order once charged, as streamproc's payment
stage does: finalize (approved) or rollback (declined), a second script in the same task. A task of
the chain passes an order through untouched once it is terminal (an out-of-stock order goes on to
notify only). It does what streamproc's stages do, one order per
task, the way a competent Celery application would:

- every task is acks_late with reject_on_worker_lost, and retried with back-off on Redis/OS errors;
- every effect is one Lua script that is idempotent per order and guarded by the order's state, so
  a redelivered or retried task changes nothing twice: the reservation is all-or-nothing and keyed
  by order id; the simulated gateway has a ledger keyed by `pay:<order_id>` (the same outcome rule,
  seed and success rate as streamproc.gateway.simulated_outcome) and counts successful charges;
  settlement moves stock only out of a reservation in state "r";
- notify appends one JSON line per terminal order to the notifications log (O_APPEND), exactly once
  across retries: the record is marked pending with the log's size before the write, and a retry
  of a pending record looks for its line from that offset before writing again;
- no result backend (task_ignore_result), JSON messages, worker_prefetch_multiplier
  CW_PREFETCH (16: many short tasks), no gossip/mingle/heartbeat, rate limits off.

Limits (no worse for throughput): a crash between creating an order and publishing its chain
would leave it pending (Celery has no transactional enqueue); a redelivery while the first
delivery is still running (after the 1 h visibility timeout) could write a notification twice.

Data keys live under `cw:` in CW_DATA_URL's database, the broker in CW_BROKER_URL's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from celery import Celery, chain, signals
from celery.canvas import Signature

from streamproc.csvinput import open_orders_file
from streamproc.csvreader import OrderReader, ParsedOrder
from streamproc.gateway import simulated_outcome
from streamproc.money import format_cents

BROKER_URL = os.environ.get("CW_BROKER_URL", "redis://127.0.0.1:6379/1")
DATA_URL = os.environ.get("CW_DATA_URL", "redis://127.0.0.1:6379/2")
PAYMENT_SEED = int(os.environ.get("CW_PAYMENT_SEED", "0"))
SUCCESS_RATE = float(os.environ.get("CW_PAYMENT_SUCCESS_RATE", "0.9"))
DEFAULT_STOCK = int(os.environ.get("CW_DEFAULT_STOCK", "1000"))
NOTIFICATIONS_LOG = Path(os.environ.get("CW_NOTIFICATIONS_LOG", "cw-notifications.log"))
PREFETCH = int(os.environ.get("CW_PREFETCH", "16"))
QUEUE = "cw"

P = "cw:"
STOCK = {c: f"{P}stock:{c}" for c in ("available", "reserved", "committed", "initial")}
RESERVATIONS = f"{P}reservations"
COUNTS = f"{P}counts"
LEDGER = f"{P}gw:ledger"
CHARGES = f"{P}gw:charges"
NOTIFICATIONS = f"{P}notifications"
READY = f"{P}worker-ready"

app = Celery("celery_workflow", broker=BROKER_URL)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=PREFETCH,
    worker_disable_rate_limits=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": 3600},
)
TASK_OPTIONS: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (redis.RedisError, OSError),
    "retry_backoff": True,
    "retry_kwargs": {"max_retries": 5},
}

# KEYS available reserved committed initial reservations order counts
# ARGV order id, default stock, now ms, then (sku, quantity) pairs; returns "r" or "f:<reason>".
RESERVE_LUA = """
local rec = redis.call("HGET", KEYS[5], ARGV[1])
if rec then return rec end
local reason, creates = nil, {}
for i = 4, #ARGV, 2 do
  local sku, qty = ARGV[i], tonumber(ARGV[i + 1])
  local avail = redis.call("HGET", KEYS[1], sku)
  if not avail then avail = ARGV[2]; creates[sku] = true end
  if tonumber(avail) < qty then reason = "out_of_stock:" .. sku; break end
end
if reason then
  rec = "f:" .. reason
  redis.call("HSET", KEYS[6], "s", "failed", "p", reason, "t", ARGV[3])
  redis.call("HINCRBY", KEYS[7], "pending", -1)
  redis.call("HINCRBY", KEYS[7], "failed", 1)
else
  for i = 4, #ARGV, 2 do
    local sku, qty = ARGV[i], tonumber(ARGV[i + 1])
    if creates[sku] then
      redis.call("HSET", KEYS[1], sku, ARGV[2])
      redis.call("HSET", KEYS[4], sku, ARGV[2])
      redis.call("HSETNX", KEYS[2], sku, 0)
      redis.call("HSETNX", KEYS[3], sku, 0)
    end
    redis.call("HINCRBY", KEYS[1], sku, -qty)
    redis.call("HINCRBY", KEYS[2], sku, qty)
  end
  rec = "r"
  redis.call("HSET", KEYS[6], "s", "reserved")
  redis.call("HINCRBY", KEYS[7], "pending", -1)
  redis.call("HINCRBY", KEYS[7], "reserved", 1)
end
redis.call("HSET", KEYS[5], ARGV[1], rec)
return rec
"""

# KEYS ledger charges order counts
# ARGV idempotency key, order id, amount, currency, outcome (ok|declined), now ms
# Returns the outcome first recorded for the key; moves a reserved order to paid (or marks it
# declined) only once.
PAYMENT_LUA = """
local rec = redis.call("HGET", KEYS[1], ARGV[1])
if not rec then
  rec = ARGV[5] .. ":" .. ARGV[3] .. ":" .. ARGV[4] .. ":" .. ARGV[6]
  redis.call("HSET", KEYS[1], ARGV[1], rec)
  if ARGV[5] == "ok" then redis.call("HINCRBY", KEYS[2], ARGV[2], 1) end
end
local outcome = string.match(rec, "^[^:]+")
local row = redis.call("HMGET", KEYS[3], "s", "p")
if row[1] == "reserved" and not row[2] then
  if outcome == "ok" then
    redis.call("HSET", KEYS[3], "s", "paid", "p", "ok")
    redis.call("HINCRBY", KEYS[4], "reserved", -1)
    redis.call("HINCRBY", KEYS[4], "paid", 1)
  else
    redis.call("HSET", KEYS[3], "p", "declined")
  end
end
return outcome
"""

# KEYS available reserved committed reservations order counts
# ARGV order id, commit|release, now ms, then (sku, quantity) pairs
# finalize: paid → completed, reserved units → committed; rollback: reserved+declined →
# rolled_back, reserved units → available. Returns the order's state after the call.
SETTLE_LUA = """
local row = redis.call("HMGET", KEYS[5], "s", "p")
local state, payment = row[1], row[2]
local commit = ARGV[2] == "commit"
local due = (commit and state == "paid")
  or ((not commit) and state == "reserved" and payment == "declined")
if not due then return state or "" end
if redis.call("HGET", KEYS[4], ARGV[1]) == "r" then
  for i = 4, #ARGV, 2 do
    local sku, qty = ARGV[i], tonumber(ARGV[i + 1])
    redis.call("HINCRBY", KEYS[2], sku, -qty)
    if commit then
      redis.call("HINCRBY", KEYS[3], sku, qty)
    else
      redis.call("HINCRBY", KEYS[1], sku, qty)
    end
  end
  redis.call("HSET", KEYS[4], ARGV[1], commit and "c" or "x")
end
local final = commit and "completed" or "rolled_back"
redis.call("HSET", KEYS[5], "s", final, "t", ARGV[3])
redis.call("HINCRBY", KEYS[6], state, -1)
redis.call("HINCRBY", KEYS[6], final, 1)
return final
"""

# KEYS notifications  ARGV record id, log offset now
# Returns "sent", "pending:<offset>" of an earlier attempt, or "new" (now pending at the offset).
NOTIFY_CLAIM_LUA = """
local rec = redis.call("HGET", KEYS[1], ARGV[1])
if rec then return rec end
redis.call("HSET", KEYS[1], ARGV[1], "pending:" .. ARGV[2])
return "new"
"""

# KEYS counts, then one order hash per order  ARGV now ms, number of orders
# Returns one char per order: n = created (pending), d = duplicate.
CREATE_LUA = """
local out, created = {}, 0
for i = 2, tonumber(ARGV[2]) + 1 do
  if redis.call("EXISTS", KEYS[i]) == 1 then
    out[#out + 1] = "d"
  else
    redis.call("HSET", KEYS[i], "s", "pending", "c", ARGV[1])
    created = created + 1
    out[#out + 1] = "n"
  end
end
if created > 0 then redis.call("HINCRBY", KEYS[1], "pending", created) end
return table.concat(out)
"""


def order_key(order_id: str) -> str:
    """The hash of one order: s state, p payment/failure, c created ms, t terminal ms."""
    return f"{P}order:{order_id}"


@dataclass(frozen=True, slots=True)
class Data:
    """One process's data client and its registered scripts (EVALSHA, loading on NOSCRIPT)."""

    pid: int
    client: redis.Redis
    scripts: dict[str, Any]


_data: list[Data] = []


def data() -> Data:
    """This process's client, made after the prefork fork (never shared across processes)."""
    if not _data or _data[0].pid != os.getpid():
        client = redis.Redis.from_url(DATA_URL, decode_responses=True)
        sources = {
            "reserve": RESERVE_LUA,
            "payment": PAYMENT_LUA,
            "settle": SETTLE_LUA,
            "notify_claim": NOTIFY_CLAIM_LUA,
            "create": CREATE_LUA,
        }
        scripts = {name: client.register_script(src) for name, src in sources.items()}
        _data[:] = [Data(os.getpid(), client, scripts)]
    return _data[0]


def now_ms() -> int:
    """Wall clock in milliseconds."""
    return int(time.time() * 1000)


def pairs(order: dict[str, Any]) -> list[Any]:
    """sku, quantity, sku, quantity, … of an order (quantities per SKU)."""
    return [item for line in order["lines"] for item in line]


@app.task(name="cw.reserve", **TASK_OPTIONS)
def reserve(order: dict[str, Any]) -> dict[str, Any]:
    """pending → reserved (every line reserved) or failed (out of stock), all or nothing."""
    d = data()
    keys = [*STOCK.values(), RESERVATIONS, order_key(order["id"]), COUNTS]
    args = [order["id"], DEFAULT_STOCK, now_ms(), *pairs(order)]
    rec = d.scripts["reserve"](keys=keys, args=args)
    failed = rec.startswith("f:")
    return {**order, "state": "failed" if failed else "reserved", "reason": rec[2:]}


@app.task(name="cw.payment", **TASK_OPTIONS)
def payment(order: dict[str, Any]) -> dict[str, Any]:
    """reserved → completed (charged, stock committed) or rolled_back (declined, stock
    released); one charge at most per idempotency key. A retry after a crash between the two
    scripts finds the charge recorded and settles the order then."""
    if order["state"] != "reserved":
        return order
    key = f"pay:{order['id']}"
    outcome = "ok" if simulated_outcome(PAYMENT_SEED, key, SUCCESS_RATE) else "declined"
    keys = [LEDGER, CHARGES, order_key(order["id"]), COUNTS]
    args = [key, order["id"], order["total_cents"], order["currency"], outcome, now_ms()]
    recorded = data().scripts["payment"](keys=keys, args=args)
    return settle({**order, "state": "paid" if recorded == "ok" else "reserved"})


def settle(order: dict[str, Any]) -> dict[str, Any]:
    """finalize (paid → completed) or rollback (declined → rolled_back)."""
    mode = "commit" if order["state"] == "paid" else "release"
    keys = [*list(STOCK.values())[:3], RESERVATIONS, order_key(order["id"]), COUNTS]
    args = [order["id"], mode, now_ms(), *pairs(order)]
    return {**order, "state": data().scripts["settle"](keys=keys, args=args)}


@app.task(name="cw.notify", **TASK_OPTIONS)
def notify(order: dict[str, Any]) -> dict[str, Any]:
    """One log line per terminal order, exactly once across retries."""
    d = data()
    kind = "success" if order["state"] == "completed" else "failed"
    record_id = f"{order['id']}:{kind}:log"
    claim = d.scripts["notify_claim"](keys=[NOTIFICATIONS], args=[record_id, log_size()])
    if claim == "sent":
        return order
    if claim.startswith("pending:") and already_written(record_id, int(claim.split(":")[1])):
        d.client.hset(NOTIFICATIONS, record_id, "sent")
        return order
    append_line(notification_line(order, record_id, kind))
    d.client.hset(NOTIFICATIONS, record_id, "sent")
    return order


def log_size() -> int:
    """The notifications log's size (where the next append lands, or later)."""
    try:
        return NOTIFICATIONS_LOG.stat().st_size
    except FileNotFoundError:
        return 0


def already_written(record_id: str, offset: int) -> bool:
    """Whether the line of `record_id` was appended at or after `offset` (a crashed attempt)."""
    needle = f'"id": {json.dumps(record_id)}'.encode()
    try:
        with NOTIFICATIONS_LOG.open("rb") as handle:
            handle.seek(offset)
            return any(needle in line for line in handle)
    except FileNotFoundError:
        return False


def notification_line(order: dict[str, Any], record_id: str, kind: str) -> bytes:
    """The JSON line for the log channel (the fields streamproc writes)."""
    total = format_cents(order["total_cents"])
    message = (
        f"Order {order['id']} completed: {total} {order['currency']} charged."
        if kind == "success"
        else f"Order {order['id']} could not be completed ({order['state'].replace('_', ' ')})."
    )
    record = {
        "ts": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "id": record_id,
        "channel": "log",
        "type": kind,
        "order_reference": order["id"],
        "customer_id": order["customer_id"],
        "order_status": order["state"],
        "total_amount": total,
        "currency": order["currency"],
        "message": message,
    }
    return (json.dumps(record) + "\n").encode()


def append_line(line: bytes) -> None:
    """One O_APPEND write, so concurrent workers never interleave lines."""
    fd = os.open(NOTIFICATIONS_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@signals.worker_ready.connect
def _mark_ready(**_: Any) -> None:
    """Tell the benchmark the worker consumes now."""
    data().client.incr(READY)


def workflow(order: dict[str, Any]) -> Signature:
    """The chain of one order."""
    return chain(reserve.s(order), payment.s(), notify.s())


def message(parsed: ParsedOrder) -> dict[str, Any]:
    """What travels in the chain: the order's id, money and quantity per SKU."""
    order = parsed.order
    return {
        "id": order.order_id,
        "customer_id": order.customer_id,
        "currency": order.currency,
        "total_cents": order.total_cents,
        "lines": [[sku, qty] for sku, qty in order.quantities().items()],
        "state": "pending",
    }


def batches(path: str, size: int, counts: dict[str, int]) -> Iterator[list[ParsedOrder]]:
    """The file's valid orders in batches (parsed and validated like `streamproc ingest`)."""
    batch: list[ParsedOrder] = []
    with open_orders_file(path) as source:
        reader = OrderReader(source.text, "USD", source.name)
        for item in reader:
            if not isinstance(item, ParsedOrder):
                counts["rejected"] += 1
                continue
            batch.append(item)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch
        counts["rows"] = reader.rows


def enqueue(path: str, batch_size: int = 500) -> dict[str, Any]:
    """Create each new order (pending; a repeated id is a duplicate) and publish its chain."""
    started = time.perf_counter()
    d = data()
    counts = {"orders": 0, "duplicates": 0, "rejected": 0, "rows": 0}
    with app.producer_or_acquire() as producer:
        for batch in batches(path, batch_size, counts):
            keys = [COUNTS, *(order_key(p.order.order_id) for p in batch)]
            created = d.scripts["create"](keys=keys, args=[now_ms(), len(batch)])
            for parsed, verdict in zip(batch, created, strict=True):
                if verdict == "d":
                    counts["duplicates"] += 1
                    continue
                workflow(message(parsed)).apply_async(producer=producer)
                counts["orders"] += 1
    return {**counts, "seconds": round(time.perf_counter() - started, 3)}


def main() -> None:
    """`python -m benchmarks.celery_workflow enqueue FILE`: prints a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("enqueue", help="create the orders of a CSV and publish their chains")
    cmd.add_argument("file")
    cmd.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    print(json.dumps(enqueue(args.file, args.batch_size)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
