"""Group commit in qmgr's mailbox transport: deliveries that wait for the store thread go
in one MailStore.deliver_many, and the quota counts the messages ahead in the same batch."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from master.params import Params
from store.directory import Directory
from store.mailstore import MailStore
from store.resolve import Mailbox
from workers.qmgr.message import MessageFile
from workers.qmgr.transports import mailbox
from workers.qmgr.transports.base import Delivery
from workers.qmgr.transports.mailbox import MailboxTransport
from tests.fakes import QuotaUsers

QUOTA = 10_000


@pytest.fixture
def setup(tmp_path):
    store = MailStore(tmp_path / "store", tmp_path / "index")
    thread = ThreadPoolExecutor(1)
    params = Params({"data_directory": str(tmp_path)}, {}, str(tmp_path))
    transport = MailboxTransport(store, Directory(params, QuotaUsers(QUOTA), None, store), thread, "mail.example.test")
    batches = []
    real = store.deliver_many

    def deliver_many(requests):
        batches.append([r.delivery_id for r in requests])
        return real(requests)
    store.deliver_many = deliver_many

    def delivery(queue_id: str, user: str, size: int) -> Delivery:
        path = tmp_path / f"queue-file-{queue_id}"
        path.write_bytes(b"HEAD\n" + b"x" * size)
        return Delivery(queue_id, Mailbox(user), "alice@example.org", f"{user}@example.test",
                        f"{user}@example.test", MessageFile(str(path), 5, size))
    yield SimpleNamespace(store=store, transport=transport, batches=batches, delivery=delivery)
    thread.shutdown()
    store.close()


def head(user: str) -> int:
    return len(f"Return-Path: <alice@example.org>\r\nDelivered-To: {user}@example.test\r\n")


def test_concurrent_deliveries_go_in_one_batch(setup):
    async def run():
        alone = await setup.transport.deliver(setup.delivery("Q0", "carol", 100))  # no load: at once
        together = await asyncio.gather(*(setup.transport.deliver(setup.delivery(f"Q{i}", user, 100))
                                          for i, user in enumerate(["bob", "carol", "bob", "dave", "carol"], 1)))
        return alone, together
    alone, together = asyncio.run(run())
    assert alone.ok and all(outcome.ok for outcome in together)
    assert setup.batches == [["Q0:carol"], ["Q1:bob", "Q2:carol", "Q3:bob", "Q4:dave", "Q5:carol"]]
    assert [o.detail for o in together] == ["uid 1", "uid 2", "uid 2", "uid 1", "uid 3"]
    assert len(setup.store.open_mailbox("carol", "INBOX")) == 3


def test_deliveries_wait_for_the_batch_ahead_and_then_go_together(setup, monkeypatch):
    """While a batch is being stored, the next deliveries collect; bounded by MAX_BATCH."""
    monkeypatch.setattr(mailbox, "MAX_BATCH", 3)
    release, real = threading.Event(), setup.store.deliver_many

    def slow_first(requests):
        release.wait(10)
        return real(requests)
    setup.store.deliver_many = slow_first

    async def run():
        first = asyncio.ensure_future(setup.transport.deliver(setup.delivery("Q0", "carol", 10)))
        await asyncio.sleep(0.05)  # the store thread is busy with Q0
        later = [asyncio.ensure_future(setup.transport.deliver(setup.delivery(f"Q{i}", "carol", 10)))
                 for i in range(1, 6)]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(first, *later)
    assert all(outcome.ok for outcome in asyncio.run(run()))
    assert setup.batches == [["Q0:carol"], ["Q1:carol", "Q2:carol", "Q3:carol"], ["Q4:carol", "Q5:carol"]]


def test_quota_counts_the_messages_ahead_in_the_batch(setup):
    setup.store.deliver("bob", "INBOX", b"y" * 1000, delivery_id="Q0:bob")
    del setup.batches[:]
    sizes = [("Q0", "bob", 3000), ("Q1", "bob", 4000), ("Q2", "carol", 50_000), ("Q3", "bob", 5000),
             ("Q4", "bob", 20_000), ("Q5", "bob", 1000)]

    async def run():
        return await asyncio.gather(*(setup.transport.deliver(setup.delivery(q, user, size))
                                      for q, user, size in sizes))
    outcomes = asyncio.run(run())
    assert setup.batches == [["Q1:bob", "Q2:carol", "Q5:bob"]]  # one batch; refused ones are not stored
    assert outcomes[0].ok and outcomes[0].detail == "stored before"   # whatever the quota
    assert outcomes[1].ok and outcomes[2].ok and outcomes[5].ok
    # Q3 alone would fit; with Q1 ahead of it in the batch (not stored yet) it would not
    assert (outcomes[3].ok, outcomes[3].permanent, outcomes[3].status) == (False, False, "4.2.2")
    assert (outcomes[4].ok, outcomes[4].permanent, outcomes[4].status) == (False, True, "5.2.2")
    assert setup.store.usage("bob") == 1000 + 4000 + head("bob") + 1000 + head("bob") <= QUOTA
