"""The DATA phase: read a message up to <CRLF>.<CRLF>, unstuff dots, enforce limits.

read_message(reader, sink, max_size, timeout, head=b"") -> DataResult reads from an
asyncio.StreamReader after the 354 reply. `head` (the Received: header) and then the
message go to sink(bytes) in chunks of about FLUSH_SIZE, every line ending in CRLF; `head`
does not count towards max_size.

Why it is strict about the end: only a line `.` that follows a CRLF-terminated line and is
itself terminated by CRLF ends the message, i.e. the first `<CR><LF>.<CR><LF>` of the
stream (the CRLF of the DATA command counting as the first one). `<LF>.<LF>`,
`<CR>.<CR>`, `<LF>.<CRLF>` and friends are message content (SMTP smuggling,
CVE-2023-51764 and kin): whatever a downstream server might take as an end of DATA stays
inside this message. A bare LF line ending is normalised to CRLF (Postfix's `normalize`),
a bare CR stays data; a line starting with `.` loses that dot (RFC 5321 4.5.2).

How: the reader is asked for everything up to the next `.<CR><LF>` (any sentence end
matches too, which is only a few reads per message), which never reads past the end mark,
so pipelined commands after it stay in the reader. The message is then processed in bulk
(split at the last complete line; bytes methods instead of a loop per line).

Limits: a line longer than MAX_LINE octets (998 + CRLF, RFC 5321 4.5.3.1.6) or a message
larger than max_size (0 = no limit) does not stop the reading; the rest is drained and the
result says so, so that the session can answer after the end instead of desynchronising.
A client silent for `timeout` seconds gets asyncio.TimeoutError; memory stays bounded by
the reader's limit. A client that closes in the middle raises ConnectionError. An error
from sink (disk full) is kept in the result and the rest of the message is drained.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Callable

from store.fsio import StorageError

MAX_LINE = 1000
FLUSH_SIZE = 64 * 1024
_END_MARK = b"\r\n.\r\n"
_DOT_LINE_END = b".\r\n"
_BARE_LF = re.compile(rb"(?<!\r)\n")


@dataclass
class DataResult:
    size: int = 0                       # octets after dot-unstuffing, CRLF line endings
    too_big: bool = False
    line_too_long: bool = False
    storage_error: Exception | None = None

    @property
    def accepted(self) -> bool:
        return not (self.too_big or self.line_too_long or self.storage_error)


def _has_long_line(lines: bytes) -> bool:
    """Is a line, its LF included, longer than MAX_LINE? (split is faster than any regex here)"""
    return len(lines) >= MAX_LINE and max(map(len, lines.split(b"\n"))) >= MAX_LINE


class _Message:
    """Turns raw blocks into stored message text; drops everything once it is refused."""

    def __init__(self, sink: Callable[[bytes], object], result: DataResult, max_size: int, head: bytes):
        self.sink = sink
        self.result = result
        self.max_size = max_size
        self.partial = b""                       # the incomplete line at the end of the last block
        self.chunks: list[bytes] = [head] if head else []
        self.buffered = len(head)

    def add(self, block: bytes, final: bool = False) -> None:
        if not self.result.accepted:
            return
        data = self.partial + block
        cut = len(data) if final else data.rfind(b"\n") + 1
        lines, self.partial = data[:cut], data[cut:]
        if _has_long_line(lines) or len(self.partial) >= MAX_LINE:
            self.result.line_too_long = True
            return
        if lines.startswith(b"."):
            lines = lines[1:]
        lines = lines.replace(b"\n.", b"\n")
        if lines.count(b"\n") != lines.count(b"\r\n"):
            lines = _BARE_LF.sub(b"\r\n", lines)
        self.result.size += len(lines)
        if self.max_size and self.result.size > self.max_size:
            self.result.too_big = True
            return
        self.chunks.append(lines)
        self.buffered += len(lines)
        if self.buffered >= FLUSH_SIZE or final:
            self.flush()

    def flush(self) -> None:
        if self.chunks and self.result.accepted:
            try:
                self.sink(b"".join(self.chunks))
            except (StorageError, OSError) as e:
                self.result.storage_error = e
        self.chunks.clear()
        self.buffered = 0


async def _read_block(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Up to and including the next `.<CR><LF>`, or as much as the reader's limit allows."""
    async with asyncio.timeout(timeout):
        try:
            return await reader.readuntil(_DOT_LINE_END)
        except asyncio.LimitOverrunError as e:
            # e.consumed leaves the last bytes unread that could begin a `.<CR><LF>`
            return await reader.readexactly(e.consumed)
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("client closed the connection during DATA") from None


async def read_message(reader: asyncio.StreamReader, sink: Callable[[bytes], object],
                       max_size: int, timeout: float, head: bytes = b"") -> DataResult:
    result = DataResult()
    message = _Message(sink, result, max_size, head)
    before = b"\r\n"                              # the last two octets read (the DATA command's CRLF)
    while True:
        block = await _read_block(reader, timeout)
        if (before + block[-5:])[-5:] == _END_MARK and block.endswith(_DOT_LINE_END):
            message.add(block[:-3], final=True)
            return result
        message.add(block)
        before = (before + block)[-2:]
