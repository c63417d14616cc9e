"""The DATA phase: read a message up to <CRLF>.<CRLF>, unstuff dots, enforce limits.

read_message(reader, sink, max_size, timeout, head=b"") -> DataResult reads from an
asyncio.StreamReader after the 354 reply. `head` (the Received: header) and then every
message line go to sink(bytes) in chunks of about FLUSH_SIZE, lines ending in CRLF; `head`
does not count towards max_size.

Why it is strict about the end: only a line `.` that follows a CRLF-terminated line and is
itself terminated by CRLF ends the message. `<LF>.<LF>`, `<CR>.<CR>`, `<LF>.<CRLF>` and
friends are message content (SMTP smuggling, CVE-2023-51764 and kin): whatever a
downstream server might take as an end of DATA stays inside this message. A bare LF line
ending is normalised to CRLF (Postfix's `normalize`), a bare CR stays data.

Limits: a line longer than MAX_LINE octets (998 + CRLF, RFC 5321 4.5.3.1.6) or a message
larger than max_size (0 = no limit) does not stop the reading; the rest is drained and the
result says so, so that the session can answer after the end instead of desynchronising.
A client idle for `timeout` seconds gets asyncio.TimeoutError. A client that closes in
the middle raises ConnectionError. An error from sink (disk full) is kept in the result and
the rest of the message is drained.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

from store.fsio import StorageError

MAX_LINE = 1000
FLUSH_SIZE = 64 * 1024
_END = b".\r\n"


@dataclass
class DataResult:
    size: int = 0                       # octets after dot-unstuffing, CRLF line endings
    too_big: bool = False
    line_too_long: bool = False
    storage_error: Exception | None = None

    @property
    def accepted(self) -> bool:
        return not (self.too_big or self.line_too_long or self.storage_error)


async def _read_piece(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """One line, or a piece of an overlong one: (bytes, complete)."""
    try:
        return await reader.readuntil(b"\n"), True
    except asyncio.LimitOverrunError as e:
        return await reader.readexactly(e.consumed), False
    except asyncio.IncompleteReadError:
        raise ConnectionResetError("client closed the connection during DATA") from None


class _IdleDeadline:
    """smtpd_timeout as an idle limit over many reads, without a timer per line.

    A timer per read costs ten times the read itself; the deadline is pushed forward at
    most every `step` seconds instead, so an idle client is cut off after between
    timeout - step and timeout seconds.
    """

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.step = min(1.0, timeout / 10)
        self.loop = asyncio.get_running_loop()
        self.context = asyncio.timeout(timeout)
        self.pushed = self.loop.time()

    def touch(self) -> None:
        now = self.loop.time()
        if now - self.pushed >= self.step:
            self.context.reschedule(now + self.timeout)
            self.pushed = now


class _Spool:
    """Collects message lines and hands them to the sink in large chunks."""

    def __init__(self, sink: Callable[[bytes], object], result: DataResult, head: bytes):
        self.sink = sink
        self.result = result
        self.lines: list[bytes] = [head] if head else []
        self.size = len(head)

    def add(self, line: bytes) -> None:
        self.lines.append(line)
        self.size += len(line)
        if self.size >= FLUSH_SIZE:
            self.flush()

    def flush(self) -> None:
        if self.lines and self.result.accepted:
            try:
                self.sink(b"".join(self.lines))
            except (StorageError, OSError) as e:
                self.result.storage_error = e
        self.lines.clear()
        self.size = 0


async def read_message(reader: asyncio.StreamReader, sink: Callable[[bytes], object],
                       max_size: int, timeout: float, head: bytes = b"") -> DataResult:
    result = DataResult()
    spool = _Spool(sink, result, head)
    deadline = _IdleDeadline(timeout)
    async with deadline.context:
        await _receive(reader, result, spool, max_size, deadline)
    spool.flush()
    return result


async def _receive(reader: asyncio.StreamReader, result: DataResult, spool: _Spool, max_size: int,
                   deadline: _IdleDeadline) -> None:
    after_crlf = True                   # the 354 reply ends a "line" for the purpose of the end mark
    in_long_line = False
    long_tail = b""                     # last octets of the overlong line read so far
    while True:
        piece, complete = await _read_piece(reader)
        deadline.touch()
        if in_long_line or not complete or len(piece) > MAX_LINE:
            # Part of a line over the limit: counted, not stored; the message will be refused.
            result.line_too_long = True
            long_tail = (long_tail + piece)[-2:]
            in_long_line = not complete
            after_crlf = complete and long_tail == b"\r\n"
            if complete:
                long_tail = b""
            continue
        if after_crlf and piece == _END:
            return
        after_crlf = piece.endswith(b"\r\n")
        line = piece[1:] if piece.startswith(b".") else piece
        if not after_crlf:
            line = line[:-1] + b"\r\n"           # bare LF line ending -> CRLF
        result.size += len(line)
        if max_size and result.size > max_size:
            result.too_big = True
        if result.accepted:
            spool.add(line)
