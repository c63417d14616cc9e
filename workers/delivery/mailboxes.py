"""qmgr's view of the store: the user/alias directory and INBOX delivery with quotas.

Directory(params): user(name) -> resolve.UserEntry | None and alias(name) -> members | None,
read from store.users and store.aliases at each call (LMDB readers see the newest data,
so `mailctl user set` and `newaliases` take effect for the next message).
MailboxDeliverer(params)(user, message, delivery_id) -> local.Outcome: stores into the
user's INBOX through store.mailstore (idempotent per delivery id: the id is recorded in the
same index transaction as the message). A delivery id the store already holds (qmgr died
after the mailbox write, before the queue's done mark) is delivered, whatever the quota:
the re-run neither stores it twice nor counts it against itself. Otherwise a message that
would take the user over quota is a temporary failure (4.2.2 "mailbox full"): it is
retried and bounces only after maximal_queue_lifetime; a message larger than the whole
quota bounces at once (5.2.2). A storage error (disk full, I/O) is temporary too (4.3.0),
and so is an INBOX that vanished under the delivery (the user's mail purged meanwhile).
"""
from __future__ import annotations

from store import aliases as alias_store
from store import users as user_store
from store.fsio import StorageError
from store.mailstore import INBOX, NoSuchMailbox, open_store
from workers.delivery.local import Outcome
from workers.delivery.resolve import UserEntry


class Directory:
    def __init__(self, params):
        self.params = params

    def user(self, name: str) -> UserEntry | None:
        record = user_store.get_user(self.params, name)
        if record is None:
            return None
        return UserEntry(enabled=record.enabled, forward=tuple(record.forward), keep_copy=record.keep_copy)

    def alias(self, name: str) -> list[str] | None:
        return alias_store.lookup(self.params, name)


class MailboxDeliverer:
    def __init__(self, params):
        self.store = open_store(params)

    def __call__(self, user: str, message: bytes, delivery_id: str) -> Outcome:
        try:
            if self.store.delivered(user, delivery_id):
                return Outcome(True, detail="stored before")
            limit = self.store.quota_limit(user)
            if limit and len(message) > limit:
                return Outcome(False, True, "5.2.2", f"message larger than the mailbox quota ({limit} bytes)")
            if limit and self.store.over_quota(user, len(message)):
                return Outcome(False, False, "4.2.2", f"mailbox full (quota {limit} bytes exceeded)")
            uid = self.store.deliver(user, INBOX, message, delivery_id)
        except (StorageError, NoSuchMailbox) as e:
            return Outcome(False, False, "4.3.0", f"cannot store: {e}")
        return Outcome(True, detail=f"uid {uid}")
