"""One delivery attempt of one queue file: resolve, deliver through the transports, bounce,
defer or finish.

    ctx = Context.build(params, log, store, run_as);  attempt = Attempt(ctx, queue_id)
    await attempt.run(now)           # "finished", "deferred" (or hold/deleted); attempt.queued:
                                     # the ids of the reports it queued

The file must already be in active/. Every envelope recipient that is not yet done, and the
`always_bcc` archive copy (pseudo-recipient key "bcc"), is resolved into targets
(store.resolve). Each target goes to its transport (workers.qmgr.transports) through the
scheduler, all of them at once; targets that several recipients lead to are delivered once.
A target of a transport that is not idempotent (pipe, file) is marked done in the queue's
state log under "t:<target>" as soon as it is delivered, so a later attempt never repeats
it. An idempotent transport (mailbox: the delivery id "<queue id>:<user>" is recorded by the
store in the same index transaction as the message, so a repeat stores nothing) needs that
mark only when the file stays queued (deferred): then its targets are marked with the rest.
A recipient is done when all its targets are delivered or failed for good. When no recipient
is left pending and the attempt queued no report, the file is removed without marking
anything: a crash before the removal repeats only idempotent work. Otherwise the finished
recipients are marked done (one append) before the file is removed or deferred, so that no
report is queued twice. A recipient's permanent failures go into one RFC 3464 bounce from
the null sender to the envelope sender (not when NOTIFY excludes FAILURE; NOTIFY=NEVER: no
report at all), with a copy of its header part to bounce_notice_recipient when that is set.
Mail from the null sender (a bounce) that fails goes, headers only, to
double_bounce_recipient (postmaster), unless it was such a double bounce itself.
A recipient whose RCPT said NOTIFY=SUCCESS gets a success report (Action: delivered, the
returned message's header only) once it is delivered. Temporary failures keep the
recipient pending: the file is deferred with a doubling back-off between
minimal_backoff_time and maximal_backoff_time, a delay warning is sent once after
delay_warning_time, and after maximal_queue_lifetime the temporary failures bounce.
Targets no transport can deliver yet (remote ones without an smtp service) stay deferred
and never bounce.
A message whose header already has `Delivered-To: <the final address>` has been here
before (a forwarding loop through another system): that local target bounces with 5.4.6.
Blocking work never runs on the event loop: the conclusion (state log, bounces, removal) on
the `files` executor; the queue file's head and the resolving (LMDB), in one trip, on the one
`store` thread.
Diagnostics: one smtp.log line per recipient and outcome, Postfix style:
    ID: to=<bob@example.org>, relay=local, delay=0.2, status=sent (delivered to INBOX)
"""
from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

from store.queue import Envelope, Queue, QueueItem, Recipient
from store.resolve import Failed, Resolver, Target
from workers._log import Log
from workers.qmgr import bounce
from workers.qmgr.message import MessageFile
from workers.qmgr.scheduler import Scheduler
from workers.qmgr.transports import Transports
from workers.qmgr.transports.base import Delivery, Outcome, Transport
from workers.qmgr.transports.file import FileTransport
from workers.qmgr.transports.local import RunAs
from workers.qmgr.transports.mailbox import MailboxTransport
from workers.qmgr.transports.pipe import PipeTransport
from workers.qmgr.transports.remote import RemoteTransport, remote_channel

BCC_KEY = "bcc"
DEFAULT_NOTIFY = ("FAILURE", "DELAY")      # RFC 3461 4.1: no NOTIFY means failures and delays
FILE_THREADS = 4                           # blocking queue work at once (fsyncs of the state log, ...)


@dataclass
class Context:
    """What every attempt needs; built once by qmgr."""
    params: object
    log: Log
    queue: Queue
    resolver: Resolver
    transports: Transports
    scheduler: Scheduler
    files: Executor           # blocking queue work: queue files, the state log, bounces, pickup
    store: Executor           # the one thread of all LMDB work (resolving; the mailbox transport)

    @classmethod
    def build(cls, params, log: Log, store, run_as: RunAs | None) -> "Context":
        """store: a store.handle.Store (queue, mail, directory, resolver)."""
        files = ThreadPoolExecutor(FILE_THREADS, thread_name_prefix="qmgr-files")
        lmdb_thread = ThreadPoolExecutor(1, thread_name_prefix="qmgr-store")
        limit = params.command_time_limit
        transports = Transports(
            MailboxTransport(store.mail, store.directory, lmdb_thread, params.myhostname),
            PipeTransport(run_as, params.mail_owner, limit, files),
            FileTransport(run_as, params.mail_owner, limit, files),
            RemoteTransport(remote_channel(log), params.relayhost))
        scheduler = Scheduler(params.default_process_limit, params.default_destination_concurrency_limit)
        return cls(params, log, store.queue, store.resolver, transports, scheduler, files, lmdb_thread)

    async def in_files(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.files, fn, *args)

    async def in_store(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.store, fn, *args)

    def close(self) -> None:
        self.files.shutdown()
        self.store.shutdown()


def backoff(params, attempts: int) -> float:
    """Seconds until the next try after `attempts` earlier deferrals: doubling, capped."""
    low, high = params.minimal_backoff_time, params.maximal_backoff_time
    return min(high, low * (2 ** min(attempts, 32)))


def delivered_to(header: bytes) -> set[str]:
    """Lower-cased addresses of the Delivered-To: headers (the header section only)."""
    head = re.split(rb"\r?\n\r?\n", header, maxsplit=1)[0]
    return {m.decode("utf-8", "replace").strip().lower()
            for m in re.findall(rb"(?im)^Delivered-To:[ \t]*(\S+)", head)}


@dataclass
class RecipientResult:
    key: str
    recipient: Recipient
    failures: list[Failed] = field(default_factory=list)      # permanent
    temporary: list[Failed] = field(default_factory=list)     # to be retried
    waiting: list[Failed] = field(default_factory=list)       # no transport for them yet (remote)

    @property
    def finished(self) -> bool:
        return not self.temporary and not self.waiting


class Attempt:
    def __init__(self, ctx: Context, queue_id: str):
        self.ctx = ctx
        self.queue_id = queue_id
        self.item: QueueItem | None = None
        self.message: MessageFile | None = None
        self.delivered_to: set[str] = set()
        self.queued: list[str] = []               # reports queued by this attempt
        self._jobs: dict[str, asyncio.Future] = {}
        self._unmarked: list[tuple[str, str]] = []   # (key, detail) delivered by idempotent transports
        self._state_log = asyncio.Lock()          # one append at a time: a failed one is cut back

    # ------------------------------------------------------------ entry point
    async def run(self, now: float | None = None) -> str:
        """Deliver what can be delivered; returns "finished", "deferred" (or hold/deleted)."""
        ctx, qid = self.ctx, self.queue_id
        now = time.time() if now is None else now
        self.item, self.message, header, resolved = await ctx.in_store(self._load_and_resolve)
        self.delivered_to = delivered_to(header)
        env = self.item.envelope
        ctx.log.info(f"{qid}: from=<{env.sender}>, size={env.size}, nrcpt={len(env.recipients)} (queue active)")
        done = {k for k in self.item.state.done if k.startswith("t:")}
        results = [RecipientResult(key, rcpt) for key, rcpt, _ in resolved]
        routes = [self._route(target, result, done)
                  for result, (_, _, targets) in zip(results, resolved) for target in targets]
        # Every route ends before anything is concluded, even when one raised: the file must
        # not be deferred (and tried again) while a delivery of it is still under way.
        errors = [e for e in await asyncio.gather(*routes, return_exceptions=True) if isinstance(e, BaseException)]
        if errors:
            raise errors[0]
        return await ctx.in_files(self._conclude, results, now)

    def _load_and_resolve(self) -> tuple[QueueItem, MessageFile, bytes, list[tuple[str, Recipient, list[Target]]]]:
        """The queue file's envelope and state, and its pending recipients resolved (one trip
        to the store thread: the file's head is small)."""
        self.item = item = self.ctx.queue.load(self.queue_id, "active")
        message = MessageFile.of(self.ctx.queue, item)
        resolved = [(key, rcpt, self.ctx.resolver.resolve(rcpt.address)) for key, rcpt in self._pending()]
        return item, message, message.header(), resolved

    def _pending(self) -> list[tuple[str, Recipient]]:
        item = self.item
        pending = item.pending()
        always_bcc = self.ctx.params.always_bcc
        if always_bcc and BCC_KEY not in item.state.done:
            pending.append((BCC_KEY, Recipient(always_bcc)))
        return pending

    # ------------------------------------------------------------ one target
    async def _route(self, target: Target, result: RecipientResult, done: set[str]) -> None:
        rcpt = result.recipient.address
        if isinstance(target, Failed):
            result.failures.append(target)
            self._log_status(rcpt, rcpt, "none", "bounced", target.reason)
            return
        transport = self.ctx.transports.of(target)
        key = transport.key(target)
        if key in done:
            return
        final = transport.address(target, rcpt)
        if transport.relay == "local" and final.lower() in self.delivered_to:
            loop = Failed("5.4.6", f"mail forwarding loop for {final} (Delivered-To: already present)")
            result.failures.append(loop)
            self._log_status(final, rcpt, "local", "bounced", loop.reason)
            return
        first = key not in self._jobs
        if first:
            delivery = Delivery(self.queue_id, target, self.item.envelope.sender, final, rcpt, self.message,
                                self.item.envelope, result.recipient)
            self._jobs[key] = asyncio.ensure_future(self._deliver(transport, delivery, key))
        outcome = await self._jobs[key]
        relay = outcome.relay or transport.relay
        if outcome.ok:
            if first:                              # the others only share that delivery
                self._log_status(final, rcpt, relay, "sent", transport.describe(target) or outcome.detail)
            return
        failure = Failed(outcome.status, outcome.detail)
        if outcome.unavailable:
            result.waiting.append(failure)
            self._log_status(final, rcpt, relay, "deferred", outcome.detail)
        elif outcome.permanent:
            result.failures.append(failure)
            self._log_status(final, rcpt, relay, "bounced", outcome.detail)
        else:
            result.temporary.append(failure)
            self._log_status(final, rcpt, relay, "deferred", outcome.detail)

    async def _deliver(self, transport: Transport, delivery: Delivery, key: str) -> Outcome:
        outcome = await self.ctx.scheduler.submit(transport.name, transport.destination(delivery.target),
                                                  lambda: transport.deliver(delivery))
        if outcome.ok and transport.idempotent:
            self._unmarked.append((key, transport.describe(delivery.target)))
        elif outcome.ok:
            async with self._state_log:
                await self.ctx.in_files(self.ctx.queue.mark_done, self.queue_id, key, "delivered",
                                        transport.describe(delivery.target))
        return outcome

    def _log_status(self, to: str, original: str, relay: str, status: str, text: str) -> None:
        orig = f", orig_to=<{original}>" if original.lower() != to.lower() else ""
        delay = max(0.0, time.time() - self.item.envelope.arrival)
        self.ctx.log.info(f"{self.queue_id}: to=<{to}>{orig}, relay={relay}, delay={delay:.2f}, "
                          f"status={status} ({text})")

    # ------------------------------------------------------------ conclusion (files executor)
    def _conclude(self, results: list[RecipientResult], now: float) -> str:
        """Expire, report, mark what must not be done again, then remove or defer the file."""
        ctx, qid, env = self.ctx, self.queue_id, self.item.envelope
        expired = now - env.arrival >= ctx.params.maximal_queue_lifetime
        if expired:
            for result in results:
                if result.temporary:
                    self._log_status(result.recipient.address, result.recipient.address, "none", "expired",
                                     "returned to sender")
                result.failures += [Failed("4.4.7", f"delivery time expired: {t.reason} ({t.status})")
                                    for t in result.temporary]
                result.temporary = []
        self._bounce([r for r in results if r.failures and r.finished], "failed")
        self._bounce([r for r in results if r.finished and not r.failures], "delivered")
        pending = [r for r in results if not r.finished]
        if pending or self.queued:
            targets = [(key, "delivered", detail) for key, detail in self._unmarked] if pending else []
            ctx.queue.mark_done_many(qid, targets + [(r.key, "bounced" if r.failures else "delivered", "")
                                                     for r in results if r.finished])
        if not pending:
            ctx.queue.finish(qid)
            ctx.log.info(f"{qid}: removed")
            return "finished"
        return self._defer(pending, now)

    def _bounce(self, results: list[RecipientResult], action: str) -> None:
        """Queue one DSN for these recipients' failures, delays or (NOTIFY=SUCCESS) deliveries."""
        env = self.item.envelope
        wanted = {"failed": "FAILURE", "delayed": "DELAY", "delivered": "SUCCESS"}[action]
        entries: list[bounce.Failure] = []
        for result in results:
            if result.key == BCC_KEY:                  # the archive copy is not the sender's business
                for failure in result.failures:
                    self.ctx.log.error(f"{self.queue_id}: always_bcc <{result.recipient.address}> "
                                       f"undeliverable: {failure.reason}")
                continue
            notify = [n.upper() for n in (result.recipient.notify or [])]
            if wanted not in (notify or DEFAULT_NOTIFY):
                if action != "delivered":
                    self.ctx.log.info(f"{self.queue_id}: no {action} notification for <{result.recipient.address}>"
                                      f" (NOTIFY={','.join(notify)})")
                continue
            reasons = {"failed": result.failures, "delayed": result.temporary,
                       "delivered": [Failed("2.0.0", "delivered")]}[action]
            for failure in reasons:
                entries.append(bounce.Failure(result.recipient.address, failure.status, failure.reason,
                                              result.recipient.orcpt or "", action))
        if not entries:
            return
        kind = {"failed": "non-delivery", "delayed": "delay", "delivered": "success"}[action]
        params = self.ctx.params
        if env.sender:
            self._notify(env.sender, entries, headers_only=False)
            self.ctx.log.info(f"{self.queue_id}: sender {kind} notification: {self.queued[-1]}")
            if action == "failed" and params.bounce_notice_recipient:
                self._notify(params.bounce_notice_recipient, entries, headers_only=True)
                self.ctx.log.info(f"{self.queue_id}: postmaster non-delivery notification: {self.queued[-1]}")
        elif action == "failed" and params.double_bounce_recipient and not self._is_double_bounce():
            self._notify(params.double_bounce_recipient, entries, headers_only=True)
            self.ctx.log.info(f"{self.queue_id}: undeliverable mail from the null sender: double bounce "
                              f"to {params.double_bounce_recipient}: {self.queued[-1]}")
        else:
            what = "delivered" if action == "delivered" else "undeliverable"
            self.ctx.log.info(f"{self.queue_id}: {what} mail from the null sender: no notification "
                              f"({len(entries)} recipient(s))")

    def _is_double_bounce(self) -> bool:
        """A notification to double_bounce_recipient that failed itself: nobody is told again."""
        wanted = self.ctx.params.double_bounce_recipient.lower()
        return all(r.address.lower() == wanted for r in self.item.envelope.recipients)

    def _notify(self, to: str, entries: list[bounce.Failure], headers_only: bool) -> None:
        """Queue a DSN of entries to `to` from the null sender. The message is returned whole
        only when it is small and asked for (only then is it read whole)."""
        env = self.item.envelope
        headers_only = (headers_only or (env.ret or "").upper() == "HDRS"
                        or self.message.size > bounce.RETURN_WHOLE_LIMIT)
        original = self.message.header() if headers_only else self.message.read()
        report = bounce.Report(self.ctx.params.myhostname, env.sender, self.queue_id, env.arrival,
                               envid=env.envid or "", headers_only=headers_only,
                               retry_until=env.arrival + self.ctx.params.maximal_queue_lifetime,
                               to="" if to == env.sender else to)
        writer = self.ctx.queue.writer("incoming")
        writer.write(bounce.build_dsn(report, entries, original))
        self.queued.append(writer.commit(Envelope(sender="", recipients=[Recipient(to)])))

    def _defer(self, pending: list[RecipientResult], now: float) -> str:
        ctx, item = self.ctx, self.item
        state, env = item.state, item.envelope
        warn_after = ctx.params.delay_warning_time
        local_delays = [r for r in pending if r.temporary]
        if warn_after and not state.warned and local_delays and now - env.arrival >= warn_after:
            self._bounce(local_delays, "delayed")
            ctx.queue.note_warned(self.queue_id)
        reasons = {r.key: "; ".join(dict.fromkeys(t.reason for t in r.temporary + r.waiting)) for r in pending}
        if all(not r.temporary for r in pending):
            # Only targets no transport can deliver yet: no point in retrying fast.
            next_try = now + ctx.params.maximal_backoff_time
        else:
            next_try = now + backoff(ctx.params, state.attempts)
        where = ctx.queue.defer(self.queue_id, next_try, reasons)
        ctx.log.debug(f"{self.queue_id}: {where}, next try in {next_try - now:.0f}s")
        return where
