"""The delivery scheduler: per-transport and per-destination queues, a bounded number in flight.

    scheduler = Scheduler(process_limit, destination_limit)
    result = await scheduler.submit(transport, destination, work)    # work() -> awaitable

Each transport (mailbox, pipe, file, ...) has a queue of its own, and within it every
destination (a user, a command, a file; later a domain) a FIFO of waiting deliveries. At
most `process_limit` deliveries of one transport run at once (Postfix: the transport's
process limit, default_process_limit), at most `destination_limit` of them for one
destination (default_destination_concurrency_limit). Whenever a slot frees, the
destinations that have work waiting take turns (round robin), so a destination that is slow
or has a long backlog holds at most its own share of its transport's slots, and nothing of
another transport's: a sleeping `|command` never delays a mailbox delivery.
work() starts only when its turn comes; its result, or its exception, goes to the submitter.
Diagnostics: none of its own.
"""
from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict, deque
from typing import Any, Awaitable, Callable

Work = Callable[[], Awaitable[Any]]


class _Lane:
    """One transport's deliveries: waiting per destination (in turn order) and running."""

    def __init__(self) -> None:
        self.waiting: OrderedDict[str, deque[tuple[Work, asyncio.Future]]] = OrderedDict()
        self.running: Counter[str] = Counter()
        self.total = 0


class Scheduler:
    def __init__(self, process_limit: int, destination_limit: int):
        self.process_limit = process_limit
        self.destination_limit = destination_limit
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task] = set()

    def submit(self, transport: str, destination: str, work: Work) -> asyncio.Future:
        """Queue work for destination on transport; the future has work's result."""
        future = asyncio.get_running_loop().create_future()
        lane = self._lanes.setdefault(transport, _Lane())
        lane.waiting.setdefault(destination, deque()).append((work, future))
        self._fill(lane)
        return future

    def in_flight(self, transport: str) -> int:
        lane = self._lanes.get(transport)
        return lane.total if lane else 0

    def _fill(self, lane: _Lane) -> None:
        """Start waiting work while the lane has slots, one destination's turn at a time."""
        while lane.total < self.process_limit:
            destination = next((d for d in lane.waiting if lane.running[d] < self.destination_limit), None)
            if destination is None:
                return
            queue = lane.waiting.pop(destination)
            work, future = queue.popleft()
            if queue:
                lane.waiting[destination] = queue          # behind the others: its turn is over
            if future.cancelled():
                continue                                   # the submitter gave up waiting
            lane.running[destination] += 1
            lane.total += 1
            task = asyncio.ensure_future(self._run(lane, destination, work, future))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, lane: _Lane, destination: str, work: Work, future: asyncio.Future) -> None:
        try:
            result = await work()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as e:  # noqa: BLE001 - handed to the submitter, who decides
            if not future.done():
                future.set_exception(e)
        else:
            if not future.done():
                future.set_result(result)
        finally:
            lane.total -= 1
            lane.running[destination] -= 1
            if not lane.running[destination]:
                del lane.running[destination]
            self._fill(lane)
