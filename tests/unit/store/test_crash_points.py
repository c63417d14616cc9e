"""A child process is killed (SIGKILL) at each step of a delivery, a batch of deliveries into
two users' mailboxes, a batch of flag changes, an expunge or a purge of a user's mail; afterwards the store holds the old or the new state, never half a message nor an
index entry without its file, a retried delivery with the same delivery id stores the message
exactly once, and purged mail never comes back."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

from store import fsio
from store.layout import encode_component
from store.mailstore import DeliveryRequest, MailStore
from store.reconstruct import reconstruct


CHILD = textwrap.dedent("""
    import os, signal, sys
    from store.index import Index
    from store.mailstore import DeliveryRequest, MailStore

    # point: "<step>" or "<step>:<n>", the n-th call of that step (the first by default)
    root, point, action = sys.argv[1], sys.argv[2], sys.argv[3]
    step, _, nth = point.partition(":")
    nth = int(nth or 1)
    calls = {}
    real_write, real_fsync, real_rename, real_unlink = os.write, os.fsync, os.rename, os.unlink
    real_reserve, real_append, real_deliver = Index._reserve_uids_in, Index._append_batch_in, Index.deliver_in_one
    real_write_many, real_remove_user = Index.write_many, Index.remove_user

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def around(name, call):
        calls[name] = calls.get(name, 0) + 1
        if step == "before-" + name and calls[name] == nth:
            die()
        result = call()
        if step == "after-" + name and calls[name] == nth:
            die()
        return result

    def write(fd, data):
        calls["write"] = calls.get("write", 0) + 1
        if step == "mid-write" and calls["write"] == nth:
            real_write(fd, bytes(data)[:len(data) // 2])
            die()
        return real_write(fd, data)

    def unlink(path, *args, **kwargs):
        if step == "mid-unlink" and not os.path.basename(path).startswith("1."):
            die()
        return real_unlink(path, *args, **kwargs)

    os.write, os.unlink = write, unlink
    os.fsync = lambda fd: around("fsync", lambda: real_fsync(fd))
    os.rename = lambda a, b: around("rename", lambda: real_rename(a, b))
    Index._reserve_uids_in = lambda self, *a, **k: around("reserve", lambda: real_reserve(self, *a, **k))
    Index._append_batch_in = lambda self, *a, **k: around("index", lambda: real_append(self, *a, **k))
    Index.deliver_in_one = lambda self, *a, **k: around("commit", lambda: real_deliver(self, *a, **k))
    Index.write_many = lambda self, *a, **k: around("index-write", lambda: real_write_many(self, *a, **k))
    Index.remove_user = lambda self, *a, **k: around("index-purge", lambda: real_remove_user(self, *a, **k))
    store = MailStore(os.path.join(root, "store"), os.path.join(root, "index"))
    if action == "deliver":
        store.deliver("bob", "INBOX", iter([b"Subject: new\\r\\n\\r\\n", b"x" * 5000]), delivery_id="Q7:bob")
    elif action == "deliver-many":
        results = store.deliver_many([
            DeliveryRequest(user, "INBOX", iter([f"Subject: {n}\\r\\n\\r\\n".encode(), body * 3000]), f"{n}:{user}")
            for n, user, body in BATCH])
        assert all(isinstance(uid, int) for uid in results), results
    elif action == "purge":
        store.remove_user("bob")
    elif action == "flags-many":
        results = store.write_many([("flags", ("bob", "INBOX", [(1, 2)], "+", ["\\\\Seen"], None)),
                                    ("flags", ("carol", "INBOX", [(1, 1)], "+", ["\\\\Flagged"], None)),
                                    ("flags", ("bob", "INBOX", [(2, 3)], "+", ["\\\\Flagged"], None))])
        assert not any(isinstance(r, Exception) for r in results), results
    else:
        store.set_flags("bob", "INBOX", [(1, 3)], "+", ["\\\\Deleted"])
        store.expunge("bob", "INBOX")
    sys.exit(0)
""")

NEW_MESSAGE = b"Subject: new\r\n\r\n" + b"x" * 5000
OLD = {"bob": [b"old one\r\n", b"old two\r\n", b"old three\r\n"], "carol": [b"carol's old\r\n"]}
# the batch: (queue id, user, body byte), bob's and carol's messages interleaved
BATCH = [("Q1", "bob", b"a"), ("Q1", "carol", b"b"), ("Q2", "bob", b"c"), ("Q2", "carol", b"d")]


def batch_message(queue_id: str, body: bytes) -> bytes:
    return f"Subject: {queue_id}\r\n\r\n".encode() + body * 3000


def run_child(root, point, action):
    child = f"BATCH = {BATCH!r}\n" + CHILD
    result = subprocess.run([sys.executable, "-c", child, str(root), point, action], cwd=str(REPO),
                            capture_output=True, timeout=60)
    assert result.returncode in (0, -signal.SIGKILL), result.stderr.decode()
    return result.returncode


def check_no_entry_without_file(store, user="bob"):
    view = store.open_mailbox(user, "INBOX")
    for message in view.messages():
        assert os.path.getsize(message.path) == message.size
    known = {NEW_MESSAGE, *OLD[user], *(batch_message(q, body) for q, u, body in BATCH if u == user)}
    files = [n for n in os.listdir(view.directory) if n.endswith(".eml")]
    for name in files:  # any message file is complete: nothing half-written has a message name
        with open(os.path.join(view.directory, name), "rb") as f:
            assert f.read() in known
    return view


@pytest.fixture
def root(tmp_path):
    store = MailStore(tmp_path / "store", tmp_path / "index")
    for user, texts in OLD.items():
        for text in texts:
            store.deliver(user, "INBOX", text)
    store.index.close()
    return tmp_path


@pytest.mark.parametrize("point", ["mid-write:2", "before-fsync:1", "before-reserve", "after-reserve",
                                   "before-rename", "after-rename", "before-fsync:2", "after-fsync:2",
                                   "before-index", "after-index", "after-commit", "none"])
def test_delivery_killed_at_each_step(root, point):
    killed = run_child(root, point, "deliver") != 0
    assert killed == (point != "none")
    store = MailStore(root / "store", root / "index")
    view = check_no_entry_without_file(store)
    assert len(view) in (3, 4)  # old state, or new state
    # the queue manager retries the same delivery: exactly one copy results
    uid = store.deliver("bob", "INBOX", NEW_MESSAGE, delivery_id="Q7:bob")
    reconstruct(store, "bob")
    view = check_no_entry_without_file(store)
    assert len(view) == 4 and view.view.uids()[-1] == uid
    with view.open(4) as f:
        assert f.read() == NEW_MESSAGE
    assert store.usage("bob") == len(NEW_MESSAGE) + 9 + 9 + 11
    directory = store.mailbox_dir("bob", "INBOX")
    assert len([n for n in os.listdir(directory) if n.endswith(".eml")]) == 4
    store.index.close()


# four messages, two mailboxes: writes 1-8 (two chunks each), file fsyncs 1-4, then one index
# transaction: the reservations, renames 1-4, directory fsyncs 5 (bob) and 6 (carol), the
# entries, the commit
BATCH_POINTS = ["mid-write:2", "mid-write:7", *(f"{when}-fsync:{n}" for n in range(1, 7) for when in ("before", "after")),
                "before-reserve", "after-reserve", "before-rename:1", "after-rename:1", "after-rename:3",
                "after-rename:4", "before-index", "after-index", "after-commit", "none"]


@pytest.mark.parametrize("point", BATCH_POINTS)
def test_batch_delivery_killed_at_each_step(root, point):
    killed = run_child(root, point, "deliver-many") != 0
    assert killed == (point != "none")
    store = MailStore(root / "store", root / "index")
    for user in OLD:  # each message of the batch is there whole, or not at all
        assert len(OLD[user]) <= len(check_no_entry_without_file(store, user)) <= len(OLD[user]) + 2
    # the queue manager retries the same deliveries, and reconstruct runs: each stored once
    requests = [DeliveryRequest(user, "INBOX", batch_message(q, body), f"{q}:{user}") for q, user, body in BATCH]
    uids = store.deliver_many(requests)
    assert store.deliver_many(requests) == uids  # done: nothing more happens
    for user in OLD:
        reconstruct(store, user)
        view = check_no_entry_without_file(store, user)
        mine = [(uid, batch_message(q, body)) for uid, (q, u, body) in zip(uids, BATCH) if u == user]
        assert len(view) == len(OLD[user]) + 2 and [u for u, _ in mine] == view.view.uids()[-2:]
        for uid, message in mine:
            with view.open(view.view.seq(uid)) as f:
                assert f.read() == message
        assert store.usage(user) == sum(map(len, OLD[user])) + sum(len(m) for _, m in mine)
        files = [n for n in os.listdir(view.directory) if n.endswith(".eml")]
        assert len(files) == len(view)
    store.index.close()


@pytest.mark.parametrize("point", ["after-index-write:2", "mid-unlink", "none"])  # 1: the flags, 2: the expunge
def test_expunge_killed_at_each_step(root, point):
    run_child(root, point, "expunge")
    store = MailStore(root / "store", root / "index")
    view = check_no_entry_without_file(store)
    assert view.view.uids() == []
    reconstruct(store, "bob")  # leftover files of expunged messages go; nothing comes back
    assert store.open_mailbox("bob", "INBOX").view.uids() == []
    assert [n for n in os.listdir(view.directory) if n.endswith(".eml")] == []
    assert store.usage("bob") == 0
    store.index.close()


@pytest.mark.parametrize("point", ["before-index-write", "after-index-write", "none"])
def test_flag_batch_killed_at_each_step(root, point):
    killed = run_child(root, point, "flags-many") != 0
    assert killed == (point != "none")
    store = MailStore(root / "store", root / "index")
    bob = [m.flags for m in check_no_entry_without_file(store).messages()]
    carol = [m.flags for m in check_no_entry_without_file(store, "carol").messages()]
    # one transaction: every request of the batch applied, or none
    assert [bob, carol] in ([[(), (), ()], [()]],
                            [[("\\Seen",), ("\\Seen", "\\Flagged"), ("\\Flagged",)], [("\\Flagged",)]])
    assert (bob[0] == ()) == (point == "before-index-write")
    store.index.close()


@pytest.mark.parametrize("point", ["before-rename", "after-rename", "after-index-purge", "mid-unlink", "none"])
def test_purge_killed_at_each_step(root, point):
    killed = run_child(root, point, "purge") != 0
    assert killed == (point != "none")
    store = MailStore(root / "store", root / "index")
    reconstruct(store)
    if point == "before-rename":  # nothing was out of sight yet: the old state, whole
        assert len(check_no_entry_without_file(store)) == 3
        store.remove_user("bob")  # `mailctl user del --purge` once more
    assert store.index.users() == ["carol"] and store.list_mailboxes("bob") == []
    assert os.listdir(store.store_dir) == [encode_component("carol")]  # nobody else's mail goes
    assert len(check_no_entry_without_file(store, "carol")) == 1
    store.index.close()


def test_temp_files_left_by_a_crash_are_not_messages(root):
    run_child(root, "before-rename", "deliver")
    store = MailStore(root / "store", root / "index")
    directory = store.mailbox_dir("bob", "INBOX")
    temps = [n for n in os.listdir(directory) if fsio.is_temp_name(n)]
    assert len(temps) == 1
    [report] = reconstruct(store, "bob")
    assert not report.adopted and not report.renumbered
    os.utime(os.path.join(directory, temps[0]), (0, 0))  # old enough to be certainly dead
    [report] = reconstruct(store, "bob")
    assert report.removed_files == [("INBOX", temps[0])]
    store.index.close()


@pytest.mark.parametrize("point", ["after-rename", "after-fsync:2", "after-index"])
def test_reconstruct_before_the_retry_keeps_one_copy(root, point):
    """Killed after its rename, before its transaction committed: the file sits above UIDNEXT,
    was never acknowledged, and reconstruct removes it; the retry then stores the one copy."""
    run_child(root, point, "deliver")
    store = MailStore(root / "store", root / "index")
    [report] = reconstruct(store, "bob")
    assert [entry for _, entry in report.removed_files if entry.startswith("4.")] and not report.adopted
    assert len(check_no_entry_without_file(store)) == 3
    store.deliver("bob", "INBOX", NEW_MESSAGE, delivery_id="Q7:bob")
    view = check_no_entry_without_file(store)
    assert len(view) == 4 and len([n for n in os.listdir(view.directory) if n.endswith(".eml")]) == 4
    store.index.close()
