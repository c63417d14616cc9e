"""The mail index on a 100,000-message mailbox: compiled (store._index) vs the pure-Python
reference (store._index_py), in the same run.

    .venv/bin/python -m pytest -q bench/bench_index.py --benchmark-only \
        --benchmark-group-by=func --benchmark-columns=min,median,mean,rounds

Each benchmark runs once per implementation: append one message (reserve + append, two
durable LMDB commits); flag update over 1:* (+\\Seen then -\\Seen), also without the commit
fsync (the index's own work) and as a no-op (every message has the flag already); UID set ->
sequence numbers (an array("I")) and sequence numbers -> UID ranges (what STORE and UID FETCH
do first); a flag/size/date search; open-mailbox (load the snapshot). The mailbox has holes in its UIDs
(every 11th is missing) and random sizes, dates and flags from a fixed seed. README
"Benchmarks" records the ratios.
"""
from __future__ import annotations

import importlib
import random

import pytest

MESSAGES = 100_000
IMPLS = ["store._index", "store._index_py"]


def build(module_name, directory, durable):
    index = importlib.import_module(module_name).Index(directory, map_size=256 << 20, durable=durable)
    index.create_mailbox("bob", "INBOX", uidvalidity=1)
    rng = random.Random(7)
    uids = [uid for uid in range(1, MESSAGES * 11 // 10 + 2) if uid % 11][:MESSAGES]
    flag_choices = [(), ("\\Seen",), ("\\Seen", "\\Flagged"), ("\\Answered", "$Work")]
    index.append_many("bob", "INBOX", [
        (uid, rng.randint(500, 200_000), 1_600_000_000 + rng.randint(0, 10**8), rng.choice(flag_choices))
        for uid in uids
    ])
    return index


@pytest.fixture(scope="module", params=IMPLS)
def loaded(request, tmp_path_factory):
    index = build(request.param, tmp_path_factory.mktemp(request.param), durable=True)
    yield index
    index.close()


@pytest.fixture(scope="module", params=IMPLS)
def loaded_nosync(request, tmp_path_factory):
    """Without LMDB's fsync at commit: the index's own work, without the disk's share."""
    index = build(request.param, tmp_path_factory.mktemp(request.param), durable=False)
    yield index
    index.close()


def test_append(benchmark, loaded):
    def append_one():
        reservation = loaded.reserve_uid("bob", "INBOX")
        loaded.append("bob", "INBOX", reservation.uid, 4096, 1_700_000_000, ("\\Seen",))
    benchmark(append_one)


def toggle_seen(index):
    index.store_flags("bob", "INBOX", [(1, 0xFFFFFFFF)], "+", ["\\Seen"])
    index.store_flags("bob", "INBOX", [(1, 0xFFFFFFFF)], "-", ["\\Seen"])


def test_flag_update_all(benchmark, loaded):
    benchmark(toggle_seen, loaded)


def test_flag_update_all_nosync(benchmark, loaded_nosync):
    benchmark(toggle_seen, loaded_nosync)


def test_flag_update_all_unchanged(benchmark, loaded):
    """+FLAGS of a flag every message has already: a scan, no writes (the common STORE)."""
    loaded.store_flags("bob", "INBOX", [(1, 0xFFFFFFFF)], "+", ["\\Draft"])
    benchmark(loaded.store_flags, "bob", "INBOX", [(1, 0xFFFFFFFF)], "+", ["\\Draft"])


def test_uid_set_to_sequence_numbers(benchmark, loaded):
    view = loaded.open_view("bob", "INBOX")
    seqs = benchmark(view.resolve, "1:*", True)
    assert len(seqs) == len(view)


def test_sequence_numbers_to_uid_ranges(benchmark, loaded):
    view = loaded.open_view("bob", "INBOX")
    seqs = view.resolve("1:*")
    ranges = benchmark(view.uid_ranges, seqs)
    assert ranges == [(view.uid(1), view.uid(len(view)))]  # holes between seqs are not in the view


def test_search(benchmark, loaded):
    view = loaded.open_view("bob", "INBOX")
    benchmark(view.search, has=["\\Seen"], lacks=["\\Flagged"], larger=50_000, since=1_650_000_000)


def test_open_mailbox(benchmark, loaded):
    view = benchmark(loaded.open_view, "bob", "INBOX")
    assert len(view) >= MESSAGES
