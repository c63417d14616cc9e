"""One delivery attempt of one queue file: resolve, deliver locally, bounce, defer or finish.

    attempt = Attempt(ctx, queue_id); await attempt.run(now)

The file must already be in active/. Every envelope recipient that is not yet done, and the
`always_bcc` archive copy (pseudo-recipient key "bcc"), is resolved into targets
(workers.delivery.resolve). Each target delivered is marked done in the queue's state log
under "t:<target>", so a later attempt never repeats a pipe or file delivery, and a mailbox
gets each message once however many recipients lead to it (the mailbox delivery id is
"<queue id>:<user>", recorded by the store in the same index transaction as the message).
A recipient is marked done when all its targets are delivered or failed for good; its
permanent failures go into one RFC 3464 bounce from the null sender to the envelope sender
(never for a null sender, nor when NOTIFY excludes FAILURE; NOTIFY=NEVER: no report at all).
A recipient whose RCPT said NOTIFY=SUCCESS gets a success report (Action: delivered, the
returned message's header only) once it is delivered. Temporary failures keep the
recipient pending: the file is deferred with a doubling back-off between
minimal_backoff_time and maximal_backoff_time, a delay warning is sent once after
delay_warning_time, and after maximal_queue_lifetime the temporary failures bounce.
Remote targets stay deferred ("remote delivery not built yet") and never bounce for now.
A message whose header already has `Delivered-To: <the final address>` has been here
before (a forwarding loop through another system): that target bounces with 5.4.6.
Diagnostics: one smtp.log line per recipient and outcome, Postfix style:
    ID: to=<bob@example.org>, relay=local, delay=0.2, status=sent (delivered to INBOX)
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable

from store.queue import Envelope, Queue, QueueItem, Recipient
from workers._log import Log
from workers.delivery import bounce
from workers.delivery.local import Outcome, RunAs, append_to_file, run_pipe
from workers.delivery.resolve import Failed, File, Mailbox, Pipe, Remote, Resolver, Target

REMOTE_PENDING = "remote delivery not built yet"
BCC_KEY = "bcc"
DEFAULT_NOTIFY = ("FAILURE", "DELAY")      # RFC 3461 4.1: no NOTIFY means failures and delays

# (user, message, delivery id) -> Outcome
MailboxDelivery = Callable[[str, bytes, str], Outcome]


@dataclass
class Context:
    """What every attempt needs; built once by qmgr."""
    params: object
    log: Log
    queue: Queue
    resolver: Resolver
    deliver_mailbox: MailboxDelivery
    run_as: RunAs | None                      # None: mail_owner unknown, commands and files wait


def backoff(params, attempts: int) -> float:
    """Seconds until the next try after `attempts` earlier deferrals: doubling, capped."""
    low, high = params.minimal_backoff_time, params.maximal_backoff_time
    return min(high, low * (2 ** min(attempts, 32)))


def target_key(target: Target) -> str:
    if isinstance(target, Mailbox):
        return f"t:mailbox:{target.user}"
    if isinstance(target, Pipe):
        return f"t:pipe:{target.alias}:{target.command}"
    if isinstance(target, File):
        return f"t:file:{target.alias}:{target.path}"
    return f"t:remote:{target.address}" if isinstance(target, Remote) else ""


def delivered_to(message: bytes) -> set[str]:
    """Lower-cased addresses of the Delivered-To: headers (the header section only)."""
    head = re.split(rb"\r?\n\r?\n", message, maxsplit=1)[0]
    return {m.decode("utf-8", "replace").strip().lower()
            for m in re.findall(rb"(?im)^Delivered-To:[ \t]*(\S+)", head)}


def describe(target: Target) -> str:
    if isinstance(target, Mailbox):
        return "delivered to INBOX"
    if isinstance(target, Pipe):
        return f"delivered to command: {target.command}"
    if isinstance(target, File):
        return f"delivered to file: {target.path}"
    return ""


@dataclass
class RecipientResult:
    key: str
    recipient: Recipient
    failures: list[Failed] = field(default_factory=list)      # permanent
    temporary: list[Failed] = field(default_factory=list)     # local, to be retried
    remote: list[str] = field(default_factory=list)           # remote addresses still pending

    @property
    def finished(self) -> bool:
        return not self.temporary and not self.remote


class Attempt:
    def __init__(self, ctx: Context, queue_id: str):
        self.ctx = ctx
        self.queue_id = queue_id
        self.item: QueueItem | None = None
        self.message = b""
        self.delivered_to: set[str] = set()

    # ------------------------------------------------------------ entry point
    async def run(self, now: float | None = None) -> str:
        """Deliver what can be delivered; returns "finished", "deferred" (or hold/deleted)."""
        ctx, qid = self.ctx, self.queue_id
        now = time.time() if now is None else now
        self.item = item = ctx.queue.load(qid, "active")
        env = item.envelope
        with ctx.queue.message_file(qid, "active") as f:
            self.message = f.read()
        self.delivered_to = delivered_to(self.message)
        ctx.log.info(f"{qid}: from=<{env.sender}>, size={env.size}, nrcpt={len(env.recipients)} (queue active)")
        done_targets = {k for k in item.state.done if k.startswith("t:")}
        results: list[RecipientResult] = []
        for key, rcpt in self._pending():
            result = RecipientResult(key, rcpt)
            for target in self.ctx.resolver.resolve(rcpt.address):
                await self._deliver_target(target, result, done_targets)
            results.append(result)
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
        for result in results:
            if result.finished:
                ctx.queue.mark_done(qid, result.key, "bounced" if result.failures else "delivered")
        pending = [r for r in results if not r.finished]
        if not pending:
            ctx.queue.finish(qid)
            ctx.log.info(f"{qid}: removed")
            return "finished"
        return self._defer(pending, now)

    def _pending(self) -> list[tuple[str, Recipient]]:
        item = self.item
        pending = item.pending()
        always_bcc = self.ctx.params.always_bcc
        if always_bcc and BCC_KEY not in item.state.done:
            pending.append((BCC_KEY, Recipient(always_bcc)))
        return pending

    # ------------------------------------------------------------ one target
    async def _deliver_target(self, target: Target, result: RecipientResult, done: set[str]) -> None:
        rcpt = result.recipient.address
        if isinstance(target, Failed):
            result.failures.append(target)
            self._log_status(rcpt, rcpt, "none", "bounced", target.reason)
            return
        if isinstance(target, Remote):
            result.remote.append(target.address)
            self._log_status(target.address, rcpt, "none", "deferred", REMOTE_PENDING)
            return
        key = target_key(target)
        if key in done:
            return
        final = self._final_address(target, rcpt)
        if final.lower() in self.delivered_to:
            loop = Failed("5.4.6", f"mail forwarding loop for {final} (Delivered-To: already present)")
            result.failures.append(loop)
            self._log_status(final, rcpt, "local", "bounced", loop.reason)
            return
        outcome = await self._local(target, final, rcpt)
        if outcome.ok:
            self.ctx.queue.mark_done(self.queue_id, key, "delivered", describe(target))
            done.add(key)
            self._log_status(final, rcpt, "local", "sent", describe(target))
        elif outcome.permanent:
            result.failures.append(Failed(outcome.status, outcome.detail))
            self._log_status(final, rcpt, "local", "bounced", outcome.detail)
        else:
            result.temporary.append(Failed(outcome.status, outcome.detail))
            self._log_status(final, rcpt, "local", "deferred", outcome.detail)

    async def _local(self, target: Target, final: str, original: str) -> Outcome:
        ctx, sender = self.ctx, self.item.envelope.sender
        limit = ctx.params.command_time_limit
        if isinstance(target, Mailbox):
            # After a crash the message may be in the mailbox already, its done mark lost: the
            # deliverer asks the store for the delivery id before it looks at the quota.
            return ctx.deliver_mailbox(target.user, self._with_trace(final), f"{self.queue_id}:{target.user}")
        if ctx.run_as is None:
            return Outcome(False, False, "4.3.5", f"mail_owner {ctx.params.mail_owner!r} is not a user here")
        if isinstance(target, Pipe):
            return await run_pipe(target.command, self.message, sender, final, original, ctx.run_as, limit)
        return await append_to_file(target.path, self.message, sender, final, ctx.run_as, limit)

    def _final_address(self, target: Target, original: str) -> str:
        if isinstance(target, Mailbox):
            domain = original.rpartition("@")[2] if "@" in original else ""
            if not domain or not self.ctx.resolver.is_local(original):
                domain = self.ctx.params.myhostname
            return f"{target.user}@{domain.lower()}"
        return original

    def _with_trace(self, final: str) -> bytes:
        head = f"Return-Path: <{self.item.envelope.sender}>\r\nDelivered-To: {final}\r\n".encode()
        return head + self.message

    def _log_status(self, to: str, original: str, relay: str, status: str, text: str) -> None:
        orig = f", orig_to=<{original}>" if original.lower() != to.lower() else ""
        delay = max(0.0, time.time() - self.item.envelope.arrival)
        self.ctx.log.info(f"{self.queue_id}: to=<{to}>{orig}, relay={relay}, delay={delay:.2f}, "
                          f"status={status} ({text})")

    # ------------------------------------------------------------ bounce, defer
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
        if not env.sender:
            what = "delivered" if action == "delivered" else "undeliverable"
            self.ctx.log.info(f"{self.queue_id}: {what} mail from the null sender: no notification "
                              f"({len(entries)} recipient(s))")
            return
        report = bounce.Report(self.ctx.params.myhostname, env.sender, self.queue_id, env.arrival,
                               envid=env.envid or "", headers_only=(env.ret or "").upper() == "HDRS",
                               retry_until=env.arrival + self.ctx.params.maximal_queue_lifetime)
        dsn = bounce.build_dsn(report, entries, self.message)
        writer = self.ctx.queue.writer("incoming")
        writer.write(dsn)
        new_id = writer.commit(Envelope(sender="", recipients=[Recipient(env.sender)]))
        kind = {"failed": "non-delivery", "delayed": "delay", "delivered": "success"}[action]
        self.ctx.log.info(f"{self.queue_id}: sender {kind} notification: {new_id}")

    def _defer(self, pending: list[RecipientResult], now: float) -> str:
        ctx, item = self.ctx, self.item
        state, env = item.state, item.envelope
        warn_after = ctx.params.delay_warning_time
        local_delays = [r for r in pending if r.temporary]
        if warn_after and not state.warned and local_delays and now - env.arrival >= warn_after:
            self._bounce(local_delays, "delayed")
            ctx.queue.note_warned(self.queue_id)
        reasons = {r.key: "; ".join([t.reason for t in r.temporary] + ([REMOTE_PENDING] if r.remote else []))
                   for r in pending}
        if all(not r.temporary for r in pending):
            # Only remote recipients left: no point in retrying fast until remote delivery exists.
            next_try = now + ctx.params.maximal_backoff_time
        else:
            next_try = now + backoff(ctx.params, state.attempts)
        where = ctx.queue.defer(self.queue_id, next_try, reasons)
        ctx.log.debug(f"{self.queue_id}: {where}, next try in {next_try - now:.0f}s")
        return where
