"""Signals for the master's selectors loop, through a self-pipe.

SignalPipe().install() sets handlers that do nothing for HUP, TERM, INT and CHLD and points
signal.set_wakeup_fd at a non-blocking pipe, so a signal wakes select() and its number can
be read in the loop: .fileno() for the selector, .pending() -> list of signal numbers
(in arrival order, repeats folded). .restore() puts the default handlers back (for the
children and at exit). Handlers never log and never touch the worker table; the loop does.
Diagnostics: none; a full pipe drops repeats, which is harmless since every read handles all.
"""
from __future__ import annotations

import os
import signal

HANDLED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)


def _ignore(_signum, _frame) -> None:
    """The work is done in the loop, after set_wakeup_fd has written the number."""


class SignalPipe:
    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for signum in HANDLED:
            self._previous[signum] = signal.signal(signum, _ignore)
            signal.siginterrupt(signum, False)
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)

    def restore(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def fileno(self) -> int:
        return self._read_fd

    def pending(self) -> list[int]:
        signums: list[int] = []
        while True:
            try:
                data = os.read(self._read_fd, 256)
            except BlockingIOError:
                break
            if not data:
                break
            for signum in data:
                if signum not in signums:
                    signums.append(signum)
        return signums
