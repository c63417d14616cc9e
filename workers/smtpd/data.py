"""The DATA phase: read a message up to <CRLF>.<CRLF>, unstuff dots, enforce limits.

read_message(reader, sink, max_size, max_line, timeout, head=b"") -> DataResult reads from an
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

Long lines (RFC 5321 4.5.3.1.6 allows 998 octets, but mail with longer ones exists) are
kept, never refused: a line of up to `max_line` octets (line_length_limit, 2048 as in
Postfix; its CRLF and a stuffing dot not counted) is stored whole; a longer one is broken
after max_line octets by inserting CRLF SP, as often as needed, so every octet is kept and a
broken header line stays one (folded) header field. Each piece but the first therefore
starts with a space and holds max_line - 1 octets of the original line.

Limits: a message larger than max_size (0 = no limit) does not stop the reading; the rest
is drained and the result says so, so that the session can answer after the end instead of
desynchronising. A client silent for `timeout` seconds gets asyncio.TimeoutError; memory
stays bounded by the reader's limit plus one line of max_line octets. A client that closes
in the middle raises ConnectionError. An error from sink (disk full) is kept in the result
and the rest of the message is drained.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Callable

from store.fsio import StorageError

FLUSH_SIZE = 64 * 1024
_END_MARK = b"\r\n.\r\n"
_DOT_LINE_END = b".\r\n"
_BARE_LF = re.compile(rb"(?<!\r)\n")


@dataclass
class DataResult:
    size: int = 0                       # octets stored: dots unstuffed, CRLF line endings, long lines broken
    too_big: bool = False
    storage_error: Exception | None = None

    @property
    def accepted(self) -> bool:
        return not (self.too_big or self.storage_error)


def _break(line: bytes, max_line: int, keep: int = 0) -> tuple[bytes, bytes]:
    """Break a raw line (no LF in it, its stuffing dot still there) as the module says.

    -> (the pieces before the last, each ending in CRLF; the last piece). `keep` octets more
    are left in the last piece: the end of an incomplete line may be the CR of its CRLF.
    """
    first = max_line + line.startswith(b".")
    if len(line) <= first + keep:
        return b"", line
    step = max_line - 1
    pieces, pos = [line[:first]], first
    while len(line) - pos > step + keep:
        pieces.append(b" " + line[pos:pos + step])
        pos += step
    return b"\r\n".join(pieces) + b"\r\n", b" " + line[pos:]


def _break_lines(lines: bytes, max_line: int) -> bytes:
    """Every line of lines (complete lines, LF-terminated) broken when longer than max_line."""
    # split is faster than any regex here; most blocks have no long line at all
    if len(lines) <= max_line or max(map(len, lines.split(b"\n"))) <= max_line:
        return lines
    out = []
    for line in lines.split(b"\n"):
        cr = b"\r" if line.endswith(b"\r") else b""
        head, last = _break(line[:-1] if cr else line, max_line)
        out.append(head + last + cr)
    return b"\n".join(out)


class _Message:
    """Turns raw blocks into stored message text; drops everything once it is refused."""

    def __init__(self, sink: Callable[[bytes], object], result: DataResult, max_size: int, max_line: int,
                 head: bytes):
        self.sink = sink
        self.result = result
        self.max_size = max_size
        self.max_line = max_line
        self.partial = b""                       # the incomplete line at the end of the last block
        self.chunks: list[bytes] = [head] if head else []
        self.buffered = len(head)

    def add(self, block: bytes, final: bool = False) -> None:
        if not self.result.accepted:
            return
        data = self.partial + block
        cut = len(data) if final else data.rfind(b"\n") + 1
        lines, self.partial = _break_lines(data[:cut], self.max_line), data[cut:]
        if len(self.partial) > self.max_line + 1:    # a line still growing: store its beginning now
            head, self.partial = _break(self.partial, self.max_line, keep=1)
            lines += head
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
                       max_size: int, max_line: int, timeout: float, head: bytes = b"") -> DataResult:
    result = DataResult()
    message = _Message(sink, result, max_size, max_line, head)
    before = b"\r\n"                              # the last two octets read (the DATA command's CRLF)
    while True:
        block = await _read_block(reader, timeout)
        if (before + block[-5:])[-5:] == _END_MARK and block.endswith(_DOT_LINE_END):
            message.add(block[:-3], final=True)
            return result
        message.add(block)
        before = (before + block)[-2:]
