"""The queue: writing, moving, durable done-marks, recovery, crash points and a full disk."""
from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
import types

import pytest

from store import fsio
from store import queue as queue_mod
from store.fsio import StorageError
from store.queue import Envelope, NotQueued, Queue, QueueCorrupt, Recipient, is_queue_id, wake_qmgr


@pytest.fixture
def q(tmp_path):
    queue = Queue(str(tmp_path / "queue"))
    queue.ensure_layout()
    return queue


def envelope(*rcpts: str, sender: str = "alice@example.org") -> Envelope:
    return Envelope(sender, [Recipient(r) for r in rcpts or ("bob@example.test",)],
                    client={"addr": "192.0.2.7", "helo": "client.example.org"})


def store(q: Queue, message: bytes = b"Subject: hi\r\n\r\nbody\r\n", *rcpts: str) -> str:
    writer = q.writer()
    for start in range(0, len(message), 7):
        writer.write(message[start:start + 7])
    return writer.commit(envelope(*rcpts))


def files(q: Queue, name: str) -> list[str]:
    return sorted(os.listdir(q.path(name)))


def in_child(action) -> int:
    """Run action in a forked child that dies by os._exit where action says; -> exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            action()
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


# ---------------------------------------------------------------- writing and reading

def test_commit_round_trip(q, corpus):
    message = (corpus / "05-mixed-attachment.eml").read_bytes()
    qid = store(q, message, "bob@example.test", "carol@example.test")
    assert is_queue_id(qid) and files(q, "incoming") == [qid]
    item = q.load(qid)
    assert item.queue == "incoming" and item.envelope.size == len(message)
    assert item.envelope.client["addr"] == "192.0.2.7" and item.envelope.arrival > 0
    assert [r.address for _, r in item.pending()] == ["bob@example.test", "carol@example.test"]
    with q.message_file(qid) as f:
        assert f.read() == message


def test_large_message_spools_to_disk_and_survives(q):
    message = b"X: y\r\n\r\n" + b"0123456789abcdef\r\n" * 200_000     # > SPOOL_IN_MEMORY
    writer = q.writer()
    writer.write(message)
    qid = writer.commit(envelope())
    with q.message_file(qid) as f:
        assert f.read() == message
    assert files(q, "tmp") == []


def test_dsn_fields_round_trip(q):
    writer = q.writer()
    writer.write(b"\r\n")
    env = Envelope("", [Recipient("bob@example.test", ["SUCCESS", "DELAY"], "rfc822;bob@example.test")],
                   ret="HDRS", envid="xyz+2B1", body="8BITMIME")
    qid = writer.commit(env)
    loaded = q.load(qid).envelope
    assert loaded == env and loaded.sender == ""


def test_ids_sort_by_commit_time(q):
    ids = [store(q) for _ in range(5)]
    assert ids == sorted(ids) == q.ids("incoming") and len(set(ids)) == 5


def test_abort_leaves_nothing(q):
    writer = q.writer()
    writer.write(b"partial")
    writer.abort()
    assert all(files(q, name) == [] for name in ("incoming", "tmp"))


def test_truncated_envelope_is_corrupt(q):
    qid = store(q)
    path = q.path("incoming", qid)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:40])
    with pytest.raises(QueueCorrupt):
        q.load(qid)
    assert files(q, "corrupt") == [qid]


# ---------------------------------------------------------------- qmgr operations

def test_ready_activate_defer_flush(q):
    qid = store(q)
    assert q.ready() == [qid] and q.activate(qid) and not q.activate(qid)
    assert q.ready() == []
    later = time.time() + 600
    assert q.defer(qid, later, {"0": "4.4.1 connection refused"}) == "deferred"
    assert q.ready() == [] and q.ready(later + 1) == [qid]
    item = q.load(qid)
    assert (item.state.attempts, item.state.reasons) == (1, {"0": "4.4.1 connection refused"})
    assert q.flush() == 1 and q.ready() == [qid]
    assert q.activate(qid) and q.load(qid).queue == "active"


def test_done_marks_are_durable_and_finish_removes(q):
    qid = store(q, b"x\r\n", "a@example.test", "b@example.test")
    q.activate(qid)
    q.mark_done(qid, "0", "delivered", "uid 7")
    reopened = Queue(q.directory)          # what a restarted qmgr sees
    item = reopened.load(qid)
    assert [r.address for _, r in item.pending()] == ["b@example.test"]
    assert item.state.done == {"0": ("delivered", "uid 7")}
    q.mark_done(qid, "1", "bounced", "5.1.1 unknown")
    assert q.load(qid).pending() == []
    q.finish(qid)
    assert files(q, "active") == [] and files(q, "state") == []
    with pytest.raises(NotQueued):
        q.load(qid)


def test_queue_show_of_a_message_moved_meanwhile_is_refused(q, monkeypatch, capsys):
    """`mailctl queue show` loads the envelope, then opens the file: qmgr may move it between."""
    from master.ctl import Refused
    from master.ctl import queue as queue_ctl
    qid = store(q)
    monkeypatch.setattr(queue_ctl, "_queue", lambda config: q)
    assert queue_ctl.cmd_show(types.SimpleNamespace(id=qid), None) == 0
    assert "Subject: hi" in capsys.readouterr().out
    real_load = q.load

    def load_then_move(queue_id):
        item = real_load(queue_id)
        q.activate(queue_id)
        return item
    monkeypatch.setattr(q, "load", load_then_move)
    with pytest.raises(Refused, match="changed queues or was delivered"):
        queue_ctl.cmd_show(types.SimpleNamespace(id=qid), None)


def test_hold_release_delete(q):
    qid = store(q)
    assert q.hold(qid) == "held" and q.ready() == []
    assert q.release(qid) == "released" and q.ready() == [qid]
    assert q.delete(qid) == "deleted"
    with pytest.raises(NotQueued):
        q.delete(qid)


def test_hold_and_delete_of_active_take_effect_when_the_attempt_ends(q):
    first, second = store(q), store(q)
    q.activate(first)
    q.activate(second)
    assert "requested" in q.hold(first) and "requested" in q.delete(second)
    assert q.defer(first, time.time()) == "hold" and q.defer(second, time.time()) == "deleted"
    assert files(q, "hold") == [first] and files(q, "deferred") == []


def test_warned_and_list_all(q):
    a, b = store(q), store(q)
    q.note_warned(a)
    q.hold(b)
    assert [(i.queue_id, i.queue, i.state.warned) for i in q.list_all()] == [(a, "incoming", True),
                                                                              (b, "hold", False)]
    assert q.delete_all() == (2, 0) and q.list_all() == []


def test_bad_ids_are_not_queued(q):
    for bad in ("../../etc/passwd", "", "18eb3f"):
        with pytest.raises(NotQueued):
            q.locate(bad)


# ---------------------------------------------------------------- batches and shared directory fsyncs

def watch_fsyncs(monkeypatch, q: Queue, seen, delay: float = 0.0) -> list[str]:
    """Record the directory fsyncs (the folder's name, and seen(name) at that moment)."""
    synced = []
    real = fsio.fsync_dir

    def fsync_dir(path):
        synced.append((os.path.basename(path), seen(os.path.basename(path))))
        time.sleep(delay)
        real(path)
    monkeypatch.setattr(fsio, "fsync_dir", fsync_dir)
    return synced


def test_activate_many_moves_a_pass_without_waiting_for_the_disk(q, monkeypatch):
    fresh = [store(q) for _ in range(3)]
    retry = store(q)
    q.activate(retry)
    q.defer(retry, time.time() - 1)
    synced = watch_fsyncs(monkeypatch, q, lambda name: files(q, name))
    gone = "18EB3F00000000000ABCDE"
    assert q.activate_many([*fresh, gone, retry]) == [*fresh, retry]
    assert files(q, "active") == sorted([*fresh, retry]) and files(q, "incoming") == files(q, "deferred") == []
    assert synced == []                       # an undone rename leaves a ready file: nothing lost


def test_finish_without_a_state_log_does_not_wait_for_the_disk(q, monkeypatch):
    qid = store(q)
    q.activate(qid)
    synced = watch_fsyncs(monkeypatch, q, lambda name: files(q, name))
    q.finish(qid)
    assert files(q, "active") == [] and synced == []


def test_finish_removes_the_state_log_only_once_the_removal_is_durable(q, monkeypatch):
    qid = store(q)
    q.activate(qid)
    q.mark_done(qid, "0")
    synced = watch_fsyncs(monkeypatch, q, lambda name: (files(q, "active"), files(q, "state")))
    q.finish(qid)
    assert synced == [("active", ([], [qid]))]            # the queue file gone, its log still there
    assert files(q, "state") == []


def test_a_failed_fsync_of_active_keeps_the_state_log(q, monkeypatch):
    qid = store(q)
    q.activate(qid)
    q.mark_done(qid, "0")

    def broken(path):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(fsio, "fsync_dir", broken)
    with pytest.raises(StorageError):
        q.finish(qid)
    assert files(q, "state") == [qid]


def test_files_finished_at_once_share_the_fsyncs_of_active(q, monkeypatch):
    ids = [store(q) for _ in range(8)]
    q.activate_many(ids)
    for qid in ids:
        q.mark_done(qid, "0")
    synced = watch_fsyncs(monkeypatch, q, lambda name: files(q, "state"), delay=0.1)
    start = threading.Barrier(len(ids))

    def finish(qid):
        start.wait()
        q.finish(qid)
    threads = [threading.Thread(target=finish, args=(qid,)) for qid in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert files(q, "active") == files(q, "state") == []
    assert 1 <= len(synced) <= 3                           # not one per file
    assert all(name == "active" and len(logs) >= 1 for name, logs in synced)   # before any log went


def test_mark_done_many_is_one_append(q, monkeypatch):
    qid = store(q, b"x\r\n", "a@example.test", "b@example.test")
    fsyncs = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real(fd)))
    q.mark_done_many(qid, [("t:pipe:a:cat", "delivered", "ran"), ("0", "delivered", ""), ("1", "bounced", "5.1.1")])
    assert len(fsyncs) == 2                               # the log, and state/ (the log is new)
    assert q.read_state(qid).done == {"t:pipe:a:cat": ("delivered", "ran"), "0": ("delivered", ""),
                                      "1": ("bounced", "5.1.1")}
    q.mark_done_many(qid, [])
    assert len(fsyncs) == 2


def test_incoming_depth(q):
    assert q.incoming_depth() == 0
    ids = [store(q) for _ in range(3)]
    q.activate(ids[0])
    assert q.incoming_depth() == 2


# ---------------------------------------------------------------- recovery and crashes

def test_recover_moves_active_back_and_corrupts_after_n(q):
    qid = store(q)
    for round_ in range(3):
        assert q.activate(qid)
        report = q.recover(max_recoveries=3)
        assert report["incoming"] == [qid], round_
    assert q.activate(qid)
    assert q.recover(max_recoveries=3)["corrupt"] == [qid]
    assert files(q, "corrupt") == [qid]


def test_recover_removes_old_debris_only(q):
    qid = store(q)
    old = time.time() - 2 * queue_mod.STALE_SECONDS
    for path in (q.path("incoming", ".tmp.X.1"), q.path("state", "18EB3F00000000000ABCDE")):
        open(path, "wb").write(b"junk")
        os.utime(path, (old, old))
    open(q.path("incoming", ".tmp.Y.2"), "wb").write(b"being written right now")
    q.recover()
    assert files(q, "incoming") == [".tmp.Y.2", qid] and files(q, "state") == []


@pytest.mark.parametrize("crash_at", ["fsync", "rename"])
def test_crash_before_rename_leaves_no_queue_file(q, monkeypatch, crash_at):
    before = store(q)

    def die(*args, **kwargs):
        os._exit(9)
    monkeypatch.setattr(fsio.os, crash_at, die)
    status = in_child(lambda: store(q, b"half a message"))
    monkeypatch.undo()
    assert os.WEXITSTATUS(status) == 9
    assert q.ids("incoming") == [before]           # only the temp file remains, and scans skip it
    assert q.load(before).envelope.size > 0


def test_crash_after_done_mark_never_redelivers(q):
    qid = store(q, b"x\r\n", "a@example.test", "b@example.test")
    q.activate(qid)

    def deliver_first_then_die():
        q.mark_done(qid, "0")
        os._exit(9)
    in_child(deliver_first_then_die)
    assert q.recover()["incoming"] == [qid]
    assert [r.address for _, r in q.load(qid).pending()] == ["b@example.test"]


def test_torn_state_line_is_ignored(q):
    qid = store(q)
    q.mark_done(qid, "0")
    with open(q.path("state", qid), "ab") as f:
        f.write(b'{"ev":"done","key":"1","sta')
    state = q.read_state(qid)
    assert state.done == {"0": ("delivered", "")}


# ---------------------------------------------------------------- disk full

def enospc_after(limit_bytes: int, directory: str):
    """An os.write that fails with ENOSPC once limit_bytes went to files under directory."""
    real_write = os.write
    written = [0]

    def write(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target.startswith(directory):
            if written[0] + len(data) > limit_bytes:
                raise OSError(errno.ENOSPC, "No space left on device")
            written[0] += len(data)
        return real_write(fd, data)
    return write


@pytest.mark.parametrize("limit", [0, 100, 5000])
def test_enospc_during_commit_removes_partial_file(q, monkeypatch, limit):
    existing = store(q, b"Subject: old\r\n\r\nkeep me\r\n")
    monkeypatch.setattr(os, "write", enospc_after(limit, q.directory))
    writer = q.writer()
    writer.write(b"Subject: new\r\n\r\n" + b"y" * 20_000)
    with pytest.raises(StorageError) as caught:
        writer.commit(envelope())
    monkeypatch.undo()
    assert caught.value.disk_full
    assert os.listdir(q.path("incoming")) == [existing]
    with q.message_file(existing) as f:
        assert f.read() == b"Subject: old\r\n\r\nkeep me\r\n"


def test_enospc_on_done_mark_keeps_state_log(q, monkeypatch):
    qid = store(q)
    q.mark_done(qid, "0")
    before = open(q.path("state", qid), "rb").read()
    monkeypatch.setattr(os, "write", enospc_after(0, q.directory))
    with pytest.raises(StorageError):
        q.mark_done(qid, "1")
    monkeypatch.undo()
    assert open(q.path("state", qid), "rb").read() == before


def test_enospc_on_spool_write_is_a_storage_error(q):
    writer = q.writer()

    class FullSpool:
        def write(self, chunk):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass
    writer._spool = FullSpool()
    with pytest.raises(StorageError):
        writer.write(b"data")


def test_real_full_tmpfs(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                             capture_output=True) if os.geteuid() == 0 else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("mounting a tmpfs needs root (and mount rights); the injected-error tests cover ENOSPC")
    try:
        q = Queue(str(mount / "queue"))
        q.ensure_layout()
        kept = store(q, b"Subject: small\r\n\r\nfits\r\n")
        writer = q.writer()
        writer.write(b"Subject: big\r\n\r\n" + b"z" * 400_000)
        with pytest.raises(StorageError) as caught:
            writer.commit(envelope())
        assert caught.value.disk_full
        assert os.listdir(q.path("incoming")) == [kept] and q.load(kept).envelope.size == 24
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# ---------------------------------------------------------------- wakeup

def test_wake_qmgr_with_and_without_reader(q):
    wake_qmgr(q.directory)                 # no reader: ignored
    fd = q.open_wakeup_reader()
    try:
        wake_qmgr(q.directory)
        assert os.read(fd, 10) == b"W"
        filler = os.open(q.path("public", "qmgr"), os.O_WRONLY | os.O_NONBLOCK)
        with pytest.raises(BlockingIOError):
            while True:                    # fill the pipe to the brim
                os.write(filler, b"F" * 4096)
        os.close(filler)
        wake_qmgr(q.directory)             # a full pipe: no error, no blocking
    finally:
        os.close(fd)
    wake_qmgr(str(q.path("missing")))


def test_delete_follows_a_file_that_qmgr_just_took(q, monkeypatch):
    qid = store(q)
    real_locate = q.locate
    raced = []

    def locate_then_race(queue_id):
        where = real_locate(queue_id)
        if not raced:                          # qmgr activates it between our look and our act
            raced.append(q.activate(queue_id))
        return where
    monkeypatch.setattr(q, "locate", locate_then_race)
    assert q.delete(qid) == "delete requested (in delivery)" and raced == [True]
    assert q.defer(qid, time.time()) == "deleted" and q.list_all() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make files for another owner")
def test_state_log_made_by_root_belongs_to_the_queue_owner(q):
    os.chown(q.path("state"), 65534, 65534)
    qid = store(q)
    q.activate(qid)
    q.hold(qid)                                # mailctl as root, while qmgr delivers
    assert os.stat(q.path("state", qid)).st_uid == 65534
