"""Mail in by SMTP, delivered by qmgr, fetched by POP3: every corpus message arrives whole.

smtpd accepts each tests/corpus message for bob, qmgr delivers it into bob's INBOX, and
poplib retrieves it: the message (CRLF line ends, dots un-stuffed by poplib) ends with the
exact bytes that were sent (delivery only adds trace headers on top), and LIST's sizes are
what RETR sent. DELE + QUIT empties the maildrop. Every session ends with QUIT, so each next
login must get the maildrop at once (attempts=1): QUIT frees the lock before it answers.
(The real-mail corpus goes the same way in test_corpus_roundtrip.py.)
"""
from __future__ import annotations

import smtplib
import time

import pytest

from tests.conftest import CORPUS
from tests.integration.pop3d_support import login

pytestmark = pytest.mark.integration


def test_smtp_in_pop3_out(mailsystem):
    system = mailsystem(main={"minimal_backoff_time": "1s", "maximal_backoff_time": "2s"})
    smtp_key = system.add_service("smtpd", name="smtpd")
    pop_key = system.add_service("pop3d", name="pop3d")
    system.add_unix_service("qmgr", wakeup=60)
    system.write_config()
    system.mailctl("user", "add", "bob", "--password", "bob-pw")
    system.start()
    sent = [path.read_bytes().replace(b"\n", b"\r\n") for path in sorted(CORPUS.glob("*.eml"))]
    with smtplib.SMTP("127.0.0.1", system.port(smtp_key), timeout=10) as smtp:
        for message in sent:
            smtp.sendmail("alice@example.org", ["bob@example.test"], message)

    deadline = time.monotonic() + 30
    while True:
        client = login(system.port(pop_key), "bob", "bob-pw", attempts=1)
        count = client.stat()[0]
        if count == len(sent):
            break
        client.quit()
        assert time.monotonic() < deadline, f"only {count} of {len(sent)} messages delivered"
        time.sleep(0.2)
    try:
        received = [b"\r\n".join(client.retr(n)[1]) + b"\r\n" for n in range(1, count + 1)]
        for message in sent:
            matches = [got for got in received if got.endswith(message)]
            assert len(matches) == 1, (message[:300], [got[:600] for got in received])
        for n in range(1, count + 1):
            client.dele(n)
        farewell = client.quit()
        assert farewell.startswith(f"+OK Logging out, {count} messages deleted, 0 left".encode()), farewell
    finally:
        client.close()
    check = login(system.port(pop_key), "bob", "bob-pw", attempts=1)
    left = check.stat()
    check.quit()
    assert left == (0, 0), f"{left} after deleting all; pop.log: {system.log('pop')[-2000:]}"
