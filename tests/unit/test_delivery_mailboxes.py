"""qmgr's INBOX deliverer on a real store: quotas, and a re-run after a crash between the
mailbox write and the queue's done mark."""
from __future__ import annotations

import pytest

from store.mailstore import MailStore
from workers.delivery import mailboxes

QUOTA = 10_000


@pytest.fixture
def store(tmp_path):
    ms = MailStore(tmp_path / "store", tmp_path / "index", quota_limit=lambda user: QUOTA)
    yield ms
    ms.close()


@pytest.fixture
def deliver(store, monkeypatch):
    monkeypatch.setattr(mailboxes, "open_store", lambda params: store)
    return mailboxes.MailboxDeliverer(params=None)


def test_quota_defers_and_bounces(deliver, store):
    assert deliver("bob", b"x" * (QUOTA + 1), "Q1:bob").status == "5.2.2"
    assert deliver("bob", b"x" * 6000, "Q2:bob").ok
    full = deliver("bob", b"y" * 6000, "Q3:bob")
    assert (full.ok, full.permanent, full.status) == (False, False, "4.2.2")
    assert store.usage("bob") == 6000


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
