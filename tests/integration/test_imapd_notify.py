"""imapd's NOTIFY (RFC 5465) through the real master.

A session that has sent NOTIFY SET hears, without sending a command: STATUS of other
mailboxes when mail is delivered there (store delivery from the test process) or another
session changes flags; EXISTS and the requested FETCH items for the selected mailbox under
SELECTED; LIST responses when another session creates, renames, deletes and subscribes
mailboxes. NOTIFY SET STATUS sends the initial STATUS; NOTIFY NONE stops the pushes; bad
event groups are BAD, unsupported events NO [BADEVENT]; IDLE hears what NOTIFY asked for.
The only time bound is the client's read timeout.
"""
from __future__ import annotations

import pytest

from tests.integration.imapd_support import ImapSystem, Raw

pytestmark = pytest.mark.integration
PASSWORD = "Notify pass 1"
WAIT = 10.0         # seconds a pushed update may take (generous; no timing is asserted)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    running = ImapSystem(tmp_path_factory.mktemp("imapd-notify"))
    for user in ("nina", "omar", "pia", "quinn"):
        running.add_user(user, PASSWORD)
    yield running
    running.stop()


def logged_in(system, user: str) -> Raw:
    raw = Raw(system.port())
    assert raw.command(b"L", f'LOGIN {user} "{PASSWORD}"'.encode())[-1].startswith(b"L OK")
    return raw


def test_notify_is_announced_and_checks_its_arguments(system):
    raw = logged_in(system, "nina")
    try:
        assert b" NOTIFY" in raw.command(b"C", b"CAPABILITY")[0]
        for bad in (b"NOTIFY", b"NOTIFY SET", b"NOTIFY SET (personal)", b"NOTIFY SET (bogus (MessageNew))",
                    b"NOTIFY SET (personal (MessageNew))", b"NOTIFY SET (personal (FlagChange))",
                    b"NOTIFY SET (selected (MailboxName))",
                    b"NOTIFY SET (personal (MessageNew (UID) MessageExpunge))",
                    b"NOTIFY SET (selected (MessageNew MessageExpunge)) (selected-delayed NONE)"):
            assert raw.command(b"B", bad)[-1].startswith(b"B BAD"), bad
        for refused in (b"NOTIFY SET (personal (MailboxMetadataChange))",
                        b"NOTIFY SET (selected (MessageNew MessageExpunge FlagChange AnnotationChange))"):
            assert raw.command(b"N", refused)[-1].startswith(b"N NO [BADEVENT ("), refused
        assert raw.command(b"A", b"NOTIFY SET (selected-delayed (MessageNew (UID FLAGS) MessageExpunge)) "
                                 b"(subtree (INBOX Nowhere user/omar) (MailboxName SubscriptionChange))") \
            == [b"A OK NOTIFY completed\r\n"]
        assert raw.command(b"Z", b"NOTIFY NONE") == [b"Z OK NOTIFY completed\r\n"]
    finally:
        raw.close()


def test_status_of_other_mailboxes_is_pushed(system):
    system.deliver("omar", "01-plain.eml")
    watcher, other = logged_in(system, "omar"), logged_in(system, "omar")
    try:
        assert other.command(b"C", b"CREATE Lists")[-1].startswith(b"C OK")
        lines = watcher.command(b"N", b"NOTIFY SET STATUS (inboxes (MessageNew MessageExpunge FlagChange)) "
                                      b"(mailboxes Lists (MessageNew MessageExpunge))")
        validity = int(lines[0].split(b"UIDVALIDITY ")[1].split()[0])
        assert lines[0] == b'* STATUS "INBOX" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d HIGHESTMODSEQ %s' % (
            validity, lines[0].split(b"HIGHESTMODSEQ ")[1])
        assert lines[1].startswith(b'* STATUS "Lists" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY ')
        assert lines[2] == b"N OK NOTIFY completed\r\n"
        system.deliver("omar", "04-alternative.eml")
        assert watcher.pushed(WAIT).startswith(b'* STATUS "INBOX" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY %d ' % validity)
        system.deliver("omar", "02-utf8-8bit.eml", mailbox="Lists")
        assert watcher.pushed(WAIT).startswith(b'* STATUS "Lists" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY ')
        assert other.command(b"S", b"SELECT INBOX")[-1].startswith(b"S OK")
        assert other.command(b"F", b"STORE 1 +FLAGS.SILENT (\\Flagged)")[-1].startswith(b"F OK")
        line = watcher.pushed(WAIT)          # FlagChange: the same STATUS, HIGHESTMODSEQ moved on
        assert line.startswith(b'* STATUS "INBOX" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY %d HIGHESTMODSEQ ' % validity)
        assert watcher.command(b"X", b"NOTIFY NONE") == [b"X OK NOTIFY completed\r\n"]
        system.deliver("omar", "03-quoted-printable.eml")
        assert watcher.command(b"Y", b"NOOP") == [b"Y OK NOOP completed\r\n"]   # nothing was pushed
    finally:
        watcher.close()
        other.close()


def test_selected_mailbox_gets_exists_and_fetch_items(system):
    system.deliver("pia", "01-plain.eml")
    raw = logged_in(system, "pia")
    try:
        assert raw.command(b"S", b"SELECT INBOX")[-1].startswith(b"S OK")
        assert raw.command(b"N", b"NOTIFY SET (selected (MessageNew (UID RFC822.SIZE) MessageExpunge)) "
                                 b"(personal NONE)")[-1] == b"N OK NOTIFY completed\r\n"
        system.deliver("pia", "04-alternative.eml")
        assert raw.pushed(WAIT) == b"* 2 EXISTS\r\n"
        assert raw.pushed(WAIT) == b"* 2 RECENT\r\n"
        line = raw.pushed(WAIT)
        assert line.startswith(b"* 2 FETCH (UID 2 RFC822.SIZE ") and line.endswith(b")\r\n")
        # IDLE with NOTIFY hears the same
        raw.send(b"I IDLE\r\n")
        assert raw.line() == b"+ idling\r\n"
        system.deliver("pia", "02-utf8-8bit.eml")
        assert raw.pushed(WAIT) == b"* 3 EXISTS\r\n"
        assert raw.pushed(WAIT) == b"* 3 RECENT\r\n"
        assert raw.pushed(WAIT).startswith(b"* 3 FETCH (UID 3 RFC822.SIZE ")
        raw.send(b"DONE\r\n")
        assert raw.until_tagged(b"I") == [b"I OK IDLE terminated\r\n"]
        assert raw.command(b"F", b"FETCH 3 FLAGS") == [b"* 3 FETCH (FLAGS (\\Recent))\r\n",
                                                      b"F OK FETCH completed\r\n"]   # not \Seen
    finally:
        raw.close()


def test_mailbox_names_and_subscriptions_are_pushed(system):
    watcher, other = logged_in(system, "quinn"), logged_in(system, "quinn")
    try:
        assert watcher.command(b"N", b"NOTIFY SET (personal (MailboxName SubscriptionChange))")[-1] \
            == b"N OK NOTIFY completed\r\n"
        assert other.command(b"C", b"CREATE Projects")[-1].startswith(b"C OK")
        assert watcher.pushed(WAIT) == b'* LIST () "/" "Projects"\r\n'
        assert other.command(b"R", b"RENAME Projects Done")[-1].startswith(b"R OK")
        assert watcher.pushed(WAIT) == b'* LIST () "/" "Done" ("OLDNAME" ("Projects"))\r\n'
        assert other.command(b"U", b"SUBSCRIBE Done")[-1].startswith(b"U OK")
        assert watcher.pushed(WAIT) == b'* LIST (\\Subscribed) "/" "Done"\r\n'
        assert other.command(b"D", b"DELETE Done")[-1].startswith(b"D OK")
        assert watcher.pushed(WAIT) == b'* LIST (\\NonExistent) "/" "Done"\r\n'
        assert watcher.command(b"Y", b"NOOP") == [b"Y OK NOOP completed\r\n"]
    finally:
        watcher.close()
        other.close()
