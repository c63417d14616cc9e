"""Mailbox ACLs in the store (MailStore.acl / set_acl / shared_with) and copies across users."""
from __future__ import annotations

import shutil

import pytest

from store.layout import meta_acl, meta_text, read_meta
from store.mailstore import MailStore, NoSuchMailbox
from store.reconstruct import reconstruct


@pytest.fixture
def store(tmp_path):
    ms = MailStore(tmp_path / "store", tmp_path / "index")
    yield ms
    ms.index.close()


def test_entries_are_set_replaced_and_removed(store):
    store.create_mailbox("bob", "Work")
    assert store.acl("bob", "Work") == {}
    store.set_acl("bob", "Work", "carol", "lrs")
    store.set_acl("bob", "Work", "anyone", "l")
    store.set_acl("bob", "Work", "carol", "lrsw")
    assert store.acl("bob", "Work") == {"anyone": "l", "carol": "lrsw"}
    store.set_acl("bob", "Work", "anyone", "")
    assert store.acl("bob", "Work") == {"carol": "lrsw"}
    with pytest.raises(NoSuchMailbox):
        store.acl("bob", "Nowhere")
    with pytest.raises(NoSuchMailbox):
        store.set_acl("bob", "Nowhere", "carol", "l")


def test_acl_follows_rename_and_goes_with_delete(store):
    store.create_mailbox("bob", "Work/Plans")
    store.set_acl("bob", "Work/Plans", "carol", "lr")
    store.rename_mailbox("bob", "Work", "Job")
    assert store.acl("bob", "Job/Plans") == {"carol": "lr"}
    store.delete_mailbox("bob", "Job/Plans")
    store.create_mailbox("bob", "Job/Plans")
    assert store.acl("bob", "Job/Plans") == {}
    store.set_acl("bob", "Job", "carol", "l")
    store.remove_user("bob")
    assert store.shared_with(["carol"]) == []


def test_shared_with_finds_the_mailboxes_naming_an_identifier(store):
    store.create_mailbox("bob", "Work")
    store.create_mailbox("_shared", "News")
    store.create_mailbox("dave", "Private")
    store.set_acl("bob", "Work", "carol", "lr")
    store.set_acl("_shared", "News", "anyone", "lr")
    store.set_acl("dave", "Private", "erin", "lr")
    found = {(info.user, info.name) for info in store.shared_with(["carol", "anyone"])}
    assert found == {("bob", "Work"), ("_shared", "News")}
    assert store.shared_with(["nobody"]) == []


def test_meta_file_records_the_acl_and_reconstruct_restores_it(tmp_path, store):
    store.create_mailbox("bob", "Work", subscribed=True)
    store.set_acl("bob", "Work", "carol", "lrs")
    store.set_acl("bob", "Work", "anyone", "l")
    meta = read_meta(str(tmp_path / "store" / "bob" / "Work" / ".mailbox"))
    assert meta["acl"] == "anyone=l carol=lrs" and meta["subscribed"] == "1"
    store.subscribe("bob", "Work", False)        # another .mailbox write keeps the ACL
    assert meta_acl(read_meta(str(tmp_path / "store" / "bob" / "Work" / ".mailbox"))) == {
        "anyone": "l", "carol": "lrs"}
    store.index.close()
    shutil.rmtree(tmp_path / "index")
    fresh = MailStore(tmp_path / "store", tmp_path / "index")
    try:
        reconstruct(fresh)
        assert fresh.acl("bob", "Work") == {"anyone": "l", "carol": "lrs"}
    finally:
        fresh.index.close()


def test_meta_acl_skips_malformed_words():
    text = meta_text(7, False, "", {"carol": "lr"}) + "acl carol=lr junk =x y=\n"
    assert meta_acl({"acl": text.splitlines()[-1].partition(" ")[2]}) == {"carol": "lr"}
    assert "acl" not in meta_text(7, False, "")


def test_copy_into_another_users_mailbox(store, corpus):
    source = (corpus / "01-plain.eml").read_bytes()
    store.deliver("bob", "INBOX", source, flags=("\\Seen",))
    store.deliver("bob", "INBOX", (corpus / "08-dot-lines.eml").read_bytes())
    store.create_mailbox("_shared", "News")
    pairs = store.copy("bob", "INBOX", [(1, 2)], "News", target_user="_shared")
    assert pairs == [(1, 1), (2, 2)]
    copied = store.open_mailbox("_shared", "News").messages()
    assert [m.flags for m in copied] == [("\\Seen",), ()]
    with open(copied[0].path, "rb") as f:
        assert f.read() == source
    assert store.usage("_shared") == sum(m.size for m in copied)
    assert len(store.open_mailbox("bob", "INBOX")) == 2
    store.copy("bob", "INBOX", [(2, 2)], "News", move=True, target_user="_shared")
    assert len(store.open_mailbox("bob", "INBOX")) == 1 and len(store.open_mailbox("_shared", "News")) == 3
