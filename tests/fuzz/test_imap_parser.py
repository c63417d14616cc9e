"""Properties of the IMAP command reader (workers/imapd/parser.py).

Any input, fed in any chunks: reading commands until the stream ends or a Bad says to close
gives commands and Bad only (Disconnected at a cut), never another exception, and always
ends; the continuation is asked once per synchronising literal of a command read whole.
Round trip: arguments (atoms, quoted strings with escapes, literals synchronising or not,
NIL, nested lists) written as a client writes them read back as the same tokens.
"""
from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.budget import fuzz_settings
from workers.imapd.parser import (
    NIL,
    Bad,
    Disconnected,
    Limits,
    Literal,
    String,
    read_command,
)

LIMITS = Limits(line=80, literal=40, append_literal=60, command=300, depth=4, tokens=30)
PIECES = [b"{3}\r\n", b"{2+}\r\n", b"~{1}\r\n", b"{999+}\r\n", b"{50}\r\n", b"(", b")", b'"', b"\\", b"\r\n",
          b"\n", b" ", b"a1 ", b"APPEND ", b"UID FETCH ", b"BODY.PEEK[", b"HEADER.FIELDS (A B)", b"]<0.1>",
          b"NIL", b"\x00", b"\xff", b"x" * 90]


async def _feed(reader: asyncio.StreamReader, data: bytes, chunk: int) -> None:
    for start in range(0, len(data), chunk):
        reader.feed_data(data[start:start + chunk])
        await asyncio.sleep(0)
    reader.feed_eof()


async def _read_all(data: bytes, chunk: int, limits: Limits = LIMITS) -> list:
    reader = asyncio.StreamReader(limit=limits.line * 2)
    feeder = asyncio.ensure_future(_feed(reader, data, chunk))
    out: list = []
    asked = 0

    async def on_continuation():
        nonlocal asked
        asked += 1
    try:
        while True:
            asked = 0
            try:
                command = await read_command(reader, limits, on_continuation)
            except Bad as error:
                out.append(error)
                if error.close:
                    break
                continue
            if command is None:
                break
            out.append((command, asked))
    except Disconnected:
        pass
    feeder.cancel()
    return out


def _sync_literals(args: list) -> int:
    return sum(_sync_literals(a) if isinstance(a, list) else isinstance(a, Literal) and a.sync for a in args)


@fuzz_settings(150)
@given(st.lists(st.one_of(st.binary(max_size=30), st.sampled_from(PIECES)), max_size=25).map(b"".join),
       st.integers(1, 50))
def test_any_input_ends_in_commands_or_bad(data, chunk):
    asyncio.run(asyncio.wait_for(_read_all(data, chunk), 5))


class Sent(Literal):
    """A literal as the client sent it (sync: with "{n}", which needs the continuation)."""
    sync = True


ATOMS = st.text("abcXYZ019:*,\\$%.-_]", min_size=1, max_size=8).filter(lambda t: t.upper() != "NIL")
QUOTED = st.text("ab \"\\'()[]{}%*é", max_size=8).map(String)


@st.composite
def literals(draw) -> Sent:
    token = Sent(draw(st.binary(max_size=12).filter(lambda b: b"\0" not in b)))
    token.sync = draw(st.booleans())
    return token


ARGS = st.recursive(st.one_of(ATOMS, QUOTED, literals(), st.just(NIL)),
                    lambda inner: st.lists(inner, max_size=4), max_leaves=12)


def _write(args: list) -> bytes:
    out = []
    for arg in args:
        if isinstance(arg, list):
            out.append(b"(" + _write(arg) + b")")
        elif isinstance(arg, Sent):
            out.append(b"{%d%s}\r\n" % (len(arg), b"" if arg.sync else b"+") + arg)
        elif isinstance(arg, String):
            out.append(b'"' + arg.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"')
        else:
            out.append(str(arg).encode())
    return b" ".join(out)


def _plain(args: list) -> list:
    return [_plain(a) if isinstance(a, list) else bytes(a) if isinstance(a, bytes) else a for a in args]


@fuzz_settings(150)
@given(st.lists(ARGS, max_size=5), st.integers(1, 20))
def test_round_trip(args, chunk):
    data = b"t1 X " + _write(args) + b"\r\n" if args else b"t1 X\r\n"
    out = asyncio.run(asyncio.wait_for(_read_all(data, chunk, Limits()), 5))
    command, asked = out[0]
    assert len(out) == 1 and command.tag == "t1" and command.name == "X"
    assert _plain(command.args) == _plain(args) and asked == _sync_literals(args)
