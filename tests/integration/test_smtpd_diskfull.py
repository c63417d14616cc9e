"""A real full disk in the middle of SMTP DATA: 452 4.3.1, nothing half-written, mail goes on.

The queue lives on a small tmpfs (root only: mounting needs it; otherwise the test is
skipped and tests/unit/store/test_queue.py covers the same path with an injected ENOSPC). A
ballast file leaves less free space than the big message needs. `disk_min_free = 0`, so the
master's low-space flag never answers first at MAIL FROM: the write itself fails with
ENOSPC, in the spool in queue/tmp/ once the message passes 1 MiB (store/queue.py).
"""
from __future__ import annotations

import email.policy
import os
import smtplib
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest

from master.diskwatch import free_bytes
from tests.integration.delivery_support import delivery_system, inboxes, parse, smtpd_port  # noqa: F401

pytestmark = pytest.mark.integration

FS_SIZE = 8 * 1024 * 1024
LEFT_FREE = 512 * 1024                      # what the ballast leaves: less than the big message
SENDER, RCPT = "alice@example.org", "bob@example.test"


@pytest.fixture
def tmpfs_system(tmp_path, mailsystem):
    """A master (smtpd + qmgr, user bob) whose queue_directory is on its own 8 MB tmpfs."""
    mount = tmp_path / "queue-fs"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs", str(mount)],
                             capture_output=True) if os.geteuid() == 0 else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("needs root to mount a small tmpfs for the queue (unit tests inject ENOSPC instead)")
    try:
        system = delivery_system(mailsystem, main={"queue_directory": str(mount / "queue"), "disk_min_free": "0"},
                                 smtpd=True, users={"bob": ()})
        try:
            system.start()
            yield system, mount
        finally:
            system.stop()
            system.kill()                   # nothing may keep the filesystem busy
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def fill_up(mount: Path, leave: int) -> Path:
    ballast = mount / "ballast"
    ballast.write_bytes(b"\0" * (free_bytes(str(mount)) - leave))
    return ballast


def big_message(corpus: Path, size: int) -> bytes:
    """A corpus text with an attachment: `size` octets in all, under message_size_limit."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, RCPT, "Scanned archive"
    msg.set_content((corpus / "01-plain.eml").read_text().split("\n\n", 1)[1])
    msg.add_attachment(bytes(range(256)) * (size * 3 // 4 // 256), maintype="application",
                       subtype="octet-stream", filename="archive.bin")
    return msg.as_bytes(policy=email.policy.SMTP)           # CRLF: sent and stored as is


def leftovers(queue: Path) -> dict[str, list[str]]:
    """Every name (temp files included) in the folders a message passes while it is received."""
    return {name: os.listdir(queue / name) for name in ("tmp", "incoming", "maildrop")}


def wait_delivered(inbox, count: int) -> list[bytes]:
    found = inbox.wait("bob", count)
    assert len(found) == count
    return found


def test_full_disk_during_data_gives_452_and_leaves_nothing(tmpfs_system, inboxes, corpus):
    system, mount = tmpfs_system
    queue = mount / "queue"
    inbox = inboxes(system)
    big = big_message(corpus, 3 * LEFT_FREE)
    assert len(big) < 10240000                                   # message_size_limit: not a 552 case
    ballast = fill_up(mount, LEFT_FREE)

    with smtplib.SMTP("127.0.0.1", smtpd_port(system), timeout=30) as smtp:
        smtp.ehlo("client.example.org")
        assert smtp.has_extn("size")                             # sendmail() declares SIZE=
        small = (corpus / "01-plain.eml").read_bytes()
        assert smtp.sendmail(SENDER, [RCPT], small) == {}        # fits: 250
        assert b"Friday's planning meeting" in wait_delivered(inbox, 1)[0]
        assert leftovers(queue) == {"tmp": [], "incoming": [], "maildrop": []}
        free_before = free_bytes(str(mount))

        # SIZE= is only compared with message_size_limit, so MAIL FROM gets 250 and DATA
        # meets the full disk: 452 after the end of the message (smtplib then sends RSET).
        with pytest.raises(smtplib.SMTPDataError) as failed:
            smtp.sendmail(SENDER, [RCPT], big)
        assert failed.value.smtp_code == 452
        assert failed.value.smtp_error == b"4.3.1 Insufficient system storage"
        assert leftovers(queue) == {"tmp": [], "incoming": [], "maildrop": []}
        assert free_bytes(str(mount)) == free_before            # the spool's blocks are given back
        assert not (system.var / "run" / "lowspace").exists()
        system.wait_for_log("smtp", "cannot spool a message: cannot spool message: No space left on device")

        assert smtp.rset()[0] == 250 and smtp.noop()[0] == 250   # the session goes on
        ballast.unlink()
        assert smtp.sendmail(SENDER, [RCPT], big) == {}          # room again: accepted
    delivered = wait_delivered(inbox, 2)[1]
    assert parse(delivered)["Subject"] == "Scanned archive"
    assert delivered.endswith(big)                               # whole, not cut where the disk was full
