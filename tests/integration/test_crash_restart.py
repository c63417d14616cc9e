"""kill -9 of the whole process group right after acknowledgements, then a restart: every
acknowledged message is in each of its mailboxes exactly once.

Each message has several envelope recipients that lead to the same mailboxes more than once:
an alias with two members (team: bob, carol), a user forwarding with a kept copy (dave ->
carol), a user forwarding without one (erin -> bob), and the always_bcc archive copy."""
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


MAILBOXES = ("bob", "carol", "dave", "archive")
RECIPIENTS = ["team@example.test", "dave@example.test", "erin@example.test"]


def test_kill_after_acknowledgements_then_restart(mailsystem, corpus):
    system = delivery_system(mailsystem, smtpd=True, main={"always_bcc": "archive@example.test"},
                             users={"bob": (), "carol": (), "archive": (),
                                    "dave": ("--forward", "carol@example.test", "--keep-copy"),
                                    "erin": ("--forward", "bob")})
    write_aliases(system, "team: bob, carol\n")
    template = (corpus / "05-mixed-attachment.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    acknowledged: list[str] = []
    for round_number in range(ROUNDS):
        system.start()
        with smtplib.SMTP("127.0.0.1", smtpd_port(system), timeout=30) as client:
            for n in range(PER_ROUND):
                message_id = f"<crash-{round_number}-{n}@example.org>"
                message = re.sub(rb"(?m)^Message-ID: .*$", f"Message-ID: {message_id}\r".encode(), template, count=1)
                refused = client.sendmail("alice@example.org", RECIPIENTS, message)
                assert refused == {}
                acknowledged.append(message_id)
        system.kill()          # the master and every worker, right after the last 250
    # and once more through sendmail into the maildrop, killed at once too
    system.start()
    sendmail(system, "-f", "alice@example.org", *RECIPIENTS,
             message=b"Message-ID: <crash-sendmail@example.org>\nSubject: last\n\nbody\n")
    acknowledged.append("<crash-sendmail@example.org>")
    system.kill()

    system.start()
    inbox = Inbox(system)
    try:
        for user in MAILBOXES:
            inbox.wait(user, len(acknowledged), timeout=30)
        # every queue file finished: nothing is left that could still deliver a second copy
        left = wait_queues_empty(system, ("maildrop", "incoming", "active", "deferred", "corrupt"))
        assert not any(left.values()), left
        for user in MAILBOXES:
            assert message_ids(inbox.messages(user)) == sorted(acknowledged), user
        assert inbox.messages("erin") == []
    finally:
        inbox.close()
