"""SMTP load generator: N concurrent sessions x M messages of S bytes through the real master.

    .venv/bin/python bench/smtp_load.py [--sessions 1,32,300] [--messages 20] [--size 10240]

For each N it starts a fresh mail system (tests/conftest.MailSystem: a temporary folder,
one smtpd service with maxproc 300, no qmgr, so that only smtpd's durable acceptance path
is measured), opens N sessions at once, and in each sends M messages
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from store.fsio import write_durably          # noqa: E402
from tests.conftest import MailSystem          # noqa: E402

FLOOR_SECONDS = 3.0


def git_sha() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def make_message(size: int) -> bytes:
    head = b"From: load@bench.example\r\nTo: bob@example.test\r\nSubject: load test\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    body = line * max(0, (size - len(head)) // len(line))
    return head + body + b"\r\n.\r\n"


def measure_floor(directory: Path, size: int) -> float:
    """Durable files per second, written one after another, for FLOOR_SECONDS."""
    directory.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    count, start = 0, time.monotonic()
    while time.monotonic() - start < FLOOR_SECONDS:
        write_durably(directory, f"floor{count}", data)
        count += 1
    elapsed = time.monotonic() - start
    for name in os.listdir(directory):
        os.unlink(directory / name)
    return count / elapsed


async def _reply(reader: asyncio.StreamReader) -> int:
    """Read one (possibly multi-line) reply; returns its code."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return int(line[:3])


async def client(port: int, messages: int, message: bytes, latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    try:
        if await _reply(reader) != 220:
            return 0
        writer.write(b"EHLO bench.example\r\n")
        await _reply(reader)
        for _ in range(messages):
            writer.write(b"MAIL FROM:<load@bench.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
            codes = [await _reply(reader) for _ in range(3)]
            if codes != [250, 250, 354]:
                raise RuntimeError(f"unexpected replies {codes}")
            writer.write(message)
            start = time.perf_counter()
            code = await _reply(reader)
            latencies.append(time.perf_counter() - start)
            if code != 250:
                raise RuntimeError(f"message refused with {code}")
            sent += 1
        writer.write(b"QUIT\r\n")
        await _reply(reader)
    finally:
        writer.close()
    return sent


async def load(port: int, sessions: int, messages: int, message: bytes) -> tuple[int, float, list[float]]:
    latencies: list[float] = []
    start = time.perf_counter()
    sent = await asyncio.gather(*(client(port, messages, message, latencies) for _ in range(sessions)))
    return sum(sent), time.perf_counter() - start, latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_one(sessions: int, messages: int, size: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="smtp-load-", dir=os.environ.get("BENCH_DIR")) as tmp:
        system = MailSystem(Path(tmp), {"luser_relay": "bob", "log_level": "low",
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
