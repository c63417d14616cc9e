"""A client of a master.cf socket service that speaks one JSON object per line (auth, smtp).

    channel = Channel(path, "auth service", log, reply_max)
    reply = await channel.ask({"check": ...})    # an "id" is added; the reply with that id

One connection per process, opened on the first request and kept; the requests of all
callers are pipelined on it, each with its own id, and answered in any order. A reply with
an unknown id but an "error" is logged (the service's answer to a line it could not read).
Diagnostics: Unreachable when the socket cannot be connected to; Lost when the connection
ends before the reply (the service restarted, was recycled, or sent a bad line): the caller
decides whether asking again is safe (a password check is; a delivery is not).
"""
from __future__ import annotations

import asyncio
import json

ID_MODULUS = 2**31


class Unreachable(Exception):
    """The service's socket cannot be connected to."""


class Lost(Exception):
    """The connection ended before the reply came."""


class _Connection:
    """One stream to the service and the requests waiting for their replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str, log):
        self.reader = reader
        self.writer = writer
        self.name = name
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
                    self.log.error(f"{self.name}: {str(reply['error'])[:200]}")
        except (OSError, ValueError) as e:           # ValueError: bad JSON, or a line over the limit
            self.log.error(f"{self.name} connection: {type(e).__name__}: {e}")
        finally:
            self.closed = True
            for waiting in self.pending.values():
                if not waiting.done():
                    waiting.set_exception(Lost())
            self.pending.clear()
            self.writer.close()

    async def ask(self, request_id: int, line: bytes) -> dict:
        waiting = asyncio.get_running_loop().create_future()
        self.pending[request_id] = waiting
        try:
            self.writer.write(line)
            await self.writer.drain()
            return await waiting
        except OSError:
            raise Lost() from None
        finally:
            self.pending.pop(request_id, None)


class Channel:
    def __init__(self, path: str, name: str, log, reply_max: int):
        self.path = path
        self.name = name
        self.log = log
        self.reply_max = reply_max
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._next_id = 0

    async def ask(self, request: dict) -> dict:
        """Send request (with an "id" added) and return the service's reply to it."""
        self._next_id = (self._next_id + 1) % ID_MODULUS
        request_id = self._next_id
        line = json.dumps({"id": request_id, **request}).encode() + b"\n"
        connection = await self._connect()
        return await connection.ask(request_id, line)

    async def _connect(self) -> _Connection:
        async with self._connecting:
            if self._connection is None or self._connection.closed:
                try:
                    reader, writer = await asyncio.open_unix_connection(self.path, limit=self.reply_max)
                except OSError as e:
                    raise Unreachable(f"cannot reach the {self.name} at {self.path}: {e.strerror or e}") from None
                self._connection = _Connection(reader, writer, self.name, self.log)
            return self._connection
