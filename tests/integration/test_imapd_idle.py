"""imapd's IDLE through the real master (RFC 2177).

A client idling on INBOX hears, while it idles: a message delivered by another process
(the store from the test process), a flag change and an expunge made by a second IMAP
session, and mail sent by SMTP and delivered by the real qmgr; DONE ends IDLE with OK, any
other line with BAD; IDLE without a selected mailbox only waits for DONE; a session idling
past imapd_timeout is told BYE. The only time bound is the client's read timeout.
"""
from __future__ import annotations

import smtplib

import pytest

from tests.conftest import CORPUS
from tests.integration.imapd_support import ImapSystem, Raw

pytestmark = pytest.mark.integration
PASSWORD = "Idle pass 1"
WAIT = 5.0          # seconds a pushed update may take (generous; no timing is asserted)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    running = ImapSystem(tmp_path_factory.mktemp("imapd-idle"), with_qmgr=True)
    for user in ("carol", "dave", "erin"):
        running.add_user(user, PASSWORD)
    yield running
    running.stop()


def logged_in(system, user: str, select: bool = True) -> Raw:
    raw = Raw(system.port())
    assert raw.command(b"L", f'LOGIN {user} "{PASSWORD}"'.encode())[-1].startswith(b"L OK")
    if select:
        assert raw.command(b"S", b"SELECT INBOX")[-1].startswith(b"S OK")
    return raw


def start_idle(raw: Raw) -> None:
    raw.send(b"I IDLE\r\n")
    assert raw.line() == b"+ idling\r\n"


def done(raw: Raw) -> list[bytes]:
    raw.send(b"DONE\r\n")
    return raw.until_tagged(b"I")


def test_idle_hears_delivery_flags_and_expunge(system):
    system.deliver("carol", "01-plain.eml")
    idler, other = logged_in(system, "carol"), logged_in(system, "carol")
    try:
        start_idle(idler)
        system.deliver("carol", "04-alternative.eml")
        assert idler.pushed(WAIT) == b"* 2 EXISTS\r\n"
        assert idler.pushed(WAIT) == b"* 2 RECENT\r\n"     # the idler selected first: both are its recent ones
        assert other.command(b"A", b"STORE 1 +FLAGS.SILENT (\\Flagged)")[-1].startswith(b"A OK")
        assert idler.pushed(WAIT) == b"* 1 FETCH (UID 1 FLAGS (\\Recent \\Flagged))\r\n"
        assert other.command(b"B", b"STORE 1 +FLAGS.SILENT (\\Deleted)")[-1].startswith(b"B OK")
        assert idler.pushed(WAIT) == b"* 1 FETCH (UID 1 FLAGS (\\Recent \\Flagged \\Deleted))\r\n"
        assert other.command(b"C", b"EXPUNGE")[-1].startswith(b"C OK")
        assert idler.pushed(WAIT) == b"* 1 EXPUNGE\r\n"
        assert done(idler) == [b"I OK IDLE terminated\r\n"]
        assert idler.command(b"N", b"NOOP") == [b"N OK NOOP completed\r\n"]
        # a change between two IDLEs comes at the start of the next one
        system.deliver("carol", "02-utf8-8bit.eml")
        start_idle(idler)
        assert idler.pushed(WAIT) == b"* 2 EXISTS\r\n"
        assert idler.pushed(WAIT) == b"* 2 RECENT\r\n"
        assert done(idler) == [b"I OK IDLE terminated\r\n"]
    finally:
        idler.close()
        other.close()


def test_idle_hears_mail_delivered_by_qmgr(system):
    idler = logged_in(system, "dave")
    try:
        start_idle(idler)
        message = (CORPUS / "03-quoted-printable.eml").read_bytes().replace(b"\n", b"\r\n")
        with smtplib.SMTP("127.0.0.1", system.port("smtp"), timeout=10) as smtp:
            smtp.sendmail("alice@example.org", ["dave@example.test"], message)
        idler.sock.settimeout(30)            # qmgr's pickup; still no timing asserted
        assert idler.line() == b"* 1 EXISTS\r\n"
        assert idler.line() == b"* 1 RECENT\r\n"
        assert done(idler) == [b"I OK IDLE terminated\r\n"]
    finally:
        idler.close()


def test_idle_ends_with_bad_on_other_lines_and_waits_unselected(system):
    raw = logged_in(system, "erin", select=False)
    try:
        start_idle(raw)
        system.deliver("erin", "05-mixed-attachment.eml")     # nothing selected: nothing to say
        raw.send(b"DONE\r\n")
        assert raw.until_tagged(b"I") == [b"I OK IDLE terminated\r\n"]
        assert raw.command(b"S", b"SELECT INBOX")[-1].startswith(b"S OK")
        start_idle(raw)
        raw.send(b"NOOP\r\n")
        assert raw.until_tagged(b"I")[-1].startswith(b"I BAD")
        assert raw.command(b"X", b"IDLE now")[-1].startswith(b"X BAD")
        assert raw.command(b"N", b"NOOP") == [b"N OK NOOP completed\r\n"]
    finally:
        raw.close()


def test_idle_times_out_with_bye(tmp_path):
    system = ImapSystem(tmp_path / "short", main={"imapd_timeout": "2s"})
    try:
        system.add_user("frank", PASSWORD)
        raw = logged_in(system, "frank")
        start_idle(raw)
        raw.sock.settimeout(30)
        assert raw.line() == b"* BYE Disconnected for inactivity\r\n"
        assert raw.line() == b""
        raw.close()
    finally:
        system.stop()


def test_idle_is_told_bye_when_the_master_stops(tmp_path):
    system = ImapSystem(tmp_path / "stopping")
    try:
        system.add_user("gina", PASSWORD)
        raw = logged_in(system, "gina")
        start_idle(raw)
        system.ms.stop()
        raw.sock.settimeout(30)
        assert raw.line() == b"* BYE Server shutting down\r\n"
        try:
            assert raw.line() == b""
        except ConnectionResetError:
            pass                              # closed with unread input: a reset
        raw.close()
    finally:
        system.stop()
