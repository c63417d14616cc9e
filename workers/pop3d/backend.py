"""What a POP3 session needs from the rest of the system, behind one small object.

Backend(params) is built once per worker process and shared by its sessions; it opens the
process's store (store.handle.Store). From workers._auth.Authenticator (login names of the
store's user database, the verifier of workers/_authremote.py: the auth service when
master.cf has one) it has verify_password(name, pw) and verify_apop(name, timestamp,
digest) (-> Verdict), sasl_mechanisms() and sasl_server(name); it adds
    tls_available() -> bool          a usable certificate and key (workers._tls)
    open_maildrop(user, exclusive) -> Maildrop   the INBOX snapshot, its lock shared or
                                     exclusive (MaildropBusy, StorageError)
The password checks are awaited, never run on the event loop. Maildrop.measure blocks (file scans): sessions run it in a thread; everything
touching the index stays on the event loop thread that opened it.
Diagnostics: errors of the user database or the store propagate to the session.
"""
from __future__ import annotations

import os

from master.proto import POP3_LOCKS
from store.handle import Store
from workers import _tls
from workers._auth import Authenticator
from workers._authremote import verifier_from_params
from workers._log import Log
from workers.pop3d.maildrop import Maildrop


class Backend(Authenticator):
    def __init__(self, params):
        self.store = Store.open(params)
        users = self.store.users
        super().__init__(users.canonical, params.myhostname, verifier_from_params(params, users, Log("pop")), "pop")
        self.params = params
        self.lock_dir = os.path.join(params.run_directory, POP3_LOCKS)

    def tls_available(self) -> bool:
        return _tls.tls_available(self.params)

    def open_maildrop(self, user: str, exclusive: bool = False) -> Maildrop:
        return Maildrop.open(self.store.mail, user, self.lock_dir, exclusive)
