"""kill -9 of the whole process group right after acknowledgements, then a restart: every
acknowledged message is in each of its mailboxes exactly once.

Each message has several envelope recipients that lead to the same mailboxes more than once:
an alias with two members (team: bob, carol), a user forwarding with a kept copy (dave ->
carol), a user forwarding without one (erin -> bob), and the always_bcc archive copy.

kill -9 of qmgr alone while a batch of files is under way, each with a `|command`, a `/file`
and a mailbox delivered and one more command still running: after the master's restart of
qmgr no command, file or mailbox got any message twice."""
from __future__ import annotations

import os
import re
import signal
import smtplib
import time

import pytest

from store.queue import Queue
from tests.integration.delivery_support import (Inbox, delivery_system, parse, sendmail, shared_dir,  # noqa: F401
                                                smtpd_port, wait_queues_empty, write_aliases)

pytestmark = pytest.mark.integration

ROUNDS = 3
PER_ROUND = 15


def message_ids_of(messages: list[bytes]) -> list[str]:
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
            assert message_ids_of(inbox.messages(user)) == sorted(acknowledged), user
        assert inbox.messages("erin") == []
    finally:
        inbox.close()


BATCH = 10
GENEROUS = 60.0               # seconds: a liveness bound, not a timing


def wait_until(predicate, timeout: float = GENEROUS) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.1)
    return predicate()


def qmgr_pid(system) -> int | None:
    for service in (system.status() or {}).get("services", []):
        if service["command"] == "qmgr" and service["workers"]:
            return service["workers"][0]
    return None


def test_kill_of_qmgr_mid_batch_repeats_no_command_file_or_mailbox_delivery(mailsystem, shared_dir):
    fast, filed, slow, pids, gate = (shared_dir / name for name in ("fast", "filed", "slow", "pids", "gate"))
    ids = "sed -n 's/^Message-ID: //p'"
    fast_command = f"{ids} >> {fast}"
    # records its process group, then waits for the gate (at most 120 s) before it takes the message
    slow_command = (f"echo $$ >> {pids}; n=0; while [ ! -e {gate} ] && [ $n -lt 1200 ]; do sleep 0.1; n=$((n+1)); "
                    f"done; {ids} >> {slow}")
    system = delivery_system(mailsystem, smtpd=True, users={"bob": ()})
    write_aliases(system, f'all: bob, "|{fast_command}", {filed}, "|{slow_command}"\n')
    system.start()
    message_ids = [f"<batch-{n}@example.org>" for n in range(BATCH)]
    with smtplib.SMTP("127.0.0.1", smtpd_port(system), timeout=30) as client:
        for message_id in message_ids:
            client.sendmail("alice@example.org", ["all@example.test"],
                            f"Message-ID: {message_id}\r\nSubject: batch\r\n\r\nbody\r\n")
    queue = Queue(str(system.var / "queue"))
    done_keys = {f"t:pipe:all:{fast_command}", f"t:file:all:{filed}"}

    def command_and_file_marked() -> bool:
        active = queue.ids("active")
        return len(active) == BATCH and all(done_keys <= set(queue.read_state(q).done) for q in active)
    inbox = Inbox(system)
    try:
        assert wait_until(command_and_file_marked), "the command and file deliveries were never all marked done"
        assert len(inbox.wait("bob", BATCH, timeout=GENEROUS)) == BATCH
        assert wait_until(lambda: pids.exists() and len(pids.read_text().split()) == BATCH)
        pid = qmgr_pid(system)
        os.kill(pid, signal.SIGKILL)                    # mid-batch: every file in active/, none finished
        for group in pids.read_text().split():          # and the commands it was waiting for
            try:
                os.killpg(int(group), signal.SIGKILL)
            except ProcessLookupError:
                pass
        gate.touch()
        assert wait_until(lambda: qmgr_pid(system) not in (None, pid)), "the master did not restart qmgr"
        left = wait_queues_empty(system, ("incoming", "active", "deferred", "corrupt"), timeout=GENEROUS)
        assert not any(left.values()), left
        expected = sorted(message_ids)
        assert sorted(fast.read_text().split()) == expected
        assert sorted(slow.read_text().split()) == expected
        assert sorted(re.findall(r"(?m)^Message-ID: (\S+)$", filed.read_text())) == expected
        assert message_ids_of(inbox.messages("bob")) == expected
    finally:
        gate.touch()
        inbox.close()
