"""Helpers shared by the smtpd integration tests (tests/integration/test_smtpd_*.py).

smtp_system(mailsystem, main=..., args=..., tls=True) starts a master with one smtpd service
(and a certificate unless tls=False) and returns (system, port).
client(port, source="127.0.0.1") is an smtplib.SMTP bound to a loopback source address,
so that tests can be inside or outside mynetworks.
add_user(system, name, password, **profile) writes an account straight into the user
database (what `mailctl user add` does, without a process start per user).
queued(system) -> list of store.queue.QueueItem in incoming/ (no qmgr runs in these tests,
so accepted mail stays there), message(system, item) -> its bytes.
raw_session(port, data) sends bytes on a plain socket and returns all replies until close.
swaks(*args) runs the real swaks client (installed by .ci/run; a missing swaks is a failure,
not a skip) and returns the CompletedProcess (text, stdout and stderr captured).
"""
from __future__ import annotations

import shutil
import smtplib
import socket
import subprocess
import time

from master.params import Params, load_main_cf
from store.handle import Store
from store.queue import Queue, QueueItem
from store.users import User


def smtp_system(mailsystem, main: dict | None = None, args: tuple[str, ...] = (), tls: bool = True,
                maxproc: int | str = "-"):
    system = mailsystem(main=main)
    key = system.add_service("smtpd", *args, maxproc=maxproc)
    system.write_config()
    if tls:
        system.mailctl("tls", "selfsigned")
    system.start()
    return system, system.port(key)


def client(port: int, source: str = "127.0.0.1", timeout: float = 10) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", port, timeout=timeout, source_address=(source, 0))


def params_of(system) -> Params:
    return load_main_cf(str(system.etc / "main.cf"))


def add_user(system, name: str, password: str, **profile) -> None:
    with Store.open(params_of(system)) as store:
        store.users.add(User(name=name, **profile), password=password)


def queued(system) -> list[QueueItem]:
    queue = Queue(str(system.var / "queue"))
    return [queue.load(qid) for qid in queue.ids("incoming")]


def message(system, item: QueueItem) -> bytes:
    with Queue(str(system.var / "queue")).message_file(item.queue_id) as f:
        return f.read()


def raw_session(port: int, data: bytes, source: str = "127.0.0.1", timeout: float = 10) -> list[bytes]:
    """Send data (after the greeting), then read replies until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return [line for line in received.split(b"\r\n") if line]


def swaks(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    path = shutil.which("swaks")
    assert path, "swaks is not installed (apt-get install -y swaks; .ci/run does it)"
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=timeout)
