"""RFC 3464 delivery status notifications, checked with the email package."""
from __future__ import annotations

import email
import email.policy

from workers.qmgr.bounce import RETURN_WHOLE_LIMIT, Failure, Report, build_dsn


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def report(**kw):
    return Report("mail.example.test", "alice@example.org", "18EB3EBB0F62678D28AFEE", 1_700_000_000.0, **kw)


def test_structure_of_a_failure_report(corpus):
    original = (corpus / "01-plain.eml").read_bytes()
    raw = build_dsn(report(envid="ENV-1"), [Failure("ghost@example.test", "5.1.1", "user unknown",
                                                      "rfc822;ghost@example.test")], original)
    msg = parse(raw)
    assert msg["To"] == "alice@example.org"
    assert msg["From"].addresses[0].username == "MAILER-DAEMON"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    human, status, returned = msg.get_payload()
    assert human.get_content_type() == "text/plain" and "ghost@example.test" in human.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mail.example.test"
    assert per_message["Original-Envelope-Id"] == "ENV-1"
    assert per_recipient["Final-Recipient"] == "rfc822; ghost@example.test"
    assert per_recipient["Original-Recipient"] == "rfc822;ghost@example.test"
    assert per_recipient["Action"] == "failed" and per_recipient["Status"] == "5.1.1"
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()[0]
    assert inner["Subject"] == "Minutes of Friday's planning meeting"
    assert "planning meeting" in inner.get_content() or "minutes" in inner.get_content()


def test_several_recipients_one_block_each():
    raw = build_dsn(report(), [Failure("a@x.test", "5.1.1", "user unknown"),
                               Failure("b@x.test", "5.2.1", "mailbox disabled")], b"Subject: s\r\n\r\nbody\r\n")
    blocks = parse(raw).get_payload()[1].get_payload()
    assert [b["Status"] for b in blocks[1:]] == ["5.1.1", "5.2.1"]


def test_headers_only_when_asked_or_too_big():
    small = b"Subject: s\r\n\r\nbody\r\n"
    big = b"Subject: big\r\n\r\n" + (b"x" * 76 + b"\r\n") * (RETURN_WHOLE_LIMIT // 78 + 10)
    for rep, original in ((report(headers_only=True), small), (report(), big)):
        returned = parse(build_dsn(rep, [Failure("a@x.test", "5.1.1", "user unknown")], original)).get_payload()[2]
        assert returned.get_content_type() == "text/rfc822-headers"
        assert b"xxxx" not in returned.as_bytes()


def test_delay_warning():
    raw = build_dsn(report(retry_until=1_700_400_000.0),
                    [Failure("a@x.test", "4.2.2", "mailbox full", action="delayed")], b"Subject: s\r\n\r\nb\r\n")
    msg = parse(raw)
    assert msg["Subject"].startswith("Delayed Mail")
    block = msg.get_payload()[1].get_payload()[1]
    assert block["Action"] == "delayed" and block["Will-Retry-Until"]


def test_lf_original_becomes_crlf():
    raw = build_dsn(report(), [Failure("a@x.test", "5.1.1", "user unknown")], b"Subject: s\n\nline\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
