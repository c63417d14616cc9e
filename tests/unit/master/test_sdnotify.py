"""master/sdnotify.py: datagrams to the socket systemd names, nothing without one."""
from __future__ import annotations

import os
import socket

import pytest

from master import sdnotify
from master.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def test_sends_fields_as_one_datagram(listener):
    path, sock = listener
    assert Notifier(path).send("READY=1", "STATUS=up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_abstract_socket_name(monkeypatch):
    name = f"mailhouse-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = Notifier.from_environment()
        assert "NOTIFY_SOCKET" not in os.environ       # children must not inherit it
        assert notifier.send("STOPPING=1")
        assert sock.recv(4096) == b"STOPPING=1"


def test_without_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert Notifier.from_environment().send("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")      # not a socket systemd would name
    assert Notifier.from_environment().address is None


def test_unreachable_socket_is_ignored(tmp_path):
    assert Notifier(str(tmp_path / "gone")).send("READY=1") is False


def test_reload_is_settled_by_ready(listener, monkeypatch):
    path, sock = listener
    monkeypatch.setattr(sdnotify, "_notifier", Notifier(path))
    sdnotify.settle()                                   # nothing pending: nothing sent
    sdnotify.reloading()
    sdnotify.settle()
    sdnotify.settle()
    sdnotify.stopping()
    assert [sock.recv(4096) for _ in range(3)] == [b"RELOADING=1", b"READY=1", b"STOPPING=1"]
