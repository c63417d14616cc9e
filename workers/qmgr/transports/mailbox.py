"""The mailbox transport: a user's INBOX in the store, with quotas, on qmgr's store thread.

MailboxTransport(mail, directory, thread, myhostname): mail is the store.mailstore.MailStore,
directory the store.directory.Directory (quotas, local domains), thread the one-thread executor that
does all of qmgr's LMDB work (the index is used from one thread per process: see
store.lmdbcheck). Deliveries are idempotent per delivery id "<queue id>:<user>": the id is
recorded in the same index transaction as the message.
Group commit: deliver() queues its message and awaits it; one job at a time on the store
thread takes all that wait (at most MAX_BATCH messages, MAX_BATCH_BYTES bytes) and stores
them with one MailStore.deliver_many, so concurrent deliveries share the index commits and
the directory fsyncs. The first message after a quiet spell goes at once: nothing waits
for a timer, only for the batch before it.
The message is streamed from the queue file into the store's writer behind Return-Path: and
Delivered-To: lines; it is never held whole in memory.
A delivery id the store already holds (qmgr died after the mailbox write, before the queue's
done mark) is delivered, whatever the quota: the re-run neither stores it twice nor counts
it against itself. Otherwise the directory's quota rule applies, counting the messages ahead
in the same batch for the same user: a message that would take the user over quota is a
temporary failure (4.2.2 "mailbox full"), retried, bouncing only after
maximal_queue_lifetime; a message larger than the whole quota bounces at once (5.2.2).
A storage error (disk full, I/O) is temporary too (4.3.0), and so is an INBOX that vanished
under the delivery (the user's mail purged meanwhile).
Destination: the user (default_destination_concurrency_limit deliveries to one user at once).
"""
from __future__ import annotations

import asyncio
import itertools
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Sequence

from store.fsio import StorageError
from store.mailstore import INBOX, DeliveryRequest
from store.resolve import Mailbox
from workers.qmgr.message import MessageFile
from workers.qmgr.transports.base import Delivery, Outcome

MAX_BATCH = 64
MAX_BATCH_BYTES = 16 << 20


@dataclass(frozen=True)
class MailboxMessage:
    """One message waiting for the store thread: head + the queue file's message."""
    user: str
    head: bytes
    message: MessageFile
    delivery_id: str

    @property
    def size(self) -> int:
        return len(self.head) + self.message.size


class MailboxTransport:
    name = "mailbox"
    relay = "local"
    kind = Mailbox
    idempotent = True                # the store keeps the delivery ids

    def __init__(self, mail, directory, thread: Executor, myhostname: str):
        self.mail = mail
        self.directory = directory
        self.thread = thread
        self.myhostname = myhostname
        self._waiting: deque[tuple[MailboxMessage, asyncio.Future]] = deque()
        self._drainer: asyncio.Task | None = None

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
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((MailboxMessage(user, head, delivery.message, f"{delivery.queue_id}:{user}"), future))
        if self._drainer is None:
            self._drainer = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        """Hand the store thread one batch after another while deliveries wait."""
        loop = asyncio.get_running_loop()
        batch: list[tuple[MailboxMessage, asyncio.Future]] = []
        try:
            while self._waiting:
                batch = self._next_batch()
                try:
                    outcomes = await loop.run_in_executor(self.thread, self.store_batch, [m for m, _ in batch])
                except Exception as e:  # a bug: every caller of the batch sees it
                    outcomes = [e] * len(batch)
                for (_, future), outcome in zip(batch, outcomes):
                    if future.done():  # its caller gave up meanwhile
                        continue
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._drainer = None
            for _, future in (*batch, *self._waiting):  # cancelled: so are the callers' waits
                future.cancel()
            self._waiting.clear()

    def _next_batch(self) -> list[tuple[MailboxMessage, asyncio.Future]]:
        batch, size = [], 0
        while self._waiting and len(batch) < MAX_BATCH:
            message, future = self._waiting[0]
            if batch and size + message.size > MAX_BATCH_BYTES:
                break
            self._waiting.popleft()
            if not future.done():
                batch.append((message, future))
                size += message.size
        return batch

    def store_batch(self, messages: Sequence[MailboxMessage]) -> list[Outcome]:
        """On the store thread: each message's checks in turn (stored before? the quota, with
        the messages of this batch ahead of it), then one deliver_many for all that passed."""
        outcomes: list[Outcome | None] = [None] * len(messages)
        ahead: dict[str, int] = {}  # bytes of this batch on their way to each user
        chosen = []
        for position, m in enumerate(messages):
            try:
                if self.mail.delivered(m.user, m.delivery_id):
                    outcomes[position] = Outcome(True, detail="stored before")
                    continue
                refused = self.directory.quota_check(m.user, m.size, ahead.get(m.user, 0))
            except StorageError as e:
                outcomes[position] = _not_stored(e)
                continue
            if refused is not None:
                outcomes[position] = Outcome(False, refused.permanent, refused.status, refused.reason)
                continue
            ahead[m.user] = ahead.get(m.user, 0) + m.size
            chosen.append(position)
        requests = [DeliveryRequest(m.user, INBOX, itertools.chain([m.head], m.message.chunks()), m.delivery_id)
                    for m in (messages[p] for p in chosen)]
        for position, uid in zip(chosen, self.mail.deliver_many(requests)):
            outcomes[position] = _not_stored(uid) if isinstance(uid, Exception) else Outcome(True, detail=f"uid {uid}")
        return outcomes


def _not_stored(error: Exception) -> Outcome:
    return Outcome(False, False, "4.3.0", f"cannot store: {error}")
