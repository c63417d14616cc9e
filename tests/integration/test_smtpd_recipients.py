"""RCPT checks for local domains through the real master, with users and aliases made by mailctl.

Unknown user 550 5.1.1 (unless luser_relay; aliases count as known), disabled user
550 5.2.1, mailbox over quota 452 4.2.2, a declared SIZE larger than the whole quota
552 5.2.2. Every mydestination domain is local; mail to them needs no relay permission.
"""
from __future__ import annotations

import smtplib

import pytest

from store.handle import Store
from tests.integration.smtpd_support import add_user, client, params_of, queued, raw_session, smtp_system

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
    with Store.open(params_of(system)) as store:
        store.mail.deliver("dave", "INBOX", b"Subject: filler\r\n\r\n" + b"x" * 10300 + b"\r\n")
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


def test_recipients_past_the_limit_wait_for_the_next_transaction(mailsystem):
    """452 4.5.3 past smtpd_recipient_limit is no error (up to the overshoot limit): the client
    keeps its session and its accepted recipients, and sends the rest in a new transaction."""
    system, port = smtp_system(mailsystem, {"luser_relay": "bob", "smtpd_recipient_limit": "5",
                                            "smtpd_hard_error_limit": "3"}, tls=False)
    add_user(system, "bob", "pw")                               # luser_relay takes them
    everyone = [f"user{n}@example.test" for n in range(12)]
    batches = []
    with client(port) as smtp:
        pending = everyone
        for _ in range(3):                                      # 5 + 5 + 2
            refused = smtp.sendmail("alice@remote.example", pending, b"Subject: many\r\n\r\nhi\r\n")
            assert set(refused.values()) <= {(452, b"4.5.3 Error: too many recipients")}
            batches.append([a for a in pending if a not in refused])
            pending = list(refused)
        assert pending == [] and smtp.noop()[0] == 250
    assert sorted(len(item.envelope.recipients) for item in queued(system)) == [2, 5, 5]
    assert sorted(r.address for item in queued(system) for r in item.envelope.recipients) == sorted(everyone)
    assert [len(batch) for batch in batches] == [5, 5, 2]


def test_recipients_past_the_overshoot_limit_count_as_errors(mailsystem):
    system, port = smtp_system(mailsystem, {"luser_relay": "bob", "smtpd_recipient_limit": "5",
                                            "smtpd_recipient_overshoot_limit": "2", "smtpd_hard_error_limit": "3"},
                               tls=False)
    add_user(system, "bob", "pw")
    rcpts = b"".join(b"RCPT TO:<user%d@example.test>\r\n" % n for n in range(12))
    replies = raw_session(port, b"EHLO c\r\nMAIL FROM:<alice@remote.example>\r\n" + rcpts)
    finals = [r[:3] for r in replies if r[3:4] == b" "]
    assert finals == [b"220", b"250", b"250"] + [b"250"] * 5 + [b"452"] * 5 + [b"421"]   # 2 free + 3 errors


def test_postmaster_of_every_local_domain_is_accepted_without_alias_or_user(mailsystem):
    system, port = smtp_system(mailsystem, OUTSIDE, tls=False)
    add_user(system, "bob", "pw")
    for address in ("postmaster@example.test", "PostMaster@other.test", "Postmaster", '"postmaster"@example.test'):
        assert rcpt_reply(port, address)[0] == 250, address
    assert rcpt_reply(port, "postmaster@remote.example") == (554, b"5.7.1 Relay access denied")
    assert rcpt_reply(port, "nobody@example.test")[0] == 550


def test_quoted_plain_local_part_is_the_same_user(mailsystem):
    system, port = smtp_system(mailsystem, OUTSIDE, tls=False)
    add_user(system, "bob", "pw")
    assert rcpt_reply(port, '"bob"@example.test')[0] == 250
    assert rcpt_reply(port, '"b\\ob"@Example.TEST')[0] == 250           # a quoted pair, still plain "bob"
    assert rcpt_reply(port, '"no body"@example.test')[0] == 550
    with client(port, source="127.0.0.9") as smtp:
        smtp.sendmail('"alice"@remote.example', ['"bob"@example.test'], b"Subject: quoted\r\n\r\nhi\r\n")
    [item] = queued(system)
    assert item.envelope.sender == "alice@remote.example"
    assert [r.address for r in item.envelope.recipients] == ["bob@example.test"]
