"""The email channel end to end (SPEC §6): real consumer and API processes, and a real SMTP server
(aiosmtpd) that the tests start on a loopback port.

Email through the whole pipeline with the customers' preferences; the SMTP server down (attempts
counted, failed after the retry limit), then back (resend: one record, sent); and INV-N when the
notify consumer is killed between the send and the "sent" mark: the log line is written once, the
record is one, and the email (at least once by nature) is sent again only for the killed batch.
"""

from __future__ import annotations

import csv
import json
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from streamproc.notifications import Notification
from tests.api_support import LiveApi
from tests.helpers import free_port, spawn_cli, stop_procs
from tests.invariants import assert_one_notification_line_per_record
from tests.notify_support import KEYS, all_records, assert_indexes_agree, leases
from tests.smtp_support import SmtpSink, wait_until
from tests.support import HEADER as BASE_HEADER
from tests.support import Pipeline, cli, export, notification_lines

HEADER = [*BASE_HEADER, "customer_email"]
SENDER = "shop@example.com"


def write_csv(path: Path, rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


def row(
    order_id: str, customer: int, sku: str, quantity: int, price: str, mail: str
) -> list[object]:
    name = f"Customer {customer}"
    return [order_id, customer, name, sku, "Thing", quantity, price, "USD", "2025-11-10", mail]


def ingest_rows(env: dict[str, str], path: Path, rows: list[list[object]]) -> None:
    cli(["ingest", str(write_csv(path, rows))], env)


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture
def mail_env(sp_env: dict[str, str]) -> dict[str, str]:
    """Every stage fast, log and email on by default, payments always approved."""
    return dict(
        sp_env,
        STREAMPROC_LOG_LEVEL="WARNING",
        STREAMPROC_PAYMENT_SUCCESS_RATE="1.0",
        STREAMPROC_BLOCK_MS="100",
        STREAMPROC_SMTP_FROM=SENDER,
        STREAMPROC_NOTIFICATION_CHANNELS="log,email",
        STREAMPROC_NOTIFICATION_RETRY_BASE_MS="300",
        STREAMPROC_NOTIFICATION_MAX_ATTEMPTS="3",
    )


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start API servers and consumer fleets; all stopped at teardown (by PID)."""
    apis: list[LiveApi] = []
    fleets: list[Pipeline] = []

    def start(kind: str, env: dict[str, str]) -> Any:
        if kind == "api":
            apis.append(LiveApi(env, tmp_path / f"api-{len(apis)}.log").start())
            return apis[-1]
        log_dir = tmp_path / f"consumers-{len(fleets)}"
        log_dir.mkdir()
        fleets.append(Pipeline(env, log_dir))
        return fleets[-1]

    yield start
    for api in apis:
        api.stop()
    stop_procs([proc for fleet in fleets for proc in fleet.procs])


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()["data"]


def settled(r: redis.Redis) -> bool:
    """No notification is pending (every record sent or failed)."""
    return r.zcard(KEYS.notification_schedule) == 0


def test_email_end_to_end_follows_each_customers_preferences(
    mail_env: dict[str, str],
    smtp: SmtpSink,
    started: Callable[..., Any],
    r: redis.Redis,
    tmp_path: Path,
) -> None:
    env = dict(mail_env, STREAMPROC_SMTP_URL=smtp.url)
    api: LiveApi = started("api", env)
    prefs = "/api/customers/{}/notification-preferences"
    # 702 turned email off; 703 wants success notifications only, at its own address.
    email_off = {"channels": ["log"], "types": ["success", "failed"]}
    ok(api.client.put(prefs.format(702), json=email_off, headers=api.auth()))
    chosen = {"channels": ["email", "log"], "types": ["success"], "email": "own703@example.org"}
    assert ok(api.client.put(prefs.format(703), json=chosen, headers=api.auth()))["channels"] == [
        "log",
        "email",
    ]
    default = ok(api.client.get(prefs.format(701)))
    assert (default["channels"], default["types"], default["is_default"]) == (
        ["log", "email"],
        ["success", "failed"],
        True,
    )

    cli(["stock", "set", "SKU-OK", "100"], env)
    cli(["stock", "set", "SKU-NONE", "0"], env)
    orders_csv = write_csv(
        tmp_path / "orders.csv",
        [
            row("E1", 701, "SKU-OK", 2, "12.50", "c701@example.com"),
            row("E2", 702, "SKU-OK", 1, "5.00", "c702@example.com"),
            row("E3", 703, "SKU-OK", 3, "1.10", "c703@example.com"),
            row("E4", 703, "SKU-NONE", 1, "9.99", "c703@example.com"),  # fails: no stock
            row("E5", 704, "SKU-NONE", 2, "7.25", "c704@example.com"),  # fails: no stock
        ],
    )
    cli(["ingest", str(orders_csv)], env)
    fleet: Pipeline = started("consumers", env)
    fleet.start("all")
    fleet.wait_drained(30)
    wait_until(lambda: settled(r), 10, lambda: all_records(r))

    # The inbox: one email per enabled (order, email channel), to the chosen address.
    mails = {m.message["Subject"]: m for m in smtp.messages()}
    assert len(mails) == len(smtp.messages()) == 3, [m.message["Subject"] for m in smtp.messages()]
    e1 = mails["Your order E1 is complete"]
    assert e1.recipients == ["c701@example.com"]
    assert (e1.message["To"], e1.message["From"]) == ("c701@example.com", SENDER)
    assert e1.message["Message-ID"].endswith("@example.com>")
    assert e1.body.splitlines() == [
        "Hello Customer 701,",
        "",
        "Your order E1 is complete.",
        "",
        "Order: E1",
        "Status: completed",
        "Total: 25.00 USD",
    ]
    e3 = mails["Your order E3 is complete"]
    assert e3.recipients == ["own703@example.org"]  # the preference, not the order's address
    assert "Total: 3.30 USD" in e3.body.splitlines()
    e5 = mails["Your order E5 could not be completed"]
    assert e5.recipients == ["c704@example.com"]
    assert {"Status: failed", "Total: 14.50 USD"} <= set(e5.body.splitlines())

    # The records: one per enabled (order, type, channel), all sent on the first attempt.
    records = all_records(r)
    assert set(records) == {
        "E1:success:log",
        "E1:success:email",
        "E2:success:log",  # email off
        "E3:success:log",
        "E3:success:email",
        "E5:failed:log",  # E4 failed: 703 turned failure notifications off
        "E5:failed:email",
    }
    assert {(x.status, x.attempts, x.error_message) for x in records.values()} == {("sent", 1, "")}
    assert_indexes_agree(r)
    assert sorted(line["id"] for line in notification_lines(env)) == sorted(
        rid for rid in records if rid.endswith(":log")
    )
    views = ok(api.client.get("/api/notifications/order/E3"))
    assert [(v["channel"], v["status"], v["total_amount"]) for v in views] in (
        [("log", "sent", 3.3), ("email", "sent", 3.3)],
        [("email", "sent", 3.3), ("log", "sent", 3.3)],
    )
    assert ok(api.client.get("/api/notifications/order/E4")) == []
    stats = ok(api.client.get("/api/notifications/stats"))
    assert (stats["total"], stats["sent"], stats["by_channel"]) == (7, 7, {"log": 4, "email": 3})


def test_smtp_down_fails_after_the_retry_limit_and_resend_sends_once_it_is_back(
    mail_env: dict[str, str], started: Callable[..., Any], r: redis.Redis, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens here until the server is started below
    smtp = SmtpSink(port)
    env = dict(mail_env, STREAMPROC_SMTP_URL=smtp.url)
    api: LiveApi = started("api", env)
    cli(["stock", "set", "SKU-OK", "100"], env)
    ingest_rows(env, tmp_path / "a.csv", [row("D1", 801, "SKU-OK", 1, "19.99", "d801@example.com")])
    fleet: Pipeline = started("consumers", env)
    fleet.start("all")

    # Attempts are counted on the one record while the server is down, then it is failed.
    seen: list[tuple[str, int, bool]] = []

    def email_record() -> dict[str, Any]:
        views = {v["channel"]: v for v in ok(api.client.get("/api/notifications/order/D1"))}
        view = views.get("email", {"status": "none", "attempts": 0, "next_attempt_at": None})
        seen.append((view["status"], view["attempts"], view["next_attempt_at"] is not None))
        return view

    failed = wait_until(lambda: email_record()["status"] == "failed", 20, email_record)
    assert failed["attempts"] == 3
    assert failed["error_message"] == "SMTP connection failed: Connection refused"
    assert (failed["sent_at"], failed["next_attempt_at"]) == (None, None)
    # Between attempts it was pending with the next attempt scheduled.
    assert {("pending", 1, True), ("pending", 2, True)} <= set(seen), seen
    views = ok(api.client.get("/api/notifications/order/D1"))
    (log_view,) = [v for v in views if v["channel"] == "log"]
    assert (log_view["status"], log_view["attempts"]) == ("sent", 1)  # the log is unaffected
    stats = ok(api.client.get("/api/notifications/stats"))
    assert (stats["failed_sends"], stats["sent"], stats["pending"]) == (1, 1, 0)

    smtp.start()
    try:
        resend = "/api/notifications/D1:success:email/resend"
        assert api.client.post(resend).status_code == 401
        accepted = ok(api.client.post(resend, headers=api.auth()), 202)
        assert (accepted["status"], accepted["attempts"]) == ("pending", 3)
        assert accepted["next_attempt_at"] is not None
        sent = wait_until(lambda: email_record()["status"] == "sent", 10, email_record)
        assert (sent["attempts"], sent["error_message"]) == (4, None)
        assert sent["sent_at"] is not None
        (mail,) = smtp.wait_for(1)
        assert mail.recipients == ["d801@example.com"]
        assert mail.message["Subject"] == "Your order D1 is complete"
        # Still one record per channel: the resend was another attempt on the same record.
        assert sorted(all_records(r)) == ["D1:success:email", "D1:success:log"]
        conflict = api.client.post(resend, headers=api.auth())
        assert conflict.status_code == 409 and "sent already" in conflict.json()["message"]
        unknown = "/api/notifications/D9:success:email/resend"
        assert api.client.post(unknown, headers=api.auth()).status_code == 404

        # A mailbox the server refuses (5xx) is failed at once: retrying cannot help.
        refused = row("D2", 802, "SKU-OK", 1, "1.00", "refuse-802@example.com")
        ingest_rows(env, tmp_path / "b.csv", [refused])

        def refused_record() -> Notification | None:
            return all_records(r).get("D2:success:email")

        record = wait_until(
            lambda: (found := refused_record()) is not None and found.status == "failed",
            10,
            refused_record,
        )
        assert (record.attempts, record.error_message[:8]) == (1, "SMTP 550"), record
        fleet.wait_drained(30)
    finally:
        smtp.stop()
    assert len(smtp.messages()) == 1
    assert_indexes_agree(r)
    stats = ok(api.client.get("/api/notifications/stats"))
    assert (stats["total"], stats["sent"], stats["failed_sends"], stats["pending"]) == (4, 3, 1, 0)


ORDER_COUNT = 40


def test_crash_between_send_and_sent_mark_keeps_one_record_per_order_and_channel(
    mail_env: dict[str, str], smtp: SmtpSink, r: redis.Redis, tmp_path: Path
) -> None:
    env = dict(
        mail_env,
        STREAMPROC_SMTP_URL=smtp.url,
        STREAMPROC_CLAIM_IDLE_MS="500",
        STREAMPROC_BATCH_SIZE="10",
    )
    cli(["stock", "set", "SKU-OK", "100000"], env)
    rows = [
        row(f"K{n:03d}", 900 + n, "SKU-OK", 1, f"{n + 1}.00", f"k{n:03d}@example.com")
        for n in range(ORDER_COUNT)
    ]
    ingest_rows(env, tmp_path / "k.csv", rows)
    fleet = Pipeline(env, tmp_path)
    try:
        for stage in ("reserve", "payment", "finalize", "rollback", "snapshot"):
            fleet.start(stage)
        # One batch in flight, so the kill finds exactly one batch sent and none half-sent.
        victim = spawn_cli(
            ["consume", "--stage", "notify", "--consumer", "victim", "--concurrency", "10"],
            dict(env, STREAMPROC_FAULT="notify:after_send"),
            log_path=tmp_path / "victim.log",
        )
        assert victim.wait(timeout=30) == -signal.SIGKILL, (tmp_path / "victim.log").read_text()
        # It died with its batch sent and not marked: those first attempts are leased by it, and
        # their records not written yet (a record is created with its first attempt's outcome).
        leased = leases(r)
        assert leased, "the victim left no lease"
        assert not set(leased) & set(all_records(r))
        in_batch = {rid.partition(":")[0] for rid in leased}
        written = {line["order_reference"] for line in notification_lines(env)}
        assert in_batch <= written  # its log lines were written before it died

        fleet.start("notify")
        fleet.wait_drained(40)
    finally:
        stop_procs(fleet.procs)
    wait_until(lambda: settled(r), 10, lambda: all_records(r))

    orders = export(env)
    assert {o["state"] for o in orders.values()} == {"completed"}
    records = all_records(r)
    # INV-N: one record per (order, channel), every one sent.
    assert Counter(rid.partition(":")[0] for rid in records) == dict.fromkeys(orders, 2)
    assert {rec.status for rec in records.values()} == {"sent"}
    assert_indexes_agree(r)
    # The log channel is exactly once: the killed batch's lines were found, not written again.
    assert_one_notification_line_per_record(env, orders)
    for rid in leased:
        if rid.endswith(":log"):
            assert records[rid].attempts == 1, rid
    # Email is at least once: each address got one email per attempt, and only the killed
    # batch's emails (attempted twice) came twice, with the same Message-ID both times.
    received = Counter(m.recipients[0] for m in smtp.messages())
    for rid, record in records.items():
        if rid.endswith(":email"):
            address = f"k{record.order_reference[1:]}@example.com"
            assert received[address] == record.attempts, (rid, record.attempts)
    twice = {address for address, n in received.items() if n == 2}
    assert twice == {
        f"k{rid.partition(':')[0][1:]}@example.com" for rid in leased if rid.endswith(":email")
    }
    for address in twice:
        ids = {m.message["Message-ID"] for m in smtp.messages() if m.recipients == [address]}
        assert len(ids) == 1, ids
    assert json.loads(cli(["status", "--json"], env).stdout)["dead_letters"] == 0
