"""The worker framework's TLS: wrapper mode before the session, STARTTLS upgrade in it."""
from __future__ import annotations

import socket
import ssl

import pytest

from tests.integration.echo_client import ECHO

pytestmark = pytest.mark.integration


def _client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _lines(sock: socket.socket, count: int) -> list[str]:
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode().splitlines()


@pytest.fixture
def tls_system(mailsystem):
    ms = mailsystem()
    plain = ms.add_service(ECHO, name="plain")
    wrapped = ms.add_service(ECHO, "-o", "tls_wrappermode=yes", name="wrapped")
    ms.write_config()
    ms.mailctl("tls", "selfsigned")
    ms.start()
    return ms, plain, wrapped


def test_wrapper_mode_handshake_before_the_session(tls_system):
    ms, _plain, wrapped = tls_system
    with socket.create_connection(("127.0.0.1", ms.port(wrapped)), timeout=10) as raw:
        with _client_context().wrap_socket(raw) as tls:
            assert _lines(tls, 1)[0].startswith("+OK echo")
            tls.sendall(b"TLS\r\n")
            assert _lines(tls, 1) == [f"+OK {tls.version()}"]


def test_starttls_discards_pipelined_cleartext(tls_system):
    ms, plain, _wrapped = tls_system
    with socket.create_connection(("127.0.0.1", ms.port(plain)), timeout=10) as raw:
        assert _lines(raw, 1)[0].startswith("+OK echo")
        # "INJECTED" travels in clear text behind STARTTLS: it must not count as sent over TLS.
        raw.sendall(b"STARTTLS\r\nINJECTED\r\n")
        assert _lines(raw, 1) == ["+OK begin TLS"]
        with _client_context().wrap_socket(raw) as tls:
            tls.sendall(b"TLS\r\n")
            assert _lines(tls, 1) == [f"+OK {tls.version()}"]


def test_failed_handshake_only_ends_that_connection(tls_system):
    ms, _plain, wrapped = tls_system
    with socket.create_connection(("127.0.0.1", ms.port(wrapped)), timeout=10) as raw:
        raw.sendall(b"this is not a TLS client hello\r\n")
        answer = b""
        while chunk := raw.recv(4096):              # the server closes; bounded by the timeout
            answer += chunk
        assert b"+OK" not in answer
    with socket.create_connection(("127.0.0.1", ms.port(wrapped)), timeout=10) as raw:
        with _client_context().wrap_socket(raw) as tls:
            assert _lines(tls, 1)[0].startswith("+OK echo")
