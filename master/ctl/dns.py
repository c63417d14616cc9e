"""mailctl dns check: what a domain needs in DNS for its mail to flow and to arrive.

    mailctl dns check DOMAIN [--json]

Asks DNS (main.cf `dns_resolver`, else the system's) and says, item by item, ok, missing,
wrong or unverified, with the record to publish where something is missing or wrong:
    mx      DOMAIN's MX names this host (myhostname, or a name with one of its addresses);
            a null MX (RFC 7505) is wrong: it says the domain takes no mail
    address myhostname has A/AAAA records (this host's addresses, used by the checks below)
    ptr     each of those addresses has a PTR naming myhostname (receivers check it)
    spf     DOMAIN has one `v=spf1` TXT record that lets this host send: `mx` (when the MX
            is ok), `a`/`a:myhostname`, or ip4:/ip6: covering its addresses; one that only
            reaches it through include: or redirect= is unverified (not followed)
    dkim    for every key `mailctl dkim keygen` made for DOMAIN: SELECTOR._domainkey.DOMAIN
            holds that key's public part
    dmarc   _dmarc.DOMAIN has a `v=DMARC1` record
Exit 0 when every item is ok or unverified, 1 otherwise (and on a bad domain name).
Diagnostics: a DNS server that does not answer makes the item "unverified" with the reason.
"""
from __future__ import annotations

import ipaddress
import json
import re
import socket

import dns.exception
import dns.resolver
import dns.reversename

from master.ctl import Refused
from master.ctl.dkim import list_keys

_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})+\.?")
TIMEOUT = 5.0


def register(sub) -> None:
    dns_parser = sub.add_parser("dns", help="check what a domain needs in DNS")
    actions = dns_parser.add_subparsers(dest="dns_action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="MX, addresses, PTR, SPF, DKIM and DMARC of a domain")
    check.add_argument("domain", metavar="DOMAIN")
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=cmd_check)


def resolver_for(params) -> dns.resolver.Resolver:
    if params.dns_resolver is None:
        resolver = dns.resolver.Resolver()
    else:
        host, port = params.dns_resolver
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [socket.getaddrinfo(host, None)[0][4][0]]
        resolver.port = port or 53
    resolver.lifetime = TIMEOUT
    return resolver


class _Lookup:
    """DNS answers as lists of text; NXDOMAIN and no-answer are empty, other failures raise."""

    def __init__(self, resolver: dns.resolver.Resolver):
        self.resolver = resolver

    def __call__(self, name: str, rdtype: str) -> list:
        try:
            return list(self.resolver.resolve(name, rdtype))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []

    def txt(self, name: str) -> list[str]:
        return [b"".join(r.strings).decode("utf-8", "replace") for r in self(name, "TXT")]


def _item(check: str, status: str, found: str, publish: str = "") -> dict:
    return {"check": check, "status": status, "found": found, "publish": publish}


def _name(text) -> str:
    return str(text).lower().rstrip(".")


def check_domain(domain: str, params, lookup: _Lookup, dkim_records: dict[str, str]) -> list[dict]:
    """The items for domain; dkim_records: {selector: TXT value} of the keys made for it."""
    host = _name(params.myhostname)
    items = []

    def guarded(check: str, publish: str, run):
        try:
            items.append(run())
        except dns.exception.DNSException as e:
            items.append(_item(check, "unverified", f"no answer from DNS: {type(e).__name__}", publish))

    addresses: list[str] = []

    def address() -> dict:
        addresses.extend(str(r) for rdtype in ("A", "AAAA") for r in lookup(host, rdtype))
        if addresses:
            return _item("address", "ok", f"{host}: {', '.join(addresses)}")
        return _item("address", "missing", f"{host} has no A or AAAA record", f"{host}. IN A <this host's address>")
    guarded("address", f"{host}. IN A <this host's address>", address)

    mx_ok = []

    def mx() -> dict:
        publish = f"{domain}. IN MX 10 {host}."
        records = sorted(lookup(domain, "MX"), key=lambda r: r.preference)
        if not records:
            return _item("mx", "missing", f"{domain} has no MX record", publish)
        names = [_name(r.exchange) for r in records]
        if names == [""]:
            return _item("mx", "wrong", f"{domain} has a null MX (it takes no mail)", publish)
        found = ", ".join(f"{r.preference} {_name(r.exchange)}" for r in records)
        ours = [n for n in names if n == host or
                {str(r) for t in ("A", "AAAA") for r in lookup(n, t)} & set(addresses)]
        if ours:
            mx_ok.append(True)
            return _item("mx", "ok", found)
        return _item("mx", "wrong", f"{found} (none is {host})", publish)
    guarded("mx", f"{domain}. IN MX 10 {host}.", mx)

    def ptr(ip: str):
        def run() -> dict:
            names = [_name(r) for r in lookup(dns.reversename.from_address(ip).to_text(), "PTR")]
            publish = f"{dns.reversename.from_address(ip).to_text()} IN PTR {host}. (at the address's provider)"
            if host in names:
                return _item("ptr", "ok", f"{ip} -> {host}")
            if names:
                return _item("ptr", "wrong", f"{ip} -> {', '.join(names)}", publish)
            return _item("ptr", "missing", f"{ip} has no PTR record", publish)
        return run
    for ip in addresses:
        guarded("ptr", "", ptr(ip))

    def spf() -> dict:
        publish = f'{domain}. IN TXT "v=spf1 mx -all"'
        records = [t for t in lookup.txt(domain) if t.lower().startswith("v=spf1")]
        if not records:
            return _item("spf", "missing", f"{domain} has no SPF record", publish)
        if len(records) > 1:
            return _item("spf", "wrong", f"{len(records)} SPF records (receivers treat that as an error)", publish)
        return _item("spf", *_spf_allows(records[0], host, addresses, bool(mx_ok)), publish)
    guarded("spf", f'{domain}. IN TXT "v=spf1 mx -all"', spf)

    for selector, value in sorted(dkim_records.items()):
        name = f"{selector}._domainkey.{domain}"

        def dkim(name=name, value=value) -> dict:
            publish = f'{name}. IN TXT "{value}"'
            found = lookup.txt(name)
            if not found:
                return _item("dkim", "missing", f"{name} has no record", publish)
            wanted = _dkim_key(value)
            if any(_dkim_key(t) == wanted for t in found):
                return _item("dkim", "ok", f"{name} holds the key")
            return _item("dkim", "wrong", f"{name} holds another key", publish)
        guarded("dkim", f'{name}. IN TXT "{value}"', dkim)

    def dmarc() -> dict:
        publish = f'_dmarc.{domain}. IN TXT "v=DMARC1; p=none; rua=mailto:postmaster@{domain}"'
        records = [t for t in lookup.txt(f"_dmarc.{domain}") if t.replace(" ", "").lower().startswith("v=dmarc1")]
        if records:
            return _item("dmarc", "ok", records[0])
        return _item("dmarc", "missing", f"_dmarc.{domain} has no DMARC record", publish)
    guarded("dmarc", f'_dmarc.{domain}. IN TXT "v=DMARC1; p=none"', dmarc)
    return items


def _spf_allows(record: str, host: str, addresses: list[str], mx_ok: bool) -> tuple[str, str]:
    """(status, found) for one SPF record: does it let this host send?"""
    terms = record.split()[1:]
    ips = [ipaddress.ip_address(a) for a in addresses]
    for term in terms:
        mechanism = term.lstrip("+").lower()
        if mechanism == "mx" and mx_ok:
            return "ok", f"{record} (mx)"
        if mechanism in ("a", f"a:{host}"):
            return "ok", f"{record} ({mechanism})"
        if mechanism.startswith(("ip4:", "ip6:")):
            try:
                network = ipaddress.ip_network(mechanism[4:], strict=False)
            except ValueError:
                continue
            if any(ip.version == network.version and ip in network for ip in ips):
                return "ok", f"{record} ({mechanism})"
    if any(t.lower().startswith(("include:", "redirect=")) for t in terms):
        return "unverified", f"{record} (include:/redirect= not followed)"
    return "wrong", f"{record} (does not allow {host})"


def _dkim_key(text: str) -> str:
    """The p= value of a DKIM key record, whitespace removed."""
    for tag in text.split(";"):
        name, _, value = tag.strip().partition("=")
        if name.strip() == "p":
            return "".join(value.split())
    return ""


def cmd_check(args, config) -> int:
    domain = args.domain.strip().lower().rstrip(".")
    if not _DOMAIN.fullmatch(domain):
        raise Refused(f"bad domain {args.domain!r}")
    records = {row["selector"]: row["record"] for row in list_keys(config.params, domain) if row["record"]}
    items = check_domain(domain, config.params, _Lookup(resolver_for(config.params)), records)
    if args.json:
        print(json.dumps(items, indent=2))
    else:
        width = max(len(i["check"]) for i in items)
        for i in items:
            print(f"{i['check']:<{width}}  {i['status']:<10}  {i['found']}")
            if i["publish"] and i["status"] in ("missing", "wrong"):
                print(f"{'':<{width}}  {'publish':<10}  {i['publish']}")
    return 0 if all(i["status"] in ("ok", "unverified") for i in items) else 1
