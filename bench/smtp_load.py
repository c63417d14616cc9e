"""SMTP load generator: N concurrent sessions x M messages of S bytes through the real master.

    .venv/bin/python bench/smtp_load.py [--sessions 1,32,300] [--messages 20] [--size 10240]

For each N it starts a fresh mail system (tests/conftest.MailSystem: a temporary folder,
one smtpd service with maxproc 300, no qmgr, so that only smtpd's durable acceptance path
is measured; in_flow_delay = 0, or the queue that no qmgr empties would hold every MAIL
back once it passes in_flow_queue_limit), opens N sessions at once, and in each sends M messages
(MAIL, RCPT, DATA pipelined; the message is S bytes). Latency is the time from the
client's final `.` to the server's 250, i.e. spooling + commit (fsync of file and
directory). Before and after the load it measures the floor: how many S-byte
files per second the same filesystem takes with write + fsync + rename + directory fsync,
one after another (store.fsio.write_durably, the very call the queue uses). A shared disk
is noisy, so the ratio is taken against the better of the two floor measurements.

Prints one JSON line per N: git sha, host, parameters, msgs_per_s, p50_ms, p99_ms,
floor_per_s [before, after] and ratio = msgs_per_s / max(floor_per_s).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from loadlib import git_sha, make_message, measure_floor, percentile, smtp_session
from tests.conftest import MailSystem          # loadlib put the checkout on sys.path


async def load(port: int, sessions: int, messages: int, message: bytes) -> tuple[int, float, list[float]]:
    latencies: list[float] = []
    mails = [("bob@example.test", message)] * messages
    start = time.perf_counter()
    sent = await asyncio.gather(*(smtp_session(port, mails, lambda _n, sent, acked: latencies.append(acked - sent))
                                  for _ in range(sessions)))
    return sum(sent), time.perf_counter() - start, latencies


def run_one(sessions: int, messages: int, size: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="smtp-load-", dir=os.environ.get("BENCH_DIR")) as tmp:
        system = MailSystem(Path(tmp), {"luser_relay": "bob", "log_level": "low", "in_flow_delay": "0",
                                        "message_size_limit": str(max(size * 2, 10240000))})
        key = system.add_service("smtpd", maxproc=300)
        system.start()
        try:
            floor_dir = system.var / "queue" / "bench-floor"
            floor_before = measure_floor(floor_dir, size)
            sent, elapsed, latencies = asyncio.run(load(system.port(key), sessions, messages, make_message(size)))
            floor_after = measure_floor(floor_dir, size)
        finally:
            system.stop()
            system.kill()
    rate = sent / elapsed
    return {
        "bench": "smtp_load", "git": git_sha(), "host": platform.node(), "python": platform.python_version(),
        "sessions": sessions, "messages_per_session": messages, "size": size, "sent": sent,
        "seconds": round(elapsed, 3), "msgs_per_s": round(rate, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2), "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "floor_per_s": [round(floor_before, 1), round(floor_after, 1)],
        "ratio": round(rate / max(floor_before, floor_after), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", default="1,32,300", help="comma-separated session counts")
    parser.add_argument("--messages", type=int, default=20, help="messages per session")
    parser.add_argument("--size", type=int, default=10240, help="message size in bytes")
    args = parser.parse_args()
    for sessions in (int(n) for n in args.sessions.split(",")):
        print(json.dumps(run_one(sessions, args.messages, args.size)), flush=True)


if __name__ == "__main__":
    main()
