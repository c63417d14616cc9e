"""Outgoing mail end to end: a message accepted by one mailhouse (smtpd, qmgr and the smtp
service) for another domain reaches a second mailhouse on another 127.x address, found by MX
in a DNS server the test runs, or through relayhost; what cannot be delivered comes back to
the sender as a bounce; a destination that is down does not hold up another. TLS between the
two (STARTTLS at the encrypt and verify levels, port 465 wrapper mode), SMTP AUTH towards a
relayhost's submission port with a password file, and an MX pointing back at this host."""
from __future__ import annotations

import json
import os
import random
import smtplib
import socket

import pytest

from tests.dnsserver import DNSServer
from tests.integration.delivery_support import FAST_RETRIES, Inbox, parse, wait_queues_empty
from tests.integration.echo_client import wait_until

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


RELAY_ONLY_WITH_AUTH = ("-o", "smtpd_sasl_auth_enable=yes",
                        "-o", "smtpd_relay_restrictions=permit_sasl_authenticated,reject")


@pytest.fixture
def make_receiver(mailsystem):
    """make_receiver(tls=False) -> (system, inbox): the far side, a mailhouse for remote.test
    on port 25 of its own address, user carol (password carol-pw). tls: it has a certificate
    for mx.remote.test (`mailctl tls selfsigned`), offers STARTTLS, and has two more smtpd
    services on 127.0.0.1 that relay only for authenticated clients: "submission" (as
    etc/master.cf's 587 line) and "smtps" (wrapper mode, as its 465 line)."""
    inboxes = []

    def make(tls: bool = False):
        host = free_loopback()
        system = mailsystem(main={"myhostname": f"mx.{REMOTE}", "mydomain": REMOTE, **FAST_RETRIES})
        system.add_service("smtpd", name="smtpd", host=host, port=25)
        if tls:
            system.add_service("smtpd", *RELAY_ONLY_WITH_AUTH, name="submission")
            system.add_service("smtpd", "-o", "smtpd_tls_wrappermode=yes", *RELAY_ONLY_WITH_AUTH, name="smtps")
        system.add_unix_service("qmgr", wakeup=60)
        system.write_config()
        system.mailctl("user", "add", "carol", "--password", "carol-pw")
        if tls:
            system.mailctl("tls", "selfsigned", "--hostname", f"mx.{REMOTE}")
        system.start()
        system.address = host
        inboxes.append(Inbox(system))
        return system, inboxes[-1]
    yield make
    for inbox in inboxes:
        inbox.close()


@pytest.fixture
def receiver(make_receiver):
    """The far side without TLS (make_receiver())."""
    return make_receiver()


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
    return wait_until(predicate, timeout, what)


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
    """The first message to a site that is down marks it dead: the next ones to it are
    deferred at once without a connection, while mail for another site flows."""
    far, far_inbox = receiver
    dns.add(REMOTE, mx=[(10, f"mx.{REMOTE}")])
    dns.add(f"mx.{REMOTE}", a=far.address)
    dns.add("down.test", mx=[(10, "mx.down.test")])
    dns.add("mx.down.test", a=free_loopback())
    here = sender()
    submit(here, ["user0@down.test"], (corpus / "01-plain.eml").read_bytes())
    # the reason of its first try (its retry a second later may already find the site suspended)
    first = queued_reasons(here, "@down.test")[0].removeprefix("delivery temporarily suspended: ")
    assert first.startswith("connect to mx.down.test[")
    for n in (1, 2):
        submit(here, [f"user{n}@down.test"], (corpus / "01-plain.eml").read_bytes())
    submit(here, [f"carol@{REMOTE}"], (corpus / "04-alternative.eml").read_bytes())
    assert len(far_inbox.wait("carol", 1, timeout=20)) == 1
    reasons = queued_reasons(here, "@down.test", count=3)
    suspended = f"delivery temporarily suspended: {first}"
    assert set(reasons) <= {first, suspended} and reasons.count(suspended) >= 2, reasons


def queued_reasons(system, search: str, count: int = 1) -> list[str]:
    """The reasons `mailctl queue list --json` gives for the mail matching search, once all
    count messages of it are in deferred/."""
    listed = wait_for(lambda: (out := system.mailctl("queue", "list", search, "--json").stdout) and
                      len(rows := json.loads(out)) == count and all(row["queue"] == "deferred" for row in rows)
                      and all(r.get("reason") for row in rows for r in row["recipients"]) and rows,
                      "the deferred mail listed")
    return [r["reason"] for row in listed for r in row["recipients"]]


def top_received(raw: bytes) -> str:
    return parse(raw)["Received"]          # the first one: the receiver's own


def password_file(tmp_path, text: str):
    path = tmp_path / "sasl_passwd"
    path.write_text(text)
    os.chmod(path, 0o600)
    return str(path)


def test_starttls_at_the_encrypt_level_reaches_the_receiver_over_tls(dns, make_receiver, sender, corpus):
    far, far_inbox = make_receiver(tls=True)
    dns.add(REMOTE, mx=[(10, f"mx.{REMOTE}")])
    dns.add(f"mx.{REMOTE}", a=far.address)
    here = sender(smtp_tls_security_level="encrypt")
    submit(here, [f"carol@{REMOTE}"], (corpus / "01-plain.eml").read_bytes())
    [arrived] = far_inbox.wait("carol", 1)
    assert " with ESMTPS" in top_received(arrived) and "(using TLSv1." in top_received(arrived)
    assert "status=sent" in smtp_log(here)


def test_verify_delivers_with_the_receivers_certificate_as_ca_and_defers_without(dns, make_receiver, sender,
                                                                                   corpus):
    far, far_inbox = make_receiver(tls=True)
    dns.add(REMOTE, mx=[(10, f"mx.{REMOTE}")])
    dns.add(f"mx.{REMOTE}", a=far.address)
    trusting = sender(smtp_tls_security_level="verify", smtp_tls_ca_file=str(far.var / "tls" / "cert.pem"))
    submit(trusting, [f"carol@{REMOTE}"], (corpus / "01-plain.eml").read_bytes())
    [arrived] = far_inbox.wait("carol", 1)
    assert " with ESMTPS" in top_received(arrived)
    doubting = sender(smtp_tls_security_level="verify")            # the system's CAs: self-signed fails
    submit(doubting, [f"carol@{REMOTE}"], (corpus / "04-alternative.eml").read_bytes())
    [reason] = queued_reasons(doubting, f"@{REMOTE}")
    assert reason.startswith(f"Cannot start TLS with mx.{REMOTE}[{far.address}]: handshake failed: "), reason
    assert "certificate" in reason
    assert len(far_inbox.messages("carol")) == 1


def test_relayhost_submission_port_with_auth_relays_what_it_refuses_without(make_receiver, sender, corpus,
                                                                            tmp_path):
    far, _ = make_receiver(tls=True)
    port = far.port("submission")
    relayhost = f"[127.0.0.1]:{port}"
    passwords = password_file(tmp_path, f"# the relay\n{relayhost} carol:carol-pw\n")
    here = sender(relayhost=relayhost, smtp_sasl_auth_enable="yes", smtp_sasl_password_maps=passwords)
    assert "1 entries" in here.mailctl("sasl-passwords", "check").stdout
    submit(here, ["dave@elsewhere.test"], (corpus / "01-plain.eml").read_bytes())
    wait_for(lambda: "to=<dave@elsewhere.test>" in smtp_log(here) and "status=sent" in smtp_log(here), "sent")
    taken = wait_for(lambda: (out := far.mailctl("queue", "list", "@elsewhere.test", "--json").stdout)
                     and json.loads(out), "the relayed mail in the receiver's queue")
    assert [r["address"] for row in taken for r in row["recipients"]] == ["dave@elsewhere.test"]
    assert f"relay=127.0.0.1[127.0.0.1]:{port}" in smtp_log(here)
    assert "authenticated as carol with SCRAM-SHA-256" in smtp_log(here)     # after STARTTLS (level may)
    # The same without the password: the receiver refuses to relay (554 5.7.1), the mail bounces.
    anonymous = sender(relayhost=relayhost)
    submit(anonymous, ["dave@elsewhere.test"], (corpus / "01-plain.eml").read_bytes())
    line = wait_for(lambda: next((l for l in smtp_log(anonymous).splitlines()
                                  if "to=<dave@elsewhere.test>" in l and "status=" in l), ""), "the outcome")
    assert "status=bounced" in line and "554 5.7.1 Relay access denied (in reply to RCPT TO command)" in line


def test_a_wrong_password_defers_with_the_receivers_535(make_receiver, sender, corpus, tmp_path):
    far, _ = make_receiver(tls=True)
    relayhost = f"[127.0.0.1]:{far.port('submission')}"
    here = sender(relayhost=relayhost, smtp_sasl_auth_enable="yes",
                  smtp_sasl_password_maps=password_file(tmp_path, "[127.0.0.1] carol:wrong\n"))
    submit(here, ["dave@elsewhere.test"], (corpus / "01-plain.eml").read_bytes())
    [reason] = queued_reasons(here, "@elsewhere.test")
    assert reason.startswith("SASL authentication failed; server 127.0.0.1[127.0.0.1] said: 535 "), reason


def test_a_password_file_others_may_read_is_not_used(make_receiver, sender, corpus, tmp_path):
    far, _ = make_receiver(tls=True)
    relayhost = f"[127.0.0.1]:{far.port('submission')}"
    passwords = password_file(tmp_path, f"{relayhost} carol:carol-pw\n")
    os.chmod(passwords, 0o644)
    here = sender(relayhost=relayhost, smtp_sasl_auth_enable="yes", smtp_sasl_password_maps=passwords)
    submit(here, ["dave@elsewhere.test"], (corpus / "01-plain.eml").read_bytes())
    [reason] = queued_reasons(here, "@elsewhere.test")
    assert "refused: others may access it (mode 0644)" in reason
    assert f"smtp_sasl_password_maps {passwords}: refused: others may access it" in smtp_log(here)
    assert here.mailctl("sasl-passwords", "check", check=False).returncode == 1


def test_wrapper_mode_relays_over_tls_from_the_first_byte_with_auth(make_receiver, sender, corpus, tmp_path):
    far, _ = make_receiver(tls=True)
    relayhost = f"[127.0.0.1]:{far.port('smtps')}"
    here = sender(relayhost=relayhost, smtp_tls_wrappermode="yes", smtp_sasl_auth_enable="yes",
                  smtp_sasl_password_maps=password_file(tmp_path, f"{relayhost} carol:carol-pw\n"))
    submit(here, ["dave@elsewhere.test"], (corpus / "01-plain.eml").read_bytes())
    taken = wait_for(lambda: (out := far.mailctl("queue", "list", "@elsewhere.test", "--json").stdout)
                     and json.loads(out), "the relayed mail in the receiver's queue")
    shown = wait_for(lambda: far.mailctl("queue", "show", taken[0]["id"], check=False).stdout, "queue show")
    assert " with ESMTPSA" in shown and "(authenticated sender: carol)" in shown
    assert "status=sent" in smtp_log(here)


def test_an_mx_pointing_at_myhostname_bounces_as_a_loop(dns, sender, corpus):
    dns.add("loop.test", mx=[(10, "mail.here.test")])
    dns.add("mail.here.test", a="127.0.0.1")
    here = sender(myhostname="mail.here.test")
    submit(here, ["someone@loop.test"], (corpus / "01-plain.eml").read_bytes())
    line = wait_for(lambda: next((l for l in smtp_log(here).splitlines()
                                  if "to=<someone@loop.test>" in l and "status=" in l), ""), "the outcome")
    assert "status=bounced (mail for loop.test loops back to myself)" in line
    assert ("mail.here.test", "A") not in dns.queries              # no connection was tried
