"""systemd's readiness protocol (sd_notify) for a master run by a `Type=notify` unit.

ready(), reloading(), stopping() tell systemd the master's state changes; settle() sends the
READY=1 that ends a reload (called once per loop turn, it does nothing unless reloading()
was called since). Each is one datagram of `KEY=VALUE` lines to the socket named by the
environment variable NOTIFY_SOCKET: a path, or `@name` in the abstract namespace.
Without that variable every call does nothing, so the master behaves the same under runit,
OpenRC, supervisor or a terminal. The variable is removed from the environment at the first
call, which the master makes before it spawns any worker: workers must not speak for it.
Notifier(address) is the sender itself (tests give it their own socket).
Diagnostics: none. A message that cannot be sent is dropped; if READY=1 never arrives,
systemd reports the start as timed out, which is where an administrator looks.
"""
from __future__ import annotations

import os
import socket

ENV_NAME = "NOTIFY_SOCKET"


class Notifier:
    def __init__(self, address: str | None):
        self.address = address
        self.reload_pending = False

    @classmethod
    def from_environment(cls) -> "Notifier":
        raw = os.environ.pop(ENV_NAME, "")
        if raw.startswith("@"):
            return cls("\0" + raw[1:])
        return cls(raw if raw.startswith("/") else None)

    def send(self, *fields: str) -> bool:
        """One datagram; True when it was sent."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            return False
        return True


_notifier: Notifier | None = None


def _get() -> Notifier:
    global _notifier
    if _notifier is None:
        _notifier = Notifier.from_environment()
    return _notifier


def ready() -> None:
    """The ports are bound and the status socket answers: `systemctl start` may return."""
    _get().send("READY=1", f"MAINPID={os.getpid()}")


def reloading() -> None:
    notifier = _get()
    notifier.reload_pending = notifier.send("RELOADING=1") or notifier.reload_pending


def settle() -> None:
    notifier = _get()
    if notifier.reload_pending:
        notifier.reload_pending = False
        notifier.send("READY=1")


def stopping() -> None:
    _get().send("STOPPING=1")
