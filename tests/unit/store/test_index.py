"""The mail index: every test runs on the compiled index and on the pure-Python reference,
and a property test drives both with the same random operations and compares the results."""
from __future__ import annotations

import importlib
import multiprocessing
import os
from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store import _index_py

IMPLS = ["store._index_py", "store._index"]


def _module(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("MAILHOUSE_PURE_PYTHON"):
            pytest.skip("the compiled index is disabled by MAILHOUSE_PURE_PYTHON")
        raise  # built by `make install`; a missing build is a failure, not a skip


@pytest.fixture(params=IMPLS)
def impl(request):
    return _module(request.param)


@pytest.fixture
def index(impl, tmp_path):
    ix = impl.Index(tmp_path / "index", durable=False)
    ix.create_mailbox("bob", "INBOX", uidvalidity=42)
    yield ix
    ix.close()


def fill(ix, count, user="bob", mailbox="INBOX", flags=lambda i: ()):
    ix.append_many(user, mailbox, [(i, 100 + i, 1_700_000_000 + i, flags(i)) for i in range(1, count + 1)])


# ---------------------------------------------------------------- sequence sets

@pytest.mark.parametrize("text, largest, expected", [
    ("1:*", 5, [(1, 5)]),
    ("3,5:9", 20, [(3, 3), (5, 9)]),
    ("*", 7, [(7, 7)]),
    ("9:5,1,2", 20, [(1, 2), (5, 9)]),
    ("4:*", 2, [(2, 4)]),
    ("*", 0, []),
    ("1:3,2:6,8", 10, [(1, 6), (8, 8)]),
    ("4294967295", 1, [(4294967295, 4294967295)]),
])
def test_parse_sequence_set(impl, text, largest, expected):
    assert impl.parse_sequence_set(text, largest) == expected


@pytest.mark.parametrize("text", ["", "0", "1:0", "a", "1,,2", "01", "1:2:3", "4294967296", "-1", "1 ", ",",
                                  "1," * 20_000])
def test_parse_sequence_set_rejects(impl, text):
    with pytest.raises(ValueError):
        impl.parse_sequence_set(text, 10)


# ---------------------------------------------------------------- mailboxes and delivery

def test_mailbox_header_counts_and_usage(index):
    fill(index, 3, flags=lambda i: ["\\Seen"] if i == 2 else [])
    info = index.mailbox("bob", "INBOX")
    assert (info.uidvalidity, info.uidnext, info.count, info.unseen, info.total_size) == (42, 4, 3, 2, 306)
    assert index.usage("bob") == (306, 3)
    assert index.users() == ["bob"]


def test_delivery_id_makes_append_idempotent(index):
    first = index.reserve_uid("bob", "INBOX", "q1:bob")
    assert first.state == "new"
    assert index.reserve_uid("bob", "INBOX", "q1:bob") == _index_py.Reservation(first.uid, 42, "pending")
    assert index.append("bob", "INBOX", first.uid, 10, 0, (), "q1:bob")
    assert index.reserve_uid("bob", "INBOX", "q1:bob").state == "done"
    assert not index.append("bob", "INBOX", first.uid, 10, 0, (), "q1:bob")
    assert index.usage("bob") == (10, 1)
    fresh = index.reserve_uid("bob", "INBOX", "q2:bob", fresh=True)
    assert fresh.uid == first.uid + 1
    block = index.reserve_uid("bob", "INBOX", count=10)
    assert block.uid == fresh.uid + 1 and index.mailbox("bob", "INBOX").uidnext == block.uid + 10
    with pytest.raises(ValueError):
        index.reserve_uid("bob", "INBOX", "q3:bob", count=2)


def count_write_transactions(ix, monkeypatch) -> list:
    """Wrap the index's one way into a write transaction; the list grows by one per commit."""
    commits, real = [], type(ix)._write

    def counted(self, action, *args, **kwargs):
        result = real(self, action, *args, **kwargs)
        commits.append(action)
        return result
    monkeypatch.setattr(type(ix), "_write", counted)
    return commits


def test_batch_reserve_and_append_take_one_transaction_each(index, monkeypatch):
    index.create_mailbox("carol", "INBOX", uidvalidity=7)
    index.create_mailbox("bob", "Full", uidnext=_index_py.MAX_UID)
    commits = count_write_transactions(index, monkeypatch)
    wanted = [("bob", "INBOX", "q1:bob"), ("carol", "INBOX", "q1:carol"), ("bob", "INBOX", "q2:bob"),
              ("bob", "Nope", "q3:bob"), ("bob", "Full", "q4:bob"), ("bob", "INBOX", None)]
    reserved = index.reserve_uids(wanted)
    assert len(commits) == 1
    assert reserved[:3] == [_index_py.Reservation(1, 42, "new"), _index_py.Reservation(1, 7, "new"),
                            _index_py.Reservation(2, 42, "new")]
    assert isinstance(reserved[3], _index_py.NoSuchMailbox)
    assert isinstance(reserved[4], _index_py.StorageError)  # out of UIDs: that one alone
    assert reserved[5] == _index_py.Reservation(3, 42, "new")
    assert index.mailbox("bob", "INBOX").uidnext == 4 and index.mailbox("bob", "Full").uidnext == _index_py.MAX_UID
    # the same ids again: pending (file may exist), until the entries are in
    assert index.reserve_uids(wanted[:3]) == [_index_py.Reservation(r.uid, r.uidvalidity, "pending") for r in reserved[:3]]
    assert index.reserve_uids(wanted[:1], fresh=True) == [_index_py.Reservation(4, 42, "new")]
    del commits[:]
    added = index.append_batch([
        ("bob", "INBOX", 3, 30, 1_700_000_003, ("\\Seen",), None),   # out of UID order in the batch
        ("bob", "INBOX", 4, 10, 1_700_000_001, (), "q1:bob"),
        ("carol", "INBOX", 1, 20, 1_700_000_002, ("$Work",), "q1:carol"),
        ("bob", "Nope", 9, 5, 0, (), "q3:bob"),
        ("bob", "INBOX", 2, 40, 1_700_000_004, (), "q2:bob")])
    assert len(commits) == 1
    assert added[:3] + added[4:] == [True, True, True, True] and isinstance(added[3], _index_py.NoSuchMailbox)
    view = index.open_view("bob", "INBOX")
    assert view.uids() == [2, 3, 4] and len({view.record(s).modseq for s in (1, 2, 3)}) == 1  # one modseq
    info = index.mailbox("bob", "INBOX")
    assert (info.count, info.unseen, info.total_size, info.uidnext) == (3, 2, 80, 5)
    assert index.open_view("carol", "INBOX").record(1).flags == ("$Work",)
    assert index.usage("bob") == (80, 3) and index.usage("carol") == (20, 1)
    assert [r.state for r in index.reserve_uids(wanted[:3])] == ["done", "done", "done"]
    assert index.delivered("carol", "q1:carol") and not index.delivered("bob", "q3:bob")
    # a retry of the batch changes nothing but what it must: the entries are there already
    assert index.append_batch([("bob", "INBOX", 4, 10, 0, (), "q1:bob")]) == [False]
    assert index.usage("bob") == (80, 3)


def test_batch_and_single_appends_build_the_same_mailbox(impl, tmp_path):
    messages = [(uid, 10 * uid, 1_700_000_000 + uid, ["\\Seen"] if uid % 3 else ["$A"]) for uid in (5, 1, 3, 2, 8)]
    views = []
    for batch in (False, True):
        ix = impl.Index(tmp_path / f"batch-{batch}", durable=False)
        ix.create_mailbox("bob", "INBOX", uidvalidity=3)
        if batch:
            ix.append_batch([("bob", "INBOX", *m, f"q{m[0]}") for m in messages])
        else:
            for m in messages:
                ix.append("bob", "INBOX", *m, f"q{m[0]}")
        view = ix.open_view("bob", "INBOX")
        views.append(([(r.uid, r.size, r.flags, r.internal_date) for r in map(view.record, range(1, len(view) + 1))],
                      ix.usage("bob"), view.info.count, view.info.unseen, view.info.keywords))
        ix.close()
    assert views[0] == views[1]


def test_uids_out_of_order_and_chunk_splits(index, monkeypatch):
    monkeypatch.setattr(_index_py, "CHUNK", 4)
    for uid in [10, 30, 20, 5, 40, 35, 1, 25, 15, 50, 45, 2]:
        assert index.append("bob", "INBOX", uid, uid, 0)
    assert not index.append("bob", "INBOX", 35, 1, 0)
    view = index.open_view("bob", "INBOX")
    assert view.uids() == [1, 2, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    assert index.mailbox("bob", "INBOX").uidnext == 51
    index.expunge("bob", "INBOX", [(1, 20)], deleted_only=False)
    index.append_many("bob", "INBOX", [(3, 1, 0, ()), (60, 1, 0, ()), (61, 1, 0, ())])
    assert index.open_view("bob", "INBOX").uids() == [3, 25, 30, 35, 40, 45, 50, 60, 61]


def test_a_recreated_mailbox_gets_a_new_uidvalidity(index):
    first = index.create_mailbox("bob", "Trash")
    index.delete_mailbox("bob", "Trash")
    second = index.create_mailbox("bob", "Trash")
    assert second.uidvalidity > first.uidvalidity and second.mailbox_id != first.mailbox_id


def test_create_rename_delete_mailboxes(index):
    index.create_mailbox("bob", "Work")
    index.create_mailbox("bob", "Work/2024", special_use="\\Archive")
    fill(index, 2, mailbox="Work/2024")
    with pytest.raises(_index_py.MailboxExists):
        index.create_mailbox("bob", "Work")
    assert index.rename_mailbox("bob", "Work", "Old") == [("Work", "Old"), ("Work/2024", "Old/2024")]
    assert [m.name for m in index.mailboxes("bob")] == ["INBOX", "Old", "Old/2024"]
    assert index.open_view("bob", "Old/2024").uids() == [1, 2]
    assert index.mailbox("bob", "Old/2024").special_use == "\\Archive"
    index.set_mailbox_attributes("bob", "Old", subscribed=True)
    assert index.mailbox("bob", "Old").subscribed
    index.delete_mailbox("bob", "Old/2024")
    assert index.usage("bob") == (0, 0)
    with pytest.raises(_index_py.NoSuchMailbox):
        index.open_view("bob", "Old/2024")


def test_subscriptions_are_kept_apart_from_the_mailboxes(index):
    index.create_mailbox("bob", "Work")
    index.create_mailbox("bob", "Work/2024")
    assert index.subscribe("bob", "Gone", True) is None          # a name that does not exist
    assert index.subscribe("bob", "Work/2024", True).subscribed
    assert index.subscriptions("bob") == ["Gone", "Work/2024"]
    index.delete_mailbox("bob", "Work/2024")                      # the subscription stays
    assert index.subscriptions("bob") == ["Gone", "Work/2024"]
    assert index.create_mailbox("bob", "Work/2024").subscribed    # and the new mailbox has it
    assert not index.subscribe("bob", "Work/2024", False).subscribed
    assert index.subscriptions("bob") == ["Gone"]
    assert index.create_mailbox("bob", "Fresh", subscribed=True).subscribed
    assert index.subscriptions("bob") == ["Fresh", "Gone"]
    assert index.subscriptions("alice") == []


def test_rename_moves_the_subscriptions_of_the_tree(index):
    for name in ("Work", "Work/a", "Work/b", "Workshop", "Old"):
        index.create_mailbox("bob", name)
    for name in ("Work", "Work/a", "Work/gone", "Workshop", "Old/b"):
        index.subscribe("bob", name, True)
    index.rename_mailbox("bob", "Work", "Old/Work")
    assert index.subscriptions("bob") == ["Old/Work", "Old/Work/a", "Old/Work/gone", "Old/b", "Workshop"]
    assert {m.name: m.subscribed for m in index.mailboxes("bob")} == {
        "INBOX": False, "Old": False, "Old/Work": True, "Old/Work/a": True, "Old/Work/b": False, "Workshop": True}
    index.subscribe("bob", "New/b", True)                          # a target's stale subscription
    index.create_mailbox("bob", "New")
    index.rename_mailbox("bob", "Old/Work", "New/Work")
    index.rename_mailbox("bob", "New/Work", "Newer")
    assert "New/b" in index.subscriptions("bob")
    index.remove_user("bob")
    assert index.subscriptions("bob") == []


# ---------------------------------------------------------------- flags and expunge

def test_store_flags_modes_keywords_and_unseen(index):
    fill(index, 5)
    changes = index.store_flags("bob", "INBOX", [(2, 4)], "+", ["\\Seen", "$Junk"])
    assert changes.uids() == [2, 3, 4]
    assert {r.flags for r in changes} == {("\\Seen", "$Junk")}
    info = index.mailbox("bob", "INBOX")
    assert info.unseen == 2 and info.keywords == ("$Junk",) and info.highestmodseq == 3
    assert index.store_flags("bob", "INBOX", [(3, 3)], "-", ["$junk", "$Unknown"]).uids() == [3]
    assert index.store_flags("bob", "INBOX", [(1, 5)], "=", ["\\Flagged"]).uids() == [1, 2, 3, 4, 5]
    assert index.mailbox("bob", "INBOX").unseen == 5
    view = index.open_view("bob", "INBOX")
    assert [view.record(s).flags for s in (1, 5)] == [("\\Flagged",), ("\\Flagged",)]
    assert len(index.store_flags("bob", "INBOX", [(1, 5)], "+", ["\\Flagged"])) == 0


def test_store_flags_unchanged_since_reports_conflicts(index):
    fill(index, 3)
    loaded = index.mailbox("bob", "INBOX").highestmodseq
    index.store_flags("bob", "INBOX", [(2, 2)], "+", ["\\Answered"])
    changes = index.store_flags("bob", "INBOX", [(1, 3)], "+", ["\\Seen"], unchanged_since=loaded)
    assert changes.uids() == [1, 3] and changes.conflicts == [2]


def test_too_many_keywords(index):
    fill(index, 1)
    index.store_flags("bob", "INBOX", [(1, 1)], "+", [f"k{i}" for i in range(_index_py.MAX_KEYWORDS)])
    with pytest.raises(_index_py.TooManyKeywords):
        index.store_flags("bob", "INBOX", [(1, 1)], "+", ["one-too-many"])
    with pytest.raises(ValueError):
        index.store_flags("bob", "INBOX", [(1, 1)], "+", ["\\Bogus"])


def test_expunge_deleted_and_changes_since(index):
    fill(index, 6)
    index.store_flags("bob", "INBOX", [(2, 3), (5, 5)], "+", ["\\Deleted"])
    before = index.mailbox("bob", "INBOX").highestmodseq
    assert index.expunge("bob", "INBOX", [(3, 6)]).uids() == [3, 5]
    assert index.expunged_since("bob", "INBOX", before) == [3, 5]
    assert index.expunge("bob", "INBOX").uids() == [2]
    assert index.usage("bob") == (101 + 104 + 106, 3)
    index.store_flags("bob", "INBOX", [(4, 4)], "+", ["\\Seen"])
    changed, vanished = index.changes_since("bob", "INBOX", before)
    assert [r.uid for r in changed] == [4] and vanished == [2, 3, 5]


# ---------------------------------------------------------------- views

def test_view_mapping_resolve_search_sort(index):
    fill(index, 10, flags=lambda i: ["\\Seen"] if i % 2 else ["\\Flagged"])
    index.expunge("bob", "INBOX", [(4, 4)], deleted_only=False)
    view = index.open_view("bob", "INBOX")
    assert len(view) == 9 and view.uid(4) == 5 and view.seq(5) == 4 and view.seq(4) == 0
    assert view.resolve("2,4:5") == array("I", [2, 4, 5])
    assert view.resolve("*").tolist() == [9]
    assert view.resolve("3:5", uid=True).tolist() == [3, 4]
    assert view.resolve("20:*", uid=True).tolist() == [9]
    assert view.resolve("4", uid=True).tolist() == [] and view.seqs_in_uid_ranges([]).tolist() == []
    with pytest.raises(ValueError):
        view.resolve("10")
    assert view.uid_ranges([1, 2, 3, 4, 6]) == view.uid_ranges(array("I", [1, 2, 3, 4, 6])) == [(1, 5), (7, 7)]
    for outside in ([0], [10], [-1]):
        with pytest.raises(IndexError):
            view.uid_ranges(outside)
    assert view.search(has=["\\seen"]) == [1, 3, 4, 6, 8]
    assert view.search(lacks=["\\Seen"], larger=105) == [5, 7, 9]
    assert view.search(since=1_700_000_003, before=1_700_000_006, smaller=106) == [3, 4]
    assert view.search(has=["$never"]) == []
    assert view.search(uid_ranges=[(2, 3), (9, 9)]) == [2, 3, 8]
    assert view.sort("size", reverse=True)[:3] == [9, 8, 7]
    assert view.total_size == sum(100 + i for i in range(1, 11)) - 104
    with pytest.raises(IndexError):
        view.uid(10)


def test_view_is_a_snapshot_and_diff_reports_changes(index):
    fill(index, 5)
    old = index.open_view("bob", "INBOX")
    index.expunge("bob", "INBOX", [(2, 2), (4, 4)], deleted_only=False)
    index.store_flags("bob", "INBOX", [(5, 5)], "+", ["\\Seen"])
    fill(index, 0)
    index.append("bob", "INBOX", 6, 1, 0)
    assert len(old) == 5
    new = index.open_view("bob", "INBOX")
    assert old.diff(new) == ([4, 2], [3])
    assert new.changed_since(old.info.highestmodseq) == [3, 4]


def test_map_full_grows_and_retries(impl, tmp_path):
    ix = impl.Index(tmp_path / "small", map_size=64 * 1024, durable=False)
    ix.create_mailbox("bob", "INBOX")
    fill(ix, 10_000)  # 320 kB of records in a 64 kB map
    assert len(ix.open_view("bob", "INBOX")) == 10_000
    assert ix._open().info()["map_size"] > 64 * 1024
    ix.close()


# ---------------------------------------------------------------- structure blobs

def count_read_transactions(ix, monkeypatch) -> list:
    reads, real = [], type(ix)._read

    def counted(self, action):
        reads.append(action)
        return real(self, action)
    monkeypatch.setattr(type(ix), "_read", counted)
    return reads


def test_structures_are_stored_per_uid_in_one_transaction(index, monkeypatch):
    fill(index, 5)
    commits = count_write_transactions(index, monkeypatch)
    assert index.put_structures("bob", "INBOX", {1: b"one", 3: b"three", 5: b"", 9: b"never"}) == 3
    assert len(commits) == 1
    reads = count_read_transactions(index, monkeypatch)
    assert index.structures("bob", "INBOX", [1, 2, 3, 5, 9, 0]) == {1: b"one", 3: b"three", 5: b""}
    assert len(reads) == 1
    index.put_structures("bob", "INBOX", {3: b"THREE"})
    assert index.structures("bob", "INBOX", iter([3])) == {3: b"THREE"}
    index.create_mailbox("bob", "Other")
    fill(index, 5, mailbox="Other")
    assert index.structures("bob", "Other", range(1, 6)) == {}  # keyed by mailbox, not by UID alone
    with pytest.raises(_index_py.NoSuchMailbox):
        index.put_structures("bob", "Nope", {1: b"x"})
    with pytest.raises(_index_py.NoSuchMailbox):
        index.structures("bob", "Nope", [1])


def test_structures_skip_uids_not_in_the_mailbox_across_chunks(index, monkeypatch):
    monkeypatch.setattr(_index_py, "CHUNK", 4)
    uids = [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 30, 40]
    index.append_many("bob", "INBOX", [(uid, 1, 0, ()) for uid in uids])
    index.expunge("bob", "INBOX", [(6, 6), (30, 30)], deleted_only=False)
    present = [uid for uid in uids if uid not in (6, 30)]
    assert index.put_structures("bob", "INBOX", {uid: b"%d" % uid for uid in range(50)}) == len(present)
    assert index.structures("bob", "INBOX", range(50)) == {uid: b"%d" % uid for uid in present}


def test_structures_go_with_their_messages(index):
    fill(index, 4)
    index.create_mailbox("bob", "Work")
    index.create_mailbox("bob", "Work/Old")
    fill(index, 2, mailbox="Work/Old")
    blobs = {uid: b"s%d" % uid for uid in range(1, 5)}
    index.put_structures("bob", "INBOX", blobs)
    index.put_structures("bob", "Work/Old", {1: b"a", 2: b"b"})
    index.expunge("bob", "INBOX", [(2, 3)], deleted_only=False)
    assert index.structures("bob", "INBOX", range(1, 5)) == {1: b"s1", 4: b"s4"}
    index.rename_mailbox("bob", "Work", "Archive")  # mailbox ids stay, so do the blobs
    assert index.structures("bob", "Archive/Old", [1, 2]) == {1: b"a", 2: b"b"}

    def stored():  # every key of the database, whatever the mailbox id
        return index._read(lambda txn: len(list(txn.cursor(db=index._db["structures"]).iternext(values=False))))
    index.delete_mailbox("bob", "Archive/Old")
    assert stored() == 2
    index.remove_user("bob")
    assert stored() == 0


def test_an_index_made_before_structures_opens_and_gets_the_database(impl, tmp_path, monkeypatch):
    path = tmp_path / "index"
    with monkeypatch.context() as m:
        m.setattr(_index_py, "DATABASES", tuple(n for n in _index_py.DATABASES if n != "structures"))
        old = impl.Index(path, durable=False)
        old.create_mailbox("bob", "INBOX")
        fill(old, 3)
        assert "structures" not in old._db
        old.close()
    ix = impl.Index(path, durable=False)
    assert ix.open_view("bob", "INBOX").uids() == [1, 2, 3]
    assert ix.structures("bob", "INBOX", [1]) == {}
    assert ix.put_structures("bob", "INBOX", {1: b"x"}) == 1
    assert ix.structures("bob", "INBOX", [1, 2]) == {1: b"x"}
    ix.close()


# ---------------------------------------------------------------- several processes

def _writer(path, impl_name, mailbox, count):
    ix = importlib.import_module(impl_name).Index(path)
    for i in range(count):
        reservation = ix.reserve_uid("bob", mailbox, f"{mailbox}:{i}")
        ix.append("bob", mailbox, reservation.uid, 10, 0, (), f"{mailbox}:{i}")
        ix.store_flags("bob", mailbox, [(1, reservation.uid)], "+", ["\\Seen"])
    ix.close()


def _reader(path, impl_name, rounds, queue):
    ix = importlib.import_module(impl_name).Index(path)
    bad = 0
    for _ in range(rounds):
        view = ix.open_view("bob", "A")
        uids = view.uids()
        # header and records come from one snapshot, so they always agree
        if uids != sorted(set(uids)) or len(view) != view.info.count or \
                len(view.search(lacks=["\\Seen"])) != view.info.unseen:
            bad += 1
    queue.put(bad)


def test_concurrent_writers_and_readers_in_processes(impl, tmp_path):
    path = str(tmp_path / "index")
    ix = impl.Index(path)
    ix.create_mailbox("bob", "A")
    ix.create_mailbox("bob", "B")
    ix.close()
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter, as after exec
    queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(path, impl.__name__, box, 40)) for box in ("A", "A", "B")]
    procs.append(ctx.Process(target=_reader, args=(path, impl.__name__, 200, queue)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert queue.get(timeout=10) == 0
    ix = impl.Index(path)
    # two writers shared mailbox A with the same delivery ids: each id was stored once
    assert ix.mailbox("bob", "A").count == 40 and ix.mailbox("bob", "B").count == 40
    assert ix.usage("bob") == (800, 80)
    assert ix.open_view("bob", "A").uids() == sorted(ix.open_view("bob", "A").uids())
    ix.close()


# ---------------------------------------------------------------- reference vs compiled

# sizes and bounds from one small set, so that boundary cases (size == larger) come up
append_op = st.tuples(st.just("append"), st.integers(1, 60), st.sampled_from([10, 20, 30]),
                      st.lists(st.sampled_from(["\\Seen", "\\Deleted", "\\Flagged", "$A", "$B"]), max_size=3))
operation = st.one_of(
    append_op,
    st.tuples(st.just("store"), st.sampled_from(["1:*", "2:5", "*", "1,3,7:9", "10:20"]),
              st.sampled_from(["+", "-", "="]),
              st.lists(st.sampled_from(["\\Seen", "\\Deleted", "\\Answered", "$A", "$C"]), max_size=3),
              st.booleans(), st.one_of(st.none(), st.integers(0, 12))),
    st.tuples(st.just("expunge"), st.sampled_from([None, "1:4", "3:*"])),
    st.tuples(st.just("search"), st.sampled_from([(), ("\\Seen",), ("$A",)]), st.sampled_from([(), ("\\Deleted",)]),
              st.sampled_from(["larger", "smaller", "since", "before"]), st.sampled_from([10, 20, 30])),
    st.tuples(st.just("resolve"), st.sampled_from(["1:*", "2,4:6", "*", "3:1"]), st.booleans()),
    st.tuples(st.just("sort"), st.sampled_from(["uid", "size", "date", "modseq"]), st.booleans()),
)


def _run(ix, operations):
    results = []
    last_view = None
    for op in operations:
        view = ix.open_view("bob", "INBOX")
        try:
            if op[0] == "append":
                results.append(ix.append("bob", "INBOX", op[1], op[2], op[2] * 7, op[3]))
            elif op[0] == "store":
                seqs = view.resolve(op[1], uid=op[4]) if len(view) else []
                result = ix.store_flags("bob", "INBOX", view.uid_ranges(seqs), op[2], op[3], unchanged_since=op[5])
                results.append((list(result), result.conflicts))
            elif op[0] == "expunge":
                ranges = None if op[1] is None else view.uid_ranges(view.resolve(op[1], uid=True))
                results.append(list(ix.expunge("bob", "INBOX", ranges)))
            elif op[0] == "search":
                bound = {op[3]: op[4] if op[3] in ("larger", "smaller") else op[4] * 7}
                results.append(view.search(has=op[1], lacks=op[2], **bound))
            elif op[0] == "resolve":
                results.append(view.resolve(op[1], uid=op[2]))
            else:
                results.append(view.sort(op[1], reverse=op[2]))
        except ValueError as e:
            results.append(type(e).__name__)
        if last_view is not None:
            results.append(last_view.diff(view))
        last_view = view
    final = ix.open_view("bob", "INBOX")
    results.append(([final.record(s) for s in range(1, len(final) + 1)], final.info, ix.usage("bob")))
    return results


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(append_op, min_size=1, max_size=12), operations=st.lists(operation, min_size=1, max_size=25))
def test_reference_and_compiled_agree(tmp_path_factory, messages, operations):
    operations = messages + operations
    compiled = _module("store._index")
    outcomes = []
    for module in (_index_py, compiled):
        ix = module.Index(tmp_path_factory.mktemp("prop"), durable=False)
        ix.create_mailbox("bob", "INBOX", uidvalidity=7)
        outcomes.append(_run(ix, operations))
        ix.close()
    reference, fast = outcomes
    # MailboxInfo carries the same values; only the ids of separate databases may match too
    assert reference == fast
