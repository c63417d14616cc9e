"""workers/imapd/writer.py on a real store: requests waiting together share one cycle on the
store thread (one job for the writes, one for the appends); a session's second request waits for the
next cycle (its order kept); each caller gets its own result or error."""
from __future__ import annotations

import asyncio

import pytest

from store import fsio
from store.mailstore import INBOX, DeliveryRequest, MailStore, NoSuchMailbox
from workers.imapd.writer import Writer


class Backend:
    """The part of workers/imapd/backend.py the writer uses; records each job's kinds."""

    def __init__(self, mail):
        self.mail = mail
        self.cycles = []

    async def run(self, fn, mail, requests):
        self.cycles.append([kind for kind, _ in requests])
        return await asyncio.to_thread(fn, mail, requests)


@pytest.fixture
def mail(tmp_path, corpus):
    ms = MailStore(tmp_path / "store", tmp_path / "index")
    for path in sorted(corpus.glob("*.eml"))[:3]:
        ms.deliver("bob", INBOX, path.read_bytes())
    ms.deliver("carol", INBOX, b"Subject: hi\r\n\r\nhello\r\n")
    yield ms
    ms.index.close()


def test_requests_waiting_together_share_a_cycle(mail, corpus):
    backend = Backend(mail)
    writer = Writer(backend)
    a, b, c, d = object(), object(), object(), object()
    message = DeliveryRequest("", "", (corpus / "01-plain.eml").read_bytes(), flags=("\\Seen",))

    async def scenario():
        return await asyncio.gather(
            writer.expunge(a, "bob", INBOX, [(1, 3)]),                         # nothing \Deleted yet
            writer.set_flags(b, "carol", INBOX, [(1, 1)], "+", ["\\Flagged"]),
            writer.append(c, "bob", INBOX, [message, message]),
            writer.set_flags(a, "bob", INBOX, [(1, 1)], "+", ["\\Deleted"]),  # a's second starts the next cycle
            writer.append(d, "bob", "Missing", [message]),
            writer.set_flags(d, "bob", INBOX, [(2, 2)], "+", ["\\Seen"]),     # d's second: after its failure
            return_exceptions=True)

    expunged, flagged, appended, deleted, missing, seen = asyncio.run(scenario())
    # each cycle: its writes as one job, then its appends as another
    assert backend.cycles == [["expunge", "flags"], ["append"], ["flags"], ["append"], ["flags"]]
    assert len(expunged) == 0 and [r.uid for r in flagged] == [1] and appended == [4, 5]
    assert [r.uid for r in deleted] == [1] and [r.uid for r in seen] == [2]
    assert isinstance(missing, NoSuchMailbox)
    view = mail.open_mailbox("bob", INBOX)
    assert [m.flags for m in view.messages()] == [("\\Deleted",), ("\\Seen",), (), ("\\Seen",), ("\\Seen",)]


def test_a_failed_append_leaves_none_of_its_messages(mail, corpus, monkeypatch):
    backend = Backend(mail)
    writer = Writer(backend)
    real, writes = fsio.write_temp, []

    def second_fails(directory, prefix, source):
        writes.append(directory)
        if len(writes) == 2:
            raise fsio.StorageError("disk trouble")
        return real(directory, prefix, source)
    monkeypatch.setattr(fsio, "write_temp", second_fails)
    message = DeliveryRequest("", "", (corpus / "01-plain.eml").read_bytes())

    async def scenario():
        return await asyncio.gather(writer.append(object(), "bob", INBOX, [message, message]),
                                    writer.append(object(), "carol", INBOX, [message]), return_exceptions=True)

    failed, stored = asyncio.run(scenario())
    assert isinstance(failed, fsio.StorageError) and stored == [2]
    assert mail.open_mailbox("bob", INBOX).view.uids() == [1, 2, 3]   # the batch's first is gone again
    assert mail.open_mailbox("carol", INBOX).view.uids() == [1, 2]
