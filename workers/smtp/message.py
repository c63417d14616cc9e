"""The message of a delivery: read from its queue file in chunks, encoded for SMTP DATA.

await MessageSource.open(queue_directory, queue_id, offset, size) opens
queue_directory/active/QUEUE_ID read-only (store.queue.open_queue_file: no symbolic link,
no FIFO; the id must be store.queue.is_queue_id's, so no other path can be named) in a
thread; `async for chunk in source.chunks()` yields the bytes [offset, offset + size),
each read in a thread (CHUNK bytes at a time, never the whole message), and raises
Truncated when the file ends first. close() closes the file.
DataEncoder: feed(chunk) -> bytes and end() -> bytes turn the message into DATA's form:
every line ends in CRLF (a bare LF becomes CRLF), a line starting with "." gets one more
(RFC 5321 4.5.2), a last line without an end gets one, and end() adds ".\r\n". A line
longer than LONG_LINE bytes is passed on in pieces, so memory stays bounded.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from store.queue import is_queue_id, open_queue_file

CHUNK = 64 * 1024
LONG_LINE = 64 * 1024


class Truncated(Exception):
    """The queue file ends before the message's end."""


class MessageSource:
    def __init__(self, file, offset: int, size: int):
        self.file = file
        self.offset = offset
        self.size = size

    @classmethod
    async def open(cls, queue_directory: str, queue_id: str, offset: int, size: int) -> MessageSource:
        """OSError or ValueError (not a queue id, not a regular file, too short) when it cannot be opened."""
        if not is_queue_id(queue_id):
            raise ValueError(f"bad queue id {queue_id!r}")
        path = os.path.join(queue_directory, "active", queue_id)
        file = await asyncio.get_running_loop().run_in_executor(None, open_queue_file, path)
        if os.fstat(file.fileno()).st_size < offset + size:
            file.close()
            raise ValueError("the queue file is shorter than the message")
        return cls(file, offset, size)

    def _read(self, position: int, count: int) -> bytes:
        return os.pread(self.file.fileno(), count, position)

    async def chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        position, end = self.offset, self.offset + self.size
        while position < end:
            chunk = await loop.run_in_executor(None, self._read, position, min(CHUNK, end - position))
            if not chunk:
                raise Truncated(f"the queue file ends {end - position} bytes before the message's end")
            position += len(chunk)
            yield chunk

    def close(self) -> None:
        self.file.close()


class DataEncoder:
    def __init__(self) -> None:
        self.carry = b""            # the start of a line whose end has not been read yet
        self.line_start = True      # the next byte passed on begins a line

    def _encode(self, data: bytes) -> bytes:
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")
        return b"." + data if self.line_start and data.startswith(b".") else data

    def feed(self, chunk: bytes) -> bytes:
        data = self.carry + chunk
        cut = data.rfind(b"\n") + 1
        if cut:                                     # whole lines up to cut
            self.carry = data[cut:]
            out = self._encode(data[:cut])
            self.line_start = True
            return out
        if len(data) <= LONG_LINE:
            self.carry = data
            return b""
        cut = len(data) - data.endswith(b"\r")      # a CR may be the start of a CRLF
        self.carry = data[cut:]
        out = self._encode(data[:cut])
        self.line_start = False
        return out

    def end(self) -> bytes:
        out = b""
        if self.carry or not self.line_start:
            out = self._encode(self.carry.removesuffix(b"\r")) + b"\r\n"
        self.carry = b""
        self.line_start = True
        return out + b".\r\n"
