"""What an SMTP session needs from the rest of the system, behind one small object.

Backend(params) is built once per worker process and shared by its sessions; it opens the
process's store (store.handle.Store) and hands out its parts:
    open_message() -> store.queue.QueueWriter into incoming/ (write / commit / abort)
    wake_qmgr()                    one byte into the queue manager's FIFO
    disk_low() -> bool             the master's run/lowspace flag (master/proto.py)
    tls_available() -> bool        a usable certificate and key (workers/_tls.py)
    directory                      the recipient table: the store's resolver, whose
                                   verify(address, size) is what qmgr delivers by
    sasl_server(name)              a workers/_auth.py SaslServer (its checks run in the
                                   verifier's threads); may_send(user) -> bool
                                   (the account exists and is enabled)
    await rbl_lookup(ip, zones) -> (Listing | None, [failure, ...])
The unit tests give the session a fake with the same members instead.
Diagnostics: none of its own; StorageError from the queue, the user database or the alias
map reaches the session as a temporary error.
"""
from __future__ import annotations

from master import proto
from store.handle import Store
from store.queue import QueueWriter, wake_qmgr
from workers import _tls
from workers._auth import Authenticator, SaslServer
from workers._log import Log
from workers.smtpd import rbl


class Backend:
    def __init__(self, params):
        self.params = params
        self.store = Store.open(params)
        self.queue = self.store.queue
        self.queue.ensure_layout()
        self.directory = self.store.resolver
        self.authenticator = Authenticator.from_params(params, Log("smtp"), self.store.users)
        self._resolver = rbl.make_resolver(params.dns_resolver) if params.smtpd_rbl_servers else None

    def open_message(self) -> QueueWriter:
        return self.queue.writer("incoming")

    def wake_qmgr(self) -> None:
        wake_qmgr(self.params)

    def disk_low(self) -> bool:
        return proto.is_low(self.params)

    def tls_available(self) -> bool:
        return _tls.tls_available(self.params)

    def sasl_server(self, name: str) -> SaslServer:
        return self.authenticator.sasl_server(name)

    def may_send(self, user: str) -> bool:
        account = self.authenticator.account(user)
        return bool(account and account.enabled)

    async def rbl_lookup(self, ip: str, zones: list[str]) -> tuple[rbl.Listing | None, list[str]]:
        failures: list[str] = []
        listing = await rbl.lookup(ip, zones, self._resolver, self.params.smtpd_rbl_timeout, failures)
        return listing, failures
