"""workers/_limits.py: line length and time limits, error budgets (no sockets: fed streams)."""
from __future__ import annotations

import asyncio

import pytest

from workers._limits import STREAM_LIMIT, ErrorBudget, LineTooLong, read_line


def _reader(*chunks: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=STREAM_LIMIT)
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    return reader


def _run(coro):
    return asyncio.run(coro)


def test_lines_then_partial_then_eof():
    async def go():
        reader = _reader(b"HELO x\r\nNOOP\nlast")
        return [await read_line(reader, 100, 1) for _ in range(4)]
    assert _run(go()) == [b"HELO x\r\n", b"NOOP\n", b"last", b""]


def test_long_line_is_dropped_and_the_session_goes_on():
    async def go():
        reader = _reader(b"x" * 50 + b"\r\nNEXT\r\n")
        with pytest.raises(LineTooLong):
            await read_line(reader, 20, 1)
        return await read_line(reader, 20, 1)
    assert _run(go()) == b"NEXT\r\n"


def test_line_beyond_the_stream_buffer_is_dropped_in_bounded_pieces():
    async def go():
        reader = _reader(*[b"y" * 65536] * 8, b"\nAFTER\n")
        with pytest.raises(LineTooLong):
            await read_line(reader, 1000, 5)
        return await read_line(reader, 1000, 1)
    assert _run(go()) == b"AFTER\n"


def test_silent_client_times_out():
    async def go():
        reader = _reader(b"partial", eof=False)
        await read_line(reader, 100, 0.05)
    with pytest.raises(TimeoutError):
        _run(go())


def test_error_budget():
    budget = ErrorBudget(3)
    assert [budget.charge() for _ in range(3)] == [False, False, True]
    assert budget.spent
