"""A child process is killed (SIGKILL) at each step of a delivery, an expunge or a purge of a
user's mail; afterwards the store holds the old or the new state, never half a message nor an
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
from store.mailstore import MailStore
from store.reconstruct import reconstruct


CHILD = textwrap.dedent("""
    import os, signal, sys
    from store import fsio
    from store.index import Index
    from store.mailstore import MailStore

    root, point, action = sys.argv[1], sys.argv[2], sys.argv[3]
    calls = {"write": 0, "fsync": 0}
    real_write, real_fsync, real_rename, real_unlink = os.write, os.fsync, os.rename, os.unlink
    real_append, real_expunge, real_remove_user = Index.append, Index.expunge, Index.remove_user

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def write(fd, data):
        calls["write"] += 1
        if point == "mid-write" and calls["write"] == 2:
            real_write(fd, bytes(data)[:len(data) // 2])
            die()
        return real_write(fd, data)

    def fsync(fd):
        calls["fsync"] += 1
        if point == "before-file-fsync" and calls["fsync"] == 1:
            die()
        if point == "before-dir-fsync" and calls["fsync"] == 2:
            die()
        return real_fsync(fd)

    def rename(a, b):
        if point == "before-rename":
            die()
        real_rename(a, b)
        if point == "after-rename":
            die()

    def append(self, *args, **kwargs):
        if point == "before-index":
            die()
        result = real_append(self, *args, **kwargs)
        if point == "after-index":
            die()
        return result

    def expunge(self, *args, **kwargs):
        result = real_expunge(self, *args, **kwargs)
        if point == "after-index-expunge":
            die()
        return result

    def remove_user(self, *args, **kwargs):
        result = real_remove_user(self, *args, **kwargs)
        if point == "after-index-purge":
            die()
        return result

    def unlink(path, *args, **kwargs):
        if point == "mid-unlink" and not os.path.basename(path).startswith("1."):
            die()
        return real_unlink(path, *args, **kwargs)

    os.write, os.fsync, os.rename, os.unlink = write, fsync, rename, unlink
    Index.append, Index.expunge, Index.remove_user = append, expunge, remove_user
    store = MailStore(os.path.join(root, "store"), os.path.join(root, "index"))
    if action == "deliver":
        store.deliver("bob", "INBOX", iter([b"Subject: new\\r\\n\\r\\n", b"x" * 5000]), delivery_id="Q7:bob")
    elif action == "purge":
        store.remove_user("bob")
    else:
        store.set_flags("bob", "INBOX", [(1, 3)], "+", ["\\\\Deleted"])
        store.expunge("bob", "INBOX")
    sys.exit(0)
""")

NEW_MESSAGE = b"Subject: new\r\n\r\n" + b"x" * 5000


def run_child(root, point, action):
    result = subprocess.run([sys.executable, "-c", CHILD, str(root), point, action], cwd=str(REPO),
                            capture_output=True, timeout=60)
    assert result.returncode in (0, -signal.SIGKILL), result.stderr.decode()
    return result.returncode


def check_no_entry_without_file(store):
    view = store.open_mailbox("bob", "INBOX")
    for message in view.messages():
        assert os.path.getsize(message.path) == message.size
    files = [n for n in os.listdir(view.directory) if n.endswith(".eml")]
    for name in files:  # any message file is complete: nothing half-written has a message name
        with open(os.path.join(view.directory, name), "rb") as f:
            assert f.read() in (NEW_MESSAGE, b"old one\r\n", b"old two\r\n", b"old three\r\n")
    return view


@pytest.fixture
def root(tmp_path):
    store = MailStore(tmp_path / "store", tmp_path / "index")
    for text in (b"old one\r\n", b"old two\r\n", b"old three\r\n"):
        store.deliver("bob", "INBOX", text)
    store.index.close()
    return tmp_path


@pytest.mark.parametrize("point", ["mid-write", "before-file-fsync", "before-rename", "after-rename",
                                   "before-dir-fsync", "before-index", "after-index", "none"])
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


@pytest.mark.parametrize("point", ["after-index-expunge", "mid-unlink", "none"])
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


@pytest.mark.parametrize("point", ["before-rename", "after-rename", "after-index-purge", "mid-unlink", "none"])
def test_purge_killed_at_each_step(root, point):
    killed = run_child(root, point, "purge") != 0
    assert killed == (point != "none")
    store = MailStore(root / "store", root / "index")
    reconstruct(store)
    if point == "before-rename":  # nothing was out of sight yet: the old state, whole
        assert len(check_no_entry_without_file(store)) == 3
        store.remove_user("bob")  # `mailctl user del --purge` once more
    assert store.index.users() == [] and store.list_mailboxes("bob") == []
    assert os.listdir(store.store_dir) == []
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
