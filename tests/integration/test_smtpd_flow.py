"""smtpd's back-pressure (in_flow_delay) through the real master, without a queue manager.

While queue/incoming holds in_flow_queue_limit messages, each new MAIL FROM is answered only
after in_flow_delay; every message is still accepted. smtp.log says once when an episode
starts and once when it ends (here: the queue emptied with `mailctl queue delete ALL`).
The delay is checked with a generous lower bound only; timing itself is bench/'s business.
"""
from __future__ import annotations

import time

import pytest

from tests.integration.smtpd_support import client, queued, smtp_system

pytestmark = pytest.mark.integration

DELAY = 2.0
LIMIT = 3
STARTED = "warning: in_flow_delay: "
ENDED = "below in_flow_queue_limit 3: no more delay"


def send(smtp, n: int) -> float:
    """One transaction; returns its seconds from MAIL FROM to the 250 after DATA."""
    start = time.monotonic()
    smtp.mail("alice@remote.example")
    smtp.rcpt("bob@example.test")
    code, _ = smtp.data(f"Subject: flow {n}\r\n\r\nbody {n}\r\n".encode())
    assert code == 250
    return time.monotonic() - start


def test_full_incoming_queue_delays_new_mail(mailsystem):
    system, port = smtp_system(mailsystem, {"luser_relay": "catchall@elsewhere.example",
                                            "in_flow_delay": f"{DELAY:g}s", "in_flow_queue_limit": str(LIMIT)},
                               tls=False)
    with client(port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        times = [send(smtp, n) for n in range(LIMIT + 2)]
        assert min(times[LIMIT:]) >= DELAY * 0.9          # the messages past the limit waited
        assert len(queued(system)) == LIMIT + 2           # and were all accepted
        log = system.wait_for_log("smtp", f"{STARTED}{LIMIT} messages in incoming")
        assert log.count(STARTED) == 1                    # one line per episode, not per message

        system.mailctl("queue", "delete", "ALL")
        time.sleep(1.2)                                   # past the recount interval
        send(smtp, LIMIT + 2)
        log = system.wait_for_log("smtp", ENDED)
        assert log.count(STARTED) == 1 and log.count(ENDED) == 1


def test_zero_delay_never_waits(mailsystem):
    system, port = smtp_system(mailsystem, {"luser_relay": "catchall@elsewhere.example",
                                            "in_flow_delay": "0", "in_flow_queue_limit": "1"}, tls=False)
    with client(port) as smtp:
        smtp.ehlo("client.example")
        for n in range(3):
            send(smtp, n)
    assert len(queued(system)) == 3
    assert STARTED not in system.log("smtp")
