"""imapd's message commands through the real master: STORE, EXPUNGE, CLOSE, UNSELECT, COPY,
MOVE, APPEND, and what a second session on the same mailbox is told of them.

STORE in every mode with and without .SILENT (the FETCH answers, and the flags in the
store), bad flags, STORE on an EXAMINEd mailbox; EXPUNGE's responses highest first, UID
EXPUNGE limited to its set; CLOSE's silent expunge, UNSELECT's none; COPYUID and APPENDUID
checked against the target mailbox (through the store and UID FETCH), TRYCREATE, OVERQUOTA
for a user with a small quota; a second session sees flag changes, expunges and new
messages at its next NOOP, each once, EXPUNGE before EXISTS; after another session's
expunge a STORE and a FETCH answer current flags without any EXPUNGE, which follows at NOOP.
"""
from __future__ import annotations

import email
import itertools
import re

import pytest

from store.mailstore import INBOX
from tests.conftest import CORPUS
from tests.integration.imapd_support import ImapSystem, Raw

pytestmark = pytest.mark.integration
PASSWORD = "Messages pass 1"
_names = itertools.count(1)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    running = ImapSystem(tmp_path_factory.mktemp("imapd-messages"))
    yield running
    running.stop()


def new_user(system, *messages: str, **profile) -> str:
    name = f"user{next(_names)}"
    system.add_user(name, PASSWORD, **profile)
    system.deliver(name, *messages)
    return name


def session(system, user: str, mailbox: str = INBOX, verb: bytes = b"SELECT") -> Raw:
    raw = Raw(system.port())
    assert raw.command(b"L", f"LOGIN {user} \"{PASSWORD}\"".encode())[-1].startswith(b"L OK")
    assert raw.command(b"S", verb + b" " + mailbox.encode())[-1].startswith(b"S OK")
    return raw


def ok(lines: list[bytes]) -> list[bytes]:
    """The untagged lines of a command that must have succeeded, \\Recent (the first session's,
    test_imapd_fetch) left out of the flags."""
    assert lines[-1].split(b" ")[1] == b"OK", lines
    return [line.replace(b"(\\Recent)", b"()").replace(b"\\Recent ", b"") for line in lines[:-1]]


def messages(system, user: str, mailbox: str = INBOX) -> dict[int, tuple]:
    """uid -> (flags, internal date, bytes) as the store has them."""
    store = system.store()
    try:
        view = store.open_mailbox(user, mailbox)
        found = {}
        for message in view.messages():
            with open(message.path, "rb") as f:
                found[message.uid] = (set(message.flags), message.internal_date, f.read())
        return found
    finally:
        store.close()


def corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


# ---------------------------------------------------------------- STORE

def test_store_modes_answer_the_new_flags(system):
    user = new_user(system, "01-plain.eml", "02-utf8-8bit.eml", "03-quoted-printable.eml")
    raw = session(system, user)
    try:
        lines = ok(raw.command(b"A1", b"STORE 1 +FLAGS (\\Seen $Work)"))
        assert b"* 1 FETCH (FLAGS (\\Seen $Work))\r\n" in lines
        assert any(line.startswith(b"* FLAGS (") and b"$Work" in line for line in lines)   # the new keyword
        assert ok(raw.command(b"A2", b"STORE 1 -FLAGS (\\seen)")) == [b"* 1 FETCH (FLAGS ($Work))\r\n"]
        assert ok(raw.command(b"A3", b"STORE 1:2 FLAGS \\Flagged \\Draft")) == [
            b"* 1 FETCH (FLAGS (\\Flagged \\Draft))\r\n", b"* 2 FETCH (FLAGS (\\Flagged \\Draft))\r\n"]
        # unchanged messages are answered too
        assert ok(raw.command(b"A4", b"STORE 2 +FLAGS (\\Flagged)")) == [b"* 2 FETCH (FLAGS (\\Flagged \\Draft))\r\n"]
        assert ok(raw.command(b"A5", b"STORE 3 +FLAGS.SILENT (\\Answered)")) == []
        assert ok(raw.command(b"A6", b"STORE 1 -FLAGS.SILENT (\\Draft)")) == []
        assert ok(raw.command(b"A7", b"STORE 2 FLAGS.SILENT ()")) == []
        assert ok(raw.command(b"A8", b"UID STORE 1:* +FLAGS (\\Seen)")) == [
            b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Flagged))\r\n", b"* 2 FETCH (UID 2 FLAGS (\\Seen))\r\n",
            b"* 3 FETCH (UID 3 FLAGS (\\Seen \\Answered))\r\n"]
        # the silent changes are not repeated as updates either
        assert ok(raw.command(b"A9", b"NOOP")) == []
        assert ok(raw.command(b"A10", b"FETCH 1:3 FLAGS")) == [
            b"* 1 FETCH (FLAGS (\\Seen \\Flagged))\r\n", b"* 2 FETCH (FLAGS (\\Seen))\r\n",
            b"* 3 FETCH (FLAGS (\\Seen \\Answered))\r\n"]
    finally:
        raw.close()
    stored = messages(system, user)
    assert [stored[uid][0] for uid in (1, 2, 3)] == [{"\\Seen", "\\Flagged"}, {"\\Seen"}, {"\\Seen", "\\Answered"}]


def test_store_refuses_bad_flags_and_read_only(system):
    user = new_user(system, "01-plain.eml")
    raw = session(system, user)
    try:
        for text in (b"STORE 1 +FLAGS (\\Recent)", b"STORE 1 +FLAGS (\\Bogus)", b"STORE 1 +FLAGS (a%b)",
                     b"STORE 1 PLUS (\\Seen)", b"STORE 1 +FLAGS", b"STORE 2 +FLAGS (\\Seen)",
                     b'STORE 1 +FLAGS ("\\\\Seen")'):
            assert raw.command(b"B", text)[-1].startswith(b"B BAD"), text
        assert raw.command(b"E", b"EXAMINE INBOX")[-1].startswith(b"E OK [READ-ONLY]")
        assert raw.command(b"C", b"STORE 1 +FLAGS (\\Seen)")[-1].startswith(b"C NO [READ-ONLY]")
        assert raw.command(b"D", b"EXPUNGE")[-1].startswith(b"D NO [READ-ONLY]")
    finally:
        raw.close()
    assert messages(system, user)[1][0] == set()


# ---------------------------------------------------------------- EXPUNGE, CLOSE, UNSELECT

def test_expunge_answers_highest_first(system):
    user = new_user(system, *(f"0{n}-{name}.eml" for n, name in (
        (1, "plain"), (2, "utf8-8bit"), (3, "quoted-printable"), (4, "alternative"), (5, "mixed-attachment"))))
    raw = session(system, user)
    try:
        ok(raw.command(b"A", b"STORE 2,4:5 +FLAGS.SILENT (\\Deleted)"))
        assert ok(raw.command(b"B", b"EXPUNGE")) == [b"* 5 EXPUNGE\r\n", b"* 4 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n"]
        assert ok(raw.command(b"C", b"EXPUNGE")) == []
        assert ok(raw.command(b"D", b"UID FETCH 1:* FLAGS")) == [
            b"* 1 FETCH (UID 1 FLAGS ())\r\n", b"* 2 FETCH (UID 3 FLAGS ())\r\n"]
    finally:
        raw.close()
    assert sorted(messages(system, user)) == [1, 3]


def test_uid_expunge_removes_only_its_set(system):
    user = new_user(system, "01-plain.eml", "02-utf8-8bit.eml", "03-quoted-printable.eml", "04-alternative.eml")
    raw = session(system, user)
    try:
        ok(raw.command(b"A", b"STORE 1:* +FLAGS.SILENT (\\Deleted)"))
        assert ok(raw.command(b"B", b"UID EXPUNGE 2:3,9")) == [b"* 3 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n"]
        assert raw.command(b"C", b"UID EXPUNGE x")[-1].startswith(b"C BAD")
    finally:
        raw.close()
    assert sorted(messages(system, user)) == [1, 4]


def test_close_expunges_silently_unselect_and_examine_do_not(system):
    user = new_user(system, "01-plain.eml", "02-utf8-8bit.eml", "03-quoted-printable.eml")
    raw = session(system, user)
    try:
        ok(raw.command(b"A", b"STORE 1 +FLAGS.SILENT (\\Deleted)"))
        assert ok(raw.command(b"B", b"UNSELECT")) == []
        assert sorted(messages(system, user)) == [1, 2, 3]
        assert raw.command(b"C", b"EXPUNGE")[-1].startswith(b"C BAD")     # no mailbox selected
        ok(raw.command(b"D", b"EXAMINE INBOX"))
        assert ok(raw.command(b"E", b"CLOSE")) == []
        assert sorted(messages(system, user)) == [1, 2, 3]
        ok(raw.command(b"F", b"SELECT INBOX"))
        ok(raw.command(b"G", b"STORE 3 +FLAGS.SILENT (\\Deleted)"))
        assert ok(raw.command(b"H", b"CLOSE")) == []
        assert raw.command(b"I", b"NOOP")[-1].startswith(b"I OK")
    finally:
        raw.close()
    assert sorted(messages(system, user)) == [2]


# ---------------------------------------------------------------- COPY, MOVE

def test_copy_answers_copyuid_of_the_target(system):
    user = new_user(system, "01-plain.eml", "04-alternative.eml", "07-forwarded-rfc822.eml")
    raw = session(system, user)                                     # the first login makes Archive
    system.deliver(user, "10-dsn-report.eml", mailbox="Archive")      # the target has UID 1 already
    try:
        ok(raw.command(b"A", b"STORE 3 +FLAGS.SILENT (\\Flagged $Keep)"))
        tagged = raw.command(b"B", b"COPY 2:3 Archive")[-1]
        match = re.match(rb"B OK \[COPYUID (\d+) 2:3 2:3\]", tagged)
        assert match, tagged
        assert raw.command(b"C", b"UID COPY 1,3 Archive") == [
            b"C OK [COPYUID %s 1,3 4:5] UID COPY completed\r\n" % match.group(1)]
        tagged = raw.command(b"D", b"UID COPY 99 Archive")[-1]
        assert tagged.startswith(b"D OK") and b"COPYUID" not in tagged
        assert raw.command(b"E", b"COPY 1 Nowhere")[-1].startswith(b"E NO [TRYCREATE]")
        ok(raw.command(b"F", b"SELECT Archive"))
        assert ok(raw.command(b"G", b"UID FETCH 2:* FLAGS")) == [
            b"* 2 FETCH (UID 2 FLAGS ())\r\n", b"* 3 FETCH (UID 3 FLAGS (\\Flagged $Keep))\r\n",
            b"* 4 FETCH (UID 4 FLAGS ())\r\n", b"* 5 FETCH (UID 5 FLAGS (\\Flagged $Keep))\r\n"]
    finally:
        raw.close()
    archive = messages(system, user, "Archive")
    inbox = messages(system, user)
    assert int(match.group(1)) == system_uidvalidity(system, user, "Archive")
    assert [archive[uid][2] for uid in (2, 3, 4, 5)] == [inbox[2][2], inbox[3][2], inbox[1][2], inbox[3][2]]
    assert archive[3][1] == inbox[3][1]                       # the internal date goes along
    assert sorted(inbox) == [1, 2, 3]


def system_uidvalidity(system, user: str, mailbox: str) -> int:
    store = system.store()
    try:
        return store.mailbox(user, mailbox).uidvalidity
    finally:
        store.close()


def test_move_sends_copyuid_then_expunges(system):
    user = new_user(system, "01-plain.eml", "02-utf8-8bit.eml", "03-quoted-printable.eml")
    raw = session(system, user)
    try:
        assert raw.command(b"N", b"MOVE 1:* Nowhere")[-1].startswith(b"N NO [TRYCREATE]")
        lines = raw.command(b"A", b"MOVE 1,3 Trash")
        validity = system_uidvalidity(system, user, "Trash")
        assert lines == [f"* OK [COPYUID {validity} 1,3 1:2] Moved\r\n".encode(), b"* 3 EXPUNGE\r\n",
                         b"* 1 EXPUNGE\r\n", b"A OK MOVE completed\r\n"]
        lines = raw.command(b"B", b"UID MOVE 2 Trash")
        assert lines[:2] == [f"* OK [COPYUID {validity} 2 3] Moved\r\n".encode(), b"* 1 EXPUNGE\r\n"], lines
        assert raw.command(b"C", b"MOVE 1 Trash")[-1].startswith(b"C BAD")       # the mailbox is empty now
    finally:
        raw.close()
    assert messages(system, user) == {}
    trash = messages(system, user, "Trash")
    assert [trash[uid][2] for uid in (1, 2, 3)] == [corpus(n) for n in (
        "01-plain.eml", "03-quoted-printable.eml", "02-utf8-8bit.eml")]


def test_quota_refuses_copy_and_append_not_move(system):
    size = len(corpus("09-folded-headers.eml"))
    user = new_user(system, "09-folded-headers.eml", quota=size + size // 2)
    raw = session(system, user)
    try:
        assert raw.command(b"A", b"COPY 1 Archive")[-1].startswith(b"A NO [OVERQUOTA]")
        message = corpus("09-folded-headers.eml")
        assert raw.command(b"B", b"APPEND Archive {%d+}\r\n" % len(message) + message)[-1].startswith(b"B NO [OVERQUOTA]")
        assert raw.command(b"C", b"MOVE 1 Archive")[-1].startswith(b"C OK")
    finally:
        raw.close()
    assert sorted(messages(system, user, "Archive")) == [1]
    assert messages(system, user) == {}


# ---------------------------------------------------------------- APPEND

def test_append_answers_appenduid(system):
    user = new_user(system, "01-plain.eml")
    raw = session(system, user)
    try:
        message = corpus("06-nested-multipart.eml").replace(b"\n", b"\r\n")
        tagged = raw.command(b"A", b'APPEND Drafts (\\Draft $Later) "05-Mar-2021 14:30:00 +0200" {%d+}\r\n'
                             % len(message) + message)[-1]
        match = re.match(rb"A OK \[APPENDUID (\d+) 1\]", tagged)
        assert match and int(match.group(1)) == system_uidvalidity(system, user, "Drafts"), tagged
        # to the selected mailbox: EXISTS before the tagged OK
        raw.send(b"B APPEND INBOX {%d}\r\n" % len(message))
        assert raw.line() == b"+ OK\r\n"
        raw.send(message + b"\r\n")
        lines = raw.until_tagged(b"B")
        assert lines[0] == b"* 2 EXISTS\r\n" and re.match(rb"B OK \[APPENDUID \d+ 2\]", lines[-1]), lines
        assert raw.command(b"C", b"APPEND Nowhere {3+}\r\nabc")[-1].startswith(b"C NO [TRYCREATE]")
        assert raw.command(b"D", b"APPEND INBOX {0+}\r\n")[-1].startswith(b"D NO")
        for text in (b'APPEND INBOX "31-Feb-2021 10:00:00 +0000" {3+}\r\nabc',
                     b'APPEND INBOX "5-Mar-2021 10:00 +0000" {3+}\r\nabc',
                     b"APPEND INBOX (\\Recent) {3+}\r\nabc", b"APPEND INBOX"):
            assert raw.command(b"E", text)[-1].startswith(b"E BAD"), text
    finally:
        raw.close()
    [(flags, date, data)] = messages(system, user, "Drafts").values()
    assert (flags, date, data) == ({"\\Draft", "$Later"}, 1614947400, message)
    assert len(messages(system, user)) == 2


# ---------------------------------------------------------------- two sessions

def test_second_session_hears_changes_once_at_noop(system):
    user = new_user(system, "01-plain.eml", "02-utf8-8bit.eml", "03-quoted-printable.eml")
    a, b = session(system, user), session(system, user)
    try:
        ok(a.command(b"A1", b"STORE 1 +FLAGS (\\Flagged)"))
        assert ok(b.command(b"B1", b"NOOP")) == [b"* 1 FETCH (UID 1 FLAGS (\\Flagged))\r\n"]
        assert ok(b.command(b"B2", b"NOOP")) == []
        ok(a.command(b"A2", b"STORE 2 +FLAGS.SILENT (\\Deleted)"))
        ok(a.command(b"A3", b"EXPUNGE"))
        message = corpus("11-vacation-reply.eml")
        ok(a.command(b"A4", b"APPEND INBOX (\\Seen) {%d+}\r\n" % len(message) + message))
        assert ok(b.command(b"B3", b"NOOP")) == [b"* 2 EXPUNGE\r\n", b"* 3 EXISTS\r\n", b"* 0 RECENT\r\n"]
        assert ok(b.command(b"B4", b"FETCH 3 (UID FLAGS)")) == [b"* 3 FETCH (UID 4 FLAGS (\\Seen))\r\n"]
    finally:
        a.close()
        b.close()


def test_store_after_foreign_expunge_keeps_numbers_and_flags_current(system):
    user = new_user(system, "01-plain.eml", "02-utf8-8bit.eml", "03-quoted-printable.eml")
    a, b = session(system, user), session(system, user)
    try:
        ok(a.command(b"A1", b"STORE 1 +FLAGS.SILENT (\\Deleted)"))
        ok(a.command(b"A2", b"EXPUNGE"))
        ok(a.command(b"A3", b"STORE 2 +FLAGS (\\Answered)"))       # A's 2 is UID 3
        # B still numbers UID 1 as 1: no EXPUNGE during STORE or FETCH
        assert ok(b.command(b"B1", b"STORE 2 +FLAGS (\\Seen)")) == [
            b"* 2 FETCH (FLAGS (\\Seen))\r\n", b"* 3 FETCH (UID 3 FLAGS (\\Answered))\r\n"]
        assert ok(b.command(b"B2", b"FETCH 1:3 (UID FLAGS)")) == [
            b"* 1 FETCH (UID 1 FLAGS ())\r\n", b"* 2 FETCH (UID 2 FLAGS (\\Seen))\r\n",
            b"* 3 FETCH (UID 3 FLAGS (\\Answered))\r\n"]
        assert ok(b.command(b"B3", b"NOOP")) == [b"* 1 EXPUNGE\r\n"]
        assert ok(b.command(b"B4", b"NOOP")) == []
        assert ok(b.command(b"B5", b"FETCH 1:2 (UID FLAGS)")) == [
            b"* 1 FETCH (UID 2 FLAGS (\\Seen))\r\n", b"* 2 FETCH (UID 3 FLAGS (\\Answered))\r\n"]
    finally:
        a.close()
        b.close()


def test_append_literal8(system):
    """APPEND ~{n} (BINARY, RFC 3516): stored as given, except that a part holding NUL is
    re-encoded as base64, so BODY[1] carries no NUL and BINARY[1] gives the octets back."""
    user = new_user(system)
    png = email.message_from_bytes(corpus("05-mixed-attachment.eml")).get_payload()[2].get_payload(decode=True)
    assert b"\0" in png
    header = corpus("01-plain.eml").split(b"\n\n", 1)[0].replace(b"\n", b"\r\n")
    header = header.replace(b"Content-Type: text/plain; charset=us-ascii", b"Content-Type: image/png")
    header = header.replace(b"Content-Transfer-Encoding: 7bit", b"Content-Transfer-Encoding: binary")
    binary = header + b"\r\n\r\n" + png
    text = corpus("02-utf8-8bit.eml").replace(b"\n", b"\r\n")
    raw = session(system, user)
    try:
        for tag, message in ((b"A", binary), (b"B", text)):
            assert raw.command(tag, b"APPEND INBOX ~{%d+}\r\n" % len(message) + message)[-1].startswith(tag + b" OK")
        stored = messages(system, user)
        assert stored[2][2] == text                          # no NUL: byte for byte
        assert b"\0" not in stored[1][2] and b"Content-Transfer-Encoding: base64\r\n" in stored[1][2]
        raw.send(b"C FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1])\r\n")
        assert raw.line() == b"* 1 FETCH (BINARY.SIZE[1] %d BINARY[1] ~{%d}\r\n" % (len(png), len(png))
        assert raw.file.read(len(png)) == png and raw.line() == b")\r\n"
        assert raw.until_tagged(b"C")[-1].startswith(b"C OK")
        lines = raw.command(b"D", b"FETCH 1 (BODY.PEEK[1])")
        assert b"\0" not in b"".join(lines) and lines[-1].startswith(b"D OK")
    finally:
        raw.close()


def test_disk_guard_refuses_append_and_copy_not_reading(system):
    user = new_user(system, "01-plain.eml")
    raw = session(system, user)
    flag = system.ms.var / "run" / "lowspace"      # what the master's disk guard writes
    message = corpus("02-utf8-8bit.eml").replace(b"\n", b"\r\n")
    try:
        flag.touch()
        tagged = raw.command(b"A", b"APPEND Drafts {%d+}\r\n" % len(message) + message)[-1]
        assert tagged.startswith(b"A NO [UNAVAILABLE]"), tagged
        assert raw.command(b"C", b"COPY 1 Trash")[-1].startswith(b"C NO [UNAVAILABLE]")
        assert raw.command(b"F", b"FETCH 1 (BODY.PEEK[])")[-1].startswith(b"F OK")   # reading goes on
        flag.unlink()
        assert raw.command(b"A2", b"APPEND Drafts {%d+}\r\n" % len(message) + message)[-1].startswith(b"A2 OK")
    finally:
        flag.unlink(missing_ok=True)
        raw.close()
