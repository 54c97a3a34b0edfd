"""Streaming parse and validation of the orders CSV (SPEC §2) into Orders and rejected rows."""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import TextIO, TypeVar

import msgspec

from streamproc.errors import InputFileError
from streamproc.models import Line, Order

REQUIRED_COLUMNS = (
    "order_id",
    "customer_id",
    "customer_name",
    "product_sku",
    "quantity",
    "unit_price",
    "order_date",
)
OPTIONAL_COLUMNS = ("product_name", "currency", "customer_email")
MAX_LINES_PER_ORDER = 10_000
MAX_CUSTOMER_ID = 2**53 - 1  # the largest integer a JSON/JavaScript client reads exactly
MAX_QUANTITY = 100_000
_CACHE_SIZE = 32_768  # entries per cache of already-checked cell values: memory stays bounded

_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PRICE_RE = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,2})?")
_NUMBER_RE = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_DAY = r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
_DAY_RE = re.compile(_DAY)
_DAY_TIME_RE = re.compile(f"{_DAY} {_TIME}")
# Days that exist in every year 1000-9999, so this match needs no calendar check: 01-28 of any
# month, 29-30 of any month but February, 31 of the months that have one. Only February 29 (and
# the bad dates) takes the slow path, where about one date in ten (days 29-31) used to.
_SAFE_DAY_TIME_RE = re.compile(
    r"[1-9][0-9]{3}-(?:"
    r"(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
    r"|(?:0[13-9]|1[0-2])-(?:29|30)"
    r"|(?:0[13578]|1[02])-31"
    r") " + _TIME
)
_ISO_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,][0-9]+)?)?"
    r"(Z|([+-])([0-9]{2})(?::?([0-9]{2}))?)?",
    re.IGNORECASE,
)
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")
_T = TypeVar("_T")
_K = TypeVar("_K")
_ID_RULE = "must be 1-64 characters of A-Z a-z 0-9 . _ -"
_TEXT_RULE = "longer than 200 characters"
_DATE_RULE = "must be YYYY-MM-DD HH:MM:SS, YYYY-MM-DD or ISO 8601 with an offset"


class ParsedOrder(msgspec.Struct, frozen=True, gc=False):
    """A valid order, the line its first row starts on, and how many rows it spans."""

    # A msgspec struct, not a dataclass: one is built per order, and this one is built in C.
    # gc=False: it only ever points at an Order, never into a cycle, so the collector can skip it.

    order: Order
    line: int
    row_count: int


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A row that will not be imported: its line, its original cells, and why."""

    line: int
    values: list[str]
    reason: str


class _Reject(Exception):
    """A row breaks a rule; the message is the one-line reason."""


# A valid row: customer_id, customer_name, currency, order_date, email, its order line.
_Fields = tuple[int, str, str, str, str, Line]
_SHARED_FIELDS = (("customer_id", 0), ("currency", 2), ("order_date", 3))
# A buffered row of the current order: line, original cells, fields (None if invalid), reason.
_Entry = tuple[int, list[str], _Fields | None, str]


class OrderReader:
    """Iterate a CSV text stream as ParsedOrder / RejectedRow, in file order, in bounded memory."""

    def __init__(self, text: TextIO, default_currency: str, source_name: str = "input") -> None:
        self.source_name = source_name
        self.rows = 0  # data rows read; runs up to one order ahead of what has been yielded
        self._lines = iter(text)
        self._pushed = _PushBack(self._lines)
        self._csv = csv.reader(self._pushed)
        header = next(self._csv, None)
        if header is None:
            raise InputFileError(f"{source_name}: file is empty")
        self.header: list[str] = header
        self.unknown_columns: list[str] = []
        columns = self._index_columns(header)
        self._id_index = columns["order_id"]
        self._parse = _row_parser(columns, len(header), default_currency.strip().upper())

    def _index_columns(self, header: list[str]) -> dict[str, int]:
        names = [cell.strip().lower().lstrip("\ufeff") for cell in header]
        if not any(names):
            raise InputFileError(f"{self.source_name}: line 1 is blank, expected the header row")
        columns: dict[str, int] = {}
        for index, name in enumerate(names):
            if name in REQUIRED_COLUMNS or name in OPTIONAL_COLUMNS:
                if name in columns:
                    raise InputFileError(f"{self.source_name}: column {name!r} appears twice")
                columns[name] = index
            elif name:
                self.unknown_columns.append(header[index].strip())
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            hint = "" if columns else " (is the header row missing?)"
            raise InputFileError(
                f"{self.source_name}: header is missing required column"
                f"{'s' if len(missing) > 1 else ''} {', '.join(missing)}{hint}"
            )
        return columns

    def __iter__(self) -> Iterator[ParsedOrder | RejectedRow]:
        """Yield each order (all its rows valid and agreeing) or each rejected row."""
        # A line with no quote and no field over csv's limit splits on commas exactly as csv
        # parses it (its one record ends at the line's end), for half of csv's CPU. Any other
        # line goes to csv, which reads on by itself through a quoted newline.
        parse, id_index, field_limit = self._parse, self._id_index, csv.field_size_limit()
        group: list[_Entry] = []  # rows of the current order, at most MAX_LINES_PER_ORDER
        group_id = ""
        overflow_id: str | None = None  # an order past the cap: its later rows are rejected
        # The file line the last record ended on, and the data rows read: counted here,
        # published to self.rows before each yield.
        line_end, rows = self._csv.line_num, self.rows
        for raw_line in self._lines:
            line = line_end = line_end + 1
            if '"' not in raw_line and len(raw_line) <= field_limit:
                row = raw_line.rstrip("\r\n").split(",")
            else:
                record, line_count = self._read_record(raw_line)
                line_end += line_count - 1
                if isinstance(record, str):
                    # An over-long field spoils one record; it may belong to the current order,
                    # so it joins (and sinks) that order rather than let a partial order through.
                    rows += 1
                    group.append((line, [], None, record))
                    continue
                row = record
            order_id = row[id_index].strip() if id_index < len(row) else ""
            if not order_id and not "".join(row).strip():
                continue  # blank lines carry nothing, not even an order boundary
            rows += 1
            fields: _Fields | None = None
            reason = ""
            try:
                fields = parse(row, order_id)
            except _Reject as exc:
                reason = str(exc)
            if order_id == overflow_id:
                self.rows = rows
                yield RejectedRow(line, row, _too_long(order_id))
                continue
            overflow_id = None
            if order_id != group_id or not order_id:
                self.rows = rows
                # Most orders are one valid row: build those here, without _finish.
                if len(group) == 1 and (first := group[0][2]) is not None:
                    yield ParsedOrder(
                        Order(
                            group_id,
                            first[0],
                            first[1],
                            first[2],
                            first[3],
                            [first[5]],
                            first[4],
                        ),
                        group[0][0],
                        1,
                    )
                elif group:
                    yield from _finish(group_id, group)
                group, group_id = [(line, row, fields, reason)], order_id
                continue
            if len(group) == MAX_LINES_PER_ORDER:
                group.append((line, row, None, ""))
                self.rows = rows
                yield from _finish(order_id, group, _too_long(order_id))
                group, group_id, overflow_id = [], "", order_id
                continue
            group.append((line, row, fields, reason))
        self.rows = rows
        if group:
            yield from _finish(group_id, group)

    def _read_record(self, first_line: str) -> tuple[list[str] | str, int]:
        """The record starting with `first_line`, read by csv, or why it is unreadable; and how
        many lines it took."""
        self._pushed.line = first_line
        line_num = self._csv.line_num
        try:
            record: list[str] | str = next(self._csv)
        except csv.Error as exc:
            record = f"unreadable CSV record: {exc}"
        return record, self._csv.line_num - line_num


class _PushBack:
    """The input's lines for csv, starting with one the reader hands back to it."""

    __slots__ = ("_lines", "line")

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self.line: str | None = None

    def __iter__(self) -> _PushBack:
        return self

    def __next__(self) -> str:
        """The handed-back line if there is one, else the input's next line."""
        line = self.line
        if line is None:
            return next(self._lines)
        self.line = None
        return line


def _finish(
    order_id: str, group: list[_Entry], failure: str = ""
) -> list[ParsedOrder | RejectedRow]:
    """Turn the buffered rows of one order into one ParsedOrder, or a reject per row."""
    first_line, _, first, _ = group[0]
    if first is not None and not failure:
        # The usual case in one pass, building nothing it may throw away: every row valid and
        # agreeing with the first on the shared fields. Anything else is sorted out below.
        customer_id, _, currency, order_date, _, _ = first
        lines: list[Line] = []
        for _, _, fields, _ in group:
            if (
                fields is None
                or fields[0] != customer_id
                or fields[2] != currency
                or fields[3] != order_date
            ):
                break
            lines.append(fields[5])
        else:
            order = Order(order_id, customer_id, first[1], currency, order_date, lines, first[4])
            return [ParsedOrder(order, first_line, len(group))]
    valid = [entry[2] for entry in group if entry[2] is not None]
    if not failure and len(valid) < len(group):
        bad_line = next(entry[0] for entry in group if entry[2] is None)
        failure = f"order {order_id}: rejected with its line {bad_line}"
    if not failure:
        # Every row is valid, so the pass above stopped at one that disagrees: name the first.
        first = valid[0]
        failure = next(
            f"order {order_id}: lines disagree on {name} "
            f"(line {first_line}: {first[index]}, line {line}: {fields[index]})"
            for (line, _, _, _), fields in zip(group, valid, strict=True)
            for name, index in _SHARED_FIELDS
            if fields[index] != first[index]
        )
    return [RejectedRow(line, row, reason or failure) for line, row, _, reason in group]


def _too_long(order_id: str) -> str:
    return f"order {order_id}: more than {MAX_LINES_PER_ORDER} lines (the limit per order)"


def _show(value: str) -> str:
    """A bad value for a reason: quoted, escaped to one line, at most 40 characters."""
    return repr(value if len(value) <= 40 else value[:40] + "…")


def _row_parser(
    cols: dict[str, int], width: int, default_currency: str
) -> Callable[[list[str], str], _Fields]:
    """Build the per-row validator with every column index bound once, for speed."""
    i_customer, i_name, i_sku = cols["customer_id"], cols["customer_name"], cols["product_sku"]
    i_quantity, i_price, i_date = cols["quantity"], cols["unit_price"], cols["order_date"]
    i_product, i_currency, i_email = (
        cols.get("product_name", -1),
        cols.get("currency", -1),
        cols.get("customer_email", -1),
    )
    id_ok, date_ok = _ID_RE.fullmatch, _SAFE_DAY_TIME_RE.fullmatch
    # Files repeat customers, SKUs, prices...: each raw cell is checked once, then looked up. Raw
    # (unstripped) keys spare the strip() on a hit; a spelling with spaces is simply another key.
    # A whole line (SKU, product, quantity, price) is one lookup, and equal lines share one
    # immutable Line; a miss falls back to the per-cell caches.
    lines: dict[tuple[str, str, str, str], Line] = {}
    skus: dict[str, str] = {}
    quantities: dict[str, int] = {}
    prices: dict[str, int] = {}
    currencies: dict[str, str] = {"": default_currency}
    emails: dict[str, str] = {"": ""}

    def new_line(key: tuple[str, str, str, str]) -> Line:
        raw_sku, raw_product, raw_quantity, raw_price = key
        if (sku := skus.get(raw_sku)) is None:
            sku = _remember(skus, raw_sku, _sku(raw_sku.strip()))
        product = raw_product.strip()
        if len(product) > 200:
            raise _Reject(_reason("product_name", product, _TEXT_RULE))
        if (quantity := quantities.get(raw_quantity)) is None:
            quantity = _remember(quantities, raw_quantity, _quantity(raw_quantity.strip()))
        if (price_cents := prices.get(raw_price)) is None:
            price_cents = _remember(prices, raw_price, _cents(raw_price.strip()))
        return _remember(lines, key, Line(sku, product, quantity, price_cents))

    # Consecutive rows of one order repeat its date: it is checked again only when it changes.
    # None matches no cell, so the first row's date is always checked (even an empty one).
    last_raw_date: str | None = None
    order_date = ""

    def parse(row: list[str], order_id: str) -> _Fields:
        if len(row) != width:
            raise _Reject(f"expected {width} columns, got {len(row)}")
        if not id_ok(order_id):
            raise _Reject(_reason("order_id", order_id, _ID_RULE))
        raw = row[i_customer]
        # Checked in place, not cached: files have more customers than a cache holds. Up to 15
        # ASCII digits is always below MAX_CUSTOMER_ID; anything else (0, spaces, 16+ digits, a
        # bad value) takes the full check.
        if not (raw.isdigit() and len(raw) < 16 and raw.isascii() and (customer_id := int(raw))):
            customer_id = _customer_id(raw.strip())
        name = row[i_name].strip()
        if not name or len(name) > 200:
            raise _Reject(_reason("customer_name", name, _TEXT_RULE))
        key4 = (row[i_sku], row[i_product] if i_product >= 0 else "", row[i_quantity], row[i_price])
        line = lines.get(key4) or new_line(key4)
        raw = row[i_currency] if i_currency >= 0 else ""
        if (currency := currencies.get(raw)) is None:
            currency = _remember(currencies, raw, _currency(raw.strip(), default_currency))
        nonlocal last_raw_date, order_date
        raw = row[i_date]
        if raw != last_raw_date:
            order_date = raw.replace(" ", "T") + "Z" if date_ok(raw) else _order_date(raw.strip())
            last_raw_date = raw
        if i_email < 0:
            return (customer_id, name, currency, order_date, "", line)
        raw = row[i_email]
        if (email := emails.get(raw)) is None:
            email = _remember(emails, raw, _email(raw.strip()))
        return (customer_id, name, currency, order_date, email, line)

    return parse


def _remember(cache: dict[_K, _T], key: _K, value: _T) -> _T:
    if len(cache) < _CACHE_SIZE:
        cache[key] = value
    return value


def _integer(field: str, maximum: int, value: str) -> int:
    # The length cap keeps int() away from absurd digit strings; ASCII keeps out "²" and "٣".
    if len(value) <= 20 and value.isascii() and value.isdigit() and 0 < int(value) <= maximum:
        return int(value)
    raise _Reject(_reason(field, value, f"must be an integer 1..{maximum}"))


_customer_id = functools.partial(_integer, "customer_id", MAX_CUSTOMER_ID)
_quantity = functools.partial(_integer, "quantity", MAX_QUANTITY)


def _sku(value: str) -> str:
    if not _ID_RE.fullmatch(value):
        raise _Reject(_reason("product_sku", value, _ID_RULE))
    return value


def _cents(value: str) -> int:
    whole, dot, fraction = value.partition(".")
    # Leading zeros do not count towards the nine digits allowed before the point.
    if not whole or not _PRICE_RE.fullmatch((whole.lstrip("0") or "0") + dot + fraction):
        raise _Reject(_reason("unit_price", value, _price_problem(value)))
    # Digits glued, never multiplied as floats: "25.5" is "25" + "50" cents.
    return int(whole + fraction.ljust(2, "0"))


def _currency(value: str, default_currency: str) -> str:
    if not value:
        return default_currency
    if len(value) == 3 and value.isascii() and value.isalpha():
        return value.upper()
    raise _Reject(_reason("currency", value, "must be a 3-letter ISO 4217 code"))


def _email(value: str) -> str:
    if value and (len(value) > 254 or not _EMAIL_RE.fullmatch(value)):
        raise _Reject(_reason("customer_email", value, "not an email address"))
    return value


def _reason(field: str, value: str, problem: str) -> str:
    """One line, field first: 'required' for an empty cell, else the problem and the value."""
    if not value:
        return f"{field}: required"
    return f"{field}: {problem}, got {_show(value)}"


def _price_problem(value: str) -> str:
    number = _NUMBER_RE.fullmatch(value)
    if number is None:
        return "must be a decimal number like 12.34"
    if value.startswith("-"):
        return "must not be negative"
    if number[1] is not None and len(number[1]) > 3:  # group 1 includes the point
        return "at most 2 decimals"
    return "must be less than 1000000000"


def _order_date(value: str) -> str:
    """Normalise any accepted form to YYYY-MM-DDTHH:MM:SSZ (the slow path, with checks)."""
    if _DAY_RE.fullmatch(value[:10]) and not _is_real_day(value[:10]):
        raise _Reject(_reason("order_date", value, "not a valid date"))
    if len(value) == 10 and _DAY_RE.fullmatch(value):
        return f"{value}T00:00:00Z"
    if len(value) == 19 and _DAY_TIME_RE.fullmatch(value):
        return value.replace(" ", "T") + "Z"
    match = _ISO_RE.fullmatch(value)
    if match is None:
        raise _Reject(_reason("order_date", value, _DATE_RULE))
    year, month, day, hour, minute, second, _, sign, zone_h, zone_m = match.groups()
    try:
        offset = UTC
        if sign is not None:
            if int(zone_m or 0) > 59:
                raise ValueError("offset minutes above 59")
            delta = timedelta(hours=int(zone_h), minutes=int(zone_m or 0))
            offset = timezone(delta if sign == "+" else -delta)
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second or 0), 0, offset
        ).astimezone(UTC)
    except (ValueError, OverflowError):
        raise _Reject(_reason("order_date", value, "not a valid date and time")) from None
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z"
    )


@functools.lru_cache(maxsize=4096)
def _is_real_day(day: str) -> bool:
    """Whether YYYY-MM-DD exists in the calendar (2025-02-30 does not)."""
    try:
        date(int(day[:4]), int(day[5:7]), int(day[8:10]))
    except ValueError:
        return False
    return True
