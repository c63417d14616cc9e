"""imapd's session through the real master: greeting, logins, TLS, states and bad input.

Every login way right and wrong (LOGIN, AUTHENTICATE PLAIN with and without SASL-IR, LOGIN,
CRAM-MD5, SCRAM-SHA-256), logins as user@local-domain, the per-user protocol list,
STARTTLS (and the commands pipelined after it discarded), wrapper mode, LOGINDISABLED before
TLS when required, the post-login CAPABILITY, commands in the wrong state, literals and their
limits, malformed input answered with BAD, the error budget, and the polite refusal over
the connection limit (and `mailctl connections` listing the session).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import imaplib
import socket
import ssl

import pytest

from tests.integration.imapd_support import ImapSystem, Raw, client_tls, imap, imap_ssl
from tests.integration.pop3d_support import scram_client

pytestmark = pytest.mark.integration
PASSWORD = "Right pass 1"


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    running = ImapSystem(tmp_path_factory.mktemp("imapd"))
    yield running
    running.stop()


def sasl(client: imaplib.IMAP4, mechanism: str, answers) -> tuple:
    replies = iter(answers)
    return client.authenticate(mechanism, lambda challenge: next(replies)(challenge))


def checked(answer: tuple) -> tuple:
    """imaplib's low-level commands return NO instead of raising."""
    if answer[0] != "OK":
        raise imaplib.IMAP4.error(repr(answer))
    return answer


# ---------------------------------------------------------------- greeting and logins

def test_greeting_carries_capability_and_login_resends_it(system):
    system.add_user("greet", PASSWORD)
    client = imap(system.port())
    assert client.welcome.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    assert "STARTTLS" in client.capabilities and "AUTH=SCRAM-SHA-256" in client.capabilities
    typ, data = client.login("greet", PASSWORD)
    assert typ == "OK" and data[0].startswith(b"[CAPABILITY IMAP4rev1 ")
    assert b"AUTH=" not in data[0] and b"NAMESPACE" in data[0]
    client.logout()


@pytest.mark.parametrize("way", ["LOGIN", "PLAIN", "PLAIN-IR", "SASL-LOGIN", "CRAM-MD5", "SCRAM-SHA-256"])
def test_every_login_way_right_and_wrong(system, way):
    user = "w" + way.lower().replace("-", "")
    system.add_user(user, PASSWORD)
    for password, works in (("wrong", False), (PASSWORD, True)):
        client = imap(system.port())
        try:
            if way == "LOGIN":
                attempt = lambda: client.login(user, password)
            elif way == "PLAIN":
                attempt = lambda: sasl(client, "PLAIN", [lambda c: f"\0{user}\0{password}".encode()])
            elif way == "PLAIN-IR":
                blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
                attempt = lambda: checked(client._simple_command("AUTHENTICATE", "PLAIN", blob))
            elif way == "SASL-LOGIN":
                attempt = lambda: sasl(client, "LOGIN", [lambda c: user.encode(), lambda c: password.encode()])
            elif way == "CRAM-MD5":
                attempt = lambda: sasl(client, "CRAM-MD5", [
                    lambda c: f"{user} {hmac.new(password.encode(), c, hashlib.md5).hexdigest()}".encode()])
            else:
                first, answer = scram_client(user, password)
                attempt = lambda: sasl(client, "SCRAM-SHA-256", [lambda c: first, answer, answer])
            if works:
                typ, data = attempt()
                assert typ == "OK"
                client.state = "AUTH"   # imaplib does not know of the raw AUTHENTICATE
                assert client.select("INBOX")[0] == "OK"
            else:
                with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
                    attempt()
        finally:
            client.shutdown()
    assert f"login: user={user}" in system.ms.wait_for_log("imap", f"login: user={user}")


def test_login_with_a_local_domain_is_the_same_user(system):
    system.add_user("dom", PASSWORD)
    client = imap(system.port())
    client.login("dom@example.test", PASSWORD)
    assert client.select("INBOX")[0] == "OK"
    client.logout()


def test_a_user_without_imap_is_refused_after_proving_the_password(system):
    system.add_user("poponly", PASSWORD, protocols=["pop"])
    client = imap(system.port())
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.login("poponly", "wrong")
    with pytest.raises(imaplib.IMAP4.error, match="AUTHORIZATIONFAILED"):
        client.login("poponly", PASSWORD)
    client.shutdown()


def test_three_failed_logins_close_the_connection(system):
    raw = Raw(system.port())
    for n in range(3):
        lines = raw.command(b"a%d" % n, b"LOGIN nobody wrong")
        assert b"[AUTHENTICATIONFAILED]" in lines[-1]
    assert raw.line().startswith(b"* BYE")
    assert raw.line() == b""


# ---------------------------------------------------------------- TLS

def test_starttls_then_login_and_pipelined_commands_are_discarded(system):
    system.add_user("tlsuser", PASSWORD)
    raw = Raw(system.port())
    raw.send(b"a STARTTLS\r\nb LOGIN tlsuser \"Right pass 1\"\r\n")
    assert raw.line().startswith(b"a OK")
    raw.sock = client_tls().wrap_socket(raw.sock)
    raw.file = raw.sock.makefile("rb")
    lines = raw.command(b"c", b"NOOP")
    assert lines == [b"c OK NOOP completed\r\n"], "the pipelined LOGIN must not have run"
    caps = raw.command(b"d", b"CAPABILITY")
    assert b"STARTTLS" not in caps[0] and b"LOGINDISABLED" not in caps[0]
    assert raw.command(b"e", b'LOGIN tlsuser "Right pass 1"')[-1].startswith(b"e OK")
    raw.close()


def test_wrapper_mode_port(system):
    system.add_user("wrapped", PASSWORD)
    client = imap_ssl(system.port("wrapper"))
    assert "STARTTLS" not in client.capabilities
    client.login("wrapped", PASSWORD)
    client.logout()


def test_logindisabled_before_tls_when_required(system):
    system.add_user("strictuser", PASSWORD)
    client = imap(system.port("strict"))
    assert "LOGINDISABLED" in client.capabilities
    assert not [c for c in client.capabilities if c.startswith("AUTH=")]
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        client.login("strictuser", PASSWORD)
    client.starttls(ssl_context=client_tls())
    assert "LOGINDISABLED" not in client.capabilities
    client.login("strictuser", PASSWORD)
    client.logout()


# ---------------------------------------------------------------- states and bad input

def test_commands_in_the_wrong_state_get_bad(system):
    raw = Raw(system.port())
    assert raw.command(b"a", b"SELECT INBOX")[-1].startswith(b"a BAD")
    assert raw.command(b"b", b"FETCH 1 FLAGS")[-1].startswith(b"b BAD")
    raw.close()


@pytest.mark.parametrize("line", [
    b"", b"a", b"a NOSUCHCOMMAND", b"a LOGIN", b"a LOGIN \"unterminated", b"a LOGIN (a b) c",
    b"* NOOP", b"a CAPABILITY extra", b"a ID (\"k\")", b"a ENABLE", b"\x00\xff NOOP",
])
def test_malformed_commands_get_bad_and_the_session_goes_on(system, line):
    raw = Raw(system.port())
    raw.send(line + b"\r\n")
    answer = raw.line()
    assert answer.split(b" ")[1] == b"BAD", answer
    assert raw.command(b"z", b"NOOP")[-1] == b"z OK NOOP completed\r\n"
    raw.close()


def test_literals_synchronising_and_plus(system):
    system.add_user("literal", PASSWORD)
    raw = Raw(system.port())
    raw.send(b"a LOGIN {7}\r\n")
    assert raw.line() == b"+ OK\r\n"
    raw.send(b"literal {12+}\r\nRight pass 1\r\n")
    assert raw.until_tagged(b"a")[-1].startswith(b"a OK")
    raw.close()


def test_oversized_literal_is_refused(system):
    raw = Raw(system.port())
    raw.send(b"a LOGIN {999999999}\r\n")
    assert raw.line().startswith(b"a BAD [TOOBIG]")
    assert raw.command(b"b", b"NOOP")[-1].startswith(b"b OK")
    raw.close()


def test_too_long_line_and_error_budget(system):
    raw = Raw(system.port())
    raw.send(b"a NOOP " + b"x" * 70_000 + b"\r\n")
    assert b"BAD" in raw.line()
    # the budget is 20 errors: the long line and 19 unknown commands spend it (no more are
    # sent: input left unread when the server closes would reset the connection)
    raw.send(b"".join(b"x%d BOGUS\r\n" % n for n in range(19)))
    lines = [raw.line() for _ in range(20)]
    assert all(line.startswith(b"x%d BAD" % n) for n, line in enumerate(lines[:19])), lines
    assert lines[19].startswith(b"* BYE") and raw.line() == b""
    raw.close()


def test_id_enable_namespace_logout(system):
    system.add_user("misc", PASSWORD)
    raw = Raw(system.port())
    lines = raw.command(b"a", b'ID ("name" "pytest" "version" "1")')
    assert lines[0].startswith(b'* ID ("name" "mailhouse"') and lines[-1].startswith(b"a OK")
    assert raw.command(b"b", b'LOGIN misc "Right pass 1"')[-1].startswith(b"b OK")
    assert raw.command(b"c", b"ENABLE NOSUCHTHING")[0] == b"* ENABLED\r\n"
    lines = raw.command(b"d", b"LOGOUT")
    assert lines[0].startswith(b"* BYE") and lines[-1].startswith(b"d OK")
    raw.close()


def test_connection_limit_polite_refusal_and_mailctl_connections(system):
    system.add_user("counted", PASSWORD)
    port = system.port("limited")
    first = imap(port)
    try:
        first.login("counted", PASSWORD)
        second = socket.create_connection(("127.0.0.1", port), timeout=10)
        with second, second.makefile("rb") as lines:
            assert lines.readline() == b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"
            assert lines.readline() == b""
        shown = system.ms.mailctl("connections").stdout
        assert "counted" in shown and "imap" in shown and "127.0.0.1" in shown
        assert first.noop()[0] == "OK"
    finally:
        first.logout()
