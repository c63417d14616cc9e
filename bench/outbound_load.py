"""Outbound load: messages relayed to D destinations, mailhouse beside Postfix's smtp client.

    .venv/bin/python bench/outbound_load.py [--destinations 1,20,100] [--messages 600]
                                            [--sessions 20] [--size 10240] [--repeat 3] [--no-postfix]

Needs root (the sinks listen on port 25 of 127.0.2.x, where MX lookups lead). For each D:
D `smtp-sink` processes (Postfix's no-disk SMTP server; `-c` counts the messages) listen on
127.0.2.1 ... 127.0.2.D port 25, and a DNS server (tests/dnsserver.py) gives dest<i>.test an
MX that points at the i-th. The same M messages of S bytes, message j to user@dest<j mod D>.test,
are submitted over N sessions at once (bench/loadlib.py) to each server in turn:
  mailhouse  smtpd, qmgr and the smtp service (etc/master.cf's shape), `dns_resolver` at the
             test's DNS server: MX lookups for every destination
  Postfix    the anchors' instance (../shared/anchors/setup-anchors.sh, through peers.py), with
             a transport map dest<i>.test -> smtp:[127.0.2.i]:25 (it has no DNS of its own here)
Rate: M over the time from the first 250 to the moment the sinks have counted all M. The
servers take turns within each repetition (the order rotates); the figures are medians, the
ratio is mailhouse's over Postfix's. Target: at least 1.0 at 1, 20 and 100 destinations. One
JSON line per run, then a Markdown table. Every wait is bounded (DEADLINE seconds a run).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from loadlib import git_sha, make_message, smtp_session
from tests.conftest import MailSystem                      # loadlib put the checkout on sys.path
from tests.dnsserver import DNSServer

import peers                                               # bench/peers.py: the anchors' Postfix

DEADLINE = 300.0
SINK_NET = "127.0.2"


class Sinks:
    """D smtp-sink processes on SINK_NET.i:25; messages() sums their running counters."""

    def __init__(self, count: int, work: Path):
        self.logs = [work / f"sink{i}.out" for i in range(1, count + 1)]
        self.procs = []
        for i, log in enumerate(self.logs, 1):
            with open(log, "wb") as out:
                self.procs.append(subprocess.Popen(["smtp-sink", "-c", "-u", "nobody", f"{SINK_NET}.{i}:25", "256"],
                                                   stdout=out, stderr=subprocess.STDOUT))
        time.sleep(0.5)
        dead = [p.args for p in self.procs if p.poll() is not None]
        if dead:
            self.stop()
            raise RuntimeError(f"smtp-sink did not start: {dead[0]}")

    def messages(self) -> int:
        total = 0
        for log in self.logs:
            counters = re.findall(rb"mesg=(\d+)", log.read_bytes()[-200:])
            total += int(counters[-1]) if counters else 0
        return total

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(10)


def submit(port: int, destinations: int, messages: int, sessions: int, size: int) -> float:
    """Send the messages; returns the perf_counter time of the first 250."""
    first = []
    body = make_message(size)
    per_session = -(-messages // sessions)
    mails = [[(f"user{j}@dest{j % destinations + 1}.test", body)
              for j in range(s * per_session, min(messages, (s + 1) * per_session))] for s in range(sessions)]

    async def run():
        await asyncio.gather(*(smtp_session(port, batch, lambda _n, _s, acked: first.append(acked))
                               for batch in mails if batch))
    asyncio.run(run())
    return min(first)


def run_one(name: str, port: int, sinks: Sinks, destinations: int, messages: int, sessions: int, size: int) -> dict:
    before = sinks.messages()
    start = submit(port, destinations, messages, sessions, size)
    deadline = time.monotonic() + DEADLINE
    while sinks.messages() - before < messages and time.monotonic() < deadline:
        time.sleep(0.01)
    done = sinks.messages() - before
    elapsed = time.perf_counter() - start
    return {"bench": "outbound_load", "target": name, "git": git_sha(), "host": platform.node(),
            "destinations": destinations, "messages": messages, "delivered": done, "sessions": sessions,
            "size": size, "seconds": round(elapsed, 3),
            "msgs_per_s": round(done / elapsed, 1) if done == messages else None}


def start_mailhouse(stack: ExitStack, root: Path, dns: DNSServer) -> int:
    system = MailSystem(root, {"log_level": "low", "in_flow_delay": "0", "dns_resolver": f"127.0.0.1:{dns.port}",
                               "stress_timeout": "0"})
    key = system.add_service("smtpd", maxproc=300)
    system.add_unix_service("qmgr", wakeup=300)
    system.add_smtp_service()
    stack.callback(system.kill)
    stack.callback(system.stop)
    system.start()
    return system.port(key)


def route_postfix(base: Path, destinations: int) -> None:
    """The anchors' Postfix sends dest<i>.test to the i-th sink (its DNS support is off)."""
    config = base / "postfix" / "etc"
    (config / "transport").write_text("".join(f"dest{i}.test smtp:[{SINK_NET}.{i}]:25\n"
                                              for i in range(1, destinations + 1)))
    subprocess.run(["postconf", "-c", str(config), "-e", f"transport_maps = texthash:{config}/transport"], check=True)
    subprocess.run(["postfix", "-c", str(config), "reload"], check=True, capture_output=True)
    time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--destinations", default="1,20,100")
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-postfix", action="store_true", help="mailhouse alone")
    parser.add_argument("--anchor-base", type=Path, default=Path(os.environ.get("ANCHOR_BASE", "/tmp/mailhouse-peers")))
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("smtp-sink"):
        print("outbound_load.py needs root and Postfix's smtp-sink (apt-get install postfix)", file=sys.stderr)
        return 2
    counts = [int(d) for d in args.destinations.split(",")]
    rows: dict[tuple[int, str], list[float]] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="outbound-") as tmp, ExitStack() as stack, DNSServer() as dns:
        work = Path(tmp)
        for i in range(1, max(counts) + 1):
            dns.add(f"dest{i}.test", mx=[(10, f"mx.dest{i}.test")])
            dns.add(f"mx.dest{i}.test", a=f"{SINK_NET}.{i}")
        targets = [("mailhouse", start_mailhouse(stack, work / "mailhouse", dns))]
        if not args.no_postfix:
            found = peers.start_peers(stack, args.anchor_base.resolve(), 1, notes)
            postfix = next((p for p in found if p.name == "Postfix"), None)
            if postfix:
                targets.append(("Postfix", postfix.smtp))
        for destinations in counts:
            if len(targets) > 1:
                route_postfix(args.anchor_base.resolve(), destinations)
            sinks = Sinks(destinations, work)
            try:
                for rep in range(args.repeat):
                    for name, port in targets[rep % len(targets):] + targets[:rep % len(targets)]:
                        result = run_one(name, port, sinks, destinations, args.messages, args.sessions, args.size)
                        print(json.dumps(result), flush=True)
                        if result["msgs_per_s"] is not None:
                            rows.setdefault((destinations, name), []).append(result["msgs_per_s"])
                        else:
                            notes.append(f"{name}, {destinations} destinations: {result['delivered']} of "
                                         f"{result['messages']} within {DEADLINE:.0f} s")
            finally:
                sinks.stop()
    names = [name for name, _ in targets]
    print(f"\n| destinations | {' | '.join(f'{n} (msgs/s)' for n in names)} | mailhouse ÷ Postfix |")
    print("| --- |" + " --- |" * (len(names) + 1))
    for destinations in counts:
        medians = {n: statistics.median(rows[(destinations, n)]) if rows.get((destinations, n)) else None
                   for n in names}
        ratio = (medians["mailhouse"] / medians["Postfix"]
                 if medians.get("Postfix") and medians.get("mailhouse") else None)
        cells = [f"{medians[n]:.0f}" if medians[n] else "–" for n in names]
        print(f"| {destinations} | {' | '.join(cells)} | {f'{ratio:.2f}' if ratio else '–'} |")
    for note in notes:
        print(f"* {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
