"""The disk guard: a flag file that exists while a data directory is short of space.

DiskGuard(params, log_callback) lives in the master. .sample() is cheap enough to call every
loop turn: at most every SAMPLE_INTERVAL seconds it statvfs()es the queue, store, index and
log directories (each filesystem once); when the space available to unprivileged users on
any of them is below `disk_min_free` it creates the flag of master/proto.py,
`run_directory/lowspace`, atomically (master/rundir.create_file), and removes it when every
one is back above. .reconfigure(params) takes a reloaded disk_min_free and samples at the next turn.
log_callback(level_code, text) receives one line per transition (level "E", so both ends
are seen even at log_level=low); the master sends it to server.log.

proto.is_low(params) -> bool is what smtpd (MAIL FROM: 452 4.3.1), qmgr, APPEND and COPY
ask: one stat() of the flag. ENOSPC at write time is handled by the writers anyway; the flag
only lets them refuse early and politely.
Diagnostics: a directory that cannot be examined is measured at its nearest existing parent;
a flag that cannot be written or removed is logged once per transition.
"""
from __future__ import annotations

import errno
import os
import time
from typing import Callable

from master import rundir
from master.params import Params
from master.proto import lowspace_path

SAMPLE_INTERVAL = 2.0     # seconds between two statvfs rounds


def free_bytes(path: str) -> int:
    """Bytes available to unprivileged users on the filesystem holding path (or its parent)."""
    while True:
        try:
            st = os.statvfs(path)
            return st.f_bavail * st.f_frsize
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if parent == path:
                raise
            path = parent


def _format_size(n: float) -> str:
    for unit in ("bytes", "K", "M", "G"):
        if n < 1024 or unit == "G":
            break
        n /= 1024
    return f"{n:.0f} bytes" if unit == "bytes" else f"{n:.1f}{unit}"


class DiskGuard:
    def __init__(self, params: Params, log_callback: Callable[[str, str], None]):
        self.log = log_callback
        self.reconfigure(params)
        # A flag left by an earlier master is the state we start from; sample() corrects it.
        self.low = os.path.exists(self.flag)

    def reconfigure(self, params: Params) -> None:
        self.minimum = params.disk_min_free
        self.flag = lowspace_path(params)
        self.directories = sorted({params.queue_directory, params.mail_store_directory,
                                   params.index_directory, params.log_directory})
        self.next_sample = 0.0

    def sample(self) -> None:
        now = time.monotonic()
        if now < self.next_sample:
            return
        self.next_sample = now + SAMPLE_INTERVAL
        short = self._shortest()
        if short is not None and not self.low:
            path, free = short
            self._set_flag(f"free {_format_size(free)} in {path}")
            self.log("E", f"disk space low: {path} has {_format_size(free)} free, below disk_min_free "
                          f"{_format_size(self.minimum)}; new mail and APPEND/COPY are refused")
            self.low = True
        elif short is None and self.low:
            self._clear_flag()
            self.log("E", f"disk space back above disk_min_free {_format_size(self.minimum)}: "
                          "mail is accepted again")
            self.low = False

    def _shortest(self) -> tuple[str, int] | None:
        """The directory with the least space if it is below the minimum, else None."""
        worst: tuple[str, int] | None = None
        seen_devices: set[int] = set()
        for path in self.directories:
            try:
                device = os.stat(path).st_dev if os.path.exists(path) else None
                if device is not None and device in seen_devices:
                    continue
                free = free_bytes(path)
            except OSError:
                continue                 # unreadable: the writers' ENOSPC handling still applies
            if device is not None:
                seen_devices.add(device)
            if free < self.minimum and (worst is None or free < worst[1]):
                worst = (path, free)
        return worst

    def _set_flag(self, text: str) -> None:
        try:
            os.makedirs(os.path.dirname(self.flag), mode=0o755, exist_ok=True)
            try:
                rundir.create_file(self.flag, text + "\n")
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                rundir.create_file(self.flag, "")     # a full disk: the flag's existence is what counts
        except OSError as e:
            self.log("E", f"cannot create {self.flag}: {e.strerror or e}")

    def _clear_flag(self) -> None:
        try:
            os.unlink(self.flag)
        except FileNotFoundError:
            pass
        except OSError as e:
            self.log("E", f"cannot remove {self.flag}: {e.strerror}")
