"""What an IMAP client caches stays valid across a master restart and across `mailctl
reconstruct` of a lost index: every folder keeps its UIDVALIDITY, its messages their UIDs
(gaps left by expunges included), their flags and keywords; the folder list keeps its
special-use attributes and subscriptions; a UID expunged before is never given again.
"""
from __future__ import annotations

import shutil

import pytest
from imapclient import IMAPClient

from store.mailstore import INBOX
from tests.conftest import CORPUS
from tests.integration.imapd_support import ImapSystem

pytestmark = pytest.mark.integration
USER, PASSWORD = "keeper", "Keep pass 3"
NESTED = "Archive/2026"


def connect(system) -> IMAPClient:
    client = IMAPClient("127.0.0.1", port=system.port(), ssl=False, timeout=30)
    client.login(USER, PASSWORD)
    return client


def snapshot(system) -> dict:
    """All a caching client relies on: the folder list and, per folder, UIDVALIDITY and
    {uid: (flags, size)}. \\Recent is left out: it belongs to sessions, not to the message (the
    rebuilt index counts every message as recent again)."""
    client = connect(system)
    try:
        folders = {name: set(flags) for flags, _delim, name in client.list_folders()}
        state = {"folders": folders, "subscribed": sorted(n for _f, _d, n in client.list_sub_folders())}
        for name in folders:
            selected = client.select_folder(name, readonly=True)
            uids = client.search(["ALL"])
            items = client.fetch(uids, ["FLAGS", "RFC822.SIZE"]) if uids else {}
            state[name] = (selected[b"UIDVALIDITY"], {uid: (set(item[b"FLAGS"]) - {b"\\Recent"}, item[b"RFC822.SIZE"])
                                                      for uid, item in items.items()})
        return state
    finally:
        client.logout()


def test_uids_flags_and_uidvalidity_survive_restart_and_reconstruct(tmp_path):
    system = ImapSystem(tmp_path / "sys")
    try:
        system.add_user(USER, PASSWORD)
        client = connect(system)
        client.create_folder(NESTED)
        client.subscribe_folder(NESTED)
        client.logout()
        system.deliver(USER, "01-plain.eml", "02-utf8-8bit.eml", "04-alternative.eml", "05-mixed-attachment.eml",
                       "07-forwarded-rfc822.eml")
        system.deliver(USER, "06-nested-multipart.eml", "09-folded-headers.eml", mailbox=NESTED)

        client = connect(system)
        client.append("Sent", (CORPUS / "11-vacation-reply.eml").read_bytes(), flags=[b"\\Seen", b"$Sent1"])
        client.select_folder(INBOX)
        uids = client.search(["ALL"])
        client.add_flags(uids[0:2], [b"\\Seen"])
        client.add_flags([uids[1]], [b"\\Flagged", b"\\Answered", b"$Label1"])
        client.add_flags([uids[3]], [b"$Important"])
        client.delete_messages([uids[2], uids[-1]])       # a gap, and the highest UID gone
        client.expunge()
        client.select_folder(NESTED)
        client.add_flags(client.search(["ALL"])[-1:], [b"\\Draft", b"Work"])
        client.logout()
        expunged_top = uids[-1]

        before = snapshot(system)
        assert sorted(before[INBOX][1]) == [uids[0], uids[1], uids[3]]
        assert before[INBOX][1][uids[1]][0] == {b"\\Seen", b"\\Flagged", b"\\Answered", b"$Label1"}
        assert "\\Sent" in {f.decode() for f in before["folders"]["Sent"]}
        assert NESTED in before["subscribed"]

        system.ms.stop()
        system.ms.start()
        assert snapshot(system) == before

        system.ms.stop()
        shutil.rmtree(system.ms.var / "index")            # the index is lost
        system.ms.start()
        report = system.ms.mailctl("reconstruct", USER)
        assert report.returncode == 0, report.stderr
        assert snapshot(system) == before

        # Under the same UIDVALIDITY no UID comes back, not even the expunged highest one.
        (new_uid,) = system.deliver(USER, "12-long-lines.eml")
        assert new_uid > expunged_top
        client = connect(system)
        try:
            client.select_folder(INBOX, readonly=True)
            assert client.search(["ALL"]) == [uids[0], uids[1], uids[3], new_uid]
        finally:
            client.logout()
    finally:
        system.stop()
