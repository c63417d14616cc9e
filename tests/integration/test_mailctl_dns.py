"""`mailctl dns check` as the real command, against a DNS server the test runs: a domain set
up right (its DKIM record the one `mailctl dkim keygen` printed) is ok everywhere, exit 0;
one that is not gets the records to publish, exit 1."""
from __future__ import annotations

import json
import re

import dns.reversename
import pytest

from tests.dnsserver import DNSServer

HOST = "mail.example.test"


@pytest.fixture
def dns_server():
    with DNSServer() as server:
        yield server


def test_dns_check_against_a_real_dns_server(mailsystem, dns_server):
    ms = mailsystem(main={"dns_resolver": f"127.0.0.1:{dns_server.port}", "myhostname": HOST})
    ms.write_config()
    printed = ms.mailctl("dkim", "keygen", "example.test", "--type", "ed25519").stdout
    value = "".join(re.findall(r'"([^"]*)"', printed))
    dns_server.add("example.test", mx=[(10, HOST)], txt=["v=spf1 mx -all", "another=thing"])
    dns_server.add(HOST, a="192.0.2.25")
    dns_server.add(dns.reversename.from_address("192.0.2.25").to_text(), ptr=HOST)
    dns_server.add("mail._domainkey.example.test", txt=value)
    dns_server.add("_dmarc.example.test", txt="v=DMARC1; p=none")
    done = ms.mailctl("dns", "check", "example.test", "--json")
    assert {i["check"]: i["status"] for i in json.loads(done.stdout)} == {
        "address": "ok", "mx": "ok", "ptr": "ok", "spf": "ok", "dkim": "ok", "dmarc": "ok"}

    bare = ms.mailctl("dns", "check", "other.test", check=False)     # nothing published for it
    assert bare.returncode == 1
    assert "publish     other.test. IN MX 10 mail.example.test." in bare.stdout
    assert '_dmarc.other.test. IN TXT "v=DMARC1' in bare.stdout
    refused = ms.mailctl("dns", "check", "not a domain", check=False)
    assert refused.returncode == 1 and "bad domain" in refused.stderr
