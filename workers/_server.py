"""The worker side of the master: one asyncio process serving many client sessions.

A protocol module (run as `python -m workers.<name>`) provides two coroutines and calls
run_worker; it never accepts, never reads main.cf, never rotates logs:

    async def handle(conn: Connection) -> None     # one client session, start to end
    async def refuse(conn: Connection) -> None     # over the service's connection limit
    if __name__ == "__main__":
        run_worker(handle, refuse, log_name="smtp")

The master hands over accepted sockets through the control socket (master/proto.py holds
the contract: env ENV_CONTROL_FD, SOCK_SEQPACKET, fd via SCM_RIGHTS with a handover header)
and may send drain (take nothing more, finish the sessions, exit; recycling and reload),
drain with stop (the same, and tell the sessions: the master is stopping) or wakeup. The
worker reports ready, closed and session, asks login (answered with the auth penalty and
any refusal), and sends alive every proto.heartbeat_interval seconds from its event loop:
a session that blocks the loop stops the beats, and the master replaces the worker after
worker_hang_timeout (SIGABRT: faulthandler, enabled here, prints every thread's stack on
stderr, i.e. into server.log). SIGTERM is a stop like drain with stop; SIGINT is ignored
(the master decides when sessions end). The process exits 0 once draining and idle.

Per-client limits (kept by the master, master/anvil.py): a connection handed over with
"refuse" goes to refuse(conn), conn.refusal naming the limit ("maxproc",
"smtpd_client_connection_count_limit", "smtpd_client_connection_rate_limit"; wording in
workers._limits.refusal_text). `await conn.report_login(ok, user)` is called once per login
attempt, right or wrong, before the answer: it waits the client's auth penalty and returns
the limit that refuses the login (smtpd_client_auth_rate_limit; for a success of `user`,
mail_max_userip_connections), else None. A session handed over with "stress" (the service
is nearly full) gets params whose idle timeouts are at most stress_timeout.

Graceful stop inside a session: conn.draining (a Drain, one per worker) is set when the
master stops; conn.read_command(limit, timeout) is read_line for a session waiting for its
next command and returns None instead once draining is set (a session parked in it is woken
by cancelling that one wait: no watcher task per command), so the session can answer
its protocol's goodbye (SMTP `421 4.3.2`, IMAP `* BYE`, POP3 `-ERR`) and return. A session in
the middle of a command (a DATA transfer) finishes it first.

Settings come from the master (env proto.ENV_PARAMS: JSON of the raw settings including
the service's -o overrides, proto.ENV_BASE_DIR), so a reload the master refused never
leaks into a worker; worker_params() rebuilds them.

TLS wrapper mode (smtpd_tls_wrappermode for log "smtp", tls_wrappermode otherwise): the
handshake is done before handle/refuse run; a failed handshake is logged at level high.

unix services (qmgr) call run_daemon(main, log_name) instead: main(daemon) runs until it
returns; daemon.wait_wakeup(timeout) returns True when the master sent a wakeup and
daemon.stopping turns True on drain (wait_wakeup returns at once then).

Diagnostics: a session that raises is logged as an error with its traceback on stderr
(server.log) and closed; the worker and its other sessions go on. A crash outside the
sessions exits non-zero and the master respawns the worker.
"""
from __future__ import annotations

import array
import asyncio
import faulthandler
import json
import os
import signal
import socket
import ssl
import sys
import traceback
from typing import Awaitable, Callable

from master import proto
from master.params import Params
from store import lmdbcheck
from workers._compress import DeflatingWriter, deflate_streams
from workers._limits import STREAM_LIMIT, LineTooLong, read_line
from workers._log import Log
from workers._tls import TLSUnavailable, server_context

HANDSHAKE_TIMEOUT = 30.0      # seconds for a wrapper-mode or STARTTLS handshake
ASK_TIMEOUT = 5.0             # a question to the master unanswered this long: go on without
PENALTY_MAX = 60.0            # the longest auth penalty a worker waits, whatever it is told
STRESS_TIMEOUTS = ("smtpd_timeout", "pop3d_timeout", "imapd_timeout")
REFUSE_TIMEOUT = 10.0         # a refused client gets this long to take its refusal

Handler = Callable[["Connection"], Awaitable[None]]


def worker_params() -> Params:
    """The service's settings as the master handed them over."""
    raw = json.loads(os.environ.get(proto.ENV_PARAMS, "{}"))
    return Params(raw, {}, os.environ.get(proto.ENV_BASE_DIR, os.getcwd()))


def _set_title() -> None:
    try:
        from setproctitle import setproctitle
    except ImportError:
        return
    command = os.environ.get(proto.ENV_COMMAND) or os.path.basename(sys.argv[0])
    setproctitle(f"mailhouse {command} {os.environ.get(proto.ENV_SERVICE, '')}".rstrip())


class _Control:
    """The worker's end of the SOCK_SEQPACKET socketpair to the master."""

    def __init__(self) -> None:
        fd = os.environ.get(proto.ENV_CONTROL_FD)
        self.sock: socket.socket | None = socket.socket(fileno=int(fd)) if fd else None
        if self.sock:
            self.sock.setblocking(False)
        self.questions: dict[int, asyncio.Future] = {}      # conn id -> the master's answer

    async def ask(self, message: dict) -> dict | None:
        """Send a question about message["conn"] (one at a time per connection) and wait for
        the answer; None when there is no master or it does not answer in time."""
        if self.sock is None:
            return None
        conn_id = message["conn"]
        self.questions[conn_id] = answer = asyncio.get_running_loop().create_future()
        try:
            self.send(message)
            return await asyncio.wait_for(answer, ASK_TIMEOUT)
        except TimeoutError:
            return None
        finally:
            self.questions.pop(conn_id, None)

    def answered(self, message: dict) -> None:
        answer = self.questions.get(message.get("conn"))
        if answer is not None and not answer.done():
            answer.set_result(message)

    def send(self, message: dict) -> None:
        if self.sock is None:
            return
        try:
            self.sock.send(proto.encode(message))
        except (BlockingIOError, OSError):
            # The master is gone or not reading: it recounts from our exit anyway.
            pass

    def receive(self) -> tuple[dict, int | None] | None:
        """One message and the fd it carried; None when nothing is pending; ({}, None) at EOF."""
        assert self.sock is not None
        fds = array.array("i")
        try:
            data, ancdata, _flags, _addr = self.sock.recvmsg(proto.CONTROL_MSG_MAX,
                                                             socket.CMSG_SPACE(fds.itemsize))
        except BlockingIOError:
            return None
        except OSError:
            return {}, None
        fd = None
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        if fds:
            fd = fds[0]
            for extra in fds[1:]:
                os.close(extra)
        if not data:
            if fd is not None:
                os.close(fd)
            return {}, None
        return proto.decode(data), fd


DRAIN_CANCEL = "mailhouse: the master stops"


class Drain:
    """The master's graceful stop as one worker's sessions see it: is_set() before each wait
    for a command; set() marks it and cancels the waits of the sessions parked in
    Connection.read_command (with DRAIN_CANCEL, which read_command turns into None)."""

    def __init__(self) -> None:
        self._set = False
        self.parked: dict[int, asyncio.Task] = {}      # id(connection) -> its session's task

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        for task in list(self.parked.values()):
            task.cancel(DRAIN_CANCEL)


class Connection:
    """One client session: streams, addresses, settings, TLS and limits."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn_id: int,
                 params: Params, log: Log, protocol: str, control: _Control,
                 draining: Drain | None = None, refusal: str = ""):
        self.reader = reader
        self.writer = writer
        self.conn_id = conn_id
        self.params = params
        self.refusal = refusal              # the limit a refused connection is over
        self.log = log
        self.protocol = protocol
        self.user: str | None = None
        self._control = control
        self.draining = draining if draining is not None else Drain()
        peer = writer.get_extra_info("peername") or ("", 0)
        local = writer.get_extra_info("sockname") or ("", 0)
        self.peer_ip, self.peer_port = str(peer[0]), int(peer[1])
        self.local_ip, self.local_port = str(local[0]), int(local[1])

    @property
    def tls(self) -> bool:
        return self.writer.get_extra_info("ssl_object") is not None

    def tls_version(self) -> str | None:
        obj = self.writer.get_extra_info("ssl_object")
        return obj.version() if obj else None

    def tls_cipher(self) -> str | None:
        obj = self.writer.get_extra_info("ssl_object")
        return obj.cipher()[0] if obj and obj.cipher() else None

    async def start_tls(self, go_ahead: bytes) -> None:
        """STARTTLS/STLS: send the protocol's go-ahead line, then upgrade the stream.

        Raises TLSUnavailable (no certificate), ssl.SSLError or ConnectionError (handshake
        failed: the session is over) and TimeoutError.
        """
        ctx = server_context(self.params)
        # Stop reading before the go-ahead leaves: the client's handshake then waits in the
        # socket for the TLS layer instead of landing in (and being lost from) our buffer.
        self.writer.transport.pause_reading()
        # Bytes the client pipelined after the STARTTLS command were sent in clear text and
        # must not be taken as if they came over TLS (command injection, CVE-2011-0411).
        self.reader._buffer.clear()  # noqa: SLF001 - asyncio offers no public way
        await self.send_line(go_ahead)
        await self.writer.start_tls(ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)

    @property
    def compressed(self) -> bool:
        return isinstance(self.writer, DeflatingWriter)

    def start_deflate(self) -> None:
        """COMPRESS=DEFLATE: from now on both directions are raw DEFLATE, inside TLS if
        active; what the client already sent behind the command is inflated first
        (workers/_compress.py)."""
        self.reader, self.writer = deflate_streams(
            self.reader, self.writer, STREAM_LIMIT, lambda text: self.log.info(f"{text}: ip={self.peer_ip}"))

    def set_user(self, name: str) -> None:
        """Record the authenticated user for `mailctl connections`."""
        self.user = name
        self._control.send(proto.session(self.conn_id, name, self.protocol))

    async def report_login(self, ok: bool, user: str | None = None) -> str | None:
        """A login attempt ended (ok: the credentials were right; user: for the per user and
        address limit). Waits the client's auth penalty, right or wrong, so the time of the
        answer tells nothing; returns the name of the limit that refuses this login, or None."""
        answer = await self._control.ask(proto.login(self.conn_id, ok, user))
        if answer is None:
            return None
        delay = answer.get("delay")
        if isinstance(delay, (int, float)) and delay > 0:
            await asyncio.sleep(min(delay, PENALTY_MAX))
        return str(answer.get("refuse") or "") or None

    async def read_line(self, limit: int, timeout: float) -> bytes:
        """A line with its terminator; b"" at EOF. Raises LineTooLong / TimeoutError."""
        return await read_line(self.reader, limit, timeout)

    async def read_command(self, limit: int, timeout: float) -> bytes | None:
        """read_line between commands: None once the master stops (draining), line or not."""
        drain = self.draining
        if drain.is_set():
            return None
        task = asyncio.current_task()
        drain.parked[id(self)] = task
        try:
            return await self.read_line(limit, timeout)
        except asyncio.CancelledError as e:
            if e.args != (DRAIN_CANCEL,):
                raise
            task.uncancel()             # readuntil consumed nothing: the line stays unread
            return None
        finally:
            drain.parked.pop(id(self), None)

    async def send(self, data: bytes) -> None:
        """Raw bytes (multi-line replies, literals, message bodies)."""
        self.writer.write(data)
        await self.writer.drain()

    async def send_line(self, line: bytes) -> None:
        """One line; CRLF is appended unless the line already ends with it."""
        await self.send(line if line.endswith(b"\r\n") else line + b"\r\n")


class _WorkerBase:
    """Control socket, signals and the drain rule shared by inet and unix workers."""

    def __init__(self, log_name: str):
        self.log_name = log_name
        self.log = Log(log_name)
        self.params = worker_params()
        self.control = _Control()
        self.stopping = False
        self.draining = Drain()               # the master stops: sessions are told (Connection)
        self.done = asyncio.Event()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.control.sock is not None:
            loop.add_reader(self.control.sock.fileno(), self._on_control)
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        self.control.send(proto.ready(self.log_name))
        if self.control.sock is not None:
            self._heartbeat()

    def _heartbeat(self) -> None:
        """A sign of life for the master, sent by the event loop itself: while a session
        blocks the loop, none is sent (that is the point: proto, worker_hang_timeout)."""
        self.control.send(proto.alive())
        asyncio.get_running_loop().call_later(proto.heartbeat_interval(self.params), self._heartbeat)

    def _on_control(self) -> None:
        while (received := self.control.receive()) is not None:
            message, fd = received
            if not message:
                # EOF: the master is gone. Finish what we have, take nothing more.
                asyncio.get_running_loop().remove_reader(self.control.sock.fileno())
                self.drain()
                return
            self.on_message(message, fd)

    def on_message(self, message: dict, fd: int | None) -> None:
        if fd is not None:
            os.close(fd)
        op = message.get("op")
        if op == proto.OP_DRAIN:
            self.stop() if message.get("stop") else self.drain()
        elif op == proto.OP_WAKEUP:
            self.on_wakeup()
        else:
            self.log.error(f"control: unexpected message {message!r}")

    def on_wakeup(self) -> None:
        pass

    def drain(self) -> None:
        self.stopping = True
        self.check_done()

    def stop(self) -> None:
        self.draining.set()
        self.drain()

    def check_done(self) -> None:
        if self.stopping and self.idle():
            self.done.set()

    def idle(self) -> bool:
        return True


class _InetWorker(_WorkerBase):
    def __init__(self, handle: Handler, refuse: Handler, log_name: str):
        super().__init__(log_name)
        self.handle = handle
        self.refuse = refuse
        self.sessions: set[int] = set()
        self.tasks: set[asyncio.Task] = set()
        wrapper = self.params.smtpd_tls_wrappermode if log_name == "smtp" else self.params.tls_wrappermode
        self.wrapper = bool(wrapper)
        self._stress_params: Params | None = None

    def stress_params(self) -> Params:
        """The settings of a session that starts under stress: idle timeouts cut to stress_timeout."""
        if self._stress_params is None:
            cut = max(1.0, self.params.stress_timeout) if self.params.stress_timeout else float("inf")
            self._stress_params = self.params.override(
                {key: f"{min(self.params.get(key), cut):g}s" for key in STRESS_TIMEOUTS})
        return self._stress_params

    def idle(self) -> bool:
        return not self.sessions

    def on_message(self, message: dict, fd: int | None) -> None:
        if message.get("op") == proto.OP_LOGIN and fd is None:
            self.control.answered(message)
            return
        if "conn" not in message:
            super().on_message(message, fd)
            return
        if fd is None:
            self.log.error(f"control: connection {message.get('conn')} arrived without a socket")
            return
        conn_id = int(message["conn"])
        self.sessions.add(conn_id)
        refusal = str(message.get("refuse") or "")
        params = self.stress_params() if message.get("stress") and not refusal else self.params
        task = asyncio.get_running_loop().create_task(self._open(fd, conn_id, refusal, params))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _open(self, fd: int, conn_id: int, refusal: str, params: Params) -> None:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        ssl_ctx = None
        if self.wrapper:
            try:
                ssl_ctx = server_context(self.params)
            except TLSUnavailable as e:
                self.log.error(f"wrapper-mode connection closed: TLS unavailable: {e}")
                sock.close()
                self._closed(conn_id)
                return
        session_done = loop.create_future()

        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # Runs inside connection_made, i.e. after the wrapper-mode handshake; it must
            # stay a plain function so that StreamWriter.start_tls knows it is the server.
            task = loop.create_task(self._session(reader, writer, conn_id, refusal, params))
            task.add_done_callback(lambda _t: session_done.done() or session_done.set_result(None))

        reader = asyncio.StreamReader(limit=STREAM_LIMIT)
        try:
            await loop.connect_accepted_socket(
                lambda: asyncio.StreamReaderProtocol(reader, connected), sock,
                ssl=ssl_ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT if ssl_ctx else None)
        except (OSError, ssl.SSLError, TimeoutError) as e:
            self.log.debug(f"connection {conn_id}: TLS handshake failed: {e}")
            sock.close()
            self._closed(conn_id)
            return
        await session_done

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       conn_id: int, refusal: str, params: Params) -> None:
        conn = Connection(reader, writer, conn_id, params, self.log, self.log_name, self.control,
                          self.draining, refusal)
        try:
            if refusal:
                await asyncio.wait_for(self.refuse(conn), REFUSE_TIMEOUT)
            else:
                await self.handle(conn)
        except (ConnectionError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError, LineTooLong) as e:
            self.log.debug(f"connection from {conn.peer_ip} ended: {type(e).__name__}: {e}")
        except Exception as e:  # a bug in the session: log it, keep the other sessions
            self.log.error(f"session from {conn.peer_ip} failed: {type(e).__name__}: {e}")
            traceback.print_exc()
        finally:
            # Report first: when the client sees the end, the master's count is already right.
            self._closed(conn_id)
            conn.writer.close()             # a compression layer's too (stops its pump)
            try:
                await asyncio.wait_for(conn.writer.wait_closed(), 5)
            except (OSError, ssl.SSLError, TimeoutError):
                pass

    def _closed(self, conn_id: int) -> None:
        if conn_id in self.sessions:
            self.sessions.discard(conn_id)
            self.control.send(proto.closed(conn_id))
        self.check_done()


class Daemon(_WorkerBase):
    """A unix service's process (qmgr): woken by the master, stopped by drain."""

    def __init__(self, log_name: str):
        super().__init__(log_name)
        self._woken = asyncio.Event()

    def on_wakeup(self) -> None:
        self._woken.set()

    def drain(self) -> None:
        super().drain()
        self._woken.set()

    async def wait_wakeup(self, timeout: float | None = None) -> bool:
        """True when woken by the master (or stopping), False after `timeout` seconds."""
        try:
            await asyncio.wait_for(self._woken.wait(), timeout)
        except TimeoutError:
            return False
        self._woken.clear()
        return True


def _prepare_process() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.enable()                         # SIGABRT from the master: the stack, in server.log
    _set_title()
    lmdbcheck.set_reporter(Log("server").error)   # a damaged index or user database, once


def run_worker(handle: Handler, refuse: Handler, log_name: str) -> None:
    """Serve the connections the master hands over until drained; then exit 0."""
    _prepare_process()

    async def main() -> None:
        worker = _InetWorker(handle, refuse, log_name)
        worker.start()
        await worker.done.wait()
        if worker.tasks:
            await asyncio.gather(*worker.tasks, return_exceptions=True)

    asyncio.run(main())
    sys.exit(0)


def run_sessions(session_class, backend_class, refuse: Handler, log_name: str) -> None:
    """The usual protocol worker: session_class(conn, backend).run() for each connection.

    One backend_class(params) per process, built on the first connection (after the
    process is ready, so a slow store open never delays the master's ready report).
    """
    backend = None

    async def handle(conn: Connection) -> None:
        nonlocal backend
        if backend is None:
            backend = backend_class(conn.params)
        await session_class(conn, backend).run()

    run_worker(handle, refuse, log_name)


def run_daemon(main: Callable[[Daemon], Awaitable[None]], log_name: str = "server") -> None:
    """Run a unix service's main(daemon) until it returns (it should once daemon.stopping)."""
    _prepare_process()

    async def run() -> None:
        daemon = Daemon(log_name)
        daemon.start()
        await main(daemon)

    asyncio.run(run())
    sys.exit(0)
