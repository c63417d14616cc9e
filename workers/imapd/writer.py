"""Group commit for an imapd process's store writes: the sessions' flag changes, expunges and
appends share index transactions and fsyncs.

Writer(backend) is built once per process (backend.writer, workers/imapd/backend.py): its
batches run on the backend's store thread (backend.run) against backend.mail.
    await set_flags(origin, user, mailbox, uid_ranges, mode, flags, unchanged_since) -> Records
    await expunge(origin, user, mailbox, uid_ranges) -> Records
    await append(origin, user, mailbox, [DeliveryRequest]) -> [UID]   all or none: when one
                                 message fails, those stored are expunged again and its
                                 error is raised
    await claim_recent(origin, user, mailbox) -> (first, uidnext)     SELECT's \\Recent claim
    await put_structures(origin, user, mailbox, {uid: blob}) -> int   FETCH's structure cache
Each call queues its request and awaits it; a cycle takes the requests waiting and runs
them as two jobs on the store thread, one after the other: the flag changes, expunges,
\\Recent claims and structures as one MailStore.write_many (one index transaction; one
fsync per directory with expunged files), then the appends as one deliver_many (one fsync
per message, one per directory, two index commits); each job's requests are answered when
it is done. The first request after a quiet spell goes at once; later ones wait only for
the cycle before them. origin is the
session: a cycle takes at most one request per
origin, so a session's writes apply in the order it made them (commands of different
sessions that wait together are concurrent, and any order of them is a valid one).
A request is answered only after the batch that holds it is durable, with its own result
or error: one request's NoSuchMailbox, TooManyKeywords or StorageError fails no other.
Diagnostics: the store's errors, raised to the caller that made the request; an unexpected
error of a batch call (a bug) is raised to every caller of that batch.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from store.fsio import StorageError
from store.mailstore import DeliveryRequest, NoSuchMailbox

MAX_CYCLE = 256   # requests taken into one cycle


class Writer:
    def __init__(self, backend):
        self.backend = backend
        self._waiting: deque[tuple[object, str, tuple, asyncio.Future]] = deque()
        self._drainer: asyncio.Task | None = None

    async def set_flags(self, origin, user: str, mailbox: str, uid_ranges, mode: str, flags,
                        unchanged_since: int | None = None):
        return await self._submit(origin, "flags", (user, mailbox, uid_ranges, mode, tuple(flags), unchanged_since))

    async def expunge(self, origin, user: str, mailbox: str, uid_ranges):
        return await self._submit(origin, "expunge", (user, mailbox, uid_ranges, True))

    async def append(self, origin, user: str, mailbox: str, messages: Sequence[DeliveryRequest]) -> list[int]:
        return await self._submit(origin, "append", [
            DeliveryRequest(user, mailbox, m.source, None, m.flags, m.internal_date) for m in messages])

    async def claim_recent(self, origin, user: str, mailbox: str) -> tuple[int, int]:
        return await self._submit(origin, "recent", (user, mailbox))

    async def put_structures(self, origin, user: str, mailbox: str, blobs: dict[int, bytes]) -> int:
        return await self._submit(origin, "structures", (user, mailbox, blobs))

    async def _submit(self, origin, kind: str, request):
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((origin, kind, request, future))
        if self._drainer is None:
            self._drainer = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        """One cycle after another while requests wait: its writes, then its appends, each
        answered as soon as their batch is done."""
        cycle: list = []
        try:
            while self._waiting:
                cycle = self._next_cycle()
                for job in (_write_all, _append_all):
                    await self._answer(job, [entry for entry in cycle if (entry[1] == "append") == (job is _append_all)])
                cycle = []
        finally:
            self._drainer = None
            for *_, future in (*cycle, *self._waiting):  # cancelled: so are the callers' waits
                future.cancel()
            self._waiting.clear()

    async def _answer(self, job, entries: list) -> None:
        """job(mail, [(kind, request)]) on the store thread; each entry's future gets its outcome."""
        if not entries:
            return
        try:
            outcomes = await self.backend.run(job, self.backend.mail, [(kind, request) for _, kind, request, _ in entries])
        except Exception as e:  # a bug: every caller of the batch sees it
            outcomes = [e] * len(entries)
        for (*_, future), outcome in zip(entries, outcomes):
            if future.done():  # its caller gave up meanwhile
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _next_cycle(self) -> list:
        """The requests at the head of the queue, up to the second one of an origin."""
        cycle, origins = [], set()
        while self._waiting and len(cycle) < MAX_CYCLE:
            origin = self._waiting[0][0]
            if origin in origins:
                break
            entry = self._waiting.popleft()
            if not entry[3].done():
                origins.add(origin)
                cycle.append(entry)
        return cycle


def _write_all(mail, requests: list[tuple[str, tuple]]) -> list:
    """The flag, expunge, \\Recent and structure requests in one MailStore.write_many."""
    return mail.write_many(requests)


def _append_all(mail, requests: list[tuple[str, list[DeliveryRequest]]]) -> list:
    """Every APPEND's messages in one deliver_many; per APPEND its UIDs, or the first error of
    its messages after those of them stored are expunged again."""
    appends = [messages for _, messages in requests]
    results = mail.deliver_many([m for messages in appends for m in messages])
    outcomes, start = [], 0
    for messages in appends:
        mine, start = results[start:start + len(messages)], start + len(messages)
        failure = next((r for r in mine if isinstance(r, Exception)), None)
        stored = sorted(r for r in mine if not isinstance(r, Exception))
        if failure is not None and stored:
            try:
                mail.expunge(messages[0].user, messages[0].mailbox, [(uid, uid) for uid in stored], deleted_only=False)
            except (StorageError, OSError, NoSuchMailbox) as e:  # the caller's answer is a failure either way
                failure = e
        outcomes.append(mine if failure is None else failure)
    return outcomes

