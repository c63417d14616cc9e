"""Nexthops and MX resolution (workers/smtp/mx.py) against tests/dnsserver.py: preference
order with equal preferences shuffled, A then AAAA, implicit MX, null MX, NXDOMAIN,
SERVFAIL and silence, and [host] without MX lookup."""
from __future__ import annotations

import asyncio

import pytest

from tests.dnsserver import DNSServer
from workers.smtp.mx import Nexthop, Unroutable, parse_nexthop, resolve
from workers.smtpd.rbl import make_resolver


@pytest.fixture
def dns():
    with DNSServer() as server:
        server.add("example.test", mx=[(20, "mx3.example.test"), (10, "mx1.example.test"), (10, "mx2.example.test")])
        for n in (1, 2, 3):
            server.add(f"mx{n}.example.test", a=f"192.0.2.{n}")
        server.add("mx1.example.test", a=["192.0.2.1", "192.0.2.11"], aaaa="2001:db8::1")
        server.add("plain.test", a="192.0.2.50")
        server.add("nomail.test", mx=[(0, ".")])
        server.add("ghost.test", mx=[(10, "nowhere.test")])
        server.add("empty.test", txt="no addresses")
        server.fail("broken.test")
        server.silence("slow.test")
        yield server


def hosts(dns, nexthop: str, timeout: float = 5.0):
    resolver = make_resolver(("127.0.0.1", dns.port))
    return asyncio.run(resolve(parse_nexthop(nexthop), resolver, timeout))


def test_parse_nexthop():
    assert parse_nexthop("Example.ORG") == Nexthop("example.org", 25, True)
    assert parse_nexthop("example.org:587") == Nexthop("example.org", 587, True)
    assert parse_nexthop("[mx.example.org]") == Nexthop("mx.example.org", 25, False)
    assert parse_nexthop("[192.0.2.1]:2525") == Nexthop("192.0.2.1", 2525, False)
    assert parse_nexthop("[::1]:25") == Nexthop("::1", 25, False)
    for bad in ("", "a b", "[x", "x:99999"):
        with pytest.raises(ValueError):
            parse_nexthop(bad)


def test_mx_hosts_in_preference_order_equal_ones_shuffled(dns):
    orders = set()
    for _ in range(30):
        found = hosts(dns, "example.test:2525")
        names = [h.name for h in found]
        assert names[-1] == "mx3.example.test" and all(h.port == 2525 for h in found)
        orders.add(tuple(dict.fromkeys(names)))
    assert orders == {("mx1.example.test", "mx2.example.test", "mx3.example.test"),
                      ("mx2.example.test", "mx1.example.test", "mx3.example.test")}
    mx1 = [h.address for h in found if h.name == "mx1.example.test"]
    assert sorted(mx1[:2]) == ["192.0.2.1", "192.0.2.11"] and mx1[2] == "2001:db8::1"     # A, then AAAA
    assert found[-1].relay == "mx3.example.test[192.0.2.3]:2525"


def test_implicit_mx_and_no_mx_lookup_for_a_bracketed_host(dns):
    assert [h.relay for h in hosts(dns, "plain.test")] == ["plain.test[192.0.2.50]:25"]
    dns.queries.clear()
    assert [h.address for h in hosts(dns, "[mx2.example.test]:587")] == ["192.0.2.2"]
    assert ("mx2.example.test", "MX") not in dns.queries
    dns.queries.clear()
    assert [h.relay for h in hosts(dns, "[192.0.2.9]")] == ["192.0.2.9[192.0.2.9]:25"] and dns.queries == []


@pytest.mark.parametrize("nexthop, outcome, status, words", [
    ("nomail.test", "bounced", "5.1.10", "does not accept mail (nullMX)"),
    ("unknown.test", "bounced", "5.1.2", "Host or domain name not found"),
    ("[unknown.test]", "bounced", "5.1.2", "Host not found"),
    ("ghost.test", "bounced", "5.4.4", "name=nowhere.test"),
    ("empty.test", "bounced", "5.4.4", "no data record"),
    ("broken.test", "deferred", "4.4.3", "try again"),
    ("slow.test", "deferred", "4.4.3", "try again"),
])
def test_unroutable_destinations(dns, nexthop, outcome, status, words):
    with pytest.raises(Unroutable) as failure:
        hosts(dns, nexthop, timeout=0.5)
    assert (failure.value.outcome, failure.value.status) == (outcome, status)
    assert words in failure.value.text


def test_an_mx_named_myhostname_is_a_loop_or_cuts_the_backup_mxs(dns):
    resolver = make_resolver(("127.0.0.1", dns.port))
    dns.add("loop.test", mx=[(10, "mail.here.test"), (20, "mx3.example.test")])
    dns.add("backup.test", mx=[(10, "mx1.example.test"), (20, "mail.here.test"), (30, "mx3.example.test")])
    dns.add("mail.here.test", a="192.0.2.99")

    def found(nexthop):
        return asyncio.run(resolve(parse_nexthop(nexthop), resolver, 5.0, myself="mail.here.test"))
    for nexthop, domain in (("loop.test", "loop.test"), ("[mail.here.test]:25", "mail.here.test"),
                            ("mail.here.test", "mail.here.test")):     # the last: its implicit MX
        with pytest.raises(Unroutable) as e:
            found(nexthop)
        assert (e.value.outcome, e.value.status, e.value.text) == \
            ("bounced", "5.4.6", f"mail for {domain} loops back to myself")
    assert {h.name for h in found("backup.test")} == {"mx1.example.test"}    # we are the backup MX
    assert {h.name for h in hosts(dns, "loop.test")} == {"mail.here.test", "mx3.example.test"}   # not myself
