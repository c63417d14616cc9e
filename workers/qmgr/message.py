"""The message of a queue file as qmgr's transports read it: streamed in chunks, never whole.

    message = MessageFile.of(queue, item)    # item: a QueueItem loaded from active/
    message.size                             # bytes of the message (the queue file minus its head)
    message.chunks()                         # -> iterator of byte chunks, from the file itself
    message.open(); read_chunks(f)           # the same in two steps: a child process reads
                                             # what its parent opened (before it dropped rights)
    message.header()                         # -> the header section, at most MAX_HEADER bytes
    message.read()                           # -> the whole message: only when it is known small
    async for chunk in in_thread(executor, iterator)    # a blocking iterator, read in a thread

A queue file never changes once committed, so every reader sees the same bytes. Each
chunks() call opens the file afresh: deliveries in flight at once never share a position.
Everything here blocks on the disk: call it from a thread (or a child process), never from
the event loop; in_thread() is how a coroutine consumes such an iterator.
Diagnostics: OSError from the file (the callers report a temporary failure).
"""
from __future__ import annotations

import asyncio
import os
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import AsyncIterator, BinaryIO, Iterator

from store.queue import Queue, QueueItem

CHUNK_SIZE = 256 * 1024
MAX_HEADER = 1024 * 1024


@dataclass(frozen=True)
class MessageFile:
    path: str
    offset: int
    size: int

    @classmethod
    def of(cls, queue: Queue, item: QueueItem) -> "MessageFile":
        path = queue.path(item.queue, item.queue_id)
        return cls(path, item.message_offset, os.stat(path).st_size - item.message_offset)

    def open(self) -> BinaryIO:
        """The queue file, unbuffered (no lock a fork could inherit), at the message; caller closes."""
        f = open(self.path, "rb", buffering=0)
        try:
            f.seek(self.offset)
        except OSError:
            f.close()
            raise
        return f

    def chunks(self) -> Iterator[bytes]:
        with self.open() as f:
            yield from read_chunks(f)

    def header(self) -> bytes:
        """The header lines and the empty line after them (all of a message without a body)."""
        lines = []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            budget = MAX_HEADER
            while budget > 0 and (line := f.readline(budget)):
                lines.append(line)
                budget -= len(line)
                if line in (b"\r\n", b"\n"):
                    break
        return b"".join(lines)

    def read(self) -> bytes:
        return b"".join(self.chunks())


def read_chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(CHUNK_SIZE):
        yield chunk


async def in_thread(executor: Executor | None, iterator: Iterator[bytes]) -> AsyncIterator[bytes]:
    """The items of a blocking iterator, each one fetched in executor."""
    loop = asyncio.get_running_loop()
    while (chunk := await loop.run_in_executor(executor, next, iterator, None)) is not None:
        yield chunk
