"""imapd's ACL extension (RFC 4314) and shared folders through the real master: an admin's
Shared namespace folder read by everyone, a user sharing a folder with a colleague through
SETACL, rights enforced (NO [NOPERM], RFC 5530), GETACL / MYRIGHTS / LISTRIGHTS / DELETEACL,
and ACLs surviving a master restart and an index rebuilt from the files."""
from __future__ import annotations

import re
import shutil

import pytest

from tests.conftest import CORPUS
from tests.integration.imapd_support import Client, ImapSystem, login

pytestmark = pytest.mark.integration
PASSWORD = "acl pass phrase"
ADMIN = "aclboss"
OWNER = "owner1"
COLLEAGUE = "colleague"
STRANGER = "stranger"


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    running = ImapSystem(tmp_path_factory.mktemp("imapd-acl"), main={"imap_admins": ADMIN})
    for name in (ADMIN, OWNER, COLLEAGUE, STRANGER):
        running.add_user(name, PASSWORD)
    yield running
    running.stop()


@pytest.fixture
def session(system):
    opened = []

    def open_as(user: str) -> Client:
        opened.append(Client(system.port(), user, PASSWORD))
        return opened[-1]
    yield open_as
    for raw in opened:
        raw.close()


def message(name: str) -> bytes:
    return (CORPUS / name).read_bytes().replace(b"\n", b"\r\n")


def names_listed(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        match = re.fullmatch(r'\* LIST \(([^)]*)\) "/" "(.*)"', line)
        if match:
            out[match.group(2)] = match.group(1)
    return out


def test_capability_and_namespace(session):
    user = session(COLLEAGUE)
    lines, _ = user.cmd("CAPABILITY")
    assert " ACL " in lines[0] and " RIGHTS=texk" in lines[0]
    lines, done = user.cmd("NAMESPACE")
    assert lines == ['* NAMESPACE (("" "/")) (("user/" "/")) (("shared/" "/"))'] and done.startswith("OK")


def test_shared_folder_read_by_everyone_written_by_none(system, session):
    admin = session(ADMIN)
    assert admin.cmd("CREATE shared/Announcements")[1].startswith("OK")
    _, done = admin.cmd("APPEND shared/Announcements (\\Seen)", message("01-plain.eml"))
    assert done.startswith("OK [APPENDUID"), done
    assert admin.cmd('SETACL shared/Announcements anyone lr')[1].startswith("OK")
    lines, done = admin.cmd("GETACL shared/Announcements")
    assert lines == ['* ACL "shared/Announcements" "anyone" "lr"'] and done.startswith("OK")

    reader = session(STRANGER)
    lines, _ = reader.cmd('LIST "" "*"')
    assert names_listed(lines)["shared/Announcements"] == "\\HasNoChildren"
    assert names_listed(lines)["shared"] == "\\Noselect \\HasChildren"
    lines, _ = reader.cmd("MYRIGHTS shared/Announcements")
    assert lines == ['* MYRIGHTS "shared/Announcements" "lr"']
    lines, _ = reader.cmd("STATUS shared/Announcements (MESSAGES)")
    assert lines == ['* STATUS "shared/Announcements" (MESSAGES 1)']
    lines, done = reader.cmd("SELECT shared/Announcements")
    assert "* 1 EXISTS" in lines and done.startswith("OK [READ-ONLY]"), done
    lines, done = reader.cmd("FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert done.startswith("OK") and "Subject:" in "\n".join(lines)
    assert reader.cmd("STORE 1 +FLAGS (\\Flagged)")[1].startswith("NO [READ-ONLY]")
    assert reader.cmd("APPEND shared/Announcements", message("08-dot-lines.eml"))[1].startswith("NO [NOPERM]")
    assert reader.cmd("COPY 1 shared/Announcements")[1].startswith("NO [NOPERM]")
    for command in ("DELETE shared/Announcements", "CREATE shared/Announcements/Mine", "CREATE shared/Mine",
                    "SETACL shared/Announcements stranger lrswi", "GETACL shared/Announcements"):
        assert reader.cmd(command)[1].startswith("NO [NOPERM]"), command
    lines, _ = reader.cmd("LISTRIGHTS shared/Announcements stranger")
    assert lines == []
    assert reader.cmd("SELECT shared/Nowhere")[1].startswith("NO [NONEXISTENT]")
    assert reader.cmd("SUBSCRIBE shared/Announcements")[1].startswith("OK")
    lines, _ = reader.cmd('LSUB "" "shared/*"')
    assert lines == ['* LSUB () "/" "shared/Announcements"']
    lines, _ = reader.cmd('LIST (SUBSCRIBED) "" "shared/*"')
    assert names_listed(lines) == {"shared/Announcements": "\\HasNoChildren \\Subscribed"}

    # l alone: listed, but neither opened nor counted
    admin.cmd("CREATE shared/Board")
    admin.cmd("SETACL shared/Board anyone l")
    lines, _ = reader.cmd('LIST "" "shared/%" RETURN (STATUS (MESSAGES))')
    assert set(names_listed(lines)) == {"shared/Announcements", "shared/Board"}
    assert [line for line in lines if line.startswith("* STATUS")] == ['* STATUS "shared/Announcements" (MESSAGES 1)']
    assert reader.cmd("SELECT shared/Board")[1].startswith("NO [NOPERM]")
    assert reader.cmd("STATUS shared/Board (MESSAGES)")[1].startswith("NO [NOPERM]")

    # i for one user: APPEND and COPY into the shared folder work for them
    assert admin.cmd("SETACL shared/Announcements colleague +i")[1].startswith("OK")
    writer = session(COLLEAGUE)
    lines, _ = writer.cmd("MYRIGHTS shared/Announcements")
    assert lines == ['* MYRIGHTS "shared/Announcements" "lri"']
    _, done = writer.cmd("APPEND shared/Announcements", message("04-alternative.eml"))
    assert done.startswith("OK [APPENDUID"), done
    system.deliver(COLLEAGUE, "03-quoted-printable.eml")
    writer.cmd("SELECT INBOX")
    _, done = writer.cmd("COPY 1 shared/Announcements")
    assert done.startswith("OK [COPYUID"), done
    with system.store() as store:
        assert len(store.open_mailbox("_shared", "Announcements")) == 3
    lines, _ = admin.cmd("GETACL shared/Announcements")
    assert lines == ['* ACL "shared/Announcements" "anyone" "lr" "colleague" "i"']


def test_flag_rights_in_a_read_write_shared_folder(system, session):
    admin = session(ADMIN)
    admin.cmd("CREATE shared/Tasks")
    admin.cmd("APPEND shared/Tasks", message("09-folded-headers.eml"))
    admin.cmd("SETACL shared/Tasks stranger lrs")
    user = session(STRANGER)
    lines, done = user.cmd("SELECT shared/Tasks")
    assert done.startswith("OK [READ-WRITE]"), done
    lines, done = user.cmd("FETCH 1 (BODY[TEXT])")             # s: reading sets \Seen
    assert done.startswith("OK") and "\\Seen" in lines[-1]
    assert user.cmd("STORE 1 +FLAGS (\\Flagged)")[1].startswith("NO [NOPERM]")
    assert user.cmd("STORE 1 +FLAGS (\\Deleted)")[1].startswith("NO [NOPERM]")
    assert user.cmd("STORE 1 -FLAGS (\\Seen)")[1].startswith("OK")
    assert user.cmd("EXPUNGE")[1].startswith("NO [NOPERM]")
    assert user.cmd("MOVE 1 INBOX")[1].startswith("NO [NOPERM]")
    assert user.cmd("CLOSE")[1].startswith("OK")               # without e: no expunge, no error
    with system.store() as store:
        assert store.open_mailbox("_shared", "Tasks").messages()[0].flags == ()
    admin.cmd("SETACL shared/Tasks stranger -s")
    admin.cmd("SETACL shared/Tasks stranger +d")                 # the obsolete d: x, t and e
    lines, _ = admin.cmd("GETACL shared/Tasks")
    assert lines == ['* ACL "shared/Tasks" "stranger" "lrxte"']


def test_append_and_copy_keep_only_the_flags_the_rights_allow(system, session):
    """RFC 4314 4: s sets \\Seen, t \\Deleted and w the other flags during APPEND and COPY
    too; without them the flags are dropped and the message goes in all the same."""
    admin = session(ADMIN)
    admin.cmd("CREATE shared/Dropbox")
    admin.cmd("SETACL shared/Dropbox stranger lis")
    user = session(STRANGER)
    done = user.cmd("APPEND shared/Dropbox (\\Seen \\Flagged \\Deleted $Work)", message("01-plain.eml"))[1]
    assert done.startswith("OK [APPENDUID "), done
    user.cmd("APPEND INBOX (\\Seen \\Answered \\Deleted)", message("04-alternative.eml"))
    user.cmd("SELECT INBOX")
    lines, done = user.cmd("COPY 1:* shared/Dropbox")
    assert done.startswith("OK [COPYUID "), done
    with system.store() as store:
        assert [m.flags for m in store.open_mailbox("_shared", "Dropbox").messages()] == [("\\Seen",), ("\\Seen",)]
        assert set(store.open_mailbox(STRANGER, "INBOX").messages()[-1].flags) == \
            {"\\Answered", "\\Deleted", "\\Seen"}                 # the user's own: every flag kept
    admin.cmd("SETACL shared/Dropbox stranger +wt")
    user.cmd("APPEND shared/Dropbox (\\Flagged \\Deleted)", message("01-plain.eml"))
    with system.store() as store:
        assert set(store.open_mailbox("_shared", "Dropbox").messages()[-1].flags) == {"\\Deleted", "\\Flagged"}


def test_user_shares_a_folder_with_a_colleague(system, session):
    owner = login(system.port(), OWNER, PASSWORD)
    try:
        owner.create("Work")
        system.deliver(OWNER, "05-mixed-attachment.eml", "06-nested-multipart.eml", mailbox="Work")
        assert owner.setacl("Work", COLLEAGUE, "lrs")[0] == "OK"
        typ, data = owner.getacl("Work")
        assert typ == "OK" and data == [b'"Work" "owner1" "lrswipkxtea" "colleague" "lrs"']
        typ, data = owner.myrights("Work")
        assert data == [b'"Work" "lrswipkxtea"']
    finally:
        owner.logout()
    owner_raw = session(OWNER)
    lines, _ = owner_raw.cmd("LISTRIGHTS Work colleague")
    assert lines == ['* LISTRIGHTS "Work" "colleague" "" "l" "r" "s" "w" "i" "p" "k" "x" "t" "e" "a"']
    lines, _ = owner_raw.cmd(f"LISTRIGHTS Work {OWNER}")
    assert lines == [f'* LISTRIGHTS "Work" "{OWNER}" "lrswipkxtea"']
    assert owner_raw.cmd(f"SETACL Work {OWNER} lr")[1].startswith("NO [CANNOT]")
    assert owner_raw.cmd("SETACL Work colleague lrz")[1].startswith("BAD")
    assert owner_raw.cmd("SETACL Work -colleague l")[1].startswith("NO [CANNOT]")

    colleague = login(system.port(), COLLEAGUE, PASSWORD)
    try:
        typ, data = colleague.list('""', "user/*")
        shown = {line.decode().rsplit(" ", 1)[-1].strip('"') for line in data if line}
        assert f"user/{OWNER}/Work" in shown and f"user/{OWNER}/Sent" not in shown
        typ, data = colleague.myrights(f"user/{OWNER}/Work")
        assert data == [f'"user/{OWNER}/Work" "lrs"'.encode()]
        typ, data = colleague.select(f"user/{OWNER}/Work")
        assert typ == "OK" and data == [b"2"]
        typ, data = colleague.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)] FLAGS)")
        assert typ == "OK" and b"\\Seen" in b" ".join(p if isinstance(p, bytes) else p[0] for p in data)
        typ, data = colleague.store("2", "+FLAGS", "(\\Deleted)")
        assert typ == "NO" and data[0].startswith(b"[NOPERM]")
        for name in (f"user/{OWNER}/Sent", f"user/{OWNER}"):
            typ, data = colleague.select(name)
            assert typ == "NO" and data[0].startswith(b"[NONEXISTENT]"), name
    finally:
        colleague.logout()
    with system.store() as store:
        assert "\\Seen" in store.open_mailbox(OWNER, "Work").messages()[0].flags
    stranger = session(STRANGER)
    assert stranger.cmd(f"SELECT user/{OWNER}/Work")[1].startswith("NO [NONEXISTENT]")
    assert stranger.cmd(f"MYRIGHTS user/{OWNER}/Work")[1].startswith("NO [NONEXISTENT]")
    lines, _ = stranger.cmd('LIST "" "user/*"')
    assert names_listed(lines) == {}


def test_acls_survive_restart_and_reconstruct_then_deleteacl_removes_access(system, session):
    owner, admin = session(OWNER), session(ADMIN)
    assert owner.cmd("CREATE Kept")[1].startswith("OK")
    assert owner.cmd(f"SETACL Kept {COLLEAGUE} lrs")[1].startswith("OK")
    assert admin.cmd("CREATE shared/Notices")[1].startswith("OK")
    assert admin.cmd("SETACL shared/Notices anyone lr")[1].startswith("OK")
    system.ms.stop()
    system.ms.start()
    lines, _ = session(COLLEAGUE).cmd(f"MYRIGHTS user/{OWNER}/Kept")
    assert lines == [f'* MYRIGHTS "user/{OWNER}/Kept" "lrs"']

    system.ms.stop()
    shutil.rmtree(system.ms.var / "index")                              # the index is lost
    system.ms.start()
    report = system.ms.mailctl("reconstruct")
    assert report.returncode == 0, report.stderr
    lines, _ = session(COLLEAGUE).cmd(f"MYRIGHTS user/{OWNER}/Kept")
    assert lines == [f'* MYRIGHTS "user/{OWNER}/Kept" "lrs"']
    lines, _ = session(STRANGER).cmd("MYRIGHTS shared/Notices")
    assert lines == ['* MYRIGHTS "shared/Notices" "lr"']

    owner = session(OWNER)
    assert owner.cmd("DELETEACL Kept colleague")[1].startswith("OK")
    lines, _ = owner.cmd("GETACL Kept")
    assert lines == [f'* ACL "Kept" "{OWNER}" "lrswipkxtea"']
    colleague = session(COLLEAGUE)
    assert colleague.cmd(f"SELECT user/{OWNER}/Kept")[1].startswith("NO [NONEXISTENT]")
    lines, _ = colleague.cmd('LIST "" "user/*"')
    assert f"user/{OWNER}/Kept" not in names_listed(lines)


def test_admin_reads_every_user_and_manages_shared(session):
    assert session(OWNER).cmd("CREATE Ledger")[1].startswith("OK")
    admin = session(ADMIN)
    lines, done = admin.cmd(f"SELECT user/{OWNER}/Ledger")
    assert done.startswith("OK [READ-ONLY]"), done
    lines, _ = admin.cmd(f"MYRIGHTS user/{OWNER}/Ledger")
    assert lines == [f'* MYRIGHTS "user/{OWNER}/Ledger" "lr"']
    assert admin.cmd(f"SETACL user/{OWNER}/Ledger {ADMIN} lrswi")[1].startswith("NO [NOPERM]")
    assert admin.cmd(f"DELETE user/{OWNER}/Ledger")[1].startswith("NO [NOPERM]")
    assert admin.cmd("CREATE shared/Old/Archive")[1].startswith("OK")
    admin.cmd("SETACL shared/Old anyone lrk")
    user = session(STRANGER)
    assert user.cmd("CREATE shared/Old/Mine")[1].startswith("OK")      # k on the parent
    lines, _ = user.cmd("MYRIGHTS shared/Old/Mine")
    assert lines == ['* MYRIGHTS "shared/Old/Mine" "lrk"']               # the parent's ACL, inherited
    assert admin.cmd("DELETE shared/Old/Mine")[1].startswith("OK")
    assert admin.cmd("DELETE shared/Old/Archive")[1].startswith("OK")
    assert admin.cmd("DELETE shared/Old")[1].startswith("OK")
    assert user.cmd("SELECT shared/Old")[1].startswith("NO [NONEXISTENT]")
