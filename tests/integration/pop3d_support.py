"""Helpers shared by the pop3d integration tests (tests/integration/test_pop3d*.py).

PopSystem(factory root) starts one master with six pop3d services on free ports:
    plain (maxproc 8), wrapper (tls_wrappermode=yes, the 995 role),
    strict (imap_pop_tls_security_level=encrypt), limited (maxproc 1),
    narrow (disable_plaintext_auth_exceptions=127.0.0.1/32: clients from 127.0.0.2 count
    as remote), locking (pop3_lock_session=yes)
and a self-signed certificate. A module-scoped fixture shares it; every test uses its own
user (add_user), so maildrops never meet.
add_user writes the user database directly (quick; test_pop3d.py also goes through mailctl)
and deliver(user, *corpus names) puts messages into INBOX through store.mailstore (both from
UsersAndMail, which ImapSystem in imapd_support.py shares).
pop(port, source=None) / pop_ssl(port) are poplib clients (source: the address to connect from); sasl(client, mechanism, ...) runs AUTH
PLAIN / CRAM-MD5 / SCRAM-SHA-256 (a small RFC 5802 client) over poplib's line primitives.
raw_retr(port, user, password, n) -> (LIST size, exact RETR octets) over a plain socket.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import poplib
import secrets
import socket
import ssl
import time
from pathlib import Path

from store.mailstore import INBOX, MailStore
from store.users import User, UserDB
from tests.conftest import CORPUS, MailSystem


def client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class UsersAndMail:
    """What the POP3 and IMAP test systems share over their MailSystem (self.ms): users
    written into the user database directly, and corpus messages delivered into a mailbox."""
    ms: MailSystem

    def add_user(self, name: str, password: str, **profile) -> None:
        with UserDB(str(self.ms.var / "users"), str(self.ms.var / "secret.key")) as db:
            db.add(User(name, **profile), password)

    def store(self) -> MailStore:
        return MailStore(self.ms.var / "store", self.ms.var / "index")

    def deliver(self, user: str, *names: str, mailbox: str = INBOX) -> list[int]:
        store = self.store()
        try:
            return [store.deliver(user, mailbox, (CORPUS / name).read_bytes()) for name in names]
        finally:
            store.index.close()

    def stop(self) -> None:
        self.ms.stop()
        self.ms.kill()


class PopSystem(UsersAndMail):
    def __init__(self, root: Path, main: dict | None = None):
        self.ms = MailSystem(root, main)
        self.plain = self.ms.add_service("pop3d", maxproc=8, name="plain")
        self.wrapper = self.ms.add_service("pop3d", "-o", "tls_wrappermode=yes", name="wrapper")
        self.strict = self.ms.add_service("pop3d", "-o", "imap_pop_tls_security_level=encrypt", name="strict")
        self.limited = self.ms.add_service("pop3d", maxproc=1, name="limited")
        self.narrow = self.ms.add_service("pop3d", "-o", "disable_plaintext_auth_exceptions=127.0.0.1/32",
                                          name="narrow")
        self.locking = self.ms.add_service("pop3d", "-o", "pop3_lock_session=yes", name="locking")
        self.ms.write_config()
        self.ms.mailctl("tls", "selfsigned")
        self.ms.start()

    def port(self, key: str) -> int:
        return self.ms.port(key)


    def count(self, user: str) -> int:
        store = self.store()
        try:
            return len(store.open_mailbox(user, INBOX))
        finally:
            store.index.close()


class _BoundPOP3(poplib.POP3):
    """poplib connecting from a given local address (127.0.0.2: not loopback's 127.0.0.1)."""

    def __init__(self, port: int, timeout: float, source: str):
        self.source = source
        super().__init__("127.0.0.1", port, timeout=timeout)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))


def pop(port: int, timeout: float = 10, source: str | None = None) -> poplib.POP3:
    if source:
        return _BoundPOP3(port, timeout, source)
    return poplib.POP3("127.0.0.1", port, timeout=timeout)


def pop_ssl(port: int, timeout: float = 10) -> poplib.POP3_SSL:
    return poplib.POP3_SSL("127.0.0.1", port, timeout=timeout, context=client_tls())


def login(port: int, user: str, password: str, attempts: int = 50) -> poplib.POP3:
    """USER/PASS, waiting (bounded) while a dropped session still holds an exclusive lock
    (pop3_lock_session; the server sees the drop only when it next reads). After a QUIT the
    lock is already free: pass attempts=1 to check that."""
    for _ in range(attempts):
        client = pop(port)
        client.user(user)
        try:
            client.pass_(password)
            return client
        except poplib.error_proto as e:
            client.close()
            if b"[IN-USE]" not in e.args[0]:
                raise
            time.sleep(0.1)
    raise AssertionError(f"{user}'s maildrop stayed locked")


# ---------------------------------------------------------------- SASL over poplib

def _exchange(client: poplib.POP3, first: str, answer) -> bytes:
    """Send `AUTH ...`; for every `+ challenge` send answer(challenge); return the final line."""
    client._putcmd(first)
    while True:
        line, _ = client._getline()
        if not line.startswith(b"+ ") and line != b"+":
            if line.startswith(b"-ERR"):
                raise poplib.error_proto(line)
            return line
        client._putcmd(base64.b64encode(answer(base64.b64decode(line[2:]))).decode())


def auth_plain(client: poplib.POP3, user: str, password: str) -> bytes:
    blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return _exchange(client, f"AUTH PLAIN {blob}", lambda c: b"")


def auth_cram_md5(client: poplib.POP3, user: str, password: str) -> bytes:
    def answer(challenge: bytes) -> bytes:
        return f"{user} {hmac.new(password.encode(), challenge, 'md5').hexdigest()}".encode()
    return _exchange(client, "AUTH CRAM-MD5", answer)


def scram_client(user: str, password: str):
    """An RFC 5802/7677 client: (initial response, answer(challenge) -> response); the
    answer to the server-final message checks the server's signature."""
    nonce = base64.b64encode(secrets.token_bytes(18)).decode()
    first_bare = f"n={user},r={nonce}"
    state: dict = {}

    def answer(challenge: bytes) -> bytes:
        text = challenge.decode()
        if text.startswith("v="):
            assert base64.b64decode(text[2:]) == state["server_signature"], "bad server signature"
            return b""
        attrs = dict(item.split("=", 1) for item in text.split(","))
        assert attrs["r"].startswith(nonce)
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored = hashlib.sha256(client_key).digest()
        final_bare = f"c={base64.b64encode(b'n,,').decode()},r={attrs['r']}"
        auth_message = f"{first_bare},{text},{final_bare}".encode()
        proof = bytes(a ^ b for a, b in zip(client_key, hmac.new(stored, auth_message, "sha256").digest()))
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        state["server_signature"] = hmac.new(server_key, auth_message, "sha256").digest()
        return f"{final_bare},p={base64.b64encode(proof).decode()}".encode()

    return f"n,,{first_bare}".encode(), answer


def auth_scram(client: poplib.POP3, user: str, password: str) -> bytes:
    first, answer = scram_client(user, password)
    return _exchange(client, f"AUTH SCRAM-SHA-256 {base64.b64encode(first).decode()}", answer)


# ---------------------------------------------------------------- exact octets

class RawPop:
    """A line-level POP3 client on a plain socket that keeps every octet."""

    def __init__(self, port: int, timeout: float = 10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.greeting = self.line()

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def command(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def multiline(self) -> bytes:
        """Everything up to and without the terminating CRLF.CRLF, still byte-stuffed."""
        while b"\r\n.\r\n" not in self.buffer and not self.buffer.startswith(b".\r\n"):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside a multi-line reply")
            self.buffer += chunk
        if self.buffer.startswith(b".\r\n"):
            self.buffer = self.buffer[3:]
            return b""
        body, self.buffer = self.buffer.split(b"\r\n.\r\n", 1)
        return body + b"\r\n"

    def close(self) -> None:
        self.sock.close()
