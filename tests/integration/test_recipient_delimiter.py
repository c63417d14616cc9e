"""recipient_delimiter through the real master: smtpd and qmgr ask the same resolver
(store/resolve.py), so smtpd accepts `bob+lists@` at RCPT exactly when qmgr delivers it
(into bob's INBOX), refuses `nobody+x@` at RCPT, and without the setting neither side
knows `bob+lists` (550 5.1.1 at RCPT; a 5.1.1 bounce for mail that comes by sendmail)."""
from __future__ import annotations

import smtplib

import pytest

from tests.integration.delivery_support import (delivery_system, inboxes, parse, sendmail,  # noqa: F401
                                                smtpd_port, wait_queues_empty, write_aliases)

pytestmark = pytest.mark.integration

UNKNOWN = (550, b"5.1.1 Recipient address rejected: User unknown in local recipient table")


def send_each(port: int, addresses: list[str]) -> dict[str, tuple[int, bytes]]:
    """One message per address (its Subject: the address); -> the refused ones."""
    refused = {}
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        for address in addresses:
            try:
                smtp.sendmail("alice@example.org", [address], f"Subject: {address}\r\n\r\nhi\r\n".encode())
            except smtplib.SMTPRecipientsRefused as e:
                refused.update(e.recipients)
    return refused


def test_an_extended_address_is_accepted_exactly_when_it_is_delivered(mailsystem, inboxes):
    system = delivery_system(mailsystem, main={"recipient_delimiter": "+"}, smtpd=True, users={"bob": ()})
    write_aliases(system, "sales: bob\n")
    system.start()
    accepted = ["bob+lists@example.test", "Bob+Other@mail.example.test", "sales+q3@example.test", "bob@example.test"]
    assert send_each(smtpd_port(system), accepted + ["nobody+x@example.test"]) == {"nobody+x@example.test": UNKNOWN}
    delivered = inboxes(system).wait("bob", len(accepted))
    assert sorted(parse(raw)["Subject"] for raw in delivered) == sorted(accepted)
    assert {parse(raw)["Delivered-To"] for raw in delivered} == {"bob@example.test", "bob@mail.example.test"}
    assert wait_queues_empty(system) == {"maildrop": [], "incoming": [], "active": [], "deferred": []}
    assert "status=bounced" not in (system.var / "log" / "smtp.log").read_text()


def test_without_a_delimiter_neither_smtpd_nor_qmgr_knows_the_extension(mailsystem, inboxes):
    system = delivery_system(mailsystem, smtpd=True, users={"alice": (), "bob": ()})
    system.start()
    assert send_each(smtpd_port(system), ["bob+lists@example.test"]) == {"bob+lists@example.test": UNKNOWN}
    sendmail(system, "-f", "alice@example.test", "bob+lists@example.test", message=b"Subject: by sendmail\n\nx\n")
    inbox = inboxes(system)
    [bounce] = inbox.wait("alice", 1)
    assert "5.1.1" in parse(bounce).get_payload()[1].as_string()
    assert inbox.messages("bob") == []
