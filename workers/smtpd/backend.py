"""What an SMTP session needs from the rest of the system, behind one small object.

Backend(params) is built once per worker process and shared by its sessions; it opens the
process's store (store.handle.Store) and hands out its parts:
    open_message(sign) -> store.queue.QueueWriter into incoming/ (write / commit / abort);
                                   sign=True: its commit adds the DKIM signature when a key
                                   applies (workers/smtpd/dkim.py; dkim_signing)
    wake_qmgr()                    one byte into the queue manager's FIFO, at the next turn
                                   of the event loop: one for all the messages queued in a turn
    disk_low() -> bool             the master's run/lowspace flag (master/proto.py)
    tls_available() -> bool        a usable certificate and key (workers/_tls.py)
    directory                      the recipient table: the store's resolver, whose
                                   verify(address, size) is what qmgr delivers by
    sasl_server(name)              a workers/_auth.py SaslServer: its checks go to the auth
                                   service (or this process's verifier threads), which also
                                   refuses a disabled account (a failed step)
    await rbl_lookup(ip, zones) -> (Listing | None, [failure, ...])
    flow                           the InFlow gate (Postfix's in_flow_delay): `await
                                   flow.pause()` before MAIL is answered, flow.committed()
                                   after each message queued
The unit tests give the session a fake with the same members instead.

InFlow: while incoming/ holds in_flow_queue_limit messages or more (the queue manager is
behind, or not running), every new transaction waits in_flow_delay seconds before its MAIL
FROM is answered, so that acceptance does not outrun delivery for long (0 = never). The
depth is counted in a thread (Queue.incoming_depth: a directory scan), at most once per
FLOW_RECOUNT seconds and one count at a time for all sessions; in between, this process's
own commits are added to the last count. smtp.log says once when the delay starts and once
when it ends.
Diagnostics: StorageError from the queue, the user database or the alias map reaches the
session as a temporary error; smtp.log has InFlow's episodes and a failed count (an error:
the last depth stays in use).
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable

from master import proto
from store.handle import Store
from store.queue import QueueWriter, wake_qmgr
from workers import _tls
from workers._auth import Authenticator, SaslServer
from workers._log import Log
from workers.smtpd import rbl
from workers.smtpd.dkim import Signer

FLOW_RECOUNT = 1.0          # seconds between two counts of incoming/


class InFlow:
    """Postfix's in_flow_delay over the depth of incoming/ (see above)."""

    def __init__(self, params, count: Callable[[], int], log: Log):
        self.delay = params.in_flow_delay
        self.limit = params.in_flow_queue_limit
        self.log = log
        self.depth = 0                        # the last count plus this process's commits since
        self.delaying = False                 # in an episode (logged at its start and end)
        self._count = count
        self._counted_at = -FLOW_RECOUNT
        self._counting: asyncio.Future | None = None

    def committed(self) -> None:
        self.depth += 1

    async def pause(self) -> None:
        """Wait in_flow_delay if the incoming queue is at its limit."""
        if not self.delay:
            return
        if time.monotonic() - self._counted_at >= FLOW_RECOUNT:
            if self._counting is None:
                self._counting = asyncio.ensure_future(asyncio.to_thread(self._count))
                self._counting.add_done_callback(self._counted)
            await asyncio.wait((self._counting,))      # shared; never raises
        if self.depth < self.limit:
            if self.delaying:
                self.delaying = False
                self.log.info(f"in_flow_delay: {self.depth} messages in incoming, "
                              f"below in_flow_queue_limit {self.limit}: no more delay")
            return
        if not self.delaying:
            self.delaying = True
            self.log.info(f"warning: in_flow_delay: {self.depth} messages in incoming, "
                          f"in_flow_queue_limit {self.limit}: new mail waits {self.delay:g}s")
        await asyncio.sleep(self.delay)

    def _counted(self, counting: asyncio.Future) -> None:
        self._counting = None
        self._counted_at = time.monotonic()
        if counting.cancelled():
            return
        if counting.exception() is not None:
            self.log.error(f"in_flow_delay: cannot count the incoming queue: {counting.exception()}")
            return
        self.depth = counting.result()


class Backend:
    def __init__(self, params):
        self.params = params
        self.store = Store.open(params)
        self.queue = self.store.queue
        self.queue.ensure_layout()
        self.directory = self.store.resolver
        self.authenticator = Authenticator.from_params(params, Log("smtp"), self.store.users, "smtp")
        self._resolver = rbl.make_resolver(params.dns_resolver) if params.smtpd_rbl_servers else None
        self.flow = InFlow(params, self.queue.incoming_depth, Log("smtp"))
        self.dkim = Signer.from_params(params, Log("smtp"))
        self._wake_due = False

    def open_message(self, sign: bool = False) -> QueueWriter:
        return self.queue.writer("incoming", top=self.dkim.top if sign and self.dkim else None)

    def wake_qmgr(self) -> None:
        if not self._wake_due:
            self._wake_due = True
            asyncio.get_running_loop().call_soon(self._wake)

    def _wake(self) -> None:
        self._wake_due = False
        wake_qmgr(self.params)

    def disk_low(self) -> bool:
        return proto.is_low(self.params)

    def tls_available(self) -> bool:
        return _tls.tls_available(self.params)

    def sasl_server(self, name: str) -> SaslServer:
        return self.authenticator.sasl_server(name)

    async def rbl_lookup(self, ip: str, zones: list[str]) -> tuple[rbl.Listing | None, list[str]]:
        failures: list[str] = []
        listing = await rbl.lookup(ip, zones, self._resolver, self.params.smtpd_rbl_timeout, failures)
        return listing, failures
