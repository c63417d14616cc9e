"""What an SMTP session needs from the rest of the system, behind one small object.

Backend(params) is built once per worker process and shared by its sessions:
    open_message() -> store.queue.QueueWriter into incoming/ (write / commit / abort)
    wake_qmgr()                    one byte into the queue manager's FIFO
    disk_low() -> bool             the master's run/lowspace flag (master/proto.py)
    tls_available() -> bool        a usable certificate and key (workers/_tls.py)
    directory                      StoreDirectory: user(name) -> relay.UserState | None, is_alias(name)
    sasl_server(name)              a workers/_auth.py SaslServer (its checks run in the
                                   verifier's threads); may_send(user) -> bool
                                   (the account exists and is enabled)
    await rbl_lookup(ip, zones) -> (Listing | None, [failure, ...])
The unit tests give the session a fake with the same members instead.
Diagnostics: none of its own; StorageError from the queue, and a failing user or alias
database (turned into StorageError here), reach the session as temporary errors.
"""
from __future__ import annotations

import lmdb

from master import proto
from store import aliases
from store.fsio import StorageError
from store.mailstore import open_store
from store.queue import Queue, QueueWriter, wake_qmgr
from store.users import UserDB
from workers import _tls
from workers._auth import Authenticator, SaslServer
from workers._log import Log
from workers.smtpd import rbl
from workers.smtpd.relay import UserState


class StoreDirectory:
    """Users (store/users.py), their quota usage (store/mailstore.py) and aliases."""

    def __init__(self, params):
        self.params = params
        self.users = UserDB.from_params(params)

    def user(self, name: str) -> UserState | None:
        try:
            account = self.users.get(name)
            if account is None:
                return None
            quota = self.params.default_quota if account.quota is None else account.quota
            used = open_store(self.params).usage(account.name) if quota else 0
        except lmdb.Error as e:
            raise StorageError(f"user database: {e}") from None
        return UserState(account.enabled, quota, used)

    def is_alias(self, name: str) -> bool:
        try:
            return aliases.lookup(self.params, name) is not None
        except lmdb.Error as e:
            raise StorageError(f"alias map: {e}") from None


class Backend:
    def __init__(self, params):
        self.params = params
        self.queue = Queue.from_params(params)
        self.queue.ensure_layout()
        self.directory = StoreDirectory(params)
        self.authenticator = Authenticator.from_params(params, Log("smtp"), self.directory.users)
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
