"""Password checks through the real master: off the event loop, bounded, cached.

- liveness: while many sessions send wrong AUTH PLAIN passwords (each one a real scrypt), an
  unrelated session's NOOP is answered at once (when the checks ran on the event loop, it
  waited for all of them: seconds);
- the cache: a second login with the same password is a hit (smtp.log / pop.log at
  log_level high), a wrong password never is, and `mailctl user passwd` / `user set
  --disabled` / `--protocols` take effect at the very next login;
- a full queue of checks: the protocol's temporary failure (454 4.7.0, -ERR [SYS/TEMP]),
  and logins work again once the queue has drained.
"""
from __future__ import annotations

import base64
import poplib
import socket
import threading
import time

import pytest

from tests.integration.pop3d_support import pop
from tests.integration.smtpd_support import client, smtp_system

pytestmark = pytest.mark.integration

ATTACKERS = 50             # each sends one wrong password: 50 scrypts of about 0.15 s
NOOP_BOUND = 2.0            # seconds; with the checks on the event loop a NOOP waited 5 s and more


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def wait_count(system, log: str, needle: str, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while system.log(log).count(needle) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} x {needle!r} not in {log}.log:\n{system.log(log)[-3000:]}")
        time.sleep(0.05)


def test_wrong_passwords_of_many_sessions_do_not_stall_another_session(mailsystem):
    system, port = smtp_system(mailsystem, {"auth_verify_queue_limit": "100"}, tls=False, maxproc=ATTACKERS + 5)
    system.mailctl("user", "add", "bob", "--password", "s3cret pass")
    codes: list[int] = []
    finished: list[float] = []
    connected = threading.Barrier(ATTACKERS + 1)

    def attacker() -> None:
        with client(port, timeout=120) as smtp:
            smtp.ehlo("attacker.example")
            connected.wait(60)
            codes.append(smtp.docmd("AUTH", "PLAIN " + plain("bob", "guess"))[0])
        finished.append(time.monotonic())

    with client(port, timeout=120) as observer:
        observer.ehlo("observer.example")
        threads = [threading.Thread(target=attacker) for _ in range(ATTACKERS)]
        for thread in threads:
            thread.start()
        connected.wait(60)
        time.sleep(0.5)                             # the storm is on
        waits = []
        for _ in range(3):
            started = time.monotonic()
            assert observer.noop()[0] == 250
            waits.append(time.monotonic() - started)
            time.sleep(0.2)
        observed = time.monotonic()
        for thread in threads:
            thread.join(180)
    assert max(waits) < NOOP_BOUND, f"NOOP waited {max(waits):.1f} s behind the password checks"
    assert max(finished) > observed, "the NOOPs were not measured during the storm"
    assert codes == [535] * ATTACKERS


def test_smtp_cache_hits_only_the_same_password_and_account_changes_apply_at_once(mailsystem):
    system, port = smtp_system(mailsystem, tls=False)
    system.mailctl("user", "add", "bob", "--password", "s3cret pass")
    hit = "auth cache hit: user=bob"

    def auth(password: str) -> int:
        with client(port) as smtp:
            smtp.ehlo("client.example")
            return smtp.docmd("AUTH", "PLAIN " + plain("bob", password))[0]

    assert auth("s3cret pass") == 235
    system.wait_for_log("smtp", "sasl_username=bob")
    assert hit not in system.log("smtp")
    assert auth("s3cret pass") == 235
    system.wait_for_log("smtp", hit)
    assert auth("s3cret pas") == 535 and auth("S3cret pass") == 535
    wait_count(system, "smtp", "authentication failed for bob", 2)
    assert system.log("smtp").count(hit) == 1

    system.mailctl("user", "passwd", "bob", input="n3w pass\n")
    assert auth("s3cret pass") == 535                  # the cached password is refused at once
    assert auth("n3w pass") == 235 and auth("n3w pass") == 235
    wait_count(system, "smtp", hit, 2)
    system.mailctl("user", "set", "bob", "--disabled")
    assert auth("n3w pass") == 535
    wait_count(system, "smtp", "authentication failed for bob", 4)
    assert system.log("smtp").count(hit) == 2


def test_pop3_cache_and_a_protocols_change(mailsystem):
    system = mailsystem()
    key = system.add_service("pop3d")
    system.start()
    system.mailctl("user", "add", "bob", "--password", "s3cret pass")
    port = system.port(key)

    def login(password: str) -> bytes:
        client = pop(port)
        try:
            client.user("bob")
            return client.pass_(password)
        except poplib.error_proto as e:
            return e.args[0]
        finally:
            client.quit()

    assert login("s3cret pass").startswith(b"+OK Logged in")
    assert login("s3cret pass").startswith(b"+OK Logged in")
    system.wait_for_log("pop", "auth cache hit: user=bob")
    assert login("wrong") == b"-ERR [AUTH] Authentication failed"
    system.mailctl("user", "set", "bob", "--protocols", "imap")
    assert login("s3cret pass") == b"-ERR [AUTH] POP3 access is not enabled for bob"
    wait_count(system, "pop", "reason=pop-not-allowed", 1)
    assert system.log("pop").count("auth cache hit: user=bob") == 1


def burst(port: int, sessions: int, setup: bytes, ready: bytes, command: bytes) -> list[bytes]:
    """Open the sessions and send `setup` on each; once every one has answered a line that
    starts with `ready`, send `command` on all at once. Returns the replies to it."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(sessions)]
    try:
        for sock in socks:
            sock.sendall(setup)
        for sock in socks:
            received = b""
            while not (received.endswith(b"\r\n") and received.split(b"\r\n")[-2].startswith(ready)):
                chunk = sock.recv(4096)
                assert chunk, f"closed during the set-up: {received!r}"
                received += chunk
        for sock in socks:
            sock.sendall(command)
        replies = []
        for sock in socks:
            line = b""
            while not line.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                assert chunk, f"closed before the reply: {line!r}"
                line += chunk
            replies.append(line.strip())
        return replies
    finally:
        for sock in socks:
            sock.close()


def test_a_full_queue_of_checks_is_a_temporary_failure(mailsystem):
    system = mailsystem()
    smtp_key = system.add_service("smtpd", "-o", "auth_verify_threads=1", "-o", "auth_verify_queue_limit=0")
    pop_key = system.add_service("pop3d", "-o", "auth_verify_threads=1", "-o", "auth_verify_queue_limit=0")
    system.start()
    system.mailctl("user", "add", "bob", "--password", "s3cret pass")

    replies = burst(system.port(smtp_key), 6, b"EHLO burst.example\r\n", b"250 ",
                    f"AUTH PLAIN {plain('bob', 'guess')}\r\n".encode())
    assert b"454 4.7.0 Temporary authentication failure, try again later" in replies
    assert set(replies) <= {b"454 4.7.0 Temporary authentication failure, try again later",
                            b"535 5.7.8 Error: authentication failed"}
    assert b"535 5.7.8 Error: authentication failed" in replies
    system.wait_for_log("smtp", "PLAIN authentication unavailable: 1 credential checks already running")
    with client(system.port(smtp_key)) as smtp:          # drained: logins work again
        smtp.ehlo("client.example")
        assert smtp.docmd("AUTH", "PLAIN " + plain("bob", "s3cret pass"))[0] == 235

    replies = burst(system.port(pop_key), 6, b"USER bob\r\n", b"+OK Send", b"PASS guess\r\n")
    temporary = b"-ERR [SYS/TEMP] Authentication is temporarily unavailable, try again later"
    assert temporary in replies and b"-ERR [AUTH] Authentication failed" in replies
    assert set(replies) <= {temporary, b"-ERR [AUTH] Authentication failed"}
