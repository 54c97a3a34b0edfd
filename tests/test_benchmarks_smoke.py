"""The benchmark scripts still run end to end (tiny sizes; figures are not asserted)."""

from __future__ import annotations

import csv
import io

from benchmarks.generate import HEADER, write_orders
from benchmarks.pipeline import run


def test_generator_is_seeded_and_well_formed() -> None:
    """Same seed, same file; every row has the header's columns."""
    first, second = io.StringIO(), io.StringIO()
    rows = write_orders(first, 200, seed=3)
    write_orders(second, 200, seed=3)
    assert first.getvalue() == second.getvalue()
    parsed = list(csv.reader(io.StringIO(first.getvalue())))
    assert parsed[0] == HEADER
    assert len(parsed) == rows + 1
    assert {len(row) for row in parsed} == {len(HEADER)}
    assert len({row[0] for row in parsed[1:]}) == 200  # 200 distinct orders


def test_pipeline_benchmark_runs_and_every_order_ends_terminal() -> None:
    """A 60-order run of benchmarks/pipeline.py on its own private server."""
    result = run(orders=60, procs=1, latency_ms=0)
    states = result["orders_by_state"]
    assert isinstance(states, dict)
    assert states["total"] == 60
    assert states["completed"] + states["rolled_back"] == 60
    assert float(str(result["orders_per_s"])) > 0
