"""qmgr's mailbox transport on a real store: quotas, streaming from the queue file, and a
re-run after a crash between the mailbox write and the queue's done mark."""
from __future__ import annotations

import pytest

from master.params import Params
from store.directory import Directory
from store.mailstore import MailStore
from workers.qmgr.message import MessageFile
from workers.qmgr.transports.mailbox import MailboxMessage, MailboxTransport
from tests.fakes import QuotaUsers

QUOTA = 10_000


@pytest.fixture
def store(tmp_path):
    ms = MailStore(tmp_path / "store", tmp_path / "index")
    yield ms
    ms.close()


@pytest.fixture
def deliver(store, tmp_path):
    params = Params({"data_directory": str(tmp_path)}, {}, str(tmp_path))
    transport = MailboxTransport(store, Directory(params, QuotaUsers(QUOTA), None, store), None, "mail.example.test")

    def run(user: str, message: bytes, delivery_id: str):
        path = tmp_path / f"queue-file-{delivery_id}"
        path.write_bytes(b"HEAD\n" + message)          # the message part starts after a head
        [outcome] = transport.store_batch([MailboxMessage(user, b"", MessageFile(str(path), 5, len(message)), delivery_id)])
        return outcome
    return run


def test_quota_defers_and_bounces(deliver, store):
    assert deliver("bob", b"x" * (QUOTA + 1), "Q1:bob").status == "5.2.2"
    assert deliver("bob", b"x" * 6000, "Q2:bob").ok
    full = deliver("bob", b"y" * 6000, "Q3:bob")
    assert (full.ok, full.permanent, full.status) == (False, False, "4.2.2")
    assert store.usage("bob") == 6000


def test_the_message_part_of_the_queue_file_is_stored(deliver, store):
    message = b"Subject: big\r\n\r\n" + b"z" * 600_000          # several chunks
    assert deliver("carol", message, "Q1:carol").ok
    with store.open_mailbox("carol", "INBOX").open(1) as f:
        assert f.read() == message


def test_a_rerun_after_the_mailbox_write_is_delivered_once_whatever_the_quota(deliver, store):
    message = b"z" * 6000
    assert deliver("bob", message, "Q1:bob").ok
    # qmgr was killed before the queue's done mark: the same delivery comes again; the message
    # already counts against the quota, yet it is no reason to defer, and nothing is stored twice
    again = deliver("bob", message, "Q1:bob")
    assert again.ok and again.detail == "stored before"
    assert store.usage("bob") == 6000 and len(store.open_mailbox("bob", "INBOX")) == 1
    assert deliver("bob", message, "Q2:bob").status == "4.2.2"  # another message is over quota


def test_a_rerun_whose_file_never_got_indexed_is_checked_against_the_quota(deliver, store):
    store.deliver("bob", "INBOX", b"a" * 6000)
    store.index.reserve_uid("bob", "INBOX", "Q1:bob")  # killed before the file was written
    assert deliver("bob", b"b" * 6000, "Q1:bob").status == "4.2.2"
    assert store.usage("bob") == 6000 and len(store.open_mailbox("bob", "INBOX")) == 1
