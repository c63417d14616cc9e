"""Helpers shared by the imapd integration tests (tests/integration/test_imapd*.py).

ImapSystem(root) starts one master with imapd services on free ports:
    plain (STARTTLS offered), wrapper (tls_wrappermode=yes, the 993 role),
    strict (imap_pop_tls_security_level=encrypt: LOGINDISABLED before STARTTLS),
    limited (maxproc 1: the connection limit)
and a self-signed certificate; deliveries go through the store directly (deliver()) or
through a real qmgr when `with_qmgr` (smtp service "smtp" then too).
add_user(name, password, **profile) writes the user database directly.
imap(port) / imap_ssl(port) are imaplib clients; login(port, user, password) one logged in;
Raw(port) a line-level client on a plain (or TLS) socket that keeps every octet;
Client(port, user, password) a logged-in Raw whose cmd(text) tags and splits the answer;
run(raw, text) / ok(raw, text) one command's lines (ok: it must succeed); connect(port,
user, password, *setup) a Raw logged in with setup commands done.
"""
from __future__ import annotations

import imaplib
import itertools
import socket
from pathlib import Path

from tests.conftest import MailSystem
from tests.integration.pop3d_support import UsersAndMail, client_tls


class ImapSystem(UsersAndMail):
    def __init__(self, root: Path, main: dict | None = None, with_qmgr: bool = False):
        self.ms = MailSystem(root, main)
        self.plain = self.ms.add_service("imapd", maxproc=8, name="plain")
        self.wrapper = self.ms.add_service("imapd", "-o", "tls_wrappermode=yes", name="wrapper")
        self.strict = self.ms.add_service("imapd", "-o", "imap_pop_tls_security_level=encrypt", name="strict")
        self.limited = self.ms.add_service("imapd", maxproc=1, name="limited")
        if with_qmgr:
            self.ms.add_service("smtpd", name="smtp")
            self.ms.add_unix_service("qmgr", wakeup=60)
        self.ms.write_config()
        self.ms.mailctl("tls", "selfsigned")
        self.ms.start()

    def port(self, key: str = "plain") -> int:
        return self.ms.port(key)


def imap(port: int) -> imaplib.IMAP4:
    return imaplib.IMAP4("127.0.0.1", port, timeout=30)


def imap_ssl(port: int) -> imaplib.IMAP4_SSL:
    return imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=client_tls(), timeout=30)


def login(port: int, user: str, password: str) -> imaplib.IMAP4:
    client = imap(port)
    client.login(user, password)
    return client


class Raw:
    """A line-level IMAP client over a plain socket."""

    def __init__(self, port: int, tls: bool = False):
        sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.sock = client_tls().wrap_socket(sock) if tls else sock
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def line(self) -> bytes:
        return self.file.readline()

    def pushed(self, wait: float) -> bytes:
        """The next line the server sends on its own, within `wait` seconds."""
        self.sock.settimeout(wait)
        try:
            return self.line()
        finally:
            self.sock.settimeout(15)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def until_tagged(self, tag: bytes) -> list[bytes]:
        lines = []
        while True:
            line = self.line()
            if not line:
                raise ConnectionError("closed: " + repr(lines))
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def command(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until_tagged(tag)

    def close(self) -> None:
        self.sock.close()


class Client(Raw):
    """A logged-in line-level client with tags of its own: cmd(text, literal=None) ->
    (untagged lines, the tagged line after its tag), as text; a literal goes as `{n+}`."""

    def __init__(self, port: int, user: str, password: str):
        super().__init__(port)
        self.count = 0
        _, done = self.cmd(f'LOGIN {user} "{password}"')
        assert done.startswith("OK"), done

    def cmd(self, text: str, literal: bytes | None = None) -> tuple[list[str], str]:
        self.count += 1
        tag = f"c{self.count}"
        data = f"{tag} {text}".encode()
        if literal is not None:
            data += b" {%d+}\r\n" % len(literal) + literal
        lines = [line.decode(errors="replace").rstrip("\r\n")
                 for line in self.command(tag.encode(), data[len(tag) + 1:])]
        return lines[:-1], lines[-1][len(tag) + 1:]


_tags = itertools.count(1)


def run(raw: Raw, text: str) -> list[bytes]:
    """One command (a fresh tag added): every line of its answer, the tagged one last."""
    return raw.command(b"t%d" % next(_tags), text.encode())


def ok(raw: Raw, text: str) -> list[bytes]:
    """run() for a command that must succeed."""
    lines = run(raw, text)
    assert lines[-1].split(b" ")[1] == b"OK", (text, lines)
    return lines


def connect(port: int, user: str, password: str, *setup: str) -> Raw:
    """A Raw logged in as user, with the setup commands done (each must succeed)."""
    raw = Raw(port)
    ok(raw, f'LOGIN {user} "{password}"')
    for text in setup:
        ok(raw, text)
    return raw
