"""Durable file writes: the only way mail becomes acknowledged.

write_durably(directory, name, source) stores `source` (bytes, an iterable of byte chunks,
or a binary file object read in chunks) as directory/name: a temp file in the same
directory (so the rename stays on one filesystem) is written, fsynced, renamed into place,
and then the directory itself is fsynced. When it returns, the file and its directory
entry survive a crash; only then may a caller acknowledge the message. It returns the
number of bytes written.
write_temp(directory, name, source) -> (temp path, size) and rename_into_place(temp, path) are
its two halves, for a writer that renames many files and then fsyncs each directory once
(store.mailstore's deliver_many).
fsync_dir(path) fsyncs one directory (after a rename or unlink that must be durable).
DirSync().sync(path) is fsync_dir shared between threads (group commit): a caller's change is
durable once an fsync of that directory that started after the change has completed, so the
callers that arrive during one fsync all share the next one.
is_temp_name(name) tells the temp files apart, so directory scans can skip them.

Diagnostics: any OSError on the way (ENOSPC, EDQUOT, EIO, ...) removes the temp file and
raises StorageError, a temporary failure (SMTP 452 4.3.1, IMAP NO [SERVERBUG]/[OVERQUOTA]).
Nothing that existed before is touched. If only the final directory fsync fails, the new
file is in place but not known to be durable: StorageError is still raised, so the caller
does not acknowledge (a retry may then store the message twice; losing it is worse).
"""
from __future__ import annotations

import errno
import os
import secrets
import threading
from typing import BinaryIO, Callable, Iterable, Union

Source = Union[bytes, bytearray, memoryview, Iterable[bytes], BinaryIO]

TEMP_PREFIX = ".tmp."
CHUNK_SIZE = 256 * 1024


class StorageError(Exception):
    """Storing failed for a reason that may go away (disk full, quota, I/O); temporary."""

    temporary = True

    def __init__(self, message: str, errno_code: int | None = None):
        super().__init__(message)
        self.errno = errno_code

    @property
    def disk_full(self) -> bool:
        return self.errno in (errno.ENOSPC, errno.EDQUOT)


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


def _chunks(source: Source) -> Iterable[bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield bytes(source)
    elif hasattr(source, "read"):
        while chunk := source.read(CHUNK_SIZE):
            yield chunk
    else:
        yield from source


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirSync:
    """Group commit of directory fsyncs for the threads of one process.

    sync(path) returns once an fsync of path that started after the call has completed
    (OSError if one that started after the call failed); at most one fsync of a directory
    runs at a time, and every caller that arrived while it ran is served by the next one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dirs: dict[str, _DirTurns] = {}

    def sync(self, path: str | os.PathLike) -> None:
        path = os.fspath(path)
        with self._lock:
            turns = self._dirs.setdefault(path, _DirTurns())
        turns.sync(path)


class _DirTurns:
    """The fsyncs of one directory, numbered: started, completed, and the last that failed."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.started = self.completed = 0
        self.running = False
        self.failed: tuple[int, OSError] | None = None

    def sync(self, path: str) -> None:
        with self.changed:
            wanted = self.started + 1          # the first fsync that starts after this call
            while self.completed < wanted:
                if self.running:
                    self.changed.wait()
                    continue
                self.running = True
                self.started += 1
                number = self.started
                self.changed.release()
                error = None
                try:
                    fsync_dir(path)
                except OSError as e:
                    error = e
                finally:
                    self.changed.acquire()
                    self.running = False
                    self.completed = number
                    if error is not None:
                        self.failed = (number, error)
                    self.changed.notify_all()
            if self.failed is not None and self.failed[0] >= wanted:
                raise self.failed[1]


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return len(data)


def _failed(path: str, e: OSError) -> StorageError:
    return StorageError(f"cannot store {path}: {e.strerror or e}", e.errno)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # not created, or unlink failed too: the original error is what matters


def write_temp(directory: str | os.PathLike, name: str, source: Source, mode: int = 0o600) -> tuple[str, int]:
    """Write source to a new temp file in directory (named after name) and fsync it; returns
    (temp path, size). The caller renames it (rename_into_place) and fsyncs the directory."""
    directory = os.fspath(directory)
    temp_path = os.path.join(directory, f"{TEMP_PREFIX}{name}.{secrets.token_hex(6)}")
    try:
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            size = sum(_write_all(fd, chunk) for chunk in _chunks(source) if chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        return temp_path, size
    except OSError as e:
        _unlink_quietly(temp_path)
        raise _failed(os.path.join(directory, name), e) from e


def rename_into_place(temp_path: str, path: str) -> None:
    """Give a temp file of write_temp its final name (not yet durable: fsync the directory)."""
    try:
        os.rename(temp_path, path)
    except OSError as e:
        _unlink_quietly(temp_path)
        raise _failed(path, e) from e


def write_durably(directory: str | os.PathLike, name: str, source: Source, mode: int = 0o600,
                  sync_dir: Callable[[str], None] = fsync_dir) -> int:
    """Store source as directory/name, durably; returns the size in bytes. sync_dir fsyncs
    the directory (a DirSync's sync shares it with the other threads' writes)."""
    directory = os.fspath(directory)
    temp_path, size = write_temp(directory, name, source, mode)
    final_path = os.path.join(directory, name)
    rename_into_place(temp_path, final_path)
    try:
        sync_dir(directory)
    except OSError as e:
        raise _failed(final_path, e) from e
    return size
