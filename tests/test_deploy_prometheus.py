"""deploy/prometheus.yml, deploy/alerts.yml and the Grafana dashboard, checked without a server:
promtool's config and rule checks, the rules' unit tests (deploy/alerts_test.yml), the
dashboard's PromQL parsed by promtool, and the dashboard's shape as Grafana imports it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO_ROOT
from tests.prometheus_support import (
    ALERTS,
    DASHBOARD,
    DEPLOY,
    PROMETHEUS_YML,
    adjusted_config,
    alert_rules,
    dashboard_panels,
    dashboard_queries,
    data_part,
    grafana_to_promql,
    tool,
)

# The metric families of the issue 7 contract a dashboard user expects to see charted.
CHARTED = (
    "streamproc_stage_messages_total",
    "streamproc_stage_processing_seconds_bucket",
    "streamproc_stage_retries_total",
    "streamproc_dead_letters_total",
    "streamproc_stage_reclaimed_total",
    "streamproc_stage_in_flight",
    "streamproc_order_latency_seconds_bucket",
    "streamproc_payments_total",
    "streamproc_payment_gateway_seconds_bucket",
    "streamproc_notifications_total",
    "streamproc_completed_revenue_total",
    "streamproc_http_requests_total",
    "streamproc_http_request_duration_seconds_bucket",
    "streamproc_stream_length",
    "streamproc_stream_lag",
    "streamproc_stream_pending",
    "streamproc_stream_oldest_pending_age_seconds",
    "streamproc_stream_consumers",
    "streamproc_dead_letter_stream_length",
    "streamproc_orders",
    "streamproc_revenue_today",
    "streamproc_ingest_rows_total",
    "streamproc_redis_up",
)
SEVERITIES = {"critical", "warning", "info"}


def promtool(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    """Run promtool; stdout and stderr together as text."""
    return subprocess.run(
        [tool("promtool"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_ok(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"{done.args}: exit {done.returncode}\n{done.stdout}{done.stderr}"


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    done = promtool("check", "config", str(PROMETHEUS_YML))
    assert_ok(done)
    assert "SUCCESS: 1 rule files found" in done.stdout + done.stderr
    # The copy the end-to-end test runs (1 s intervals, absolute targets path) is valid too.
    targets = tmp_path / "prometheus-targets.json"
    targets.write_text("[]")
    assert_ok(promtool("check", "config", str(adjusted_config(tmp_path, targets))))


def test_config_reads_the_targets_file_of_streamproc_up() -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"streamproc-api", "streamproc-consumers"}
    for name, job in jobs.items():
        assert job["metrics_path"] == "/metrics"
        (files,) = [sd["files"] for sd in job["file_sd_configs"]]
        # Relative to the config file: the default STREAMPROC_HOME of `streamproc up` run in the
        # repository root.
        assert [(DEPLOY / f).resolve() for f in files] == [
            REPO_ROOT / ".streamproc" / "prometheus-targets.json"
        ]
        keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
        assert keep == [{"source_labels": ["job"], "regex": name, "action": "keep"}]


def test_alert_rules_pass_promtool_checks_and_unit_tests() -> None:
    done = promtool("check", "rules", str(ALERTS))
    assert_ok(done)
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout
    tested = promtool("test", "rules", str(DEPLOY / "alerts_test.yml"))
    assert_ok(tested)
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_severity_annotations_and_a_separable_series() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "two alerts share a name"
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        # Every rule compares a series with something; the e2e test queries that series alone.
        series = data_part(rule["expr"])
        assert series != rule["expr"].strip(), f"{rule['alert']}: no comparison"
        assert re.search(r"\b(streamproc_\w+|up)\b", series), f"{rule['alert']}: {series}"
    assert {
        "StreamprocStageLagHigh",
        "StreamprocOldestPendingTooOld",
        "StreamprocDeadLettersAppearing",
        "StreamprocDeadLetterStreamNotEmpty",
        "StreamprocStageStalled",
        "StreamprocNoConsumers",
        "StreamprocRedisDown",
        "StreamprocTargetDown",
        "StreamprocApiErrorRateHigh",
        "StreamprocApiLatencyHigh",
    } <= set(names)


@pytest.mark.parametrize(
    ("expr", "series"),
    [
        (
            "max by (stage) (streamproc_stream_lag) > 10000",
            "max by (stage) (streamproc_stream_lag)",
        ),
        ('up{job=~"a|b"} == 0', 'up{job=~"a|b"}'),
        ("rate(x[5m]) > bool 1", "rate(x[5m])"),
        ("(a + b > 0) unless on (stage) (sum by (stage) (c) > 0)", "a + b"),
        ("sum(increase(x[15m])) > 0 or sum(x unless x offset 15m) > 0", "sum(increase(x[15m]))"),
        ('(x{s=~"5.."} or y * 0) / y > 0.05', '(x{s=~"5.."} or y * 0) / y'),
        ("streamproc_orders", "streamproc_orders"),
        ("errors_or_not >= 1", "errors_or_not"),
        ('count(x{re=~"a(b)>c or d"}) != 1', 'count(x{re=~"a(b)>c or d"})'),
        ("(a) + (b) > 1", "(a) + (b)"),
        ("(\n  a\n  or\n  b\n)\n> 1", "a"),
    ],
)
def test_data_part_is_the_compared_series(expr: str, series: str) -> None:
    assert data_part(expr) == series


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    # promtool parses PromQL only in rule files: each target becomes a recording rule.
    queries = dashboard_queries()
    rules = [
        {"record": f"dashboard:query_{n}", "expr": grafana_to_promql(q.expr)}
        for n, q in enumerate(queries)
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = promtool("check", "rules", str(path))
    assert_ok(done)
    assert f"SUCCESS: {len(queries)} rules found" in done.stdout


def test_dashboard_is_an_importable_model() -> None:
    model = json.loads(DASHBOARD.read_text())
    assert model["uid"] == "streamproc"
    assert model["id"] is None, "an exported id would clash on import"
    assert isinstance(model["schemaVersion"], int) and model["schemaVersion"] >= 36
    (variable,) = model["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["fieldConfig"]["defaults"]["unit"], f"{panel['title']!r} has no unit"
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"] and "legendFormat" in target, panel["title"]
            # The e2e test replaces only $__rate_interval; no other variable may be left.
            assert "$" not in target["expr"].replace("$__rate_interval", ""), target["expr"]


def test_dashboard_charts_every_metric_of_the_contract() -> None:
    text = " ".join(query.expr for query in dashboard_queries())
    missing = [name for name in CHARTED if not re.search(rf"\b{name}\b", text)]
    assert not missing, f"not on the dashboard: {missing}"
    assert "histogram_quantile(0.99" in text and "histogram_quantile(0.5" in text
