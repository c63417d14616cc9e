"""A stored message as POP3 sends it: CRLF line ends and byte-stuffed dots (RFC 1939 3).

wire_chunks(file) yields the message in blocks of about CHUNK bytes exactly as RETR puts
it on the wire (without the terminating "." line): every line end becomes CRLF (files may
hold LF or CRLF), a line that starts with "." gets one more, and a last line without a
line end gets CRLF. The file is read in blocks cut after their last LF, so a message of any
size streams in bounded memory; a line longer than a block is passed on in pieces (never
between a CR and its LF), and a piece that continues a line is not a line start, so its
first "." is not stuffed. Each block is rewritten by bytes methods, not line by line: line
ends only when the block has a bare LF (most stored mail is CRLF already), dots by one
replace of LF "." plus the block's first octet.
message_size(file) is the size LIST, STAT and RETR's "+OK n octets" report: the octets of
the message RETR sends, with CRLF line ends but without the stuffed dots and the final
".\r\n" (RFC 1939 11, as Dovecot counts); it runs the very line-end code that RETR runs,
so the two cannot disagree.
top_chunks(chunks, lines) cuts such a stream after the header, the empty line and `lines`
lines of the body (TOP).
Diagnostics: none; I/O errors of the file propagate.
"""
from __future__ import annotations

from typing import BinaryIO, Iterable, Iterator

CHUNK = 256 * 1024


def _crlf(block: bytes) -> bytes:
    """Every LF with a CR before it; a lone CR stays as it is."""
    if block.count(b"\n") == block.count(b"\r\n"):
        return block
    return block.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _stuff(block: bytes, at_line_start: bool) -> bytes:
    stuffed = block.replace(b"\n.", b"\n..")
    return b"." + stuffed if at_line_start and block.startswith(b".") else stuffed


def _crlf_blocks(file: BinaryIO) -> Iterator[tuple[bytes, bool]]:
    """(block with CRLF line ends, whether it starts at the start of a line)."""
    carry = b""
    at_line_start = True
    while data := file.read(CHUNK):
        data = carry + data
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if len(data) < CHUNK:
                carry = data
                continue
            # One very long line: pass a piece on, but never split a CR from its LF.
            cut = len(data) - 1 if data.endswith(b"\r") else len(data)
        block, carry = data[:cut], data[cut:]
        yield _crlf(block), at_line_start
        at_line_start = block.endswith(b"\n")
    if carry:
        yield _crlf(carry + b"\n"), at_line_start
    elif not at_line_start:             # a last line without its end, passed on in pieces
        yield b"\r\n", False


def wire_chunks(file: BinaryIO) -> Iterator[bytes]:
    for block, at_line_start in _crlf_blocks(file):
        yield _stuff(block, at_line_start)


def message_size(file: BinaryIO) -> int:
    return sum(len(block) for block, _ in _crlf_blocks(file))


def top_chunks(chunks: Iterable[bytes], lines: int) -> Iterator[bytes]:
    """The header, the empty line and the first `lines` body lines of a wire stream."""
    in_header = True
    line_length = 0          # octets of the current line seen in earlier chunks
    left = lines
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start) + 1) > 0:
            length = line_length + end - start
            line_length = 0
            start = end
            if in_header:
                if length == 2:  # the empty line that ends the header
                    in_header = False
                    if left == 0:
                        yield chunk[:end]
                        return
            else:
                left -= 1
                if left == 0:
                    yield chunk[:end]
                    return
        line_length += len(chunk) - start
        yield chunk
