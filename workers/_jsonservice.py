"""The server side of a master.cf socket service that speaks one JSON object per line (auth, smtp).

    service = JSONLineService(answer, id_of, Limits(...), log, "smtp service")
    server = await asyncio.start_unix_server(service.serve, sock=listener, limit=limits.request_max)

(the client side is workers/_jsonlines.py Channel). Every request line goes to
`await answer(line) -> dict`, run as a task of its own, and the reply is written as soon as
it is ready, in any order; answer must not raise (it turns its failures into error replies).
Limits: a request line of at most request_max bytes (longer: an error reply, then the
connection is closed); a line once begun must end within request_timeout seconds (else the
same); at most in_flight_max unanswered requests per connection (one more gets
{"id": id_of(line), "error": ...} at once); at most connections_max connections (one more
is closed at once); a reply the client does not take within write_timeout seconds closes
its connection.
Drain: stop_reading() takes no more requests; `await finish()` returns once every request
read has been answered and every connection is closed. `await service.run(daemon)` is the
whole life of a master.cf socket service: it serves the listening socket the master handed
over (proto.ENV_LISTEN_FD) until the daemon stops, then drains as above.
read_request(line) -> (object, id): the JSON object of a request line and its id, or
BadRequest (str: why; request_id: the id when it was read) — what every such service checks
before its own fields.
Diagnostics: `NAME: N connections open already` (error); lost connections at level high.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from master import proto


ID_LIMIT = 2**31                   # request ids are integers in [0, ID_LIMIT)


class BadRequest(Exception):
    """A request line that is not a request; str() says why, request_id is its id if read."""

    def __init__(self, reason: str, request_id: int | None = None):
        super().__init__(reason)
        self.request_id = request_id


def read_request(line: bytes) -> tuple[dict, int]:
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        raise BadRequest("not JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("not a JSON object")
    request_id = data.get("id")
    if not (type(request_id) is int and 0 <= request_id < ID_LIMIT):
        raise BadRequest("bad or missing id")
    return data, request_id


@dataclass(frozen=True)
class Limits:
    request_max: int
    request_timeout: float
    in_flight_max: int
    connections_max: int
    write_timeout: float


class JSONLineService:
    def __init__(self, answer: Callable[[bytes], Awaitable[dict]], id_of: Callable[[bytes], int | None],
                 limits: Limits, log, name: str):
        self.answer = answer
        self.id_of = id_of
        self.limits = limits
        self.log = log
        self.name = name
        self._readers: set[asyncio.Task] = set()      # one per connection: cancelled at drain

    async def run(self, daemon) -> None:
        """Serve the master's listening socket until daemon (workers._server.Daemon) stops; drain."""
        listener = socket.socket(fileno=int(os.environ[proto.ENV_LISTEN_FD]))
        server = await asyncio.start_unix_server(self.serve, sock=listener, limit=self.limits.request_max)
        while not daemon.stopping:
            await daemon.wait_wakeup()
        server.close()                              # our copy only: the master keeps the socket bound
        self.stop_reading()
        await self.finish()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._readers) >= self.limits.connections_max:
            self.log.error(f"{self.name}: {self.limits.connections_max} connections open already; "
                           f"one more closed")
            writer.close()
            return
        answering: set[asyncio.Task] = set()
        reading = asyncio.get_running_loop().create_task(self._read_requests(reader, writer, answering))
        self._readers.add(reading)
        try:
            await asyncio.wait((reading,))
            while answering:                              # what was read is answered first
                await asyncio.wait(set(answering))
        finally:
            self._readers.discard(reading)
            writer.close()

    def stop_reading(self) -> None:
        for reading in self._readers:
            reading.cancel()

    async def finish(self) -> None:
        """Wait until every connection has answered what it read and is closed."""
        while self._readers:
            await asyncio.sleep(0.05)

    async def _read_requests(self, reader, writer, answering: set[asyncio.Task]) -> None:
        limits = self.limits
        while True:
            try:
                first = await reader.read(1)       # a connection may idle as long as it likes
                if not first:
                    return
                line = first if first == b"\n" else first + await asyncio.wait_for(
                    reader.readuntil(b"\n"), limits.request_timeout)
            except asyncio.LimitOverrunError:
                await self._reply(writer, {"id": None, "error": f"request longer than {limits.request_max} bytes"})
                return
            except TimeoutError:
                await self._reply(writer, {"id": None, "error": f"request not ended within "
                                                                f"{limits.request_timeout:g} s"})
                return
            except (asyncio.IncompleteReadError, OSError) as e:
                self.log.debug(f"{self.name}: connection ended: {type(e).__name__}")
                return
            if len(answering) >= limits.in_flight_max:
                await self._reply(writer, {"id": self.id_of(line),
                                           "error": f"more than {limits.in_flight_max} requests in flight"})
                continue
            task = asyncio.get_running_loop().create_task(self._answer(line, writer))
            answering.add(task)
            task.add_done_callback(answering.discard)

    async def _answer(self, line: bytes, writer: asyncio.StreamWriter) -> None:
        await self._reply(writer, await self.answer(line))

    async def _reply(self, writer: asyncio.StreamWriter, reply: dict) -> None:
        if writer.is_closing():
            return
        writer.write(json.dumps(reply).encode() + b"\n")
        try:
            await asyncio.wait_for(writer.drain(), self.limits.write_timeout)
        except (TimeoutError, OSError):
            writer.close()                      # the client does not read: its connection goes
