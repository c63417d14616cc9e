"""Logs and the disk guard through the real master: files, levels, rotation, `mailctl log`, lowspace."""
from __future__ import annotations

import gzip
import os
import queue
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.integration

WORKER = "tests.integration.logworker"
PREFIX = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ mail\.example\.test \S+\[\d+\]: "


class LogClient:
    """A session with the test log worker: each command returns once the worker answered ok."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = self.sock.makefile("rb")

    def send(self, command: str) -> None:
        self.sock.sendall(command.encode() + b"\r\n")
        assert self.reader.readline() == b"ok\r\n"

    def close(self) -> None:
        self.sock.sendall(b"quit\r\n")
        self.reader.close()
        self.sock.close()


class Follower:
    """`mailctl log NAME --follow` in the background; its lines arrive in a queue."""

    def __init__(self, ms, name: str, lines: int):
        code = "import sys; from master.ctl import main; sys.argv[0] = 'mailctl'; main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "-c", str(ms.etc), "log", name, "-n", str(lines), "--follow"],
            cwd=ms.root, env=ms.env(), stdout=subprocess.PIPE)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.lines.put(raw.decode())

    def collect_until(self, needle: str, timeout: float = 20.0) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while not got or needle not in got[-1]:
            remaining = deadline - time.monotonic()
            try:
                got.append(self.lines.get(timeout=max(remaining, 0.01)))
            except queue.Empty:
                raise AssertionError(f"{needle!r} not followed; got {got[-5:]}") from None
        return got

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def wait_until(predicate, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def texts(log_text: str) -> list[str]:
    return [re.sub(PREFIX, "", line) for line in log_text.splitlines()]


def test_worker_lines_reach_their_files_through_the_level_filter(mailsystem):
    ms = mailsystem(main={"log_level": "medium"})
    svc = ms.add_service(WORKER)
    ms.start()
    client = LogClient(ms.port(svc))
    client.send("E smtp an error")
    client.send("M imap a message")
    client.send("H pop a debug line")
    client.send("M pop after the debug line")
    client.send("raw Traceback (most recent call last):")
    client.close()
    pop = ms.wait_for_log("pop", "after the debug line")
    assert "a debug line" not in pop            # same pipe, so it came earlier: filtered out
    assert re.fullmatch(PREFIX + "after the debug line\n", pop)
    assert re.fullmatch(PREFIX + "an error\n", ms.wait_for_log("smtp", "an error"))
    assert re.fullmatch(PREFIX + "a message\n", ms.wait_for_log("imap", "a message"))
    server = ms.wait_for_log("server", "Traceback (most recent call last):")
    assert re.search("^" + PREFIX + re.escape("Traceback (most recent call last):") + "$", server, re.M)

    shown = ms.mailctl("log", "smtp", "-n", "1").stdout
    assert texts(shown) == ["an error"]


def test_rotation_gzips_keeps_every_line_and_expires_old_archives(mailsystem):
    ms = mailsystem(main={"log_rotate_size": "1024", "log_archive_days": "2"})
    logdir = ms.var / "log"
    logdir.mkdir(parents=True)
    old = logdir / "smtp.log.20200101-000000.gz"
    old.write_bytes(gzip.compress(b"from long ago\n"))
    os.utime(old, (time.time() - 3 * 86400,) * 2)
    recent = logdir / "smtp.log.20260101-000000.gz"
    recent.write_bytes(gzip.compress(b"from yesterday\n"))
    os.utime(recent, (time.time() - 86400,) * 2)
    svc = ms.add_service(WORKER)
    ms.start()
    client = LogClient(ms.port(svc))
    client.send("M smtp marker")
    ms.wait_for_log("smtp", "marker")
    follower = Follower(ms, "smtp", lines=1)
    def new_archives() -> list:
        return [p for p in logdir.iterdir() if p.name.startswith("smtp.log.") and p != recent]

    try:
        assert texts("".join(follower.collect_until("marker"))) == ["marker"]
        # The follower is held still while the log rotates more than once (as a follower that
        # a busy machine does not schedule for seconds): it must read the files in between.
        os.kill(follower.proc.pid, signal.SIGSTOP)
        client.send("bulk 100 smtp first-batch")         # about 7 KB: over the 1 KB limit
        wait_until(lambda: any(p.name.endswith(".gz") for p in new_archives()), "a new .gz archive")
        client.send("bulk 100 smtp second-batch")
        wait_until(lambda: len(new_archives()) >= 2, "a second rotation")
        os.kill(follower.proc.pid, signal.SIGCONT)
        followed = texts("".join(follower.collect_until("second-batch 00099")))
    finally:
        follower.stop()
        client.close()
    expected = [f"first-batch {n:05d}" for n in range(100)] + [f"second-batch {n:05d}" for n in range(100)]
    assert followed == expected                           # across the rotation, nothing lost or repeated

    ms.stop()
    archives = sorted(p for p in logdir.iterdir() if p.name.startswith("smtp.log."))
    assert not old.exists() and recent in archives
    assert all(re.fullmatch(r"smtp\.log\.\d{8}-\d{6}\.gz", p.name) for p in archives)
    written = b"".join(gzip.decompress(p.read_bytes()) for p in archives if p != recent)
    written += (logdir / "smtp.log").read_bytes()
    assert texts(written.decode()) == ["marker"] + expected


def mail_from_reply(port: int) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo("client.example.test")
        return smtp.mail("sender@example.org")


def test_disk_flag_goes_up_and_down(mailsystem):
    ms = mailsystem(main={"disk_min_free": "100000G"})     # more than any disk here has free
    smtp = ms.add_service("smtpd")
    ms.start()
    flag = ms.var / "run" / "lowspace"
    wait_until(flag.exists, "run/lowspace")
    ms.wait_for_log("server", "disk space low")
    code, text = mail_from_reply(ms.port(smtp))
    assert (code, text[:5]) == (452, b"4.3.1")

    ms.set_main(disk_min_free="1M")
    ms.mailctl("reload")
    wait_until(lambda: not flag.exists(), "run/lowspace to go")
    server = ms.wait_for_log("server", "disk space back")
    assert server.count("disk space low") == 1
    assert mail_from_reply(ms.port(smtp))[0] == 250
