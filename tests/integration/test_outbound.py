"""Outgoing mail end to end: a message accepted by one mailhouse (smtpd, qmgr and the smtp
service) for another domain reaches a second mailhouse on another 127.x address, found by MX
in a DNS server the test runs, or through relayhost; what cannot be delivered comes back to
the sender as a bounce; a destination that is down does not hold up another."""
from __future__ import annotations

import json
import os
import random
import smtplib
import socket
import time

import pytest

from tests.dnsserver import DNSServer
from tests.integration.delivery_support import FAST_RETRIES, Inbox, parse, wait_queues_empty

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the receiving side listens on port 25 (needs root)")

REMOTE = "remote.test"


def free_loopback(port: int = 25) -> str:
    """A 127.x.y.z address whose port is free (the receiver's, or one nobody listens on)."""
    for _ in range(100):
        host = f"127.{random.randint(1, 254)}.{random.randint(0, 254)}.{random.randint(2, 254)}"
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return host
    raise RuntimeError("no free loopback address")


@pytest.fixture
def dns():
    with DNSServer() as server:
        yield server


@pytest.fixture
def receiver(mailsystem):
    """The far side: a mailhouse for remote.test on port 25 of its own address, user carol."""
    host = free_loopback()
    system = mailsystem(main={"myhostname": f"mx.{REMOTE}", "mydomain": REMOTE, **FAST_RETRIES})
    system.add_service("smtpd", name="smtpd", host=host, port=25)
    system.add_unix_service("qmgr", wakeup=60)
    system.write_config()
    system.mailctl("user", "add", "carol", "--password", "carol-pw")
    system.start()
    system.address = host
    inbox = Inbox(system)
    yield system, inbox
    inbox.close()


@pytest.fixture
def sender(mailsystem, dns):
    """This side: smtpd, qmgr and the smtp service, asking the test's DNS server; user alice."""
    def make(**main):
        system = mailsystem(main={"dns_resolver": f"127.0.0.1:{dns.port}", **FAST_RETRIES, **main})
        system.add_service("smtpd", name="smtpd")
        system.add_unix_service("qmgr", wakeup=60)
        system.add_smtp_service()
        system.write_config()
        system.mailctl("user", "add", "alice", "--password", "alice-pw")
        system.start()
        return system
    return make


def submit(system, recipients: list[str], message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", system.port("smtpd"), timeout=30) as client:
        client.sendmail("alice@example.test", recipients, message)


def smtp_log(system) -> str:
    path = system.var / "log" / "smtp.log"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_for(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def body_of(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[1]


def test_mail_for_another_domain_goes_to_its_mx(dns, receiver, sender, corpus):
    far, far_inbox = receiver
    dns.add(REMOTE, mx=[(10, f"mx.{REMOTE}")])
    dns.add(f"mx.{REMOTE}", a=far.address)
    here = sender()
    original = (corpus / "01-plain.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    submit(here, [f"carol@{REMOTE}"], original)
    [arrived] = far_inbox.wait("carol", 1)
    assert body_of(arrived) == body_of(original)
    assert parse(arrived)["Subject"] == parse(original)["Subject"]
    assert wait_queues_empty(here) == {q: [] for q in ("maildrop", "incoming", "active", "deferred")}
    log = smtp_log(here)
    assert f"to=<carol@{REMOTE}>" in log and f"relay=mx.{REMOTE}[{far.address}]:25" in log and "status=sent" in log


def test_the_second_mx_takes_over_when_the_first_is_down(dns, receiver, sender, corpus):
    far, far_inbox = receiver
    dead = free_loopback()                     # nothing listens there
    dns.add(REMOTE, mx=[(10, f"mx1.{REMOTE}"), (20, f"mx2.{REMOTE}")])
    dns.add(f"mx1.{REMOTE}", a=dead)
    dns.add(f"mx2.{REMOTE}", a=far.address)
    here = sender()
    submit(here, [f"carol@{REMOTE}"], (corpus / "04-alternative.eml").read_bytes())
    assert len(far_inbox.wait("carol", 1)) == 1
    assert (f"mx1.{REMOTE}", "A") in dns.queries


def test_a_domain_without_mx_is_reached_at_its_own_address(dns, receiver, sender, corpus):
    far, far_inbox = receiver
    dns.add(REMOTE, a=far.address)             # implicit MX (RFC 5321 5.1)
    here = sender()
    submit(here, [f"carol@{REMOTE}"], (corpus / "01-plain.eml").read_bytes())
    assert len(far_inbox.wait("carol", 1)) == 1


def test_what_cannot_be_delivered_bounces_to_the_sender(dns, receiver, sender, corpus):
    far, _ = receiver
    dns.add(REMOTE, mx=[(10, f"mx.{REMOTE}")])
    dns.add(f"mx.{REMOTE}", a=far.address)
    dns.add("nomail.test", mx=[(0, ".")])     # a null MX: the domain takes no mail
    here = sender()
    submit(here, [f"ghost@{REMOTE}", "someone@nomail.test"], (corpus / "01-plain.eml").read_bytes())
    inbox = Inbox(here)
    try:
        reports = wait_for(lambda: (text := b"\n".join(inbox.messages("alice"))) and
                           b"Status: 5.1.1" in text and b"Status: 5.1.10" in text and text, "both bounces")
        assert reports.count(b"Action: failed") == 2
        assert f"ghost@{REMOTE}".encode() in reports and b"someone@nomail.test" in reports
    finally:
        inbox.close()


def test_relayhost_takes_all_outgoing_mail(mailsystem, sender, corpus):
    far = mailsystem(main={"myhostname": f"mx.{REMOTE}", "mydomain": REMOTE})
    far.add_service("smtpd", name="smtpd")     # 127.0.0.1, a free port: no DNS involved at all
    far.add_unix_service("qmgr", wakeup=60)
    far.write_config()
    far.mailctl("user", "add", "carol", "--password", "carol-pw")
    far.start()
    here = sender(relayhost=f"[127.0.0.1]:{far.port('smtpd')}")
    submit(here, [f"carol@{REMOTE}"], (corpus / "01-plain.eml").read_bytes())
    inbox = Inbox(far)
    try:
        assert len(inbox.wait("carol", 1)) == 1
    finally:
        inbox.close()
    log = smtp_log(here)
    assert f"to=<carol@{REMOTE}>" in log and f"127.0.0.1]:{far.port('smtpd')}" in log and "status=sent" in log


def test_a_destination_that_is_down_does_not_hold_up_another(dns, receiver, sender, corpus):
    far, far_inbox = receiver
    dns.add(REMOTE, mx=[(10, f"mx.{REMOTE}")])
    dns.add(f"mx.{REMOTE}", a=far.address)
    dns.add("down.test", mx=[(10, "mx.down.test")])
    dns.add("mx.down.test", a=free_loopback())
    here = sender()
    for n in range(3):
        submit(here, [f"user{n}@down.test"], (corpus / "01-plain.eml").read_bytes())
    submit(here, [f"carol@{REMOTE}"], (corpus / "04-alternative.eml").read_bytes())
    assert len(far_inbox.wait("carol", 1, timeout=20)) == 1
    listed = wait_for(lambda: (out := here.mailctl("queue", "list", "@down.test", "--json").stdout) and
                      len(json.loads(out)) == 3 and json.loads(out), "the deferred mail listed")
    reasons = [r["reason"] for row in listed for r in row["recipients"]]
    assert all("connect to mx.down.test[" in reason for reason in reasons), reasons
    assert any(reason.startswith("delivery temporarily suspended: ") for reason in reasons)   # a dead destination
