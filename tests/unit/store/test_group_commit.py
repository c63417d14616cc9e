"""MailStore.write_many / Index.write_many (the imapd's group commit): flag changes,
expunges, \\Recent claims and structure blobs of any users and mailboxes in one index
transaction, a result or error per request, the same outcome as the requests made one by
one, on both index implementations."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from store import fsio
from store.index import NoSuchMailbox, TooManyKeywords
from store.mailstore import BadMailboxName, MailStore
from tests.unit.store.test_index import IMPLS, _module, count_write_transactions


@pytest.fixture(params=IMPLS)
def store(request, tmp_path, corpus, monkeypatch):
    ms = MailStore(tmp_path / "store", tmp_path / "index")
    ms.index = _module(request.param).Index(tmp_path / "index")
    messages = [p.read_bytes() for p in sorted(corpus.glob("*.eml"))][:4]
    ms.create_mailbox("bob", "Work")
    for user, mailbox in (("bob", "INBOX"), ("bob", "Work"), ("carol", "INBOX")):
        for message in messages:
            ms.deliver(user, mailbox, message)
    yield ms
    ms.index.close()


def flags_of(store, user, mailbox):
    view = store.open_mailbox(user, mailbox)
    return [m.flags for m in view.messages()]


def test_flag_requests_answered_each_in_one_transaction(store, monkeypatch):
    full = [f"k{i}" for i in range(57)]
    commits = count_write_transactions(store.index, monkeypatch)
    results = store.write_many([("flags", request) for request in [
        ("bob", "INBOX", [(1, 2)], "+", ["\\Seen"], None),
        ("carol", "INBOX", [(1, 4)], "=", ["\\Flagged", "later"], None),
        ("bob", "Nope", [(1, 1)], "+", ["\\Seen"], None),          # no such mailbox: its directory is missing
        ("bob", "INBOX", [(2, 3)], "+", ["\\Deleted"], None),      # the same mailbox again, after the first
        ("bob", "Work", [(1, 1)], "+", full, None),                # too many keywords
        ("", "INBOX", [(1, 1)], "+", ["\\Seen"], None),           # a bad user name
        ("bob", "Work", [(1, 4)], "+", ["\\Answered"], 1),         # CONDSTORE: all modified since 1
        ("bob", "Work", [(3, 3)], "?", ["\\Seen"], None),          # a bad mode
    ]])
    assert len(commits) == 1
    assert [r.uid for r in results[0]] == [1, 2] and [r.uid for r in results[3]] == [2, 3]
    assert [r.flags for r in results[1]] == [("\\Flagged", "later")] * 4
    assert isinstance(results[2], fsio.StorageError)
    assert isinstance(results[4], TooManyKeywords)
    assert isinstance(results[5], BadMailboxName)
    assert len(results[6]) == 0 and results[6].conflicts == [1, 2, 3, 4]
    assert isinstance(results[7], ValueError)
    assert next(iter(results[3])).modseq == next(iter(results[0])).modseq + 1   # in the order given
    assert flags_of(store, "bob", "INBOX") == [("\\Seen",), ("\\Seen", "\\Deleted"), ("\\Deleted",), ()]
    assert flags_of(store, "carol", "INBOX") == [("\\Flagged", "later")] * 4
    assert flags_of(store, "bob", "Work") == [()] * 4
    journal = Path(store.mailbox_dir("bob", "INBOX"), ".journal").read_text()
    assert journal.index("1 \\Seen") < journal.index("2 \\Seen \\Deleted")  # journal in index order


def test_index_batch_isolates_a_missing_mailbox(store):
    results = store.index.write_many([("flags", ("bob", "Gone", [(1, 1)], "+", ["\\Seen"])),
                                      ("flags", ("bob", "INBOX", [(4, 4)], "+", ["\\Seen"])),
                                      ("expunge", ("bob", "Gone")),
                                      ("expunge", ("bob", "INBOX", [(4, 4)], False))])
    assert isinstance(results[0], NoSuchMailbox) and [r.uid for r in results[1]] == [4]
    assert isinstance(results[2], NoSuchMailbox) and results[3].uids() == [4]


def test_expunges_one_transaction_one_fsync_per_directory(store, monkeypatch):
    store.set_flags("bob", "INBOX", [(1, 4)], "+", ["\\Deleted"])
    store.set_flags("carol", "INBOX", [(2, 2)], "+", ["\\Deleted"])
    usage = store.usage("bob")
    syncs, real_fsync = [], fsio.fsync_dir
    monkeypatch.setattr(fsio, "fsync_dir", lambda path: syncs.append(path) or real_fsync(path))
    commits = count_write_transactions(store.index, monkeypatch)
    results = store.write_many([("expunge", request) for request in [
        ("bob", "INBOX", [(1, 2)], True),
        ("carol", "INBOX", None, True),
        ("bob", "Nope", None, True),
        ("bob", "INBOX", [(3, 3)], True),
        ("bob", "Work", [(1, 1)], True),       # nothing flagged \Deleted: nothing goes
    ]])
    assert len(commits) == 1
    assert results[0].uids() == [1, 2] and results[1].uids() == [2] and results[3].uids() == [3]
    assert isinstance(results[2], fsio.StorageError) and len(results[4]) == 0
    assert sorted(syncs) == sorted([store.mailbox_dir("bob", "INBOX"), store.mailbox_dir("carol", "INBOX")])
    assert store.open_mailbox("bob", "INBOX").view.uids() == [4]
    assert store.open_mailbox("carol", "INBOX").view.uids() == [1, 3, 4]
    for user, mailbox in (("bob", "INBOX"), ("carol", "INBOX")):
        files = [n for n in os.listdir(store.mailbox_dir(user, mailbox)) if not n.startswith(".")]
        assert len(files) == len(store.open_mailbox(user, mailbox))
    assert store.usage("bob") < usage


def test_single_calls_are_batches_of_one(store):
    changed = store.set_flags("bob", "INBOX", [(1, 1)], "+", ["\\Deleted"])
    assert [r.uid for r in changed] == [1]
    assert store.expunge("bob", "INBOX").uids() == [1]
    with pytest.raises(TooManyKeywords):
        store.set_flags("bob", "INBOX", [(2, 2)], "+", [f"k{i}" for i in range(57)])
    with pytest.raises(NoSuchMailbox):
        store.index.expunge("bob", "Nope")


def test_recent_claims_and_structures_in_one_transaction(store, monkeypatch):
    commits = count_write_transactions(store.index, monkeypatch)
    claims = store.write_many([("recent", request) for request in [
        ("bob", "INBOX"), ("bob", "Nope"), ("bob", "INBOX"), ("carol", "inbox")]])
    kept = store.write_many([("structures", request) for request in [
        ("bob", "INBOX", {1: b"one", 9: b"gone"}), ("bob", "Nope", {1: b"x"}), ("carol", "INBOX", {2: b"two"})]])
    assert len(commits) == 2
    assert claims[0] == (1, 5) and claims[2] == (5, 5) and claims[3] == (1, 5)   # the second claim finds none left
    assert isinstance(claims[1], NoSuchMailbox) and isinstance(kept[1], NoSuchMailbox)
    assert kept[0] == 1 and kept[2] == 1                                          # UID 9 is not there
    assert store.structures("bob", "INBOX", [1, 9]) == {1: b"one"}
    assert store.structures("carol", "INBOX", [2]) == {2: b"two"}


def test_all_kinds_share_one_transaction(store, monkeypatch):
    store.set_flags("bob", "Work", [(1, 1)], "+", ["\\Deleted"])
    commits = count_write_transactions(store.index, monkeypatch)
    results = store.write_many([("flags", ("bob", "INBOX", [(1, 1)], "+", ["\\Answered"], None)),
                                ("expunge", ("bob", "Work", None, True)),
                                ("recent", ("carol", "INBOX")),
                                ("structures", ("bob", "INBOX", {2: b"blob"})),
                                ("flags", ("bob", "Work", [(1, 2)], "+", ["\\Seen"], None))])  # after the expunge
    assert len(commits) == 1
    assert [r.uid for r in results[0]] == [1] and results[1].uids() == [1] and results[2] == (1, 5)
    assert results[3] == 1 and [r.uid for r in results[4]] == [2]
    assert store.open_mailbox("bob", "Work").view.uids() == [2, 3, 4]


def test_malformed_arguments_stop_their_request_alone(store):
    results = store.index.write_many([("flags", ("bob", "INBOX", None, "+", ["\\Seen"])),  # flags need ranges
                                      ("flags", ("bob", "INBOX", [(1, 1)], "+", ["\\Seen"]))])
    assert isinstance(results[0], TypeError) and [r.uid for r in results[1]] == [1]
