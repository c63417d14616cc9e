"""The auth service (workers/auth) through the real master, with smtplib and poplib.

- SMTP AUTH PLAIN and POP3 USER/PASS succeed and fail through it, and the protocol
  workers never map the password database (only the auth process does);
- the per-user allowances are its answer (a user without pop is refused by pop3d only);
- a second login is a cache hit (server.log at log_level high), and `mailctl user passwd`
  or `user del` refuses the old password at the very next login;
- the auth service stopped: the temporary failures (454 4.7.0, -ERR [SYS/TEMP]) after
  auth_service_timeout; killed: the master starts another and logins work again.
"""
from __future__ import annotations

import base64
import os
import poplib
import signal
import time

import pytest

from tests.integration.pop3d_support import pop
from tests.integration.smtpd_support import client

pytestmark = pytest.mark.integration

TEMPORARY_SMTP = 454
TEMPORARY_POP = b"-ERR [SYS/TEMP] Authentication is temporarily unavailable, try again later"


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


@pytest.fixture
def system(mailsystem):
    ms = mailsystem(main={"auth_service_timeout": "2s"})
    ms.smtp = ms.add_service("smtpd", "-o", "smtpd_sasl_auth_enable=yes")
    ms.pop3 = ms.add_service("pop3d")
    ms.add_auth_service()
    ms.start()
    ms.mailctl("user", "add", "bob", "--password", "s3cret pass")
    return ms


def smtp_auth(system, user: str, password: str) -> int:
    with client(system.port(system.smtp)) as smtp:
        smtp.ehlo("client.example")
        return smtp.docmd("AUTH", "PLAIN " + plain(user, password))[0]


def pop_login(system, user: str, password: str) -> bytes:
    session = pop(system.port(system.pop3))
    try:
        session.user(user)
        return session.pass_(password)
    except poplib.error_proto as e:
        return e.args[0]
    finally:
        session.quit()


def workers_of(system, command: str) -> list[int]:
    return [pid for svc in system.status()["services"] if svc["command"] == command for pid in svc["workers"]]


def maps_passwords(pid: int, system) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return str(system.var / "passwords") in f.read()


def wait_for_new_auth(system, old: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = workers_of(system, "auth")
        status = {svc["command"]: svc for svc in system.status()["services"]}
        if pids and old not in pids and status["auth"]["ready"]:
            return pids[0]
        time.sleep(0.1)
    raise AssertionError(f"no new auth worker: {system.status()}")


def test_logins_through_the_service_and_workers_never_read_the_hashes(system):
    assert smtp_auth(system, "bob", "s3cret pass") == 235
    assert smtp_auth(system, "bob", "wrong") == 535
    assert pop_login(system, "bob", "s3cret pass").startswith(b"+OK Logged in")
    assert pop_login(system, "bob@example.test", "wrong") == b"-ERR [AUTH] Authentication failed"
    system.wait_for_log("pop", "login failed: user=bob@example.test")
    for command in ("smtpd", "pop3d"):
        pids = workers_of(system, command)
        assert pids and not any(maps_passwords(pid, system) for pid in pids), command
    assert maps_passwords(workers_of(system, "auth")[0], system)
    assert (system.var / "run" / "auth.sock").exists()


def test_allowances_are_the_services_answer(system):
    system.mailctl("user", "set", "bob", "--protocols", "imap")
    assert pop_login(system, "bob", "s3cret pass") == b"-ERR [AUTH] POP3 access is not enabled for bob"
    system.wait_for_log("pop", "reason=pop-not-allowed")
    assert smtp_auth(system, "bob", "s3cret pass") == 235              # SMTP is not a protocol choice
    system.mailctl("user", "set", "bob", "--disabled")
    assert smtp_auth(system, "bob", "s3cret pass") == 535
    system.wait_for_log("smtp", "authentication failed for bob: account disabled")


def test_cache_hit_and_a_changed_password_is_refused_at_once(system):
    hit = "auth cache hit: user=bob protocol=smtp"
    assert smtp_auth(system, "bob", "s3cret pass") == 235
    assert smtp_auth(system, "bob", "s3cret pass") == 235
    system.wait_for_log("server", hit)
    system.mailctl("user", "passwd", "bob", input="n3w pass\n")
    assert smtp_auth(system, "bob", "s3cret pass") == 535             # the cached password: refused
    assert pop_login(system, "bob", "s3cret pass") == b"-ERR [AUTH] Authentication failed"
    assert smtp_auth(system, "bob", "n3w pass") == 235
    assert pop_login(system, "bob", "n3w pass").startswith(b"+OK Logged in")
    system.mailctl("user", "del", "bob")
    assert smtp_auth(system, "bob", "n3w pass") == 535
    assert system.log("server").count(hit) == 1


def test_a_stopped_service_is_a_temporary_failure_and_a_killed_one_is_replaced(system):
    assert smtp_auth(system, "bob", "s3cret pass") == 235                 # connections are open
    assert pop_login(system, "bob", "s3cret pass").startswith(b"+OK")
    auth = workers_of(system, "auth")[0]
    os.kill(auth, signal.SIGSTOP)
    try:
        assert smtp_auth(system, "bob", "s3cret pass") == TEMPORARY_SMTP
        assert pop_login(system, "bob", "s3cret pass") == TEMPORARY_POP
        system.wait_for_log("smtp", "authentication unavailable: the auth service did not answer within 2 s")
    finally:
        os.kill(auth, signal.SIGKILL)
    wait_for_new_auth(system, auth)
    assert smtp_auth(system, "bob", "s3cret pass") == 235
    assert pop_login(system, "bob", "s3cret pass").startswith(b"+OK Logged in")
    assert smtp_auth(system, "bob", "wrong") == 535
