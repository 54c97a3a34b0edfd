"""Reading Prometheus metrics in tests: scrape, parse into samples, and run promtool on them."""

from __future__ import annotations

import shutil
import subprocess

import httpx
from prometheus_client.parser import text_string_to_metric_families

CLASSIC_TEXT = "text/plain; version=0.0.4; charset=utf-8"
# What Prometheus itself sends: OpenMetrics preferred. Every process answers in the classic format.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def scrape(url: str) -> str:
    """GET a metrics endpoint as Prometheus would; must answer 200 in the classic text format."""
    response = httpx.get(url, headers={"Accept": PROMETHEUS_ACCEPT}, timeout=10)
    assert response.status_code == 200, (response.status_code, response.text[:500])
    assert response.headers["content-type"] == CLASSIC_TEXT, response.headers
    return response.text


def parse(text: str) -> dict[SampleKey, float]:
    """Every sample of an exposition: (sample name, sorted labels) → value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[SampleKey, float], name: str, **labels: str) -> float:
    """One sample; KeyError when that series is missing."""
    return samples[(name, tuple(sorted(labels.items())))]


def total(scrapes: list[dict[SampleKey, float]], name: str, **labels: str) -> float:
    """One series summed over several processes' scrapes (it must exist in at least one)."""
    key = (name, tuple(sorted(labels.items())))
    assert any(key in s for s in scrapes), f"no series {key}"
    return sum(s.get(key, 0.0) for s in scrapes)


def promtool_check(text: str) -> None:
    """`promtool check metrics` on an exposition: exit 0 and nothing to report."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing (scripts/install-tools installs Debian's prometheus)"
    done = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == "", done.stdout + done.stderr
