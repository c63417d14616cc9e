"""The queue manager's process: passes over the queue that start one attempt per ready file.

    python -m workers.qmgr      (master.cf: qmgr  unix  n  -  n  300  1  qmgr)

One process (maxproc 1), kept running by the master. At start it recovers the queue
(files a crashed run left in active/ go back to incoming, counted; see store.queue; each of
them is then tried alone, so a file that crashes qmgr is the only one counted) and then
works in passes: pick up maildrop/ (sendmail; checked as untrusted input, store.maildrop)
into incoming/, then take the ready files (incoming/ and deferred files whose next try
has come) into active/, as many together as there are free slots (Queue.activate_many), and start a delivery attempt on each
(workers.qmgr.attempt), without waiting for it: at most qmgr_message_active_limit attempts
are under way at once, and their deliveries share the scheduler (workers.qmgr.scheduler),
so a slow one holds up no other.
A pass starts at once when something writes to the FIFO queue/public/qmgr (smtpd and
sendmail do after each message), when an attempt queued a report (a bounce), when maildrop/
changes (a user's sendmail may not write the FIFO: its mtime is looked at every
MAILDROP_POLL seconds), when the master sends its periodic wakeup, and at least every
minimal_backoff_time seconds. While the master's disk guard flag is up (run/lowspace) no
pass runs: nothing is written. Drain (SIGTERM or the master's drain) starts no new attempt
and waits for those under way. Blocking work runs in the attempts' executors, never here.
Diagnostics (smtp.log): one line per recipient outcome and per queue file (see attempt);
a file that cannot be read goes to corrupt/ with an error line; a storage error (queue or
index not writable) and an unexpected error in one attempt (logged with its traceback) defer
the file for a later try (done marks kept); the other files go on.
"""
from __future__ import annotations

import asyncio
import os
import time
import traceback
from collections import deque

from master.proto import is_low
from store.fsio import StorageError
from store.handle import Store
from store.maildrop import Pickup
from store.queue import NotQueued, QueueCorrupt
from workers._server import Daemon, run_daemon
from workers.qmgr.attempt import Attempt, Context
from workers.qmgr.transports.local import RunAs

MAX_RECOVERIES = 5           # a file that crashed qmgr this often goes to corrupt/
MAILDROP_POLL = 1.0          # seconds between looks at maildrop/'s mtime


class QueueManager:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.queue = ctx.queue
        self.log = ctx.log
        self.pickup = Pickup(ctx.queue, ctx.params, ctx.log)
        self.poked = asyncio.Event()               # a pass is due
        self.attempts: dict[str, asyncio.Task] = {}
        self.suspects: set[str] = set()            # in active/ when the last run crashed
        self._low_logged = False

    @classmethod
    def from_daemon(cls, daemon: Daemon) -> "QueueManager":
        params = daemon.params
        try:
            run_as = RunAs.for_mail_owner(params.mail_owner)
        except LookupError as e:
            daemon.log.error(f"{e}: |command and /file deliveries wait until it is fixed")
            run_as = None
        return cls(Context.build(params, daemon.log, Store.open(params), run_as))

    async def start(self) -> None:
        report = await self.ctx.in_files(self._recover)
        self.suspects = set(report["incoming"]) | set(report["hold"])
        for where, ids in report.items():
            for queue_id in ids:
                line = f"{queue_id}: recovered from an interrupted delivery, moved to {where}"
                (self.log.error if where == "corrupt" else self.log.info)(line)

    def _recover(self) -> dict[str, list[str]]:
        self.queue.ensure_layout()
        return self.queue.recover(MAX_RECOVERIES)

    async def run_pass(self, daemon: Daemon) -> None:
        """Start an attempt on every ready file not under way yet (waiting for a free slot
        when qmgr_message_active_limit are), activating those that fit together."""
        if is_low(self.ctx.params):
            if not self._low_logged:
                self.log.error("queue processing suspended: disk space below disk_min_free")
                self._low_logged = True
            return
        if self._low_logged:
            self.log.error("queue processing resumed: disk space is back")
            self._low_logged = False
        limit = self.ctx.params.qmgr_message_active_limit
        ready_ids, first, pickup_error = await self.ctx.in_files(
            self._scan, limit - len(self.attempts), set(self.attempts) | self.suspects)
        if pickup_error:
            self.log.error(f"maildrop: pickup stopped, will retry: {pickup_error}")
        self._start(first)
        ready = deque(ready_ids)
        while ready:
            while len(self.attempts) >= limit and not daemon.stopping:
                await asyncio.wait(list(self.attempts.values()), return_when=asyncio.FIRST_COMPLETED)
            if daemon.stopping:
                return
            if ready[0] in self.suspects:
                await self._alone(ready.popleft())
                continue
            batch: list[str] = []
            while ready and len(batch) < limit - len(self.attempts) and ready[0] not in self.suspects:
                queue_id = ready.popleft()
                if queue_id not in self.attempts:
                    batch.append(queue_id)
            self._start(await self._activate(batch))

    def _start(self, queue_ids: list[str]) -> None:
        for queue_id in queue_ids:
            task = self.attempts[queue_id] = asyncio.ensure_future(self.deliver(queue_id))
            task.add_done_callback(lambda _task, queue_id=queue_id: self.attempts.pop(queue_id, None))

    def _scan(self, free: int, skip: set[str]) -> tuple[list[str], list[str], StorageError | None]:
        """Pick up maildrop/, list the ready files, and take the first of them (at most `free`,
        up to one in `skip`: under way, or a suspect that goes alone) into active/ at once: one
        trip to the files executor when a pass fits. Returns (the other ready ids, the ids
        moved, the pickup's error). When the move fails, those ids stay in the first list:
        the pass takes them again through _activate, which logs and parks."""
        try:
            self.pickup.run()
            error = None
        except StorageError as e:
            error = e
        ready = self.queue.ready(time.time())
        count = 0
        while count < min(free, len(ready)) and ready[count] not in skip:
            count += 1
        try:
            moved = self.queue.activate_many(ready[:count]) if count else []
        except StorageError:
            return ready, [], error
        return ready[count:], moved, error

    async def _activate(self, queue_ids: list[str]) -> list[str]:
        """Move queue_ids into active/ together; returns those moved. After a storage error
        the ones that reached active/ anyway are parked: none stays there without an attempt."""
        if not queue_ids:
            return []
        try:
            return await self.ctx.in_files(self.queue.activate_many, queue_ids)
        except StorageError as e:
            self.log.error(f"cannot take {len(queue_ids)} file(s) into delivery, will retry: {e}")
            await self.ctx.in_files(self._park_active, queue_ids, f"storage error: {e}")
            return []

    def _park_active(self, queue_ids: list[str], reason: str) -> None:
        for queue_id in queue_ids:
            try:
                if self.queue.locate(queue_id) == "active":
                    self._park(queue_id, reason)
            except NotQueued:
                continue

    async def _alone(self, queue_id: str) -> None:
        """A file that was under way when qmgr crashed runs with nothing else under way, so
        that a crash now counts against it alone (store.queue.recover moves a file that
        crashed qmgr MAX_RECOVERIES times to corrupt/, not the files that ran beside it)."""
        if self.attempts:
            await asyncio.wait(list(self.attempts.values()))
        if await self._activate([queue_id]):
            await self.deliver(queue_id)
        self.suspects.discard(queue_id)

    async def deliver(self, queue_id: str) -> None:
        """One attempt on queue_id, which is in active/ already."""
        try:
            attempt = Attempt(self.ctx, queue_id)
            await attempt.run()
            if attempt.queued:
                self.poked.set()                  # deliver the reports it queued
        except QueueCorrupt as e:
            self.log.error(f"{queue_id}: {e}")
        except NotQueued:
            pass                           # deleted by mailctl meanwhile
        except StorageError as e:
            self.log.error(f"{queue_id}: storage error, will retry: {e}")
            await self.ctx.in_files(self._park, queue_id, f"storage error: {e}")
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
            self.log.error(f"{queue_id}: delivery attempt failed: {type(e).__name__}: {e}")
            traceback.print_exc()
            await self.ctx.in_files(self._park, queue_id, f"internal error: {type(e).__name__}")

    def _park(self, queue_id: str, reason: str) -> None:
        """After a failed attempt: back to deferred/ for a later try (done marks stay)."""
        try:
            self.queue.defer(queue_id, time.time() + self.ctx.params.minimal_backoff_time, {"*": reason})
        except (StorageError, OSError) as e:
            self.log.error(f"{queue_id}: stays in active until the next start: {e}")

    async def finish(self) -> None:
        """Wait for the attempts under way (drain), then stop the executors."""
        if self.attempts:
            await asyncio.wait(list(self.attempts.values()))
        self.ctx.close()


async def serve(daemon: Daemon) -> None:
    qmgr = QueueManager.from_daemon(daemon)
    await qmgr.start()
    loop = asyncio.get_running_loop()
    poked = qmgr.poked
    fifo = qmgr.queue.open_wakeup_reader()

    def on_fifo() -> None:
        try:
            while os.read(fifo, 512):
                pass
        except BlockingIOError:
            pass
        poked.set()

    loop.add_reader(fifo, on_fifo)
    watcher = asyncio.ensure_future(watch_maildrop(qmgr.queue.path("maildrop"), poked))
    poll = max(1.0, min(daemon.params.minimal_backoff_time, 300.0))
    try:
        while not daemon.stopping:
            poked.clear()
            await qmgr.run_pass(daemon)
            if poked.is_set():
                continue
            waiters = {asyncio.ensure_future(poked.wait()), asyncio.ensure_future(daemon.wait_wakeup(poll))}
            _done, rest = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in rest:
                task.cancel()
        await qmgr.finish()
    finally:
        watcher.cancel()
        loop.remove_reader(fifo)
        os.close(fifo)


async def watch_maildrop(path: str, poked: asyncio.Event) -> None:
    """Set poked when maildrop/ changes (a file dropped, or taken by a pass: one spare pass)."""
    last = None
    while True:
        await asyncio.sleep(MAILDROP_POLL)
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            continue
        if last is not None and mtime != last:
            poked.set()
        last = mtime


def main() -> None:
    run_daemon(serve, log_name="smtp")
