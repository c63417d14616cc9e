"""Fakes shared by the tests: a client connection without a socket, a log that keeps its lines.

FakeConnection(params, data, eof=True, tls=False, peer_ip="127.0.0.1") is a
workers._session.Connection (tests/unit/workers/test_session.py checks every member). The client's
bytes go into a real asyncio.StreamReader all at once, as a pipelining client sends them;
feed() adds more, eof=False leaves the stream open (a read then waits: for feed(), a
timeout or the drain). read_line and read_command are the real ones (workers/_limits.py,
workers/_server.py), so line limits, timeouts and conn.draining behave as in a worker.
What the session sends collects in `output` (lines(): as text lines); unread() is what it
left of the client's bytes. STARTTLS/STLS sends the go-ahead and sets `tls`, nothing more
(the real connection also drops what the client pipelined behind it); report_login is a
master with no penalty and no refusal. The default peer is loopback (in mynetworks, and
allowed passwords in clear); SMTP tests pass a remote address.
The reader is made on first use, inside the test's event loop; feed() before that adds to
the initial bytes.
"""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from master.params import Params
from store.users import User
from workers._limits import STREAM_LIMIT, read_line
from workers._server import Connection, Drain


class FakeLog:
    def __init__(self):
        self.lines: list[str] = []

    def error(self, text):
        self.lines.append("E " + text)

    def info(self, text):
        self.lines.append("M " + text)

    def debug(self, text):
        self.lines.append("H " + text)


class FakeConnection:
    def __init__(self, params: Params, data: bytes = b"", *, eof: bool = True, tls: bool = False,
                 peer_ip: str = "127.0.0.1"):
        self.params = params
        self.log = FakeLog()
        self.peer_ip = peer_ip
        self.tls = tls
        self.user: str | None = None
        self.output = bytearray()
        self.draining = Drain()
        self._early = data
        self._eof = eof
        self._reader: asyncio.StreamReader | None = None

    @property
    def reader(self) -> asyncio.StreamReader:
        if self._reader is None:
            self._reader = asyncio.StreamReader(limit=STREAM_LIMIT)
            self._reader.feed_data(self._early)
            if self._eof:
                self._reader.feed_eof()
        return self._reader

    def feed(self, data: bytes) -> None:
        if self._reader is None:
            self._early += data
        else:
            self._reader.feed_data(data)

    def unread(self) -> bytes:
        return bytes(self.reader._buffer)      # asyncio has no public way to peek

    def lines(self) -> list[str]:
        return [line for line in self.output.decode("utf-8", "replace").split("\r\n") if line]

    async def read_line(self, limit: int, timeout: float) -> bytes:
        return await read_line(self.reader, limit, timeout)

    read_command = Connection.read_command
    send_line = Connection.send_line

    async def send(self, data: bytes) -> None:
        self.output += data

    async def start_tls(self, go_ahead: bytes) -> None:
        await self.send_line(go_ahead)
        self.tls = True

    def tls_version(self) -> str | None:
        return "TLSv1.3" if self.tls else None

    def tls_cipher(self) -> str | None:
        return "TLS_AES_256_GCM_SHA384" if self.tls else None

    def set_user(self, name: str) -> None:
        self.user = name

    async def report_login(self, ok: bool, user: str | None = None) -> str | None:
        return None


class FakeAccounts:
    """The user database, the alias map and the quota usage behind the Directory."""

    def __init__(self, users: dict[str, User], aliases: dict[str, list[str]], used: dict[str, int]):
        self.users, self.aliases, self.used = users, aliases, used

    def get(self, name):
        return self.users.get(name)

    def lookup(self, name):
        return self.aliases.get(name)

    def usage(self, name):
        return self.used.get(name, 0)


class QuotaUsers:
    """store.users.UserDB's get(): every name is a user with a quota of `quota` bytes, but
    the names in `unlimited` have none."""

    def __init__(self, quota: int, unlimited: tuple[str, ...] = ("carol",)):
        self.quota, self.unlimited = quota, unlimited

    def get(self, name):
        quota = 0 if name in self.unlimited else self.quota
        return SimpleNamespace(name=name, enabled=True, forward=[], keep_copy=False, quota=quota)
