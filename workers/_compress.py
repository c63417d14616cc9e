"""A compression layer under a session's streams: raw DEFLATE both ways (RFC 4978, RFC 1951).

deflate_streams(reader, writer, limit, report) -> (InflatingReader, DeflatingWriter)
    From the call on, what the client sends is inflated and what the session writes is
    deflated; the old pair must not be used directly any more. Octets the old reader
    already holds (sent by the client right behind the command that started compression)
    are compressed ones and are inflated first. TLS, when active, stays underneath.
InflatingReader is an asyncio.StreamReader of `limit`, fed by a pump task. Memory stays
    bounded whatever the input (a decompression bomb costs time, not memory): the pump
    inflates at most CHUNK octets at a time and waits while the reader holds more than
    twice its limit, the flow control a StreamReader applies to its transport.
DeflatingWriter has what sessions and workers/_server.py use of a StreamWriter: write()
    queues, drain() deflates what is queued and ends it with Z_SYNC_FLUSH (the client
    can decode every response at once) and sends it; a write larger than INLINE_MAX is
    deflated in a thread, not on the event loop. close() also stops the pump.
Errors: a damaged compressed stream from the client reaches the session's next read as
    CompressionError, a ConnectionError (the session ends as if the client went away);
    an error of the stream underneath is passed on unchanged.
Diagnostics: report(text) is called once with CompressionError's text (what zlib found
    wrong) when the client's stream is damaged.
"""
from __future__ import annotations

import asyncio
import collections
import zlib
from collections.abc import Callable

WBITS = -15                   # raw DEFLATE: no zlib header or checksum (RFC 4978 3)
LEVEL = 6
CHUNK = 64 * 1024             # octets read or inflated at a time
INLINE_MAX = 256 * 1024       # larger writes are deflated in a thread


class CompressionError(ConnectionError):
    """The client's compressed stream cannot be inflated."""


class _Valve:
    """What InflatingReader sees as its transport: StreamReader pauses it when its buffer
    holds over twice the limit and resumes it once at most the limit is left."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()

    def pause_reading(self) -> None:
        self.open.clear()

    def resume_reading(self) -> None:
        self.open.set()


class InflatingReader(asyncio.StreamReader):
    def __init__(self, source: asyncio.StreamReader, limit: int, report: Callable[[str], None]):
        super().__init__(limit=limit)
        self._report = report
        self._valve = _Valve()
        self.set_transport(self._valve)
        self.pump = asyncio.get_running_loop().create_task(self._pump(source))

    async def _pump(self, source: asyncio.StreamReader) -> None:
        inflater = zlib.decompressobj(WBITS)
        try:
            while not inflater.eof:
                data = await source.read(CHUNK)
                if not data:
                    break
                while True:
                    await self._valve.open.wait()
                    out = inflater.decompress(data, CHUNK)
                    self.feed_data(out)
                    data = inflater.unconsumed_tail
                    # a full CHUNK may leave output inside zlib even with no input left
                    if inflater.eof or (not data and len(out) < CHUNK):
                        break
        except zlib.error as e:
            error = CompressionError(f"damaged compressed stream: {e}")
            self._report(str(error))
            self.set_exception(error)
        except Exception as e:  # noqa: BLE001 - the stream underneath failed: the session sees it
            self.set_exception(e)
        else:
            self.feed_eof()


class DeflatingWriter:
    def __init__(self, writer: asyncio.StreamWriter, reader: InflatingReader):
        self._writer = writer
        self._reader = reader
        self._deflater = zlib.compressobj(LEVEL, zlib.DEFLATED, WBITS)
        self._queued: collections.deque[bytes] = collections.deque()
        self._lock = asyncio.Lock()        # one deflate at a time, in the order written

    @property
    def transport(self) -> asyncio.BaseTransport:
        return self._writer.transport

    def get_extra_info(self, name: str, default=None):
        return self._writer.get_extra_info(name, default)

    def write(self, data: bytes) -> None:
        if data:
            self._queued.append(bytes(data))

    async def drain(self) -> None:
        async with self._lock:
            while self._queued:
                data = self._queued.popleft()
                if len(data) > INLINE_MAX:
                    out = await asyncio.to_thread(self._deflate, data)
                else:
                    out = self._deflate(data)
                self._writer.write(out)
            await self._writer.drain()

    def _deflate(self, data: bytes) -> bytes:
        return self._deflater.compress(data) + self._deflater.flush(zlib.Z_SYNC_FLUSH)

    def is_closing(self) -> bool:
        return self._writer.is_closing()

    def close(self) -> None:
        self._reader.pump.cancel()
        self._writer.close()

    async def wait_closed(self) -> None:
        await self._writer.wait_closed()


def deflate_streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    limit: int, report: Callable[[str], None]) -> tuple[InflatingReader, DeflatingWriter]:
    inflating = InflatingReader(reader, limit, report)
    return inflating, DeflatingWriter(writer, inflating)
