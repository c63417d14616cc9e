"""The mailbox transport: a user's INBOX in the store, with quotas, on qmgr's store thread.

MailboxTransport(mail, directory, thread, myhostname): mail is the store.mailstore.MailStore,
directory the store.directory.Directory (quotas, local domains), thread the one-thread executor that
does all of qmgr's LMDB work (the index is used from one thread per process: see
store.lmdbcheck). Each delivery is one call on that thread (store_one), idempotent per
delivery id "<queue id>:<user>": the id is recorded in the same index transaction as the
message. So every delivery goes through one awaitable of this transport, where a later group
commit can collect the calls waiting for the thread into one batch.
The message is streamed from the queue file into the store's writer behind Return-Path: and
Delivered-To: lines; it is never held whole in memory.
A delivery id the store already holds (qmgr died after the mailbox write, before the queue's
done mark) is delivered, whatever the quota: the re-run neither stores it twice nor counts
it against itself. Otherwise the directory's quota rule applies: a message that would take
the user over quota is a temporary failure (4.2.2 "mailbox full"), retried, bouncing only
after maximal_queue_lifetime; a message larger than the whole quota bounces at once (5.2.2).
A storage error (disk full, I/O) is temporary too (4.3.0), and so is an INBOX that vanished
under the delivery (the user's mail purged meanwhile).
Destination: the user (default_destination_concurrency_limit deliveries to one user at once).
"""
from __future__ import annotations

import asyncio
import itertools
from concurrent.futures import Executor

from store.fsio import StorageError
from store.mailstore import INBOX, NoSuchMailbox
from store.resolve import Mailbox
from workers.qmgr.message import MessageFile
from workers.qmgr.transports.base import Delivery, Outcome


class MailboxTransport:
    name = "mailbox"
    relay = "local"
    kind = Mailbox

    def __init__(self, mail, directory, thread: Executor, myhostname: str):
        self.mail = mail
        self.directory = directory
        self.thread = thread
        self.myhostname = myhostname

    def key(self, target: Mailbox) -> str:
        return f"t:mailbox:{target.user}"

    def destination(self, target: Mailbox) -> str:
        return target.user

    def address(self, target: Mailbox, original: str) -> str:
        """The user in the domain the mail was sent to (myhostname for a bare or foreign one)."""
        domain = original.rpartition("@")[2] if "@" in original else ""
        if not domain or not self.directory.domains.is_local(original):
            domain = self.myhostname
        return f"{target.user}@{domain.lower()}"

    def describe(self, target: Mailbox) -> str:
        return "delivered to INBOX"

    async def deliver(self, delivery: Delivery) -> Outcome:
        head = f"Return-Path: <{delivery.sender}>\r\nDelivered-To: {delivery.recipient}\r\n".encode()
        user = delivery.target.user
        return await asyncio.get_running_loop().run_in_executor(
            self.thread, self.store_one, user, head, delivery.message, f"{delivery.queue_id}:{user}")

    def store_one(self, user: str, head: bytes, message: MessageFile, delivery_id: str) -> Outcome:
        """On the store thread: the quota, then the message (head + the queue file's message)."""
        try:
            if self.mail.delivered(user, delivery_id):
                return Outcome(True, detail="stored before")
            refused = self.directory.quota_check(user, len(head) + message.size)
            if refused is not None:
                return Outcome(False, refused.permanent, refused.status, refused.reason)
            uid = self.mail.deliver(user, INBOX, itertools.chain([head], message.chunks()), delivery_id)
        except (StorageError, NoSuchMailbox) as e:
            return Outcome(False, False, "4.3.0", f"cannot store: {e}")
        return Outcome(True, detail=f"uid {uid}")
