"""pop3d through the real master, driven with poplib and raw sockets.

Every login method right and wrong, STLS and wrapper mode, no login before TLS when
required, TOP and exact octets on corpus messages, the IN-USE lock, QUIT vs a dropped
connection, per-user policy and the connection limit's polite refusal.
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
    first = login(system.port("plain"), "DomUser@example.test", "pw-dom")
    second = pop(system.port("plain"))
    try:
        assert first.stat()[0] == 1
        assert auth_scram(second, "domuser@mail.example.test", "pw-dom").startswith(b"+OK")
    except poplib.error_proto as e:
        assert b"[IN-USE]" in e.args[0]             # the same maildrop, so the same lock
    else:
        raise AssertionError("a second session got domuser's maildrop")
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

def test_list_sizes_are_exact_retr_octets_with_byte_stuffing(system):
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
            assert body == wire_of(name) and len(body) == sizes[number - 1]
        assert b"\r\n..\r\n...\r\n" in wire_of("08-dot-lines.eml")
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

def test_in_use_with_two_clients(system):
    """The second client comes in on another service, i.e. another worker process."""
    system.add_user("busy", "pw-busy")
    system.deliver("busy", "01-plain.eml")
    first = login(system.port("plain"), "busy", "pw-busy")
    second = pop_ssl(system.port("wrapper"))
    try:
        second.user("busy")
        with pytest.raises(poplib.error_proto, match=r"-ERR \[IN-USE\]"):
            second.pass_("pw-busy")
        assert first.stat()[0] == 1
        first.quit()
    finally:
        second.close()
        first.close()
    login(system.port("plain"), "busy", "pw-busy").quit()


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
