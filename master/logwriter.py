"""The single writer of server.log, smtp.log, imap.log and pop.log (Postfix's postlogd).

LogWriter(params)
    .worker_line(service, pid, line)   a line from a worker's stderr pipe, `E|M|H <log> <text>`
                                       (master/proto.py); anything else (a traceback) is
                                       written to server.log as an error
    .log(logname, level_code, tag, text)   the master's own lines, tag like `master[123]`
    .maybe_rotate()                    cheap; call every loop turn
    .reconfigure(params)               log_directory / log_level / rotation settings changed
    .close()                           finish pending compression, close the files

A file line reads `2026-11-25T09:00:00Z mail.example.org smtpd[812]: text` (UTC). log_level
low keeps E, medium E and M, high everything. Control characters in a text are escaped
(`\\x1b`) so a client cannot forge lines or drive the terminal of `mailctl log`.
A NAME.log that someone else removed or renamed is noticed within seconds and recreated.

Rotation happens in the one thread that writes, between two lines, so no line is lost or
split: at `log_rotate_size` or when the UTC day changes, NAME.log is renamed to
NAME.log.<YYYYmmdd-HHMMSS> (UTC) and reopened. A background thread (never a child, so the
master's waitpid(-1) sees only workers) then gzips every uncompressed archive to
`.gz` (keeping its mtime) and deletes archives whose mtime is older than
`log_archive_days` (0 keeps them forever). At most one archive per second per log: if the
name is taken, rotation waits for the next turn.
Diagnostics: compression/deletion failures are reported in server.log by the writing
thread; when a file cannot be written (disk full) the lines are dropped, counted, and the
count is written to stderr once and to the log when writing works again.
"""
from __future__ import annotations

import collections
import gzip
import os
import re
import shutil
import sys
import threading
import time

from master.params import Params
from master.proto import LOG_NAMES, parse_log_line

LEVELS_KEPT = {"low": "E", "medium": "EM", "high": "EMH"}
MAX_TEXT = 8192                      # characters of one line's text; the rest is cut
SWEEP_INTERVAL = 3600.0              # seconds between archive sweeps without a rotation
REOPEN_CHECK_INTERVAL = 5.0          # seconds between checks that NAME.log is still our file
ARCHIVE_RE = re.compile(r"^(?P<log>%s)\.log\.\d{8}-\d{6}(?P<gz>\.gz)?$" % "|".join(LOG_NAMES))
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")     # C0 and C1 controls (CSI is \x9b)


def _escape(text: str) -> str:
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + " [truncated]"
    return text


def _utc_day(ts: float) -> int:
    return int(ts // 86400)


class _LogFile:
    """One open log: an O_APPEND fd, its size so far and the UTC day it belongs to."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        st = os.fstat(self.fd)
        self.size = st.st_size
        self.day = _utc_day(st.st_mtime if st.st_size else time.time())
        self.retry_at = 0.0           # after a failed rotation, when to try again

    def replaced(self) -> bool:
        """True when NAME.log was removed or renamed by someone else (an admin, logrotate)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        own = os.fstat(self.fd)
        return (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:                   # a regular file takes it whole unless the disk is full
            written = os.write(self.fd, view)
            view = view[written:]
        self.size += len(data)

    def close(self) -> None:
        os.close(self.fd)


class _Archiver:
    """Compresses archives and deletes old ones in a background thread, one sweep at a time."""

    def __init__(self):
        self.pending = False
        self.thread: threading.Thread | None = None
        self.reports: collections.deque[str] = collections.deque()   # appended by the thread
        self.last_sweep = 0.0

    def request(self) -> None:
        self.pending = True

    def poll(self, directory: str, keep_days: int) -> None:
        """Start a requested sweep unless one is still running (then it starts on a later turn)."""
        if time.monotonic() - self.last_sweep > SWEEP_INTERVAL:
            self.pending = True
        if not self.pending or (self.thread is not None and self.thread.is_alive()):
            return
        self.pending = False
        self.last_sweep = time.monotonic()
        self.thread = threading.Thread(target=self.sweep, args=(directory, keep_days),
                                       name="log-archiver", daemon=True)
        self.thread.start()

    def finish(self, directory: str, keep_days: int, timeout: float = 60.0) -> None:
        if self.thread is not None:
            self.thread.join(timeout)
        if self.pending and (self.thread is None or not self.thread.is_alive()):
            self.pending = False
            self.sweep(directory, keep_days)

    def sweep(self, directory: str, keep_days: int) -> None:
        try:
            names = os.listdir(directory)
        except OSError as e:
            self.reports.append(f"log archives: cannot list {directory}: {e.strerror}")
            return
        for name in names:
            if name.startswith(".") and name.endswith(".gz.tmp"):
                self._remove(os.path.join(directory, name))    # left by a crash mid-compression
        cutoff = time.time() - keep_days * 86400
        for name in sorted(names):
            m = ARCHIVE_RE.match(name)
            if not m:
                continue
            path = os.path.join(directory, name)
            try:
                if keep_days and os.stat(path).st_mtime < cutoff:
                    self._remove(path)
                elif not m.group("gz"):
                    self._compress(directory, name)
            except OSError as e:
                self.reports.append(f"log archive {path}: {e.strerror or e}")

    def _remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _compress(self, directory: str, name: str) -> None:
        source = os.path.join(directory, name)
        temp = os.path.join(directory, f".{name}.gz.tmp")
        mtime = os.stat(source).st_mtime
        try:
            with open(source, "rb") as src, open(temp, "wb") as raw:
                with gzip.GzipFile(filename=name, mode="wb", fileobj=raw, compresslevel=6, mtime=int(mtime)) as gz:
                    shutil.copyfileobj(src, gz, 1 << 20)
                raw.flush()
                os.fsync(raw.fileno())
            os.chmod(temp, 0o640)
            os.utime(temp, (mtime, mtime))
            os.rename(temp, source + ".gz")
        except BaseException:
            self._remove(temp)
            raise
        os.unlink(source)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class LogWriter:
    def __init__(self, params: Params):
        self._files: dict[str, _LogFile] = {}
        self._archiver = _Archiver()
        self._lost = 0                      # lines dropped because a file could not be written
        self._next_reopen_check = 0.0
        self._apply(params)
        self._archiver.request()            # compress what a crash left behind, expire old archives

    # -- configuration
    def _apply(self, params: Params) -> None:
        self.directory = params.log_directory
        self.hostname = params.myhostname
        self.kept = LEVELS_KEPT[params.log_level]
        self.rotate_size = params.log_rotate_size
        self.keep_days = params.log_archive_days
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        for logname in LOG_NAMES:           # all four exist from the start, for `mailctl log`
            if logname not in self._files:
                try:
                    self._files[logname] = _LogFile(os.path.join(self.directory, f"{logname}.log"))
                except OSError:
                    pass                    # reported (and counted) when a line cannot be written

    def reconfigure(self, params: Params) -> None:
        if params.log_directory != self.directory:
            self._close_files()
        self._apply(params)

    def close(self) -> None:
        self._drain_reports()
        self._close_files()
        self._archiver.finish(self.directory, self.keep_days)

    def _close_files(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    # -- writing
    def worker_line(self, service_name: str, pid: int, line: bytes) -> None:
        parsed = parse_log_line(line)
        tag = f"{service_name}[{pid}]"
        if parsed is None:
            self.log("server", "E", tag, line.rstrip(b"\r\n").decode("utf-8", "replace"))
        else:
            code, logname, text = parsed
            self.log(logname, code, tag, text)

    def log(self, logname: str, level_code: str, tag: str, text: str) -> None:
        if level_code not in self.kept:
            return
        if logname not in LOG_NAMES:
            text, logname = f"(for unknown log {logname!r}) {text}", "server"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._write(logname, f"{stamp} {self.hostname} {tag}: {_escape(text)}\n".encode("utf-8", "replace"))

    def _write(self, logname: str, data: bytes) -> None:
        try:
            f = self._files.get(logname)
            if f is None:
                f = self._files[logname] = _LogFile(os.path.join(self.directory, f"{logname}.log"))
            f.write(data)
        except OSError as e:
            if not self._lost:
                print(f"mailhouse master: cannot write {logname}.log: {e.strerror}; dropping log lines",
                      file=sys.stderr, flush=True)
            self._lost += 1
            return
        if self._lost:
            lost, self._lost = self._lost, 0
            self.log("server", "E", f"master[{os.getpid()}]", f"{lost} log lines lost: could not write the log files")

    # -- rotation
    def maybe_rotate(self) -> None:
        self._drain_reports()
        self._reopen_replaced()
        now = time.time()
        today = _utc_day(now)
        for logname, f in list(self._files.items()):
            if now < f.retry_at:
                continue
            if f.size >= self.rotate_size or (f.day != today and f.size):
                self._rotate(logname, f, now)
            elif f.day != today:
                f.day = today
        self._archiver.poll(self.directory, self.keep_days)

    def _reopen_replaced(self) -> None:
        if time.monotonic() < self._next_reopen_check:
            return
        self._next_reopen_check = time.monotonic() + REOPEN_CHECK_INTERVAL
        for logname, f in list(self._files.items()):
            if f.replaced():
                self._reopen(logname, f)

    def _reopen(self, logname: str, f: _LogFile) -> None:
        f.close()
        del self._files[logname]
        try:
            self._files[logname] = _LogFile(f.path)
        except OSError:
            pass                                # the next line tries again (and counts a loss)

    def _rotate(self, logname: str, f: _LogFile, now: float) -> None:
        archive = f"{f.path}.{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}"
        if os.path.exists(archive) or os.path.exists(archive + ".gz"):
            return                              # rotated this second already: next turn
        try:
            os.rename(f.path, archive)
        except OSError as e:
            f.retry_at = now + 60               # keep writing the big file; one message a minute
            self.log("server", "E", f"master[{os.getpid()}]", f"cannot rotate {f.path}: {e.strerror}")
            return
        self._reopen(logname, f)
        self._archiver.request()

    def _drain_reports(self) -> None:
        while self._archiver.reports:
            self.log("server", "E", f"master[{os.getpid()}]", self._archiver.reports.popleft())
