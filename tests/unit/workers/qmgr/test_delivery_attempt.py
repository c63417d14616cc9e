"""One delivery attempt over a real queue directory, with a fake mailbox store (no sockets)."""
from __future__ import annotations

import asyncio
import email
import email.policy
import os
from types import SimpleNamespace

import pytest

from master.params import Params
from store.directory import Account, Failed, LocalDomains
from store.fsio import StorageError
from store.queue import Envelope, Queue, Recipient
from store.resolve import Resolver
from workers.qmgr.attempt import Attempt, Context, backoff
from workers.qmgr.manager import QueueManager
from workers.qmgr.transports.local import RunAs
from workers.qmgr.transports.remote import REMOTE_PENDING


class Log:
    def __init__(self):
        self.lines = []

    def error(self, text):
        self.lines.append(text)

    info = debug = error


class Mail:
    """Idempotent per delivery id, like store.mailstore; keeps what each user got."""

    def __init__(self):
        self.stored: dict[str, list[bytes]] = {}
        self.ids: set[str] = set()
        self.sources = []

    def delivered(self, user, delivery_id):
        return delivery_id in self.ids

    def deliver_many(self, requests):
        uids = []
        for r in requests:
            self.sources.append(r.source)
            data = b"".join(r.source)
            if r.delivery_id not in self.ids:
                self.ids.add(r.delivery_id)
                self.stored.setdefault(r.user, []).append(data)
            uids.append(len(self.ids))
        return uids


class Directory:
    """store.directory.Directory's answers from tables; `full` users are over quota."""
    users = {"bob": Account("bob"), "carol": Account("carol"), "archive": Account("archive"),
             "dora": Account("dora", enabled=False),
             "fwd": Account("fwd", forward=("x@remote.org",), keep_copy=True)}
    aliases = {"team": ["bob", "carol"], "loop1": ["loop2"], "loop2": ["loop1"]}

    def __init__(self, params):
        self.domains = LocalDomains(params)
        self.full: set[str] = set()

    def user(self, name):
        return self.users.get(name)

    def alias(self, name):
        return self.aliases.get(name)

    def unextended(self, name):
        return None

    def quota_check(self, name, size, ahead=0):
        return Failed("4.2.2", "mailbox full") if name in self.full else None


@pytest.fixture
def setup(tmp_path):
    made = []

    def make(full=(), **settings):
        raw = {"myhostname": "mail.example.test", "mydomain": "example.test",
               "data_directory": str(tmp_path), "minimal_backoff_time": "10s",
               "maximal_backoff_time": "100s", **settings}
        params = Params(raw, {}, str(tmp_path))
        queue = Queue.from_params(params)
        queue.ensure_layout()
        directory = Directory(params)
        directory.full.update(full)
        store = SimpleNamespace(queue=queue, mail=Mail(), directory=directory,
                                resolver=Resolver(directory, params.luser_relay))
        ctx = Context.build(params, Log(), store, RunAs(name="t"))
        ctx.mail, ctx.directory = store.mail, directory          # for the checks
        made.append(ctx)
        return ctx
    yield make
    for ctx in made:
        ctx.close()


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
    stored = ctx.mail.stored
    assert {u: len(m) for u, m in stored.items()} == {"bob": 1, "carol": 1}
    assert stored["bob"][0] == (b"Return-Path: <alice@example.org>\r\nDelivered-To: bob@example.test\r\n"
                                b"Subject: hi\r\n\r\nhello\r\n")
    # streamed from the queue file into the store's writer, never a copy of the whole message
    assert not any(isinstance(source, (bytes, bytearray)) for source in ctx.mail.sources)
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
    assert len(ctx.mail.stored["bob"]) == 1


def test_no_bounce_to_the_null_sender_nor_when_notify_never(setup):
    """A failed bounce goes to postmaster as a double bounce (headers only), and a failed
    double bounce to nobody; NOTIFY=NEVER gets no report."""
    ctx = setup(double_bounce_recipient="ghost")
    assert attempt(ctx, enqueue(ctx.queue, [Recipient("ghost@example.test", notify=["NEVER"])])) == "finished"
    assert bounces(ctx.queue) == []
    assert attempt(ctx, enqueue(ctx.queue, ["ghost@example.test"], sender="")) == "finished"
    [(envelope, dsn)] = bounces(ctx.queue)
    assert envelope.recipients == [Recipient("ghost")] and dsn["To"] == "ghost"
    assert dsn.get_content_type() == "multipart/report"
    assert [p.get_content_type() for p in dsn.iter_parts()][-1] == "text/rfc822-headers"
    [double] = ctx.queue.ids("incoming")
    assert attempt(ctx, double) == "finished"                 # "ghost" is unknown here too
    assert bounces(ctx.queue) == []


def test_bounce_notice_recipient_gets_the_headers_of_every_bounce(setup):
    ctx = setup(bounce_notice_recipient="postmaster@example.test")
    assert attempt(ctx, enqueue(ctx.queue, ["ghost@example.test"])) == "finished"
    found = sorted(bounces(ctx.queue), key=lambda b: b[0].recipients[0].address)
    assert [e.recipients[0].address for e, _ in found] == ["alice@example.org", "postmaster@example.test"]
    (_, to_sender), (_, to_postmaster) = found
    assert to_postmaster["To"] == "postmaster@example.test" and to_sender["To"] == "alice@example.org"
    assert [p.get_content_type() for p in to_postmaster.iter_parts()][-1] == "text/rfc822-headers"
    assert [p.get_content_type() for p in to_sender.iter_parts()][-1] == "message/rfc822"


def test_over_quota_defers_with_doubling_backoff_then_bounces_when_expired(setup):
    ctx = setup(full={"carol"}, maximal_queue_lifetime="1h")
    qid = enqueue(ctx.queue, ["team@example.test"])
    now = ctx.queue.load(qid).envelope.arrival
    assert attempt(ctx, qid, now) == "deferred"
    assert ctx.queue.load(qid).state.next_try == pytest.approx(now + 10)
    assert attempt(ctx, qid, now + 20) == "deferred"
    assert ctx.queue.load(qid).state.next_try == pytest.approx(now + 20 + 20)
    assert len(ctx.mail.stored["bob"]) == 1          # bob got it once, carol still pending
    assert attempt(ctx, qid, now + 3601) == "finished"
    [(_env, dsn)] = bounces(ctx.queue)
    block = dsn.get_payload()[1].get_payload()[1]
    assert block["Status"] == "4.4.7" and block["Action"] == "failed"
    assert len(ctx.mail.stored["bob"]) == 1


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
    assert len(ctx.mail.stored["fwd"]) == 1            # the kept copy, once
    assert any(REMOTE_PENDING in line and "to=<x@remote.org>" in line for line in ctx.log.lines)


def test_always_bcc_copy_once(setup):
    ctx = setup(always_bcc="archive@example.test")
    qid = enqueue(ctx.queue, ["bob@example.test", "carol@example.test"])
    assert attempt(ctx, qid) == "finished"
    assert len(ctx.mail.stored["archive"]) == 1


def test_rerun_after_a_crash_does_not_duplicate(setup):
    ctx = setup(full={"carol"})
    qid = enqueue(ctx.queue, ["team@example.test"])
    assert attempt(ctx, qid) == "deferred"
    ctx.directory.full.clear()
    # as if the file were recovered from active/ after a crash: delivered again from the start
    assert attempt(ctx, qid, ctx.queue.load(qid).state.next_try) == "finished"
    assert {u: len(m) for u, m in ctx.mail.stored.items()} == {"bob": 1, "carol": 1}


def test_one_delay_warning_after_delay_warning_time(setup):
    ctx = setup(full={"carol"}, delay_warning_time="1h")
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
    assert list(ctx.mail.stored) == ["carol"]           # a Delivered-To in the body does not count
    [(_env, dsn)] = bounces(ctx.queue)
    block = dsn.get_payload()[1].get_payload()[1]
    assert (block["Final-Recipient"], block["Status"]) == ("rfc822; bob@example.test", "5.4.6")


def test_a_storage_error_parks_the_file_in_deferred_not_in_active(setup, monkeypatch):
    ctx = setup()
    queue_id = enqueue(ctx.queue, ["bob@example.test"])

    def broken(*args):
        raise StorageError("cannot sync active: Input/output error")
    monkeypatch.setattr(ctx.queue, "finish", broken)
    assert ctx.queue.activate(queue_id)
    asyncio.run(QueueManager(ctx).deliver(queue_id))
    assert ctx.queue.ids("active") == [] and ctx.queue.ids("deferred") == [queue_id]
    assert any("storage error, will retry" in line for line in ctx.log.lines)


# ---------------------------------------------------------------- what is marked done, and when

def recording(ctx, monkeypatch) -> list[list[dict]]:
    """Every append to a state log from now on (the events of each append)."""
    appends: list[list[dict]] = []
    real = ctx.queue._record_many

    def record_many(queue_id, events):
        appends.append(events)
        real(queue_id, events)
    monkeypatch.setattr(ctx.queue, "_record_many", record_many)
    return appends


def test_a_file_delivered_into_mailboxes_only_is_removed_without_any_mark(setup, monkeypatch):
    ctx = setup()
    appends = recording(ctx, monkeypatch)
    qid = enqueue(ctx.queue, ["bob@example.test", "team@example.test"])
    assert attempt(ctx, qid) == "finished"
    assert appends == [] and {u: len(m) for u, m in ctx.mail.stored.items()} == {"bob": 1, "carol": 1}
    assert ctx.queue.ids("active") == [] and os.listdir(ctx.queue.path("state")) == []


def test_pipe_targets_are_marked_at_once_and_mailboxes_when_the_file_is_deferred(setup,
                                                                                tmp_path, monkeypatch):
    ctx = setup(full={"carol"})
    out = tmp_path / "piped"
    command = f"cat >> {out}"
    ctx.directory.aliases = {**Directory.aliases, "tee": ["bob", "carol", f"|{command}"]}
    appends = recording(ctx, monkeypatch)
    qid = enqueue(ctx.queue, ["tee@example.test"])
    assert attempt(ctx, qid) == "deferred"
    # the pipe at once; bob's mailbox with the deferral (then the deferral itself)
    assert [[e.get("key") for e in events] for events in appends] == [[f"t:pipe:tee:{command}"], ["t:mailbox:bob"],
                                                                      [None]]
    assert set(ctx.queue.read_state(qid).done) == {f"t:pipe:tee:{command}", "t:mailbox:bob"}
    ctx.directory.full.clear()
    assert attempt(ctx, qid, ctx.queue.load(qid).state.next_try) == "finished"
    assert out.read_bytes().count(b"Subject: hi") == 1
    assert len(ctx.mail.sources) == 2                     # bob once, carol once: bob was not tried again
    assert os.listdir(ctx.queue.path("state")) == []


def test_a_queued_report_marks_the_recipients_before_the_file_is_removed(setup, monkeypatch):
    ctx = setup()
    qid = enqueue(ctx.queue, ["bob@example.test", "ghost@example.test"])
    done_at_finish = {}
    real_finish = ctx.queue.finish

    def finish(queue_id):
        done_at_finish.update(ctx.queue.read_state(queue_id).done)
        real_finish(queue_id)
    monkeypatch.setattr(ctx.queue, "finish", finish)
    assert attempt(ctx, qid) == "finished"
    assert len(bounces(ctx.queue)) == 1
    assert {key: status for key, (status, _) in done_at_finish.items()} == {"0": "delivered", "1": "bounced"}
