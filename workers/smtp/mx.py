"""Where a nexthop's mail goes: the addresses to try, in order (RFC 5321 section 5).

parse_nexthop(text) -> Nexthop: "example.org" and "example.org:587" look up MX records;
    "[mx.example.org]", "[192.0.2.1]:587" and "[::1]:25" name the host itself (no MX
    lookup); the port is 25 unless given.
await resolve(nexthop, resolver, timeout) -> list[Host], the addresses to try in order:
    MX records sorted by preference, equal preferences shuffled; for each MX host its A then
    AAAA addresses; no MX records: the domain's own addresses (the implicit MX); at most
    ADDRESS_LIMIT addresses in all.
    Raises Unroutable(outcome, status, text), which applies to every recipient:
      null MX (RFC 7505: the single record "0 .")          bounced 5.1.10
      NXDOMAIN for the domain                              bounced 5.1.2
      a name with no address records (all hosts)           bounced 5.4.4
      SERVFAIL, timeouts, no answer from the name servers  deferred 4.4.3
The resolver is workers/smtpd/rbl.py make_resolver's (main.cf dns_resolver, else the system's).
    Mail loops (myself: myhostname): an MX host, a `[host]` nexthop or a domain reached at its
    own address that is named myhostname is this system; as the best MX (or the only host)
    that is Unroutable bounced 5.4.6 "mail for DOMAIN loops back to myself"; as a worse MX
    only the better MX hosts are tried (Postfix's backup MX). Addresses are not compared
    (the smtp client also recognises a host answering EHLO with myhostname, client.py).
"""
from __future__ import annotations

import asyncio
import ipaddress
import random
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.resolver

from master.params import parse_hostport

SMTP_PORT = 25
ADDRESS_LIMIT = 10             # addresses tried for one delivery, over all MX hosts


class Unroutable(Exception):
    """No host to try: the outcome ("bounced" or "deferred") of every recipient, and why."""

    def __init__(self, outcome: str, status: str, text: str):
        super().__init__(text)
        self.outcome = outcome
        self.status = status
        self.text = text


@dataclass(frozen=True)
class Nexthop:
    host: str                  # a domain (MX lookup), a host name or an address literal
    port: int
    mx: bool                   # look up MX records of host


@dataclass(frozen=True)
class Host:
    name: str                  # the MX host name (TLS verification, the relay text)
    address: str
    port: int

    @property
    def relay(self) -> str:
        return f"{self.name}[{self.address}]:{self.port}"


def parse_nexthop(text: str) -> Nexthop:
    """ValueError when text is no nexthop."""
    parsed = parse_hostport(text)
    if parsed is None:
        raise ValueError("empty nexthop")
    host, port = parsed
    if not host.strip() or any(c.isspace() for c in host):
        raise ValueError(f"bad nexthop {text!r}")
    return Nexthop(host.lower().rstrip("."), port or SMTP_PORT, not text.strip().startswith("["))


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _not_found(name: str, kind: str, permanent: bool) -> str:
    why = "Host not found" if permanent else "Host not found, try again"
    return f"Host or domain name not found. Name service error for name={name} type={kind}: {why}"


class _Lookup:
    """One resolve(): the resolver, its timeout and whether any failure was temporary."""

    def __init__(self, resolver, timeout: float):
        self.resolver = resolver
        self.timeout = timeout
        self.temporary = ""     # the text of the last temporary failure
        self.permanent = ""     # ... and of the last permanent one
        self.status = "5.1.2"   # the permanent one's: 5.1.2 no such name, 5.4.4 no address

    async def records(self, name: str, kind: str) -> list | None:
        """The records; [] for none of that type; None for NXDOMAIN (text kept) or a failure."""
        try:
            return list(await self.resolver.resolve(name, kind, lifetime=self.timeout))
        except dns.resolver.NoAnswer:
            return []
        except dns.resolver.NXDOMAIN:
            self.permanent = _not_found(name, kind, True)
            return None
        except (dns.exception.DNSException, OSError):      # SERVFAIL, timeout, no name server
            self.temporary = _not_found(name, kind, False)
            return None

    async def addresses(self, name: str, port: int) -> list[Host]:
        found = await asyncio.gather(self.records(name, "A"), self.records(name, "AAAA"))
        hosts = [Host(name, r.address, port) for records in found for r in records or ()]
        if not hosts and found[0] is not None and found[1] is not None:
            self.permanent = (f"Host or domain name not found. Name service error for name={name} "
                              f"type=A: Host found but no data record of requested type")
            self.status = "5.4.4"
        return hosts


def looping(domain: str) -> Unroutable:
    return Unroutable("bounced", "5.4.6", f"mail for {domain} loops back to myself")


async def resolve(nexthop: Nexthop, resolver, timeout: float, myself: str = "") -> list[Host]:
    literal = _literal(nexthop.host)
    if literal is not None:
        return [Host(literal, literal, nexthop.port)]
    lookup = _Lookup(resolver, timeout)
    if not nexthop.mx:
        names = [nexthop.host]
    else:
        records = await lookup.records(nexthop.host, "MX")
        if records is None:
            if lookup.temporary:
                raise Unroutable("deferred", "4.4.3", lookup.temporary)
            raise Unroutable("bounced", "5.1.2", lookup.permanent)
        names = _mx_order(nexthop.host, records, myself)
    if myself and names == [myself]:                   # [myhostname], or myhostname's implicit MX
        raise looping(nexthop.host)
    hosts: list[Host] = []
    for name in names:                                 # one after the other: few need more than one
        hosts += await lookup.addresses(name, nexthop.port)
        if len(hosts) >= ADDRESS_LIMIT:
            return hosts[:ADDRESS_LIMIT]
    if hosts:
        return hosts
    if lookup.temporary:
        raise Unroutable("deferred", "4.4.3", lookup.temporary)
    if names != [nexthop.host]:
        lookup.status = "5.4.4"                        # the domain exists; its MX hosts do not
    raise Unroutable("bounced", lookup.status, lookup.permanent)


def _mx_order(domain: str, records: list, myself: str = "") -> list[str]:
    """The MX host names in the order to try; [domain] without MX records; Unroutable for a
    null MX, or when myself (myhostname) is the best MX. When myself is a worse MX, only the
    better ones are kept (we are a backup MX: mail goes to the primary)."""
    if not records:
        return [domain]
    if len(records) == 1 and records[0].exchange == dns.name.root:
        raise Unroutable("bounced", "5.1.10", f"Domain {domain} does not accept mail (nullMX)")
    by_preference: dict[int, list[str]] = {}
    for record in records:
        if record.exchange != dns.name.root:
            by_preference.setdefault(record.preference, []).append(
                record.exchange.to_text(omit_final_dot=True).lower())
    names: list[str] = []
    for preference in sorted(by_preference):
        group = by_preference[preference]
        if myself and myself in group:
            if not names:
                raise looping(domain)
            break
        random.shuffle(group)
        names += [name for name in group if name not in names]
    return names
