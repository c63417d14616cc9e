"""One POP3 session (RFC 1939): a workers._session.Session with POP3's table and replies.

Session(conn, backend).run() serves a client from greeting to close.
States: AUTHORIZATION (greeting until a login succeeds) -> TRANSACTION (the maildrop is
locked) -> UPDATE (entered only by QUIT: the DELE marks are committed, then the session
ends). Any other end (client gone, timeout, too many errors, server stop) leaves the maildrop as it was.
COMMANDS says where each verb is legal and how many arguments it takes; the base's
dispatcher alone enforces that, the line limit (MAX_LINE, RFC 2449's 255 octets), the error
budget (MAX_BAD_COMMANDS; only the errors answered through bad_command count), pop3d_timeout
(for reading a command; send() puts it on every write: a client that stops reading a RETR
is dropped too) and the graceful stop (conn.draining: a session waiting for its next
command gets `-ERR [SYS/TEMP] Server shutting down` and ends without UPDATE; a command in
progress, a RETR say, is finished first), so the handlers in login.py and transaction.py stay
short. A PASS must come right after its USER: any other line forgets the USER.
`conn` is a workers._session.Connection; `backend` is workers.pop3d.backend.Backend (or a fake).
Diagnostics: replies per RFC 1939/2449/3206 (`-ERR [AUTH]`, `[IN-USE]`, `[SYS/TEMP]`);
logins, failures, logouts and dropped sessions go to pop.log (conn.log).
"""
from __future__ import annotations

import asyncio
import enum

from workers import _session
from workers._auth import apop_timestamp
from workers._session import Command, Connection, Flag, Request
from workers.pop3d import login, transaction
from workers.pop3d.maildrop import Maildrop

MAX_LINE = 255            # RFC 2449: a command line is at most 255 octets with its CRLF
MAX_BAD_COMMANDS = 10     # then the client is dropped
FAREWELL_TIMEOUT = 5.0    # seconds for the last words to a client that timed out


class State(enum.Enum):
    AUTHORIZATION = 1
    TRANSACTION = 2
    UPDATE = 3


A = frozenset({State.AUTHORIZATION})
T = frozenset({State.TRANSACTION})
A_T = A | T

COMMANDS: dict[str, Command] = {
    #               handler                legal in  arguments
    "CAPA": Command(login.capa,            A_T,      (0, 0)),
    "STLS": Command(login.stls,            A,        (0, 0)),
    "USER": Command(login.user,            A,        (1, 1)),
    "PASS": Command(login.password,        A,        (1, 1), Flag.WHOLE_REST),
    "APOP": Command(login.apop,            A,        (2, 2)),
    "AUTH": Command(login.auth,            A,        (0, 2)),
    "QUIT": Command(transaction.quit,      A_T,      (0, 0)),
    "STAT": Command(transaction.stat,      T,        (0, 0)),
    "LIST": Command(transaction.list_,     T,        (0, 1)),
    "UIDL": Command(transaction.uidl,      T,        (0, 1)),
    "RETR": Command(transaction.retr,      T,        (1, 1)),
    "TOP":  Command(transaction.top,       T,        (2, 2)),
    "DELE": Command(transaction.dele,      T,        (1, 1)),
    "RSET": Command(transaction.rset,      T,        (0, 0)),
    "NOOP": Command(transaction.noop,      T,        (0, 0)),
}


class Session(_session.Session):
    commands = COMMANDS
    line_limit = MAX_LINE
    encoding = "utf-8"

    def __init__(self, conn: Connection, backend):
        super().__init__(conn, backend, State.AUTHORIZATION, MAX_BAD_COMMANDS, conn.params.pop3d_timeout)
        self.pending_user: str | None = None       # set by USER, consumed by PASS
        self.user: str | None = None
        self.maildrop: Maildrop | None = None
        self.auth_failures = 0
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
        """An -ERR that counts against the error budget."""
        await self.err(text)
        await self.charge_error()

    async def farewell(self, text: str) -> None:
        """The last -ERR line; the client may have stopped reading: do not wait long."""
        try:
            async with asyncio.timeout(FAREWELL_TIMEOUT):
                await self.conn.send(f"-ERR {text}\r\n".encode())
        except (TimeoutError, ConnectionError):
            pass

    async def too_many_errors(self) -> None:
        await self.err("Too many bad commands, closing the connection")

    async def unknown(self, request: Request) -> None:
        await self.bad_command("Unknown command")

    async def too_long(self) -> None:
        await self.bad_command("Line too long")

    async def wrong_state(self, request: Request, command: Command) -> None:
        await self.bad_command(f"{request.verb} is not valid in the {self.state.name} state")

    async def bad_arguments(self, request: Request) -> None:
        await self.bad_command(f"Syntax error in {request.verb}")

    # -- life cycle
    async def start(self) -> bool:
        greeting = "mailhouse POP3 server ready"
        await self.ok(f"{greeting} {self.apop_timestamp}" if self.apop_timestamp else greeting)
        return True

    async def dispatch(self, request: Request) -> None:
        if request.verb != "PASS":
            self.pending_user = None
        await super().dispatch(request)

    async def timed_out(self) -> None:
        self.log.info(f"timeout: user={self.user or '-'} ip={self.conn.peer_ip}")
        await self.farewell("Disconnected for inactivity")

    async def shutting_down(self) -> None:
        """The master stops: say so and end without UPDATE (the DELE marks are dropped)."""
        self.log.info(f"server shutting down: user={self.user or '-'} ip={self.conn.peer_ip}")
        await self.farewell("[SYS/TEMP] Server shutting down")

    def lost(self) -> None:
        self.log.debug(f"connection lost: user={self.user or '-'} ip={self.conn.peer_ip}")

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
