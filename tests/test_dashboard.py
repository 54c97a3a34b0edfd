"""`GET /dashboard` in a real browser: Debian's headless chromium driven by playwright, against a
live `streamproc api` process, real consumer processes and the session's redis-server.

The page must follow the pipeline (a stage's lag fills and drains, the status counts move, the
throughput chart gets points), say when Redis is down or the API is gone and recover, list a dead
letter and retry it through its button and the token form, and fit a phone's screen. Screenshots
go to test-artifacts/ at the repo root.
"""

from __future__ import annotations

import csv
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, expect, sync_playwright

from streamproc.keys import STAGES
from tests.api_support import TOKEN, LiveApi
from tests.helpers import REPO_ROOT, ServerHandle, stop_procs
from tests.invariants import write_products
from tests.support import Pipeline, cli, generated_orders

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"
ORDERS = 3000
SEED = 2025
SCARCE = {"SKU-G00", "SKU-G01", "SKU-G02"}  # generated_orders' low-stock SKUs
WAIT_MS = 20_000  # page assertions poll until this; the page itself polls every 2 s
LAPTOP = {"width": 1366, "height": 900}
POLL_GAP_MS = 4500  # over two poll intervals
# Headless chromium never hides its tab: the page is told so the way a browser tells it.
HIDE_TAB = """() => {
  Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
  document.dispatchEvent(new Event("visibilitychange"));
}"""
SHOW_TAB = """() => {
  Object.defineProperty(document, "hidden", { configurable: true, get: () => false });
  document.dispatchEvent(new Event("visibilitychange"));
}"""
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str:
    """Debian's chromium; a missing one fails the test (no silent skip, no browser download)."""
    found = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).exists():
        pytest.fail(
            "chromium is not installed: run scripts/install-tools (Debian: apt-get install "
            "chromium); the dashboard test drives it and never downloads a browser"
        )
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless chromium for the module."""
    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


class Problems:
    """Script errors and Content-Security-Policy refusals seen by a page (both must stay empty)."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            self.errors.append(f"CSP: {message.text}")


@pytest.fixture
def opened(browser: Browser) -> Iterator[Callable[..., tuple[Page, Problems]]]:
    """Open /dashboard in a fresh browser context; contexts are closed at teardown."""
    contexts: list[Any] = []

    def open_page(url: str, **context: Any) -> tuple[Page, Problems]:
        ctx = browser.new_context(**context)
        contexts.append(ctx)
        page = ctx.new_page()
        problems = Problems(page)
        page.goto(f"{url}/dashboard")
        return page, problems

    yield open_page
    for ctx in contexts:
        ctx.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Any]]:
    """APIs and consumer pipelines a test starts; whatever still runs is stopped at teardown."""
    started: list[Any] = []
    yield started
    for thing in started:
        if isinstance(thing, LiveApi):
            thing.stop()
        else:
            stop_procs(thing.procs)


def cell(page: Page, stage: str, field: str) -> Locator:
    """One cell of the stage table."""
    return page.locator(f'#stages-body tr[data-stage="{stage}"] td[data-field="{field}"]')


def state_count(page: Page, state: str) -> Locator:
    """The count shown for one order state."""
    return page.locator(f'#status-list li[data-state="{state}"] [data-field="count"]')


def shown_stages(page: Page) -> list[str]:
    rows = page.locator("#stages-body tr[data-stage]")
    return [rows.nth(i).get_attribute("data-stage") or "" for i in range(rows.count())]


def order_ids_without(path: Path, skus: set[str]) -> list[str]:
    """Orders of a CSV none of whose lines asks for one of these SKUs, in file order."""
    lines: dict[str, set[str]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            lines.setdefault(row["order_id"], set()).add(row["product_sku"])
    return [order_id for order_id, asked in lines.items() if not asked & skus]


def api_data(api: LiveApi, path: str, **params: Any) -> Any:
    response = api.client.get(path, params=params)
    assert response.status_code == 200, (path, response.status_code, response.text)
    return response.json()["data"]


def wait_order_state(api: LiveApi, order_id: str, state: str, timeout_s: float = 20) -> Any:
    deadline = time.monotonic() + timeout_s
    order = api_data(api, f"/api/orders/{order_id}")
    while order["status"] != state and time.monotonic() < deadline:
        time.sleep(0.1)
        order = api_data(api, f"/api/orders/{order_id}")
    assert order["status"] == state, order
    return order


def save_screenshot(page: Page, name: str, width_px: int) -> Path:
    """A full-page PNG in test-artifacts/, checked to be a real picture of the expected width."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.unlink(missing_ok=True)
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert width == width_px and height >= 800, (path, width, height)
    assert len(data) > 40_000, f"{path} is only {len(data)} bytes: an empty page?"
    return path


def test_dashboard_follows_the_pipeline_and_retries_a_dead_letter(
    opened: Callable[..., tuple[Page, Problems]],
    procs: list[Any],
    sp_env: dict[str, str],
    redis_server: ServerHandle,
    tmp_path: Path,
) -> None:
    env = dict(
        sp_env,
        STREAMPROC_PAYMENT_SUCCESS_RATE="1.0",
        STREAMPROC_MAX_DELIVERIES="1",  # the poisoned order is dead-lettered on its first failure
        STREAMPROC_BLOCK_MS="100",
        STREAMPROC_LOG_LEVEL="WARNING",
    )
    orders_csv, catalogue = generated_orders(tmp_path / "orders.csv", ORDERS, seed=SEED)
    poison = order_ids_without(orders_csv, SCARCE)[0]  # plenty of stock: completes once healed
    cli(["stock", "load", str(write_products(tmp_path / "products.csv", catalogue))], env)
    api = LiveApi(env, tmp_path / "api.log").start()
    procs.append(api)
    page, problems = opened(api.url, viewport=LAPTOP)

    # Every stage gets a row, in workflow order, before any order exists.
    expect(page.locator("#stages-body tr[data-stage]")).to_have_count(len(STAGES), timeout=WAIT_MS)
    assert shown_stages(page) == list(STAGES)
    headers = page.locator("#stages thead th").all_inner_texts()
    assert [h.strip() for h in headers] == [
        "Stage", "Status", "Length", "Lag", "Pending", "Oldest pending", "Consumers", "Rate",
        "p95",
    ]  # fmt: skip
    expect(page.locator("#conn")).to_contain_text("Live", timeout=WAIT_MS)

    # Orders arrive while no consumer runs: reserve's lag holds all of them, flagged as stalled.
    cli(["ingest", str(orders_csv)], env)
    expect(cell(page, "reserve", "lag")).to_have_text(f"{ORDERS:,}", timeout=WAIT_MS)
    expect(cell(page, "reserve", "length")).to_have_text(f"{ORDERS:,}")
    expect(page.locator('#stages-body tr[data-stage="reserve"]')).to_have_attribute(
        "data-status", "stalled"
    )
    expect(cell(page, "reserve", "lag")).to_have_class("num critical")
    expect(state_count(page, "pending")).to_have_text(f"{ORDERS:,}", timeout=WAIT_MS)
    expect(page.locator("#k-inflight")).to_have_text(f"{ORDERS:,}", timeout=WAIT_MS)

    # Redis freezes: the page says so (the API answers 503), then recovers on its own.
    banner = page.locator("#banner")
    redis_server.pause()
    try:
        expect(banner).to_contain_text("Redis down", timeout=WAIT_MS)
        expect(page.locator("#conn")).to_contain_text("Redis down")
    finally:
        redis_server.resume()
    expect(banner).to_be_hidden(timeout=WAIT_MS)
    expect(page.locator("#conn")).to_contain_text("Live")

    # Consumers start, one order poisoned: the lag drains and the counts follow the pipeline.
    (tmp_path / "poisoned").mkdir()
    poisoned = Pipeline(dict(env, STREAMPROC_FAULT_POISON=poison), tmp_path / "poisoned")
    procs.append(poisoned)
    poisoned.start("all")
    expect(cell(page, "reserve", "lag")).to_have_text("0", timeout=WAIT_MS)
    poisoned.wait_drained(30)  # `streamproc wait`, then a clean stop of the poisoned consumer
    stats = api_data(api, "/api/stats")
    completed = stats["by_state"]["completed"]
    assert completed > 0 and stats["by_state"]["dead_lettered"] == 1, stats
    expect(state_count(page, "completed")).to_have_text(f"{completed:,}", timeout=WAIT_MS)
    expect(state_count(page, "pending")).to_have_text("0")
    expect(page.locator("#k-completed")).to_have_text(f"{completed:,}")
    expect(page.locator("#k-inflight")).to_have_text("0")
    for stage in ("payment", "notify"):
        assert cell(page, stage, "length").inner_text() != "0", stage  # entries flowed through
    assert cell(page, "finalize", "length").inner_text() == "0"  # payment settles itself
    page.wait_for_function(
        "Number(document.getElementById('throughput').dataset.peak) > 0", timeout=WAIT_MS
    )
    # Rate and p95 show the API's figures (per second, a duration) when it has them, else a dash.
    for view in api_data(api, "/api/streams")["stages"]:
        rate = "—" if view.get("processed_per_s") is None else "/s"
        p95 = "—" if view.get("p95_seconds") is None else "s"
        expect(cell(page, view["stage"], "rate")).to_contain_text(rate)
        expect(cell(page, view["stage"], "p95")).to_contain_text(p95)

    # The poisoned order's dead letter is listed with a Retry button.
    letters = api_data(api, "/api/dlq")["items"]
    (letter,) = [x for x in letters if x["order_id"] == poison and x["stage"] == "reserve"]
    row = page.locator(f'#dlq-body tr[data-id="{letter["id"]}"]')
    expect(row).to_be_visible(timeout=WAIT_MS)
    expect(row).to_contain_text(poison)
    expect(row).to_contain_text("injected poison")
    expect(page.locator("#k-dead")).to_have_text(str(len(letters)))
    assert api_data(api, f"/api/orders/{poison}")["status"] == "dead_lettered"

    # Healthy consumers, then Retry: a wrong token is refused (401) and forgotten, the right
    # one sends the letter back and the order completes.
    (tmp_path / "healed").mkdir()
    healed = Pipeline(env, tmp_path / "healed")
    procs.append(healed)
    healed.start("all")
    for stage in STAGES:
        healed.wait_registered(stage, 2)  # the stopped poisoned one is still registered
    dialog = page.locator("#token-dialog")
    notice = page.locator("#dlq-notice")
    row.get_by_role("button", name="Retry").click()
    expect(dialog).to_be_visible()
    page.get_by_label("API token", exact=True).fill("not-the-token")
    dialog.get_by_role("button", name="Retry").click()
    expect(notice).to_contain_text("Not authorised (401)", timeout=WAIT_MS)
    expect(row).to_be_visible()
    assert api_data(api, f"/api/orders/{poison}")["status"] == "dead_lettered"

    row.get_by_role("button", name="Retry").click()
    expect(dialog).to_be_visible()  # the refused token was not kept
    page.get_by_label("API token", exact=True).fill(TOKEN)
    page.get_by_label("API token", exact=True).press("Enter")
    expect(notice).to_contain_text("was sent back to its stage", timeout=WAIT_MS)
    expect(row).to_have_count(0, timeout=WAIT_MS)
    expect(page.locator("#token-bar")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('streamproc.apiToken')") == TOKEN
    order = wait_order_state(api, poison, "completed")
    states = [step["state"] for step in order["timeline"]]
    assert states[:3] == ["pending", "dead_lettered", "pending"] and states[-1] == "completed"
    expect(state_count(page, "completed")).to_have_text(f"{completed + 1:,}", timeout=WAIT_MS)
    expect(state_count(page, "dead_lettered")).to_have_text("0")
    expect(page.locator("#k-dead")).to_have_text(str(len(letters) - 1))
    save_screenshot(page, "dashboard-laptop.png", LAPTOP["width"])

    # The API goes away: the page says so instead of showing old figures as live.
    api.stop()
    expect(banner).to_contain_text("API unreachable", timeout=WAIT_MS)
    expect(page.locator("#main")).to_have_class("stale")
    assert problems.errors == []


def test_dashboard_fits_a_phone_and_is_served_safely(
    opened: Callable[..., tuple[Page, Problems]],
    procs: list[Any],
    sp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    env = dict(sp_env, STREAMPROC_MAX_DELIVERIES="1", STREAMPROC_LOG_LEVEL="WARNING")
    cli(["ingest", str(REPO_ROOT / "sample.csv")], env)
    pipeline = Pipeline(dict(env, STREAMPROC_FAULT_POISON="1005"), tmp_path)
    procs.append(pipeline)
    pipeline.start("all")
    pipeline.wait_drained(30)
    api = LiveApi(env, tmp_path / "api.log").start()
    procs.append(api)

    # An HTML page with a strict policy, outside the API's envelope and schema.
    response = api.client.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "script-src 'sha256-" in policy and "unsafe-inline" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert '<meta name="viewport"' in response.text
    assert "http://" not in response.text and "https://" not in response.text  # no external fetch
    assert "/dashboard" not in api.client.get("/openapi.json").json()["paths"]

    page, problems = opened(
        api.url, viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    expect(page.locator("#stages-body tr[data-stage]")).to_have_count(len(STAGES), timeout=WAIT_MS)
    expect(page.locator("#dlq-body tr")).to_have_count(2, timeout=WAIT_MS)  # reserve and notify
    expect(state_count(page, "dead_lettered")).to_have_text("1", timeout=WAIT_MS)

    width = page.evaluate("window.innerWidth")
    assert width == PHONE["width"]
    assert page.evaluate("document.scrollingElement.scrollWidth") <= width  # no sideways page
    # The stage table scrolls inside its own box; its last column can be reached.
    scroller = page.locator("#stages-scroll")
    assert scroller.evaluate("e => e.scrollWidth > e.clientWidth")
    last = page.locator("#stages thead th").last
    last.scroll_into_view_if_needed()
    box = last.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width + 1, box
    assert page.evaluate("document.scrollingElement.scrollWidth") <= width
    # Dead letters reflow into cards: every Retry button is on screen, none cut off.
    for button in page.locator("#dlq-body button").all():
        button.scroll_into_view_if_needed()
        box = button.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, box
    # A hidden tab stops polling; showing it again resumes at once.
    calls: list[str] = []
    page.on("request", lambda request: calls.append(request.url))
    page.evaluate(HIDE_TAB)
    expect(page.locator("#conn")).to_contain_text("Paused")
    calls.clear()
    page.wait_for_timeout(POLL_GAP_MS)
    assert [url for url in calls if "/api/" in url] == []
    page.evaluate(SHOW_TAB)
    expect(page.locator("#conn")).to_contain_text("Live", timeout=WAIT_MS)
    assert any("/api/streams" in url for url in calls)

    scroller.evaluate("e => { e.scrollLeft = 0; }")
    page.evaluate("window.scrollTo(0, 0)")
    save_screenshot(page, "dashboard-phone.png", PHONE["width"] * 2)
    assert problems.errors == []
