"""`orders export`, `stock`, `status --json` and `wait` as a user runs them (SPEC §3, §8)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import redis

from streamproc.export import neutralise
from streamproc.keys import STAGES, Keys
from tests.helpers import REPO_ROOT, run_cli, spawn_cli, stop_procs

KEYS = Keys()
SAMPLE = REPO_ROOT / "sample.csv"
PRODUCTS = REPO_ROOT / "products.csv"
USING_NOTICE = "streamproc: using "
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
JSONL_FIELDS = {
    "order_id",
    "state",
    "lines",
    "total_cents",
    "currency",
    "order_date",
    "payment",
    "charges",
}
STAGE_FIELDS = {"length", "lag", "pending", "consumers", "oldest_pending_ms"}
ORDER_STATES = {
    "pending",
    "reserved",
    "paid",
    "completed",
    "failed",
    "rolled_back",
    "dead_lettered",
    "total",
}
HEADER = "order_id,customer_id,customer_name,product_sku,quantity,unit_price,currency,order_date"


def error_lines(stderr: str) -> list[str]:
    """stderr without the informational 'using <server>' notice every command prints."""
    return [line for line in stderr.splitlines() if not line.startswith(USING_NOTICE)]


def products() -> dict[str, int]:
    """SKU -> stock column of the repo's products.csv."""
    with PRODUCTS.open(encoding="utf-8", newline="") as handle:
        return {row["sku"]: int(row["stock"]) for row in csv.DictReader(handle)}


def ok(args: list[str], env: dict[str, str]) -> str:
    """Run a command that must succeed; its stdout."""
    done = run_cli(args, env)
    assert done.returncode == 0, (args, done.stderr)
    assert "Traceback" not in done.stderr
    return done.stdout


def stock_json(env: dict[str, str]) -> dict[str, dict[str, int]]:
    return {row["sku"]: row for row in json.loads(ok(["stock", "show", "--json"], env))}


# -- orders export -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("=1+2", "'=1+2"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("plain", "plain"),
        ("a=b", "a=b"),
        ("", ""),
    ],
)
def test_neutralise_prefixes_formula_cells(cell: str, expected: str) -> None:
    """A cell a spreadsheet would evaluate gets a leading quote; any other cell is unchanged."""
    assert neutralise(cell) == expected


def test_export_csv_neutralises_formulas_and_jsonl_keeps_data(
    tmp_path: Path, sp_env: dict[str, str]
) -> None:
    """CSV export defuses formula-looking cells; JSONL carries the raw values and every field."""
    names = {
        "X1": '=HYPERLINK("http://evil.example","click")',
        "X2": "@x",
        "X3": "-x",
        "X4": "+x",
        "X5": "Plain Name",
        "-6": "Dash Order",
    }
    rows = [HEADER]
    for order_id, name in names.items():
        quoted = '"' + name.replace('"', '""') + '"'
        rows.append(f"{order_id},501,{quoted},SKU-001,3,0.10,eur,2025-11-10 10:00:00")
    rows.append("X7,502,Two Lines,SKU-001,1,1.25,,2025-11-11")
    rows.append("X7,502,Two Lines,SKU-002,2,19.99,,2025-11-11")
    path = tmp_path / "names.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert run_cli(["ingest", str(path)], sp_env).returncode == 0

    out = tmp_path / "export.csv"
    done = run_cli(["orders", "export", "--format", "csv", "--output", str(out)], sp_env)
    assert done.returncode == 0, done.stderr
    assert "exported 7 orders" in done.stderr
    assert not out.with_name(out.name + ".part").exists()
    with out.open(encoding="utf-8", newline="") as handle:
        table = list(csv.reader(handle))
    header, body = table[0], table[1:]
    assert len(body) == 7
    for record in body:
        for cell in record:
            assert not cell.startswith(FORMULA_STARTS), (cell, record)
    by_id = {rec[header.index("order_id")]: dict(zip(header, rec, strict=True)) for rec in body}
    assert by_id["X1"]["customer_name"] == "'" + names["X1"]
    assert by_id["X2"]["customer_name"] == "'@x"
    assert by_id["X3"]["customer_name"] == "'-x"
    assert by_id["X4"]["customer_name"] == "'+x"
    assert by_id["X5"]["customer_name"] == "Plain Name"
    assert "'-6" in by_id  # an order id is a cell too
    assert by_id["X7"]["total_cents"] == "4123"
    assert by_id["X7"]["total"] == "41.23"
    # Standard output gives the same table as --output.
    stdout = run_cli(["orders", "export", "--format", "csv"], sp_env).stdout
    assert sorted(list(csv.reader(io.StringIO(stdout)))[1:]) == sorted(body)

    done = run_cli(["orders", "export", "--format", "jsonl"], sp_env)
    assert done.returncode == 0, done.stderr
    records = {rec["order_id"]: rec for rec in map(json.loads, done.stdout.splitlines())}
    assert set(records) == {*names, "X7"}
    for rec in records.values():
        assert rec.keys() >= JSONL_FIELDS, rec
        assert rec["state"] == "pending"
        assert (rec["payment"], rec["charges"]) == ("", 0)
        assert isinstance(rec["lines"], list)
    assert records["X1"]["customer_name"] == names["X1"]  # data, not a spreadsheet: unchanged
    assert records["X1"]["currency"] == "EUR"
    assert records["X1"]["total_cents"] == 30
    x7 = records["X7"]
    assert (x7["total_cents"], x7["currency"], x7["order_date"]) == (
        4123,
        "USD",
        "2025-11-11T00:00:00Z",
    )
    assert [(ln["sku"], ln["quantity"], ln["unit_price_cents"]) for ln in x7["lines"]] == [
        ("SKU-001", 1, 125),
        ("SKU-002", 2, 1999),
    ]


# -- stock -------------------------------------------------------------------------------------


def test_stock_load_show_and_set(sp_env: dict[str, str], r: redis.Redis) -> None:
    """load sets every SKU's available stock; set changes one and keeps the INV-S balance."""
    assert "loaded 7 SKUs" in ok(["stock", "load", str(PRODUCTS)], sp_env)
    expected = products()
    shown = stock_json(sp_env)
    assert set(shown) == set(expected) == {f"SKU-00{n}" for n in range(1, 8)}
    for sku, quantity in expected.items():
        assert shown[sku]["available"] == quantity
        assert shown[sku]["initial"] == quantity
        assert (shown[sku]["reserved"], shown[sku]["committed"]) == (0, 0)
    assert shown["SKU-001"]["name"] == "Wireless Mouse"
    assert shown["SKU-001"]["price_cents"] == 2550

    assert ok(["stock", "set", "SKU-001", "5"], sp_env).strip() == "SKU-001: 5 available"
    row = stock_json(sp_env)["SKU-001"]
    assert row["available"] == 5
    assert row["initial"] == row["available"] + row["reserved"] + row["committed"]
    assert r.hget(KEYS.stock("available"), "SKU-001") == "5"
    assert stock_json(sp_env)["SKU-002"]["available"] == expected["SKU-002"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad sku", "5"], "invalid SKU 'bad sku'"),
        (["S" * 65, "5"], "invalid SKU"),
        (["SKU-001", "-5"], "SKU-001: stock must be >= 0"),
    ],
)
def test_stock_set_rejects_bad_input_in_one_line(
    args: list[str], message: str, sp_env: dict[str, str], r: redis.Redis
) -> None:
    """An invalid SKU or a negative quantity: exit 2, one line saying why, nothing changed."""
    ok(["stock", "set", "SKU-001", "7"], sp_env)

    done = run_cli(["stock", "set", *args], sp_env)

    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 1, done.stderr
    assert message in errors[0]
    assert r.hgetall(KEYS.stock("available")) == {"SKU-001": "7"}


# -- status and wait ---------------------------------------------------------------------------


def _check_status_shape(status: dict[str, object]) -> None:
    """Exactly the documented keys, every number an int."""
    assert set(status) == {"stages", "orders", "dead_letters", "stock", "boards_pending"}
    assert type(status["boards_pending"]) is int
    stages = status["stages"]
    assert isinstance(stages, dict)
    assert set(stages) == set(STAGES)
    for stage in stages.values():
        assert set(stage) == STAGE_FIELDS
        assert all(type(v) is int for v in stage.values()), stage
    orders = status["orders"]
    assert isinstance(orders, dict)
    assert set(orders) == ORDER_STATES
    assert all(type(v) is int for v in orders.values()), orders
    assert orders["total"] == sum(v for k, v in orders.items() if k != "total")
    assert type(status["dead_letters"]) is int
    stock = status["stock"]
    assert isinstance(stock, dict)
    for row in stock.values():
        assert set(row) == {"available", "reserved", "committed"}
        assert all(type(v) is int for v in row.values()), row


def _status(env: dict[str, str]) -> dict[str, dict[str, dict[str, int]]]:
    status = json.loads(ok(["status", "--json"], env))
    _check_status_shape(status)
    return status


def test_status_json_shape_and_wait(tmp_path: Path, sp_env: dict[str, str]) -> None:
    """status --json has the documented shape; wait times out with work queued, 0 once drained."""
    env = {**sp_env, "STREAMPROC_PAYMENT_SUCCESS_RATE": "1.0"}
    ok(["stock", "load", str(PRODUCTS)], env)
    empty = _status(env)
    assert empty["orders"]["total"] == 0
    assert {sku: row["available"] for sku, row in empty["stock"].items()} == products()

    ok(["ingest", str(SAMPLE)], env)
    queued = _status(env)
    assert queued["stages"]["reserve"]["length"] == 10
    assert queued["stages"]["reserve"]["lag"] == 10
    assert queued["orders"]["pending"] == queued["orders"]["total"] == 10
    assert queued["dead_letters"] == 0

    done = run_cli(["wait", "--timeout", "1"], env)
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr

    consumer = spawn_cli(["consume", "--stage", "all"], env, log_path=tmp_path / "consume.log")
    try:
        done = run_cli(["wait", "--timeout", "30"], env, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "drained"
        drained = _status(env)
    finally:
        codes = stop_procs([consumer])
    assert codes == [0], (tmp_path / "consume.log").read_text()

    orders = drained["orders"]
    assert orders["completed"] == orders["total"] == 10
    for stage in drained["stages"].values():
        assert (stage["lag"], stage["pending"]) == (0, 0)
    # 1001 and 1007 each take SKU-001 (2 + 1): committed now, no longer available.
    mouse = drained["stock"]["SKU-001"]
    assert (mouse["available"], mouse["reserved"], mouse["committed"]) == (997, 0, 3)
    assert run_cli(["wait", "--timeout", "1"], env).returncode == 0
