"""The stock catalogue: reservations, settlement and the `stock` commands' operations."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import redis

from streamproc.errors import InputFileError
from streamproc.keys import Keys, bucket_keys
from streamproc.lua import AsyncScripts, SyncScripts
from streamproc.money import parse_cents
from streamproc.replies import text

STOCK_COLUMNS = ("available", "reserved", "committed", "initial")
SKU_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


@dataclass(slots=True)  # not frozen: built per order, and a frozen dataclass builds slowly
class StockRequest:
    """What one order attempt asks of the stock: its reservation key and quantity per SKU, and
    the bucket its record is kept in (keys.record_bucket; "" for the old single hash)."""

    reservation_key: str
    quantities: dict[str, int]
    bucket: str = ""


def _pack(requests: Sequence[StockRequest], slots: Sequence[int]) -> list[Any]:
    args: list[Any] = []
    for req, slot in zip(requests, slots, strict=True):
        quantities = req.quantities
        args += (req.reservation_key, slot, len(quantities))
        for item in quantities.items():
            args += item  # the (sku, quantity) pair itself: no list built per line
    return args


class StockLedger:
    """Asynchronous, batched, idempotent stock operations used by the stages."""

    def __init__(self, scripts: AsyncScripts, keys: Keys, policy: str, default_stock: int) -> None:
        self.scripts = scripts
        self.keys = keys
        self.policy = policy
        self.default_stock = default_stock

    async def reserve(self, requests: Sequence[StockRequest]) -> list[str]:
        """Reserve all lines of each request or none: "r", or "f:<reason>" per request."""
        keys = [*(self.keys.stock(c) for c in STOCK_COLUMNS), self.keys.reservations]
        buckets, slots = bucket_keys(
            (r.bucket for r in requests), self.keys.reservation_bucket, len(keys), len(keys) + 1
        )
        args = [self.policy, self.default_stock, len(requests), *_pack(requests, slots)]
        return [text(x) for x in await self.scripts.run("stock_reserve", keys + buckets, args)]

    async def settle(self, requests: Sequence[StockRequest], commit: bool) -> list[str]:
        """Commit (sold) or release (rolled back) reservations: the state after, per request."""
        keys = [*(self.keys.stock(c) for c in STOCK_COLUMNS[:3]), self.keys.reservations]
        buckets, slots = bucket_keys(
            (r.bucket for r in requests), self.keys.reservation_bucket, len(keys), len(keys) + 1
        )
        args = ["commit" if commit else "release", len(requests), *_pack(requests, slots)]
        return [text(x) for x in await self.scripts.run("stock_settle", keys + buckets, args)]


class StockRow(msgspec.Struct, frozen=True):
    """One SKU of the catalogue as `stock show` prints it."""

    sku: str
    name: str
    price_cents: int
    initial: int
    available: int
    reserved: int
    committed: int


def set_stock(
    client: redis.Redis,
    keys: Keys,
    sku: str,
    quantity: int,
    *,
    name: str = "",
    price_cents: int = 0,
) -> None:
    """Make `quantity` units available; `initial` moves with it so INV-S keeps holding."""
    if not sku or len(sku) > 64 or not set(sku) <= SKU_CHARS:
        raise InputFileError(f"invalid SKU {sku!r}: 1-64 chars of A-Z a-z 0-9 . _ -")
    if quantity < 0:
        raise InputFileError(f"{sku}: stock must be >= 0")
    meta = msgspec.json.encode({"name": name, "price_cents": price_cents}) if name else b""
    SyncScripts.register(client).run(
        "stock_set",
        [*(keys.stock(c) for c in STOCK_COLUMNS), keys.stock_meta],
        [sku, quantity, meta],
    )


def load_catalogue(
    client: redis.Redis, keys: Keys, path: Path, keep_existing: bool = False
) -> tuple[int, int]:
    """Load products.csv (sku,name,price,stock); returns (loaded, kept) SKU counts."""
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise InputFileError(f"{path}: {exc.strerror or exc}") from None
    loaded = kept = 0
    with handle:
        reader = csv.DictReader(handle)
        missing = {"sku", "stock"} - {(h or "").strip().lower() for h in reader.fieldnames or []}
        if missing:
            raise InputFileError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        existing = set(client.hkeys(keys.stock("available"))) if keep_existing else set()
        for line, raw in enumerate(reader, start=2):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
            sku = row["sku"]
            try:
                qty = int(row["stock"])
                price = parse_cents(row.get("price") or "0")
            except ValueError:
                raise InputFileError(f"{path}:{line}: stock/price not a number") from None
            if keep_existing and sku.encode() in existing:
                kept += 1
                continue
            set_stock(client, keys, sku, qty, name=row.get("name", ""), price_cents=price)
            loaded += 1
    return loaded, kept


def show_stock(client: redis.Redis, keys: Keys) -> list[StockRow]:
    """Every SKU with its stock columns, sorted by SKU."""
    pipe = client.pipeline(transaction=False)
    for column in STOCK_COLUMNS:
        pipe.hgetall(keys.stock(column))
    pipe.hgetall(keys.stock_meta)
    *columns, meta = pipe.execute()
    skus: Iterable[bytes] = sorted(set(columns[0]) | set(columns[3]))
    rows = []
    for sku in skus:
        info = msgspec.json.decode(meta[sku]) if sku in meta else {}
        values = [int(col.get(sku, 0)) for col in columns]
        rows.append(
            StockRow(
                sku.decode(),
                info.get("name", ""),
                int(info.get("price_cents", 0)),
                values[3],
                values[0],
                values[1],
                values[2],
            )
        )
    return rows
