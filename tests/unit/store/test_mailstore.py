"""Mailboxes on disk: delivery, folders, flags, expunge, usage, disk full and reconstruct."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest

from store import fsio
from store.layout import encode_component
from store.mailstore import (
    BadMailboxName, DeliveryRequest, MailboxExists, MailboxNotEmpty, MailStore, NoSuchMailbox,
)
from store.reconstruct import reconstruct
from tests.unit.store.test_index import count_write_transactions


@pytest.fixture
def store(tmp_path):
    ms = MailStore(tmp_path / "store", tmp_path / "index")
    yield ms
    ms.index.close()


@pytest.fixture
def messages(corpus):
    return [p.read_bytes() for p in sorted(corpus.glob("*.eml"))]


def message_files(store, user, mailbox):
    directory = store.mailbox_dir(user, mailbox)
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


# ---------------------------------------------------------------- delivery

def test_deliver_writes_one_file_per_message_and_indexes_it(store, messages):
    uids = [store.deliver("bob", "INBOX", m, internal_date=1_700_000_000 + i) for i, m in enumerate(messages)]
    assert uids == list(range(1, len(messages) + 1))
    view = store.open_mailbox("bob", "inbox")
    assert len(view) == len(messages)
    for seq, message in enumerate(view.messages(), 1):
        with open(message.path, "rb") as f:
            assert f.read() == messages[seq - 1]
        assert message.size == len(messages[seq - 1]) and message.internal_date == 1_699_999_999 + seq
    assert store.usage("bob") == sum(map(len, messages))


def test_deliver_streams_a_file_object(store, corpus):
    with open(corpus / "archive.mbox", "rb") as source:
        uid = store.deliver("bob", "INBOX", source)
    view = store.open_mailbox("bob", "INBOX")
    with view.open(view.view.seq(uid)) as f:
        assert f.read() == (corpus / "archive.mbox").read_bytes()


def test_same_delivery_id_stores_once(store, messages):
    first = store.deliver("bob", "INBOX", messages[0], delivery_id="Q1:bob")
    again = store.deliver("bob", "INBOX", messages[0], delivery_id="Q1:bob")
    other = store.deliver("bob", "INBOX", messages[0], delivery_id="Q1:carol")
    assert first == again != other
    assert len(message_files(store, "bob", "INBOX")) == 2 and store.usage("bob") == 2 * len(messages[0])


def test_deliver_with_flags_and_to_missing_folder(store, messages):
    store.create_mailbox("bob", "Sent", special_use="\\Sent")
    uid = store.deliver("bob", "Sent", messages[0], flags=["\\Seen", "$Label1"])
    view = store.open_mailbox("bob", "Sent")
    assert view.message(view.view.seq(uid)).flags == ("\\Seen", "$Label1")
    with pytest.raises(NoSuchMailbox):
        store.deliver("bob", "Nope", messages[0])


def test_disk_full_removes_the_partial_file_and_keeps_the_rest(store, messages, monkeypatch):
    store.deliver("bob", "INBOX", messages[0])
    real_write = os.write
    calls = []

    def failing_write(fd, data):
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(fsio.StorageError) as raised:
        store.deliver("bob", "INBOX", iter([b"a" * 10, b"b" * 10]))
    monkeypatch.undo()
    assert raised.value.disk_full and raised.value.temporary
    assert os.listdir(store.mailbox_dir("bob", "INBOX")).count(".journal") == 0
    assert message_files(store, "bob", "INBOX") == ["1.%d.eml" % store.mailbox("bob", "INBOX").uidvalidity]
    assert not [n for n in os.listdir(store.mailbox_dir("bob", "INBOX")) if fsio.is_temp_name(n)]
    assert len(store.open_mailbox("bob", "INBOX")) == 1 and store.usage("bob") == len(messages[0])


def no_temp_files(store):
    return not [n for _, _, names in os.walk(store.store_dir) for n in names if fsio.is_temp_name(n)]


def test_deliver_many_answers_each_request_alone(store, messages):
    store.create_mailbox("bob", "Work")
    first = store.deliver("bob", "INBOX", messages[0], delivery_id="Q0:bob")

    def disk_fills_up():
        yield b"half a message"
        raise OSError(errno.ENOSPC, "No space left on device")

    results = store.deliver_many([
        DeliveryRequest("bob", "INBOX", messages[1], "Q1:bob"),
        DeliveryRequest("carol", "inbox", messages[2], "Q1:carol"),     # INBOX made on first use
        DeliveryRequest("bob", "Nope", messages[3]),
        DeliveryRequest("bob", "a//b", messages[3]),
        DeliveryRequest("bob", "INBOX", disk_fills_up(), "Q2:bob"),
        DeliveryRequest("bob", "Work", messages[4], flags=("\\Seen",), internal_date=1_600_000_000),
        DeliveryRequest("bob", "INBOX", messages[5], "Q1:bob"),         # the same id twice: stored once
        DeliveryRequest("bob", "INBOX", iter(()), "Q0:bob"),            # stored before: not written again
    ])
    assert results[:2] == [2, 1] and results[5:] == [1, 2, first]
    assert isinstance(results[2], NoSuchMailbox) and isinstance(results[3], BadMailboxName)
    assert isinstance(results[4], fsio.StorageError) and results[4].disk_full
    assert len(message_files(store, "bob", "INBOX")) == 2
    assert store.usage("bob") == sum(map(len, messages[:2])) + len(messages[4])
    view = store.open_mailbox("bob", "INBOX")
    with view.open(2) as f:
        assert f.read() == messages[1]
    work = store.open_mailbox("bob", "Work").message(1)
    assert work.flags == ("\\Seen",) and work.internal_date == 1_600_000_000 == int(os.stat(work.path).st_mtime)
    assert store.open_mailbox("carol", "INBOX").view.uids() == [1]
    assert no_temp_files(store)
    assert not store.delivered("bob", "Q2:bob")  # the failed one comes again
    assert store.deliver("bob", "INBOX", messages[6], delivery_id="Q2:bob") == 3  # the failed write took no UID


def test_deliver_many_shares_the_syncs(store, messages, monkeypatch):
    """20 messages into 3 mailboxes: an fsync per message, one per directory, one index commit."""
    store.create_mailbox("bob", "Work")
    for user in ("bob", "carol"):
        store.ensure_inbox(user)
    targets = [("bob", "INBOX"), ("bob", "Work"), ("carol", "INBOX")]
    syncs, real_fsync, real_fdatasync = [], os.fsync, os.fdatasync
    monkeypatch.setattr(os, "fsync", lambda fd: syncs.append(fd) or real_fsync(fd))
    monkeypatch.setattr(os, "fdatasync", lambda fd: syncs.append(fd) or real_fdatasync(fd))
    commits = count_write_transactions(store.index, monkeypatch)
    requests = [DeliveryRequest(*targets[i % 3], messages[i % len(messages)], f"Q{i}") for i in range(20)]
    uids = store.deliver_many(requests)
    assert uids == [i // 3 + 1 for i in range(20)]
    assert (len(syncs), len(commits)) == (20 + 3, 1)
    del syncs[:], commits[:]
    store.deliver("carol", "INBOX", messages[0], delivery_id="one")  # alone: file, directory, 1 commit
    assert (len(syncs), len(commits)) == (2, 1)
    del syncs[:], commits[:]
    assert store.deliver_many(requests) == uids  # all stored before: nothing written, nothing synced
    assert (len(syncs), len(commits)) == (0, 1) and no_temp_files(store)
    for user, mailbox in targets:
        assert len(store.open_mailbox(user, mailbox)) == len(message_files(store, user, mailbox))


def test_a_delivery_transaction_run_again_renames_afresh(store, messages, monkeypatch):
    """The index map filled up inside the delivery transaction: it grows and the transaction runs
    again, whose work first puts the files of the first run back under their temp names."""
    import lmdb
    real, calls = type(store.index)._append_batch_in, []

    def full_once(self, txn, items):
        calls.append(len(items))
        if len(calls) == 1:
            raise lmdb.MapFullError("full")
        return real(self, txn, items)
    monkeypatch.setattr(type(store.index), "_append_batch_in", full_once)
    requests = [DeliveryRequest(user, "INBOX", messages[n], f"Q{n}:{user}") for n, user in enumerate(["bob", "carol", "bob"])]
    assert store.deliver_many(requests) == [1, 1, 2] and calls == [3, 3]
    assert no_temp_files(store)
    assert [len(message_files(store, u, "INBOX")) for u in ("bob", "carol")] == [2, 1]
    with store.open_mailbox("bob", "INBOX").open(2) as f:
        assert f.read() == messages[2]


def _can_mount_tmpfs(path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_disk_full_on_a_real_small_filesystem(tmp_path, messages, monkeypatch):
    small = tmp_path / "small"
    if not _can_mount_tmpfs(small):
        # not root or no mount: the same path through an injected ENOSPC
        def no_space(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(os, "fsync", no_space)
    try:
        store = MailStore(small / "store", tmp_path / "index")
        stored = []
        with pytest.raises(fsio.StorageError) as raised:
            for i in range(1000):
                stored.append(store.deliver("bob", "INBOX", messages[i % len(messages)] * 8))
        assert raised.value.disk_full
        monkeypatch.undo()
        directory = store.mailbox_dir("bob", "INBOX")
        assert not [n for n in os.listdir(directory) if fsio.is_temp_name(n)]
        view = store.open_mailbox("bob", "INBOX")
        assert view.view.uids() == stored
        for message in view.messages():
            assert os.path.getsize(message.path) == message.size
        store.index.close()
    finally:
        if os.path.ismount(small):
            subprocess.run(["umount", str(small)], check=True)


# ---------------------------------------------------------------- folders

def test_folders_nest_and_names_are_encoded(store, messages):
    store.create_mailbox("bob", "Work/2024/Q1")
    store.create_mailbox("bob", ".hidden/ä%")
    assert [m.name for m in store.list_mailboxes("bob")] == [".hidden", ".hidden/ä%", "Work", "Work/2024",
                                                             "Work/2024/Q1"]
    assert store.mailbox_dir("bob", ".hidden/ä%").endswith(os.path.join("%2Ehidden", "%C3%A4%25"))
    store.deliver("bob", "Work/2024/Q1", messages[0])
    with pytest.raises(MailboxExists):
        store.create_mailbox("bob", "Work")
    for bad in ("", "a//b", "/a", "a\x01b", "x" * 300):
        with pytest.raises(BadMailboxName):
            store.create_mailbox("bob", bad)


def test_rename_keeps_messages_and_uids(store, messages):
    store.create_mailbox("bob", "Work/2024")
    uid = store.deliver("bob", "Work/2024", messages[1])
    store.rename_mailbox("bob", "Work", "Archive/Work")
    assert [m.name for m in store.list_mailboxes("bob")] == ["Archive", "Archive/Work", "Archive/Work/2024"]
    view = store.open_mailbox("bob", "Archive/Work/2024")
    assert view.view.uids() == [uid]
    with open(view.path(1), "rb") as f:
        assert f.read() == messages[1]


def test_delete_mailbox(store, messages):
    store.create_mailbox("bob", "Trash/Old")
    store.deliver("bob", "Trash/Old", messages[0])
    with pytest.raises(MailboxNotEmpty):
        store.delete_mailbox("bob", "Trash")
    with pytest.raises(MailboxNotEmpty):
        store.delete_mailbox("bob", "inbox")
    store.delete_mailbox("bob", "Trash/Old")
    assert not os.path.exists(store.mailbox_dir("bob", "Trash/Old"))
    assert store.usage("bob") == 0
    with pytest.raises(NoSuchMailbox):
        store.delete_mailbox("bob", "Trash/Old")


def test_remove_user_takes_all_their_mail_and_nobody_elses(store, messages):
    store.create_mailbox("bob", "Work/2024")
    store.deliver("bob", "INBOX", messages[0], delivery_id="Q1:bob")
    store.deliver("bob", "Work/2024", messages[1])
    store.set_flags("bob", "INBOX", [(1, 1)], "+", ["\\Deleted"])
    store.expunge("bob", "INBOX")
    store.deliver("bob", "INBOX", messages[2], delivery_id="Q2:bob")
    store.deliver("carol", "INBOX", messages[3], delivery_id="Q2:carol")
    carol = _snapshot(store, "carol")

    removed = store.remove_user("bob")
    assert [m.name for m in removed] == ["INBOX", "Work", "Work/2024"]
    assert not os.path.exists(store.user_dir("bob")) and os.listdir(store.store_dir) == ["carol"]
    assert store.list_mailboxes("bob") == [] and store.usage("bob") == 0
    assert store.index.users() == ["carol"]
    assert not store.delivered("bob", "Q2:bob") and store.delivered("carol", "Q2:carol")
    assert _snapshot(store, "carol") == carol
    assert store.remove_user("bob") == []  # nothing left: no error

    # a new bob starts empty, and an old delivery id is a new delivery for him
    assert store.deliver("bob", "INBOX", messages[4], delivery_id="Q2:bob") == 1
    assert store.usage("bob") == len(messages[4])
    assert [m.name for m in store.list_mailboxes("bob")] == ["INBOX"]


@pytest.mark.parametrize("crash_in", ["index", "files"])
def test_a_purge_cut_short_never_brings_the_mail_back(store, messages, monkeypatch, crash_in):
    store.deliver("bob", "INBOX", messages[0])
    store.deliver("carol", "INBOX", messages[1])

    def crash(*args, **kwargs):
        raise RuntimeError("killed")
    if crash_in == "index":  # after the rename, before the index transaction
        monkeypatch.setattr(store.index, "remove_user", crash)
    else:                    # after the index transaction, before the files are gone
        monkeypatch.setattr(shutil, "rmtree", crash)
    with pytest.raises(RuntimeError):
        store.remove_user("bob")
    monkeypatch.undo()
    [hidden, carols] = sorted(os.listdir(store.store_dir))
    assert hidden.startswith(".deleted.") and carols == "carol"  # bob's is out of sight already
    reports = {r.user: r for r in reconstruct(store)}
    assert sorted(reports) == (["bob", "carol"] if crash_in == "index" else ["carol"])
    assert os.listdir(store.store_dir) == ["carol"]
    assert store.index.users() == ["carol"] and store.list_mailboxes("bob") == []
    if crash_in == "index":
        assert reports["bob"].mailboxes_dropped == ["INBOX"]
    assert not reports["carol"].changed


# ---------------------------------------------------------------- flags, expunge, quota

def test_flags_and_expunge_remove_files_and_usage(store, messages):
    for m in messages[:4]:
        store.deliver("bob", "INBOX", m)
    changed = store.set_flags("bob", "INBOX", [(2, 3)], "+", ["\\Deleted"])
    assert changed.uids() == [2, 3]
    removed = store.expunge("bob", "INBOX")
    assert removed.uids() == [2, 3]
    validity = store.mailbox("bob", "INBOX").uidvalidity
    assert message_files(store, "bob", "INBOX") == [f"1.{validity}.eml", f"4.{validity}.eml"]
    assert store.usage("bob") == len(messages[0]) + len(messages[3])
    # POP3 DELE: expunge named messages regardless of \Deleted
    assert store.expunge("bob", "INBOX", [(4, 4)], deleted_only=False).uids() == [4]


def test_copy_and_move_keep_flags_dates_and_link_the_files(store, messages):
    for i, m in enumerate(messages[:4]):
        store.deliver("bob", "INBOX", m, flags=["$Work"] if i == 1 else [], internal_date=1_650_000_000 + i)
    store.set_flags("bob", "INBOX", [(2, 3)], "+", ["\\Seen"])
    store.create_mailbox("bob", "Archive")
    store.deliver("bob", "Archive", messages[5])
    assert store.copy("bob", "INBOX", [(2, 3), (9, 9)], "Archive") == [(2, 2), (3, 3)]
    archive = store.open_mailbox("bob", "Archive")
    assert [(m.uid, m.flags, m.internal_date) for m in archive.messages()][1:] == [
        (2, ("\\Seen", "$Work"), 1_650_000_001), (3, ("\\Seen",), 1_650_000_002)]
    assert os.stat(archive.path(2)).st_nlink == 2
    with open(archive.path(3), "rb") as f:
        assert f.read() == messages[2]
    assert store.copy("bob", "INBOX", [(4, 4)], "Archive", move=True) == [(4, 4)]
    assert store.open_mailbox("bob", "INBOX").view.uids() == [1, 2, 3]
    assert store.usage("bob") == sum(map(len, messages[:4])) + len(messages[5]) + len(messages[1]) + len(messages[2])
    with pytest.raises(NoSuchMailbox):
        store.copy("bob", "INBOX", [(1, 1)], "Nowhere")
    assert store.copy("bob", "INBOX", [(50, 60)], "Archive") == []


def test_copy_that_runs_out_of_space_leaves_nothing(store, messages, monkeypatch):
    store.deliver("bob", "INBOX", messages[0])
    store.create_mailbox("bob", "Other")

    def cross_device(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "link", cross_device)  # so the file is copied, and the copy fails
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(fsio.StorageError):
        store.copy("bob", "INBOX", [(1, 1)], "Other")
    monkeypatch.undo()
    assert message_files(store, "bob", "Other") == [] and len(store.open_mailbox("bob", "Other")) == 0


def test_delivered_knows_ids_whose_message_is_indexed(store, messages):
    store.deliver("bob", "INBOX", messages[0], delivery_id="Q1:bob")
    assert store.delivered("bob", "Q1:bob")
    assert not store.delivered("bob", "Q1:carol") and not store.delivered("carol", "Q1:bob")
    # cut short after the file's rename: not delivered until the index has it
    reservation = store.index.reserve_uid("bob", "INBOX", "Q2:bob")
    fsio.write_durably(store.mailbox_dir("bob", "INBOX"), f"{reservation.uid}.{reservation.uidvalidity}.eml",
                       messages[1])
    assert not store.delivered("bob", "Q2:bob")
    reconstruct(store, "bob")  # adopts the file: the message is there now
    assert store.delivered("bob", "Q2:bob")


def test_structure_blobs_stay_with_the_messages(store, messages):
    for message in messages[:3]:
        store.deliver("bob", "INBOX", message)
    store.create_mailbox("bob", "Work")
    assert store.put_structures("bob", "inbox", {1: b"env1", 2: b"env2", 3: b"env3", 4: b"none"}) == 3
    assert store.structures("bob", "INBOX", [1, 2, 4]) == {1: b"env1", 2: b"env2"}
    store.copy("bob", "INBOX", [(1, 2)], "Work", move=True)  # a copy computes its own
    assert store.structures("bob", "INBOX", [1, 2, 3]) == {3: b"env3"}
    assert store.structures("bob", "Work", [1, 2]) == {}
    store.rename_mailbox("bob", "Work", "Archive")
    store.put_structures("bob", "Archive", {2: b"moved"})
    store.rename_mailbox("bob", "Archive", "Work")
    assert store.structures("bob", "Work", [1, 2]) == {2: b"moved"}
    with pytest.raises(NoSuchMailbox):
        store.put_structures("bob", "Archive", {1: b"x"})


# ---------------------------------------------------------------- reconstruct

def _snapshot(store, user):
    out = {}
    for info in store.list_mailboxes(user):
        view = store.open_mailbox(user, info.name)
        out[info.name] = (info.uidvalidity, info.subscribed, info.special_use,
                          [(m.uid, m.size, m.flags, m.internal_date) for m in view.messages()])
    return out


def test_subscriptions_survive_delete_and_are_recorded_for_reconstruct(tmp_path, store):
    store.create_mailbox("bob", "Work", subscribed=True)
    store.create_mailbox("bob", "Lists/rust")
    store.subscribe("bob", "Lists/rust", True)
    store.subscribe("bob", "Nowhere", True)
    assert "subscribed 1" in (tmp_path / "store" / "bob" / "Lists" / "rust" / ".mailbox").read_text()
    store.subscribe("bob", "Lists", True)
    store.subscribe("bob", "Lists", False)
    assert "subscribed 0" in (tmp_path / "store" / "bob" / "Lists" / ".mailbox").read_text()
    store.delete_mailbox("bob", "Lists/rust")
    assert store.subscriptions("bob") == ["Lists/rust", "Nowhere", "Work"]
    store.index.close()
    shutil.rmtree(tmp_path / "index")
    fresh = MailStore(tmp_path / "store", tmp_path / "index")
    reconstruct(fresh)
    assert fresh.subscriptions("bob") == ["Work"]     # what the existing mailboxes' .mailbox files record
    fresh.index.close()


def test_reconstruct_after_losing_the_whole_index(tmp_path, store, messages):
    store.create_mailbox("bob", "Work/Deep", special_use="\\Archive", subscribed=True)
    for i, m in enumerate(messages):
        store.deliver("bob", "INBOX" if i % 2 else "Work/Deep", m, internal_date=1_600_000_000 + i)
    store.set_flags("bob", "INBOX", [(1, 3)], "+", ["\\Seen", "$Important"])
    store.set_flags("bob", "INBOX", [(2, 2)], "-", ["\\Seen"])
    store.set_flags("bob", "Work/Deep", [(1, 1)], "+", ["\\Deleted"])
    store.expunge("bob", "Work/Deep")
    before, usage = _snapshot(store, "bob"), store.usage("bob")
    uidnext = store.mailbox("bob", "INBOX").uidnext
    store.index.close()
    shutil.rmtree(tmp_path / "index")

    fresh = MailStore(tmp_path / "store", tmp_path / "index")
    [report] = reconstruct(fresh)
    assert set(report.mailboxes_added) == set(before)
    assert _snapshot(fresh, "bob") == before
    assert fresh.usage("bob") == usage
    assert fresh.mailbox("bob", "INBOX").uidnext == uidnext
    assert fresh.deliver("bob", "INBOX", messages[0]) == uidnext


def test_reconstruct_repairs_a_running_index(store, messages):
    for m in messages[:5]:
        store.deliver("bob", "INBOX", m)
    store.set_flags("bob", "INBOX", [(1, 1)], "+", ["\\Flagged"])
    directory = store.mailbox_dir("bob", "INBOX")
    validity = store.mailbox("bob", "INBOX").uidvalidity
    os.unlink(os.path.join(directory, f"2.{validity}.eml"))            # file lost
    with open(os.path.join(directory, "dropped-in.eml"), "wb") as f:    # a file from elsewhere
        f.write(messages[6])
    store.index.store_flags("bob", "INBOX", [(4, 4)], "+", ["\\Deleted"])
    store.index.expunge("bob", "INBOX", [(3, 4)], deleted_only=False)  # crash before the unlinks
    [report] = reconstruct(store, "bob")
    assert report.dropped == [("INBOX", 2)]
    assert report.removed_files == [("INBOX", f"3.{validity}.eml"), ("INBOX", f"4.{validity}.eml")]
    assert report.renumbered == [("INBOX", "dropped-in.eml", 6)]
    assert report.adopted == []  # expunged UIDs are never resurrected
    view = store.open_mailbox("bob", "INBOX")
    assert view.view.uids() == [1, 5, 6]
    assert view.message(1).flags == ("\\Flagged",)
    assert store.usage("bob") == sum(len(messages[i]) for i in (0, 4, 6))
    assert store.mailbox("bob", "INBOX").uidvalidity == validity
    [again] = reconstruct(store, "bob")
    assert not again.changed


def test_reconstruct_adopts_a_file_whose_index_entry_never_came(store, messages):
    store.deliver("bob", "INBOX", messages[0])
    reservation = store.index.reserve_uid("bob", "INBOX", "Q9:bob")
    name = f"{reservation.uid}.{reservation.uidvalidity}.eml"
    fsio.write_durably(store.mailbox_dir("bob", "INBOX"), name, messages[1])  # crash after the rename
    [report] = reconstruct(store, "bob")
    assert report.adopted == [("INBOX", reservation.uid)]
    # the retried delivery finds its message and stores nothing new
    assert store.deliver("bob", "INBOX", messages[1], delivery_id="Q9:bob") == reservation.uid
    assert len(store.open_mailbox("bob", "INBOX")) == 2


def test_reconstruct_skips_directories_made_by_hand_and_refuses_a_missing_store(tmp_path, store, messages):
    store.deliver("bob", "INBOX", messages[0])
    for odd in ("Entwürfe", "%ZZ", "inbox"):
        os.makedirs(os.path.join(store.user_dir("bob"), odd, "Sub"))
        with open(os.path.join(store.user_dir("bob"), odd, "x.eml"), "wb") as f:
            f.write(messages[1])
    [report] = reconstruct(store, "bob")
    assert sorted(report.skipped) == ["%ZZ", "Entwürfe", "inbox"]
    assert [m.name for m in store.list_mailboxes("bob")] == ["INBOX"] and store.usage("bob") == len(messages[0])
    empty = MailStore(tmp_path / "not-mounted", tmp_path / "index2")
    with pytest.raises(fsio.StorageError):
        reconstruct(empty)
    empty.close()


def test_encode_component_round_trips():
    from store.layout import decode_component
    for name in ("INBOX", ".x", "a b", "ü/ñ", "%41", "Sent Items"):
        assert decode_component(encode_component(name)) == name
        assert not encode_component(name).startswith(".")


# ---------------------------------------------------------------- mailctl accounts / reconstruct

def test_mailctl_accounts_and_reconstruct(tmp_path, messages, capsys):
    import json

    from master.ctl import run
    from store.users import User, UserDB

    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text(f"data_directory = {tmp_path / 'var'}\ndefault_quota = 1M\n")
    with UserDB(str(tmp_path / "var" / "users"), str(tmp_path / "var" / "secret.key")) as users:
        users.add(User("bob", quota=4000))
        users.add(User("carol"))
        users.add(User("nomail"))
    store = MailStore(tmp_path / "var" / "store", tmp_path / "var" / "index")
    store.deliver("bob", "INBOX", b"x" * 1000)
    store.deliver("carol", "INBOX", b"y" * 2048)
    store.index.close()
    [carols_file] = message_files(store, "carol", "INBOX")
    os.unlink(os.path.join(store.mailbox_dir("carol", "INBOX"), carols_file))

    assert run(["-c", str(etc), "accounts", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [
        {"user": "bob", "quota_bytes": 4000, "used_bytes": 1000, "percent_free": 75.0},
        {"user": "carol", "quota_bytes": 1048576, "used_bytes": 2048, "percent_free": 99.8},
    ]
    assert run(["-c", str(etc), "reconstruct", "carol"]) == 0
    out = capsys.readouterr().out
    assert "carol: INBOX: UID 1 dropped (file missing)" in out and "carol: 0 messages, 0 bytes" in out
    assert run(["-c", str(etc), "accounts"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2].split() == ["carol", "1048576", "0", "100.0%"]
    assert run(["-c", str(etc), "reconstruct", "nobody"]) == 1
    assert "no mail store for user 'nobody'" in capsys.readouterr().err


def test_journal_is_compacted_and_still_restores_flags(tmp_path, store, messages, monkeypatch):
    import store.mailstore as mailstore_module
    monkeypatch.setattr(mailstore_module, "JOURNAL_COMPACT_BYTES", 300)
    for m in messages[:3]:
        store.deliver("bob", "INBOX", m)
    for _ in range(20):
        store.set_flags("bob", "INBOX", [(1, 3)], "+", ["\\Seen", "$Later"])
        store.set_flags("bob", "INBOX", [(2, 3)], "-", ["\\Seen", "$Later"])
    journal = os.path.join(store.mailbox_dir("bob", "INBOX"), ".journal")
    assert os.path.getsize(journal) < 400
    before = _snapshot(store, "bob")
    store.index.close()
    shutil.rmtree(tmp_path / "index")
    fresh = MailStore(tmp_path / "store", tmp_path / "index")
    reconstruct(fresh, "bob")
    assert _snapshot(fresh, "bob") == before
    assert fresh.open_mailbox("bob", "INBOX").message(1).flags == ("\\Seen", "$Later")
    fresh.close()


def test_a_deletion_cut_short_never_brings_the_mailbox_back(store, messages, monkeypatch):
    store.create_mailbox("bob", "Old")
    store.deliver("bob", "Old", messages[0])

    def crash(*args, **kwargs):
        raise RuntimeError("killed")
    monkeypatch.setattr(store.index, "delete_mailbox", crash)
    with pytest.raises(RuntimeError):
        store.delete_mailbox("bob", "Old")
    monkeypatch.undo()
    [report] = reconstruct(store, "bob")
    assert report.mailboxes_dropped == ["Old"]
    assert store.list_mailboxes("bob") == []
    assert os.listdir(store.user_dir("bob")) == []  # the half-deleted directory is gone too
    assert store.usage("bob") == 0


# ---------------------------------------------------------------- several processes

def _deliverer(root, worker, count):
    with MailStore(os.path.join(root, "store"), os.path.join(root, "index")) as ms:
        for i in range(count):
            ms.deliver("bob", "INBOX", f"Subject: {worker}/{i}\r\n\r\nbody\r\n".encode(), delivery_id=f"{worker}:{i}")
            if i % 5 == 0:  # a retry of an earlier delivery must not store it again
                ms.deliver("bob", "INBOX", b"retried", delivery_id=f"{worker}:{i}")


def _watcher(root, rounds, queue):
    problems = 0
    with MailStore(os.path.join(root, "store"), os.path.join(root, "index")) as ms:
        last_uidnext = 0
        for _ in range(rounds):
            view = ms.open_mailbox("bob", "INBOX")
            # an index entry always has its file, and UIDs only ever grow
            problems += sum(1 for m in view.messages() if os.path.getsize(m.path) != m.size)
            problems += view.info.uidnext < last_uidnext
            last_uidnext = view.info.uidnext
    queue.put(problems)


def test_concurrent_deliveries_and_readers_in_processes(tmp_path):
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    writers = [ctx.Process(target=_deliverer, args=(str(tmp_path), w, 25)) for w in range(3)]
    watcher = ctx.Process(target=_watcher, args=(str(tmp_path), 100, queue))
    for p in (*writers, watcher):
        p.start()
    for p in (*writers, watcher):
        p.join(60)
        assert p.exitcode == 0
    assert queue.get(timeout=10) == 0
    with MailStore(tmp_path / "store", tmp_path / "index") as ms:
        view = ms.open_mailbox("bob", "INBOX")
        assert view.view.uids() == list(range(1, 76))  # no gaps, no duplicates
        bodies = set()
        for m in view.messages():
            with open(m.path, "rb") as f:
                bodies.add(f.read())
        assert len(bodies) == 75 and b"retried" not in bodies
        assert ms.usage("bob") == sum(len(b) for b in bodies)
        [report] = reconstruct(ms, "bob")
        assert not report.changed
