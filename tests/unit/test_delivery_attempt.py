"""One delivery attempt over a real queue directory, with a fake mailbox store (no sockets)."""
from __future__ import annotations

import asyncio
import email
import email.policy

import pytest

from master.params import Params
from store.fsio import StorageError
from store.queue import Envelope, Queue, Recipient
from workers.delivery.attempt import REMOTE_PENDING, Attempt, Context, backoff
from workers.delivery.local import Outcome, RunAs
from workers.delivery.resolve import Resolver, UserEntry
from workers.qmgr import QueueManager


class Log:
    def __init__(self):
        self.lines = []

    def error(self, text):
        self.lines.append(text)

    info = debug = error


class Mailboxes:
    """Idempotent per delivery id, like store.mailstore; `full` users are over quota."""

    def __init__(self, full=()):
        self.stored: dict[str, list[bytes]] = {}
        self.ids: set[str] = set()
        self.full = set(full)

    def __call__(self, user, message, delivery_id):
        if user in self.full:
            return Outcome(False, False, "4.2.2", "mailbox full")
        if delivery_id not in self.ids:
            self.ids.add(delivery_id)
            self.stored.setdefault(user, []).append(message)
        return Outcome(True)


class Directory:
    users = {"bob": UserEntry(), "carol": UserEntry(), "archive": UserEntry(),
             "dora": UserEntry(enabled=False), "fwd": UserEntry(forward=("x@remote.org",), keep_copy=True)}
    aliases = {"team": ["bob", "carol"], "loop1": ["loop2"], "loop2": ["loop1"]}

    def user(self, name):
        return self.users.get(name)

    def alias(self, name):
        return self.aliases.get(name)


@pytest.fixture
def setup(tmp_path):
    def make(mailboxes=None, **settings):
        raw = {"myhostname": "mail.example.test", "mydomain": "example.test",
               "data_directory": str(tmp_path), "minimal_backoff_time": "10s",
               "maximal_backoff_time": "100s", **settings}
        params = Params(raw, {}, str(tmp_path))
        queue = Queue.from_params(params)
        queue.ensure_layout()
        log = Log()
        resolver = Resolver(params.mydestination, params.luser_relay, Directory())
        ctx = Context(params, log, queue, resolver, mailboxes or Mailboxes(), RunAs(name="t"))
        return ctx
    return make


def enqueue(queue: Queue, recipients, sender="alice@example.org", body=b"Subject: hi\r\n\r\nhello\r\n", **env):
    writer = queue.writer("incoming")
    writer.write(body)
    return writer.commit(Envelope(sender, [Recipient(r) if isinstance(r, str) else r for r in recipients], **env))


def attempt(ctx, queue_id, now=None):
    assert ctx.queue.activate(queue_id)
    return asyncio.run(Attempt(ctx, queue_id).run(now))


def bounces(queue: Queue):
    """(envelope, parsed DSN) of every bounce waiting in incoming."""
    found = []
    for queue_id in queue.ids("incoming"):
        item = queue.load(queue_id)
        if item.envelope.sender == "":
            with queue.message_file(queue_id) as f:
                found.append((item.envelope, email.message_from_bytes(f.read(), policy=email.policy.default)))
    return found


def test_delivers_once_per_mailbox_and_finishes(setup):
    ctx = setup()
    qid = enqueue(ctx.queue, ["bob@example.test", "team@example.test", "BOB@mail.example.test"])
    assert attempt(ctx, qid) == "finished"
    stored = ctx.deliver_mailbox.stored
    assert {u: len(m) for u, m in stored.items()} == {"bob": 1, "carol": 1}
    assert stored["bob"][0].startswith(b"Return-Path: <alice@example.org>\r\nDelivered-To: bob@example.test\r\n")
    assert ctx.queue.ids("active") == [] and bounces(ctx.queue) == []
    assert any("to=<carol@example.test>, orig_to=<team@example.test>, relay=local" in line
               and "status=sent (delivered to INBOX)" in line for line in ctx.log.lines)


def test_unknown_disabled_and_loop_bounce_in_one_dsn(setup):
    ctx = setup()
    qid = enqueue(ctx.queue, ["bob@example.test", "ghost@example.test", "dora@example.test", "loop1@example.test"])
    assert attempt(ctx, qid) == "finished"
    [(env, dsn)] = bounces(ctx.queue)
    assert env.sender == "" and [r.address for r in env.recipients] == ["alice@example.org"]
    blocks = dsn.get_payload()[1].get_payload()[1:]
    assert [(b["Final-Recipient"], b["Status"]) for b in blocks] == [
        ("rfc822; ghost@example.test", "5.1.1"), ("rfc822; dora@example.test", "5.2.1"),
        ("rfc822; loop1@example.test", "5.4.6")]
    assert len(ctx.deliver_mailbox.stored["bob"]) == 1


def test_no_bounce_to_the_null_sender_nor_when_notify_never(setup):
    ctx = setup()
    assert attempt(ctx, enqueue(ctx.queue, ["ghost@example.test"], sender="")) == "finished"
    assert attempt(ctx, enqueue(ctx.queue, [Recipient("ghost@example.test", notify=["NEVER"])])) == "finished"
    assert bounces(ctx.queue) == []


def test_over_quota_defers_with_doubling_backoff_then_bounces_when_expired(setup):
    ctx = setup(Mailboxes(full={"carol"}), maximal_queue_lifetime="1h")
    qid = enqueue(ctx.queue, ["team@example.test"])
    now = ctx.queue.load(qid).envelope.arrival
    assert attempt(ctx, qid, now) == "deferred"
    assert ctx.queue.load(qid).state.next_try == pytest.approx(now + 10)
    assert attempt(ctx, qid, now + 20) == "deferred"
    assert ctx.queue.load(qid).state.next_try == pytest.approx(now + 20 + 20)
    assert len(ctx.deliver_mailbox.stored["bob"]) == 1          # bob got it once, carol still pending
    assert attempt(ctx, qid, now + 3601) == "finished"
    [(_env, dsn)] = bounces(ctx.queue)
    block = dsn.get_payload()[1].get_payload()[1]
    assert block["Status"] == "4.4.7" and block["Action"] == "failed"
    assert len(ctx.deliver_mailbox.stored["bob"]) == 1


def test_backoff_is_capped(setup):
    params = setup().params
    assert [backoff(params, n) for n in (0, 1, 2, 3, 4, 50)] == [10, 20, 40, 80, 100, 100]


def test_remote_recipients_stay_deferred_and_never_bounce(setup):
    ctx = setup(maximal_queue_lifetime="1h")
    qid = enqueue(ctx.queue, ["x@remote.org", "fwd@example.test"])
    now = ctx.queue.load(qid).envelope.arrival
    assert attempt(ctx, qid, now) == "deferred"
    assert attempt(ctx, qid, now + 7200) == "deferred"
    assert bounces(ctx.queue) == []
    assert len(ctx.deliver_mailbox.stored["fwd"]) == 1            # the kept copy, once
    assert any(REMOTE_PENDING in line and "to=<x@remote.org>" in line for line in ctx.log.lines)


def test_always_bcc_copy_once(setup):
    ctx = setup(always_bcc="archive@example.test")
    qid = enqueue(ctx.queue, ["bob@example.test", "carol@example.test"])
    assert attempt(ctx, qid) == "finished"
    assert len(ctx.deliver_mailbox.stored["archive"]) == 1


def test_rerun_after_a_crash_does_not_duplicate(setup):
    ctx = setup(Mailboxes(full={"carol"}))
    qid = enqueue(ctx.queue, ["team@example.test"])
    assert attempt(ctx, qid) == "deferred"
    ctx.deliver_mailbox.full.clear()
    # as if the file were recovered from active/ after a crash: delivered again from the start
    assert attempt(ctx, qid, ctx.queue.load(qid).state.next_try) == "finished"
    assert {u: len(m) for u, m in ctx.deliver_mailbox.stored.items()} == {"bob": 1, "carol": 1}


def test_one_delay_warning_after_delay_warning_time(setup):
    ctx = setup(Mailboxes(full={"carol"}), delay_warning_time="1h")
    qid = enqueue(ctx.queue, [Recipient("carol@example.test", orcpt="rfc822;carol@example.test")])
    now = ctx.queue.load(qid).envelope.arrival
    assert attempt(ctx, qid, now) == "deferred"
    assert bounces(ctx.queue) == []                    # too early to warn
    for later in (3700, 3800):
        assert attempt(ctx, qid, now + later) == "deferred"
    [(_env, dsn)] = bounces(ctx.queue)                  # warned once only
    assert dsn["Subject"].startswith("Delayed Mail")
    block = dsn.get_payload()[1].get_payload()[1]
    assert (block["Action"], block["Status"], block["Original-Recipient"]) == \
        ("delayed", "4.2.2", "rfc822;carol@example.test")


def test_delivered_to_header_of_the_same_address_is_a_loop(setup):
    ctx = setup()
    body = (b"Delivered-To: bob@example.test\r\nDelivered-To: other@example.org\r\nSubject: again\r\n\r\n"
            b"Delivered-To: carol@example.test\r\n")
    qid = enqueue(ctx.queue, ["bob@example.test", "carol@example.test"], body=body)
    assert attempt(ctx, qid) == "finished"
    assert list(ctx.deliver_mailbox.stored) == ["carol"]           # a Delivered-To in the body does not count
    [(_env, dsn)] = bounces(ctx.queue)
    block = dsn.get_payload()[1].get_payload()[1]
    assert (block["Final-Recipient"], block["Status"]) == ("rfc822; bob@example.test", "5.4.6")


def test_a_storage_error_parks_the_file_in_deferred_not_in_active(setup):
    class BrokenStore:
        def __call__(self, user, message, delivery_id):
            raise StorageError("index: No space left on device")
    ctx = setup(BrokenStore())
    queue_id = enqueue(ctx.queue, ["bob@example.test"])
    asyncio.run(QueueManager(ctx).deliver(queue_id))
    assert ctx.queue.ids("active") == [] and ctx.queue.ids("deferred") == [queue_id]
    assert any("storage error, will retry" in line for line in ctx.log.lines)
