"""Local users through the real master: virtual domains, forwards, luser_relay, always_bcc,
unknown and disabled users, quotas, DSN parameters given over SMTP."""
from __future__ import annotations

import smtplib

import pytest

from tests.integration.delivery_support import (delivery_system, inboxes, parse, queue_files, sendmail,  # noqa: F401
                                                smtpd_port, wait_queues_empty)

pytestmark = pytest.mark.integration


def subjects(messages: list[bytes]) -> list[str]:
    return sorted(parse(raw)["Subject"] for raw in messages)


def test_virtual_domains_forwards_luser_relay_and_always_bcc(mailsystem, inboxes):
    system = delivery_system(mailsystem, main={
        "mydestination": "$myhostname, $mydomain, virtual.example, other.example",
        "luser_relay": "catchall@example.test", "always_bcc": "archive@example.test",
    }, users={"bob": (), "carol": (), "catchall": (), "archive": (),
              "ann": ("--forward", "carol@example.test", "--keep-copy"), "ben": ("--forward", "carol")})
    system.start()
    for subject, rcpt in (("v1", "bob@virtual.example"), ("v2", "BOB@other.example"), ("v3", "bob@example.test"),
                          ("kept", "ann@example.test"), ("passed", "ben@virtual.example"),
                          ("lost", "nobody@other.example")):
        sendmail(system, "-f", "alice@example.org", rcpt, message=f"Subject: {subject}\n\nbody\n".encode())
    inbox = inboxes(system)
    assert subjects(inbox.wait("bob", 3)) == ["v1", "v2", "v3"]
    assert subjects(inbox.wait("carol", 2)) == ["kept", "passed"]
    assert subjects(inbox.wait("ann", 1)) == ["kept"]
    assert subjects(inbox.wait("catchall", 1)) == ["lost"]
    assert subjects(inbox.wait("archive", 6)) == ["kept", "lost", "passed", "v1", "v2", "v3"]
    assert inbox.messages("ben") == []
    log = system.wait_for_log("smtp", "to=<catchall@other.example>, orig_to=<nobody@other.example>")
    assert "status=bounced" not in log


def test_unknown_and_disabled_users_bounce_in_an_rfc3464_report(mailsystem, corpus, inboxes):
    system = delivery_system(mailsystem, users={"alice": (), "bob": (), "dora": ("--disabled",)})
    system.start()
    original = (corpus / "01-plain.eml").read_bytes()
    sendmail(system, "-f", "alice@example.test", "bob", "ghost@example.test", "dora@example.test",
             message=original)
    inbox = inboxes(system)
    assert len(inbox.wait("bob", 1)) == 1
    [raw] = inbox.wait("alice", 1)
    report = parse(raw)
    assert report["From"].addresses[0].username == "MAILER-DAEMON"
    assert report.get_content_type() == "multipart/report" and report.get_param("report-type") == "delivery-status"
    human, status, returned = report.get_payload()
    assert human.get_content_type() == "text/plain"
    per_message, *blocks = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mail.example.test"
    assert [(b["Final-Recipient"], b["Action"], b["Status"]) for b in blocks] == [
        ("rfc822; ghost@example.test", "failed", "5.1.1"), ("rfc822; dora@example.test", "failed", "5.2.1")]
    assert returned.get_content_type() == "message/rfc822"
    assert returned.get_payload()[0]["Message-ID"] == parse(original)["Message-ID"]
    assert "Return-Path: <>" in raw.decode(errors="replace").split("\r\n\r\n")[0]
    assert inbox.messages("dora") == []
    assert queue_files(system, "deferred") == []


def test_bounce_of_a_bounce_is_never_sent(mailsystem, inboxes):
    system = delivery_system(mailsystem, users={"bob": ()})
    system.start()
    sendmail(system, "-f", "", "ghost@example.test", message=b"Subject: from nobody\n\nx\n")
    system.wait_for_log("smtp", "undeliverable mail from the null sender: no notification")
    assert queue_files(system, "incoming") == [] and queue_files(system, "deferred") == []


def big_message(subject: bytes) -> bytes:
    """About 2.4 kB: one fits a 4k quota, two do not."""
    return b"Subject: " + subject + b"\n\n" + (b"x" * 76 + b"\n") * 30


def test_over_quota_is_deferred_then_delivered_when_space_is_made(mailsystem, inboxes):
    system = delivery_system(mailsystem, users={"alice": (), "carol": ("--quota", "4k")})
    system.start()
    sendmail(system, "-f", "alice@example.test", "carol", message=big_message(b"first"))
    inbox = inboxes(system)
    assert len(inbox.wait("carol", 1)) == 1
    sendmail(system, "-f", "alice@example.test", "carol", message=big_message(b"second"))
    system.wait_for_log("smtp", "status=deferred (mailbox full")
    assert len(inbox.messages("carol")) == 1 and inbox.messages("alice") == []
    system.mailctl("user", "set", "carol", "--quota", "100k")
    assert subjects(inbox.wait("carol", 2)) == ["first", "second"]
    assert inbox.messages("alice") == []


def test_over_quota_bounces_after_the_queue_lifetime(mailsystem, inboxes):
    system = delivery_system(mailsystem, main={"maximal_queue_lifetime": "1s", "delay_warning_time": "0"},
                             users={"alice": (), "carol": ("--quota", "1k")})
    system.start()
    sendmail(system, "-f", "alice@example.test", "carol", message=b"Subject: one\n\n" + b"y" * 400 + b"\n")
    inbox = inboxes(system)
    assert len(inbox.wait("carol", 1)) == 1
    sendmail(system, "-f", "alice@example.test", "carol", message=b"Subject: two\n\n" + b"z" * 400 + b"\n")
    [raw] = inbox.wait("alice", 1)
    [block] = parse(raw).get_payload()[1].get_payload()[1:]
    assert block["Status"] == "4.4.7" and "mailbox full" in block["Diagnostic-Code"]
    assert len(inbox.messages("carol")) == 1


def test_remote_recipients_wait_in_deferred_without_bounce(mailsystem, inboxes):
    system = delivery_system(mailsystem, users={"alice": (), "bob": ()})
    system.start()
    sendmail(system, "-f", "alice@example.test", "bob", "friend@elsewhere.example", message=b"Subject: r\n\nx\n")
    inbox = inboxes(system)
    assert len(inbox.wait("bob", 1)) == 1
    system.wait_for_log("smtp", "to=<friend@elsewhere.example>, relay=none")
    log = system.wait_for_log("smtp", ": deferred, next try in")       # logged once the file is parked
    assert "status=deferred (remote delivery not built yet)" in log
    assert "status=bounced" not in log
    assert len(queue_files(system, "deferred")) == 1 and inbox.messages("alice") == []


def test_dsn_parameters_over_smtp_orcpt_ret_hdrs_never_and_success(mailsystem, corpus, inboxes):
    """RFC 3461/3464 end to end: ORCPT comes back as Original-Recipient, RET=HDRS returns the
    header only, ENVID as Original-Envelope-Id, NOTIFY=NEVER gives no report, NOTIFY=SUCCESS one."""
    # Without SIZE, RCPT cannot know that the message is larger than the whole quota of gone@
    # and quiet@: accepted at RCPT, it bounces in qmgr.
    system = delivery_system(mailsystem, smtpd=True, users={"alice": (), "bob": (), "gone": ("--quota", "100"),
                                                           "quiet": ("--quota", "100")})
    system.start()
    original = (corpus / "01-plain.eml").read_bytes()
    assert len(original) > 100
    with smtplib.SMTP("127.0.0.1", smtpd_port(system), timeout=30) as client:
        client.ehlo("client.example")
        assert client.mail("alice@example.test", ["RET=HDRS", "ENVID=env+2B1"])[0] == 250
        assert client.rcpt("bob@example.test", ["NOTIFY=SUCCESS"])[0] == 250
        assert client.rcpt("gone@example.test", ["ORCPT=rfc822;Gone+2Blist@example.test"])[0] == 250
        assert client.rcpt("quiet@example.test", ["NOTIFY=NEVER"])[0] == 250
        assert client.data(original)[0] == 250
    inbox = inboxes(system)
    assert len(inbox.wait("bob", 1)) == 1
    reports = {parse(raw)["Subject"]: parse(raw) for raw in inbox.wait("alice", 2)}
    assert sorted(reports) == ["Successful Mail Delivery Report", "Undelivered Mail Returned to Sender"]
    for report in reports.values():
        assert report.get_content_type() == "multipart/report"
        human, status, returned = report.get_payload()
        per_message, *blocks = status.get_payload()
        assert per_message["Reporting-MTA"] == "dns; mail.example.test"
        assert per_message["Original-Envelope-Id"] == "env+1"
        assert returned.get_content_type() == "text/rfc822-headers"
        returned_text = returned.get_payload()
        assert "Message-ID: " + parse(original)["Message-ID"] in returned_text
        assert parse(original).get_payload().strip().splitlines()[0] not in returned_text
    [failed] = reports["Undelivered Mail Returned to Sender"].get_payload()[1].get_payload()[1:]
    assert (failed["Original-Recipient"], failed["Final-Recipient"], failed["Action"], failed["Status"]) == \
        ("rfc822;Gone+list@example.test", "rfc822; gone@example.test", "failed", "5.2.2")
    assert failed["Diagnostic-Code"].startswith("X-mailhouse; ")
    [delivered] = reports["Successful Mail Delivery Report"].get_payload()[1].get_payload()[1:]
    assert (delivered["Final-Recipient"], delivered["Action"], delivered["Status"]) == \
        ("rfc822; bob@example.test", "delivered", "2.0.0")
    assert not any(wait_queues_empty(system).values())
    assert len(inbox.messages("alice")) == 2                  # nothing for quiet@ (NOTIFY=NEVER)
    log = system.log("smtp")
    assert "to=<quiet@example.test>, relay=local" in log
    assert "no failed notification for <quiet@example.test> (NOTIFY=NEVER)" in log
    assert "sender success notification" in log
