"""One IMAP session (RFC 3501, RFC 9051): a workers._session.Session with IMAP's grammar.

Session(conn, backend).run() serves a client from greeting to LOGOUT.
States: NOT_AUTHENTICATED -> AUTHENTICATED (a login succeeded) <-> SELECTED (a mailbox is
open: self.selected, workers/imapd/selected.py) -> LOGOUT. COMMANDS says where each
command is legal; the base's loop, error budget and state check serve IMAP as they serve
POP3, but a command is read by workers/imapd/parser.py (tags, literals with `+ OK`
continuations, limits) instead of being split into words, so read_request and dispatch are
IMAP's own here.
Handlers are `async def handler(session, command)` (command: parser.Command; its args are
parser tokens) in the modules of this package; they answer through
    session.untagged(bytes)          one `* ...` response (CRLF added)
    session.send(bytes)              raw response bytes (FETCH's batches, literals)
    session.ok(text, code=None)      the tagged OK, after the mailbox updates (see below)
    session.no(text, code=None), session.bad(text, code=None)   tagged NO / BAD
    session.continuation(text)       `+ text`
Responses are gathered and written together (one send for a command's untagged responses
and its completion): flush() writes them. Tagged responses, continuations, `* BYE`, the
pushes of IDLE and NOTIFY (idle.read_pushing) and OUT_BUFFER bytes waiting flush, and so does
the wait for the next command: nothing is left unwritten while the session waits for the client.
A parser.Bad raised by a handler is answered as BAD (or NO) with its code: handlers raise it
for a malformed argument. Mailbox updates (new messages, flag changes, expunges made by
other sessions, qmgr or POP3) are sent before every tagged OK and NO while a mailbox is
selected, except that EXPUNGE responses wait while the command is FETCH, STORE or SEARCH
(RFC 3501 7.4.1): they wait for a later command; the rest of the update goes out (selected.py).
After NOTIFY SET (workers/imapd/notify.py) the updates it asks for are also pushed while the
session waits for the next command line (idle.read_pushing), never inside a command's responses.
Limits: the parser's (line, literal, APPEND size = message_size_limit, a MULTIAPPEND's
together MULTIAPPEND_TOTAL or one message's, nesting, tokens),
MAX_BAD_COMMANDS errors, imapd_timeout for every command read (RFC 9051: at least 30
minutes), the master's graceful stop (`* BYE Server shutting down`).
Diagnostics: imap.log (conn.log) has logins, failures, logouts, timeouts and dropped sessions.
"""
from __future__ import annotations

import asyncio
import enum
import time

from workers import _session
from workers._limits import STREAM_LIMIT
from workers._session import Close, Command, Connection
from workers.imapd import acl, capability, compress, fetch, folders, general, idle, login, messages, notify, quota, search, sort, thread
from workers.imapd.parser import Bad, Limits, read_command
from workers.imapd import parser

MAX_BAD_COMMANDS = 20        # then `* BYE Too many invalid commands`
WRITE_TIMEOUT = 300.0        # seconds a client may take to read one response
FAREWELL_TIMEOUT = 5.0
OUT_BUFFER = 64 * 1024       # response bytes gathered before they are written without a flush()
MULTIAPPEND_TOTAL = 64 * 1024 * 1024     # the messages of one APPEND together (each <= message_size_limit)


class State(enum.Enum):
    NOT_AUTHENTICATED = 1
    AUTHENTICATED = 2
    SELECTED = 3
    LOGOUT = 4


N = frozenset({State.NOT_AUTHENTICATED})
A = frozenset({State.AUTHENTICATED})
S = frozenset({State.SELECTED})
ANY = N | A | S
A_S = A | S

COMMANDS: dict[str, Command] = {
    #                        handler                     legal in
    "CAPABILITY":   Command(capability.capability,      ANY),
    "NOOP":         Command(general.noop,               ANY),
    "LOGOUT":       Command(general.logout,             ANY),
    "ID":           Command(general.id_,                ANY),
    "STARTTLS":     Command(login.starttls,             N),
    "LOGIN":        Command(login.login,                N),
    "AUTHENTICATE": Command(login.authenticate,         N),
    "ENABLE":       Command(general.enable,             A_S),
    "NAMESPACE":    Command(folders.namespace,          A_S),
    "SELECT":       Command(folders.select,             A_S),
    "EXAMINE":      Command(folders.select,             A_S),
    "CREATE":       Command(folders.create,             A_S),
    "DELETE":       Command(folders.delete,             A_S),
    "RENAME":       Command(folders.rename,             A_S),
    "SUBSCRIBE":    Command(folders.subscribe,          A_S),
    "UNSUBSCRIBE":  Command(folders.unsubscribe,        A_S),
    "LIST":         Command(folders.list_,              A_S),
    "LSUB":         Command(folders.lsub,               A_S),
    "STATUS":       Command(folders.status,             A_S),
    "GETQUOTAROOT": Command(quota.getquotaroot,         A_S),
    "GETQUOTA":     Command(quota.getquota,             A_S),
    "SETQUOTA":     Command(quota.setquota,             A_S),
    "APPEND":       Command(messages.append,            A_S),
    "SETACL":       Command(acl.setacl,                 A_S),
    "DELETEACL":    Command(acl.deleteacl,              A_S),
    "GETACL":       Command(acl.getacl,                 A_S),
    "LISTRIGHTS":   Command(acl.listrights,             A_S),
    "MYRIGHTS":     Command(acl.myrights,               A_S),
    "IDLE":         Command(idle.idle,                  A_S),
    "COMPRESS":     Command(compress.compress,          A_S),
    "NOTIFY":       Command(notify.notify,              A_S),
    "CHECK":        Command(general.check,              S),
    "CLOSE":        Command(messages.close,             S),
    "UNSELECT":     Command(messages.unselect,          S),
    "EXPUNGE":      Command(messages.expunge,           S),
    "UID EXPUNGE":  Command(messages.expunge,           S),
    "SEARCH":       Command(search.search,              S),
    "UID SEARCH":   Command(search.search,              S),
    "SORT":         Command(sort.sort,                  S),
    "UID SORT":     Command(sort.sort,                  S),
    "THREAD":       Command(thread.thread,              S),
    "UID THREAD":   Command(thread.thread,              S),
    "FETCH":        Command(fetch.fetch,                S),
    "UID FETCH":    Command(fetch.fetch,                S),
    "STORE":        Command(messages.store,             S),
    "UID STORE":    Command(messages.store,             S),
    "COPY":         Command(messages.copy,              S),
    "UID COPY":     Command(messages.copy,              S),
    "MOVE":         Command(messages.copy,              S),
    "UID MOVE":     Command(messages.copy,              S),
}

# RFC 3501 7.4.1: no EXPUNGE response while answering these (sequence numbers in flight; SORT, THREAD too)
NO_EXPUNGE_DURING = frozenset({"FETCH", "STORE", "SEARCH", "SORT", "THREAD"})


class Session(_session.Session):
    commands = COMMANDS
    line_limit = 64 * 1024
    encoding = "utf-8"

    def __init__(self, conn: Connection, backend):
        super().__init__(conn, backend, State.NOT_AUTHENTICATED, MAX_BAD_COMMANDS, conn.params.imapd_timeout)
        self.limits = Limits(line=self.line_limit, append_literal=conn.params.message_size_limit or 2**31,
                             append_total=max(conn.params.message_size_limit or 2**31, MULTIAPPEND_TOTAL),
                             command=1024 * 1024 + (conn.params.message_size_limit or 2**31))
        self.user: str | None = None
        self.selected = None                  # workers.imapd.selected.Selected while SELECTED
        self.enabled: set[str] = set()        # ENABLEd extensions (CONDSTORE, QRESYNC, IMAP4rev2, UTF8=ACCEPT)
        self.command: parser.Command | None = None    # the one being answered
        self.notifier = None                  # workers.imapd.notify.Notifier after NOTIFY SET
        self.auth_failures = 0
        self.started = time.monotonic()
        self.counts = {"fetch": 0, "store": 0, "append": 0, "expunge": 0}
        self._out: list[bytes] = []           # responses not written yet (flush)
        self._out_size = 0

    # -- responses
    async def send(self, data: bytes) -> None:
        """Bytes for the client, written at the next flush() or once OUT_BUFFER bytes wait."""
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= OUT_BUFFER:
            await self.flush()

    async def flush(self, timeout: float = WRITE_TIMEOUT) -> None:
        """Write what waits, in one send; a client that stops reading for `timeout` is dropped.
        asyncio.timeout adds no task, so STARTTLS's go-ahead does not yield to the loop."""
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        async with asyncio.timeout(timeout):
            await self.conn.send(data)

    async def untagged(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        await self.send(b"* " + data + b"\r\n")

    async def continuation(self, text: str = "") -> None:
        await self.send(b"+ " + text.encode("utf-8") + b"\r\n")
        await self.flush()

    async def tagged(self, status: str, text: str, code: str | None = None, tag: str | None = None) -> None:
        tag = tag if tag is not None else (self.command.tag if self.command else "*")
        line = f"{tag} {status} " + (f"[{code}] " if code else "") + text
        await self.send(line.encode("utf-8") + b"\r\n")
        await self.flush()

    async def ok(self, text: str, code: str | None = None) -> None:
        await self.send_updates()
        await self.tagged("OK", text, code)

    async def no(self, text: str, code: str | None = None) -> None:
        await self.send_updates()
        await self.tagged("NO", text, code)

    async def bad(self, text: str, code: str | None = None) -> None:
        await self.tagged("BAD", text, code)
        await self.charge_error()

    async def send_updates(self) -> None:
        """What changed in the selected mailbox since the client last heard, as untagged
        EXISTS / EXPUNGE / FETCH responses (selected.py)."""
        if self.selected is not None and self.command is not None:
            name = self.command.name.removeprefix("UID ")
            allow_expunge = name not in NO_EXPUNGE_DURING or self.command.name.startswith("UID ")
            await self.selected.send_updates(self, allow_expunge)

    async def farewell(self, text: str) -> None:
        """`* BYE`, after what waits to be written; the client may have stopped reading: do not
        wait long."""
        self._out.append(f"* BYE {text}\r\n".encode())
        try:
            await self.flush(FAREWELL_TIMEOUT)
        except (TimeoutError, ConnectionError):
            pass

    # -- reading and dispatching commands
    async def next_line(self) -> bytes | None:
        await self.flush()                           # the greeting, or what a command left
        if self.notifier is not None:                # NOTIFY: updates pushed between commands
            return await idle.read_pushing(self, self.notifier)
        return await self.conn.read_command(STREAM_LIMIT, self.timeout)

    async def too_long(self) -> None:
        self.command = None
        await self.bad("Line too long")

    async def request(self, line: bytes) -> parser.Command | None:
        try:
            return await read_command(self.conn.reader, self.literal_limits(), self.literal_go_ahead, line)
        except Bad as error:
            await self.refuse_command(error)
            return None

    def literal_limits(self) -> Limits:
        return self.limits

    async def literal_go_ahead(self) -> None:
        await self.send(b"+ OK\r\n")
        await self.flush()

    async def refuse_command(self, error: Bad) -> None:
        self.command = parser.Command(error.tag or "*", "")
        if error.close:
            await self.tagged(error.status, error.text, error.code)
            await self.farewell("Cannot resynchronise with the client's input")
            raise Close
        if error.status == "BAD":
            await self.bad(error.text, error.code)
        else:
            await self.tagged(error.status, error.text, error.code)

    async def dispatch(self, command: parser.Command) -> None:
        self.command = command
        entry = self.commands.get(command.name)
        if entry is None:
            self.verbs["unknown"] += 1
            await self.bad("Unknown command" if command.name else "Missing command")
            return
        self.verbs[command.name] += 1
        if self.state not in entry.states:
            await self.wrong_state(command)
            return
        try:
            await entry.handler(self, command)
        except Bad as error:
            if error.status == "BAD":
                await self.bad(error.text, error.code)
            else:
                await self.no(error.text, error.code)
            if error.close:
                raise Close from None

    async def wrong_state(self, command: parser.Command) -> None:
        if self.state is State.NOT_AUTHENTICATED:
            await self.bad(f"{command.name} needs a login first")
        elif self.state is State.AUTHENTICATED and self.commands[command.name].states == S:
            await self.bad(f"{command.name} needs a selected mailbox")
        else:
            await self.bad(f"{command.name} is not valid in this state")

    # -- life cycle
    def capabilities(self) -> str:
        return capability.text(self)

    async def start(self) -> bool:
        await self.untagged(f"OK [CAPABILITY {self.capabilities()}] mailhouse IMAP server ready")
        return True

    async def too_many_errors(self) -> None:
        await self.farewell("Too many invalid commands")

    async def timed_out(self) -> None:
        self.log.info(f"timeout: user={self.user or '-'} ip={self.conn.peer_ip}")
        await self.farewell("Disconnected for inactivity")

    async def shutting_down(self) -> None:
        self.log.info(f"server shutting down: user={self.user or '-'} ip={self.conn.peer_ip}")
        await self.farewell("Server shutting down")

    def lost(self) -> None:
        self.log.debug(f"connection lost: user={self.user or '-'} ip={self.conn.peer_ip}")

    def enter_authenticated(self, user: str) -> None:
        self.state = State.AUTHENTICATED
        self.user = user
        self.conn.set_user(user)

    def select(self, selected) -> None:
        if self.selected is not None:
            self.selected.close()
        self.selected = selected
        self.state = State.SELECTED

    def unselect(self) -> None:
        if self.selected is not None:
            self.selected.close()
        self.selected = None
        self.state = State.AUTHENTICATED

    def enter_logout(self) -> None:
        self.state = State.LOGOUT
        self.closing = True

    def end(self) -> None:
        if self.notifier is not None:
            self.notifier.close()
        if self.selected is not None:
            self.selected.close()
            self.selected = None
        if self.user is not None:
            seconds = time.monotonic() - self.started
            counts = " ".join(f"{k}={v}" for k, v in self.counts.items())
            how = "logout" if self.state is State.LOGOUT else "disconnected"
            self.log.info(f"{how}: user={self.user} ip={self.conn.peer_ip} seconds={seconds:.0f} {counts}")
