"""IMAP4rev2 (RFC 9051), UTF8=ACCEPT (RFC 6855) and MULTIAPPEND (RFC 3502) through the real
master, with a raw socket client and exact responses.

IMAP4rev2: announced next to IMAP4rev1 before and after login; after ENABLE IMAP4rev2,
SELECT sends no RECENT and no UNSEEN but a LIST of the mailbox, OK [CLOSED] when another was
selected, FETCH/STORE/new-mail updates carry no \\Recent and no `* n RECENT`, SEARCH answers
ESEARCH (RECENT matches nothing), names are UTF-8, STATUS DELETED, DELETE of a parent is
NO [HASCHILDREN]; a rev1 session of the same user keeps rev1's answers.
UTF8=ACCEPT: UTF-8 names in and out (modified UTF-7 for a session that did not enable it),
APPEND's `UTF8 (~{n})` form (BAD before ENABLE), CHARSET other than UTF-8 BAD in SEARCH and
SORT once enabled.
MULTIAPPEND: several messages with their own flags and dates in one command, synchronising
and non-synchronising literals, APPENDUID with the UID set, EXISTS in the selected target;
nothing stored when one message is refused (bad flag, empty) or when together they pass the
quota.
"""
from __future__ import annotations

import itertools
import re

import pytest

from tests.conftest import CORPUS
from tests.integration.imapd_support import ImapSystem, Raw, connect, ok, run

pytestmark = pytest.mark.integration
PASSWORD = "Rev two pass 9"
_names = itertools.count(1)
_tags = itertools.count(1)
PLAIN = (CORPUS / "01-plain.eml").read_bytes()
UTF8 = (CORPUS / "02-utf8-8bit.eml").read_bytes()
QP = (CORPUS / "03-quoted-printable.eml").read_bytes()


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    running = ImapSystem(tmp_path_factory.mktemp("imapd-rev2"))
    yield running
    running.stop()


def new_user(system, *messages: str, **profile) -> str:
    name = f"rv{next(_names)}"
    system.add_user(name, PASSWORD, **profile)
    if messages:
        system.deliver(name, *messages)
    return name


def send(raw: Raw, data: bytes) -> list[bytes]:
    """One command (tag added) whose literals are all non-synchronising or sent after `+`."""
    tag = f"t{next(_tags)}".encode()
    raw.send(tag + b" " + data + b"\r\n")
    return raw.until_tagged(tag)


def untagged(lines: list[bytes]) -> list[bytes]:
    return [line.rstrip(b"\r\n") for line in lines[:-1]]


def tag_of(lines: list[bytes]) -> bytes:
    return lines[-1].split(b" ", 1)[0]


def tagged(lines: list[bytes]) -> bytes:
    return lines[-1].rstrip(b"\r\n").split(b" ", 1)[1]


def appended(raw: Raw, prefix: bytes, messages: list[tuple[bytes, bytes]], plus: bool = False) -> list[bytes]:
    """APPEND prefix, then per message its `flags/date ` text and literal; synchronising
    literals wait for the server's `+`."""
    tag = f"t{next(_tags)}".encode()
    out = tag + b" APPEND " + prefix
    for head, body in messages:
        out += b" " + head + (b"{%d+}\r\n" % len(body) if plus else b"{%d}\r\n" % len(body))
        if not plus:
            raw.send(out)
            assert raw.line().startswith(b"+ "), "no continuation"
            out = b""
        out += body
    raw.send(out + b"\r\n")
    return raw.until_tagged(tag)


# ---------------------------------------------------------------- IMAP4rev2

def test_rev2_is_announced_and_enabled(system):
    user = new_user(system)
    raw = Raw(system.port())
    assert b" IMAP4rev1 IMAP4rev2 " in raw.greeting
    lines = ok(raw, f'LOGIN {user} "{PASSWORD}"')
    assert b" IMAP4rev1 IMAP4rev2 " in lines[-1] and b" UTF8=ACCEPT " in lines[-1]
    assert b" MULTIAPPEND" in run(raw, "CAPABILITY")[0]
    assert untagged(ok(raw, "ENABLE IMAP4rev2")) == [b"* ENABLED IMAP4rev2"]
    assert untagged(ok(raw, "ENABLE IMAP4rev2 UTF8=ACCEPT")) == [b"* ENABLED UTF8=ACCEPT"]
    raw.close()


def test_rev2_select_has_list_and_no_recent_or_unseen(system):
    user = new_user(system, "01-plain.eml", "02-utf8-8bit.eml")
    store = system.store()
    try:
        validity = store.mailbox(user, "INBOX").uidvalidity
    finally:
        store.index.close()
    rev1 = connect(system.port(), user, PASSWORD)
    assert untagged(run(rev1, "EXAMINE INBOX")) == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
        b"* OK [PERMANENTFLAGS ()] Limited",
        b"* 2 EXISTS",
        b"* 2 RECENT",
        b"* OK [UNSEEN 1] First unseen",
        b"* OK [UIDVALIDITY %d] UIDs valid" % validity,
        b"* OK [UIDNEXT 3] Predicted next UID",
    ]
    rev2 = connect(system.port(), user, PASSWORD, "ENABLE IMAP4rev2")
    lines = run(rev2, "SELECT INBOX")
    assert untagged(lines) == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted",
        b"* 2 EXISTS",
        b"* OK [UIDVALIDITY %d] UIDs valid" % validity,
        b"* OK [UIDNEXT 3] Predicted next UID",
        b'* LIST (\\HasNoChildren) "/" "INBOX"',
    ]
    assert tagged(lines) == b"OK [READ-WRITE] SELECT completed"
    # the messages are recent to this session (it claimed them), but rev2 never says so
    assert untagged(run(rev2, "FETCH 1:2 FLAGS")) == [b"* 1 FETCH (FLAGS ())", b"* 2 FETCH (FLAGS ())"]
    assert untagged(run(rev2, "STORE 1 +FLAGS (\\Flagged)")) == [b"* 1 FETCH (FLAGS (\\Flagged))"]
    lines = run(rev2, "SEARCH RECENT")
    assert untagged(lines) == [b'* ESEARCH (TAG "%s")' % tag_of(lines)]
    ok(rev2, "CREATE Sent/2026")          # Sent (\\Sent) is made with the user
    lines = untagged(run(rev2, "EXAMINE Sent"))
    assert re.fullmatch(rb"\* OK \[UIDVALIDITY \d+\] UIDs valid", lines.pop(4))
    assert lines == [
        b"* OK [CLOSED] Previous mailbox closed",
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
        b"* OK [PERMANENTFLAGS ()] Limited",
        b"* 0 EXISTS",
        b"* OK [UIDNEXT 1] Predicted next UID",
        b'* LIST (\\HasChildren \\Sent) "/" "Sent"',
    ]
    rev1.close()
    rev2.close()


def test_rev2_updates_search_status_and_delete(system):
    user = new_user(system, "01-plain.eml", "03-quoted-printable.eml")
    rev1 = connect(system.port(), user, PASSWORD, "SELECT INBOX")
    rev2 = connect(system.port(), user, PASSWORD, "ENABLE IMAP4rev2", "EXAMINE INBOX")
    system.deliver(user, "04-alternative.eml")
    assert untagged(run(rev1, "NOOP")) == [b"* 3 EXISTS", b"* 3 RECENT"]
    assert untagged(run(rev2, "NOOP")) == [b"* 3 EXISTS"]
    assert untagged(run(rev1, "FETCH 3 FLAGS")) == [b"* 3 FETCH (FLAGS (\\Recent))"]
    ok(rev1, "STORE 1,3 +FLAGS.SILENT (\\Deleted)")
    assert untagged(run(rev2, "NOOP")) == [b"* 1 FETCH (UID 1 FLAGS (\\Deleted))",
                                           b"* 3 FETCH (UID 3 FLAGS (\\Deleted))"]
    lines = run(rev2, "SEARCH DELETED")
    assert untagged(lines) == [b'* ESEARCH (TAG "%s") ALL 1,3' % tag_of(lines)]
    lines = run(rev2, "UID SEARCH UNDELETED")
    assert untagged(lines) == [b'* ESEARCH (TAG "%s") UID ALL 2' % tag_of(lines)]
    assert untagged(run(rev1, "SEARCH DELETED")) == [b"* SEARCH 1 3"]
    assert untagged(run(rev2, "STATUS INBOX (MESSAGES DELETED UNSEEN)")) == [
        b'* STATUS "INBOX" (MESSAGES 3 DELETED 2 UNSEEN 3)']
    ok(rev2, "CREATE Projects/Alpha")
    assert tagged(run(rev2, "DELETE Projects")) == b"NO [HASCHILDREN] Mailbox has children, delete them first"
    assert tagged(run(rev1, "DELETE Projects")) == b"NO [ALREADYEXISTS] Mailbox has children, delete them first"
    rev1.close()
    rev2.close()


@pytest.mark.parametrize("enable", ["IMAP4rev2", "UTF8=ACCEPT"])
def test_utf8_mailbox_names(system, enable):
    user = new_user(system)
    utf8 = connect(system.port(), user, PASSWORD, f"ENABLE {enable}")
    rev1 = connect(system.port(), user, PASSWORD)
    ok(utf8, 'CREATE "Entwürfe/Grüße"')
    # 8-bit names go out as literals
    assert untagged(run(utf8, 'LIST "" "Entw*"')) == [
        b'* LIST (\\HasChildren) "/" {9}', "Entwürfe".encode(),
        b'* LIST (\\HasNoChildren) "/" {17}', "Entwürfe/Grüße".encode()]
    assert untagged(run(rev1, 'LIST "" "Entw*"')) == [
        b'* LIST (\\HasChildren) "/" "Entw&APw-rfe"', b'* LIST (\\HasNoChildren) "/" "Entw&APw-rfe/Gr&APwA3w-e"']
    assert untagged(run(utf8, 'STATUS "Entwürfe/Grüße" (MESSAGES)')) == [
        b"* STATUS {17}", "Entwürfe/Grüße (MESSAGES 0)".encode()]
    assert tagged(run(rev1, 'STATUS "Entwürfe" (MESSAGES)')).startswith(b"NO [CANNOT]")
    ok(rev1, 'RENAME "Entw&APw-rfe/Gr&APwA3w-e" "Entw&APw-rfe/Tsch&APw-ss"')
    assert untagged(run(utf8, 'LIST "Entwürfe/" "%"')) == [b'* LIST (\\HasNoChildren) "/" {18}',
                                                           "Entwürfe/Tschüss".encode()]
    utf8.close()
    rev1.close()


# ---------------------------------------------------------------- UTF8=ACCEPT

def test_utf8_append_and_charset(system):
    user = new_user(system)
    raw = connect(system.port(), user, PASSWORD)
    tag = f"t{next(_tags)}".encode()
    raw.send(tag + b" APPEND INBOX UTF8 (~{%d+}\r\n" % len(UTF8) + UTF8 + b")\r\n")
    lines = raw.until_tagged(tag)
    assert tagged(lines) == b"BAD APPEND UTF8 needs ENABLE UTF8=ACCEPT"
    ok(raw, "ENABLE UTF8=ACCEPT")
    ok(raw, "SELECT INBOX")
    tag = f"t{next(_tags)}".encode()
    raw.send(tag + b' APPEND INBOX (\\Seen) UTF8 (~{%d+}\r\n' % len(UTF8) + UTF8 + b")\r\n")
    lines = raw.until_tagged(tag)
    assert untagged(lines) == [b"* 1 EXISTS", b"* 1 RECENT"]
    assert re.fullmatch(rb"OK \[APPENDUID \d+ 1\] APPEND completed", tagged(lines))
    lines = ok(raw, "FETCH 1 (FLAGS BODY.PEEK[])")
    assert lines[0] == b"* 1 FETCH (FLAGS (\\Recent \\Seen) BODY[] {%d}\r\n" % len(UTF8)
    assert b"".join(lines[1:-1]).startswith(UTF8)
    lines = run(raw, 'SEARCH CHARSET UTF-8 SUBJECT "Grüße"')
    assert untagged(lines) == [b"* SEARCH 1"]
    assert untagged(run(raw, 'SEARCH BODY "Käsekuchen"')) == [b"* SEARCH 1"]
    assert tagged(run(raw, "SEARCH CHARSET US-ASCII ALL")) == b"BAD After ENABLE UTF8=ACCEPT the only charset is UTF-8"
    assert tagged(run(raw, "SORT (SUBJECT) US-ASCII ALL")).startswith(b"BAD After ENABLE UTF8=ACCEPT")
    assert untagged(run(raw, "SORT (SUBJECT) UTF-8 ALL")) == [b"* SORT 1"]
    raw.close()


# ---------------------------------------------------------------- MULTIAPPEND

@pytest.mark.parametrize("plus", [False, True])
def test_multiappend_stores_all_with_appenduid(system, plus):
    user = new_user(system, "01-plain.eml")
    raw = connect(system.port(), user, PASSWORD, "SELECT INBOX")
    lines = appended(raw, b"INBOX", [(b'(\\Seen) "05-Jan-2026 10:11:12 +0100" ', PLAIN),
                                      (b"(\\Flagged $Work) ", UTF8),
                                      (b"", QP)], plus)
    assert untagged(lines)[-2:] == [b"* 4 EXISTS", b"* 4 RECENT"]
    assert re.fullmatch(rb"OK \[APPENDUID \d+ 2:4\] APPEND completed", tagged(lines))
    lines = untagged(run(raw, "UID FETCH 2:4 (FLAGS INTERNALDATE)"))
    assert lines[0] == b'* 2 FETCH (UID 2 FLAGS (\\Recent \\Seen) INTERNALDATE "05-Jan-2026 09:11:12 +0000")'
    now = rb' INTERNALDATE "\d\d-\w{3}-\d{4} \d\d:\d\d:\d\d \+0000"\)'
    assert re.fullmatch(rb"\* 3 FETCH \(UID 3 FLAGS \(\\Recent \\Flagged \$Work\)" + now, lines[1])
    assert re.fullmatch(rb"\* 4 FETCH \(UID 4 FLAGS \(\\Recent\)" + now, lines[2])
    store = system.store()
    try:
        view = store.open_mailbox(user, "INBOX")
        assert [open(view.path(seq), "rb").read() for seq in (2, 3, 4)] == [PLAIN, UTF8, QP]
    finally:
        store.index.close()
    raw.close()


def test_multiappend_is_all_or_nothing(system):
    user = new_user(system, quota=len(PLAIN) + len(UTF8) + len(QP) + 100)
    raw = connect(system.port(), user, PASSWORD)
    assert tagged(appended(raw, b"INBOX", [(b"", PLAIN), (b"(\\Bogus) ", QP)])) == b"BAD \\Bogus cannot be set"
    assert tagged(appended(raw, b"INBOX", [(b"", PLAIN), (b"", b"")], plus=True)) == \
        b"NO An empty message cannot be appended"
    assert tagged(appended(raw, b"INBOX", [(b"", PLAIN), (b"", UTF8), (b"", QP), (b"", PLAIN)])) == \
        b"NO [OVERQUOTA] Quota exceeded"
    assert untagged(run(raw, "STATUS INBOX (MESSAGES UIDNEXT)")) == [b'* STATUS "INBOX" (MESSAGES 0 UIDNEXT 1)']
    assert tagged(appended(raw, b"Nowhere", [(b"", PLAIN), (b"", QP)])).startswith(b"NO [TRYCREATE]")
    assert re.fullmatch(rb"OK \[APPENDUID \d+ 1:3\] APPEND completed",
                        tagged(appended(raw, b"INBOX", [(b"", PLAIN), (b"", UTF8), (b"", QP)])))
    raw.close()
