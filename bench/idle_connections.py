"""300 concurrent idle connections on one service: memory of master + workers, time to accept.

    .venv/bin/python bench/idle_connections.py [--clients 300] [--command tests.integration.echo_service]

Starts the real master (the tests' harness, a temporary folder, a free loopback port) with
one inet service of maxproc = clients, opens that many connections at once and waits for
every greeting, then holds them idle and sums the resident memory of the master and its
workers (RSS, and PSS which shares the interpreter's pages fairly). Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import MailSystem  # noqa: E402


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB, from /proc."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def _open_all(port: int, count: int, timeout: float = 60.0) -> tuple[list[socket.socket], float]:
    """Connect `count` clients at once; seconds until every one has its greeting line."""
    selector = selectors.DefaultSelector()
    started = time.perf_counter()
    clients = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        selector.register(sock, selectors.EVENT_READ, bytearray())
        clients.append(sock)
    waiting = count
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for key, _ in selector.select(1.0):
            data = key.fileobj.recv(4096)
            key.data.extend(data)
            if b"\n" in key.data or not data:
                if not key.data.startswith(b"+OK") and not key.data.startswith(b"220"):
                    raise RuntimeError(f"refused or failed: {bytes(key.data)!r}")
                selector.unregister(key.fileobj)
                waiting -= 1
    if waiting:
        raise RuntimeError(f"{waiting} clients got no greeting within {timeout} s")
    return clients, time.perf_counter() - started


def run(clients: int, command: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        ms = MailSystem(Path(tmp), main={"log_level": "low"})
        key = ms.add_service(command, maxproc=clients)
        ms.start()
        try:
            baseline = _total(ms)
            sockets, seconds = _open_all(ms.port(key), clients)
            time.sleep(1.0)                          # let every worker settle with its sessions
            loaded = _total(ms)
            status = json.loads(ms.mailctl("status", "--json").stdout)
            (svc,) = status["services"]
            for sock in sockets:
                sock.close()
        finally:
            ms.stop()
            ms.kill()
    return {
        "bench": "idle_connections", "clients": clients, "command": command,
        "accept_all_s": round(seconds, 3), "open": svc["connections"], "workers": len(svc["workers"]),
        "rss_mib": round(loaded["rss"] / 1024, 1), "pss_mib": round(loaded["pss"] / 1024, 1),
        "rss_mib_idle_before": round(baseline["rss"] / 1024, 1),
        "git": _git_sha(), "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
    }


def _total(ms: MailSystem) -> dict:
    status = json.loads(ms.mailctl("status", "--json").stdout)
    pids = [status["pid"]] + [pid for svc in status["services"] for pid in svc["workers"]]
    rss = pss = 0
    for pid in pids:
        r, p = _memory_kib(pid)
        rss, pss = rss + r, pss + p
    return {"rss": rss, "pss": pss, "processes": len(pids)}


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--command", default="tests.integration.echo_service")
    args = parser.parse_args()
    print(json.dumps(run(args.clients, args.command)))


if __name__ == "__main__":
    main()
