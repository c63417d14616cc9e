"""The remote transport, a placeholder until there is an SMTP client: remote mail waits.

RemoteTransport().deliver() answers every delivery "unavailable" with REMOTE_PENDING: the
recipient stays deferred (retried after maximal_backoff_time when nothing else is pending),
is never warned about and never bounces. Nothing is marked done, so the remote delivery
happens once it exists. The target is not checked against Delivered-To: (relay "none":
not delivered here).
Destination: the recipient's domain.
"""
from __future__ import annotations

from store.resolve import Remote
from workers.qmgr.transports.base import Delivery, Outcome

REMOTE_PENDING = "remote delivery not built yet"


class RemoteTransport:
    name = "remote"
    relay = "none"
    kind = Remote
    idempotent = False               # another system's acceptance cannot be taken back

    def key(self, target: Remote) -> str:
        return f"t:remote:{target.address}"

    def destination(self, target: Remote) -> str:
        return target.address.rpartition("@")[2].lower()

    def address(self, target: Remote, original: str) -> str:
        return target.address

    def describe(self, target: Remote) -> str:
        return ""

    async def deliver(self, delivery: Delivery) -> Outcome:
        return Outcome(False, False, "4.4.1", REMOTE_PENDING, unavailable=True)
