"""Connection.read_command and the worker's Drain: a session parked waiting for its next
command is woken by the master's stop without a watcher task; any other cancellation still
cancels; a line that arrived is never lost to the wake-up."""
from __future__ import annotations

import asyncio

import pytest

from tests.fakes import FakeConnection
from tests.unit.workers.test_session import PARAMS


def test_a_parked_wait_ends_with_none_and_leaves_the_buffer_alone():
    async def scenario():
        conn = FakeConnection(PARAMS, eof=False)
        waiting = asyncio.ensure_future(conn.read_command(100, 30))
        await asyncio.sleep(0.01)
        conn.feed(b"NOOP")                        # half a line: nothing is taken by the wake-up
        await asyncio.sleep(0.01)
        conn.draining.set()
        result = await asyncio.wait_for(waiting, 5)
        return result, conn.unread(), await conn.read_command(100, 30), asyncio.current_task().cancelling()
    assert asyncio.run(scenario()) == (None, b"NOOP", None, 0)


def test_after_the_wake_up_the_sessions_own_timeouts_still_work():
    async def session(conn):
        assert await conn.read_command(100, 30) is None
        assert asyncio.current_task().cancelling() == 0
        try:                                      # the wake-up left no cancellation behind
            async with asyncio.timeout(0.05):
                await asyncio.sleep(1)
        except TimeoutError:
            return "timed out"
        return "not timed out"

    async def scenario():
        conn = FakeConnection(PARAMS, eof=False)
        task = asyncio.ensure_future(session(conn))
        await asyncio.sleep(0.01)
        conn.draining.set()
        return await asyncio.wait_for(task, 5)
    assert asyncio.run(scenario()) == "timed out"


def test_another_cancellation_is_not_swallowed():
    async def scenario():
        conn = FakeConnection(PARAMS, eof=False)
        task = asyncio.ensure_future(conn.read_command(100, 30))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return conn.draining.parked
    assert asyncio.run(scenario()) == {}
