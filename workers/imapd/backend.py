"""What an IMAP session needs from the rest of the system, behind one object per worker.

Backend(params) is built once per worker process and shared by its sessions. From
workers._auth.Authenticator it has verify_password, sasl_mechanisms, sasl_is_plaintext and
sasl_server (the auth service when master.cf has one); it adds
    store.mail                   the process's store.mailstore.MailStore
    tls_available() -> bool      a usable certificate and key (workers/_tls.py); asked at every
                                 greeting and login, so the answer is kept: a missing one
                                 for TLS_RECHECK seconds, then it is looked for again
    await run(fn, *args)         fn(*args) in the process's store thread: every write to the
                                 store (and the index commits' fsyncs) runs there, one at a
                                 time, never on the event loop; reads of the index (a
                                 mailbox's header or view) are quick and stay on the loop
    writer                       workers/imapd/writer.py's Writer: the sessions' flag changes,
                                 expunges and appends, group-committed on that thread
    await prepare_user(user)     INBOX and the special-use folders (DEFAULT_FOLDERS), made
                                 and subscribed on the user's first login
    quota(user) -> int           the user's quota in bytes (0: none), store/directory.py
Diagnostics: StorageError and OSError of the store propagate to the session.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from store.handle import Store
from store.mailstore import INBOX, MailboxExists
from workers import _tls
from workers._auth import Authenticator
from workers._authremote import verifier_from_params
from workers._log import Log
from workers.imapd.writer import Writer

TLS_RECHECK = 10.0     # seconds a missing or unusable certificate is believed missing

DEFAULT_FOLDERS = (("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"),
                   ("Junk", "\\Junk"), ("Archive", "\\Archive"))


class Backend(Authenticator):
    def __init__(self, params):
        self.store = Store.open(params)
        users = self.store.users
        super().__init__(users.canonical, params.myhostname, verifier_from_params(params, users, Log("imap")), "imap")
        self.params = params
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.writer = Writer(self)
        self._tls_missing_until = 0.0         # tls_available(): no certificate until then

    @property
    def mail(self):
        return self.store.mail

    def tls_available(self) -> bool:
        if time.monotonic() < self._tls_missing_until:
            return False
        if _tls.tls_available(self.params):   # a usable context is cached by _tls itself
            return True
        self._tls_missing_until = time.monotonic() + TLS_RECHECK
        return False

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def prepare_user(self, user: str) -> None:
        if self.mail.mailbox(user, INBOX) is not None and self.mail.mailbox(user, "Trash") is not None:
            return
        await self.run(self._make_folders, user)

    def _make_folders(self, user: str) -> None:
        self.mail.ensure_inbox(user)
        have = {info.special_use for info in self.mail.list_mailboxes(user)}
        for name, use in DEFAULT_FOLDERS:
            if use in have or self.mail.mailbox(user, name) is not None:
                continue
            try:
                self.mail.create_mailbox(user, name, special_use=use, subscribed=True)
            except MailboxExists:
                pass

    def quota(self, user: str) -> int:
        return self.store.directory.quota(user)
