"""DNS blocklists (smtpd_rbl_servers): is the client's address listed, and why?

lookup(ip, zones, resolver, timeout) -> Listing | None asks every zone at once for the
A record of the reversed address (`2.0.0.127.zone`, nibbles for IPv6) and, for a listed
address, the TXT record with the list's reason. make_resolver(dns_resolver) builds a
dnspython resolver for `host[:port]` (main.cf dns_resolver) or the system's settings.
A zone that answers NXDOMAIN / no data, or an A record outside 127.0.0.0/8 or in
127.255.255.0/24 (the lists' error codes), does not list the client. A zone that times out
or fails does not list it either (a broken blocklist must never stop mail); its failure is
appended to the caller's `failures` list for the log. Without a usable system resolver
configuration the resolver asks 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver
import dns.reversename

MAX_REASON = 200               # octets of TXT put into the reply
LISTING_CODES = ipaddress.ip_network("127.0.0.0/8")
ERROR_CODES = ipaddress.ip_network("127.255.255.0/24")


@dataclass(frozen=True)
class Listing:
    zone: str
    code: str                  # the A record, e.g. 127.0.0.2
    reason: str                # the TXT record, or "" when the zone has none


def make_resolver(hostport: tuple[str, int] | None) -> dns.asyncresolver.Resolver:
    if hostport is None:
        try:
            return dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            hostport = ("127.0.0.1", 53)
    host, port = hostport
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [socket.getaddrinfo(host, None)[0][4][0]]
    resolver.port = port or 53
    return resolver


def query_name(ip: str, zone: str) -> str:
    reversed_name = dns.reversename.from_address(ip).to_text(omit_final_dot=True)
    suffix = ".ip6.arpa" if ":" in ip else ".in-addr.arpa"
    return f"{reversed_name.removesuffix(suffix)}.{zone.strip('.')}."


def _is_listing_code(code: str) -> bool:
    """Lists answer 127.0.0.2-127.0.0.255 and the like; 127.255.255.x (Spamhaus: "you may not
    query us") and anything outside 127/8 are errors, which must not refuse everybody."""
    address = ipaddress.ip_address(code)
    return address in LISTING_CODES and address not in ERROR_CODES


def _clean(text: str) -> str:
    printable = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)
    return printable[:MAX_REASON]


async def _ask(resolver, ip: str, zone: str, timeout: float) -> Listing | None:
    name = query_name(ip, zone)
    try:
        answer = await resolver.resolve(name, "A", lifetime=timeout)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    code = answer[0].to_text()
    if not _is_listing_code(code):
        raise dns.exception.DNSException(f"answer {code} is no listing (a list's error code)")
    try:
        txt = await resolver.resolve(name, "TXT", lifetime=timeout)
        reason = " ".join(b"".join(r.strings).decode("ascii", "replace") for r in txt)
    except dns.exception.DNSException:
        reason = ""
    return Listing(zone, code, _clean(reason))


async def lookup(ip: str, zones: list[str], resolver, timeout: float,
                 failures: list[str] | None = None) -> Listing | None:
    """The first zone (in configured order) that lists ip; DNS failures go to `failures`."""
    if ip.lower().startswith("::ffff:"):
        ip = ip[7:]
    results = await asyncio.gather(*(_ask(resolver, ip, zone, timeout) for zone in zones),
                                   return_exceptions=True)
    for zone, result in zip(zones, results):
        if isinstance(result, Listing):
            return result
        if isinstance(result, BaseException):
            if not isinstance(result, (dns.exception.DNSException, OSError)):
                raise result
            if failures is not None:
                failures.append(f"{zone}: {type(result).__name__}: {result}"[:300])
    return None
