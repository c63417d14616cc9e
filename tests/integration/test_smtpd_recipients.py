"""RCPT checks for local domains through the real master, with users and aliases made by mailctl.

Unknown user 550 5.1.1 (unless luser_relay; aliases count as known), disabled user
550 5.2.1, mailbox over quota 452 4.2.2, a declared SIZE larger than the whole quota
552 5.2.2. Every mydestination domain is local; mail to them needs no relay permission.
"""
from __future__ import annotations

import smtplib

import pytest

from store.mailstore import open_store
from tests.integration.smtpd_support import add_user, client, params_of, queued, smtp_system

pytestmark = pytest.mark.integration

# Clients come from 127.0.0.9, outside mynetworks: local mail needs no relay permission.
OUTSIDE = {"mynetworks": "127.0.0.1/32", "mydestination": "$myhostname, $mydomain, other.test"}


def make_users(system) -> None:
    add_user(system, "bob", "pw")
    add_user(system, "carol", "pw", enabled=False)
    add_user(system, "dave", "pw", quota=10240)
    (system.etc / "aliases").write_text("sales: bob, carol\npostmaster: bob\n")
    system.mailctl("aliases", "build")


def rcpt_reply(port: int, address: str, size: int | None = None) -> tuple[int, bytes]:
    with client(port, source="127.0.0.9") as smtp:
        smtp.ehlo("client.example")
        options = [f"SIZE={size}"] if size else []
        assert smtp.mail("alice@remote.example", options)[0] == 250
        return smtp.rcpt(address)


def test_local_recipient_replies(mailsystem):
    system, port = smtp_system(mailsystem, OUTSIDE, tls=False)
    make_users(system)
    assert rcpt_reply(port, "bob@example.test")[0] == 250
    assert rcpt_reply(port, "BOB@other.test")[0] == 250                     # every local domain
    assert rcpt_reply(port, "sales@mail.example.test")[0] == 250             # an alias is known
    assert rcpt_reply(port, "postmaster@example.test")[0] == 250
    assert rcpt_reply(port, "nobody@example.test") == (
        550, b"5.1.1 Recipient address rejected: User unknown in local recipient table")
    assert rcpt_reply(port, "carol@example.test") == (550, b"5.2.1 Recipient address rejected: Mailbox disabled")
    assert rcpt_reply(port, "dave@example.test", size=20000) == (552, b"5.2.2 Mailbox full: message exceeds the quota")
    assert rcpt_reply(port, "dave@example.test", size=2000)[0] == 250
    with client(port, source="127.0.0.9") as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.sendmail("alice@remote.example", ["x@example.test", "y@example.test"], b"Subject: x\r\n\r\n")
    assert queued(system) == []
    system.wait_for_log("smtp", "NOQUEUE: reject: RCPT from [127.0.0.9]: 550 5.1.1 Recipient address rejected: "
                                "User unknown in local recipient table; from=<alice@remote.example> "
                                "to=<nobody@example.test>")


def test_full_mailbox_gets_a_temporary_refusal(mailsystem):
    system, port = smtp_system(mailsystem, OUTSIDE, tls=False)
    make_users(system)
    store = open_store(params_of(system))
    store.deliver("dave", "INBOX", b"Subject: filler\r\n\r\n" + b"x" * 10300 + b"\r\n")
    assert rcpt_reply(port, "dave@example.test") == (452, b"4.2.2 Mailbox full")
    assert rcpt_reply(port, "bob@example.test")[0] == 250


def test_luser_relay_takes_unknown_users(mailsystem):
    system, port = smtp_system(mailsystem, {**OUTSIDE, "luser_relay": "bob"}, tls=False)
    make_users(system)
    with client(port, source="127.0.0.9") as smtp:
        refused = smtp.sendmail("alice@remote.example", ["nobody@example.test", "carol@example.test"],
                                b"Subject: lost\r\n\r\nhi\r\n")
    assert refused == {"carol@example.test": (550, b"5.2.1 Recipient address rejected: Mailbox disabled")}
    [item] = queued(system)
    assert [r.address for r in item.envelope.recipients] == ["nobody@example.test"]
