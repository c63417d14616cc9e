"""workers/_compress.py: the DEFLATE layer under a session's streams (fed streams, no sockets).

The peer's side is plain zlib (raw DEFLATE, wbits -15), as a client would use it.
"""
from __future__ import annotations

import asyncio
import zlib

import pytest

from workers import _compress
from workers._compress import CHUNK, CompressionError, deflate_streams
from workers._limits import STREAM_LIMIT


class Peer:
    """The client's ends of the compression: what it sends, what it decodes."""

    def __init__(self):
        self.deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
        self.inflater = zlib.decompressobj(-15)

    def pack(self, data: bytes) -> bytes:
        return self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)


class SinkWriter:
    """The StreamWriter underneath: keeps what was written."""

    def __init__(self):
        self.data = bytearray()
        self.closed = False
        self.transport = None

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 1)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        pass


def _streams(*chunks: bytes, eof: bool = False):
    source = asyncio.StreamReader(limit=STREAM_LIMIT)
    for chunk in chunks:
        source.feed_data(chunk)
    if eof:
        source.feed_eof()
    sink = SinkWriter()
    reports: list[str] = []
    reader, writer = deflate_streams(source, sink, STREAM_LIMIT, reports.append)
    reader.reports = reports
    return source, sink, reader, writer


def test_buffered_bytes_are_inflated_first_then_later_ones():
    async def go():
        peer = Peer()
        source, _sink, reader, writer = _streams(peer.pack(b"a1 NOOP\r\na2 SELECT INBOX\r\n"))
        first = [await reader.readline(), await reader.readline()]
        source.feed_data(peer.pack(b"a3 LOGOUT\r\n"))
        source.feed_eof()
        rest = [await reader.readline(), await reader.readline()]
        writer.close()
        return first, rest
    first, rest = asyncio.run(go())
    assert first == [b"a1 NOOP\r\n", b"a2 SELECT INBOX\r\n"]
    assert rest == [b"a3 LOGOUT\r\n", b""]


def test_every_drained_write_decodes_at_once_and_large_ones_too(monkeypatch):
    monkeypatch.setattr(_compress, "INLINE_MAX", 1000)     # the thread path for the large one
    large = bytes(range(256)) * 40 + b"\r\n"

    async def go():
        peer = Peer()
        _source, sink, _reader, writer = _streams()
        seen = []
        for data in (b"* OK one\r\n", large, b"a1 OK done\r\n"):
            writer.write(data)
            await writer.drain()
            seen.append(peer.inflater.decompress(bytes(sink.data)))
            sink.data.clear()
        writer.close()
        return seen
    assert asyncio.run(go()) == [b"* OK one\r\n", large, b"a1 OK done\r\n"]


def test_a_decompression_bomb_stays_within_the_readers_limit():
    """20 MB of one byte in some 20 KB: the reader holds at most twice its limit and a chunk,
    and every octet still arrives once the session reads."""
    size = 20 * 1024 * 1024

    async def go():
        peer = Peer()
        packed = peer.pack(b"x" * size + b"\n")
        _source, _sink, reader, writer = _streams(packed, eof=True)
        for _ in range(50):
            await asyncio.sleep(0)
        held = len(reader._buffer)      # asyncio has no public way to look
        total = 0
        while chunk := await reader.read(1024 * 1024):
            total += len(chunk)
        writer.close()
        return len(packed), held, total
    packed, held, total = asyncio.run(go())
    assert packed < size // 100
    assert 0 < held <= 2 * STREAM_LIMIT + CHUNK
    assert total == size + 1


def test_garbage_ends_the_reads_with_a_connection_error():
    async def go():
        _source, _sink, reader, writer = _streams(b"\xff" * 64, eof=True)
        try:
            with pytest.raises(CompressionError) as error:
                await reader.readline()
        finally:
            writer.close()
        return error.value, reader.reports
    error, reports = asyncio.run(go())
    assert isinstance(error, ConnectionError)
    assert "damaged compressed stream" in str(error) and reports == [str(error)]


def test_an_error_underneath_is_passed_on():
    async def go():
        source, _sink, reader, writer = _streams()
        source.set_exception(ConnectionResetError("reset by peer"))
        with pytest.raises(ConnectionResetError):
            await reader.readline()
        writer.close()
    asyncio.run(go())


def test_the_end_of_the_clients_deflate_stream_is_the_end_of_input():
    async def go():
        deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
        packed = deflater.compress(b"a1 LOGOUT\r\n") + deflater.flush(zlib.Z_FINISH)
        _source, _sink, reader, writer = _streams(packed + b"trailing junk")
        lines = [await reader.readline(), await reader.readline()]
        writer.close()
        return lines
    assert asyncio.run(go()) == [b"a1 LOGOUT\r\n", b""]


def test_close_stops_the_pump_and_closes_underneath():
    async def go():
        _source, sink, reader, writer = _streams()
        await asyncio.sleep(0)
        writer.close()
        await writer.wait_closed()
        await asyncio.wait([reader.pump])
        return reader.pump.cancelled(), sink.closed, writer.get_extra_info("peername")
    assert asyncio.run(go()) == (True, True, ("127.0.0.1", 1))
