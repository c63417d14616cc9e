"""IMAP at scale: a folder of many messages and what a client pays on it, mailhouse and Dovecot.

    .venv/bin/python bench/imap_load.py [--quick] [--messages N] [--sync M] [--repeat R] [--no-dovecot]

Starts the real master (tests/conftest.MailSystem: a temporary folder, one imapd service and
the auth service), makes one user and fills its folder "Big" with N messages (100,000;
10,000 with --quick) through store.mailstore.MailStore.deliver_many in batches, straight
into the store, the messages of tests/corpus/*.eml round-robin with CRLF line ends (as SMTP
gives them) and a Message-ID of their own. When Dovecot is installed and this runs as root,
a private Dovecot (its own configuration in the temporary folder, written here: passwd-file
user, Maildir owned by uid 5000, IMAP on a free loopback port, no TLS) gets the same messages
written straight into its Maildir's ".Big/cur" (Dovecot indexes them at the first SELECT);
--no-dovecot leaves it out. Then, on each server, over one plain-text IMAP connection, after
one unmeasured SELECT (Dovecot's index build; mailhouse's index read from disk the first time):

* fill (mailhouse only): messages per second of the deliver_many batches (durable: one
  fsync per message);
* select: SELECT "Big" again (it closes and reopens the folder; the median of R);
* flags: UID FETCH 1:* (FLAGS) over the whole folder (the median of R);
* sync_first / sync_cached: UID FETCH 1:M (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE
  BODYSTRUCTURE) of the first M messages (10,000; 1,000 with --quick), the first time (imapd
  parses every message and caches its structures) and then again (read from the cache).

Times are from the command sent until its tagged OK is read, by a small blocking client that
reads the response (literals included) and counts its untagged lines. Prints one JSON line
per measure and server, then a table with the ratio mailhouse ÷ Dovecot (times: below 1 has
mailhouse ahead). A failed command (NO/BAD) or a Dovecot that does not start is printed and
that server's measures left out; the exit status is then 1. All it started is stopped on exit.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

from loadlib import git_sha                              # noqa: E402
from store.mailstore import DeliveryRequest, MailStore   # noqa: E402
from store.users import User, UserDB                     # noqa: E402
from tests.conftest import CORPUS, MailSystem, free_port  # noqa: E402

USER, PASSWORD, FOLDER = "bench", "bench-password", "Big"
BATCH = 1000                     # messages per deliver_many call
VUID = 5000                      # the Dovecot Maildir's owner, as in ../shared/anchors/setup-anchors.sh
SYNC_ITEMS = "UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE"
LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


class Failed(Exception):
    """A command answered NO or BAD (or the connection ended)."""


class Client:
    """A blocking IMAP client that only reads responses to their end: enough to time commands."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.file = self.sock.makefile("rb", buffering=1 << 16)
        self.tags = 0
        self._line()                                      # the greeting

    def _line(self) -> bytes:
        line = self.file.readline()
        if not line:
            raise Failed("the server closed the connection")
        while (literal := LITERAL.search(line)) is not None:
            line += self.file.read(int(literal.group(1))) + self.file.readline()
        return line

    def command(self, text: str) -> tuple[float, int]:
        """Send one command; (seconds until its tagged OK, untagged responses)."""
        self.tags += 1
        tag = f"b{self.tags}".encode()
        start = time.perf_counter()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        untagged = 0
        while not (line := self._line()).startswith(tag + b" "):
            untagged += line.startswith(b"* ")
        elapsed = time.perf_counter() - start
        if not line[len(tag) + 1:].startswith(b"OK"):
            raise Failed(f"{text} -> {line.decode(errors='replace').strip()[:200]}")
        return elapsed, untagged

    def close(self) -> None:
        try:
            self.command("LOGOUT")
        except (Failed, OSError):
            pass
        self.sock.close()


@functools.cache
def corpus_messages() -> tuple[bytes, ...]:
    return tuple(path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                 for path in sorted(CORPUS.glob("*.eml")))


def with_message_id(message: bytes, number: int) -> bytes:
    """The corpus message under a Message-ID of its own (its own one, if any, goes)."""
    head, _, body = message.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"message-id:")]
    lines.append(f"Message-ID: <imap-load-{number}@bench.example>".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def messages_of(count: int, first: int = 0) -> list[bytes]:
    corpus = corpus_messages()
    return [with_message_id(corpus[n % len(corpus)], n) for n in range(first, min(count, first + BATCH))]


def fill(system: MailSystem, count: int) -> float:
    """count messages into USER's FOLDER; returns messages per second."""
    store = MailStore(str(system.var / "store"), str(system.var / "index"))
    try:
        store.create_mailbox(USER, FOLDER)
        start = time.perf_counter()
        for first in range(0, count, BATCH):
            requests = [DeliveryRequest(USER, FOLDER, message) for message in messages_of(count, first)]
            failed = [r for r in store.deliver_many(requests) if isinstance(r, Exception)]
            if failed:
                raise RuntimeError(f"deliver_many: {failed[0]!r}")
        return count / (time.perf_counter() - start)
    finally:
        store.index.close()


DOVECOT_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
instance_name = imap-load-{port}
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={uid} home={root}/home/%u
}}
mail_location = maildir:~/Maildir
first_valid_uid = 100
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


def start_dovecot(stack: ExitStack, root: Path, count: int) -> int:
    """A private Dovecot with USER's FOLDER holding the same count messages; returns its port."""
    maildir = root / "home" / USER / "Maildir"
    folder = maildir / f".{FOLDER}"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub).mkdir(parents=True, exist_ok=True)
    stamp = int(time.time())
    for first in range(0, count, BATCH):
        for n, message in enumerate(messages_of(count, first), first):
            (folder / "cur" / f"{stamp}.M{n}P1.bench,S={len(message)}:2,").write_bytes(message)
    (maildir / "subscriptions").write_text(f"{FOLDER}\n")
    for path in [root / "home", *(root / "home").rglob("*")]:
        os.chown(path, VUID, VUID)
    for sub in ("run", "state"):
        (root / sub).mkdir(exist_ok=True)
    (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
    port = free_port()
    conf = root / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(root=root, uid=VUID, port=port))
    for folder in (root.parent, root):                 # its auth and mail processes run as other users
        folder.chmod(0o755)
    stack.callback(subprocess.run, ["dovecot", "-c", str(conf), "stop"], capture_output=True, timeout=30)
    with (root / "start.log").open("wb") as log:       # its daemon keeps no pipe of ours open
        started = subprocess.run(["dovecot", "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 timeout=30)
    if started.returncode:
        raise OSError(f"dovecot exited {started.returncode}: {(root / 'start.log').read_text()[-300:]}")
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def measure(port: int, sync: int, repeat: int) -> dict[str, tuple[float, int]]:
    """measure -> (median seconds, untagged responses of the last run)."""
    found: dict[str, tuple[float, int]] = {}
    client = Client(port)
    try:
        client.command(f'LOGIN {USER} "{PASSWORD}"')
        client.command(f"SELECT {FOLDER}")

        def timed(key: str, text: str, times: int) -> None:
            runs = [client.command(text) for _ in range(times)]
            found[key] = (statistics.median(seconds for seconds, _ in runs), runs[-1][1])

        timed("select", f"SELECT {FOLDER}", repeat)
        timed("flags", "UID FETCH 1:* (FLAGS)", repeat)
        timed("sync_first", f"UID FETCH 1:{sync} ({SYNC_ITEMS})", 1)
        timed("sync_cached", f"UID FETCH 1:{sync} ({SYNC_ITEMS})", repeat)
    finally:
        client.close()
    return found


def run_server(name: str, port_of, sync: int, repeat: int, emit) -> dict[str, float]:
    """The measures of one server (port_of() starts it): {measure: median seconds}; {} on failure."""
    try:
        found = measure(port_of(), sync, repeat)
    except (Failed, OSError, subprocess.SubprocessError) as e:
        emit({"server": name, "error": f"{e!r}"[:300]})
        return {}
    for key, (seconds, untagged) in found.items():
        emit({"server": name, "measure": key, "value": round(seconds * 1000, 1), "unit": "ms", "untagged": untagged})
    return {key: seconds for key, (seconds, _) in found.items()}


def _ms(seconds: float | None, count: int) -> str:
    if seconds is None:
        return "–"
    return f"{seconds * 1000:.1f} ms ({seconds / count * 1e6:.1f} µs/msg)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 messages, 1,000 synced, 1 repetition")
    parser.add_argument("--messages", type=int, help="messages in the folder (default 100,000)")
    parser.add_argument("--sync", type=int, help="messages of the ENVELOPE+BODYSTRUCTURE sync (default 10,000)")
    parser.add_argument("--repeat", type=int, help="repetitions of the repeated measures (default 3)")
    parser.add_argument("--no-dovecot", action="store_true", help="mailhouse only")
    parser.add_argument("--jsonl", type=Path, help="also append the JSON lines to this file")
    args = parser.parse_args()
    messages = args.messages or (10_000 if args.quick else 100_000)
    sync = min(messages, args.sync or (1_000 if args.quick else 10_000))
    repeat = args.repeat or (1 if args.quick else 3)
    common = {"git": git_sha(), "host": platform.node(), "cpus": os.cpu_count(), "messages": messages,
              "sync": sync, "repeat": repeat, "load_average": [round(x, 1) for x in os.getloadavg()]}

    def emit(fields: dict) -> None:
        line = json.dumps({**common, **fields})
        print(line, flush=True)
        if args.jsonl:
            with args.jsonl.open("a") as f:
                f.write(line + "\n")

    dovecot = None if args.no_dovecot else ("not installed" if not shutil.which("dovecot") else
                                            "needs root (its Maildir belongs to another uid)" if os.geteuid() else "")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="imap-load-", dir=os.environ.get("BENCH_DIR")) as tmp, \
            ExitStack() as stack:
        system = MailSystem(Path(tmp) / "mailhouse", {"log_level": "low"})
        imap = system.add_service("imapd", maxproc=4)
        system.add_auth_service()
        stack.callback(system.kill)
        stack.callback(system.stop)
        with UserDB(str(system.var / "users"), str(system.var / "secret.key")) as db:
            db.add(User(USER), PASSWORD)
        rate = fill(system, messages)
        emit({"server": "mailhouse", "measure": "fill", "value": round(rate, 1), "unit": "msgs/s"})

        def start_mailhouse() -> int:
            system.start()
            return system.port(imap)

        results["mailhouse"] = run_server("mailhouse", start_mailhouse, sync, repeat, emit)
        system.stop()
        if dovecot == "":
            results["Dovecot"] = run_server(
                "Dovecot", lambda: start_dovecot(stack, Path(tmp) / "dovecot", messages), sync, repeat, emit)
        elif dovecot:
            emit({"server": "Dovecot", "error": f"left out: {dovecot}"})
    servers = list(results)
    print(f"\nmessages {messages}, synced {sync}, medians of {repeat}; fill by deliver_many (mailhouse): "
          f"{rate:.0f} messages/s\n")
    print(f"| measure | {' | '.join(servers)} |" + (" mailhouse ÷ Dovecot |" if len(servers) > 1 else ""))
    print("| --- |" + " --- |" * (len(servers) + (len(servers) > 1)))
    labels = {"select": (f"SELECT of {messages}", messages),
              "flags": (f"UID FETCH 1:* (FLAGS) of {messages}", messages),
              "sync_first": (f"first sync of {sync} (ENVELOPE BODYSTRUCTURE …)", sync),
              "sync_cached": (f"second sync of {sync} (cached)", sync)}
    for key, (label, count) in labels.items():
        cells = [_ms(results[server].get(key), count) for server in servers]
        if len(servers) > 1:
            mine, theirs = results["mailhouse"].get(key), results["Dovecot"].get(key)
            cells.append(f"{mine / theirs:.2f}" if mine and theirs else "–")
        print(f"| {label} | {' | '.join(cells)} |")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
