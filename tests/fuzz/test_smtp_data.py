"""Properties of the DATA reader (workers/smtpd/data.py) on any byte stream.

Round trip: a message that a correct client sends (CRLF lines, dot-stuffed, as smtplib
does), real mail from the corpus among them, is stored exactly, its over-long lines broken
as the module documents (`line[:max_line]`, then " " + max_line - 1 octets a piece).
Any stream at all, in blocks of any size: reading stops right after the first
<CRLF>.<CRLF> (the DATA command's CRLF counting), so pipelined commands are left for the
session and no bare-LF or bare-CR variant of the end mark ends anything (SMTP smuggling);
the only exceptions are the documented ones (ConnectionError when the client closes
first); the stored text has CRLF line ends only, no line longer than max_line, its size
is what the result says, and relaying it (dot-stuffed again) stores the very same text:
what this server accepts, it can pass on with exactly one end of data. The size limit and
a failing sink refuse the message but still read to its end.
"""
from __future__ import annotations

import asyncio
import re

from hypothesis import example, given, strategies as st

from store.fsio import StorageError
from tests.fuzz.budget import fuzz_settings
from tests.fuzz.seeds import FAKE_ENDS, messages, smuggling, to_crlf
from workers.smtpd.data import read_message

END = b"\r\n.\r\n"
NEXT = b"RSET\r\nQUIT\r\n"
READER_LIMITS = [16, 64, 1000, 128 * 1024]
MAX_LINES = [4, 16, 998, 2048]
CORPUS_MAX = 200_000


def stuff(message: bytes) -> bytes:
    """What a client sends for a message of CRLF lines: dots doubled, then the end mark."""
    return re.sub(rb"(?m)^\.", b"..", message) + b".\r\n"


def fold(message: bytes, max_line: int) -> bytes:
    """The documented breaking of lines longer than max_line octets."""
    out = []
    for line in message.split(b"\r\n")[:-1]:
        pieces = [line[:max_line]] + [b" " + line[at:at + max_line - 1]
                                      for at in range(max_line, len(line), max_line - 1)]
        out.append(b"\r\n".join(pieces) + b"\r\n")
    return b"".join(out)


async def _read(stream: bytes, reader_limit: int, max_size: int, max_line: int, sink_fails: bool):
    reader = asyncio.StreamReader(limit=reader_limit)
    reader.feed_data(stream)
    reader.feed_eof()
    stored: list[bytes] = []

    def sink(chunk: bytes) -> None:
        if sink_fails:
            raise StorageError("disk full", 28)
        stored.append(chunk)
    result = await read_message(reader, sink, max_size, max_line, timeout=5)
    return result, b"".join(stored), await reader.read()


def read(stream: bytes, reader_limit: int = 1000, max_size: int = 0, max_line: int = 998, sink_fails: bool = False):
    """-> (DataResult, the stored bytes, what was left in the reader)."""
    return asyncio.run(_read(stream, reader_limit, max_size, max_line, sink_fails))


def end_of_data(stream: bytes) -> int | None:
    """Where the first <CRLF>.<CRLF> ends, the CRLF of DATA counting as the first CRLF."""
    at = (b"\r\n" + stream).find(END)
    return None if at < 0 else at + len(END) - 2


def check_round_trip(message: bytes, reader_limit: int, max_line: int) -> None:
    """A message of CRLF lines, sent as a correct client sends it."""
    result, stored, rest = read(stuff(message) + NEXT, reader_limit, max_line=max_line)
    assert (stored, rest, result.size) == (fold(message, max_line), NEXT, len(stored))


def check_stream(stream: bytes, reader_limit: int, max_line: int) -> None:
    """Any stream (it may or may not hold an end of data)."""
    end = end_of_data(stream)
    try:
        result, stored, rest = read(stream, reader_limit, max_line=max_line)
    except ConnectionError:
        assert end is None
        return
    assert end is not None and rest == stream[end:]
    assert result.accepted and result.size == len(stored)
    assert stored == b"" or stored.endswith(b"\r\n")
    assert stored.count(b"\n") == stored.count(b"\r\n"), "a bare LF was stored"
    assert max(map(len, stored.split(b"\r\n"))) <= max_line
    relayed, again, left = read(stuff(stored) + NEXT, reader_limit, max_line=max_line)
    assert (again, left) == (stored, NEXT)


def check_limits(stream: bytes, max_size: int) -> None:
    """The size limit and a failing sink refuse the message, and the reading ends where it would have."""
    stream += END + NEXT
    full, stored, rest = read(stream)
    limited, kept, limited_rest = read(stream, max_size=max_size)
    assert limited.too_big == (full.size > max_size) and limited_rest == rest
    if not limited.too_big:
        assert kept == stored
    failed, _, failed_rest = read(stream, sink_fails=True)
    assert isinstance(failed.storage_error, StorageError) and not failed.accepted and failed_rest == rest


line_text = st.one_of(st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
                      st.sampled_from([b".", b"..", b". ", b".\r", b"From x", b"x" * 999, b"." + b"y" * 2100]))
client_message = st.lists(line_text, max_size=15).map(lambda lines: b"".join(line + b"\r\n" for line in lines))


@fuzz_settings(100)
@given(client_message, st.sampled_from(READER_LIMITS), st.sampled_from(MAX_LINES))
def test_client_message_round_trip(message, reader_limit, max_line):
    check_round_trip(message, reader_limit, max_line)


@fuzz_settings(40)
@given(st.deferred(lambda: st.sampled_from(messages(CORPUS_MAX))), st.sampled_from(READER_LIMITS[1:]))
def test_corpus_message_round_trip(named, reader_limit):
    check_round_trip(to_crlf(named[1]), reader_limit, 2048)


tokens = st.sampled_from([b"a", b".", b"..", b"\r", b"\n", b"\r\n", b".\r\n", b"\r\n.", b"\x00", b"\xff",
                          b"MAIL FROM:<e@b.example>\r\n", b"x" * 40, *FAKE_ENDS])
adversarial = st.one_of(st.binary(max_size=200), st.lists(tokens, max_size=40).map(b"".join),
                        st.sampled_from(FAKE_ENDS).map(smuggling))


@fuzz_settings(250)
@given(adversarial, st.sampled_from([b"", END + NEXT, END]), st.sampled_from(READER_LIMITS),
       st.sampled_from(MAX_LINES))
@example(b".\r\n", b"", 16, 4)
@example(b"\r\n.\r", b"\n" + NEXT, 16, 4)
@example(b"abcdefghij\r", END, 16, 4)
def test_any_stream(stream, tail, reader_limit, max_line):
    check_stream(stream + tail, reader_limit, max_line)


@fuzz_settings(100)
@given(adversarial, st.integers(1, 300))
def test_limits_refuse_but_read_to_the_end(stream, max_size):
    check_limits(stream, max_size)
