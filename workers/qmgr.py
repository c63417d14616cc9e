"""The queue manager: local delivery of everything in the queue (a master.cf `unix` service).

    qmgr  unix  n  -  n  300  1  qmgr

One process (maxproc 1), kept running by the master. At start it recovers the queue
(files a crashed run left in active/ go back to incoming, counted; see store.queue) and then
works in passes: pick up maildrop/ (sendmail; checked as untrusted input, store.maildrop)
into incoming/, then take every ready file
(incoming/ and deferred files whose next try has come) into active/ and run one delivery
attempt on it (workers.delivery.attempt). A pass starts at once when something writes to
the FIFO queue/public/qmgr (smtpd and sendmail do after each message), when maildrop/
changes (a user's sendmail may not write the FIFO: its mtime is looked at every
MAILDROP_POLL seconds), when the master sends its periodic wakeup, and at least every
minimal_backoff_time seconds. While the
master's disk guard flag is up (run/lowspace) no pass runs: nothing is written.
Drain (SIGTERM or the master's drain) stops after the current message.
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

from master.proto import is_low
from store.fsio import StorageError
from store.maildrop import Pickup
from store.queue import NotQueued, Queue, QueueCorrupt
from workers._server import Daemon, run_daemon
from workers.delivery.attempt import Attempt, Context
from workers.delivery.local import RunAs
from workers.delivery.mailboxes import Directory, MailboxDeliverer
from workers.delivery.resolve import Resolver

MAX_RECOVERIES = 5           # a file that crashed qmgr this often goes to corrupt/
MAILDROP_POLL = 1.0          # seconds between looks at maildrop/'s mtime


class QueueManager:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.queue = ctx.queue
        self.log = ctx.log
        self.pickup = Pickup(ctx.queue, ctx.params, ctx.log)
        self._low_logged = False

    @classmethod
    def from_daemon(cls, daemon: Daemon) -> "QueueManager":
        params = daemon.params
        directory = Directory(params)
        resolver = Resolver(params.mydestination, params.luser_relay, directory)
        try:
            run_as = RunAs.for_mail_owner(params.mail_owner)
        except LookupError as e:
            daemon.log.error(f"{e}: |command and /file deliveries wait until it is fixed")
            run_as = None
        ctx = Context(params=params, log=daemon.log, queue=Queue.from_params(params), resolver=resolver,
                      deliver_mailbox=MailboxDeliverer(params), run_as=run_as)
        return cls(ctx)

    def start(self) -> None:
        self.queue.ensure_layout()
        report = self.queue.recover(MAX_RECOVERIES)
        for where, ids in report.items():
            for queue_id in ids:
                line = f"{queue_id}: recovered from an interrupted delivery, moved to {where}"
                (self.log.error if where == "corrupt" else self.log.info)(line)

    async def run_pass(self, daemon: Daemon) -> None:
        """Deliver everything ready, until nothing is left or we are told to stop."""
        if is_low(self.ctx.params):
            if not self._low_logged:
                self.log.error("queue processing suspended: disk space below disk_min_free")
                self._low_logged = True
            return
        if self._low_logged:
            self.log.error("queue processing resumed: disk space is back")
            self._low_logged = False
        tried: set[str] = set()
        while not daemon.stopping:
            try:
                self.pickup.run()
            except StorageError as e:
                self.log.error(f"maildrop: pickup stopped, will retry: {e}")
            ready = [q for q in self.queue.ready(time.time()) if q not in tried]
            if not ready:
                return
            for queue_id in ready:
                if daemon.stopping:
                    return
                tried.add(queue_id)
                await self.deliver(queue_id)

    async def deliver(self, queue_id: str) -> None:
        try:
            if not self.queue.activate(queue_id):
                return
            await Attempt(self.ctx, queue_id).run()
        except QueueCorrupt as e:
            self.log.error(f"{queue_id}: {e}")
        except NotQueued:
            pass                           # deleted by mailctl meanwhile
        except StorageError as e:
            self.log.error(f"{queue_id}: storage error, will retry: {e}")
            self._park(queue_id, f"storage error: {e}")
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
            self.log.error(f"{queue_id}: delivery attempt failed: {type(e).__name__}: {e}")
            traceback.print_exc()
            self._park(queue_id, f"internal error: {type(e).__name__}")

    def _park(self, queue_id: str, reason: str) -> None:
        """After a failed attempt: back to deferred/ for a later try (done marks stay)."""
        try:
            self.queue.defer(queue_id, time.time() + self.ctx.params.minimal_backoff_time, {"*": reason})
        except (StorageError, OSError) as e:
            self.log.error(f"{queue_id}: stays in active until the next start: {e}")


async def serve(daemon: Daemon) -> None:
    qmgr = QueueManager.from_daemon(daemon)
    qmgr.start()
    loop = asyncio.get_running_loop()
    poked = asyncio.Event()
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


if __name__ == "__main__":
    main()
