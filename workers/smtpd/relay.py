"""Who may send mail where: relay control and the checks of local recipients.

Policy(params) holds what the decisions need from main.cf (mydestination, mynetworks,
smtpd_relay_restrictions, smtpd_refused_hosts).
  policy.host_refused(ip)                 -> bool (smtpd_refused_hosts)
  policy.is_local(address)                -> bool (a local domain: store.directory.LocalDomains)
  policy.is_postmaster(address)           -> bool (postmaster of a local domain, RFC 5321 4.5.1)
  policy.relay_check(ip, authenticated, address) -> Reply | None (None = allowed)
  policy.recipient_check(address, directory, declared_size) -> Reply | None
Mail for a local domain is always accepted by the relay check (the recipient check decides
about the user). For any other domain the restrictions are evaluated in order; the first
permit_* that matches allows relaying, reject / reject_unauth_destination refuse it with
`554 5.7.1 Relay access denied`, and falling off the end of the list refuses too, so that no
configuration becomes an open relay by omission.

directory is the recipient table: the store's resolver (store.resolve.Resolver, whose
verify() runs the resolution qmgr delivers with), or a fake in the unit tests. Its failure
becomes the reply: unknown 550 5.1.1, disabled 550 5.2.1, over quota 452 4.2.2, larger
than the whole quota 552 5.2.2, any other (an alias loop) 550 with the status and reason.
"""
from __future__ import annotations

from typing import Protocol

from master.params import in_networks
from store.directory import Failed, LocalDomains
from workers.smtpd import replies as R

REFUSALS = {"5.1.1": R.USER_UNKNOWN, "5.2.1": R.MAILBOX_DISABLED, "5.2.2": R.OVER_QUOTA_PERM,
            "4.2.2": R.OVER_QUOTA_TEMP}


class Directory(Protocol):
    def verify(self, address: str, size: int = 0) -> Failed | None: ...


class Policy:
    def __init__(self, params):
        self.domains = LocalDomains(params)
        self.mynetworks = params.mynetworks
        self.refused_hosts = params.smtpd_refused_hosts
        self.restrictions = params.smtpd_relay_restrictions       # validated by master/params.py

    def host_refused(self, ip: str) -> bool:
        return in_networks(ip, self.refused_hosts)

    def is_local(self, address: str) -> bool:
        return self.domains.is_local(address)

    def is_postmaster(self, address: str) -> bool:
        """`postmaster` or `postmaster@` a local domain, in any case (RFC 5321 4.5.1)."""
        return self.domains.local_part(address) == "postmaster"

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
        """For a local address: would a delivery find someone to take it, with room for it?"""
        failure = directory.verify(address, declared_size or 0)
        if failure is None:
            return None
        return REFUSALS.get(failure.status) or R.Reply(550 if failure.permanent else 450,
                                                       f"{failure.status} Recipient address rejected: {failure.reason}")
