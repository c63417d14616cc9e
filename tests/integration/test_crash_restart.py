"""kill -9 of the whole process group right after acknowledgements, then a restart: every
acknowledged message is in each of its mailboxes exactly once."""
from __future__ import annotations

import re
import smtplib

import pytest

from tests.integration.delivery_support import (Inbox, delivery_system, parse, sendmail, smtpd_port,
                                                wait_queues_empty, write_aliases)

pytestmark = pytest.mark.integration

ROUNDS = 3
PER_ROUND = 15


def message_ids(messages: list[bytes]) -> list[str]:
    return sorted(parse(raw)["Message-ID"] for raw in messages)


def wait_delivered(inbox: Inbox, expected: int) -> None:
    for user in ("bob", "carol", "archive"):
        inbox.wait(user, expected, timeout=30)


def test_kill_after_acknowledgements_then_restart(mailsystem, corpus):
    system = delivery_system(mailsystem, smtpd=True, main={"always_bcc": "archive@example.test"},
                             users={"bob": (), "carol": (), "archive": ()})
    write_aliases(system, "team: bob, carol\n")
    template = (corpus / "05-mixed-attachment.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    acknowledged: list[str] = []
    for round_number in range(ROUNDS):
        system.start()
        with smtplib.SMTP("127.0.0.1", smtpd_port(system), timeout=30) as client:
            for n in range(PER_ROUND):
                message_id = f"<crash-{round_number}-{n}@example.org>"
                message = re.sub(rb"(?m)^Message-ID: .*$", f"Message-ID: {message_id}\r".encode(), template, count=1)
                refused = client.sendmail("alice@example.org", ["team@example.test"], message)
                assert refused == {}
                acknowledged.append(message_id)
        system.kill()          # the master and every worker, right after the last 250
    # and once more through sendmail into the maildrop, killed at once too
    system.start()
    sendmail(system, "-f", "alice@example.org", "team@example.test",
             message=b"Message-ID: <crash-sendmail@example.org>\nSubject: last\n\nbody\n")
    acknowledged.append("<crash-sendmail@example.org>")
    system.kill()

    system.start()
    inbox = Inbox(system)
    try:
        wait_delivered(inbox, len(acknowledged))
        # every queue file finished: nothing is left that could still deliver a second copy
        left = wait_queues_empty(system, ("maildrop", "incoming", "active", "deferred", "corrupt"))
        assert not any(left.values()), left
        for user in ("bob", "carol", "archive"):
            assert message_ids(inbox.messages(user)) == sorted(acknowledged), user
    finally:
        inbox.close()
