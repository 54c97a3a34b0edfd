"""Unit tests of opening (csvinput) and parsing (csvreader) the orders CSV; no Redis involved."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import os
import types
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from streamproc import csvinput, csvreader
from streamproc.csvinput import open_orders_file
from streamproc.csvreader import OrderReader, ParsedOrder, RejectedRow
from streamproc.errors import InputFileError
from tests.support import HEADER as COLUMNS

HEADER = ",".join(COLUMNS)
GOOD = {
    "order_id": "1001",
    "customer_id": "501",
    "customer_name": "John Doe",
    "product_sku": "SKU-001",
    "product_name": "Wireless Mouse",
    "quantity": "2",
    "unit_price": "25.50",
    "currency": "USD",
    "order_date": "2025-11-10 10:15:23",
}


def row(columns: list[str] = COLUMNS, **changes: str) -> str:
    """One CSV line (with its newline) of a good order, with some cells changed."""
    cells = {**GOOD, **changes}
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([cells.get(name, "") for name in columns])
    return out.getvalue()


def parse(text: str, default_currency: str = "USD") -> list[ParsedOrder | RejectedRow]:
    return list(OrderReader(io.StringIO(text, newline=""), default_currency, "orders.csv"))


def only_order(text: str, default_currency: str = "USD") -> ParsedOrder:
    results = parse(text, default_currency)
    assert len(results) == 1
    assert isinstance(results[0], ParsedOrder), results[0]
    return results[0]


def summary(results: list[ParsedOrder | RejectedRow]) -> list[tuple[str, int, str]]:
    """(kind, line, order id or reason) per result, for compact assertions."""
    return [
        ("ok", r.line, r.order.order_id)
        if isinstance(r, ParsedOrder)
        else ("rej", r.line, r.reason)
        for r in results
    ]


def with_bad_row(field: str, value: str) -> list[tuple[str, int, str]]:
    """A bad row between two good ones."""
    bad = row(**{"order_id": "1002", field: value})
    return summary(parse(HEADER + "\n" + row(order_id="1001") + bad + row(order_id="1003")))


# ---- a good file -------------------------------------------------------------------------


def test_good_row_becomes_an_order_with_exact_fields() -> None:
    parsed = only_order(HEADER + "\n" + row())
    order = parsed.order
    assert (parsed.line, parsed.row_count) == (2, 1)
    assert (order.order_id, order.customer_id, order.customer_name) == ("1001", 501, "John Doe")
    assert (order.currency, order.order_date, order.email) == ("USD", "2025-11-10T10:15:23Z", "")
    assert [(x.sku, x.name, x.quantity, x.unit_price_cents) for x in order.lines] == [
        ("SKU-001", "Wireless Mouse", 2, 2550)
    ]
    assert order.total_cents == 5100


def test_sample_file_all_ten_orders() -> None:
    sample = Path(__file__).resolve().parent.parent / "sample.csv"
    with open_orders_file(str(sample)) as source:
        results = list(OrderReader(source.text, "USD", source.name))
    assert [r.order.order_id for r in results if isinstance(r, ParsedOrder)] == [
        str(n) for n in range(1001, 1011)
    ]
    assert (
        sum(r.order.total_cents for r in results if isinstance(r, ParsedOrder)) == 106_543
    )  # 1065.43, summed by hand from the ten rows


def test_cells_are_stripped_and_rejects_keep_original_cells() -> None:
    text = HEADER + "\n" + row(order_id=" 1001 ", quantity=" 3 ", currency=" eur ")
    text += row(order_id="1002", quantity=" 0 ")
    first, second = parse(text)
    assert isinstance(first, ParsedOrder)
    assert (first.order.order_id, first.order.lines[0].quantity, first.order.currency) == (
        "1001",
        3,
        "EUR",
    )
    assert isinstance(second, RejectedRow)
    assert second.values[0] == "1002" and second.values[5] == " 0 "
    assert second.reason == "quantity: must be an integer 1..100000, got '0'"


# ---- every rule, rejected with its line and reason, good rows around it go through --------

REJECTS = [
    ("order_id", "", "order_id: required"),
    ("order_id", "10 01", "order_id: must be 1-64 characters of A-Z a-z 0-9 . _ -, got '10 01'"),
    ("order_id", "ord#1", "order_id: must be 1-64 characters of A-Z a-z 0-9 . _ -, got 'ord#1'"),
    (
        "order_id",
        "x" * 65,
        f"order_id: must be 1-64 characters of A-Z a-z 0-9 . _ -, got '{'x' * 40}…'",
    ),
    ("customer_id", "", "customer_id: required"),
    ("customer_id", "0", "customer_id: must be an integer 1..9007199254740991, got '0'"),
    ("customer_id", "-5", "customer_id: must be an integer 1..9007199254740991, got '-5'"),
    ("customer_id", "1.5", "customer_id: must be an integer 1..9007199254740991, got '1.5'"),
    ("customer_id", "+5", "customer_id: must be an integer 1..9007199254740991, got '+5'"),
    (
        "customer_id",
        "\uff19",
        "customer_id: must be an integer 1..9007199254740991, got '\uff19'",
    ),  # fullwidth 9
    (
        "customer_id",
        "9007199254740992",
        "customer_id: must be an integer 1..9007199254740991, got '9007199254740992'",
    ),
    ("customer_name", "", "customer_name: required"),
    ("customer_name", "   ", "customer_name: required"),
    ("customer_name", "n" * 201, f"customer_name: longer than 200 characters, got '{'n' * 40}…'"),
    ("product_sku", "", "product_sku: required"),
    (
        "product_sku",
        "SKU 1",
        "product_sku: must be 1-64 characters of A-Z a-z 0-9 . _ -, got 'SKU 1'",
    ),
    ("product_name", "p" * 201, f"product_name: longer than 200 characters, got '{'p' * 40}…'"),
    ("quantity", "0", "quantity: must be an integer 1..100000, got '0'"),
    ("quantity", "100001", "quantity: must be an integer 1..100000, got '100001'"),
    ("quantity", "-1", "quantity: must be an integer 1..100000, got '-1'"),
    ("quantity", "2.0", "quantity: must be an integer 1..100000, got '2.0'"),
    ("quantity", "", "quantity: required"),
    ("unit_price", "1.234", "unit_price: at most 2 decimals, got '1.234'"),
    ("unit_price", "-1", "unit_price: must not be negative, got '-1'"),
    ("unit_price", "1e3", "unit_price: must be a decimal number like 12.34, got '1e3'"),
    ("unit_price", "abc", "unit_price: must be a decimal number like 12.34, got 'abc'"),
    ("unit_price", "1,50", "unit_price: must be a decimal number like 12.34, got '1,50'"),
    ("unit_price", ".5", "unit_price: must be a decimal number like 12.34, got '.5'"),
    ("unit_price", "", "unit_price: required"),
    ("unit_price", "1000000000", "unit_price: must be less than 1000000000, got '1000000000'"),
    ("currency", "US", "currency: must be a 3-letter ISO 4217 code, got 'US'"),
    ("currency", "EURO", "currency: must be a 3-letter ISO 4217 code, got 'EURO'"),
    ("currency", "U$D", "currency: must be a 3-letter ISO 4217 code, got 'U$D'"),
    ("currency", "ÉUR", "currency: must be a 3-letter ISO 4217 code, got 'ÉUR'"),
    ("order_date", "", "order_date: required"),
    ("order_date", "2025-02-30", "order_date: not a valid date, got '2025-02-30'"),
    (
        "order_date",
        "2025-02-29 10:00:00",
        "order_date: not a valid date, got '2025-02-29 10:00:00'",
    ),
    (
        "order_date",
        "2025-11-31 10:00:00",
        "order_date: not a valid date, got '2025-11-31 10:00:00'",
    ),
    (
        "order_date",
        "2025-11-10 24:00:00",
        "order_date: not a valid date and time, got '2025-11-10 24:00:00'",
    ),
    (
        "order_date",
        "2025-11-10T10:00:00+24:00",
        "order_date: not a valid date and time, got '2025-11-10T10:00:00+24:00'",
    ),
    (
        "order_date",
        "10/11/2025",
        "order_date: must be YYYY-MM-DD HH:MM:SS, YYYY-MM-DD or ISO 8601 "
        "with an offset, got '10/11/2025'",
    ),
    (
        "order_date",
        "2025-13-01",
        "order_date: must be YYYY-MM-DD HH:MM:SS, YYYY-MM-DD or ISO 8601 "
        "with an offset, got '2025-13-01'",
    ),
]


@pytest.mark.parametrize(("field", "value", "reason"), REJECTS)
def test_bad_cell_is_rejected_with_line_and_reason(field: str, value: str, reason: str) -> None:
    assert with_bad_row(field, value) == [
        ("ok", 2, "1001"),
        ("rej", 3, reason),
        ("ok", 4, "1003"),
    ]


def test_bad_value_in_reason_is_escaped_to_one_line() -> None:
    results = parse(HEADER + "\n" + row(quantity="1\n2") + row(order_id="1002"))
    assert summary(results) == [
        ("rej", 2, "quantity: must be an integer 1..100000, got '1\\n2'"),
        ("ok", 4, "1002"),
    ]


ACCEPTS = [
    ("unit_price", "25.5", lambda o: o.lines[0].unit_price_cents == 2550),
    ("unit_price", "0.07", lambda o: o.lines[0].unit_price_cents == 7),
    ("unit_price", "15", lambda o: o.lines[0].unit_price_cents == 1500),
    ("unit_price", "0", lambda o: o.lines[0].unit_price_cents == 0),
    ("unit_price", "999999999.99", lambda o: o.lines[0].unit_price_cents == 99_999_999_999),
    ("unit_price", "0000000001.50", lambda o: o.lines[0].unit_price_cents == 150),
    ("quantity", "100000", lambda o: o.lines[0].quantity == 100_000),
    ("quantity", "1", lambda o: o.lines[0].quantity == 1),
    ("customer_id", "9007199254740991", lambda o: o.customer_id == 2**53 - 1),
    ("customer_id", "1", lambda o: o.customer_id == 1),
    ("order_id", "a.B_c-9", lambda o: o.order_id == "a.B_c-9"),
    ("order_id", "x" * 64, lambda o: o.order_id == "x" * 64),
    ("product_sku", "sku.9_x-Y", lambda o: o.lines[0].sku == "sku.9_x-Y"),
    ("customer_name", "  Jane Smith  ", lambda o: o.customer_name == "Jane Smith"),
    ("customer_name", "n" * 200, lambda o: o.customer_name == "n" * 200),
    ("product_name", "", lambda o: o.lines[0].name == ""),
    ("product_name", "p" * 200, lambda o: o.lines[0].name == "p" * 200),
    ("currency", "eur", lambda o: o.currency == "EUR"),
    ("currency", "", lambda o: o.currency == "USD"),
]


@pytest.mark.parametrize(("field", "value", "check"), ACCEPTS)
def test_good_cell_is_accepted(field: str, value: str, check: types.FunctionType) -> None:
    parsed = only_order(HEADER + "\n" + row(**{field: value}))
    assert check(parsed.order)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-11-10 10:15:23", "2025-11-10T10:15:23Z"),
        ("2025-11-10", "2025-11-10T00:00:00Z"),
        ("2024-02-29", "2024-02-29T00:00:00Z"),
        ("2024-02-29 23:59:59", "2024-02-29T23:59:59Z"),
        ("2025-11-30 08:00:00", "2025-11-30T08:00:00Z"),
        ("2025-11-10T23:30:00-02:00", "2025-11-11T01:30:00Z"),
        ("2025-11-10T10:15:23Z", "2025-11-10T10:15:23Z"),
        ("2025-11-10T10:15:23+02:00", "2025-11-10T08:15:23Z"),
        ("2025-11-10T10:15:23+0530", "2025-11-10T04:45:23Z"),
        ("2025-11-10T10:15:23.987654+00:00", "2025-11-10T10:15:23Z"),
        ("2025-11-10T10:15:23", "2025-11-10T10:15:23Z"),
        ("2025-01-01T00:30:00+01:00", "2024-12-31T23:30:00Z"),
    ],
)
def test_order_date_is_normalised_to_utc(value: str, expected: str) -> None:
    assert only_order(HEADER + "\n" + row(order_date=value)).order.order_date == expected


def test_every_real_day_is_accepted_and_every_other_day_29_to_31_rejected() -> None:
    # Days 29-31 pass the fast check only where every year has them; the rest take the slow path.
    text, expected = HEADER + "\n", []
    for year, month, day in itertools.product((2024, 2025), range(1, 13), range(1, 32)):
        value = f"{year}-{month:02d}-{day:02d} 23:59:59"
        text += row(order_id=value[:10], order_date=value)
        try:
            date(year, month, day)
        except ValueError:
            expected.append(f"order_date: not a valid date, got {value!r}")
        else:
            expected.append(f"{value[:10]}T23:59:59Z")
    results = parse(text)
    assert [
        r.order.order_date if isinstance(r, ParsedOrder) else r.reason for r in results
    ] == expected


def test_a_date_repeated_on_consecutive_rows_is_checked_on_each() -> None:
    text = HEADER + "\n" + row(order_id="0", order_date="") + row(order_id="00", order_date="")
    reason = "order_date: required"
    assert summary(parse(text)) == [("rej", 2, reason), ("rej", 3, reason)]
    iso, bad = "2025-01-01T00:30:00+01:00", "2025-04-31 10:00:00"
    text = HEADER + "\n" + row(order_id="1", order_date=iso) + row(order_id="2", order_date=iso)
    text += row(order_id="3", order_date=bad) + row(order_id="4", order_date=bad)
    text += row(order_id="5", order_date=iso)
    results = parse(text)
    reason = f"order_date: not a valid date, got {bad!r}"
    assert [r.order.order_date if isinstance(r, ParsedOrder) else r.reason for r in results] == [
        "2024-12-31T23:30:00Z",
        "2024-12-31T23:30:00Z",
        reason,
        reason,
        "2024-12-31T23:30:00Z",
    ]


def test_default_currency_applies_when_column_absent_and_product_name_optional() -> None:
    columns = [c for c in COLUMNS if c not in ("currency", "product_name")]
    parsed = only_order(",".join(columns) + "\n" + row(columns), default_currency="eur")
    assert parsed.order.currency == "EUR"
    assert parsed.order.lines[0].name == ""


@pytest.mark.parametrize(
    ("email", "reason"),
    [
        ("jane@example.com", ""),
        ("", ""),
        ("jane.doe+x@mail.example.co.uk", ""),
        ("jane", "customer_email: not an email address, got 'jane'"),
        ("jane@@example.com", "customer_email: not an email address, got 'jane@@example.com'"),
        ("ja ne@example.com", "customer_email: not an email address, got 'ja ne@example.com'"),
        ("jane@localhost", "customer_email: not an email address, got 'jane@localhost'"),
        ("jane@example.", "customer_email: not an email address, got 'jane@example.'"),
        (
            "j" * 243 + "@example.com",
            "customer_email: not an email address, got '" + "j" * 40 + "…'",
        ),
    ],
)
def test_customer_email(email: str, reason: str) -> None:
    columns = [*COLUMNS, "customer_email"]
    results = parse(",".join(columns) + "\n" + row(columns, customer_email=email))
    if reason:
        assert summary(results) == [("rej", 2, reason)]
    else:
        assert isinstance(results[0], ParsedOrder) and results[0].order.email == email


# ---- rows, lines and blank lines ----------------------------------------------------------


def test_wrong_number_of_cells_is_rejected() -> None:
    text = HEADER + "\n" + row(order_id="1001") + "1002,501,x\n" + row(order_id="1003") + "\n"
    text += row(order_id="1004").rstrip("\n") + ",extra\n"
    assert summary(parse(text)) == [
        ("ok", 2, "1001"),
        ("rej", 3, "expected 9 columns, got 3"),
        ("ok", 4, "1003"),
        ("rej", 6, "expected 9 columns, got 10"),
    ]


def test_blank_lines_are_skipped_and_do_not_shift_line_numbers() -> None:
    text = (
        HEADER
        + "\n\n"
        + row(order_id="1001")
        + ",,,,,,,,\n  \n"
        + row(order_id="1002", quantity="0")
    )
    reader = OrderReader(io.StringIO(text, newline=""), "USD", "orders.csv")
    assert summary(list(reader)) == [
        ("ok", 3, "1001"),
        ("rej", 6, "quantity: must be an integer 1..100000, got '0'"),
    ]
    assert reader.rows == 2


def test_quoted_newline_keeps_later_line_numbers_right() -> None:
    text = HEADER + "\n" + row(order_id="1001", product_name="Two\nline\nname")
    text += row(order_id="1002", quantity="x") + "\r\n" + row(order_id="1003")
    results = parse(text)
    assert summary(results) == [
        ("ok", 2, "1001"),
        ("rej", 5, "quantity: must be an integer 1..100000, got 'x'"),
        ("ok", 7, "1003"),
    ]
    first = results[0]
    assert isinstance(first, ParsedOrder) and first.order.lines[0].name == "Two\nline\nname"


def test_rows_are_split_exactly_as_the_csv_module_reads_them() -> None:
    # Lines without a quote are split on commas, the others read by csv: the cells and line
    # numbers must be the same as csv's either way, whatever the characters and line ends.
    cells = ["a", " b ", "", "\x00", "\t", "\\", "é", "\u2028", "\x85", "\x0c", "\x1e", "'"]
    quoted = ['"q,1"', '"two\nlines"', '"x""y"', '"cr\r\nlf"', 'in"side']
    text = ",".join(COLUMNS) + "\n"
    for n, ending in itertools.product(range(60), ("\n", "\r\n", "\r")):
        picked = [cells[(n * 7 + i * 5) % len(cells)] for i in range(n % 11)]
        if n % 4 == 0:
            picked.insert(n % 3, quoted[n % len(quoted)])
        text += ",".join(picked) + ending
    text += "last,line,without,an,ending"
    expected = []  # (the line a record starts on, its cells), as csv reads them
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader)
    line_end = reader.line_num
    for cells_read in reader:
        if "".join(cells_read).strip():  # blank lines are skipped
            expected.append((line_end + 1, cells_read))
        line_end = reader.line_num
    results = parse(text)
    assert all(isinstance(r, RejectedRow) for r in results)  # no row here is a valid order
    assert [(r.line, r.values) for r in results if isinstance(r, RejectedRow)] == expected


def test_reader_streams_without_reading_ahead() -> None:
    def endless() -> Iterator[str]:
        yield HEADER + "\n"
        for n in itertools.count(1):
            yield row(order_id=str(n))

    reader = OrderReader(endless(), "USD")  # type: ignore[arg-type]
    first = list(itertools.islice(reader, 3))
    assert [r.order.order_id for r in first if isinstance(r, ParsedOrder)] == ["1", "2", "3"]
    assert reader.rows == 4  # one row ahead: the row that ended order 3


def test_over_long_field_rejects_one_record_and_goes_on() -> None:
    old_limit = csv.field_size_limit(50)
    try:
        text = (
            HEADER
            + "\n"
            + row(order_id="1001")
            + "\n"
            + row(order_id="1002", product_name="y" * 60)
        )
        text += row(order_id="1003")
        results = summary(parse(text))
    finally:
        csv.field_size_limit(old_limit)
    # The unreadable record might have been a line of order 1001, so 1001 goes down with it.
    assert results[0] == ("rej", 2, "order 1001: rejected with its line 4")
    assert results[1][:2] == ("rej", 4)
    assert results[1][2].startswith("unreadable CSV record: field larger than field limit")
    assert results[2:] == [("ok", 5, "1003")]


# ---- multi-line orders --------------------------------------------------------------------


def test_consecutive_rows_of_one_order_make_one_order_with_exact_total() -> None:
    text = HEADER + "\n" + row(order_id="1000")
    for sku in ("SKU-001", "SKU-002", "SKU-003"):
        text += row(order_id="1001", product_sku=sku, unit_price="19.99", quantity="1")
    text += row(order_id="1001", customer_name="Other", product_sku="SKU-004", unit_price="0.07")
    text += row(order_id="1002")
    results = parse(text)
    assert summary(results) == [("ok", 2, "1000"), ("ok", 3, "1001"), ("ok", 7, "1002")]
    multi = results[1]
    assert isinstance(multi, ParsedOrder) and multi.row_count == 4
    assert [x.sku for x in multi.order.lines] == ["SKU-001", "SKU-002", "SKU-003", "SKU-004"]
    assert multi.order.customer_name == "John Doe"  # taken from the first row
    assert multi.order.total_cents == 3 * 1999 + 2 * 7


def test_amounts_are_exact_integer_cents() -> None:
    parsed = only_order(HEADER + "\n" + row(unit_price="19.99", quantity="3"))
    assert parsed.order.total_cents == 5997
    text = HEADER + "\n" + row(unit_price="0.10") + row(unit_price="0.20")
    assert only_order(text).order.total_cents == 60  # 2 x (0.10 + 0.20), where floats drift


@pytest.mark.parametrize(
    ("field", "second", "shown"),
    [
        ("currency", "EUR", "currency (line 2: USD, line 3: EUR)"),
        ("customer_id", "777", "customer_id (line 2: 501, line 3: 777)"),
        (
            "order_date",
            "2025-11-10",
            "order_date (line 2: 2025-11-10T10:15:23Z, line 3: 2025-11-10T00:00:00Z)",
        ),
    ],
)
def test_rows_that_disagree_reject_the_whole_order(field: str, second: str, shown: str) -> None:
    text = HEADER + "\n" + row() + row(**{field: second}) + row() + row(order_id="1002")
    reason = f"order 1001: lines disagree on {shown}"
    assert summary(parse(text)) == [
        ("rej", 2, reason),
        ("rej", 3, reason),
        ("rej", 4, reason),
        ("ok", 5, "1002"),
    ]


def test_one_bad_row_rejects_every_row_of_its_order() -> None:
    text = HEADER + "\n" + row() + row(quantity="0") + row() + "1001,501\n" + row(order_id="1002")
    assert summary(parse(text)) == [
        ("rej", 2, "order 1001: rejected with its line 3"),
        ("rej", 3, "quantity: must be an integer 1..100000, got '0'"),
        ("rej", 4, "order 1001: rejected with its line 3"),
        ("rej", 5, "expected 9 columns, got 2"),
        ("ok", 6, "1002"),
    ]


def test_a_bad_row_outranks_a_disagreement_in_its_order() -> None:
    text = HEADER + "\n" + row() + row(currency="EUR") + row(quantity="0") + row(order_id="1002")
    assert summary(parse(text)) == [
        ("rej", 2, "order 1001: rejected with its line 4"),
        ("rej", 3, "order 1001: rejected with its line 4"),
        ("rej", 4, "quantity: must be an integer 1..100000, got '0'"),
        ("ok", 5, "1002"),
    ]


def test_non_adjacent_repeats_are_separate_orders() -> None:
    text = HEADER + "\n" + row(order_id="1001") + row(order_id="1002") + row(order_id="1001")
    assert summary(parse(text)) == [("ok", 2, "1001"), ("ok", 3, "1002"), ("ok", 4, "1001")]


def test_order_beyond_the_line_cap_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csvreader, "MAX_LINES_PER_ORDER", 3)
    text = HEADER + "\n" + row(order_id="1000") + row() * 3 + row(order_id="1002")
    assert summary(parse(text))[1:] == [("ok", 3, "1001"), ("ok", 6, "1002")]
    text = HEADER + "\n" + row(order_id="1000") + row() * 5 + row(order_id="1002")
    reason = "order 1001: more than 3 lines (the limit per order)"
    assert summary(parse(text)) == [
        ("ok", 2, "1000"),
        *[("rej", line, reason) for line in range(3, 8)],
        ("ok", 8, "1002"),
    ]


# ---- the header ---------------------------------------------------------------------------


def test_columns_in_any_order_case_and_spaces_ignored_unknown_listed() -> None:
    header = (
        " Order_Date ,QUANTITY,unit_price,notes,product_sku,customer_name,customer_id,order_id,x"
    )
    text = header + "\n2025-11-10,3,1.10,hello,SKU-9,Ann,42,A-1,\n"
    reader = OrderReader(io.StringIO(text, newline=""), "USD", "orders.csv")
    assert reader.header[0] == " Order_Date "
    assert reader.unknown_columns == ["notes", "x"]
    (parsed,) = list(reader)
    assert isinstance(parsed, ParsedOrder)
    assert (parsed.order.order_id, parsed.order.customer_id, parsed.order.total_cents) == (
        "A-1",
        42,
        330,
    )


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (HEADER.replace("quantity,", ""), "orders.csv: header is missing required column quantity"),
        (
            HEADER.replace("order_id,", "").replace(",order_date", ""),
            "orders.csv: header is missing required columns order_id, order_date",
        ),
        (row().rstrip("\n"), "(is the header row missing?)"),
        ("", "orders.csv: line 1 is blank"),
        (",,,", "orders.csv: line 1 is blank"),
        (HEADER + ",Quantity", "orders.csv: column 'quantity' appears twice"),
    ],
)
def test_unusable_header_is_refused(header: str, message: str) -> None:
    with pytest.raises(InputFileError) as caught:
        OrderReader(io.StringIO(header + "\n" + row(), newline=""), "USD", "orders.csv")
    assert message in str(caught.value)


def test_no_rows_at_all_is_refused() -> None:
    with pytest.raises(InputFileError, match=r"^orders\.csv: file is empty$"):
        OrderReader(io.StringIO(""), "USD", "orders.csv")


# ---- opening: files, gzip, stdin, encoding ------------------------------------------------


def read_all(path: str, **kwargs: Path) -> tuple[list[tuple[str, int, str]], str]:
    with open_orders_file(path, **kwargs) as source:
        return summary(list(OrderReader(source.text, "USD", source.name))), source.name


def test_plain_file_with_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + "\r\n" + row().replace("\n", "\r\n")).encode())
    with open_orders_file(str(path)) as source:
        reader = OrderReader(source.text, "USD", source.name)
        assert reader.header[0] == "order_id" and reader.unknown_columns == []
        assert summary(list(reader)) == [("ok", 2, "1001")]
        assert source.size_bytes == path.stat().st_size
        assert source.bytes_read() == source.size_bytes
        assert source.name == str(path)


def test_gzip_file(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv.gz"
    path.write_bytes(gzip.compress(("\ufeff" + HEADER + "\n" + row() + row(order_id="2")).encode()))
    with open_orders_file(str(path)) as source:
        assert summary(list(OrderReader(source.text, "USD"))) == [("ok", 2, "1001"), ("ok", 3, "2")]
        assert source.size_bytes == path.stat().st_size
        assert 0 < source.bytes_read() <= path.stat().st_size


def test_gzip_is_recognised_by_content_too(tmp_path: Path) -> None:
    path = tmp_path / "orders.bin"
    path.write_bytes(gzip.compress((HEADER + "\n" + row()).encode()))
    assert read_all(str(path))[0] == [("ok", 2, "1001")]


def test_stdin_is_spooled_and_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = ("\ufeff" + HEADER + "\n" + row() + row(order_id="1002", quantity="0")).encode()
    stdin = io.BytesIO(data)
    monkeypatch.setattr("sys.stdin", types.SimpleNamespace(buffer=stdin))
    spool = tmp_path / "spool"
    spool.mkdir()
    with open_orders_file("-", spool_dir=spool) as source:
        assert (source.name, source.size_bytes) == ("<stdin>", None)
        assert summary(list(OrderReader(source.text, "USD", source.name))) == [
            ("ok", 2, "1001"),
            ("rej", 3, "quantity: must be an integer 1..100000, got '0'"),
        ]
        assert source.bytes_read() == len(data)
    assert stdin.tell() == len(data)
    assert list(spool.iterdir()) == []


def test_gzipped_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    data = gzip.compress((HEADER + "\n" + row()).encode())
    monkeypatch.setattr("sys.stdin", types.SimpleNamespace(buffer=io.BytesIO(data)))
    assert read_all("-")[0] == [("ok", 2, "1001")]


def test_non_utf8_late_in_file_refuses_the_whole_file(tmp_path: Path) -> None:
    good = (HEADER + "\n" + row() * 5000).encode()
    path = tmp_path / "orders.csv"
    path.write_bytes(good + b"1002,501,Jos\xe9,SKU-1,,1,1.00,USD,2025-11-10\n" + row().encode())
    offset = len(good) + len(b"1002,501,Jos")
    with pytest.raises(InputFileError) as caught, open_orders_file(str(path)):
        pytest.fail("a non-UTF-8 file must not be opened")
    assert str(caught.value) == f"{path}: not UTF-8 at line 5002 (byte offset {offset})"


def test_non_utf8_in_stdin_and_in_gzip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = (HEADER + "\n").encode() + b"\xff\n"
    where = f"not UTF-8 at line 2 (byte offset {len(HEADER) + 1})"
    monkeypatch.setattr("sys.stdin", types.SimpleNamespace(buffer=io.BytesIO(data)))
    with pytest.raises(InputFileError) as caught:
        read_all("-")
    assert str(caught.value) == f"<stdin>: {where}"
    path = tmp_path / "o.csv.gz"
    path.write_bytes(gzip.compress(data))
    with pytest.raises(InputFileError) as caught:
        read_all(str(path))
    assert str(caught.value) == f"{path}: {where}"


def test_utf8_check_across_chunk_boundaries(tmp_path: Path) -> None:
    chunk = csvinput._CHUNK_BYTES
    head = (HEADER + "\n").encode()
    split_ok = head + b"a" * (chunk - len(head) - 1) + "é\n".encode()  # é straddles the boundary
    path = tmp_path / "ok.csv"
    path.write_bytes(split_ok + row().encode())
    with open_orders_file(str(path)) as source:
        assert source.text.read().count("é") == 1
    bad = head + b"a" * (chunk - len(head) - 1) + b"\xc3(\n"  # lead byte, then no continuation
    path.write_bytes(bad)
    with pytest.raises(InputFileError, match=rf"line 2 \(byte offset {chunk - 1}\)$"):
        read_all(str(path))
    path.write_bytes(head + b"\xe2\x82")  # cut short at the very end
    with pytest.raises(InputFileError, match=rf"line 2 \(byte offset {len(head)}\)$"):
        read_all(str(path))


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf", b" \r\n\n\t ", b"\xef\xbb\xbf\n\n"])
def test_empty_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "orders.csv"
    path.write_bytes(content)
    with pytest.raises(InputFileError, match=rf"^{path}: file is empty$"):
        read_all(str(path))
    gz = tmp_path / "orders.csv.gz"
    gz.write_bytes(gzip.compress(content) if content else b"")
    with pytest.raises(InputFileError, match="file is empty"):
        read_all(str(gz))


def test_missing_file_and_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"^orders\.csv: no such file$"):
        read_all("orders.csv")
    with pytest.raises(InputFileError, match=rf"^{tmp_path}: is a directory$"):
        read_all(str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(HEADER + "\n" + row())
    path.chmod(0)
    with pytest.raises(InputFileError, match="permission denied"):
        read_all(str(path))


def test_corrupt_and_truncated_gzip_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv.gz"
    path.write_bytes((HEADER + "\n" + row()).encode())
    with pytest.raises(InputFileError, match=r"orders\.csv\.gz: not a valid gzip file"):
        read_all(str(path))
    whole = gzip.compress((HEADER + "\n" + row() * 100).encode())
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputFileError, match=r"orders\.csv\.gz: not a valid gzip file"):
        read_all(str(path))


def test_non_utf8_after_ascii_chunks_reports_its_line_and_offset(tmp_path: Path) -> None:
    # Whole chunks of ASCII are proven UTF-8 without decoding; a bad byte after them is still
    # found, with the line and offset it would have had.
    body = (HEADER + "\n" + row() * (2 * csvinput._CHUNK_BYTES // len(row()) + 10)).encode()
    assert len(body) > 2 * csvinput._CHUNK_BYTES
    path = tmp_path / "orders.csv"
    path.write_bytes(body + "é\n".encode() + b"\x80\n")
    with pytest.raises(InputFileError) as caught:
        read_all(str(path))
    line = body.count(b"\n") + 2
    offset = len(body) + len("é\n".encode())
    assert str(caught.value) == f"{path}: not UTF-8 at line {line} (byte offset {offset})"


def test_repeated_cells_parse_alike_in_every_spelling() -> None:
    # Equal (SKU, product, quantity, price) cells are checked once and share one Line; a spelling
    # with spaces is another key with the same values, and no combination borrows another's.
    cells = [
        ("SKU-1", "Mouse", "2", "25.50"),
        (" SKU-1 ", " Mouse ", " 2 ", " 25.50 "),
        ("SKU-1", "Mouse", "3", "25.50"),
        ("SKU-1", "Mouse", "2", "25.5"),
        ("SKU-2", "Mouse", "2", "25.50"),
        ("SKU-1", "", "2", "25.50"),
    ]
    text = HEADER + "\n"
    for n in range(3):
        for i, (sku, name, quantity, price) in enumerate(cells):
            text += row(
                order_id=f"{n}-{i}",
                product_sku=sku,
                product_name=name,
                quantity=quantity,
                unit_price=price,
            )
    results = parse(text)
    assert all(isinstance(r, ParsedOrder) for r in results)
    lines = [
        (x.sku, x.name, x.quantity, x.unit_price_cents)
        for r in results
        if isinstance(r, ParsedOrder)
        for x in r.order.lines
    ]
    expected = [
        ("SKU-1", "Mouse", 2, 2550),
        ("SKU-1", "Mouse", 2, 2550),
        ("SKU-1", "Mouse", 3, 2550),
        ("SKU-1", "Mouse", 2, 2550),
        ("SKU-2", "Mouse", 2, 2550),
        ("SKU-1", "", 2, 2550),
    ]
    assert lines == expected * 3
