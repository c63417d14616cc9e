"""The master under a Type=notify unit: this test plays systemd's notification socket."""
from __future__ import annotations

import signal
import socket

import pytest

pytestmark = pytest.mark.integration


def _messages(sock: socket.socket, count: int) -> list[str]:
    return [sock.recv(4096).decode() for _ in range(count)]


def _environment(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read().split(b"\0")


def test_ready_reloading_stopping(mailsystem, tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    ms = mailsystem()
    ms.add_service("smtpd")
    ms.start()
    assert _messages(sock, 1) == [f"READY=1\nMAINPID={ms.proc.pid}"]

    # A worker must not be able to speak for the master.
    worker = ms.status()["services"][0]["workers"][0]
    assert not any(entry.startswith(b"NOTIFY_SOCKET=") for entry in _environment(worker))

    assert ms.mailctl("reload").stdout.strip() == "reloaded"
    assert _messages(sock, 2) == ["RELOADING=1", "READY=1"]

    # A refused reload leaves the master running the old configuration: ready again.
    ms.set_main(message_size_limit="lots")
    ms.signal(signal.SIGHUP)                  # mailctl would refuse the file before asking
    assert _messages(sock, 2) == ["RELOADING=1", "READY=1"]
    ms.wait_for_log("server", "reload refused")

    assert ms.stop() == 0
    assert _messages(sock, 1) == ["STOPPING=1"]
    sock.close()
