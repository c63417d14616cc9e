"""Per-client limits kept by the master for every worker (master/anvil.py), end to end.

Clients connect from other loopback addresses (127.0.0.2, 127.0.0.3) by binding the source;
the tests narrow smtpd_client_event_limit_exceptions (default $mynetworks, all of 127/8) to
127.0.0.1 so that those clients are limited while 127.0.0.1 stays exempt.
"""
from __future__ import annotations

import base64
import smtplib
import socket
import time

import pytest

from tests.integration.echo_client import ECHO, EchoClient, service, wait_until
from tests.integration.smtpd_support import add_user, client

pytestmark = pytest.mark.integration

LIMITED, OTHER = "127.0.0.2", "127.0.0.3"
ONLY_LOCALHOST_EXEMPT = {"smtpd_client_event_limit_exceptions": "127.0.0.1/32"}


def first_line(port: int, source: str) -> bytes:
    """Connect from source and read the first line (a greeting or a refusal)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as sock:
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(512)
            if not chunk:
                break
            data += chunk
        return data


def auth_plain(smtp: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes, float]:
    """AUTH PLAIN; returns the reply and how long it took."""
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    started = time.monotonic()
    code, text = smtp.docmd("AUTH", f"PLAIN {token}")
    return code, text, time.monotonic() - started


def server_lines(ms, needle: str) -> list[str]:
    return [line for line in ms.log("server").splitlines() if needle in line]


def test_connection_count_limit_per_client_other_clients_still_served(mailsystem):
    ms = mailsystem(main=ONLY_LOCALHOST_EXEMPT)
    echo = ms.add_service(ECHO, maxproc=6)            # count limit: half of maxproc, 3
    ms.start()
    port = ms.port(echo)
    held = [EchoClient(port, source=LIMITED) for _ in range(3)]
    try:
        assert all(c.greeting.startswith("+OK echo") for c in held)
        assert first_line(port, LIMITED) == b"-ERR [SYS/TEMP] refused: smtpd_client_connection_count_limit\r\n"
        with EchoClient(port, source=OTHER) as other, EchoClient(port) as exempt:
            assert other.greeting.startswith("+OK echo") and exempt.greeting.startswith("+OK echo")
        assert [c.ask("ping") for c in held] == ["+OK ping"] * 3     # not disturbed
        assert service(ms, echo)["refused"] == 1
        assert server_lines(ms, f"refusing connections from {LIMITED} over smtpd_client_connection_count_limit")

        # A session that ends gives the client its slot back.
        assert held.pop().ask("QUIT") == "+OK bye"
        wait_until(lambda: service(ms, echo)["connections"] == 2, what="the session to be counted out")
        assert first_line(port, LIMITED).startswith(b"+OK echo")
    finally:
        for c in held:
            c.close()


def test_refusal_wording_of_smtpd_and_pop3d(mailsystem):
    ms = mailsystem(main={**ONLY_LOCALHOST_EXEMPT, "smtpd_client_connection_count_limit": "1"})
    smtp = ms.add_service("smtpd")
    pop = ms.add_service("pop3d")
    ms.start()
    with client(ms.port(smtp), source=LIMITED) as first:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            client(ms.port(smtp), source=LIMITED)
        assert refused.value.smtp_code == 421
        assert refused.value.smtp_error == f"4.7.0 Too many connections from {LIMITED}, try again later".encode()
        assert first.noop()[0] == 250
    with socket.create_connection(("127.0.0.1", ms.port(pop)), source_address=(LIMITED, 0)) as held:
        assert held.makefile("rb").readline().startswith(b"+OK")
        assert first_line(ms.port(pop), LIMITED) == \
            f"-ERR [SYS/TEMP] Too many connections from {LIMITED}, try again later\r\n".encode()


def test_connection_rate_limit(mailsystem):
    ms = mailsystem(main={**ONLY_LOCALHOST_EXEMPT, "smtpd_client_connection_rate_limit": "3"})
    echo = ms.add_service(ECHO)
    ms.start()
    port = ms.port(echo)
    assert all(first_line(port, LIMITED).startswith(b"+OK echo") for _ in range(3))
    assert first_line(port, LIMITED) == b"-ERR [SYS/TEMP] refused: smtpd_client_connection_rate_limit\r\n"
    assert first_line(port, OTHER).startswith(b"+OK echo")
    assert all(first_line(port, "127.0.0.1").startswith(b"+OK echo") for _ in range(5))   # exempt


def test_mynetworks_is_exempt_by_default_and_the_exceptions_follow_it(mailsystem):
    ms = mailsystem(main={"smtpd_client_connection_count_limit": "1"})
    echo = ms.add_service(ECHO)
    ms.start()
    port = ms.port(echo)
    with EchoClient(port, source=LIMITED), EchoClient(port, source=LIMITED):
        assert first_line(port, LIMITED).startswith(b"+OK echo")       # 127.0.0.0/8 is mynetworks

    ms.set_main(mynetworks="127.0.0.1/32")
    assert ms.mailctl("reload").stdout.strip() == "reloaded"
    with EchoClient(port, source=LIMITED) as first:
        assert first.greeting.startswith("+OK echo")
        assert first_line(port, LIMITED) == b"-ERR [SYS/TEMP] refused: smtpd_client_connection_count_limit\r\n"


def test_auth_rate_limit_refuses_right_and_wrong_passwords_alike(mailsystem):
    ms = mailsystem(main={**ONLY_LOCALHOST_EXEMPT, "smtpd_client_auth_rate_limit": "2"})
    smtp = ms.add_service("smtpd")
    ms.start()
    add_user(ms, "bob", "right")
    port = ms.port(smtp)
    for _ in range(2):
        with client(port, source=LIMITED) as s:
            s.ehlo("c.example")
            assert auth_plain(s, "bob", "right")[0] == 235
    over = f"4.7.0 Too many logins from {LIMITED} in 60 s, try again later".encode()
    for password in ("right", "wrong"):       # the same answer: it tells nothing about the password
        with client(port, source=LIMITED) as s:
            s.ehlo("c.example")
            assert auth_plain(s, "bob", password)[:2] == (454, over)
    with client(port, source=OTHER) as s:
        s.ehlo("c.example")
        assert auth_plain(s, "bob", "right")[0] == 235
    assert server_lines(ms, f"refusing logins from {LIMITED} over smtpd_client_auth_rate_limit")


def test_auth_penalty_grows_per_failure_and_is_shared_by_workers(mailsystem):
    ms = mailsystem(main={**ONLY_LOCALHOST_EXEMPT, "worker_client_limit": "1"})
    smtp = ms.add_service("smtpd", maxproc=8)
    ms.start()
    add_user(ms, "bob", "right")
    port = ms.port(smtp)
    with client(port, source=LIMITED) as a, client(port, source=LIMITED) as b:
        a.ehlo("a.example")
        b.ehlo("b.example")
        assert len(service(ms, smtp)["workers"]) == 2            # one session per worker process
        code, _, first = auth_plain(a, "bob", "wrong")
        assert code == 535 and first < 0.9                       # no penalty yet
        code, _, second = auth_plain(b, "bob", "wrong")
        assert code == 535 and second >= 0.9                     # 1 s, learnt in the other worker
        code, _, third = auth_plain(a, "bob", "right")
        assert code == 235 and third >= 1.9                      # 2 s, a right password waits too
        code, _, fourth = auth_plain(b, "bob", "wrong")
        assert code == 535 and fourth < 0.9                      # the success forgave the failures
    assert server_lines(ms, f"client {LIMITED}: 2 failed logins; its next logins wait 2 s (auth penalty)")
    with client(port) as exempt:                                 # 127.0.0.1 never waits
        exempt.ehlo("c.example")
        assert all(auth_plain(exempt, "bob", "wrong")[2] < 0.9 for _ in range(3))


def test_user_and_address_limit_once_logged_in(mailsystem):
    ms = mailsystem(main={**ONLY_LOCALHOST_EXEMPT, "mail_max_userip_connections": "2"})
    echo = ms.add_service(ECHO)
    ms.start()
    port = ms.port(echo)
    sessions = [EchoClient(port, source=LIMITED) for _ in range(2)]
    try:
        assert [s.ask("LOGIN ok bob").split()[0] for s in sessions] == ["+OK", "+OK"]
        with EchoClient(port, source=LIMITED) as third, EchoClient(port, source=OTHER) as elsewhere:
            assert third.ask("LOGIN ok alice").startswith("+OK")           # another user
            assert third.ask("LOGIN ok bob") == "-ERR mail_max_userip_connections"
            assert elsewhere.ask("LOGIN ok bob").startswith("+OK")        # another address
    finally:
        for s in sessions:
            s.close()


def test_pop3d_refuses_a_login_over_the_user_and_address_limit(mailsystem):
    ms = mailsystem(main={**ONLY_LOCALHOST_EXEMPT, "mail_max_userip_connections": "1"})
    pop = ms.add_service("pop3d")
    ms.start()
    add_user(ms, "bob", "right")
    with socket.create_connection(("127.0.0.1", ms.port(pop)), timeout=10, source_address=(LIMITED, 0)) as first:
        lines = first.makefile("rb")
        lines.readline()
        first.sendall(b"USER bob\r\nPASS right\r\n")
        assert lines.readline().startswith(b"+OK") and lines.readline().startswith(b"+OK")
        with socket.create_connection(("127.0.0.1", ms.port(pop)), timeout=10,
                                      source_address=(LIMITED, 0)) as second:
            more = second.makefile("rb")
            more.readline()
            second.sendall(b"USER bob\r\nPASS right\r\n")
            assert more.readline().startswith(b"+OK")
            assert more.readline() == (f"-ERR [SYS/TEMP] Too many sessions of this user from {LIMITED} "
                                       f"(mail_max_userip_connections=1)\r\n").encode()
            assert more.readline() == b""                           # and closed


def test_thousands_of_refusals_do_not_recycle_the_worker_and_are_logged_per_burst(mailsystem):
    ms = mailsystem(main={**ONLY_LOCALHOST_EXEMPT, "smtpd_client_connection_count_limit": "1", "max_use": "5"})
    echo = ms.add_service(ECHO)
    ms.start()
    port = ms.port(echo)
    with EchoClient(port, source=LIMITED) as held:
        pid = held.pid()
        for i in range(3000):
            line = first_line(port, LIMITED)
            assert line == b"-ERR [SYS/TEMP] refused: smtpd_client_connection_count_limit\r\n", (i, line)
        state = service(ms, echo)
        assert (state["workers"], state["refused"], state["served"]) == ([pid], 3000, 1)
        assert held.ask("ping") == "+OK ping"
        with EchoClient(port, source=OTHER) as other:
            assert other.pid() == pid
    status = ms.mailctl("status").stdout
    assert str(pid) in status
    lines = server_lines(ms, LIMITED)
    assert 1 <= len(lines) <= 4, lines                    # the first refusal, then sums per 10 s
    assert "refusing connections from 127.0.0.2 over smtpd_client_connection_count_limit" in lines[0]
    assert len(ms.log("pop").splitlines()) < 10           # the worker logs no refusal either


def test_refusals_over_maxproc_do_not_count_toward_max_use(mailsystem):
    ms = mailsystem(main={"max_use": "2"})
    echo = ms.add_service(ECHO, maxproc=1)
    ms.start()
    port = ms.port(echo)
    with EchoClient(port) as held:
        pid = held.pid()
        over = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(5)]
        try:
            assert [s.makefile("rb").readline() for s in over] == \
                [b"-ERR [SYS/TEMP] refused: maxproc\r\n"] * 5
        finally:
            for s in over:
                s.close()
        assert service(ms, echo)["workers"] == [pid]
    assert len(server_lines(ms, "over maxproc")) == 1


def test_stress_mode_shortens_the_timeout_of_new_sessions(mailsystem):
    ms = mailsystem(main={"stress_timeout": "1s", "smtpd_timeout": "300s"})
    smtp = ms.add_service("smtpd", maxproc=4)
    ms.start()
    port = ms.port(smtp)
    with client(port) as first, client(port) as second:
        assert not service(ms, smtp)["stress"]
        with socket.create_connection(("127.0.0.1", port), timeout=20) as third:   # 3 of 4: stress
            lines = third.makefile("rb")
            assert lines.readline().startswith(b"220 ")
            started = time.monotonic()
            assert lines.readline() == b"421 4.4.2 Error: timeout exceeded\r\n"
            assert time.monotonic() - started < 15
            assert service(ms, smtp)["stress"]
        assert first.noop()[0] == 250 and second.noop()[0] == 250     # sessions from before keep 300 s
        assert server_lines(ms, "under stress, new sessions time out after 1 s")
    wait_until(lambda: not service(ms, smtp)["stress"], what="the stress to end")
