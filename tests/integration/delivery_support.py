"""Helpers for the delivery tests (test_delivery_*.py, test_sendmail.py, test_crash_restart.py).

delivery_system(mailsystem, main=..., smtpd=False, users=...) configures a master with qmgr
(and an smtpd when asked), fast retries, the given users (name -> extra `mailctl user add`
options) and returns it unstarted (call .start()); smtpd_port(system) is its SMTP port.
write_aliases(system, text) writes the aliases file and runs newaliases.
Inbox(system) reads users' INBOX through store.mailstore (one LMDB environment per test
process): .messages(user) -> list of bytes, .wait(user, count) waits (bounded) until user has
count messages and returns them; parse(raw) -> email.message.EmailMessage. The `inboxes`
fixture (import it into the test module) makes Inbox objects and closes them after the test.
sendmail(system, *args, message=bytes) runs the real sendmail command.
The `shared_dir` fixture (import it too) is a folder that `|command` and `/file` deliveries
can write to when the tests run as root (they run as mail_owner then; tmp_path is 0700).
queue_files(system, queue) lists a queue folder; wait_queues_empty(system) waits for qmgr to finish.
"""
from __future__ import annotations

import email
import email.policy
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from store.mailstore import INBOX, MailStore

FAST_RETRIES = {"minimal_backoff_time": "1s", "maximal_backoff_time": "2s"}
SMTPD_KEY = "smtpd"


def delivery_system(mailsystem, main: dict | None = None, smtpd: bool = False,
                    users: dict[str, tuple[str, ...]] | None = None):
    system = mailsystem(main={**FAST_RETRIES, **(main or {})})
    if smtpd:
        system.add_service("smtpd", name=SMTPD_KEY)
    system.add_unix_service("qmgr", wakeup=60)
    system.write_config()
    for name, options in (users or {}).items():
        system.mailctl("user", "add", name, "--password", f"{name}-pw", *options)
    return system


def smtpd_port(system) -> int:
    return system.port(SMTPD_KEY)


def write_aliases(system, text: str) -> None:
    (system.etc / "aliases").write_text(text)
    system.tool("newaliases")


def sendmail(system, *args: str, message: bytes, check: bool = True):
    return system.tool("sendmail", *args, input=message, check=check)


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


class Inbox:
    def __init__(self, system):
        self.store = MailStore(str(system.var / "store"), str(system.var / "index"))

    def messages(self, user: str) -> list[bytes]:
        if self.store.mailbox(user, INBOX) is None:
            return []
        view = self.store.open_mailbox(user, INBOX)
        found = []
        for seq in range(1, len(view) + 1):
            with view.open(seq) as f:
                found.append(f.read())
        return found

    def wait(self, user: str, count: int, timeout: float = 15.0) -> list[bytes]:
        """Wait until user has at least count messages; returns them all (check the count)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(user)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def close(self) -> None:
        self.store.index.close()


@pytest.fixture
def shared_dir():
    path = Path(tempfile.mkdtemp(prefix="mailhouse-qmgr-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def inboxes():
    opened: list[Inbox] = []

    def make(system) -> Inbox:
        opened.append(Inbox(system))
        return opened[-1]
    yield make
    for inbox in opened:
        inbox.close()


def queue_files(system, queue: str) -> list[str]:
    path = system.var / "queue" / queue
    return sorted(n for n in os.listdir(path) if not n.startswith(".")) if path.exists() else []


def wait_queues_empty(system, queues=("maildrop", "incoming", "active", "deferred"), timeout: float = 15.0) -> dict:
    """Wait (bounded) until these queue folders hold no file; returns what is left in each."""
    deadline = time.monotonic() + timeout
    while True:
        left = {queue: queue_files(system, queue) for queue in queues}
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        time.sleep(0.1)
