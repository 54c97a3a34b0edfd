"""Pure parts of the notification channels: the SMTP URL, the settings, the record encoding, the
composed email, and one SMTP connection's outcomes against a real server on loopback."""

from __future__ import annotations

import asyncio

import pytest

from streamproc.errors import ConfigError
from streamproc.mail import (
    NOT_CONFIGURED,
    Email,
    EmailChannel,
    SendResult,
    SmtpConfig,
    compose,
    deliver,
)
from streamproc.models import Line, Order
from streamproc.notifications import decode_record, encode_record, new_record, split_id
from streamproc.settings import Settings
from tests.smtp_support import SmtpSink

ORDER = Order("A-1", 77, "Ann Example", "EUR", "2025-11-10T00:00:00Z", [Line("S", "", 3, 333)])


def test_smtp_url_forms_and_defaults() -> None:
    plain = SmtpConfig.from_url("smtp://mail.example.com")
    assert (plain.host, plain.port, plain.starttls, plain.implicit_tls) == (
        "mail.example.com",
        25,
        False,
        False,
    )
    assert (plain.username, plain.password, plain.timeout_s) == (None, None, 10.0)
    submission = SmtpConfig.from_url(
        "smtp://us%40er:p%3Ass@mail.example.com?starttls=1&timeout=2.5"
    )
    assert (submission.port, submission.starttls, submission.timeout_s) == (587, True, 2.5)
    assert (submission.username, submission.password) == ("us@er", "p:ss")
    assert "p:ss" not in repr(submission)
    assert SmtpConfig.from_url("smtps://mail.example.com").port == 465
    assert SmtpConfig.from_url("smtp://mail.example.com:2525?starttls=0").port == 2525


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://mail.example.com", "use smtp://"),
        ("smtp://:secret@", "no host"),
        ("smtp://u:secret@mail.example.com:99999", "port"),
        ("smtp://u:secret@mail.example.com?tls=1", "unknown option(s) tls"),
        ("smtp://u:secret@mail.example.com?starttls=maybe", "starttls must be 1 or 0"),
        ("smtp://u:secret@mail.example.com?timeout=0", "timeout must be above 0"),
        ("smtp://u:secret@mail.example.com?timeout=x", "timeout must be a number"),
        ("smtps://u:secret@mail.example.com?starttls=1", "TLS already"),
    ],
)
def test_bad_smtp_urls_are_refused_without_echoing_them(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SmtpConfig.from_url(url)
    assert problem in str(caught.value)
    assert "secret" not in str(caught.value)
    with pytest.raises(ConfigError):
        Settings.from_env({"STREAMPROC_SMTP_URL": url})


def test_notification_settings_from_the_environment() -> None:
    default = Settings.from_env({})
    assert default.notification_channels == ("log",)
    assert (default.notification_max_attempts, default.notification_retention_days) == (5, 30)
    chosen = Settings.from_env(
        {
            "STREAMPROC_NOTIFICATION_CHANNELS": " Email, log,email ",
            "STREAMPROC_SMTP_URL": "smtp://u:secret@mail.example.com",
            "STREAMPROC_NOTIFICATION_RETRY_BASE_MS": "50",
        }
    )
    assert chosen.notification_channels == ("email", "log")
    assert chosen.notification_retry_base_ms == 50
    assert "secret" not in repr(chosen)
    with pytest.raises(ConfigError, match="channels are log, email"):
        Settings.from_env({"STREAMPROC_NOTIFICATION_CHANNELS": "log,sms"})
    with pytest.raises(ConfigError, match="outside"):
        Settings.from_env({"STREAMPROC_NOTIFICATION_MAX_ATTEMPTS": "0"})


def test_record_text_round_trips_and_stays_small() -> None:
    record = new_record(ORDER, "rolled_back", "email", max_attempts=4)
    record.attempts, record.error_message = 2, "SMTP 451: try | again\nlater"
    text = encode_record(record)
    assert text.startswith(b"p|77|r|999|EUR|2|4|0|-1|")
    assert len(text) < 60
    back = decode_record(record.id, text)
    assert back == record
    assert (back.notification_type, back.total_amount) == ("failed", "9.99")
    assert back.message == "Order A-1 could not be completed (rolled back)."
    assert split_id("a:b:c:success:log") == ("a:b:c", "success", "log")
    for bad_id in ("A-1:maybe:log", "A-1:success:sms", ":success:log"):
        with pytest.raises(ValueError, match="not a notification id"):
            split_id(bad_id)
    with pytest.raises(ValueError, match="fields"):
        decode_record(record.id, b"p|77|r")
    with pytest.raises(ValueError, match="unknown code"):
        decode_record(record.id, b"x|77|r|999|EUR|2|4|0|-1|")


def test_composed_email_names_order_status_and_total() -> None:
    done = compose(
        new_record(ORDER, "completed", "email"), "ann@example.com", "Ann", "shop@ex.org", "sp"
    )
    assert (done.to, done.subject) == ("ann@example.com", "Your order A-1 is complete")
    assert done.body.splitlines()[-3:] == ["Order: A-1", "Status: completed", "Total: 9.99 EUR"]
    assert done.message_id.endswith("@ex.org>")
    again = compose(
        new_record(ORDER, "completed", "email"), "x@example.com", "", "shop@ex.org", "sp"
    )
    assert again.message_id == done.message_id  # every attempt of one record: one Message-ID
    other = compose(
        new_record(ORDER, "completed", "email"), "ann@example.com", "Ann", "s@ex.org", "ns2"
    )
    assert other.message_id != done.message_id  # another namespace's record
    failed = compose(new_record(ORDER, "dead_lettered", "email"), "a@e.com", "Ann", "s@e.com", "sp")
    assert failed.subject == "Your order A-1 could not be completed"
    assert "Status: dead lettered" in failed.body.splitlines()


def outgoing(to: str, n: int = 1) -> Email:
    return Email(f"A-{n}:success:email", to, f"Subject {n}", f"Body {n}\n", f"<{n}@ex.org>")


def test_one_connection_sends_refuses_and_reports_per_email() -> None:
    sink = SmtpSink(login=("mailer", "p:ss w0rd")).start()
    try:
        config = SmtpConfig.from_url(f"smtp://mailer:p%3Ass%20w0rd@127.0.0.1:{sink.port}")
        results = deliver(
            config,
            "shop@ex.org",
            [outgoing("a@ex.org", 1), outgoing("refuse@ex.org", 2), outgoing("b@ex.org", 3)],
        )
        assert [r.ok for r in results] == [True, False, True]
        assert results[1] == SendResult("SMTP 550: recipient refused: 5.1.1 no such mailbox", True)
        assert [m.recipients for m in sink.messages()] == [["a@ex.org"], ["b@ex.org"]]
        assert all(m.authenticated for m in sink.messages())
        assert sink.messages()[0].message["Message-ID"] == "<1@ex.org>"
    finally:
        sink.stop()
    down = deliver(config, "shop@ex.org", [outgoing("a@ex.org")])
    assert down == [SendResult("SMTP connection failed: Connection refused", False)]


def test_email_channel_splits_a_batch_over_connections_and_keeps_order() -> None:
    sink = SmtpSink().start()
    try:
        channel = EmailChannel(SmtpConfig.from_url(sink.url), "shop@ex.org", connections=3)
        emails = [outgoing(f"c{n}@ex.org" if n % 7 else f"refuse{n}@ex.org", n) for n in range(40)]
        results = asyncio.run(channel.send(emails))
        assert [r.ok for r in results] == [bool(n % 7) for n in range(40)]
        assert sorted(m.recipients[0] for m in sink.messages()) == sorted(
            f"c{n}@ex.org" for n in range(40) if n % 7
        )
    finally:
        sink.stop()
    unconfigured = asyncio.run(EmailChannel(None, "shop@ex.org").send([outgoing("a@ex.org")]))
    assert unconfigured == [SendResult(NOT_CONFIGURED, permanent=True)]
    assert asyncio.run(EmailChannel(None, "x@ex.org").send([])) == []
