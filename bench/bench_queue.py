"""The queue's durable steps: what smtpd waits for before 250, and what qmgr pays per recipient.

    .venv/bin/python -m pytest -q bench/bench_queue.py --benchmark-only \
        --benchmark-columns=min,median,mean,rounds

commit: one 10 KiB message, written in 64 KiB chunks, into incoming/ (file fsync, rename,
directory fsync). commit_large: a 2 MiB message (spooled to tmp/, then copied). mark_done:
one fsynced line in state/ID. ready_scan: list what is due in a queue of 1,000 deferred and
100 incoming files. The numbers depend on the disk's fsync latency more than on Python.
"""
from __future__ import annotations

import time

import pytest

from store.queue import Envelope, Queue, Recipient

SMALL = b"Subject: bench\r\n\r\n" + b"x" * (10 * 1024)
LARGE = b"Subject: bench\r\n\r\n" + b"y" * (2 * 1024 * 1024)


@pytest.fixture
def queue(tmp_path):
    q = Queue(str(tmp_path / "queue"))
    q.ensure_layout()
    return q


def commit(q: Queue, message: bytes) -> str:
    writer = q.writer()
    for start in range(0, len(message), 64 * 1024):
        writer.write(message[start:start + 64 * 1024])
    return writer.commit(Envelope("alice@example.org", [Recipient("bob@example.test")]))


def test_commit(benchmark, queue):
    benchmark(commit, queue, SMALL)


def test_commit_large(benchmark, queue):
    benchmark.pedantic(commit, args=(queue, LARGE), rounds=20)


def test_mark_done(benchmark, queue):
    qid = commit(queue, SMALL)
    keys = iter(range(10**9))
    benchmark(lambda: queue.mark_done(qid, str(next(keys))))


def test_ready_scan(benchmark, queue):
    for _ in range(1000):
        qid = commit(queue, b"x")
        queue.activate(qid)
        queue.defer(qid, time.time() + 3600)
    for _ in range(100):
        commit(queue, b"x")
    due = benchmark(queue.ready)
    assert len(due) == 100
