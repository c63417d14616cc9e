"""Mail in by SMTP, delivered by qmgr, fetched by POP3: every corpus message arrives whole.

smtpd accepts each tests/corpus message for bob, qmgr delivers it into bob's INBOX, and
poplib retrieves it: the message (CRLF line ends, dots un-stuffed by poplib) ends with the
exact bytes that were sent (delivery only adds trace headers on top), and LIST's sizes are
what RETR sent. DELE + QUIT empties the maildrop. Every session ends with QUIT, so each next
login must get the maildrop at once (attempts=1): QUIT frees the lock before it answers.
Every message of the shared corpus (../shared/corpus) sent by SMTP: LIST, STAT and RETR's
"+OK n octets" give exactly the octets of the message RETR sends, dots not stuffed (the
raw stored forms, bare LF and no final line end, are checked in tests/unit/test_pop3_session.py).
"""
from __future__ import annotations

import smtplib
import time

import pytest

from store.mailstore import INBOX, MailStore
from tests.conftest import CORPUS, shared_corpus
from tests.integration.pop3d_support import RawPop, login

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


def listed_and_sent(port: int, user: str, password: str, expected: int) -> list[tuple[int, int, bytes]]:
    """(LIST size, RETR's announced size, RETR's payload with the stuffing undone) per message."""
    raw = RawPop(port)
    try:
        assert raw.command(f"USER {user}").startswith(b"+OK")
        assert raw.command(f"PASS {password}").startswith(f"+OK Logged in, {expected} messages".encode())
        assert raw.command("LIST").startswith(b"+OK")
        sizes = [int(line.split()[1]) for line in raw.multiline().split(b"\r\n") if line]
        assert raw.command("STAT") == f"+OK {expected} {sum(sizes)}".encode()
        result = []
        for number, size in enumerate(sizes, 1):
            announced = raw.command(f"RETR {number}")
            assert announced.endswith(b" octets"), announced
            body = raw.multiline()
            payload = b"".join(line[1:] if line.startswith(b".") else line
                               for line in body.splitlines(keepends=True))
            result.append((size, int(announced.split()[1]), payload))
        assert raw.command("QUIT").startswith(b"+OK")
        return result
    finally:
        raw.close()


def test_list_sizes_are_retr_octets_for_the_whole_shared_corpus(mailsystem):
    # smtpd refuses lines over 998 octets (RFC 5321 4.5.3.1.6)
    messages = [path.read_bytes() for path, features in shared_corpus() if "long-lines" not in features]
    assert len(messages) > 100 and any(b"\n." in m for m in messages)
    system = mailsystem(main={"minimal_backoff_time": "1s", "maximal_backoff_time": "2s"})
    smtp_key = system.add_service("smtpd", name="smtpd")
    pop_key = system.add_service("pop3d", name="pop3d")
    system.add_unix_service("qmgr", wakeup=60)
    system.write_config()
    system.mailctl("user", "add", "bob", "--password", "bob-pw")
    system.start()
    with smtplib.SMTP("127.0.0.1", system.port(smtp_key), timeout=30) as smtp:
        for message in messages:
            crlf = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            smtp.sendmail("alice@example.org", ["bob@example.test"], crlf if crlf.endswith(b"\r\n") else crlf + b"\r\n")
    store = MailStore(system.var / "store", system.var / "index")
    try:
        deadline = time.monotonic() + 60
        while store.mailbox("bob", INBOX) is None or len(store.open_mailbox("bob", INBOX)) < len(messages):
            assert time.monotonic() < deadline, "the corpus was not delivered in time"
            time.sleep(0.2)
    finally:
        store.index.close()
    for size, announced, payload in listed_and_sent(system.port(pop_key), "bob", "bob-pw", len(messages)):
        assert size == announced == len(payload), (size, announced, payload[:300])
