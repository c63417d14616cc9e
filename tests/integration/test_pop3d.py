"""pop3d through the real master, driven with poplib and raw sockets.

Every login method right and wrong, STLS and wrapper mode, no login before TLS when
required, no password in clear from outside disable_plaintext_auth_exceptions, TOP and
exact octets on corpus messages, two sessions of one user (shared by default, IN-USE with
pop3_lock_session), QUIT vs a dropped connection, per-user policy and the connection
limit's polite refusal.
"""
from __future__ import annotations

import email
import email.policy
import hashlib
import poplib
import re
import socket

import pytest

from tests.conftest import CORPUS
from tests.integration.pop3d_support import (
    PopSystem, RawPop, auth_cram_md5, auth_plain, auth_scram, client_tls, login, pop, pop_ssl,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    running = PopSystem(tmp_path_factory.mktemp("pop3d"))
    yield running
    running.stop()


def wire_of(name: str) -> bytes:
    data = (CORPUS / name).read_bytes().replace(b"\r\n", b"\n")
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in data.split(b"\n")[:-1])


def unstuffed(wire: bytes) -> bytes:
    return b"".join(line[1:] if line.startswith(b".") else line for line in wire.splitlines(keepends=True))


# ---------------------------------------------------------------- authentication

@pytest.mark.parametrize("method", ["USER", "APOP", "PLAIN", "CRAM-MD5", "SCRAM-SHA-256"])
def test_every_login_method_right_and_wrong(system, method):
    user = "m" + method.lower().replace("-", "")
    system.add_user(user, "Right pass 1")
    system.deliver(user, "01-plain.eml")
    for password, works in (("wrong", False), ("Right pass 1", True)):
        client = pop(system.port("plain"))
        try:
            if method == "USER":
                client.user(user)
                attempt = lambda: client.pass_(password)
            elif method == "APOP":
                attempt = lambda: client.apop(user, password)
            else:
                run = {"PLAIN": auth_plain, "CRAM-MD5": auth_cram_md5, "SCRAM-SHA-256": auth_scram}[method]
                attempt = lambda: run(client, user, password)
            if works:
                assert attempt().startswith(b"+OK Logged in, 1 messages")
                assert client.stat()[0] == 1
                client.quit()
            else:
                with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] Authentication failed"):
                    attempt()
        finally:
            client.close()
    log = system.ms.wait_for_log("pop", f"login: user={user} method={method}")
    assert f"login failed: user={user} method={method}" in log


def test_login_with_a_local_domain_is_the_same_user(system):
    """bob@ a mydestination domain logs in as bob (USER and SASL), into bob's one maildrop;
    another domain is a wrong login."""
    system.add_user("domuser", "pw-dom")
    system.deliver("domuser", "01-plain.eml")
    first = login(system.port("locking"), "DomUser@example.test", "pw-dom")
    second = pop(system.port("plain"))
    try:
        assert first.stat()[0] == 1
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):      # the same maildrop, so the same lock
            auth_scram(second, "domuser@mail.example.test", "pw-dom")
    finally:
        first.quit()
        second.close()
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] Authentication failed"):
        login(system.port("plain"), "domuser@elsewhere.example", "pw-dom")
    system.ms.wait_for_log("pop", "login: user=domuser method=USER")


def test_greeting_and_capa(system):
    client = pop(system.port("plain"))
    try:
        assert re.fullmatch(rb"\+OK .*<[^>]+@mail\.example\.test>", client.getwelcome())
        caps = client.capa()
        assert {"TOP", "UIDL", "USER", "STLS", "RESP-CODES"} <= set(caps)
        assert caps["SASL"] == ["PLAIN", "CRAM-MD5", "SCRAM-SHA-256"]
    finally:
        client.quit()


def test_no_password_in_clear_from_outside_the_exceptions(system):
    """disable_plaintext_auth (default yes) with the exceptions narrowed to 127.0.0.1: a client
    from 127.0.0.2 sees no USER and no SASL PLAIN before STLS and is refused them; SCRAM works;
    after STLS everything does. From 127.0.0.1 USER/PASS works without TLS."""
    system.add_user("clearuser", "pw-clear")
    port = system.port("narrow")
    refused = r"-ERR \[AUTH\] Plaintext authentication disallowed"
    client = pop(port, source="127.0.0.2")
    try:
        caps = client.capa()
        assert "USER" not in caps and caps["SASL"] == ["CRAM-MD5", "SCRAM-SHA-256"] and "STLS" in caps
        with pytest.raises(poplib.error_proto, match=refused):
            client.user("clearuser")
        with pytest.raises(poplib.error_proto, match=refused):
            auth_plain(client, "clearuser", "pw-clear")
        assert auth_scram(client, "clearuser", "pw-clear").startswith(b"+OK Logged in")
        client.quit()
    finally:
        client.close()
    client = pop(port, source="127.0.0.2")
    try:
        client.stls(context=client_tls())
        caps = client.capa()
        assert "USER" in caps and caps["SASL"] == ["PLAIN", "CRAM-MD5", "SCRAM-SHA-256"]
        client.user("clearuser")
        assert client.pass_("pw-clear").startswith(b"+OK Logged in")
        client.quit()
    finally:
        client.close()
    login(port, "clearuser", "pw-clear", attempts=1).quit()
    log = system.ms.wait_for_log("pop", "login: user=clearuser method=USER ip=127.0.0.1 tls=no")
    assert "login: user=clearuser method=SCRAM-SHA-256 ip=127.0.0.2 tls=no" in log
    assert re.search(r"login: user=clearuser method=USER ip=127\.0\.0\.2 tls=TLSv1\.[23]", log)


def test_stls_then_login(system):
    system.add_user("stlsuser", "pw-stls")
    client = pop(system.port("plain"))
    try:
        client.stls(context=client_tls())
        assert "STLS" not in client.capa()
        client.user("stlsuser")
        assert client.pass_("pw-stls").startswith(b"+OK Logged in")
        client.quit()
    finally:
        client.close()
    assert "login: user=stlsuser method=USER" in system.ms.wait_for_log("pop", "user=stlsuser method=USER")
    assert re.search(r"login: user=stlsuser .* tls=TLSv1\.[23]", system.ms.log("pop"))


def test_wrapper_mode_port(system):
    system.add_user("wrapuser", "pw-wrap")
    system.deliver("wrapuser", "04-alternative.eml")
    client = pop_ssl(system.port("wrapper"))
    try:
        assert "STLS" not in client.capa()
        auth_scram(client, "wrapuser", "pw-wrap")
        assert client.stat()[0] == 1
        client.quit()
    finally:
        client.close()


def test_no_login_before_tls_when_required(system):
    system.add_user("strictuser", "pw-strict")
    client = pop(system.port("strict"))
    try:
        caps = client.capa()
        assert "USER" not in caps and "SASL" not in caps and "STLS" in caps
        refused = r"-ERR \[AUTH\] Plaintext authentication disallowed"
        with pytest.raises(poplib.error_proto, match=refused):
            client.user("strictuser")
        with pytest.raises(poplib.error_proto, match=refused):
            auth_plain(client, "strictuser", "pw-strict")
        with pytest.raises(poplib.error_proto, match=refused):
            client.apop("strictuser", "pw-strict")
        client.stls(context=client_tls())
        assert "USER" in client.capa()
        client.user("strictuser")
        assert client.pass_("pw-strict").startswith(b"+OK Logged in")
        client.quit()
    finally:
        client.close()


def test_per_user_policy(system):
    system.ms.mailctl("user", "add", "imaponly", "--password", "pw-imap", "--protocols", "imap")
    system.ms.mailctl("user", "add", "gone", "--password", "pw-gone", "--disabled")
    for user, password, reply in (("imaponly", "pw-imap", r"-ERR \[AUTH\] POP3 access is not enabled for imaponly"),
                                  ("gone", "pw-gone", r"-ERR \[AUTH\] This account is disabled")):
        client = pop(system.port("plain"))
        try:
            client.user(user)
            with pytest.raises(poplib.error_proto, match=reply):
                client.pass_(password)
        finally:
            client.close()
    log = system.ms.wait_for_log("pop", "login refused: user=gone")
    assert "login refused: user=imaponly method=USER ip=127.0.0.1 reason=pop-not-allowed" in log
    system.ms.mailctl("user", "set", "gone", "--enable")      # takes effect at the next login
    client = login(system.port("plain"), "gone", "pw-gone")
    client.quit()


# ---------------------------------------------------------------- reading

def test_list_sizes_are_retr_octets_without_the_stuffed_dots(system):
    """RFC 1939 sizes as Dovecot counts them: CRLF line ends (the files hold LF), the dots
    that RETR stuffs and the final ".\r\n" not counted."""
    system.add_user("dots", "pw-dots")
    names = ["08-dot-lines.eml", "03-quoted-printable.eml", "02-utf8-8bit.eml"]
    system.deliver("dots", *names)
    raw = RawPop(system.port("plain"))
    try:
        assert raw.command("USER dots").startswith(b"+OK")
        assert raw.command("PASS pw-dots").startswith(b"+OK")
        assert raw.command("LIST").startswith(b"+OK")
        sizes = [int(line.split()[1]) for line in raw.multiline().split(b"\r\n") if line]
        total = raw.command("STAT").split()
        assert int(total[2]) == sum(sizes)
        for number, name in enumerate(names, 1):
            reply = raw.command(f"RETR {number}")
            assert reply == f"+OK {sizes[number - 1]} octets".encode()
            body = raw.multiline()
            assert body == wire_of(name) and len(unstuffed(body)) == sizes[number - 1]
        assert b"\r\n..\r\n...\r\n" in wire_of("08-dot-lines.eml")
        assert sizes[0] == len((CORPUS / "08-dot-lines.eml").read_bytes().replace(b"\n", b"\r\n"))
        assert raw.command("QUIT").startswith(b"+OK")
    finally:
        raw.close()


def test_top_on_multipart_messages(system):
    system.add_user("topuser", "pw-top")
    system.deliver("topuser", "06-nested-multipart.eml", "10-dsn-report.eml", "07-forwarded-rfc822.eml")
    client = login(system.port("plain"), "topuser", "pw-top")
    try:
        for number, name in enumerate(["06-nested-multipart.eml", "10-dsn-report.eml",
                                       "07-forwarded-rfc822.eml"], 1):
            source = (CORPUS / name).read_bytes().split(b"\n")
            header_end = source.index(b"")
            _, lines, _ = client.top(number, 5)
            assert lines == source[:header_end + 1 + 5]
            _, lines, _ = client.retr(number)
            parsed = email.message_from_bytes(b"\r\n".join(lines), policy=email.policy.default)
            assert parsed.is_multipart() and parsed["Subject"]
        client.quit()
    finally:
        client.close()


def test_uidl_is_uidvalidity_and_uid(system):
    system.add_user("uidluser", "pw-uidl")
    uids = system.deliver("uidluser", "01-plain.eml", "05-mixed-attachment.eml")
    store = system.store()
    validity = store.mailbox("uidluser", "INBOX").uidvalidity
    store.index.close()
    client = login(system.port("plain"), "uidluser", "pw-uidl")
    try:
        assert client.uidl()[1] == [f"{n} {validity}.{uid}".encode() for n, uid in enumerate(uids, 1)]
        client.quit()
    finally:
        client.close()


# ---------------------------------------------------------------- the maildrop

def test_two_sessions_of_one_user_both_get_in_by_default(system):
    """As Dovecot (pop3_lock_session = no): each session has its own snapshot; what one
    deletes is gone for the other, whose own DELE and QUIT still work. The second client
    comes in on another service, i.e. another worker process."""
    system.add_user("twice", "pw-twice")
    system.deliver("twice", "01-plain.eml", "02-utf8-8bit.eml", "04-alternative.eml")
    first = login(system.port("plain"), "twice", "pw-twice", attempts=1)
    second = pop_ssl(system.port("wrapper"))
    try:
        second.user("twice")
        assert second.pass_("pw-twice").startswith(b"+OK Logged in, 3 messages")
        assert first.uidl()[1] == second.uidl()[1]
        first.dele(1)
        assert first.quit().startswith(b"+OK Logging out, 1 messages deleted, 2 left")
        assert second.stat()[0] == 3                                   # its snapshot
        with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/PERM\] The message was removed"):
            second.retr(1)
        assert b"Content-Type" in b"\r\n".join(second.retr(2)[1])
        second.dele(1)
        second.dele(3)
        assert second.quit().startswith(b"+OK Logging out, 1 messages deleted, 1 left")
    finally:
        second.close()
        first.close()
    assert system.count("twice") == 1


def test_in_use_with_pop3_lock_session(system):
    """A session of a pop3_lock_session service excludes every other POP3 session of the user
    and is refused while another one is in, on any service (another worker process)."""
    system.add_user("busy", "pw-busy")
    system.deliver("busy", "01-plain.eml")
    for holder_port, other_port in ((system.port("locking"), system.port("plain")),
                                    (system.port("plain"), system.port("locking"))):
        first = login(holder_port, "busy", "pw-busy")
        second = pop(other_port)
        try:
            second.user("busy")
            with pytest.raises(poplib.error_proto, match=r"-ERR \[IN-USE\]"):
                second.pass_("pw-busy")
            assert first.stat()[0] == 1
            first.quit()
        finally:
            second.close()
            first.close()
        login(other_port, "busy", "pw-busy", attempts=1).quit()


def test_dropped_connection_deletes_nothing_quit_does(system):
    system.add_user("dropper", "pw-drop")
    system.deliver("dropper", "01-plain.eml", "02-utf8-8bit.eml", "04-alternative.eml")
    client = login(system.port("plain"), "dropper", "pw-drop")
    client.dele(1)
    client.dele(2)
    client.close()                          # gone without QUIT
    system.ms.wait_for_log("pop", "disconnected without QUIT: user=dropper")
    assert system.count("dropper") == 3

    client = login(system.port("plain"), "dropper", "pw-drop")
    assert client.stat()[0] == 3
    client.dele(1)
    client.rset()
    client.dele(2)
    assert client.quit().startswith(b"+OK Logging out, 1 messages deleted, 2 left")
    client.close()
    assert system.count("dropper") == 2


def test_connection_limit_polite_refusal(system):
    port = system.port("limited")
    first = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        assert first.makefile("rb").readline().startswith(b"+OK")
        second = socket.create_connection(("127.0.0.1", port), timeout=10)
        with second, second.makefile("rb") as lines:
            assert lines.readline() == b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
            assert lines.readline() == b""          # and closed
        first.sendall(b"CAPA\r\n")
        assert first.recv(100).startswith(b"+OK Capability list follows")
    finally:
        first.close()


def test_bad_input_gets_errors_not_a_hang(system):
    raw = RawPop(system.port("plain"))
    try:
        assert raw.command("X" * 1000) == b"-ERR Line too long"
        assert raw.command("RETR 1") == b"-ERR RETR is not valid in the AUTHORIZATION state"
        assert raw.command("APOP nobody " + hashlib.md5(b"x").hexdigest()) == b"-ERR [AUTH] Authentication failed"
        assert raw.command("QUIT") == b"+OK Bye"
    finally:
        raw.close()
