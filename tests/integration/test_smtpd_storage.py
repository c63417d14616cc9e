"""smtpd and storage through the real master: durable acceptance and the disk guard.

250 after DATA means the queue file is in queue/incoming (fsynced there by store.fsio);
with free space below disk_min_free the master raises run/lowspace and smtpd answers
MAIL FROM with 452 4.3.1 until it is lowered again.
"""
from __future__ import annotations

import smtplib
import time

import pytest

from tests.integration.smtpd_support import client, queued, smtp_system

pytestmark = pytest.mark.integration


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def test_every_250_is_a_queue_file(mailsystem, corpus):
    system, port = smtp_system(mailsystem, {"luser_relay": "catchall@elsewhere.example"}, tls=False)
    ids = []
    with client(port) as smtp:
        smtp.ehlo("client.example")
        for path in sorted(corpus.glob("*.eml")):
            smtp.mail("alice@remote.example")
            smtp.rcpt("bob@example.test")
            code, text = smtp.data(path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
            assert code == 250
            ids.append(text.decode().rsplit(" ", 1)[1])
    assert sorted(item.queue_id for item in queued(system)) == sorted(ids)
    for queue_id in ids:
        system.wait_for_log("smtp", f"{queue_id}: from=<alice@remote.example>")


def test_low_disk_gives_452_at_mail_from(mailsystem):
    system, port = smtp_system(mailsystem, {"luser_relay": "catchall@elsewhere.example", "disk_min_free": "1000000G"}, tls=False)
    flag = system.var / "run" / "lowspace"
    wait_for(flag.exists)
    with client(port) as smtp:
        smtp.ehlo("client.example")
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            smtp.sendmail("alice@remote.example", ["bob@example.test"], b"Subject: x\r\n\r\ny\r\n")
        assert refused.value.smtp_code == 452
        assert refused.value.smtp_error == b"4.3.1 Insufficient system storage"
    assert queued(system) == []


def test_kill_right_after_250_loses_nothing(mailsystem):
    """250 comes after the rename into incoming/: a SIGKILL of everything right after it keeps the file."""
    system, port = smtp_system(mailsystem, {"luser_relay": "catchall@elsewhere.example"}, tls=False)
    ids = []
    with client(port) as smtp:
        smtp.ehlo("client.example")
        for n in range(5):
            smtp.mail("alice@remote.example")
            smtp.rcpt("bob@example.test")
            code, text = smtp.data(f"Subject: {n}\r\n\r\nbody {n}\r\n".encode())
            assert code == 250
            ids.append(text.decode().rsplit(" ", 1)[1])
        system.kill()
    assert sorted(item.queue_id for item in queued(system)) == sorted(ids)
