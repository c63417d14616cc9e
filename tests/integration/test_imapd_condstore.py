"""CONDSTORE and QRESYNC (RFC 7162) through the real master (workers/imapd/condstore.py and
its hooks in SELECT, FETCH, STORE, SEARCH, STATUS, EXPUNGE and the mailbox updates).

Announced capabilities and ENABLE; HIGHESTMODSEQ at SELECT (CONDSTORE parameter, ENABLE, or
at the first CONDSTORE-enabling command with a mailbox selected) equal to the store's; FETCH
MODSEQ and CHANGEDSINCE against the store's records; STORE UNCHANGEDSINCE succeeding,
failing with MODIFIED (also for a STORE that would change nothing), .SILENT telling MODSEQ;
SEARCH MODSEQ with its result modseq (SEARCH and ESEARCH MIN/MAX/ALL); STATUS HIGHESTMODSEQ;
unsolicited FETCH with MODSEQ after another session's change; QRESYNC: SELECT with and
without known UIDs (VANISHED (EARLIER) and FETCH of the changed), a stale UIDVALIDITY, OK
[CLOSED], VANISHED instead of EXPUNGE, EXPUNGE's HIGHESTMODSEQ, UID FETCH (CHANGEDSINCE n
VANISHED); malformed parameters are BAD.
"""
from __future__ import annotations

import itertools
import re

import pytest

from store.mailstore import INBOX
from tests.integration.imapd_support import ImapSystem, connect, ok, run

pytestmark = pytest.mark.integration
PASSWORD = "Condstore pass 1"
MESSAGES = ("01-plain.eml", "02-utf8-8bit.eml", "03-quoted-printable.eml", "04-alternative.eml",
            "05-mixed-attachment.eml")
_names = itertools.count(1)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    running = ImapSystem(tmp_path_factory.mktemp("imapd-condstore"))
    yield running
    running.stop()


def new_user(system) -> str:
    name = f"cs{next(_names)}"
    system.add_user(name, PASSWORD)
    system.deliver(name, *MESSAGES)
    return name


def status_of(lines: list[bytes]) -> bytes:
    return lines[-1].split(b" ", 2)[1]


def store_records(system, user: str, mailbox: str = INBOX):
    """(uid -> (modseq, flags), highestmodseq) as the store has them."""
    store = system.store()
    try:
        view = store.open_mailbox(user, mailbox).view
        records = {view.record(s).uid: (view.record(s).modseq, view.record(s).flags)
                   for s in range(1, len(view) + 1)}
        return records, store.mailbox(user, mailbox).highestmodseq
    finally:
        store.index.close()


def store_flags(system, user: str, uids, mode: str, flags, mailbox: str = INBOX) -> None:
    """Another writer (as qmgr or a second client would) changes flags."""
    store = system.store()
    try:
        store.set_flags(user, mailbox, [(u, u) for u in uids], mode, flags)
    finally:
        store.index.close()


def expunge(system, user: str, uids, mailbox: str = INBOX) -> None:
    store = system.store()
    try:
        store.expunge(user, mailbox, [(u, u) for u in uids], deleted_only=False)
    finally:
        store.index.close()


def fetches(lines: list[bytes]) -> dict[int, bytes]:
    return {int(m.group(1)): m.group(2) for m in (re.match(rb"\* (\d+) FETCH \((.*)\)\r\n", line) for line in lines) if m}


def modseq_of(item: bytes) -> int:
    return int(re.search(rb"MODSEQ \((\d+)\)", item).group(1))


def highest(lines: list[bytes]) -> int | None:
    found = [int(m.group(1)) for m in (re.match(rb"\* OK \[HIGHESTMODSEQ (\d+)\]", line) for line in lines) if m]
    assert len(found) <= 1, lines
    return found[0] if found else None


# ---------------------------------------------------------------- capabilities, ENABLE, SELECT

def test_announced_and_enabled(system):
    user = new_user(system)
    raw = connect(system.port(), user, PASSWORD)
    caps = ok(raw, "CAPABILITY")[0].split()
    assert b"CONDSTORE" in caps and b"QRESYNC" in caps
    assert ok(raw, "ENABLE CONDSTORE")[0] == b"* ENABLED CONDSTORE\r\n"
    assert ok(raw, "ENABLE CONDSTORE")[0] == b"* ENABLED\r\n"
    assert ok(raw, "ENABLE QRESYNC")[0] == b"* ENABLED QRESYNC\r\n"
    raw.close()


def test_highestmodseq_at_select(system):
    user = new_user(system)
    _, top = store_records(system, user)
    raw = connect(system.port(), user, PASSWORD)
    assert highest(ok(raw, "SELECT INBOX")) is None          # CONDSTORE not used yet
    assert highest(ok(raw, "SELECT INBOX (CONDSTORE)")) == top
    assert highest(ok(raw, "EXAMINE INBOX")) == top         # from now on in every SELECT
    raw.close()
    raw = connect(system.port(), user, PASSWORD, "ENABLE CONDSTORE")
    assert highest(ok(raw, "EXAMINE INBOX")) == top
    raw.close()


def test_first_enabling_command_reports_highestmodseq(system):
    user = new_user(system)
    records, top = store_records(system, user)
    raw = connect(system.port(), user, PASSWORD, "SELECT INBOX")
    lines = ok(raw, "FETCH 1 (MODSEQ)")
    assert highest(lines) == top
    first_uid = min(records)
    assert fetches(lines)[1] == b"MODSEQ (%d)" % records[first_uid][0]
    assert highest(ok(raw, "FETCH 1 (MODSEQ)")) is None     # only the first one
    raw.close()


def test_select_closes_the_previous_mailbox(system):
    user = new_user(system)
    raw = connect(system.port(), user, PASSWORD, "SELECT INBOX")
    lines = ok(raw, "EXAMINE INBOX")
    assert lines[0].startswith(b"* OK [CLOSED]")            # before the new mailbox's responses
    assert not any(b"[CLOSED]" in line for line in ok(raw, "UNSELECT"))
    assert not any(b"[CLOSED]" in line for line in ok(raw, "SELECT INBOX"))
    raw.close()


def test_status_highestmodseq(system):
    user = new_user(system)
    _, top = store_records(system, user)
    raw = connect(system.port(), user, PASSWORD)
    assert ok(raw, "STATUS INBOX (MESSAGES HIGHESTMODSEQ)")[0] == \
        b'* STATUS "INBOX" (MESSAGES %d HIGHESTMODSEQ %d)\r\n' % (len(MESSAGES), top)
    raw.close()


# ---------------------------------------------------------------- FETCH

def test_fetch_modseq_and_changedsince(system):
    user = new_user(system)
    raw = connect(system.port(), user, PASSWORD, "ENABLE CONDSTORE", "SELECT INBOX")
    records, top = store_records(system, user)
    uids = sorted(records)
    answer = fetches(ok(raw, "UID FETCH 1:* (MODSEQ)"))
    assert {seq: modseq_of(item) for seq, item in answer.items()} == \
        {seq: records[uid][0] for seq, uid in enumerate(uids, 1)}
    store_flags(system, user, [uids[1], uids[3]], "+", ["$Label1"])
    changed = fetches(ok(raw, f"FETCH 1:* (FLAGS) (CHANGEDSINCE {top})"))
    assert sorted(changed) == [2, 4]
    after, _ = store_records(system, user)
    for seq in (2, 4):
        assert b"$Label1" in changed[seq] and modseq_of(changed[seq]) == after[uids[seq - 1]][0]
    assert fetches(ok(raw, f"FETCH 1:* (FLAGS) (CHANGEDSINCE {after[uids[3]][0]})")) == {}
    raw.close()


def test_fetch_that_sets_seen_tells_modseq(system):
    user = new_user(system)
    raw = connect(system.port(), user, PASSWORD, "ENABLE CONDSTORE", "SELECT INBOX")
    answer = fetches(ok(raw, "FETCH 1 (BODY[]<0.4>)"))[1]
    records, _ = store_records(system, user)
    assert b"\\Seen" in answer and modseq_of(answer) == records[min(records)][0]
    raw.close()


# ---------------------------------------------------------------- STORE

def test_store_unchangedsince(system):
    user = new_user(system)
    raw = connect(system.port(), user, PASSWORD, "SELECT INBOX")
    records, top = store_records(system, user)
    uids = sorted(records)
    old = records[uids[0]][0]
    lines = ok(raw, f"STORE 1 (UNCHANGEDSINCE {old}) +FLAGS (\\Flagged)")
    assert highest(lines) is not None                       # the first CONDSTORE-enabling command
    now, _ = store_records(system, user)
    assert "\\Flagged" in now[uids[0]][1]
    assert modseq_of(fetches(lines)[1]) == now[uids[0]][0] > old
    assert b"MODIFIED" not in lines[-1]
    # modified since the client's modseq: left alone, MODIFIED names it
    lines = ok(raw, f"STORE 1:2 (UNCHANGEDSINCE {top}) +FLAGS (\\Answered)")
    assert b"[MODIFIED 1]" in lines[-1]
    now, _ = store_records(system, user)
    assert "\\Answered" not in now[uids[0]][1] and "\\Answered" in now[uids[1]][1]
    assert sorted(fetches(lines)) == [2]
    # UID STORE names UIDs; a STORE that would change nothing still fails
    lines = ok(raw, f"UID STORE {uids[2]} (UNCHANGEDSINCE 0) -FLAGS (\\Deleted)")
    assert f"[MODIFIED {uids[2]}]".encode() in lines[-1]
    raw.close()


def test_store_silent_tells_modseq(system):
    user = new_user(system)
    raw = connect(system.port(), user, PASSWORD, "ENABLE CONDSTORE", "SELECT INBOX")
    records, _ = store_records(system, user)
    uids = sorted(records)
    lines = ok(raw, "UID STORE 1:* +FLAGS.SILENT (\\Seen)")
    now, _ = store_records(system, user)
    answer = fetches(lines)
    assert sorted(answer) == list(range(1, len(uids) + 1))
    for seq, item in answer.items():
        assert item == b"UID %d MODSEQ (%d)" % (uids[seq - 1], now[uids[seq - 1]][0])
    assert fetches(ok(raw, "STORE 1:* +FLAGS.SILENT (\\Seen)")) == {}      # nothing changed
    raw.close()


# ---------------------------------------------------------------- SEARCH

def test_search_modseq(system):
    user = new_user(system)
    raw = connect(system.port(), user, PASSWORD, "SELECT INBOX")
    records, top = store_records(system, user)
    uids = sorted(records)
    ok(raw, "STORE 4 +FLAGS (\\Seen)")
    ok(raw, "STORE 2 +FLAGS (\\Seen)")
    now, _ = store_records(system, user)
    lines = ok(raw, f"SEARCH MODSEQ {top + 1}")
    assert highest(lines) is not None
    assert b"* SEARCH 2 4 (MODSEQ %d)\r\n" % now[uids[1]][0] in lines
    assert b"* SEARCH\r\n" in ok(raw, f"SEARCH MODSEQ {now[uids[1]][0] + 1}")
    lines = ok(raw, f'UID SEARCH RETURN (MIN) MODSEQ "/flags/\\\\seen" all {top + 1}')
    assert lines[0].endswith(b"UID MIN %d MODSEQ %d\r\n" % (uids[1], now[uids[1]][0]))
    lines = ok(raw, f"SEARCH RETURN (MAX) 1:3 MODSEQ {top + 1}")
    assert lines[0].endswith(b"MAX 2 MODSEQ %d\r\n" % now[uids[1]][0])
    lines = ok(raw, f"SEARCH RETURN (ALL) MODSEQ {top + 1}")
    assert lines[0].endswith(b"ALL 2,4 MODSEQ %d\r\n" % now[uids[1]][0])
    assert status_of(run(raw, "SEARCH MODSEQ x")) == b"BAD"
    assert status_of(run(raw, 'SEARCH MODSEQ "/flags/\\\\seen" some 1')) == b"BAD"
    raw.close()


# ---------------------------------------------------------------- updates

def test_unsolicited_fetch_carries_modseq(system):
    user = new_user(system)
    raw = connect(system.port(), user, PASSWORD, "ENABLE CONDSTORE", "SELECT INBOX")
    records, _ = store_records(system, user)
    uids = sorted(records)
    store_flags(system, user, [uids[2]], "+", ["\\Flagged"])
    now, _ = store_records(system, user)
    lines = ok(raw, "NOOP")
    assert b"* 3 FETCH (UID %d FLAGS (\\Recent \\Flagged) MODSEQ (%d))\r\n" % (uids[2], now[uids[2]][0]) in lines
    raw.close()


def test_expunge_with_qresync_is_vanished(system):
    user = new_user(system)
    raw = connect(system.port(), user, PASSWORD, "ENABLE QRESYNC", "SELECT INBOX")
    records, _ = store_records(system, user)
    uids = sorted(records)
    ok(raw, "STORE 2,4 +FLAGS.SILENT (\\Deleted)")
    lines = ok(raw, "EXPUNGE")
    _, top = store_records(system, user)
    assert b"* VANISHED %d,%d\r\n" % (uids[1], uids[3]) in lines
    assert not any(b"EXPUNGE\r\n" in line and line.startswith(b"* ") for line in lines)
    assert b"[HIGHESTMODSEQ %d]" % top in lines[-1]
    expunge(system, user, [uids[0]])                        # another session's expunge
    assert b"* VANISHED %d\r\n" % uids[0] in ok(raw, "NOOP")
    raw.close()


# ---------------------------------------------------------------- QRESYNC

def test_qresync_select(system):
    user = new_user(system)
    store = system.store()
    try:
        validity = store.mailbox(user, INBOX).uidvalidity
    finally:
        store.index.close()
    records, top = store_records(system, user)
    uids = sorted(records)
    expunge(system, user, [uids[1], uids[3]])
    store_flags(system, user, [uids[2]], "+", ["\\Answered"])
    now, now_top = store_records(system, user)
    raw = connect(system.port(), user, PASSWORD, "ENABLE QRESYNC")
    lines = ok(raw, f"SELECT INBOX (QRESYNC ({validity} {top}))")
    assert highest(lines) == now_top
    assert b"* VANISHED (EARLIER) %d,%d\r\n" % (uids[1], uids[3]) in lines
    assert fetches(lines) == {2: b"UID %d FLAGS (\\Recent \\Answered) MODSEQ (%d)" % (uids[2], now[uids[2]][0])}
    vanished = lines.index(b"* VANISHED (EARLIER) %d,%d\r\n" % (uids[1], uids[3]))
    assert lines[vanished + 1].startswith(b"* 2 FETCH")
    # known UIDs limit both; sequence match data is accepted
    lines = ok(raw, f"SELECT INBOX (QRESYNC ({validity} {top} {uids[0]}:{uids[1]} (1 {uids[0]})))")
    assert lines[0].startswith(b"* OK [CLOSED]")
    assert b"* VANISHED (EARLIER) %d\r\n" % uids[1] in lines and fetches(lines) == {}
    # a UIDVALIDITY that is no longer valid: a plain CONDSTORE select
    lines = ok(raw, f"SELECT INBOX (QRESYNC ({validity + 1} {top}))")
    assert highest(lines) == now_top
    assert not any(b"VANISHED" in line for line in lines) and fetches(lines) == {}
    raw.close()


def test_uid_fetch_vanished(system):
    user = new_user(system)
    records, top = store_records(system, user)
    uids = sorted(records)
    raw = connect(system.port(), user, PASSWORD, "ENABLE QRESYNC", "SELECT INBOX")
    store_flags(system, user, [uids[4]], "+", ["\\Flagged"])
    expunge(system, user, [uids[0]])
    ok(raw, "NOOP")
    now, _ = store_records(system, user)
    lines = ok(raw, f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {top} VANISHED)")
    assert lines[0] == b"* VANISHED (EARLIER) %d\r\n" % uids[0]
    assert fetches(lines) == {4: b"UID %d FLAGS (\\Recent \\Flagged) MODSEQ (%d)" % (uids[4], now[uids[4]][0])}
    lines = ok(raw, f"UID FETCH {uids[2]}:* (FLAGS) (CHANGEDSINCE {top} VANISHED)")
    assert not any(b"VANISHED" in line for line in lines)
    raw.close()


def test_malformed_parameters(system):
    user = new_user(system)
    raw = connect(system.port(), user, PASSWORD)
    assert status_of(run(raw, "SELECT INBOX (QRESYNC (1 1))")) == b"BAD"   # not enabled
    assert status_of(run(raw, "SELECT INBOX (FOO)")) == b"BAD"
    ok(raw, "ENABLE QRESYNC")
    for bad in ("SELECT INBOX (QRESYNC (0 1))", "SELECT INBOX (QRESYNC (1))", "SELECT INBOX (QRESYNC (1 x))",
                "SELECT INBOX (QRESYNC (1 1 1:x))", "SELECT INBOX (QRESYNC (1 1 1:2 (1)))", "SELECT INBOX ()"):
        assert status_of(run(raw, bad)) == b"BAD", bad
    ok(raw, "SELECT INBOX")
    for bad in ("FETCH 1 (FLAGS) (CHANGEDSINCE x)", "FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)",
                "UID FETCH 1 (FLAGS) (VANISHED)", "FETCH 1 (FLAGS) (FOO 1)", "FETCH 1 (FLAGS) ()",
                "STORE 1 (UNCHANGEDSINCE) +FLAGS (\\Seen)", "STORE 1 (UNCHANGEDSINCE -1) +FLAGS (\\Seen)",
                "STORE 1 (FOO 1) +FLAGS (\\Seen)"):
        assert status_of(run(raw, bad)) == b"BAD", bad
    raw.close()
