"""smtpd_rbl_servers through the real master, against a DNS server the test runs (tests/dnsserver.py).

A listed client is refused at RCPT with 554 5.7.1 and the list's TXT; an unlisted one is
served; a blocklist that does not answer (timeout) never stops mail. mynetworks is set
so that the test clients (127.0.0.2 ...) are outside it: mynetworks clients are exempt, and
mail for postmaster is taken from a listed client too.
"""
from __future__ import annotations

import smtplib

import pytest

from tests.dnsserver import DNSServer
from tests.integration.delivery_support import delivery_system, inboxes, smtpd_port, write_aliases  # noqa: F401
from tests.integration.smtpd_support import client, queued, smtp_system

pytestmark = pytest.mark.integration

REASON = "Listed by bl.test, see https://bl.test/lookup?127.0.0.2"


@pytest.fixture
def dns_server():
    with DNSServer() as server:
        server.add("2.0.0.127.bl.test", a="127.0.0.2", txt=REASON)
        server.silence("slow.test")
        server.add("5.0.0.127.refusing.test", a="127.255.255.254", txt="public resolvers may not query")
        yield server


def rbl_system(mailsystem, dns_server, zones: str, mynetworks: str = "127.0.0.1/32"):
    return smtp_system(mailsystem, {"luser_relay": "catchall@elsewhere.example", "mynetworks": mynetworks,
                                    "smtpd_rbl_servers": zones, "smtpd_rbl_timeout": "1s",
                                    "dns_resolver": f"127.0.0.1:{dns_server.port}"}, tls=False)


def send(port: int, source: str) -> None:
    with client(port, source=source) as smtp:
        smtp.sendmail("alice@remote.example", ["bob@example.test"], b"Subject: rbl\r\n\r\nhi\r\n")


def test_listed_client_is_refused_with_the_lists_reason(mailsystem, dns_server):
    system, port = rbl_system(mailsystem, dns_server, "bl.test")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(port, "127.0.0.2")
    code, text = refused.value.recipients["bob@example.test"]
    assert code == 554
    assert text.decode() == f"5.7.1 Service unavailable; client host [127.0.0.2] blocked using bl.test; {REASON}"
    assert ("2.0.0.127.bl.test", "A") in dns_server.queries
    assert queued(system) == []
    system.wait_for_log("smtp", "blocked using bl.test")


def test_unlisted_client_and_a_silent_list_do_not_stop_mail(mailsystem, dns_server):
    system, port = rbl_system(mailsystem, dns_server, "slow.test refusing.test bl.test")
    send(port, "127.0.0.5")      # unlisted in bl.test, slow.test times out, refusing.test answers an error code
    assert ("5.0.0.127.bl.test", "A") in dns_server.queries
    assert ("5.0.0.127.slow.test", "A") in dns_server.queries
    assert len(queued(system)) == 1
    system.wait_for_log("smtp", "DNS blocklist lookup failed: slow.test")
    system.wait_for_log("smtp", "DNS blocklist lookup failed: refusing.test")


def test_mynetworks_clients_are_not_checked_against_the_list(mailsystem, dns_server):
    system, port = rbl_system(mailsystem, dns_server, "bl.test", mynetworks="127.0.0.0/8")
    send(port, "127.0.0.2")
    assert len(queued(system)) == 1


def test_postmaster_takes_mail_from_a_listed_client_and_gets_it_through_the_alias(mailsystem, dns_server, inboxes):
    """RFC 5321 4.5.1: postmaster is reachable even from a blocklisted host (to complain about it)."""
    system = delivery_system(mailsystem, smtpd=True, users={"bob": ()}, main={
        "mynetworks": "127.0.0.1/32", "smtpd_rbl_servers": "bl.test", "smtpd_rbl_timeout": "1s",
        "dns_resolver": f"127.0.0.1:{dns_server.port}"})
    write_aliases(system, "postmaster: bob\n")
    system.start()
    with client(smtpd_port(system), source="127.0.0.2") as smtp:
        refused = smtp.sendmail("alice@remote.example", ["postmaster@mail.example.test", "Postmaster",
                                                         "bob@example.test"], b"Subject: about your list\r\n\r\nhi\r\n")
    assert list(refused) == ["bob@example.test"] and refused["bob@example.test"][0] == 554
    delivered = inboxes(system).wait("bob", 1)
    assert delivered and all(b"Subject: about your list" in raw for raw in delivered)
