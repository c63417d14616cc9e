"""The remote transport: mail for other domains, handed to the smtp service (workers/smtp).

RemoteTransport(channel, relayhost): channel is a workers/_jsonlines.py Channel to the smtp
service's socket (remote_channel(log): master.cf's `smtp unix ... smtp`; None when master.cf
has none), relayhost main.cf's (host, port) or None.
Without an smtp service remote mail waits: every delivery is "unavailable" (REMOTE_PENDING),
stays deferred, is never warned about and never bounces, and nothing is marked done.
With it, deliver() queues the target; the targets of one queue file for one nexthop queued in
the same turn of the event loop (an attempt routes all its targets at once) go in one request
of the service's protocol (workers/smtp/service.py), that is one SMTP transaction with a RCPT
each. The nexthop is `[host]:port` of relayhost when set (no MX lookup, Postfix's
`[host]` form), else the recipient's domain (MX lookup). The DSN parameters go along: RET and
ENVID of the envelope, NOTIFY and ORCPT of the envelope recipient the target came from (an
alias expansion gets ORCPT rfc822;<original recipient> when it had none).
Outcome per recipient: the service's "sent" is delivered, "bounced" permanent, "deferred"
temporary; its relay text (host[ip]:port) goes into the log line. A service that cannot be
reached, that answers with an error or whose connection ends before the reply defers every
recipient of the request; it is never sent again at once, as the far side may have taken it
(the next attempt, after the back-off, may deliver a duplicate: the window Postfix has too).
A dead destination (Postfix's word): when no host of a nexthop could be talked to (every
recipient of a request deferred without an SMTP reply, with 4.4.1 "no connection" or 4.4.3
"DNS failure"; not a connection lost mid-message nor an unreadable queue file), the
nexthop's next deliveries for DEAD_TIME seconds are deferred at once with
that reason, without asking the service, so a site that is down is not hammered by each
of its queued files; the first delivery after that time tries again.
Not idempotent: qmgr marks each delivered target done at once.
Destination: the nexthop.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from master import proto
from store.resolve import Remote
from workers._jsonlines import Channel, Lost, Unreachable
from workers.qmgr.transports.base import Delivery, Outcome

REMOTE_PENDING = "remote delivery not built yet"
REPLY_MAX = 1024 * 1024        # a reply names every recipient of its request with the far side's text
DEAD_TIME = 60.0               # seconds a nexthop nobody could talk to is not tried again
UNREACHABLE = {"4.4.1", "4.4.3"}   # no connection to any host; DNS failing for the nexthop
_clock = time.monotonic


def remote_channel(log) -> Channel | None:
    """The channel to master.cf's smtp service, None when it has none."""
    path = proto.service_socket("smtp")
    return Channel(path, "smtp service", log, REPLY_MAX) if path else None


@dataclass
class _Waiting:
    delivery: Delivery
    future: asyncio.Future


class RemoteTransport:
    name = "remote"
    relay = "none"
    kind = Remote
    idempotent = False               # another system's acceptance cannot be taken back

    def __init__(self, channel: Channel | None, relayhost: tuple[str, int] | None):
        self.channel = channel
        self.relayhost = relayhost
        self._groups: dict[tuple[str, str], list[_Waiting]] = {}
        self._dead: dict[str, tuple[float, str]] = {}      # nexthop -> (until, reason)

    def key(self, target: Remote) -> str:
        return f"t:remote:{target.address}"

    def destination(self, target: Remote) -> str:
        return self.nexthop(target.address)

    def nexthop(self, address: str) -> str:
        if self.relayhost:
            host, port = self.relayhost
            return f"[{host}]:{port or 25}"
        return address.rpartition("@")[2].lower()

    def address(self, target: Remote, original: str) -> str:
        return target.address

    def describe(self, target: Remote) -> str:
        return ""

    async def deliver(self, delivery: Delivery) -> Outcome:
        if self.channel is None:
            return Outcome(False, False, "4.4.1", REMOTE_PENDING, unavailable=True)
        group_key = (delivery.queue_id, self.nexthop(delivery.target.address))
        dead = self._dead.get(group_key[1])
        if dead and dead[0] > _clock():
            return Outcome(False, False, "4.4.1", f"delivery temporarily suspended: {dead[1]}")
        group = self._groups.get(group_key)
        if group is None:
            group = self._groups[group_key] = []
            asyncio.get_running_loop().call_soon(self._send, group_key)
        future = asyncio.get_running_loop().create_future()
        group.append(_Waiting(delivery, future))
        return await future

    def _send(self, group_key: tuple[str, str]) -> None:
        group = self._groups.pop(group_key)
        asyncio.ensure_future(self._request(group_key[1], group))

    async def _request(self, nexthop: str, group: list[_Waiting]) -> None:
        first = group[0].delivery
        envelope = first.envelope
        request = {
            "queue_id": first.queue_id, "offset": first.message.offset, "size": first.message.size,
            "sender": first.sender, "ret": envelope.ret if envelope else None,
            "envid": envelope.envid if envelope else None, "body": envelope.body if envelope else None,
            "smtputf8": not all(a.isascii() for a in [first.sender, *(w.delivery.recipient for w in group)]),
            "nexthop": nexthop,
            "recipients": [_recipient(w.delivery) for w in group],
        }
        try:
            reply = await self.channel.ask(request)
            failure = f"smtp service: {str(reply['error'])[:200]}" if "error" in reply else ""
        except (Unreachable, Lost) as e:
            reply, failure = {}, str(e) or "the smtp service closed the connection"
        results = reply.get("results") if not failure else None
        if not failure and (not isinstance(results, list) or len(results) != len(group)):
            failure = "smtp service: bad reply"
        outcomes = [Outcome(False, False, "4.3.0", failure)] * len(group) if failure else [_outcome(r) for r in results]
        if not failure and all(r.get("outcome") == "deferred" and not r.get("code")
                               and str(r.get("status")) in UNREACHABLE for r in results):
            self._dead[nexthop] = (_clock() + DEAD_TIME, outcomes[0].detail)
        else:
            self._dead.pop(nexthop, None)
        for waiting, outcome in zip(group, outcomes):
            if not waiting.future.done():
                waiting.future.set_result(outcome)


def _recipient(delivery: Delivery) -> dict:
    rcpt = delivery.rcpt
    orcpt = rcpt.orcpt if rcpt else None
    if orcpt is None and delivery.original.lower() != delivery.recipient.lower():
        orcpt = f"rfc822;{delivery.original}"
    return {"address": delivery.recipient, "notify": rcpt.notify if rcpt else None, "orcpt": orcpt}


def _outcome(result: dict) -> Outcome:
    if not isinstance(result, dict):
        return Outcome(False, False, "4.3.0", "smtp service: bad reply")
    outcome = result.get("outcome")
    status = str(result.get("status") or "")
    text = str(result.get("text") or "")
    detail = text or (f"{result.get('code')}" if result.get("code") else "")   # Postfix's wording already
    relay = str(result.get("relay") or "")
    if outcome == "sent":
        return Outcome(True, status=status or "2.0.0", detail=detail, relay=relay)
    if outcome == "bounced":
        return Outcome(False, True, status or "5.0.0", detail, relay=relay)
    return Outcome(False, False, status or "4.0.0", detail or "deferred", relay=relay)
