"""The auth service's client: a Verifier that asks workers/auth over its unix socket.

RemoteVerifier(path, timeout, log) has LocalVerifier's `await verify(check, protocol)`:
the check travels as plain data (workers/_authchecks.py check_to_wire) in a request line
of the auth service's protocol (documented in workers/auth/service.py), and the reply comes
back as the check's answer (a Verdict, or ScramParams). One connection per worker process,
opened on the first check and kept; the requests of all sessions are pipelined on it, each
with its own id, and answered in any order. A connection that ends (the service restarted,
was recycled) fails the checks waiting on it; each is sent once more on a new connection,
since checks have no side effects. AuthUnavailable (the protocols' temporary failure) when
the socket cannot be reached, the service does not answer within `timeout` seconds
(auth_service_timeout; a stopped or restarting service), or answers with an error.

verifier_from_params(params, users, log): the process's one verifier: a RemoteVerifier when
the master named an auth service (master/proto.py auth_socket()), else a LocalVerifier that
reads the password database in this process.
Diagnostics: AuthUnavailable("...") says why, for the protocol's log line.
"""
from __future__ import annotations

import asyncio
import json

from master import proto
from workers._authchecks import answer_from_wire, check_to_wire
from workers._authpool import AuthUnavailable, LocalVerifier

REPLY_MAX = 64 * 1024          # bytes of one reply line (a Verdict is well under 1 KiB)
ID_MODULUS = 2**31


class _Lost(Exception):
    """The connection ended before the answer came."""


class _Connection:
    """One stream to the auth service and the requests waiting for their replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log):
        self.reader = reader
        self.writer = writer
        self.log = log
        self.pending: dict[int, asyncio.Future] = {}
        self.closed = False
        self._task = asyncio.get_running_loop().create_task(self._read_replies())

    async def _read_replies(self) -> None:
        try:
            while line := await self.reader.readline():
                reply = json.loads(line)
                waiting = self.pending.pop(reply.get("id"), None) if isinstance(reply, dict) else None
                if waiting is not None and not waiting.done():
                    waiting.set_result(reply)
                elif isinstance(reply, dict) and reply.get("error"):
                    self.log.error(f"auth service: {str(reply['error'])[:200]}")
        except (OSError, ValueError) as e:           # ValueError: bad JSON, or a line over REPLY_MAX
            self.log.error(f"auth service connection: {type(e).__name__}: {e}")
        finally:
            self.closed = True
            for waiting in self.pending.values():
                if not waiting.done():
                    waiting.set_exception(_Lost())
            self.pending.clear()
            self.writer.close()

    async def ask(self, request_id: int, line: bytes) -> dict:
        waiting = asyncio.get_running_loop().create_future()
        self.pending[request_id] = waiting
        try:
            self.writer.write(line)
            await self.writer.drain()
            return await waiting
        finally:
            self.pending.pop(request_id, None)


class RemoteVerifier:
    def __init__(self, path: str, timeout: float, log):
        self.path = path
        self.timeout = timeout
        self.log = log
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._next_id = 0

    async def verify(self, check, protocol: str):
        self._next_id = (self._next_id + 1) % ID_MODULUS
        request_id = self._next_id
        line = json.dumps({"id": request_id, "protocol": protocol, **check_to_wire(check)}).encode() + b"\n"
        try:
            reply = await asyncio.wait_for(self._ask(request_id, line), self.timeout)
        except TimeoutError:
            raise AuthUnavailable(f"the auth service did not answer within {self.timeout:g} s") from None
        if "error" in reply:
            raise AuthUnavailable(f"auth service: {str(reply['error'])[:200]}")
        try:
            return answer_from_wire(check, reply, ("id",))
        except ValueError as e:
            raise AuthUnavailable(f"auth service: bad answer: {e}") from None

    async def _ask(self, request_id: int, line: bytes) -> dict:
        for attempt in (1, 2):
            connection = await self._connect()
            try:
                return await connection.ask(request_id, line)
            except (_Lost, OSError):
                if attempt == 2:          # else once more: the service restarted or was recycled
                    raise AuthUnavailable("the auth service closed the connection") from None

    async def _connect(self) -> _Connection:
        async with self._connecting:
            if self._connection is None or self._connection.closed:
                try:
                    reader, writer = await asyncio.open_unix_connection(self.path, limit=REPLY_MAX)
                except OSError as e:
                    raise AuthUnavailable(f"cannot reach the auth service at {self.path}: "
                                          f"{e.strerror or e}") from None
                self._connection = _Connection(reader, writer, self.log)
            return self._connection


def verifier_from_params(params, users, log):
    """The auth service's when the master named one, else checks in this process."""
    path = proto.auth_socket()
    if path:
        return RemoteVerifier(path, params.auth_service_timeout, log)
    return LocalVerifier.from_params(params, users, log)
