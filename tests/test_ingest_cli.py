"""`streamproc ingest` as a user runs it: real processes against the test server (SPEC §2, §8)."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis

from streamproc.clock import iso_ms
from streamproc.connection import async_client
from streamproc.errors import ServerError
from streamproc.export import iter_orders
from streamproc.ingest import IngestInterrupted, ingest_file
from streamproc.keys import Keys
from streamproc.models import Order, decode_order
from streamproc.orderview import StoredOrder, load_order
from streamproc.transport import ensure_groups_sync
from tests.helpers import REPO_ROOT, free_port, run_cli, spawn_cli, stop_procs
from tests.support import HEADER

KEYS = Keys()
SAMPLE = REPO_ROOT / "sample.csv"
PRODUCTS = REPO_ROOT / "products.csv"
COLUMNS = [*HEADER, "customer_email"]
GOOD = {
    "order_id": "G1",
    "customer_id": "501",
    "customer_name": "John Doe",
    "product_sku": "SKU-001",
    "product_name": "Wireless Mouse",
    "quantity": "2",
    "unit_price": "25.50",
    "currency": "USD",
    "order_date": "2025-11-10 10:15:23",
    "customer_email": "",
}
SUMMARY_KEYS = {
    "rows",
    "imported",
    "duplicates",
    "rejected",
    "seconds",
    "rows_per_s",
    "rejects_file",
}
OPTIONAL_SUMMARY_KEYS = {"resubmitted", "unknown_columns"}
USING_NOTICE = "streamproc: using "

# (column, bad value, what the reason must contain): one per rule of SPEC §2.
RULE_CASES: list[tuple[str, str, str]] = [
    ("order_id", "A" * 65, "order_id: must be 1-64 characters"),
    ("order_id", "bad id!", "order_id: must be 1-64 characters"),
    ("customer_id", "", "customer_id: required"),
    ("customer_id", "abc", "customer_id: must be an integer 1..9007199254740991"),
    ("customer_id", "0", "customer_id: must be an integer"),
    ("customer_id", "-7", "customer_id: must be an integer"),
    ("customer_id", str(2**53), "customer_id: must be an integer"),
    ("customer_name", "   ", "customer_name: required"),
    ("customer_name", "n" * 201, "customer_name: longer than 200 characters"),
    ("product_sku", "", "product_sku: required"),
    ("product_sku", "SKU 001", "product_sku: must be 1-64 characters"),
    ("product_sku", "S" * 65, "product_sku: must be 1-64 characters"),
    ("product_name", "p" * 201, "product_name: longer than 200 characters"),
    ("quantity", "", "quantity: required"),
    ("quantity", "0", "quantity: must be an integer 1..100000"),
    ("quantity", "100001", "quantity: must be an integer 1..100000"),
    ("quantity", "1.5", "quantity: must be an integer"),
    ("unit_price", "", "unit_price: required"),
    ("unit_price", "-1.00", "unit_price: must not be negative"),
    ("unit_price", "1.234", "unit_price: at most 2 decimals"),
    ("unit_price", "1000000000", "unit_price: must be less than 1000000000"),
    ("unit_price", "12,50", "unit_price: must be a decimal number"),
    ("currency", "US", "currency: must be a 3-letter ISO 4217 code"),
    ("currency", "U5D", "currency: must be a 3-letter ISO 4217 code"),
    ("order_date", "", "order_date: required"),
    ("order_date", "10/11/2025", "order_date: must be YYYY-MM-DD HH:MM:SS"),
    ("order_date", "2025-02-30", "order_date: not a valid date"),
    ("order_date", "2025-11-10 24:00:00", "order_date:"),
    ("order_date", "2025-11-10T10:00:00+25:00", "order_date: not a valid date and time"),
    ("customer_email", "not-an-email", "customer_email: not an email address"),
]


# -- helpers -----------------------------------------------------------------------------------


def csv_text(rows: Sequence[dict[str, str]], columns: Sequence[str] = COLUMNS) -> str:
    """A CSV document: header plus one line per row (missing cells are empty)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(name, "") for name in columns])
    return out.getvalue()


def good(order_id: str, **changes: str) -> dict[str, str]:
    """A valid row with some cells changed."""
    return {**GOOD, "order_id": order_id, **changes}


def write(path: Path, rows: Sequence[dict[str, str]], columns: Sequence[str] = COLUMNS) -> Path:
    path.write_text(csv_text(rows, columns), encoding="utf-8")
    return path


def ingest(
    path: Path | str,
    env: dict[str, str],
    *extra: str,
    input: bytes | None = None,
    cwd: Path | None = None,
) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    """Run `ingest PATH --json`; the process and its parsed summary."""
    done = run_cli(["ingest", str(path), "--json", *extra], env, input=input, cwd=cwd)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done
    return done, json.loads(lines[0])


def check_summary_shape(summary: dict[str, object]) -> None:
    """The documented keys are all there; anything else is one of the allowed extras."""
    assert summary.keys() >= SUMMARY_KEYS, summary
    assert summary.keys() <= SUMMARY_KEYS | OPTIONAL_SUMMARY_KEYS, summary
    for key in ("rows", "imported", "duplicates", "rejected"):
        assert type(summary[key]) is int, (key, summary)
    assert isinstance(summary["seconds"], int | float)
    assert isinstance(summary["rows_per_s"], int | float)


def error_lines(stderr: str) -> list[str]:
    """stderr without the informational 'using <server>' notice every command prints."""
    return [line for line in stderr.splitlines() if not line.startswith(USING_NOTICE)]


def read_rejects(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def order_keys(r: redis.Redis) -> list[str]:
    return list(r.scan_iter(match=KEYS.order_pattern, count=1000))


def stored_order(r: redis.Redis, order_id: str) -> Order:
    payload = r.hget(KEYS.order(order_id), "d")
    assert payload is not None, f"order {order_id} not stored"
    return decode_order(payload)


def stream_ids(r: redis.Redis) -> list[str]:
    """The `o` (order id) field of every reserve-stream entry, in stream order."""
    return [fields["o"] for _, fields in r.xrange(KEYS.stream("reserve"))]


def assert_nothing_enqueued(r: redis.Redis) -> None:
    assert r.xlen(KEYS.stream("reserve")) == 0
    assert order_keys(r) == []
    assert not any(int(v) for v in r.hgetall(KEYS.state_counts).values())


def export_jsonl(env: dict[str, str]) -> dict[str, dict[str, object]]:
    done = run_cli(["orders", "export", "--format", "jsonl"], env)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines() if line]
    return {str(rec["order_id"]): rec for rec in records}


def wait_drained(env: dict[str, str], timeout_s: float = 30) -> None:
    done = run_cli(["wait", "--timeout", str(timeout_s)], env, timeout=timeout_s + 30)
    assert done.returncode == 0, done.stderr


# -- SPEC §2 rules, one rejected row each ------------------------------------------------------


def test_each_rule_rejects_its_row_with_line_and_reason(
    tmp_path: Path, sp_env: dict[str, str], r: redis.Redis
) -> None:
    """Each §2 rule: the bad row goes to the rejects file with line and reason, good rows go in."""
    rows: list[dict[str, str]] = []
    expected: dict[int, tuple[list[str], str]] = {}  # line -> (original cells, reason part)
    good_ids: list[str] = []
    for i, (column, value, reason) in enumerate(RULE_CASES):
        rows.append(good(f"G{i}"))
        good_ids.append(f"G{i}")
        bad = {**good(f"B{i}"), column: value}
        rows.append(bad)
        expected[len(rows) + 1] = ([bad[c] for c in COLUMNS], reason)  # header is line 1
    rows.append(good("G-last"))
    good_ids.append("G-last")
    text = csv_text(rows)
    # A row with a cell missing: the column count is a rule too.
    text += "B-short,501,John Doe,SKU-001,Mouse,2,25.50,USD,2025-11-10\n"
    short_line = len(rows) + 2
    text += csv_text([good("G-after-short")]).split("\n", 1)[1]
    good_ids.append("G-after-short")
    path = tmp_path / "orders.csv"
    path.write_text(text, encoding="utf-8")

    done, summary = ingest(path, sp_env)

    assert done.returncode == 1, done.stderr
    check_summary_shape(summary)
    rejects_path = tmp_path / "orders.csv.rejects.csv"
    bad_count = len(RULE_CASES) + 1
    assert summary["rows"] == len(good_ids) + bad_count
    assert summary["imported"] == len(good_ids)
    assert summary["duplicates"] == 0
    assert summary["rejected"] == bad_count
    assert summary["rejects_file"] == str(rejects_path)

    with rejects_path.open(encoding="utf-8", newline="") as handle:
        header, *records = list(csv.reader(handle))
    assert header == [*COLUMNS, "line", "reason"]
    by_line = {int(rec[-2]): rec for rec in records}
    assert len(by_line) == len(records) == bad_count
    for line, (cells, reason) in expected.items():
        assert line in by_line, f"line {line} ({reason}) not rejected"
        assert by_line[line][: len(COLUMNS)] == cells
        assert reason in by_line[line][-1], (line, by_line[line][-1])
    assert "expected 10 columns, got 9" in by_line[short_line][-1]
    assert by_line[short_line][0] == "B-short"

    assert r.xlen(KEYS.stream("reserve")) == len(good_ids)
    assert stream_ids(r) == good_ids  # file order, nothing of a bad row slipped in
    assert sorted(k.removeprefix(KEYS.order_prefix) for k in order_keys(r)) == sorted(good_ids)
    assert r.hget(KEYS.state_counts, "pending") == str(len(good_ids))


def test_boundary_values_are_accepted_and_normalised(
    tmp_path: Path, sp_env: dict[str, str], r: redis.Redis
) -> None:
    """Values on the edge of each rule are imported; currency and dates are normalised."""
    rows = [
        good("X" * 64, customer_id=str(2**53 - 1), quantity="100000", unit_price="999999999.99"),
        good("b.2_-", customer_name="  " + "n" * 200 + "  ", product_sku="S" * 64),
        good("c3", currency="eur", order_date="2025-11-10"),
        good("d4", currency="", order_date="2025-11-10T12:30:00+02:00", unit_price="5.5"),
        good("e5", unit_price="0", order_date="2025-11-10T23:59:59Z", customer_email="a@b.co"),
    ]
    env = {**sp_env, "STREAMPROC_DEFAULT_CURRENCY": "GBP"}
    done, summary = ingest(write(tmp_path / "edge.csv", rows), env)

    assert done.returncode == 0, done.stderr
    assert summary["imported"] == 5
    assert summary["rejected"] == 0
    big = stored_order(r, "X" * 64)
    assert big.customer_id == 2**53 - 1
    assert big.total_cents == 100000 * 99999999999
    assert stored_order(r, "b.2_-").customer_name == "n" * 200
    c3 = stored_order(r, "c3")
    assert (c3.currency, c3.order_date) == ("EUR", "2025-11-10T00:00:00Z")
    d4 = stored_order(r, "d4")
    assert (d4.currency, d4.order_date) == ("GBP", "2025-11-10T10:30:00Z")
    assert d4.total_cents == 2 * 550
    e5 = stored_order(r, "e5")
    assert (e5.total_cents, e5.email) == (0, "a@b.co")


# -- unusable input: exit 2, nothing enqueued --------------------------------------------------


def _late_non_utf8(path: Path) -> None:
    # Past the first MiB, so any reader that imports as it decodes would have sent batches.
    body = csv_text([good(f"U{i}") for i in range(20_000)]).encode()
    assert len(body) > 1 << 20
    path.write_bytes(body + b"U-bad,501,Caf\xe9,SKU-001,Mouse,1,1.00,USD,2025-11-10\n")


def _no_header(path: Path) -> None:
    path.write_text(csv_text([good("N1"), good("N2")]).split("\n", 1)[1], encoding="utf-8")


def _missing_column(path: Path) -> None:
    write(path, [good("M1")], [c for c in COLUMNS if c != "unit_price"])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _blank(path: Path) -> None:
    path.write_bytes(b"\xef\xbb\xbf\n \n\n")


def _bad_gzip(path: Path) -> None:
    path.write_bytes(gzip.compress(SAMPLE.read_bytes())[:-40])


UNUSABLE = {
    "no-header": ("orders.csv", _no_header, "missing required column"),
    "missing-column": ("orders.csv", _missing_column, "unit_price"),
    "non-utf8-late": ("orders.csv", _late_non_utf8, "not UTF-8 at line 20002"),
    "empty": ("orders.csv", _empty, "empty"),
    "blank": ("orders.csv", _blank, "empty"),
    "truncated-gzip": ("orders.csv.gz", _bad_gzip, "gzip"),
    "missing-file": ("nowhere.csv", None, "no such file"),
}


@pytest.mark.parametrize("case", list(UNUSABLE))
def test_unusable_file_exits_2_and_enqueues_nothing(
    case: str, tmp_path: Path, sp_env: dict[str, str], r: redis.Redis
) -> None:
    """A file that cannot be used as a whole: exit 2, one line naming it, nothing in Redis."""
    name, make, reason = UNUSABLE[case]
    path = tmp_path / name
    if make is not None:
        make(path)

    done = run_cli(["ingest", str(path), "--json"], sp_env)

    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 1, done.stderr
    assert str(path) in errors[0]
    assert reason in errors[0]
    assert done.stdout == ""
    assert_nothing_enqueued(r)
    assert not (tmp_path / f"{name}.rejects.csv").exists()


# -- input forms -------------------------------------------------------------------------------

BOM = b"\xef\xbb\xbf"
FORMS = {
    "bom": ("orders.csv", lambda data: BOM + data, False),
    "gzip": ("orders.csv.gz", gzip.compress, False),
    "gzip-bom": ("orders.csv.gz", lambda data: gzip.compress(BOM + data), False),
    "stdin": ("-", lambda data: data, True),
    "stdin-gzip-bom": ("-", lambda data: gzip.compress(BOM + data), True),
    "crlf": ("orders.csv", lambda data: data.replace(b"\n", b"\r\n"), False),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_input_forms_import_every_order(
    form: str, tmp_path: Path, sp_env: dict[str, str], r: redis.Redis
) -> None:
    """gzip, stdin and a UTF-8 BOM all import sample.csv fully; a clean import leaves no rejects."""
    name, encode, from_stdin = FORMS[form]
    data = encode(SAMPLE.read_bytes())
    target = "-" if from_stdin else str(tmp_path / name)
    if not from_stdin:
        Path(target).write_bytes(data)

    done, summary = ingest(target, sp_env, input=data if from_stdin else None, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    check_summary_shape(summary)
    assert (summary["rows"], summary["imported"], summary["rejected"]) == (10, 10, 0)
    assert summary["rejects_file"] is None
    assert list(tmp_path.glob("*.rejects.csv")) == []
    assert stream_ids(r) == [str(n) for n in range(1001, 1011)]
    first = stored_order(r, "1001")
    assert (first.customer_name, first.total_cents) == ("John Doe", 5100)


def test_rejects_option_writes_where_asked(
    tmp_path: Path, sp_env: dict[str, str], r: redis.Redis
) -> None:
    """--rejects PATH (here for stdin) is where the rejected rows go, nothing at the default."""
    data = csv_text([good("S1"), good("S2", quantity="0"), good("S3")]).encode()
    target = tmp_path / "out" / "bad-rows.csv"
    target.parent.mkdir()

    done, summary = ingest("-", sp_env, "--rejects", str(target), input=data, cwd=tmp_path)

    assert done.returncode == 1, done.stderr
    assert (summary["imported"], summary["rejected"]) == (2, 1)
    assert summary["rejects_file"] == str(target)
    [reject] = read_rejects(target)
    assert (reject["order_id"], reject["line"]) == ("S2", "3")
    assert reject["reason"].startswith("quantity:")
    assert not (tmp_path / "stdin.rejects.csv").exists()
    assert stream_ids(r) == ["S1", "S3"]


@pytest.mark.parametrize("where", ["the-input", "missing-dir"])
def test_unusable_rejects_path_exits_2_before_importing(
    where: str, tmp_path: Path, sp_env: dict[str, str], r: redis.Redis
) -> None:
    """--rejects naming the input (it would be truncated) or a missing directory: exit 2."""
    path = write(
        tmp_path / "orders.csv",
        [good(f"P{i}") for i in range(3000)] + [good("P-bad", quantity="0")],
    )
    original = path.read_bytes()
    target = path if where == "the-input" else tmp_path / "no-such-dir" / "rejects.csv"

    done = run_cli(["ingest", str(path), "--rejects", str(target)], sp_env)

    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 1, done.stderr
    assert str(target) in errors[0]
    assert path.read_bytes() == original
    assert_nothing_enqueued(r)


# -- duplicates --------------------------------------------------------------------------------


def test_same_file_twice_is_all_duplicates(sp_env: dict[str, str], r: redis.Redis) -> None:
    """Re-importing a file imports nothing, counts every order as a duplicate and exits 0."""
    first, one = ingest(SAMPLE, sp_env)
    assert first.returncode == 0, first.stderr
    assert (one["imported"], one["duplicates"]) == (10, 0)

    second, two = ingest(SAMPLE, sp_env)

    assert second.returncode == 0, second.stderr
    assert (two["rows"], two["imported"], two["duplicates"], two["rejected"]) == (10, 0, 10, 0)
    assert r.xlen(KEYS.stream("reserve")) == 10
    assert r.hget(KEYS.state_counts, "pending") == "10"
    assert "imported 0 orders, 10 duplicates" in run_cli(["ingest", str(SAMPLE)], sp_env).stdout


def test_non_adjacent_repeat_in_one_file_is_one_duplicate(
    tmp_path: Path, sp_env: dict[str, str], r: redis.Redis
) -> None:
    """A repeated order_id further down the file is skipped and counted once; the first wins."""
    rows = [good("R1"), good("R2"), good("R3"), good("R1", customer_name="Someone Else")]

    done, summary = ingest(write(tmp_path / "dup.csv", rows), sp_env, "--batch-size", "2")

    assert done.returncode == 0, done.stderr
    assert (summary["rows"], summary["imported"], summary["duplicates"]) == (4, 3, 1)
    assert summary["rejected"] == 0
    assert stream_ids(r) == ["R1", "R2", "R3"]
    assert stored_order(r, "R1").customer_name == "John Doe"


def test_repeat_within_one_batch_and_the_rows_per_outcome(
    tmp_path: Path, sp_env: dict[str, str], r: redis.Redis
) -> None:
    """A repeat inside one batch is a duplicate too (the order the same batch created is
    seen), and the ingest rows hash counts each order's CSV rows under its outcome, which the
    script works out from one argument per batch, on a first import and on a re-import."""
    rows = [
        good("M1"),
        good("M1", product_sku="SKU-OTHER"),
        good("M2"),
        good("M1", customer_name="Someone Else"),
        good("BAD", quantity="0"),
        *[good("M3")] * 3,
    ]
    path = write(tmp_path / "repeat.csv", rows)

    done, summary = ingest(path, sp_env)

    assert done.returncode == 1, done.stderr  # a row was rejected
    assert (summary["rows"], summary["imported"], summary["duplicates"]) == (8, 3, 1)
    assert summary["rejected"] == 1
    assert stream_ids(r) == ["M1", "M2", "M3"]
    assert stored_order(r, "M1").customer_name == "John Doe"
    assert len(stored_order(r, "M1").lines) == 2
    assert r.hgetall(KEYS.ingest_rows) == {"imported": "6", "duplicate": "1", "rejected": "1"}

    again, summary = ingest(path, sp_env)

    assert again.returncode == 1, again.stderr
    assert (summary["imported"], summary["duplicates"], summary["rejected"]) == (0, 4, 1)
    assert r.hgetall(KEYS.ingest_rows) == {"imported": "6", "duplicate": "8", "rejected": "2"}
    assert r.xlen(KEYS.stream("reserve")) == 3


# -- multi-line orders -------------------------------------------------------------------------


def test_multi_line_order_is_one_order_with_exact_total(
    tmp_path: Path, sp_env: dict[str, str], r: redis.Redis
) -> None:
    """Consecutive rows form one order; the total is exact in cents; a disagreeing order is out."""
    rows = [
        good("M1", product_sku="SKU-001", quantity="3", unit_price="0.10"),
        good("M1", product_sku="SKU-002", quantity="7", unit_price="19.99"),
        good("M1", product_sku="SKU-003", quantity="1", unit_price="0.07"),
        good("C2", currency="USD"),  # lines 5-7 disagree on currency
        good("C2", currency="EUR", product_sku="SKU-002"),
        good("C2", currency="USD", product_sku="SKU-003"),
        good("K3"),  # lines 8-10: the middle row is bad and sinks the whole order
        good("K3", quantity="zero"),
        good("K3", product_sku="SKU-004"),
        good("Z4"),
    ]

    done, summary = ingest(write(tmp_path / "multi.csv", rows), sp_env)

    assert done.returncode == 1, done.stderr
    assert (summary["rows"], summary["imported"], summary["rejected"]) == (10, 2, 6)
    assert stream_ids(r) == ["M1", "Z4"]
    m1 = stored_order(r, "M1")
    assert [(ln.sku, ln.quantity, ln.unit_price_cents) for ln in m1.lines] == [
        ("SKU-001", 3, 10),
        ("SKU-002", 7, 1999),
        ("SKU-003", 1, 7),
    ]
    assert m1.total_cents == 30 + 13993 + 7
    rejects = {int(rec["line"]): rec for rec in read_rejects(tmp_path / "multi.csv.rejects.csv")}
    assert sorted(rejects) == [5, 6, 7, 8, 9, 10]
    for line in (5, 6, 7):
        assert rejects[line]["order_id"] == "C2"
        assert "lines disagree on currency" in rejects[line]["reason"]
    assert rejects[9]["reason"].startswith("quantity:")
    assert "rejected with its line 9" in rejects[8]["reason"]
    assert "rejected with its line 9" in rejects[10]["reason"]
    assert r.exists(KEYS.order("C2"), KEYS.order("K3")) == 0


# -- --force -----------------------------------------------------------------------------------


def test_force_resubmits_failed_order_never_a_completed_one(
    tmp_path: Path, sp_env: dict[str, str], r: redis.Redis
) -> None:
    """A failed order (no stock) completes after --force; a completed one stays charged once."""
    env = {**sp_env, "STREAMPROC_PAYMENT_SUCCESS_RATE": "1.0"}
    assert run_cli(["stock", "load", str(PRODUCTS)], env).returncode == 0
    assert run_cli(["stock", "set", "SKU-NONE", "0"], env).returncode == 0
    path = write(
        tmp_path / "force.csv",
        [good("F1", product_sku="SKU-NONE", quantity="1"), good("F2", product_sku="SKU-001")],
    )
    done, summary = ingest(path, env)
    assert done.returncode == 0, done.stderr
    assert summary["imported"] == 2

    consumer = spawn_cli(["consume", "--stage", "all"], env, log_path=tmp_path / "consume.log")
    try:
        wait_drained(env)
        before = export_jsonl(env)
        assert before["F1"]["state"] == "failed"
        assert before["F2"]["state"] == "completed"
        assert (before["F1"]["charges"], before["F2"]["charges"]) == (0, 1)

        # Without --force a failed order is a duplicate like any other.
        done, plain = ingest(path, env)
        assert done.returncode == 0, done.stderr
        assert (plain["imported"], plain["duplicates"], plain.get("resubmitted", 0)) == (0, 2, 0)

        assert run_cli(["stock", "set", "SKU-NONE", "5"], env).returncode == 0
        done, forced = ingest(path, env, "--force")
        assert done.returncode == 0, done.stderr
        assert (forced["imported"], forced["resubmitted"], forced["duplicates"]) == (0, 1, 1)
        wait_drained(env)
    finally:
        codes = stop_procs([consumer])
    assert codes == [0], (tmp_path / "consume.log").read_text()

    after = export_jsonl(env)
    assert after["F1"]["state"] == "completed"
    assert (after["F1"]["charges"], after["F1"]["attempts"]) == (1, 2)
    assert after["F2"]["state"] == "completed"
    assert (after["F2"]["charges"], after["F2"]["attempts"]) == (1, 1)
    assert after["F2"]["history"] == before["F2"]["history"]  # never re-run
    stock = json.loads(run_cli(["stock", "show", "--json"], env).stdout)
    none = next(row for row in stock if row["sku"] == "SKU-NONE")
    assert (none["available"], none["reserved"], none["committed"]) == (4, 0, 1)


# -- crash in the middle -----------------------------------------------------------------------


def _big_file(path: Path, rows_wanted: int, seed: int) -> list[str]:
    """A seeded CSV of orders of 1-3 lines; returns the order ids in file order."""
    rnd = random.Random(seed)
    ids: list[str] = []
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write(",".join(COLUMNS[:-1]) + "\n")
        rows = 0
        while rows < rows_wanted:
            order_id = f"K{len(ids):06d}"
            ids.append(order_id)
            customer = rnd.randint(1, 50_000)
            day = f"2025-11-{rnd.randint(1, 30):02d} {rnd.randint(0, 23):02d}:00:00"
            for _ in range(rnd.choice((1, 1, 2, 3))):
                sku = f"SKU-00{rnd.randint(1, 7)}"
                price = f"{rnd.randint(1, 99_999) / 100:.2f}"
                qty = rnd.randint(1, 9)
                handle.write(
                    f"{order_id},{customer},Customer {customer},{sku},,{qty},{price},,{day}\n"
                )
                rows += 1
    return ids


def test_sigkill_mid_ingest_then_rerun_imports_every_order_once(
    tmp_path: Path, sp_env: dict[str, str], r: redis.Redis
) -> None:
    """An ingest SIGKILLed halfway leaves whole batches only; a re-run completes it exactly once."""
    path = tmp_path / "big.csv"
    ids = _big_file(path, 60_000, seed=20251110)
    total = len(ids)
    stream = KEYS.stream("reserve")

    proc = spawn_cli(
        ["ingest", str(path), "--batch-size", "50"], sp_env, log_path=tmp_path / "ingest.log"
    )
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if r.xlen(stream) >= total // 4:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.0005)
        proc.wait(timeout=10)
    finally:
        stop_procs([proc])
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "ingest.log").read_text()
    first = r.xlen(stream)
    assert 0 < first < total * 0.9, (first, total)
    # Batches are atomic: every enqueued order has its hash and counter, and nothing more.
    assert len(order_keys(r)) == first
    assert r.hget(KEYS.state_counts, "pending") == str(first)
    assert stream_ids(r) == ids[:first]

    done, summary = ingest(path, sp_env)

    assert done.returncode == 0, done.stderr
    assert summary["imported"] + first == total
    assert summary["duplicates"] == first
    assert summary["rejected"] == 0
    assert r.xlen(stream) == total
    seen = stream_ids(r)
    assert len(set(seen)) == len(seen) == total
    assert set(seen) == set(ids)
    assert r.hget(KEYS.state_counts, "pending") == str(total)


# -- server unreachable, unknown columns -------------------------------------------------------


def test_unreachable_server_exits_3_and_writes_nothing(
    tmp_path: Path, sp_env: dict[str, str], r: redis.Redis
) -> None:
    """No server at the URL: exit 3, one line naming host:port, no files, no keys anywhere."""
    work = tmp_path / "work"
    work.mkdir()
    path = write(work / "orders.csv", [good("Q1"), good("Q2", quantity="0")])
    before = sorted(p.name for p in work.iterdir())
    port = free_port()
    env = {**sp_env, "STREAMPROC_REDIS_URL": f"redis://127.0.0.1:{port}/0"}

    done = run_cli(["ingest", str(path), "--json"], env, cwd=work)

    assert done.returncode == 3, done
    assert "Traceback" not in done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 1, done.stderr
    assert f"127.0.0.1:{port}" in errors[0]
    assert done.stdout == ""
    assert sorted(p.name for p in work.iterdir()) == before
    assert list(Path(env["STREAMPROC_HOME"]).iterdir()) == []  # no embedded server either
    assert r.dbsize() == 0


def test_unknown_columns_reported_once_and_ignored(
    tmp_path: Path, sp_env: dict[str, str], r: redis.Redis
) -> None:
    """Extra columns: one stderr line naming them, whatever the row count; data imported as is."""
    columns = ["coupon", *COLUMNS, "Notes"]
    rows = [good(f"E{i}", coupon=f"C{i}", Notes="n") for i in range(1200)]

    done, summary = ingest(write(tmp_path / "extra.csv", rows, columns), sp_env)

    assert done.returncode == 0, done.stderr
    assert summary["imported"] == 1200
    assert summary["rejected"] == 0
    errors = error_lines(done.stderr)
    assert len(errors) == 1, done.stderr
    assert "coupon" in errors[0]
    assert "Notes" in errors[0]
    assert done.stderr.count("coupon") == 1
    assert summary.get("unknown_columns", ["coupon", "Notes"]) == ["coupon", "Notes"]
    order = stored_order(r, "E7")
    assert (order.order_id, order.customer_name, order.total_cents) == ("E7", "John Doe", 5100)


# -- a server error in the middle of a pipelined import ----------------------------------------


def first_lines(path: Path) -> dict[str, int]:
    """The line each order's first row is on (header = line 1)."""
    lines: dict[str, int] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if number > 1:
                lines.setdefault(row[0], number)
    return lines


def rows_per_order(path: Path) -> dict[str, int]:
    """The CSV rows of each order (ids in order of first appearance)."""
    rows: dict[str, int] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for row in list(csv.reader(handle))[1:]:
            rows[row[0]] = rows.get(row[0], 0) + 1
    return rows


def stop_markers(r: redis.Redis) -> list[str]:
    return list(r.scan_iter(match="*stopped-ingest*", count=1000))


def test_server_error_mid_import_stops_there_and_a_rerun_imports_the_rest(
    tmp_path: Path, sp_env: dict[str, str], r: redis.Redis
) -> None:
    """A batch that fails while later ones are already sent: exit 3 with an exact summary, the
    orders before the failing one imported once, none after it; a re-run imports the rest."""
    path = tmp_path / "big.csv"
    ids = _big_file(path, 6000, seed=7)
    total, k = len(ids), len(ids) // 2 + 7  # mid-batch, with batches queued behind it
    victim = ids[k]
    line = first_lines(path)[victim]
    r.set(KEYS.order(victim), "not an order hash")  # HGET on it fails: WRONGTYPE

    done = run_cli(["ingest", str(path), "--json", "--batch-size", "50"], sp_env)

    assert done.returncode == 3, done
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    [error] = error_lines(done.stderr)
    assert f"{path}: import stopped at line {line}: WRONGTYPE" in error
    assert f"imported {k} orders, skipped 0 duplicates" in error
    assert "nothing from that line on was imported" in error
    assert stream_ids(r) == ids[:k]  # file order, nothing after the failing order
    assert len(order_keys(r)) == k + 1  # and the victim's own key
    assert r.hget(KEYS.state_counts, "pending") == str(k)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert r.hget(KEYS.day(today), "orders") == str(k)
    assert stop_markers(r) == []
    # The rows hash counts the rows of exactly the orders imported before the stop.
    rows = rows_per_order(path)
    imported_rows = sum(rows[i] for i in ids[:k])
    assert r.hgetall(KEYS.ingest_rows) == {"imported": str(imported_rows)}

    r.delete(KEYS.order(victim))
    again, summary = ingest(path, sp_env, "--batch-size", "50")

    assert again.returncode == 0, again.stderr
    assert (summary["imported"], summary["duplicates"]) == (total - k, k)
    assert stream_ids(r) == ids
    assert r.hget(KEYS.state_counts, "pending") == str(total)
    assert r.hget(KEYS.day(today), "orders") == str(total)
    assert r.hgetall(KEYS.ingest_rows) == {
        "imported": str(sum(rows.values())),
        "duplicate": str(imported_rows),
    }


def test_out_of_memory_mid_import_stops_at_a_batch_and_a_rerun_completes(
    tmp_path: Path, sp_env: dict[str, str], r: redis.Redis
) -> None:
    """The server refuses writes (maxmemory, noeviction) partway: whole orders only, counted."""
    path = tmp_path / "big.csv"
    ids = _big_file(path, 8000, seed=11)
    total = len(ids)
    old = r.config_get("maxmemory")["maxmemory"]
    # About half of what the file's ~4,500 orders take (~400 bytes each with their entries).
    r.config_set("maxmemory", int(r.info("memory")["used_memory"]) + 1_000_000)
    try:
        done = run_cli(["ingest", str(path), "--json", "--batch-size", "100"], sp_env)
    finally:
        r.config_set("maxmemory", old)

    assert done.returncode == 3, done
    [error] = error_lines(done.stderr)
    assert "OOM" in error
    first = r.xlen(KEYS.stream("reserve"))
    assert 0 < first < total
    assert f"imported {first} orders" in error
    assert stream_ids(r) == ids[:first]
    assert len(order_keys(r)) == first
    assert r.hget(KEYS.state_counts, "pending") == str(first)

    again, summary = ingest(path, sp_env)

    assert again.returncode == 0, again.stderr
    assert (summary["imported"], summary["duplicates"]) == (total - first, first)
    assert stream_ids(r) == ids


def test_connection_lost_mid_import_exits_3_and_a_rerun_completes(
    tmp_path: Path, sp_env: dict[str, str], r: redis.Redis
) -> None:
    """The ingest's connection is killed with batches in flight: exit 3 saying those may or may
    not be in; a re-run imports every order exactly once."""
    path = tmp_path / "big.csv"
    ids = _big_file(path, 60_000, seed=5)
    total = len(ids)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamproc", "ingest", str(path), "--batch-size", "50"],
        env=sp_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        killed = 0
        while not killed and proc.poll() is None and time.monotonic() < deadline:
            if r.xlen(KEYS.stream("reserve")) > 0:
                killed = r.client_kill_filter(_type="normal", skipme=True)
            time.sleep(0.001)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if not killed:
        pytest.skip("the import finished before its connection could be killed")

    assert proc.returncode == 3, (out, err)
    assert "Traceback" not in err
    [error] = error_lines(err)
    assert f"{path}: import stopped at line" in error
    assert "lost the connection to the server" in error
    assert "may or may not have been imported" in error
    first = r.xlen(KEYS.stream("reserve"))
    assert stream_ids(r) == ids[:first]
    assert r.hget(KEYS.state_counts, "pending") == str(first)

    again, summary = ingest(path, sp_env)

    assert again.returncode == 0, again.stderr
    assert (summary["imported"], summary["duplicates"]) == (total - first, first)
    assert stream_ids(r) == ids


def test_a_new_order_is_stored_with_three_fields_and_read_with_the_implied_ones(
    tmp_path: Path, sp_env: dict[str, str], r: redis.Redis, redis_url: str
) -> None:
    """ingest.lua writes s, d and c only; the order view and the export read the attempt, next
    stage, history and update time it leaves out as 1, reserve, pending at c, and c."""
    done, summary = ingest(write(tmp_path / "one.csv", [good("N1")]), sp_env)
    assert done.returncode == 0 and summary["imported"] == 1, done.stderr
    stored = r.hgetall(KEYS.order("N1"))
    assert set(stored) == {"s", "d", "c"} and stored["s"] == "pending"
    created = int(stored["c"])

    async def view() -> StoredOrder | None:
        client = async_client(redis_url)
        try:
            return await load_order(client, KEYS, "N1")
        finally:
            await client.aclose()

    order = asyncio.run(view())
    assert order is not None
    assert (order.state, order.attempt, order.next_stage) == ("pending", 1, "reserve")
    assert order.created_ms == order.updated_ms == created
    assert [(step.state, step.at_ms) for step in order.timeline] == [("pending", created)]
    [exported] = list(iter_orders(redis.Redis.from_url(redis_url), KEYS))
    assert (exported.state, exported.attempts) == ("pending", 1)
    assert exported.created_at == exported.updated_at == iso_ms(created)
    assert exported.history == f"pending@{iso_ms(created)}"


def test_force_counts_every_resubmitted_state_once(
    tmp_path: Path, sp_env: dict[str, str], r: redis.Redis
) -> None:
    """--force moves failed, rolled_back and dead_lettered orders (not completed ones) back to
    pending: attempt + 1, history kept, payment outcome cleared, counters moved in one step."""
    ended = {"X1": "failed", "X2": "rolled_back", "X3": "dead_lettered", "X4": "completed"}
    path = write(tmp_path / "force.csv", [good(order_id) for order_id in ended])
    done, first = ingest(path, sp_env)
    assert done.returncode == 0, done.stderr
    assert first["imported"] == 4
    for order_id, state in ended.items():  # as the stages would leave them
        history = f"pending@1;{state}@2"
        fields = {"s": state, "k": "", "p": "declined", "e": "boom", "u": "2", "h": history}
        r.hset(KEYS.order(order_id), mapping=fields)
        r.hincrby(KEYS.state_counts, "pending", -1)
        r.hincrby(KEYS.state_counts, state, 1)

    done, forced = ingest(
        write(tmp_path / "again.csv", [good("X0"), *map(good, ended)]), sp_env, "--force"
    )

    assert done.returncode == 0, done.stderr
    assert (forced["imported"], forced["resubmitted"], forced["duplicates"]) == (1, 3, 1)
    counts = r.hgetall(KEYS.state_counts)
    assert {state: int(counts[state]) for state in ("failed", "rolled_back", "dead_lettered")} == {
        "failed": 0,
        "rolled_back": 0,
        "dead_lettered": 0,
    }
    assert (counts["pending"], counts["completed"]) == ("4", "1")
    for order_id, code in (("X1", "f"), ("X2", "b"), ("X3", "d")):
        record = r.hgetall(KEYS.order(order_id))
        assert (record["s"], record["k"], record["a"]) == ("pending", "reserve", "2")
        assert "p" not in record and "e" not in record
        # The history kept, recoded in ms after c (lib/order.lua), and the new pending step.
        created = int(record["c"])
        assert re.fullmatch(rf"p{1 - created}{code}{2 - created}p[0-9]+", record["h"]), record
    assert r.hget(KEYS.order("X4"), "s") == "completed"
    entries = r.xrange(KEYS.stream("reserve"))[4:]
    assert [(e["o"], e["a"]) for _, e in entries] == [
        ("X0", "1"),
        ("X1", "2"),
        ("X2", "2"),
        ("X3", "2"),
    ]
    assert entries[1][1]["d"] == r.hget(KEYS.order("X1"), "d")


def test_in_process_progress_and_an_interrupted_import_result(
    tmp_path: Path, redis_url: str, r: redis.Redis
) -> None:
    """ingest_file as a library: progress climbs to the file's size; a failure raises
    IngestInterrupted (a ServerError: exit 3) carrying the summary of what was imported."""
    path = tmp_path / "big.csv"
    ids = _big_file(path, 6000, seed=3)
    size = path.stat().st_size
    seen: list[tuple[int, int | None]] = []
    with redis.Redis.from_url(redis_url) as client:
        ensure_groups_sync(client, KEYS)
        result = ingest_file(
            client,
            KEYS,
            str(path),
            "USD",
            batch_size=100,
            progress=lambda done, total: seen.append((done, total)),
        )
        assert (result.imported, result.rows) == (len(ids), 6000)
        assert len(seen) > 1
        assert seen[-1] == (size, size)
        assert [done for done, _ in seen] == sorted(done for done, _ in seen)

        r.flushall()
        ensure_groups_sync(client, KEYS)
        k = 1234
        r.hset(KEYS.order(ids[k]), "s", "completed")  # fine: a duplicate
        r.set(KEYS.order(ids[k + 1]), "not an order hash")
        with pytest.raises(IngestInterrupted) as caught:
            ingest_file(client, KEYS, str(path), "USD", batch_size=100)
    assert isinstance(caught.value, ServerError)
    assert (caught.value.result.imported, caught.value.result.duplicates) == (k, 1)
    assert f"import stopped at line {first_lines(path)[ids[k + 1]]}" in str(caught.value)
    assert stream_ids(r) == ids[:k]
    assert stop_markers(r) == []
