"""The base of the protocol sessions of smtpd, pop3d and imapd.

Connection is what a session may use of its client connection: workers._server.Connection
is the real one, tests/fakes.py FakeConnection the tests' one (tests/unit/workers/test_session.py
checks that both have every member).

A protocol's Session subclass gives its state enum, its command table `commands` (verb ->
Command: handler, legal states, argument rule, flags), the longest command line
`line_limit`, the `encoding` of command lines, and the hooks below; run() serves one client:
start() greets (False: the session is over at once); then every line read by
conn.read_command is parsed (parse(): verb and rest) and dispatched, and the base alone
enforces, in this order:
    a line longer than any command may be is dropped unread: too_long()
    a verb not in the table: unknown()
    a line longer than the command's max_line (else line_limit): too_long()
    a state not in the command's states: wrong_state() (command.otherwise may name the
        protocol's own answer per state)
    an argument count outside the command's arity: bad_arguments()
    a TLS_FIRST command while tls_required(): must_use_tls()
and then awaits command.handler(session, args). The refusal hooks send the protocol's reply
and charge the error budget where the protocol counts the error (charge_error(): once
error_limit is spent, too_many_errors() says the protocol's goodbye and the session ends).
The session ends when the client quits or goes away (lost()), when a read or write times
out (timed_out(): the timeout is `timeout` for every command read; the protocols put their
own on writes and inner reads), when the master stops while the session waits for a command
(shutting_down(); a command in progress is finished first), after a command that set
`closing`, or at once when a handler raises Close (after its last reply). end() runs always.
Counts of the verbs dispatched are kept in `verbs` ("unknown" for the rest), for the logs.
IMAP (workers/imapd/session.py) reuses run(), serve(), the error budget, Close and the
Command table with its legal states; its next_line() and request() read a command with its
literals through its parser instead of splitting a line into words, and its dispatch()
answers with tags.
Diagnostics: none here; the protocol's hooks log and answer.
"""
from __future__ import annotations

import asyncio
import enum
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from master.params import Params
from workers._limits import ErrorBudget, LineTooLong
from workers._log import Log


@runtime_checkable
class Connection(Protocol):
    """The members of a client connection that sessions use (see workers/_server.py)."""

    reader: asyncio.StreamReader      # for what is not a command line (SMTP DATA, pregreet)
    params: Params
    log: Log
    peer_ip: str

    @property
    def tls(self) -> bool: ...

    def tls_version(self) -> str | None: ...

    def tls_cipher(self) -> str | None: ...

    async def start_tls(self, go_ahead: bytes) -> None: ...

    def set_user(self, name: str) -> None: ...

    async def report_login(self, ok: bool, user: str | None = None) -> str | None: ...

    async def read_line(self, limit: int, timeout: float) -> bytes: ...

    async def read_command(self, limit: int, timeout: float) -> bytes | None: ...

    async def send(self, data: bytes) -> None: ...

    async def send_line(self, line: bytes) -> None: ...


class Close(Exception):
    """End the session now; the reply (if any) has been sent."""


class Flag(enum.Flag):
    NONE = 0
    TLS_FIRST = enum.auto()     # refused (must_use_tls) while the protocol requires TLS first
    WHOLE_REST = enum.auto()    # the rest of the line is one argument (POP3 PASS: spaces in passwords)


Handler = Callable[[Any, Any], Awaitable[None]]


@dataclass(frozen=True)
class Command:
    handler: Handler                         # await handler(session, args)
    states: frozenset                        # the states the command is legal in
    arity: tuple[int, int] | None = None     # (min, max) words; None: the rest of the line as one string
    flags: Flag = Flag.NONE
    max_line: int | None = None              # a longer line than the session's line_limit (SMTP AUTH)
    otherwise: Mapping[Any, Any] = field(default_factory=dict)   # state -> the protocol's refusal there


@dataclass(frozen=True)
class Request:
    line: bytes        # as read, line end included
    verb: str          # upper case; "" unless the line starts with ASCII
    rest: str          # what follows the verb and one space


class Session:
    commands: ClassVar[Mapping[str, Command]]
    line_limit: ClassVar[int]          # the longest command line, line end included
    encoding: ClassVar[str]            # of the command lines (decoded with "replace")

    def __init__(self, conn: Connection, backend, state: enum.Enum, error_limit: int, timeout: float):
        self.conn = conn
        self.backend = backend
        self.params = conn.params
        self.log = conn.log
        self.state = state
        self.timeout = timeout
        self.errors = ErrorBudget(error_limit)
        self.closing = False
        self.verbs: Counter[str] = Counter()
        self.read_limit = max([self.line_limit, *(c.max_line or 0 for c in self.commands.values())])

    async def run(self) -> None:
        try:
            if await self.start():
                await self.serve()
        except Close:
            pass
        except TimeoutError:
            await self.timed_out()
        except (ConnectionError, asyncio.IncompleteReadError):
            self.lost()
        finally:
            self.end()

    async def serve(self) -> None:
        while not self.closing:
            try:
                line = await self.next_line()
            except LineTooLong:
                await self.too_long()
                continue
            if line is None:
                await self.shutting_down()
                return
            if not line:
                return
            request = await self.request(line)
            if request is not None:
                await self.dispatch(request)

    async def next_line(self) -> bytes | None:
        """The first line of the next command (None: the master stops; b"": the client left)."""
        return await self.conn.read_command(self.read_limit, self.timeout)

    async def request(self, line: bytes):
        """What dispatch() takes for a command that starts with line (None: nothing to run)."""
        return self.parse(line)

    def parse(self, line: bytes) -> Request:
        text = line.rstrip(b"\r\n").decode(self.encoding, "replace")
        verb, _, rest = text.partition(" ")
        return Request(line, verb.upper() if verb.isascii() else "", rest)   # no Unicode case folding

    async def dispatch(self, request: Request) -> None:
        command = self.commands.get(request.verb)
        if command is None:
            self.verbs["unknown"] += 1
            await self.unknown(request)
            return
        self.verbs[request.verb] += 1
        args = self.arguments(command, request.rest)
        if len(request.line) > (command.max_line or self.line_limit):
            await self.too_long()
        elif self.state not in command.states:
            await self.wrong_state(request, command)
        elif args is None:
            await self.bad_arguments(request)
        elif Flag.TLS_FIRST in command.flags and self.tls_required():
            await self.must_use_tls(request)
        else:
            await command.handler(self, args)

    def arguments(self, command: Command, rest: str) -> str | list[str] | None:
        """The handler's arguments: the rest of the line stripped, or its words when the
        command has an arity; None when their number is outside it."""
        if command.arity is None:
            return rest.strip()
        words = [rest] if Flag.WHOLE_REST in command.flags and rest else rest.split()
        low, high = command.arity
        return words if low <= len(words) <= high else None

    async def charge_error(self) -> None:
        """One client error; once the budget is spent: the goodbye, and the session ends."""
        if self.errors.charge():
            await self.too_many_errors()
            raise Close

    # -- what the protocol provides
    async def start(self) -> bool:
        """Greet the client; False: the session ends without a command."""
        raise NotImplementedError

    def end(self) -> None:
        """The session is over, however it ended: release what it holds, log."""
        raise NotImplementedError

    async def unknown(self, request: Request) -> None:
        raise NotImplementedError

    async def too_long(self) -> None:
        raise NotImplementedError

    async def wrong_state(self, request: Request, command: Command) -> None:
        raise NotImplementedError

    async def bad_arguments(self, request: Request) -> None:
        """Only for protocols with a command that has an arity."""
        raise NotImplementedError

    def tls_required(self) -> bool:
        """Only for protocols with a TLS_FIRST command."""
        raise NotImplementedError

    async def must_use_tls(self, request: Request) -> None:
        """Only for protocols with a TLS_FIRST command."""
        raise NotImplementedError

    async def too_many_errors(self) -> None:
        raise NotImplementedError

    async def timed_out(self) -> None:
        raise NotImplementedError

    async def shutting_down(self) -> None:
        raise NotImplementedError

    def lost(self) -> None:
        """The client went away (no reply possible)."""
        raise NotImplementedError
