"""One POP3 session (RFC 1939): the state machine and its command table.

Session(conn, backend).run() serves a client from greeting to close.
States: AUTHORIZATION (greeting until a login succeeds) -> TRANSACTION (the maildrop is
locked) -> UPDATE (entered only by QUIT: the DELE marks are committed, then the session
ends). Any other end (client gone, timeout, too many errors, server stop) leaves the maildrop as it was.
COMMANDS says where each verb is legal and how many arguments it takes; the dispatcher
alone enforces that, the line limit (MAX_LINE, RFC 2449's 255 octets), the error budget and
pop3d_timeout (for reading a command and for every write: a client that stops reading a
RETR is dropped too) and the graceful stop (conn.draining: a session waiting for its next
command gets `-ERR [SYS/TEMP] Server shutting down` and ends without UPDATE; a command in
progress, a RETR say, is finished first), so the handlers in login.py and transaction.py stay short.
`conn` is a workers._server.Connection (the unit tests pass a fake with the same members);
`backend` is workers.pop3d.backend.Backend (or a fake).
Diagnostics: replies per RFC 1939/2449/3206 (`-ERR [AUTH]`, `[IN-USE]`, `[SYS/TEMP]`);
logins, failures, logouts and dropped sessions go to pop.log (conn.log).
"""
from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import Awaitable, Callable

from workers._auth import apop_timestamp
from workers._limits import ErrorBudget, LineTooLong
from workers.pop3d import login, transaction
from workers.pop3d.maildrop import Maildrop

MAX_LINE = 255            # RFC 2449: a command line is at most 255 octets with its CRLF
MAX_BAD_COMMANDS = 10     # then the client is dropped
FAREWELL_TIMEOUT = 5.0    # seconds for the last words to a client that timed out


class State(enum.Enum):
    AUTHORIZATION = 1
    TRANSACTION = 2
    UPDATE = 3


A, T = State.AUTHORIZATION, State.TRANSACTION
Handler = Callable[["Session", list[str]], Awaitable[None]]


@dataclass(frozen=True)
class Cmd:
    handler: Handler
    states: frozenset[State]
    min_args: int = 0
    max_args: int = 0
    rest_is_one_arg: bool = False     # PASS: the password may contain spaces


COMMANDS: dict[str, Cmd] = {
    #          handler                 legal in                  args
    "CAPA": Cmd(login.capa,            frozenset({A, T})),
    "STLS": Cmd(login.stls,            frozenset({A})),
    "USER": Cmd(login.user,            frozenset({A}),           1, 1),
    "PASS": Cmd(login.password,        frozenset({A}),           1, 1, rest_is_one_arg=True),
    "APOP": Cmd(login.apop,            frozenset({A}),           2, 2),
    "AUTH": Cmd(login.auth,            frozenset({A}),           0, 2),
    "QUIT": Cmd(transaction.quit,      frozenset({A, T})),
    "STAT": Cmd(transaction.stat,      frozenset({T})),
    "LIST": Cmd(transaction.list_,     frozenset({T}),           0, 1),
    "UIDL": Cmd(transaction.uidl,      frozenset({T}),           0, 1),
    "RETR": Cmd(transaction.retr,      frozenset({T}),           1, 1),
    "TOP":  Cmd(transaction.top,       frozenset({T}),           2, 2),
    "DELE": Cmd(transaction.dele,      frozenset({T}),           1, 1),
    "RSET": Cmd(transaction.rset,      frozenset({T})),
    "NOOP": Cmd(transaction.noop,      frozenset({T})),
}


class Session:
    def __init__(self, conn, backend):
        self.conn = conn
        self.backend = backend
        self.params = conn.params
        self.log = conn.log
        self.state = State.AUTHORIZATION
        self.closing = False
        self.pending_user: str | None = None       # set by USER, consumed by PASS
        self.user: str | None = None
        self.maildrop: Maildrop | None = None
        self.auth_failures = 0
        self.errors = ErrorBudget(MAX_BAD_COMMANDS)
        self.apop_timestamp = apop_timestamp(self.params.myhostname) if login.offers(self, "APOP") else None
        self.counts = {"retr": 0, "top": 0, "dele": 0}

    # -- replies
    async def send(self, data: bytes) -> None:
        """Bytes to the client; one that stops reading for pop3d_timeout is dropped.
        asyncio.timeout, not wait_for: no extra task, so a write that need not wait does not
        yield to the loop (STLS relies on that: the client's handshake must not be read
        into the plain-text buffer between "+OK Begin TLS" and the upgrade)."""
        async with asyncio.timeout(self.params.pop3d_timeout):
            await self.conn.send(data)

    async def ok(self, text: str = "") -> None:
        await self.send(("+OK " + text).rstrip().encode("utf-8") + b"\r\n")

    async def err(self, text: str) -> None:
        await self.send(("-ERR " + text).encode("utf-8") + b"\r\n")

    async def bad_command(self, text: str) -> None:
        await self.err(text)
        if self.errors.charge():
            await self.err("Too many bad commands, closing the connection")
            self.closing = True

    # -- life cycle
    async def run(self) -> None:
        greeting = "mailhouse POP3 server ready"
        await self.ok(f"{greeting} {self.apop_timestamp}" if self.apop_timestamp else greeting)
        try:
            while not self.closing:
                try:
                    line = await self.conn.read_command(MAX_LINE, self.params.pop3d_timeout)
                except LineTooLong:
                    await self.bad_command("Line too long")
                    continue
                if line is None:
                    await self.shutting_down()
                    return
                if not line:
                    return
                await self.dispatch(line)
        except TimeoutError:
            self.log.info(f"timeout: user={self.user or '-'} ip={self.conn.peer_ip}")
            await self.farewell("Disconnected for inactivity")
        finally:
            self.end()

    async def shutting_down(self) -> None:
        """The master stops: say so and end without UPDATE (the DELE marks are dropped)."""
        self.log.info(f"server shutting down: user={self.user or '-'} ip={self.conn.peer_ip}")
        await self.farewell("[SYS/TEMP] Server shutting down")

    async def farewell(self, text: str) -> None:
        """The last -ERR line; the client may have stopped reading: do not wait long."""
        try:
            async with asyncio.timeout(FAREWELL_TIMEOUT):
                await self.conn.send(f"-ERR {text}\r\n".encode())
        except (TimeoutError, ConnectionError):
            pass

    async def dispatch(self, line: bytes) -> None:
        text = line.rstrip(b"\r\n").decode("utf-8", "replace")
        verb, _, rest = text.partition(" ")
        verb = verb.upper() if verb.isascii() else ""      # no Unicode case folding ("lıst" is no LIST)
        if verb != "PASS":
            self.pending_user = None
        cmd = COMMANDS.get(verb)
        if cmd is None:
            await self.bad_command("Unknown command")
            return
        if self.state not in cmd.states:
            await self.bad_command(f"{verb} is not valid in the {self.state.name} state")
            return
        args = [rest] if cmd.rest_is_one_arg and rest else rest.split()
        if not cmd.min_args <= len(args) <= cmd.max_args:
            await self.bad_command(f"Syntax error in {verb}")
            return
        await cmd.handler(self, args)

    @property
    def logged_in(self) -> bool:
        return self.state is not State.AUTHORIZATION

    def enter_transaction(self, user: str, maildrop: Maildrop) -> None:
        self.state = State.TRANSACTION
        self.user = user
        self.maildrop = maildrop
        self.conn.set_user(user)

    def enter_update(self) -> None:
        self.state = State.UPDATE
        self.closing = True

    def end(self) -> None:
        """Close down: the lock goes; only a QUIT (UPDATE state) has deleted anything."""
        if self.maildrop is None:
            return
        if self.state is not State.UPDATE:
            marked = sum(1 for e in self.maildrop.messages if e.deleted)
            self.log.info(f"disconnected without QUIT: user={self.user} ip={self.conn.peer_ip} "
                          f"retr={self.counts['retr']} kept={marked} marked messages")
        self.maildrop.release()
        self.maildrop = None
