"""qmgr's scheduler: the in-flight bounds, per-destination fairness, results and errors."""
from __future__ import annotations

import asyncio

import pytest

from workers.qmgr.scheduler import Scheduler


class Deliveries:
    """Deliveries that wait until released; records the order they start in and how many run."""

    def __init__(self):
        self.started: list[str] = []
        self.running = 0
        self.most = 0
        self.gates: dict[str, asyncio.Event] = {}

    def work(self, name: str):
        self.gates[name] = asyncio.Event()

        async def deliver() -> str:
            self.started.append(name)
            self.running += 1
            self.most = max(self.most, self.running)
            try:
                await self.gates[name].wait()
            finally:
                self.running -= 1
            return f"{name} done"
        return deliver

    def release(self, *names: str) -> None:
        for name in names:
            self.gates[name].set()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def test_no_more_than_the_process_limit_run_at_once():
    async def scenario():
        scheduler, d = Scheduler(process_limit=3, destination_limit=10), Deliveries()
        futures = [scheduler.submit("pipe", f"cmd{n % 4}", d.work(f"w{n}")) for n in range(10)]
        await settle()
        assert d.running == 3 and scheduler.in_flight("pipe") == 3
        d.release(*d.gates)
        assert await asyncio.gather(*futures) == [f"w{n} done" for n in range(10)]
        assert d.most == 3 and scheduler.in_flight("pipe") == 0
    asyncio.run(scenario())


def test_a_slow_destination_holds_up_neither_other_destinations_nor_other_transports():
    async def scenario():
        scheduler, d = Scheduler(process_limit=4, destination_limit=2), Deliveries()
        slow = [scheduler.submit("pipe", "|sleep", d.work(f"slow{n}")) for n in range(6)]
        other = [scheduler.submit("pipe", "|other", d.work(f"other{n}")) for n in range(2)]
        mail = [scheduler.submit("mailbox", "bob", d.work(f"bob{n}")) for n in range(3)]
        await settle()
        # the sleeping command has its destination's two slots; the others run beside it
        assert sorted(d.started) == ["bob0", "bob1", "other0", "other1", "slow0", "slow1"]
        d.release("other0", "other1", "bob0", "bob1")
        await settle()
        assert "bob2" in d.started
        d.release("bob2")
        assert await asyncio.gather(*other, *mail) == ["other0 done", "other1 done",
                                                       "bob0 done", "bob1 done", "bob2 done"]
        assert [f.done() for f in slow] == [False] * 6             # still sleeping, and still queued
        d.release(*d.gates)
        assert len(await asyncio.gather(*slow)) == 6
    asyncio.run(scenario())


def test_destinations_take_turns_when_a_slot_frees():
    async def scenario():
        scheduler, d = Scheduler(process_limit=1, destination_limit=1), Deliveries()
        futures = [scheduler.submit("mailbox", user, d.work(name))
                   for user, name in [("bob", "bob0"), ("bob", "bob1"), ("bob", "bob2"),
                                      ("carol", "carol0"), ("dave", "dave0")]]
        for _ in range(5):
            await settle()
            d.release(d.started[-1])
        await asyncio.gather(*futures)
        # bob's backlog came first, yet carol and dave do not wait behind all of it
        assert d.started == ["bob0", "bob1", "carol0", "dave0", "bob2"]
    asyncio.run(scenario())


def test_an_error_goes_to_its_submitter_and_frees_the_slot():
    async def scenario():
        scheduler, d = Scheduler(process_limit=1, destination_limit=1), Deliveries()

        async def broken():
            raise OSError("no such command")
        failing = scheduler.submit("pipe", "x", broken)
        after = scheduler.submit("pipe", "x", d.work("after"))
        with pytest.raises(OSError, match="no such command"):
            await failing
        await settle()
        d.release("after")
        assert await after == "after done" and scheduler.in_flight("pipe") == 0
    asyncio.run(scenario())


def test_work_whose_submitter_gave_up_before_its_turn_never_starts():
    async def scenario():
        scheduler, d = Scheduler(process_limit=1, destination_limit=1), Deliveries()
        first = scheduler.submit("pipe", "x", d.work("first"))
        abandoned = scheduler.submit("pipe", "x", d.work("abandoned"))
        abandoned.cancel()
        await settle()
        d.release("first")
        assert await first == "first done"
        await settle()
        assert d.started == ["first"] and scheduler.in_flight("pipe") == 0
    asyncio.run(scenario())
