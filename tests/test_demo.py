"""scripts/demo, the README's first command, against the session's server (SPEC §10)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.helpers import REPO_ROOT, free_port


def test_demo_prints_the_original_figures(sp_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(sp_env, STREAMPROC_LOG_LEVEL="WARNING", STREAMPROC_DEMO_PORT=str(free_port()))
    done = subprocess.run(
        [str(REPO_ROOT / "scripts" / "demo")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    # The day KPIs of sample.csv with every payment succeeding, as the original app showed them.
    rows = {
        m.group(1): m.group(2).split()
        for m in re.finditer(r"^(2025-11-1[01]|total)\s+(.*)$", out, re.MULTILINE)
    }
    assert rows["2025-11-10"] == ["485.96", "5", "97.19", "5", "9", "0"], out
    assert rows["2025-11-11"] == ["579.47", "5", "115.89", "5", "10", "0"], out
    assert rows["total"] == ["1065.43", "10", "106.54", "8", "19", "0"], out
    customers = re.findall(r"^(\d)\s+(\d{3})\s+.*?\s(\d+\.\d\d)$", out, re.MULTILINE)
    assert customers[:2] == [("1", "505", "259.98"), ("2", "501", "250.00")], out
    assert re.search(r"^1\s+SKU-002\s+USB-C Charger\s+8\s+120\.00\s+2$", out, re.MULTILINE), out
    # The same totals through the API that `streamproc up` ran for the demo.
    assert re.search(
        r"^  revenue 1065\.43  orders 10  AOV 106\.54  customers 8$", out, re.MULTILINE
    ), out
    # The status table printed before the KPIs: every order completed, nothing dead-lettered.
    assert "completed" in out and "dead letters: 0" in out
