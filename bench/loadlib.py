"""What the load benchmarks (smtp_load.py, delivery_load.py) share: the checkout's git sha,
the test message, the disk floor, the SMTP client side, percentiles. Importing it compiles
the workers' bytecode (as `make install` and a production install do), so that no worker
start of a benchmark compiles its sources.

    git_sha() -> short sha;  make_message(size, header=b"") -> S bytes ending in CRLF.CRLF
    measure_floor(directory, size) -> durable files/s (store.fsio.write_durably, in turn)
    await smtp_session(port, mails, accepted) -> messages accepted: one session sending each
        (recipient, message) of `mails` (MAIL, RCPT, DATA pipelined), calling
        accepted(n, sent, acknowledged) with perf_counter times of the final `.` and the 250
    percentile(values, fraction)
"""
from __future__ import annotations

import asyncio
import compileall
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
for _package in ("master", "workers", "store"):
    compileall.compile_dir(str(REPO / _package), quiet=1)

from store.fsio import write_durably          # noqa: E402

FLOOR_SECONDS = 3.0
SENDER = "load@bench.example"


def git_sha() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def make_message(size: int, header: bytes = b"") -> bytes:
    """About `size` bytes of message with the DATA terminator; `header`: extra header lines."""
    head = header + b"From: load@bench.example\r\nTo: bob@example.test\r\nSubject: load test\r\n\r\n"
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


async def smtp_session(port: int, mails: Iterable[tuple[str, bytes]],
                       accepted: Callable[[int, float, float], None]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    try:
        if await _reply(reader) != 220:
            return 0
        writer.write(b"EHLO bench.example\r\n")
        await _reply(reader)
        for n, (recipient, message) in enumerate(mails):
            writer.write(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode())
            codes = [await _reply(reader) for _ in range(3)]
            if codes != [250, 250, 354]:
                raise RuntimeError(f"unexpected replies {codes}")
            writer.write(message)
            start = time.perf_counter()
            code = await _reply(reader)
            if code != 250:
                raise RuntimeError(f"message refused with {code}")
            accepted(n, start, time.perf_counter())
            sent += 1
        writer.write(b"QUIT\r\n")
        await _reply(reader)
    finally:
        writer.close()
    return sent


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
