"""qmgr after a crash: the files that were under way are tried one at a time.

Every file in active/ when qmgr died is counted by store.queue.recover, and one that crashed
it MAX_RECOVERIES times goes to corrupt/. If those files ran side by side again, a file that
kills qmgr would drag its innocent neighbours to corrupt/ with it; so each of them runs with
nothing else under way. Files that were not under way still run concurrently.
"""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from workers.qmgr.manager import QueueManager


class FakeQueue:
    def __init__(self, ready: list[str], recovered: list[str]):
        self.ready_ids, self.recovered = ready, recovered

    def path(self, *parts: str) -> str:
        return "/nonexistent/" + "/".join(parts)

    def ensure_layout(self) -> None:
        pass

    def recover(self, _max: int) -> dict[str, list[str]]:
        return {"incoming": self.recovered, "corrupt": [], "hold": [], "deleted": []}

    def ready(self, _now: float) -> list[str]:
        return self.ready_ids

    def activate_many(self, queue_ids: list[str]) -> list[str]:
        return list(queue_ids)


class Recorder(QueueManager):
    """Deliveries that take a moment and record how many ran at once."""
    def __init__(self, ctx):
        super().__init__(ctx)
        self.running: set[str] = set()
        self.overlaps: dict[str, set[str]] = {}

    async def deliver(self, queue_id: str) -> None:
        self.running.add(queue_id)
        await asyncio.sleep(0.01)
        self.overlaps[queue_id] = set(self.running) - {queue_id}
        await asyncio.sleep(0.01)
        self.running.discard(queue_id)


def run_pass(ready: list[str], recovered: list[str]) -> Recorder:
    async def scenario() -> Recorder:
        async def in_files(fn, *args):
            return fn(*args)
        log = SimpleNamespace(info=lambda _t: None, error=lambda _t: None)
        ctx = SimpleNamespace(queue=FakeQueue(ready, recovered), log=log, in_files=in_files,
                              params=SimpleNamespace(qmgr_message_active_limit=100, disk_min_free=0,
                                                     run_directory="/nonexistent"))
        qmgr = Recorder(ctx)
        await qmgr.start()
        await qmgr.run_pass(SimpleNamespace(stopping=False))
        if qmgr.attempts:
            await asyncio.wait(list(qmgr.attempts.values()))
        return qmgr
    return asyncio.run(scenario())


def test_files_recovered_from_a_crash_run_alone():
    qmgr = run_pass(ready=["A", "B", "S1", "C", "S2"], recovered=["S1", "S2"])
    assert set(qmgr.overlaps) == {"A", "B", "S1", "C", "S2"}
    assert qmgr.overlaps["S1"] == set() and qmgr.overlaps["S2"] == set()
    assert qmgr.overlaps["A"] == {"B"}                 # the others still run side by side
    assert not qmgr.suspects                           # tried once alone, then ordinary again


def test_without_a_crash_files_run_side_by_side():
    qmgr = run_pass(ready=["A", "B", "C"], recovered=[])
    assert qmgr.overlaps["A"] == {"B", "C"}
