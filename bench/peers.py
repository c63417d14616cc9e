"""Mailhouse against Postfix, Dovecot and aiosmtpd: the same load on each, interleaved, as ratios.

    .venv/bin/python bench/peers.py [--repeat 3] [--quick] [--print-only] [--only imap|smtp] [--jsonl FILE]
    make bench-peers [PEERS_ARGS=--quick]

Starts mailhouse (the real master: smtpd, qmgr, pop3d, imapd) and, with ../shared/anchors/setup-anchors.sh,
Postfix (smtpd → virtual → Maildir), Dovecot IMAP and POP3 on those Maildirs and aiosmtpd (a file per
message, fsynced), all on free loopback ports, users user1..user101@example.test, password pw, and
for imaptest's stress mode stress1..stress20@example.test (added to both: they get its appends and
expunges, the other users' mailboxes stay as filled).
setup-anchors.sh needs Postfix and Dovecot: without them no peer runs, the output says so, and
mailhouse is measured against the disk floor only.

Each measurement runs the anchors' loadgen.py with the same arguments against every target, in
an order that rotates with each repetition, 10 KiB messages: idle connections (the PSS they add
to all of the server's processes, once spare processes of earlier loads are gone), POP3, SMTP
(accept; delivery until the last message is in its mailbox; the server's CPU, accept + deliver)
and the disk floor (write + fsync + rename + directory fsync, one file at a time); IMAP: loadgen's
imap mode (LOGIN, SELECT, FETCH 1:* (UID FLAGS RFC822.SIZE), UID FETCH BODY.PEEK[] ×5, UID STORE ×2,
NOOP, LOGOUT) at 1 and 32 clients on the POP3 mailboxes, idle logged-in IMAP connections, and
imaptest's stress mode (tests/integration/imaptest_support.run_stress: its commands per second;
left out with a note when imaptest cannot be built). Accepted → in mailbox is timed here: one
message at a time, from its 250 until its file is in the mailbox.
Figures are medians of the repetitions; a ratio is the median of the repetitions' mailhouse ÷
the better of Postfix and Dovecot (aiosmtpd is shown for reference). The table replaces the peers section of bench/README.md, unless --print-only or
--quick (small counts, one repetition: a smoke run) or --only imap / --only smtp (the IMAP rows,
or the SMTP and delivery rows, alone, which print only: a few minutes instead of the whole run). All it started is stopped on exit.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
ANCHORS = REPO.parent / "shared" / "anchors"
sys.path[:0] = [str(REPO), str(ANCHORS)]

import loadgen                                     # noqa: E402  (the anchors' load generator, stdlib only)

from loadlib import git_sha, percentile            # noqa: E402  (bench/ is on sys.path: run as a script)
from store.mailstore import INBOX, MailStore       # noqa: E402
from store.users import User, UserDB               # noqa: E402
from tests.conftest import MailSystem, free_port   # noqa: E402
from tests.integration.imaptest_support import imaptest_binary, run_stress   # noqa: E402

README = BENCH / "README.md"
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
SIZE = 10240
DOMAIN = "example.test"
PASSWORD = "pw"
LOAD_USERS = 100                 # the SMTP load's recipients cycle user1..user100, as in run-anchors.sh
PROBE_USER = "user101"           # the latency probe's mailbox, which the load never touches
VUID = 5000                      # setup-anchors.sh's owner of the Maildirs
SETTLE_SECONDS = 120             # spare processes leave after 100 s idle (Postfix's and mailhouse's max_idle)
TARGET_PEERS = ("Postfix", "Dovecot")     # the ratio column; aiosmtpd is a reference only
STRESS_USERS = 20                # imaptest's users stress1..stress20, as in its notes' Dovecot figures
STRESS_CLIENTS = 10
STRESS_USER = "stress%d@" + DOMAIN
ANCHOR_DATA = ("mail", "postfix", "dovecot", "aiosmtpd", "pids", "fsynctest", "smtp-sink.log")


@dataclass(frozen=True)
class Load:
    repeat: int
    smtp_totals: dict[int, int]      # sessions -> messages in all
    probe_messages: int
    pop3_users: int                  # mailboxes filled for POP3: one per client at 32 clients
    pop3_messages: int
    pop3_sessions: dict[int, int]    # clients -> sessions per client (RETR all)
    short_sessions: int              # sessions per client of the 32-client run that RETRs one
    hold: int                        # idle connections
    floor_files: int
    wait_timeout: int                # seconds loadgen waits for the last delivery
    imap_sessions: dict[int, int]    # clients -> sessions per client, on the POP3 mailboxes
    stress_seconds: int              # imaptest runs: shorter than 10 s understates its rate


FULL = Load(3, {1: 300, 32: 1600, 300: 1500}, 100, 32, 20, {1: 10, 32: 2}, 3, 300, 2000, 90, {1: 40, 32: 5}, 20)
QUICK = Load(1, {1: 20, 32: 64, 300: 300}, 10, 32, 5, {1: 2, 32: 1}, 1, 40, 200, 30, {1: 5, 32: 1}, 10)


@dataclass
class Target:
    name: str
    pattern: str                     # loadgen --server-pattern: all of this server's processes
    smtp: int | None = None
    pop3: int | None = None
    imap: int | None = None
    spool: str | None = None         # what loadgen counts to wait for the messages sent
    probe_dir: Path | None = None    # where PROBE_USER's messages land; None: no mailbox delivery
    idle_processes: int = 0          # how many processes it runs when idle after start-up


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    higher_is_better: bool


ROWS = (
    Row("accept1", "SMTP accept, 1 session (msgs/s)", True),
    Row("accept32", "SMTP accept, 32 sessions (msgs/s)", True),
    Row("accept300", "SMTP accept, 300 sessions (msgs/s)", True),
    Row("deliver1", "delivery into mailboxes, 1 session (msgs/s)", True),
    Row("deliver32", "delivery into mailboxes, 32 sessions (msgs/s)", True),
    Row("deliver300", "delivery into mailboxes, 300 sessions (msgs/s)", True),
    Row("latency_p50", "accepted → in mailbox p50, one message at a time (ms)", False),
    Row("latency_p99", "accepted → in mailbox p99, one message at a time (ms)", False),
    Row("data_p50", "DATA → 250 p50, 1 session (ms)", False),
    Row("cpu", "server CPU per message, accept + deliver, 32 sessions (ms)", False),
    Row("retr1", "POP3 RETR, 1 client (msgs/s)", True),
    Row("retr32", "POP3 RETR, 32 clients (msgs/s)", True),
    Row("pop_sessions", "POP3 sessions/s, 32 clients (login, STAT, LIST, RETR 1, QUIT)", True),
    Row("pop_pass", "POP3 PASS p50, 32 clients (ms)", False),
    Row("pop_idle", "POP3 memory per idle logged-in connection, PSS (KiB)", False),
    Row("smtp_idle", "SMTP memory per idle connection after EHLO, PSS (KiB)", False),
    Row("imap_ops1", "IMAP commands/s, 1 client (loadgen imap: LOGIN … LOGOUT)", True),
    Row("imap_ops32", "IMAP commands/s, 32 clients (loadgen imap)", True),
    Row("imap_idle", "IMAP memory per idle logged-in connection, PSS (KiB)", False),
    Row("imaptest_stress", f"imaptest stress, {STRESS_CLIENTS} clients (commands/s)", True),
)
IMAP_ROWS = {"imap_ops1", "imap_ops32", "imap_idle", "imaptest_stress"}
IDLE_ROWS = {"smtp": "smtp_idle", "pop3": "pop_idle", "imap": "imap_idle"}
FLOOR_ROWS = {"accept1", "accept32", "accept300", "deliver1", "deliver32", "deliver300"}
SMTP_ROWS = FLOOR_ROWS | {"latency_p50", "latency_p99", "data_p50", "cpu"}


@dataclass
class Results:
    values: dict[tuple[str, str], dict[int, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, key: str, target: str, rep: int, value: float | None) -> None:
        if value is not None:
            self.values.setdefault((key, target), {})[rep] = value

    def median(self, key: str, target: str) -> float | None:
        found = self.values.get((key, target))
        return statistics.median(found.values()) if found else None

    def ratio(self, mine: tuple[str, str], theirs: tuple[str, str]) -> float | None:
        """Median over the repetitions that measured both (key, target) pairs of mine ÷ theirs."""
        mine, theirs = self.values.get(mine, {}), self.values.get(theirs, {})
        ratios = [mine[rep] / theirs[rep] for rep in mine if theirs.get(rep, 0) > 0]
        return statistics.median(ratios) if ratios else None


class Bench:
    def __init__(self, load: Load, work: Path, jsonl: Path | None):
        self.load, self.work, self.jsonl = load, work, jsonl
        self.results = Results()

    def loadgen(self, label: str, *argv: str, timeout: float) -> dict | None:
        """One loadgen.py run; its JSON result, or None (and a note) when it failed."""
        command = [sys.executable, str(ANCHORS / "loadgen.py"), *argv, "--label", label]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.results.notes.append(f"{label}: loadgen still running after {timeout:.0f} s, stopped")
            return None
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            self.results.notes.append(f"{label}: loadgen exited {done.returncode}: {done.stderr.strip()[-300:]}")
            return None
        result = json.loads(lines[-1])
        if self.jsonl:
            with self.jsonl.open("a") as f:
                f.write(lines[-1] + "\n")
        if result.get("errors"):
            sample = (result.get("error_samples") or [""])[0]
            self.results.notes.append(f"{label}: {result['errors']} errors, e.g. {sample}")
        if result.get("delivered_all") is False:
            self.results.notes.append(f"{label}: {result['delivered']} of {result['delivered_expected']} "
                                      f"messages arrived within {self.load.wait_timeout} s")
        return result

    def floor(self, rep: int) -> None:
        label = f"r{rep + 1} disk floor"
        result = self.loadgen(label, "fsync", "--dir", str(self.work / "floor"), "--count", str(self.load.floor_files),
                              "--size", str(SIZE), "--dirsync", "--duration", "30", timeout=90)
        if result:
            self.results.add("floor", "disk", rep, result["ops_per_s"])
            progress(label, f"{result['ops_per_s']} files/s")

    def pop3(self, label: str, target: Target, clients: int, sessions: int, retr: int) -> dict | None:
        """Each client logs into a mailbox of its own (user{client}), `sessions` times."""
        return self.loadgen(label, "pop3", "--port", str(target.pop3), "--conns", str(clients),
                            "--iterations", str(sessions), "--users", str(clients), "--password", PASSWORD,
                            "--max-retr", str(retr), "--duration", "60", "--server-pattern", target.pattern,
                            timeout=150)

    def run_pop3(self, targets: list[Target], rep: int) -> None:
        for clients, sessions in self.load.pop3_sessions.items():
            for target in rotate(targets, rep):
                label = f"r{rep + 1} {target.name} pop3 c={clients}"
                result = self.pop3(label, target, clients, sessions, 0)
                if result:
                    self.results.add(f"retr{clients}", target.name, rep, result["retr_per_s"])
                    progress(label, f"{result['retr_per_s']} RETR/s")
        for target in rotate(targets, rep):
            label = f"r{rep + 1} {target.name} pop3 short sessions c=32"
            result = self.pop3(label, target, 32, self.load.short_sessions, 1)
            if result:
                self.results.add("pop_sessions", target.name, rep, result["sessions_per_s"])
                self.results.add("pop_pass", target.name, rep, result.get("pass_p50_ms"))
                progress(label, f"{result['sessions_per_s']} sessions/s, PASS p50 {result.get('pass_p50_ms')} ms")

    def run_hold(self, proto: str, targets: list[Target], rep: int) -> None:
        """Memory per idle connection: loadgen's difference of the server's PSS before and while it
        holds them. Each hold first waits (bounded) until the spare processes of earlier loads are
        gone: new connections would take them over unseen, or they would leave during the hold."""
        for target in rotate(targets, rep):
            label = f"r{rep + 1} {target.name} {proto} hold {self.load.hold}"
            start = time.monotonic()
            while len(loadgen.find_pids(target.pattern)) > target.idle_processes:
                if time.monotonic() - start > SETTLE_SECONDS:
                    self.results.notes.append(f"{label}: more processes than when idle still after {SETTLE_SECONDS} s")
                    break
                time.sleep(1)
            if time.monotonic() - start > 1:
                progress(label, f"waited {time.monotonic() - start:.0f} s for spare processes to leave")
            port = getattr(target, proto)
            result = self.loadgen(label, "hold", "--proto", proto, "--port", str(port), "--conns", str(self.load.hold),
                                  "--users", str(LOAD_USERS), "--password", PASSWORD, "--hold", "5",
                                  "--duration", "60", "--server-pattern", target.pattern, timeout=150)
            if result and result["conns_alive_after_hold"] == self.load.hold:
                self.results.add(IDLE_ROWS[proto], target.name, rep, result.get("pss_kb_per_conn"))
                progress(label, f"{result.get('pss_kb_per_conn')} KiB PSS per connection")
            elif result:
                self.results.notes.append(f"{label}: {result['conns_alive_after_hold']} of {self.load.hold} "
                                          "connections held, not counted")

    def imap(self, label: str, target: Target, clients: int, sessions: int) -> dict | None:
        """loadgen's imap mode on the POP3 mailboxes: client c starts at user{c + 1}, the next
        session of each client moves on by `clients` users."""
        return self.loadgen(label, "imap", "--port", str(target.imap), "--conns", str(clients),
                            "--iterations", str(sessions), "--users", str(self.load.pop3_users),
                            "--password", PASSWORD, "--duration", "60", "--server-pattern", target.pattern,
                            timeout=150)

    def run_imap(self, targets: list[Target], rep: int) -> None:
        for clients, sessions in self.load.imap_sessions.items():
            for target in rotate(targets, rep):
                label = f"r{rep + 1} {target.name} imap c={clients}"
                result = self.imap(label, target, clients, sessions)
                if result:
                    self.results.add(f"imap_ops{clients}", target.name, rep, result["ops_per_s"])
                    progress(label, f"{result['ops_per_s']} commands/s, {result['sessions_per_s']} sessions/s")

    def run_stress(self, targets: list[Target], rep: int) -> None:
        """imaptest's stress mode as STRESS_USER; its error lines (protocol errors, state that
        did not match what it tracked) become a note."""
        for target in rotate(targets, rep):
            label = f"r{rep + 1} {target.name} imaptest stress c={STRESS_CLIENTS}"
            log = self.work / f"stress-{target.name}-{rep + 1}.log"
            rate, errors = run_stress("127.0.0.1", target.imap, STRESS_USER, PASSWORD, clients=STRESS_CLIENTS,
                                      secs=self.load.stress_seconds, users=STRESS_USERS, log=log)
            if errors:
                sample = next((line for line in log.read_text(errors="replace").splitlines()
                               if line.startswith(("Error:", "Fatal:", "Panic:"))), "") if log.exists() else ""
                self.results.notes.append(f"{label}: {errors} errors, e.g. {sample[:200]}")
            if rate:
                self.results.add("imaptest_stress", target.name, rep, rate)
            progress(label, f"{rate} commands/s, {errors} errors")

    def run_smtp(self, targets: list[Target], rep: int) -> None:
        self.floor(rep)
        for sessions, total in self.load.smtp_totals.items():
            for target in rotate(targets, rep):
                label = f"r{rep + 1} {target.name} smtp c={sessions}"
                result = self.loadgen(
                    label, "smtp", "--port", str(target.smtp), "--conns", str(sessions),
                    "--msgs", str(total // sessions), "--size", str(SIZE), "--rcpt", "user{i}@" + DOMAIN,
                    "--users", str(LOAD_USERS), "--duration", "60", "--wait-maildir", target.spool,
                    "--wait-timeout", str(self.load.wait_timeout), "--server-pattern", target.pattern,
                    timeout=60 + self.load.wait_timeout + 60)
                if not result:
                    continue
                self.results.add(f"accept{sessions}", target.name, rep, result["msgs_per_s"])
                if sessions == 1:
                    self.results.add("data_p50", target.name, rep, result["data_to_250_p50_ms"])
                text = f"accepted {result['msgs_per_s']} msgs/s"
                if target.probe_dir and result.get("delivered_all") and result["msgs_ok"]:
                    delivered = result["msgs_ok"] / result["time_to_all_delivered_s"]
                    self.results.add(f"deliver{sessions}", target.name, rep, delivered)
                    text += f", delivered {delivered:.1f} msgs/s"
                    if sessions == 32:
                        cpu = result["server_cpu_s"] / result["msgs_ok"] * 1000
                        self.results.add("cpu", target.name, rep, cpu)
                        text += f", {cpu:.2f} ms CPU per message"
                progress(label, text)
        for target in rotate([t for t in targets if t.probe_dir], rep):
            label = f"r{rep + 1} {target.name} accepted → in mailbox"
            latencies = probe(target.smtp, target.probe_dir, self.load.probe_messages, self.results.notes, label)
            if len(latencies) == self.load.probe_messages:
                p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
                self.results.add("latency_p50", target.name, rep, p50)
                self.results.add("latency_p99", target.name, rep, p99)
                progress(label, f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")


def rotate(targets: list[Target], rep: int) -> list[Target]:
    if not targets:
        return []
    start = rep % len(targets)
    return targets[start:] + targets[:start]


def progress(label: str, text: str) -> None:
    print(f"{label}: {text}", file=sys.stderr, flush=True)


# -- accepted → in mailbox

def _message_files(directory: Path) -> list[str]:
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if d != "tmp" and not d.startswith(".")]
        found.extend(os.path.join(root, name) for name in files if not name.startswith("."))
    return found


def _arrival(directory: Path, seen: set[str], token: bytes, deadline: float) -> float | None:
    """When a new file under directory holding token is first seen (None at the deadline)."""
    while time.monotonic() < deadline:
        for path in _message_files(directory):
            if path in seen:
                continue
            seen.add(path)
            try:
                with open(path, "rb") as f:
                    head = f.read(4096)
            except OSError:
                continue
            if token in head:
                return time.monotonic()
        time.sleep(0.0005)
    return None


def probe(port: int, directory: Path, count: int, notes: list[str], label: str) -> list[float]:
    """Send count messages to PROBE_USER one at a time; seconds from each 250 to its file."""
    seen = set(_message_files(directory))
    body = ("x" * 76 + "\r\n") * (SIZE // 78)
    latencies: list[float] = []
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            for n in range(count):
                token = f"peers-probe-{os.getpid()}-{time.time_ns()}-{n}"
                client.sendmail(f"probe@{DOMAIN}", [f"{PROBE_USER}@{DOMAIN}"],
                                f"From: probe@{DOMAIN}\r\nTo: {PROBE_USER}@{DOMAIN}\r\nSubject: {token}\r\n\r\n{body}")
                accepted = time.monotonic()
                arrived = _arrival(directory, seen, token.encode(), accepted + 30)
                if arrived is None:
                    notes.append(f"{label}: message {n + 1} not in the mailbox 30 s after its 250")
                    break
                latencies.append(max(0.0, arrived - accepted))
    except (OSError, smtplib.SMTPException) as e:
        notes.append(f"{label}: {e!r}")
    return latencies


# -- the servers

def start_mailhouse(stack: ExitStack, root: Path, users: int) -> tuple[MailSystem, Target]:
    # The peers' limits are above the load (Postfix 400 processes, Dovecot 1000); mailhouse's maxproc
    # stops at 300, so its stress mode (3/4 full: 10 s timeouts) is off instead.
    system = MailSystem(root, {"log_level": "low", "mail_max_userip_connections": "1000", "stress_timeout": "0"})
    smtp = system.add_service("smtpd", maxproc=300)
    pop3 = system.add_service("pop3d", maxproc=300)
    imap = system.add_service("imapd", maxproc=300)
    system.add_unix_service("qmgr", wakeup=300)
    system.add_auth_service()                  # as etc/master.cf ships: logins are verified there
    stack.callback(system.kill)
    stack.callback(system.stop)
    system.start()
    with UserDB(str(system.var / "users"), str(system.var / "secret.key")) as db:
        for n in range(1, users + 1):
            db.add(User(f"user{n}"), PASSWORD)
        for n in range(1, STRESS_USERS + 1):
            db.add(User(f"stress{n}"), PASSWORD)
    master_cf = re.escape(str(system.etc / "master.cf"))
    return system, Target("mailhouse", rf"tree:master\s-c\s{master_cf}", smtp=system.port(smtp),
                          pop3=system.port(pop3), imap=system.port(imap), spool=str(system.var / "store"),
                          probe_dir=system.var / "store" / PROBE_USER)


def _clear_anchor_data(base: Path) -> None:
    """Remove what setup-anchors.sh wrote under base, except its aiosmtpd venv (kept for the next run)."""
    for name in ANCHOR_DATA:
        path = base / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def start_peers(stack: ExitStack, base: Path, users: int, notes: list[str]) -> list[Target]:
    """The anchors' servers on free ports; [] with a note when they cannot run."""
    missing = [name for name in ("postfix", "smtp-sink", "dovecot") if not shutil.which(name)]
    if missing:
        notes.append(f"no peers: {', '.join(missing)} not installed (setup-anchors.sh starts Postfix, "
                     "Dovecot and aiosmtpd together, so none ran)")
        return []
    ports = {name: free_port() for name in ("PF_PORT", "IMAP_PORT", "POP_PORT", "AIO_PORT", "AIO_NOSYNC_PORT",
                                            "SINK_PORT")}
    env = {**os.environ, "ANCHOR_BASE": str(base), "NUSERS": str(users), "PYTHON": "python3",
           **{name: str(port) for name, port in ports.items()}}
    stop = ["bash", str(ANCHORS / "stop-anchors.sh")]
    subprocess.run(stop, env=env, capture_output=True, timeout=60)    # a crashed earlier run's servers
    _clear_anchor_data(base)
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)                                                 # Postfix and Dovecot run as other users
    stack.callback(_clear_anchor_data, base)
    stack.callback(subprocess.run, stop, env=env, capture_output=True, timeout=60)
    try:
        setup = subprocess.run(["bash", str(ANCHORS / "setup-anchors.sh")], env=env, capture_output=True, text=True,
                               timeout=600)
    except subprocess.TimeoutExpired:
        notes.append("no peers: setup-anchors.sh did not finish within 600 s")
        return []
    if setup.returncode != 0:
        notes.append(f"no peers: setup-anchors.sh exited {setup.returncode}: "
                     f"{(setup.stdout + setup.stderr).strip()[-400:]}")
        return []
    with (base / "dovecot" / "passwd").open("a") as passwd:       # Dovecot re-reads it when it changes
        passwd.writelines(f"{STRESS_USER % n}:{{PLAIN}}{PASSWORD}::::::\n" for n in range(1, STRESS_USERS + 1))
    dovecot_conf = re.escape(str(base / "dovecot" / "dovecot.conf"))
    candidates = [
        (ports["PF_PORT"], Target("Postfix", r"tree:^/usr/lib/postfix/sbin/master\s", smtp=ports["PF_PORT"],
                                  spool=str(base / "mail"), probe_dir=base / "mail" / DOMAIN / PROBE_USER)),
        (ports["AIO_PORT"], Target("aiosmtpd", rf"aiosmtpd_anchor\.py\s--port\s{ports['AIO_PORT']}\s",
                                   smtp=ports["AIO_PORT"], spool=str(base / "aiosmtpd" / "spool-fsync"))),
        (ports["POP_PORT"], Target("Dovecot", rf"tree:dovecot\s-c\s{dovecot_conf}", pop3=ports["POP_PORT"],
                                  imap=ports["IMAP_PORT"])),
    ]
    peers = []
    for port, target in candidates:
        if _answers(port):
            peers.append(target)
        else:
            notes.append(f"{target.name} did not answer on port {port} after setup-anchors.sh: left out")
    return peers


def fill_mailboxes(system: MailSystem, load: Load, source: Path, owned: bool) -> None:
    """The POP3 mailboxes: loadgen's populate writes Maildirs under source (Dovecot's, when
    owned), and the same messages go into mailhouse's INBOXes, with CRLF as SMTP gives them."""
    argv = [sys.executable, str(ANCHORS / "loadgen.py"), "populate", "--maildir-base", str(source),
            "--users", str(load.pop3_users), "--count", str(load.pop3_messages), "--sizes", str(SIZE)]
    if owned:
        argv += ["--uid", str(VUID), "--gid", str(VUID)]
    subprocess.run(argv, check=True, capture_output=True, timeout=300)
    store = MailStore(str(system.var / "store"), str(system.var / "index"))
    try:
        for n in range(1, load.pop3_users + 1):
            cur = source / f"user{n}" / "cur"
            for name in sorted(os.listdir(cur)):
                store.deliver(f"user{n}", INBOX, (cur / name).read_bytes().replace(b"\n", b"\r\n"))
    finally:
        store.index.close()


# -- the report

def _version(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.split()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def section(results: Results, peers: list[Target], load: Load, facts: dict, only: str | None = None) -> str:
    names = [peer.name for peer in peers]
    rows = [row for row in ROWS if only is None or (row.key in IMAP_ROWS) == (only == "imap")
            and (row.key in SMTP_ROWS) == (only == "smtp")]
    lines = [
        "## Against Postfix, Dovecot and aiosmtpd (`bench/peers.py`)", "",
        "    make bench-peers    # .venv/bin/python bench/peers.py [--repeat 3] [--quick] [--print-only] [--only imap|smtp]",
        "",
        "Install the peers first, as root, as `../shared/anchors/README.md` says: preselect "
        "`postfix postfix/main_mailer_type select No configuration` with `debconf-set-selections`, then "
        "`DEBIAN_FRONTEND=noninteractive apt-get install -y postfix dovecot-imapd dovecot-pop3d`; "
        "setup-anchors.sh installs aiosmtpd into a venv of its own. The packages' own services need not "
        "run: the script starts its own instances on free loopback ports (and stops them).", "",
        f"Run of {facts['date']}, commit {facts['commit']}, {facts['cpus']} CPUs, load average "
        f"{facts['load_start']} at the start and {facts['load_end']} at the end, Python {platform.python_version()}, "
        f"{facts['versions']}. Repetitions: {load.repeat}, the targets interleaved; 10 KiB messages; SMTP "
        f"messages per run {', '.join(f'{t} ({s} sess.)' for s, t in load.smtp_totals.items())}; POP3 mailboxes of "
        f"{load.pop3_messages} messages; IMAP loadgen sessions per client "
        f"{', '.join(f'{n} ({c} cl.)' for c, n in load.imap_sessions.items())} on those mailboxes; imaptest stress "
        f"{STRESS_CLIENTS} clients × {load.stress_seconds} s, users stress1..stress{STRESS_USERS}, "
        f"random_msg_size=4096; {load.hold} idle connections; {facts['minutes']:.0f} minutes in all. "
        "Other work may share the machine (see the load average): compare within this table only. mailhouse "
        "runs with `stress_timeout = 0`: its maxproc stops at 300, where the peers' limits (400, 1000) are "
        "above the 300 idle connections.",
        "",
    ]
    floor = results.values.get(("floor", "disk"), {})
    if names:
        lines += [f"| measure | mailhouse | {' | '.join(names)} | mailhouse ÷ Postfix or Dovecot |",
                  "| --- |" + " --- |" * (len(names) + 2)]
        for row in rows:
            medians = {name: results.median(row.key, name) for name in names}
            measured = {name: value for name, value in medians.items()
                        if value is not None and name in TARGET_PEERS}
            ratio = None
            if measured:
                best = (max if row.higher_is_better else min)(measured, key=measured.get)
                ratio = results.ratio((row.key, "mailhouse"), (row.key, best))
            cells = [_fmt(results.median(row.key, "mailhouse")), *(_fmt(medians[name]) for name in names)]
            lines.append(f"| {row.label} | {' | '.join(cells)} | {_fmt(ratio)} |")
        lines += ["", "The ratio is against the better of Postfix and Dovecot, the peers the targets name; "
                  "aiosmtpd (one asyncio process, nothing delivered) is there for reference. "
                  "Rates: a ratio above 1 has mailhouse ahead. Times, CPU and memory: below 1 has mailhouse "
                  "ahead. A dash: not measured (aiosmtpd delivers into no mailbox; Postfix serves no POP3 or IMAP)."]
    else:
        lines += ["No peer ran (see the notes): mailhouse against the disk floor only.", "",
                  "| measure | mailhouse | mailhouse ÷ disk floor |", "| --- | --- | --- |"]
        for row in rows:
            ratio = results.ratio((row.key, "mailhouse"), ("floor", "disk")) if row.key in FLOOR_ROWS else None
            lines.append(f"| {row.label} | {_fmt(results.median(row.key, 'mailhouse'))} | {_fmt(ratio)} |")
    if only != "imap":
        lines += ["", f"Disk floor (10 KiB files, write + fsync + rename + directory fsync, one at a time, at the "
                  f"start of each SMTP repetition): {_fmt(results.median('floor', 'disk'))} files/s "
                  f"(repetitions: {', '.join(_fmt(v) for v in floor.values()) or '–'})."]
    if results.notes:
        lines += ["", "Notes:", *(f"* {note}" for note in results.notes)]
    return "\n".join(lines)


def write_readme(text: str) -> None:
    current = README.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        current = head + block + rest.split(END, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + block + "\n"
    README.write_text(current)


def _commit() -> str:
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return git_sha() + (" (with uncommitted changes)" if dirty else "")


def _load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def run(load: Load, anchor_base: Path, jsonl: Path | None, only: str | None) -> tuple[Results, list[Target], dict]:
    started = time.monotonic()
    facts = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": _commit(), "cpus": os.cpu_count(),
             "load_start": _load_average()}
    users = LOAD_USERS + 1
    with tempfile.TemporaryDirectory(prefix="peers-", dir=os.environ.get("BENCH_DIR")) as tmp, ExitStack() as stack:
        bench = Bench(load, Path(tmp), jsonl)
        notes = bench.results.notes
        system, mailhouse = start_mailhouse(stack, Path(tmp) / "mailhouse", users)
        peers = start_peers(stack, anchor_base, users, notes)
        dovecot = any(peer.pop3 for peer in peers)
        source = anchor_base / "mail" / DOMAIN if dovecot else Path(tmp) / "pop3-messages"
        if only != "smtp":
            fill_mailboxes(system, load, source, owned=dovecot)
        pop_targets = [mailhouse, *(peer for peer in peers if peer.pop3)]
        smtp_targets = [mailhouse, *(peer for peer in peers if peer.smtp)]
        imap_targets = [mailhouse, *(peer for peer in peers if peer.imap)]
        stress, why = imaptest_binary()
        if not stress:
            notes.append(f"no imaptest stress: {why}")
        for target in pop_targets if only != "smtp" else []:   # unmeasured: every POP3 mailbox opened once
            bench.pop3(f"{target.name} pop3 warm-up", target, load.pop3_users, 1, 0)
        for target in imap_targets if only != "smtp" else []:  # and once over IMAP
            bench.imap(f"{target.name} imap warm-up", target, load.pop3_users, 1)
        time.sleep(2)                              # the warm-up's sessions end
        for target in [mailhouse, *peers]:
            target.idle_processes = len(loadgen.find_pids(target.pattern))
        # POP3 and IMAP before the SMTP load adds to their mailboxes; the loads between the holds
        # of each repetition give their spare processes time to leave.
        for rep in range(load.repeat if only != "smtp" else 0):
            if only is None:
                bench.run_hold("smtp", smtp_targets, rep)
                bench.run_pop3(pop_targets, rep)
                bench.run_hold("pop3", pop_targets, rep)
            bench.run_imap(imap_targets, rep)
            if stress:
                bench.run_stress(imap_targets, rep)
            bench.run_hold("imap", imap_targets, rep)
        for rep in range(load.repeat if only != "imap" else 0):
            bench.run_smtp(smtp_targets, rep)
    versions = {"Postfix": ["postconf", "-d", "-h", "mail_version"], "Dovecot": ["dovecot", "--version"],
                "aiosmtpd": [str(anchor_base / "venv" / "bin" / "python"), "-c",
                             "import aiosmtpd; print(aiosmtpd.__version__)"]}
    facts["versions"] = ", ".join(f"{peer.name} {_version(versions[peer.name])}" for peer in peers) or "no peers"
    facts["load_end"] = _load_average()
    facts["minutes"] = (time.monotonic() - started) / 60
    return bench.results, peers, facts


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, help="repetitions (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small counts, a smoke run; prints, leaves README alone")
    parser.add_argument("--print-only", action="store_true", help="print the section, leave bench/README.md alone")
    parser.add_argument("--jsonl", type=Path, help="append every loadgen result to this file")
    parser.add_argument("--only", choices=("imap", "smtp"),
                        help="only the IMAP rows, or only the SMTP and delivery rows (prints, leaves README alone)")
    parser.add_argument("--anchor-base", type=Path, default=Path(os.environ.get("ANCHOR_BASE", "/tmp/mailhouse-peers")),
                        help="setup-anchors.sh's folder (its aiosmtpd venv is kept there between runs)")
    args = parser.parse_args()
    load = QUICK if args.quick else FULL
    if args.repeat:
        load = replace(load, repeat=args.repeat)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        results, peers, facts = run(load, args.anchor_base.resolve(), args.jsonl, args.only)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    text = section(results, peers, load, facts, args.only)
    print(text)
    if not (args.quick or args.print_only or args.only):
        write_readme(text)
        print(f"\nwritten into {README.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
