"""mailctl dns check: each item's verdict and the record to publish, from a table of answers."""
from __future__ import annotations

from types import SimpleNamespace

import dns.exception
import dns.reversename

from master.ctl.dns import check_domain

HOST = "mail.example.test"
KEY = "v=DKIM1; k=rsa; p=MIIBIjANBgkq"


class Table:
    """A _Lookup stand-in: {(name, type): [values]}; a name under `down` times out."""

    def __init__(self, answers: dict, down: str = ""):
        self.answers = answers
        self.down = down

    def __call__(self, name: str, rdtype: str) -> list:
        if self.down and name.endswith(self.down):
            raise dns.exception.Timeout()
        values = self.answers.get((name.lower().rstrip("."), rdtype), [])
        if rdtype == "MX":
            return [SimpleNamespace(preference=p, exchange=e) for p, e in values]
        return list(values)

    def txt(self, name: str) -> list[str]:
        if self.down and name.endswith(self.down):
            raise dns.exception.Timeout()
        return self.answers.get((name.lower(), "TXT"), [])


def good_zone() -> dict:
    return {
        ("example.test", "MX"): [(10, HOST + ".")],
        (HOST, "A"): ["192.0.2.25"],
        (dns.reversename.from_address("192.0.2.25").to_text().rstrip("."), "PTR"): [HOST + "."],
        ("example.test", "TXT"): ["v=spf1 mx -all", "google-site-verification=x"],
        ("mail._domainkey.example.test", "TXT"): ["v=DKIM1; k=rsa; p=MIIB IjANBgkq"],
        ("_dmarc.example.test", "TXT"): ["v=DMARC1; p=quarantine"],
    }


def verdicts(items):
    return [(i["check"], i["status"]) for i in items]


PARAMS = SimpleNamespace(myhostname=HOST)


def test_a_domain_set_up_right_is_ok_everywhere():
    items = check_domain("example.test", PARAMS, Table(good_zone()), {"mail": KEY})
    assert verdicts(items) == [("address", "ok"), ("mx", "ok"), ("ptr", "ok"), ("spf", "ok"), ("dkim", "ok"),
                               ("dmarc", "ok")]


def test_what_is_missing_comes_with_the_record_to_publish():
    items = {i["check"]: i for i in check_domain("example.test", PARAMS, Table({(HOST, "A"): ["192.0.2.25"]}),
                                                  {"mail": KEY})}
    assert {k: v["status"] for k, v in items.items()} == {
        "address": "ok", "mx": "missing", "ptr": "missing", "spf": "missing", "dkim": "missing", "dmarc": "missing"}
    assert items["mx"]["publish"] == f"example.test. IN MX 10 {HOST}."
    assert items["spf"]["publish"] == 'example.test. IN TXT "v=spf1 mx -all"'
    assert items["dkim"]["publish"] == f'mail._domainkey.example.test. IN TXT "{KEY}"'
    assert items["ptr"]["publish"].startswith("25.2.0.192.in-addr.arpa. IN PTR mail.example.test.")


def test_wrong_records_are_named_wrong():
    zone = good_zone()
    zone[("example.test", "MX")] = [(10, "mx.elsewhere.test.")]
    zone[("example.test", "TXT")] = ["v=spf1 ip4:198.51.100.0/24 -all"]
    zone[("mail._domainkey.example.test", "TXT")] = ["v=DKIM1; k=rsa; p=OTHERKEY"]
    zone[(dns.reversename.from_address("192.0.2.25").to_text().rstrip("."), "PTR")] = ["host.isp.test."]
    assert verdicts(check_domain("example.test", PARAMS, Table(zone), {"mail": KEY})) == [
        ("address", "ok"), ("mx", "wrong"), ("ptr", "wrong"), ("spf", "wrong"), ("dkim", "wrong"), ("dmarc", "ok")]
    zone[("example.test", "MX")] = [(0, ".")]
    assert ("mx", "wrong") in verdicts(check_domain("example.test", PARAMS, Table(zone), {}))


def test_spf_by_address_or_through_include():
    zone = good_zone()
    zone[("example.test", "TXT")] = ["v=spf1 ip4:192.0.2.0/24 -all"]
    assert ("spf", "ok") in verdicts(check_domain("example.test", PARAMS, Table(zone), {}))
    zone[("example.test", "TXT")] = ["v=spf1 include:_spf.provider.test -all"]
    assert ("spf", "unverified") in verdicts(check_domain("example.test", PARAMS, Table(zone), {}))
    zone[("example.test", "TXT")] = ["v=spf1 mx -all", "v=spf1 a -all"]
    assert ("spf", "wrong") in verdicts(check_domain("example.test", PARAMS, Table(zone), {}))


def test_a_dns_server_that_does_not_answer_leaves_items_unverified():
    items = check_domain("example.test", PARAMS, Table(good_zone(), down="example.test"), {})
    assert verdicts(items) == [("address", "unverified"), ("mx", "unverified"), ("spf", "unverified"),
                               ("dmarc", "unverified")]
