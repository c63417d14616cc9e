"""qmgr's scheduler through the real master: a slow destination holds up nobody else.

A `|command` that sleeps (until the test lets it go, or command_time_limit) is being
delivered; mail for a local user queued after it lands in the mailbox meanwhile, and the
slow delivery still completes in the end."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.delivery_support import Inbox, delivery_system, sendmail, shared_dir, write_aliases  # noqa: F401

pytestmark = pytest.mark.integration

LATER = 5                     # messages for bob queued while the command sleeps
GENEROUS = 60.0               # seconds: a liveness bound, not a timing


def wait_for_file(path: Path, timeout: float = GENEROUS) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return path.exists()


def test_a_sleeping_command_does_not_delay_mailbox_deliveries_queued_after_it(mailsystem, shared_dir):
    started, gate, finished = shared_dir / "started", shared_dir / "gate", shared_dir / "finished"
    # Sleeps until the gate opens (at most 120 s), then reads its message and says it is done.
    command = (f"touch {started}; n=0; while [ ! -e {gate} ] && [ $n -lt 1200 ]; do sleep 0.1; n=$((n+1)); done; "
               f"cat > /dev/null; touch {finished}")
    system = delivery_system(mailsystem, users={"bob": ()})
    write_aliases(system, f'slow: "|{command}"\n')
    system.start()
    sendmail(system, "-f", "alice@example.test", "slow", message=b"Subject: slow\n\nfirst in the queue\n")
    assert wait_for_file(started), "the slow command never started"
    for n in range(LATER):
        sendmail(system, "-f", "alice@example.test", "bob", message=f"Subject: later {n}\n\nbody\n".encode())
    inbox = Inbox(system)
    try:
        assert len(inbox.wait("bob", LATER, timeout=GENEROUS)) == LATER
        assert not finished.exists()          # all of them while the command was still sleeping
        gate.touch()
        assert wait_for_file(finished)
        system.wait_for_log("smtp", "to=<slow@mail.example.test>, relay=local", timeout=GENEROUS)
        log = system.wait_for_log("smtp", "status=sent (delivered to command", timeout=GENEROUS)
        assert "to=<slow@mail.example.test>" in log
    finally:
        gate.touch()                          # the command ends whatever happened
        inbox.close()
