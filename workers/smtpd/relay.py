"""Who may send mail where: relay control and the checks of local recipients.

Policy(params) holds what the decisions need from main.cf (mydestination, mynetworks,
smtpd_relay_restrictions, smtpd_refused_hosts, luser_relay).
  policy.host_refused(ip)                 -> bool (smtpd_refused_hosts)
  policy.is_local(address)                -> bool (its domain is in mydestination)
  policy.is_postmaster(address)           -> bool (postmaster of a local domain, RFC 5321 4.5.1)
  policy.relay_check(ip, authenticated, address) -> Reply | None (None = allowed)
  policy.recipient_check(address, directory, declared_size) -> Reply | None
Mail for a local domain is always accepted by the relay check (the recipient check decides
about the user). For any other domain the restrictions are evaluated in order; the first
permit_* that matches allows relaying, reject / reject_unauth_destination refuse it with
`554 5.7.1 Relay access denied`, and falling off the end of the list refuses too, so that no
configuration becomes an open relay by omission.

directory is anything with user(name) -> UserState | None and is_alias(name) -> bool
(backend.StoreDirectory in the worker, a fake in the unit tests).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from master.params import in_networks
from workers.smtpd import replies as R

@dataclass(frozen=True)
class UserState:
    enabled: bool
    quota: int              # bytes, 0 = unlimited
    used: int               # bytes in the mailbox store now


class Directory(Protocol):
    def user(self, name: str) -> UserState | None: ...
    def is_alias(self, name: str) -> bool: ...


def split_address(address: str) -> tuple[str, str]:
    """`Bob@Example.org` -> ("Bob", "example.org"); `postmaster` -> ("postmaster", "")."""
    local, _, domain = address.rpartition("@")
    return (local, domain.lower()) if local else (address, "")


class Policy:
    def __init__(self, params):
        self.local_domains = {d.lower().rstrip(".") for d in params.mydestination}
        self.mynetworks = params.mynetworks
        self.refused_hosts = params.smtpd_refused_hosts
        self.restrictions = params.smtpd_relay_restrictions       # validated by master/params.py
        self.luser_relay = params.luser_relay

    def host_refused(self, ip: str) -> bool:
        return in_networks(ip, self.refused_hosts)

    def is_local(self, address: str) -> bool:
        _, domain = split_address(address)
        return domain == "" or domain in self.local_domains

    def is_postmaster(self, address: str) -> bool:
        """`postmaster` or `postmaster@` a local domain, in any case (RFC 5321 4.5.1)."""
        local, _ = split_address(address)
        return local.lower() == "postmaster" and self.is_local(address)

    def relay_check(self, ip: str, authenticated: bool, address: str) -> R.Reply | None:
        if self.is_local(address):
            return None
        for restriction in self.restrictions:
            if restriction == "permit_mynetworks" and in_networks(ip, self.mynetworks):
                return None
            if restriction == "permit_sasl_authenticated" and authenticated:
                return None
            if restriction in ("reject_unauth_destination", "reject"):
                return R.RELAY_DENIED
        return R.RELAY_DENIED

    def recipient_check(self, address: str, directory: Directory, declared_size: int | None) -> R.Reply | None:
        """For a local address: is there someone to take it, and room for the message?"""
        local, _ = split_address(address)
        name = local.lower()
        if directory.is_alias(name):
            return None                          # the queue manager expands it (and bounces loops)
        state = directory.user(name)
        if state is None:
            return None if self.luser_relay else R.USER_UNKNOWN
        if not state.enabled:
            return R.MAILBOX_DISABLED
        if state.quota:
            size = declared_size or 0
            if size > state.quota:
                return R.OVER_QUOTA_PERM
            if state.used + size > state.quota or state.used >= state.quota:
                return R.OVER_QUOTA_TEMP
        return None
