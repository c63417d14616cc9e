"""Delivery load: M messages over N concurrent SMTP sessions, from acceptance into K mailboxes.

    .venv/bin/python bench/delivery_load.py [--sessions 1,32,300] [--messages 200] [--users 10]
                                            [--size 10240] [--counter strace|perf|none]

For each N it starts a fresh mail system (tests/conftest.MailSystem: smtpd with maxproc 300
and qmgr, on a free loopback port), creates K users (u0 ... uK-1), and sends M messages of S
bytes, message i to user i mod K, spread over N sessions opened at once (bench/loadlib.py).
Each message carries an `X-Bench-Id:` line. A poller thread reads the users' INBOX indexes
(store.mailstore, read-only) every POLL seconds and notes when each message appears, so:
    msgs_per_s   M / (last message in a mailbox - first 250)
    p50/p99_ms   from a message's 250 to its poll that found it in the mailbox
                 (POLL seconds of resolution)
    syncs_per_msg  fsync, fdatasync, sync_file_range and msync calls of qmgr (all its threads
                 and children) from before the first message until the queue is empty again,
                 over M, counted by `strace -c -f -p <qmgr pid>` (--counter strace). strace
                 stops qmgr at every system call it makes: qmgr falls behind, its batches grow,
                 and rates and latencies are far lower. --counter perf counts the same calls
                 with `perf stat` on the syscall tracepoints, which costs qmgr next to nothing;
                 --counter none counts nothing.
Before and after the load it measures the disk floor (S-byte files written one after another
with store.fsio.write_durably), as smtp_load.py does. One JSON line per N. Every wait is
bounded (DEADLINE seconds for the delivery of one run).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from loadlib import git_sha, make_message, measure_floor, percentile, smtp_session
from store.mailstore import INBOX, MailStore       # loadlib put the checkout on sys.path
from tests.conftest import MailSystem

POLL = 0.01                     # seconds between looks at the mailboxes
DEADLINE = 300.0                # seconds for one run's messages to reach their mailboxes
SYNC_CALLS = ("fsync", "fdatasync", "sync_file_range", "msync")
BENCH_ID = re.compile(rb"^X-Bench-Id: (\d+)\r?$", re.MULTILINE)


class Mailboxes(threading.Thread):
    """Polls the users' INBOXes; delivered[i] = perf_counter time message i was first seen."""

    def __init__(self, system: MailSystem, users: list[str], expected: int):
        super().__init__(daemon=True)
        self.store = MailStore(str(system.var / "store"), str(system.var / "index"))
        self.users, self.expected = users, expected
        self.delivered: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        seen = dict.fromkeys(self.users, 0)
        deadline = time.monotonic() + DEADLINE
        try:
            while len(self.delivered) < self.expected and not self.stop.is_set() and time.monotonic() < deadline:
                for user in self.users:
                    if self.store.mailbox(user, INBOX) is None:
                        continue                       # no mail yet (opening would create it)
                    view = self.store.open_mailbox(user, INBOX)
                    now = time.perf_counter()
                    for seq in range(seen[user] + 1, len(view) + 1):
                        with view.open(seq) as f:
                            found = BENCH_ID.search(f.read(1024))
                        if found:
                            self.delivered.setdefault(int(found.group(1)), now)
                    seen[user] = len(view)
                time.sleep(POLL)
        finally:
            self.store.close()


def qmgr_pid(system: MailSystem) -> int:
    for service in (system.status() or {}).get("services", []):
        if service["command"] == "qmgr" and service["workers"]:
            return service["workers"][0]
    raise RuntimeError("qmgr is not running")


class SyncCounter:
    """strace -c or perf stat attached to every thread and child of pid, counting SYNC_CALLS."""

    def __init__(self, kind: str, pid: int, output: Path):
        self.kind, self.output = kind, output
        if kind == "strace":
            command = ["/usr/bin/strace", "-c", "-f", "-qq", "-e", f"trace={','.join(SYNC_CALLS)}"]
        else:
            command = ["perf", "stat", "-x,", "-e", ",".join(f"syscalls:sys_enter_{c}" for c in SYNC_CALLS)]
        self.process = subprocess.Popen([*command, "-o", str(output), "-p", str(pid)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_attached(pid)

    def _wait_attached(self, pid: int) -> None:
        """strace: until pid is traced (bounded); perf shows nothing, it gets a moment."""
        deadline = time.monotonic() + (10 if self.kind == "strace" else 1)
        while time.monotonic() < deadline and self.process.poll() is None:
            status = Path(f"/proc/{pid}/status").read_text()
            if self.kind == "strace" and re.search(r"^TracerPid:\s+[1-9]", status, re.MULTILINE):
                return
            time.sleep(0.02)
        if self.process.poll() is not None or self.kind == "strace":
            self.process.kill()
            raise RuntimeError(f"{self.kind} did not attach to qmgr (ptrace or perf events not allowed?)")

    def stop(self) -> int:
        """Detach; the number of sync calls counted."""
        self.process.send_signal(signal.SIGINT)
        self.process.wait(30)
        calls = 0
        for line in self.output.read_text().splitlines():
            if self.kind == "strace":       # % time, seconds, usecs/call, calls, [errors,] syscall
                fields = line.split()
                if fields and fields[-1] in SYNC_CALLS:
                    calls += int(fields[3])
            elif ",syscalls:sys_enter_" in line:              # count,unit,event,...
                calls += int(line.split(",")[0])
        return calls


def wait_queue_empty(system: MailSystem) -> None:
    queue = system.var / "queue"
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if not any(n for d in ("incoming", "active") for n in os.listdir(queue / d) if not n.startswith(".")):
            return
        time.sleep(0.05)
    raise TimeoutError("qmgr did not empty its queue")


async def send_all(port: int, sessions: int, mails: list[tuple[str, bytes]], accepted: dict[int, float]) -> None:
    """Session s sends messages s, s + sessions, s + 2 * sessions, ...; accepted[i]: its 250."""
    def noter(first: int):
        def note(n: int, _sent: float, acknowledged: float) -> None:
            accepted[first + n * sessions] = acknowledged
        return note
    await asyncio.gather(*(smtp_session(port, mails[first::sessions], noter(first))
                           for first in range(min(sessions, len(mails)))))


def run_one(sessions: int, messages: int, users: int, size: int, counter: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="delivery-load-", dir=os.environ.get("BENCH_DIR")) as tmp:
        system = MailSystem(Path(tmp), {"log_level": "low", "message_size_limit": str(max(size * 2, 10240000))})
        key = system.add_service("smtpd", maxproc=300)
        system.add_unix_service("qmgr", wakeup=60)
        system.write_config()
        names = [f"u{n}" for n in range(users)]
        for name in names:
            system.mailctl("user", "add", name)
        mails = [(f"{names[n % users]}@example.test", make_message(size, f"X-Bench-Id: {n}\r\n".encode()))
                 for n in range(messages)]
        system.start()
        try:
            floor_dir = system.var / "queue" / "bench-floor"
            floor_before = measure_floor(floor_dir, size)
            syncs = None
            tracer = SyncCounter(counter, qmgr_pid(system), Path(tmp) / "syncs.txt") if counter != "none" else None
            poller = Mailboxes(system, names, messages)
            poller.start()
            accepted: dict[int, float] = {}
            try:
                asyncio.run(send_all(system.port(key), sessions, mails, accepted))
                poller.join(DEADLINE)
                wait_queue_empty(system)
            finally:
                poller.stop.set()
                if tracer:
                    syncs = tracer.stop()
            floor_after = measure_floor(floor_dir, size)
        finally:
            system.stop()
            system.kill()
    delivered = poller.delivered
    if len(delivered) < messages:
        raise RuntimeError(f"only {len(delivered)} of {messages} messages reached their mailboxes")
    elapsed = max(delivered.values()) - min(accepted.values())
    latencies = [delivered[n] - accepted[n] for n in range(messages)]
    return {
        "bench": "delivery_load", "git": git_sha(), "host": platform.node(), "python": platform.python_version(),
        "sessions": sessions, "messages": messages, "users": users, "size": size, "counter": counter,
        "seconds": round(elapsed, 3), "msgs_per_s": round(messages / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1), "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "syncs": syncs, "syncs_per_msg": round(syncs / messages, 2) if syncs is not None else None,
        "floor_per_s": [round(floor_before, 1), round(floor_after, 1)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", default="1,32,300", help="comma-separated session counts")
    parser.add_argument("--messages", type=int, default=200, help="messages per run (all sessions together)")
    parser.add_argument("--users", type=int, default=10, help="mailboxes the messages go to, in turn")
    parser.add_argument("--size", type=int, default=10240, help="message size in bytes")
    parser.add_argument("--counter", choices=("strace", "perf", "none"), default="strace",
                        help="how qmgr's sync calls are counted (strace slows qmgr down a lot)")
    args = parser.parse_args()
    for sessions in (int(n) for n in args.sessions.split(",")):
        print(json.dumps(run_one(sessions, args.messages, args.users, args.size, args.counter)), flush=True)


if __name__ == "__main__":
    main()
