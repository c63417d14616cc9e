"""POP3 load: N concurrent clients, each repeating login, STAT, LIST, RETR all, QUIT.

    .venv/bin/python bench/pop3_load.py [--clients 1,32] [--sessions 5] [--messages 20] [--size 51200]

Starts the real master (tests/conftest.MailSystem: a temporary folder, one pop3d service
with maxproc 64), makes one user per client (a POP3 maildrop is locked per user) and puts
M messages of S bytes into each INBOX through store.mailstore. Then, for each N, N clients
run `--sessions` sessions one after another: USER/PASS (scrypt verification: the dominant
cost of a short session, on purpose what real clients pay), STAT, LIST, RETR of every
message (octets read exactly as announced by LIST), QUIT without DELE. Size caches are warm
after a first unmeasured session per user, as on a real server.

Prints one JSON line: git sha, host, parameters, and per N: sessions_per_s, mb_per_s
(message octets retrieved per second, 10^6 bytes), p50/p99 session latency.
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

from store.mailstore import INBOX, MailStore   # noqa: E402
from store.users import User, UserDB           # noqa: E402
from tests.conftest import MailSystem          # noqa: E402

PASSWORD = "bench-password"


def git_sha() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def make_message(number: int, size: int) -> bytes:
    head = (f"From: load@bench.example\r\nTo: bench@example.test\r\nSubject: load {number}\r\n"
            f"Message-ID: <load-{number}@bench.example>\r\n\r\n").encode()
    line = b"." + b"x" * 75 + b"\r\n"    # every line byte-stuffed: the worst case for RETR
    return head + line * max(0, (size - len(head)) // len(line))


def populate(system: MailSystem, users: int, messages: int, size: int) -> None:
    with UserDB(str(system.var / "users"), str(system.var / "secret.key")) as db:
        for n in range(users):
            db.add(User(f"load{n}"), PASSWORD)
    store = MailStore(system.var / "store", system.var / "index")
    try:
        for n in range(users):
            for m in range(messages):
                store.deliver(f"load{n}", INBOX, make_message(m, size))
    finally:
        store.index.close()


async def _ok(reader: asyncio.StreamReader) -> bytes:
    line = await reader.readline()
    if not line.startswith(b"+OK"):
        raise RuntimeError(f"server said {line!r}")
    return line


async def _multiline(reader: asyncio.StreamReader) -> list[bytes]:
    lines = []
    while (line := await reader.readline()) != b".\r\n":
        if not line:
            raise ConnectionError("closed inside a multi-line reply")
        lines.append(line)
    return lines


async def session(port: int, user: str) -> int:
    """One full session; returns the message octets received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = 0
    try:
        await _ok(reader)
        writer.write(f"USER {user}\r\nPASS {PASSWORD}\r\n".encode())
        await _ok(reader)
        await _ok(reader)
        writer.write(b"STAT\r\nLIST\r\n")
        await _ok(reader)
        await _ok(reader)
        sizes = [int(line.split()[1]) for line in await _multiline(reader)]
        for number, size in enumerate(sizes, 1):
            writer.write(f"RETR {number}\r\n".encode())
            await _ok(reader)
            got = 0                                    # LIST counts the octets without dot-stuffing
            while (line := await reader.readline()) != b".\r\n":
                got += len(line) - line.startswith(b"..")
            if got != size:
                raise RuntimeError(f"RETR sent {got} octets, LIST announced {size}")
            received += size
        writer.write(b"QUIT\r\n")
        await _ok(reader)
    finally:
        writer.close()
    return received


async def client(port: int, user: str, sessions: int, latencies: list[float]) -> int:
    total = 0
    for _ in range(sessions):
        start = time.perf_counter()
        total += await session(port, user)
        latencies.append(time.perf_counter() - start)
    return total


async def load(port: int, clients: int, sessions: int) -> dict:
    await asyncio.gather(*(session(port, f"load{n}") for n in range(clients)))   # warm the size caches
    latencies: list[float] = []
    start = time.perf_counter()
    octets = await asyncio.gather(*(client(port, f"load{n}", sessions, latencies) for n in range(clients)))
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "clients": clients, "sessions": len(latencies), "seconds": round(elapsed, 3),
        "sessions_per_s": round(len(latencies) / elapsed, 1),
        "mb_per_s": round(sum(octets) / elapsed / 1e6, 2),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,32", help="comma-separated client counts")
    parser.add_argument("--sessions", type=int, default=5, help="sessions per client")
    parser.add_argument("--messages", type=int, default=20, help="messages per mailbox")
    parser.add_argument("--size", type=int, default=51200, help="message size in bytes")
    args = parser.parse_args()
    counts = [int(n) for n in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="pop3-load-", dir=os.environ.get("BENCH_DIR")) as tmp:
        system = MailSystem(Path(tmp), {"log_level": "low"})
        key = system.add_service("pop3d", maxproc=64)
        system.add_auth_service()              # as etc/master.cf ships: logins are verified there
        system.start()
        try:
            populate(system, max(counts), args.messages, args.size)
            runs = [asyncio.run(load(system.port(key), n, args.sessions)) for n in counts]
        finally:
            system.stop()
            system.kill()
    print(json.dumps({
        "bench": "pop3_load", "git": git_sha(), "host": platform.node(), "python": platform.python_version(),
        "cpus": os.cpu_count(), "messages": args.messages, "size": args.size, "runs": runs,
    }), flush=True)


if __name__ == "__main__":
    main()
